//! Standard input and output as the protocol's byte stream, and nothing else.
//!
//! On stdio, stdout *is* the HTTP/2 (or JSON) stream: one stray byte from a library, a
//! child process or a panic would corrupt every session. So at startup the protocol takes
//! private duplicates of descriptors 0 and 1, then points descriptor 1 at stderr and
//! descriptor 0 at `/dev/null`. Whatever writes to "stdout" afterwards (a `println!`
//! anywhere, an inherited descriptor in a child) lands in the log, and no child can read
//! the client's bytes.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The protocol's private input and output.
pub struct ProtocolStdio {
    pub input: OwnedFd,
    pub output: OwnedFd,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Moves the protocol off descriptors 0 and 1 (see the module docs). Call once, before
/// any thread or child starts.
pub fn take_protocol_stdio() -> io::Result<ProtocolStdio> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on descriptors this process owns; each new
    // descriptor is owned by exactly one OwnedFd below.
    let input = check(unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: as above.
    let output = check(unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: `input` and `output` are fresh descriptors nobody else owns.
    let (input, output) = unsafe { (OwnedFd::from_raw_fd(input), OwnedFd::from_raw_fd(output)) };
    let null = File::open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors; `null` stays open until after the call
    // and descriptor 2 is the process's stderr.
    unsafe {
        check(libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0))?;
        check(libc::dup2(2, 1))?;
    }
    Ok(ProtocolStdio { input, output })
}

/// The protocol's input as an async reader: a pipe when it is one (codex's case), else a
/// file read on tokio's blocking pool.
pub fn reader(fd: OwnedFd) -> io::Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> {
    if is_fifo(&fd)? {
        Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(
            fd,
        )?))
    } else {
        Ok(Box::new(tokio::fs::File::from_std(File::from(fd))))
    }
}

/// The protocol's output as an async writer (see [`reader`]).
pub fn writer(fd: OwnedFd) -> io::Result<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> {
    if is_fifo(&fd)? {
        Ok(Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?))
    } else {
        Ok(Box::new(tokio::fs::File::from_std(File::from(fd))))
    }
}

fn is_fifo(fd: &OwnedFd) -> io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    let file = File::from(fd.try_clone()?);
    Ok(file.metadata()?.file_type().is_fifo())
}
