//! `elide-daemon`: the reference Elide execution daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use elide_daemon::{
    check_reachable_by_all, parse_id_list, serve, Cgroups, DaemonService, FsStore, Limits,
    ListenOptions, PeerPolicy, ProcessRuntime, ProcessRuntimeConfig, RandomIds, RegistryDeps,
    SessionRegistry, TypeScriptRunner, Unenforceable, PYTHON_DEFAULT_PRELOAD,
};
use elide_proto::wall_clock::SystemClock;

/// Runs Python and JavaScript snippets for many clients through one
/// session-based gRPC API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket to listen on.
    #[arg(
        long,
        env = "ELIDE_DAEMON_SOCKET",
        default_value = "/run/elide/daemon.sock"
    )]
    socket: PathBuf,
    /// Permission bits of the socket, in octal.
    #[arg(long, default_value = "660", value_parser = parse_octal)]
    socket_mode: u32,
    /// Also listen on this TCP address (for example 127.0.0.1:7420).
    /// TCP has NO authentication: anyone who can reach it can run code.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`, text format) over HTTP on
    /// this address, for example 127.0.0.1:9464. Off by default. It has NO
    /// authentication: keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Users (numeric ids or names, comma-separated) allowed to call over
    /// the Unix socket, checked with SO_PEERCRED on every connection.
    /// Without this and --allow-gid, the socket's file mode alone decides.
    /// Root and the daemon's own user are always allowed.
    #[arg(long, value_parser = parse_uids)]
    allow_uid: Option<IdList>,
    /// Primary groups (numeric ids or names, comma-separated) allowed to
    /// call over the Unix socket (see --allow-uid).
    #[arg(long, value_parser = parse_gids)]
    allow_gid: Option<IdList>,
    /// Directory for sessions, execution records and scratch files.
    #[arg(long, env = "ELIDE_DAEMON_STATE_DIR", default_value = "/var/lib/elide")]
    state_dir: PathBuf,
    /// Python interpreter.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Node.js interpreter.
    #[arg(long, default_value = "node")]
    node: String,
    /// Elide CLI (runs typescript with `--typescript elide`).
    #[arg(long, default_value = "elide")]
    elide: String,
    /// What runs typescript: `builtin` (transpiled in the daemon by oxc,
    /// then run as javascript on node) or `elide` (the Elide CLI).
    #[arg(long, value_enum, default_value = "builtin")]
    typescript: TypeScriptKind,
    /// Node processes kept booted, each waiting to run one javascript or
    /// typescript program (per daemon, shared by all sessions). 0 turns
    /// warm node starts off: every program starts a fresh node.
    #[arg(long, default_value_t = 2)]
    context_pool_size: usize,
    /// Largest snippet accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_code_bytes)]
    max_code_bytes: u64,
    /// Output kept per execution and stream, in bytes.
    #[arg(long, default_value_t = Limits::default().output_retention_bytes_per_stream)]
    output_retention_bytes: u64,
    /// Most executions running at once.
    #[arg(long, default_value_t = Limits::default().max_running_executions)]
    max_running: u32,
    /// Most executions waiting for a run slot.
    #[arg(long, default_value_t = Limits::default().max_queued_executions)]
    max_queued: u32,
    /// Most sessions.
    #[arg(long, default_value_t = Limits::default().max_sessions)]
    max_sessions: u32,
    /// Seconds between SIGTERM and SIGKILL when an execution times out.
    #[arg(long, default_value_t = 2.0)]
    timeout_grace_secs: f64,
    /// Seconds running executions get to stop when the daemon shuts down.
    #[arg(long, default_value_t = 5.0)]
    shutdown_grace_secs: f64,
    /// Seconds between resource samples of each running program.
    #[arg(long, default_value_t = 1.0)]
    sample_interval_secs: f64,
    /// What runs snippets: `process` (python3/node/elide interpreters) or
    /// `scripted` (the deterministic test language of
    /// `ScriptedRuntime`, for benchmarks and tests at scale).
    #[arg(long, value_enum, default_value = "process")]
    runtime: RuntimeKind,
    /// Start python executions as forks of a zygote interpreter that has
    /// already started and imported `--python-preload` (`false`: a fresh
    /// `python3` per execution).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    python_warm: bool,
    /// Modules the python zygote imports before forking, comma-separated.
    /// A module that cannot be imported stops the daemon at start.
    #[arg(long, value_delimiter = ',', default_values_t = PYTHON_DEFAULT_PRELOAD.iter().map(|m| m.to_string()))]
    python_preload: Vec<String>,
    /// Who programs run as when their request names no user
    /// (`run_as_user`), when the daemon runs as root. A daemon that is not
    /// root runs every program as itself.
    #[arg(long, default_value = "nobody")]
    default_user: String,
    /// Per-execution cgroups: `auto` (cgroup v2 where the unified
    /// hierarchy has the memory controller, else the v1 controllers; where
    /// neither can be used, memory is sampled and `GetCapabilities` says
    /// so) or `off` (always sample).
    #[arg(long, value_enum, default_value = "auto")]
    cgroups: CgroupMode,
    /// Most processes (and threads) one execution may have at once, enforced
    /// by its pids cgroup: a fork bomb stops there.
    #[arg(long, default_value_t = 512)]
    pids_limit: u64,
    /// What to do with an execution that is not granted an intrinsic this
    /// host's kernel cannot deny (no Landlock, no network namespace):
    /// `refuse` it (FAILED_PRECONDITION naming the intrinsic) or run it
    /// without that rule, with a `warnings` line in its status (`warn`).
    #[arg(long, value_enum, default_value = "refuse")]
    unenforceable_intrinsics: Unenforceable,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RuntimeKind {
    Process,
    Scripted,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CgroupMode {
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TypeScriptKind {
    Builtin,
    Elide,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?} is not an octal mode: {e}"))
}

fn secs(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag} must be a non-negative number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    raise_open_file_limit();
    // Bound first, so a bad address stops the daemon before it starts
    // anything.
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}: cannot listen there"))?,
        ),
        None => None,
    };
    let limits = Limits {
        max_code_bytes: args.max_code_bytes,
        output_retention_bytes_per_stream: args.output_retention_bytes,
        max_running_executions: args.max_running,
        max_queued_executions: args.max_queued,
        max_sessions: args.max_sessions,
        timeout_grace: secs(args.timeout_grace_secs, "timeout-grace-secs")?,
        ..Limits::default()
    };
    limits
        .validate()
        .map_err(anyhow::Error::msg)
        .context("checking the limits")?;
    let scratch_dir = args.state_dir.join("scratch");
    anyhow::ensure!(args.pids_limit > 0, "--pids-limit must be at least 1");
    if let RuntimeKind::Process = args.runtime {
        // First, so the state dir is made with its mode (0711).
        prepare_shared_dirs(&args.state_dir, &scratch_dir)?;
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    let mut cgroups_in_use = None;
    let runtime: Arc<dyn elide_daemon::Runtime> = match args.runtime {
        RuntimeKind::Process => {
            let cgroups = match args.cgroups {
                CgroupMode::Off => Cgroups::disabled("turned off (--cgroups off)"),
                CgroupMode::Auto => {
                    // Keyed by the state dir: a restart finds what its
                    // predecessor left.
                    let state = std::fs::canonicalize(&args.state_dir)
                        .unwrap_or_else(|_| args.state_dir.clone());
                    Cgroups::detect(&state.display().to_string(), args.pids_limit)
                }
            };
            let stale = cgroups.clean_stale();
            if stale > 0 {
                tracing::info!(removed = stale, "removed cgroups left by an earlier daemon");
            }
            let cgroups = Arc::new(cgroups);
            cgroups_in_use = Some(cgroups.clone());
            let runtime = ProcessRuntime::discover(&ProcessRuntimeConfig {
                python: args.python.clone(),
                node: args.node.clone(),
                elide: args.elide.clone(),
                sample_interval: secs(args.sample_interval_secs, "sample-interval-secs")?,
                node_pool_size: args.context_pool_size,
                runtime_dir: args.state_dir.join("runtime"),
                typescript: match args.typescript {
                    TypeScriptKind::Builtin => TypeScriptRunner::Builtin,
                    TypeScriptKind::Elide => TypeScriptRunner::Elide,
                },
                default_user: args.default_user.clone(),
                cgroups,
                unenforceable_intrinsics: args.unenforceable_intrinsics,
            });
            let runtime = if args.python_warm {
                let preload = args
                    .python_preload
                    .iter()
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect();
                runtime
                    .with_python_zygote(preload)
                    .context("starting warm python (--python-warm=false turns it off)")?
            } else {
                runtime
            };
            Arc::new(runtime)
        }
        RuntimeKind::Scripted => Arc::new(elide_daemon::ScriptedRuntime::default()),
    };
    let store = FsStore::open(&args.state_dir).context("opening the state store")?;
    let registry = SessionRegistry::open(RegistryDeps {
        runtime,
        store: Arc::new(store),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        limits,
        scratch_dir,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .context("restoring daemon state")?;
    for lang in registry.capabilities().languages {
        if lang.available {
            tracing::info!(language = %lang.language, runtime = %lang.runtime, version = %lang.runtime_version, "language available");
        } else {
            tracing::info!(language = %lang.language, reason = %lang.unavailable_reason, "language unavailable");
        }
    }
    tracing::info!(instance_id = registry.instance_id(), state_dir = %args.state_dir.display(), "daemon starting");
    registry.spawn_expiry(Duration::from_secs(1));

    let opts = ListenOptions {
        socket: args.socket.clone(),
        socket_mode: args.socket_mode,
        tcp: args.listen,
        peers: PeerPolicy::new(
            args.allow_uid.clone().map(|l| l.0).unwrap_or_default(),
            args.allow_gid.clone().map(|l| l.0).unwrap_or_default(),
        ),
    };
    let shutdown_grace = secs(args.shutdown_grace_secs, "shutdown-grace-secs")?;
    let drain_registry = registry.clone();
    let shutdown = async move {
        let name = wait_for_stop_signal().await;
        tracing::info!(
            signal = name,
            "shutting down: cancelling running executions"
        );
        drain_registry.drain(shutdown_grace).await;
    };
    let service = DaemonService::new(registry);
    if let Some(listener) = metrics_listener {
        let addr = listener
            .local_addr()
            .context("--metrics-listen: reading the bound address")?;
        tracing::info!(%addr, "serving Prometheus metrics on http://{addr}/metrics (no authentication)");
        tokio::spawn(service.metrics_endpoint().serve(listener));
    }
    serve(service, &opts, shutdown).await.context("serving")?;
    if let Some(cgroups) = cgroups_in_use {
        cgroups.remove_parents();
    }
    tracing::info!("daemon stopped");
    Ok(())
}

/// The scratch and runtime directories are where programs running as other
/// users than the daemon's find their files: when the daemon can switch
/// users (root), every directory down to them must let others pass (warned
/// about at start when one does not).
fn prepare_shared_dirs(state_dir: &Path, scratch_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for dir in [scratch_dir.to_path_buf(), state_dir.join("runtime")] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        if nix::unistd::Uid::effective().is_root() {
            // Not fatal: programs running as the daemon's own user (root by
            // request) still work; the others fail naming the directory.
            if let Err(problem) = check_reachable_by_all(&dir) {
                tracing::warn!("{problem}");
            }
        }
    }
    Ok(())
}

/// Every execution holds two pipes: raise the soft limit on open files to
/// the hard limit (many systems default to a soft limit of 1024).
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open file limit"),
            Err(e) => tracing::warn!(error = %e, soft, "could not raise the open file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open file limit"),
    }
}

async fn wait_for_stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// A parsed `--allow-uid`/`--allow-gid` value.
#[derive(Debug, Clone)]
struct IdList(Vec<u32>);

fn parse_uids(list: &str) -> Result<IdList, String> {
    parse_id_list(list, "user", |name| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
    .map(IdList)
}

fn parse_gids(list: &str) -> Result<IdList, String> {
    parse_id_list(list, "group", |name| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
    .map(IdList)
}
