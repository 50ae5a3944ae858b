//! The kernel rules a program runs under: its intrinsics as permissions.
//!
//! What is not granted is denied, by the kernel, from before the first line
//! of user code on every start path:
//!
//! * no `fs.read`: Landlock lets it read only its runtime's files
//!   ([`kernel::runtime_files`]), its snippet, its working and scratch
//!   directories, `/proc` and a few devices;
//! * no `fs.write`: Landlock lets it write only its scratch directory and
//!   `/dev/null`;
//! * no `subprocess`: Landlock lets it execute nothing (a cold start may
//!   still execute its interpreter and that interpreter's ELF loader, which
//!   the exec of the interpreter itself needs);
//! * no `net`: a fresh network namespace (no interface but a loopback that
//!   is down), and a seccomp filter failing `socket(2)` of every family and
//!   `io_uring_setup(2)` with EACCES (pathname unix sockets are not
//!   namespaced; abstract ones are also kept in by a Landlock scope);
//! * no `env`: the daemon hands it only [`rules::MINIMAL_ENV`], `HOME` and
//!   `TMPDIR`.
//!
//! Whatever the grants, a sandboxed program may only signal its own
//! processes (Landlock scope, ABI 6), and everything is inherited by its
//! children across fork and exec, so a child process is no way out.
//!
//! Order in the program's process (cold: between fork and exec; forked
//! python zygote child: after its go byte): placed in its cgroup, then
//! [`Prepared::before_privilege_drop`] (the network namespace needs
//! CAP_SYS_ADMIN, which the drop takes away), then the privilege drop and
//! the working directory, then [`Prepared::after_privilege_drop`]
//! (no_new_privs, Landlock, seccomp: unprivileged, and last, so nothing the
//! daemon's own set-up does is filtered). Pooled node workers cannot enter
//! rules per program (node has no way to make these system calls), so an
//! execution with filesystem, exec or network rules starts cold instead.

pub(crate) mod kernel;
pub(crate) mod rules;

use std::collections::BTreeMap;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::libc;

pub use kernel::KernelSupport;
pub use rules::{Grants, Rules, RuntimeFiles, StartPath, RESTRICTABLE};

/// What to do with an execution denied an intrinsic this host cannot deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Unenforceable {
    /// Refuse it with FAILED_PRECONDITION naming the intrinsic.
    #[default]
    Refuse,
    /// Run it without that rule, with a warning in its status.
    Warn,
}

/// How one intrinsic is enforced on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    /// Whether denying it is enforced.
    pub enforced: bool,
    /// By what, or why not.
    pub detail: String,
}

/// The sandbox of a daemon: what its kernel supports, the files each
/// interpreter needs, and its rule for what cannot be enforced.
#[derive(Debug, Clone)]
pub struct Sandbox {
    support: KernelSupport,
    unenforceable: Unenforceable,
    runtime_files: BTreeMap<PathBuf, RuntimeFiles>,
}

impl Sandbox {
    /// Probes the kernel and the files of the interpreters found.
    pub fn new<const N: usize>(
        unenforceable: Unenforceable,
        interpreters: [&Result<super::interpreter::Interpreter, String>; N],
    ) -> Arc<Self> {
        let found: Vec<&Path> = interpreters
            .into_iter()
            .flatten()
            .map(|i| i.path.as_path())
            .collect();
        Arc::new(Self::with_support(
            KernelSupport::detect(),
            unenforceable,
            &found,
        ))
    }

    /// Whether denying every restrictable intrinsic is enforced here.
    pub fn enforces_all(&self) -> bool {
        RESTRICTABLE.iter().all(|i| self.enforcement(i).enforced)
    }

    /// The environment `spec`'s program gets ([`rules::environment`]).
    pub fn environment(&self, spec: &super::ProgramSpec) -> BTreeMap<String, String> {
        rules::environment(
            Grants::from_names(&spec.intrinsics),
            &spec.env,
            &spec.scratch_dir,
        )
    }

    /// With `support` given (tests).
    pub fn with_support(
        support: KernelSupport,
        unenforceable: Unenforceable,
        interpreters: &[&Path],
    ) -> Self {
        let runtime_files = interpreters
            .iter()
            .map(|p| (p.to_path_buf(), kernel::runtime_files(p)))
            .collect();
        tracing::info!(?support, ?unenforceable, "sandbox: kernel support");
        Sandbox {
            support,
            unenforceable,
            runtime_files,
        }
    }

    /// How `intrinsic` (canonical) is enforced here.
    pub fn enforcement(&self, intrinsic: &str) -> Enforcement {
        let landlock = || {
            self.support
                .landlock()
                .map(|()| format!("Landlock ABI {}", self.support.landlock_abi))
        };
        let result = match intrinsic {
            "env" => Ok("the daemon starts the program with a fixed minimal environment".into()),
            "fs.read" | "fs.write" => landlock().map(|l| format!("{l} filesystem rules")),
            "subprocess" => landlock().map(|l| format!("{l} execute rule")),
            "net" => self.support.net().map(|()| {
                "a fresh network namespace and a seccomp filter on socket(2) and io_uring".into()
            }),
            "console" => Err("not a restriction: stdout and stderr are always the daemon's".into()),
            _ => Err("not a kernel permission".into()),
        };
        match result {
            Ok(detail) => Enforcement {
                enforced: true,
                detail,
            },
            Err(detail) => Enforcement {
                enforced: false,
                detail,
            },
        }
    }

    /// Checks an execution's grants (canonical names) against what this
    /// host can deny: the warnings to put in its status, or (with
    /// [`Unenforceable::Refuse`]) why it is refused.
    pub fn check(&self, granted: &[String]) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        for denied in Grants::from_names(granted).denied() {
            let enforcement = self.enforcement(denied);
            if enforcement.enforced {
                continue;
            }
            match self.unenforceable {
                Unenforceable::Refuse => {
                    return Err(format!(
                        "intrinsic {denied:?} is not granted, but this host cannot deny it: {}; grant {denied:?}, or run the daemon with --unenforceable-intrinsics warn",
                        enforcement.detail
                    ))
                }
                Unenforceable::Warn => warnings.push(format!(
                    "intrinsic {denied:?} is not granted but not enforced on this host: {}",
                    enforcement.detail
                )),
            }
        }
        Ok(warnings)
    }

    /// Builds what one execution's process must enter, or `None` when
    /// nothing is restricted. Parts this host cannot enforce are left out
    /// (the execution was refused or warned about by [`Sandbox::check`]).
    pub fn prepare(
        &self,
        grants: Grants,
        interpreter: &Path,
        paths: rules::ExecutionPaths<'_>,
        start: StartPath,
    ) -> Result<Option<Prepared>, String> {
        let files = match self.runtime_files.get(interpreter) {
            Some(files) => files.clone(),
            None => kernel::runtime_files(interpreter),
        };
        let Some(mut rules) = Rules::derive(grants, &files, paths, start) else {
            return Ok(None);
        };
        if self.support.landlock().is_err() {
            rules.fs = None;
        }
        if self.support.net().is_err() {
            rules.isolate_net = false;
        }
        let landlock = match self.support.landlock_abi {
            abi if abi >= 1 => kernel::landlock_ruleset(&rules, abi)?,
            _ => None,
        };
        let seccomp = rules
            .isolate_net
            .then(|| kernel::seccomp_filter(&kernel::net_denied_syscalls()));
        Ok(Some(Prepared {
            rules,
            landlock,
            seccomp,
        }))
    }
}

impl Sandbox {
    /// [`Sandbox::prepare`] for `spec`, whose snippet is `script`, run by
    /// `interpreter`; a failure is the program's spawn error.
    pub fn for_program(
        &self,
        spec: &super::ProgramSpec,
        interpreter: &Path,
        script: &Path,
        start: StartPath,
    ) -> Result<Option<Prepared>, super::RuntimeError> {
        let paths = rules::ExecutionPaths {
            scratch: &spec.scratch_dir,
            working_dir: &spec.working_dir,
            script,
        };
        self.prepare(
            Grants::from_names(&spec.intrinsics),
            interpreter,
            paths,
            start,
        )
        .map_err(|e| super::RuntimeError::Spawn {
            what: "the program's sandbox".into(),
            source: std::io::Error::other(e),
        })
    }
}

/// One execution's rules, built in the daemon, to be entered by its process.
#[derive(Debug)]
pub struct Prepared {
    /// The rules.
    pub rules: Rules,
    /// The Landlock ruleset, when there are filesystem rules or scopes.
    pub landlock: Option<OwnedFd>,
    /// The seccomp filter, when `net` is denied.
    pub seccomp: Option<Vec<libc::sock_filter>>,
}

/// [`Prepared`] as the child process applies it (the ruleset descriptor
/// stays open in the daemon until the child has started); the default
/// applies nothing.
#[derive(Debug, Clone, Default)]
pub struct ChildRules {
    isolate_net: bool,
    landlock: Option<RawFd>,
    seccomp: Vec<libc::sock_filter>,
}

// SAFETY: `sock_filter` is plain data; the raw descriptor is only a number.
unsafe impl Send for ChildRules {}
// SAFETY: as above; nothing is shared mutably.
unsafe impl Sync for ChildRules {}

impl ChildRules {
    /// What a cold child enters between fork and exec: plain values, so the
    /// closure allocates nothing.
    pub fn of(prepared: Option<&Prepared>) -> Self {
        match prepared {
            None => ChildRules::default(),
            Some(p) => ChildRules {
                isolate_net: p.rules.isolate_net,
                landlock: kernel::raw(&p.landlock),
                seccomp: p.seccomp.clone().unwrap_or_default(),
            },
        }
    }

    /// While still privileged: a fresh network namespace.
    /// Async-signal-safe.
    pub fn before_privilege_drop(&self) -> std::io::Result<()> {
        if self.isolate_net {
            kernel::unshare_net()?;
        }
        Ok(())
    }

    /// After the privilege drop, last before the exec: no_new_privs, the
    /// Landlock ruleset, the seccomp filter. Async-signal-safe.
    pub fn after_privilege_drop(&self) -> std::io::Result<()> {
        if self.landlock.is_none() && self.seccomp.is_empty() {
            return Ok(());
        }
        kernel::set_no_new_privs()?;
        if let Some(fd) = self.landlock {
            kernel::restrict_self(fd)?;
        }
        if !self.seccomp.is_empty() {
            kernel::install_seccomp(&self.seccomp)?;
        }
        Ok(())
    }
}

/// The filter as `[code, jt, jf, k]` rows, for the python zygote's child,
/// which installs it with the same `prctl`.
pub fn filter_rows(filter: &[libc::sock_filter]) -> Vec<[u32; 4]> {
    filter
        .iter()
        .map(|op| [op.code.into(), op.jt.into(), op.jf.into(), op.k])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn support(landlock_abi: i32, net: bool) -> KernelSupport {
        KernelSupport {
            landlock_abi,
            landlock_error: (landlock_abi < 1).then(|| "the kernel has no Landlock".into()),
            netns: if net {
                Ok(())
            } else {
                Err("cannot make a network namespace".into())
            },
            seccomp: Ok(()),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_host_without_landlock_refuses_or_warns_naming_the_intrinsic() {
        let refusing = Sandbox::with_support(support(0, true), Unenforceable::Refuse, &[]);
        assert!(!refusing.enforcement("fs.read").enforced);
        assert!(refusing.enforcement("net").enforced);
        assert!(refusing.enforcement("env").enforced);
        let err = refusing
            .check(&names(&["env", "net", "subprocess", "fs.write"]))
            .unwrap_err();
        assert!(err.starts_with("intrinsic \"fs.read\" is not granted, but this host cannot deny it: the kernel has no Landlock"), "{err}");
        refusing
            .check(&names(&["fs.read", "fs.write", "subprocess"]))
            .unwrap();
        let warning = Sandbox::with_support(support(2, false), Unenforceable::Warn, &[]);
        let warnings = warning.check(&names(&["env", "subprocess"])).unwrap();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("\"fs.read\"") && warnings[0].contains("ABI is 2"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains("\"net\"") && warnings[2].contains("network namespace"),
            "{warnings:?}"
        );
    }
}
