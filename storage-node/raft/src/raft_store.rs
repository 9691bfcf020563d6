//! The openraft log store on top of the WAL.
//!
//! [`WalLogStore`] is the Raft log of every shard and of the metadata quorum. Entries are
//! encoded in their persisted form ([`crate::persisted`]) into WAL records whose index is the
//! Raft log index, so the WAL's guarantees carry over: an append is readable when `append`
//! returns and durable when openraft's [`IOFlushed`] callback fires, which happens only after
//! the group-commit `fdatasync` that covers it.
//!
//! Beside the log, three small facts live in checked files in the same directory:
//! - the vote (written atomically with fsync before `save_vote` returns: Raft safety needs it);
//! - the last purged log id (fsynced: it bounds what readers may ask for);
//! - the committed log id, persisted only every [`COMMITTED_PERSIST_EVERY_ENTRIES`] entries: it
//!   is a lower bound used to re-apply entries at start-up and to detect a log that recovered
//!   shorter than what was committed. Every entry it names was fsynced in the WAL before it was
//!   committed, so a stale copy is harmless; an unreadable copy is ignored with a warning.
//!
//! Purging is logical: entries at or below the purge point disappear from the reader. Whether
//! the segment files are removed at once depends on [`SegmentRetention`]: the metadata quorum
//! removes them on purge, shards keep them until the tiering code has uploaded them, because
//! message bodies are read back from the log long after the state machine snapshot covers them.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, RaftTypeConfig};
use parking_lot::Mutex;
use strata_common::format::FormatGate;
use strata_wal::format::{LEGACY_FRAME_VERSION, RECORD_FORMAT_VERSION};
use strata_wal::{Wal, WalError, WalOptions, read_file_checked, write_file_checked};

use crate::persisted::{
    LogIdV1, PersistedRaftTypes, VoteV1, decode_entry, decode_fact, encode_entry, encode_fact, writes_legacy,
};

const VOTE_FILE: &str = "raft-vote";
const COMMITTED_FILE: &str = "raft-committed";
const PURGED_FILE: &str = "raft-purged";
/// The committed index is written to disk when it has advanced this far since the last write:
/// often enough to bound start-up re-apply work, rarely enough to cost nothing per commit.
pub const COMMITTED_PERSIST_EVERY_ENTRIES: u64 = 4096;
/// Bytes of recent entries kept decoded in memory (see `RecentEntries`), each counted as its
/// encoded size plus [`DECODED_ENTRY_OVERHEAD_BYTES`]. Seconds of sends at a moderate rate (a
/// receive that keeps up reads them from here); a consumer further behind reads the log files.
/// Every group of a process holds this much once warm, so it is kept small (was 32 MiB).
const RECENT_ENTRIES_BYTES_MAX: usize = 8 * 1024 * 1024;
/// What a decoded entry costs beyond its encoded bytes (its structs, and an allocation per
/// string), so that many small entries (queue creations, receives) are bounded by the memory
/// they take rather than by their much smaller encoding: counted at encoded size alone, 32 MiB
/// of them held hundreds of MiB (issue 16, item 4).
const DECODED_ENTRY_OVERHEAD_BYTES: usize = 512;
/// Segment files live in this subdirectory of the store directory.
const LOG_DIR: &str = "log";

/// What happens to WAL segment files once Raft purges the entries in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentRetention {
    /// Remove sealed segments as soon as every entry in them is purged (metadata quorum).
    RemoveOnPurge,
    /// Keep them; the owner removes them explicitly (shards: after tiering).
    KeepUntilReleased,
}

/// openraft's [`RaftLogStorage`] and [`RaftLogReader`] backed by a [`Wal`]. Cheap to clone.
pub struct WalLogStore<C: RaftTypeConfig> {
    inner: Arc<Inner<C>>,
}

impl<C: RaftTypeConfig> Clone for WalLogStore<C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<C: RaftTypeConfig> {
    wal: Wal,
    /// Which format generation entries are written in, and the newest that is read.
    format: FormatGate,
    dir: PathBuf,
    retention: SegmentRetention,
    facts: Mutex<Facts<C>>,
    recent: Mutex<RecentEntries<C>>,
}

/// Decoded copies of the most recently appended entries. Raft applies an entry right after it is
/// flushed and receives read bodies of recent sends: both are served from here instead of a
/// positioned read plus a decode. Bounded by [`RECENT_ENTRIES_BYTES_MAX`] of encoded size plus
/// [`DECODED_ENTRY_OVERHEAD_BYTES`] per entry.
struct RecentEntries<C: RaftTypeConfig> {
    /// Consecutive indexes, oldest first: (index, bytes counted, entry).
    entries: VecDeque<(u64, usize, EntryOf<C>)>,
    bytes: usize,
}

impl<C: RaftTypeConfig> RecentEntries<C>
where
    EntryOf<C>: Clone,
{
    /// Keeps `entry`, whose encoding is `encoded_bytes` long, dropping the oldest over the bound.
    fn push(&mut self, index: u64, encoded_bytes: usize, entry: EntryOf<C>) {
        if self.entries.back().is_some_and(|(last, _, _)| *last + 1 != index) {
            self.clear();
        }
        let bytes = encoded_bytes + DECODED_ENTRY_OVERHEAD_BYTES;
        self.entries.push_back((index, bytes, entry));
        self.bytes += bytes;
        while self.bytes > RECENT_ENTRIES_BYTES_MAX {
            match self.entries.pop_front() {
                Some((_, b, _)) => self.bytes -= b,
                None => break,
            }
        }
    }

    /// Clones of `[start, end)` if all of them are here.
    fn range(&self, start: u64, end_exclusive: u64) -> Option<Vec<EntryOf<C>>> {
        let (first, _, _) = self.entries.front()?;
        let (last, _, _) = self.entries.back()?;
        if start < *first || end_exclusive > *last + 1 || start >= end_exclusive {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end_exclusive - first) as usize;
        Some(self.entries.range(from..to).map(|(_, _, e)| e.clone()).collect())
    }

    /// Forgets entries at or after `index` (tail truncation).
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(last, _, _)| *last >= index) {
            if let Some((_, b, _)) = self.entries.pop_back() {
                self.bytes -= b;
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

struct Facts<C: RaftTypeConfig> {
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
    committed_persisted_index: Option<u64>,
    last_purged: Option<LogIdOf<C>>,
}

/// A log write that failed (a full disk, an I/O error) stops openraft's group for good while
/// the process lives: with the WAL's abort policy (production) the process ends instead, so its
/// supervisor restarts it and the replica recovers from what is durable; with the poison policy
/// (tests) the error is returned.
fn log_write_failed(wal: &Wal, e: WalError) -> io::Error {
    if wal.fsync_failure() == strata_wal::FsyncFailure::Abort && matches!(e, WalError::Io { .. }) {
        tracing::error!(error = %e, "a Raft log write failed; ending the process so that it restarts from its log");
        std::process::abort();
    }
    to_io(e)
}

fn to_io(e: WalError) -> io::Error {
    io::Error::other(e)
}

fn load_vote<C: PersistedRaftTypes>(path: &Path) -> io::Result<Option<VoteOf<C>>> {
    match read_file_checked(path).map_err(to_io)? {
        Some(bytes) => Ok(Some(decode_fact::<VoteV1>(&bytes)?.into())),
        None => Ok(None),
    }
}

fn load_log_id<C: PersistedRaftTypes>(path: &Path) -> io::Result<Option<LogIdOf<C>>> {
    match read_file_checked(path).map_err(to_io)? {
        Some(bytes) => Ok(Some(decode_fact::<LogIdV1>(&bytes)?.into())),
        None => Ok(None),
    }
}

/// Records `vote` in a log store directory whose log is empty: for a group seeded from a
/// snapshot taken elsewhere, whose first election must be in a later term than every entry the
/// snapshot covers.
pub fn seed_vote<C: PersistedRaftTypes>(dir: &Path, vote: &VoteOf<C>) -> io::Result<()> {
    strata_wal::private_fs::create_dir_all(dir)?;
    write_file_checked(&dir.join(VOTE_FILE), &encode_fact(&VoteV1::from(vote))?, true)
}

impl<C: PersistedRaftTypes> WalLogStore<C> {
    /// Opens (or creates) the store in `dir`, recovering the WAL. Recovery treats a log that
    /// ends below the persisted committed index as corruption.
    pub fn open(dir: &Path, options: WalOptions, retention: SegmentRetention, format: FormatGate) -> io::Result<Self> {
        strata_wal::private_fs::create_dir_all(dir)?;
        let vote = load_vote::<C>(&dir.join(VOTE_FILE))?;
        let last_purged = load_log_id::<C>(&dir.join(PURGED_FILE))?;
        // A torn committed file is tolerated: it is only a hint (see the module doc).
        let committed = match load_log_id::<C>(&dir.join(COMMITTED_FILE)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable committed-index hint");
                None
            }
        };
        // Entries at or below the purge point may have left the disk (tiered); only a committed
        // entry above it must still be in the local log.
        let durable_index_min =
            committed.as_ref().map(|c| c.index()).filter(|c| Some(*c) > last_purged.as_ref().map(|p| p.index()));
        let (wal, report) = Wal::open(&dir.join(LOG_DIR), options, durable_index_min).map_err(to_io)?;
        tracing::info!(dir = %dir.display(), ?report, "raft log recovered");
        Ok(Self {
            inner: Arc::new(Inner {
                wal,
                format,
                dir: dir.to_path_buf(),
                retention,
                facts: Mutex::new(Facts {
                    vote,
                    committed_persisted_index: committed.as_ref().map(|c| c.index()),
                    committed,
                    last_purged,
                }),
                recent: Mutex::new(RecentEntries { entries: VecDeque::new(), bytes: 0 }),
            }),
        })
    }

    /// The WAL underneath, for reading message bodies by log index and for tiering.
    pub fn wal(&self) -> &Wal {
        &self.inner.wal
    }

    /// The last purged log index, if any: entries at or below it are no longer served to Raft.
    pub fn last_purged_index(&self) -> Option<u64> {
        self.inner.facts.lock().last_purged.as_ref().map(|l| l.index())
    }

    /// Which format generation this store writes, and the newest it reads.
    pub fn format(&self) -> &FormatGate {
        &self.inner.format
    }

    /// Drops the decoded copies of recent entries (a group that sleeps: reads after it wakes
    /// go to the log files until new entries come).
    pub fn forget_recent(&self) {
        let mut recent = self.inner.recent.lock();
        recent.entries = VecDeque::new();
        recent.bytes = 0;
    }

    /// Reads and decodes one entry from the local WAL (ignores the purge point).
    pub fn read_entry(&self, index: u64) -> io::Result<Option<EntryOf<C>>>
    where
        EntryOf<C>: Clone,
    {
        if let Some(mut hit) = self.inner.recent.lock().range(index, index + 1) {
            return Ok(hit.pop());
        }
        match self.inner.wal.read(index).map_err(to_io)? {
            Some(bytes) => decode_entry::<C>(&bytes, &self.inner.format).map(Some),
            None => Ok(None),
        }
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<EntryOf<C>>>
    where
        EntryOf<C>: Clone,
    {
        let purged_next = self.last_purged_index().map_or(0, |i| i + 1);
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(purged_next)
        .max(self.inner.wal.first_index().unwrap_or(u64::MAX));
        let Some(last) = self.inner.wal.last_index() else {
            return Ok(Vec::new());
        };
        let end_exclusive = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        }
        .min(last.saturating_add(1));
        if start >= end_exclusive {
            return Ok(Vec::new());
        }
        if let Some(hit) = self.inner.recent.lock().range(start, end_exclusive) {
            return Ok(hit);
        }
        let records = self.inner.wal.read_range(start, end_exclusive).map_err(to_io)?;
        records.iter().map(|(_, bytes)| decode_entry::<C>(bytes, &self.inner.format)).collect()
    }
}

impl<C: PersistedRaftTypes> RaftLogReader<C> for WalLogStore<C>
where
    EntryOf<C>: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        self.entries(range)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.inner.facts.lock().vote)
    }
}

impl<C: PersistedRaftTypes> RaftLogStorage<C> for WalLogStore<C>
where
    EntryOf<C>: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id = self.inner.facts.lock().last_purged;
        let last_in_wal = match self.inner.wal.last_index() {
            Some(index) if Some(index) > last_purged_log_id.as_ref().map(|l| l.index()) => {
                self.read_entry(index)?.map(|e| e.log_id())
            }
            _ => None,
        };
        let last_log_id = last_in_wal.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        write_file_checked(&self.inner.dir.join(VOTE_FILE), &encode_fact(&VoteV1::from(vote))?, true)?;
        self.inner.facts.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let index = committed.as_ref().map(|c| c.index());
        let persist = {
            let mut facts = self.inner.facts.lock();
            facts.committed = committed;
            let due = match (index, facts.committed_persisted_index) {
                (Some(now), Some(before)) => now >= before + COMMITTED_PERSIST_EVERY_ENTRIES,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if due {
                facts.committed_persisted_index = index;
            }
            due
        };
        if persist && let Some(committed) = committed {
            write_file_checked(&self.inner.dir.join(COMMITTED_FILE), &encode_fact(&LogIdV1::from(&committed))?, false)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        // The persisted hint may lag behind the purge point (it is written only now and then);
        // purged entries were applied before they were purged, so the purge point is committed.
        let facts = self.inner.facts.lock();
        let committed_index = facts.committed.as_ref().map(|c| c.index());
        let purged_index = facts.last_purged.as_ref().map(|p| p.index());
        Ok(if committed_index.is_some() && purged_index > committed_index {
            facts.last_purged
        } else {
            facts.committed
        })
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<EntryOf<C>> = entries.into_iter().collect();
        // Read once: the whole batch is written in one generation.
        let generation = self.inner.format.writing();
        let legacy = writes_legacy::<C>(&entries, generation);
        let frame_version = if legacy { LEGACY_FRAME_VERSION } else { RECORD_FORMAT_VERSION };
        let records = entries
            .iter()
            .map(|entry| Ok((entry.index(), Bytes::from(encode_entry::<C>(entry, legacy, generation)?))))
            .collect::<io::Result<Vec<_>>>()?;
        if records.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let sizes: Vec<(u64, usize)> = records.iter().map(|(index, bytes)| (*index, bytes.len())).collect();
        let appended = self.inner.wal.append_in_frame_version(
            records,
            frame_version,
            Box::new(move |result| callback.io_completed(result.map_err(to_io))),
        );
        if let Err(e) = appended {
            return Err(log_write_failed(&self.inner.wal, e));
        }
        // Readable once `append` returned, so cacheable now too.
        let mut recent = self.inner.recent.lock();
        for ((index, bytes), entry) in sizes.into_iter().zip(entries) {
            recent.push(index, bytes, entry);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        self.inner.recent.lock().truncate_from(from);
        self.inner.wal.truncate_from(from).map_err(|e| log_write_failed(&self.inner.wal, e))
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let index = log_id.index();
        write_file_checked(&self.inner.dir.join(PURGED_FILE), &encode_fact(&LogIdV1::from(&log_id))?, true)?;
        self.inner.facts.lock().last_purged = Some(log_id);
        let wal = &self.inner.wal;
        if wal.last_index().is_some_and(|last| last < index) {
            // A snapshot installed from the leader reaches past everything held here: the next
            // append continues after the snapshot, not after our last entry, so the WAL must
            // start afresh. (Bodies of these entries are read from the bucket once the leader has
            // tiered them.) A purge up to exactly the last entry (a local snapshot) keeps the
            // segments: shards remove them only once tiered.
            if let Some(first) = wal.first_index() {
                wal.truncate_from(first).map_err(to_io)?;
            }
        } else if self.inner.retention == SegmentRetention::RemoveOnPurge {
            wal.remove_sealed_through(index).map_err(to_io)?;
        }
        Ok(())
    }
}
