//! Disk space as a shared resource: the free-space reserve of a storage node.
//!
//! # What it owns
//!
//! [`DiskGuard`] watches the file system of the node's data directory every
//! [`DISK_CHECK_INTERVAL`], and between two reads counts the bytes of the writes it admits
//! against the space it read, so a burst of sends within one interval cannot run past the
//! reserve. While the space available falls below the reserve, the node refuses
//! what makes its data grow without bound — new messages (sends, moves) and new queues — with
//! `InsufficientStorage` (retryable, with a retry-after), and keeps serving everything else:
//! receives, deletes and visibility changes (which let consumers free space), Raft replication,
//! snapshots and tiering (which the reserve is kept for). When space returns above the reserve,
//! the next check lifts the refusal by itself; no restart is needed.
//!
//! # What it guarantees
//!
//! Nothing acknowledged is affected: a refused send stored nothing. The reserve bounds how close
//! tenants' writes bring the disk to full, so snapshots, metadata and recovery keep room to
//! write; a write that still fails (the disk filled by something else) ends the process (the WAL
//! and the Raft log treat a failed write or sync as fatal), and it recovers from its log on
//! restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use strata_common::error::StrataError;
use strata_common::{Clock, ClockExt};
use tokio_util::sync::CancellationToken;

/// How often the free space is read.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The free space kept for snapshots, metadata and recovery unless configured otherwise.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 256 << 20;

/// The free-space reserve of one node.
pub struct DiskGuard {
    dir: PathBuf,
    reserve_bytes: u64,
    /// Whether the space available was below the reserve at the last check, or the writes
    /// admitted since brought it there.
    low: AtomicBool,
    /// The space available at the last check.
    available_bytes: AtomicU64,
    /// Bytes of the writes admitted since the last check.
    admitted_bytes: AtomicU64,
}

/// The bytes available to an unprivileged writer on the file system holding `dir`.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

impl DiskGuard {
    /// A guard of `dir`'s file system keeping `reserve_bytes` free; reads the space once now.
    pub fn new(dir: &Path, reserve_bytes: u64) -> Arc<Self> {
        let guard = Arc::new(Self {
            dir: dir.to_owned(),
            reserve_bytes,
            low: AtomicBool::new(false),
            available_bytes: AtomicU64::new(u64::MAX),
            admitted_bytes: AtomicU64::new(0),
        });
        guard.check();
        guard
    }

    /// Reads the free space and updates the refusal.
    pub fn check(&self) {
        let available = match available_bytes(&self.dir) {
            Ok(available) => available,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free disk space");
                return;
            }
        };
        self.available_bytes.store(available, Ordering::Release);
        let above_reserve = available.saturating_sub(self.reserve_bytes);
        let disk = strata_telemetry::DiskLabel { disk: "data" };
        strata_telemetry::storage()
            .disk_free_bytes
            .get_or_create(&disk)
            .set(i64::try_from(above_reserve).unwrap_or(i64::MAX));
        self.admitted_bytes.store(0, Ordering::Release);
        let low = available < self.reserve_bytes;
        if self.low.swap(low, Ordering::AcqRel) != low {
            if low {
                tracing::warn!(
                    available,
                    reserve = self.reserve_bytes,
                    "disk space below the reserve: refusing new messages"
                );
            } else {
                tracing::info!(
                    available,
                    reserve = self.reserve_bytes,
                    "disk space back above the reserve: taking new messages"
                );
            }
        }
    }

    /// The space above the reserve as of the last check, less the writes admitted since: what
    /// optional uses of the disk (sealed segments kept for reads) may take a share of.
    pub fn room_above_reserve_bytes(&self) -> u64 {
        let admitted = self.admitted_bytes.load(Ordering::Acquire);
        self.available_bytes.load(Ordering::Acquire).saturating_sub(admitted).saturating_sub(self.reserve_bytes)
    }

    /// Readiness: the free space is above the reserve (as of the last check).
    pub fn ready_check(&self) -> strata_telemetry::ReadyCheck {
        let problem = self.low.load(Ordering::Acquire).then(|| {
            format!(
                "free disk space ({} MiB) is below the reserve ({} MiB): new messages are refused",
                self.available_bytes.load(Ordering::Acquire) >> 20,
                self.reserve_bytes >> 20
            )
        });
        strata_telemetry::ReadyCheck::new("disk", problem)
    }

    /// Whether new data may be written; the refusal to answer otherwise.
    pub fn admit(&self) -> Result<(), StrataError> {
        self.admit_bytes(0)
    }

    /// Whether a write of about `bytes` may be made: it counts against the space read at the
    /// last check, and one that would bring it below the reserve is refused (as is every write
    /// until the next check finds space).
    pub fn admit_bytes(&self, bytes: u64) -> Result<(), StrataError> {
        if !self.low.load(Ordering::Acquire) {
            let admitted = self.admitted_bytes.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
            let left = self.available_bytes.load(Ordering::Acquire).saturating_sub(admitted);
            if left >= self.reserve_bytes {
                return Ok(());
            }
            self.low.store(true, Ordering::Release);
        }
        Err(StrataError::insufficient_storage(
            "the storage holding this queue is low on disk space and takes no new messages for now; \
             receives and deletes go on. Retry later.",
        ))
    }

    /// Checks every [`DISK_CHECK_INTERVAL`] until `cancel`.
    pub async fn watch(self: Arc<Self>, clock: Arc<dyn Clock>, cancel: CancellationToken) {
        let mut interval = clock.interval(DISK_CHECK_INTERVAL);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = interval.tick() => self.check(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_a_zero_reserve_admits() {
        let dir = tempfile::tempdir().unwrap();
        let refusing = DiskGuard::new(dir.path(), u64::MAX);
        let refused = refusing.admit().unwrap_err();
        assert_eq!(refused.kind, strata_common::error::ErrorKind::InsufficientStorage);
        assert_eq!(refused.retry_after_s, Some(strata_common::error::INSUFFICIENT_STORAGE_RETRY_AFTER_S));
        assert!(DiskGuard::new(dir.path(), 0).admit().is_ok());
    }

    #[test]
    fn writes_admitted_between_checks_count_against_the_space_read() {
        let dir = tempfile::tempdir().unwrap();
        let available = available_bytes(dir.path()).unwrap();
        let reserve = available / 2;
        let guard = DiskGuard::new(dir.path(), reserve);
        // Well under what is left above the reserve, then one write that would cross it.
        assert!(guard.admit_bytes(available / 8).is_ok());
        assert!(guard.admit_bytes(available / 2).is_err());
        assert!(guard.admit().is_err(), "refused until the next check");
        // The next check reads the space again: nothing was written, so writes are taken again.
        guard.check();
        assert!(guard.admit_bytes(available / 8).is_ok());
    }
}
