//! `ShardState`: all queues of one shard and the command dispatcher.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use strata_common::metering::MeterRecord;
use strata_raft::requests::RecentRequests;
use uuid::Uuid;

use super::outbox::MeterOutbox;
use super::receipt::Receipt;
use super::schedule::{Schedule, ScheduledMessage, Slice, SliceWrite, deliver_at_of, slice_of};
use super::store::{DEAD_LETTER_MOVES_MAX, LeaseCheck, Queue, QueueSizes};
use super::touches::{Touch, Touches};
use super::types::{
    CALLS_PER_ENTRY_MAX, Call, CallerNote, Command, DELETE_BATCH_MAX, DELIVER_AHEAD_MS_MAX, FIFO_ID_CHARS_MAX,
    IN_FLIGHT_MAX, MESSAGE_ATTRIBUTES_MAX, MOVE_PER_SECOND_MAX, MOVE_STEP_MESSAGES_MAX, MOVE_TASKS_KEPT_PER_SOURCE,
    MoveTask, MoveTaskId, MoveTaskStatus, NewMessage, QueueConfig, QueueCounts, QueueError, QueueId, RECEIVE_BATCH_MAX,
    REQUEST_DIGEST_SEPARATOR, REQUEST_IDS_KEPT, Response, SEND_BATCH_MAX, ShardCommand, check_delay,
    check_visibility_timeout,
};
use crate::message_trace::{CallBy, MessageTrace, TraceEvent, TraceRecord};
use crate::queue_metrics::{Activity, Counts, Gauges};

pub(super) mod hand_offs;
pub(super) mod moves;
use hand_offs::HandOffs;
use moves::Moves;

/// What the messages of a shard's queues count in their stored bytes, queue by queue (see
/// [`ShardState::stored_sizes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSizes(Vec<(QueueId, QueueSizes)>);

/// The seqs of received messages each queue remembers as moved away (queues remembering none
/// are left out; see [`ShardState::moved_away`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedAway(Vec<(QueueId, Vec<u64>)>);

/// The replicated state of one shard. See the module doc of [`crate::queue`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// Highest `now_ms` seen in any applied command. Commands are applied at
    /// `max(now_ms, clock_ms)` so time never runs backwards across a leader
    /// change.
    clock_ms: u64,
    queues: BTreeMap<QueueId, Queue>,
    /// `(expiry of the oldest message, queue)` for every non-empty queue, so
    /// `Expire` and `has_expirable` do not scan idle queues.
    by_expiry: BTreeSet<(u64, QueueId)>,
    /// `(log index of the oldest message, queue)` for every non-empty queue.
    by_log_index: BTreeSet<(u64, QueueId)>,
    /// Move tasks, running and recently finished.
    move_tasks: BTreeMap<MoveTaskId, MoveTask>,
    /// Scheduled messages on disk, by time slice.
    schedule: Schedule,
    /// Recent request ids and their answers.
    requests: RecentRequests<Response>,
    /// Metering records of applied commands, until the billing service has counted them.
    metering: MeterOutbox,
    /// Queues moving to or from other shards (not in the serde layout: shard state format
    /// version 5 carries it after the moved-away seqs; see [`moves`]).
    #[serde(skip)]
    moves: Moves,
    /// Messages handed to other shards' queues, and the marks of those handed here (not in the
    /// serde layout: shard state format version 6 carries it after the moves; see
    /// [`hand_offs`]).
    #[serde(skip)]
    hand_offs: HandOffs,
    /// The log index of the [`Command::Hibernate`] entry, while it is the last command applied
    /// (not persisted: a replica opened again starts awake).
    #[serde(skip)]
    asleep_at: Option<u64>,
    /// Which queues the last applies may have made receivable (for waking long polls; not
    /// persisted, not compared).
    #[serde(skip)]
    touches: Touches,
    /// Per-queue counts of the last applies, until the shard writes them down (not persisted,
    /// not compared; see [`crate::queue_metrics`]).
    #[serde(skip)]
    activity: Activity,
    /// Records of what happened to each message, until the shard writes them down (not
    /// persisted, not compared; see [`crate::message_trace`]).
    #[serde(skip)]
    trace: MessageTrace,
}

/// What a receipt named before its call applied: the message's seq and id (for the trace).
type ReceiptTarget = Option<(u64, Uuid)>;

impl ShardState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a remembered request id carries a request digest (which only shard states of
    /// format version 2 on may hold).
    pub fn holds_request_digests(&self) -> bool {
        self.requests.ids().any(|id| id.contains(REQUEST_DIGEST_SEPARATOR))
    }

    /// Whether the shard's timers have work at `now_ms`: messages waiting to be handed off,
    /// running move tasks, a queue moving in or out, scheduled messages due for loading, or
    /// messages past retention. A shard with none may hibernate; one asleep with some wakes.
    pub fn has_timed_work(&self, now_ms: u64) -> bool {
        self.has_hand_offs()
            || self.move_tasks.values().any(|t| t.status == MoveTaskStatus::Running)
            || self.has_adoptions()
            || self.has_fences()
            || self.next_slice_to_load(now_ms).is_some()
            || self.has_expirable(now_ms)
    }

    /// The log index of the [`Command::Hibernate`] entry when it is the last command applied.
    /// Raft's own entries (a new leader's first, membership changes) do not pass through
    /// [`ShardState::apply`]: the shard sleeps only while the applied index is this one.
    pub fn asleep_at(&self) -> Option<u64> {
        self.asleep_at
    }

    /// This state awake (test support).
    #[cfg(test)]
    pub fn without_sleep(&self) -> ShardState {
        ShardState { asleep_at: None, ..self.clone() }
    }

    /// The shard clock: the highest `now_ms` applied so far.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Applies one committed command. `log_index` must increase from call to
    /// call (it is the Raft log index): it locates message bodies and makes
    /// receipt leases unique. A response of `Response::Error` means nothing
    /// but the clock changed.
    pub fn apply(&mut self, log_index: u64, cmd: &ShardCommand) -> Response {
        self.clock_ms = self.clock_ms.max(cmd.now_ms);
        self.asleep_at = matches!(cmd.command, Command::Hibernate).then_some(log_index);
        if let Some(key) = cmd.request_id.as_deref() {
            match self.earlier_request(key) {
                // Its record entered the outbox with the first answer, if that was a success.
                Some(Ok(first)) => return first.clone(),
                // Stores nothing and is not remembered: the first request keeps its id.
                Some(Err(conflict)) => return Response::Error(conflict),
                None => {}
            }
        }
        let response = match &cmd.command {
            Command::Calls { calls } => Response::Calls(self.apply_calls(log_index, calls)),
            command => self.apply_metered(log_index, command, cmd.meter.as_ref()),
        };
        // Not remembered under the request id: a retry once the outbox has room (or at the
        // queue's new shard, or after a move rolled back) may succeed.
        if matches!(response, Response::Error(QueueError::MeteringBacklogFull | QueueError::QueueMoving)) {
            return response;
        }
        if let Some(id) = &cmd.request_id {
            self.requests.remember(log_index, id, &response, REQUEST_IDS_KEPT);
            if let (Command::Send { queue, .. }, _) = cmd.command.call_and_caller() {
                self.note_sent(log_index, *queue);
            }
        }
        response
    }

    /// Applies `command` and, when it succeeds, queues its metering record `meter`.
    fn apply_metered(&mut self, log_index: u64, command: &Command, meter: Option<&MeterRecord>) -> Response {
        if meter.is_some() && self.metering.is_full() {
            return Response::Error(QueueError::MeteringBacklogFull);
        }
        // What the log keeps of the caller beside the call changes nothing in the state.
        let (command, caller) = command.call_and_caller();
        let targets = self.receipt_targets(command);
        let touch = self.touch_of(command);
        let response = self.apply_command(log_index, command);
        self.touches.record(log_index, touch);
        self.count_activity(log_index, command, &response);
        self.trace_call(log_index, command, caller, &response, &targets);
        if let Some(record) = meter
            && !matches!(response, Response::Error(_))
        {
            self.metering.push(record.clone());
        }
        response
    }

    /// The calls of one [`Command::Calls`] entry, one after another; each answers on its own.
    fn apply_calls(&mut self, log_index: u64, calls: &[Call]) -> Vec<Response> {
        if calls.len() > CALLS_PER_ENTRY_MAX {
            return vec![Response::Error(QueueError::TooManyEntries); calls.len()];
        }
        calls
            .iter()
            .map(|call| {
                if !call.command.batchable() {
                    let message = "only receives, deletes and visibility changes share a log entry";
                    return Response::Error(QueueError::InvalidParameter(message.to_owned()));
                }
                self.apply_metered(log_index, &call.command, call.meter.as_ref())
            })
            .collect()
    }

    /// What an earlier request with `key`'s request id answered: its first answer for a retry of
    /// the same request (the same key, or the bare id a command from before request digests
    /// remembered), a conflict for the same id with another request, nothing for a new id.
    fn earlier_request(&self, key: &str) -> Option<Result<&Response, QueueError>> {
        if let Some(first) = self.requests.answer(key).or_else(|| self.carried_answer(key)) {
            return Some(Ok(first));
        }
        let (id, _digest) = key.split_once(REQUEST_DIGEST_SEPARATOR)?;
        if let Some(first) = self.requests.answer(id) {
            return Some(Ok(first));
        }
        let prefix = format!("{id}{REQUEST_DIGEST_SEPARATOR}");
        let conflict = self.requests.any_with_prefix(&prefix) || self.carried_with_prefix(&prefix);
        conflict.then_some(Err(QueueError::IdempotencyConflict))
    }

    fn apply_command(&mut self, log_index: u64, command: &Command) -> Response {
        let now_ms = self.clock_ms;
        let result = match command {
            Command::CreateQueue { queue, tenant, config } => self.create_queue(*queue, tenant, config),
            Command::SetQueueConfig { queue, tenant, config } => {
                let config = *config;
                self.with_queue(*queue, tenant, |q| {
                    config.validate()?;
                    if config.fifo.is_some() != q.config.fifo.is_some() {
                        return Err(QueueError::InvalidParameter(
                            "a queue cannot change between standard and FIFO".to_owned(),
                        ));
                    }
                    q.settle(now_ms);
                    q.config = config;
                    Ok(Response::QueueConfigSet)
                })
                .inspect(|_| self.forget_gone_dead_letter(*queue))
            }
            Command::DeleteQueue { queue, tenant } => self.delete_queue(*queue, tenant),
            Command::Send { queue, tenant, messages } => self.send(*queue, tenant, messages, log_index, now_ms),
            Command::Receive { queue, tenant, max_messages, visibility_timeout_ms } => {
                self.receive(*queue, tenant, *max_messages, *visibility_timeout_ms, None, log_index, now_ms)
            }
            Command::ReceiveAttempt { queue, tenant, max_messages, visibility_timeout_ms, attempt_id } => {
                let attempt = Some(attempt_id.as_str());
                self.receive(*queue, tenant, *max_messages, *visibility_timeout_ms, attempt, log_index, now_ms)
            }
            Command::Delete { queue, tenant, receipts } => {
                let queue = *queue;
                self.with_queue(queue, tenant, |q| {
                    if receipts.is_empty() {
                        return Err(QueueError::InvalidParameter("receipts must not be empty".to_owned()));
                    }
                    if receipts.len() > DELETE_BATCH_MAX {
                        return Err(QueueError::TooManyEntries);
                    }
                    q.settle(now_ms);
                    let results = receipts.iter().map(|text| delete_one(q, queue, text, now_ms)).collect();
                    Ok(Response::Deleted(results))
                })
            }
            Command::ChangeVisibility { queue, tenant, receipt, visibility_timeout_ms } => {
                let queue = *queue;
                self.with_queue(queue, tenant, |q| {
                    check_visibility_timeout(*visibility_timeout_ms)?;
                    let receipt = decode_for(q, queue, receipt)?;
                    match q.check_lease(&receipt, now_ms) {
                        LeaseCheck::Gone | LeaseCheck::Current { in_flight: false } => {
                            return Err(QueueError::MessageNotInFlight);
                        }
                        LeaseCheck::Stale => return Err(QueueError::StaleReceipt),
                        LeaseCheck::Current { in_flight: true } => {}
                    }
                    q.settle(now_ms);
                    let visible_at_ms = now_ms.saturating_add(*visibility_timeout_ms);
                    q.set_visible_at(receipt.seq, visible_at_ms, now_ms);
                    Ok(Response::VisibilityChanged)
                })
            }
            Command::Purge { queue, tenant } => self.with_queue(*queue, tenant, |q| {
                q.settle(now_ms);
                Ok(Response::Purged { count: q.purge(log_index) })
            }),
            Command::Expire => Ok(Response::Expired { count: self.expire(now_ms) }),
            Command::StartMoveTask { tenant, source, destination, max_per_second } => {
                self.start_move_task(log_index, tenant, *source, *destination, *max_per_second, now_ms)
            }
            Command::CancelMoveTask { tenant, task_id } => self.cancel_move_task(tenant, *task_id),
            Command::MoveStep { task_id, max_messages } => self.move_step(*task_id, *max_messages, log_index, now_ms),
            Command::CancelScheduled { queue, tenant, message_id } => {
                self.cancel_scheduled(*queue, tenant, *message_id, log_index, now_ms)
            }
            Command::StartScheduledLoad { slice_start_ms } => self.start_scheduled_load(*slice_start_ms, now_ms),
            Command::LoadScheduled { slice_start_ms, from, to, messages } => {
                self.load_scheduled(*slice_start_ms, *from, *to, messages, now_ms)
            }
            Command::ReturnUndelivered { queue, tenant, receipts } => {
                let queue = *queue;
                self.with_queue(queue, tenant, |q| {
                    if receipts.len() > RECEIVE_BATCH_MAX as usize {
                        return Err(QueueError::TooManyEntries);
                    }
                    q.settle(now_ms);
                    for text in receipts {
                        // A receipt no longer current (deleted, expired, received again) is
                        // passed over: what it leased has moved on already.
                        if let Ok(receipt) = decode_for(q, queue, text)
                            && let LeaseCheck::Current { in_flight: true } = q.check_lease(&receipt, now_ms)
                        {
                            q.return_undelivered(receipt.seq, now_ms);
                        }
                    }
                    Ok(Response::VisibilityChanged)
                })
            }
            Command::FenceQueue { queue, tenant, move_id } => self.fence_queue(*queue, tenant, *move_id, log_index),
            Command::UnfenceQueue { queue, move_id } => self.unfence_queue(*queue, *move_id),
            Command::ReleaseQueue { queue, move_id } => self.release_queue(*queue, *move_id),
            Command::AdoptState { queue, tenant, move_id, offset, part } => {
                self.adopt_state(*queue, tenant, *move_id, *offset, part)
            }
            Command::AdoptBodies { queue, move_id, refs, messages, .. } => {
                self.adopt_bodies(*queue, *move_id, refs, messages, log_index)
            }
            Command::AdoptQueue { queue, move_id } => self.adopt_queue(*queue, *move_id, log_index),
            Command::DropAdoption { queue, move_id } => self.drop_adoption(*queue, *move_id),
            Command::OpenQueue { queue, move_id } => self.open_queue(*queue, *move_id),
            Command::OpenHandOffs => self.open_hand_offs(),
            Command::AcceptHandOffs { source_shard, queue, tenant, arrivals, messages, .. } => {
                self.accept_hand_offs(*source_shard, *queue, tenant, arrivals, messages, log_index)
            }
            Command::TrimHandOffs { through_seq } => self.trim_hand_offs(*through_seq),
            Command::Hibernate => Ok(Response::Moved),
            Command::ReturnHandOffs { through_seq } => self.return_hand_offs(*through_seq, log_index),
            Command::TrimMetering { through_seq } => {
                self.metering.trim(*through_seq);
                Ok(Response::MeteringTrimmed)
            }
            // Calls are applied by `apply`, one by one, and unwrapped from their notes by
            // `apply_metered`, once; neither nests.
            Command::Calls { .. } => Err(QueueError::InvalidParameter("calls do not nest".to_owned())),
            Command::WithCaller { .. } => {
                Err(QueueError::InvalidParameter("a caller's note wraps one call".to_owned()))
            }
        };
        result.unwrap_or_else(Response::Error)
    }

    /// What `command` may make receivable: the queue it sends to, changes or takes back
    /// leases in; a receive's dead-letter queue (exhausted messages move there); every queue
    /// for the rarer commands that move messages between queues. Deletes, expiry and receives
    /// without a dead-letter queue make nothing receivable.
    fn touch_of(&self, command: &Command) -> Option<Touch> {
        match command {
            Command::CreateQueue { queue, .. }
            | Command::SetQueueConfig { queue, .. }
            | Command::DeleteQueue { queue, .. }
            | Command::Send { queue, .. }
            | Command::ChangeVisibility { queue, .. }
            | Command::Purge { queue, .. }
            | Command::ReturnUndelivered { queue, .. } => Some(Touch::Queue(*queue)),
            Command::Receive { queue, tenant, .. } | Command::ReceiveAttempt { queue, tenant, .. } => {
                let redrive = self.queue_config(*queue, tenant).and_then(|c| c.redrive);
                redrive.map(|r| Touch::Queue(r.dead_letter_queue))
            }
            Command::Delete { .. }
            | Command::Expire
            | Command::TrimMetering { .. }
            | Command::Calls { .. }
            | Command::WithCaller { .. }
            | Command::AdoptState { .. }
            | Command::AdoptBodies { .. }
            | Command::DropAdoption { .. }
            | Command::OpenHandOffs
            | Command::TrimHandOffs { .. }
            | Command::Hibernate => None,
            Command::AcceptHandOffs { queue, .. } => Some(Touch::Queue(*queue)),
            // Long polls waiting at the shard learn that the queue moves away (and go to its new
            // shard), or that it serves here (again).
            Command::FenceQueue { queue, .. }
            | Command::ReleaseQueue { queue, .. }
            | Command::UnfenceQueue { queue, .. }
            | Command::AdoptQueue { queue, .. }
            | Command::OpenQueue { queue, .. } => Some(Touch::Queue(*queue)),
            Command::StartMoveTask { .. }
            | Command::CancelMoveTask { .. }
            | Command::MoveStep { .. }
            | Command::CancelScheduled { .. }
            | Command::StartScheduledLoad { .. }
            | Command::LoadScheduled { .. }
            | Command::ReturnHandOffs { .. } => Some(Touch::All),
        }
    }

    /// What an applied command did to its queue, for the queue's metrics (a dead-letter move is
    /// counted where it happens).
    fn count_activity(&self, log_index: u64, command: &Command, response: &Response) {
        let (queue, counts) = match (command, response) {
            (Command::Send { queue, messages, .. }, Response::Sent(sent)) => {
                let bytes_in = messages.iter().map(|m| u64::from(m.stored_bytes())).sum();
                (*queue, Counts { sent: sent.len() as u64, bytes_in, ..Counts::default() })
            }
            // A receive that found nothing is counted by the leader as it answers (most such
            // receives never reach the log).
            (
                Command::Receive { queue, tenant, .. } | Command::ReceiveAttempt { queue, tenant, .. },
                Response::Received(got),
            ) => {
                let bytes_out =
                    self.get(*queue, tenant).map_or(0, |q| got.iter().map(|d| q.message_bytes(d.seq)).sum());
                (*queue, Counts { received: got.len() as u64, bytes_out, ..Counts::default() })
            }
            (Command::Delete { queue, .. }, Response::Deleted(results)) => {
                (*queue, Counts { deleted: results.iter().filter(|r| r.is_ok()).count() as u64, ..Counts::default() })
            }
            _ => return,
        };
        self.activity.record(log_index, queue, self.clock_ms, counts);
    }

    /// The messages a delete's, visibility change's or take-back's receipts name before it
    /// applies (only while the trace is kept): a receipt names its message only while it is
    /// the latest one, and a take-back's only while the message is in flight.
    fn receipt_targets(&self, command: &Command) -> Vec<ReceiptTarget> {
        if !self.trace.is_open() {
            return Vec::new();
        }
        let (queue, tenant, receipts, in_flight_only) = match command {
            Command::Delete { queue, tenant, receipts } => (*queue, tenant, receipts.as_slice(), false),
            Command::ReturnUndelivered { queue, tenant, receipts } => (*queue, tenant, receipts.as_slice(), true),
            Command::ChangeVisibility { queue, tenant, receipt, .. } => {
                (*queue, tenant, std::slice::from_ref(receipt), true)
            }
            _ => return Vec::new(),
        };
        let Some(q) = self.get(queue, tenant) else { return Vec::new() };
        receipts
            .iter()
            .map(|text| {
                let receipt = decode_for(q, queue, text).ok()?;
                match q.check_lease(&receipt, self.clock_ms) {
                    LeaseCheck::Current { in_flight } if in_flight || !in_flight_only => {
                        q.message_at(receipt.seq).map(|(id, _)| (receipt.seq, id))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Records what an applied call did to its messages (while the trace is kept).
    fn trace_call(
        &self,
        log_index: u64,
        command: &Command,
        caller: Option<&CallerNote>,
        response: &Response,
        targets: &[ReceiptTarget],
    ) {
        if !self.trace.is_open() {
            return;
        }
        let by = || {
            caller.map_or_else(CallBy::default, |c| CallBy {
                credential: c.credential.clone(),
                request_id: c.request_id.clone(),
            })
        };
        let at_ms = self.clock_ms;
        let record = |message_id, event| TraceRecord { log_index, at_ms, message_id, event };
        let visible_at = |queue: QueueId, seq: u64| {
            self.queues.get(&queue).and_then(|q| q.message_at(seq)).map_or(at_ms, |(_, at)| at)
        };
        let (queue, records): (QueueId, Vec<TraceRecord>) = match (command, response) {
            (Command::Send { queue, messages, .. }, Response::Sent(sent)) => {
                // A FIFO send deduplicated answers the first message's id: nothing new entered.
                let entered = messages.iter().zip(sent).filter(|(m, s)| m.message_id == s.message_id);
                let records = entered
                    .map(|(m, s)| {
                        let deliver_at_ms = m.deliver_at_ms.filter(|&at| at > at_ms);
                        record(m.message_id, TraceEvent::Sent { by: by(), seq: s.seq, deliver_at_ms })
                    })
                    .collect();
                (*queue, records)
            }
            (
                Command::Receive { queue, .. } | Command::ReceiveAttempt { queue, .. },
                Response::Received(deliveries),
            ) => {
                let records = deliveries
                    .iter()
                    .map(|d| {
                        let visible_at_ms = visible_at(*queue, d.seq);
                        let event = TraceEvent::Received { by: by(), receive_count: d.receive_count, visible_at_ms };
                        record(d.message_id, event)
                    })
                    .collect();
                (*queue, records)
            }
            (Command::Delete { queue, .. }, Response::Deleted(results)) => {
                let deleted = targets.iter().zip(results).filter(|(_, r)| r.is_ok());
                let records = deleted
                    .filter_map(|(t, _)| *t)
                    .map(|(_, id)| record(id, TraceEvent::Deleted { by: by() }))
                    .collect();
                (*queue, records)
            }
            (Command::ChangeVisibility { queue, .. }, Response::VisibilityChanged) => {
                let records = targets
                    .iter()
                    .flatten()
                    .map(|&(seq, id)| {
                        record(id, TraceEvent::VisibilityChanged { by: by(), visible_at_ms: visible_at(*queue, seq) })
                    })
                    .collect();
                (*queue, records)
            }
            (Command::ReturnUndelivered { queue, .. }, Response::VisibilityChanged) => {
                (*queue, targets.iter().flatten().map(|&(_, id)| record(id, TraceEvent::Returned)).collect())
            }
            (Command::CancelScheduled { queue, message_id, .. }, Response::ScheduledCancelled) => {
                (*queue, vec![record(*message_id, TraceEvent::Cancelled { by: by() })])
            }
            (Command::Purge { queue, .. }, Response::Purged { .. }) => {
                (*queue, vec![record(Uuid::nil(), TraceEvent::Purged { by: by() })])
            }
            _ => return,
        };
        self.trace.add(queue, records);
    }

    /// Records messages moved from `from` to `to` (while the trace is kept): `moved` are their
    /// ids and their seqs in `to`.
    fn trace_moves(&self, log_index: u64, from: QueueId, to: QueueId, moved: &[(Uuid, u64)], dead_letter: bool) {
        let ids: Vec<Uuid> = moved.iter().map(|&(id, _)| id).collect();
        self.trace_left(log_index, from, to, &ids, dead_letter);
        self.trace_arrived(log_index, from, to, moved, dead_letter);
    }

    /// Records messages that left `from` for `to` (while the trace is kept).
    fn trace_left(&self, log_index: u64, from: QueueId, to: QueueId, ids: &[Uuid], dead_letter: bool) {
        if !self.trace.is_open() || ids.is_empty() {
            return;
        }
        let at_ms = self.clock_ms;
        let event = TraceEvent::MovedTo { to, dead_letter };
        let record = |&message_id| TraceRecord { log_index, at_ms, message_id, event: event.clone() };
        self.trace.add(from, ids.iter().map(record));
    }

    /// Records messages that arrived in `to` from `from` (while the trace is kept): their ids
    /// and their seqs in `to`.
    fn trace_arrived(&self, log_index: u64, from: QueueId, to: QueueId, arrived: &[(Uuid, u64)], dead_letter: bool) {
        if !self.trace.is_open() || arrived.is_empty() {
            return;
        }
        let at_ms = self.clock_ms;
        let record = |&(message_id, seq)| TraceRecord {
            log_index,
            at_ms,
            message_id,
            event: TraceEvent::ArrivedFrom { from, seq, dead_letter },
        };
        self.trace.add(to, arrived.iter().map(record));
    }

    /// The shard's message traces.
    pub fn message_trace(&self) -> &MessageTrace {
        &self.trace
    }

    /// When message `message_id`, which entered `queue` as `seq` (0: scheduled for later), is
    /// next visible there, if the queue holds it still.
    pub fn message_now(&self, queue: QueueId, tenant: &str, seq: u64, message_id: Uuid) -> Option<u64> {
        let q = self.get(queue, tenant)?;
        match seq {
            0 => q.locate(message_id),
            seq => q.message_at(seq).filter(|(id, _)| *id == message_id).map(|(_, at)| at),
        }
    }

    /// The per-queue counts of the applies since the shard last took them.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// A queue's depth for its metrics at `now_ms`; `None` if it does not exist.
    pub fn queue_gauges(&self, queue: QueueId, now_ms: u64) -> Option<Gauges> {
        let q = self.queues.get(&queue)?;
        let counts = q.counts_at(now_ms);
        Some(Gauges {
            visible: counts.visible,
            in_flight: counts.in_flight,
            delayed: counts.delayed,
            oldest_age_s: q.oldest_enqueued_ms().map_or(0, |at| now_ms.saturating_sub(at) / 1000),
        })
    }

    /// The ids of every queue of the shard.
    pub fn queue_ids(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.queues.keys().copied()
    }

    /// Which queues the last applies may have made receivable.
    pub fn touches(&self) -> &Touches {
        &self.touches
    }

    /// The metering outbox: records of applied metered commands not yet trimmed.
    pub fn metering(&self) -> &MeterOutbox {
        &self.metering
    }

    /// Bytes of the messages the queue holds, scheduled ones included, as of the last command
    /// applied to it (see [`NewMessage::stored_bytes`]). `None` if the queue does not exist for
    /// this tenant.
    pub fn queue_stored_bytes(&self, queue: QueueId, tenant: &str) -> Option<u64> {
        self.get(queue, tenant).map(Queue::stored_bytes)
    }

    /// What every message counts in its queue's stored bytes: the part of the state that its
    /// serde layout leaves out (shard state format version 3 carries it after the layout).
    pub fn stored_sizes(&self) -> StoredSizes {
        StoredSizes(self.queues.iter().map(|(&id, q)| (id, q.sizes())).collect())
    }

    /// The seqs of received messages each queue remembers as moved away: the part of the state
    /// that shard state format version 4 carries after the stored sizes.
    pub fn moved_away(&self) -> MovedAway {
        let remembered = self.queues.iter().filter(|(_, q)| !q.moved_away().is_empty());
        MovedAway(remembered.map(|(&id, q)| (id, q.moved_away().iter().copied().collect())).collect())
    }

    /// Puts back what [`ShardState::moved_away`] gave. Errors when it names a queue the state
    /// does not hold.
    pub fn restore_moved_away(&mut self, moved: MovedAway) -> Result<(), String> {
        for (id, seqs) in moved.0 {
            let queue = self.queues.get_mut(&id).ok_or_else(|| format!("moved-away seqs name no queue {id}"))?;
            queue.set_moved_away(seqs.into_iter().collect());
        }
        Ok(())
    }

    /// Puts back what [`ShardState::stored_sizes`] gave, after a decode of the serde layout.
    /// Errors when they are not the sizes of this state's queues and messages.
    pub fn restore_stored_sizes(&mut self, sizes: StoredSizes) -> Result<(), String> {
        if sizes.0.len() != self.queues.len() {
            return Err("the stored sizes do not match the shard's queues".to_owned());
        }
        for ((id, queue), (sized_id, sizes)) in self.queues.iter_mut().zip(sizes.0) {
            if *id != sized_id {
                return Err(format!("the stored sizes name queue {sized_id} where the state has {id}"));
            }
            queue.set_sizes(sizes).map_err(|e| format!("queue {id}: {e}"))?;
        }
        Ok(())
    }

    /// This state as read from a format version without moved-away seqs (test support).
    #[cfg(test)]
    pub fn without_moved_away(&self) -> ShardState {
        let mut state = self.clone();
        for queue in state.queues.values_mut() {
            queue.set_moved_away(Default::default());
        }
        state
    }

    /// This state as read from a format version without stored sizes (test support).
    #[cfg(test)]
    pub fn without_stored_sizes(&self) -> ShardState {
        let mut state = self.clone();
        for queue in state.queues.values_mut() {
            queue.forget_sizes();
        }
        state
    }

    /// Counts as of the last command applied to this queue (what the state machine itself
    /// holds; [`ShardState::queue_counts_at`] is what readers see). `None` if the queue does
    /// not exist for this tenant.
    pub fn queue_counts(&self, queue: QueueId, tenant: &str) -> Option<QueueCounts> {
        self.get(queue, tenant).map(Queue::counts)
    }

    /// Counts at `now_ms`: a message whose delay or visibility timeout ran out since the last
    /// command on the queue counts as visible already, as does a scheduled message now due
    /// (messages past retention still count until a command drops them). `None` if the queue
    /// does not exist for this tenant.
    pub fn queue_counts_at(&self, queue: QueueId, tenant: &str, now_ms: u64) -> Option<QueueCounts> {
        self.get(queue, tenant).map(|q| q.counts_at(now_ms))
    }

    /// Whether a Receive at `now_ms` would deliver at least one message. Cheap
    /// and read-only, for long polling.
    pub fn has_visible(&self, queue: QueueId, tenant: &str, now_ms: u64) -> bool {
        let now_ms = now_ms.max(self.clock_ms);
        self.get(queue, tenant).is_some_and(|q| q.has_visible(now_ms))
    }

    /// Earliest time strictly after `now_ms` (and after the shard clock) at
    /// which a delayed or in-flight message becomes visible, ignoring messages
    /// that reach retention first. `None` if there is none. A long poller
    /// sleeps until this time, or until a Send, whichever comes first.
    ///
    /// Takes `now_ms` so that a time already passed is never returned (which
    /// would make a poller spin when that message cannot be delivered).
    pub fn next_visible_at_ms(&self, queue: QueueId, tenant: &str, now_ms: u64) -> Option<u64> {
        let now_ms = now_ms.max(self.clock_ms);
        self.get(queue, tenant)?.next_visible_at_ms(now_ms)
    }

    /// Lowest log index referenced by any message still stored (including
    /// messages past retention not yet dropped); log segments wholly below it
    /// hold no live body. `None` if the shard holds no message.
    pub fn min_live_log_index(&self) -> Option<u64> {
        let in_memory = self.by_log_index.first().map(|&(log_index, _)| log_index);
        let elsewhere = self.min_adopting_log_index().into_iter().chain(self.min_hand_off_log_index());
        in_memory.into_iter().chain(self.schedule.min_log_index()).chain(elsewhere).min()
    }

    /// The slice files the last applies asked to change, in order; the storage node makes the
    /// changes before the next apply.
    pub fn take_slice_writes(&mut self) -> Vec<SliceWrite> {
        std::mem::take(&mut self.schedule.writes)
    }

    /// The first slice due for loading at `now_ms` (at least this shard clock), if any.
    pub fn next_slice_to_load(&self, now_ms: u64) -> Option<(u64, &Slice)> {
        self.schedule.next_load(now_ms.max(self.clock_ms))
    }

    /// Every slice file the state expects, with its record count.
    pub fn slice_record_counts(&self) -> BTreeMap<u64, u64> {
        self.schedule.slices.iter().map(|(&start, slice)| (start, slice.records)).collect()
    }

    /// Whether the slice starting at `slice_start_ms` has a file (on disk or loading).
    pub fn has_slice(&self, slice_start_ms: u64) -> bool {
        self.schedule.slices.contains_key(&slice_start_ms)
    }

    /// Log index of the queue's last purge (0 if none): scheduled messages sent before it are
    /// gone, even while their records are still in a slice file.
    pub fn purged_at_log_index(&self, queue: QueueId, tenant: &str) -> Option<u64> {
        self.get(queue, tenant).map(Queue::purged_at_log_index)
    }

    pub fn queue_config(&self, queue: QueueId, tenant: &str) -> Option<&QueueConfig> {
        self.get(queue, tenant).map(|q| &q.config)
    }

    /// Whether an `Expire` at `now_ms` would drop at least one message.
    pub fn has_expirable(&self, now_ms: u64) -> bool {
        let now_ms = now_ms.max(self.clock_ms);
        self.by_expiry.first().is_some_and(|&(expires_at_ms, _)| expires_at_ms <= now_ms)
    }

    /// Test access to a queue's internals.
    #[cfg(test)]
    pub(crate) fn queue_for_tests(&self, queue: QueueId) -> Option<&Queue> {
        self.queues.get(&queue)
    }

    fn get(&self, queue: QueueId, tenant: &str) -> Option<&Queue> {
        self.queues.get(&queue).filter(|q| q.tenant == tenant)
    }

    /// Runs `f` on the queue if it exists for `tenant`, then refreshes the
    /// shard indexes. `f` must validate before mutating, so that an error
    /// leaves the queue unchanged.
    fn with_queue<T>(
        &mut self,
        queue: QueueId,
        tenant: &str,
        f: impl FnOnce(&mut Queue) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let fenced = self.is_moving(queue);
        let q = self
            .queues
            .get_mut(&queue)
            // Another tenant's queue answers exactly like a missing one.
            .filter(|q| q.tenant == tenant)
            .ok_or(QueueError::QueueNotFound)?;
        if fenced {
            return Err(QueueError::QueueMoving);
        }
        let result = f(q);
        reindex(&mut self.by_expiry, &mut self.by_log_index, queue, q);
        result
    }

    /// A receive; with an attempt id (FIFO queues), a retry within the window answers the same
    /// messages and receipts when they are still in flight under them.
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &mut self,
        queue: QueueId,
        tenant: &str,
        max_messages: u32,
        visibility_timeout_ms: Option<u64>,
        attempt_id: Option<&str>,
        log_index: u64,
        now_ms: u64,
    ) -> Result<Response, QueueError> {
        let max = usize::try_from(max_messages).unwrap_or(usize::MAX);
        let (timeout_ms, retried, room) = self.with_queue(queue, tenant, |q| {
            // Validate before anything moves: an error must leave the state unchanged.
            if !(1..=RECEIVE_BATCH_MAX).contains(&max_messages) {
                return Err(QueueError::InvalidParameter(format!(
                    "max_messages must be between 1 and {RECEIVE_BATCH_MAX}"
                )));
            }
            let timeout_ms = visibility_timeout_ms.unwrap_or(q.config.visibility_timeout_ms);
            check_visibility_timeout(timeout_ms)?;
            if let Some(id) = attempt_id {
                validate_fifo_id("a receive request attempt id", id)?;
            }
            // Settling only lets time pass: expired messages go and due ones become visible, so
            // messages whose visibility ran out do not count toward the in-flight limit.
            q.settle(now_ms);
            let retried = attempt_id.and_then(|id| q.retry_receive(queue, id, now_ms, timeout_ms));
            Ok((timeout_ms, retried, IN_FLIGHT_MAX.saturating_sub(q.counts().in_flight)))
        })?;
        if let Some(deliveries) = retried {
            return Ok(Response::Received(deliveries));
        }
        // A receive near the in-flight limit takes only what still fits; at the limit it fails,
        // and then nothing but time has passed.
        if room == 0 {
            return Err(QueueError::InFlightLimit);
        }
        let max = max.min(usize::try_from(room).unwrap_or(usize::MAX));
        let exhausted_at = self.move_dead_letters(queue, tenant, max, log_index, now_ms);
        // The lease is the receive's log index, raised for a queue that came from another shard.
        let lease = self.lease_at(queue, log_index);
        self.with_queue(queue, tenant, |q| {
            let deliveries = q.receive(queue, lease, now_ms, max, timeout_ms, exhausted_at);
            if let Some(id) = attempt_id {
                q.record_receive_attempt(id, &deliveries, now_ms);
            }
            Ok(Response::Received(deliveries))
        })
    }

    fn send(
        &mut self,
        queue: QueueId,
        tenant: &str,
        messages: &[NewMessage],
        log_index: u64,
        now_ms: u64,
    ) -> Result<Response, QueueError> {
        let fenced = self.is_moving(queue);
        let Self { queues, schedule, by_expiry, by_log_index, .. } = self;
        let q = queues.get_mut(&queue).filter(|q| q.tenant == tenant).ok_or(QueueError::QueueNotFound)?;
        if fenced {
            return Err(QueueError::QueueMoving);
        }
        validate_send(messages, q.config.fifo.is_some(), now_ms)?;
        q.settle(now_ms);
        let goes_to_disk = |deliver_at_ms| schedule.goes_to_disk(deliver_at_ms, now_ms);
        let (sent, to_disk) = q.send(queue, log_index, now_ms, messages, goes_to_disk);
        reindex(by_expiry, by_log_index, queue, q);
        for scheduled in to_disk {
            schedule.append_message(scheduled);
        }
        Ok(Response::Sent(sent))
    }

    /// Cancels a scheduled message not due yet: a cancel record in its slice file while the
    /// slice is on disk, else out of the queue's wheel (or, while its slice is loading and it
    /// is not loaded yet, skipped when it comes). The state holds no index of the messages on
    /// disk: the storage node searches the slice file before proposing, so that an id never
    /// sent, already cancelled or purged is answered as not found.
    fn cancel_scheduled(
        &mut self,
        queue: QueueId,
        tenant: &str,
        message_id: Uuid,
        log_index: u64,
        now_ms: u64,
    ) -> Result<Response, QueueError> {
        let fenced = self.is_moving(queue);
        let q = self.queues.get_mut(&queue).filter(|q| q.tenant == tenant).ok_or(QueueError::QueueNotFound)?;
        if fenced {
            return Err(QueueError::QueueMoving);
        }
        let deliver_at_ms = deliver_at_of(&message_id).ok_or(QueueError::ScheduledMessageNotFound)?;
        q.settle(now_ms);
        let result = if deliver_at_ms <= now_ms {
            Err(QueueError::ScheduledMessageNotFound)
        } else if q.cancel_waiting(message_id, deliver_at_ms) {
            Ok(Response::ScheduledCancelled)
        } else if self.schedule.append_cancel(log_index, queue, message_id, deliver_at_ms) {
            q.cancel_on_disk();
            Ok(Response::ScheduledCancelled)
        } else if let Some(slice) = self.schedule.slices.get_mut(&slice_of(deliver_at_ms))
            && slice.loading
        {
            slice.cancels.insert((queue, message_id));
            q.cancel_on_disk();
            Ok(Response::ScheduledCancelled)
        } else {
            Err(QueueError::ScheduledMessageNotFound)
        };
        reindex(&mut self.by_expiry, &mut self.by_log_index, queue, q);
        result
    }

    fn start_scheduled_load(&mut self, slice_start_ms: u64, now_ms: u64) -> Result<Response, QueueError> {
        match self.schedule.next_load(now_ms) {
            Some((start, _)) if start == slice_start_ms => {}
            _ => return Err(QueueError::InvalidParameter("the slice is not the next one due for loading".to_owned())),
        }
        if let Some(slice) = self.schedule.slices.get_mut(&slice_start_ms) {
            slice.loading = true;
        }
        Ok(Response::ScheduledLoaded { count: 0 })
    }

    fn load_scheduled(
        &mut self,
        slice_start_ms: u64,
        from: u64,
        to: u64,
        messages: &[ScheduledMessage],
        now_ms: u64,
    ) -> Result<Response, QueueError> {
        let slice = self
            .schedule
            .slices
            .get_mut(&slice_start_ms)
            .filter(|s| s.loading)
            .ok_or_else(|| QueueError::InvalidParameter("the slice is not loading".to_owned()))?;
        if from != slice.loaded || to <= from || to > slice.records {
            return Err(QueueError::InvalidParameter("the load step does not follow the last one".to_owned()));
        }
        if messages.len() as u64 > to - from || messages.iter().any(|m| slice_of(m.deliver_at_ms) != slice_start_ms) {
            return Err(QueueError::InvalidParameter("the load step holds messages of another slice".to_owned()));
        }
        let mut count = 0;
        for &scheduled in messages {
            if slice.cancels.remove(&(scheduled.queue, scheduled.message_id)) {
                continue;
            }
            // A queue deleted since the send drops its messages.
            if let Some(q) = self.queues.get_mut(&scheduled.queue)
                && q.load_scheduled(scheduled)
            {
                q.settle(now_ms);
                reindex(&mut self.by_expiry, &mut self.by_log_index, scheduled.queue, q);
                count += 1;
            }
        }
        slice.loaded = to;
        if slice.loaded == slice.records {
            self.schedule.slices.remove(&slice_start_ms);
            self.schedule.writes.push(SliceWrite::Remove { slice_start_ms });
        }
        Ok(Response::ScheduledLoaded { count })
    }

    /// The running move tasks, to be stepped.
    pub fn running_move_tasks(&self) -> Vec<MoveTask> {
        self.move_tasks.values().filter(|t| t.status == MoveTaskStatus::Running).cloned().collect()
    }

    /// The move tasks of a source queue, newest first.
    pub fn move_tasks_of(&self, tenant: &str, source: QueueId) -> Vec<MoveTask> {
        self.move_tasks.values().rev().filter(|t| t.tenant == tenant && t.source == source).cloned().collect()
    }

    fn start_move_task(
        &mut self,
        task_id: MoveTaskId,
        tenant: &str,
        source: QueueId,
        destination: QueueId,
        max_per_second: u32,
        now_ms: u64,
    ) -> Result<Response, QueueError> {
        if !(1..=MOVE_PER_SECOND_MAX).contains(&max_per_second) {
            return Err(QueueError::InvalidParameter(format!(
                "max_per_second must be between 1 and {MOVE_PER_SECOND_MAX}"
            )));
        }
        if source == destination {
            return Err(QueueError::InvalidParameter("a move task needs two different queues".to_owned()));
        }
        // A destination on another shard is checked where it is, as its messages arrive (a
        // refusal sends them back and fails the task).
        let to = self.get(destination, tenant);
        let Some(from) = self.get(source, tenant) else { return Err(QueueError::QueueNotFound) };
        if to.is_none() && !self.hand_offs_open() {
            return Err(QueueError::InvalidParameter(
                "the destination queue is on another shard: moves between shards start once the cluster's \
                 upgrade completes (format generation 10)"
                    .to_owned(),
            ));
        }
        if self.is_moving(source) || self.is_moving(destination) {
            return Err(QueueError::QueueMoving);
        }
        if from.config.fifo.is_some() || to.is_some_and(|to| to.config.fifo.is_some()) {
            return Err(QueueError::InvalidParameter(
                "move tasks between FIFO queues are not supported yet".to_owned(),
            ));
        }
        if self.move_tasks.values().any(|t| t.source == source && t.status == MoveTaskStatus::Running) {
            return Err(QueueError::InvalidParameter("the source queue already has a running move task".to_owned()));
        }
        let counts = from.counts();
        let task = MoveTask {
            task_id,
            tenant: tenant.to_owned(),
            source,
            destination,
            max_per_second,
            moved: 0,
            to_move: counts.visible + counts.in_flight + counts.delayed,
            status: MoveTaskStatus::Running,
            started_ms: now_ms,
        };
        self.move_tasks.insert(task_id, task.clone());
        // Keep the newest finished tasks of this source only.
        let finished: Vec<MoveTaskId> = self
            .move_tasks
            .values()
            .filter(|t| t.source == source && t.status != MoveTaskStatus::Running)
            .map(|t| t.task_id)
            .collect();
        for id in finished.iter().take(finished.len().saturating_sub(MOVE_TASKS_KEPT_PER_SOURCE)) {
            self.move_tasks.remove(id);
        }
        Ok(Response::MoveTask(task))
    }

    fn cancel_move_task(&mut self, tenant: &str, task_id: MoveTaskId) -> Result<Response, QueueError> {
        let task = self
            .move_tasks
            .get_mut(&task_id)
            .filter(|t| t.tenant == tenant)
            .ok_or_else(|| QueueError::InvalidParameter("no such move task".to_owned()))?;
        if task.status != MoveTaskStatus::Running {
            return Err(QueueError::InvalidParameter("the move task is not running".to_owned()));
        }
        task.status = MoveTaskStatus::Cancelled;
        Ok(Response::MoveTask(task.clone()))
    }

    fn move_step(
        &mut self,
        task_id: MoveTaskId,
        max_messages: u32,
        log_index: u64,
        now_ms: u64,
    ) -> Result<Response, QueueError> {
        let task = self
            .move_tasks
            .get(&task_id)
            .cloned()
            .ok_or_else(|| QueueError::InvalidParameter("no such move task".to_owned()))?;
        // A step waits while either queue moves to another shard (the source cannot be fenced
        // while a task runs, but the destination can be adopted elsewhere meanwhile).
        if task.status != MoveTaskStatus::Running || self.is_moving(task.source) || self.is_moving(task.destination) {
            return Ok(Response::MoveTask(task));
        }
        let max = usize::try_from(max_messages.clamp(1, MOVE_STEP_MESSAGES_MAX)).unwrap_or(1);
        let here = self.get(task.destination, &task.tenant).is_some();
        let status = if self.get(task.source, &task.tenant).is_none() || (!here && !self.hand_offs_open()) {
            MoveTaskStatus::Failed("the source or the destination queue was deleted".to_owned())
        } else {
            // To another shard through the outbox, as far as it has room.
            let max = if here { max } else { max.min(self.hand_off_room()) };
            let moved = self.with_queue(task.source, &task.tenant, |q| {
                q.settle(now_ms);
                Ok(q.take_visible(max))
            })?;
            let count = moved.len() as u64;
            if here {
                let arrived = self.with_queue(task.destination, &task.tenant, |q| {
                    q.settle(now_ms);
                    Ok(moved
                        .into_iter()
                        .map(|message| (message.message_id(), q.adopt(message, now_ms)))
                        .collect::<Vec<_>>())
                })?;
                self.trace_moves(log_index, task.source, task.destination, &arrived, false);
            } else {
                let ids: Vec<Uuid> = moved.iter().map(|m| m.message_id()).collect();
                self.trace_left(log_index, task.source, task.destination, &ids, false);
                self.hand_off_for_task(&task.tenant, task.source, task.destination, task_id, moved);
            }
            if let Some(t) = self.move_tasks.get_mut(&task_id) {
                t.moved += count;
            }
            let source_empty = self.queues.get(&task.source).is_none_or(Queue::is_empty);
            if source_empty { MoveTaskStatus::Completed } else { MoveTaskStatus::Running }
        };
        let task = self
            .move_tasks
            .get_mut(&task_id)
            .ok_or_else(|| QueueError::InvalidParameter("no such move task".to_owned()))?;
        task.status = status;
        Ok(Response::MoveTask(task.clone()))
    }

    /// Moves the exhausted messages a receive of `max` on `queue` (settled at `now_ms`) would
    /// reach into its dead-letter queue, when it has one (other than itself): at once when it is
    /// on this shard, serving and of the same kind (a FIFO queue's dead letters keep their groups
    /// in a FIFO dead-letter queue); through the hand-off outbox when it is elsewhere or moving
    /// (once hand-offs are open; until then they stay). Answers the receive count from which
    /// messages are dead letters (not to be delivered), if any.
    fn move_dead_letters(
        &mut self,
        queue: QueueId,
        tenant: &str,
        max: usize,
        log_index: u64,
        now_ms: u64,
    ) -> Option<u32> {
        let source = self.get(queue, tenant)?;
        let redrive = source.config.redrive?;
        let (dead_letter, exhausted) = (redrive.dead_letter_queue, redrive.max_receive_count);
        if dead_letter == queue || self.dead_letter_gone(queue, dead_letter) {
            return None;
        }
        let same_kind = |q: &Queue| q.config.fifo.is_some() == source.config.fifo.is_some();
        let here = self.get(dead_letter, tenant).map(same_kind);
        let at_once = here == Some(true) && !self.is_moving(dead_letter) && !self.hands_off_to(dead_letter);
        if here == Some(false) || (!at_once && !self.hand_offs_open()) {
            return None;
        }
        if !at_once && self.hand_off_room() < DEAD_LETTER_MOVES_MAX {
            // The outbox is full: the exhausted messages wait in the queue, not delivered.
            return Some(exhausted);
        }
        // The caller settled the source at `now_ms`.
        let moved = self.with_queue(queue, tenant, |q| Ok(q.take_dead_letters(max, exhausted))).unwrap_or_default();
        if moved.is_empty() {
            return Some(exhausted);
        }
        let counts = Counts { moved_to_dead_letter: moved.len() as u64, ..Counts::default() };
        self.activity.record(log_index, queue, now_ms, counts);
        if !at_once {
            let ids: Vec<Uuid> = moved.iter().map(|m| m.message_id()).collect();
            self.trace_left(log_index, queue, dead_letter, &ids, true);
            self.hand_off_dead_letters(tenant, queue, dead_letter, moved);
            return Some(exhausted);
        }
        let arrived = self.with_queue(dead_letter, tenant, |dlq| {
            dlq.settle(now_ms);
            Ok(moved.into_iter().map(|message| (message.message_id(), dlq.adopt(message, now_ms))).collect::<Vec<_>>())
        });
        if let Ok(arrived) = arrived {
            self.trace_moves(log_index, queue, dead_letter, &arrived, true);
        }
        Some(exhausted)
    }

    fn create_queue(&mut self, queue: QueueId, tenant: &str, config: &QueueConfig) -> Result<Response, QueueError> {
        if let Some(existing) = self.queues.get(&queue) {
            return if existing.tenant == tenant {
                Ok(Response::QueueCreated)
            } else {
                Err(QueueError::QueueAlreadyExists)
            };
        }
        if tenant.is_empty() {
            return Err(QueueError::InvalidParameter("tenant must not be empty".to_owned()));
        }
        config.validate()?;
        self.queues.insert(queue, Queue::new(tenant.to_owned(), *config));
        Ok(Response::QueueCreated)
    }

    fn delete_queue(&mut self, queue: QueueId, tenant: &str) -> Result<Response, QueueError> {
        if self.get(queue, tenant).is_none() {
            return Err(QueueError::QueueNotFound);
        }
        if self.is_moving(queue) {
            return Err(QueueError::QueueMoving);
        }
        self.remove_queue(queue);
        Ok(Response::QueueDeleted)
    }

    /// Drops a queue's state, its entries in the shard indexes and what moves kept of it.
    fn remove_queue(&mut self, queue: QueueId) {
        if let Some(q) = self.queues.remove(&queue)
            && let Some(keys) = q.indexed
        {
            self.by_expiry.remove(&(keys.expires_at_ms, queue));
            self.by_log_index.remove(&(keys.log_index, queue));
        }
        self.forget_moves_of(queue);
        self.forget_hand_offs_of(queue);
    }

    /// Drops every message past retention at `now_ms`; returns how many.
    fn expire(&mut self, now_ms: u64) -> u64 {
        let mut count = 0;
        while let Some(&(expires_at_ms, queue)) = self.by_expiry.first() {
            if expires_at_ms > now_ms {
                break;
            }
            match self.queues.get_mut(&queue) {
                Some(q) => {
                    count += q.drop_expired(now_ms);
                    reindex(&mut self.by_expiry, &mut self.by_log_index, queue, q);
                }
                // Unreachable while the indexes are consistent; drop the stray
                // entry rather than loop on it.
                None => {
                    self.by_expiry.pop_first();
                }
            }
            // After dropping, the queue's oldest message expires after now (or
            // the queue is empty), so its entry moved past now. If it did not,
            // the indexes are inconsistent: stop rather than loop forever.
            if self.by_expiry.first() == Some(&(expires_at_ms, queue)) {
                break;
            }
        }
        count
    }
}

/// Moves the queue's entries in the shard indexes to match its oldest message.
fn reindex(
    by_expiry: &mut BTreeSet<(u64, QueueId)>,
    by_log_index: &mut BTreeSet<(u64, QueueId)>,
    queue: QueueId,
    q: &mut Queue,
) {
    let keys = q.index_keys();
    if keys == q.indexed {
        return;
    }
    if let Some(old) = q.indexed {
        by_expiry.remove(&(old.expires_at_ms, queue));
        by_log_index.remove(&(old.log_index, queue));
    }
    if let Some(new) = keys {
        by_expiry.insert((new.expires_at_ms, queue));
        by_log_index.insert((new.log_index, queue));
    }
    q.indexed = keys;
}

fn validate_fifo_id(what: &str, id: &str) -> Result<(), QueueError> {
    let valid = !id.is_empty()
        && id.chars().count() <= FIFO_ID_CHARS_MAX
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation());
    if !valid {
        return Err(QueueError::InvalidParameter(format!(
            "{what} must be 1-{FIFO_ID_CHARS_MAX} characters of letters, digits and punctuation"
        )));
    }
    Ok(())
}

fn validate_send(messages: &[NewMessage], fifo: bool, now_ms: u64) -> Result<(), QueueError> {
    if messages.is_empty() {
        return Err(QueueError::InvalidParameter("messages must not be empty".to_owned()));
    }
    if messages.len() > SEND_BATCH_MAX {
        return Err(QueueError::TooManyEntries);
    }
    for message in messages {
        if let Some(delay_ms) = message.delay_ms {
            check_delay(delay_ms)?;
        }
        if let Some(deliver_at_ms) = message.deliver_at_ms {
            if fifo {
                return Err(QueueError::InvalidParameter("a FIFO queue takes no deliver-at time".to_owned()));
            }
            if message.delay_ms.is_some() {
                return Err(QueueError::InvalidParameter(
                    "a message takes a delay or a deliver-at time, not both".to_owned(),
                ));
            }
            if deliver_at_ms > now_ms.saturating_add(DELIVER_AHEAD_MS_MAX) {
                return Err(QueueError::InvalidParameter(format!(
                    "deliver_at_ms may be at most {} days ahead",
                    DELIVER_AHEAD_MS_MAX / (24 * 3600 * 1000)
                )));
            }
            // Cancel by id finds the message through the time its id carries.
            if deliver_at_ms > now_ms && deliver_at_of(&message.message_id) != Some(deliver_at_ms) {
                return Err(QueueError::InvalidParameter(
                    "a scheduled message's id must carry its deliver-at time".to_owned(),
                ));
            }
        }
        if message.attributes.len() > MESSAGE_ATTRIBUTES_MAX {
            return Err(QueueError::InvalidParameter(format!(
                "a message may have at most {MESSAGE_ATTRIBUTES_MAX} attributes"
            )));
        }
        if message.attributes.keys().any(String::is_empty) {
            return Err(QueueError::InvalidParameter("attribute names must not be empty".to_owned()));
        }
        match (&message.fifo, fifo) {
            (Some(ids), true) => {
                validate_fifo_id("a message group id", &ids.group_id)?;
                validate_fifo_id("a deduplication id", &ids.deduplication_id)?;
                if message.delay_ms.is_some() {
                    return Err(QueueError::InvalidParameter(
                        "a FIFO queue takes no per-message delay (set the queue's delay instead)".to_owned(),
                    ));
                }
            }
            (None, true) => {
                return Err(QueueError::InvalidParameter(
                    "a FIFO queue needs a message group id and a deduplication id on every message".to_owned(),
                ));
            }
            (Some(_), false) => {
                return Err(QueueError::InvalidParameter(
                    "message group and deduplication ids are for FIFO queues only".to_owned(),
                ));
            }
            (None, false) => {}
        }
    }
    Ok(())
}

/// Decodes a receipt and checks that it could have been issued by this queue.
fn decode_for(q: &Queue, queue: QueueId, text: &str) -> Result<Receipt, QueueError> {
    match Receipt::decode(text) {
        Some(receipt) if receipt.queue == queue && q.seq_issued(receipt.seq) => Ok(receipt),
        _ => Err(QueueError::InvalidReceipt),
    }
}

/// One entry of a Delete; the queue is settled at `now_ms`.
fn delete_one(q: &mut Queue, queue: QueueId, text: &str, now_ms: u64) -> Result<(), QueueError> {
    let receipt = decode_for(q, queue, text)?;
    match q.check_lease(&receipt, now_ms) {
        // Already deleted or expired: deleting again succeeds, as in SQS.
        LeaseCheck::Gone => Ok(()),
        LeaseCheck::Stale => Err(QueueError::StaleReceipt),
        // The latest receipt deletes even after its visibility timeout ran out.
        LeaseCheck::Current { .. } => {
            q.delete(receipt.seq);
            Ok(())
        }
    }
}
