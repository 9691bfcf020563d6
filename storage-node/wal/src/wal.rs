//! The [`Wal`]: appends, group commit, reads, truncation and segment lifecycle.
//!
//! # Concurrency design
//!
//! - `state` (mutex): the segment list with every record's position. Appends encode outside
//!   the lock, then write the whole batch with one positioned `write_all` under it, so batches
//!   are never interleaved and never split across segments.
//! - `layout` (rw-lock): held shared by reads for the duration of their file I/O and
//!   exclusively by [`Wal::truncate_from`], so a read never sees a file cut under it. Appends
//!   and segment removal do not need it (they never change bytes a read may be reading;
//!   removed files stay readable through open handles).
//! - `queue` (mutex + condvar): `on_durable` callbacks waiting for an fdatasync. Callbacks are
//!   queued under the state lock after their write, so anything queued was written before the
//!   sync thread takes it.
//! - `fsync_lock`: serialises every fsync of segment files and the directory with the poison
//!   flag, so that after one failed fsync no later fsync can report success for pages the
//!   failure lost.
//!
//! Lock order: `layout` → `state` → `queue` / `fsync_lock`. The sync thread never holds two.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::atomic_file::sync_dir;
use crate::error::{CorruptionReason, WalError};
use crate::format::{
    RECORD_FORMAT_VERSION, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES, decode_record, encode_record_version_into,
    encode_segment_header, record_frame_len, segment_file_name, versioned_payload,
};
use crate::recovery::{RecoveryReport, recover};
use crate::segment::{RecordPos, Segment, SegmentInfo};

/// Default [`WalOptions::segment_size_bytes_max`]: 64 MiB keeps recovery scans and tiering
/// uploads of one segment short while making rolls (two fsyncs each) rare.
pub const SEGMENT_SIZE_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Name of the lock file that keeps two `Wal`s from opening the same directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Name of the group-commit thread of every `Wal`.
pub const SYNC_THREAD_NAME: &str = "wal-sync";

/// Callback of [`Wal::append`], told whether the appended records are durable.
pub type DurableCallback = Box<dyn FnOnce(Result<(), WalError>) + Send + 'static>;

/// Test seam: called instead of `File::sync_data` for group commits.
#[doc(hidden)]
pub type SyncHook = Arc<dyn Fn(&File) -> io::Result<()> + Send + Sync>;

/// What to do when an fsync/fdatasync fails. A failed fsync may have dropped dirty pages
/// without a trace, so it is never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncFailure {
    /// Log with `tracing::error!` and abort the process; the WAL is recovered from disk on
    /// restart. The only safe choice in production.
    #[default]
    Abort,
    /// Fail the callbacks waiting for that sync with the error and make every later call
    /// return [`WalError::Poisoned`] (for tests).
    Poison,
}

/// Options of [`Wal::open`].
#[derive(Clone)]
pub struct WalOptions {
    /// A segment is sealed, and a new one started, when an append would take the active
    /// segment past this size. A non-empty batch always goes to one segment, so a segment may
    /// exceed this by one batch when that batch alone is larger. Must exceed the 20-byte
    /// segment header.
    pub segment_size_bytes_max: u64,
    /// Reaction to a failed fsync.
    pub on_fsync_error: FsyncFailure,
    /// Test seam: when set, group commits call this instead of `File::sync_data` on the
    /// active segment file (to block syncs or inject errors). Other fsyncs are unaffected.
    #[doc(hidden)]
    pub sync_hook: Option<SyncHook>,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size_bytes_max: SEGMENT_SIZE_BYTES_MAX_DEFAULT,
            on_fsync_error: FsyncFailure::default(),
            sync_hook: None,
        }
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_size_bytes_max", &self.segment_size_bytes_max)
            .field("on_fsync_error", &self.on_fsync_error)
            .field("sync_hook", &self.sync_hook.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

/// Counters since [`Wal::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalStats {
    /// Successful [`Wal::append`] calls.
    pub appends: u64,
    /// Records appended.
    pub records: u64,
    /// Record frame bytes written to segment files (headers of segment files excluded).
    pub bytes_written: u64,
    /// fsync/fdatasync calls issued on segment files and the directory (group commits, segment
    /// creation and rolls, seals, truncation, removal).
    pub fsyncs: u64,
    /// Of `fsyncs`, the fdatasyncs issued by the sync thread, each acknowledging every append
    /// queued before it started.
    pub group_commits: u64,
}

#[derive(Default)]
struct StatsCounters {
    appends: AtomicU64,
    records: AtomicU64,
    bytes_written: AtomicU64,
    fsyncs: AtomicU64,
    group_commits: AtomicU64,
}

struct State {
    /// Ordered by index; all but the last are sealed; each holds at least one record (a new
    /// segment is empty only while its first batch is being written, under this lock).
    segments: Vec<Segment>,
    closed: bool,
}

impl State {
    fn first_index(&self) -> Option<u64> {
        self.segments.first().map(|s| s.first_index)
    }

    fn last_index(&self) -> Option<u64> {
        self.segments.last().and_then(Segment::last_index)
    }

    /// Segment position and record position of `index`, if stored.
    fn locate(&self, index: u64) -> Option<(usize, RecordPos)> {
        let position = self.segments.partition_point(|s| s.first_index <= index).checked_sub(1)?;
        let segment = &self.segments[position];
        let slot = usize::try_from(index - segment.first_index).ok()?;
        segment.records.get(slot).map(|pos| (position, *pos))
    }
}

#[derive(Default)]
struct SyncQueue {
    pending: Vec<DurableCallback>,
    closing: bool,
}

/// Where the appended bytes of a batch go, relative to the start of the encoded buffer.
struct EncodedBatch {
    first_index: u64,
    bytes: Vec<u8>,
    frames: Vec<RecordPos>,
}

struct Shared {
    dir: PathBuf,
    options: WalOptions,
    state: Mutex<State>,
    layout: RwLock<()>,
    queue: Mutex<SyncQueue>,
    queue_cv: Condvar,
    fsync_lock: Mutex<()>,
    poisoned: AtomicBool,
    stats: StatsCounters,
    /// Held (locked) until close.
    lock_file: Mutex<Option<File>>,
}

/// Which fsync to issue.
#[derive(Clone, Copy)]
enum SyncKind {
    /// Group commit: `sync_data`, or the test hook.
    GroupCommit,
    /// `sync_all` (segment creation, roll, seal, truncation).
    Full,
}

impl Shared {
    fn check_usable(&self, state: &State) -> Result<(), WalError> {
        if state.closed {
            return Err(WalError::Closed);
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    /// Reports a failed fsync: aborts the process or poisons the WAL, per options. Must be
    /// called with `fsync_lock` held so no other fsync reports success in between.
    fn fsync_failed(&self, op: &'static str, path: &Path, err: io::Error) -> WalError {
        match self.options.on_fsync_error {
            FsyncFailure::Abort => {
                tracing::error!(
                    op,
                    path = %path.display(),
                    error = %err,
                    "WAL fsync failed; aborting the process (data durability is unknown)"
                );
                std::process::abort();
            }
            FsyncFailure::Poison => {
                tracing::error!(op, path = %path.display(), error = %err, "WAL fsync failed; poisoning the WAL");
                self.poisoned.store(true, Ordering::Release);
                WalError::io(op, path, err)
            }
        }
    }

    /// fsyncs one segment file. Fails with `Poisoned` (without syncing) if an earlier fsync
    /// failed, or if one fails concurrently: success is reported only when no fsync failure
    /// happened before this one completed.
    fn fsync_file(&self, file: &File, path: &Path, kind: SyncKind) -> Result<(), WalError> {
        let _serialised = self.fsync_lock.lock();
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WalError::Poisoned);
        }
        let (op, result) = match (kind, &self.options.sync_hook) {
            (SyncKind::GroupCommit, Some(hook)) => ("fdatasync", hook(file)),
            (SyncKind::GroupCommit, None) => {
                let timer = strata_telemetry::Timer::start();
                let result = file.sync_data();
                timer.observe(&strata_telemetry::storage().wal_fsync_seconds);
                ("fdatasync", result)
            }
            (SyncKind::Full, _) => ("fsync", file.sync_all()),
        };
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let SyncKind::GroupCommit = kind {
            self.stats.group_commits.fetch_add(1, Ordering::Relaxed);
        }
        result.map_err(|err| self.fsync_failed(op, path, err))
    }

    /// fsyncs the WAL directory (after creating or removing segment files).
    fn fsync_dir(&self) -> Result<(), WalError> {
        let _serialised = self.fsync_lock.lock();
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WalError::Poisoned);
        }
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        match File::open(&self.dir) {
            Ok(dir) => dir.sync_all().map_err(|err| self.fsync_failed("fsync", &self.dir, err)),
            Err(err) => Err(WalError::io("open", &self.dir, err)),
        }
    }

    /// One group commit: fdatasync the active segment, which covers every write queued before
    /// this call (older segments were fully synced when they were sealed).
    fn group_commit(&self) -> Result<(), WalError> {
        let target = {
            let state = self.state.lock();
            state
                .segments
                .last()
                .filter(|segment| !segment.sealed)
                .map(|segment| (Arc::clone(&segment.file), segment.path.clone()))
        };
        match target {
            Some((file, path)) => self.fsync_file(&file, &path, SyncKind::GroupCommit),
            // Everything written is in sealed (fully synced) segments, or was truncated.
            None if self.poisoned.load(Ordering::Acquire) => Err(WalError::Poisoned),
            None => Ok(()),
        }
    }

    /// Creates the segment file for `first_index`: header written and fsynced, directory
    /// fsynced. On failure the file is removed (best effort).
    fn create_segment(&self, first_index: u64) -> Result<Segment, WalError> {
        let path = self.dir.join(segment_file_name(first_index));
        let result = (|| {
            // No segment of this name can hold records (its index is beyond the last one), so
            // a leftover file is simply replaced.
            let file = crate::private_fs::file_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|err| WalError::io("create", &path, err))?;
            file.write_all_at(&encode_segment_header(first_index), 0)
                .map_err(|err| WalError::io("write", &path, err))?;
            self.fsync_file(&file, &path, SyncKind::Full)?;
            self.fsync_dir()?;
            Ok(file)
        })();
        match result {
            Ok(file) => Ok(Segment {
                first_index,
                path,
                file: Arc::new(file),
                size_bytes: SEGMENT_HEADER_BYTES as u64,
                records: Vec::new(),
                sealed: false,
            }),
            Err(err) => {
                let _ = fs::remove_file(&path);
                Err(err)
            }
        }
    }

    /// Writes an encoded batch (non-empty) to the active segment, rolling or creating it as
    /// needed. Called with the state lock held.
    fn write_batch(&self, state: &mut State, batch: &EncodedBatch) -> Result<(), WalError> {
        let batch_len_bytes = batch.bytes.len() as u64;
        if let Some(active) = state.segments.last_mut()
            && !active.sealed
            && !active.records.is_empty()
            && active.size_bytes.saturating_add(batch_len_bytes) > self.options.segment_size_bytes_max
        {
            // Roll: the sealed segment is fully durable before the next one exists, so the
            // sync thread only ever needs to sync the active segment.
            self.fsync_file(&active.file, &active.path, SyncKind::Full)?;
            active.sealed = true;
        }
        if state.segments.last().is_none_or(|segment| segment.sealed) {
            let segment = self.create_segment(batch.first_index)?;
            state.segments.push(segment);
        }
        let Some(active) = state.segments.last_mut() else {
            unreachable!("an active segment was just ensured");
        };
        let base = active.size_bytes;
        if let Err(err) = active.file.write_all_at(&batch.bytes, base) {
            let err = WalError::io("write", &active.path, err);
            self.undo_partial_write(state, base);
            return Err(err);
        }
        active
            .records
            .extend(batch.frames.iter().map(|frame| RecordPos { offset: base + frame.offset, len: frame.len }));
        active.size_bytes = base + batch_len_bytes;
        Ok(())
    }

    /// Removes whatever part of a failed batch write reached the active segment, so that no
    /// stray frames survive to confuse recovery. If that fails too, the file's content is
    /// unknown: handled like a failed fsync.
    fn undo_partial_write(&self, state: &mut State, base: u64) {
        let Some(active) = state.segments.last() else {
            return;
        };
        if active.records.is_empty() {
            // Brand-new segment: drop it entirely (it would otherwise be an empty segment).
            let path = active.path.clone();
            state.segments.pop();
            if fs::remove_file(&path).is_ok() {
                let _ = self.fsync_dir();
            }
            return;
        }
        if let Err(err) = active.file.set_len(base) {
            let _serialised = self.fsync_lock.lock();
            let _ = self.fsync_failed("truncate", &active.path, err);
        }
    }

    fn enqueue(&self, callback: DurableCallback) {
        self.queue.lock().pending.push(callback);
        self.queue_cv.notify_one();
    }

    /// Reads and verifies the frame at `pos` of `file`, expecting `index`.
    fn read_frames(
        file: &File,
        path: &Path,
        first_index: u64,
        frames: &[RecordPos],
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<(), WalError> {
        let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
            return Ok(());
        };
        let span_start = first.offset;
        let span_len = usize::try_from(last.offset + u64::from(last.len) - span_start)
            .map_err(|_| WalError::io("read", path, io::ErrorKind::OutOfMemory.into()))?;
        let mut buf = vec![0u8; span_len];
        file.read_exact_at(&mut buf, span_start).map_err(|err| WalError::io("read", path, err))?;
        let buf = Bytes::from(buf);
        // `frames` first: the range never steps past the last stored index (< u64::MAX).
        for (frame, expected_index) in frames.iter().zip(first_index..) {
            // Offsets within the span; bounded by span_len, which fits usize.
            let start = (frame.offset - span_start) as usize;
            let corruption =
                |reason| WalError::Corruption { segment: path.to_path_buf(), offset: frame.offset, reason };
            let decoded = decode_record(&buf[start..]).map_err(|err| corruption(CorruptionReason::Record(err)))?;
            if decoded.index != expected_index {
                return Err(corruption(CorruptionReason::UnexpectedIndex {
                    expected: expected_index,
                    found: decoded.index,
                }));
            }
            let payload_start = start + (decoded.frame_len - decoded.payload.len());
            let payload = buf.slice(payload_start..start + decoded.frame_len);
            out.push((expected_index, versioned_payload(decoded.version, payload)));
        }
        Ok(())
    }
}

/// The write-ahead log of one Raft group. Cheap to clone (all clones share one WAL); `Send +
/// Sync`. The sync thread stops when [`Wal::close`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct Wal {
    handle: Arc<WalHandle>,
}

struct WalHandle {
    shared: Arc<Shared>,
    sync_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WalHandle {
    fn drop(&mut self) {
        self.close();
    }
}

impl WalHandle {
    fn close(&self) {
        let shared = &self.shared;
        // Under the state lock no append is between its write and its enqueue, and none can
        // start after this: every callback of a successful append is already queued.
        shared.state.lock().closed = true;
        shared.queue.lock().closing = true;
        shared.queue_cv.notify_all();
        let handle = self.sync_thread.lock().take();
        if let Some(handle) = handle {
            if handle.thread().id() == thread::current().id() {
                // Called from a durability callback: the thread finishes its current round and
                // exits on its own.
            } else if handle.join().is_err() {
                tracing::error!("WAL sync thread panicked");
            }
        }
        shared.lock_file.lock().take();
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal").field("dir", &self.handle.shared.dir).finish_non_exhaustive()
    }
}

fn run_sync_thread(shared: Arc<Shared>) {
    loop {
        let (callbacks, closing) = {
            let mut queue = shared.queue.lock();
            while queue.pending.is_empty() && !queue.closing {
                shared.queue_cv.wait(&mut queue);
            }
            (std::mem::take(&mut queue.pending), queue.closing)
        };
        if !callbacks.is_empty() {
            strata_telemetry::storage().group_commit_appends.observe(callbacks.len() as f64);
            let result = shared.group_commit();
            for callback in callbacks {
                let result = result.clone();
                if catch_unwind(AssertUnwindSafe(move || callback(result))).is_err() {
                    tracing::error!("WAL on_durable callback panicked");
                }
            }
        }
        if closing {
            return;
        }
    }
}

impl Wal {
    /// What this WAL does when a sync fails; its owner applies the same policy to failed writes
    /// it cannot go on from.
    pub fn fsync_failure(&self) -> FsyncFailure {
        self.handle.shared.options.on_fsync_error
    }

    /// Opens or creates the WAL in `dir` (created if missing), recovering existing segments
    /// (see [`RecoveryReport`] and the `recovery` module docs), and starts its sync thread.
    ///
    /// `durable_index_min`: an index known to be durable (e.g. Raft's committed index persisted
    /// elsewhere); recovery that would end below it, or an empty WAL, is
    /// [`WalError::Corruption`].
    ///
    /// Errors: [`WalError::InvalidOptions`]; [`WalError::Locked`] if another `Wal` has `dir`
    /// open; [`WalError::Corruption`] (nothing on disk is modified then); [`WalError::Io`].
    /// Blocking (reads every segment).
    pub fn open(
        dir: &Path,
        options: WalOptions,
        durable_index_min: Option<u64>,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        if options.segment_size_bytes_max <= SEGMENT_HEADER_BYTES as u64 {
            return Err(WalError::InvalidOptions {
                reason: "segment_size_bytes_max must exceed the segment header size",
            });
        }
        if !dir.exists() {
            crate::private_fs::create_dir_all(dir).map_err(|err| WalError::io("create_dir", dir, err))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|err| WalError::io("fsync", parent, err))?;
            }
        }
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock_file = crate::private_fs::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|err| WalError::io("open", &lock_path, err))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(WalError::Locked { dir: dir.to_path_buf() });
            }
            Err(TryLockError::Error(err)) => return Err(WalError::io("lock", &lock_path, err)),
        }

        let (segments, report) = recover(dir, durable_index_min)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(State { segments, closed: false }),
            layout: RwLock::new(()),
            queue: Mutex::new(SyncQueue::default()),
            queue_cv: Condvar::new(),
            fsync_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            stats: StatsCounters::default(),
            lock_file: Mutex::new(Some(lock_file)),
        });
        let thread_shared = Arc::clone(&shared);
        let sync_thread = thread::Builder::new()
            .name(SYNC_THREAD_NAME.to_owned())
            .spawn(move || run_sync_thread(thread_shared))
            .map_err(|err| WalError::io("spawn sync thread", dir, err))?;
        let wal = Wal { handle: Arc::new(WalHandle { shared, sync_thread: Mutex::new(Some(sync_thread)) }) };
        Ok((wal, report))
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.handle.shared.dir
    }

    /// Lowest index stored locally; `None` if the WAL is empty.
    pub fn first_index(&self) -> Option<u64> {
        self.handle.shared.state.lock().first_index()
    }

    /// Highest index stored locally (written, not necessarily durable yet); `None` if the WAL
    /// is empty.
    pub fn last_index(&self) -> Option<u64> {
        self.handle.shared.state.lock().last_index()
    }

    /// Appends `records`, whose indexes must be consecutive. If the WAL is empty the first
    /// index may be anything (e.g. after everything before it was removed); otherwise it must
    /// be `last_index + 1`. The batch is written with one write to one segment (rolling to a
    /// new segment first if it would take the active one past
    /// [`WalOptions::segment_size_bytes_max`]).
    ///
    /// On `Ok`, the records are written to the OS (readable by [`Wal::read`] immediately) and
    /// `on_durable` is called exactly once, from the sync thread, after an fdatasync that
    /// started after this write returned (`Ok`), or with the error if that sync failed
    /// ([`WalError::Io`] once, [`WalError::Poisoned`] after). No callback runs before the
    /// sync covering its records. An empty `records` is accepted: its callback follows the
    /// next sync. Callbacks run on the sync thread and should be quick; a panicking callback is
    /// logged and does not affect the others.
    ///
    /// On `Err`, nothing was appended and `on_durable` is dropped without being called.
    /// Errors: [`WalError::NonConsecutiveIndex`], [`WalError::IndexOverflow`] (index
    /// `u64::MAX` is never stored), [`WalError::PayloadTooLarge`], [`WalError::Io`] (write or
    /// segment creation failed; the log is unchanged), [`WalError::Poisoned`],
    /// [`WalError::Closed`].
    ///
    /// Blocking: one `write` syscall, plus two fsyncs when the segment rolls.
    pub fn append(
        &self,
        records: Vec<(u64, Bytes)>,
        on_durable: Box<dyn FnOnce(Result<(), WalError>) + Send + 'static>,
    ) -> Result<(), WalError> {
        self.append_in_frame_version(records, RECORD_FORMAT_VERSION, on_durable)
    }

    /// [`Wal::append`] in frames of `frame_version`: [`LEGACY_FRAME_VERSION`](crate::format::LEGACY_FRAME_VERSION) for payloads without
    /// a format version of their own (a cluster some process of which is of a release from before
    /// payload versions; see `docs/formats.md`). Panics on a version this code does not read.
    pub fn append_in_frame_version(
        &self,
        records: Vec<(u64, Bytes)>,
        frame_version: u8,
        on_durable: Box<dyn FnOnce(Result<(), WalError>) + Send + 'static>,
    ) -> Result<(), WalError> {
        let shared = &self.handle.shared;
        let batch = encode_batch(&records, frame_version)?;
        let mut state = shared.state.lock();
        shared.check_usable(&state)?;
        if let Some(batch) = &batch {
            if let Some(last_index) = state.last_index() {
                // last_index < u64::MAX always holds (IndexOverflow).
                let expected = last_index + 1;
                if batch.first_index != expected {
                    return Err(WalError::NonConsecutiveIndex { expected, got: batch.first_index });
                }
            }
            shared.write_batch(&mut state, batch)?;
            let stats = &shared.stats;
            stats.appends.fetch_add(1, Ordering::Relaxed);
            stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
            stats.bytes_written.fetch_add(batch.bytes.len() as u64, Ordering::Relaxed);
            strata_telemetry::storage().wal_written_bytes.inc_by(batch.bytes.len() as u64);
        } else {
            shared.stats.appends.fetch_add(1, Ordering::Relaxed);
        }
        // Queued under the state lock, after the write: see the module docs and `close`.
        shared.enqueue(on_durable);
        Ok(())
    }

    /// [`Wal::append`], then waits until the records are durable.
    ///
    /// The append happens on the first poll. Cancel safety: dropping the future after that
    /// does not undo the append; the records still become durable (the result is just not
    /// observed). Blocks the polling thread for the write, as `append` does.
    pub async fn append_durable(&self, records: Vec<(u64, Bytes)>) -> Result<(), WalError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.append(
            records,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        )?;
        // The callback is always called (close flushes the queue); a dropped sender would
        // mean the sync thread died.
        receiver.await.unwrap_or(Err(WalError::Closed))
    }

    /// The payload of record `index`, or `None` if it is not stored locally (removed, beyond
    /// the last index, or truncated). Verifies the record's crc. A record written before
    /// payloads carried their format version comes with version 0 in front (see the payload
    /// versions in [`crate::format`]).
    ///
    /// Errors: [`WalError::Corruption`] if the stored frame is damaged; [`WalError::Io`];
    /// [`WalError::Poisoned`]; [`WalError::Closed`]. Blocking (one positioned read).
    pub fn read(&self, index: u64) -> Result<Option<Bytes>, WalError> {
        let mut out = self.read_range_inner(index, index.saturating_add(1))?;
        Ok(out.pop().map(|(_, payload)| payload))
    }

    /// The stored records with indexes in `start..end_exclusive`, in order: exactly those
    /// stored locally, which form one contiguous run (possibly empty, e.g. if the range is
    /// before [`Wal::first_index`] or after [`Wal::last_index`]). The result is a consistent
    /// snapshot: appends after the call started are not included and a concurrent
    /// [`Wal::truncate_from`] waits for it. Reads each segment's part with one positioned
    /// read and verifies every crc. The result is bounded by the range and by what is stored;
    /// callers choose the range to bound memory.
    ///
    /// Errors: as [`Wal::read`].
    pub fn read_range(&self, start: u64, end_exclusive: u64) -> Result<Vec<(u64, Bytes)>, WalError> {
        self.read_range_inner(start, end_exclusive)
    }

    fn read_range_inner(&self, start: u64, end_exclusive: u64) -> Result<Vec<(u64, Bytes)>, WalError> {
        let shared = &self.handle.shared;
        let _layout = shared.layout.read();
        // (file, path, first index of the run, frames of the run), per segment.
        let mut runs: Vec<(Arc<File>, PathBuf, u64, Vec<RecordPos>)> = Vec::new();
        {
            let state = shared.state.lock();
            shared.check_usable(&state)?;
            let (Some(first), Some(last)) = (state.first_index(), state.last_index()) else {
                return Ok(Vec::new());
            };
            let start = start.max(first);
            let Some(end_inclusive) = end_exclusive.checked_sub(1).map(|end| end.min(last)) else {
                return Ok(Vec::new());
            };
            if start > end_inclusive {
                return Ok(Vec::new());
            }
            let Some((mut position, _)) = state.locate(start) else {
                return Ok(Vec::new());
            };
            let mut next = start;
            while next <= end_inclusive {
                let Some(segment) = state.segments.get(position) else {
                    break;
                };
                // Both bounds lie within the segment's records (segments are contiguous).
                let from = (next - segment.first_index) as usize;
                let segment_last = segment.last_index().unwrap_or(segment.first_index);
                let to = (end_inclusive.min(segment_last) - segment.first_index) as usize;
                let frames = segment.records.get(from..=to).unwrap_or_default().to_vec();
                runs.push((Arc::clone(&segment.file), segment.path.clone(), next, frames));
                next = segment_last + 1;
                position += 1;
            }
        }
        let mut out = Vec::new();
        for (file, path, first_index, frames) in runs {
            Shared::read_frames(&file, &path, first_index, &frames, &mut out)?;
        }
        Ok(out)
    }

    /// Removes every record with index `>= index` (tail truncation, e.g. a Raft conflict).
    /// Durable before return: segment files entirely past `index` are deleted newest first
    /// (directory fsynced), then the segment holding `index` is cut and fsynced. A sealed
    /// segment that is cut becomes the active segment again. No-op if nothing is stored at or
    /// after `index`; `index <= first_index` empties the WAL.
    ///
    /// Waits for in-flight reads. Callbacks of truncated appends are still called after the
    /// next sync. Errors: [`WalError::Io`] (the WAL may then hold a prefix of what it held,
    /// always contiguous), [`WalError::Poisoned`], [`WalError::Closed`].
    pub fn truncate_from(&self, index: u64) -> Result<(), WalError> {
        let shared = &self.handle.shared;
        let _layout = shared.layout.write();
        let mut state = shared.state.lock();
        shared.check_usable(&state)?;
        let mut removed_any = false;
        let result = (|| {
            while let Some(last) = state.segments.last()
                && last.first_index >= index
            {
                fs::remove_file(&last.path).map_err(|err| WalError::io("remove", &last.path, err))?;
                state.segments.pop();
                removed_any = true;
            }
            Ok(())
        })();
        if removed_any {
            shared.fsync_dir()?;
        }
        result?;
        let Some(last) = state.segments.last_mut() else {
            return Ok(());
        };
        let Some(slot) = index
            .checked_sub(last.first_index)
            .and_then(|slot| usize::try_from(slot).ok())
            .filter(|slot| *slot < last.records.len())
        else {
            return Ok(());
        };
        let cut_at = last.records[slot].offset;
        last.file.set_len(cut_at).map_err(|err| WalError::io("truncate", &last.path, err))?;
        shared.fsync_file(&last.file, &last.path, SyncKind::Full)?;
        last.records.truncate(slot);
        last.size_bytes = cut_at;
        last.sealed = false;
        Ok(())
    }

    /// Seals the active segment now: fsyncs it; the next append starts a new segment. No-op if
    /// there is no active segment (empty WAL, or already sealed).
    ///
    /// Errors: [`WalError::Io`] (fsync), [`WalError::Poisoned`], [`WalError::Closed`].
    pub fn seal_active(&self) -> Result<(), WalError> {
        let shared = &self.handle.shared;
        let mut state = shared.state.lock();
        shared.check_usable(&state)?;
        if let Some(active) = state.segments.last_mut()
            && !active.sealed
            && !active.records.is_empty()
        {
            shared.fsync_file(&active.file, &active.path, SyncKind::Full)?;
            active.sealed = true;
        }
        Ok(())
    }

    /// Sealed (immutable, fully fsynced) segments, oldest first.
    pub fn sealed_segments(&self) -> Vec<SegmentInfo> {
        let state = self.handle.shared.state.lock();
        state.segments.iter().filter(|segment| segment.sealed).filter_map(Segment::info).collect()
    }

    /// Deletes the oldest sealed segment files whose `last_index <= index`, oldest first, then
    /// fsyncs the directory, and returns those removed. Never deletes the active segment. If
    /// the newest segment is sealed (see [`Wal::seal_active`]) and covered, it goes too and the
    /// WAL becomes empty: [`Wal::last_index`] is then `None` and the next append may start at
    /// any index. Records of removed segments are no longer readable; a read that started
    /// before still completes.
    ///
    /// Errors: [`WalError::Io`] (segments removed before the failure stay removed),
    /// [`WalError::Poisoned`], [`WalError::Closed`].
    pub fn remove_sealed_through(&self, index: u64) -> Result<Vec<SegmentInfo>, WalError> {
        let shared = &self.handle.shared;
        let mut state = shared.state.lock();
        shared.check_usable(&state)?;
        let removable = state
            .segments
            .iter()
            // The active segment is never sealed, so it is never removed; a sealed last segment
            // (sealed while idle) may go like any other.
            .take_while(|segment| segment.sealed && segment.last_index().is_some_and(|last| last <= index))
            .count();
        let mut removed = Vec::with_capacity(removable);
        let mut removed_count = 0;
        let mut result = Ok(());
        for segment in &state.segments[..removable] {
            if let Err(err) = fs::remove_file(&segment.path) {
                result = Err(WalError::io("remove", &segment.path, err));
                break;
            }
            removed_count += 1;
            removed.extend(segment.info());
        }
        state.segments.drain(..removed_count);
        if removed_count > 0 {
            shared.fsync_dir()?;
        }
        result.map(|()| removed)
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let stats = &self.handle.shared.stats;
        WalStats {
            appends: stats.appends.load(Ordering::Relaxed),
            records: stats.records.load(Ordering::Relaxed),
            bytes_written: stats.bytes_written.load(Ordering::Relaxed),
            fsyncs: stats.fsyncs.load(Ordering::Relaxed),
            group_commits: stats.group_commits.load(Ordering::Relaxed),
        }
    }

    /// Stops the WAL: later calls return [`WalError::Closed`]; the sync thread runs a last
    /// group commit for the callbacks still pending (so every accepted append's callback is
    /// called), then exits; the directory lock is released, so the WAL can be reopened.
    /// Idempotent; also done when the last clone is dropped. Blocks until the sync thread has
    /// exited, except when called from an `on_durable` callback (then it returns at once and
    /// the thread exits after the current round).
    pub fn close(&self) {
        self.handle.close();
    }
}

/// Validates and encodes a batch outside the lock; `None` for an empty batch.
fn encode_batch(records: &[(u64, Bytes)], frame_version: u8) -> Result<Option<EncodedBatch>, WalError> {
    let Some((first_index, _)) = records.first() else {
        return Ok(None);
    };
    let first_index = *first_index;
    // The last index must leave room for a next one: u64::MAX is never stored.
    if first_index.checked_add(records.len() as u64).is_none() {
        return Err(WalError::IndexOverflow { first_index, records: records.len() });
    }
    let mut total_bytes = 0usize;
    // `records` first: the range then never steps past the last index (checked above).
    for ((index, payload), expected) in records.iter().zip(first_index..) {
        if *index != expected {
            return Err(WalError::NonConsecutiveIndex { expected, got: *index });
        }
        if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
            return Err(WalError::PayloadTooLarge {
                index: *index,
                len_bytes: payload.len() as u64,
                max_bytes: RECORD_PAYLOAD_BYTES_MAX as u64,
            });
        }
        total_bytes += record_frame_len(payload.len());
    }
    let mut bytes = Vec::with_capacity(total_bytes);
    let mut frames = Vec::with_capacity(records.len());
    for (index, payload) in records {
        let offset = bytes.len() as u64;
        encode_record_version_into(&mut bytes, frame_version, *index, payload);
        frames.push(RecordPos {
            offset,
            // Bounded by RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX.
            len: (bytes.len() as u64 - offset) as u32,
        });
    }
    Ok(Some(EncodedBatch { first_index, bytes, frames }))
}
