//! A generic openraft state machine around a pure, deterministic [`ReplicatedState`].
//!
//! The shard queue state and the metadata catalog are both plain values with an
//! `apply(log_index, command) -> response` function. [`StateMachineStore`] adds what openraft
//! needs around them: the last applied log id, the last membership, snapshots, and a way for
//! the rest of the process to read the state and to wait until an index has been applied.
//!
//! Snapshots are the whole state in its persisted form, in one checked file written atomically
//! (`snapshot`) in the store directory. At start-up the state is loaded from that file and
//! openraft re-applies the log after it. A snapshot never holds message bodies: those stay in
//! the log and its tiered segments.
//!
//! A state may keep files beside its snapshot that its applies write (the shard's slice files of
//! scheduled messages). A snapshot sent to another replica carries them: what the files hold up
//! to the snapshot's index is read when the snapshot is sent ([`ReplicatedState::export_side_files`])
//! and written at the receiver before the state opens them
//! ([`ReplicatedState::import_side_files`]). Storing a snapshot, sending one and installing one
//! hold the same lock, so a file a sent snapshot counts is not removed while it is read.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_common::Clock;

use futures::StreamExt;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, RaftTypeConfig, SnapshotMeta};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use strata_common::format::{
    FormatGate, FormatGeneration, LEGACY_FORMAT_VERSION, LEGACY_GENERATION, NEWEST_GENERATION, Persisted, postcard_into,
};
use tokio::sync::watch;

use crate::persisted::{LogIdV1, PersistedRaftTypes, StoredMembershipV1};
use strata_wal::write_file_atomic;

const SNAPSHOT_FILE: &str = "snapshot";

/// A deterministic state replicated through Raft.
pub trait ReplicatedState: Default + Persisted + Send + Sync + 'static {
    /// The command carried in a normal log entry.
    type Command: openraft::AppData + Persisted;
    /// What applying a command answers to the proposer.
    type Response;
    /// The kind of group this state is, as metrics name it (`shard`, `metadata`).
    const METRICS_GROUP: &'static str = "other";

    /// Applies one command. Must be deterministic: same state, index and command give the same
    /// result on every replica and on every replay.
    fn apply(&mut self, log_index: u64, command: &Self::Command) -> Self::Response;

    /// The response for entries that carry no command (blank and membership entries).
    fn noop_response() -> Self::Response;

    /// A copy of what a snapshot encodes, taken while applies are held off; the copy is encoded
    /// after they resume, so applies wait for a copy of the state, never for its encoding.
    /// Handles to side files need not be copied.
    fn copy_for_snapshot(&self) -> Self;

    /// For a state that keeps files beside its snapshot (written by its applies): called when the
    /// store opens, after the state was loaded from its snapshot (or made empty) and before the
    /// log after it is applied again, with the store directory and the snapshot's last index.
    /// The files must then hold exactly what the state at that index expects.
    fn open_side_files(&mut self, _dir: &Path, _last_applied: Option<u64>) -> io::Result<()> {
        Ok(())
    }

    /// Called with applies held off right before the state is encoded for a snapshot: side files
    /// must be durable up to that point. An error aborts the snapshot.
    fn sync_side_files(&self) -> io::Result<()> {
        Ok(())
    }

    /// Called once the snapshot encoded after the last [`ReplicatedState::sync_side_files`] is
    /// stored.
    fn snapshot_stored(&self) -> io::Result<()> {
        Ok(())
    }

    /// The side files in `dir` as another replica needs them with the snapshot at `last_index`,
    /// as one value (empty when there are none). The files may be ahead of the snapshot (applies
    /// went on since): what later entries wrote must be left out.
    fn export_side_files(_dir: &Path, _last_index: u64) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    /// Replaces the side files in `dir` by what another replica exported with a snapshot, durably;
    /// [`ReplicatedState::open_side_files`] then checks them against the snapshot's state.
    fn import_side_files(_dir: &Path, exported: &[u8]) -> io::Result<()> {
        if exported.is_empty() {
            Ok(())
        } else {
            Err(invalid("this state keeps no side files, but a snapshot carries some"))
        }
    }
}

/// Access to the application command of a log entry (None for blank and membership entries).
pub trait EntryCommand<D> {
    fn command(&self) -> Option<&D>;
}

impl<CLID, D, NID, N> EntryCommand<D> for openraft::Entry<CLID, EntryPayload<D, NID, N>>
where
    CLID: openraft::vote::RaftCommittedLeaderId,
    D: openraft::AppData,
    NID: openraft::NodeId,
    N: openraft::Node,
{
    fn command(&self) -> Option<&D> {
        match &self.payload {
            EntryPayload::Normal(command) => Some(command),
            EntryPayload::Blank | EntryPayload::Membership(_) => None,
        }
    }
}

/// State plus the Raft bookkeeping that must move with it atomically.
struct Applied<C: RaftTypeConfig, S> {
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    state: S,
}

/// Snapshot layout version, the first byte of the encoded snapshot. Layout: version u8, crc32c
/// u32 LE of the rest, postcard of (last applied log id, last membership) in their persisted
/// forms ([`LogIdV1`], [`StoredMembershipV1`]), then the state as a [`Persisted`] value (its own
/// version byte and body). Version 2 is taken: it names a sent snapshot with side files.
const SNAPSHOT_FORMAT_VERSION: u8 = 3;
/// The snapshot layout from before formats were versioned: the same header, then postcard of
/// (last applied log id, last membership, state), the state in its legacy form.
const SNAPSHOT_FORMAT_VERSION_LEGACY: u8 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 5;

/// Encodes a snapshot for a cluster at `generation`: in the legacy layout while it is at
/// generation 0 (unless the state holds something only a newer version can), else in
/// [`SNAPSHOT_FORMAT_VERSION`].
/// `capacity_bytes` sizes the buffer up front (the previous snapshot's size is a good guess): a
/// buffer grown by doubling to tens of MiB copies itself over and over.
fn encode_snapshot<C: PersistedRaftTypes, S: Persisted>(
    applied: &Applied<C, S>,
    generation: FormatGeneration,
    capacity_bytes: usize,
) -> io::Result<Vec<u8>> {
    let state_version = applied.state.version_to_write(generation);
    let legacy = generation == LEGACY_GENERATION && state_version == LEGACY_FORMAT_VERSION;
    let version = if legacy { SNAPSHOT_FORMAT_VERSION_LEGACY } else { SNAPSHOT_FORMAT_VERSION };
    let mut bytes = Vec::with_capacity(capacity_bytes.max(SNAPSHOT_HEADER_BYTES));
    bytes.extend_from_slice(&[version, 0, 0, 0, 0]);
    let raft = (applied.last_applied.as_ref().map(LogIdV1::from), StoredMembershipV1::from(&applied.membership));
    postcard_into(&raft, &mut bytes)?;
    if !legacy {
        bytes.push(state_version);
    }
    applied.state.encode_body(state_version, &mut bytes)?;
    let crc = crc32c::crc32c(&bytes[SNAPSHOT_HEADER_BYTES..]);
    bytes[1..SNAPSHOT_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Decodes a stored snapshot, refusing versions newer than `gate` reads; also answers whether it
/// was in the legacy layout.
fn decode_snapshot<C: PersistedRaftTypes, S: Persisted>(
    bytes: &[u8],
    gate: &FormatGate,
) -> io::Result<(Applied<C, S>, bool)> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(invalid("snapshot is truncated"));
    }
    let version = bytes[0];
    let readable = version == SNAPSHOT_FORMAT_VERSION_LEGACY
        || (version == SNAPSHOT_FORMAT_VERSION && gate.readable_max() > LEGACY_GENERATION);
    if !readable {
        return Err(invalid(format!("snapshot format version {version} is not supported")));
    }
    let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if crc32c::crc32c(body) != crc {
        return Err(invalid("snapshot checksum mismatch"));
    }
    let ((last_applied, membership), rest): ((Option<LogIdV1>, StoredMembershipV1), &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| invalid(format!("snapshot header: {e}")))?;
    let legacy = version == SNAPSHOT_FORMAT_VERSION_LEGACY;
    let state = if legacy {
        S::decode_body(LEGACY_FORMAT_VERSION, rest)?
    } else {
        let (&state_version, body) = rest.split_first().ok_or_else(|| invalid("snapshot without a state"))?;
        gate.check_readable::<S>("snapshot state", state_version)?;
        S::decode_body(state_version, body)?
    };
    let applied = Applied { last_applied: last_applied.map(Into::into), membership: membership.try_into()?, state };
    Ok((applied, legacy))
}

/// A snapshot as sent to another replica, when it carries side files: version u8 (2), CRC32C u32
/// LE of the side files, the stored snapshot's length u64 LE, the stored snapshot, the side
/// files. Without side files the stored snapshot is sent as it is.
const TRANSFER_FORMAT_VERSION: u8 = 2;
const TRANSFER_HEADER_BYTES: usize = 13;

fn encode_transfer(stored: &[u8], side_files: &[u8]) -> Vec<u8> {
    if side_files.is_empty() {
        return stored.to_vec();
    }
    let mut bytes = Vec::with_capacity(TRANSFER_HEADER_BYTES + stored.len() + side_files.len());
    bytes.push(TRANSFER_FORMAT_VERSION);
    bytes.extend_from_slice(&crc32c::crc32c(side_files).to_le_bytes());
    bytes.extend_from_slice(&(stored.len() as u64).to_le_bytes());
    bytes.extend_from_slice(stored);
    bytes.extend_from_slice(side_files);
    bytes
}

/// Splits a sent snapshot into the stored snapshot and the side files (checked).
fn decode_transfer(bytes: &[u8]) -> io::Result<(&[u8], &[u8])> {
    if bytes.first() != Some(&TRANSFER_FORMAT_VERSION) {
        return Ok((bytes, &[]));
    }
    let header = bytes.get(..TRANSFER_HEADER_BYTES).ok_or_else(|| invalid("sent snapshot is truncated"))?;
    let crc = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let mut stored_len = [0u8; 8];
    stored_len.copy_from_slice(&header[5..13]);
    let rest = &bytes[TRANSFER_HEADER_BYTES..];
    let stored_len = usize::try_from(u64::from_le_bytes(stored_len))
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or_else(|| invalid("sent snapshot is truncated"))?;
    let (stored, side_files) = rest.split_at(stored_len);
    if crc32c::crc32c(side_files) != crc {
        return Err(invalid("sent snapshot's side files fail their checksum"));
    }
    Ok((stored, side_files))
}

/// Writes a snapshot taken elsewhere (as another replica sent it, or a copy of one) as the
/// stored snapshot of a state directory that holds none, with `membership` in place of its own;
/// answers the snapshot's last log id. `before_store` runs with that log id before anything is
/// written here (the group seeds its vote there). Its side files are written too. A store opened
/// on the directory starts from it (openraft treats the log as purged up to it).
pub fn seed_snapshot<C: PersistedRaftTypes, S: ReplicatedState>(
    dir: &Path,
    snapshot: &[u8],
    membership: openraft::Membership<C::NodeId, C::Node>,
    before_store: impl FnOnce(&LogIdOf<C>) -> io::Result<()>,
) -> io::Result<LogIdOf<C>> {
    if dir.join(SNAPSHOT_FILE).exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already holds a snapshot", dir.display()),
        ));
    }
    let (stored, side_files) = decode_transfer(snapshot)?;
    let (mut applied, legacy): (Applied<C, S>, bool) = decode_snapshot(stored, &FormatGate::newest())?;
    let last = applied.last_applied.ok_or_else(|| invalid("the snapshot is empty"))?;
    before_store(&last)?;
    applied.membership = StoredMembershipOf::<C>::new(Some(last), membership);
    strata_wal::private_fs::create_dir_all(dir)?;
    S::import_side_files(dir, side_files)?;
    // In the layout it came in: the copy's cluster had reached that generation.
    let generation = if legacy { LEGACY_GENERATION } else { NEWEST_GENERATION };
    write_file_atomic(&dir.join(SNAPSHOT_FILE), &encode_snapshot(&applied, generation, 0)?)?;
    Ok(last)
}

/// The shared part of a state machine store: readable by the rest of the process.
pub struct SharedState<C: RaftTypeConfig, S> {
    applied: RwLock<Applied<C, S>>,
    applied_index: watch::Sender<u64>,
    /// The stored snapshot. Held while one is stored (through [`ReplicatedState::snapshot_stored`]),
    /// sent (reading the side files) or installed (writing them).
    snapshot: Mutex<Option<(SnapshotMetaOf<C>, Vec<u8>)>>,
    dir: PathBuf,
    /// Which format generation snapshots are written in, and the newest that is read.
    format: FormatGate,
}

impl<C: RaftTypeConfig, S: ReplicatedState> SharedState<C, S> {
    /// A read guard on the state. Hold it briefly: applies wait for it.
    pub fn read(&self) -> StateGuard<'_, C, S> {
        StateGuard { guard: self.applied.read() }
    }

    /// A receiver that changes whenever entries are applied; its value is the last applied index
    /// (0 before anything was applied).
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// The stored snapshot's last log index and size in bytes (`(0, 0)` before the first);
    /// `None` while one is being stored, sent or installed (this never waits for those).
    pub fn stored_snapshot(&self) -> Option<(u64, u64)> {
        let slot = self.snapshot.try_lock()?;
        Some(
            slot.as_ref().map_or((0, 0), |(meta, bytes)| {
                (meta.last_log_id.as_ref().map_or(0, |id| id.index()), bytes.len() as u64)
            }),
        )
    }
}

/// A read guard that derefs to the replicated state.
pub struct StateGuard<'a, C: RaftTypeConfig, S> {
    guard: RwLockReadGuard<'a, Applied<C, S>>,
}

impl<C: RaftTypeConfig, S> std::ops::Deref for StateGuard<'_, C, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.guard.state
    }
}

/// openraft's [`RaftStateMachine`] for a [`ReplicatedState`]. Cheap to clone.
pub struct StateMachineStore<C: RaftTypeConfig, S> {
    shared: Arc<SharedState<C, S>>,
}

impl<C: RaftTypeConfig, S> Clone for StateMachineStore<C, S> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<C: PersistedRaftTypes, S: ReplicatedState> StateMachineStore<C, S> {
    /// Opens the store in `dir`, loading the last snapshot if there is one.
    pub fn open(dir: &Path, format: FormatGate) -> io::Result<Self> {
        strata_wal::private_fs::create_dir_all(dir)?;
        let stored = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let (mut applied, snapshot) = match stored {
            Some(bytes) => {
                let (applied, _): (Applied<C, S>, bool) = decode_snapshot(&bytes, &format)?;
                let meta =
                    SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.membership.clone() };
                (applied, Some((meta, bytes)))
            }
            None => (
                Applied { last_applied: None, membership: StoredMembershipOf::<C>::default(), state: S::default() },
                None,
            ),
        };
        let last_applied = applied.last_applied.as_ref().map(|l| l.index());
        applied.state.open_side_files(dir, last_applied)?;
        let (applied_index, _) = watch::channel(last_applied.unwrap_or(0));
        Ok(Self {
            shared: Arc::new(SharedState {
                applied: RwLock::new(applied),
                applied_index,
                snapshot: Mutex::new(snapshot),
                dir: dir.to_path_buf(),
                format,
            }),
        })
    }

    /// The part of the store the rest of the process reads.
    pub fn shared(&self) -> Arc<SharedState<C, S>> {
        self.shared.clone()
    }

    /// Copies the state with applies held off (after its side files are durable to that point),
    /// then encodes the copy with applies running.
    fn encode_current(&self) -> io::Result<(SnapshotMetaOf<C>, Vec<u8>)> {
        let started = crate::RAFT_CLOCK.instant();
        let copy: Applied<C, S> = {
            let applied = self.shared.applied.read();
            applied.state.sync_side_files()?;
            Applied {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
                state: applied.state.copy_for_snapshot(),
            }
        };
        let held = crate::RAFT_CLOCK.instant().duration_since(started);
        tracing::debug!(held_us = held.as_micros() as u64, "state copied for a snapshot");
        let previous_bytes = self.shared.snapshot.lock().as_ref().map_or(0, |(_, bytes)| bytes.len());
        let bytes = encode_snapshot(&copy, self.shared.format.writing(), previous_bytes + previous_bytes / 8)?;
        let meta = SnapshotMeta { last_log_id: copy.last_applied, last_membership: copy.membership };
        Ok((meta, bytes))
    }

    /// Writes `bytes` as the stored snapshot; `slot` is the held [`SharedState::snapshot`].
    fn store_snapshot(
        &self,
        slot: &mut Option<(SnapshotMetaOf<C>, Vec<u8>)>,
        meta: SnapshotMetaOf<C>,
        bytes: Vec<u8>,
    ) -> io::Result<SnapshotOf<C, Vec<u8>>> {
        write_file_atomic(&self.shared.dir.join(SNAPSHOT_FILE), &bytes)?;
        *slot = Some((meta.clone(), bytes.clone()));
        Ok(openraft::Snapshot { meta, snapshot: bytes })
    }
}

impl<C, S> RaftSnapshotBuilder<C> for StateMachineStore<C, S>
where
    C: PersistedRaftTypes + RaftTypeConfig<D = S::Command, R = S::Response>,
    S: ReplicatedState,
{
    type SnapshotData = Vec<u8>;

    /// Copies, encodes and writes on a blocking thread: a large state takes tens of milliseconds
    /// to encode and its file write competes with the WAL's fsyncs, neither of which may stall an
    /// async worker. Applies wait only while the state is copied (see design-notes.md).
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Vec<u8>>, io::Error> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = crate::RAFT_CLOCK.instant();
            let timer = strata_telemetry::Timer::start();
            let (meta, bytes) = store.encode_current()?;
            let encoded_after = crate::RAFT_CLOCK.instant().duration_since(started);
            let mut slot = store.shared.snapshot.lock();
            // A snapshot installed from the leader meanwhile is newer than this one: keep it.
            if let Some((stored_meta, stored_bytes)) = slot.as_ref()
                && stored_meta.last_log_id >= meta.last_log_id
            {
                return Ok(openraft::Snapshot { meta: stored_meta.clone(), snapshot: stored_bytes.clone() });
            }
            let snapshot = store.store_snapshot(&mut slot, meta, bytes)?;
            store.shared.applied.read().state.snapshot_stored()?;
            drop(slot);
            let group = strata_telemetry::GroupLabel { group: S::METRICS_GROUP };
            timer.observe(&strata_telemetry::raft().snapshot_build_seconds.get_or_create(&group));
            tracing::debug!(
                bytes = snapshot.snapshot.len(),
                encode_ms = encoded_after.as_millis() as u64,
                write_ms = (crate::RAFT_CLOCK.instant().duration_since(started) - encoded_after).as_millis() as u64,
                "snapshot stored"
            );
            Ok(snapshot)
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl<C, S> RaftStateMachine<C> for StateMachineStore<C, S>
where
    C: PersistedRaftTypes + RaftTypeConfig<D = S::Command, R = S::Response>,
    C::Entry: EntryCommand<S::Command>,
    S: ReplicatedState,
{
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let applied = self.shared.applied.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut last_index = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            let index = log_id.index();
            let membership = entry.get_membership();
            let response = {
                let mut applied = self.shared.applied.write();
                let response = match entry.command() {
                    Some(command) => applied.state.apply(index, command),
                    None => S::noop_response(),
                };
                if let Some(membership) = membership {
                    applied.membership = StoredMembershipOf::<C>::new(Some(log_id), membership);
                }
                applied.last_applied = Some(log_id);
                response
            };
            last_index = Some(index);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        if let Some(index) = last_index {
            self.shared.applied_index.send_replace(index);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Decodes and installs on a blocking thread: a large state takes tens of milliseconds to
    /// decode, and the side files are written there too.
    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let store = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let (stored, side_files) = decode_transfer(&snapshot)?;
            let (mut applied, _): (Applied<C, S>, bool) = decode_snapshot(stored, &store.shared.format)?;
            if applied.last_applied != meta.last_log_id {
                return Err(invalid("snapshot content does not match its metadata"));
            }
            let index = applied.last_applied.as_ref().map_or(0, |l| l.index());
            let mut slot = store.shared.snapshot.lock();
            S::import_side_files(&store.shared.dir, side_files)?;
            applied.state.open_side_files(&store.shared.dir, Some(index))?;
            *store.shared.applied.write() = applied;
            // Without side files the sent snapshot is the stored one: kept without a copy.
            let stored = if side_files.is_empty() { snapshot } else { stored.to_vec() };
            store.store_snapshot(&mut slot, meta, stored)?;
            store.shared.applied_index.send_replace(index);
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The stored snapshot with what its side files hold up to its index, read on a blocking
    /// thread (they may be large).
    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, io::Error> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let slot = shared.snapshot.lock();
            let Some((meta, stored)) = slot.as_ref() else { return Ok(None) };
            let index = meta.last_log_id.as_ref().map_or(0, |l| l.index());
            let side_files = S::export_side_files(&shared.dir, index)?;
            Ok(Some(openraft::Snapshot { meta: meta.clone(), snapshot: encode_transfer(stored, &side_files) }))
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_snapshot_carries_side_files_checked_and_without_them_is_the_stored_one() {
        let stored = [SNAPSHOT_FORMAT_VERSION, 1, 2, 3, 4, 5, 6];
        assert_eq!(encode_transfer(&stored, &[]), stored, "no side files: the stored snapshot as it is");
        assert_eq!(decode_transfer(&stored).expect("decode"), (&stored[..], &[][..]));

        let sent = encode_transfer(&stored, b"slice records");
        assert_eq!(sent[0], TRANSFER_FORMAT_VERSION);
        assert_eq!(decode_transfer(&sent).expect("decode"), (&stored[..], &b"slice records"[..]));

        let mut damaged = sent.clone();
        if let Some(last) = damaged.last_mut() {
            *last ^= 1;
        }
        assert!(decode_transfer(&damaged).is_err(), "a damaged side file is refused");
        assert!(decode_transfer(&sent[..TRANSFER_HEADER_BYTES - 1]).is_err(), "a truncated header is refused");
        let mut too_long = sent.clone();
        too_long[5..13].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_transfer(&too_long).is_err(), "a stored length past the end is refused");
    }
}

#[cfg(test)]
mod golden_tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::{BasicNode, LogId, Membership, StoredMembership};
    use strata_common::format::golden;

    use super::*;

    openraft::declare_raft_types!(
        Config:
            D = String,
            R = (),
            NodeId = u64,
            Node = BasicNode,
    );

    fn applied() -> Applied<Config, String> {
        let log_id = LogId::new(LeaderId { term: 4, node_id: 1 }, 300);
        let nodes = BTreeMap::from([(1, BasicNode { addr: "10.0.0.1:9500".into() })]);
        let membership = Membership::new(vec![BTreeSet::from([1])], nodes).expect("membership");
        Applied {
            last_applied: Some(LogId::new(LeaderId { term: 5, node_id: 1 }, 512)),
            membership: StoredMembership::new(Some(log_id), membership),
            state: "the state".to_string(),
        }
    }

    /// The snapshot file: this release writes the committed bytes, and reads them and a snapshot
    /// written before versions (version 1: the state without a version of its own), which a
    /// cluster still at generation 0 writes too.
    #[test]
    fn snapshot_files_match_their_golden_fixtures() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/formats/raft");
        let value = applied();
        let parts = |a: Applied<Config, String>| (a.last_applied, a.membership, a.state);
        let gate = FormatGate::newest();
        let capped = FormatGate::new(LEGACY_GENERATION);

        let encoded = encode_snapshot(&value, NEWEST_GENERATION, 0).expect("encode");
        let stored = golden::check_bytes(&dir, "snapshot-v3.bin", &encoded);
        let (decoded, legacy) = decode_snapshot::<Config, String>(&stored, &gate).expect("decode");
        assert!(!legacy);
        assert_eq!(parts(decoded), parts(applied()));
        assert!(decode_snapshot::<Config, String>(&stored, &capped).is_err(), "a legacy reader refuses version 3");

        let body = postcard::to_allocvec(&(&value.last_applied, &value.membership, &value.state)).expect("legacy body");
        let mut legacy = vec![SNAPSHOT_FORMAT_VERSION_LEGACY];
        legacy.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        legacy.extend_from_slice(&body);
        assert_eq!(encode_snapshot(&value, LEGACY_GENERATION, 0).expect("encode legacy"), legacy);
        let stored = golden::check_bytes(&dir, "snapshot-v1.bin", &legacy);
        for gate in [&gate, &capped] {
            let (decoded, legacy) = decode_snapshot::<Config, String>(&stored, gate).expect("decode legacy");
            assert!(legacy);
            assert_eq!(parts(decoded), parts(applied()));
        }

        let mut damaged = stored.clone();
        *damaged.last_mut().expect("bytes") ^= 1;
        assert!(decode_snapshot::<Config, String>(&damaged, &gate).is_err(), "checksum");
    }
}
