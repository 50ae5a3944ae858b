//! The text of log lines operators search for, each with one home: the
//! driver writes them from here, and the simulation holds them to the
//! facts (`operator-log`: a line says only what happened).

/// `StartTask` found its execution already on the daemon (the daemon
/// answered `created = false`: a retry of a start whose answer was lost),
/// so the program was not started a second time.
pub const EXECUTION_EXISTED: &str = "execution already existed (retried StartTask)";

/// A destroyed task's execution could not be deleted yet; the plugin
/// tries again.
pub const DELETE_RETRYING: &str = "could not delete the destroyed task's execution; retrying";

/// A delete that had to be retried ([`DELETE_RETRYING`]) went through.
pub const DELETE_DONE: &str = "the destroyed task's execution is gone from the daemon";
