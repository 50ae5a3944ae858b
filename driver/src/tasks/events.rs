//! Task events (Nomad's "Driver" task events) and the plugin-wide message
//! for calls made before `SetConfig`: vocabulary the task lifecycle and the
//! driver share, kept here so `driver` depends on `tasks` and not back.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// Description reported before the first successful `SetConfig`.
pub const NOT_CONFIGURED: &str = "plugin not configured yet (SetConfig has not been called)";

/// An event about a task, shown by Nomad as a "Driver" task event.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    /// Nomad's task id (`<alloc>/<task>/<random>`).
    pub task_id: String,
    /// Allocation id; with `task_name`, what Nomad routes the event by.
    pub alloc_id: String,
    /// Task name.
    pub task_name: String,
    /// When it happened.
    pub timestamp: SystemTime,
    /// Human-readable message.
    pub message: String,
    /// Extra details.
    pub annotations: BTreeMap<String, String>,
}
