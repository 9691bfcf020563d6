//! One shard: a Raft group whose log is the WAL and whose state is the queue state machine.
//!
//! [`Shard::propose`] stamps a command with the leader's clock and returns once the entry is
//! durable (fsynced by group commit) and applied. Message bodies are read back from the log by
//! [`MessageRef`]: from the local WAL while the segment is on disk, otherwise from object storage
//! through the [`TieredReader`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Config, ReadPolicy, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use strata_common::Clock;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::format::{
    FormatGate, LEGACY_FORMAT_VERSION, Persisted, cannot_hold, invalid_data, postcard_done, postcard_into,
    postcard_of_versions, postcard_take, unknown_version,
};
use strata_common::metering::MeterRecord;
use strata_raft::group::{GroupStorage, RaftGroup, TransferRefused, open_group, open_single_voter};
use strata_raft::raft_state::{ReplicatedState, SharedState, StateGuard};
use strata_raft::raft_store::SegmentRetention;
use strata_raft::transport::{GrpcNetwork, RaftRouter, Senders};
use strata_tls::{Credentials, Role};
use strata_wal::format::{LEGACY_FRAME_VERSION, versioned_payload};
use strata_wal::{FsyncFailure, WalOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::backfill::{BackfillFiles, FETCH_BYTES_MAX, FETCH_ENTRIES_MAX};
use crate::calls::CallBatcher;
use crate::error::NodeError;
use crate::hibernation::Hibernation;
use crate::message_trace::{TraceEvent, TraceRecord};
use crate::queue::schedule::{
    LOAD_CHUNK_RECORDS_MAX, ScheduledMessage, SliceRecord, deliver_at_of, is_waiting_in, slice_of,
};
use crate::queue::{
    CallerNote, Command, HandOffs, MessageRef, MovedAway, Moves, NewMessage, QueueError, QueueId,
    REQUEST_DIGEST_SEPARATOR, Response, ShardCommand, ShardState, StoredSizes, Touch,
};
use crate::queue_metrics::{Gauges, MINUTE_MS, MetricsStore, Minute};
use crate::schedule_files::{self, SliceFiles, read_slice};
use crate::tier::TieredReader;

/// A shard log entry: one queue command stamped with the leader's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry(pub ShardCommand);

/// The first format generation whose shard commands may carry request digests (version 2).
pub const REQUEST_DIGEST_GENERATION: strata_common::format::FormatGeneration = 2;

/// The first format generation whose shard commands may take back undelivered receives
/// ([`Command::ReturnUndelivered`], version 3).
pub const RETURN_UNDELIVERED_GENERATION: strata_common::format::FormatGeneration = 5;

/// The first format generation whose shard log entries may carry the calls of many clients
/// ([`Command::Calls`], version 4).
pub const BATCHED_CALLS_GENERATION: strata_common::format::FormatGeneration = 6;

/// The first format generation whose shard commands may keep who made a call
/// ([`Command::WithCaller`], version 5).
pub const CALLER_NOTES_GENERATION: strata_common::format::FormatGeneration = 7;

/// The first format generation whose shard commands may move a queue between shards
/// ([`Command::is_move_step`], version 6) and whose states may hold what a move keeps
/// ([`Moves`], state version 5).
pub const QUEUE_MOVES_GENERATION: strata_common::format::FormatGeneration = 9;

/// The first format generation whose shard commands may hand messages to another shard's
/// queues ([`Command::is_hand_off_step`], version 7) and whose states may hold the hand-off
/// outbox and marks ([`HandOffs`], state version 6).
pub const HAND_OFFS_GENERATION: strata_common::format::FormatGeneration = 10;

/// The first format generation whose shards may hibernate ([`Command::Hibernate`], shard
/// command version 7).
pub const HIBERNATION_GENERATION: strata_common::format::FormatGeneration = 10;

/// A shard log entry's command, persisted (see `docs/formats.md`). Version 1 is the postcard
/// encoding of [`ShardCommand`] as it stands; the legacy version is the same layout. Version 2
/// has that layout too, and its request id may carry the digest of its request
/// ([`crate::queue::request_key`]), which releases before it would take for a plain id.
/// Version 3 has that layout too, and may hold [`Command::ReturnUndelivered`], a variant that
/// releases before it do not know. Version 4 likewise may hold [`Command::Calls`], and version
/// 5 [`Command::WithCaller`] (alone or in `Calls`), and version 6 the commands of a queue's
/// move between shards ([`Command::is_move_step`]), and version 7 the hand-offs of messages
/// between shards and hibernation ([`Command::needs_version_7`]).
impl Persisted for ShardEntry {
    const VERSIONS: &'static [u8] = &[LEGACY_FORMAT_VERSION, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7];

    fn version_needed(&self) -> u8 {
        if self.0.command.needs_version_7() {
            return 7;
        }
        if self.0.command.is_move_step() {
            return 6;
        }
        if self.0.command.holds_caller_notes() {
            return 5;
        }
        if matches!(self.0.command, Command::Calls { .. }) {
            return 4;
        }
        if matches!(self.0.command, Command::ReturnUndelivered { .. }) {
            return 3;
        }
        let digest = self.0.request_id.as_deref().is_some_and(|id| id.contains(REQUEST_DIGEST_SEPARATOR));
        if digest { 2 } else { LEGACY_FORMAT_VERSION }
    }

    fn encode_body(&self, version: u8, out: &mut Vec<u8>) -> std::io::Result<()> {
        if version < self.version_needed() {
            return Err(cannot_hold("shard command", version));
        }
        postcard_into(&self.0, out)
    }

    fn decode_body(version: u8, body: &[u8]) -> std::io::Result<Self> {
        postcard_of_versions("shard command", version, Self::VERSIONS, body).map(ShardEntry)
    }
}

/// A shard's state in its snapshot (the slice files travel beside it). Version 1 is the postcard
/// encoding of [`ShardState`] as it stands; the legacy version is the same layout. Version 2 has
/// that layout too, and its remembered request ids may carry digests (as shard commands of
/// version 2 do). Version 3 appends what each message counts in its queue's stored bytes
/// ([`StoredSizes`]), which the serde layout leaves out; a state of an older version counts
/// its messages as 0 bytes. Version 4 appends, after those, the seqs of received messages each
/// queue remembers as moved away ([`MovedAway`]); an older version remembers none. Version 5
/// appends, after those, what the shard keeps of its queues' moves ([`Moves`]); an older version
/// holds none. Version 6 appends, after those, the hand-off outbox and marks ([`HandOffs`]); an
/// older version holds none (hand-offs closed).
impl Persisted for ShardMachine {
    const VERSIONS: &'static [u8] = &[LEGACY_FORMAT_VERSION, 1, 2, 2, 3, 4, 4, 4, 4, MOVES_VERSION, HAND_OFFS_VERSION];

    fn version_needed(&self) -> u8 {
        if self.0.holds_hand_offs() {
            HAND_OFFS_VERSION
        } else if self.0.holds_moves() {
            MOVES_VERSION
        } else if self.0.holds_request_digests() {
            2
        } else {
            LEGACY_FORMAT_VERSION
        }
    }

    fn encode_body(&self, version: u8, out: &mut Vec<u8>) -> std::io::Result<()> {
        if version < self.version_needed() {
            return Err(cannot_hold("shard state", version));
        }
        postcard_into(&self.0, out)?;
        if version >= STORED_SIZES_VERSION {
            postcard_into(&self.0.stored_sizes(), out)?;
        }
        if version >= MOVED_AWAY_VERSION {
            postcard_into(&self.0.moved_away(), out)?;
        }
        if version >= MOVES_VERSION {
            postcard_into(self.0.moves(), out)?;
        }
        if version >= HAND_OFFS_VERSION {
            postcard_into(self.0.hand_offs(), out)?;
        }
        Ok(())
    }

    fn decode_body(version: u8, body: &[u8]) -> std::io::Result<Self> {
        if version < STORED_SIZES_VERSION {
            return Ok(ShardMachine(postcard_of_versions("shard state", version, Self::VERSIONS, body)?, None));
        }
        if version > HAND_OFFS_VERSION {
            return Err(unknown_version("shard state", version));
        }
        // The serde layout, then what each version appends, in order; nothing after.
        let mut rest = body;
        let mut state: ShardState = postcard_take(&mut rest)?;
        state.restore_stored_sizes(postcard_take::<StoredSizes>(&mut rest)?).map_err(invalid_data)?;
        if version >= MOVED_AWAY_VERSION {
            state.restore_moved_away(postcard_take::<MovedAway>(&mut rest)?).map_err(invalid_data)?;
        }
        if version >= MOVES_VERSION {
            state.restore_moves(postcard_take::<Moves>(&mut rest)?);
        }
        if version >= HAND_OFFS_VERSION {
            state.restore_hand_offs(postcard_take::<HandOffs>(&mut rest)?);
        }
        postcard_done(rest)?;
        Ok(ShardMachine(state, None))
    }
}

/// The shard state format version that carries the stored sizes of messages.
const STORED_SIZES_VERSION: u8 = 3;
/// The shard state format version that carries the seqs moved away.
const MOVED_AWAY_VERSION: u8 = 4;
/// The shard state format version that carries what the shard keeps of its queues' moves.
const MOVES_VERSION: u8 = 5;
/// The shard state format version that carries the hand-off outbox and marks.
const HAND_OFFS_VERSION: u8 = 6;

/// A shard state as its snapshot holds it (without the slice files beside it), in the newest
/// format version: the version byte and the body.
pub fn encode_state(state: &ShardState) -> std::io::Result<Vec<u8>> {
    let mut out = vec![ShardMachine::FORMAT_VERSION];
    ShardMachine(state.clone(), None).encode_body(ShardMachine::FORMAT_VERSION, &mut out)?;
    Ok(out)
}

/// A shard state from what [`encode_state`] (or a snapshot of any released version) holds.
pub fn decode_state(bytes: &[u8]) -> std::io::Result<ShardState> {
    ShardMachine::decode_versioned(bytes).map(|machine| machine.0)
}

impl fmt::Display for ShardEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.0.command {
            Command::CreateQueue { .. } => "create-queue",
            Command::SetQueueConfig { .. } => "set-queue-config",
            Command::DeleteQueue { .. } => "delete-queue",
            Command::Send { .. } => "send",
            Command::Receive { .. } => "receive",
            Command::Delete { .. } => "delete",
            Command::ChangeVisibility { .. } => "change-visibility",
            Command::Purge { .. } => "purge",
            Command::Expire => "expire",
            Command::StartMoveTask { .. } => "start-move-task",
            Command::CancelMoveTask { .. } => "cancel-move-task",
            Command::MoveStep { .. } => "move-step",
            Command::ReceiveAttempt { .. } => "receive-attempt",
            Command::CancelScheduled { .. } => "cancel-scheduled",
            Command::StartScheduledLoad { .. } => "start-scheduled-load",
            Command::LoadScheduled { .. } => "load-scheduled",
            Command::TrimMetering { .. } => "trim-metering",
            Command::ReturnUndelivered { .. } => "return-undelivered",
            Command::Calls { .. } => "calls",
            Command::WithCaller { .. } => "with-caller",
            Command::FenceQueue { .. } => "fence-queue",
            Command::UnfenceQueue { .. } => "unfence-queue",
            Command::ReleaseQueue { .. } => "release-queue",
            Command::AdoptState { .. } => "adopt-state",
            Command::AdoptBodies { .. } => "adopt-bodies",
            Command::AdoptQueue { .. } => "adopt-queue",
            Command::DropAdoption { .. } => "drop-adoption",
            Command::OpenQueue { .. } => "open-queue",
            Command::OpenHandOffs => "open-hand-offs",
            Command::AcceptHandOffs { .. } => "accept-hand-offs",
            Command::TrimHandOffs { .. } => "trim-hand-offs",
            Command::ReturnHandOffs { .. } => "return-hand-offs",
            Command::Hibernate => "hibernate",
        };
        write!(f, "{name}@{}", self.0.now_ms)
    }
}

/// What happened to a message (see [`Shard::read_message_trace`]).
#[derive(Debug, Clone)]
pub struct MessageHistory {
    /// Its records, and its queue's purges, each with the queue it happened in, in log order.
    pub records: Vec<(QueueId, TraceRecord)>,
    /// The queue holding it now and when it is next visible, if a queue of the shard holds it.
    pub now: Option<(QueueId, u64)>,
    /// The shard's time of the answer.
    pub now_ms: u64,
}

/// A message as its send left it in the log: the message and its trace header, if it has one.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub message: NewMessage,
    pub trace_header: Option<String>,
}

/// The replicated state of a shard, and the slice files of its scheduled messages (which its
/// applies write, see `schedule_files`).
#[derive(Debug, Default)]
pub struct ShardMachine(pub ShardState, Option<SliceFiles>);

/// Where a shard's slice files live, inside its state-machine directory.
const SCHEDULE_DIR: &str = "schedule";
/// Where a shard's backfill files live, inside its directory.
const BACKFILL_DIR: &str = "backfill";
/// Where a replica keeps its queues' minutes (see [`crate::queue_metrics`]).
const QUEUE_METRICS_DIR: &str = "queue-metrics";

impl ShardMachine {
    /// The directory of the slice files (`None` before the store opened them).
    pub fn slice_dir(&self) -> Option<&Path> {
        self.1.as_ref().map(SliceFiles::dir)
    }
}

impl ReplicatedState for ShardMachine {
    type Command = ShardEntry;
    type Response = Response;
    const METRICS_GROUP: &'static str = "shard";

    fn apply(&mut self, log_index: u64, command: &ShardEntry) -> Response {
        let response = self.0.apply(log_index, &command.0);
        let writes = self.0.take_slice_writes();
        if !writes.is_empty() {
            let written = match &mut self.1 {
                Some(files) => files.write(writes),
                None => Err(std::io::Error::other("slice files are not open")),
            };
            // The state already counts these records: going on without them would lose
            // scheduled messages, as a failed log fsync would lose sent ones.
            if let Err(e) = written {
                tracing::error!(index = log_index, error = %e, "writing a slice file failed; stopping");
                std::process::abort();
            }
        }
        response
    }

    fn noop_response() -> Response {
        Response::Expired { count: 0 }
    }

    /// The state without its slice files' handle: a snapshot encodes the state only.
    fn copy_for_snapshot(&self) -> Self {
        ShardMachine(self.0.clone(), None)
    }

    fn open_side_files(&mut self, dir: &Path, last_applied: Option<u64>) -> std::io::Result<()> {
        let expected = self.0.slice_record_counts();
        self.1 = Some(SliceFiles::recover(&dir.join(SCHEDULE_DIR), last_applied.unwrap_or(0), &expected)?);
        self.0.message_trace().open(&dir.join(crate::message_trace::TRACE_DIR))
    }

    /// The slice files, and the message trace's records of what was applied so far: a
    /// snapshot is taken only once they are durable.
    fn sync_side_files(&self) -> std::io::Result<()> {
        self.1.as_ref().map_or(Ok(()), SliceFiles::sync)?;
        self.0.message_trace().write(true).map(drop)
    }

    fn snapshot_stored(&self) -> std::io::Result<()> {
        self.1.as_ref().map_or(Ok(()), SliceFiles::snapshot_stored)
    }

    fn export_side_files(dir: &Path, last_index: u64) -> std::io::Result<Vec<u8>> {
        schedule_files::export(&dir.join(SCHEDULE_DIR), last_index)
    }

    fn import_side_files(dir: &Path, exported: &[u8]) -> std::io::Result<()> {
        schedule_files::import(&dir.join(SCHEDULE_DIR), exported)
    }
}

openraft::declare_raft_types!(
    /// Raft types of a shard group.
    pub ShardRaftConfig:
        D = ShardEntry,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
);

/// Settings of a shard's log.
#[derive(Debug, Clone)]
pub struct ShardLogSettings {
    /// A segment is sealed (and becomes eligible for tiering) at this size.
    pub segment_size_bytes_max: u64,
    /// State machine snapshot once at least this many entries were applied since the last
    /// one and the log grew by at least the last snapshot's size (see [`snapshot_due`]);
    /// segments below the snapshot may leave the local disk once tiered.
    pub snapshot_every_entries: u64,
    /// A shard that appended nothing for this long seals its active segment, so the tail of an
    /// idle queue tiers too instead of waiting for the segment to fill.
    pub seal_idle_after: std::time::Duration,
    /// Sealed segments kept on local disk after they are tiered, newest first, up to about this
    /// many bytes (and half the disk's room above its reserve; none under 1 GiB of room): reads
    /// of recent messages, a backlog being drained, come from the local log instead of the
    /// bucket. Segments holding only dead entries go at once.
    pub local_retention_bytes: u64,
    /// A sealed segment among those kept for reads waits this long before it is uploaded, so
    /// what consumers delete within it is never uploaded at all (a queue drained as it fills
    /// uploads nothing). Durability does not wait on uploads: the log is fsynced (and
    /// replicated) before a send is acknowledged. Disk pressure (segments beyond the local
    /// retention) and replica moves upload at once.
    pub upload_after: std::time::Duration,
    /// A shard whose leader served no call for this long, and whose timers have no work,
    /// hibernates (see [`crate::hibernation`]); zero: never.
    pub hibernate_after: std::time::Duration,
}

impl Default for ShardLogSettings {
    fn default() -> Self {
        Self {
            segment_size_bytes_max: 64 * 1024 * 1024,
            snapshot_every_entries: 20_000,
            seal_idle_after: std::time::Duration::from_secs(60),
            local_retention_bytes: 1 << 30,
            upload_after: std::time::Duration::from_secs(60),
            hibernate_after: std::time::Duration::from_secs(300),
        }
    }
}

/// Whether a shard snapshots its state now: once `every_entries` entries were applied since its
/// last snapshot, and the log grew by at least that snapshot's size (`snapshot_bytes`) since. A
/// large state is snapshotted less often, so its snapshots never cost more writes (and encoding
/// CPU) than the log itself, while a restart replays about as many log bytes as the snapshot
/// holds at most (beyond the `every_entries`); a small state snapshots every `every_entries`.
/// Whatever the bytes, `SNAPSHOT_ENTRIES_FACTOR_MAX` times `every_entries` entries are enough:
/// log bytes count from what the running process wrote, so this bounds the replay of a node
/// that restarts before it writes a snapshot's size of log.
pub fn snapshot_due(entries_since: u64, log_bytes_since: u64, snapshot_bytes: u64, every_entries: u64) -> bool {
    entries_since >= every_entries
        && (log_bytes_since >= snapshot_bytes
            || entries_since >= every_entries.saturating_mul(SNAPSHOT_ENTRIES_FACTOR_MAX))
}

/// See [`snapshot_due`].
const SNAPSHOT_ENTRIES_FACTOR_MAX: u64 = 10;

/// A command's answer as callers get it: a [`Response::Error`] as the error it names.
pub(crate) fn answer_of(response: Response) -> Result<Response, StrataError> {
    match response {
        Response::Error(e) => Err(queue_error(e)),
        other => Ok(other),
    }
}

/// Maps a state-machine error onto the public error vocabulary (exhaustive, no wildcard).
pub fn queue_error(e: QueueError) -> StrataError {
    let kind = match &e {
        QueueError::QueueNotFound => ErrorKind::QueueNotFound,
        QueueError::QueueAlreadyExists => ErrorKind::Internal,
        QueueError::InvalidParameter(_) | QueueError::TooManyEntries => ErrorKind::InvalidParameter,
        QueueError::InvalidReceipt => ErrorKind::InvalidReceipt,
        QueueError::StaleReceipt => ErrorKind::StaleReceipt,
        QueueError::MessageNotInFlight => ErrorKind::MessageNotInFlight,
        QueueError::InFlightLimit => ErrorKind::LimitExceeded,
        QueueError::ScheduledMessageNotFound => ErrorKind::ScheduledMessageNotFound,
        QueueError::MeteringBacklogFull => ErrorKind::Unavailable,
        QueueError::IdempotencyConflict => ErrorKind::IdempotencyConflict,
        QueueError::QueueMoving => ErrorKind::QueueMoving,
    };
    StrataError::new(kind, e.to_string())
}

/// A shard replicated over several storage nodes: this node's Raft id and every voter's.
#[derive(Debug, Clone)]
pub struct ShardReplicas {
    pub raft_id: u64,
    /// Raft id -> the node's storage gRPC address (where its Raft transport is served).
    pub voters: BTreeMap<u64, String>,
    /// Set on the shard's first replica: it creates the group on its first start.
    pub initialize: bool,
}

/// The storage gRPC client of another replica.
type PeerClient = strata_common::proto::storage_client::StorageClient<tonic::transport::Channel>;

/// How long a read of a log entry from a peer replica may take.
const PEER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How far behind the leader's log a new replica may be when it becomes a voter.
pub const CATCH_UP_LAG_ENTRIES: u64 = 64;

/// Whether the storage node `node` may send a shard's group Raft messages: it is one of the
/// shard's replicas, or a node moving off it that may still be a voter, in `placement`. A
/// replica that has not seen its placement yet hears from any storage node, as the one that
/// brings it the group's state.
fn admits_raft_sender(placement: Option<&strata_common::proto::ShardInfo>, node: &str) -> bool {
    placement.is_none_or(|p| p.replicas.iter().any(|r| r.node_id == node) || p.leaving.iter().any(|n| n == node))
}

/// Proposes log entries to a shard's group, one command each, stamped with the leader's clock.
#[derive(Clone)]
pub(crate) struct EntryWriter {
    shard_id: u64,
    raft: openraft::Raft<ShardRaftConfig, strata_raft::raft_state::StateMachineStore<ShardRaftConfig, ShardMachine>>,
    clock: Arc<dyn Clock>,
    format: FormatGate,
    /// Shards' series of `raft_commit_duration_seconds`.
    commit_seconds: strata_telemetry::Histogram,
}

impl EntryWriter {
    /// Proposes `command` at the current time; answers after it is durable and applied (a
    /// [`Response::Error`] as the error it names).
    pub(crate) async fn write(
        &self,
        request_id: Option<String>,
        meter: Option<MeterRecord>,
        command: Command,
    ) -> Result<Response, StrataError> {
        let entry = ShardEntry(ShardCommand { now_ms: self.clock.now_ms(), command, request_id, meter });
        let timer = strata_telemetry::Timer::start();
        let written = self.raft.client_write(entry).await;
        timer.observe(&self.commit_seconds);
        let response = written.map_err(|e| match e.forward_to_leader() {
            Some(forward) => {
                let leader = forward.leader_node.as_ref().map(|n| n.addr.clone()).filter(|a| !a.is_empty());
                StrataError::not_leader(&format!("shard {}", self.shard_id), leader)
            }
            None => {
                NodeError::shard_unavailable("the shard is not available", format_args!("shard {}: {e}", self.shard_id))
                    .into()
            }
        })?;
        answer_of(response.data)
    }

    /// The generation the shard's log writes.
    pub(crate) fn format(&self) -> &FormatGate {
        &self.format
    }
}

/// A running shard.
pub struct Shard {
    pub shard_id: u64,
    /// The storage node this replica runs on (its id in metadata).
    pub node_id: String,
    /// The writer epoch claimed in metadata for the Raft term this replica leads in, if it has
    /// claimed one: `(raft term, writer epoch)`. Held while a claim is asked of metadata, so
    /// one leadership makes one claim (every claim starts a new writer epoch).
    writer_claim: tokio::sync::Mutex<Option<(u64, u64)>>,
    /// The shard's placement in metadata as last seen (from this node's heartbeats, or a
    /// change this replica made): where its leader takes the voters to have, and whose nodes
    /// may send the group Raft messages ([`admits_raft_sender`]).
    placement: Arc<parking_lot::Mutex<Option<strata_common::proto::ShardInfo>>>,
    /// Clients of the other replicas (by address) for reads of entries this one lacks; clones
    /// share one connection.
    peers: parking_lot::Mutex<HashMap<String, PeerClient>>,
    /// What this node presents to the other replicas (Raft messages, log reads).
    credentials: Credentials,
    group: RaftGroup<ShardRaftConfig, ShardMachine>,
    /// Entries before this replica's snapshot copied from its peers (see `backfill`).
    backfill: BackfillFiles,
    /// The purge point up to which the log, the backfill files and the bucket were last seen to
    /// hold every live entry.
    backfill_verified_through: std::sync::atomic::AtomicU64,
    clock: Arc<dyn Clock>,
    tiered: Arc<TieredReader>,
    /// Long polls waiting on this shard's queues, by queue: an apply wakes only the waiters of
    /// the queues it touched ([`crate::queue::Touches`]).
    wakers: Arc<QueueWakers>,
    writer: EntryWriter,
    /// Gathers receives, deletes and visibility changes into shared entries.
    calls: CallBatcher,
    /// This replica's per-queue minutes (see [`crate::queue_metrics`]); one writer at a time.
    queue_metrics: Arc<std::sync::Mutex<MetricsStore>>,
    /// Held by a flush from taking the counts to writing them.
    queue_metrics_flush: tokio::sync::Mutex<()>,
    /// Whether this replica sleeps (see [`crate::hibernation`]).
    hibernation: Arc<Hibernation>,
}

/// One watch channel per queue that has long polls waiting (dropped once none waits).
#[derive(Default)]
struct QueueWakers {
    by_queue: parking_lot::Mutex<HashMap<QueueId, watch::Sender<()>>>,
}

impl QueueWakers {
    /// A receiver that changes whenever the waiters of `queue` are woken.
    fn subscribe(&self, queue: QueueId) -> watch::Receiver<()> {
        self.by_queue.lock().entry(queue).or_insert_with(|| watch::channel(()).0).subscribe()
    }

    /// Wakes the waiters of the queues `touches` names (every waiter for `None` or a touch of
    /// every queue), and forgets the queues nobody waits on any more.
    fn wake(&self, touches: Option<Vec<Touch>>) {
        let mut by_queue = self.by_queue.lock();
        by_queue.retain(|_, sender| sender.receiver_count() > 0);
        match touches {
            Some(touches) if !touches.contains(&Touch::All) => {
                for touch in touches {
                    if let Touch::Queue(queue) = touch
                        && let Some(sender) = by_queue.get(&queue)
                    {
                        sender.send_replace(());
                    }
                }
            }
            _ => by_queue.values().for_each(|sender| {
                sender.send_replace(());
            }),
        }
    }
}

/// Wakes long polls after each batch of applies, reading what the applies touched, and puts
/// the replica to sleep or wakes it as the last entry applied says (see
/// [`crate::hibernation`]), until the shard's state is dropped.
async fn wake_loop(
    state: std::sync::Weak<SharedState<ShardRaftConfig, ShardMachine>>,
    wakers: Arc<QueueWakers>,
    hibernation: Arc<Hibernation>,
) {
    let Some(mut applied) = state.upgrade().map(|s| s.subscribe_applied()) else { return };
    let mut seen = *applied.borrow_and_update();
    while applied.changed().await.is_ok() {
        let Some(state) = state.upgrade() else { return };
        let now = *applied.borrow_and_update();
        let (touches, asleep) = {
            let state = state.read();
            (state.0.touches().since(seen), state.0.asleep_at() == Some(now))
        };
        seen = now;
        wakers.wake(touches);
        if asleep {
            hibernation.sleep();
        } else {
            hibernation.wake("an entry");
        }
    }
}

impl Shard {
    /// Opens the shard in `dir`: a single voter (`replicas: None`, `strata dev`), or this node's
    /// replica of a replicated group, which then takes messages through `router`.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        dir: &Path,
        shard_id: u64,
        node_id: &str,
        settings: &ShardLogSettings,
        clock: Arc<dyn Clock>,
        tiered: Arc<TieredReader>,
        replicas: Option<&ShardReplicas>,
        router: &RaftRouter,
        format: FormatGate,
        credentials: Credentials,
    ) -> anyhow::Result<Self> {
        let placement: Arc<parking_lot::Mutex<Option<strata_common::proto::ShardInfo>>> = Arc::default();
        let config = Config {
            cluster_name: format!("strata-shard-{shard_id}"),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            // The storage node decides (see `snapshot_due`): openraft counts entries only.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        };
        let wal_options = WalOptions {
            segment_size_bytes_max: settings.segment_size_bytes_max,
            on_fsync_error: FsyncFailure::Abort,
            ..Default::default()
        };
        let group = match replicas {
            None => {
                open_single_voter::<ShardRaftConfig, ShardMachine>(
                    dir,
                    1,
                    BasicNode::default(),
                    config,
                    GroupStorage { wal: wal_options, retention: SegmentRetention::KeepUntilReleased, format },
                )
                .await?
            }
            Some(replicas) => {
                let voters: BTreeMap<u64, BasicNode> =
                    replicas.voters.iter().map(|(&id, addr)| (id, BasicNode { addr: addr.clone() })).collect();
                let group = open_group::<ShardRaftConfig, ShardMachine, _>(
                    dir,
                    replicas.raft_id,
                    config,
                    GroupStorage { wal: wal_options, retention: SegmentRetention::KeepUntilReleased, format },
                    GrpcNetwork::new(shard_id, credentials.clone(), Role::Storage),
                    replicas.initialize.then_some(voters),
                )
                .await?;
                let placement = placement.clone();
                let senders = Senders::Named(Arc::new(move |node| admits_raft_sender(placement.lock().as_ref(), node)));
                router.register(shard_id, group.raft.clone(), senders);
                group
            }
        };
        let backfill = BackfillFiles::open(&dir.join(BACKFILL_DIR))?;
        let (writer_claim, peers, backfill_verified_through) = Default::default();
        let wakers = Arc::new(QueueWakers::default());
        let raft = group.raft.clone();
        let set_tick = Box::new(move |on: bool| raft.runtime_config().tick(on));
        let log = group.log.clone();
        let drop_caches = Box::new(move || log.forget_recent());
        let hibernation = Arc::new(Hibernation::new(shard_id, set_tick, drop_caches, clock.now_ms()));
        tokio::spawn(wake_loop(Arc::downgrade(&group.state), wakers.clone(), hibernation.clone()));
        let writer = EntryWriter {
            shard_id,
            raft: group.raft.clone(),
            clock: clock.clone(),
            format: group.log.format().clone(),
            commit_seconds: strata_telemetry::raft()
                .commit_seconds
                .get_or_create_owned(&strata_telemetry::GroupLabel { group: ShardMachine::METRICS_GROUP }),
        };
        let calls = CallBatcher::start(writer.clone());
        let queue_metrics = Arc::new(std::sync::Mutex::new(MetricsStore::new(dir.join(QUEUE_METRICS_DIR))));
        Ok(Self {
            shard_id,
            node_id: node_id.to_owned(),
            writer_claim,
            placement,
            peers,
            credentials,
            group,
            backfill,
            backfill_verified_through,
            clock,
            tiered,
            wakers,
            writer,
            calls,
            queue_metrics,
            queue_metrics_flush: tokio::sync::Mutex::new(()),
            hibernation,
        })
    }

    /// Whether this replica sleeps, and what wakes it (see [`crate::hibernation`]).
    pub fn hibernation(&self) -> &Hibernation {
        &self.hibernation
    }

    /// Whether a replica of the shard is moving to another node (its leader's membership work).
    pub fn moves_replicas(&self) -> bool {
        self.placement().is_some_and(|p| !p.leaving.is_empty())
    }

    /// Waits `period`, then, while the replica sleeps, until it wakes: the pace of the shard's
    /// timers. False once `cancel` fires.
    pub async fn pause(&self, period: std::time::Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            () = self.clock.sleep(period) => {}
        }
        if !self.hibernation.is_asleep() {
            return true;
        }
        tokio::select! {
            _ = cancel.cancelled() => false,
            () = self.hibernation.until_awake() => true,
        }
    }

    /// Writes down the per-queue counts of the applies since the last call, with the depth of
    /// each queue they name.
    pub async fn write_queue_metrics(&self) -> Result<(), StrataError> {
        // One flush at a time, from taking the counts to writing them: a later batch written
        // first would make its slots pass over the earlier one's counts as counted already.
        let _flushing = self.queue_metrics_flush.lock().await;
        let now_ms = self.clock.now_ms();
        let (deltas, gauges) = {
            let state = self.state();
            let (deltas, dropped) = state.0.activity().take();
            if dropped > 0 {
                tracing::warn!(
                    shard = self.shard_id,
                    dropped,
                    "queue metrics counts dropped: they were not written down in time"
                );
            }
            let gauges: BTreeMap<QueueId, Gauges> = deltas
                .iter()
                .map(|d| d.queue)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter_map(|queue| Some((queue, state.0.queue_gauges(queue, now_ms)?)))
                .collect();
            (deltas, gauges)
        };
        if deltas.is_empty() {
            return Ok(());
        }
        self.on_queue_metrics("writing queue metrics", move |store| store.write(&deltas, &gauges, now_ms / MINUTE_MS))
            .await
    }

    /// Runs `work` on this replica's queue metrics store, on the queue metrics thread (away
    /// from the async threads), one at a time.
    async fn on_queue_metrics<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&MetricsStore) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StrataError> {
        let store = self.queue_metrics.clone();
        self.on_io(what, move || work(&store.lock().unwrap_or_else(std::sync::PoisonError::into_inner))).await
    }

    /// The minutes of `queue` (the tenant's) from `from_minute` to `to_minute` that hold
    /// anything, and its depth now; every count applied here so far included.
    pub async fn read_queue_metrics(
        &self,
        queue: QueueId,
        tenant: &str,
        from_minute: u64,
        to_minute: u64,
    ) -> Result<(Vec<Minute>, Gauges), StrataError> {
        let now_ms = self.clock.now_ms();
        let now = {
            let state = self.state();
            if state.0.queue_config(queue, tenant).is_none() {
                return Err(queue_error(QueueError::QueueNotFound));
            }
            state.0.queue_gauges(queue, now_ms).unwrap_or_default()
        };
        self.write_queue_metrics().await?;
        let minutes = self
            .on_queue_metrics("reading queue metrics", move |store| store.read(queue, from_minute, to_minute))
            .await?;
        Ok((minutes, now))
    }

    /// Counts a receive of `queue` that delivered nothing without reaching the log (at the
    /// leader only: a follower's answer is not the queue's).
    pub fn count_empty_receive(&self, queue: QueueId) {
        if !self.is_leader() {
            return;
        }
        let counts = crate::queue_metrics::Counts { empty_receives: 1, ..Default::default() };
        self.state().0.activity().record(0, queue, self.clock.now_ms(), counts);
    }

    /// Removes the minutes past their retention and those of deleted queues.
    pub async fn prune_queue_metrics(&self) -> Result<usize, StrataError> {
        let now_ms = self.clock.now_ms();
        let live: BTreeSet<QueueId> = {
            let state = self.state();
            state.0.queue_ids().collect()
        };
        self.on_queue_metrics("pruning queue metrics", move |store| store.prune(now_ms, |queue| live.contains(&queue)))
            .await
    }

    /// Writes the message trace's waiting records (without fsync: a snapshot syncs them), on
    /// the queue metrics thread.
    pub async fn write_message_trace(&self) -> Result<(), StrataError> {
        let trace = self.state().0.message_trace().clone();
        let left_out = self.on_io("writing the message trace", move || trace.write(false)).await?;
        if left_out > 0 {
            tracing::warn!(
                shard = self.shard_id,
                left_out,
                "message trace records left out: they were not written in time"
            );
        }
        Ok(())
    }

    /// Removes message trace files past their keeping, or of deleted queues (see
    /// [`crate::message_trace::MessageTrace::prune`]).
    pub async fn prune_message_trace(&self) -> Result<(), StrataError> {
        let now_ms = self.clock.now_ms();
        let (trace, live) = {
            let state = self.state();
            (state.0.message_trace().clone(), state.0.queue_ids().collect::<BTreeSet<QueueId>>())
        };
        self.on_io("pruning the message trace", move || trace.prune(now_ms, &live)).await
    }

    /// What happened to message `message_id` of `queue` (the tenant's): its records in log
    /// order, following it into the queues it moved to, each with the queue it happened in;
    /// and, when a queue of this shard holds it now, that queue and when it is next visible.
    /// Answers `MessageNotFound` when the queue holds no record of it.
    pub async fn read_message_trace(
        &self,
        queue: QueueId,
        tenant: &str,
        message_id: Uuid,
    ) -> Result<MessageHistory, StrataError> {
        let trace = {
            let state = self.state();
            if state.0.queue_config(queue, tenant).is_none() {
                return Err(queue_error(QueueError::QueueNotFound));
            }
            state.0.message_trace().clone()
        };
        let mut records = Vec::new();
        let mut at = Some(queue);
        let mut seen = BTreeSet::new();
        // A message moves between queues of one tenant on one shard; each queue at most once
        // is followed (a message moved back and forth is traced as far as the first return).
        while let Some(current) = at.take().filter(|q| seen.insert(*q)) {
            let trace = trace.clone();
            let found = self.on_io("reading the message trace", move || trace.read(current, message_id)).await?;
            for record in crate::message_trace::purges_while_held(found, message_id) {
                if let TraceEvent::MovedTo { to, .. } = record.event
                    && self.state().0.queue_config(to, tenant).is_some()
                {
                    at = Some(to);
                }
                records.push((current, record));
            }
        }
        // Each queue's records came in log order; together they may not be (a message moved
        // away and back has records in its first queue from before and after the move).
        records.sort_by_key(|(_, r)| r.log_index);
        if !records.iter().any(|(_, r)| r.message_id == message_id) {
            return Err(StrataError::new(
                ErrorKind::MessageNotFound,
                "this queue holds no record of a message with this id",
            ));
        }
        // Where the message entered last, and whether that queue holds it still.
        let last_entry = records.iter().rev().find_map(|(q, r)| match r.event {
            TraceEvent::Sent { seq, .. } | TraceEvent::ArrivedFrom { seq, .. } if r.message_id == message_id => {
                Some((*q, seq))
            }
            _ => None,
        });
        let now = last_entry.and_then(|(q, seq)| {
            let visible_at_ms = self.state().0.message_now(q, tenant, seq, message_id)?;
            Some((q, visible_at_ms))
        });
        Ok(MessageHistory { records, now, now_ms: self.now_ms() })
    }

    /// Runs `work` on the queue metrics thread (away from the async threads).
    async fn on_io<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StrataError> {
        match crate::queue_metrics::on_io_thread(work).await {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(NodeError::local_file(what, e).into()),
            None => Err(NodeError::bug("the queue metrics thread stopped", what).into()),
        }
    }

    /// Waits until a read of this replica's state is linearizable: it leads (confirmed by a
    /// quorum, so a deposed leader that has not heard of its successor answers no) and has
    /// applied everything committed before the call. Elsewhere answers where the leader is.
    /// Reads of local state that must not be stale (counts, move tasks) start with this.
    pub async fn read_barrier(&self) -> Result<(), StrataError> {
        self.group.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map(|_| ()).map_err(|e| {
            let leader = e
                .forward_to_leader()
                .and_then(|f| f.leader_node.as_ref())
                .map(|n| n.addr.clone())
                .filter(|a| !a.is_empty());
            StrataError::not_leader(&format!("shard {}", self.shard_id), leader)
        })
    }

    /// Whether this replica leads its group now (always, for a single voter). Background work
    /// that proposes or uploads (expiry, move tasks, scheduled loads, tiering) runs on the
    /// leader only.
    pub fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    /// Whether this replica knows its group's leader (itself or another): it is led or followed.
    pub fn leader_known(&self) -> bool {
        self.group.leader_known()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The clock the shard stamps commands with; its background loops wait on it too.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Proposes a command at the current time; returns after it is durable and applied.
    pub async fn propose(&self, command: Command) -> Result<Response, StrataError> {
        self.propose_metered(None, None, command).await
    }

    /// [`Shard::propose`], applied once per `request_id` (see [`ShardCommand::request_id`]), with
    /// the call's metering record `meter` in the same entry (see [`ShardCommand::meter`]).
    /// Receives, deletes and visibility changes share entries with other clients' (see
    /// [`crate::calls`]).
    pub async fn propose_metered(
        &self,
        request_id: Option<String>,
        meter: Option<MeterRecord>,
        command: Command,
    ) -> Result<Response, StrataError> {
        let commit = async {
            if request_id.is_none() && command.batchable() {
                return self.calls.propose(command, meter).await;
            }
            self.writer.write(request_id, meter, command).await
        };
        if !strata_telemetry::trace::traced() {
            return commit.await;
        }
        // A traced call's wait for its entry to be durable on a majority and applied.
        commit.instrument(tracing::info_span!("raft commit", otel.name = "raft commit", shard = self.shard_id)).await
    }

    /// The applied queue state. Hold the guard briefly: applies wait for it.
    pub fn state(&self) -> StateGuard<'_, ShardRaftConfig, ShardMachine> {
        self.group.state.read()
    }

    /// Changes whenever entries are applied.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.group.state.subscribe_applied()
    }

    /// Changes whenever an apply may have made a message of `queue` receivable, or changed or
    /// removed the queue (and, once after a snapshot is installed, for every queue).
    pub fn queue_waker(&self, queue: QueueId) -> watch::Receiver<()> {
        self.wakers.subscribe(queue)
    }

    /// The last log index Raft has purged: entries at or below it are covered by a snapshot and
    /// are never read by Raft again (restart replay starts after it).
    /// The shard's placement in metadata as last seen, if seen yet.
    pub fn placement(&self) -> Option<strata_common::proto::ShardInfo> {
        self.placement.lock().clone()
    }

    /// Records the shard's placement as metadata last answered it.
    pub fn set_placement(&self, placement: strata_common::proto::ShardInfo) {
        *self.placement.lock() = Some(placement);
    }

    /// Whether the group's voters are the placement's replicas.
    pub fn voters_are(&self, placement: &strata_common::proto::ShardInfo) -> bool {
        let metrics = self.group.raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
        voters == placement.replicas.iter().map(|r| r.raft_id).collect()
    }

    /// One step towards the group's voters being the placement's replicas, on the leader. A new
    /// replica first joins as a learner; once it has caught up (within
    /// [`CATCH_UP_LAG_ENTRIES`] of the leader's log) the voters are replaced through joint
    /// consensus, and a removed voter leaves the group (only once `may_remove`: the caller knows
    /// the bucket holds what the new replica lacks). Answers whether the voters match now;
    /// called again until they do.
    pub async fn change_voters(
        &self,
        placement: &strata_common::proto::ShardInfo,
        may_remove: bool,
    ) -> Result<bool, StrataError> {
        let target: BTreeMap<u64, String> = placement.replicas.iter().map(|r| (r.raft_id, r.address.clone())).collect();
        let metrics = self.group.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.iter().eq(target.keys()) {
            return Ok(true);
        }
        let failed = |what: &'static str, e: &dyn std::fmt::Display| {
            StrataError::from(NodeError::shard_unavailable(what, format_args!("shard {}: {e}", self.shard_id)))
        };
        let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let mut joining = false;
        for (&id, addr) in target.iter().filter(|(id, _)| !known.contains(id)) {
            tracing::info!(shard = self.shard_id, raft_id = id, addr, "adding a learner");
            let node = BasicNode { addr: addr.clone() };
            self.group.raft.add_learner(id, node, false).await.map_err(|e| failed("adding a learner failed", &e))?;
            joining = true;
        }
        let last_index = metrics.last_log_index.unwrap_or(0);
        let caught_up = |id: &u64| {
            let matched = metrics.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
            matched.is_some_and(|m| m + CATCH_UP_LAG_ENTRIES >= last_index)
        };
        if joining || !may_remove || !target.keys().filter(|id| !voters.contains(id)).all(caught_up) {
            return Ok(false);
        }
        let ids: BTreeSet<u64> = target.keys().copied().collect();
        tracing::info!(shard = self.shard_id, ?ids, "replacing the voters");
        self.group.raft.change_membership(ids, false).await.map_err(|e| failed("changing the voters failed", &e))?;
        Ok(true)
    }

    /// On the leader: hands leadership to another voter before a planned stop (see
    /// [`strata_raft::group::RaftGroup::hand_off_leadership`]). Answers whether it moved.
    pub async fn hand_off_leadership(&self) -> bool {
        let moved = self.group.hand_off_leadership().await;
        if moved {
            tracing::info!(shard = self.shard_id, "leadership handed off");
        }
        moved
    }

    /// Hands the shard's leadership to the replica on `to_node` (see
    /// [`strata_raft::group::RaftGroup::transfer_leadership`], which falls back to another
    /// caught-up replica when that one does not take over within `wait`); answers the node that
    /// leads then. Elsewhere than on the leader, answers where the leader is.
    pub async fn transfer_leadership(&self, to_node: &str, wait: std::time::Duration) -> Result<String, StrataError> {
        self.read_barrier().await?;
        let what = format!("shard {}", self.shard_id);
        let replicas = self.placement().map(|p| p.replicas).unwrap_or_default();
        let Some(to) = replicas.iter().find(|r| r.node_id == to_node) else {
            if to_node == self.node_id {
                return Ok(to_node.to_owned());
            }
            return Err(StrataError::invalid(format!("{to_node} holds no replica of {what}")));
        };
        let leader = self.group.transfer_leadership(to.raft_id, wait).await.map_err(|e| match e {
            TransferRefused::NotLeader => StrataError::not_leader(&what, None),
            TransferRefused::NotAVoter => {
                StrataError::invalid(format!("{to_node} is not a voter of {what} yet (its replica is still joining)"))
            }
            TransferRefused::Stopped(e) => StrataError::unavailable(format!("{what} stopped: {e}")),
            // About the replica asked for, not this one: a retry elsewhere would not help.
            refused => StrataError::invalid(format!("leadership of {what} stays where it is: {to_node}: {refused}")),
        })?;
        let node = leader.and_then(|id| replicas.iter().find(|r| r.raft_id == id)).map(|r| r.node_id.clone());
        node.ok_or_else(|| {
            StrataError::unavailable(format!("no replica took over {what} in time; an election follows"))
        })
    }

    /// The Raft term this replica leads in, if it leads.
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.group.raft.metrics().borrow_watched().clone();
        (metrics.state == openraft::ServerState::Leader).then_some(metrics.current_term)
    }

    /// The last log index applied here (so committed).
    pub fn applied_index(&self) -> Option<u64> {
        self.group.raft.metrics().borrow_watched().last_applied.map(|id| id.index)
    }

    /// The writer claim of this replica, `(raft term, writer epoch)`, locked (see
    /// [`crate::tier::claim_writer_epoch`]).
    pub(crate) async fn writer_claim(&self) -> tokio::sync::MutexGuard<'_, Option<(u64, u64)>> {
        self.writer_claim.lock().await
    }

    pub fn purged_index(&self) -> Option<u64> {
        self.group.log.last_purged_index()
    }

    /// The stored snapshot's last log index and size in bytes (`(0, 0)` before the first);
    /// `None` while one is being stored, sent or installed.
    pub fn stored_snapshot(&self) -> Option<(u64, u64)> {
        self.group.state.stored_snapshot()
    }

    pub fn trigger_snapshot(&self) {
        let raft = self.group.raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "snapshot trigger failed");
            }
        });
    }

    pub fn wal(&self) -> &strata_wal::Wal {
        self.group.log.wal()
    }

    pub fn backfill(&self) -> &BackfillFiles {
        &self.backfill
    }

    pub fn backfill_verified_through(&self) -> u64 {
        self.backfill_verified_through.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_backfill_verified_through(&self, purged_index: u64) {
        self.backfill_verified_through.fetch_max(purged_index, std::sync::atomic::Ordering::Relaxed);
    }

    /// The encoded entry at `index` from this replica's WAL or backfill files, if it holds it.
    fn local_record(&self, index: u64) -> Result<Option<Bytes>, StrataError> {
        match self.wal().read(index).map_err(|e| self.log_read_failed(index, e))? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.backfill.read(index).map_err(|e| self.log_read_failed(index, e)),
        }
    }

    fn log_read_failed(&self, index: u64, error: impl fmt::Display) -> StrataError {
        NodeError::local_file("could not read the log", format_args!("shard {}, entry {index}: {error}", self.shard_id))
            .into()
    }

    /// Committed entries from `first_index` on that this replica holds locally, encoded for a
    /// peer: consecutive, stopping before the first it lacks (not committed yet, released, or
    /// before its snapshot and not copied), at `count_max` (capped) or at about 4 MiB.
    pub fn local_entries(&self, first_index: u64, count_max: u32) -> Result<Vec<Bytes>, StrataError> {
        let applied = self.applied_index().unwrap_or(0);
        let count_max = u64::from(count_max.clamp(1, FETCH_ENTRIES_MAX));
        let mut entries = Vec::new();
        let mut bytes = 0;
        for index in first_index..first_index.saturating_add(count_max) {
            if index > applied || bytes >= FETCH_BYTES_MAX {
                break;
            }
            let Some(entry) = self.local_record(index)? else { break };
            bytes += entry.len();
            entries.push(entry);
        }
        Ok(entries)
    }

    /// A client of the replica at `address` (`None` if the address is not one).
    pub(crate) fn peer_client(&self, address: &str) -> Option<PeerClient> {
        let mut peers = self.peers.lock();
        if let Some(client) = peers.get(address) {
            return Some(client.clone());
        }
        let channel = strata_tls::lazy_channel(address, PEER_READ_TIMEOUT, &self.credentials, Role::Storage).ok()?;
        let client = PeerClient::new(channel).max_decoding_message_size(strata_common::limits::GRPC_MESSAGE_BYTES_MAX);
        peers.insert(address.to_owned(), client.clone());
        Some(client)
    }

    /// Up to `count_max` consecutive entries from `first_index` on, from the first other replica
    /// whose local log holds `first_index`: for a replica that caught up by snapshot (so lacks
    /// entries before it) while they are not in the bucket. Empty when no peer answers with it.
    pub async fn entries_from_peers(&self, first_index: u64, count_max: u32) -> Vec<(u64, Bytes)> {
        let peers: Vec<String> = {
            let metrics = self.group.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            membership.nodes().filter(|(id, _)| **id != metrics.id).map(|(_, n)| n.addr.clone()).collect()
        };
        for peer in peers {
            let Some(mut client) = self.peer_client(&peer) else { continue };
            let request = strata_common::proto::ReadLogEntriesRequest {
                shard_id: self.shard_id,
                first_index,
                count_max,
                versioned_payloads: true,
            };
            match client.read_log_entries(request).await {
                Ok(answer) if !answer.get_ref().entries.is_empty() => {
                    let answer = answer.into_inner();
                    let versioned = answer.versioned_payloads;
                    let entries = answer.entries.into_iter().map(|entry| {
                        // A peer of a release from before payload versions sends legacy entries.
                        if versioned { entry } else { versioned_payload(LEGACY_FRAME_VERSION, entry) }
                    });
                    return (first_index..).zip(entries).collect();
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(shard = self.shard_id, first_index, peer, error = %e, "peer read failed"),
            }
        }
        Vec::new()
    }

    /// Which format generation this replica writes, and the newest it reads.
    pub fn log_format(&self) -> &FormatGate {
        self.group.log.format()
    }

    /// The entry at `index` from another replica's local log (see [`Shard::entries_from_peers`]).
    async fn entry_from_peers(&self, index: u64) -> Result<openraft::alias::EntryOf<ShardRaftConfig>, StrataError> {
        match self.entries_from_peers(index, 1).await.pop() {
            Some((_, bytes)) => decode_entry(&bytes, self.log_format()),
            None => Err(NodeError::shard_unavailable(
                "a message could not be read from the log now",
                format_args!("shard {}: entry {index} is neither local, nor tiered, nor on a peer", self.shard_id),
            )
            .into()),
        }
    }

    /// An entry this replica's WAL lacks: from its backfill files, else the bucket, else a peer.
    async fn entry_elsewhere(&self, index: u64) -> Result<openraft::alias::EntryOf<ShardRaftConfig>, StrataError> {
        if let Some(bytes) = self.backfill.read(index).map_err(|e| self.log_read_failed(index, e))? {
            return decode_entry(&bytes, self.log_format());
        }
        let tiered = self.tiered.read_record(self.shard_id, index).await;
        match tiered.and_then(|bytes| decode_entry(&bytes, self.log_format())) {
            Err(e) if e.kind == ErrorKind::Internal => self.entry_from_peers(index).await,
            read => read,
        }
    }

    /// The records of this replica's slice file starting at `slice_start_ms` (for a queue's move).
    pub async fn slice_records(&self, slice_start_ms: u64) -> Result<Vec<SliceRecord>, StrataError> {
        let dir = self.state().slice_dir().map(Path::to_path_buf);
        let dir =
            dir.ok_or_else(|| NodeError::bug("a shard without slice files has scheduled messages", slice_start_ms))?;
        read_slice_blocking(dir, slice_start_ms).await
    }

    /// Reads the messages `refs` point at, one answer per ref in order, each with the trace
    /// header its send kept for it: each Send entry is read and decoded once however many of
    /// its messages are asked for, from the local WAL first (then its backfill files), then
    /// object storage, then another replica's local log. One entry that cannot be read fails
    /// only the refs into it.
    pub async fn read_messages(&self, refs: &[MessageRef]) -> Vec<Result<StoredMessage, StrataError>> {
        let mut by_entry: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (position, at) in refs.iter().enumerate() {
            by_entry.entry(at.log_index).or_default().push(position);
        }
        let mut out: Vec<Option<Result<StoredMessage, StrataError>>> = vec![None; refs.len()];
        for (log_index, positions) in by_entry {
            // Each message moves out of its decoded entry (a receive names a message once).
            let mut entry = self
                .send_entry(log_index)
                .await
                .map(|(messages, caller)| (messages.into_iter().map(Some).collect::<Vec<_>>(), caller));
            for position in positions {
                let slot = refs[position].slot;
                out[position] = Some(match &mut entry {
                    Ok((messages, caller)) => messages
                        .get_mut(usize::from(slot))
                        .and_then(Option::take)
                        .map(|message| StoredMessage {
                            message,
                            trace_header: caller.as_ref().and_then(|c| c.trace_header(slot)).map(str::to_owned),
                        })
                        .ok_or_else(|| {
                            let detail = format!("shard {}, entry {log_index}, slot {slot}", self.shard_id);
                            NodeError::damaged("a message reference points past its batch", detail).into()
                        }),
                    Err(e) => Err(e.clone()),
                });
            }
        }
        out.into_iter().flatten().collect()
    }

    /// The messages of the Send entry at `log_index`, and who sent them when the entry says.
    async fn send_entry(&self, log_index: u64) -> Result<(Vec<NewMessage>, Option<CallerNote>), StrataError> {
        let local = self.group.log.read_entry(log_index).map_err(|e| self.log_read_failed(log_index, e))?;
        let entry = match local {
            Some(entry) => entry,
            None => self.entry_elsewhere(log_index).await?,
        };
        let command = match entry.payload {
            openraft::EntryPayload::Normal(ShardEntry(ShardCommand { command, .. })) => Some(command),
            _ => None,
        };
        match command.map(Command::into_call_and_caller) {
            Some((Command::Send { messages, .. }, caller)) => Ok((messages, caller)),
            // Bodies copied here with a queue that moved from another shard, or with messages
            // another shard handed off.
            Some((
                Command::AdoptBodies { messages, trace_headers, .. }
                | Command::AcceptHandOffs { messages, trace_headers, .. },
                None,
            )) => Ok((messages, Some(CallerNote { trace_headers, ..CallerNote::default() }))),
            _ => {
                let detail = format!("shard {}, entry {log_index}", self.shard_id);
                Err(NodeError::damaged("a message reference does not point at a send", detail).into())
            }
        }
    }

    /// Cancels a message scheduled with a deliver-at time that is not due yet. While its slice is
    /// on disk, the slice file is searched first, so that an unknown id is answered as such.
    pub async fn cancel_scheduled(&self, queue: QueueId, tenant: String, message_id: Uuid) -> Result<(), StrataError> {
        let not_found = || queue_error(QueueError::ScheduledMessageNotFound);
        let (purged_at, on_disk) = {
            let state = self.state();
            // Another tenant's queue answers like a missing queue, before anything else.
            let purged_at =
                state.0.purged_at_log_index(queue, &tenant).ok_or_else(|| queue_error(QueueError::QueueNotFound))?;
            let slice_start_ms = deliver_at_of(&message_id).map(slice_of).ok_or_else(not_found)?;
            let dir = state.slice_dir().filter(|_| state.0.has_slice(slice_start_ms)).map(Path::to_path_buf);
            (purged_at, dir.map(|dir| (dir, slice_start_ms)))
        };
        if let Some((dir, slice_start_ms)) = on_disk {
            let records = read_slice_blocking(dir, slice_start_ms).await?;
            if !is_waiting_in(&records, queue, message_id, purged_at) {
                return Err(not_found());
            }
        }
        match self.propose(Command::CancelScheduled { queue, tenant, message_id }).await? {
            Response::ScheduledCancelled => Ok(()),
            other => Err(NodeError::bug("unexpected answer to a cancel", format_args!("{other:?}")).into()),
        }
    }

    /// One step of loading the scheduled messages of slices coming due: freezes the next slice
    /// due, or proposes the next chunk of its file. `cache` keeps the file read between steps.
    /// Answers whether there may be more to do right away.
    pub async fn load_scheduled_step(&self, cache: &mut Option<SliceLoad>) -> Result<bool, StrataError> {
        let now_ms = self.now_ms();
        // The counts only: the slice's set of pending cancels stays in the state.
        let (slice_start_ms, loading, loaded, records, dir) = {
            let state = self.state();
            let Some((start, slice)) = state.0.next_slice_to_load(now_ms) else {
                return Ok(false);
            };
            (start, slice.loading, slice.loaded, slice.records, state.slice_dir().map(Path::to_path_buf))
        };
        if !loading {
            self.propose(Command::StartScheduledLoad { slice_start_ms }).await?;
            return Ok(true);
        }
        if cache.as_ref().is_none_or(|c| c.slice_start_ms != slice_start_ms) {
            let dir =
                dir.ok_or_else(|| NodeError::bug("slice files are not open", format_args!("shard {}", self.shard_id)))?;
            let read = read_slice_blocking(dir, slice_start_ms).await?;
            if read.len() as u64 != records {
                let detail = format!(
                    "shard {}, slice {slice_start_ms}: {} records read, {records} counted",
                    self.shard_id,
                    read.len()
                );
                return Err(NodeError::damaged("a slice file does not match the shard state", detail).into());
            }
            *cache = Some(SliceLoad::new(slice_start_ms, read));
        }
        let Some(load) = cache.as_ref() else { return Ok(false) };
        let from = loaded;
        let to = (from + LOAD_CHUNK_RECORDS_MAX as u64).min(records);
        let messages = load.messages_between(from, to);
        self.propose(Command::LoadScheduled { slice_start_ms, from, to, messages }).await?;
        Ok(true)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.group.raft.shutdown().await {
            tracing::warn!(shard = self.shard_id, error = %e, "shard raft shutdown");
        }
        self.group.log.wal().close();
    }
}

/// A slice file read for loading: its messages not cancelled in it, with their positions.
pub struct SliceLoad {
    slice_start_ms: u64,
    /// `(position in the file, message)`, by position.
    messages: Vec<(u64, ScheduledMessage)>,
}

impl SliceLoad {
    pub(crate) fn new(slice_start_ms: u64, records: Vec<SliceRecord>) -> Self {
        let cancelled: BTreeSet<(QueueId, Uuid)> = records
            .iter()
            .filter_map(|r| match r {
                SliceRecord::Cancel { queue, message_id, .. } => Some((*queue, *message_id)),
                SliceRecord::Message(_) => None,
            })
            .collect();
        let messages = (0u64..)
            .zip(records)
            .filter_map(|(position, r)| match r {
                SliceRecord::Message(m) if !cancelled.contains(&(m.queue, m.message_id)) => Some((position, m)),
                _ => None,
            })
            .collect();
        Self { slice_start_ms, messages }
    }

    /// The messages at positions `from..to`.
    pub(crate) fn messages_between(&self, from: u64, to: u64) -> Vec<ScheduledMessage> {
        let start = self.messages.partition_point(|(position, _)| *position < from);
        self.messages[start..].iter().take_while(|(position, _)| *position < to).map(|(_, m)| *m).collect()
    }
}

async fn read_slice_blocking(dir: PathBuf, slice_start_ms: u64) -> Result<Vec<SliceRecord>, StrataError> {
    let read = tokio::task::spawn_blocking(move || read_slice(&dir, slice_start_ms)).await;
    match read {
        Ok(Ok(records)) => Ok(records),
        Ok(Err(e)) => {
            Err(NodeError::local_file("could not read scheduled messages", format_args!("slice {slice_start_ms}: {e}"))
                .into())
        }
        Err(e) => Err(NodeError::bug("a slice read task failed", e).into()),
    }
}

/// Decodes a shard log entry from a WAL record payload (of a tiered segment, a backfill file or
/// a peer's log), refusing versions newer than `format` reads.
pub fn decode_entry(
    bytes: &Bytes,
    format: &FormatGate,
) -> Result<openraft::alias::EntryOf<ShardRaftConfig>, StrataError> {
    strata_raft::persisted::decode_entry::<ShardRaftConfig>(bytes, format)
        .map_err(|e| NodeError::damaged("a stored log entry could not be decoded", e).into())
}

#[cfg(test)]
mod snapshot_tests {
    use super::snapshot_due;

    #[test]
    fn a_large_state_is_snapshotted_once_the_log_grew_by_its_size() {
        // A small state: every 20,000 entries.
        assert!(!snapshot_due(19_999, 10 << 20, 1_000, 20_000));
        assert!(snapshot_due(20_000, 10 << 20, 1_000, 20_000));
        // A 60 MB state: 20,000 small entries are not enough, 60 MB of log is, and so are ten
        // times the entries.
        assert!(!snapshot_due(20_000, 5 << 20, 60 << 20, 20_000));
        assert!(!snapshot_due(199_999, (60 << 20) - 1, 60 << 20, 20_000));
        assert!(snapshot_due(100_000, 60 << 20, 60 << 20, 20_000));
        assert!(snapshot_due(200_000, 0, 60 << 20, 20_000));
        // The first snapshot: entries alone.
        assert!(snapshot_due(20_000, 0, 0, 20_000));
    }
}

#[cfg(test)]
mod waker_tests {
    use super::*;

    #[test]
    fn an_apply_wakes_only_the_waiters_of_the_queues_it_touched() {
        let wakers = QueueWakers::default();
        let (one, two) = (wakers.subscribe(1), wakers.subscribe(2));
        wakers.wake(Some(vec![Touch::Queue(1), Touch::Queue(3)]));
        assert!(one.has_changed().unwrap_or(false), "queue 1 was touched");
        assert!(!two.has_changed().unwrap_or(true), "queue 2 was not");
        wakers.wake(Some(vec![]));
        assert!(!two.has_changed().unwrap_or(true));
        wakers.wake(Some(vec![Touch::All]));
        assert!(two.has_changed().unwrap_or(false), "a touch of every queue wakes every waiter");
        let mut two = two;
        two.mark_unchanged();
        wakers.wake(None);
        assert!(two.has_changed().unwrap_or(false), "unknown touches wake every waiter");
        drop((one, two));
        wakers.wake(Some(vec![]));
        assert!(wakers.by_queue.lock().is_empty(), "queues nobody waits on are forgotten");
    }
}

/// Golden fixtures of the shard's persisted values (see `docs/formats.md`): every command kind,
/// and a state holding something of every kind (queues of each type, visible, in-flight, delayed
/// and scheduled messages, FIFO groups, a dead-letter move, a move task, request ids, the
/// metering outbox).
#[cfg(test)]
mod format_tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use strata_common::format::golden;

    use super::*;
    use crate::queue::schedule::scheduled_message_id;
    use crate::queue::{AttributeValue, Call, FifoConfig, FifoIds, HandOffArrival, QueueConfig, Receipt, Redrive};

    const TENANT: &str = "acme";
    const NOW_MS: u64 = 1_796_569_000_000;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats/shard")
    }

    fn message(n: u8, fifo: Option<(&str, &str)>) -> NewMessage {
        NewMessage {
            message_id: Uuid::from_bytes([n; 16]),
            body: Bytes::from(format!("body {n}")),
            attributes: BTreeMap::from([
                ("s".to_string(), AttributeValue::String("text".into())),
                ("n".to_string(), AttributeValue::Number("42".into())),
                ("b".to_string(), AttributeValue::Binary(vec![0, 1, 255])),
                (
                    "l".to_string(),
                    AttributeValue::Labeled {
                        data_type: "Number.int".into(),
                        value: Box::new(AttributeValue::Number("7".into())),
                    },
                ),
            ]),
            delay_ms: None,
            deliver_at_ms: None,
            fifo: fifo.map(|(group_id, deduplication_id)| FifoIds {
                group_id: group_id.into(),
                deduplication_id: deduplication_id.into(),
            }),
        }
    }

    fn meter() -> MeterRecord {
        MeterRecord {
            request_id: "c-req-1".into(),
            tenant: TENANT.into(),
            sub_tenant: "shop-9".into(),
            queue: "orders".into(),
            action: "SendMessage".into(),
            at_ms: NOW_MS,
            units: 1,
            bytes_in: 6,
            bytes_out: 0,
            empty_receive: false,
        }
    }

    fn standard() -> QueueConfig {
        QueueConfig { redrive: Some(Redrive { dead_letter_queue: 2, max_receive_count: 1 }), ..QueueConfig::default() }
    }

    fn fifo() -> QueueConfig {
        QueueConfig { fifo: Some(FifoConfig { deduplication_per_group: true }), ..QueueConfig::default() }
    }

    /// One command of every kind, in an order that also builds a state of every kind.
    fn commands() -> Vec<(&'static str, ShardCommand)> {
        let tenant = || TENANT.to_string();
        let receipt = Receipt { queue: 1, seq: 1, lease: 9 }.encode();
        let deliver_at_ms = NOW_MS + 86_400_000;
        let scheduled = NewMessage {
            message_id: scheduled_message_id(deliver_at_ms, Uuid::from_bytes([5; 16])),
            deliver_at_ms: Some(deliver_at_ms),
            ..message(5, None)
        };
        let plain = |command| ShardCommand { now_ms: NOW_MS, command, request_id: None, meter: None };
        vec![
            ("create-queue", plain(Command::CreateQueue { queue: 1, tenant: tenant(), config: standard() })),
            (
                "create-dead-letter-queue",
                plain(Command::CreateQueue { queue: 2, tenant: tenant(), config: QueueConfig::default() }),
            ),
            ("create-fifo-queue", plain(Command::CreateQueue { queue: 3, tenant: tenant(), config: fifo() })),
            (
                "set-queue-config",
                plain(Command::SetQueueConfig {
                    queue: 2,
                    tenant: tenant(),
                    config: QueueConfig { delay_ms: 1_000, ..QueueConfig::default() },
                }),
            ),
            (
                "send",
                ShardCommand {
                    now_ms: NOW_MS,
                    command: Command::Send {
                        queue: 1,
                        tenant: tenant(),
                        messages: vec![message(1, None), NewMessage { delay_ms: Some(60_000), ..message(2, None) }],
                    },
                    request_id: Some("c-req-1".into()),
                    meter: Some(meter()),
                },
            ),
            ("send-scheduled", plain(Command::Send { queue: 1, tenant: tenant(), messages: vec![scheduled] })),
            (
                "send-fifo",
                plain(Command::Send {
                    queue: 3,
                    tenant: tenant(),
                    messages: vec![message(3, Some(("g1", "d1"))), message(4, Some(("g2", "d2")))],
                }),
            ),
            (
                "receive",
                plain(Command::Receive {
                    queue: 1,
                    tenant: tenant(),
                    max_messages: 10,
                    visibility_timeout_ms: Some(0),
                }),
            ),
            (
                "receive-attempt",
                plain(Command::ReceiveAttempt {
                    queue: 3,
                    tenant: tenant(),
                    max_messages: 1,
                    visibility_timeout_ms: Some(30_000),
                    attempt_id: "attempt-1".into(),
                }),
            ),
            (
                "delete",
                plain(Command::Delete {
                    queue: 3,
                    tenant: tenant(),
                    receipts: vec![receipt.clone(), "not-a-receipt".into()],
                }),
            ),
            (
                "change-visibility",
                plain(Command::ChangeVisibility { queue: 1, tenant: tenant(), receipt, visibility_timeout_ms: 5_000 }),
            ),
            (
                "start-move-task",
                plain(Command::StartMoveTask { tenant: tenant(), source: 2, destination: 1, max_per_second: 10 }),
            ),
            ("move-step", plain(Command::MoveStep { task_id: 12, max_messages: 1 })),
            ("cancel-move-task", plain(Command::CancelMoveTask { tenant: tenant(), task_id: 12 })),
            (
                "cancel-scheduled",
                plain(Command::CancelScheduled { queue: 1, tenant: tenant(), message_id: Uuid::from_bytes([6; 16]) }),
            ),
            (
                "start-scheduled-load",
                plain(Command::StartScheduledLoad { slice_start_ms: NOW_MS - NOW_MS % 3_600_000 }),
            ),
            (
                "load-scheduled",
                plain(Command::LoadScheduled {
                    slice_start_ms: NOW_MS - NOW_MS % 3_600_000,
                    from: 0,
                    to: 1,
                    messages: vec![ScheduledMessage {
                        queue: 1,
                        message_id: Uuid::from_bytes([7; 16]),
                        body_ref: MessageRef { log_index: 6, slot: 0 },
                        deliver_at_ms: NOW_MS,
                        sent_ms: NOW_MS - 1,
                        body_bytes: 0,
                    }],
                }),
            ),
            ("trim-metering", plain(Command::TrimMetering { through_seq: 0 })),
            ("expire", plain(Command::Expire)),
            ("purge", plain(Command::Purge { queue: 2, tenant: tenant() })),
            ("delete-queue", plain(Command::DeleteQueue { queue: 2, tenant: tenant() })),
            // Last, so the states built from this list stay those of the fixtures before it.
            (
                "return-undelivered",
                plain(Command::ReturnUndelivered {
                    queue: 1,
                    tenant: tenant(),
                    receipts: vec!["not-a-receipt".into()],
                }),
            ),
        ]
    }

    /// A send whose request id carries its request's digest (format version 2 on).
    fn send_with_digest() -> ShardCommand {
        let messages = vec![message(8, None)];
        let request_id = Some(crate::queue::request_key("c-req-2", &messages));
        ShardCommand {
            now_ms: NOW_MS,
            command: Command::Send { queue: 1, tenant: TENANT.into(), messages },
            request_id,
            meter: None,
        }
    }

    #[test]
    fn every_command_kind_matches_its_golden_fixture() {
        for (name, command) in commands() {
            golden::check(&fixtures(), &format!("command-{name}"), &ShardEntry(command));
        }
        let entry = ShardEntry(send_with_digest());
        assert_eq!(entry.version_needed(), 2);
        golden::check(&fixtures(), "command-send-with-digest", &entry);
        let mut too_old = Vec::new();
        assert!(entry.encode_body(1, &mut too_old).is_err(), "version 1 cannot hold a digest");
        let (_, take_back) = commands().pop().expect("commands");
        let entry = ShardEntry(take_back);
        assert_eq!(entry.version_needed(), 3);
        assert!(entry.encode_body(2, &mut too_old).is_err(), "version 2 cannot hold a take-back");
        assert_eq!(ShardEntry::version_for(RETURN_UNDELIVERED_GENERATION - 1), 2);
        assert_eq!(ShardEntry::version_for(RETURN_UNDELIVERED_GENERATION), 3);

        let receipt = Receipt { queue: 1, seq: 1, lease: 9 }.encode();
        let calls = vec![
            Call {
                command: Command::Receive {
                    queue: 1,
                    tenant: TENANT.into(),
                    max_messages: 10,
                    visibility_timeout_ms: None,
                },
                meter: Some(meter()),
            },
            Call { command: Command::Delete { queue: 1, tenant: TENANT.into(), receipts: vec![receipt] }, meter: None },
        ];
        let entry = ShardEntry(ShardCommand {
            now_ms: NOW_MS,
            command: Command::Calls { calls },
            request_id: None,
            meter: None,
        });
        assert_eq!(entry.version_needed(), 4);
        golden::check(&fixtures(), "command-calls", &entry);
        assert!(entry.encode_body(3, &mut too_old).is_err(), "version 3 cannot hold calls");
        assert_eq!(ShardEntry::version_for(BATCHED_CALLS_GENERATION - 1), 3);
        assert_eq!(ShardEntry::version_for(BATCHED_CALLS_GENERATION), 4);

        let caller = CallerNote {
            credential: "AKIDEXAMPLE".into(),
            request_id: "5f1c3a52-0c0e-4b8e-9c51-2a7a3f0e1d11".into(),
            trace_headers: vec![
                None,
                Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into()),
            ],
        };
        let send =
            Command::Send { queue: 1, tenant: TENANT.into(), messages: vec![message(10, None), message(11, None)] };
        let entry = ShardEntry(ShardCommand {
            now_ms: NOW_MS,
            command: send.with_caller(Some(caller.clone())),
            request_id: Some("c-req-3".into()),
            meter: Some(meter()),
        });
        assert_eq!(entry.version_needed(), 5);
        golden::check(&fixtures(), "command-send-with-caller", &entry);
        assert!(entry.encode_body(4, &mut too_old).is_err(), "version 4 cannot hold a caller's note");
        let receive =
            Command::Receive { queue: 1, tenant: TENANT.into(), max_messages: 1, visibility_timeout_ms: None };
        let calls = vec![Call {
            command: receive.with_caller(Some(CallerNote { trace_headers: Vec::new(), ..caller })),
            meter: None,
        }];
        let entry = ShardEntry(ShardCommand {
            now_ms: NOW_MS,
            command: Command::Calls { calls },
            request_id: None,
            meter: None,
        });
        assert_eq!(entry.version_needed(), 5);
        golden::check(&fixtures(), "command-calls-with-caller", &entry);
        assert_eq!(ShardEntry::version_for(CALLER_NOTES_GENERATION - 1), 4);
        assert_eq!(ShardEntry::version_for(CALLER_NOTES_GENERATION), 5);

        let moves = [
            ("fence-queue", Command::FenceQueue { queue: 1, tenant: TENANT.into(), move_id: 40 }),
            ("unfence-queue", Command::UnfenceQueue { queue: 1, move_id: 40 }),
            ("release-queue", Command::ReleaseQueue { queue: 1, move_id: 40 }),
            (
                "adopt-state",
                Command::AdoptState {
                    queue: 1,
                    tenant: TENANT.into(),
                    move_id: 40,
                    offset: 0,
                    part: Bytes::from_static(b"\x01state"),
                },
            ),
            (
                "adopt-bodies",
                Command::AdoptBodies {
                    queue: 1,
                    move_id: 40,
                    refs: vec![MessageRef { log_index: 5, slot: 1 }],
                    messages: vec![message(13, None)],
                    trace_headers: vec![Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into())],
                },
            ),
            ("adopt-queue", Command::AdoptQueue { queue: 1, move_id: 40 }),
            ("drop-adoption", Command::DropAdoption { queue: 1, move_id: 40 }),
            ("open-queue", Command::OpenQueue { queue: 1, move_id: 40 }),
        ];
        for (name, command) in moves {
            let entry = ShardEntry(ShardCommand { now_ms: NOW_MS, command, request_id: None, meter: None });
            assert_eq!(entry.version_needed(), 6);
            golden::check(&fixtures(), &format!("command-{name}"), &entry);
            assert!(entry.encode_body(5, &mut too_old).is_err(), "version 5 cannot hold a move");
        }
        assert_eq!(ShardEntry::version_for(QUEUE_MOVES_GENERATION - 1), 5);
        assert_eq!(ShardEntry::version_for(QUEUE_MOVES_GENERATION), 6);

        let arrival = HandOffArrival {
            seq: 12,
            from: 1,
            dead_letter: true,
            message_id: message(14, Some(("g", "d"))).message_id,
            sent_ms: NOW_MS - 5,
            body_bytes: 300,
            fifo: Some(FifoIds { group_id: "g".into(), deduplication_id: "d".into() }),
        };
        let hand_offs = [
            ("open-hand-offs", Command::OpenHandOffs),
            (
                "accept-hand-offs",
                Command::AcceptHandOffs {
                    source_shard: 3,
                    queue: 2,
                    tenant: TENANT.into(),
                    arrivals: vec![arrival],
                    messages: vec![message(14, Some(("g", "d")))],
                    trace_headers: vec![None],
                },
            ),
            ("trim-hand-offs", Command::TrimHandOffs { through_seq: 12 }),
            ("return-hand-offs", Command::ReturnHandOffs { through_seq: 12 }),
            ("hibernate", Command::Hibernate),
        ];
        for (name, command) in hand_offs {
            let entry = ShardEntry(ShardCommand { now_ms: NOW_MS, command, request_id: None, meter: None });
            assert_eq!(entry.version_needed(), 7);
            golden::check(&fixtures(), &format!("command-{name}"), &entry);
            assert!(entry.encode_body(6, &mut too_old).is_err(), "version 6 cannot hold a hand-off");
        }
        assert_eq!(ShardEntry::version_for(HAND_OFFS_GENERATION - 1), 6);
        assert_eq!(ShardEntry::version_for(HAND_OFFS_GENERATION), 7);
    }

    #[test]
    fn a_state_of_every_kind_matches_its_golden_fixture() {
        let mut state = ShardState::new();
        for (index, (_, command)) in (1..).zip(commands()) {
            // The commands before the purge and the queue's deletion build the state; those two
            // would empty the dead-letter queue again.
            if matches!(command.command, Command::Purge { .. } | Command::DeleteQueue { .. }) {
                continue;
            }
            state.apply(index, &command);
            // Applies hand these to the slice files; they are not part of the state.
            state.take_slice_writes();
        }
        assert!(state.stored_sizes() != state.without_stored_sizes().stored_sizes(), "the state holds sized messages");
        check_state(&fixtures(), "state", &state);
        state.apply(100, &send_with_digest());
        let machine = ShardMachine(state.clone(), None);
        assert_eq!(machine.version_needed(), 2);
        check_state(&fixtures(), "state-with-digests", &state);
        // A message of queue 1 (dead letters to queue 2 after one receive) received, visible
        // again at once, and moved by the next receive: queue 1 remembers it.
        let command = |command| ShardCommand { now_ms: NOW_MS, command, request_id: None, meter: None };
        state.apply(101, &command(Command::Send { queue: 1, tenant: TENANT.into(), messages: vec![message(9, None)] }));
        let receive =
            || Command::Receive { queue: 1, tenant: TENANT.into(), max_messages: 10, visibility_timeout_ms: Some(0) };
        state.apply(102, &command(receive()));
        state.apply(103, &command(receive()));
        assert!(state.moved_away() != MovedAway::default(), "the state remembers a message moved away");
        check_state(&fixtures(), "state-with-moved-away", &state);
        // Queue 3 fenced for a move away, and queue 50 arriving: its state and one body.
        state.apply(104, &command(Command::FenceQueue { queue: 3, tenant: TENANT.into(), move_id: 40 }));
        let part = Bytes::from_static(b"\x01part");
        state.apply(
            105,
            &command(Command::AdoptState { queue: 50, tenant: TENANT.into(), move_id: 41, offset: 0, part }),
        );
        let refs = vec![MessageRef { log_index: 77, slot: 0 }];
        let bodies = Command::AdoptBodies {
            queue: 50,
            move_id: 41,
            refs,
            messages: vec![message(12, None)],
            trace_headers: vec![],
        };
        state.apply(106, &command(bodies));
        assert!(ShardMachine(state.clone(), None).version_needed() == MOVES_VERSION, "the state holds moves");
        check_state(&fixtures(), "state-with-moves", &state);
        // Hand-offs open: queue 1 dead-letters to queue 77 elsewhere (one message waits in the
        // outbox), and queue 2 took a message shard 5 handed off.
        state.apply(107, &command(Command::OpenHandOffs));
        let redrive = Some(Redrive { dead_letter_queue: 77, max_receive_count: 1 });
        let config =
            Command::SetQueueConfig { queue: 1, tenant: TENANT.into(), config: QueueConfig { redrive, ..standard() } };
        state.apply(108, &command(config));
        state
            .apply(109, &command(Command::Send { queue: 1, tenant: TENANT.into(), messages: vec![message(15, None)] }));
        state.apply(110, &command(receive()));
        state.apply(111, &command(receive()));
        let arrival = HandOffArrival {
            seq: 4,
            from: 30,
            dead_letter: false,
            message_id: message(16, None).message_id,
            sent_ms: NOW_MS,
            body_bytes: 200,
            fifo: None,
        };
        let accept = Command::AcceptHandOffs {
            source_shard: 5,
            queue: 2,
            tenant: TENANT.into(),
            arrivals: vec![arrival],
            messages: vec![message(16, None)],
            trace_headers: vec![None],
        };
        assert_eq!(state.apply(112, &command(accept)), Response::Moved);
        assert!(state.has_hand_offs(), "a message waits in the outbox");
        assert!(ShardMachine(state.clone(), None).version_needed() == HAND_OFFS_VERSION, "the state holds hand-offs");
        check_state(&fixtures(), "state-with-hand-offs", &state);
    }

    /// A shard state's fixtures: versions before 3 hold no stored sizes, and read as 0 bytes;
    /// versions before 4 remember no message as moved away; versions before 5 hold no moves;
    /// versions before 6 hold no hand-offs.
    fn check_state(dir: &Path, name: &str, whole_state: &ShardState) {
        let state = whole_state;
        let whole = format!("{:?}", ShardMachine(state.clone(), None));
        let state = state.without_hand_offs();
        let with_moves = format!("{:?}", ShardMachine(state.clone(), None));
        let state = state.without_moves();
        let with_moved_away = format!("{:?}", ShardMachine(state.clone(), None));
        let with_sizes = format!("{:?}", ShardMachine(state.without_moved_away(), None));
        let without_sizes = format!("{:?}", ShardMachine(state.without_moved_away().without_stored_sizes(), None));
        golden::check_as(dir, name, &ShardMachine(whole_state.clone(), None), |version| match version {
            v if v >= HAND_OFFS_VERSION => whole.clone(),
            MOVES_VERSION => with_moves.clone(),
            MOVED_AWAY_VERSION => with_moved_away.clone(),
            STORED_SIZES_VERSION => with_sizes.clone(),
            _ => without_sizes.clone(),
        });
    }

    #[test]
    fn receipts_keep_their_encoding() {
        let receipt = Receipt { queue: 7, seq: 123_456, lease: 99 };
        golden::check_bytes(&fixtures(), "receipt-v1.txt", receipt.encode().as_bytes());
        assert_eq!(Receipt::decode(&receipt.encode()), Some(receipt));
    }
}
