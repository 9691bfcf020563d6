//! Recovery: rebuilds the in-memory segment index from the segment files of a WAL directory.
//!
//! Guarantees:
//! - Every segment but the last must be complete: a valid header matching its file name,
//!   only valid frames, consecutive indexes continuing the previous segment, at least one
//!   record. Anything else is [`WalError::Corruption`].
//! - In the last segment, an invalid frame is a *torn tail* (a write cut short by a crash)
//!   only if no valid frame that could belong to the log follows it anywhere in the file
//!   (see [`find_later_valid_record`]); a valid frame with a wrong index (or index
//!   `u64::MAX`) is never a tear.
//!   A torn tail is cut off (file truncated + fsynced); anything else is corruption and
//!   nothing is modified.
//! - Every recovered segment, the last one included, is sealed (and fsynced): appends after
//!   a restart go to a new segment file, so sealed segments stay immutable across restarts.
//! - A last segment left with no records (crash while creating it, or its only records were
//!   torn) is removed, and the directory fsynced.
//! - If the recovered last index is below the caller's `durable_index_min` (or the WAL is empty
//!   while one is given), recovery fails with corruption before modifying anything.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::atomic_file::sync_dir;
use crate::error::{CorruptionReason, WalError};
use crate::format::{SEGMENT_HEADER_BYTES, decode_segment_header, parse_segment_file_name};
use crate::segment::{ScanStop, Segment, find_later_valid_record, scan_records};

/// What [`Wal::open`](crate::Wal::open) found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Records stored after recovery.
    pub records: u64,
    /// Lowest stored index after recovery.
    pub first_index: Option<u64>,
    /// Highest stored index after recovery.
    pub last_index: Option<u64>,
    /// Bytes discarded from the end of the log: the torn tail cut from the last segment, plus
    /// the whole size of a removed last segment.
    pub torn_tail_bytes_dropped: u64,
    /// Last segment files removed because they held no complete record (torn header, or only
    /// torn records).
    pub removed_segment_files: Vec<PathBuf>,
}

/// Recovers the segments of `dir` (which must exist). Every returned segment is sealed and
/// fsynced: the next append starts a new segment file, so a segment that was sealed (and
/// perhaps uploaded by tiering) before a restart never grows after it.
pub(crate) fn recover(dir: &Path, durable_index_min: Option<u64>) -> Result<(Vec<Segment>, RecoveryReport), WalError> {
    let files = list_segment_files(dir)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(files.len());
    let mut report = RecoveryReport::default();
    // Planned modifications, applied only after every check passed.
    let mut tail_cut: Option<u64> = None;
    let mut removals: Vec<PathBuf> = Vec::new();

    for (position, (name_first_index, path)) in files.iter().enumerate() {
        let is_last = position + 1 == files.len();
        let corruption = |offset: usize, reason: CorruptionReason| WalError::Corruption {
            segment: path.clone(),
            offset: offset as u64,
            reason,
        };
        let mut file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|err| WalError::io("open", path, err))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|err| WalError::io("read", path, err))?;

        let first_index = match decode_segment_header(&bytes) {
            Ok(first_index) => first_index,
            // Crash while creating the newest segment: its header (written and fsynced before
            // any record) never became durable, so it holds nothing.
            Err(_) if is_last && bytes.len() <= SEGMENT_HEADER_BYTES => {
                report.torn_tail_bytes_dropped += bytes.len() as u64;
                removals.push(path.clone());
                continue;
            }
            Err(err) => return Err(corruption(0, CorruptionReason::SegmentHeader(err))),
        };
        if first_index != *name_first_index {
            return Err(corruption(
                0,
                CorruptionReason::SegmentNameMismatch {
                    name_first_index: *name_first_index,
                    header_first_index: first_index,
                },
            ));
        }
        if let Some(expected) = segments.last().and_then(Segment::last_index).map(|last| last.wrapping_add(1))
            && first_index != expected
        {
            return Err(corruption(
                0,
                CorruptionReason::GapBetweenSegments { expected_first_index: expected, found_first_index: first_index },
            ));
        }

        let scan = scan_records(&bytes, SEGMENT_HEADER_BYTES, first_index);
        match scan.stop {
            None => {}
            Some(stop) if !is_last => return Err(corruption(scan.end_offset, stop.into())),
            Some(stop @ (ScanStop::UnexpectedIndex { .. } | ScanStop::IndexOutOfRange)) => {
                return Err(corruption(scan.end_offset, stop.into()));
            }
            Some(ScanStop::Frame(invalid)) => {
                let next_expected = first_index.wrapping_add(scan.records.len() as u64);
                if let Some((later_offset, later_index)) =
                    find_later_valid_record(&bytes, scan.end_offset, next_expected)
                {
                    return Err(corruption(
                        scan.end_offset,
                        CorruptionReason::ValidRecordAfterInvalid {
                            invalid,
                            later_offset: later_offset as u64,
                            later_index,
                        },
                    ));
                }
                report.torn_tail_bytes_dropped += (bytes.len() - scan.end_offset) as u64;
                if !scan.records.is_empty() {
                    tail_cut = Some(scan.end_offset as u64);
                }
            }
        }
        if scan.records.is_empty() {
            if !is_last {
                return Err(corruption(SEGMENT_HEADER_BYTES, CorruptionReason::EmptySealedSegment));
            }
            if scan.stop.is_none() {
                // Header only: nothing was torn, but the file is dropped all the same.
                report.torn_tail_bytes_dropped += bytes.len() as u64;
            } else {
                report.torn_tail_bytes_dropped += SEGMENT_HEADER_BYTES as u64;
            }
            removals.push(path.clone());
            continue;
        }
        segments.push(Segment {
            first_index,
            path: path.clone(),
            file: Arc::new(file),
            size_bytes: scan.end_offset as u64,
            records: scan.records,
            sealed: true,
        });
    }

    let last_index = segments.last().and_then(Segment::last_index);
    if let Some(durable_index_min) = durable_index_min
        && last_index.is_none_or(|last| last < durable_index_min)
    {
        let (segment, offset) = match segments.last() {
            Some(last) => (last.path.clone(), last.size_bytes),
            None => (dir.to_path_buf(), 0),
        };
        return Err(WalError::Corruption {
            segment,
            offset,
            reason: CorruptionReason::BelowDurableIndex { recovered_last_index: last_index, durable_index_min },
        });
    }

    // All checks passed: apply the planned repairs.
    if let Some(last) = segments.last() {
        if let Some(cut_at) = tail_cut {
            last.file.set_len(cut_at).map_err(|err| WalError::io("truncate", &last.path, err))?;
        }
        // The last segment is sealed like the others, so it must be as durable: its newest
        // records may have been read back from the page cache, never synced before the crash.
        last.file.sync_all().map_err(|err| WalError::io("fsync", &last.path, err))?;
    }
    for path in &removals {
        fs::remove_file(path).map_err(|err| WalError::io("remove", path, err))?;
    }
    if !removals.is_empty() {
        sync_dir(dir).map_err(|err| WalError::io("fsync", dir, err))?;
    }

    report.segments = segments.len();
    report.records = segments.iter().map(|s| s.records.len() as u64).sum();
    report.first_index = segments.first().map(|s| s.first_index);
    report.last_index = last_index;
    report.removed_segment_files = removals;
    if report.torn_tail_bytes_dropped > 0 || !report.removed_segment_files.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            torn_tail_bytes_dropped = report.torn_tail_bytes_dropped,
            removed_segment_files = report.removed_segment_files.len(),
            "WAL recovery dropped a torn tail"
        );
    }
    Ok((segments, report))
}

/// Segment files of `dir` as `(first_index from the name, path)`, sorted by index. Other
/// files are ignored.
fn list_segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let read_dir_err = |err: io::Error| WalError::io("read_dir", dir, err);
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_err)? {
        let entry = entry.map_err(read_dir_err)?;
        let Some(first_index) = entry.file_name().to_str().and_then(parse_segment_file_name) else {
            continue;
        };
        files.push((first_index, entry.path()));
    }
    files.sort_unstable_by_key(|(first_index, _)| *first_index);
    Ok(files)
}
