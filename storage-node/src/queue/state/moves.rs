//! Moving a queue between shards, as the shard's state machine sees it (see
//! `docs/elasticity.md`): the fence on the source, the export of the fenced state, its adoption on
//! the target in bounded parts, and the release on the source.
//!
//! # What it guarantees
//!
//! * A fenced queue changes no more: every call on it is answered
//!   [`QueueError::QueueMoving`] (never remembered under a request id, so a retry after a roll
//!   back is served), and no dead-letter move or move task takes messages into or out of it.
//! * The export is the whole queue: messages with their receive counts and leases, FIFO groups,
//!   locks, deduplication window and receive attempts, the wheel of scheduled messages, the seqs
//!   moved away, and the answers of the sends to it this shard remembers (so a send retried at
//!   the target after its answer was lost is stored once). Its bodies travel beside it, copied
//!   into the target's log ([`Command::AdoptBodies`](super::Command::AdoptBodies)), so the
//!   target reads them as it reads its own; most are copied before the fence, while the queue
//!   still serves (a body never changes), so the fence waits only for the state and the bodies
//!   sent since.
//! * On the target, the queue is served only once every part arrived
//!   ([`Command::AdoptQueue`](super::Command::AdoptQueue)); its receipts keep their queue id, seq
//!   and lease, and every lease it issues there lies above every lease issued before the fence
//!   (a per-queue lease base), so a receipt from before the move never matches a later delivery.
//! * Every step is idempotent for its move id, so a driver that repeats one after a crash
//!   changes nothing; a partial adoption is dropped by its move id (a roll back).
//!
//! * Scheduled messages go too: those in the wheel with the queue, those in the shard's slice
//!   files read from the files by the driver (only records the fenced state has not loaded,
//!   not cancelled, sent after the queue's last purge) and appended to the target's files, or
//!   its wheel when due soon. The old shard's records stay in its files and are dropped when
//!   loaded, as a deleted queue's are.
//!
//! # Limits
//!
//! The source of a running move task is refused at the fence (the task stays with its shard);
//! so, until hand-offs are open (see [`super::hand_offs`]), is a queue with a dead-letter queue
//! or that is one. The exported state is at most [`ADOPTED_STATE_BYTES_MAX`].

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_common::format::{postcard_done, postcard_take};
use strata_raft::requests::RecentRequests;

use std::collections::BTreeSet;

use uuid::Uuid;

use super::super::schedule::{ScheduledMessage, Slice, SliceRecord};
use super::super::store::{Queue, QueueSizes};
use super::super::types::{MessageRef, MoveTaskStatus, NewMessage, QueueError, QueueId, REQUEST_IDS_KEPT, Response};
use super::{ShardState, reindex};

/// A move's id: the log index of the metadata entry that started it.
pub type MoveId = u64;

/// Most bytes of exported queue state a shard stages for one adoption (about ten million
/// messages); a larger queue is refused by the driver before the fence holds it long.
pub const ADOPTED_STATE_BYTES_MAX: u64 = 1 << 30;
/// Most bytes of exported state one [`Command::AdoptState`](super::Command::AdoptState) carries.
pub const ADOPT_STATE_PART_BYTES: usize = 1 << 20;
/// Most bodies one [`Command::AdoptBodies`](super::Command::AdoptBodies) carries (and about a
/// mebibyte of them, at least one).
pub const ADOPT_BODIES_PART_MESSAGES: usize = 1_000;

/// The format version of an exported queue ([`QueueExport`]) as adoption entries carry it.
const EXPORT_VERSION: u8 = 1;
/// The format version of an exported queue followed by its hand-off marks (source shard, seq).
const EXPORT_MARKS_VERSION: u8 = 2;

/// What a shard keeps of the moves of its queues. Not in the serde layout of the shard state:
/// shard states of format version 5 carry it after the moved-away seqs (older ones hold none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moves {
    /// Queues fenced for a move away.
    fenced: BTreeMap<QueueId, Fence>,
    /// Queues arriving from another shard: what arrived so far.
    adopting: BTreeMap<QueueId, Adoption>,
    /// Queues a move brought here whole, by that move, until metadata switched their routing
    /// and the move opened them ([`Command::OpenQueue`](super::Command::OpenQueue)): they answer
    /// `QueueMoving` meanwhile, and a roll back drops them by its move id.
    adopted: BTreeMap<QueueId, MoveId>,
    /// Added to the log index of every receive of the queue to make its lease (queues that came
    /// from another shard only).
    lease_bases: BTreeMap<QueueId, u64>,
    /// Log index of a remembered send -> the queue it sent to.
    sent_to: BTreeMap<u64, QueueId>,
    /// Sends other shards remembered for queues that moved here: their answers by request key,
    /// kept as this shard keeps its own.
    carried: RecentRequests<Response>,
    /// Key of a carried answer in `carried` -> its queue.
    carried_to: BTreeMap<u64, QueueId>,
    /// The next key in `carried`.
    carried_next: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Fence {
    move_id: MoveId,
    /// Above every lease the queue issued here.
    lease_floor: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Adoption {
    move_id: MoveId,
    tenant: String,
    /// The exported state's parts, in order.
    state: Vec<Bytes>,
    /// A body's place on the old shard -> its copy in this shard's log.
    bodies: BTreeMap<MessageRef, MessageRef>,
    /// Log index of the first entry holding copied bodies (they only grow).
    first_body_index: Option<u64>,
}

impl Moves {
    /// The adoption of `queue` by move `move_id` still arriving; `None` once it is whole (a step
    /// repeated then changes nothing). An error when there is none.
    fn under_way(&mut self, queue: QueueId, move_id: MoveId) -> Result<Option<&mut Adoption>, QueueError> {
        if self.adopted.get(&queue) == Some(&move_id) {
            return Ok(None);
        }
        match self.adopting.get_mut(&queue).filter(|a| a.move_id == move_id) {
            Some(adoption) => Ok(Some(adoption)),
            None => Err(refused("no adoption of this queue by this move is under way")),
        }
    }
}

impl Adoption {
    fn state_bytes(&self) -> u64 {
        self.state.iter().map(|part| part.len() as u64).sum()
    }
}

/// A fenced queue as the target adopts it: everything but its bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueExport {
    queue: Queue,
    sizes: QueueSizes,
    moved_away: Vec<u64>,
    lease_floor: u64,
    /// The answers of sends to the queue the old shard remembered, by request key.
    requests: Vec<(String, Response)>,
    /// Its scheduled messages that were in the old shard's slice files.
    scheduled: Vec<ScheduledMessage>,
    /// The old shard's clock: the new one's never lags it (visibility deadlines keep their
    /// meaning, and the queue's times never run backwards).
    clock_ms: u64,
}

/// A copy of one queue, taken under the state's lock in constant time (its collections are
/// shared, copy on write), to be worked on once the lock is released: where its bodies are,
/// and for a fenced queue its exported state.
#[derive(Debug, Clone)]
pub struct QueueCopy {
    queue_id: QueueId,
    queue: Queue,
    lease_floor: u64,
    clock_ms: u64,
    requests: Vec<(String, Response)>,
    /// The queue's hand-off marks (source shard, seq): what it accepted from other shards.
    marks: Vec<(u64, u64)>,
    /// The shard's slice files when the queue has messages in them: each slice's start, the
    /// records already loaded (a loading slice's prefix, in memory now), and the queue's
    /// messages cancelled while it loads.
    slices: Vec<(u64, u64, BTreeSet<Uuid>)>,
}

impl QueueCopy {
    pub fn tenant(&self) -> &str {
        &self.queue.tenant
    }

    /// Where the queue's bodies are on this shard, each once.
    pub fn body_refs(&self) -> Vec<MessageRef> {
        self.queue.body_refs()
    }

    /// The slice files that may hold the queue's scheduled messages (all the shard's, when it
    /// has any there; none otherwise).
    pub fn slice_starts(&self) -> Vec<u64> {
        self.slices.iter().map(|(start, _, _)| *start).collect()
    }

    /// The queue's scheduled messages still waiting in `records`, the records of the slice file
    /// starting at `slice_start_ms`: not loaded yet, sent after its last purge, not cancelled.
    pub fn scheduled_in(&self, slice_start_ms: u64, records: &[SliceRecord]) -> Vec<ScheduledMessage> {
        let Some((_, loaded, cancels)) = self.slices.iter().find(|(start, _, _)| *start == slice_start_ms) else {
            return Vec::new();
        };
        let waiting = records.iter().skip(usize::try_from(*loaded).unwrap_or(usize::MAX));
        let purged_at = self.queue.purged_at_log_index();
        waiting
            .filter_map(|record| match record {
                SliceRecord::Message(m) if m.queue == self.queue_id && m.body_ref.log_index >= purged_at => Some(*m),
                _ => None,
            })
            .filter(|m| !cancels.contains(&m.message_id) && !is_cancelled_in(records, self.queue_id, m.message_id))
            .collect()
    }

    /// The exported state (of a copy [`ShardState::export_queue`] gave) with the queue's
    /// `scheduled` messages from the slice files ([`QueueCopy::scheduled_in`]), in parts of at
    /// most [`ADOPT_STATE_PART_BYTES`].
    pub fn state_parts(&self, scheduled: &[ScheduledMessage]) -> Result<Vec<Bytes>, QueueError> {
        let export = QueueExport {
            queue: self.queue.clone(),
            sizes: self.queue.sizes(),
            moved_away: self.queue.moved_away().iter().copied().collect(),
            lease_floor: self.lease_floor,
            requests: self.requests.clone(),
            scheduled: scheduled.to_vec(),
            clock_ms: self.clock_ms,
        };
        let cannot = |_| refused("the queue's state could not be encoded");
        let mut body = postcard::to_allocvec(&export).map_err(cannot)?;
        // Marks exist only where hand-offs are open, which every process then reads.
        let version = if self.marks.is_empty() {
            EXPORT_VERSION
        } else {
            body.extend(postcard::to_allocvec(&self.marks).map_err(cannot)?);
            EXPORT_MARKS_VERSION
        };
        // The version, then a checksum of the body: parts of two drivers' exports spliced
        // together never decode.
        let mut bytes = vec![version];
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        Ok(bytes.chunks(ADOPT_STATE_PART_BYTES).map(Bytes::copy_from_slice).collect())
    }
}

/// An exported queue and its hand-off marks from the bytes of its parts; `None` when they are
/// damaged, mixed or of a newer release.
fn decode_export(bytes: &[u8]) -> Option<(QueueExport, Vec<(u64, u64)>)> {
    let (&version, rest) = bytes.split_first()?;
    if !(EXPORT_VERSION..=EXPORT_MARKS_VERSION).contains(&version) || rest.len() < 4 {
        return None;
    }
    let (crc, body) = rest.split_at(4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut rest = body;
    let export: QueueExport = postcard_take(&mut rest).ok()?;
    let marks = if version == EXPORT_MARKS_VERSION { postcard_take(&mut rest).ok()? } else { Vec::new() };
    postcard_done(rest).ok()?;
    Some((export, marks))
}

/// Whether `records` hold a cancel of message `message_id` of `queue`.
fn is_cancelled_in(records: &[SliceRecord], queue: QueueId, message_id: Uuid) -> bool {
    records
        .iter()
        .any(|r| matches!(r, SliceRecord::Cancel { queue: q, message_id: id, .. } if *q == queue && *id == message_id))
}

/// The remembered answers (by request key) that `notes` say went to `queue`.
fn answers_to(
    queue: QueueId,
    notes: &BTreeMap<u64, QueueId>,
    answers: &RecentRequests<Response>,
) -> Vec<(String, Response)> {
    let of_queue = notes.iter().filter(|(_, to)| **to == queue);
    of_queue.filter_map(|(&index, _)| answers.at(index)).map(|(key, answer)| (key.to_owned(), answer.clone())).collect()
}

/// Drops the notes of which queue a remembered answer went to, for answers no longer
/// remembered (keyed below `oldest`).
fn forget_before(notes: &mut BTreeMap<u64, QueueId>, oldest: u64) {
    while notes.first_key_value().is_some_and(|(&index, _)| index < oldest) {
        notes.pop_first();
    }
}

fn moving() -> QueueError {
    QueueError::QueueMoving
}

fn refused(reason: &str) -> QueueError {
    QueueError::InvalidParameter(reason.to_owned())
}

impl ShardState {
    /// Opens a queue adopted by move `move_id` once its routing switched here; opening it again
    /// changes nothing.
    pub(super) fn open_queue(&mut self, queue: QueueId, move_id: MoveId) -> Result<Response, QueueError> {
        match self.moves.adopted.get(&queue) {
            Some(&by) if by == move_id => {
                self.moves.adopted.remove(&queue);
                Ok(Response::Moved)
            }
            Some(_) => Err(moving()),
            None if self.queues.contains_key(&queue) => Ok(Response::Moved),
            None => Err(refused("no queue of this move was adopted here")),
        }
    }

    /// Whether the queue is fenced for a move away, or arriving and not yet opened.
    pub fn is_moving(&self, queue: QueueId) -> bool {
        self.moves.fenced.contains_key(&queue)
            || self.moves.adopting.contains_key(&queue)
            || self.moves.adopted.contains_key(&queue)
    }

    /// The lease a receive at `log_index` gives the queue's messages.
    pub(super) fn lease_at(&self, queue: QueueId, log_index: u64) -> u64 {
        log_index.saturating_add(self.moves.lease_bases.get(&queue).copied().unwrap_or(0))
    }

    /// A send to `queue` was remembered at `log_index`: noted, and notes older than what the
    /// shard still remembers dropped.
    pub(super) fn note_sent(&mut self, log_index: u64, queue: QueueId) {
        self.moves.sent_to.insert(log_index, queue);
        forget_before(&mut self.moves.sent_to, self.requests.oldest_log_index().unwrap_or(log_index));
    }

    /// The first answer of a send carried here with its queue.
    pub(super) fn carried_answer(&self, key: &str) -> Option<&Response> {
        self.moves.carried.answer(key)
    }

    /// Whether a send carried here with its queue had a request key starting with `prefix`.
    pub(super) fn carried_with_prefix(&self, prefix: &str) -> bool {
        self.moves.carried.any_with_prefix(prefix)
    }

    /// Lowest log index of a body copied for an adoption still under way.
    pub(super) fn min_adopting_log_index(&self) -> Option<u64> {
        self.moves.adopting.values().filter_map(|a| a.first_body_index).min()
    }

    /// A queue leaves the shard (deleted or released): what the moves kept of it goes too.
    pub(super) fn forget_moves_of(&mut self, queue: QueueId) {
        self.moves.fenced.remove(&queue);
        self.moves.adopted.remove(&queue);
        self.moves.lease_bases.remove(&queue);
    }

    /// Whether the shard holds adoptions (parts arriving, or a queue whole and not yet opened):
    /// each belongs to a move under way, or is left over by a driver that went
    /// on after its move ended (then dropped, see `queue_moves::sweep`).
    pub fn has_adoptions(&self) -> bool {
        !self.moves.adopting.is_empty() || !self.moves.adopted.is_empty()
    }

    /// Whether a queue of the shard is fenced for a move away.
    pub(super) fn has_fences(&self) -> bool {
        !self.moves.fenced.is_empty()
    }

    /// The adoptions themselves (see [`ShardState::has_adoptions`]).
    pub fn adoptions(&self) -> Vec<(QueueId, MoveId)> {
        let arriving = self.moves.adopting.iter().map(|(&queue, a)| (queue, a.move_id));
        arriving.chain(self.moves.adopted.iter().map(|(&queue, &move_id)| (queue, move_id))).collect()
    }

    /// What shard state format version 5 carries after the moved-away seqs.
    pub fn moves(&self) -> &Moves {
        &self.moves
    }

    /// Puts back what [`ShardState::moves`] gave.
    pub fn restore_moves(&mut self, moves: Moves) {
        self.moves = moves;
    }

    /// Whether the state holds anything of a move (which only shard state version 5 carries).
    /// The notes of which queue a remembered send went to do not count: a version without them
    /// loses only what a later move would carry of those sends, and moves start at the
    /// generation that writes version 5.
    pub fn holds_moves(&self) -> bool {
        let Moves { fenced, adopting, adopted, lease_bases, sent_to: _, carried, carried_to: _, carried_next: _ } =
            &self.moves;
        !(fenced.is_empty()
            && adopting.is_empty()
            && adopted.is_empty()
            && lease_bases.is_empty()
            && carried.is_empty())
    }

    /// This state as read from a format version without moves (test support).
    #[cfg(test)]
    pub fn without_moves(&self) -> ShardState {
        ShardState { moves: Moves::default(), ..self.clone() }
    }

    pub(super) fn fence_queue(
        &mut self,
        queue: QueueId,
        tenant: &str,
        move_id: MoveId,
        log_index: u64,
    ) -> Result<Response, QueueError> {
        let q = self.get(queue, tenant).ok_or(QueueError::QueueNotFound)?;
        if let Some(fence) = self.moves.fenced.get(&queue) {
            return if fence.move_id == move_id { Ok(Response::Moved) } else { Err(moving()) };
        }
        // Before hand-offs are open, the messages of a dead-letter relation or a move task
        // could not reach a queue on another shard.
        if !self.hand_offs_open() {
            if q.config.redrive.is_some() {
                return Err(refused("the queue has a dead-letter queue, which a move does not carry yet"));
            }
            let dead_letter_of_another =
                self.queues.values().any(|other| other.config.redrive.is_some_and(|r| r.dead_letter_queue == queue));
            if dead_letter_of_another {
                return Err(refused("the queue is another queue's dead-letter queue, which a move does not carry yet"));
            }
        }
        // A move task stays with the shard of its source queue.
        let tasked = self.move_tasks.values().any(|t| {
            t.status == MoveTaskStatus::Running
                && (t.source == queue || (t.destination == queue && !self.hand_offs_open()))
        });
        if tasked {
            return Err(refused("a running message move task names the queue; cancel it or wait for it to end"));
        }
        let lease_floor = self.lease_at(queue, log_index);
        self.moves.fenced.insert(queue, Fence { move_id, lease_floor });
        Ok(Response::Moved)
    }

    pub(super) fn unfence_queue(&mut self, queue: QueueId, move_id: MoveId) -> Result<Response, QueueError> {
        if self.moves.fenced.get(&queue).is_some_and(|f| f.move_id == move_id) {
            self.moves.fenced.remove(&queue);
        }
        Ok(Response::Moved)
    }

    /// Drops a fenced queue whose move switched routing: done once, a success after.
    pub(super) fn release_queue(&mut self, queue: QueueId, move_id: MoveId) -> Result<Response, QueueError> {
        match self.moves.fenced.get(&queue) {
            Some(fence) if fence.move_id == move_id => {
                self.remove_queue(queue);
                Ok(Response::Moved)
            }
            Some(_) => Err(moving()),
            None if self.queues.contains_key(&queue) => Err(refused("the queue is not fenced for this move")),
            None => Ok(Response::Moved),
        }
    }

    /// A copy of a queue still serving, for copying its bodies to a move's target before the
    /// fence (a body never changes, so a copy stays good for as long as its message lives).
    /// `None` if the queue does not exist for this tenant.
    pub fn copy_queue(&self, queue: QueueId, tenant: &str) -> Option<QueueCopy> {
        let copy = self.get(queue, tenant)?;
        let slices = self.slices_of(queue, copy);
        let (lease_floor, clock_ms, requests, marks) = (0, self.clock_ms, Vec::new(), Vec::new());
        Some(QueueCopy { queue_id: queue, queue: copy.clone(), lease_floor, clock_ms, requests, marks, slices })
    }

    /// The slice files that may hold `q`'s scheduled messages, as [`QueueCopy`] keeps them.
    fn slices_of(&self, queue: QueueId, q: &Queue) -> Vec<(u64, u64, BTreeSet<Uuid>)> {
        if q.on_disk() == 0 {
            return Vec::new();
        }
        let of_queue = |slice: &Slice| slice.cancels.iter().filter(|(to, _)| *to == queue).map(|(_, id)| *id).collect();
        let slices = self.schedule.slices.iter();
        slices.map(|(&start, slice)| (start, if slice.loading { slice.loaded } else { 0 }, of_queue(slice))).collect()
    }

    /// A copy of the queue fenced for its move `move_id`, with what the target needs besides:
    /// the floor of its leases and the answers of the sends to it this shard remembers.
    pub fn export_queue(&self, queue: QueueId, move_id: MoveId) -> Result<QueueCopy, QueueError> {
        let fence = self.moves.fenced.get(&queue).filter(|f| f.move_id == move_id);
        let (Some(fence), Some(q)) = (fence, self.queues.get(&queue)) else {
            return Err(refused("the queue is not fenced for this move"));
        };
        let mut requests = answers_to(queue, &self.moves.sent_to, &self.requests);
        requests.extend(answers_to(queue, &self.moves.carried_to, &self.moves.carried));
        let slices = self.slices_of(queue, q);
        let (queue_id, lease_floor, clock_ms, marks) = (queue, fence.lease_floor, self.clock_ms, self.marks_of(queue));
        Ok(QueueCopy { queue_id, queue: q.clone(), lease_floor, clock_ms, requests, marks, slices })
    }

    pub(super) fn adopt_state(
        &mut self,
        queue: QueueId,
        tenant: &str,
        move_id: MoveId,
        offset: u64,
        part: &Bytes,
    ) -> Result<Response, QueueError> {
        if self.moves.adopted.get(&queue) == Some(&move_id) {
            return Ok(Response::Moved);
        }
        if self.queues.contains_key(&queue) {
            return Err(refused("the shard holds this queue already"));
        }
        if tenant.is_empty() || part.len() > ADOPT_STATE_PART_BYTES {
            return Err(refused("an adoption part names no tenant or is too large"));
        }
        let adoption = match self.moves.adopting.get_mut(&queue) {
            // The first part again (a driver that starts the hand-over over, or that copied
            // bodies before the fence): the state starts anew, the bodies copied stay.
            Some(adoption) if adoption.move_id == move_id && offset == 0 => {
                adoption.state.clear();
                adoption
            }
            Some(adoption) if adoption.move_id == move_id => adoption,
            // A later move's parts replace what an abandoned one left.
            Some(adoption) if adoption.move_id > move_id => return Err(moving()),
            _ if offset == 0 => {
                let fresh = Adoption {
                    move_id,
                    tenant: tenant.to_owned(),
                    state: Vec::new(),
                    bodies: BTreeMap::new(),
                    first_body_index: None,
                };
                self.moves.adopting.insert(queue, fresh);
                self.moves.adopting.get_mut(&queue).ok_or_else(moving)?
            }
            _ => return Err(refused("an adoption part arrived before the parts before it")),
        };
        if adoption.tenant != tenant {
            return Err(refused("an adoption part names another tenant"));
        }
        let held = adoption.state_bytes();
        if offset < held {
            // A part repeated by a driver that did not see its answer.
            return Ok(Response::Moved);
        }
        if part.is_empty() {
            return Ok(Response::Moved);
        }
        if offset > held || held + part.len() as u64 > ADOPTED_STATE_BYTES_MAX {
            return Err(refused("an adoption part does not follow the parts before it, or the state is too large"));
        }
        adoption.state.push(part.clone());
        Ok(Response::Moved)
    }

    pub(super) fn adopt_bodies(
        &mut self,
        queue: QueueId,
        move_id: MoveId,
        refs: &[MessageRef],
        messages: &[NewMessage],
        log_index: u64,
    ) -> Result<Response, QueueError> {
        let Some(adoption) = self.moves.under_way(queue, move_id)? else { return Ok(Response::Moved) };
        if refs.len() != messages.len() || refs.is_empty() || refs.len() > ADOPT_BODIES_PART_MESSAGES {
            return Err(refused("an adoption's bodies do not match their references"));
        }
        for (slot, at) in refs.iter().enumerate() {
            let slot = u16::try_from(slot).map_err(|_| refused("too many bodies"))?;
            adoption.bodies.insert(*at, MessageRef { log_index, slot });
        }
        adoption.first_body_index.get_or_insert(log_index);
        Ok(Response::Moved)
    }

    /// Makes an adopted queue whole: it serves from here on (once metadata routes to it).
    pub(super) fn adopt_queue(
        &mut self,
        queue: QueueId,
        move_id: MoveId,
        log_index: u64,
    ) -> Result<Response, QueueError> {
        let Some(adoption) = self.moves.under_way(queue, move_id)? else { return Ok(Response::Moved) };
        let bytes: Vec<u8> = adoption.state.iter().flat_map(|part| part.iter().copied()).collect();
        let Some((export, marks)) = decode_export(&bytes) else {
            return Err(refused("the adopted state cannot be read (parts missing or mixed, or from a newer release)"));
        };
        self.clock_ms = self.clock_ms.max(export.clock_ms);
        let mut q = export.queue;
        if q.tenant != adoption.tenant {
            return Err(refused("the adopted state is another tenant's"));
        }
        q.set_sizes(export.sizes).map_err(refused)?;
        q.set_moved_away(export.moved_away.into_iter().collect());
        let arrived_at = adoption.first_body_index.unwrap_or(log_index);
        let mut q = q.rebased(&adoption.bodies, arrived_at).map_err(|e| refused(&e))?;
        // Scheduled messages from the old shard's slice files: into this shard's files, or the
        // wheel when due soon; each counts the mean of what they counted there.
        let (_, mean_bytes) = q.leave_slice_files();
        let mut scheduled = Vec::with_capacity(export.scheduled.len());
        for m in &export.scheduled {
            let body_ref =
                adoption.bodies.get(&m.body_ref).copied().ok_or_else(|| refused("a scheduled body was not copied"))?;
            scheduled.push(ScheduledMessage { body_ref, body_bytes: mean_bytes, ..*m });
        }
        self.moves.adopting.remove(&queue);
        for m in scheduled {
            let to_disk = self.schedule.goes_to_disk(m.deliver_at_ms, self.clock_ms);
            q.arrive_scheduled(m, to_disk);
            if to_disk {
                self.schedule.append_message(m);
            }
        }
        // Every lease issued here lies above the floor: log_index + base > floor.
        let base = export.lease_floor.saturating_add(1).saturating_sub(log_index.saturating_add(1));
        self.moves.lease_bases.insert(queue, base);
        self.moves.adopted.insert(queue, move_id);
        for (key, answer) in export.requests {
            let index = self.moves.carried_next;
            self.moves.carried_next += 1;
            self.moves.carried.remember(index, &key, &answer, REQUEST_IDS_KEPT);
            self.moves.carried_to.insert(index, queue);
        }
        forget_before(&mut self.moves.carried_to, self.moves.carried.oldest_log_index().unwrap_or(0));
        self.set_marks(queue, marks);
        reindex(&mut self.by_expiry, &mut self.by_log_index, queue, &mut q);
        self.queues.insert(queue, q);
        Ok(Response::Moved)
    }

    /// Drops what a move brought of the queue before its routing switched (a roll back): its
    /// parts, or the adopted queue not yet opened. An opened queue is never dropped so.
    pub(super) fn drop_adoption(&mut self, queue: QueueId, move_id: MoveId) -> Result<Response, QueueError> {
        if self.moves.adopting.get(&queue).is_some_and(|a| a.move_id == move_id) {
            self.moves.adopting.remove(&queue);
        }
        if self.moves.adopted.get(&queue) == Some(&move_id) {
            self.remove_queue(queue);
        }
        Ok(Response::Moved)
    }
}
