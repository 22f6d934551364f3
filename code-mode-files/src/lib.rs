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
//! - A file read whole ([`read_private`]) is opened non-blocking (a FIFO does not hang the
//!   reader) and checked with `fstat` before a byte is read: a regular file of ours, under
//!   a size cap.
//!
//! Every refusal says what is wrong and how to fix it.

use std::fs::File;
use std::io::Read as _;
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

/// Reads a private file whole, if it is at most `max` bytes: opened non-blocking without
/// following a link, and checked with `fstat` (a regular file of this user's that no one
/// else can write) before anything is read.
pub fn read_private(what: &'static str, path: &Path, max: u64) -> Result<Vec<u8>, FilesError> {
    let file = options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let mut file = opened(what, path, file)?;
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
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // A file that grew meanwhile is read no further than the cap (and then fails its
    // reader's own checks).
    (&mut file)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(FilesError::TooLarge {
            what,
            path: path.to_owned(),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
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
            read_private("the cache", &planted, 10).map(drop),
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
        let error = read_private("the cache", &fifo, 10).unwrap_err();
        assert!(matches!(error, FilesError::Kind { .. }), "{error}");
        let large = root.join("large");
        std::fs::write(&large, [0u8; 11]).unwrap();
        std::fs::set_permissions(&large, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_private("the cache", &large, 10),
            Err(FilesError::TooLarge { .. })
        ));
        assert_eq!(read_private("the cache", &large, 11).unwrap().len(), 11);
    }
}
