//! The slice files of a shard's scheduled messages (see `queue::schedule`).
//!
//! # What it owns
//!
//! One append-only file per time slice, `schedule/<slice start ms>.slice`, holding fixed-size
//! 64-byte records in log order (layout in [`encode`]), each with a CRC32C. Applies append
//! records; nothing else writes them. The file of a loaded slice is removed once a stored
//! snapshot no longer counts it ([`SliceFiles::snapshot_stored`]): until then a restart from an
//! older snapshot still needs it.
//!
//! # What it guarantees
//!
//! The files are derived from the log: after a restart they hold exactly the records of the
//! entries up to the snapshot's index ([`SliceFiles::recover`] cuts off the rest, which the
//! replay of the log after the snapshot writes again). For that, records are made durable
//! ([`SliceFiles::sync`]) before a snapshot that covers them is written. A file that holds fewer
//! records than the snapshot counts is a loss of scheduled messages, and recovery refuses to go
//! on rather than drop them silently.
//!
//! Readers outside apply ([`read_slice`]) see a prefix of whole records: a slice that is not
//! frozen may be appended to while they read, and a torn last record is not returned.
//!
//! A snapshot sent to another replica carries the files as they stand at its index ([`export`]);
//! the receiver replaces its own by them ([`import`]) before [`SliceFiles::recover`] checks them
//! against the snapshot's counts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use uuid::Uuid;

use crate::queue::schedule::{ScheduledMessage, SliceRecord, SliceWrite};
use crate::queue::{MessageRef, QueueId};

/// Bytes per record.
pub const RECORD_BYTES: usize = 64;
const KIND_MESSAGE: u8 = 1;
const KIND_CANCEL: u8 = 2;
/// The record layout version this release writes, at byte 3 (see `docs/formats.md`). Records
/// written before versions hold 0 there ([`strata_common::format::LEGACY_FORMAT_VERSION`]), with
/// the same layout.
const RECORD_FORMAT_VERSION: u8 = 1;
/// Append handles kept open; slices beyond it are reopened when written again.
const OPEN_FILES_MAX: usize = 16;

/// Record layout (little-endian): kind (1), slot (2), format version (1), 4 zero bytes, log
/// index (8), queue (8), message id (16), deliver-at ms (8), sent ms (8), 4 zero bytes, CRC32C of
/// bytes 0..60 (4).
/// A cancel has slot, deliver-at and sent set to 0; its log index is the cancel's.
pub fn encode(record: &SliceRecord) -> [u8; RECORD_BYTES] {
    let mut out = [0u8; RECORD_BYTES];
    let (kind, log_index, slot, queue, message_id, deliver_at_ms, sent_ms) = match *record {
        SliceRecord::Message(m) => {
            (KIND_MESSAGE, m.body_ref.log_index, m.body_ref.slot, m.queue, m.message_id, m.deliver_at_ms, m.sent_ms)
        }
        SliceRecord::Cancel { log_index, queue, message_id } => (KIND_CANCEL, log_index, 0, queue, message_id, 0, 0),
    };
    out[0] = kind;
    out[1..3].copy_from_slice(&slot.to_le_bytes());
    out[3] = RECORD_FORMAT_VERSION;
    out[8..16].copy_from_slice(&log_index.to_le_bytes());
    out[16..24].copy_from_slice(&queue.to_le_bytes());
    out[24..40].copy_from_slice(message_id.as_bytes());
    out[40..48].copy_from_slice(&deliver_at_ms.to_le_bytes());
    out[48..56].copy_from_slice(&sent_ms.to_le_bytes());
    let crc = crc32c::crc32c(&out[..60]);
    out[60..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// `None` for a record that is torn, corrupt, or of an unknown kind or version.
pub fn decode(bytes: &[u8; RECORD_BYTES]) -> Option<SliceRecord> {
    if bytes[3] != RECORD_FORMAT_VERSION && bytes[3] != strata_common::format::LEGACY_FORMAT_VERSION {
        return None;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[60..]);
    if crc32c::crc32c(&bytes[..60]) != u32::from_le_bytes(crc) {
        return None;
    }
    let log_index = u64_at(8);
    let queue: QueueId = u64_at(16);
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[24..40]);
    let message_id = Uuid::from_bytes(id);
    match bytes[0] {
        KIND_MESSAGE => Some(SliceRecord::Message(ScheduledMessage {
            queue,
            message_id,
            body_ref: MessageRef { log_index, slot: u16::from_le_bytes([bytes[1], bytes[2]]) },
            deliver_at_ms: u64_at(40),
            sent_ms: u64_at(48),
            body_bytes: 0,
        })),
        KIND_CANCEL => Some(SliceRecord::Cancel { log_index, queue, message_id }),
        _ => None,
    }
}

fn file_name(slice_start_ms: u64) -> String {
    format!("{slice_start_ms:015}.slice")
}

fn slice_of_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".slice")?.parse().ok()
}

/// The whole records of a slice file, in order, stopping at the first torn or corrupt one.
pub fn read_slice(dir: &Path, slice_start_ms: u64) -> io::Result<Vec<SliceRecord>> {
    let mut bytes = Vec::new();
    File::open(dir.join(file_name(slice_start_ms)))?.read_to_end(&mut bytes)?;
    Ok(decode_prefix(&bytes))
}

fn decode_prefix(bytes: &[u8]) -> Vec<SliceRecord> {
    bytes
        .chunks_exact(RECORD_BYTES)
        .map_while(|chunk| chunk.try_into().ok().and_then(|record: &[u8; RECORD_BYTES]| decode(record)))
        .collect()
}

/// Every slice file's records of entries up to `last_index`, for a snapshot at that index sent
/// to another replica: postcard of `(slice start ms, record bytes)` pairs, or nothing when no
/// file holds such a record.
pub fn export(dir: &Path, last_index: u64) -> io::Result<Vec<u8>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut slices: Vec<(u64, Vec<u8>)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(slice_start_ms) = entry.file_name().to_str().and_then(slice_of_file_name) else { continue };
        let mut bytes = match std::fs::read(entry.path()) {
            Ok(bytes) => bytes,
            // Removed since the listing: the snapshot no longer counted it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let kept = decode_prefix(&bytes).iter().take_while(|r| r.log_index() <= last_index).count();
        if kept > 0 {
            bytes.truncate(kept * RECORD_BYTES);
            slices.push((slice_start_ms, bytes));
        }
    }
    if slices.is_empty() {
        return Ok(Vec::new());
    }
    slices.sort_unstable_by_key(|(slice_start_ms, _)| *slice_start_ms);
    postcard::to_allocvec(&slices).map_err(io::Error::other)
}

/// Replaces the slice files in `dir` by what [`export`] produced on another replica, durably.
pub fn import(dir: &Path, exported: &[u8]) -> io::Result<()> {
    let slices: Vec<(u64, Vec<u8>)> = if exported.is_empty() {
        Vec::new()
    } else {
        postcard::from_bytes(exported).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
    };
    strata_wal::private_fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().and_then(slice_of_file_name).is_some() {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (slice_start_ms, bytes) in &slices {
        if bytes.len() % RECORD_BYTES != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a sent slice file holds a partial record"));
        }
        strata_wal::write_file_atomic(&dir.join(file_name(*slice_start_ms)), bytes)?;
    }
    File::open(dir)?.sync_all()
}

/// The slice files of one shard, written by applies.
#[derive(Debug)]
pub struct SliceFiles {
    dir: PathBuf,
    /// Append handles, by slice (a few recent ones).
    open: BTreeMap<u64, File>,
    /// Slices written since the last sync.
    dirty: Mutex<BTreeSet<u64>>,
    /// A file was created since the last sync: the directory needs an fsync too.
    dir_dirty: Mutex<bool>,
    /// Loaded slices whose files go once a snapshot taken after the load is stored.
    loaded: Mutex<Vec<u64>>,
    /// Loaded slices the snapshot being stored no longer counts.
    removable: Mutex<Vec<u64>>,
}

impl SliceFiles {
    /// Opens `dir` and brings its files to exactly what the state at `last_applied` expects:
    /// `expected` is each slice's record count there. Records of later entries are cut off (the
    /// replay writes them again); files of slices the state does not count are removed (loaded
    /// before `last_applied`, or begun after it and written again by the replay).
    pub fn recover(dir: &Path, last_applied: u64, expected: &BTreeMap<u64, u64>) -> io::Result<Self> {
        strata_wal::private_fs::create_dir_all(dir)?;
        let mut seen = BTreeSet::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(slice_start_ms) = name.to_str().and_then(slice_of_file_name) else {
                continue;
            };
            let path = entry.path();
            let Some(&want) = expected.get(&slice_start_ms) else {
                std::fs::remove_file(&path)?;
                continue;
            };
            let bytes = std::fs::read(&path)?;
            let kept = decode_prefix(&bytes).iter().take_while(|r| r.log_index() <= last_applied).count() as u64;
            if kept != want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "slice file {} holds {kept} records up to log index {last_applied}, the snapshot counts \
                         {want}: scheduled messages would be lost",
                        path.display()
                    ),
                ));
            }
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(kept * RECORD_BYTES as u64)?;
            file.sync_all()?;
            seen.insert(slice_start_ms);
        }
        if let Some((slice_start_ms, count)) = expected.iter().find(|(start, _)| !seen.contains(start)) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "slice file {} is missing, the snapshot counts {count} records: scheduled messages would be \
                     lost",
                    dir.join(file_name(*slice_start_ms)).display()
                ),
            ));
        }
        File::open(dir)?.sync_all()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            open: BTreeMap::new(),
            dirty: Mutex::new(BTreeSet::new()),
            dir_dirty: Mutex::new(false),
            loaded: Mutex::new(Vec::new()),
            removable: Mutex::new(Vec::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the writes of one apply (not yet durable: see [`SliceFiles::sync`]).
    pub fn write(&mut self, writes: Vec<SliceWrite>) -> io::Result<()> {
        for write in writes {
            match write {
                SliceWrite::Append { slice_start_ms, record } => {
                    if !self.open.contains_key(&slice_start_ms) {
                        if self.open.len() >= OPEN_FILES_MAX {
                            self.open.pop_first();
                        }
                        let path = self.dir.join(file_name(slice_start_ms));
                        if !path.exists() {
                            *self.dir_dirty.lock() = true;
                        }
                        let file = strata_wal::private_fs::file_options().create(true).append(true).open(path)?;
                        self.open.insert(slice_start_ms, file);
                    }
                    if let Some(file) = self.open.get_mut(&slice_start_ms) {
                        file.write_all(&encode(&record))?;
                    }
                    self.dirty.lock().insert(slice_start_ms);
                }
                SliceWrite::Remove { slice_start_ms } => {
                    self.open.remove(&slice_start_ms);
                    self.loaded.lock().push(slice_start_ms);
                }
            }
        }
        Ok(())
    }

    /// Makes every record written so far durable: called, with applies held off, right before
    /// the state is encoded for a snapshot.
    pub fn sync(&self) -> io::Result<()> {
        self.removable.lock().append(&mut self.loaded.lock());
        let dirty = std::mem::take(&mut *self.dirty.lock());
        for slice_start_ms in dirty {
            File::open(self.dir.join(file_name(slice_start_ms)))?.sync_all()?;
        }
        if std::mem::take(&mut *self.dir_dirty.lock()) {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The snapshot encoded after the last [`SliceFiles::sync`] is stored: the files of the
    /// slices loaded before it are no longer needed.
    pub fn snapshot_stored(&self) -> io::Result<()> {
        let removable = std::mem::take(&mut *self.removable.lock());
        for slice_start_ms in &removable {
            match std::fs::remove_file(self.dir.join(file_name(*slice_start_ms))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if !removable.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(log_index: u64, deliver_at_ms: u64) -> SliceRecord {
        SliceRecord::Message(ScheduledMessage {
            queue: 7,
            message_id: strata_common::Random::os().uuid(),
            body_ref: MessageRef { log_index, slot: 3 },
            deliver_at_ms,
            sent_ms: 11,
            body_bytes: 0,
        })
    }

    /// Golden fixtures (see `docs/formats.md`): the record layout this release writes, and a
    /// record written before versions, still read.
    #[test]
    fn records_match_their_golden_fixtures() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats/shard");
        let message = SliceRecord::Message(ScheduledMessage {
            queue: 7,
            message_id: Uuid::from_bytes([9; 16]),
            body_ref: MessageRef { log_index: 5, slot: 3 },
            deliver_at_ms: 1_800_000_000_000,
            sent_ms: 1_796_569_000_000,
            body_bytes: 0,
        });
        let cancel = SliceRecord::Cancel { log_index: 9, queue: 7, message_id: Uuid::from_bytes([9; 16]) };
        for (name, record) in [("slice-message", message), ("slice-cancel", cancel)] {
            let stored = strata_common::format::golden::check_bytes(&dir, &format!("{name}-v1.bin"), &encode(&record));
            let stored: [u8; RECORD_BYTES] = stored.try_into().expect("one record");
            assert_eq!(decode(&stored), Some(record));
            // The legacy record: version 0, CRC over it.
            let mut legacy = stored;
            legacy[3] = 0;
            let crc = crc32c::crc32c(&legacy[..60]);
            legacy[60..].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode(&legacy), Some(record), "{name} written before versions");
            let mut unknown = stored;
            unknown[3] = 2;
            let crc = crc32c::crc32c(&unknown[..60]);
            unknown[60..].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode(&unknown), None, "{name} of a later version");
        }
    }

    #[test]
    fn records_round_trip_and_corruption_is_detected() {
        let cancel = SliceRecord::Cancel { log_index: 9, queue: 7, message_id: strata_common::Random::os().uuid() };
        for record in [message(5, 1_800_000_000_000), cancel] {
            let mut bytes = encode(&record);
            assert_eq!(decode(&bytes), Some(record));
            bytes[30] ^= 1;
            assert_eq!(decode(&bytes), None);
        }
    }

    #[test]
    fn recovery_cuts_records_after_the_snapshot_and_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = SliceFiles::recover(dir.path(), 0, &BTreeMap::new()).expect("open empty");
        let writes = (1..=4).map(|i| SliceWrite::Append { slice_start_ms: 600_000, record: message(i, 600_001) });
        files.write(writes.collect()).expect("append");
        files.sync().expect("sync");
        // Half a record at the end, as a crash mid-write leaves it.
        let path = dir.path().join(file_name(600_000));
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&[1u8; 20]).expect("write torn tail");
        drop(files);

        let expected = BTreeMap::from([(600_000, 2)]);
        let files = SliceFiles::recover(dir.path(), 2, &expected).expect("recover");
        let records = read_slice(files.dir(), 600_000).expect("read");
        assert_eq!(records.iter().map(SliceRecord::log_index).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn recovery_refuses_a_file_with_fewer_records_than_the_snapshot_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = SliceFiles::recover(dir.path(), 0, &BTreeMap::new()).expect("open empty");
        files.write(vec![SliceWrite::Append { slice_start_ms: 0, record: message(1, 5) }]).expect("append");
        drop(files);
        let error = SliceFiles::recover(dir.path(), 10, &BTreeMap::from([(0, 2)])).expect_err("must refuse");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let error = SliceFiles::recover(dir.path(), 10, &BTreeMap::from([(0, 1), (600_000, 1)])).expect_err("missing");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn an_export_holds_the_records_up_to_its_index_and_an_import_replaces_the_files() {
        let from = tempfile::tempdir().expect("tempdir");
        let mut files = SliceFiles::recover(from.path(), 0, &BTreeMap::new()).expect("open");
        let records = [(0, 3), (0, 5), (600_000, 6), (0, 9)]
            .map(|(slice_start_ms, log_index)| (slice_start_ms, message(log_index, slice_start_ms + 1)));
        let appends = records.iter().map(|&(slice_start_ms, record)| SliceWrite::Append { slice_start_ms, record });
        files.write(appends.collect()).expect("write");
        files.sync().expect("sync");

        // At index 5 only slice 0's first two records count; slice 600000 starts later.
        let exported = export(from.path(), 5).expect("export");
        let to = tempfile::tempdir().expect("tempdir");
        std::fs::write(to.path().join(file_name(1_200_000)), encode(&message(1, 1_200_001))).expect("stale file");
        import(to.path(), &exported).expect("import");
        SliceFiles::recover(to.path(), 5, &BTreeMap::from([(0, 2)])).expect("recover what was sent");
        assert_eq!(read_slice(to.path(), 0).expect("slice 0"), [records[0].1, records[1].1]);
        assert!(!to.path().join(file_name(600_000)).exists());
        assert!(!to.path().join(file_name(1_200_000)).exists(), "the receiver's own files are replaced");

        assert!(export(from.path(), 2).expect("export").is_empty(), "nothing up to index 2");
        assert!(import(to.path(), b"not postcard of slices").is_err());
    }

    #[test]
    fn recovery_removes_files_the_state_no_longer_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = SliceFiles::recover(dir.path(), 0, &BTreeMap::new()).expect("open empty");
        files.write(vec![SliceWrite::Append { slice_start_ms: 0, record: message(8, 5) }]).expect("append");
        drop(files);
        // The snapshot is at index 7: the record at 8 is replayed later.
        SliceFiles::recover(dir.path(), 7, &BTreeMap::new()).expect("recover");
        assert!(!dir.path().join(file_name(0)).exists());
    }
}
