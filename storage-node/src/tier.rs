//! Tiering: sealed WAL segments move to object storage, and are read back through a cache.
//!
//! # Order of operations (never changed)
//! 1. a segment is sealed by the WAL (immutable from then on);
//! 2. it is uploaded under a deterministic key with create-only semantics
//!    ([`segment_object_key`]: shard, writer epoch, index range);
//! 3. it is recorded in the metadata segment catalog;
//! 4. only then, and only once Raft has purged every entry in it (they are covered by a
//!    state-machine snapshot, so a restart never replays them), is the local file removed.
//!
//! A crash between any two steps is safe: an uploaded but unrecorded object is garbage that no
//! reader references (and a later writer epoch never reuses its key); a recorded segment that is
//! still on disk is simply removed later.
//!
//! # Object format
//! The object is the segment file byte for byte, followed by an index of its records and a
//! fixed 16-byte tail (see [`SegmentIndex`]). Readers fetch the tail and the index once, then
//! only the blocks that hold the record they need.
//!
//! # Reads
//! [`TieredReader`] serves records of tiered segments through a foyer hybrid cache (memory plus
//! a local disk file) keyed by `(object key, block number)`; misses are filled by ranged GETs of
//! [`BLOCK_BYTES`].
//!
//! # Garbage collection
//! A tiered segment whose every entry is below both the lowest log index any live message still
//! references and Raft's purge point is deleted from the bucket and from the catalog. (Above the
//! purge point the local copy still exists and would be uploaded again.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parking_lot::Mutex;
use strata_common::error::StrataError;
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;

use crate::error::NodeError;

/// Size of one cached block of a tiered segment: large enough that draining a queue reads each
/// block once, small enough that reading one message does not pull a whole segment.
pub const BLOCK_BYTES: u64 = 256 * 1024;
/// Segment indexes kept in memory (each is ~20 bytes per record).
const INDEX_CACHE_ENTRIES_MAX: usize = 256;
const TAIL_BYTES: u64 = 16;
const TAIL_MAGIC: &[u8; 7] = b"STRIDX1";
const INDEX_FORMAT_VERSION: u8 = 1;
const INDEX_RECORD_BYTES: usize = 8 + 8 + 4;

/// The deterministic object key of a segment. The writer epoch changes every time a node (re)opens
/// the shard, so a deposed or restarted writer can never overwrite an object of the current one.
pub fn segment_object_key(shard_id: u64, writer_epoch: u64, first_index: u64, last_index: u64) -> String {
    format!("shards/{shard_id:08}/epoch-{writer_epoch:010}/{first_index:020}-{last_index:020}.seg")
}

/// Where each record of a segment object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    /// log index → (offset, length) of the framed record within the object.
    records: BTreeMap<u64, (u64, u32)>,
}

impl SegmentIndex {
    /// Builds the index of a sealed segment file's bytes, validating every record.
    pub fn of_segment(bytes: &[u8]) -> Result<Self, StrataError> {
        let locations = strata_wal::scan_segment_bytes(bytes)
            .map_err(|e| NodeError::damaged("a sealed segment failed validation before upload", e))?;
        let records = locations.iter().map(|l| (l.index, (l.offset, l.len as u32))).collect();
        Ok(Self { records })
    }

    /// The index and tail appended after the segment bytes in the object.
    pub fn encode_footer(&self) -> Bytes {
        let mut body = BytesMut::with_capacity(self.records.len() * INDEX_RECORD_BYTES);
        for (index, (offset, len)) in &self.records {
            body.put_u64_le(*index);
            body.put_u64_le(*offset);
            body.put_u32_le(*len);
        }
        let crc = crc32c::crc32c(&body);
        let body_len = body.len() as u32;
        body.put_u32_le(body_len);
        body.put_u32_le(crc);
        body.put_u8(INDEX_FORMAT_VERSION);
        body.put_slice(TAIL_MAGIC);
        body.freeze()
    }

    /// Parses the tail: returns the index length in bytes.
    fn decode_tail(tail: &[u8]) -> Result<(u64, u32), StrataError> {
        let bad = || NodeError::damaged("a tiered segment has a damaged index", "its tail");
        if tail.len() != TAIL_BYTES as usize || &tail[9..16] != TAIL_MAGIC || tail[8] != INDEX_FORMAT_VERSION {
            return Err(bad().into());
        }
        let len = u32::from_le_bytes(tail[0..4].try_into().map_err(|_| bad())?);
        let crc = u32::from_le_bytes(tail[4..8].try_into().map_err(|_| bad())?);
        Ok((u64::from(len), crc))
    }

    fn decode_body(body: &[u8], crc: u32) -> Result<Self, StrataError> {
        let bad = || NodeError::damaged("a tiered segment has a damaged index", "its body");
        if crc32c::crc32c(body) != crc || !body.len().is_multiple_of(INDEX_RECORD_BYTES) {
            return Err(bad().into());
        }
        let mut records = BTreeMap::new();
        for chunk in body.chunks_exact(INDEX_RECORD_BYTES) {
            let index = u64::from_le_bytes(chunk[0..8].try_into().map_err(|_| bad())?);
            let offset = u64::from_le_bytes(chunk[8..16].try_into().map_err(|_| bad())?);
            let len = u32::from_le_bytes(chunk[16..20].try_into().map_err(|_| bad())?);
            records.insert(index, (offset, len));
        }
        Ok(Self { records })
    }
}

/// Counters of the tiered read path.
#[derive(Debug, Default)]
pub struct TierStats {
    pub object_gets: AtomicU64,
    pub block_cache_hits: AtomicU64,
    pub block_cache_misses: AtomicU64,
    pub segments_uploaded: AtomicU64,
    pub segments_removed_locally: AtomicU64,
    pub segments_collected: AtomicU64,
}

/// Reads records of tiered segments through the block cache.
pub struct TieredReader {
    store: Arc<dyn ObjectStore>,
    /// Blocks by `object key#block`. `Bytes`, so a hit hands out the block without copying it
    /// (serialized like `Vec<u8>`: length, then the bytes).
    cache: HybridCache<String, Bytes>,
    metadata: MetadataClient,
    /// Per shard, the catalog's segments by first index (refreshed on a miss).
    catalogs: Mutex<HashMap<u64, BTreeMap<u64, pb::Segment>>>,
    indexes: Mutex<HashMap<String, Arc<SegmentIndex>>>,
    pub stats: TierStats,
}

impl TieredReader {
    /// Opens the cache (`memory_bytes` in memory, `disk_bytes` in `cache_dir`).
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        metadata: MetadataClient,
        cache_dir: &Path,
        memory_bytes: usize,
        disk_bytes: usize,
    ) -> anyhow::Result<Self> {
        strata_wal::private_fs::create_dir_all(cache_dir)?;
        let device = FsDeviceBuilder::new(cache_dir).with_capacity(disk_bytes).build()?;
        let cache = HybridCacheBuilder::new()
            .with_name("strata-segments")
            .memory(memory_bytes)
            .with_weighter(|key: &String, value: &Bytes| key.len() + value.len())
            .storage()
            .with_engine_config(BlockEngineConfig::new(device))
            .build()
            .await?;
        Ok(Self {
            store,
            cache,
            metadata,
            catalogs: Mutex::new(HashMap::new()),
            indexes: Mutex::new(HashMap::new()),
            stats: TierStats::default(),
        })
    }

    pub async fn close(&self) {
        if let Err(e) = self.cache.close().await {
            tracing::warn!(error = %e, "closing the segment cache");
        }
    }

    async fn segment_for(&self, shard_id: u64, index: u64) -> Result<pb::Segment, StrataError> {
        let lookup = |catalogs: &HashMap<u64, BTreeMap<u64, pb::Segment>>| {
            catalogs
                .get(&shard_id)
                .and_then(|segments| segments.range(..=index).next_back())
                .map(|(_, s)| s.clone())
                .filter(|s| s.last_index >= index)
        };
        if let Some(segment) = lookup(&self.catalogs.lock()) {
            return Ok(segment);
        }
        let segments = self.metadata.list_segments(shard_id).await?;
        let mut catalogs = self.catalogs.lock();
        catalogs.insert(shard_id, segments.into_iter().map(|s| (s.first_index, s)).collect());
        lookup(&catalogs).ok_or_else(|| {
            NodeError::not_held(
                "a message could not be found in the log",
                format_args!("shard {shard_id}: log entry {index} is neither local nor in the segment catalog"),
            )
            .into()
        })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StrataError> {
        self.stats.object_gets.fetch_add(1, Ordering::Relaxed);
        let read = self.store.get_range(&ObjectPath::from(key), range).await;
        Ok(read.map_err(|e| NodeError::bucket("object storage is not reachable", format_args!("reading {key}: {e}")))?)
    }

    async fn index_of(&self, segment: &pb::Segment) -> Result<Arc<SegmentIndex>, StrataError> {
        if let Some(index) = self.indexes.lock().get(&segment.object_key) {
            return Ok(index.clone());
        }
        let size = segment.size_bytes;
        if size < TAIL_BYTES {
            return Err(NodeError::damaged("a tiered segment is too short", &segment.object_key).into());
        }
        let tail = self.get_range(&segment.object_key, size - TAIL_BYTES..size).await?;
        let (len, crc) = SegmentIndex::decode_tail(&tail)?;
        let start = (size - TAIL_BYTES)
            .checked_sub(len)
            .ok_or_else(|| NodeError::damaged("a tiered segment has a damaged index", &segment.object_key))?;
        let body = self.get_range(&segment.object_key, start..size - TAIL_BYTES).await?;
        let index = Arc::new(SegmentIndex::decode_body(&body, crc)?);
        let mut indexes = self.indexes.lock();
        if indexes.len() >= INDEX_CACHE_ENTRIES_MAX {
            indexes.clear();
        }
        indexes.insert(segment.object_key.clone(), index.clone());
        Ok(index)
    }

    async fn block(&self, segment: &pb::Segment, block: u64) -> Result<Bytes, StrataError> {
        let cache_key = format!("{}#{block}", segment.object_key);
        match self.cache.get(&cache_key).await {
            Ok(Some(entry)) => {
                self.stats.block_cache_hits.fetch_add(1, Ordering::Relaxed);
                strata_telemetry::cache().hits.inc();
                return Ok(entry.value().clone());
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "segment cache read failed; reading the bucket"),
        }
        self.stats.block_cache_misses.fetch_add(1, Ordering::Relaxed);
        strata_telemetry::cache().misses.inc();
        let start = block * BLOCK_BYTES;
        let end = (start + BLOCK_BYTES).min(segment.size_bytes);
        let bytes = self.get_range(&segment.object_key, start..end).await?;
        self.cache.insert(cache_key, bytes.clone());
        Ok(bytes)
    }

    /// Reads the raw record of `index` from its tiered segment.
    pub async fn read_record(&self, shard_id: u64, index: u64) -> Result<Bytes, StrataError> {
        let segment = self.segment_for(shard_id, index).await?;
        let segment_index = self.index_of(&segment).await?;
        let &(offset, len) = segment_index.records.get(&index).ok_or_else(|| {
            NodeError::damaged(
                "a tiered segment does not hold an entry its catalog claims",
                format_args!("{} lacks log entry {index}", segment.object_key),
            )
        })?;
        let end = offset + u64::from(len);
        let mut frame = Vec::with_capacity(len as usize);
        for block in offset / BLOCK_BYTES..=(end - 1) / BLOCK_BYTES {
            let bytes = self.block(&segment, block).await?;
            let block_start = block * BLOCK_BYTES;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + bytes.len() as u64) - block_start;
            let slice = bytes.get(from as usize..to as usize).ok_or_else(|| {
                NodeError::damaged("a tiered segment block is shorter than expected", &segment.object_key)
            })?;
            frame.extend_from_slice(slice);
        }
        let (record_index, payload) = strata_wal::decode_record_at(&frame).map_err(|e| {
            NodeError::damaged("a stored record is damaged", format_args!("shard {shard_id}, log entry {index}: {e}"))
        })?;
        if record_index != index {
            let detail = format!("{}: entry {index} found {record_index}", segment.object_key);
            return Err(NodeError::damaged("a tiered segment index points at the wrong record", detail).into());
        }
        Ok(payload)
    }

    fn forget_segments(&self, shard_id: u64, keys: &HashSet<String>) {
        if let Some(segments) = self.catalogs.lock().get_mut(&shard_id) {
            segments.retain(|_, s| !keys.contains(&s.object_key));
        }
        let mut indexes = self.indexes.lock();
        for key in keys {
            indexes.remove(key);
        }
    }
}

/// Uploads one sealed segment file (idempotently) and returns its catalog record, which covers
/// the file's entries `first_index..=last_index` (fewer than the file holds when other writers
/// tiered the others: the object's index still locates every entry it holds).
async fn upload_segment(
    store: &dyn ObjectStore,
    shard_id: u64,
    writer_epoch: u64,
    info: &strata_wal::SegmentInfo,
    first_index: u64,
    last_index: u64,
) -> Result<pb::Segment, StrataError> {
    let bytes = tokio::fs::read(&info.path).await.map_err(|e| {
        NodeError::local_file("a sealed segment could not be read", format_args!("{}: {e}", info.path.display()))
    })?;
    let index = SegmentIndex::of_segment(&bytes)?;
    let mut object = BytesMut::from(&bytes[..]);
    object.extend_from_slice(&index.encode_footer());
    let object = object.freeze();
    let key = segment_object_key(shard_id, writer_epoch, first_index, last_index);
    let segment = pb::Segment {
        shard_id,
        first_index,
        last_index,
        object_key: key.clone(),
        size_bytes: object.len() as u64,
        crc32c: crc32c::crc32c(&object),
        writer_epoch,
    };
    let options = PutOptions { mode: PutMode::Create, ..Default::default() };
    let metrics = strata_telemetry::tier();
    let timer = strata_telemetry::Timer::start();
    let put = store.put_opts(&ObjectPath::from(key.as_str()), PutPayload::from(object), options).await;
    timer.observe(&metrics.upload_seconds);
    match put {
        Ok(_) => {
            metrics.uploaded_bytes.inc_by(segment.size_bytes);
            Ok(segment)
        }
        // A retry after a failure between upload and commit: same epoch, same bytes.
        Err(object_store::Error::AlreadyExists { .. }) => {
            let meta = store
                .head(&ObjectPath::from(key.as_str()))
                .await
                .map_err(|e| NodeError::bucket("object storage is not reachable", format_args!("head {key}: {e}")))?;
            if meta.size == segment.size_bytes {
                Ok(segment)
            } else {
                Err(NodeError::damaged("segment key collision", format_args!("{key} exists with other content")).into())
            }
        }
        Err(e) => {
            metrics.upload_failures.inc();
            Err(NodeError::bucket("object storage is not reachable", format_args!("uploading {key}: {e}")).into())
        }
    }
}

/// Below this much room above the disk reserve, no tiered segment is kept for reads: the node
/// lets them go well before it would refuse new messages for lack of space.
const RETENTION_ROOM_MIN_BYTES: u64 = 1 << 30;

/// How many bytes of tiered segments a shard keeps on local disk for reads: up to its setting
/// and half the room above the reserve, and none once that room is under
/// [`RETENTION_ROOM_MIN_BYTES`].
pub(crate) fn kept_for_reads_bytes(local_retention_bytes: u64, room_above_reserve_bytes: u64) -> u64 {
    if room_above_reserve_bytes < RETENTION_ROOM_MIN_BYTES {
        return 0;
    }
    local_retention_bytes.min(room_above_reserve_bytes / 2)
}

/// The first index of the oldest sealed segment kept locally for reads: the newest segments
/// whose sizes add up to at most `keep_local_bytes` (`u64::MAX` when none fits).
fn kept_for_reads_from(sealed: &[strata_wal::SegmentInfo], keep_local_bytes: u64) -> u64 {
    let mut kept_bytes = 0u64;
    let mut kept_from = u64::MAX;
    for info in sealed.iter().rev() {
        kept_bytes = kept_bytes.saturating_add(info.size_bytes);
        if kept_bytes > keep_local_bytes {
            break;
        }
        kept_from = info.first_index;
    }
    kept_from
}

/// Entries below both the oldest live message and the purge point are never read again.
pub(crate) fn reclaim_below(shard: &crate::shard::Shard, purged_index: Option<u64>) -> u64 {
    reclaim_below_of(shard.state().0.min_live_log_index(), purged_index)
}

/// [`reclaim_below`] from the oldest live entry's index, already read.
fn reclaim_below_of(live_min: Option<u64>, purged_index: Option<u64>) -> u64 {
    match (live_min, purged_index) {
        (_, None) => 0,
        (Some(live), Some(purged)) => live.min(purged + 1),
        (None, Some(purged)) => purged + 1,
    }
}

/// Whether the segment catalog holds every live entry up to this replica's purge point (its
/// last snapshot): what a replica that joins by that snapshot must read from the bucket.
pub async fn tiered_through_snapshot(
    shard: &crate::shard::Shard,
    metadata: &MetadataClient,
) -> Result<bool, StrataError> {
    let Some(purged_index) = shard.purged_index() else { return Ok(true) };
    let catalog = metadata.list_segments(shard.shard_id).await?;
    let covered = covered_ranges(&catalog);
    Ok(gaps(&covered, reclaim_below(shard, Some(purged_index)), purged_index).is_empty())
}

/// The index ranges the catalog covers, in order.
pub(crate) fn covered_ranges(catalog: &[pb::Segment]) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = catalog.iter().map(|s| (s.first_index, s.last_index)).collect();
    covered.sort_unstable();
    covered
}

/// The parts of `first..=last` that no range of `covered` (inclusive, sorted by start; they may
/// overlap) covers.
pub(crate) fn gaps(covered: &[(u64, u64)], first: u64, last: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = first;
    for &(from, to) in covered {
        if at > last {
            break;
        }
        if to < at {
            continue;
        }
        if from > at {
            out.push((at, last.min(from - 1)));
        }
        at = at.max(to.saturating_add(1));
    }
    if at <= last {
        out.push((at, last));
    }
    out
}

/// The writer epoch this replica uploads under: claimed in metadata once per leadership (a Raft
/// term it leads in, in this process), so a new leader's object keys never meet a deposed
/// one's, nor a restarted leader's its earlier self's, and a deposed leader can no longer
/// change the segment catalog. Claims are made one at a time: each one starts a new epoch.
pub(crate) async fn claim_writer_epoch(
    shard: &crate::shard::Shard,
    metadata: &MetadataClient,
) -> Result<u64, StrataError> {
    let term =
        shard.leader_term().ok_or_else(|| StrataError::not_leader(&format!("shard {}", shard.shard_id), None))?;
    let mut claim = shard.writer_claim().await;
    if let Some((_, epoch)) = claim.filter(|(claimed_term, _)| *claimed_term == term) {
        return Ok(epoch);
    }
    let claimed = metadata.claim_shard_writer(shard.shard_id, &shard.node_id, term).await?;
    tracing::info!(shard = shard.shard_id, term, epoch = claimed.writer_epoch, "claimed the shard's writer role");
    *claim = Some((term, claimed.writer_epoch));
    Ok(claimed.writer_epoch)
}

/// Uploads and records the live entries of a segment file that the catalog does not cover yet
/// (one object per gap); answers how many objects.
#[allow(clippy::too_many_arguments)]
async fn upload_gaps(
    shard: &crate::shard::Shard,
    store: &dyn ObjectStore,
    metadata: &MetadataClient,
    reader: &TieredReader,
    writer_epoch: u64,
    info: &strata_wal::SegmentInfo,
    reclaim_below: u64,
    covered: &mut Vec<(u64, u64)>,
) -> Result<usize, StrataError> {
    let mut uploaded = 0;
    for (first, last) in gaps(covered, info.first_index.max(reclaim_below), info.last_index) {
        let segment = upload_segment(store, shard.shard_id, writer_epoch, info, first, last).await?;
        metadata.commit_segment(segment).await?;
        covered.insert(covered.partition_point(|range| *range < (first, last)), (first, last));
        reader.stats.segments_uploaded.fetch_add(1, Ordering::Relaxed);
        uploaded += 1;
    }
    Ok(uploaded)
}

/// What one tiering pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TierPass {
    pub uploaded: usize,
    pub removed_locally: usize,
    pub collected: usize,
}

/// When a shard's sealed segments were first seen sealed, so that the newest wait before they
/// are uploaded (see `ShardLogSettings::upload_after`). In memory only: after a restart every
/// segment waits once more.
/// The ages travel with the shard's share of the process's `tier_pending_bytes`, taken back when
/// the shard stops leading ([`SealedAges::release_pending`]) or they are dropped (the shard
/// closed or moved away).
#[derive(Debug, Default)]
pub struct SealedAges {
    first_seen: BTreeMap<u64, std::time::Instant>,
    pending: PendingShare,
}

/// One shard's part of `tier_pending_bytes`.
#[derive(Debug, Default)]
struct PendingShare(u64);

impl PendingShare {
    fn set(&mut self, bytes: u64) {
        strata_telemetry::tier().pending_bytes.inc_by(bytes as i64 - self.0 as i64);
        self.0 = bytes;
    }
}

impl Drop for PendingShare {
    fn drop(&mut self) {
        self.set(0);
    }
}

impl SealedAges {
    /// Takes back this shard's share of the pending bytes (it no longer leads).
    pub fn release_pending(&mut self) {
        self.pending.set(0);
    }

    /// The first index from which the sealed segments wait (`u64::MAX` when none does): the
    /// oldest segment sealed less than `upload_after` before `now` among those kept for reads
    /// (from `kept_from`, see [`kept_for_reads_from`]).
    pub fn waiting_from(
        &mut self,
        sealed: &[strata_wal::SegmentInfo],
        now: std::time::Instant,
        upload_after: std::time::Duration,
        kept_from: u64,
    ) -> u64 {
        self.first_seen.retain(|first_index, _| sealed.iter().any(|info| info.first_index == *first_index));
        let mut waiting_from = u64::MAX;
        for info in sealed.iter().rev() {
            let seen = *self.first_seen.entry(info.first_index).or_insert(now);
            if info.first_index < kept_from || now.duration_since(seen) >= upload_after {
                break;
            }
            waiting_from = info.first_index;
        }
        waiting_from
    }
}

/// One pass of upload → commit → local removal, then bucket GC, for a shard. The newest sealed
/// segments kept for reads are not uploaded before `upload_after` (see [`SealedAges`]); those of
/// them that hold only dead entries are removed all the same.
pub async fn tier_shard_once(
    shard: &crate::shard::Shard,
    store: &dyn ObjectStore,
    metadata: &MetadataClient,
    reader: &TieredReader,
    keep_local_bytes: u64,
    ages: &mut SealedAges,
    upload_after: std::time::Duration,
) -> Result<TierPass, StrataError> {
    let mut pass = TierPass::default();
    let writer_epoch = claim_writer_epoch(shard, metadata).await?;
    let catalog = metadata.list_segments(shard.shard_id).await?;
    // Only committed entries are tiered: an uncommitted tail may still be replaced by another
    // leader's entries, while a committed index holds the same entry on every replica. Other
    // writers cut their files at other indices, and a replica that caught up by snapshot lacks
    // entries before it: each file uploads what the catalog does not cover yet (one record per
    // gap), so the catalog never covers an index twice.
    let applied_index = shard.applied_index().unwrap_or(0);
    let mut covered = covered_ranges(&catalog);
    let purged_index = shard.purged_index();
    let live_min = shard.state().0.min_live_log_index();
    let reclaim_below = reclaim_below_of(live_min, purged_index);
    let mut needs_snapshot = false;
    // Entries copied from peers (this replica joined by snapshot) tier like sealed segments; the
    // backfill pass removes their files once the catalog covers them.
    for info in shard.backfill().segments() {
        pass.uploaded +=
            upload_gaps(shard, store, metadata, reader, writer_epoch, &info, reclaim_below, &mut covered).await?;
    }
    let sealed = shard.wal().sealed_segments();
    let kept_from = kept_for_reads_from(&sealed, keep_local_bytes);
    let waiting_from = ages.waiting_from(&sealed, shard.clock().instant(), upload_after, kept_from);
    // Segments ending at or after this hold live entries and are among the newest kept for reads.
    let keep_from = kept_from.max(reclaim_below);
    for info in &sealed {
        // Removal goes through a segment's last index, so the first segment that must stay
        // (not applied, or waiting with live entries) ends the pass.
        if info.last_index > applied_index {
            break;
        }
        if info.first_index >= waiting_from && info.last_index >= reclaim_below {
            // No message needs its entries any more, only a restart would replay them: a
            // snapshot lets it go without an upload.
            if live_min.is_none_or(|live| live > info.last_index) {
                needs_snapshot = true;
            }
            break;
        }
        pass.uploaded +=
            upload_gaps(shard, store, metadata, reader, writer_epoch, info, reclaim_below, &mut covered).await?;
        // Tiered (or dead) and recorded: the file may go once no restart would replay it,
        // unless it is among the newest kept for reads.
        if purged_index.is_some_and(|p| info.last_index <= p) {
            if info.last_index >= keep_from {
                continue;
            }
            let removed = shard
                .wal()
                .remove_sealed_through(info.last_index)
                .map_err(|e| NodeError::local_file("local segment removal failed", e))?;
            reader.stats.segments_removed_locally.fetch_add(removed.len() as u64, Ordering::Relaxed);
            pass.removed_locally += removed.len();
        } else if info.last_index < keep_from {
            // A snapshot would let it go now; one kept for reads waits for the shard's own.
            needs_snapshot = true;
        }
    }
    if needs_snapshot {
        shard.trigger_snapshot();
    }
    // What the catalog does not cover yet (the segments removed above were covered).
    let pending_bytes = sealed
        .iter()
        .filter(|info| !gaps(&covered, info.first_index.max(reclaim_below), info.last_index).is_empty())
        .map(|info| info.size_bytes)
        .sum();
    ages.pending.set(pending_bytes);

    let garbage: Vec<&pb::Segment> = catalog.iter().filter(|s| s.last_index < reclaim_below).collect();
    if !garbage.is_empty() {
        let mut keys = HashSet::new();
        for segment in &garbage {
            match store.delete(&ObjectPath::from(segment.object_key.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    keys.insert(segment.object_key.clone());
                }
                Err(e) => tracing::warn!(key = segment.object_key, error = %e, "segment GC delete failed"),
            }
        }
        metadata.remove_segments(shard.shard_id, writer_epoch, keys.iter().cloned().collect()).await?;
        reader.forget_segments(shard.shard_id, &keys);
        reader.stats.segments_collected.fetch_add(keys.len() as u64, Ordering::Relaxed);
        pass.collected += keys.len();
    }
    Ok(pass)
}

/// On a replica that does not lead: removes the local sealed segments that the writer has tiered
/// and that this replica's own snapshot covers (so no restart replays them), so followers do not
/// keep the whole history on disk. Reads of those entries, should this replica lead later, go
/// to the bucket like the leader's. Answers how many files went.
pub async fn release_tiered_segments(
    shard: &crate::shard::Shard,
    metadata: &MetadataClient,
    reader: &TieredReader,
    keep_local_bytes: u64,
) -> Result<usize, StrataError> {
    let Some(purged_index) = shard.purged_index() else { return Ok(0) };
    let sealed = shard.wal().sealed_segments();
    if !sealed.iter().any(|s| s.last_index <= purged_index) {
        return Ok(0);
    }
    let catalog = metadata.list_segments(shard.shard_id).await?;
    let covered = covered_ranges(&catalog);
    let reclaim_below = reclaim_below(shard, Some(purged_index));
    let keep_from = kept_for_reads_from(&sealed, keep_local_bytes).max(reclaim_below);
    // The files in order, up to the first one whose live entries are not all in the catalog, or
    // that is kept for reads.
    let Some(last) = sealed
        .iter()
        .take_while(|s| {
            s.last_index <= purged_index
                && gaps(&covered, s.first_index.max(reclaim_below), s.last_index).is_empty()
                && s.last_index < keep_from
        })
        .map(|s| s.last_index)
        .last()
    else {
        return Ok(0);
    };
    let removed = shard
        .wal()
        .remove_sealed_through(last)
        .map_err(|e| NodeError::local_file("local segment removal failed", e))?;
    reader.stats.segments_removed_locally.fetch_add(removed.len() as u64, Ordering::Relaxed);
    Ok(removed.len())
}

/// Checks at start-up that the store honours create-only puts; warns loudly if not (for example
/// Garage overwrites). Correctness does not depend on it: keys are unique per writer epoch and the
/// catalog is the truth.
pub async fn probe_conditional_create(store: &dyn ObjectStore, node_id: &str, now_ms: u64) {
    let key = ObjectPath::from(format!("probes/{node_id}-{now_ms}"));
    let put = |mode: PutMode| {
        store.put_opts(&key, PutPayload::from_static(b"probe"), PutOptions { mode, ..Default::default() })
    };
    match put(PutMode::Create).await {
        Ok(_) => match put(PutMode::Create).await {
            Err(object_store::Error::AlreadyExists { .. }) => tracing::info!("object store honours create-only puts"),
            Ok(_) => tracing::warn!(
                "object store IGNORES create-only puts (overwrote an existing object); \
                 relying on unique per-epoch keys and the metadata catalog"
            ),
            Err(e) => tracing::warn!(error = %e, "object store probe: second put failed"),
        },
        Err(e) => tracing::warn!(error = %e, "object store probe failed; tiering will retry"),
    }
    let _ = store.delete(&key).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_kept_for_reads_only_while_the_disk_has_room() {
        let gib = 1u64 << 30;
        assert_eq!(kept_for_reads_bytes(gib, 10 * gib), gib);
        assert_eq!(kept_for_reads_bytes(gib, 3 * gib / 2), 3 * gib / 4, "half the room");
        assert_eq!(kept_for_reads_bytes(gib, gib - 1), 0, "none under 1 GiB of room");
        assert_eq!(kept_for_reads_bytes(0, 10 * gib), 0);
    }

    #[test]
    fn the_newest_segments_that_fit_the_budget_are_kept_for_reads() {
        let segment = |first_index, last_index, size_bytes| strata_wal::SegmentInfo {
            first_index,
            last_index,
            path: std::path::PathBuf::new(),
            size_bytes,
        };
        let sealed = [segment(1, 10, 100), segment(11, 20, 100), segment(21, 30, 100)];
        assert_eq!(kept_for_reads_from(&sealed, 0), u64::MAX);
        assert_eq!(kept_for_reads_from(&sealed, 99), u64::MAX);
        assert_eq!(kept_for_reads_from(&sealed, 100), 21);
        assert_eq!(kept_for_reads_from(&sealed, 250), 11);
        assert_eq!(kept_for_reads_from(&sealed, 300), 1);
        assert_eq!(kept_for_reads_from(&[], 300), u64::MAX);
    }

    #[test]
    fn the_newest_sealed_segments_wait_before_upload_within_the_budget() {
        let segment = |first_index, last_index| strata_wal::SegmentInfo {
            first_index,
            last_index,
            path: std::path::PathBuf::new(),
            size_bytes: 100,
        };
        let minute = std::time::Duration::from_secs(60);
        let start = strata_common::Clock::instant(&strata_common::SystemClock);
        let mut ages = SealedAges::default();
        // The budget in bytes, as the tiering pass turns it into the first index kept for reads.
        let mut waiting_from = |sealed: &[strata_wal::SegmentInfo], now, wait, budget| {
            ages.waiting_from(sealed, now, wait, kept_for_reads_from(sealed, budget))
        };
        let sealed = vec![segment(1, 10), segment(11, 20)];
        // Just sealed: both wait, while the budget holds them.
        assert_eq!(waiting_from(&sealed, start, minute, 1_000), 1);
        // Beyond the budget, the older one goes at once; with no wait, none waits.
        assert_eq!(waiting_from(&sealed, start, minute, 150), 11);
        assert_eq!(waiting_from(&sealed, start, std::time::Duration::ZERO, 1_000), u64::MAX);
        // A minute later they are due, while a segment sealed since still waits.
        let later = start + minute;
        let sealed = vec![segment(1, 10), segment(11, 20), segment(21, 30)];
        assert_eq!(waiting_from(&sealed, later, minute, 1_000), 21);
        // Segments removed are forgotten.
        assert_eq!(waiting_from(&sealed[2..], later, minute, 1_000), 21);
        assert_eq!(ages.first_seen.len(), 1);
    }

    #[test]
    fn gaps_are_the_uncovered_parts_of_a_range() {
        let covered = [(1, 10), (21, 30), (31, 40)];
        assert_eq!(gaps(&covered, 1, 40), vec![(11, 20)]);
        assert_eq!(gaps(&covered, 5, 8), vec![]);
        assert_eq!(gaps(&covered, 5, 25), vec![(11, 20)]);
        assert_eq!(gaps(&covered, 35, 50), vec![(41, 50)]);
        assert_eq!(gaps(&[], 3, 4), vec![(3, 4)]);
        assert_eq!(gaps(&[(5, 6)], 1, 9), vec![(1, 4), (7, 9)]);
        // An empty range (all of it dead) has no gaps.
        assert_eq!(gaps(&[], 9, 4), vec![]);
    }

    #[test]
    fn keys_are_deterministic_and_carry_shard_and_epoch() {
        let key = segment_object_key(3, 7, 1, 99);
        assert_eq!(key, "shards/00000003/epoch-0000000007/00000000000000000001-00000000000000000099.seg");
        assert_ne!(key, segment_object_key(3, 8, 1, 99));
    }

    /// The index and tail of a segment object (see `docs/formats.md`) keep their bytes.
    #[test]
    fn footer_matches_its_golden_fixture() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats/shard");
        let index = SegmentIndex { records: BTreeMap::from([(5, (20, 40)), (6, (60, 44)), (7, (104, 1_048_600))]) };
        let footer = strata_common::format::golden::check_bytes(&dir, "segment-index-v1.bin", &index.encode_footer());
        let tail = &footer[footer.len() - TAIL_BYTES as usize..];
        let (len, crc) = SegmentIndex::decode_tail(tail).unwrap();
        assert_eq!(SegmentIndex::decode_body(&footer[..len as usize], crc).unwrap(), index);
    }

    #[test]
    fn footer_round_trips_and_detects_damage() {
        let index = SegmentIndex { records: BTreeMap::from([(5, (20, 40)), (6, (60, 44))]) };
        let footer = index.encode_footer();
        let tail = &footer[footer.len() - TAIL_BYTES as usize..];
        let (len, crc) = SegmentIndex::decode_tail(tail).unwrap();
        let body = &footer[..len as usize];
        assert_eq!(SegmentIndex::decode_body(body, crc).unwrap(), index);
        let mut damaged = body.to_vec();
        damaged[3] ^= 1;
        assert!(SegmentIndex::decode_body(&damaged, crc).is_err());
        let mut bad_tail = tail.to_vec();
        bad_tail[15] ^= 1;
        assert!(SegmentIndex::decode_tail(&bad_tail).is_err());
    }
}
