//! Files and directories only their owner can touch: a serving process's state directory
//! (tool inputs and results, stored values, session ids) and the runtime's snapshot cache
//! (a blob V8 trusts whole). The rules, as Postgres keeps its data directory:
//!
//! - A directory is created `0700`. An existing one must be a directory itself (a symbolic
//!   link is refused, never followed), owned by this user, and writable by no one else; one
//!   that others can only read is tightened to `0700`.
//! - A file is created `0600` and opened with `O_NOFOLLOW`. An existing one must be a
//!   regular file of this user's that no one else can write; one others can read is
//!   tightened to `0600`.
//! - A file mapped whole ([`map_private`]) is opened non-blocking (a FIFO does not hang the
//!   reader) and checked with `fstat` before it is mapped: a regular file of ours, under a
//!   size cap.
//!
//! Every refusal says what is wrong and how to fix it.

use std::fs::File;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

/// Why a private file or directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{what} {path} is a symbolic link, which is never followed: name the {kind} itself")]
    Link {
        what: &'static str,
        kind: &'static str,
        path: PathBuf,
    },
    #[error("{what} {path} is not a {kind}")]
    Kind {
        what: &'static str,
        kind: &'static str,
        path: PathBuf,
    },
    #[error(
        "{what} {path} belongs to user {owner}, not to this user ({uid}): use one of your own, or `chown {uid} {path}`"
    )]
    NotOurs {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error(
        "{what} {path} can be written by group or others (mode {mode:04o}): make it private with `chmod {fix:o} {path}`"
    )]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
        fix: u32,
    },
    #[error("{what} {path} is {size} bytes, over the {max} bytes it may be")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        size: u64,
        max: u64,
    },
    #[error("cannot use {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl FilesError {
    /// The I/O error underneath, if that is what it is (not found, say).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            FilesError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

const DIRECTORY: &str = "directory";
const FILE: &str = "regular file";

/// This process's effective user.
fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks the owner and mode of an existing `metadata` of `path` (a `kind` the caller
/// checked), and tightens what others can read to `private`. `set` changes the mode.
fn check_owner_and_mode(
    what: &'static str,
    path: &Path,
    metadata: &std::fs::Metadata,
    private: u32,
    set: impl FnOnce(std::fs::Permissions) -> std::io::Result<()>,
) -> Result<(), FilesError> {
    let uid = uid();
    if metadata.uid() != uid {
        return Err(FilesError::NotOurs {
            what,
            path: path.to_owned(),
            owner: metadata.uid(),
            uid,
        });
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FilesError::Writable {
            what,
            path: path.to_owned(),
            mode,
            fix: private,
        });
    }
    if mode & 0o077 != 0 {
        set(std::fs::Permissions::from_mode(mode & !0o077)).map_err(|source| FilesError::Io {
            what,
            path: path.to_owned(),
            source,
        })?;
        tracing::info!(path = %path.display(), from = format!("{mode:04o}"), "made private to its owner");
    }
    Ok(())
}

/// Makes `path` a directory only this user can use, or checks that it is one (see the
/// module's rules); its parents are created as usual if missing.
pub fn private_dir(what: &'static str, path: &Path) -> Result<(), FilesError> {
    let io = |source| FilesError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io(error)),
    }
    let metadata = std::fs::symlink_metadata(path).map_err(io)?;
    if metadata.file_type().is_symlink() {
        return Err(FilesError::Link {
            what,
            kind: DIRECTORY,
            path: path.to_owned(),
        });
    }
    if !metadata.is_dir() {
        return Err(FilesError::Kind {
            what,
            kind: DIRECTORY,
            path: path.to_owned(),
        });
    }
    check_owner_and_mode(what, path, &metadata, 0o700, |permissions| {
        std::fs::set_permissions(path, permissions)
    })
}

/// The options every private file is opened with: no link followed, created `0600`.
fn options() -> std::fs::OpenOptions {
    let mut options = File::options();
    options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    options
}

/// Checks a file just opened (without following a link) as a private file.
fn checked(what: &'static str, path: &Path, file: File) -> Result<File, FilesError> {
    let metadata = file.metadata().map_err(|source| FilesError::Io {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(FilesError::Kind {
            what,
            kind: FILE,
            path: path.to_owned(),
        });
    }
    check_owner_and_mode(what, path, &metadata, 0o600, |permissions| {
        file.set_permissions(permissions)
    })?;
    Ok(file)
}

/// Opened without following a link: a link is refused as one.
fn opened(
    what: &'static str,
    path: &Path,
    opened: std::io::Result<File>,
) -> Result<File, FilesError> {
    match opened {
        Ok(file) => checked(what, path, file),
        // O_NOFOLLOW on a link: ELOOP.
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => Err(FilesError::Link {
            what,
            kind: FILE,
            path: path.to_owned(),
        }),
        Err(source) => Err(FilesError::Io {
            what,
            path: path.to_owned(),
            source,
        }),
    }
}

/// Opens `path` for reading and writing, created `0600` if missing, as a private file.
pub fn private_file(what: &'static str, path: &Path) -> Result<File, FilesError> {
    let file = options().read(true).write(true).create(true).open(path);
    opened(what, path, file)
}

/// Creates `path`, which must not exist (`O_EXCL`), as a private file.
pub fn create_new_private(what: &'static str, path: &Path) -> Result<File, FilesError> {
    let file = options().write(true).create_new(true).open(path);
    opened(what, path, file)
}

/// Checks `path` as a private file if it exists (a database's `-wal` and `-shm`, say).
pub fn check_if_present(what: &'static str, path: &Path) -> Result<(), FilesError> {
    let file = options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    match file {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        file => opened(what, path, file).map(drop),
    }
}

/// A private file mapped read-only ([`map_private`]): its bytes, in the page cache's own
/// pages, with no copy made.
///
/// The mapping is the file's, not a snapshot of it: a file truncated under it by another
/// process of this user would fault the reader (`SIGBUS`). Only files that are replaced
/// whole (written under another name, then renamed over) are mapped: a rename or an
/// unlink leaves a mapping as it was.
#[derive(Debug)]
pub struct Mapped {
    address: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; nothing in it is tied to the
// thread that made it, and shared reads of it are sound.
unsafe impl Send for Mapped {}
// SAFETY: as above: `&Mapped` only gives out shared reads of read-only memory.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// The bytes, for the rest of the process: the mapping is never unmapped.
    pub fn into_static(self) -> &'static [u8] {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the mapping is valid for `len` bytes (an empty one is a dangling, aligned
        // pointer with length 0) and, as it is not dropped, is never unmapped.
        unsafe { std::slice::from_raw_parts(this.address.cast::<u8>().cast_const(), this.len) }
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes while `self` lives (an empty one is a
        // dangling, aligned pointer with length 0) and is never written.
        unsafe { std::slice::from_raw_parts(self.address.cast::<u8>().cast_const(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `address` and `len` are the mapping `map_private` made, unmapped once.
            unsafe { libc::munmap(self.address, self.len) };
        }
    }
}

/// Maps the private file `path` read-only, whole, if it is at most `max` bytes: opened
/// non-blocking without following a link, and checked with `fstat` as a regular file of
/// this user's before it is mapped (see [`Mapped`] for what a mapping trusts). A mapping
/// costs no copy, and no fault per page: the kernel maps the page cache's pages as they
/// are read, several at a time.
pub fn map_private(what: &'static str, path: &Path, max: u64) -> Result<Mapped, FilesError> {
    let file = options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let file = opened(what, path, file)?;
    let io = |source| FilesError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    if size > max {
        return Err(FilesError::TooLarge {
            what,
            path: path.to_owned(),
            size,
            max,
        });
    }
    let Ok(len) = usize::try_from(size) else {
        return Err(FilesError::TooLarge {
            what,
            path: path.to_owned(),
            size,
            max: usize::MAX as u64,
        });
    };
    if len == 0 {
        return Ok(Mapped {
            address: std::ptr::NonNull::<u64>::dangling().as_ptr().cast(),
            len: 0,
        });
    }
    // SAFETY: a new read-only private mapping of `len` bytes of an open file at offset 0;
    // no existing memory is touched. The descriptor may close once it is made.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(Mapped { address, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "code-mode-files-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
    }

    #[test]
    fn directories_are_made_0700_and_others_read_access_is_taken_away() {
        let root = scratch("dirs");
        let made = root.join("a/b/state");
        private_dir("the state directory", &made).expect("made");
        assert_eq!(mode(&made), 0o700);
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir("the state directory", &open).expect("tightened");
        assert_eq!(mode(&open), 0o700);
    }

    #[test]
    fn a_writable_directory_or_a_link_is_refused_with_its_fix() {
        let root = scratch("refused");
        let shared = root.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o775)).unwrap();
        let error = private_dir("the state directory", &shared).unwrap_err();
        assert!(
            error.to_string().contains("chmod 700"),
            "the fix is named: {error}"
        );
        assert_eq!(mode(&shared), 0o775, "nothing changed");
        let target = root.join("target");
        std::fs::create_dir(&target).unwrap();
        let link = root.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = private_dir("the state directory", &link).unwrap_err();
        assert!(matches!(error, FilesError::Link { .. }), "{error}");
    }

    #[test]
    fn files_are_0600_links_and_writable_files_are_refused() {
        let root = scratch("files");
        let file = root.join("db");
        private_file("the database", &file).expect("made");
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file("the database", &file).expect("tightened");
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(matches!(
            private_file("the database", &file),
            Err(FilesError::Writable { .. })
        ));
        let elsewhere = root.join("elsewhere");
        std::fs::write(&elsewhere, b"x").unwrap();
        let planted = root.join("planted");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        for result in [
            private_file("the database", &planted).map(drop),
            check_if_present("the database", &planted),
            map_private("the cache", &planted, 10).map(drop),
        ] {
            assert!(matches!(result, Err(FilesError::Link { .. })), "{result:?}");
        }
        assert!(check_if_present("the database", &root.join("missing")).is_ok());
        assert!(create_new_private("a temporary", &file).is_err(), "O_EXCL");
    }

    #[test]
    fn a_fifo_or_a_large_file_is_not_read() {
        let root = scratch("read");
        let fifo = root.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let error = map_private("the cache", &fifo, 10).unwrap_err();
        assert!(matches!(error, FilesError::Kind { .. }), "{error}");
        let large = root.join("large");
        std::fs::write(&large, b"eleven byte").unwrap();
        std::fs::set_permissions(&large, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            map_private("the cache", &large, 10),
            Err(FilesError::TooLarge { .. })
        ));
        let mapped = map_private("the cache", &large, 11).unwrap();
        assert_eq!(&*mapped, b"eleven byte");
        // Replaced whole under it (written aside, renamed over), the mapping keeps its bytes.
        let aside = root.join("aside");
        std::fs::write(&aside, b"other bytes").unwrap();
        std::fs::rename(&aside, &large).unwrap();
        assert_eq!(mapped.into_static(), b"eleven byte");
        let empty = root.join("empty");
        std::fs::write(&empty, b"").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(map_private("the cache", &empty, 11).unwrap().is_empty());
    }
}
