//! Per-queue metrics for tenants, like CloudWatch's for SQS: per minute, the messages sent,
//! received and deleted, the receives that found nothing, the messages moved to the dead-letter
//! queue, and the bytes in and out; with the queue's depth (visible, in flight, delayed) and the
//! age of its oldest message as of that minute. Kept at one-minute resolution for
//! [`RETENTION_DAYS`] days.
//!
//! **Where the figures come from.** Every replica counts the commands it applies
//! ([`Activity`], filled by the state machine, not part of the replicated state), so a replica
//! that applied the same log holds the same counts, and a new leader answers as the old one did
//! for everything logged. Receives that found nothing never reach the log: the leader counts
//! them as it answers, so another leader does not know the ones counted before it led. A replica
//! brought up to date by a snapshot (a new or moved replica) lacks the minutes the snapshot
//! covered, and counts not yet written when a state is replaced by a snapshot are lost.
//!
//! **Where they are kept.** A shard replica's task writes the counts down every
//! [`FLUSH_INTERVAL`] into [`MetricsStore`]: one file per queue and day with a slot per minute,
//! created only for a day the queue had activity, so an idle queue costs nothing and a busy one at
//! most [`DAY_FILE_BYTES`] a day. Each slot remembers the last log index it counted, so the
//! commands a restart applies again are not counted twice (and those applied since the last
//! snapshot and not yet written are counted when applied again). Writes are not fsynced: a
//! process crash loses at most the last second's counts not in the log; a machine crash may lose
//! the last minutes, and a damaged day file is set aside (`.damaged`) and started anew.
//!
//! **Format** (little-endian), version [`FORMAT_VERSION`]: a 16-byte header (the magic
//! `SQMD`, the version as u16, 10 bytes zero), then 1440 slots of [`SLOT_WORDS`] u64 each:
//! the last log index counted, flags (bit 0: the gauges are set), the seven counts of [`Counts`]
//! in field order, the four gauges of [`Gauges`] in field order.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::queue::QueueId;

/// How often a replica writes its counts down.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long minutes are kept.
pub const RETENTION_DAYS: u64 = 15;
pub const MINUTE_MS: u64 = 60_000;
const MINUTES_PER_DAY: u64 = 1_440;
const DAY_MS: u64 = MINUTE_MS * MINUTES_PER_DAY;
/// Most minutes one read answers (the whole retention).
pub const READ_MINUTES_MAX: u64 = RETENTION_DAYS * MINUTES_PER_DAY;
/// Counts waiting to be written down, at most; more are dropped (and counted in the log), which
/// happens only while the disk refuses the writes.
const PENDING_DELTAS_MAX: usize = 500_000;

pub const FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"SQMD";
const HEADER_BYTES: u64 = 16;
/// Words (u64) of one minute's slot.
pub const SLOT_WORDS: usize = 13;
const SLOT_BYTES: u64 = SLOT_WORDS as u64 * 8;
/// Bytes of one queue's day.
pub const DAY_FILE_BYTES: u64 = HEADER_BYTES + MINUTES_PER_DAY * SLOT_BYTES;
const GAUGES_SET: u64 = 1;

/// What happened to a queue in a minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    /// Messages delivered.
    pub received: u64,
    pub deleted: u64,
    /// Receives that delivered nothing.
    pub empty_receives: u64,
    pub moved_to_dead_letter: u64,
    /// Bytes of the messages sent (bodies and attributes).
    pub bytes_in: u64,
    /// Bytes of the messages delivered.
    pub bytes_out: u64,
}

impl Counts {
    fn words(&self) -> [u64; 7] {
        [
            self.sent,
            self.received,
            self.deleted,
            self.empty_receives,
            self.moved_to_dead_letter,
            self.bytes_in,
            self.bytes_out,
        ]
    }

    fn from_words(w: &[u64]) -> Self {
        Self {
            sent: w[0],
            received: w[1],
            deleted: w[2],
            empty_receives: w[3],
            moved_to_dead_letter: w[4],
            bytes_in: w[5],
            bytes_out: w[6],
        }
    }

    fn add(&mut self, other: &Counts) {
        let mut sum = self.words();
        for (word, more) in sum.iter_mut().zip(other.words()) {
            *word = word.saturating_add(more);
        }
        *self = Self::from_words(&sum);
    }

    pub fn is_zero(&self) -> bool {
        self.words().iter().all(|w| *w == 0)
    }
}

/// A queue's depth at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    /// Seconds since the oldest message entered the queue (0 when empty).
    pub oldest_age_s: u64,
}

/// One minute of a queue, as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub counts: Counts,
    /// The depth as of the minute's last write, if one was made.
    pub gauges: Option<Gauges>,
}

/// Counts of one applied command (or, with log index 0, of a receive that never reached the
/// log) for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub log_index: u64,
    pub queue: QueueId,
    pub minute: u64,
    pub counts: Counts,
}

/// Counts of applied commands not yet written down, in log order. Shared by the clones of a
/// state (a snapshot's copy does not count), never persisted, ignored by equality.
#[derive(Clone, Default)]
pub struct Activity(Arc<Mutex<Pending>>);

#[derive(Default)]
struct Pending {
    deltas: Vec<Delta>,
    dropped: u64,
}

impl PartialEq for Activity {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Activity {}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Activity")
    }
}

impl Activity {
    /// Counts `counts` for `queue` in the minute of `now_ms`, from the command at `log_index`.
    pub fn record(&self, log_index: u64, queue: QueueId, now_ms: u64, counts: Counts) {
        if counts.is_zero() {
            return;
        }
        let mut pending = self.0.lock();
        if pending.deltas.len() >= PENDING_DELTAS_MAX {
            pending.dropped += 1;
            return;
        }
        pending.deltas.push(Delta { log_index, queue, minute: now_ms / MINUTE_MS, counts });
    }

    /// The counts recorded since the last call, and how many were dropped meanwhile.
    pub fn take(&self) -> (Vec<Delta>, u64) {
        let mut pending = self.0.lock();
        (std::mem::take(&mut pending.deltas), std::mem::take(&mut pending.dropped))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The one thread of the process that does the stores' file work. A long-lived thread rather
/// than the runtime's blocking pool: a task handed to that pool every second keeps starting
/// threads, and each new thread's allocations cost the process resident memory that stays.
static IO_THREAD: std::sync::LazyLock<Option<Mutex<std::sync::mpsc::Sender<Job>>>> = std::sync::LazyLock::new(|| {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new().name("queue-metrics-io".to_owned()).spawn(move || {
        while let Ok(job) = queue.recv() {
            job();
        }
    });
    match spawned {
        Ok(_) => Some(Mutex::new(jobs)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the queue metrics thread: queue metrics are not kept");
            None
        }
    }
});

/// Runs `work` on the queue metrics thread and answers its result; `None` if that thread is
/// gone or could not start.
pub async fn on_io_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = answer.send(work());
    });
    IO_THREAD.as_ref()?.lock().send(job).ok()?;
    answered.await.ok()
}

/// One shard replica's per-queue minutes, in `dir`.
pub struct MetricsStore {
    dir: PathBuf,
}

fn day_of(minute: u64) -> u64 {
    minute / MINUTES_PER_DAY
}

fn slot_offset(minute: u64) -> u64 {
    HEADER_BYTES + (minute % MINUTES_PER_DAY) * SLOT_BYTES
}

fn slot_words(bytes: &[u8]) -> [u64; SLOT_WORDS] {
    let mut words = [0u64; SLOT_WORDS];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    }
    words
}

fn read_slot(file: &File, minute: u64) -> std::io::Result<[u64; SLOT_WORDS]> {
    let mut bytes = [0u8; SLOT_BYTES as usize];
    file.read_exact_at(&mut bytes, slot_offset(minute))?;
    Ok(slot_words(&bytes))
}

fn write_slot(file: &File, minute: u64, words: &[u64; SLOT_WORDS]) -> std::io::Result<()> {
    let mut bytes = [0u8; SLOT_BYTES as usize];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    file.write_all_at(&bytes, slot_offset(minute))
}

fn header() -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..4].copy_from_slice(MAGIC);
    header[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Checks a day file: its length, its magic and a version this release reads (a newer version is
/// refused as `Unsupported`, never set aside: a later release wrote it).
fn check_day_file(file: &mut File, path: &Path) -> std::io::Result<()> {
    let damaged = |what: &str| std::io::Error::new(ErrorKind::InvalidData, format!("{}: {what}", path.display()));
    if file.metadata()?.len() != DAY_FILE_BYTES {
        return Err(damaged("not the length of a day"));
    }
    let mut found = [0u8; HEADER_BYTES as usize];
    file.read_exact(&mut found)?;
    let version = u16::from_le_bytes([found[4], found[5]]);
    if &found[..4] != MAGIC || version == 0 {
        return Err(damaged("not a queue metrics file"));
    }
    if version > FORMAT_VERSION {
        return Err(std::io::Error::new(
            ErrorKind::Unsupported,
            format!("{} is of version {version}; this release reads 1-{FORMAT_VERSION}", path.display()),
        ));
    }
    Ok(())
}

impl MetricsStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn day_path(&self, queue: QueueId, day: u64) -> PathBuf {
        self.dir.join(queue.to_string()).join(format!("{day}.min"))
    }

    /// The day file, created (sized, with its header, under a temporary name first, so that a
    /// crash leaves no half-made file) when `create`; `None` if absent. A damaged file (short, or
    /// not of this format) is set aside with a warning and, when `create`, started anew.
    fn open_day(&self, queue: QueueId, day: u64, create: bool) -> std::io::Result<Option<File>> {
        let path = self.day_path(queue, day);
        match OpenOptions::new().read(true).write(create).open(&path) {
            Ok(mut file) => match check_day_file(&mut file, &path) {
                Ok(()) => return Ok(Some(file)),
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    tracing::warn!(file = %path.display(), error = %e, "queue metrics file damaged; set aside");
                    std::fs::rename(&path, path.with_extension("min.damaged"))?;
                }
                Err(e) => return Err(e),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !create {
            return Ok(None);
        }
        if let Some(parent) = path.parent() {
            strata_wal::private_fs::create_dir_all(parent)?;
        }
        let fresh = path.with_extension("min.new");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&fresh)?;
        file.write_all_at(&header(), 0)?;
        file.set_len(DAY_FILE_BYTES)?;
        std::fs::rename(&fresh, &path)?;
        Ok(Some(file))
    }

    /// Adds `deltas` (in log order) to their minutes, passing over those a slot counted already
    /// (a command applied again after a restart); then sets `gauges` of each queue they name
    /// in `gauges_minute`.
    pub fn write(
        &self,
        deltas: &[Delta],
        gauges: &BTreeMap<QueueId, Gauges>,
        gauges_minute: u64,
    ) -> std::io::Result<()> {
        let mut by_slot: BTreeMap<(QueueId, u64), Vec<&Delta>> = BTreeMap::new();
        for delta in deltas {
            by_slot.entry((delta.queue, delta.minute)).or_default().push(delta);
        }
        for &queue in gauges.keys() {
            by_slot.entry((queue, gauges_minute)).or_default();
        }
        let mut files: BTreeMap<(QueueId, u64), File> = BTreeMap::new();
        for ((queue, minute), deltas) in by_slot {
            let key = (queue, day_of(minute));
            let file = match files.entry(key) {
                std::collections::btree_map::Entry::Occupied(file) => file.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => match self.open_day(queue, key.1, true)? {
                    Some(file) => slot.insert(file),
                    None => continue,
                },
            };
            let mut words = read_slot(file, minute)?;
            let counted_through = words[0];
            let mut counts = Counts::from_words(&words[2..9]);
            for delta in deltas {
                // Log index 0: a receive that never reached the log, never applied again.
                if delta.log_index == 0 || delta.log_index > counted_through {
                    counts.add(&delta.counts);
                    words[0] = words[0].max(delta.log_index);
                }
            }
            words[2..9].copy_from_slice(&counts.words());
            if minute == gauges_minute
                && let Some(g) = gauges.get(&queue)
            {
                words[1] |= GAUGES_SET;
                words[9..13].copy_from_slice(&[g.visible, g.in_flight, g.delayed, g.oldest_age_s]);
            }
            write_slot(file, minute, &words)?;
        }
        Ok(())
    }

    /// The minutes of `queue` from `from_minute` to `to_minute` (inclusive) that hold anything.
    pub fn read(&self, queue: QueueId, from_minute: u64, to_minute: u64) -> std::io::Result<Vec<Minute>> {
        let mut minutes = Vec::new();
        let to_minute = to_minute.min(from_minute.saturating_add(READ_MINUTES_MAX - 1));
        for day in day_of(from_minute)..=day_of(to_minute) {
            let Some(file) = self.open_day(queue, day, false)? else { continue };
            let first = from_minute.max(day * MINUTES_PER_DAY);
            let last = to_minute.min(day * MINUTES_PER_DAY + MINUTES_PER_DAY - 1);
            let mut bytes = vec![0u8; ((last - first + 1) * SLOT_BYTES) as usize];
            file.read_exact_at(&mut bytes, slot_offset(first))?;
            for (minute, slot) in (first..=last).zip(bytes.chunks_exact(SLOT_BYTES as usize)) {
                let words = slot_words(slot);
                let counts = Counts::from_words(&words[2..9]);
                let gauges = (words[1] & GAUGES_SET != 0).then(|| Gauges {
                    visible: words[9],
                    in_flight: words[10],
                    delayed: words[11],
                    oldest_age_s: words[12],
                });
                if !counts.is_zero() || gauges.is_some() {
                    minutes.push(Minute { minute, counts, gauges });
                }
            }
        }
        Ok(minutes)
    }

    /// Removes the days older than the retention as of `now_ms`, and every day of the queues
    /// `exists` says are gone. Answers how many files it removed.
    pub fn prune(&self, now_ms: u64, exists: impl Fn(QueueId) -> bool) -> std::io::Result<usize> {
        let oldest_day = (now_ms / DAY_MS).saturating_sub(RETENTION_DAYS);
        let mut removed = 0;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(queue) = entry.file_name().to_str().and_then(|n| n.parse::<QueueId>().ok()) else { continue };
            if !exists(queue) {
                removed += std::fs::read_dir(entry.path())?.count();
                std::fs::remove_dir_all(entry.path())?;
                continue;
            }
            for day_file in std::fs::read_dir(entry.path())? {
                let day_file = day_file?;
                let day = day_file.file_name().to_str().and_then(|n| n.strip_suffix(".min")?.parse::<u64>().ok());
                if day.is_some_and(|day| day < oldest_day) {
                    std::fs::remove_file(day_file.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(n: u64) -> Counts {
        Counts { sent: n, bytes_in: 10 * n, ..Counts::default() }
    }

    #[test]
    fn minutes_add_up_and_a_replayed_command_counts_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetricsStore::new(dir.path().to_owned());
        let activity = Activity::default();
        let minute_ms = 29_000_000 * MINUTE_MS;
        activity.record(10, 7, minute_ms + 1_000, sent(2));
        activity.record(11, 7, minute_ms + 2_000, sent(1));
        activity.record(0, 7, minute_ms + 3_000, Counts { empty_receives: 1, ..Counts::default() });
        activity.record(12, 7, minute_ms + MINUTE_MS, Counts { received: 3, bytes_out: 30, ..Counts::default() });
        let (deltas, dropped) = activity.take();
        assert_eq!((deltas.len(), dropped), (4, 0));
        let depth = Gauges { visible: 3, in_flight: 0, delayed: 0, oldest_age_s: 61 };
        store.write(&deltas, &BTreeMap::from([(7, depth)]), minute_ms / MINUTE_MS + 1).expect("write");
        // A restart applies 11 and 12 again, then 13 is new.
        let replayed = [
            Delta { log_index: 11, queue: 7, minute: minute_ms / MINUTE_MS, counts: sent(1) },
            Delta { log_index: 13, queue: 7, minute: minute_ms / MINUTE_MS, counts: sent(5) },
        ];
        store.write(&replayed, &BTreeMap::new(), 0).expect("write again");
        let minutes = store.read(7, minute_ms / MINUTE_MS - 5, minute_ms / MINUTE_MS + 5).expect("read");
        assert_eq!(minutes.len(), 2, "{minutes:?}");
        assert_eq!(minutes[0].counts, Counts { sent: 8, bytes_in: 80, empty_receives: 1, ..Counts::default() });
        assert_eq!(minutes[0].gauges, None);
        assert_eq!(minutes[1].counts, Counts { received: 3, bytes_out: 30, ..Counts::default() });
        assert_eq!(minutes[1].gauges, Some(depth));
        assert!(store.read(8, 0, u64::MAX / 2).expect("another queue").is_empty(), "queues keep apart");
    }

    #[test]
    fn old_days_and_deleted_queues_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetricsStore::new(dir.path().to_owned());
        let today_ms = 20_000 * DAY_MS;
        let at = |queue, ms: u64| Delta { log_index: 1, queue, minute: ms / MINUTE_MS, counts: sent(1) };
        let old = today_ms - (RETENTION_DAYS + 1) * DAY_MS;
        store.write(&[at(1, old), at(1, today_ms), at(2, today_ms)], &BTreeMap::new(), 0).expect("write");
        assert_eq!(store.prune(today_ms, |queue| queue == 1).expect("prune"), 2);
        assert!(!dir.path().join("1").join(format!("{}.min", old / DAY_MS)).exists(), "the old day is gone");
        assert_eq!(store.read(1, today_ms / MINUTE_MS, today_ms / MINUTE_MS).expect("read").len(), 1);
        assert!(!dir.path().join("2").exists());
    }

    #[test]
    fn a_file_of_a_newer_format_is_refused_not_misread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetricsStore::new(dir.path().to_owned());
        store
            .write(&[Delta { log_index: 1, queue: 3, minute: 5, counts: sent(1) }], &BTreeMap::new(), 0)
            .expect("write");
        let path = dir.path().join("3").join("0.min");
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&(FORMAT_VERSION + 1).to_le_bytes(), 4).expect("bump the version");
        let error = store.read(3, 0, 10).expect_err("a newer version");
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert!(path.exists(), "a newer release's file is kept");
    }

    #[test]
    fn a_damaged_day_is_set_aside_and_started_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetricsStore::new(dir.path().to_owned());
        let at = |log_index| Delta { log_index, queue: 3, minute: 5, counts: sent(1) };
        store.write(&[at(1)], &BTreeMap::new(), 0).expect("write");
        let path = dir.path().join("3").join("0.min");
        OpenOptions::new().write(true).open(&path).expect("open").set_len(100).expect("cut short");
        assert!(store.read(3, 0, 10).expect("a damaged day reads as empty").is_empty());
        assert!(path.with_extension("min.damaged").exists());
        store.write(&[at(2)], &BTreeMap::new(), 0).expect("write again");
        assert_eq!(store.read(3, 0, 10).expect("read").first().map(|m| m.counts.sent), Some(1));
    }
}
