//! `elide-sim`: runs simulation scenarios.
//!
//! * `elide-sim run scenarios/X.toml --seed N` replays one run and prints
//!   its trace (who did what, when, in simulated time) and the verdict;
//! * `elide-sim swarm --seeds N [--budget 3m] [scenarios…]` runs every
//!   scenario with N seeds (within a wall-clock budget, if given) and
//!   prints, for each failure, the command that replays it.
//!
//! Both report simulated seconds per wall second and per CPU second.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use elide_sim::{run_scenario, run_scenario_logging, RunReport, Scenario};

#[derive(Parser)]
#[command(
    name = "elide-sim",
    about = "Deterministic simulation of Nomad clients, the elide driver and daemons"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one scenario with one seed and prints its trace.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print only the verdict, not the trace.
        #[arg(long)]
        quiet: bool,
        /// Also write the driver's and daemon's own logs to stderr, stamped
        /// with simulated time (an `EnvFilter`, e.g. `info` or
        /// `elide_driver=debug`).
        #[arg(long, value_name = "FILTER")]
        log: Option<String>,
    },
    /// Runs scenarios with many seeds.
    Swarm {
        /// Seeds per scenario.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 1000)]
        first_seed: u64,
        /// Wall-clock budget (Go duration, e.g. `3m`): no run starts after
        /// it is spent, so a CI job's swarm takes a bounded time. Runs the
        /// scenarios seed by seed, in turn.
        #[arg(long, value_name = "DURATION")]
        budget: Option<String>,
        /// Scenario files (default: every file in `scenarios/`).
        scenarios: Vec<PathBuf>,
    },
}

/// The filter for the code under test's `tracing` output to stderr.
fn stderr_filter(filter: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log {filter:?} is not a valid filter"))
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run {
            scenario,
            seed,
            quiet,
            log,
        } => {
            let stderr = log.as_deref().map(stderr_filter).transpose()?;
            let loaded = Scenario::load(&scenario)?;
            let (wall, cpu) = (Instant::now(), cpu_time());
            let report = run_scenario_logging(&loaded, seed, stderr);
            let (wall, cpu) = (wall.elapsed(), cpu_time().saturating_sub(cpu));
            if !quiet {
                for line in report.trace.lines() {
                    println!("{line}");
                }
            }
            print_verdict(&report, wall, cpu);
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Swarm {
            seeds,
            first_seed,
            budget,
            scenarios,
        } => {
            let budget = budget
                .map(|text| {
                    elide_proto::go_duration::parse(&text)
                        .with_context(|| format!("--budget {text:?} is not a duration"))
                })
                .transpose()?;
            let files = if scenarios.is_empty() {
                scenario_files()?
            } else {
                scenarios
            };
            let loaded = files
                .iter()
                .map(|file| Scenario::load(file).map(|s| (file, s)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut failures = Vec::new();
            let mut runs = 0u64;
            let (mut simulated, wall, cpu) =
                (std::time::Duration::ZERO, Instant::now(), cpu_time());
            'seeds: for seed in first_seed..first_seed + seeds {
                for (file, loaded) in &loaded {
                    if budget.is_some_and(|budget| wall.elapsed() >= budget) {
                        println!("budget spent; stopping before seed {seed}");
                        break 'seeds;
                    }
                    let report = run_scenario(loaded, seed);
                    runs += 1;
                    simulated += report.simulated;
                    let verdict = if report.passed() { "ok" } else { "FAILED" };
                    println!(
                        "{verdict:>6} {} seed {seed}: {} tasks, {:.0} simulated s",
                        loaded.name,
                        report.tasks,
                        report.simulated.as_secs_f64()
                    );
                    if !report.passed() {
                        for v in report.violations.iter().take(5) {
                            println!("         {v}");
                        }
                        failures.push(format!(
                            "cargo run -p elide-sim --bin elide-sim -- run {} --seed {seed}",
                            file.display()
                        ));
                    }
                }
            }
            let (wall, cpu) = (wall.elapsed(), cpu_time().saturating_sub(cpu));
            println!(
                "\n{} runs, {} failed; {:.0} simulated s in {:.1} wall s ({})",
                runs,
                failures.len(),
                simulated.as_secs_f64(),
                wall.as_secs_f64(),
                speed(simulated, wall, cpu)
            );
            for command in &failures {
                println!("replay: {command}");
            }
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn scenario_files() -> anyhow::Result<Vec<PathBuf>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// This process's CPU time (user and system). A run is single-threaded,
/// so simulated seconds per CPU second is what the wall clock of an idle
/// machine shows, and stays meaningful on a busy one.
fn cpu_time() -> std::time::Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let (user, system) = (u.user_time(), u.system_time());
            let micros =
                |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
            std::time::Duration::from_micros(micros(user) + micros(system))
        })
        .unwrap_or_default()
}

/// "N simulated s per wall s, M per CPU s".
fn speed(
    simulated: std::time::Duration,
    wall: std::time::Duration,
    cpu: std::time::Duration,
) -> String {
    let per = |d: std::time::Duration| simulated.as_secs_f64() / d.as_secs_f64().max(1e-9);
    format!(
        "{:.0} simulated s per wall s, {:.0} per CPU s",
        per(wall),
        per(cpu)
    )
}

fn print_verdict(report: &RunReport, wall: std::time::Duration, cpu: std::time::Duration) {
    println!(
        "\n{} seed {}: {} tasks: {} clean results, {} explicit failures, {} refused",
        report.scenario,
        report.seed,
        report.tasks,
        report.summary.clean,
        report.summary.failed,
        report.summary.rejected
    );
    if report.summary.lost_bytes > 0 {
        println!(
            "output the driver reported lost (the daemon no longer had it, or Nomad's log reader never took it): {} bytes",
            report.summary.lost_bytes
        );
    }
    println!(
        "completion latency (program exit to WaitTask result, simulated): p50 {:?}, p99 {:?}, max {:?}",
        report.summary.latency.quantile(0.5),
        report.summary.latency.quantile(0.99),
        report.summary.latency.quantile(1.0)
    );
    println!(
        "slowest result after its program's end (or the client's last fault): {:?}",
        report.summary.slowest
    );
    let stats = &report.summary.stats;
    if stats.samples > 0 {
        println!(
            "TaskStats: {} samples; longest wait for a sample after a fault ended: {:?}",
            stats.samples, stats.longest_resume
        );
    }
    let signals = &report.summary.signals;
    if signals.ok + signals.failed > 0 {
        println!(
            "SignalTask: {} answered OK, {} failed ({} of them delivered all the same, after the error)",
            signals.ok, signals.failed, signals.failed_delivered
        );
    }
    println!(
        "{:.1} simulated s in {:.2} wall s ({}); trace hash {}",
        report.simulated.as_secs_f64(),
        wall.as_secs_f64(),
        speed(report.simulated, wall, cpu),
        report.trace.hash()
    );
    if report.passed() {
        println!("PASSED: every invariant held");
    } else {
        println!("FAILED: {} violation(s)", report.violations.len());
        for v in &report.violations {
            println!("  {v}");
        }
    }
}
