//! Drives the moves of queues between shards whose source shard this node leads (see
//! `docs/elasticity.md`): metadata's heartbeat answers name them, and the pass of
//! [`crate::operations`] hands each here.
//!
//! # What it guarantees
//!
//! * The queue's bodies are copied while it still serves; then it is fenced on its source, so
//!   the copy of its state is whole, and only the bodies sent since are copied while calls on
//!   it wait (proxies retry on `QueueMoving`) until routing switches.
//! * Metadata decides each move (switch or roll back) before the driver acts on it: the target
//!   serves the queue (`OpenQueue`) and the source releases its copy only after the switch; the
//!   source unfences, and what the target got is dropped, only after a roll back. So no call
//!   is ever served by the copy a roll back drops. A driver that lost its shard's leadership
//!   and goes on cannot undo its successor's work: proposals on the source need leadership, and
//!   metadata refuses a decision other than the one taken.
//! * Every step is idempotent, so a pass that stops half way (a crash, a timeout) is resumed
//!   by the next pass of whoever leads the source then.
//!
//! A move that cannot finish its hand-over within [`HAND_OVER_DEADLINE`] of its start (the
//! target shard unreachable, say) is rolled back, so a queue is never fenced for longer; one
//! the source refuses to fence (see `queue::state::moves`) is rolled back at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use strata_common::ClockExt;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::format::Persisted;
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;

use crate::node::ShardMap;
use crate::queue::schedule::ScheduledMessage;
use crate::queue::{ADOPT_BODIES_PART_MESSAGES, ADOPTED_STATE_BYTES_MAX, Command, MessageRef, QueueCopy, ShardCommand};
use crate::shard::{QUEUE_MOVES_GENERATION, Shard, ShardEntry};

/// How long a move may stay before its switch: past it, a failed hand-over rolls back.
pub(crate) const HAND_OVER_DEADLINE: Duration = Duration::from_secs(30);
/// How long one step (a proposal, a call to the target) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bodies read from the source log at a time.
const BODIES_READ_AT_ONCE: usize = 100;
/// About how many bytes of bodies one adoption entry carries (at least one body).
const BODIES_PART_BYTES: usize = 1 << 20;

/// Why a hand-over stopped.
enum Stop {
    /// The move cannot happen (the source refused to fence the queue): roll back now.
    Refused(String),
    /// Something failed that a later pass may get past.
    Failed(StrataError),
}

impl From<StrataError> for Stop {
    fn from(e: StrataError) -> Self {
        Stop::Failed(e)
    }
}

/// What a hand-over did, for the move's record.
struct Handed {
    fenced_at_ms: u64,
    bytes_moved: u64,
}

/// Carries each move on as far as it goes now.
pub(crate) async fn drive_moves(shards: &ShardMap, metadata: &MetadataClient, moves: Vec<pb::QueueMoveInfo>) {
    for queue_move in moves {
        let Some(source) = shards.read().get(&queue_move.from_shard).cloned().filter(|s| s.is_leader()) else {
            continue;
        };
        if let Err(e) = drive(&source, shards, metadata, &queue_move).await {
            tracing::warn!(move_id = queue_move.move_id, queue_id = queue_move.queue_id, error = %e, "a queue move stopped; the next pass goes on");
        }
    }
}

/// Drops the adoptions of the shards this node leads whose moves are no longer under way: a
/// driver that lost its source's leadership may go on sending parts after its move ended, and
/// they would hold back the log's garbage collection for good. An adoption of a move under way
/// is never touched, nor a queue already opened (`DropAdoption` leaves those).
pub(crate) async fn sweep(shards: &ShardMap, metadata: &MetadataClient) {
    let led: Vec<Arc<Shard>> = shards.read().values().filter(|s| s.is_leader()).cloned().collect();
    let held: Vec<_> = led
        .into_iter()
        .map(|shard| {
            let adoptions = shard.state().0.adoptions();
            (shard, adoptions)
        })
        .filter(|(_, adoptions)| !adoptions.is_empty())
        .collect();
    if held.is_empty() {
        return;
    }
    // Listed after the adoptions were read: a move that started since has none here yet.
    let under_way: BTreeSet<u64> = match metadata.list_queue_moves().await {
        Ok(moves) => moves.into_iter().filter(|m| m.finished_ms == 0).map(|m| m.move_id).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "the moves under way could not be listed; adoptions are swept later");
            return;
        }
    };
    for (shard, adoptions) in held {
        for (queue, move_id) in adoptions.into_iter().filter(|(_, id)| !under_way.contains(id)) {
            match step(&shard, Command::DropAdoption { queue, move_id }).await {
                Ok(()) => tracing::info!(queue_id = queue, move_id, "dropped an adoption left over by an ended move"),
                Err(e) => tracing::warn!(queue_id = queue, move_id, error = %e, "dropping a left-over adoption failed"),
            }
        }
    }
}

async fn drive(
    source: &Arc<Shard>,
    shards: &ShardMap,
    metadata: &MetadataClient,
    m: &pb::QueueMoveInfo,
) -> Result<(), StrataError> {
    // Metadata starts moves only from this generation on; a node whose gate has not followed
    // yet waits for its next heartbeat.
    if source.log_format().writing() < QUEUE_MOVES_GENERATION {
        return Ok(());
    }
    let target = Target::new(shards, metadata, source, m.to_shard);
    match m.phase.as_str() {
        "started" => match hand_over(source, &target, m).await {
            Ok(handed) => {
                metadata.decide_queue_move(m.move_id, true, "").await?;
                tracing::info!(move_id = m.move_id, queue_id = m.queue_id, "queue move: switched");
                open_and_release(source, &target, m).await?;
                let paused_ms = source.now_ms().saturating_sub(handed.fenced_at_ms);
                metadata.finish_queue_move(m.move_id, paused_ms, handed.bytes_moved).await?;
                tracing::info!(
                    move_id = m.move_id,
                    queue_id = m.queue_id,
                    from = m.from_shard,
                    to = m.to_shard,
                    paused_ms,
                    bytes = handed.bytes_moved,
                    "queue moved"
                );
                Ok(())
            }
            Err(Stop::Refused(reason)) => roll_back(source, &target, metadata, m, &reason).await,
            Err(Stop::Failed(e)) => {
                let waited_ms = source.now_ms().saturating_sub(m.started_ms);
                if u128::from(waited_ms) < HAND_OVER_DEADLINE.as_millis() {
                    return Err(e);
                }
                let reason =
                    format!("the hand-over did not finish within {} s: {}", HAND_OVER_DEADLINE.as_secs(), e.message);
                roll_back(source, &target, metadata, m, &reason).await
            }
        },
        "switched" => {
            open_and_release(source, &target, m).await?;
            let paused_ms = m.switched_ms.saturating_sub(m.started_ms);
            metadata.finish_queue_move(m.move_id, paused_ms, 0).await
        }
        "rolling back" => roll_back(source, &target, metadata, m, &m.reason).await,
        other => Err(StrataError::internal(format!("a queue move in an unknown phase '{other}'"))),
    }
}

/// Copies the bodies of the queue to the target while it still serves, fences it on the
/// source, and hands its state and the bodies sent since to the target.
async fn hand_over(source: &Arc<Shard>, target: &Target, m: &pb::QueueMoveInfo) -> Result<Handed, Stop> {
    let (queue, move_id) = (m.queue_id, m.move_id);
    tracing::info!(move_id, queue_id = queue, from = m.from_shard, to = m.to_shard, "queue move: copying bodies");
    let open = Command::AdoptState { queue, tenant: m.tenant.clone(), move_id, offset: 0, part: Default::default() };
    target.propose(open).await?;
    // Copied under the state's lock in constant time; walked after it. Scheduled messages in
    // slice files too: their bodies, often old, are copied before the fence like the others.
    let live = source.state().0.copy_queue(queue, &m.tenant);
    let mut live_refs = Vec::new();
    if let Some(copy) = live {
        live_refs = copy.body_refs();
        live_refs.extend(scheduled_of(source, &copy, false).await?.iter().map(|m| m.body_ref));
    }
    let (mut bytes_moved, copied) = copy_all(source, target, queue, move_id, &live_refs).await?;
    let fenced_at_ms = source.now_ms();
    let fence = Command::FenceQueue { queue, tenant: m.tenant.clone(), move_id };
    match step(source, fence).await {
        Ok(()) => {}
        Err(e) if matches!(e.kind, ErrorKind::InvalidParameter | ErrorKind::QueueNotFound) => {
            return Err(Stop::Refused(e.message));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(move_id, queue_id = queue, "queue move: fenced");
    let exported = source.state().0.export_queue(queue, move_id).map_err(|e| Stop::Refused(e.to_string()))?;
    // Its scheduled messages in slice files, read from the files (the fence stops sends and
    // cancels; records loaded meanwhile are in the copy, those not yet loaded are read here).
    let scheduled = scheduled_of(source, &exported, true).await?;
    let parts = exported.state_parts(&scheduled).map_err(|e| Stop::Refused(e.to_string()))?;
    let state_bytes: u64 = parts.iter().map(|part| part.len() as u64).sum();
    if state_bytes > ADOPTED_STATE_BYTES_MAX {
        return Err(Stop::Refused(format!("the queue's state ({state_bytes} bytes) is too large to move")));
    }
    let mut offset = 0;
    for part in parts {
        let len = part.len() as u64;
        let tenant = exported.tenant().to_owned();
        target.propose(Command::AdoptState { queue, tenant, move_id, offset, part }).await?;
        offset += len;
    }
    bytes_moved += state_bytes;
    let mut missing: Vec<MessageRef> = exported.body_refs();
    missing.extend(scheduled.iter().map(|m| m.body_ref));
    missing.retain(|at| !copied.contains(at));
    let (bytes, done) = copy_all(source, target, queue, move_id, &missing).await?;
    if done.len() < missing.len() {
        return Err(Stop::Failed(StrataError::unavailable("a body of the fenced queue could not be read")));
    }
    bytes_moved += bytes;
    target.propose(Command::AdoptQueue { queue, move_id }).await?;
    Ok(Handed { fenced_at_ms, bytes_moved })
}

/// The queue's scheduled messages waiting in the source's slice files (see
/// [`QueueCopy::scheduled_in`]). A file that cannot be read fails the call when `whole`, else
/// it is passed over (before the fence: a slice loaded since the copy is gone, and whatever it
/// still holds of the queue is copied after the fence).
async fn scheduled_of(source: &Shard, copy: &QueueCopy, whole: bool) -> Result<Vec<ScheduledMessage>, StrataError> {
    let mut scheduled = Vec::new();
    for slice_start_ms in copy.slice_starts() {
        match source.slice_records(slice_start_ms).await {
            Ok(records) => scheduled.extend(copy.scheduled_in(slice_start_ms, &records)),
            Err(e) if whole => return Err(e),
            Err(_) => {}
        }
    }
    Ok(scheduled)
}

/// Copies the bodies at `refs` to the target, [`BODIES_READ_AT_ONCE`] read at a time: the bytes
/// copied, and which were (one that cannot be read is left out).
async fn copy_all(
    source: &Shard,
    target: &Target,
    queue: u64,
    move_id: u64,
    refs: &[MessageRef],
) -> Result<(u64, BTreeSet<MessageRef>), StrataError> {
    let (mut bytes, mut copied) = (0, BTreeSet::new());
    for chunk in refs.chunks(BODIES_READ_AT_ONCE) {
        let (chunk_bytes, done) = copy_bodies(source, target, queue, move_id, chunk).await?;
        bytes += chunk_bytes;
        copied.extend(done);
    }
    Ok((bytes, copied))
}

/// Reads `refs` from the source's log and hands them to the target in entries of about
/// [`BODIES_PART_BYTES`]; answers the bytes copied and the refs copied (a body that cannot be
/// read is left out: before the fence it is copied after it, if still needed).
async fn copy_bodies(
    source: &Shard,
    target: &Target,
    queue: u64,
    move_id: u64,
    refs: &[MessageRef],
) -> Result<(u64, Vec<MessageRef>), StrataError> {
    let read = source.read_messages(refs).await;
    let (mut part_refs, mut messages, mut trace_headers, mut part_bytes) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    let (mut copied_bytes, mut copied) = (0u64, Vec::new());
    for (at, stored) in refs.iter().zip(read) {
        let Ok(stored) = stored else { continue };
        let bytes = stored.message.body.len();
        if !messages.is_empty()
            && (part_bytes + bytes > BODIES_PART_BYTES || messages.len() == ADOPT_BODIES_PART_MESSAGES)
        {
            copied.extend_from_slice(&part_refs);
            let command = Command::AdoptBodies {
                queue,
                move_id,
                refs: std::mem::take(&mut part_refs),
                messages: std::mem::take(&mut messages),
                trace_headers: std::mem::take(&mut trace_headers),
            };
            target.propose(command).await?;
            part_bytes = 0;
        }
        part_bytes += bytes;
        copied_bytes += bytes as u64;
        part_refs.push(*at);
        messages.push(stored.message);
        trace_headers.push(stored.trace_header);
    }
    if !messages.is_empty() {
        copied.extend_from_slice(&part_refs);
        target.propose(Command::AdoptBodies { queue, move_id, refs: part_refs, messages, trace_headers }).await?;
    }
    Ok((copied_bytes, copied))
}

/// After the switch: the target serves the queue, then the source drops its copy.
async fn open_and_release(source: &Shard, target: &Target, m: &pb::QueueMoveInfo) -> Result<(), StrataError> {
    target.propose(Command::OpenQueue { queue: m.queue_id, move_id: m.move_id }).await?;
    step(source, Command::ReleaseQueue { queue: m.queue_id, move_id: m.move_id }).await
}

/// Rolls a move back: decided in metadata first, then the source serves again and the target
/// drops what it got.
async fn roll_back(
    source: &Shard,
    target: &Target,
    metadata: &MetadataClient,
    m: &pb::QueueMoveInfo,
    reason: &str,
) -> Result<(), StrataError> {
    metadata.decide_queue_move(m.move_id, false, reason).await?;
    step(source, Command::UnfenceQueue { queue: m.queue_id, move_id: m.move_id }).await?;
    target.propose(Command::DropAdoption { queue: m.queue_id, move_id: m.move_id }).await?;
    let paused_ms = source.now_ms().saturating_sub(m.started_ms);
    metadata.finish_queue_move(m.move_id, paused_ms, 0).await?;
    tracing::info!(move_id = m.move_id, queue_id = m.queue_id, reason, "queue move rolled back");
    Ok(())
}

/// Proposes one step on the source, within [`STEP_TIMEOUT`].
pub(crate) async fn step(shard: &Shard, command: Command) -> Result<(), StrataError> {
    match shard.clock().timeout(STEP_TIMEOUT, shard.propose(command)).await {
        Ok(answer) => answer.map(|_| ()),
        Err(_) => Err(StrataError::unavailable("a step of a queue move timed out")),
    }
}

/// The target shard of a move (or of a hand-off), wherever its leader is.
pub(crate) struct Target {
    shards: ShardMap,
    metadata: MetadataClient,
    /// Its peer clients reach other storage nodes.
    source: Arc<Shard>,
    shard_id: u64,
    /// Where the target's leader was last found: read from metadata once per hand-over, not
    /// once per step, and forgotten when a step there fails.
    leader: parking_lot::Mutex<Option<String>>,
}

impl Target {
    pub(crate) fn new(shards: &ShardMap, metadata: &MetadataClient, source: &Arc<Shard>, shard_id: u64) -> Self {
        let (shards, metadata, source) = (shards.clone(), metadata.clone(), source.clone());
        Self { shards, metadata, source, shard_id, leader: parking_lot::Mutex::new(None) }
    }

    /// Proposes a step from another shard ([`Command::is_from_another_shard`]) at the target's
    /// leader: here when this node leads it, else through its storage node (following a
    /// not-leader answer's hint once).
    pub(crate) async fn propose(&self, command: Command) -> Result<(), StrataError> {
        let local = self.shards.read().get(&self.shard_id).cloned().filter(|s| s.is_leader());
        if let Some(shard) = local {
            return step(&shard, command).await;
        }
        let entry = ShardEntry(ShardCommand { now_ms: 0, command, request_id: None, meter: None });
        let version = entry.version_to_write(self.source.log_format().writing());
        let mut bytes = vec![version];
        entry
            .encode_body(version, &mut bytes)
            .map_err(|e| StrataError::internal(format!("an adoption step does not encode: {e}")))?;
        let known = self.leader.lock().clone();
        let mut address = match known {
            Some(address) => address,
            None => self.metadata.get_shard(self.shard_id).await?.address,
        };
        let answer = self.propose_at(&mut address, bytes).await;
        *self.leader.lock() = answer.is_ok().then_some(address);
        answer
    }

    /// Sends an encoded step to the storage node at `address`, and once more to the leader a
    /// not-leader answer names (then `address` becomes that one).
    async fn propose_at(&self, address: &mut String, entry: Vec<u8>) -> Result<(), StrataError> {
        for _ in 0..2 {
            let Some(mut client) = self.source.peer_client(address) else {
                return Err(StrataError::unavailable("the target shard's leader has no usable address"));
            };
            let request = pb::AdoptQueueStepRequest { shard_id: self.shard_id, entry: entry.clone() };
            let call = self.source.clock().timeout(STEP_TIMEOUT, client.adopt_queue_step(request)).await;
            match call {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(status)) => {
                    let e = StrataError::from(status);
                    match e.leader_hint.clone() {
                        Some(hint) if e.kind == ErrorKind::Unavailable && hint != *address => *address = hint,
                        _ => return Err(e),
                    }
                }
                Err(_) => return Err(StrataError::unavailable("the target shard's leader did not answer in time")),
            }
        }
        Err(StrataError::unavailable("the target shard's leader moved while the queue was handed over"))
    }
}
