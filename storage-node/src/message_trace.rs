//! Every message's life by id (the message trace): sent (when, by which credential, in which
//! request), each receive, visibility change, take-back, delete, move to another queue (a
//! dead-letter move or a move task), cancel, and the purges of its queue.
//!
//! # What it owns
//!
//! - [`TraceRecord`]s, made by the shard state as it applies commands (see
//!   `ShardState::trace`): derived from the log and the state machine, so every replica makes
//!   the same ones. A message expiring leaves no record: a read says so from the state (the
//!   message is gone with nothing else to explain it).
//! - [`MessageTrace`]: the records not yet written, and their files. Records wait in memory and
//!   are written once a second by the storage node, without fsync (never on the hot path), and
//!   once more, with fsync, before a snapshot of the state is taken: a record of an entry the
//!   snapshot covers is on disk before the log entry may go. A restart replays the log from its
//!   snapshot and makes the records of the entries after it again; a read collapses duplicates.
//!
//! # Files
//!
//! `message-trace/<queue>/<hour>.mtr` in the shard's state directory: the records of a queue's
//! messages sent in that hour (a message's hour comes from its id, whose first 48 bits are its
//! send time; a scheduled message's id carries its delivery time instead; ids without a time,
//! from releases before, share hour 0). A message's records all go to one file, whenever they
//! happen, so reading a trace reads one file. `purges.mtr` holds the queue's purges.
//!
//! A file starts with [`FILE_MAGIC`] and its format version ([`FILE_FORMAT_VERSION`]); then
//! records, each its length (u32 LE), its CRC-32C (u32 LE) and its postcard encoding. A record
//! that does not check (a write cut short by a crash) is passed over; reading resumes at the next
//! record that checks.
//!
//! # Limits
//!
//! Files are kept [`KEPT_HOURS`] after their hour (the longest retention and a day), and the
//! shard's files at most [`SHARD_TRACE_BYTES_MAX`] (the oldest hours go first). At most
//! [`PENDING_RECORDS_MAX`] records wait in memory; records beyond are counted as left out.
//!
//! A replica that joined from another's snapshot holds the records of the entries it applied
//! since, not those before: traces are read from the shard's leader.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::queue::QueueId;
use crate::queue::schedule::deliver_at_of;

/// The first bytes of a trace file.
pub const FILE_MAGIC: &[u8; 4] = b"SMTR";
/// The format version of trace files written by this release.
pub const FILE_FORMAT_VERSION: u8 = 1;
/// Where a shard keeps its traces, inside its state directory.
pub const TRACE_DIR: &str = "message-trace";
/// Hours a trace file is kept after its hour: the longest retention (14 days) and a day.
pub const KEPT_HOURS: u64 = 15 * 24;
/// Most bytes of trace files one shard replica keeps; beyond, the oldest hours go first.
pub const SHARD_TRACE_BYTES_MAX: u64 = 4 << 30;
/// Most records waiting to be written.
pub const PENDING_RECORDS_MAX: usize = 1 << 19;
/// Longest record a file may hold (a record is well under a kilobyte).
const RECORD_BYTES_MAX: u32 = 64 * 1024;
/// The file of a queue's purges.
const PURGES_FILE: &str = "purges.mtr";
const HOUR_MS: u64 = 3_600_000;

/// One thing that happened to a message (or, for [`TraceEvent::Purged`], to its queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The log entry whose apply made it.
    pub log_index: u64,
    /// The entry's time (the shard clock, unix ms).
    pub at_ms: u64,
    /// The message (nil for a queue's purge).
    pub message_id: Uuid,
    pub event: TraceEvent,
}

/// Who made the call behind an event, as the log kept it (empty for calls logged before the
/// cluster kept callers, and for the service's own work).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallBy {
    pub credential: String,
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceEvent {
    /// Entered the queue by a send, as its `seq` (0 for a message scheduled for later, which
    /// gets its seq when due).
    Sent {
        by: CallBy,
        seq: u64,
        deliver_at_ms: Option<u64>,
    },
    /// Received for the `receive_count`th time, invisible until `visible_at_ms`.
    Received {
        by: CallBy,
        receive_count: u32,
        visible_at_ms: u64,
    },
    /// Its visibility timeout changed: visible again at `visible_at_ms`.
    VisibilityChanged {
        by: CallBy,
        visible_at_ms: u64,
    },
    /// A receive whose body could not be read was taken back: visible again at once.
    Returned,
    Deleted {
        by: CallBy,
    },
    /// Moved to queue `to`: a dead-letter move (received too often) or a move task's.
    MovedTo {
        to: QueueId,
        dead_letter: bool,
    },
    /// Arrived from queue `from` as this queue's `seq`.
    ArrivedFrom {
        from: QueueId,
        seq: u64,
        dead_letter: bool,
    },
    /// A scheduled message cancelled before it was due.
    Cancelled {
        by: CallBy,
    },
    /// Its queue was purged: every message in it then was dropped.
    Purged {
        by: CallBy,
    },
}

impl TraceEvent {
    /// The event's name as traces answer it (`sent`, `received`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            TraceEvent::Sent { .. } => "sent",
            TraceEvent::Received { .. } => "received",
            TraceEvent::VisibilityChanged { .. } => "visibility_changed",
            TraceEvent::Returned => "returned",
            TraceEvent::Deleted { .. } => "deleted",
            TraceEvent::MovedTo { .. } => "moved_to",
            TraceEvent::ArrivedFrom { .. } => "arrived_from",
            TraceEvent::Cancelled { .. } => "cancelled",
            TraceEvent::Purged { .. } => "purged",
        }
    }

    /// Who made the call behind the event (none for the service's own work).
    pub fn by(&self) -> Option<&CallBy> {
        match self {
            TraceEvent::Sent { by, .. }
            | TraceEvent::Received { by, .. }
            | TraceEvent::VisibilityChanged { by, .. }
            | TraceEvent::Deleted { by }
            | TraceEvent::Cancelled { by }
            | TraceEvent::Purged { by } => Some(by),
            TraceEvent::Returned | TraceEvent::MovedTo { .. } | TraceEvent::ArrivedFrom { .. } => None,
        }
    }
}

/// A queue's records of a message (as [`MessageTrace::read`] answers them), with only the
/// purges that found it there: after it entered and before it left (deleted, moved, cancelled,
/// or an earlier purge).
pub fn purges_while_held(records: Vec<TraceRecord>, message_id: Uuid) -> Vec<TraceRecord> {
    let mut held = false;
    records
        .into_iter()
        .filter(|record| match record.event {
            TraceEvent::Purged { .. } => std::mem::replace(&mut held, false),
            _ if record.message_id != message_id => false,
            TraceEvent::Sent { .. } | TraceEvent::ArrivedFrom { .. } => {
                held = true;
                true
            }
            TraceEvent::Deleted { .. } | TraceEvent::MovedTo { .. } | TraceEvent::Cancelled { .. } => {
                held = false;
                true
            }
            _ => true,
        })
        .collect()
}

/// The file hour of a message: the hour its id says it was sent (or is due, for a scheduled
/// message); 0 for ids without a time.
pub fn hour_of(message_id: &Uuid) -> u64 {
    let at_ms = match message_id.get_version_num() {
        7 => message_id.get_timestamp().map(|t| {
            let (seconds, nanos) = t.to_unix();
            seconds.saturating_mul(1000) + u64::from(nanos / 1_000_000)
        }),
        _ => deliver_at_of(message_id),
    };
    at_ms.map_or(0, |ms| ms / HOUR_MS)
}

/// A shard's message traces: records waiting to be written and the files they go to. Shared by
/// the clones of a state (a snapshot's copy adds nothing), never persisted with it, ignored by
/// its equality. Records are made only once the files are open.
#[derive(Clone, Default)]
pub struct MessageTrace(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// The directory, once open (read on every apply).
    dir: OnceLock<PathBuf>,
    pending: Mutex<Pending>,
    /// Records encoded for their files whose write failed, by file: written first next time.
    unwritten: Mutex<BTreeMap<FileKey, Vec<u8>>>,
    /// Held from taking records to having written them, so that a sync waits for a write
    /// under way, and a read sees records either waiting or written.
    writing: Mutex<()>,
}

#[derive(Default)]
struct Pending {
    records: Vec<(QueueId, TraceRecord)>,
    left_out: u64,
}

impl PartialEq for MessageTrace {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for MessageTrace {}

impl std::fmt::Debug for MessageTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageTrace")
    }
}

impl MessageTrace {
    /// Starts keeping records, in files under `dir`.
    pub fn open(&self, dir: &Path) -> std::io::Result<()> {
        strata_fs::create_dir_all(dir)?;
        // A state's files open once (a state installed from a snapshot has a trace of its own).
        let _ = self.0.dir.set(dir.to_path_buf());
        Ok(())
    }

    /// Whether records are kept (the files are open).
    pub fn is_open(&self) -> bool {
        self.0.dir.get().is_some()
    }

    /// Keeps `records` of `queue` for writing.
    pub fn add(&self, queue: QueueId, records: impl IntoIterator<Item = TraceRecord>) {
        let mut pending = self.0.pending.lock();
        for record in records {
            if pending.records.len() >= PENDING_RECORDS_MAX {
                pending.left_out += 1;
                continue;
            }
            pending.records.push((queue, record));
        }
    }

    /// Writes the records waiting; with `sync`, fsyncs the files written (and the directories
    /// of new ones). Answers how many records were left out since the last write. Records a
    /// failed write did not write wait for the next one.
    pub fn write(&self, sync: bool) -> std::io::Result<u64> {
        let _writing = self.0.writing.lock();
        let Some(dir) = self.0.dir.get() else { return Ok(0) };
        let Pending { records, left_out } = std::mem::take(&mut *self.0.pending.lock());
        let mut by_file = std::mem::take(&mut *self.0.unwritten.lock());
        for (queue, record) in records {
            let hour = match record.event {
                TraceEvent::Purged { .. } => None,
                _ => Some(hour_of(&record.message_id)),
            };
            encode_record(&record, by_file.entry((queue, hour)).or_default());
        }
        let mut files = by_file.into_iter();
        while let Some((key, bytes)) = files.next() {
            if let Err(e) = write_file(dir, key, &bytes, sync) {
                let mut unwritten = self.0.unwritten.lock();
                unwritten.insert(key, bytes);
                unwritten.extend(files);
                return Err(e);
            }
        }
        Ok(left_out)
    }

    /// The records of `message_id` in `queue`, and the queue's purges, in log order without
    /// duplicates: those written and those waiting.
    pub fn read(&self, queue: QueueId, message_id: Uuid) -> std::io::Result<Vec<TraceRecord>> {
        let _writing = self.0.writing.lock();
        let Some(dir) = self.0.dir.get() else { return Ok(Vec::new()) };
        let queue_dir = dir.join(queue.to_string());
        let wanted = |r: &TraceRecord| r.message_id == message_id || matches!(r.event, TraceEvent::Purged { .. });
        let mut records = Vec::new();
        for hour in [Some(hour_of(&message_id)), None] {
            records.extend(read_file(&queue_dir.join(file_name(hour)))?.into_iter().filter(|r| wanted(r)));
            if let Some(bytes) = self.0.unwritten.lock().get(&(queue, hour)) {
                records.extend(records_in(bytes).into_iter().filter(|r| wanted(r)));
            }
        }
        let pending = self.0.pending.lock();
        records.extend(pending.records.iter().filter(|(q, r)| *q == queue && wanted(r)).map(|(_, r)| r.clone()));
        drop(pending);
        records.sort_by_key(|r| r.log_index);
        records.dedup();
        Ok(records)
    }

    /// Removes the files of hours more than [`KEPT_HOURS`] before `now_ms`, the files of queues
    /// no longer in `live`, and then the oldest hours while the shard's files hold more than
    /// [`SHARD_TRACE_BYTES_MAX`].
    pub fn prune(&self, now_ms: u64, live: &std::collections::BTreeSet<QueueId>) -> std::io::Result<()> {
        let Some(dir) = self.0.dir.get() else { return Ok(()) };
        let oldest_kept = (now_ms / HOUR_MS).saturating_sub(KEPT_HOURS);
        let mut hours: Vec<(u64, PathBuf, u64)> = Vec::new();
        let mut total_bytes = 0;
        for queue_entry in std::fs::read_dir(dir)? {
            let queue_dir = queue_entry?.path();
            let queue = queue_dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<QueueId>().ok());
            if queue.is_none_or(|q| !live.contains(&q)) {
                std::fs::remove_dir_all(&queue_dir)?;
                continue;
            }
            for file in std::fs::read_dir(&queue_dir)? {
                let path = file?.path();
                let hour = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
                let metadata = std::fs::metadata(&path)?;
                let bytes = metadata.len();
                match hour {
                    // Ids without a time (hour 0) are kept like the hour their file last grew.
                    Some(0) => {
                        let modified_ms = metadata
                            .modified()?
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        if modified_ms / HOUR_MS < oldest_kept {
                            std::fs::remove_file(&path)?;
                        } else {
                            total_bytes += bytes;
                        }
                    }
                    Some(hour) if hour < oldest_kept => std::fs::remove_file(&path)?,
                    Some(hour) => {
                        total_bytes += bytes;
                        hours.push((hour, path, bytes));
                    }
                    // The purges file: small, kept with its queue.
                    None => total_bytes += bytes,
                }
            }
        }
        hours.sort();
        for (_, path, bytes) in hours {
            if total_bytes <= SHARD_TRACE_BYTES_MAX {
                break;
            }
            std::fs::remove_file(&path)?;
            total_bytes = total_bytes.saturating_sub(bytes);
        }
        Ok(())
    }
}

/// A trace file: its queue, and its hour (`None`: the queue's purges).
type FileKey = (QueueId, Option<u64>);

/// Appends `record` to `out` as a file holds it: length, CRC-32C, postcard.
fn encode_record(record: &TraceRecord, out: &mut Vec<u8>) {
    // A record of a few strings and numbers always encodes.
    let body = postcard::to_allocvec(record).unwrap_or_default();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Appends encoded records to their file under `dir`, made with its header when new; with
/// `sync`, durably.
fn write_file(dir: &Path, (queue, hour): FileKey, records: &[u8], sync: bool) -> std::io::Result<()> {
    let queue_dir = dir.join(queue.to_string());
    let created_dir = !queue_dir.exists();
    if created_dir {
        strata_fs::create_dir_all(&queue_dir)?;
    }
    let mut file = strata_fs::file_options().create(true).append(true).open(queue_dir.join(file_name(hour)))?;
    let new_file = file.metadata()?.len() == 0;
    let mut out = Vec::with_capacity(records.len() + FILE_MAGIC.len() + 1);
    if new_file {
        out.extend_from_slice(FILE_MAGIC);
        out.push(FILE_FORMAT_VERSION);
    }
    out.extend_from_slice(records);
    file.write_all(&out)?;
    if sync {
        file.sync_data()?;
        if new_file {
            strata_fs::sync_dir(&queue_dir)?;
        }
        if created_dir {
            strata_fs::sync_dir(dir)?;
        }
    }
    Ok(())
}

fn file_name(hour: Option<u64>) -> String {
    hour.map_or_else(|| PURGES_FILE.to_owned(), |h| format!("{h}.mtr"))
}

/// The records of a trace file that check (none when it does not exist).
fn read_file(path: &Path) -> std::io::Result<Vec<TraceRecord>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let header = FILE_MAGIC.len() + 1;
    if bytes.len() < header || &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a trace file", path.display()),
        ));
    }
    if bytes[FILE_MAGIC.len()] != FILE_FORMAT_VERSION {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} has trace file format version {}", path.display(), bytes[FILE_MAGIC.len()]),
        ));
    }
    Ok(records_in(&bytes[header..]))
}

/// The records in `bytes` that check, passing over damaged stretches.
fn records_in(bytes: &[u8]) -> Vec<TraceRecord> {
    let mut records = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        match record_at(&bytes[at..]) {
            Some((record, used)) => {
                records.push(record);
                at += used;
            }
            None => at += 1,
        }
    }
    records
}

/// The record at the start of `bytes` and the bytes it takes, if one checks there.
fn record_at(bytes: &[u8]) -> Option<(TraceRecord, usize)> {
    let length = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if length == 0 || length > RECORD_BYTES_MAX {
        return None;
    }
    let body = bytes.get(8..8 + length as usize)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let record = postcard::from_bytes(body).ok()?;
    Some((record, 8 + length as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(log_index: u64, message_id: Uuid, event: TraceEvent) -> TraceRecord {
        TraceRecord { log_index, at_ms: log_index * 10, message_id, event }
    }

    fn v7(ms: u64, n: u8) -> Uuid {
        uuid::Builder::from_unix_timestamp_millis(ms, &[n; 10]).into_uuid()
    }

    #[test]
    fn records_are_read_back_by_message_once_each_past_a_torn_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trace = MessageTrace::default();
        trace.add(1, [record(1, v7(1, 1), TraceEvent::Returned)]);
        assert!(!trace.is_open());
        trace.open(dir.path()).expect("open");
        let (a, b) = (v7(5 * HOUR_MS + 1, 1), v7(5 * HOUR_MS + 2, 2));
        let by = CallBy { credential: "AKID".into(), request_id: "r1".into() };
        trace.add(1, [record(2, a, TraceEvent::Sent { by: by.clone(), seq: 0, deliver_at_ms: None })]);
        trace.add(1, [record(2, b, TraceEvent::Sent { by: by.clone(), seq: 1, deliver_at_ms: None })]);
        trace.write(false).expect("write");
        // A write cut short, then the same record again (a replay) and a later one.
        let file = dir.path().join("1").join(format!("{}.mtr", 5));
        std::fs::OpenOptions::new().append(true).open(&file).expect("file").write_all(&[9, 0, 0, 0, 1]).expect("torn");
        trace.add(1, [record(2, a, TraceEvent::Sent { by: by.clone(), seq: 0, deliver_at_ms: None })]);
        trace.add(1, [record(3, a, TraceEvent::Deleted { by: by.clone() })]);
        trace.write(true).expect("write");
        trace.add(1, [record(4, Uuid::nil(), TraceEvent::Purged { by: CallBy::default() })]);
        let events: Vec<u64> = trace.read(1, a).expect("read").iter().map(|r| r.log_index).collect();
        assert_eq!(events, [2, 3, 4], "once each, with the queue's purge still waiting");
        assert_eq!(trace.read(1, b).expect("read").len(), 2);
        assert!(trace.read(2, a).expect("read").is_empty(), "another queue's trace is its own");
    }

    #[test]
    fn old_hours_and_deleted_queues_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trace = MessageTrace::default();
        trace.open(dir.path()).expect("open");
        let now_ms = (KEPT_HOURS + 10) * HOUR_MS;
        for (queue, at_ms) in [(1, HOUR_MS), (1, now_ms), (2, now_ms)] {
            trace.add(queue, [record(1, v7(at_ms, 1), TraceEvent::Returned)]);
        }
        trace.write(false).expect("write");
        trace.prune(now_ms, &[1].into_iter().collect()).expect("prune");
        assert!(!dir.path().join("1/1.mtr").exists(), "past its keeping");
        assert!(dir.path().join(format!("1/{}.mtr", now_ms / HOUR_MS)).exists());
        assert!(!dir.path().join("2").exists(), "a deleted queue's traces go with it");
    }

    /// The records of every event kind, as a file of version 1 holds them: pinned by a golden
    /// fixture, and read back.
    #[test]
    fn a_file_of_every_record_kind_matches_its_golden_fixture() {
        let by = || CallBy { credential: "AKIDEXAMPLE".into(), request_id: "req-1".into() };
        let id = Uuid::from_u128(0x0190_a5c3_6f2e_7d41_9b0a_1f2e_3d4c_5b6a);
        let events = [
            TraceEvent::Sent { by: by(), seq: 7, deliver_at_ms: Some(1_767_225_600_000) },
            TraceEvent::Received { by: by(), receive_count: 2, visible_at_ms: 1_767_225_630_000 },
            TraceEvent::VisibilityChanged { by: by(), visible_at_ms: 1_767_225_700_000 },
            TraceEvent::Returned,
            TraceEvent::Deleted { by: by() },
            TraceEvent::MovedTo { to: 12, dead_letter: true },
            TraceEvent::ArrivedFrom { from: 11, seq: 3, dead_letter: false },
            TraceEvent::Cancelled { by: by() },
            TraceEvent::Purged { by: CallBy::default() },
        ];
        let records: Vec<TraceRecord> = (1..).zip(events).map(|(i, event)| record(i, id, event)).collect();
        let mut file = FILE_MAGIC.to_vec();
        file.push(FILE_FORMAT_VERSION);
        for r in &records {
            encode_record(r, &mut file);
        }
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats/shard");
        let stored = strata_common::format::golden::check_bytes(&fixtures, "message-trace-v1.bin", &file);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("trace.mtr"), stored).expect("write");
        assert_eq!(read_file(&dir.path().join("trace.mtr")).expect("read"), records);
    }

    #[test]
    fn a_message_hour_comes_from_its_id() {
        assert_eq!(hour_of(&v7(7 * HOUR_MS + 5, 3)), 7);
        assert_eq!(hour_of(&Uuid::from_u128(42)), 0);
        let scheduled = crate::queue::schedule::scheduled_message_id(9 * HOUR_MS, Uuid::from_u128(1));
        assert_eq!(hour_of(&scheduled), 9);
    }
}
