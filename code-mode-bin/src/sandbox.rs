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
//!    user code. The first cell thread predates it too, so that its isolate is made
//!    meanwhile: it applies Landlock to itself first thing ([`first_cell_thread`]), and
//!    joins the pool only if it reached what the process did.
//! 4. A seccomp filter on every thread (`TSYNC`), killing the whole process on a
//!    forbidden system call: program execution, process creation (a `clone` without
//!    `CLONE_THREAD`; `clone3` answers `ENOSYS` so that libc falls back to `clone`), new
//!    sockets, tracing, namespaces, mounts, kernel modules, BPF, keyrings and the like.
//!    `socketpair` stays allowed: the async runtime's signal driver needs one, and an
//!    anonymous connected pair reaches nothing outside the process. A listening runtime
//!    (`--listen`, `--metrics`) binds its sockets before this step and keeps `accept`:
//!    taking connections on a socket it already has opens nothing new outward. Signals
//!    reach this process only: `kill`, `tgkill` and `rt_(tg)sigqueueinfo` at another pid
//!    (a group, or -1 for every process of the user) kill the sender; `tkill` and
//!    `pidfd_send_signal`, whose target the filter cannot see, are refused (`EPERM`), as
//!    is `pidfd_open` of any process but this one, and so is making a process a file's owner (`F_SETOWN` and the like), which `SIGIO` then
//!    goes to, and typing into or signalling through a terminal (`TIOCSTI` and the like).
//!    Limits, priorities, CPUs and scheduling can be set for this process only
//!    (`prlimit64`, `setpriority`, `ioprio_set`, `sched_set*`; `EPERM` for any other
//!    process, group or user). `io_uring`, whose operations (a socket among them) the
//!    filter would not see, is refused.
//!
//! Each step is reported; the level reached goes into the handshake and the logs.
//!
//! Landlock goes through the `landlock` crate (the Landlock maintainers'), seccomp through
//! `seccompiler` (Firecracker's). One rule is written by hand: on x86_64, killing every
//! x32 system call (numbers with bit 30 set, which a filter matching x86_64 numbers would
//! let through). seccompiler matches exact numbers only, so that guard is a small BPF
//! program of its own. The guard and seccompiler's filters are chained into one program,
//! installed once: each installation costs the kernel a compilation and a flush on every
//! CPU, on the path of a cold start.

use std::fmt;

pub(crate) mod probes;

/// `AUDIT_ARCH_X86_64` from `linux/audit.h`: the architecture the x32 guard is written for.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;

/// Offsets in `struct seccomp_data`.
#[cfg(target_arch = "x86_64")]
const SECCOMP_DATA_NR: u32 = 0;
#[cfg(target_arch = "x86_64")]
const SECCOMP_DATA_ARCH: u32 = 4;

/// `fcntl` commands that make a process a file's owner, which `SIGIO` (or the signal set
/// by `F_SETSIG`, also refused) goes to, and the `ioctl` requests that do the same on a
/// socket: `asm-generic/fcntl.h` and `asm-generic/sockios.h`, the values on every
/// architecture seccompiler builds for (`libc` does not name them all for glibc).
const F_SETOWN: u64 = 8;
const F_SETSIG: u64 = 10;
const F_SETOWN_EX: u64 = 15;
const FIOSETOWN: u64 = 0x8901;
const SIOCSPGRP: u64 = 0x8902;

/// Terminal `ioctl` requests that reach the processes behind a terminal the runtime may
/// have inherited (its stderr, run by hand): typing into its input (`TIOCSTI`, and
/// `TIOCLINUX`'s paste on a virtual console), choosing the process group its keys signal
/// (`TIOCSPGRP`), signalling that group (`TIOCSIG`). `asm-generic/ioctls.h`.
const TIOCSPGRP: u64 = 0x5410;
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
const TIOCSIG: u64 = 0x4004_5436;

/// The `which` of `setpriority` (`linux/resource.h`) and `ioprio_set` (`linux/ioprio.h`)
/// that names one process or thread; the others name a process group or a user.
const PRIO_PROCESS: u64 = 0;
const IOPRIO_WHO_PROCESS: u64 = 1;

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

/// What the first cell thread reached as it restricted itself ([`first_cell_thread`]).
pub(crate) struct ThreadRestriction {
    /// The Landlock ABI it enforces, if any.
    landlock_abi: Option<i64>,
    /// What the self test's probe gave, run on the thread once the process is sandboxed.
    pub(crate) probe: Option<std::process::ExitCode>,
}

/// Starts the runtime's first cell thread before the sandbox
/// (`code_mode::start_first_cell_thread`): once V8 is up, and before its isolate, it
/// applies to itself what does not reach threads already running (`no_new_privs`, which Landlock requires, then Landlock),
/// then runs `probe` (the self test's; a runtime's returns `None` at once), then prepares
/// its isolate. The seccomp filter reaches it from [`apply`] (`TSYNC`), the rest of
/// [`apply`] is the process's.
pub(crate) fn first_cell_thread(
    surface: code_mode_protocol::Surface,
    probe: impl FnOnce() -> Option<std::process::ExitCode> + Send + 'static,
) -> Option<code_mode::runtime::FirstCellThread<ThreadRestriction>> {
    code_mode::runtime::start_first_cell_thread(surface, move || {
        // SAFETY: prctl with integer arguments only; it applies to the calling thread.
        let no_new_privs = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
        let landlock_abi = no_new_privs.then(landlock).and_then(Result::ok);
        ThreadRestriction {
            landlock_abi,
            probe: probe(),
        }
    })
}

/// Whether `thread` restricted itself as far as [`apply`] restricted the process
/// (`report`): the same Landlock ABI, or none on both where the kernel has none.
pub(crate) fn restricted_as(thread: &ThreadRestriction, report: &SandboxReport) -> bool {
    thread.landlock_abi == report.landlock_abi
}

/// Restricts the calling thread (and the threads it creates later) to no file-system access:
/// every right the kernel's Landlock knows (file system, TCP, scopes) handled, none granted.
/// Returns the ABI enforced.
fn landlock() -> Result<i64, String> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, LandlockStatus, Ruleset, RulesetAttr, RulesetStatus,
        Scope,
    };
    // The newest ABI this crate knows; on an older kernel, what it supports (best effort).
    let newest = ABI::V10;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(newest))
        .and_then(|ruleset| ruleset.handle_access(AccessNet::from_all(newest)))
        .and_then(|ruleset| ruleset.scope(Scope::from_all(newest)))
        .and_then(|ruleset| ruleset.create())
        .and_then(|ruleset| ruleset.restrict_self())
        .map_err(|error| error.to_string())?;
    match (status.ruleset, status.landlock) {
        (RulesetStatus::NotEnforced, landlock) => Err(format!("not available ({landlock:?})")),
        (_, LandlockStatus::Available { effective_abi, .. }) => Ok(effective_abi as i64),
        (_, other) => Err(format!("not available ({other:?})")),
    }
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

/// The filters, most general first: the forbidden calls, `clone` without `CLONE_THREAD`
/// and signals at another process kill the process; `clone3` answers `ENOSYS` (libc then
/// falls back to `clone`); [`refused_calls`] answer `EPERM`; everything else is allowed.
/// Each checks the architecture first.
fn filters(accepts: bool) -> Result<Vec<seccompiler::BpfProgram>, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    use std::collections::BTreeMap;
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|error| error.to_string())?;
    let error = |error: seccompiler::BackendError| error.to_string();
    let mut killed: BTreeMap<i64, Vec<SeccompRule>> = forbidden_syscalls(accepts)
        .into_iter()
        .map(|call| (call, Vec::new()))
        .collect();
    // A `clone` that is not a thread is a new process.
    let not_a_thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )
    .map_err(error)?;
    killed.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![not_a_thread]).map_err(error)?],
    );
    // Signals reach this process only: `kill`, `tgkill` and the `sigqueue` pair name the
    // target process first, and any other (a process group, -1 for every process of the
    // user) kills the sender. This is enforced whatever Landlock's signal scoping the
    // kernel has. `pid` is this process's: the filter is built by the process it is
    // installed on (a forked runtime builds it after the fork).
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    for call in [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        let elsewhere = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, pid)
            .map_err(error)?;
        killed.insert(
            call,
            vec![SeccompRule::new(vec![elsewhere]).map_err(error)?],
        );
    }
    let kill = SeccompFilter::new(
        killed,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        arch,
    )
    .map_err(error)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(error)?;
    let refused = SeccompFilter::new(
        refused_calls(pid).map_err(error)?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(error)?;
    let mut programs = Vec::new();
    for filter in [kill, no_clone3, refused] {
        programs.push(seccompiler::BpfProgram::try_from(filter).map_err(error)?);
    }
    Ok(programs)
}

/// The calls [`filters`] refuses with `EPERM`, where the runtime has no use for them:
/// they reach another process (`pid` is this one's) or name one to signal.
///
/// - Signals whose target the filter cannot see (a thread id alone, a pidfd): `tkill`,
///   `pidfd_send_signal`. Nothing in the runtime sends them (`raise` and `pthread_kill` use
///   `tgkill`).
/// - A pidfd of another process (`pidfd_open` of any pid but this one's): the filter
///   cannot see whose pidfd a later call is given, so none is made. Its signal is refused
///   above and `pidfd_getfd` and `setns` kill the process, but a pidfd would still tell
///   when that process exits and, by its `ioctl`s, who it runs as, and lend itself to
///   calls yet to come. Nothing in the runtime opens one (it starts no process).
/// - A file's owner, the process `SIGIO` (or the signal `F_SETSIG` chose) goes to once the
///   file is ready: `fcntl`'s `F_SETOWN`, `F_SETOWN_EX` and `F_SETSIG`, the `FIOSETOWN` and
///   `SIOCSPGRP` ioctls, whatever the process (before Linux 6.12 the signal reaches any
///   process of the user). Neither V8 nor the async runtime sets one.
/// - A terminal's input, foreground process group and signals (`TIOCSTI`, `TIOCLINUX`,
///   `TIOCSPGRP`, `TIOCSIG`), on any descriptor: a runtime run by hand may have its
///   terminal as stderr, and typed input reaches the shell behind it.
/// - `io_uring`, whose queued operations the filter never sees: among them opening a socket
///   (`IORING_OP_SOCKET`), which the filter kills the process for as a system call. Nothing
///   in the runtime uses it; a library that tries it falls back on the refusal.
/// - Limits, priorities, CPUs and scheduling of another process: `prlimit64`,
///   `sched_setaffinity`, `sched_setscheduler`, `sched_setparam` and `sched_setattr` on any
///   pid but 0 (the calling thread) and this process's; `setpriority` and `ioprio_set` for
///   anything but one process or thread (not a process group or a user, where `who` 0 is
///   the caller's whole group or every process of the user), and that one 0 or this
///   process. A thread's own id cannot be allowed by a filter built once, so the runtime's
///   threads name themselves 0 (`code_mode_cores::step_aside`; V8's threads lower their
///   own priority with `setpriority(PRIO_PROCESS, 0, ...)`).
///
/// `pid` is read where the filter is built, in the runtime process itself (after the
/// front's fork, for a forked runtime), the process that installs it.
fn refused_calls(pid: u64) -> Result<SeccompRules, seccompiler::BackendError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    // Every argument matched is an `int` (or `unsigned int`): the kernel reads its low 32
    // bits only, and so does the filter, or high bits set would pass a comparison.
    let arg = |index, op, value| SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value);
    let is = |index, value| SeccompRule::new(vec![arg(index, SeccompCmpOp::Eq, value)?]);
    let is_not = |index, value| SeccompRule::new(vec![arg(index, SeccompCmpOp::Ne, value)?]);
    // Another process: neither 0 (the caller) nor this process's pid.
    let elsewhere = |index| {
        SeccompRule::new(vec![
            arg(index, SeccompCmpOp::Ne, 0)?,
            arg(index, SeccompCmpOp::Ne, pid)?,
        ])
    };
    let mut refused = SeccompRules::from([
        (libc::SYS_tkill, Vec::new()),
        (libc::SYS_pidfd_send_signal, Vec::new()),
        (libc::SYS_pidfd_open, vec![is_not(0, pid)?]),
        (
            libc::SYS_fcntl,
            vec![is(1, F_SETOWN)?, is(1, F_SETOWN_EX)?, is(1, F_SETSIG)?],
        ),
        (
            libc::SYS_ioctl,
            [FIOSETOWN, SIOCSPGRP, TIOCSPGRP, TIOCSTI, TIOCLINUX, TIOCSIG]
                .map(|request| is(1, request))
                .into_iter()
                .collect::<Result<_, _>>()?,
        ),
        (libc::SYS_io_uring_setup, Vec::new()),
        (libc::SYS_io_uring_enter, Vec::new()),
        (libc::SYS_io_uring_register, Vec::new()),
    ]);
    for call in [
        libc::SYS_prlimit64,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
    ] {
        refused.insert(call, vec![elsewhere(0)?]);
    }
    // `which` first, `who` second.
    for (call, one_process) in [
        (libc::SYS_setpriority, PRIO_PROCESS),
        (libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS),
    ] {
        refused.insert(call, vec![is_not(0, one_process)?, elsewhere(1)?]);
    }
    Ok(refused)
}

/// seccompiler's rules: by system call number, any of which matching is a match.
type SeccompRules = std::collections::BTreeMap<i64, Vec<seccompiler::SeccompRule>>;

/// The x32 guard (see the module docs), by hand: check the architecture, kill numbers
/// with bit 30 set, allow the rest.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let kill = op(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS, 0, 0);
    vec![
        op(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH, 0, 0),
        op(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        kill,
        op(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR, 0, 0),
        op(BPF_JMP | BPF_JGE | BPF_K, 0x4000_0000, 0, 1),
        kill,
        op(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
}

/// Installs the filters on every thread of the process, as one program (see [`chained`]).
fn seccomp(accepts: bool) -> Result<(), String> {
    let mut programs = Vec::new();
    #[cfg(target_arch = "x86_64")]
    programs.push(x32_guard());
    for program in filters(accepts)? {
        programs.push(
            program
                .into_iter()
                .map(|instruction| libc::sock_filter {
                    code: instruction.code,
                    jt: instruction.jt,
                    jf: instruction.jf,
                    k: instruction.k,
                })
                .collect(),
        );
    }
    install(&chained(&programs)?)
}

/// The most instructions a filter may have (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// One program that runs `programs` in turn: where one would allow the call, the next one
/// decides, and the first verdict that is not "allow" is the program's.
///
/// Installed apart, the kernel would run them all and take the most restrictive verdict.
/// The filters here refuse disjoint sets of calls, and those that kill come before those
/// that answer an error, so the verdict is the same; but one program is installed once,
/// where each installation costs the kernel a compilation and a flush on every CPU (about
/// 60 µs each, on a cold start's path).
fn chained(programs: &[Vec<libc::sock_filter>]) -> Result<Vec<libc::sock_filter>, String> {
    use libc::{BPF_JA, BPF_JMP, BPF_K, BPF_RET, SECCOMP_RET_ALLOW};
    let mut chained = Vec::new();
    let last = programs.len().saturating_sub(1);
    for (index, program) in programs.iter().enumerate() {
        for (at, instruction) in program.iter().enumerate() {
            let returns = instruction.code & 0x07 == BPF_RET as u16;
            if index == last || !returns {
                chained.push(*instruction);
                continue;
            }
            // A verdict computed at run time cannot be told from "allow" here.
            if instruction.code != (BPF_RET | BPF_K) as u16 {
                return Err(format!("filter {index} returns a computed verdict"));
            }
            if instruction.k == SECCOMP_RET_ALLOW {
                // On to the next program: it starts right after this one's last instruction.
                let ahead = u32::try_from(program.len() - at - 1)
                    .map_err(|_| "filter too long".to_owned())?;
                chained.push(libc::sock_filter {
                    code: (BPF_JMP | BPF_JA) as u16,
                    jt: 0,
                    jf: 0,
                    k: ahead,
                });
            } else {
                chained.push(*instruction);
            }
        }
    }
    if chained.len() > MAX_INSTRUCTIONS {
        return Err(format!(
            "the chained filter has {} instructions",
            chained.len()
        ));
    }
    Ok(chained)
}

/// Installs a program on every thread (`TSYNC`).
fn install(program: &[libc::sock_filter]) -> Result<(), String> {
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
