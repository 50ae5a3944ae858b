//! Which kernel rules a grant set asks for: pure derivation, no system
//! calls, so every rule can be tested without a kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The intrinsics the kernel (or the daemon, for `env`) restricts when
/// they are not granted. `console` is not among them: a program's stdout
/// and stderr are how the daemon reports it, so they are always connected.
pub const RESTRICTABLE: [&str; 5] = ["env", "fs.read", "fs.write", "net", "subprocess"];

/// The environment a program without `env` sees, besides `HOME` and
/// `TMPDIR` (both its scratch directory).
pub const MINIMAL_ENV: [(&str, &str); 2] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("LANG", "C.UTF-8"),
];

/// Device files every program may read (and, for `/dev/null`, write).
const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

/// What an execution is granted, by canonical intrinsic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    pub env: bool,
    pub fs_read: bool,
    pub fs_write: bool,
    pub net: bool,
    pub subprocess: bool,
}

impl Grants {
    /// From canonical names (what `ExecutionPolicy::intrinsics` holds).
    pub fn from_names(names: &[String]) -> Self {
        let has = |n: &str| names.iter().any(|g| g == n);
        Grants {
            env: has("env"),
            fs_read: has("fs.read"),
            fs_write: has("fs.write"),
            net: has("net"),
            subprocess: has("subprocess"),
        }
    }

    /// The restrictable intrinsics not granted, in [`RESTRICTABLE`] order.
    pub fn denied(&self) -> Vec<&'static str> {
        let granted = [
            self.env,
            self.fs_read,
            self.fs_write,
            self.net,
            self.subprocess,
        ];
        RESTRICTABLE
            .iter()
            .zip(granted)
            .filter(|(_, g)| !g)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// How a program starts, which decides what it must still execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPath {
    /// The rules apply before the exec of the interpreter: it (and its ELF
    /// loader) must stay executable.
    BeforeExec,
    /// The rules apply in a process that already runs the interpreter (a
    /// forked python zygote child): nothing needs executing.
    AfterExec,
}

/// The files a runtime needs to run at all: read (and, before its exec,
/// executed) whatever the grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFiles {
    /// Files and directories it reads: its executable, shared libraries,
    /// its standard library, locale and time zone data.
    pub read: Vec<PathBuf>,
    /// Files its start executes: the interpreter and its ELF loader.
    pub executables: Vec<PathBuf>,
    /// The system's program directories: readable (so executable) when
    /// `subprocess` is granted without `fs.read`.
    pub programs: Vec<PathBuf>,
}

/// One Landlock rule: what is allowed beneath `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

/// Filesystem rules: which kinds of access are restricted, and where each
/// is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRules {
    /// Reading files and listing directories is restricted (no `fs.read`).
    pub restrict_read: bool,
    /// Creating, writing, truncating, removing is restricted (no `fs.write`).
    pub restrict_write: bool,
    /// Executing is restricted (no `subprocess`).
    pub restrict_execute: bool,
    /// Where access is allowed.
    pub allowed: Vec<PathRule>,
}

/// Everything the kernel is asked to enforce for one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Landlock filesystem rules, when any filesystem access is restricted.
    pub fs: Option<FsRules>,
    /// No `net`: a fresh network namespace, and no socket may be created
    /// (only `socketpair`, which reaches nothing outside the program).
    pub isolate_net: bool,
    /// Signals only to the program's own processes (Landlock scope), set
    /// whenever any rule applies, so a sandboxed snippet cannot kill
    /// another tenant's program running as the same user.
    pub scope_signals: bool,
}

/// Where one execution's own files are.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionPaths<'a> {
    /// Its private scratch directory (read, write).
    pub scratch: &'a Path,
    /// Its working directory (read).
    pub working_dir: &'a Path,
    /// Its snippet file (read).
    pub script: &'a Path,
}

impl Rules {
    /// The rules for `grants`; `None` when nothing is restricted.
    pub fn derive(
        grants: Grants,
        runtime: &RuntimeFiles,
        paths: ExecutionPaths<'_>,
        start: StartPath,
    ) -> Option<Rules> {
        let restrict_read = !grants.fs_read;
        let restrict_write = !grants.fs_write;
        let restrict_execute = !grants.subprocess;
        let fs = (restrict_read || restrict_write || restrict_execute).then(|| {
            let mut allowed = Vec::new();
            let rule = |path: &Path, read, write, execute| PathRule {
                path: path.to_path_buf(),
                read,
                write,
                execute,
            };
            if restrict_read {
                for path in &runtime.read {
                    allowed.push(rule(path, true, false, false));
                }
                for path in [paths.script, paths.working_dir] {
                    allowed.push(rule(path, true, false, false));
                }
                if !restrict_execute {
                    for path in &runtime.programs {
                        allowed.push(rule(path, true, false, false));
                    }
                }
                // Its own processes' details (`/proc/self`); other
                // processes' stay guarded by ptrace rules, which Landlock
                // narrows to the program's own domain.
                allowed.push(rule(Path::new("/proc"), true, false, false));
            }
            // The scratch directory is the program's own: every access.
            allowed.push(rule(paths.scratch, true, true, false));
            for device in DEVICES {
                allowed.push(rule(Path::new(device), true, device == "/dev/null", false));
            }
            if restrict_execute && start == StartPath::BeforeExec {
                for exe in &runtime.executables {
                    allowed.push(rule(exe, true, false, true));
                }
            }
            FsRules {
                restrict_read,
                restrict_write,
                restrict_execute,
                allowed,
            }
        });
        let isolate_net = !grants.net;
        (fs.is_some() || isolate_net).then_some(Rules {
            fs,
            isolate_net,
            scope_signals: true,
        })
    }
}

/// The environment a program gets: `asked` with `env`, else only
/// [`MINIMAL_ENV`] with `HOME` and `TMPDIR` set to its scratch directory.
pub fn environment(
    grants: Grants,
    asked: &BTreeMap<String, String>,
    scratch: &Path,
) -> BTreeMap<String, String> {
    if grants.env {
        return asked.clone();
    }
    let scratch = scratch.display().to_string();
    MINIMAL_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain([
            ("HOME".to_owned(), scratch.clone()),
            ("TMPDIR".to_owned(), scratch),
        ])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn runtime() -> RuntimeFiles {
        RuntimeFiles {
            read: vec!["/usr/lib".into(), "/usr/bin/python3.11".into()],
            executables: vec![
                "/usr/bin/python3.11".into(),
                "/lib64/ld-linux-x86-64.so.2".into(),
            ],
            programs: vec!["/usr/bin".into()],
        }
    }

    fn paths() -> ExecutionPaths<'static> {
        ExecutionPaths {
            scratch: Path::new("/scratch/s/e"),
            working_dir: Path::new("/alloc/task"),
            script: Path::new("/scratch/s/e/main.py"),
        }
    }

    fn allowed_for<'a>(rules: &'a FsRules, path: &str) -> Vec<&'a PathRule> {
        rules
            .allowed
            .iter()
            .filter(|r| r.path == Path::new(path))
            .collect()
    }

    #[test]
    fn everything_granted_means_no_rules() {
        let all = Grants::from_names(&names(&[
            "console",
            "env",
            "fs.read",
            "fs.write",
            "net",
            "subprocess",
        ]));
        assert!(all.denied().is_empty());
        assert_eq!(
            Rules::derive(all, &runtime(), paths(), StartPath::BeforeExec),
            None
        );
    }

    #[test]
    fn nothing_granted_restricts_everything_to_the_runtime_and_the_execution() {
        let none = Grants::from_names(&names(&["console"]));
        assert_eq!(none.denied(), RESTRICTABLE);
        let rules = Rules::derive(none, &runtime(), paths(), StartPath::BeforeExec).unwrap();
        assert!(rules.isolate_net && rules.scope_signals);
        let fs = rules.fs.unwrap();
        assert!(fs.restrict_read && fs.restrict_write && fs.restrict_execute);
        // Read: the runtime, the script, the working directory, /proc.
        for path in ["/usr/lib", "/scratch/s/e/main.py", "/alloc/task", "/proc"] {
            let found = allowed_for(&fs, path);
            assert!(
                found.iter().any(|r| r.read && !r.write && !r.execute),
                "{path}: {found:?}"
            );
        }
        // Write: the scratch directory and /dev/null only.
        let writable: Vec<_> = fs
            .allowed
            .iter()
            .filter(|r| r.write)
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(
            writable,
            [PathBuf::from("/scratch/s/e"), PathBuf::from("/dev/null")]
        );
        // Execute: the interpreter and its loader, before the exec only.
        let executable: Vec<_> = fs
            .allowed
            .iter()
            .filter(|r| r.execute)
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(executable, runtime().executables);
        let warm = Rules::derive(none, &runtime(), paths(), StartPath::AfterExec).unwrap();
        assert!(warm.fs.unwrap().allowed.iter().all(|r| !r.execute));
    }

    #[test]
    fn each_grant_lifts_only_its_own_restriction() {
        let rules = |list: &[&str]| {
            Rules::derive(
                Grants::from_names(&names(list)),
                &runtime(),
                paths(),
                StartPath::BeforeExec,
            )
            .unwrap()
        };
        let fs = rules(&["fs.read"]).fs.unwrap();
        assert!(!fs.restrict_read && fs.restrict_write && fs.restrict_execute);
        // Reads are not restricted, so none are listed.
        assert!(allowed_for(&fs, "/usr/lib").is_empty());
        let fs = rules(&["fs.write"]).fs.unwrap();
        assert!(fs.restrict_read && !fs.restrict_write && fs.restrict_execute);
        let fs = rules(&["subprocess"]).fs.unwrap();
        assert!(fs.restrict_read && fs.restrict_write && !fs.restrict_execute);
        assert!(fs.allowed.iter().all(|r| !r.execute));
        // The programs it may start must be readable to be executed.
        assert!(allowed_for(&fs, "/usr/bin").iter().any(|r| r.read));
        let fs = rules(&[]).fs.unwrap();
        assert!(allowed_for(&fs, "/usr/bin").is_empty());
        let net_only = rules(&["fs.read", "fs.write", "subprocess", "env"]);
        assert_eq!(net_only.fs, None);
        assert!(net_only.isolate_net);
        assert!(!rules(&["net"]).isolate_net);
    }

    #[test]
    fn without_env_the_environment_is_fixed_and_minimal() {
        let asked: BTreeMap<String, String> = [
            ("SECRET".to_owned(), "x".to_owned()),
            ("PATH".to_owned(), "/opt/bin".to_owned()),
        ]
        .into();
        let scratch = Path::new("/scratch/s/e");
        let env = environment(Grants::default(), &asked, scratch);
        assert_eq!(
            env.into_iter().collect::<Vec<_>>(),
            [
                ("HOME".to_owned(), "/scratch/s/e".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
                ("TMPDIR".to_owned(), "/scratch/s/e".to_owned()),
            ]
        );
        let granted = Grants {
            env: true,
            ..Grants::default()
        };
        assert_eq!(environment(granted, &asked, scratch), asked);
    }
}
