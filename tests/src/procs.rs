//! Looking at processes through `/proc`: finding daemons by their socket
//! argument, their session and their open files, and cleaning them up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Live (not zombie) processes whose command line has `arg` as one of its
/// arguments, e.g. the daemons listening on one socket path.
pub fn with_arg(arg: &Path) -> Vec<i32> {
    let wanted = arg.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == wanted))
        })
        .filter(|pid| is_alive(*pid))
        .collect();
    pids.sort();
    pids
}

/// Whether `pid` exists and is not a zombie (a daemon reparented to a PID
/// 1 that does not reap stays a zombie).
pub fn is_alive(pid: i32) -> bool {
    match stat_fields(pid) {
        Some(fields) => fields.first().is_some_and(|state| state != "Z"),
        None => false,
    }
}

/// The session id of `pid` (field 6 of `/proc/<pid>/stat`).
pub fn session_id(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// `/proc/<pid>/stat` after the command name: state, ppid, pgrp, session…
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// What file descriptor `fd` of `pid` points at (`pipe:[123]`, a path…).
pub fn fd_target(pid: i32, fd: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

/// Waits up to `limit` for `condition`, checking every 50 ms.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops every process with `socket` among its arguments when dropped: the
/// daemons a plugin started are not the test's children and outlive the
/// plugin by design. Create it before the plugin so it drops after it
/// (otherwise the plugin would restart what this kills).
pub struct KillOnDrop {
    socket: PathBuf,
}

impl KillOnDrop {
    /// Guards the daemons of `socket`.
    pub fn new(socket: &Path) -> Self {
        KillOnDrop {
            socket: socket.to_owned(),
        }
    }

    /// SIGTERM (SIGKILL after 10 s) to every such process; waits until
    /// they are gone.
    pub fn kill_all(&self) {
        let pids = with_arg(&self.socket);
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        if !wait_until(Duration::from_secs(10), || {
            pids.iter().all(|pid| !is_alive(*pid))
        }) {
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid as u32 != std::process::id() && String::from_utf8_lossy(&cmdline).contains(marker) {
            // Zombies have an empty cmdline, so anything found here is alive.
            found.push(pid);
        }
    }
    found
}
