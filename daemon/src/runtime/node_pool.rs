//! Warm JavaScript: a pool of `node` processes booted ahead of time, each
//! waiting to run exactly one program.
//!
//! V8 cannot fork, so warm node means booting whole processes before they
//! are needed. Each worker is spawned the way a cold program is (its own
//! process group, `PR_SET_PDEATHSIG`, stdin `/dev/null`, stdout and stderr
//! piped to the daemon, an empty environment) running `node_worker.js`,
//! which reports "booted" on a control socket (fd 3) and then waits for
//! one job there: file, arguments, environment and working directory. From
//! then on the worker *is* the program: the daemon watches it exactly like a
//! cold one (same pid, same group, same pipes), and it is never reused, so
//! no state survives from one execution into another.
//!
//! The pool keeps `size` workers booted or booting. Taking one wakes the
//! refill task [`REFILL_DELAY`] later, and it boots a replacement in the
//! background. The delay is for the program that took the worker: a node
//! boot is tens of milliseconds of CPU on several threads, and started at
//! once it would compete with that program's own start (measured on two
//! cores: 4.9 ms to the first output byte with an immediate refill, 3.2 ms
//! deferred). An empty pool
//! is never an error and never a wait: the program starts cold. A worker
//! found dead while it waited is replaced and counted as a restart in the
//! runtime's [`StartCounters`] (the same counter a replaced python zygote
//! adds to).
//!
//! Workers are registered with [`child_reaper`] from the moment they are
//! spawned, so when the daemon is a child subreaper (warm python) its
//! orphan scan never reaps a worker (or the program it became) before tokio
//! waits for it.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use super::run_as::{self, Identity};
use super::{child_reaper, StartCounters};

/// The worker's bootstrap script.
const WORKER_SCRIPT: &str = include_str!("node_worker.js");
/// How long a worker may take to boot before it is given up.
const BOOT_LIMIT: Duration = Duration::from_secs(30);
/// How long handing a job to a worker may block (a stopped worker).
const JOB_WRITE_LIMIT: Duration = Duration::from_secs(5);
/// How long after a worker is taken its replacement starts booting.
const REFILL_DELAY: Duration = Duration::from_millis(20);
/// How often waiting workers are checked for an unexpected death.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a worker failed to boot, so a broken node is not respawned
/// in a tight loop.
const BOOT_FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Environment variables that node reads while it boots. A program whose
/// environment sets one of these starts cold, because a pooled worker booted
/// without them and could not honour them.
pub fn read_at_boot(name: &str) -> bool {
    name.starts_with("NODE_")
        || name.starts_with("UV_")
        || name.starts_with("LC_")
        || name == "LANG"
        || name == "OPENSSL_CONF"
}

/// What a pool is built from.
#[derive(Debug, Clone)]
pub struct NodePoolConfig {
    /// Workers kept booted or booting; 0 turns the pool off.
    pub size: usize,
    /// The node executable.
    pub node: PathBuf,
    /// Directory the bootstrap script is written to.
    pub script_dir: PathBuf,
    /// Where replaced workers are counted.
    pub counters: Arc<StartCounters>,
    /// Who workers run as (from their spawn, before node boots); `None`:
    /// the daemon's own user. Only programs of this user get a worker.
    pub user: Option<Identity>,
}

/// The job a worker runs, as it reads it on fd 3.
#[derive(Debug, serde::Serialize)]
pub struct Job<'a> {
    /// The program file (absolute).
    pub file: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Its complete environment.
    pub env: &'a BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: &'a Path,
}

/// A booted worker, waiting for its job.
pub struct Worker {
    child: Option<tokio::process::Child>,
    pgid: i32,
    control: Option<std::os::unix::net::UnixStream>,
}

impl Worker {
    /// Process (and process group) id.
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// Hands the job over; from now on the returned child is the program.
    pub fn run(mut self, job: &Job<'_>) -> std::io::Result<tokio::process::Child> {
        let message = serde_json::to_vec(job).map_err(std::io::Error::other)?;
        let mut control = self
            .control
            .take()
            .expect("a waiting worker has its socket");
        control.set_write_timeout(Some(JOB_WRITE_LIMIT))?;
        control.write_all(&message)?;
        control.shutdown(std::net::Shutdown::Write)?;
        Ok(self.child.take().expect("a waiting worker has its process"))
    }

    fn has_died(&mut self) -> bool {
        !matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A worker that was never handed a job has nothing to finish; tokio
        // reaps it (or, once forgotten, the orphan scan does).
        if self.child.is_some() {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            child_reaper::forget(self.pgid);
        }
    }
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Worker>,
    booting: usize,
    refilling: bool,
    /// A wake-up of the refill task is already scheduled.
    refill_scheduled: bool,
}

/// Booted `node` workers, each for one program.
pub struct NodePool {
    config: NodePoolConfig,
    script: PathBuf,
    state: Mutex<PoolState>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for NodePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePool")
            .field("size", &self.config.size)
            .finish_non_exhaustive()
    }
}

impl NodePool {
    /// Writes the bootstrap script and makes an (empty) pool; workers boot
    /// once a tokio runtime runs [`NodePool::ensure_refilling`].
    pub fn new(config: NodePoolConfig) -> std::io::Result<Arc<NodePool>> {
        std::fs::create_dir_all(&config.script_dir)?;
        let script = config.script_dir.join("elide-node-worker.js");
        // Written aside and renamed, so a worker booting from an older
        // daemon's copy never reads a half-written file.
        let partial = config
            .script_dir
            .join(format!(".elide-node-worker.js.{}", std::process::id()));
        std::fs::write(&partial, WORKER_SCRIPT)?;
        std::fs::rename(&partial, &script)?;
        Ok(Arc::new(NodePool {
            config,
            script,
            state: Mutex::default(),
            wake: Arc::new(Notify::new()),
        }))
    }

    /// Who the workers run as (`None`: the daemon's user).
    pub fn user(&self) -> Option<&Identity> {
        self.config.user.as_ref()
    }

    /// Workers the pool keeps.
    pub fn size(&self) -> usize {
        self.config.size
    }

    /// Workers booted and waiting now.
    pub fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the background refill once (needs a tokio runtime; without
    /// one it does nothing yet).
    pub fn ensure_refilling(self: &Arc<Self>) {
        if self.config.size == 0 || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        {
            let mut state = self.lock();
            if state.refilling {
                return;
            }
            state.refilling = true;
        }
        tokio::spawn(refill_loop(Arc::downgrade(self), self.wake.clone()));
    }

    /// A live, booted worker, or `None` when none is waiting.
    pub fn take(self: &Arc<Self>) -> Option<Worker> {
        self.ensure_refilling();
        let mut state = self.lock();
        let mut taken = None;
        while let Some(mut worker) = state.ready.pop_front() {
            if worker.has_died() {
                self.config.counters.restart();
                tracing::warn!(
                    pid = worker.pid(),
                    "a pooled node worker died while waiting; replacing it"
                );
                continue;
            }
            taken = Some(worker);
            break;
        }
        let runtime = tokio::runtime::Handle::try_current().ok();
        let schedule = runtime.is_some() && !std::mem::replace(&mut state.refill_scheduled, true);
        drop(state);
        if let (true, Some(runtime)) = (schedule, runtime) {
            let pool = Arc::downgrade(self);
            runtime.spawn(async move {
                tokio::time::sleep(REFILL_DELAY).await;
                if let Some(pool) = pool.upgrade() {
                    pool.lock().refill_scheduled = false;
                    pool.wake.notify_one();
                }
            });
        }
        taken
    }

    /// Drops waiting workers that died, counting them.
    fn sweep(&self) {
        let mut state = self.lock();
        let before = state.ready.len();
        state.ready.retain_mut(|w| {
            let dead = w.has_died();
            if dead {
                tracing::warn!(
                    pid = w.pid(),
                    "a pooled node worker died while waiting; replacing it"
                );
            }
            !dead
        });
        for _ in state.ready.len()..before {
            self.config.counters.restart();
        }
    }

    fn spawn_worker(
        &self,
    ) -> std::io::Result<(tokio::process::Child, i32, std::os::unix::net::UnixStream)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let their_fd = theirs.as_raw_fd();
        let user = self.config.user.clone();
        let mut cmd = tokio::process::Command::new(&self.config.node);
        cmd.arg(&self.script)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (dup2, fcntl, setgroups, setgid,
        // setuid, prctl).
        unsafe {
            cmd.pre_exec(move || {
                if their_fd == 3 {
                    // Already in place: only the close-on-exec flag must go.
                    nix::fcntl::fcntl(
                        std::os::fd::BorrowedFd::borrow_raw(3),
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )?;
                } else if nix::libc::dup2(their_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Node boots as the user: no thread of it ever runs as root.
                if let Some(user) = &user {
                    run_as::drop_privileges(user)?;
                }
                // After the credential change, which would clear it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        // Registered before the orphan scan can see it (tokio waits for it,
        // and for the program it becomes).
        let mut owned = child_reaper::hold();
        let child = cmd.spawn()?;
        drop(theirs);
        let pid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| std::io::Error::other("the worker exited before it got a pid"))?;
        owned.register(pid);
        Ok((child, pid, ours))
    }

    /// Boots one worker and waits for its "booted" byte.
    async fn boot_one(&self) -> std::io::Result<Worker> {
        let (child, pid, control) = self.spawn_worker()?;
        let mut worker = Worker {
            child: Some(child),
            pgid: pid,
            control: None,
        };
        control.set_nonblocking(true)?;
        let mut control = tokio::net::UnixStream::from_std(control)?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(BOOT_LIMIT, control.read(&mut byte)).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => return Err(std::io::Error::other("the worker exited while booting")),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::other(format!(
                    "the worker did not boot within {BOOT_LIMIT:?}"
                )))
            }
        }
        let control = control.into_std()?;
        control.set_nonblocking(false)?;
        worker.control = Some(control);
        Ok(worker)
    }
}

/// Keeps the pool full until the pool is dropped.
async fn refill_loop(pool: Weak<NodePool>, wake: Arc<Notify>) {
    loop {
        let Some(strong) = pool.upgrade() else { return };
        strong.sweep();
        let missing = {
            let mut state = strong.lock();
            let missing = strong
                .config
                .size
                .saturating_sub(state.ready.len() + state.booting);
            state.booting += missing;
            missing
        };
        for _ in 0..missing {
            let pool = strong.clone();
            tokio::spawn(async move {
                let booted = pool.boot_one().await;
                if let Err(e) = &booted {
                    tracing::warn!(error = %e, "a pooled node worker failed to boot");
                    tokio::time::sleep(BOOT_FAILURE_PAUSE).await;
                }
                let mut state = pool.lock();
                state.booting -= 1;
                if let Ok(worker) = booted {
                    tracing::debug!(pid = worker.pid(), "pooled node worker ready");
                    state.ready.push_back(worker);
                }
                drop(state);
                pool.wake.notify_one();
            });
        }
        drop(strong);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
    }
}
