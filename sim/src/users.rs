//! The simulated clients' users: a fixed table, no user database and no
//! file system (the scripted runtime runs no program as anyone).

use std::io;
use std::path::Path;

use elide_driver::{HostUser, TaskUsers};

/// Every simulated client has the same users: `nobody` (the driver's
/// default) and `root`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimUsers;

impl TaskUsers for SimUsers {
    fn lookup(&self, name: &str) -> io::Result<Option<HostUser>> {
        let ids = match name {
            "nobody" => Some((65534, 65534)),
            "root" => Some((0, 0)),
            _ => None,
        };
        Ok(ids.map(|(uid, gid)| HostUser {
            name: name.to_owned(),
            uid,
            gid,
        }))
    }

    fn prepare_task_dir(&self, _task_dir: &Path, _user: &HostUser) -> io::Result<()> {
        Ok(())
    }
}
