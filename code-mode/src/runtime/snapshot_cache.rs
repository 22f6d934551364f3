//! The startup snapshot kept on disk between runtime processes of one executable, so that a
//! process does not make it again at every start ([`super::snapshot`] makes it otherwise).
//!
//! A file is `<dir>/<key>.snapshot`: a magic, the key, the blob's length and its CRC-32,
//! padded to 64 bytes, then the blob. It is mapped, not read ([`code_mode_files::Mapped`]):
//! V8 deserialises every isolate straight from the page cache's pages, and a cold start
//! neither copies the blob nor faults in a page of fresh memory for each 4 KiB of it. The
//! padding keeps the blob as aligned in the mapping as in an allocation.
//!
//! The key is the SHA-256 of what a blob depends on: the format, V8's version and flags,
//! and the identity of the executable that made it (device, inode, size, modification
//! time), so that another build, or the same path rebuilt, never reads it. A file that is
//! truncated, corrupt, foreign or unreadable is ignored (V8 is never given bytes that were
//! not checked) and the blob is made and written again. A file is written whole under a
//! name of its own, then renamed into place (never rewritten in place, which a mapping
//! would not survive): two processes starting at once each write theirs, and either one
//! wins, whole.
//!
//! Files do not pile up as builds come and go: a read marks its file used (its
//! modification time, at most once a day), and a write, which is the first start of a
//! build, removes the cache files (and writers' leftover temporaries) that no start has
//! used for [`UNUSED_FOR`]. Only names of this module's own making are ever removed, so a
//! directory shared with other files loses none of them.
//!
//! The checksum is there for accidents (a torn or flipped file), not for an adversary: the
//! directory and the file must be the user's alone, and whoever can write there can
//! replace the executable too. A CRC-32 catches what a disk or a crash does to a file, and
//! checking a blob costs about 7 µs where its SHA-256 cost 200 µs of a cold start.
//!
//! Everything here happens before the runtime's sandbox forbids file access:
//! [`use_disk_cache`](super::snapshot::use_disk_cache) is called once, at start.

use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The first bytes of a cache file.
const MAGIC: &[u8; 8] = b"CMSNAP03";

/// How long a cache file no start has used is kept.
const UNUSED_FOR: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How long a writer's temporary file may be left before it is taken for a crashed
/// writer's.
const TEMPORARY_FOR: Duration = Duration::from_secs(60 * 60);

/// How often a used file's modification time is brought up to date.
const MARK_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// What the cache is called in refusals.
const WHAT: &str = "the startup snapshot cache";

/// The largest cache file read: a blob is well under a megabyte; anything this large is
/// not one of ours.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The header: magic, key, length (u64, little-endian), the blob's CRC-32 (u32,
/// little-endian), then zeros up to a 64-byte boundary.
const HEADER_LEN: usize = 64;

/// Where the header's fields end and its padding starts.
const FIELDS_LEN: usize = 8 + 32 + 8 + 4;

/// What a blob depends on, hashed: the name of its cache file.
pub(crate) type Key = [u8; 32];

/// The key of blobs made by this executable with this V8 and these flags.
pub(crate) fn key(v8_version: &str, flags: &str) -> std::io::Result<Key> {
    let exe = std::env::current_exe()?;
    let metadata = std::fs::metadata(&exe)?;
    Ok(key_of(v8_version, flags, &build_id(), &metadata))
}

/// The key of blobs made with this V8 and these flags by the build whose id is `build`
/// and whose executable's file is `executable`.
fn key_of(v8_version: &str, flags: &str, build: &[u8], executable: &std::fs::Metadata) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    for part in [v8_version, flags] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    // The build itself: two builds copied over one another with their times kept (`cp
    // -p`) share a path, a size and a time, never a build id.
    hasher.update((build.len() as u64).to_le_bytes());
    hasher.update(build);
    for number in [
        executable.dev(),
        executable.ino(),
        executable.size(),
        executable.mtime() as u64,
        executable.mtime_nsec() as u64,
    ] {
        hasher.update(number.to_le_bytes());
    }
    hasher.finalize().into()
}

/// The GNU build id of this executable (`NT_GNU_BUILD_ID`, which the linker derives from
/// the whole output), read from its loaded note segments; empty if it has none.
fn build_id() -> Vec<u8> {
    /// The note type of a build id, and its owner's name.
    const NT_GNU_BUILD_ID: u32 = 3;
    const GNU: &[u8] = b"GNU\0";

    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        found: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands a valid `info` for the duration of the call; `found` is
        // the `Vec` `build_id` passed in, borrowed mutably for the whole iteration.
        let (info, found) = unsafe { (&*info, &mut *found.cast::<Vec<u8>>()) };
        // The first object is the executable itself; stop after it either way.
        let headers = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers of the object.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        for header in headers
            .iter()
            .filter(|header| header.p_type == libc::PT_NOTE)
        {
            let start = info.dlpi_addr as usize + header.p_vaddr as usize;
            // SAFETY: a PT_NOTE segment is loaded, readable, `p_memsz` bytes at its address.
            let notes =
                unsafe { std::slice::from_raw_parts(start as *const u8, header.p_memsz as usize) };
            if let Some(id) = find_build_id(notes) {
                found.extend_from_slice(id);
                break;
            }
        }
        1
    }

    /// The build id's descriptor in a note segment's bytes.
    fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
        let word = |bytes: &[u8], at: usize| -> Option<usize> {
            let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_ne_bytes(word) as usize)
        };
        let aligned = |length: usize| length.div_ceil(4) * 4;
        while notes.len() >= 12 {
            let (name_size, desc_size, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
            let name = notes.get(12..12 + name_size)?;
            let desc_at = 12 + aligned(name_size);
            let desc = notes.get(desc_at..desc_at + desc_size)?;
            if kind == NT_GNU_BUILD_ID as usize && name == GNU {
                return Some(desc);
            }
            notes = notes.get(desc_at + aligned(desc_size)..)?;
        }
        None
    }

    let mut found = Vec::new();
    // SAFETY: `each` only reads what the loader hands it and writes to `found`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut found).cast()) };
    found
}

/// The cache file of `key` in `dir`.
pub(crate) fn path(dir: &Path, key: &Key) -> PathBuf {
    let name: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
    dir.join(format!("{name}.snapshot"))
}

/// Why a cache file was not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejected {
    #[error("shorter than its header")]
    Truncated,
    #[error("not a code-mode snapshot file")]
    Magic,
    #[error("made by another build")]
    Foreign,
    #[error("its length does not match its header")]
    Length,
    #[error("its checksum does not match: the file is corrupt")]
    Checksum,
}

/// A cache file's bytes for `blob`.
pub(crate) fn encode(key: &Key, blob: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(HEADER_LEN + blob.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(key);
    file.extend_from_slice(&(blob.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(blob).to_le_bytes());
    file.resize(HEADER_LEN, 0);
    file.extend_from_slice(blob);
    file
}

/// The blob in a cache file's bytes, if they are whole, of `key`, and unchanged.
pub(crate) fn decode<'a>(key: &Key, file: &'a [u8]) -> Result<&'a [u8], Rejected> {
    if file.len() < HEADER_LEN {
        return Err(Rejected::Truncated);
    }
    if &file[..8] != MAGIC {
        return Err(Rejected::Magic);
    }
    if &file[8..40] != key {
        return Err(Rejected::Foreign);
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&file[40..48]);
    if u64::from_le_bytes(length) != (file.len() - HEADER_LEN) as u64 {
        return Err(Rejected::Length);
    }
    if crc32fast::hash(&file[HEADER_LEN..]).to_le_bytes() != file[48..FIELDS_LEN] {
        return Err(Rejected::Checksum);
    }
    Ok(&file[HEADER_LEN..])
}

/// A blob read from the cache: the part of its mapped file after the header.
#[derive(Debug)]
pub(crate) struct CachedBlob(code_mode_files::Mapped);

impl CachedBlob {
    /// The blob, for the rest of the process (V8 reads it at every isolate's start).
    pub(crate) fn into_static(self) -> &'static [u8] {
        &self.0.into_static()[HEADER_LEN..]
    }
}

impl std::ops::Deref for CachedBlob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0[HEADER_LEN..]
    }
}

/// Reads the blob of `key` from `dir`; `None` (logged) when there is none to trust: the
/// directory and the file must be this user's alone (`code_mode_files`: no link followed,
/// no FIFO waited on, nothing over [`MAX_FILE_BYTES`] mapped).
pub(crate) fn read(dir: &Path, key: &Key) -> Option<CachedBlob> {
    let path = path(dir, key);
    let file = code_mode_files::private_dir(WHAT, dir)
        .and_then(|()| code_mode_files::map_private(WHAT, &path, MAX_FILE_BYTES));
    let file = match file {
        Ok(file) => file,
        Err(error) if error.io_kind() == Some(std::io::ErrorKind::NotFound) => return None,
        Err(error) => {
            tracing::warn!(%error, "startup snapshot cache not used; making the snapshot");
            return None;
        }
    };
    match decode(key, &file) {
        Ok(_) => {
            mark_used(&path);
            Some(CachedBlob(file))
        }
        Err(rejected) => {
            tracing::warn!(path = %path.display(), %rejected, "startup snapshot cache ignored; making the snapshot again");
            None
        }
    }
}

/// Writes the blob of `key` to `dir`, whole or not at all.
pub(crate) fn write(dir: &Path, key: &Key, blob: &[u8]) -> std::io::Result<()> {
    code_mode_files::private_dir(WHAT, dir).map_err(std::io::Error::other)?;
    let path = path(dir, key);
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    ));
    let written = (|| {
        let mut file =
            code_mode_files::create_new_private(WHAT, &temporary).map_err(std::io::Error::other)?;
        file.write_all(&encode(key, blob))?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    prune(dir, &path);
    written
}

/// How long ago `path` was last modified, if it can be told.
fn age(path: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// Brings the modification time of a file just read up to date, when it is older than
/// [`MARK_EVERY`]: it is in use, and [`prune`] keeps it.
fn mark_used(path: &Path) {
    if age(path).is_some_and(|age| age > MARK_EVERY) {
        let marked = code_mode_files::private_file(WHAT, path)
            .map_err(std::io::Error::other)
            .and_then(|file| file.set_modified(SystemTime::now()));
        if let Err(error) = marked {
            tracing::debug!(path = %path.display(), %error, "cannot mark the snapshot cache file used");
        }
    }
}

/// Removes from `dir` the cache files no start has used for [`UNUSED_FOR`], and writers'
/// temporaries older than [`TEMPORARY_FOR`], except `keep`. Names this module does not
/// make are left alone.
fn prune(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let patience = if is_cache_name(name) {
            UNUSED_FOR
        } else if is_temporary_name(name) {
            TEMPORARY_FOR
        } else {
            continue;
        };
        if path != keep && age(&path).is_some_and(|age| age > patience) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "an unused startup snapshot cache file removed")
                }
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "cannot remove an unused snapshot cache file")
                }
            }
        }
    }
}

/// `<64 hex digits>.snapshot`, as [`path`] names a cache file.
fn is_cache_name(name: &str) -> bool {
    name.strip_suffix(".snapshot").is_some_and(|stem| {
        stem.len() == 64
            && stem
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// `.<pid>.<nanoseconds>.tmp`, as [`write()`] names its temporary file.
fn is_temporary_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(pid, nanos)| {
            [pid, nanos]
                .iter()
                .all(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = [7; 32];

    #[test]
    fn a_file_reads_back_only_whole_unchanged_and_of_its_key() {
        let blob = b"a startup blob".to_vec();
        let file = encode(&KEY, &blob);
        assert_eq!(decode(&KEY, &file), Ok(&blob[..]));
        assert_eq!(decode(&[8; 32], &file), Err(Rejected::Foreign));
        assert_eq!(
            decode(&KEY, &file[..HEADER_LEN - 1]),
            Err(Rejected::Truncated)
        );
        assert_eq!(decode(&KEY, &file[..file.len() - 1]), Err(Rejected::Length));
        let mut corrupt = file.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&KEY, &corrupt), Err(Rejected::Checksum));
        let mut other = file;
        other[0] = b'X';
        assert_eq!(decode(&KEY, &other), Err(Rejected::Magic));
    }

    #[test]
    fn a_written_file_replaces_the_old_one_whole_and_leaves_no_temporary() {
        let dir =
            std::env::temp_dir().join(format!("code-mode-snapshot-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, &KEY, b"first").expect("write");
        write(&dir, &KEY, b"second").expect("write again");
        let read_back = read(&dir, &KEY).expect("the file written");
        assert_eq!(&*read_back, b"second");
        // V8 gets the blob where the mapping has it: as aligned as an allocation would be.
        assert_eq!(read_back.as_ptr() as usize % 16, 0);
        // Unmapped before the file is overwritten in place below, as no writer here does.
        drop(read_back);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::write(path(&dir, &KEY), b"garbage").unwrap();
        assert!(read(&dir, &KEY).is_none(), "a corrupt file is not trusted");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_files_of_this_user_in_a_private_directory_are_read() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir =
            std::env::temp_dir().join(format!("code-mode-snapshot-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, &KEY, b"blob").expect("write");
        let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path(&dir, &KEY)), 0o600);
        assert_eq!(read(&dir, &KEY).as_deref(), Some(&b"blob"[..]));
        // A directory others may write: nothing in it is trusted, nothing is written.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(read(&dir, &KEY).is_none());
        assert!(write(&dir, &KEY, b"other").is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A link planted under the name (to a file of the right bytes, even) is not
        // followed; nor is a FIFO waited on.
        let elsewhere = dir.with_extension("elsewhere");
        std::fs::write(&elsewhere, encode(&KEY, b"planted")).unwrap();
        std::fs::remove_file(path(&dir, &KEY)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, path(&dir, &KEY)).unwrap();
        assert!(read(&dir, &KEY).is_none());
        std::fs::remove_file(path(&dir, &KEY)).unwrap();
        let name =
            std::ffi::CString::new(path(&dir, &KEY).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(read(&dir, &KEY).is_none());
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&elsewhere);
    }

    /// The key is this build's id's: the id is the one in the executable, `key` hashes it,
    /// and another id with all else the same (a build copied over this one with its path,
    /// size and times kept) gives another key.
    #[test]
    fn the_key_holds_this_builds_id_and_changes_with_it() {
        let id = build_id();
        assert_eq!(id.len(), 20, "a 160-bit GNU build id: {id:?}");
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        assert!(
            bytes
                .windows(id.len())
                .any(|window| window == id.as_slice()),
            "the id read from memory is the one in the executable's file"
        );
        let metadata = std::fs::metadata(&exe).unwrap();
        let (version, flags) = ("13.0.245.12", "--no-lazy-feedback-allocation");
        let this = key(version, flags).unwrap();
        assert_eq!(this, key_of(version, flags, &id, &metadata));
        let mut other = id.clone();
        other[19] ^= 1;
        assert_ne!(key_of(version, flags, &other, &metadata), this);
        assert_ne!(key_of(version, flags, &[], &metadata), this);
    }

    /// Sets `path`'s modification time `days` back.
    fn backdate(path: &Path, days: u64) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(days * 24 * 60 * 60))
            .unwrap();
    }

    #[test]
    fn a_write_removes_only_cache_files_no_start_used_for_a_month() {
        let dir =
            std::env::temp_dir().join(format!("code-mode-snapshot-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (old, used, recent, new) = ([1; 32], [2; 32], [3; 32], [4; 32]);
        for key in [&old, &used, &recent] {
            write(&dir, key, b"blob").expect("write");
        }
        backdate(&path(&dir, &old), 40);
        backdate(&path(&dir, &used), 40);
        // Read at a start: in use again.
        assert!(read(&dir, &used).is_some());
        // A crashed writer's leftover, and files that are not the cache's, however old.
        let leftover = dir.join(".123.456.tmp");
        let strangers = [dir.join("notes.snapshot"), dir.join("keep.txt")];
        for file in strangers.iter().chain([&leftover]) {
            std::fs::write(file, b"x").unwrap();
            backdate(file, 400);
        }
        write(&dir, &new, b"blob").expect("write");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> = [&new, &recent, &used]
            .iter()
            .map(|key| {
                path(&dir, key)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .chain(["keep.txt".to_owned(), "notes.snapshot".to_owned()])
            .collect();
        expected.sort();
        assert_eq!(names, expected);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
