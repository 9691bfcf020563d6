//! Segments: the in-memory description of one segment file, and pure scanning of segment
//! bytes (used by recovery, and exported for the tiering code that indexes uploaded segments).
//!
//! Guarantees of the scanning functions: a returned record location always points at a frame
//! whose version, flags, length bound and crc32c were validated and whose index is the next
//! consecutive one; nothing is ever returned past the first invalid byte.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{CorruptionReason, WalError};
use crate::format::{
    FrameError, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, decode_record, decode_segment_header,
    is_readable_frame_version, versioned_payload,
};

/// Where one record's whole frame (header + payload) lies within a segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    /// The record's log index.
    pub index: u64,
    /// Byte offset of the frame from the start of the segment file (header included).
    pub offset: u64,
    /// Frame size in bytes.
    pub len: u64,
}

/// Public description of a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Index of the first record (also encoded in the file name).
    pub first_index: u64,
    /// Index of the last record.
    pub last_index: u64,
    /// Path of the segment file.
    pub path: PathBuf,
    /// File size in bytes (header + frames).
    pub size_bytes: u64,
}

/// Position of one record frame within its segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordPos {
    /// Offset of the frame from the start of the file.
    pub(crate) offset: u64,
    /// Frame size in bytes (at most `RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX`).
    pub(crate) len: u32,
}

/// One segment file known to the WAL.
///
/// Invariants (maintained by the WAL): `records` is non-empty; `records[i]` has index
/// `first_index + i`; frames are back to back from `SEGMENT_HEADER_BYTES` to `size_bytes`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first_index: u64,
    pub(crate) path: PathBuf,
    /// Opened read + write; shared so reads and the sync thread can use it without the state
    /// lock.
    pub(crate) file: Arc<File>,
    pub(crate) size_bytes: u64,
    pub(crate) records: Vec<RecordPos>,
    /// Sealed segments are immutable (except by `truncate_from`, which unseals).
    pub(crate) sealed: bool,
}

impl Segment {
    /// Index of the last record; `None` only transiently while the first batch of a new
    /// segment is being written.
    pub(crate) fn last_index(&self) -> Option<u64> {
        let count = self.records.len() as u64;
        count.checked_sub(1).map(|last| self.first_index + last)
    }

    pub(crate) fn info(&self) -> Option<SegmentInfo> {
        Some(SegmentInfo {
            first_index: self.first_index,
            last_index: self.last_index()?,
            path: self.path.clone(),
            size_bytes: self.size_bytes,
        })
    }
}

/// Why a scan stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// The bytes at the stop offset are not a valid frame.
    Frame(FrameError),
    /// A valid frame with the wrong index.
    UnexpectedIndex { expected: u64, found: u64 },
    /// A valid frame with index `u64::MAX`, which appends never store (it has no successor).
    IndexOutOfRange,
}

impl From<ScanStop> for CorruptionReason {
    fn from(stop: ScanStop) -> Self {
        match stop {
            ScanStop::Frame(err) => CorruptionReason::Record(err),
            ScanStop::UnexpectedIndex { expected, found } => CorruptionReason::UnexpectedIndex { expected, found },
            ScanStop::IndexOutOfRange => CorruptionReason::IndexOutOfRange,
        }
    }
}

/// Result of scanning the record frames of a segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Valid, consecutive records from the start offset.
    pub(crate) records: Vec<RecordPos>,
    /// Offset just past the last valid record.
    pub(crate) end_offset: usize,
    /// Why the scan stopped at `end_offset`, if it did not reach the end of the bytes.
    pub(crate) stop: Option<ScanStop>,
}

/// Scans frames from `start_offset`, expecting indexes `first_index, first_index + 1, ...`,
/// and stops at the first invalid frame, unexpected index, or index `u64::MAX`.
pub(crate) fn scan_records(bytes: &[u8], start_offset: usize, first_index: u64) -> Scan {
    let mut records = Vec::new();
    let mut offset = start_offset;
    let mut expected = first_index;
    while offset < bytes.len() {
        let frame = match decode_record(&bytes[offset..]) {
            Ok(frame) => frame,
            Err(err) => {
                return Scan { records, end_offset: offset, stop: Some(ScanStop::Frame(err)) };
            }
        };
        let stop = if frame.index != expected {
            Some(ScanStop::UnexpectedIndex { expected, found: frame.index })
        } else if frame.index == u64::MAX {
            Some(ScanStop::IndexOutOfRange)
        } else {
            None
        };
        if stop.is_some() {
            return Scan { records, end_offset: offset, stop };
        }
        records.push(RecordPos {
            offset: offset as u64,
            // frame_len <= RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX, validated by decode.
            len: u32::try_from(frame.frame_len).unwrap_or(u32::MAX),
        });
        offset += frame.frame_len;
        // No overflow: u64::MAX was rejected above.
        expected += 1;
    }
    Scan { records, end_offset: offset, stop: None }
}

/// Looks for a valid record frame after the invalid one at `invalid_offset` whose index could
/// belong to the log after the last good record, i.e. proves that the damage at
/// `invalid_offset` is not a torn tail. Returns `(offset, index)` of the first such frame.
///
/// A frame at offset `q` counts only if its index is `>= next_expected` and at most
/// `next_expected + (q - invalid_offset) / RECORD_HEADER_BYTES`: a genuine later record cannot
/// be further ahead than the number of (at least header-sized) frames that fit in between.
/// This bound never excludes a genuine record, but excludes most frames that merely appear
/// inside an opaque payload (payloads may contain arbitrary bytes, including encoded frames).
pub(crate) fn find_later_valid_record(bytes: &[u8], invalid_offset: usize, next_expected: u64) -> Option<(usize, u64)> {
    let last_candidate = bytes.len().checked_sub(RECORD_HEADER_BYTES)?;
    let first_candidate = invalid_offset + 1;
    (first_candidate..=last_candidate).find_map(|offset| {
        // Cheap pre-filter; decode_record checks everything again.
        if !is_readable_frame_version(bytes[offset]) {
            return None;
        }
        let frame = decode_record(&bytes[offset..]).ok()?;
        let frames_between = ((offset - invalid_offset) / RECORD_HEADER_BYTES) as u64;
        let plausible = frame.index >= next_expected && frame.index - next_expected <= frames_between;
        plausible.then_some((offset, frame.index))
    })
}

/// Validates the bytes of a complete sealed segment (header and every frame, crc included;
/// indexes consecutive from the header's first index; no trailing bytes) and returns the
/// location of every record frame, in order. Offsets are relative to the start of `bytes`
/// (the start of the segment file).
///
/// Errors: [`WalError::InvalidBytes`] at the first problem.
pub fn scan_segment_bytes(bytes: &[u8]) -> Result<Vec<RecordLocation>, WalError> {
    let first_index = decode_segment_header(bytes)
        .map_err(|err| WalError::InvalidBytes { offset: 0, reason: CorruptionReason::SegmentHeader(err) })?;
    let scan = scan_records(bytes, SEGMENT_HEADER_BYTES, first_index);
    if let Some(stop) = scan.stop {
        return Err(WalError::InvalidBytes { offset: scan.end_offset as u64, reason: stop.into() });
    }
    Ok(scan
        .records
        .iter()
        .enumerate()
        .map(|(position, pos)| RecordLocation {
            // Cannot wrap: scan_records accepts no index u64::MAX.
            index: first_index + position as u64,
            offset: pos.offset,
            len: u64::from(pos.len),
        })
        .collect())
}

/// Decodes exactly one record frame (e.g. the bytes of a ranged read of a
/// [`RecordLocation`]) and returns `(index, payload)`; the payload starts with its format version
/// (see the payload versions in [`crate::format`]).
///
/// Errors: [`WalError::InvalidBytes`] if the frame is invalid or `bytes` holds anything after
/// it.
pub fn decode_record_at(bytes: &[u8]) -> Result<(u64, Bytes), WalError> {
    let invalid = |err| WalError::InvalidBytes { offset: 0, reason: CorruptionReason::Record(err) };
    let frame = decode_record(bytes).map_err(invalid)?;
    if frame.frame_len != bytes.len() {
        return Err(invalid(FrameError::TrailingBytes { extra: bytes.len() - frame.frame_len }));
    }
    Ok((frame.index, versioned_payload(frame.version, Bytes::copy_from_slice(frame.payload))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, encode_record_into, encode_segment_header};

    fn segment_bytes(first_index: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = encode_segment_header(first_index).to_vec();
        for (index, payload) in (first_index..).zip(payloads) {
            encode_record_into(&mut bytes, index, payload);
        }
        bytes
    }

    #[test]
    fn scan_segment_bytes_locates_every_frame() {
        let bytes = segment_bytes(10, &[b"a", b"", b"ccc"]);
        let locations = scan_segment_bytes(&bytes).unwrap();
        assert_eq!(
            locations,
            vec![
                RecordLocation { index: 10, offset: 20, len: 21 },
                RecordLocation { index: 11, offset: 41, len: 20 },
                RecordLocation { index: 12, offset: 61, len: 23 },
            ]
        );
        for location in &locations {
            let start = usize::try_from(location.offset).unwrap();
            let end = start + usize::try_from(location.len).unwrap();
            let (index, _) = decode_record_at(&bytes[start..end]).unwrap();
            assert_eq!(index, location.index);
        }
        let (_, payload) = decode_record_at(&bytes[61..84]).unwrap();
        assert_eq!(&payload[..], b"ccc");
    }

    #[test]
    fn scan_segment_bytes_rejects_damage_anywhere() {
        let bytes = segment_bytes(1, &[b"one", b"two", b"three"]);
        for at in 0..bytes.len() {
            let mut corrupted = bytes.clone();
            corrupted[at] ^= 0x04;
            assert!(scan_segment_bytes(&corrupted).is_err(), "byte {at}");
        }
        for len in 0..bytes.len() {
            // Only cuts exactly at frame boundaries are valid (shorter) segments.
            let result = scan_segment_bytes(&bytes[..len]);
            let at_boundary = [20, 43, 66].contains(&len);
            assert_eq!(result.is_ok(), at_boundary, "len {len}");
        }
    }

    #[test]
    fn scan_segment_bytes_rejects_non_consecutive_indexes() {
        let mut bytes = encode_segment_header(5).to_vec();
        encode_record_into(&mut bytes, 5, b"x");
        encode_record_into(&mut bytes, 7, b"y");
        match scan_segment_bytes(&bytes) {
            Err(WalError::InvalidBytes {
                offset: 41,
                reason: CorruptionReason::UnexpectedIndex { expected: 6, found: 7 },
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn index_u64_max_is_rejected_without_overflow() {
        let mut bytes = encode_segment_header(u64::MAX - 1).to_vec();
        encode_record_into(&mut bytes, u64::MAX - 1, b"last storable");
        assert_eq!(scan_segment_bytes(&bytes).unwrap().len(), 1);
        encode_record_into(&mut bytes, u64::MAX, b"never stored");
        assert!(matches!(
            scan_segment_bytes(&bytes),
            Err(WalError::InvalidBytes { reason: CorruptionReason::IndexOutOfRange, .. })
        ));
    }

    #[test]
    fn decode_record_at_rejects_trailing_bytes() {
        let mut frame = encode_record(3, b"abc");
        frame.push(0);
        assert!(matches!(
            decode_record_at(&frame),
            Err(WalError::InvalidBytes {
                reason: CorruptionReason::Record(FrameError::TrailingBytes { extra: 1 }),
                ..
            })
        ));
    }

    #[test]
    fn later_valid_record_must_have_a_plausible_index() {
        let mut bytes = encode_segment_header(1).to_vec();
        encode_record_into(&mut bytes, 1, b"good");
        let invalid_offset = bytes.len();
        bytes.extend_from_slice(&[0xAB; 7]); // garbage: not a frame
        encode_record_into(&mut bytes, 2, b"later");
        assert_eq!(find_later_valid_record(&bytes, invalid_offset, 2), Some((invalid_offset + 7, 2)));
        // A frame with an index far beyond what fits in between is not a genuine record.
        let mut far = encode_segment_header(1).to_vec();
        encode_record_into(&mut far, 1, b"good");
        far.extend_from_slice(&[0xAB; 7]);
        encode_record_into(&mut far, 1_000, b"embedded");
        assert_eq!(find_later_valid_record(&far, invalid_offset, 2), None);
        // Nor is one with an index at or below the last good one.
        let mut old = encode_segment_header(1).to_vec();
        encode_record_into(&mut old, 1, b"good");
        old.extend_from_slice(&[0xAB; 7]);
        encode_record_into(&mut old, 1, b"stale");
        assert_eq!(find_later_valid_record(&old, invalid_offset, 2), None);
    }
}
