//! `leftover-files`: once every task of a client is destroyed, the plugin
//! keeps nothing for them on disk: its delete journal and pending stops
//! are empty, and no task's output offsets or stop file remain (of a task
//! the plugin that held it destroyed: a plugin restarted since knows only
//! the task id, not its directory, which Nomad removes with the
//! allocation). A file
//! left behind is state the next plugin would act on (a delete retried
//! forever, a stop applied to a task id Nomad never reuses) and disk an
//! operator has to clean up.

use crate::evidence::{Evidence, Violation};

/// The violations of `leftover-files`.
pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let departed = e.plan.departed_clients();
    for (client, files) in &e.files {
        if departed.contains(client) {
            continue;
        }
        let tasks = e.plan.tasks_of(*client);
        let boots = e.plugin_boots.get(client).map(Vec::as_slice).unwrap_or(&[]);
        let all_destroyed = tasks.iter().all(|plan| {
            let seen = e.seen.seen(&plan.task_id);
            seen.destroyed_at.is_some() || seen.start_calls == 0 || seen.rejected.is_some()
        });
        if !all_destroyed {
            continue;
        }
        for (path, bytes) in files {
            // A task's own files, in its directory, are the driver's to
            // remove only if the plugin that held the task destroyed it.
            let owner = tasks
                .iter()
                .find(|plan| path.to_string_lossy().contains(plan.execution_id.as_str()));
            if let Some(owner) = owner {
                let seen = e.seen.seen(&owner.task_id);
                let held = match (seen.attached_at, seen.destroyed_at) {
                    (Some(attached), Some(destroyed)) => {
                        !boots.iter().any(|b| attached < *b && *b <= destroyed)
                    }
                    _ => false,
                };
                if !held {
                    continue;
                }
            }
            let empty = match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(serde_json::Value::Object(map)) => map.is_empty(),
                Ok(serde_json::Value::Array(list)) => list.is_empty(),
                _ => false,
            };
            if !empty {
                out.push(Violation {
                    rule: "leftover-files",
                    task: None,
                    detail: format!(
                        "client {client}: every task is destroyed, but the plugin still keeps {} ({})",
                        path.display(),
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    ),
                });
            }
        }
    }
    out
}
