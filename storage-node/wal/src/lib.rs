//! `strata-wal`: the write-ahead log on local disk that stores the Raft log of every shard and
//! of the metadata quorum.
//!
//! Records are opaque byte payloads addressed by strictly consecutive `u64` indexes (the Raft
//! log index). The crate owns:
//! - the on-disk format ([`format`](mod@format)): segment files `{first_index:020}.wal` of crc32c-framed
//!   records;
//! - [`Wal`]: appends with group commit (one `wal-sync` thread per WAL shares each fdatasync
//!   among all appends queued before it; nobody is acknowledged before the sync covering its
//!   records), positioned reads, tail truncation, segment sealing and removal;
//! - recovery ([`Wal::open`], [`RecoveryReport`]): a torn tail of the last segment is cut off,
//!   anything else that is damaged is [`WalError::Corruption`] and is never silently dropped;
//! - helpers for the tiering code ([`scan_segment_bytes`], [`decode_record_at`]) and for small
//!   atomically replaced metadata files ([`write_file_atomic`], [`write_file_checked`],
//!   [`read_file_checked`]);
//! - [`private_fs`]: every file it (and the crates above it) creates is 0600, every directory 0700.
//!
//! A failed fsync is never retried: by default the process aborts ([`FsyncFailure`]).

mod atomic_file;
mod error;
pub mod format;
/// Re-exported from `strata-fs`, which the TLS credentials use too.
pub use strata_fs as private_fs;
mod recovery;
mod segment;
mod wal;

pub use atomic_file::{read_file_checked, write_file_atomic, write_file_checked};
pub use error::{CorruptionReason, WalError};
pub use format::{FrameError, RECORD_PAYLOAD_BYTES_MAX};
pub use recovery::RecoveryReport;
pub use segment::{RecordLocation, SegmentInfo, decode_record_at, scan_segment_bytes};
#[doc(hidden)]
pub use wal::SyncHook;
pub use wal::{
    DurableCallback, FsyncFailure, LOCK_FILE_NAME, SEGMENT_SIZE_BYTES_MAX_DEFAULT, SYNC_THREAD_NAME, Wal, WalOptions,
    WalStats,
};
