//! `--metrics-listen`: Prometheus metrics over real HTTP from a real
//! daemon, after a known sequence of executions on real interpreters.

mod support;

use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use pb::ExecutionState as S;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Output retained per stream: the smallest the daemon accepts (two
/// output chunks), so a 200 000-byte write drops a known amount.
const RETENTION: u64 = 128 * 1024;

/// `GET path` over a fresh TCP connection: (status line, headers, body).
async fn http_get(address: &str, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connecting to the metrics address {address}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("no complete HTTP response within 30 s")
    .expect("reading the HTTP response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

async fn scrape(address: &str) -> String {
    let (status, headers, body) = http_get(address, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    body
}

/// The value of one series (name with its labels, as the text format
/// writes it); `None` if the scrape has no such series.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{series} {v}: {e}")))
        .next()
}

fn exactly(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no {series} in the scrape:\n{text}"))
}

#[tokio::test]
async fn a_scrape_counts_what_ran_by_language_outcome_start_and_stream() {
    let address = free_loopback_address();
    let retention = RETENTION.to_string();
    let d = Daemon::start_as(
        Start::Warm,
        &[
            "--metrics-listen",
            &address,
            "--timeout-grace-secs",
            "0.5",
            "--output-retention-bytes",
            &retention,
        ],
    )
    .await;
    let mut c = d.client().await;

    let before = scrape(&address).await;
    assert_eq!(exactly(&before, "elide_sessions"), 0.0, "{before}");
    assert_eq!(
        value(
            &before,
            r#"elide_executions_finished_total{language="python",outcome="exit"}"#
        ),
        None,
        "nothing ran yet:\n{before}"
    );

    create_session(
        &mut c,
        "s",
        pb::SessionConfig {
            max_timeout: secs(30.0),
            ..Default::default()
        },
    )
    .await;

    // Running: seen by the gauge, then cancelled.
    execute(
        &mut c,
        snippet(
            "s",
            "cancelled",
            "python",
            "import time\nprint('started', flush=True)\ntime.sleep(30)\n",
        ),
    )
    .await;
    wait_for_stdout(&mut c, "s", "cancelled", "started").await;
    let running = scrape(&address).await;
    assert_eq!(exactly(&running, "elide_executions_running"), 1.0);
    assert_eq!(exactly(&running, "elide_sessions"), 1.0);
    c.cancel_execution(pb::CancelExecutionRequest {
        session_id: "s".into(),
        execution_id: "cancelled".into(),
        signal: String::new(),
        grace: secs(2.0),
    })
    .await
    .expect("cancel");
    assert_eq!(
        wait_terminal(&mut c, "s", "cancelled").await.state(),
        S::Cancelled
    );

    // Two python exits (one writing more than is retained), one
    // javascript non-zero exit, one python timeout.
    let mut runs = vec![
        (snippet("s", "py-hello", "python", "print('a')"), S::Exited),
        (
            snippet(
                "s",
                "py-big",
                "python",
                "import sys\nsys.stdout.write('x' * 200000)\n",
            ),
            S::Exited,
        ),
        (
            snippet(
                "s",
                "js-fails",
                "javascript",
                "process.stderr.write('bad\\n'); process.exit(3)",
            ),
            S::Exited,
        ),
    ];
    let mut slow = snippet("s", "slow", "python", "import time\ntime.sleep(30)\n");
    slow.overrides = Some(pb::ExecutionOverrides {
        timeout: secs(1.0),
        ..Default::default()
    });
    runs.push((slow, S::TimedOut));
    for (req, state) in runs {
        let id = req.execution_id.clone();
        execute(&mut c, req).await;
        let status = wait_terminal(&mut c, "s", &id).await;
        assert_eq!(status.state(), state, "{status:?}");
    }

    let text = scrape(&address).await;
    let finished = |language: &str, outcome: &str| {
        value(
            &text,
            &format!(
                r#"elide_executions_finished_total{{language="{language}",outcome="{outcome}"}}"#
            ),
        )
    };
    assert_eq!(finished("python", "exit"), Some(2.0), "{text}");
    assert_eq!(finished("javascript", "exit"), Some(1.0), "{text}");
    assert_eq!(finished("python", "timeout"), Some(1.0), "{text}");
    assert_eq!(finished("python", "cancelled"), Some(1.0), "{text}");
    assert_eq!(finished("javascript", "timeout"), None, "{text}");

    // 'a\n' + 200 000 x + 'started\n'; 'bad\n'.
    assert_eq!(
        exactly(&text, r#"elide_output_bytes_total{stream="stdout"}"#),
        (2 + 200_000 + 8) as f64
    );
    assert_eq!(
        exactly(&text, r#"elide_output_bytes_total{stream="stderr"}"#),
        4.0
    );
    assert_eq!(
        exactly(
            &text,
            r#"elide_output_dropped_bytes_total{stream="stdout"}"#
        ),
        (200_000 - RETENTION) as f64
    );
    assert_eq!(
        value(
            &text,
            r#"elide_output_dropped_bytes_total{stream="stderr"}"#
        ),
        None
    );

    // Starts are the runtime's own counters, as GetDaemonStats reports
    // them; each started program is in both histograms under the same
    // warm or cold label.
    let stats = daemon_stats(&mut c).await;
    for (language, programs) in [("python", 4.0), ("javascript", 1.0)] {
        let mut total = 0.0;
        for (start, counts) in [("warm", &stats.warm_starts), ("cold", &stats.cold_starts)] {
            let labels = format!(r#"{{language="{language}",start="{start}"}}"#);
            let started = exactly(&text, &format!("elide_executions_started_total{labels}"));
            assert_eq!(
                started,
                count(counts, language) as f64,
                "{labels}: {stats:?}"
            );
            let histogram_count =
                |name: &str| value(&text, &format!("{name}_count{labels}")).unwrap_or(0.0);
            assert_eq!(
                histogram_count("elide_execution_duration_seconds"),
                started,
                "{labels}\n{text}"
            );
            assert_eq!(
                histogram_count("elide_execution_start_latency_seconds"),
                started,
                "{labels}\n{text}"
            );
            total += started;
        }
        assert_eq!(total, programs, "{language} programs started:\n{text}");
    }
    // The warm daemon started them warm (the same check the warm-start
    // tests make).
    assert_eq!(
        exactly(
            &text,
            r#"elide_executions_started_total{language="python",start="warm"}"#
        ),
        4.0
    );
    assert_eq!(
        exactly(&text, r#"elide_warm_runtime_restarts_total"#),
        stats.zygote_restarts as f64
    );
    // The timed-out program alone ran for its one-second timeout.
    assert!(
        exactly(
            &text,
            r#"elide_execution_duration_seconds_sum{language="python",start="warm"}"#
        ) >= 1.0,
        "{text}"
    );

    // Requests are the counts GetDaemonStats reports.
    for (method, n) in [
        ("ExecuteSnippet", 5.0),
        ("CreateSession", 1.0),
        ("CancelExecution", 1.0),
    ] {
        assert_eq!(
            exactly(
                &text,
                &format!(r#"elide_requests_total{{method="{method}"}}"#)
            ),
            n,
            "{method}"
        );
    }
    assert_eq!(exactly(&text, "elide_executions_running"), 0.0);
    assert_eq!(exactly(&text, "elide_executions_queued"), 0.0);
    assert_eq!(exactly(&text, "elide_sessions"), 1.0);

    let (status, _, body) = http_get(&address, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.contains("metrics are at /metrics"), "{body}");
}

#[tokio::test]
async fn a_bad_metrics_address_stops_the_daemon_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let start = |address: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_elide-daemon"))
            .arg("--socket")
            .arg(dir.path().join("daemon.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--metrics-listen", address])
            .output()
            .unwrap()
    };

    let out = start("localhost-ish");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'localhost-ish' for '--metrics-listen <ADDR>'"),
        "{stderr}"
    );

    // An address something else already listens on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = start(&address);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--metrics-listen {address}: cannot listen there")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !dir.path().join("daemon.sock").exists(),
        "the daemon stopped before it listened"
    );
}
