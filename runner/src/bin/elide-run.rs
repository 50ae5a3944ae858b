//! `elide-run JOB.nomad`: runs a job file's `elide` tasks locally through
//! the real plugin and daemon. Exits with the tasks' exit code.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use elide_runner::{run_job, RunError, RunOptions};

/// Run a Nomad job file's `driver = "elide"` tasks locally, through the
/// real nomad-driver-elide plugin and an elide-daemon.
#[derive(Debug, Parser)]
#[command(name = "elide-run", version)]
struct Args {
    /// The job file (HCL).
    job: PathBuf,
    /// Run only this task (it must use driver = "elide").
    #[arg(long)]
    task: Option<String>,
    /// Nomad agent config file with a `plugin "nomad-driver-elide" { config { … } }` block.
    #[arg(long, value_name = "FILE")]
    agent_config: Option<PathBuf>,
    /// Keep the alloc directories and print where they are.
    #[arg(long)]
    keep_alloc: bool,
    /// The nomad-driver-elide binary [default: next to elide-run].
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// The elide-daemon binary for a private daemon [default: next to elide-run].
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the elide-run executable")?;
    Ok(exe.with_file_name(name))
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ELIDE_RUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,plugin=warn")),
        )
        .init();
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("elide-run: error: {e:#}");
            if matches!(e.downcast_ref::<RunError>(), Some(RunError::Interrupted)) {
                130
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

fn real_main() -> anyhow::Result<i32> {
    let args = Args::parse();
    let plugin = match args.plugin {
        Some(p) => p,
        None => sibling("nomad-driver-elide")?,
    };
    let daemon = match args.daemon {
        Some(p) => p,
        None => sibling("elide-daemon")?,
    };
    anyhow::ensure!(
        plugin.is_file(),
        "plugin binary {} not found (build it with `cargo build -p elide-driver`, or pass --plugin PATH)",
        plugin.display()
    );
    let options = RunOptions {
        job_file: args.job,
        task: args.task,
        agent_config: args.agent_config,
        keep_alloc: args.keep_alloc,
        plugin,
        daemon,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = sigint.recv() => "SIGINT",
                    _ = sigterm.recv() => "SIGTERM",
                };
                if !*tx.borrow() {
                    tracing::info!(
                        "{name} received: stopping the tasks (kill_signal, kill_timeout)"
                    );
                } else {
                    tracing::info!("{name} received again: still stopping (every wait is bounded)");
                }
                let _ = tx.send(true);
            }
        });
        run_job(&options, rx).await.map_err(anyhow::Error::from)
    })?;
    // Don't wait for stray blocking threads (FIFO readers) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    for task in &outcome.tasks {
        tracing::debug!("task {} exit code {}", task.task, task.exit_code);
    }
    Ok(outcome.exit_code())
}
