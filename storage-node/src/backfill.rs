//! The recent log a replica restored by snapshot lacks, copied from its peers.
//!
//! # What it owns
//!
//! A replica that caught up by snapshot (a replica moved to a new node, or one away while its
//! peers purged their logs) holds no log before that snapshot. Live entries there that the bucket
//! does not hold yet are then only on its peers. [`backfill_shard_once`] copies each of them from
//! a peer into a local file, `backfill/{first:020}-{last:020}.seg`, one per run of consecutive
//! entries, in the WAL's segment format (so the leader tiers it like a sealed segment), and
//! removes a file once the segment catalog covers it or its entries are dead.
//!
//! # What it guarantees
//!
//! A file is written whole and fsynced before it counts ([`strata_wal::write_file_atomic`]): a
//! crash leaves either the whole file or none, and a file that does not read back as a segment
//! is dropped at open (its entries are copied again). Once a pass finishes without a gap, every
//! live entry up to the replica's purge point is in its WAL, in a backfill file or in the bucket,
//! so losing its peers no longer loses them. Files are only removed when the catalog covers them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use strata_common::error::StrataError;
use strata_metadata_client::MetadataClient;
use strata_wal::format::{encode_record_version_into, encode_segment_header, frame_for_payload};
use strata_wal::{RecordLocation, SegmentInfo, scan_segment_bytes};

use crate::error::NodeError;
use crate::shard::{Shard, decode_entry};
use crate::tier::{covered_ranges, gaps, reclaim_below};

/// Entries asked of a peer per call.
pub const FETCH_ENTRIES_MAX: u32 = 1024;
/// Bytes of entries a peer answers per call (at least one entry, whatever its size).
pub const FETCH_BYTES_MAX: usize = 4 * 1024 * 1024;

const SUFFIX: &str = ".seg";

fn file_name(first_index: u64, last_index: u64) -> String {
    format!("{first_index:020}-{last_index:020}{SUFFIX}")
}

fn range_of_file_name(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name.strip_suffix(SUFFIX)?.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

#[derive(Debug)]
struct BackfillFile {
    info: SegmentInfo,
    records: Vec<RecordLocation>,
}

/// The backfill files of one shard replica.
#[derive(Debug)]
pub struct BackfillFiles {
    dir: PathBuf,
    /// By first index; ranges never overlap.
    files: RwLock<BTreeMap<u64, Arc<BackfillFile>>>,
}

impl BackfillFiles {
    /// Opens `dir`, dropping files that do not read back whole (their entries are copied again).
    pub fn open(dir: &Path) -> io::Result<Self> {
        strata_wal::private_fs::create_dir_all(dir)?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some((first, last)) = name.to_str().and_then(range_of_file_name) else { continue };
            let path = entry.path();
            let bytes = std::fs::read(&path)?;
            match scan_segment_bytes(&bytes) {
                Ok(records)
                    if records.first().map(|r| r.index) == Some(first)
                        && records.last().map(|r| r.index) == Some(last) =>
                {
                    let info =
                        SegmentInfo { first_index: first, last_index: last, path, size_bytes: bytes.len() as u64 };
                    files.insert(first, Arc::new(BackfillFile { info, records }));
                }
                _ => {
                    tracing::warn!(path = %path.display(), "dropping a damaged backfill file; it is copied again");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), files: RwLock::new(files) })
    }

    /// The index ranges the files hold, in order.
    pub fn covered(&self) -> Vec<(u64, u64)> {
        self.files.read().values().map(|f| (f.info.first_index, f.info.last_index)).collect()
    }

    /// The files, as segments (for tiering).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.files.read().values().map(|f| f.info.clone()).collect()
    }

    /// The record payload (the encoded entry) at `index`, if a file holds it.
    pub fn read(&self, index: u64) -> io::Result<Option<Bytes>> {
        let file = self.files.read().range(..=index).next_back().map(|(_, f)| f.clone());
        let Some(file) = file.filter(|f| index <= f.info.last_index) else { return Ok(None) };
        let Some(at) = file.records.get((index - file.info.first_index) as usize) else { return Ok(None) };
        let mut frame = vec![0u8; at.len as usize];
        File::open(&file.info.path)?.read_exact_at(&mut frame, at.offset)?;
        let (record_index, payload) = strata_wal::decode_record_at(&frame).map_err(io::Error::other)?;
        if record_index != index {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a backfill file's record has the wrong index"));
        }
        Ok(Some(payload))
    }

    /// Stores consecutive entries (index, encoded entry) as one file, durably.
    pub fn write(&self, entries: &[(u64, Bytes)]) -> io::Result<()> {
        let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last()) else { return Ok(()) };
        let (first, last) = (*first, *last);
        if last - first + 1 != entries.len() as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "backfill entries are not consecutive"));
        }
        let mut bytes = encode_segment_header(first).to_vec();
        for (index, payload) in entries {
            // Each entry in the frame it was written in: tiered like a sealed segment, the file
            // must be readable by every process of the cluster.
            let (frame_version, stored) = frame_for_payload(payload);
            encode_record_version_into(&mut bytes, frame_version, *index, stored);
        }
        let records = scan_segment_bytes(&bytes).map_err(io::Error::other)?;
        let path = self.dir.join(file_name(first, last));
        strata_wal::write_file_atomic(&path, &bytes)?;
        let info = SegmentInfo { first_index: first, last_index: last, path, size_bytes: bytes.len() as u64 };
        self.files.write().insert(first, Arc::new(BackfillFile { info, records }));
        Ok(())
    }

    /// Removes the files whose entries are all in the catalog (`covered`) or dead (below
    /// `reclaim_below`); answers how many went.
    pub fn remove_covered(&self, covered: &[(u64, u64)], reclaim_below: u64) -> io::Result<usize> {
        let removable: Vec<Arc<BackfillFile>> = self
            .files
            .read()
            .values()
            .filter(|f| gaps(covered, f.info.first_index.max(reclaim_below), f.info.last_index).is_empty())
            .cloned()
            .collect();
        for file in &removable {
            match std::fs::remove_file(&file.info.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.files.write().remove(&file.info.first_index);
        }
        if !removable.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(removable.len())
    }
}

/// What one backfill pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackfillPass {
    /// Entries copied from peers.
    pub copied: u64,
    /// Live entries no peer could answer (copied by a later pass, or tiered meanwhile).
    pub missing: u64,
    /// Files removed because the catalog covers them.
    pub removed: usize,
}

/// Copies the live entries up to this replica's purge point that neither its log, nor its
/// backfill files, nor the bucket hold, from its peers; removes backfill files the catalog
/// covers. Asks metadata for the catalog only while something may be missing or removable.
pub async fn backfill_shard_once(shard: &Shard, metadata: &MetadataClient) -> Result<BackfillPass, StrataError> {
    let mut pass = BackfillPass::default();
    let Some(purged_index) = shard.purged_index() else { return Ok(pass) };
    let reclaim_below = reclaim_below(shard, Some(purged_index));
    let files = shard.backfill();
    let mut local = files.covered();
    let has_files = !local.is_empty();
    if let (Some(first), Some(last)) = (shard.wal().first_index(), shard.wal().last_index()) {
        local.push((first, last));
    }
    local.sort_unstable();
    // Once the catalog and the local log covered every live entry up to a purge point, they keep
    // doing so (local files go only once the catalog covers them, the catalog drops only dead
    // entries): ask again when the purge point moves on.
    let locally_missing = gaps(&local, reclaim_below, purged_index);
    if !has_files && (locally_missing.is_empty() || shard.backfill_verified_through() >= purged_index) {
        return Ok(pass);
    }
    let catalog = covered_ranges(&metadata.list_segments(shard.shard_id).await?);
    pass.removed = files.remove_covered(&catalog, reclaim_below).map_err(|e| {
        NodeError::local_file("backfill file removal failed", format_args!("shard {}: {e}", shard.shard_id))
    })?;
    let mut covered = [local, catalog].concat();
    covered.sort_unstable();
    for (first, last) in gaps(&covered, reclaim_below, purged_index) {
        let mut at = first;
        while at <= last {
            let count = u32::try_from(last - at + 1).unwrap_or(u32::MAX).min(FETCH_ENTRIES_MAX);
            let entries = shard.entries_from_peers(at, count).await;
            if entries.is_empty() {
                pass.missing += last - at + 1;
                break;
            }
            // What a peer sent must be the entries asked for, whole.
            for (index, bytes) in &entries {
                let entry = decode_entry(bytes, shard.log_format())?;
                if entry.log_id.index() != *index {
                    let detail = format!("shard {}: asked for {index}, got {}", shard.shard_id, entry.log_id.index());
                    return Err(NodeError::damaged("a replica answered the wrong log entry", detail).into());
                }
            }
            let next = at + entries.len() as u64;
            files.write(&entries).map_err(|e| {
                NodeError::local_file("backfill file write failed", format_args!("shard {}: {e}", shard.shard_id))
            })?;
            pass.copied += entries.len() as u64;
            at = next;
        }
    }
    if pass.missing == 0 {
        shard.set_backfill_verified_through(purged_index);
    } else {
        tracing::warn!(shard = shard.shard_id, missing = pass.missing, "live log entries are on no reachable peer yet");
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(first: u64, count: u64) -> Vec<(u64, Bytes)> {
        (first..first + count).map(|i| (i, Bytes::from(format!("entry {i}")))).collect()
    }

    #[test]
    fn files_hold_runs_read_back_reopen_and_go_once_covered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = BackfillFiles::open(dir.path()).expect("open");
        files.write(&entries(10, 5)).expect("write");
        files.write(&entries(30, 3)).expect("write");
        assert!(files.write(&[(40, Bytes::new()), (42, Bytes::new())]).is_err(), "not consecutive");
        assert_eq!(files.covered(), [(10, 14), (30, 32)]);
        assert_eq!(files.read(12).expect("read"), Some(Bytes::from("entry 12")));
        assert_eq!(files.read(15).expect("read"), None);
        assert_eq!(files.read(9).expect("read"), None);

        // A torn file (a crash cannot leave one, a damaged disk can) is dropped at open.
        std::fs::write(dir.path().join(file_name(50, 51)), b"STRWAL01 torn").expect("damaged file");
        let files = BackfillFiles::open(dir.path()).expect("reopen");
        assert_eq!(files.covered(), [(10, 14), (30, 32)]);
        assert_eq!(files.read(31).expect("read"), Some(Bytes::from("entry 31")));

        // Covered by the catalog, or dead: removed; partly covered: kept.
        assert_eq!(files.remove_covered(&[(0, 13)], 0).expect("remove"), 0);
        assert_eq!(files.remove_covered(&[(0, 14)], 0).expect("remove"), 1);
        assert_eq!(files.remove_covered(&[], 33).expect("remove"), 1);
        assert!(files.covered().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }
}
