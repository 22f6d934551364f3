//! A runtime forked from this very process as it starts, for an executable that carries
//! the runtime (the Codex front's one file).
//!
//! Started with `posix_spawn`, a runtime first pays for an exec and the load of a
//! 200 MiB executable: on a cold start that is the longest step before the first cell can
//! run, and it comes after the front's own load of the same file. A fork of the front made
//! first thing in `main`, while it has one thread and has touched few pages, starts the
//! runtime with all of that done: the child goes straight to V8. The Codex front forks it
//! before it even parses its arguments, so the child starts V8 while the front does, then
//! reads its command line from its socket ([`receive_arguments`], sent by
//! [`Prelaunched::send_arguments`]); a front with no use for it drops it, which kills it.
//!
//! The child is cleaned as the spawned one would be: descriptors 0 and 1 on `/dev/null`,
//! 2 on a pipe the provider forwards to `tracing`, the connected socket on 3 and nothing
//! else open (closed with `close_range`, else by the list in `/proc/self/fd`); a process
//! group of its own; a parent-death signal; no signal blocked; and the environment wiped
//! and the command line overwritten with the runtime's name, their bytes gone (a spawned
//! runtime gets a cleared environment, and a forked one must not keep the front's, which
//! may hold credentials, such as an exporter URL's, in its memory). It then sandboxes
//! itself as every runtime does. It shares the front's address-space
//! layout (a fork is not a fresh exec), which a spawned runtime would not.
//!
//! Right after the fork the front moves itself to another core
//! (`code_mode_cores::step_aside`), so that the child, which the kernel queues on the
//! front's core, runs at once.
//!
//! Only the first runtime is forked; a runtime that replaces it is spawned as usual.

use crate::error::SpawnError;
use crate::process::{self, RuntimeProcess};
use interprocess::local_socket::tokio::Stream;
use interprocess::os::unix::uds_local_socket::tokio::Stream as UdsStream;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The descriptor the forked runtime finds its connected socket on.
pub const SOCKET_FD: RawFd = 3;

/// A runtime process this process forked from itself, waiting to be adopted by a
/// [`crate::ProcessProvider`] ([`crate::ProcessProvider::adopt`]). Dropped unadopted, it
/// is killed and reaped.
#[derive(Debug)]
pub struct Prelaunched {
    pid: libc::pid_t,
    socket: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl Prelaunched {
    /// The forked runtime's process id.
    pub fn pid(&self) -> u32 {
        u32::try_from(self.pid).unwrap_or(0)
    }

    /// Sends the forked runtime its command line (`code_mode_bin::run`'s arguments, its
    /// program name first), for a runtime forked before the front had parsed its own: the
    /// child waits for it ([`receive_arguments`]) while it starts V8. Call it once, before
    /// the runtime is adopted: it goes ahead of everything else on the runtime's socket.
    pub fn send_arguments(&mut self, args: &[std::ffi::OsString]) -> io::Result<()> {
        use std::io::Write as _;
        let socket = self
            .socket
            .take()
            .ok_or_else(|| io::Error::other("the forked runtime was already adopted"))?;
        let mut stream = std::os::unix::net::UnixStream::from(socket);
        let sent = encode_arguments(args).and_then(|bytes| stream.write_all(&bytes));
        self.socket = Some(OwnedFd::from(stream));
        sent
    }
}

/// The most bytes of command line a forked runtime takes from its front.
const MAX_ARGUMENT_BYTES: usize = 64 * 1024;

/// A command line as [`receive_arguments`] reads it: its length in bytes (four bytes,
/// little-endian), then each argument followed by a NUL byte.
fn encode_arguments(args: &[std::ffi::OsString]) -> io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut body = Vec::new();
    for arg in args {
        let bytes = arg.as_bytes();
        if bytes.contains(&0) {
            return Err(io::Error::other("a runtime argument holds a NUL byte"));
        }
        body.extend_from_slice(bytes);
        body.push(0);
    }
    let length = u32::try_from(body.len())
        .ok()
        .filter(|length| *length as usize <= MAX_ARGUMENT_BYTES)
        .ok_or_else(|| io::Error::other("the runtime's command line is too long"))?;
    let mut message = length.to_le_bytes().to_vec();
    message.append(&mut body);
    Ok(message)
}

/// In a runtime forked before its front parsed its arguments: the command line the front
/// sends ([`Prelaunched::send_arguments`]), read from `socket` (blocking) and nothing
/// after it. An error if the front closed the socket first (it did not want the runtime)
/// or sent something else.
pub fn receive_arguments(socket: OwnedFd) -> (OwnedFd, io::Result<Vec<std::ffi::OsString>>) {
    use std::io::Read as _;
    use std::os::unix::ffi::OsStringExt as _;
    let mut stream = std::os::unix::net::UnixStream::from(socket);
    let received = (|| {
        let mut length = [0u8; 4];
        stream.read_exact(&mut length)?;
        let length = u32::from_le_bytes(length) as usize;
        if length > MAX_ARGUMENT_BYTES {
            return Err(io::Error::other("the front sent a command line too long"));
        }
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body)?;
        if body.is_empty() {
            return Ok(Vec::new());
        }
        if body.pop() != Some(0) {
            return Err(io::Error::other(
                "the front sent a command line not ended by NUL",
            ));
        }
        Ok(body
            .split(|byte| *byte == 0)
            .map(|arg| std::ffi::OsString::from_vec(arg.to_vec()))
            .collect())
    })();
    (OwnedFd::from(stream), received)
}

impl Drop for Prelaunched {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: kill(2) and waitpid(2) on our own unreaped child: its pid cannot
            // have been reused while it is unreaped.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Each side of [`fork_runtime`].
#[derive(Debug)]
pub enum Forked {
    /// In this process: the runtime, for [`crate::ProcessProvider::adopt`].
    Parent(Prelaunched),
    /// In the new process: the socket connected to the parent (descriptor
    /// [`SOCKET_FD`]). The caller becomes the runtime now (`code_mode_bin::run` with
    /// `--socket-fd 3`) and returns from `main` when it is done.
    Child(OwnedFd),
}

/// Why no runtime was forked.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("this process has {0} threads; a runtime is forked only from a process that has one")]
    Threads(usize),
    #[error("cannot count this process's threads: {0}")]
    Unknown(io::Error),
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> ForkError {
    move |source| ForkError::Io { what, source }
}

/// Forks a runtime from this process (see the module docs). Refuses unless this process
/// has exactly one thread, the caller's (a fork copies only the calling thread, and a lock
/// held by another one would stay locked in the child for good): call it first thing in
/// `main`, before anything starts a thread.
pub fn fork_runtime() -> Result<Forked, ForkError> {
    // One read of the kernel's figures for both the check and the child's clean-up.
    let stat = SelfStat::read().map_err(ForkError::Unknown)?;
    if stat.threads != 1 {
        return Err(ForkError::Threads(stat.threads));
    }
    // Both close on exec; the child places its ends by number.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map(|(ours, theirs)| (OwnedFd::from(ours), OwnedFd::from(theirs)))
        .map_err(io_error("make the runtime's socket pair"))?;
    let (stderr_read, stderr_write) = io::pipe()
        .map(|(read, write)| (OwnedFd::from(read), OwnedFd::from(write)))
        .map_err(io_error("make the runtime's stderr"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(io_error("open /dev/null"))?;
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: this process has one thread (checked above, and only that thread could have
    // started another since), so the child is a whole copy of it: no lock is held by a
    // thread that does not exist there.
    match unsafe { libc::fork() } {
        -1 => Err(ForkError::Io {
            what: "fork",
            source: io::Error::last_os_error(),
        }),
        0 => {
            // The child: every descriptor is placed by number, then all others closed,
            // so none of these may be closed again by a drop.
            let theirs = theirs.into_raw_fd();
            let stderr_write = stderr_write.into_raw_fd();
            let null = null.into_raw_fd();
            let _ = (ours.into_raw_fd(), stderr_read.into_raw_fd());
            become_runtime(parent, theirs, stderr_write, null, stat.arguments);
            // SAFETY: `become_runtime` left the socket on SOCKET_FD and closed every
            // other descriptor above 2; nothing else owns it.
            Ok(Forked::Child(unsafe { OwnedFd::from_raw_fd(SOCKET_FD) }))
        }
        pid => {
            drop((theirs, stderr_write, null));
            // The child is queued on this core: this process moves to another one.
            code_mode_cores::step_aside();
            Ok(Forked::Parent(Prelaunched {
                pid,
                socket: Some(ours),
                stderr: Some(stderr_read),
            }))
        }
    }
}

/// In the forked child: the descriptors, process group, parent-death signal, name and
/// environment of a runtime. Exits at once if the parent is already gone.
fn become_runtime(
    parent: libc::pid_t,
    socket: RawFd,
    stderr: RawFd,
    null: RawFd,
    arguments: Option<(usize, usize)>,
) {
    // SAFETY: plain system calls on this process and on descriptors it holds (the child
    // has one thread; each number below is open or is the target of a dup).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        // Ctrl-C at the agent core's terminal is not the runtime's (as for a spawned one).
        libc::setpgid(0, 0);
        // Above the numbers they go to first: a parent started with a standard descriptor
        // closed could have been given one of them.
        let [socket, stderr, null] =
            [socket, stderr, null].map(|fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10));
        if socket < 0 || stderr < 0 || null < 0 {
            libc::_exit(1);
        }
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        libc::dup2(stderr, 2);
        libc::dup3(socket, SOCKET_FD, libc::O_CLOEXEC);
        close_from(SOCKET_FD + 1);
        libc::prctl(libc::PR_SET_NAME, c"code-mode-rt".as_ptr(), 0, 0, 0);
        // The front's blocked signals are not the runtime's (a spawned one starts with
        // none blocked by us either).
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    wipe_environment();
    if let Some(area) = arguments {
        wipe_arguments(area);
    }
}

/// Overwrites the front's command line in this process's memory (an exporter URL there
/// can hold credentials) with the runtime's name: `/proc/<pid>/cmdline` and every copy of
/// the memory show `code-mode-rt` and nothing else. The runtime's own arguments were
/// taken before the fork, or come over the socket (`receive_arguments`).
fn wipe_arguments((start, end): (usize, usize)) {
    let name = b"code-mode-rt";
    // SAFETY: [start, end) is this process's argument area (the kernel's `arg_start` and
    // `arg_end`, read by the parent it is a copy of), mapped and writable on its stack;
    // the child has one thread, and nothing holds a reference into it (Rust's
    // `std::env::args` is not read after the fork).
    unsafe {
        for (offset, address) in (start..end).enumerate() {
            let byte = name.get(offset).copied().unwrap_or(0);
            std::ptr::write_volatile(address as *mut u8, byte);
        }
    }
}

/// What the fork needs of this process's `/proc/self/stat`, read once before it (the child
/// is a copy: its argument area is at the same addresses).
struct SelfStat {
    /// `num_threads` (field 20).
    threads: usize,
    /// `arg_start` and `arg_end` (fields 48 and 49), when the kernel gives them and they
    /// make a plausible area.
    arguments: Option<(usize, usize)>,
}

impl SelfStat {
    fn read() -> io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        Self::parse(&stat).ok_or_else(|| io::Error::other("no thread count in /proc/self/stat"))
    }

    fn parse(stat: &str) -> Option<Self> {
        // Fields after the command's name (in parentheses, which may hold spaces and
        // parentheses of its own) start at 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<usize>().ok();
        let arguments = field(48)
            .zip(field(49))
            .filter(|(start, end)| start < end && end - start < (1 << 24));
        Some(Self {
            threads: field(20)?,
            arguments,
        })
    }
}

/// Closes every descriptor from `first` up.
fn close_from(first: RawFd) {
    let first = u32::try_from(first).unwrap_or(0);
    // SAFETY: close_range(2) on descriptors of this single-threaded child, none of which
    // is owned by a live Rust value.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if closed == 0 {
        return;
    }
    let first = i32::try_from(first).unwrap_or(i32::MAX);
    // Kernels before 5.9: close what /proc/self/fd lists (read whole first: the listing's
    // own descriptor is among them)...
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let open: Vec<i32> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= first)
            .collect();
        for fd in open {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
        return;
    }
    // ...or, without /proc, every number up to the hard limit (a descriptor can be open
    // above a soft limit that was lowered after it was opened).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let max = if known && limit.rlim_max != libc::RLIM_INFINITY {
        i32::try_from(limit.rlim_max).unwrap_or(i32::MAX)
    } else {
        1 << 20
    }
    .clamp(1024, 1 << 20);
    for fd in first..max {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
}

/// Overwrites the bytes of every environment string with zeros, then clears the
/// environment: no variable of the front's, in value or in memory.
fn wipe_environment() {
    unsafe extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: the child has one thread, so nothing reads or changes the environment
    // meanwhile; each entry is a NUL-terminated string of the process, written over
    // within its length, and the table is then emptied by clearenv(3).
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let string = *entry;
            let length = libc::strlen(string);
            for offset in 0..length {
                std::ptr::write_volatile(string.add(offset), 0);
            }
            entry = entry.add(1);
        }
        libc::clearenv();
    }
}

/// Takes `prelaunched` under supervision (in a tokio runtime): its stderr forwarded, its
/// exit watched, its socket as the connection's stream.
pub(crate) fn adopt(mut prelaunched: Prelaunched) -> Result<(RuntimeProcess, Stream), SpawnError> {
    let pid = std::mem::replace(&mut prelaunched.pid, 0);
    let (Some(socket), Some(stderr)) = (prelaunched.socket.take(), prelaunched.stderr.take())
    else {
        return Err(SpawnError::Adopt(io::Error::other(
            "the forked runtime was already adopted",
        )));
    };
    let reaped = Arc::new(Mutex::new(false));
    let status = reap_on_thread(pid, Arc::clone(&reaped)).map_err(SpawnError::Adopt)?;
    let process = process::supervise(
        u32::try_from(pid).unwrap_or(0),
        ForkedChild {
            pid,
            status: Some(status),
            reaped,
        },
    );
    match tokio::net::unix::pipe::Receiver::from_owned_fd(stderr) {
        Ok(stderr) => {
            tokio::spawn(process::forward_stderr(stderr, process.pid()));
        }
        Err(error) => tracing::warn!(%error, "the forked runtime's stderr is not forwarded"),
    }
    let socket = std::os::unix::net::UnixStream::from(socket);
    let stream = socket
        .set_nonblocking(true)
        .and_then(|()| UdsStream::try_from(OwnedFd::from(socket)))
        .map(Stream::from)
        .map_err(SpawnError::Adopt)?;
    Ok((process, stream))
}

/// Waits for the child on a thread of its own: first without reaping it, then marks it
/// reaped and reaps it under `reaped`'s lock, so that a kill under the same lock never
/// reaches a pid the kernel has given to another process.
fn reap_on_thread(
    pid: libc::pid_t,
    reaped: Arc<Mutex<bool>>,
) -> io::Result<oneshot::Receiver<io::Result<ExitStatus>>> {
    let (status_tx, status) = oneshot::channel();
    std::thread::Builder::new()
        .name("code-mode-reaper".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let waited = loop {
                // SAFETY: waitid(2) on our own child, into a zeroed siginfo it owns.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: as above; WNOWAIT leaves it unreaped.
                let result = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        libc::id_t::try_from(pid).unwrap_or(0),
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                let error = io::Error::last_os_error();
                if result == 0 || error.kind() != io::ErrorKind::Interrupted {
                    break if result == 0 { Ok(()) } else { Err(error) };
                }
            };
            let status = waited.and_then(|()| {
                let mut done = code_mode_internal::sync::lock(&reaped);
                *done = true;
                let mut status = 0;
                // SAFETY: waitpid(2) on our own exited child, into a local.
                if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                    Ok(ExitStatus::from_raw(status))
                } else {
                    Err(io::Error::last_os_error())
                }
            });
            let _ = status_tx.send(status);
        })?;
    Ok(status)
}

/// The forked runtime, for the supervisor.
struct ForkedChild {
    pid: libc::pid_t,
    status: Option<oneshot::Receiver<io::Result<ExitStatus>>>,
    reaped: Arc<Mutex<bool>>,
}

impl process::Child for ForkedChild {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        let Some(status) = self.status.as_mut() else {
            return Err(io::Error::other("already waited for"));
        };
        let outcome = status
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the reaper thread stopped")));
        self.status = None;
        outcome
    }

    fn start_kill(&mut self) {
        let reaped = code_mode_internal::sync::lock(&self.reaped);
        if !*reaped {
            // SAFETY: kill(2) on our child, which is not reaped while this lock is held.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::io::Write as _;
    use std::os::unix::ffi::OsStringExt as _;

    fn pair() -> (std::os::unix::net::UnixStream, OwnedFd) {
        let (front, runtime) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        (front, OwnedFd::from(runtime))
    }

    /// `/proc/self/stat` as the kernel writes it, with `name` as the command and
    /// `threads`, `arg_start`, `arg_end` in fields 20, 48 and 49.
    fn stat_line(name: &str, threads: usize, start: usize, end: usize) -> String {
        let mut fields: Vec<String> = (3..=52).map(|number| (number * 11).to_string()).collect();
        fields[20 - 3] = threads.to_string();
        fields[48 - 3] = start.to_string();
        fields[49 - 3] = end.to_string();
        format!("4242 ({name}) {}\n", fields.join(" "))
    }

    #[test]
    fn the_thread_count_and_argument_area_come_from_one_read_of_the_stat_line() {
        // A command's name may hold spaces and parentheses: fields count from the last ')'.
        let line = stat_line("a) (b c", 1, 0x7ffc_0000_1000, 0x7ffc_0000_1040);
        let stat = SelfStat::parse(&line).expect("parsed");
        assert_eq!(stat.threads, 1);
        assert_eq!(stat.arguments, Some((0x7ffc_0000_1000, 0x7ffc_0000_1040)));
        let stat = SelfStat::parse(&stat_line("host", 7, 10, 20)).expect("parsed");
        assert_eq!(stat.threads, 7);
        // An area that is empty, reversed or implausibly large is not wiped.
        for (start, end) in [(20, 20), (30, 20), (0, 1 << 24)] {
            let stat = SelfStat::parse(&stat_line("host", 1, start, end)).expect("parsed");
            assert_eq!(stat.arguments, None, "{start}..{end}");
        }
        // Without a thread count there is no answer; without the area, no wipe.
        assert!(SelfStat::parse("4242 (host) R 1 2 3").is_none());
        let short = stat_line("host", 1, 10, 20);
        let short = &short[..short.find(" 10 ").expect("the area's start")];
        let stat = SelfStat::parse(short).expect("parsed");
        assert_eq!((stat.threads, stat.arguments), (1, None));
        // And this process's own line parses.
        let stat = SelfStat::read().expect("this process's stat");
        assert!(stat.threads >= 1);
        assert!(stat.arguments.is_some());
    }

    #[test]
    fn a_command_line_sent_to_a_forked_runtime_arrives_whole_and_nothing_after_it() {
        let args = vec![
            OsString::from("code-mode-rt"),
            OsString::from(""),
            OsString::from_vec(vec![0xff, b'x']),
            OsString::from("--socket-fd"),
            OsString::from("3"),
        ];
        let (mut front, runtime) = pair();
        let mut message = encode_arguments(&args).expect("encoded");
        // What follows the command line on the socket stays there for the runtime.
        message.extend_from_slice(b"hello");
        front.write_all(&message).expect("sent");
        let (runtime, received) = receive_arguments(runtime);
        assert_eq!(received.expect("received"), args);
        let mut rest = [0u8; 5];
        std::io::Read::read_exact(
            &mut std::os::unix::net::UnixStream::from(runtime),
            &mut rest,
        )
        .expect("the rest");
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn a_bad_command_line_is_refused_on_either_side() {
        assert!(encode_arguments(&[OsString::from_vec(b"a\0b".to_vec())]).is_err());
        assert!(encode_arguments(&[OsString::from("x".repeat(MAX_ARGUMENT_BYTES))]).is_err());
        // Too long (though whole and NUL-ended), not ended by NUL, or the front gone
        // before the whole of it.
        let length = MAX_ARGUMENT_BYTES + 1;
        let mut too_long = u32::try_from(length).expect("fits").to_le_bytes().to_vec();
        too_long.extend(std::iter::repeat_n(b'a', length - 1));
        too_long.push(0);
        for sent in [
            too_long,
            vec![2, 0, 0, 0, b'a', b'b'],
            vec![9, 0, 0, 0, b'a'],
        ] {
            let (mut front, runtime) = pair();
            front.write_all(&sent).expect("sent");
            drop(front);
            let (_, received) = receive_arguments(runtime);
            assert!(
                received.is_err(),
                "{} bytes were taken: {received:?}",
                sent.len()
            );
        }
    }
}
