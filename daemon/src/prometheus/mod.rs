//! The daemon's Prometheus metrics (`elide-daemon --metrics-listen`).
//!
//! Two kinds, so nothing is counted twice:
//!
//! * what nothing else counts is recorded here, by execution runs
//!   ([`ExecutionMetrics`]): executions finished by outcome, run time and
//!   start latency histograms, output bytes and drops;
//! * what the daemon already counts is read at scrape time
//!   ([`live::LiveCollector`]): requests by method (the counts
//!   `GetDaemonStats` reports), warm and cold starts and warm-machinery
//!   restarts (the runtime's start counters), sessions and the running and
//!   queued gauges (the registry's own figures).
//!
//! [`endpoint`] serves them in the Prometheus text format over HTTP.

mod endpoint;
mod live;

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::language::Language;
use crate::output::Stream;

pub use endpoint::{MetricsEndpoint, MAX_SCRAPE_CONNECTIONS, SCRAPE_HEADER_TIMEOUT};
pub use live::LiveFigures;

/// Labels as static name/value pairs: every value is one of a fixed set
/// (languages, outcomes, streams), so the series are bounded.
type Labels<const N: usize> = [(&'static str, &'static str); N];
type HistogramFamily = Family<Labels<2>, Histogram, fn() -> Histogram>;

/// How an execution ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The program ended by itself with an exit code (any code).
    Exit,
    /// The program was ended by a signal nobody in the daemon sent.
    Signal,
    /// Stopped at its timeout.
    Timeout,
    /// Killed at its memory limit (by the kernel's OOM killer, or by the
    /// daemon where memory is only sampled).
    Oom,
    /// Cancelled (by a client, a session deletion or the daemon's shutdown),
    /// whether it was running or still queued.
    Cancelled,
    /// The runtime stopped reporting on it without an exit.
    Lost,
    /// It could not be started.
    Failed,
}

impl Outcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Exit => "exit",
            Outcome::Signal => "signal",
            Outcome::Timeout => "timeout",
            Outcome::Oom => "oom",
            Outcome::Cancelled => "cancelled",
            Outcome::Lost => "lost",
            Outcome::Failed => "failed",
        }
    }
}

/// The `start` label: how a program was started.
fn start_label(warm: bool) -> &'static str {
    if warm {
        "warm"
    } else {
        "cold"
    }
}

/// What execution runs record: only what no other part of the daemon
/// counts. Cloning shares the same series.
#[derive(Debug, Clone)]
pub struct ExecutionMetrics {
    finished: Family<Labels<2>, Counter>,
    duration: HistogramFamily,
    start_latency: HistogramFamily,
    output_bytes: Family<Labels<1>, Counter>,
    dropped_bytes: Family<Labels<1>, Counter>,
}

impl Default for ExecutionMetrics {
    fn default() -> Self {
        ExecutionMetrics {
            finished: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            start_latency: Family::new_with_constructor(start_latency_histogram),
            output_bytes: Family::default(),
            dropped_bytes: Family::default(),
        }
    }
}

/// Run time buckets: 5 ms to about 5.5 minutes, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 17))
}

/// Start latency buckets: 0.25 ms to about 4 s, doubling.
fn start_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl ExecutionMetrics {
    /// A program of `language` was started (`warm`: a zygote fork or a
    /// pooled worker), `latency` after its execution got a run slot.
    pub fn started(&self, language: Language, warm: bool, latency: Duration) {
        self.start_latency
            .get_or_create(&[("language", language.name()), ("start", start_label(warm))])
            .observe(latency.as_secs_f64());
    }

    /// An execution of `language` reached its terminal state; `ran` is how
    /// its program was started and how long it ran, if it ever started.
    pub fn finished(&self, language: Language, outcome: Outcome, ran: Option<(bool, Duration)>) {
        self.finished
            .get_or_create(&[("language", language.name()), ("outcome", outcome.label())])
            .inc();
        if let Some((warm, ran_for)) = ran {
            self.duration
                .get_or_create(&[("language", language.name()), ("start", start_label(warm))])
                .observe(ran_for.as_secs_f64());
        }
    }

    /// A program wrote `bytes` to `stream`, of which `dropped` older bytes
    /// fell out of its execution's retained output.
    pub fn output(&self, stream: Stream, bytes: u64, dropped: u64) {
        let labels = [("stream", stream.name())];
        self.output_bytes.get_or_create(&labels).inc_by(bytes);
        if dropped > 0 {
            self.dropped_bytes.get_or_create(&labels).inc_by(dropped);
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "elide_executions_finished",
            "Executions that reached a terminal state, by language and outcome",
            self.finished.clone(),
        );
        registry.register(
            "elide_execution_duration_seconds",
            "How long programs ran, from their start to their exit, by language and warm or cold start",
            self.duration.clone(),
        );
        registry.register(
            "elide_execution_start_latency_seconds",
            "From an execution getting a run slot to its program being started, by language and warm or cold start",
            self.start_latency.clone(),
        );
        registry.register(
            "elide_output_bytes",
            "Bytes programs wrote, by stream",
            self.output_bytes.clone(),
        );
        registry.register(
            "elide_output_dropped_bytes",
            "Output bytes that fell out of an execution's retained output (--output-retention-bytes), by stream",
            self.dropped_bytes.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(metrics: &ExecutionMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn executions_are_counted_by_language_and_outcome_and_timed_by_start() {
        let m = ExecutionMetrics::default();
        m.started(Language::Python, true, Duration::from_millis(2));
        m.finished(
            Language::Python,
            Outcome::Exit,
            Some((true, Duration::from_millis(30))),
        );
        m.finished(Language::JavaScript, Outcome::Cancelled, None);
        m.output(Stream::Stdout, 10, 0);
        m.output(Stream::Stdout, 5, 3);
        let text = scrape(&m);
        for line in [
            r#"elide_executions_finished_total{language="python",outcome="exit"} 1"#,
            r#"elide_executions_finished_total{language="javascript",outcome="cancelled"} 1"#,
            r#"elide_execution_duration_seconds_count{language="python",start="warm"} 1"#,
            r#"elide_execution_start_latency_seconds_count{language="python",start="warm"} 1"#,
            r#"elide_output_bytes_total{stream="stdout"} 15"#,
            r#"elide_output_dropped_bytes_total{stream="stdout"} 3"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        // An execution that never ran has no run time.
        assert!(!text.contains(r#"elide_execution_duration_seconds_count{language="javascript""#));
    }
}
