//! What the driver told the operator (`operator-log`): its log lines,
//! captured as it writes them, held to the facts. A line operators search
//! for says only what happened: "execution already existed" only for an
//! execution the daemon answered `created = false` for, and "gone from the
//! daemon" only closing a delete that had to be retried.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elide_driver::log_lines;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::Registry;

use crate::evidence::{Evidence, LogLine, Violation};

/// Every line the driver logged during a run, in order.
#[derive(Debug, Clone, Default)]
pub struct OperatorLog(Arc<Mutex<Vec<LogLine>>>);

impl OperatorLog {
    /// The lines so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A subscriber that records the driver's lines here, and also writes
    /// every line `stderr` lets through to stderr, stamped with the
    /// simulated time. It is installed for the run's thread only (the
    /// simulation runs every host on it).
    pub(crate) fn subscriber(
        &self,
        stderr: Option<tracing_subscriber::EnvFilter>,
    ) -> impl tracing::Subscriber + Send + Sync {
        let capture =
            Capture(self.clone()).with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("elide_driver") && *meta.level() <= tracing::Level::INFO
            }));
        let stderr = stderr.map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_timer(SimulatedTime)
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .with_filter(filter)
        });
        Registry::default().with(capture).with(stderr)
    }
}

struct Capture(OperatorLog);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0
             .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LogLine {
                at: turmoil::sim_elapsed().unwrap_or_default(),
                message: fields.message,
                task_id: fields.task_id,
            });
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    task_id: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "task_id" => self.task_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "task_id" => self.task_id = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Stamps log lines with the simulated time of the running simulation
/// (a wall-clock stamp would say nothing about when things happened).
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "[{:>10.3}s]", t.as_secs_f64()),
            None => write!(w, "[          -]"),
        }
    }
}

/// The violations of `operator-log`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let execution_of = |task_id: &str| {
        e.plan
            .tasks
            .iter()
            .find(|t| t.task_id == task_id)
            .map(|t| (t.client, t.execution_id.as_str()))
    };
    let mut retried_deletes = BTreeSet::new();
    for line in e.operator_log {
        let Some(task_id) = line.task_id.as_deref() else {
            continue;
        };
        let message = line.message.as_str();
        if message == log_lines::EXECUTION_EXISTED {
            let existed = execution_of(task_id).is_some_and(|(client, execution_id)| {
                e.existing_starts
                    .get(&client)
                    .is_some_and(|ids| ids.contains(execution_id))
            });
            if !existed {
                out.push(Violation::of_task(
                    "operator-log",
                    task_id,
                    format!(
                        "logged {message:?} at {:?}, but the daemon never answered a start of its execution with created = false",
                        line.at
                    ),
                ));
            }
        } else if message == log_lines::DELETE_RETRYING {
            retried_deletes.insert(task_id);
        } else if message == log_lines::DELETE_DONE && !retried_deletes.contains(task_id) {
            out.push(Violation::of_task(
                "operator-log",
                task_id,
                format!(
                    "logged {message:?} at {:?} with no retried delete before it",
                    line.at
                ),
            ));
        }
    }
    // The other way round, which also proves the lines are read as the
    // driver writes them: a retried delete that went through is closed by
    // its line, unless a new plugin process took the delete over (its
    // first try is its only one).
    for task_id in retried_deletes {
        let Some((client, execution_id)) = execution_of(task_id) else {
            continue;
        };
        let first_retry = e
            .operator_log
            .iter()
            .find(|l| {
                l.task_id.as_deref() == Some(task_id) && l.message == log_lines::DELETE_RETRYING
            })
            .map_or(Duration::ZERO, |l| l.at);
        let taken_over = e
            .plugin_boots
            .get(&client)
            .is_some_and(|boots| boots.iter().any(|at| *at > first_retry));
        let deleted = matches!(e.held.get(&client), Some(Some(held)) if !held.executions.contains(execution_id));
        let closed = e
            .operator_log
            .iter()
            .any(|l| l.task_id.as_deref() == Some(task_id) && l.message == log_lines::DELETE_DONE);
        if deleted && !taken_over && !closed {
            out.push(Violation::of_task(
                "operator-log",
                task_id,
                format!(
                    "a retried delete went through, but {:?} was never logged",
                    log_lines::DELETE_DONE
                ),
            ));
        }
    }
    out
}
