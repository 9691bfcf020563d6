//! Atomically replaced small files (Raft vote, committed index, ...).
//!
//! [`write_file_atomic`] guarantees that after a crash the file holds either the old or the
//! new contents, never a mix, and that the new contents are durable when it returns.
//! [`write_file_checked`] / [`read_file_checked`] add a version byte, a length and a crc32c
//! (layout in [`crate::format`]) so that a file damaged anyway (torn by a file system that does
//! not honour rename ordering, bit rot, a foreign file) is detected instead of misread.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::format::{
    CHECKED_FILE_BODY_BYTES_MAX, LEGACY_FRAME_VERSION, LEGACY_PAYLOAD_VERSION, decode_checked_file, encode_checked_file,
};

/// Suffix of the temporary file written next to the target before the rename.
const TMP_SUFFIX: &str = ".tmp";

/// A synced file is written and synced this much at a time.
const SYNC_CHUNK_BYTES: usize = 4 << 20;

/// Replaces `path` with `bytes` atomically and durably: writes `{path}.tmp`, fsyncs it,
/// renames it over `path` and fsyncs the parent directory.
///
/// Errors: any I/O error of those steps; `path` then still holds its previous contents (or a
/// complete new one if only the final directory fsync failed). Blocks the calling thread for
/// two fsyncs, and one more per 4 MiB of `bytes` beyond the first.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, true)
}

/// Writes `body` framed with a version byte, its length and a crc32c (so that
/// [`read_file_checked`] detects a torn or damaged file), replacing `path` by rename.
///
/// - `sync == true`: as [`write_file_atomic`]: after a crash `path` holds the old or the new
///   contents, and the new contents are durable when this returns.
/// - `sync == false`: no fsync (for hints that may be lost, e.g. a committed index): after a
///   crash `path` may hold the old contents, the new ones, or a torn file, which
///   [`read_file_checked`] reports as [`WalError::CorruptMetadataFile`].
///
/// Errors: `InvalidInput` if `body` exceeds
/// [`CHECKED_FILE_BODY_BYTES_MAX`](crate::format::CHECKED_FILE_BODY_BYTES_MAX); otherwise the
/// I/O error of the failed step.
pub fn write_file_checked(path: &Path, body: &[u8], sync: bool) -> io::Result<()> {
    if body.len() > CHECKED_FILE_BODY_BYTES_MAX {
        return Err(WalError::MetadataTooLarge {
            len_bytes: body.len() as u64,
            max_bytes: CHECKED_FILE_BODY_BYTES_MAX as u64,
        }
        .into());
    }
    replace_file(path, &encode_checked_file(body), sync)
}

/// Writes `{path}.tmp`, renames it over `path`; with `sync`, fsyncs the file before the rename
/// and the directory after it.
fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("not a file path: {}", path.display())))?;
    let mut tmp_name = OsString::from(file_name);
    tmp_name.push(TMP_SUFFIX);
    let tmp_path = path.with_file_name(tmp_name);
    {
        let mut tmp = crate::private_fs::file_options().write(true).create(true).truncate(true).open(&tmp_path)?;
        if sync {
            // Synced as it is written, a chunk at a time: the disk then never holds more than a
            // chunk of this file's write-back ahead of a WAL's group commit (a snapshot is tens
            // of MB, and one fsync at the end made the log's fsyncs wait for all of it).
            let chunks = bytes.len().div_ceil(SYNC_CHUNK_BYTES);
            for (n, chunk) in bytes.chunks(SYNC_CHUNK_BYTES).enumerate() {
                tmp.write_all(chunk)?;
                // The last chunk is synced with the file's metadata below.
                if n + 1 < chunks {
                    tmp.sync_data()?;
                }
            }
            tmp.sync_all()?;
        } else {
            tmp.write_all(bytes)?;
        }
    }
    fs::rename(&tmp_path, path)?;
    if sync {
        sync_dir(parent_dir(path))?;
    }
    Ok(())
}

/// Reads a file written by [`write_file_checked`] and returns its body, or `None` if the
/// file does not exist. The body of a file written before bodies carried their own format
/// version comes with [`LEGACY_PAYLOAD_VERSION`](crate::format::LEGACY_PAYLOAD_VERSION) in front
/// (see the payload versions in [`crate::format`]).
///
/// Errors: [`WalError::CorruptMetadataFile`] if the file is torn, damaged or not such a file;
/// [`WalError::Io`] on read errors.
pub fn read_file_checked(path: &Path) -> Result<Option<Vec<u8>>, WalError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(WalError::io("read", path, err)),
    };
    match decode_checked_file(&bytes) {
        Ok((LEGACY_FRAME_VERSION, body)) => Ok(Some([&[LEGACY_PAYLOAD_VERSION], body].concat())),
        Ok((_, body)) => Ok(Some(body.to_vec())),
        Err(reason) => Err(WalError::CorruptMetadataFile { path: path.to_path_buf(), reason }),
    }
}

/// The directory containing `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(crate) use strata_fs::sync_dir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_round_trip_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert_eq!(read_file_checked(&path).unwrap(), None);
        write_file_checked(&path, b"first", true).unwrap();
        assert_eq!(read_file_checked(&path).unwrap().unwrap(), b"first");
        write_file_checked(&path, b"second, longer", false).unwrap();
        assert_eq!(read_file_checked(&path).unwrap().unwrap(), b"second, longer");
        assert!(!dir.path().join("vote.tmp").exists());
    }

    #[test]
    fn torn_checked_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("committed");
        write_file_checked(&path, &42u64.to_le_bytes(), true).unwrap();
        let full = fs::read(&path).unwrap();
        for len in 0..full.len() {
            fs::write(&path, &full[..len]).unwrap();
            let err = read_file_checked(&path).unwrap_err();
            assert!(matches!(err, WalError::CorruptMetadataFile { .. }), "len {len}: {err}");
        }
        let mut flipped = full.clone();
        flipped[6] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(matches!(read_file_checked(&path), Err(WalError::CorruptMetadataFile { .. })));
    }

    #[test]
    fn oversized_body_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let err = write_file_checked(&path, &vec![0; CHECKED_FILE_BODY_BYTES_MAX + 1], true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!path.exists());
    }
}
