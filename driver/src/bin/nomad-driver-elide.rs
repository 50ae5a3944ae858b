//! The plugin binary a Nomad client launches. Order matters (go-plugin
//! contract): check the environment, start logging, bind and serve, only
//! then announce the socket on stdout, then silence stdout for good.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use elide_driver::{
    check_environment, handshake_line, serve, socket_dir, ApiProbe, ElideDriver, PluginSocket,
    Shutdown, FINGERPRINT_INTERVAL,
};
use tokio::signal::unix::{signal, SignalKind};

/// How long in-flight calls get to finish once shutdown is requested; the
/// host SIGKILLs after 2 s.
const DRAIN_LIMIT: Duration = Duration::from_millis(800);

fn main() -> ExitCode {
    if let Err(e) = check_environment(|key| std::env::var(key).ok()) {
        // Run by hand: a human is reading; logging is not set up yet.
        let _ = writeln!(std::io::stderr(), "{e}");
        return ExitCode::FAILURE;
    }
    elide_driver::init_stderr_logging("elide");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run());
    // Streams that never end (fingerprint, stdio) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "plugin failed");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Handlers first: the host may signal us as soon as the handshake is
    // out, and SIGINT's default action would kill the plugin.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let env = |key: &str| std::env::var(key).ok();
    let mut socket =
        PluginSocket::bind(&socket_dir(env), env("PLUGIN_UNIX_SOCKET_GROUP").as_deref())?;
    let listener = socket
        .take_listener()
        .context("socket listener already taken")?;
    let shutdown = Shutdown::new();
    let driver = Arc::new(ElideDriver::new(Arc::new(ApiProbe::default())));
    let mut server = tokio::spawn(serve(
        listener,
        driver,
        shutdown.clone(),
        FINGERPRINT_INTERVAL,
    ));

    announce(&socket)?;
    tracing::info!(socket = %socket.path().display(), version = env!("CARGO_PKG_VERSION"), "plugin serving");

    let outcome = loop {
        tokio::select! {
            _ = shutdown.requested() => break Ok(()),
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM received, shutting down");
                shutdown.trigger();
                break Ok(());
            }
            // Ctrl-C on the agent's terminal reaches the whole process
            // group; the agent stops its plugins itself.
            _ = sigint.recv() => tracing::debug!("ignoring SIGINT"),
            served = &mut server => {
                break match served {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("gRPC server failed")),
                    Err(e) => Err(anyhow::Error::new(e).context("gRPC server task failed")),
                };
            }
        }
    };
    if !server.is_finished() {
        // Long-lived streams keep a graceful shutdown waiting; give in-flight
        // unary calls a moment, then go.
        if tokio::time::timeout(DRAIN_LIMIT, &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
    drop(socket);
    tracing::info!("plugin stopped");
    outcome
}

/// Prints the handshake line, flushes it, and points fd 1 at /dev/null so
/// no later write can fill the host's stdout pipe and block.
fn announce(socket: &PluginSocket) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(handshake_line(socket.path()).as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the handshake line to stdout")?;
    let dev_null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    nix::unistd::dup2_stdout(&dev_null).context("cannot redirect stdout to /dev/null")?;
    Ok(())
}
