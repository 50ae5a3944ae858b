//! A simulated daemon machine: the production `DaemonService` and
//! `SessionRegistry`, with the scripted runtime (recorded as ground truth),
//! a virtual clock and a state store that survives crashes of the host (the
//! "disk"). Optionally an older daemon without the `WatchSession` stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use elide_daemon::{
    DaemonService, Limits, MemoryStore, RegistryDeps, ScriptedRuntime, SequentialIds,
    SessionRegistry,
};
use elide_proto::wall_clock::TokioClock;

use crate::daemon_wire::{Deletes, ExistingStarts, Refusals, RequestCounts, Served, StopRefusal};
use crate::net::incoming;
use crate::truth::{GroundTruth, RecordingRuntime};

/// One daemon host of a simulated cluster.
#[derive(Clone)]
pub struct DaemonHost {
    /// Host name (what clients dial).
    pub name: String,
    /// Port the daemon listens on.
    pub port: u16,
    /// Limits of the daemon.
    pub limits: Limits,
    /// Durable state: outlives crashes because the host factory only
    /// borrows it; [`DaemonHost::wipe`] replaces it with an empty one.
    disk: Arc<Mutex<Arc<MemoryStore>>>,
    /// Whether the daemon serves `WatchSession` (an older daemon does not:
    /// the driver must fall back to polling).
    pub watch_stream: bool,
    /// What runs its programs.
    pub runtime: ScriptedRuntime,
    /// Where program runs are recorded.
    pub truth: GroundTruth,
    boots: Arc<AtomicU64>,
    /// Every request it served.
    pub requests: RequestCounts,
    /// Whether its `WatchSession` follows `after_seq` to the letter
    /// (see [`crate::daemon_wire`]).
    pub strict_after_seq: bool,
    /// Whether it breaks off its output streams now
    /// ([`crate::scenario::FaultKind::BreakOutputStreams`]).
    breaking_streams: Arc<AtomicBool>,
    /// Whether it refuses every `CancelExecution` and `DeleteExecution`
    /// now, and with which code.
    refusing_stops: StopRefusal,
    /// The calls it refused so.
    pub refusals: Refusals,
    /// The executions it answered a start with `created = false` for.
    pub existing_starts: ExistingStarts,
    /// Whether it loses its answers to `ExecuteSnippet` now
    /// ([`crate::scenario::FaultKind::LoseStartAnswers`]).
    losing_start_answers: Arc<AtomicBool>,
    /// When it first answered a delete of each execution with OK.
    pub deletes: Deletes,
}

impl DaemonHost {
    /// A daemon host with default limits and an empty disk.
    pub fn new(name: &str, port: u16) -> Self {
        DaemonHost {
            name: name.to_string(),
            port,
            limits: Limits::default(),
            disk: Arc::default(),
            watch_stream: true,
            runtime: ScriptedRuntime::default(),
            truth: GroundTruth::default(),
            boots: Arc::default(),
            requests: RequestCounts::default(),
            strict_after_seq: false,
            breaking_streams: Arc::default(),
            refusing_stops: StopRefusal::default(),
            refusals: Refusals::default(),
            existing_starts: ExistingStarts::default(),
            losing_start_answers: Arc::default(),
            deletes: Deletes::default(),
        }
    }

    /// Records its programs into `truth`.
    pub fn recording_into(mut self, truth: GroundTruth) -> Self {
        self.truth = truth;
        self
    }

    /// With these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Empties the disk: the next boot finds no sessions and no
    /// executions (meant for a crashed host).
    pub fn wipe(&self) {
        *self.disk.lock().unwrap_or_else(|p| p.into_inner()) = Arc::default();
    }

    /// Runs its programs on `runtime`.
    pub fn with_runtime(mut self, runtime: ScriptedRuntime) -> Self {
        self.runtime = runtime;
        self
    }

    /// Starts or stops breaking off every `StreamOutput` stream after the
    /// next message it sends.
    pub fn break_output_streams(&self, on: bool) {
        self.breaking_streams.store(on, Ordering::SeqCst);
    }

    /// Starts or stops losing its answers to `ExecuteSnippet` (it carries
    /// the start out; the caller gets `UNAVAILABLE`).
    pub fn lose_start_answers(&self, on: bool) {
        self.losing_start_answers.store(on, Ordering::SeqCst);
    }

    /// Starts answering every `CancelExecution` and `DeleteExecution`
    /// with `code`, or (`None`) takes them again.
    pub fn refuse_stops(&self, code: Option<tonic::Code>) {
        self.refusing_stops.set(code);
    }

    /// Sends (or not) only events after `after_seq` on `WatchSession`,
    /// even after the gap for a cursor from another log.
    pub fn with_strict_after_seq(mut self, strict: bool) -> Self {
        self.strict_after_seq = strict;
        self
    }

    /// Serves (or not) the `WatchSession` stream.
    pub fn with_watch_stream(mut self, served: bool) -> Self {
        self.watch_stream = served;
        self
    }

    /// How many times the host has booted.
    pub fn boots(&self) -> u64 {
        self.boots.load(Ordering::SeqCst)
    }

    /// Registers the host; turmoil re-runs the factory on every restart.
    pub fn install(&self, sim: &mut turmoil::Sim<'_>) {
        let host = self.clone();
        sim.host(self.name.as_str(), move || {
            let host = host.clone();
            async move {
                let boot = host.boots.fetch_add(1, Ordering::SeqCst) + 1;
                let epoch = SystemTime::UNIX_EPOCH + turmoil::since_epoch().unwrap_or_default();
                let registry = SessionRegistry::open(RegistryDeps {
                    runtime: Arc::new(RecordingRuntime::new(
                        host.runtime.clone(),
                        host.truth.clone(),
                        &host.name,
                        boot,
                        host.limits.output_retention_bytes_per_stream,
                    )),
                    store: host.disk.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    clock: Arc::new(TokioClock::starting_at(epoch)),
                    // Instance ids differ per boot, deterministically.
                    ids: Arc::new(SequentialIds::new(&format!("{}-boot{boot}", host.name))),
                    limits: host.limits.clone(),
                    scratch_dir: "/nonexistent/elide-sim-scratch".into(),
                    version: "sim".into(),
                })?;
                registry.spawn_expiry(Duration::from_secs(1));
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", host.port)).await?;
                let service = Served {
                    inner: DaemonService::new(registry).into_server(),
                    watch_stream: host.watch_stream,
                    strict_after_seq: host.strict_after_seq,
                    requests: host.requests.clone(),
                    breaking_streams: host.breaking_streams.clone(),
                    refusing_stops: host.refusing_stops.clone(),
                    refusals: host.refusals.clone(),
                    existing_starts: host.existing_starts.clone(),
                    losing_start_answers: host.losing_start_answers.clone(),
                    deletes: host.deletes.clone(),
                };
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming(listener))
                    .await?;
                Ok(())
            }
        });
    }
}
