//! One run of a scenario: builds the simulated cluster (per client a Nomad
//! agent, its driver plugin and its daemon), applies the fault schedule
//! between steps, and hands what was seen to the invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use pb::elide_daemon_client::ElideDaemonClient;

use crate::daemon_host::DaemonHost;
use crate::evidence::{Evidence, Held};
use crate::files::MemoryFiles;
use crate::invariants::{self, Violation};
use crate::logs::LogBook;
use crate::net::channel;
use crate::nomad::{AgentCrashes, AgentDisk, NomadAgent};
use crate::observe::Observations;
use crate::operator_log::OperatorLog;
use crate::plan::{daemon_host, nomad_host, plugin_host, Action, Plan, DAEMON_PORT};
use crate::plugin_host::PluginHost;
use crate::scenario::Scenario;
use crate::trace::Trace;
use crate::truth::GroundTruth;

/// Quiet time after the workload and the last fault, for background
/// clean-up to finish: long enough for the driver's deletion of a destroyed
/// task's execution to come round once more at its longest back-off.
pub const SETTLE: Duration = Duration::from_secs(
    elide_driver::REAP_MAX_DELAY.as_secs() + elide_driver::FORCE_DELETE_TIMEOUT.as_secs() + 15,
);

/// The outcome of one run.
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// The trace.
    pub trace: Trace,
    /// Broken invariants (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Tasks in the workload.
    pub tasks: usize,
    /// Outcomes, latencies and lost bytes, as the invariants counted them.
    pub summary: invariants::Summary,
}

impl RunReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The agent's plugin block for client `n`.
fn plugin_config(scenario: &Scenario, client: u32) -> String {
    let cluster = &scenario.cluster;
    let mut text = format!(
        "daemon_address = \"{}:{DAEMON_PORT}\"\nstatus_mode = \"{}\"\n",
        daemon_host(client),
        cluster.status_mode
    );
    if let Some(interval) = &cluster.poll_interval {
        text.push_str(&format!("poll_interval = \"{interval}\"\n"));
    }
    text.push_str(&format!(
        "session_config {{\n  idle_timeout = \"{}\"\n}}\n",
        cluster.idle_timeout
    ));
    text
}

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> RunReport {
    run_logging(scenario, seed, None)
}

/// Runs `scenario` with `seed`, also writing the log lines of the code
/// under test that `stderr` lets through to stderr.
pub fn run_logging(
    scenario: &Scenario,
    seed: u64,
    stderr: Option<tracing_subscriber::EnvFilter>,
) -> RunReport {
    // The driver's lines are evidence (`operator-log`); every host runs on
    // this thread, so a subscriber for the thread sees all of them.
    let operator_log = OperatorLog::default();
    let _logging = tracing::subscriber::set_default(operator_log.subscriber(stderr));
    let plan = Plan::draw(scenario, seed);
    let trace = Trace::default();
    let seen = Observations::default();
    let truth = GroundTruth::default();
    let crashes = AgentCrashes::default();
    let cluster = &scenario.cluster;

    let mut builder = crate::builder(seed, scenario.limit.0);
    builder
        .tick_duration(cluster.tick.0)
        .min_message_latency(cluster.latency[0].0)
        .max_message_latency(cluster.latency[1].0);
    let mut sim = builder.build();

    let mut daemons = BTreeMap::new();
    let mut logs = BTreeMap::new();
    let mut dial_logs = BTreeMap::new();
    let mut plugin_files = BTreeMap::new();
    let mut plugin_boots = BTreeMap::new();
    for client in 1..=cluster.clients {
        let daemon = DaemonHost::new(&daemon_host(client), DAEMON_PORT)
            .with_limits(scenario.daemon.apply(Default::default()))
            .with_runtime(scenario.daemon.runtime())
            .recording_into(truth.clone())
            .with_watch_stream(cluster.daemon_watch)
            .with_strict_after_seq(cluster.strict_after_seq);
        daemon.install(&mut sim);
        daemons.insert(client, daemon);
        let book = LogBook::default();
        let dial_log = crate::net::DialLog::default();
        let files = MemoryFiles::default();
        plugin_files.insert(client, files.clone());
        let boots = Arc::<std::sync::Mutex<Vec<Duration>>>::default();
        plugin_boots.insert(client, boots.clone());
        dial_logs.insert(client, dial_log.clone());
        PluginHost {
            name: plugin_host(client),
            machine: format!("client-{client}"),
            files: files.clone(),
            logs: book.clone(),
            dials: dial_log.clone(),
            boots: boots.clone(),
        }
        .install(&mut sim);
        NomadAgent {
            client,
            tasks: Arc::new(plan.tasks_of(client)),
            plugin_config: plugin_config(scenario, client),
            disk: AgentDisk::default(),
            logs: book.clone(),
            seen: seen.clone(),
            trace: trace.clone(),
            crashes: crashes.clone(),
        }
        .install(&mut sim);
        logs.insert(client, book);
    }

    // The observer: waits for the workload and the fault schedule to be
    // over, lets clean-up settle, then asks each daemon what it holds.
    let departed = plan.departed_clients();
    let last_action = plan.actions.last().map(|a| a.0).unwrap_or_default();
    let mut settle = SETTLE;
    if !departed.is_empty() {
        let idle = elide_proto::go_duration::parse(&cluster.idle_timeout).unwrap_or_default();
        settle = settle.max(idle + SETTLE);
    }
    let held: Arc<Mutex<BTreeMap<u32, Option<Held>>>> = Arc::default();
    {
        let seen = seen.clone();
        let held = held.clone();
        let clients = cluster.clients;
        let trace = trace.clone();
        sim.client("observer", async move {
            loop {
                let done = seen.done_clients();
                let all = (1..=clients).all(|c| done.contains(&c) || departed.contains(&c));
                let now = turmoil::sim_elapsed().unwrap_or_default();
                if all && now >= last_action {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            trace.record("observer", "workload over; settling");
            tokio::time::sleep(settle).await;
            for client in 1..=clients {
                let mut daemon = ElideDaemonClient::new(channel(&daemon_host(client), DAEMON_PORT));
                let listed =
                    tokio::time::timeout(Duration::from_secs(5), list_everything(&mut daemon))
                        .await;
                held.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(client, listed.ok().and_then(Result::ok));
            }
            Ok(())
        });
    }

    let mut actions = plan.actions.iter().peekable();
    let mut aborted = None;
    loop {
        let now = sim.elapsed();
        while let Some((at, action)) = actions.peek() {
            if *at > now {
                break;
            }
            trace.record_at(now, "world", action.describe());
            apply(&mut sim, action, &daemons, &logs);
            actions.next();
        }
        // An agent that asked to crash (between receiving a result and
        // persisting it) restarts at once; its plugin keeps running, as
        // Nomad's plugins do across agent restarts (reattach).
        for client in crashes.take_requested() {
            let agent = nomad_host(client);
            trace.record_at(now, "world", format!("restart {agent} (crashed)"));
            sim.bounce(agent.as_str());
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                aborted = Some(e.to_string());
                break;
            }
        }
    }
    let simulated = sim.elapsed();

    let daemon_states = daemons
        .iter()
        .map(|(client, d)| (*client, (d.boots(), sim.is_host_running(d.name.as_str()))))
        .collect();
    let held = held.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let evidence = Evidence {
        scenario,
        plan: &plan,
        seen: &seen,
        truth: &truth,
        logs: &logs,
        daemons: daemon_states,
        held,
        dials: dial_logs.iter().map(|(c, log)| (*c, log.dials())).collect(),
        files: plugin_files.iter().map(|(c, f)| (*c, f.all())).collect(),
        daemon_requests: daemons
            .iter()
            .map(|(c, d)| (*c, d.requests.all()))
            .collect(),
        refusals: daemons
            .iter()
            .map(|(c, d)| (*c, d.refusals.all()))
            .collect(),
        existing_starts: daemons
            .iter()
            .map(|(c, d)| (*c, d.existing_starts.all()))
            .collect(),
        deletes: daemons.iter().map(|(c, d)| (*c, d.deletes.all())).collect(),
        operator_log: &operator_log.lines(),
        plugin_boots: plugin_boots
            .iter()
            .map(|(c, b)| (*c, b.lock().unwrap_or_else(|p| p.into_inner()).clone()))
            .collect(),
        aborted,
    };
    let violations = invariants::check(&evidence);
    let summary = invariants::summarize(&evidence);
    for violation in &violations {
        trace.record_at(simulated, "invariant", violation.to_string());
    }
    RunReport {
        scenario: scenario.name.clone(),
        seed,
        trace,
        violations,
        simulated,
        tasks: plan.tasks.len(),
        summary,
    }
}

/// Every session of a daemon and every execution in them.
async fn list_everything(
    daemon: &mut ElideDaemonClient<tonic::transport::Channel>,
) -> Result<Held, tonic::Status> {
    let sessions: Vec<String> = daemon
        .list_sessions(pb::ListSessionsRequest {})
        .await?
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    let mut executions = BTreeSet::new();
    for session_id in &sessions {
        let listed = daemon
            .list_executions(pb::ListExecutionsRequest {
                session_id: session_id.clone(),
                active_only: false,
            })
            .await?
            .into_inner();
        executions.extend(listed.executions.into_iter().map(|e| e.execution_id));
    }
    Ok(Held {
        sessions,
        executions,
    })
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    action: &Action,
    daemons: &BTreeMap<u32, DaemonHost>,
    logs: &BTreeMap<u32, LogBook>,
) {
    match action {
        Action::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
        Action::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
        Action::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
        Action::Release(a, b) => sim.release(a.as_str(), b.as_str()),
        Action::Latency(a, b, d) => sim.set_link_max_message_latency(a.as_str(), b.as_str(), *d),
        Action::Crash(h) => sim.crash(h.as_str()),
        Action::Restart(h) => sim.bounce(h.as_str()),
        Action::ReaderAway(client, group, away) => {
            if let Some(book) = logs.get(client) {
                book.reader_away(group.as_deref(), *away);
            }
        }
        Action::ReaderBack(client, group, away) => {
            if let Some(book) = logs.get(client) {
                book.reader_back(group.as_deref(), *away);
            }
        }
        Action::Wipe(h) => {
            if let Some(daemon) = daemons.values().find(|d| &d.name == h) {
                daemon.wipe();
            }
        }
        Action::BreakOutputStreams(h, on) => {
            if let Some(daemon) = daemons.values().find(|d| &d.name == h) {
                daemon.break_output_streams(*on);
            }
        }
        Action::LoseStartAnswers(h, on) => {
            if let Some(daemon) = daemons.values().find(|d| &d.name == h) {
                daemon.lose_start_answers(*on);
            }
        }
        Action::RefuseStops(h, code) => {
            if let Some(daemon) = daemons.values().find(|d| &d.name == h) {
                daemon.refuse_stops(*code);
            }
        }
    }
}
