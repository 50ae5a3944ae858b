//! `elide-ctl`: a small client for the Elide daemon.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use elide_daemon::{connect, Target};
use elide_proto::elide::daemon::v1 as pb;
use tokio_stream::StreamExt;

/// Talk to an Elide daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Daemon Unix socket.
    #[arg(
        long,
        env = "ELIDE_DAEMON_SOCKET",
        default_value = "/run/elide/daemon.sock"
    )]
    socket: PathBuf,
    /// Daemon TCP address (host:port); used instead of the socket when set.
    #[arg(long, env = "ELIDE_DAEMON_ADDRESS")]
    address: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Is the daemon up? Prints its instance and version.
    Health,
    /// Languages (and how they start), intrinsics and limits of the daemon.
    Capabilities,
    /// Load, requests served and warm/cold program starts of the daemon.
    Stats,
    /// Lists sessions.
    Sessions,
    /// Lists the executions of a session.
    Executions {
        /// Session id.
        #[arg(long, default_value = "elide-ctl")]
        session: String,
    },
    /// Runs a snippet, streams its output, and exits with its exit code.
    Run {
        /// python, javascript or typescript.
        #[arg(long, short)]
        language: String,
        /// The snippet source.
        #[arg(long, short, conflicts_with = "file", required_unless_present = "file")]
        code: Option<String>,
        /// Read the snippet from this file.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Arguments for the program.
        #[arg(long = "arg")]
        args: Vec<String>,
        /// Environment variables, KEY=VALUE.
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Session to run in (created if missing).
        #[arg(long, default_value = "elide-ctl")]
        session: String,
        /// Execution id (default: random).
        #[arg(long)]
        id: Option<String>,
        /// Run-time limit, e.g. 30s.
        #[arg(long, value_parser = elide_proto::go_duration::parse)]
        timeout: Option<Duration>,
        /// Memory limit in MiB.
        #[arg(long, default_value_t = 0)]
        memory_mb: u64,
        /// Intrinsics the session grants (repeatable), canonical (`console`,
        /// `fs.read`) or original (`io`, `fs`) names. A session that
        /// already exists with other intrinsics is refused: pick another
        /// `--session`.
        #[arg(long = "intrinsic")]
        intrinsics: Vec<String>,
        /// User the snippet runs as (default: the daemon's --default-user,
        /// `nobody`, when the daemon runs as root).
        #[arg(long)]
        user: Option<String>,
    },
    /// Runs a command beside a running execution, the way its program runs
    /// (environment, working directory, user, cgroup), with no input;
    /// prints its output and exits with its exit code.
    Exec {
        /// Session id.
        #[arg(long, default_value = "elide-ctl")]
        session: String,
        /// Kill the command after this long, e.g. 10s.
        #[arg(long, value_parser = elide_proto::go_duration::parse)]
        timeout: Option<Duration>,
        /// Execution id.
        execution: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Cancels an execution.
    Cancel {
        /// Session id.
        #[arg(long, default_value = "elide-ctl")]
        session: String,
        /// Execution id.
        execution: String,
        /// First signal (default SIGTERM).
        #[arg(long, default_value = "SIGTERM")]
        signal: String,
        /// Grace before SIGKILL, e.g. 5s.
        #[arg(long, value_parser = elide_proto::go_duration::parse, default_value = "5s")]
        grace: Duration,
    },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = match &args.address {
        Some(addr) => Target::Tcp(addr.clone()),
        None => Target::Unix(args.socket.clone()),
    };
    let mut client = connect(&target)
        .await
        .with_context(|| format!("connecting to the daemon at {target:?}"))?;
    match args.command {
        Command::Health => {
            let h = client.health(pb::HealthRequest {}).await?.into_inner();
            println!(
                "{} instance={} version={} uptime={}s",
                h.status().as_str_name(),
                h.instance_id,
                h.version,
                h.uptime.map_or(0, |u| u.seconds)
            );
        }
        Command::Capabilities => {
            let c = client
                .get_capabilities(pb::GetCapabilitiesRequest {})
                .await?
                .into_inner();
            println!("daemon {} (instance {})", c.daemon_version, c.instance_id);
            for l in &c.languages {
                if l.available {
                    println!(
                        "  language {:<10} {} {} start={}",
                        l.language,
                        l.runtime,
                        l.runtime_version,
                        describe_start(l)
                    );
                } else {
                    println!(
                        "  language {:<10} unavailable: {}",
                        l.language, l.unavailable_reason
                    );
                }
            }
            for i in &c.intrinsics {
                let grants = i.grants.join(" + ");
                let detail = if !i.unavailable_reason.is_empty() {
                    format!(" (unavailable: {})", i.unavailable_reason)
                } else if !i.multi_tenant_safe {
                    " (not multi-tenant safe)".to_owned()
                } else {
                    String::new()
                };
                println!(
                    "  intrinsic {:<10} grants {:<20} {}{detail}",
                    i.name, grants, i.description
                );
            }
            println!("  ai available: {}", c.ai_available);
            println!(
                "  memory limits: {} ({})",
                c.memory_limits, c.memory_limits_detail
            );
            println!("  limits: {:?}", c.limits.unwrap_or_default());
        }
        Command::Stats => {
            let s = client
                .get_daemon_stats(pb::GetDaemonStatsRequest {})
                .await?
                .into_inner();
            println!(
                "instance={} uptime={}s sessions={} running={} queued={}",
                s.instance_id,
                s.uptime.map_or(0, |u| u.seconds),
                s.sessions,
                s.running_executions,
                s.queued_executions
            );
            let languages: std::collections::BTreeSet<&String> =
                s.warm_starts.keys().chain(s.cold_starts.keys()).collect();
            for l in languages {
                println!(
                    "  starts {:<10} warm={} cold={}",
                    l,
                    s.warm_starts.get(l).copied().unwrap_or(0),
                    s.cold_starts.get(l).copied().unwrap_or(0)
                );
            }
            println!(
                "  warm interpreters replaced after dying (python zygotes, node workers): {}",
                s.zygote_restarts
            );
            for (method, n) in &s.requests {
                println!("  requests {method:<22} {n}");
            }
        }
        Command::Sessions => {
            let list = client
                .list_sessions(pb::ListSessionsRequest {})
                .await?
                .into_inner();
            for s in list.sessions {
                println!(
                    "{} running={} retained={} last_seq={}",
                    s.session_id, s.running_executions, s.retained_executions, s.last_seq
                );
            }
        }
        Command::Executions { session } => {
            let list = client
                .list_executions(pb::ListExecutionsRequest {
                    session_id: session,
                    active_only: false,
                })
                .await?
                .into_inner();
            for e in list.executions {
                println!("{} {} {}", e.execution_id, e.language, describe(&e));
            }
        }
        Command::Cancel {
            session,
            execution,
            signal,
            grace,
        } => {
            let s = client
                .cancel_execution(pb::CancelExecutionRequest {
                    session_id: session,
                    execution_id: execution,
                    signal,
                    grace: Some(elide_proto::duration_to_proto(grace)),
                })
                .await?
                .into_inner()
                .status
                .unwrap_or_default();
            println!("{} {}", s.execution_id, describe(&s));
        }
        Command::Exec {
            session,
            timeout,
            execution,
            command,
        } => {
            let code = exec(&mut client, session, execution, command, timeout).await?;
            std::process::exit(code);
        }
        Command::Run {
            language,
            code,
            file,
            args: prog_args,
            env,
            session,
            id,
            timeout,
            memory_mb,
            intrinsics,
            user,
        } => {
            let (code, source_name) = match (code, file) {
                (Some(code), _) => (code, String::new()),
                (None, Some(path)) => (
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                    path.display().to_string(),
                ),
                (None, None) => bail!("give --code or --file"),
            };
            client
                .create_session(pb::CreateSessionRequest {
                    session_id: session.clone(),
                    config: Some(pb::SessionConfig {
                        enabled_intrinsics: intrinsics,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .context("creating the session")?;
            let execution_id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let req = pb::ExecuteSnippetRequest {
                session_id: session.clone(),
                execution_id: execution_id.clone(),
                language,
                code,
                args: prog_args,
                env: env.into_iter().collect(),
                run_as_user: user.unwrap_or_default(),
                source_name,
                overrides: Some(pb::ExecutionOverrides {
                    memory_limit_mb: memory_mb,
                    timeout: timeout.map(elide_proto::duration_to_proto),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let code = run(&mut client, req).await?;
            std::process::exit(code);
        }
    }
    Ok(())
}

/// Streams an execution's output and returns the exit code to use.
async fn run(
    client: &mut pb::elide_daemon_client::ElideDaemonClient<tonic::transport::Channel>,
    req: pb::ExecuteSnippetRequest,
) -> anyhow::Result<i32> {
    let (session_id, execution_id) = (req.session_id.clone(), req.execution_id.clone());
    client.execute_snippet(req).await?;
    let mut output = client
        .stream_output(pb::StreamOutputRequest {
            session_id: session_id.clone(),
            execution_id: execution_id.clone(),
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut cancel_client = client.clone();
    let (sid, eid) = (session_id.clone(), execution_id.clone());
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_client
                .cancel_execution(pb::CancelExecutionRequest {
                    session_id: sid,
                    execution_id: eid,
                    signal: "SIGINT".into(),
                    grace: Some(elide_proto::duration_to_proto(Duration::from_secs(5))),
                })
                .await;
        }
    });
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr());
    while let Some(event) = output.next().await {
        match event?.event {
            Some(pb::output_event::Event::Chunk(c)) => {
                if c.stream() == pb::OutputStream::Stderr {
                    stderr.write_all(&c.data)?;
                } else {
                    stdout.write_all(&c.data)?;
                    stdout.flush()?;
                }
            }
            Some(pb::output_event::Event::Heartbeat(_)) => {}
            Some(pb::output_event::Event::Dropped(d)) => {
                eprintln!(
                    "[elide-ctl] {} bytes {}..{} of {} were dropped by the daemon's retention limit",
                    d.to_offset - d.from_offset,
                    d.from_offset,
                    d.to_offset,
                    d.stream().as_str_name()
                );
            }
            Some(pb::output_event::Event::End(_)) | None => break,
        }
    }
    interrupt.abort();
    let status = client
        .get_execution_status(pb::GetExecutionStatusRequest {
            session_id,
            execution_id,
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    use pb::ExecutionState as S;
    // How it ended, on stderr so stdout stays the program's own.
    eprintln!("[elide-ctl] {}", describe(&status));
    Ok(match status.state() {
        S::Exited | S::Cancelled => match (status.exit_code, signal_number(&status.signal)) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        },
        S::TimedOut => 124,
        // Killed at its memory limit: the shell's code for SIGKILL.
        S::Failed if status.oom_killed => 137,
        _ => 1,
    })
}

fn signal_number(name: &str) -> Option<i32> {
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

fn describe(s: &pb::ExecutionStatus) -> String {
    let mut out = s.state().as_str_name().to_lowercase();
    if let Some(code) = s.exit_code {
        out.push_str(&format!(" exit_code={code}"));
    }
    if !s.signal.is_empty() {
        out.push_str(&format!(" signal={}", s.signal));
    }
    if s.oom_killed {
        out.push_str(" oom_killed");
    }
    if !s.message.is_empty() {
        out.push_str(&format!(": {}", s.message));
    }
    out
}

/// How a language's programs start, e.g. "zygote (json,re)", "pool (node pool
/// of 2 per daemon, 2 ready)" or "cold".
fn describe_start(l: &pb::LanguageSupport) -> String {
    let mode = match l.start_mode() {
        pb::StartMode::Zygote => "zygote",
        pb::StartMode::Pool => "pool",
        pb::StartMode::Cold | pb::StartMode::Unspecified => "cold",
    };
    if l.start_detail.is_empty() {
        mode.to_string()
    } else {
        format!("{mode} ({})", l.start_detail)
    }
}

/// `exec`: starts the command, closes its stdin, copies its output and
/// returns its exit code.
async fn exec(
    client: &mut pb::elide_daemon_client::ElideDaemonClient<tonic::transport::Channel>,
    session_id: String,
    execution_id: String,
    command: Vec<String>,
    timeout: Option<Duration>,
) -> anyhow::Result<i32> {
    use pb::exec_input::Input;
    use pb::exec_output::Output;
    let start = pb::ExecStart {
        session_id,
        execution_id,
        command,
        timeout: timeout.map(elide_proto::duration_to_proto),
        ..Default::default()
    };
    let input = [
        Input::Start(start),
        Input::StdinClose(pb::ExecStdinClose {}),
    ]
    .map(|i| pb::ExecInput { input: Some(i) });
    let mut output = client
        .exec_in_execution(tokio_stream::iter(input))
        .await
        .context("starting the command")?
        .into_inner();
    while let Some(message) = output.message().await? {
        match message.output {
            Some(Output::Stdout(data)) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&data)?;
                out.flush()?;
            }
            Some(Output::Stderr(data)) => std::io::stderr().write_all(&data)?,
            Some(Output::Exited(exited)) => {
                if exited.timed_out {
                    eprintln!("[elide-ctl] killed at its timeout");
                }
                return Ok(exited.exit_code);
            }
            None => {}
        }
    }
    bail!("the daemon ended the command's stream without its exit")
}
