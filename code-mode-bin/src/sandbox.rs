//! The runtime process sandboxes itself at start (Linux), after V8 and its ICU data are
//! loaded and the host's socket is connected, and before the async runtime starts its
//! threads:
//!
//! 1. `no_new_privs`: no set-uid or file-capability gains, ever (also required by 2 and 3).
//! 2. Not dumpable, and a core-file limit of 0: no core files, no ptrace by peers.
//! 3. Landlock with every file-system right handled and none granted: no file can be
//!    opened, created, executed or removed (and, where the kernel's ABI has them, no TCP
//!    bind/connect and no abstract-socket or signal reach outside the domain). Landlock
//!    binds the calling thread and the threads it creates later, which is why this runs
//!    before the async runtime exists. V8's few platform threads predate it; they run no
//!    user code.
//! 4. A seccomp filter on every thread (`TSYNC`), killing the whole process on a
//!    forbidden system call: program execution, process creation (a `clone` without
//!    `CLONE_THREAD`; `clone3` answers `ENOSYS` so that libc falls back to `clone`), new
//!    sockets, tracing, namespaces, mounts, kernel modules, BPF, keyrings and the like.
//!    `socketpair` stays allowed: the async runtime's signal driver needs one, and an
//!    anonymous connected pair reaches nothing outside the process. A listening runtime
//!    (`--listen`, `--metrics`) binds its sockets before this step and keeps `accept`:
//!    taking connections on a socket it already has opens nothing new outward.
//!
//! Each step is reported; the level reached goes into the handshake and the logs.

use std::fmt;

/// `AUDIT_ARCH_*` values from `linux/audit.h`: the architecture a filter is written for.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const SECCOMP_DATA_ARG0_LOW: u32 = 16;

/// Landlock file-system rights by ABI version: v1 has 13 rights, v2 adds REFER, v3
/// TRUNCATE, v5 IOCTL_DEV.
fn landlock_fs_rights(abi: i64) -> u64 {
    let mut rights = (1u64 << 13) - 1;
    if abi >= 2 {
        rights |= 1 << 13;
    }
    if abi >= 3 {
        rights |= 1 << 14;
    }
    if abi >= 5 {
        rights |= 1 << 15;
    }
    rights
}

/// `LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET_CONNECT_TCP` (ABI 4+).
const LANDLOCK_NET_RIGHTS: u64 = 0b11;

/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL` (ABI 6+).
const LANDLOCK_SCOPES: u64 = 0b11;

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;

#[repr(C)]
struct LandlockRulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// What the sandbox reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxReport {
    pub no_new_privs: bool,
    pub not_dumpable: bool,
    pub no_core_files: bool,
    /// The Landlock ABI enforced, if any.
    pub landlock_abi: Option<i64>,
    pub seccomp: bool,
    /// Whether accepting connections on already bound sockets stays allowed.
    pub accepts: bool,
    /// Why a step failed, if one did.
    pub failures: Vec<String>,
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut reached = Vec::new();
        if self.no_new_privs {
            reached.push("no_new_privs".to_owned());
        }
        if self.not_dumpable {
            reached.push("not dumpable".to_owned());
        }
        if self.no_core_files {
            reached.push("no core files".to_owned());
        }
        match self.landlock_abi {
            Some(abi) => reached.push(format!("landlock ABI {abi} (no file-system access)")),
            None => reached.push("no landlock".to_owned()),
        }
        reached.push(
            match (self.seccomp, self.accepts) {
                (true, false) => "seccomp filter",
                (true, true) => "seccomp filter (accepting connections)",
                (false, _) => "no seccomp filter",
            }
            .to_owned(),
        );
        write!(f, "{}", reached.join(", "))?;
        if !self.failures.is_empty() {
            write!(f, " ({})", self.failures.join("; "))?;
        }
        Ok(())
    }
}

fn last_error() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Applies every step it can; never fails the process by itself. `accepts`: keep
/// `accept` allowed, for a runtime that listens.
pub fn apply(accepts: bool) -> SandboxReport {
    let mut failures = Vec::new();
    // SAFETY: prctl with integer arguments only.
    let no_new_privs = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
    if !no_new_privs {
        failures.push(format!("no_new_privs: {}", last_error()));
    }
    // SAFETY: prctl with integer arguments only.
    let not_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    if !not_dumpable {
        failures.push(format!("dumpable: {}", last_error()));
    }
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `no_core` is a valid rlimit for the duration of the call.
    let no_core_files = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } == 0;
    if !no_core_files {
        failures.push(format!("core limit: {}", last_error()));
    }
    let (mut landlock_abi, mut seccomp_installed) = (None, false);
    // Landlock and seccomp both require no_new_privs.
    if no_new_privs {
        match landlock() {
            Ok(abi) => landlock_abi = Some(abi),
            Err(error) => failures.push(format!("landlock: {error}")),
        }
        match seccomp(accepts) {
            Ok(()) => seccomp_installed = true,
            Err(error) => failures.push(format!("seccomp: {error}")),
        }
    }
    SandboxReport {
        no_new_privs,
        not_dumpable,
        no_core_files,
        landlock_abi,
        seccomp: seccomp_installed,
        accepts,
        failures,
    }
}

/// Restricts the calling thread (and the threads it creates later) to no file-system access.
fn landlock() -> Result<i64, String> {
    // SAFETY: querying the ABI version takes no pointers (NULL attribute, size 0).
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<LandlockRulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        return Err(format!("not available ({})", last_error()));
    }
    let attr = LandlockRulesetAttr {
        handled_access_fs: landlock_fs_rights(abi),
        handled_access_net: if abi >= 4 { LANDLOCK_NET_RIGHTS } else { 0 },
        scoped: if abi >= 6 { LANDLOCK_SCOPES } else { 0 },
    };
    // Older ABIs know a shorter attribute: pass only the fields they understand.
    let size = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<LandlockRulesetAttr>(),
    };
    // SAFETY: `attr` is valid for `size` bytes during the call.
    let ruleset = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr, size, 0u32) };
    if ruleset < 0 {
        return Err(format!("create_ruleset: {}", last_error()));
    }
    let fd = i32::try_from(ruleset).map_err(|_| "ruleset fd out of range".to_owned())?;
    // SAFETY: `fd` is the ruleset just created; no rules are added, so nothing is granted.
    let restricted = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
    let error = last_error();
    // SAFETY: closing the ruleset fd we own; the restriction stays in force.
    unsafe { libc::close(fd) };
    if restricted != 0 {
        return Err(format!("restrict_self: {error}"));
    }
    Ok(abi)
}

/// System calls that kill the process.
fn forbidden_syscalls(accepts: bool) -> Vec<libc::c_long> {
    let mut calls = vec![
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_quotactl,
        libc::SYS_personality,
        libc::SYS_fanotify_init,
        libc::SYS_pidfd_getfd,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
    ]);
    if accepts {
        calls.retain(|call| ![libc::SYS_accept, libc::SYS_accept4].contains(call));
    }
    calls
}

fn statement(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The BPF program: check the architecture, kill on forbidden calls, answer `clone3` with
/// `ENOSYS`, allow `clone` only for threads, allow the rest.
fn filter(accepts: bool) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let kill = statement(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS);
    let allow = statement(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW);
    let mut program = vec![
        statement(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        kill,
        statement(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 system calls (numbers with bit 30 set) bypass a filter written for x86_64.
        program.push(jump(BPF_JMP | libc::BPF_JGE | BPF_K, 0x4000_0000, 0, 1));
        program.push(kill);
    }
    for call in forbidden_syscalls(accepts) {
        program.push(jump(BPF_JMP | BPF_JEQ | BPF_K, call as u32, 0, 1));
        program.push(kill);
    }
    program.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        libc::SYS_clone3 as u32,
        0,
        1,
    ));
    program.push(statement(
        BPF_RET | BPF_K,
        libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32),
    ));
    program.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        libc::SYS_clone as u32,
        0,
        4,
    ));
    program.push(statement(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARG0_LOW));
    program.push(jump(
        BPF_JMP | BPF_JSET | BPF_K,
        libc::CLONE_THREAD as u32,
        0,
        1,
    ));
    program.push(allow);
    program.push(kill);
    program.push(allow);
    program
}

/// Installs the filter on every thread of the process.
fn seccomp(accepts: bool) -> Result<(), String> {
    let program = filter(accepts);
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| "filter too long".to_owned())?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `program`, valid for the call; the kernel copies it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog,
        )
    };
    match result {
        0 => Ok(()),
        thread if thread > 0 => Err(format!("thread {thread} could not be synchronized")),
        _ => Err(last_error()),
    }
}
