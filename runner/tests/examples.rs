//! Every example job through the built `elide-run` binary: real plugin
//! (go-plugin handshake), real private daemon, real interpreters, real
//! FIFOs. Each run gets its own TMPDIR, which must be empty afterwards
//! (no temp dir left behind), and the service run checks that no plugin,
//! daemon or interpreter process outlives `elide-run`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest a single example may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `target/<profile>/` of this test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// The three binaries, built once per test process (a no-op when fresh).
fn elide_run() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace())
            .args(["build", "-p", "elide-runner", "--bin", "elide-run"])
            .args(["-p", "elide-driver", "--bin", "nomad-driver-elide"])
            .args(["-p", "elide-daemon", "--bin", "elide-daemon"])
            .arg("--target-dir")
            .arg(profile.parent().unwrap());
        if profile.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        assert!(
            command.status().unwrap().success(),
            "building the binaries failed"
        );
    });
    let path = profile_dir().join("elide-run");
    assert!(path.exists(), "{} missing", path.display());
    path
}

fn example(name: &str) -> PathBuf {
    workspace().join("examples").join(name)
}

/// A private TMPDIR that must be empty once elide-run is done.
struct Tmp(tempfile::TempDir);

impl Tmp {
    fn new() -> Tmp {
        Tmp(tempfile::tempdir().unwrap())
    }
    fn assert_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            left.is_empty(),
            "elide-run left temp files behind: {left:?}"
        );
    }
}

fn command(tmp: &Tmp, args: &[&str]) -> Command {
    let mut c = Command::new(elide_run());
    c.args(args)
        .env("TMPDIR", tmp.0.path())
        .env_remove("ELIDE_RUN_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs elide-run to completion (bounded).
fn run(args: &[&str]) -> (Output, Tmp) {
    let tmp = Tmp::new();
    let mut child = command(&tmp, args).spawn().unwrap();
    let deadline = Instant::now() + RUN_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("elide-run {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), tmp)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs an example and checks its exit code and that the temp dir is gone.
fn run_example(name: &str, code: i32) -> (String, String) {
    let path = example(name);
    let (out, tmp) = run(&[path.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "{name}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    tmp.assert_empty();
    (stdout, stderr)
}

#[test]
fn hello_python_runs_the_script_its_template_wrote() {
    let (stdout, stderr) = run_example("hello-python.nomad", 0);
    assert!(stdout.contains("[hello] hello from python 3."), "{stdout}");
    assert!(
        stdout.contains("[hello] task hello of job hello-python"),
        "{stdout}"
    );
    assert!(stdout.contains("/hello/local\n"), "{stdout}");
    assert!(
        stderr.contains("started a private elide-daemon"),
        "{stderr}"
    );
    assert!(stderr.contains("task hello exited with code 0"), "{stderr}");
}

#[test]
fn hello_javascript_runs_inline_code() {
    let (stdout, _) = run_example("hello-javascript.nomad", 0);
    assert!(
        stdout.contains("[hello] hello from javascript v"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[hello] alloc hello-javascript.hello[0], memory limit 96 MB"),
        "{stdout}"
    );
}

#[test]
fn hello_typescript_is_transpiled_by_the_daemon_and_runs_on_node() {
    let (stdout, _) = run_example("hello-typescript.nomad", 0);
    assert!(
        stdout.contains("[hello] hello from typescript on node "),
        "{stdout}"
    );
    assert!(stdout.contains("[hello] task hello is calm\n"), "{stdout}");
}

#[test]
fn env_and_args_reach_the_program_and_stderr_goes_to_stderr() {
    let (stdout, stderr) = run_example("env-and-args.nomad", 0);
    for line in [
        "[show] GREETING=hello\n",
        "[show] TARGET=nomad\n",
        "[show] args=['first', 'second arg', 'show']\n",
        "[show] data file under alloc dir: True\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    assert!(!stdout.contains("to stderr"), "{stdout}");
    assert!(stderr.contains("[show] to stderr\n"), "{stderr}");
}

#[test]
fn exit_code_is_elide_runs_exit_code() {
    let (stdout, stderr) = run_example("exit-code.nomad", 3);
    assert!(stdout.contains("[fail] about to exit with 3"), "{stdout}");
    assert!(stderr.contains("[fail] something went wrong"), "{stderr}");
    assert!(stderr.contains("task fail exited with code 3"), "{stderr}");
}

#[test]
fn a_group_runs_its_python_and_javascript_tasks_in_one_alloc() {
    let (stdout, _) = run_example("group-polyglot.nomad", 0);
    let alloc = |prefix: &str| {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in\n{stdout}"));
        line.split_whitespace().nth(4).unwrap().to_owned()
    };
    assert!(stdout.contains("group poly"), "{stdout}");
    assert_eq!(
        alloc("[py] python sees alloc"),
        alloc("[js] javascript sees alloc")
    );
}

#[test]
fn the_agent_config_example_is_accepted_and_a_private_daemon_fills_in() {
    let agent = example("agent.hcl");
    let job = example("hello-javascript.nomad");
    let (out, tmp) = run(&[
        "--agent-config",
        agent.to_str().unwrap(),
        job.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(text(&out.stdout).contains("[hello] hello from javascript"));
    assert!(
        stderr.contains("no daemon answers at unix:/run/elide/daemon.sock"),
        "{stderr}"
    );
    tmp.assert_empty();
}

#[test]
fn keep_alloc_keeps_the_rendered_task_dir() {
    let job = example("hello-python.nomad");
    let (out, tmp) = run(&["--keep-alloc", "--task", "hello", job.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("elide-run: alloc directories kept in "))
        .unwrap_or_else(|| panic!("{stderr}"));
    let allocs = PathBuf::from(line.trim_start_matches("elide-run: alloc directories kept in "));
    let alloc = std::fs::read_dir(&allocs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let script = std::fs::read_to_string(alloc.join("hello/local/hello.py")).unwrap();
    assert!(script.contains("hello from python"));
    assert!(alloc.join("alloc/logs/.hello.stdout.fifo").exists());
    drop(tmp);
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(p);
            found.extend(children_of(p));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A service run of elide-run, followed until it prints a line.
struct Service {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    tmp: Tmp,
}

impl Service {
    /// Starts elide-run and waits (bounded) for stdout to contain `ready`;
    /// returns the service and its stdout so far.
    fn start(args: &[&str], ready: &str) -> (Service, String) {
        let tmp = Tmp::new();
        let mut child = command(&tmp, args).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            let mut line = String::new();
            while stdout.read_line(&mut line).unwrap_or(0) > 0 {
                all.push_str(&line);
                let _ = tx.send(all.clone());
                line.clear();
            }
        });
        let text = loop {
            match rx.recv_timeout(RUN_LIMIT) {
                Ok(text) if text.contains(ready) => break text,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let mut err = String::new();
                    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                    panic!("the service never printed {ready:?}; stderr:\n{err}");
                }
            }
        };
        (
            Service {
                child,
                lines: rx,
                tmp,
            },
            text,
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ctrl-C: SIGINT to elide-run, then its exit status, the whole stdout
    /// and stderr (bounded waits).
    fn interrupt(mut self) -> (std::process::ExitStatus, String, String, Tmp) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "elide-run did not exit after SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let mut stdout = String::new();
        while let Ok(text) = self.lines.recv_timeout(Duration::from_secs(2)) {
            stdout = text;
        }
        (status, stdout, stderr, self.tmp)
    }
}

/// Waits (bounded) until none of `pids` is alive, then asserts it.
fn assert_all_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn a_service_stops_on_sigint_with_its_kill_signal_and_leaves_nothing_behind() {
    let job = example("service-sigterm.nomad");
    let (service, ready) = Service::start(
        &[job.to_str().unwrap()],
        "[server] ready: serving until stopped",
    );
    assert!(!ready.contains("goodbye"));
    let descendants = children_of(service.pid());
    // The plugin, the private daemon and the python interpreter under it.
    assert!(
        descendants.len() >= 3,
        "expected plugin, daemon and python: {descendants:?}"
    );
    let (status, stdout, stderr, tmp) = service.interrupt();
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("[server] goodbye: got SIGTERM, shutting down cleanly"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("SIGINT received"), "{stderr}");
    assert_all_gone(&descendants);
    tmp.assert_empty();
}

fn write_job(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_inputs_fail_fast_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let job = example("group-polyglot.nomad");

    let (out, tmp) = run(&["--task", "nope", job.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "no elide task named \"nope\"; elide tasks: py (group poly), js (group poly)"
        ),
        "{stderr}"
    );
    tmp.assert_empty();

    let docker = write_job(
        dir.path(),
        "docker.nomad",
        "job \"web\" {\n  group \"g\" {\n    task \"nginx\" {\n      driver = \"docker\"\n    }\n  }\n}\n",
    );
    let (out, tmp) = run(&[docker.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "docker.nomad: no task uses driver = \"elide\" (tasks: nginx (driver \"docker\"))"
        ),
        "{stderr}"
    );
    tmp.assert_empty();

    let broken = write_job(dir.path(), "broken.nomad", "job \"x\" {\n  group \"g\" {\n");
    let (out, tmp) = run(&[broken.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("broken.nomad: HCL syntax error"),
        "{stderr}"
    );
    tmp.assert_empty();

    let missing = dir.path().join("missing.nomad");
    let (out, tmp) = run(&[missing.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing.nomad: cannot read"), "{stderr}");
    tmp.assert_empty();
}

#[test]
fn a_task_config_mistake_names_the_field_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        "typo.nomad",
        "job \"t\" {\n  type = \"batch\"\n  group \"g\" {\n    task \"t\" {\n      driver = \"elide\"\n      config {\n        scrpt = \"local/a.py\"\n      }\n    }\n  }\n}\n",
    );
    let (out, tmp) = run(&[job.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("typo.nomad: task \"t\": config.scrpt: unsupported argument or block"),
        "{stderr}"
    );
    tmp.assert_empty();

    // Rejected by the driver itself at StartTask (language cannot be inferred).
    let job = write_job(
        dir.path(),
        "ruby.nomad",
        "job \"t\" {\n  type = \"batch\"\n  group \"g\" {\n    task \"t\" {\n      driver = \"elide\"\n      config {\n        code = \"puts 1\"\n      }\n    }\n  }\n}\n",
    );
    let (out, tmp) = run(&[job.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("StartTask(t) failed") && stderr.contains("language"),
        "{stderr}"
    );
    tmp.assert_empty();
}

// ---------------------------------------------------------------------------
// The original Elide task driver's README, as written: its agent config
// (`plugin "elide"`, intrinsics `io` and `env`) and its example jobs.

fn original(name: &str) -> String {
    example(&format!("original/{name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_original_hello_python_runs_under_the_original_agent_config() {
    let (out, tmp) = run(&[
        "--agent-config",
        &original("nomad-agent.hcl"),
        &original("hello-python.nomad"),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "[hello] Hello from Elide on Nomad!\n[hello] This is a polyglot runtime\n"
    );
    assert!(
        stderr.contains("no daemon answers at unix:/tmp/elide-daemon.sock"),
        "{stderr}"
    );
    tmp.assert_empty();
}

/// One HTTP/1.0 GET over real TCP; the response's status line and body.
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn the_original_http_server_answers_health_on_its_dynamic_port_and_stops_cleanly() {
    // The README's agent config with `http` granted: a server needs the
    // network, which the daemon's kernel rules deny otherwise.
    let agent = original("nomad-agent-http.hcl");
    let job = original("http-server.nomad");
    let (service, ready) = Service::start(
        &["--agent-config", &agent, &job],
        "[server] serving /health on port ",
    );
    // The port the script got through `--port ${NOMAD_PORT_http}`.
    let port: u16 = ready
        .split("[server] serving /health on port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {ready:?}"));
    assert!(
        (20000..=32000).contains(&port),
        "{port} is not in Nomad's dynamic port range"
    );
    assert!(ready.contains("(log level info)"), "{ready}");
    let descendants = children_of(service.pid());

    let (status_line, body) = http_get(port, "/health");
    assert_eq!(status_line, "HTTP/1.0 200 OK");
    assert_eq!(body, format!("{{\"status\": \"ok\", \"port\": {port}}}"));
    let (status_line, _) = http_get(port, "/nope");
    assert_eq!(status_line, "HTTP/1.0 404 Not Found");

    let (status, stdout, stderr, tmp) = service.interrupt();
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("[server] request: \"GET /health HTTP/1.0\" 200 -"),
        "{stdout}"
    );
    assert!(stdout.contains("[server] stopping: got SIGINT"), "{stdout}");
    assert!(
        stderr.contains(&format!("group web: port \"http\" is 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("task server exited with code 0"),
        "{stderr}"
    );
    assert_all_gone(&descendants);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers after the stop"
    );
    tmp.assert_empty();
}

#[test]
fn the_original_polyglot_and_ai_examples_are_refused_naming_what_is_missing() {
    let agent = original("nomad-agent.hcl");
    for (job, task, uses) in [
        (
            "polyglot.nomad",
            "main",
            "uses the polyglot module (line 1), which only the Elide runtime provides",
        ),
        (
            "ai-inference.nomad",
            "ai",
            "uses the polyglot module (line 2), \"elide:llm\" (line 6), which only the Elide runtime provides",
        ),
    ] {
        let (out, tmp) = run(&["--agent-config", &agent, &original(job)]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{job}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "elide-run: error: StartTask({task}) failed: submitting task \"{task}\": code: {uses}; this daemon runs python with python3, so polyglot calls and Elide modules (local AI included) are not available"
            )),
            "{job}: {stderr}"
        );
        assert!(text(&out.stdout).is_empty(), "{job} ran: {:?}", out.stdout);
        tmp.assert_empty();
    }
}

#[test]
fn the_plugin_installed_as_elide_in_a_plugin_dir_runs_a_job() {
    // As the original README installs it: `ln -sf <binary> elide` in plugin_dir.
    elide_run();
    let plugin_dir = tempfile::tempdir().unwrap();
    let link = plugin_dir.path().join("elide");
    std::os::unix::fs::symlink(profile_dir().join("nomad-driver-elide"), &link).unwrap();
    let (out, tmp) = run(&[
        "--plugin",
        link.to_str().unwrap(),
        "--agent-config",
        &original("nomad-agent.hcl"),
        &original("hello-python.nomad"),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[hello] Hello from Elide on Nomad!"),
        "{stdout}"
    );
    tmp.assert_empty();
}

/// Ctrl-C before any task started (here the driver never turns healthy:
/// something accepts connections on the configured socket but never
/// speaks gRPC): elide-run exits 130, runs nothing, leaves nothing.
#[test]
fn an_interrupt_before_any_task_started_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    // Bound and listening (connections wait in its backlog), never accepted.
    let _silent = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let agent = write_job(
        dir.path(),
        "agent.hcl",
        &format!(
            "plugin \"nomad-driver-elide\" {{\n  config {{\n    daemon_socket = \"{}\"\n  }}\n}}\n",
            socket.display()
        ),
    );
    let job = example("hello-python.nomad");
    let tmp = Tmp::new();
    let mut child = command(
        &tmp,
        &[
            "--agent-config",
            agent.to_str().unwrap(),
            job.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            all.push_str(&line);
            let _ = tx.send(all.clone());
            line.clear();
        }
        all
    });
    // elide-run found the socket answering and is waiting for a healthy
    // driver: no task can have started.
    let waiting = format!("using the daemon at unix:{}", socket.display());
    loop {
        match rx.recv_timeout(RUN_LIMIT) {
            Ok(text) if text.contains(&waiting) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("elide-run never said {waiting:?}");
            }
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "elide-run did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
    assert_eq!(stdout, "", "no task ran");
    assert!(
        stderr.contains("interrupted before the tasks started"),
        "{stderr}"
    );
    tmp.assert_empty();
}

/// A service task that exits on its own: Nomad would restart it;
/// elide-run says so, ends the run and exits with the task's code.
#[test]
fn a_service_task_that_exits_on_its_own_ends_the_run_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        "quitter.nomad",
        "job \"quitter\" {\n  type = \"service\"\n  group \"g\" {\n    task \"q\" {\n      driver = \"elide\"\n      config {\n        language = \"python\"\n        code = \"print('serving briefly')\\nraise SystemExit(4)\\n\"\n      }\n    }\n  }\n}\n",
    );
    let (out, tmp) = run(&[job.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(4),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stdout, "[q] serving briefly\n");
    assert!(
        stderr.contains(
            "service task q exited with code 4; Nomad would restart it under the group's restart policy, elide-run does not"
        ),
        "{stderr}"
    );
    tmp.assert_empty();
}
