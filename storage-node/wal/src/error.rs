//! The crate's error type.
//!
//! [`WalError`] is `Clone` (I/O errors are shared behind an `Arc`) because one failed group
//! commit must be reported to every append it covered.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::FrameError;

/// Everything that can go wrong in the WAL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// An operating-system call failed. For fsync/fdatasync failures in
    /// [`FsyncFailure::Poison`](crate::FsyncFailure::Poison) mode this is the error reported once;
    /// every later call returns [`WalError::Poisoned`].
    #[error("WAL I/O error: {op} {path}: {source}")]
    Io {
        /// The operation that failed (e.g. `"fdatasync"`, `"write"`).
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },

    /// Data on disk is damaged in a way that cannot be a torn write at the tail. The WAL
    /// refuses to open (or the read fails); nothing was modified to "repair" it.
    #[error("WAL corruption in {segment} at byte offset {offset}: {reason}")]
    Corruption {
        /// The segment file (or, for [`CorruptionReason::BelowDurableIndex`] with no segment,
        /// the WAL directory).
        segment: PathBuf,
        /// Byte offset within `segment` where the problem was detected.
        offset: u64,
        /// What is wrong.
        reason: CorruptionReason,
    },

    /// Bytes handed to [`scan_segment_bytes`](crate::scan_segment_bytes) or
    /// [`decode_record_at`](crate::decode_record_at) (e.g. fetched from object storage) are
    /// not a valid segment / record.
    #[error("invalid WAL bytes at offset {offset}: {reason}")]
    InvalidBytes {
        /// Byte offset within the given slice.
        offset: u64,
        /// What is wrong.
        reason: CorruptionReason,
    },

    /// A small metadata file written by [`write_file_checked`](crate::write_file_checked) is
    /// torn or damaged.
    #[error("corrupt metadata file {path}: {reason}")]
    CorruptMetadataFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: FrameError,
    },

    /// An appended index is not the expected next one (the WAL's `last_index + 1`, or the
    /// previous record of the batch + 1).
    #[error("non-consecutive append: expected index {expected}, got {got}")]
    NonConsecutiveIndex {
        /// The index that would have been accepted.
        expected: u64,
        /// The index supplied.
        got: u64,
    },

    /// The batch would store index `u64::MAX`, after which no next index exists.
    #[error("index overflow: a batch starting at {first_index} of {records} records")]
    IndexOverflow {
        /// First index of the batch.
        first_index: u64,
        /// Number of records in the batch.
        records: usize,
    },

    /// A record payload exceeds
    /// [`RECORD_PAYLOAD_BYTES_MAX`](crate::format::RECORD_PAYLOAD_BYTES_MAX).
    #[error("payload of record {index} is {len_bytes} bytes, maximum is {max_bytes}")]
    PayloadTooLarge {
        /// Index of the offending record.
        index: u64,
        /// Its payload size.
        len_bytes: u64,
        /// The maximum.
        max_bytes: u64,
    },

    /// A metadata body exceeds
    /// [`CHECKED_FILE_BODY_BYTES_MAX`](crate::format::CHECKED_FILE_BODY_BYTES_MAX).
    #[error("metadata body is {len_bytes} bytes, maximum is {max_bytes}")]
    MetadataTooLarge {
        /// The body size.
        len_bytes: u64,
        /// The maximum.
        max_bytes: u64,
    },

    /// `WalOptions` are unusable.
    #[error("invalid WAL options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: &'static str,
    },

    /// Another open `Wal` (in this or another process) holds the directory's lock file.
    #[error("WAL directory {dir} is locked by another instance")]
    Locked {
        /// The WAL directory.
        dir: PathBuf,
    },

    /// An earlier fsync/fdatasync failed in `FsyncFailure::Poison` mode. The on-disk state is
    /// unknown, so the WAL accepts no further calls; reopen it to recover.
    #[error("WAL is poisoned by an earlier fsync failure")]
    Poisoned,

    /// [`Wal::close`](crate::Wal::close) was called.
    #[error("WAL is closed")]
    Closed,
}

/// Why stored bytes are considered corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionReason {
    /// A record frame failed to decode.
    #[error("invalid record: {0}")]
    Record(FrameError),
    /// A segment header failed to decode.
    #[error("invalid segment header: {0}")]
    SegmentHeader(FrameError),
    /// The header's first index disagrees with the file name.
    #[error("file name says first index {name_first_index}, header says {header_first_index}")]
    SegmentNameMismatch {
        /// Index in the file name.
        name_first_index: u64,
        /// Index in the header.
        header_first_index: u64,
    },
    /// A valid record carries an index other than the next consecutive one.
    #[error("expected record index {expected}, found {found}")]
    UnexpectedIndex {
        /// The index that should be there.
        expected: u64,
        /// The index found.
        found: u64,
    },
    /// A valid record carries index `u64::MAX`, which the WAL never stores.
    #[error("record index u64::MAX is out of range")]
    IndexOutOfRange,
    /// An invalid record in the last segment is followed by a valid record with a later
    /// index, so the damage is not a torn tail.
    #[error("invalid record ({invalid}) followed by a valid record with index {later_index} at offset {later_offset}")]
    ValidRecordAfterInvalid {
        /// Why the first bad record is invalid.
        invalid: FrameError,
        /// Offset of the later valid record.
        later_offset: u64,
        /// Its index.
        later_index: u64,
    },
    /// Segments do not continue each other's index sequence.
    #[error("gap between segments: expected first index {expected_first_index}, found {found_first_index}")]
    GapBetweenSegments {
        /// Previous segment's last index + 1.
        expected_first_index: u64,
        /// This segment's first index.
        found_first_index: u64,
    },
    /// A segment that is not the last one holds no records.
    #[error("sealed segment holds no records")]
    EmptySealedSegment,
    /// Recovery would end below the index the caller knows to be durable.
    #[error("recovered last index {recovered_last_index:?} is below durable index {durable_index_min}")]
    BelowDurableIndex {
        /// Last index after recovery (`None`: empty WAL).
        recovered_last_index: Option<u64>,
        /// The caller's durable index.
        durable_index_min: u64,
    },
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { op, path: path.into(), source: Arc::new(source) }
    }
}

impl From<WalError> for io::Error {
    /// For callers that must report `io::Error` (e.g. openraft storage traits): the OS error
    /// kind is kept for I/O failures; corruption maps to `InvalidData`.
    fn from(err: WalError) -> Self {
        let kind = match &err {
            WalError::Io { source, .. } => source.kind(),
            WalError::Corruption { .. } | WalError::InvalidBytes { .. } | WalError::CorruptMetadataFile { .. } => {
                io::ErrorKind::InvalidData
            }
            WalError::NonConsecutiveIndex { .. }
            | WalError::IndexOverflow { .. }
            | WalError::PayloadTooLarge { .. }
            | WalError::MetadataTooLarge { .. }
            | WalError::InvalidOptions { .. } => io::ErrorKind::InvalidInput,
            WalError::Locked { .. } => io::ErrorKind::ResourceBusy,
            WalError::Poisoned | WalError::Closed => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}
