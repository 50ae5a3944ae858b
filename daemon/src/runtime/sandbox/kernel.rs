//! The kernel side of the sandbox: what this kernel supports (probed once,
//! by really applying each mechanism in a throwaway thread), the Landlock
//! ruleset and seccomp filter built in the daemon before a program starts,
//! and the few async-signal-safe system calls the program's own process
//! makes to enter them.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use landlock::{
    AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use nix::libc;

use super::rules::{FsRules, Rules, RuntimeFiles};

/// Lowest Landlock ABI the filesystem rules need: 3 adds `truncate`, so a
/// program without `fs.write` cannot empty a file it may only read.
pub const MIN_LANDLOCK_ABI: i32 = 3;

/// System directories and files every interpreter reads to start or to
/// answer common questions: shared libraries (which also hold python's
/// standard library and node's modules on Debian), locale and time zone
/// data, CA certificates, the CPU list runtimes size their thread pools
/// by, the user and group database (no passwords: `/etc/shadow` is not
/// here) and the resolver's configuration. Those that do not exist are
/// left out.
const SYSTEM_READ: [&str; 19] = [
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/share/zoneinfo",
    "/usr/share/locale",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl",
    "/usr/lib/ssl",
    "/sys/devices/system/cpu",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
];

/// Where the system's programs are (for `subprocess` without `fs.read`).
const SYSTEM_PROGRAMS: [&str; 5] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// What this kernel can enforce, learned once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSupport {
    /// The Landlock ABI version (0 or less: none, see `landlock_error`).
    pub landlock_abi: i32,
    /// Why Landlock is unavailable, when it is.
    pub landlock_error: Option<String>,
    /// Whether a fresh network namespace can be made (needs CAP_SYS_ADMIN).
    pub netns: Result<(), String>,
    /// Whether a seccomp filter can be installed.
    pub seccomp: Result<(), String>,
}

impl KernelSupport {
    /// Probes in a thread of its own: each mechanism is really applied to
    /// that thread (they are all per-thread until an exec), which then ends.
    pub fn detect() -> Self {
        std::thread::spawn(|| {
            // SAFETY: a plain system call asking for the ABI version.
            let abi = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    std::ptr::null::<u8>(),
                    0usize,
                    1u32, // LANDLOCK_CREATE_RULESET_VERSION
                )
            } as i32;
            let landlock_error = (abi < 1).then(|| {
                format!(
                    "the kernel has no Landlock ({})",
                    std::io::Error::last_os_error()
                )
            });
            // SAFETY: plain system calls affecting this thread only.
            let netns = match unsafe { libc::unshare(libc::CLONE_NEWNET) } {
                0 => Ok(()),
                _ => Err(format!(
                    "cannot make a network namespace ({}; it needs CAP_SYS_ADMIN, so a root daemon)",
                    std::io::Error::last_os_error()
                )),
            };
            let seccomp = set_no_new_privs()
                .and_then(|()| install_seccomp(&seccomp_filter(&[])))
                .map_err(|e| format!("cannot install a seccomp filter ({e})"));
            KernelSupport {
                landlock_abi: abi,
                landlock_error,
                netns,
                seccomp,
            }
        })
        .join()
        .unwrap_or_else(|_| KernelSupport {
            landlock_abi: 0,
            landlock_error: Some("probing the kernel failed".into()),
            netns: Err("probing the kernel failed".into()),
            seccomp: Err("probing the kernel failed".into()),
        })
    }

    /// Whether filesystem and exec rules can be enforced, or why not.
    pub fn landlock(&self) -> Result<(), String> {
        match &self.landlock_error {
            Some(e) => Err(e.clone()),
            None if self.landlock_abi < MIN_LANDLOCK_ABI => Err(format!(
                "the kernel's Landlock ABI is {}, below the {MIN_LANDLOCK_ABI} the rules need (Linux 6.2)",
                self.landlock_abi
            )),
            None => Ok(()),
        }
    }

    /// Whether `net` can be denied, or why not.
    pub fn net(&self) -> Result<(), String> {
        self.netns.clone().and(self.seccomp.clone())
    }
}

/// The files `interpreter` needs: itself, its ELF loader, the system
/// directories of [`SYSTEM_READ`] and its installation's `lib` directory
/// (`/root/.pyenv/versions/3.11.9/lib` for a pyenv python).
pub fn runtime_files(interpreter: &Path) -> RuntimeFiles {
    let mut executables = vec![interpreter.to_path_buf()];
    if let Some(loader) = elf_loader(interpreter) {
        executables.push(loader);
    }
    let own_lib = interpreter
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib"));
    let read = executables
        .iter()
        .cloned()
        .chain(own_lib)
        .chain(SYSTEM_READ.iter().map(PathBuf::from))
        .filter(|p| p.exists())
        .fold(Vec::new(), |mut acc: Vec<PathBuf>, p| {
            if !acc.contains(&p) {
                acc.push(p);
            }
            acc
        });
    let programs = SYSTEM_PROGRAMS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    RuntimeFiles {
        read,
        executables,
        programs,
    }
}

/// The ELF interpreter (`PT_INTERP`) of a 64-bit little-endian executable:
/// the kernel opens it for execution too, so it must stay executable.
fn elf_loader(executable: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(executable).ok()?;
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    // "\x7fELF", ELFCLASS64, ELFDATA2LSB.
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(0x20)? as usize,
        u16_at(0x36)? as usize,
        u16_at(0x38)?,
    );
    (0..phnum as usize).find_map(|i| {
        let header = phoff + i * phentsize;
        if u32_at(header)? != 3 {
            return None; // not PT_INTERP
        }
        let (offset, size) = (u64_at(header + 8)? as usize, u64_at(header + 32)? as usize);
        let name = bytes.get(offset..offset + size)?;
        let name = name.split(|b| *b == 0).next()?;
        Some(PathBuf::from(std::str::from_utf8(name).ok()?))
    })
}

/// Builds the Landlock ruleset for `rules` in the daemon (opening every
/// path now, as the daemon); the program's process only enters it. `None`
/// when there is nothing to restrict with Landlock.
pub fn landlock_ruleset(rules: &Rules, abi: i32) -> Result<Option<OwnedFd>, String> {
    let version = ABI::from(abi);
    let scopes: BitFlags<Scope> = if abi >= 6 && rules.scope_signals {
        let mut scopes = BitFlags::from(Scope::Signal);
        if rules.isolate_net {
            scopes |= Scope::AbstractUnixSocket;
        }
        scopes
    } else {
        BitFlags::empty()
    };
    if rules.fs.is_none() && scopes.is_empty() {
        return Ok(None);
    }
    let err = |e: &dyn std::fmt::Display| format!("building the Landlock ruleset: {e}");
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = AccessFs::from_write(version);
    let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::HardRequirement);
    let handled = rules.fs.as_ref().map(|fs| handled_access(fs, read, write));
    if let Some(handled) = handled.filter(|h| !h.is_empty()) {
        ruleset = ruleset.handle_access(handled).map_err(|e| err(&e))?;
    }
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(|e| err(&e))?;
    }
    let mut created = ruleset.create().map_err(|e| err(&e))?;
    if let (Some(fs), Some(handled)) = (&rules.fs, handled) {
        for rule in &fs.allowed {
            let mut access = BitFlags::<AccessFs>::empty();
            if rule.read {
                access |= read;
            }
            if rule.write {
                access |= write;
            }
            if rule.execute {
                access |= AccessFs::Execute;
            }
            access &= handled;
            if !rule.path.is_dir() {
                access &= AccessFs::from_file(version);
            }
            if access.is_empty() {
                continue;
            }
            let fd = PathFd::new(&rule.path)
                .map_err(|e| format!("opening {} for the sandbox: {e}", rule.path.display()))?;
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| err(&e))?;
        }
    }
    let fd: Option<OwnedFd> = created.into();
    Ok(fd)
}

fn handled_access(
    fs: &FsRules,
    read: BitFlags<AccessFs>,
    write: BitFlags<AccessFs>,
) -> BitFlags<AccessFs> {
    let mut handled = BitFlags::empty();
    if fs.restrict_read {
        handled |= read;
    }
    if fs.restrict_write {
        handled |= write;
    }
    if fs.restrict_execute {
        handled |= AccessFs::Execute;
    }
    handled
}

/// System calls a program without `net` may not make: creating a socket of
/// any family (`socketpair` stays allowed: it reaches nothing outside the
/// program), and io_uring, whose operations would bypass the filter.
pub fn net_denied_syscalls() -> Vec<u32> {
    vec![libc::SYS_socket as u32, libc::SYS_io_uring_setup as u32]
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// A seccomp program failing `denied` system calls with EACCES (and every
/// call of another architecture, and x32 calls, which could evade it).
pub fn seccomp_filter(denied: &[u32]) -> Vec<libc::sock_filter> {
    const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let x32 = cfg!(target_arch = "x86_64");
    // Layout: arch check, nr load, [x32 check], one jeq per denied call,
    // allow, deny.
    let checks = 2 + usize::from(x32) + 1 + denied.len();
    let deny_at = checks + 1;
    let to_deny = |from: usize| (deny_at - from - 1) as u8;
    let mut prog = vec![
        op(LD_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ, 0, to_deny(1), AUDIT_ARCH),
        op(LD_ABS, 0, 0, 0), // seccomp_data.nr
    ];
    if x32 {
        let at = prog.len();
        prog.push(op(JGE, to_deny(at), 0, 0x4000_0000));
    }
    for nr in denied {
        let at = prog.len();
        prog.push(op(JEQ, to_deny(at), 0, *nr));
    }
    prog.push(op(RET, 0, 0, libc::SECCOMP_RET_ALLOW));
    prog.push(op(
        RET,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | (libc::EACCES as u32 & libc::SECCOMP_RET_DATA),
    ));
    prog
}

/// `prctl(PR_SET_NO_NEW_PRIVS)`: needed by Landlock and seccomp without
/// CAP_SYS_ADMIN, and it keeps set-uid programs from gaining privileges.
pub fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: a plain system call.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// Installs `filter` on the calling thread (async-signal-safe).
pub fn install_seccomp(filter: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to `filter`, alive for the call.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    })
}

/// Enters the Landlock ruleset `fd` (async-signal-safe; after
/// [`set_no_new_privs`]).
pub fn restrict_self(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: a plain system call on a descriptor the caller keeps open.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) } as i32)
}

/// Moves the calling process into a fresh network namespace (needs
/// CAP_SYS_ADMIN: before the privilege drop).
pub fn unshare_net() -> std::io::Result<()> {
    // SAFETY: a plain system call.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

fn check(rc: i32) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The raw descriptor of a ruleset, for a child to enter.
pub fn raw(fd: &Option<OwnedFd>) -> Option<RawFd> {
    fd.as_ref().map(AsRawFd::as_raw_fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_jumps_land_on_the_deny_return() {
        let prog = seccomp_filter(&[41, 425]);
        let deny = prog.len() - 1;
        assert_eq!(
            prog[deny].k & libc::SECCOMP_RET_ACTION_FULL,
            libc::SECCOMP_RET_ERRNO
        );
        assert_eq!(prog[deny].k & libc::SECCOMP_RET_DATA, libc::EACCES as u32);
        assert_eq!(prog[deny - 1].k, libc::SECCOMP_RET_ALLOW);
        // Every conditional jump that is taken for a denial lands on `deny`.
        for (at, op) in prog.iter().enumerate() {
            if op.code == 0x15 && op.jf != 0 {
                assert_eq!(at + 1 + op.jf as usize, deny, "arch check at {at}");
            }
            if op.code == 0x15 && op.jt != 0 || op.code == 0x35 {
                assert_eq!(at + 1 + op.jt as usize, deny, "call check at {at}");
            }
        }
        let denied: Vec<u32> = prog
            .iter()
            .filter(|op| op.code == 0x15 && op.jt != 0)
            .map(|op| op.k)
            .collect();
        assert_eq!(denied, [41, 425]);
    }

    #[test]
    fn the_loader_of_a_dynamic_executable_is_found() {
        let exe = std::env::current_exe().unwrap();
        let loader = elf_loader(&exe).expect("the test binary is dynamically linked");
        assert!(
            loader.to_string_lossy().contains("ld-"),
            "{}",
            loader.display()
        );
        assert_eq!(elf_loader(Path::new("/etc/hostname")), None);
        let files = runtime_files(&exe);
        assert_eq!(files.executables, [exe.clone(), loader]);
        assert!(files.read.contains(&exe) && files.read.contains(&PathBuf::from("/usr/lib")));
    }
}
