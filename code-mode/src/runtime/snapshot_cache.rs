//! The startup snapshot kept on disk between runtime processes of one executable, so that a
//! process does not make it again at every start ([`super::snapshot`] makes it otherwise).
//!
//! A file is `<dir>/<key>.snapshot`: a magic, the key, the blob's length and its SHA-256,
//! then the blob. The key is the SHA-256 of what a blob depends on: the format, V8's
//! version and flags, and the identity of the executable that made it (device, inode,
//! size, modification time), so that another build, or the same path rebuilt, never reads
//! it. A file that is truncated, corrupt, foreign or unreadable is ignored (V8 is never
//! given bytes that were not checked) and the blob is made and written again. A file is
//! written whole under a name of its own, then renamed into place: two processes starting
//! at once each write theirs, and either one wins, whole.
//!
//! Everything here happens before the runtime's sandbox forbids file access:
//! [`load_or_make`] is called once, at start.

use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The first bytes of a cache file.
const MAGIC: &[u8; 8] = b"CMSNAP01";

/// The header: magic, key, length (u64, little-endian), the blob's SHA-256.
const HEADER_LEN: usize = 8 + 32 + 8 + 32;

/// What a blob depends on, hashed: the name of its cache file.
pub(crate) type Key = [u8; 32];

/// The key of blobs made by this executable with this V8 and these flags.
pub(crate) fn key(v8_version: &str, flags: &str) -> std::io::Result<Key> {
    let exe = std::env::current_exe()?;
    let metadata = std::fs::metadata(&exe)?;
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    for part in [v8_version, flags] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    for number in [
        metadata.dev(),
        metadata.ino(),
        metadata.size(),
        metadata.mtime() as u64,
        metadata.mtime_nsec() as u64,
    ] {
        hasher.update(number.to_le_bytes());
    }
    Ok(hasher.finalize().into())
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
    file.extend_from_slice(&Sha256::digest(blob));
    file.extend_from_slice(blob);
    file
}

/// The blob in a cache file's bytes, if they are whole, of `key`, and unchanged.
pub(crate) fn decode(key: &Key, mut file: Vec<u8>) -> Result<Vec<u8>, Rejected> {
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
    if Sha256::digest(&file[HEADER_LEN..]).as_slice() != &file[48..80] {
        return Err(Rejected::Checksum);
    }
    // The blob moves to the front of the buffer it was read into: no second copy.
    file.drain(..HEADER_LEN);
    Ok(file)
}

/// Reads the blob of `key` from `dir`; `None` (logged) when there is none to trust.
pub(crate) fn read(dir: &Path, key: &Key) -> Option<Vec<u8>> {
    let path = path(dir, key);
    let file = match std::fs::read(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the startup snapshot cache; making the snapshot");
            return None;
        }
    };
    match decode(key, file) {
        Ok(blob) => Some(blob),
        Err(rejected) => {
            tracing::warn!(path = %path.display(), %rejected, "startup snapshot cache ignored; making the snapshot again");
            None
        }
    }
}

/// Writes the blob of `key` to `dir`, whole or not at all.
pub(crate) fn write(dir: &Path, key: &Key, blob: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = path(dir, key);
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&encode(key, blob))?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = [7; 32];

    #[test]
    fn a_file_reads_back_only_whole_unchanged_and_of_its_key() {
        let blob = b"a startup blob".to_vec();
        let file = encode(&KEY, &blob);
        assert_eq!(decode(&KEY, file.clone()), Ok(blob.clone()));
        assert_eq!(decode(&[8; 32], file.clone()), Err(Rejected::Foreign));
        assert_eq!(
            decode(&KEY, file[..HEADER_LEN - 1].to_vec()),
            Err(Rejected::Truncated)
        );
        assert_eq!(
            decode(&KEY, file[..file.len() - 1].to_vec()),
            Err(Rejected::Length)
        );
        let mut corrupt = file.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&KEY, corrupt), Err(Rejected::Checksum));
        let mut other = file;
        other[0] = b'X';
        assert_eq!(decode(&KEY, other), Err(Rejected::Magic));
    }

    #[test]
    fn a_written_file_replaces_the_old_one_whole_and_leaves_no_temporary() {
        let dir =
            std::env::temp_dir().join(format!("code-mode-snapshot-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, &KEY, b"first").expect("write");
        write(&dir, &KEY, b"second").expect("write again");
        assert_eq!(read(&dir, &KEY).as_deref(), Some(&b"second"[..]));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::write(path(&dir, &KEY), b"garbage").unwrap();
        assert_eq!(read(&dir, &KEY), None, "a corrupt file is not trusted");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
