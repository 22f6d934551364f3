//! The self test's probes of the rules that keep signals, limits, priorities and
//! scheduling at the runtime's own process (`--sandbox-self-test refused:<call>` and
//! `allowed:<call>`, see [`run`]), once the process is sandboxed.
//!
//! A refused call is aimed at the parent (`getppid()`: the test that started the self
//! test), which a runtime must not reach. Each is made with values that change nothing
//! should a rule fail open: signal 0, a limit only read, a priority, I/O priority, affinity
//! or policy set to what it already is, an owner set on a pipe or socket of this process's
//! without `O_ASYNC` (so that no signal is ever sent), a terminal's request on a pipe; a
//! process group this process is alone in, a user with no process, or a priority the
//! kernel refuses before it acts.
//!
//! The sandbox refuses a pidfd of the parent (`pidfd_open`), so `pidfd_send_signal` is
//! probed at the parent with one opened before it ([`prepare`]).

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::OnceLock;

/// What a probe's call answered: `Ok` where it went through, else its `errno`; `Err`
/// where getting the values to probe with failed (nothing was probed).
type Outcome = Result<Result<(), i32>, String>;

/// One probe: the call, aimed at a pid.
struct Probe {
    /// As the action names it.
    name: &'static str,
    call: fn(libc::pid_t) -> Outcome,
    /// Refused whatever the target: probed at this process too. (A rule that refused only
    /// other processes would pass at the parent; and where Landlock scopes signals, the
    /// kernel refuses a pidfd's signal to the parent by itself, but not this process's.)
    everywhere: bool,
    /// The filter kills the process instead of refusing the call.
    kills: bool,
}

/// A probe refused with `EPERM`, at the parent only.
const fn refused(name: &'static str, call: fn(libc::pid_t) -> Outcome) -> Probe {
    Probe {
        name,
        call,
        everywhere: false,
        kills: false,
    }
}

/// The probes, by the name `refused:<name>` and `allowed:<name>` give.
const PROBES: &[Probe] = &[
    Probe {
        kills: true,
        ..refused("tgkill", tgkill)
    },
    Probe {
        kills: true,
        ..refused("rt_sigqueueinfo", rt_sigqueueinfo)
    },
    Probe {
        kills: true,
        ..refused("rt_tgsigqueueinfo", rt_tgsigqueueinfo)
    },
    Probe {
        everywhere: true,
        ..refused("pidfd_send_signal", pidfd_send_signal)
    },
    refused("pidfd_open", pidfd_open),
    Probe {
        everywhere: true,
        ..refused("F_SETOWN", set_owner)
    },
    Probe {
        everywhere: true,
        ..refused("F_SETOWN_EX", set_owner_ex)
    },
    Probe {
        everywhere: true,
        ..refused("F_SETSIG", set_signal)
    },
    Probe {
        everywhere: true,
        ..refused("FIOSETOWN", |pid| socket_owner(pid, super::FIOSETOWN))
    },
    Probe {
        everywhere: true,
        ..refused("SIOCSPGRP", |pid| socket_owner(pid, super::SIOCSPGRP))
    },
    refused("io_uring_setup", io_uring_setup),
    refused("TIOCSTI", |_| pipe_ioctl(super::TIOCSTI)),
    refused("TIOCLINUX", |_| pipe_ioctl(super::TIOCLINUX)),
    refused("TIOCSPGRP", |_| pipe_ioctl(super::TIOCSPGRP)),
    refused("TIOCSIG", |_| pipe_ioctl(super::TIOCSIG)),
    refused("prlimit64", prlimit64),
    refused("setpriority", setpriority),
    refused("setpriority-group", |_| setpriority_group()),
    refused("setpriority-user", |_| setpriority_user()),
    refused("ioprio_set", ioprio_set),
    refused("ioprio_set-group", |_| ioprio_set_group()),
    refused("ioprio_set-user", |_| ioprio_set_user()),
    refused("sched_setaffinity", sched_setaffinity),
    refused("sched_setscheduler", sched_setscheduler),
    refused("sched_setparam", sched_setparam),
    refused("sched_setattr", sched_setattr),
];

/// Runs `refused:<call>` (the call at the parent, and at this process where it is refused
/// whatever the target; `EPERM` expected, or the process killed) or `allowed:<call>` (at 0
/// and at this process's pid; success expected), and says whether the sandbox answered as
/// it should. `None` for an action it does not know.
pub(crate) fn run(action: &str) -> Option<ExitCode> {
    let (verdict, name) = action.split_once(':')?;
    let probe = PROBES.iter().find(|probe| probe.name == name)?;
    // SAFETY: getppid and getpid have no preconditions and cannot fail.
    let (parent, own) = unsafe { (libc::getppid(), libc::getpid()) };
    let (targets, refusal) = match verdict {
        "refused" if probe.everywhere => (vec![parent, own], true),
        "refused" => (vec![parent], true),
        "allowed" => (vec![0, own], false),
        _ => return None,
    };
    let mut as_it_should = true;
    for pid in targets {
        let outcome = (probe.call)(pid);
        eprintln!("{name} at pid {pid}: {outcome:?}");
        as_it_should &= match outcome {
            Err(_) => false,
            Ok(_) if probe.kills => {
                eprintln!("{name}: not killed (NOT sandboxed)");
                false
            }
            Ok(Err(errno)) => refusal && errno == libc::EPERM,
            Ok(Ok(())) => !refusal,
        };
    }
    Some(if as_it_should {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A system call's answer: `Ok` unless it returned -1, else its `errno`.
fn answer(result: libc::c_long) -> Result<(), i32> {
    if result == -1 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

/// What a call made to get the values to probe with gave, as a number.
fn got(what: &str, result: libc::c_long) -> Result<libc::c_long, String> {
    if result == -1 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(result)
    }
}

/// Owns `fd`, a descriptor just made and owned by no one else.
fn owned(what: &str, fd: libc::c_long) -> Result<OwnedFd, String> {
    let fd = RawFd::try_from(got(what, fd)?).map_err(|error| error.to_string())?;
    // SAFETY: `fd` was just returned by the kernel, open and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A signal-0 `siginfo` as `sigqueue(3)` makes it (`SI_QUEUE`: the kernel takes one
/// from user space for another process only with a negative code).
fn queued() -> libc::siginfo_t {
    // SAFETY: `siginfo_t` is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_code = libc::SI_QUEUE;
    info
}

fn tgkill(pid: libc::pid_t) -> Outcome {
    // SAFETY: integers only; signal 0 sends nothing.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_tgkill, pid, pid, 0)
    }))
}

fn rt_sigqueueinfo(pid: libc::pid_t) -> Outcome {
    let info = queued();
    // SAFETY: `info` is a valid siginfo for the call; signal 0 sends nothing.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_rt_sigqueueinfo, pid, 0, &info)
    }))
}

fn rt_tgsigqueueinfo(pid: libc::pid_t) -> Outcome {
    let info = queued();
    // SAFETY: `info` is a valid siginfo for the call; signal 0 sends nothing.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, pid, 0, &info)
    }))
}

/// A pidfd of the parent, opened by [`prepare`] before the sandbox.
static PARENT_PIDFD: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

/// Opens a pidfd of the parent, for [`pidfd_send_signal`]'s probe: called before the
/// process is sandboxed, which refuses it after.
pub(crate) fn prepare() {
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() };
    // SAFETY: integers only.
    let pidfd = owned("pidfd_open", unsafe {
        libc::syscall(libc::SYS_pidfd_open, parent, 0)
    });
    let _ = PARENT_PIDFD.set(pidfd);
}

fn pidfd_send_signal(pid: libc::pid_t) -> Outcome {
    use std::os::fd::AsRawFd;
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() };
    let opened;
    let pidfd = if pid == parent {
        match PARENT_PIDFD.get() {
            Some(Ok(pidfd)) => pidfd.as_fd(),
            Some(Err(error)) => return Err(format!("before the sandbox: {error}")),
            None => return Err("no pidfd of the parent opened before the sandbox".to_owned()),
        }
    } else {
        // SAFETY: integers only.
        opened = owned("pidfd_open", unsafe {
            libc::syscall(libc::SYS_pidfd_open, pid, 0)
        })?;
        opened.as_fd()
    };
    // SAFETY: a pidfd we own; signal 0 sends nothing; no siginfo.
    Ok(answer(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    }))
}

fn pidfd_open(pid: libc::pid_t) -> Outcome {
    // SAFETY: integers only; a pidfd made is owned and closed at once below.
    let made = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if made == -1 {
        return Ok(answer(made));
    }
    drop(owned("pidfd_open", made)?);
    Ok(Ok(()))
}

/// A pipe's read end, of this process's alone.
fn pipe() -> Result<OwnedFd, String> {
    let mut ends = [0; 2];
    // SAFETY: `ends` has room for the two descriptors pipe2 writes.
    let made = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
    got("pipe2", made.into())?;
    // SAFETY: both ends were just made by the kernel and are owned by nothing else.
    let [read, _write] = ends.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(read)
}

fn set_owner(pid: libc::pid_t) -> Outcome {
    use std::os::fd::AsRawFd;
    let file = pipe()?;
    // SAFETY: a descriptor we own and integers; without O_ASYNC no signal is ever sent.
    Ok(answer(
        unsafe { libc::fcntl(file.as_raw_fd(), super::F_SETOWN as i32, pid) }.into(),
    ))
}

/// `struct f_owner_ex` (`linux/fcntl.h`).
#[repr(C)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// `F_OWNER_PID`: `f_owner_ex` names a process.
const F_OWNER_PID: libc::c_int = 1;

fn set_owner_ex(pid: libc::pid_t) -> Outcome {
    use std::os::fd::AsRawFd;
    let file = pipe()?;
    let owner = OwnerEx {
        kind: F_OWNER_PID,
        pid,
    };
    // SAFETY: a descriptor we own and an `f_owner_ex` valid for the call; without O_ASYNC
    // no signal is ever sent.
    Ok(answer(
        unsafe { libc::fcntl(file.as_raw_fd(), super::F_SETOWN_EX as i32, &owner) }.into(),
    ))
}

fn set_signal(_: libc::pid_t) -> Outcome {
    use std::os::fd::AsRawFd;
    let file = pipe()?;
    // SAFETY: a descriptor we own; signal 0 is the default (SIGIO).
    Ok(answer(
        unsafe { libc::fcntl(file.as_raw_fd(), super::F_SETSIG as i32, 0) }.into(),
    ))
}

/// Makes `pid` the owner of one end of a fresh socket pair, by the ioctl `request`.
fn socket_owner(pid: libc::pid_t, request: u64) -> Outcome {
    use std::os::fd::AsRawFd;
    let mut ends = [0; 2];
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    // SAFETY: `ends` has room for the two descriptors socketpair writes.
    let made = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, ends.as_mut_ptr()) };
    got("socketpair", made.into())?;
    // SAFETY: both ends were just made by the kernel and are owned by nothing else.
    let [socket, _other] = ends.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: a descriptor we own and a pid valid for the call; without O_ASYNC no signal
    // is ever sent.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_ioctl, socket.as_raw_fd(), request, &pid)
    }))
}

/// A terminal's `request` on a pipe, which is no terminal: a call let through answers
/// `ENOTTY` before it reads its argument (a zero, as a character, pid or signal).
fn pipe_ioctl(request: u64) -> Outcome {
    use std::os::fd::AsRawFd;
    let file = pipe()?;
    let zero: libc::c_int = 0;
    // SAFETY: a descriptor we own and an argument valid for the call to read.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_ioctl, file.as_raw_fd(), request, &zero)
    }))
}

/// The size of `struct io_uring_params` (`linux/io_uring.h`): the setup reads and writes
/// it; all zeroes asks for nothing special.
const IO_URING_PARAMS_BYTES: usize = 120;

/// The fewest entries a ring may have.
const IO_URING_ENTRIES: u32 = 1;

fn io_uring_setup(_: libc::pid_t) -> Outcome {
    let mut parameters = [0u8; IO_URING_PARAMS_BYTES];
    // SAFETY: `parameters` is a whole `io_uring_params`, valid for the call to read and
    // write; a ring made is owned and closed at once below.
    let made = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            IO_URING_ENTRIES,
            parameters.as_mut_ptr(),
        )
    };
    if made == -1 {
        return Ok(answer(made));
    }
    drop(owned("io_uring_setup", made)?);
    Ok(Ok(()))
}

fn prlimit64(pid: libc::pid_t) -> Outcome {
    // SAFETY: `rlimit64` is plain data; all zeroes is a valid value.
    let mut old: libc::rlimit64 = unsafe { std::mem::zeroed() };
    // SAFETY: no new limit (a read only) and room for the old one.
    Ok(answer(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            pid,
            libc::RLIMIT_NOFILE,
            std::ptr::null::<libc::rlimit64>(),
            &mut old,
        )
    }))
}

/// `setpriority`'s `which` for a process group and a user (`linux/resource.h`).
const PRIO_PGRP: libc::c_long = 1;
const PRIO_USER: libc::c_long = 2;

/// Sets the nice value of `who` (by `which`) to what it is: the raw call answers
/// 20 - nice.
fn same_priority(which: libc::c_long, who: libc::c_long) -> Outcome {
    // SAFETY: integers only; getpriority reads.
    let raw = got("getpriority", unsafe {
        libc::syscall(libc::SYS_getpriority, which, who)
    })?;
    // SAFETY: integers only; the priority is the one just read.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_setpriority, which, who, 20 - raw)
    }))
}

fn setpriority(pid: libc::pid_t) -> Outcome {
    same_priority(super::PRIO_PROCESS as libc::c_long, pid.into())
}

/// Makes this process a process group of its own, so that a call on the caller's group
/// (`who` 0) let through reaches it alone.
fn alone_in_a_group() -> Result<(), String> {
    // SAFETY: integers only; a process of no session's lead joins a group of its own.
    unsafe { libc::setpgid(0, 0) };
    // SAFETY: getpgrp and getpid have no preconditions.
    if unsafe { libc::getpgrp() != libc::getpid() } {
        return Err("not alone in a process group (NOT tested)".to_owned());
    }
    Ok(())
}

fn setpriority_group() -> Outcome {
    alone_in_a_group()?;
    same_priority(PRIO_PGRP, 0)
}

/// The user whose id is this process's pid: `who` this process's pid, which the filter
/// allows for one process, so that only the `which` refuses it. Probed only where the user
/// has no process, so that a call let through changes nothing (`ESRCH`).
fn setpriority_user() -> Outcome {
    // SAFETY: getpid has no preconditions.
    let who = libc::c_long::from(unsafe { libc::getpid() });
    // SAFETY: integers only; getpriority reads.
    let read = unsafe { libc::syscall(libc::SYS_getpriority, PRIO_USER, who) };
    if read != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
        return Err(format!("user {who} has processes (NOT tested)"));
    }
    // SAFETY: integers only; the user has no process.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_setpriority, PRIO_USER, who, 0)
    }))
}

/// `ioprio_set`'s `which` for a process group and a user (`linux/ioprio.h`).
const IOPRIO_WHO_PGRP: libc::c_long = 2;
const IOPRIO_WHO_USER: libc::c_long = 3;

/// Where the class goes in an I/O priority (`linux/ioprio.h`).
const IOPRIO_CLASS_SHIFT: u32 = 13;

/// An I/O priority of a class that does not exist (7), which the kernel refuses
/// (`EINVAL`) before it looks for whom to set it: a call let through changes nothing.
const IOPRIO_INVALID: libc::c_long = 7 << IOPRIO_CLASS_SHIFT;

/// Sets the I/O priority of `who` (by `which`) to what it is. The "none" class (the
/// priority follows the nice value) is read with a level the kernel refuses to set: it is
/// set as "none" again.
fn same_io_priority(which: libc::c_long, who: libc::c_long) -> Outcome {
    // SAFETY: integers only; ioprio_get reads.
    let mut value = got("ioprio_get", unsafe {
        libc::syscall(libc::SYS_ioprio_get, which, who)
    })?;
    if value >> IOPRIO_CLASS_SHIFT == 0 {
        value = 0;
    }
    // SAFETY: integers only; the priority is the one just read.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_ioprio_set, which, who, value)
    }))
}

fn ioprio_set(pid: libc::pid_t) -> Outcome {
    same_io_priority(super::IOPRIO_WHO_PROCESS as libc::c_long, pid.into())
}

fn ioprio_set_group() -> Outcome {
    alone_in_a_group()?;
    same_io_priority(IOPRIO_WHO_PGRP, 0)
}

/// Every process of this process's user (`who` 0, which the filter allows for one
/// process, so that only the `which` refuses it), with a priority the kernel refuses.
fn ioprio_set_user() -> Outcome {
    // SAFETY: integers only; the kernel refuses the priority before it acts.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_USER, 0, IOPRIO_INVALID)
    }))
}

fn sched_setaffinity(pid: libc::pid_t) -> Outcome {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `cpu_set_t` is plain data; all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is `size` bytes, written by sched_getaffinity within them.
    let read = unsafe { libc::sched_getaffinity(pid, size, &mut set) };
    got("sched_getaffinity", read.into())?;
    // SAFETY: the set just read, `size` bytes.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_sched_setaffinity, pid, size, &set)
    }))
}

/// The scheduling parameters of `pid` (its priority).
fn parameters(pid: libc::pid_t) -> Result<libc::sched_param, String> {
    let mut parameters = libc::sched_param { sched_priority: 0 };
    // SAFETY: `parameters` is valid for the call to write.
    let read = unsafe { libc::sched_getparam(pid, &mut parameters) };
    got("sched_getparam", read.into())?;
    Ok(parameters)
}

fn sched_setscheduler(pid: libc::pid_t) -> Outcome {
    // SAFETY: integers only; sched_getscheduler reads (the policy with its flags).
    let policy = unsafe { libc::sched_getscheduler(pid) };
    let policy = got("sched_getscheduler", policy.into())?;
    let parameters = parameters(pid)?;
    // SAFETY: the policy and parameters just read, valid for the call.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_sched_setscheduler, pid, policy, &parameters)
    }))
}

fn sched_setparam(pid: libc::pid_t) -> Outcome {
    let parameters = parameters(pid)?;
    // SAFETY: the parameters just read, valid for the call.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_sched_setparam, pid, &parameters)
    }))
}

fn sched_setattr(pid: libc::pid_t) -> Outcome {
    let size = std::mem::size_of::<libc::sched_attr>();
    // SAFETY: `sched_attr` is plain data; all zeroes is a valid value.
    let mut attributes: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `attributes` is `size` bytes, written by sched_getattr within them.
    got("sched_getattr", unsafe {
        libc::syscall(libc::SYS_sched_getattr, pid, &mut attributes, size, 0)
    })?;
    // SAFETY: the attributes just read (their size set by the kernel), valid for the call.
    Ok(answer(unsafe {
        libc::syscall(libc::SYS_sched_setattr, pid, &attributes, 0)
    }))
}
