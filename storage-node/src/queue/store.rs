//! One queue's messages and their visibility bookkeeping.
//!
//! Every message is in `messages`, and in exactly one of `visible` (keyed by
//! seq) or `pending` (keyed by `(visible_at_ms, seq)`). `settle(now)` restores
//! "`visible` holds exactly the messages with `visible_at_ms <= now`" by
//! promoting due `pending` entries; between settles, `pending` may hold entries
//! that are already due. The shard clock never goes backwards, so a message in
//! `visible` never needs to move back on its own.
//!
//! Seqs are handed out in log order and `enqueued_ms` is the (monotonic) shard
//! clock when the message entered the queue (sent, moved in, or due after its
//! deliver-at time), so in seq order `enqueued_ms` never decreases: the messages
//! past retention are always a prefix of `messages`. The body's log index never
//! decreases with seq either, except for messages whose body may be older than
//! their place in the queue (moved in, or scheduled): `older_bodies` counts
//! those, so the queue's lowest log index is always known.
//!
//! Messages scheduled with a deliver-at time that are in memory wait in the
//! `wheel`, keyed by due time; they get a seq when due. Those still on disk
//! (see `schedule`) are only counted here (`on_disk`).
//!
//! Every collection is persistent (`imbl`, copy-on-write): a copy of a queue for a snapshot
//! shares them and takes constant time, and they serialize like `std`'s B-tree maps and sets.

use imbl::{OrdMap, OrdSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::receipt::Receipt;
use super::schedule::ScheduledMessage;
use super::types::{
    DEDUP_WINDOW_MS, Delivery, FifoIds, MessageRef, NewMessage, QueueConfig, QueueCounts, QueueId, SentMessage,
};

/// Seqs of received messages moved to another queue that a queue remembers, newest first (about
/// 40 bytes each): a receipt of one of them answers `StaleReceipt`.
pub(crate) const MOVED_AWAY_KEPT: usize = 10_000;

/// Most dead letters one receive moves; a later receive moves the rest. Bounds the work of one
/// apply when many exhausted messages sit at the head of a queue.
pub(crate) const DEAD_LETTER_MOVES_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    message_id: Uuid,
    /// Where the body is ([`MessageRef`], stored flat so the record stays 80 bytes).
    body_log_index: u64,
    body_slot: u16,
    /// When it was sent (reported to receivers).
    sent_ms: u64,
    /// When it entered this queue: retention counts from here.
    enqueued_ms: u64,
    visible_at_ms: u64,
    /// Meaningless while `receive_count == 0`.
    first_receive_ms: u64,
    /// Log index of the latest Receive; meaningless while `receive_count == 0`.
    lease: u64,
    receive_count: u32,
    /// Moved in from another queue or scheduled: its body may be older than the
    /// bodies of messages sent to this queue before it (counted in `older_bodies`).
    older_body: bool,
    /// What it counts in the queue's stored bytes ([`NewMessage::stored_bytes`]). Not part of
    /// the serde layout: shard states of format version 3 carry it after the state (see
    /// [`Queue::sizes`]); in older states it is unknown (0).
    #[serde(skip)]
    body_bytes: u32,
}

impl Message {
    /// A message entering a queue at `now_ms`, never received: sent now, moved in, or due.
    /// `older_body`: its body may be older than those already in the queue (moved in or
    /// scheduled), and the caller counts it in `older_bodies`.
    fn entering(
        message_id: Uuid,
        body: MessageRef,
        sent_ms: u64,
        now_ms: u64,
        visible_at_ms: u64,
        older_body: bool,
        body_bytes: u32,
    ) -> Self {
        Message {
            message_id,
            body_log_index: body.log_index,
            body_slot: body.slot,
            sent_ms,
            enqueued_ms: now_ms,
            visible_at_ms,
            first_receive_ms: 0,
            lease: 0,
            receive_count: 0,
            older_body,
            body_bytes,
        }
    }

    fn body_ref(&self) -> MessageRef {
        MessageRef { log_index: self.body_log_index, slot: self.body_slot }
    }

    /// Whether the receive of the entry at `log_index` leased it (leases are the log indexes
    /// of receives; several receives share one only within a
    /// [`Command::Calls`](super::types::Command::Calls) entry).
    fn leased_by(&self, log_index: u64) -> bool {
        self.receive_count > 0 && self.lease == log_index
    }

    fn expires_at_ms(&self, config: &QueueConfig) -> u64 {
        self.enqueued_ms.saturating_add(config.retention_ms)
    }

    fn is_expired(&self, config: &QueueConfig, now_ms: u64) -> bool {
        self.expires_at_ms(config) <= now_ms
    }
}

/// The keys under which a queue appears in the shard-wide indexes; derived
/// from its first (oldest) message, stored so they can be removed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexKeys {
    pub(crate) expires_at_ms: u64,
    pub(crate) log_index: u64,
}

/// What a queue's messages count in its stored bytes, in the order of its messages (by seq) and
/// of its wheel: persisted after the shard state's serde layout (format version 3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueSizes {
    messages: Vec<u32>,
    wheel: Vec<u32>,
    on_disk_bytes: u64,
}

/// A message taken out of one queue to be adopted by another, with its FIFO ids.
pub(crate) struct Moved {
    message: Message,
    fifo: Option<FifoIds>,
}

impl Moved {
    pub(crate) fn message_id(&self) -> Uuid {
        self.message.message_id
    }
}

/// A message on its way to another shard's queue: what that queue keeps of it. A move resets
/// what a queue adds to a message (its receive count, lease and times), so this is all of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handed {
    pub(crate) message_id: Uuid,
    /// Where its body is, on the shard it is handed from.
    pub(crate) body: MessageRef,
    pub(crate) sent_ms: u64,
    pub(crate) body_bytes: u32,
    pub(crate) fifo: Option<FifoIds>,
}

impl From<Moved> for Handed {
    fn from(moved: Moved) -> Self {
        let Moved { message, fifo } = moved;
        Handed {
            message_id: message.message_id,
            body: message.body_ref(),
            sent_ms: message.sent_ms,
            body_bytes: message.body_bytes,
            fifo,
        }
    }
}

impl Handed {
    /// The message to adopt (on the shard whose log holds `body`).
    pub(crate) fn into_moved(self) -> Moved {
        let message = Message::entering(self.message_id, self.body, self.sent_ms, 0, 0, true, self.body_bytes);
        Moved { message, fifo: self.fifo }
    }
}

/// What a receipt currently designates, checked without changing anything.
pub(crate) enum LeaseCheck {
    /// The message was deleted or is past retention.
    Gone,
    /// The message was never received or was received again since.
    Stale,
    /// The receipt's lease is the message's current one.
    Current { in_flight: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    pub(crate) tenant: String,
    pub(crate) config: QueueConfig,
    next_seq: u64,
    messages: OrdMap<u64, Message>,
    /// Seqs of messages with `visible_at_ms <= ` the last settle time.
    visible: OrdSet<u64>,
    /// `(visible_at_ms, seq)` of every message not in `visible`.
    pending: OrdSet<(u64, u64)>,
    /// How many `pending` entries were never received (SQS "delayed").
    delayed: u64,
    /// Keys of this queue in the shard indexes; `None` iff not indexed.
    pub(crate) indexed: Option<IndexKeys>,
    /// Body log index -> number of messages with `older_body` and wheel entries referencing it.
    older_bodies: OrdMap<u64, u32>,
    /// Scheduled messages in memory until due: `(deliver_at_ms, message id)` -> the message.
    wheel: OrdMap<(u64, Uuid), ScheduledMessage>,
    /// Scheduled messages of this queue still in slice files.
    on_disk: u64,
    /// What the scheduled messages still in slice files count in `stored_bytes`, together (the
    /// slice files do not hold sizes: one of them leaving releases their mean). Not in the
    /// serde layout, like `Message::body_bytes`.
    #[serde(skip)]
    on_disk_bytes: u64,
    /// Bytes of the messages this queue holds, scheduled ones included: the sum of their
    /// `body_bytes` and `on_disk_bytes`, kept as they come and go (rebuilt by [`Queue::sizes`]).
    #[serde(skip)]
    stored_bytes: u64,
    /// Log index of the last purge: scheduled messages sent before it are dropped when loaded.
    purged_at_log_index: u64,
    /// FIFO bookkeeping; `None` for standard queues (boxed: idle standard queues stay small).
    fifo: Option<Box<FifoState>>,
    /// Seqs of messages that left for another queue (a dead-letter move, a move task) after
    /// being received, the newest [`MOVED_AWAY_KEPT`]: a receipt naming one is stale rather
    /// than a message already deleted. Not in the serde layout: shard states of format version
    /// 4 carry it after the layout (older ones read as none remembered).
    #[serde(skip)]
    moved_away: OrdSet<u64>,
}

/// FIFO queues: each stored message's ids, which groups are locked, and the deduplication window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FifoState {
    /// seq -> the message's group and deduplication ids, for every stored message.
    ids: OrdMap<u64, FifoIds>,
    /// group -> messages of the group in flight (no entry when none): a group with an entry is
    /// locked.
    in_flight: OrdMap<String, u32>,
    /// deduplication key -> the first message sent with it, while its window lasts.
    dedup: OrdMap<String, Deduplicated>,
    /// `(window end, deduplication key)`, to drop ended windows in order.
    dedup_ends: OrdSet<(u64, String)>,
    /// Receive attempt id -> what that receive delivered, while its window lasts.
    attempts: OrdMap<String, ReceiveAttempt>,
    /// `(window end, attempt id)`.
    attempt_ends: OrdSet<(u64, String)>,
    /// group -> the seqs of its visible messages.
    visible_by_group: OrdMap<String, OrdSet<u64>>,
    /// `(lowest visible seq, group)` of every unlocked group with a visible message: where a
    /// receive looks, without scanning messages of locked groups.
    ready: OrdSet<(u64, String)>,
}

/// The messages one receive with an attempt id delivered: `(seq, lease)` of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ReceiveAttempt {
    delivered: Vec<(u64, u64)>,
    window_ends_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Deduplicated {
    message_id: Uuid,
    seq: u64,
    window_ends_ms: u64,
}

impl FifoState {
    fn group_of(&self, seq: u64) -> Option<String> {
        self.ids.get(&seq).map(|ids| ids.group_id.clone())
    }

    fn head(&self, group: &str) -> Option<u64> {
        self.visible_by_group.get(group).and_then(|seqs| seqs.get_min().copied())
    }

    /// Re-files `group` in `ready` after its head or its lock changed (`old_head`: its head
    /// before the change).
    fn refile(&mut self, group: String, old_head: Option<u64>) {
        if let Some(head) = old_head {
            self.ready.remove(&(head, group.clone()));
        }
        if !self.in_flight.contains_key(&group)
            && let Some(head) = self.head(&group)
        {
            self.ready.insert((head, group));
        }
    }

    fn show(&mut self, seq: u64) {
        let Some(group) = self.group_of(seq) else { return };
        let old_head = self.head(&group);
        self.visible_by_group.entry(group.clone()).or_default().insert(seq);
        self.refile(group, old_head);
    }

    fn hide(&mut self, seq: u64) {
        let Some(group) = self.group_of(seq) else { return };
        let old_head = self.head(&group);
        if let Some(seqs) = self.visible_by_group.get_mut(&group) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.visible_by_group.remove(&group);
            }
        }
        self.refile(group, old_head);
    }

    fn lock(&mut self, seq: u64) {
        let Some(group) = self.group_of(seq) else { return };
        *self.in_flight.entry(group.clone()).or_insert(0) += 1;
        let head = self.head(&group);
        self.refile(group, head);
    }

    fn unlock(&mut self, seq: u64) {
        let Some(group) = self.group_of(seq) else { return };
        if let Some(count) = self.in_flight.get_mut(&group) {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(&group);
            }
        }
        let head = self.head(&group);
        self.refile(group, head);
    }

    /// Visible messages of unlocked groups, group by group (by lowest seq), each group in seq
    /// order, each with whether it blocks its group. A group stops at its first message that
    /// may not be delivered now, so that nothing behind it in its group overtakes it: one
    /// received `exhausted_at` times or more (a dead letter waiting to move), or one leased by
    /// the entry at `log_index` already (see [`Message::leased_by`]).
    fn open_visible(
        &self,
        messages: &OrdMap<u64, Message>,
        exhausted_at: u32,
        log_index: u64,
    ) -> impl Iterator<Item = (u64, bool)> {
        self.ready.iter().flat_map(move |(_, group)| {
            let mut blocked = false;
            self.visible_by_group.get(group).into_iter().flatten().map_while(move |&seq| {
                if blocked {
                    return None;
                }
                let held = messages.get(&seq).is_none_or(|m| m.receive_count >= exhausted_at || m.leased_by(log_index));
                blocked = held;
                Some((seq, held))
            })
        })
    }

    fn end_windows(&mut self, now_ms: u64) {
        while let Some((ends_ms, key)) = self.dedup_ends.get_min().cloned() {
            if ends_ms > now_ms {
                break;
            }
            self.dedup_ends.remove_min();
            self.dedup.remove(&key);
        }
        while let Some((ends_ms, id)) = self.attempt_ends.get_min().cloned() {
            if ends_ms > now_ms {
                break;
            }
            self.attempt_ends.remove_min();
            self.attempts.remove(&id);
        }
    }
}

impl Queue {
    pub(crate) fn new(tenant: String, config: QueueConfig) -> Self {
        Self {
            tenant,
            config,
            next_seq: 0,
            messages: OrdMap::new(),
            visible: OrdSet::new(),
            pending: OrdSet::new(),
            delayed: 0,
            indexed: None,
            older_bodies: OrdMap::new(),
            wheel: OrdMap::new(),
            on_disk: 0,
            on_disk_bytes: 0,
            stored_bytes: 0,
            purged_at_log_index: 0,
            fifo: config.fifo.map(|_| Box::default()),
            moved_away: OrdSet::new(),
        }
    }

    /// The index keys this queue should have now: `None` when it holds no message in memory (a
    /// queue with only scheduled messages in the wheel is indexed for their bodies, and never
    /// expires).
    pub(crate) fn index_keys(&self) -> Option<IndexKeys> {
        let first = self.messages.get_min().map(|(_, m)| m);
        let oldest_older = self.older_bodies.get_min().map(|&(index, _)| index);
        if first.is_none() && oldest_older.is_none() {
            return None;
        }
        Some(IndexKeys {
            expires_at_ms: first.map_or(u64::MAX, |m| m.expires_at_ms(&self.config)),
            log_index: first.map_or(u64::MAX, |m| m.body_log_index).min(oldest_older.unwrap_or(u64::MAX)),
        })
    }

    fn count_older_body(&mut self, log_index: u64) {
        *self.older_bodies.entry(log_index).or_insert(0) += 1;
    }

    fn release_older_body(&mut self, log_index: u64) {
        if let Some(count) = self.older_bodies.get_mut(&log_index) {
            *count -= 1;
            if *count == 0 {
                self.older_bodies.remove(&log_index);
            }
        }
    }

    fn show(&mut self, seq: u64) {
        self.visible.insert(seq);
        if let Some(fifo) = &mut self.fifo {
            fifo.show(seq);
        }
    }

    fn hide(&mut self, seq: u64) -> bool {
        let was_visible = self.visible.remove(&seq).is_some();
        if was_visible && let Some(fifo) = &mut self.fifo {
            fifo.hide(seq);
        }
        was_visible
    }

    /// Puts a message (already in `messages`) into `visible` or `pending`; a
    /// received message going to `pending` is in flight and locks its FIFO group.
    fn place(&mut self, seq: u64, visible_at_ms: u64, never_received: bool, now_ms: u64) {
        if visible_at_ms <= now_ms {
            self.show(seq);
        } else {
            self.pending.insert((visible_at_ms, seq));
            if never_received {
                self.delayed += 1;
            } else if let Some(fifo) = &mut self.fifo {
                fifo.lock(seq);
            }
        }
    }

    /// Takes a message out of `visible` or `pending` (it stays in `messages`).
    fn unplace(&mut self, seq: u64, message: &Message) {
        if !self.hide(seq) && self.pending.remove(&(message.visible_at_ms, seq)).is_some() {
            if message.receive_count == 0 {
                self.delayed = self.delayed.saturating_sub(1);
            } else if let Some(fifo) = &mut self.fifo {
                fifo.unlock(seq);
            }
        }
    }

    /// Takes a message out of `messages` and its place, to be put back changed
    /// (receive, visibility change). Its body stays counted.
    fn detach(&mut self, seq: u64) -> Option<Message> {
        let message = self.messages.remove(&seq)?;
        self.unplace(seq, &message);
        Some(message)
    }

    /// Removes a message for good (delete, expiry, move to a dead-letter queue).
    fn remove(&mut self, seq: u64) -> Option<Message> {
        let message = self.detach(seq)?;
        if let Some(fifo) = &mut self.fifo {
            fifo.ids.remove(&seq);
        }
        if message.older_body {
            self.release_older_body(message.body_log_index);
        }
        self.stored_bytes = self.stored_bytes.saturating_sub(u64::from(message.body_bytes));
        Some(message)
    }

    /// Takes out the visible messages, lowest seq first, that were received
    /// `max_receive_count` times or more, looking no further than where a
    /// receive of `max_messages` would stop and moving at most
    /// [`DEAD_LETTER_MOVES_MAX`] (the next receive goes on). `now_ms` must be
    /// settled.
    pub(crate) fn take_dead_letters(&mut self, max_messages: usize, max_receive_count: u32) -> Vec<Moved> {
        let mut exhausted = Vec::new();
        let mut deliverable = 0;
        let candidates: Box<dyn Iterator<Item = (u64, bool)> + '_> = match &self.fifo {
            // FIFO: only the visible messages of open groups, group by group in seq order.
            Some(fifo) => Box::new(
                fifo.ready
                    .iter()
                    .flat_map(|(_, group)| fifo.visible_by_group.get(group).into_iter().flatten())
                    .map(|&seq| (seq, self.messages.get(&seq).is_some_and(|m| m.receive_count >= max_receive_count))),
            ),
            None => Box::new(
                self.visible
                    .iter()
                    .map(|&seq| (seq, self.messages.get(&seq).is_some_and(|m| m.receive_count >= max_receive_count))),
            ),
        };
        for (seq, is_exhausted) in candidates {
            if deliverable == max_messages || exhausted.len() == DEAD_LETTER_MOVES_MAX {
                break;
            }
            if is_exhausted {
                exhausted.push(seq);
            } else {
                deliverable += 1;
            }
        }
        exhausted.into_iter().filter_map(|seq| self.take(seq)).collect()
    }

    /// Removes a message to move it to another queue, with its FIFO ids.
    fn take(&mut self, seq: u64) -> Option<Moved> {
        let fifo = self.fifo.as_ref().and_then(|f| f.ids.get(&seq).cloned());
        let message = self.remove(seq)?;
        if message.receive_count > 0 {
            self.moved_away.insert(seq);
            if self.moved_away.len() > MOVED_AWAY_KEPT {
                self.moved_away.remove_min();
            }
        }
        Some(Moved { message, fifo })
    }

    /// The seqs of received messages moved away that this queue remembers, for the shard
    /// state's format version 4, which carries them after the serde layout.
    pub(crate) fn moved_away(&self) -> &OrdSet<u64> {
        &self.moved_away
    }

    /// Puts back what [`Queue::moved_away`] gave, after a decode of the serde layout.
    pub(crate) fn set_moved_away(&mut self, seqs: OrdSet<u64>) {
        self.moved_away = seqs;
    }

    /// Takes out up to `max` visible messages, lowest seq first (for a move task).
    /// `now_ms` must be settled.
    pub(crate) fn take_visible(&mut self, max: usize) -> Vec<Moved> {
        let seqs: Vec<u64> = self.visible.iter().take(max).copied().collect();
        seqs.into_iter().filter_map(|seq| self.take(seq)).collect()
    }

    /// Test check: whether this queue and `other` (a copy of it) share their messages and
    /// visibility indexes instead of holding copies of them.
    #[cfg(test)]
    pub(crate) fn shares_messages_with(&self, other: &Queue) -> bool {
        self.messages.ptr_eq(&other.messages) && self.visible.ptr_eq(&other.visible)
    }

    /// Test check: the FIFO ready index is what a scan of the messages gives.
    #[cfg(test)]
    pub(crate) fn fifo_index_is_consistent(&self) -> bool {
        let Some(fifo) = &self.fifo else { return true };
        let mut by_group: OrdMap<String, OrdSet<u64>> = OrdMap::new();
        for &seq in &self.visible {
            if let Some(ids) = fifo.ids.get(&seq) {
                by_group.entry(ids.group_id.clone()).or_default().insert(seq);
            }
        }
        let mut in_flight: OrdMap<String, u32> = OrdMap::new();
        for &(_, seq) in &self.pending {
            if self.messages.get(&seq).is_some_and(|m| m.receive_count > 0)
                && let Some(ids) = fifo.ids.get(&seq)
            {
                *in_flight.entry(ids.group_id.clone()).or_insert(0) += 1;
            }
        }
        let ready: OrdSet<(u64, String)> = by_group
            .iter()
            .filter(|(group, _)| !in_flight.contains_key(*group))
            .filter_map(|(group, seqs)| seqs.get_min().map(|&head| (head, group.clone())))
            .collect();
        by_group == fifo.visible_by_group && in_flight == fifo.in_flight && ready == fifo.ready
    }

    /// Whether the queue holds no message at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Adds a dead letter moved from another queue: visible now, not received
    /// yet, retention counted from now; answers its seq here. `now_ms` must be settled.
    pub(crate) fn adopt(&mut self, moved: Moved, now_ms: u64) -> u64 {
        let Moved { message: moved, fifo } = moved;
        let seq = self.take_seq();
        self.count_older_body(moved.body_log_index);
        let message = Message::entering(
            moved.message_id,
            moved.body_ref(),
            moved.sent_ms,
            now_ms,
            now_ms,
            true,
            moved.body_bytes,
        );
        self.stored_bytes = self.stored_bytes.saturating_add(u64::from(message.body_bytes));
        self.messages.insert(seq, message);
        // A FIFO message keeps its group in a FIFO queue (its deduplication id is not registered
        // again: the window belongs to the queue it was sent to).
        if let (Some(state), Some(ids)) = (&mut self.fifo, fifo) {
            state.ids.insert(seq, ids);
        }
        self.place(seq, now_ms, false, now_ms);
        seq
    }

    /// The id of message `seq` and when it is next visible, while the queue holds it.
    pub(crate) fn message_at(&self, seq: u64) -> Option<(Uuid, u64)> {
        self.messages.get(&seq).map(|m| (m.message_id, m.visible_at_ms))
    }

    /// When message `message_id` is next visible, if the queue holds it, found by its id: a
    /// scan, for the trace of a scheduled message (whose seq is given only when it is due). One
    /// still in a slice file is not found.
    pub(crate) fn locate(&self, message_id: Uuid) -> Option<u64> {
        let queued = self.messages.values().find(|m| m.message_id == message_id).map(|m| m.visible_at_ms);
        queued.or_else(|| self.wheel.keys().find(|(_, id)| *id == message_id).map(|(deliver_at_ms, _)| *deliver_at_ms))
    }

    /// Drops the messages past retention at `now_ms`; returns how many.
    pub(crate) fn drop_expired(&mut self, now_ms: u64) -> u64 {
        let mut dropped = 0;
        // Expired messages form a prefix in seq order (see module doc).
        while let Some(seq) =
            self.messages.get_min().filter(|(_, first)| first.is_expired(&self.config, now_ms)).map(|&(seq, _)| seq)
        {
            self.remove(seq);
            dropped += 1;
        }
        dropped
    }

    /// Brings the queue up to `now_ms`: drops expired messages, enqueues the
    /// scheduled messages now due, and promotes due ones. Every successful
    /// command on the queue starts with this.
    pub(crate) fn settle(&mut self, now_ms: u64) {
        self.drop_expired(now_ms);
        while let Some(key) =
            self.wheel.get_min().map(|&(key, _)| key).filter(|&(deliver_at_ms, _)| deliver_at_ms <= now_ms)
        {
            let Some(due) = self.wheel.remove(&key) else { break };
            let seq = self.take_seq();
            // Its body is still counted in `older_bodies` and `stored_bytes`, from when it entered
            // the wheel.
            let message =
                Message::entering(due.message_id, due.body_ref, due.sent_ms, now_ms, now_ms, true, due.body_bytes);
            self.messages.insert(seq, message);
            self.place(seq, now_ms, true, now_ms);
        }
        while let Some(&(visible_at_ms, seq)) = self.pending.get_min() {
            if visible_at_ms > now_ms {
                break;
            }
            self.pending.remove_min();
            self.show(seq);
            if self.messages.get(&seq).is_some_and(|m| m.receive_count == 0) {
                self.delayed = self.delayed.saturating_sub(1);
            } else if let Some(fifo) = &mut self.fifo {
                // Its visibility timeout ran out: no longer in flight.
                fifo.unlock(seq);
            }
        }
        if let Some(fifo) = &mut self.fifo {
            fifo.end_windows(now_ms);
        }
    }

    /// Appends validated messages. A message with a deliver-at time after `now_ms` waits in the
    /// wheel, or is answered for the caller to put on disk when `goes_to_disk(deliver_at_ms)`;
    /// either way its seq is 0 until it is due. `now_ms` must be settled.
    pub(crate) fn send(
        &mut self,
        queue: QueueId,
        log_index: u64,
        now_ms: u64,
        messages: &[NewMessage],
        goes_to_disk: impl Fn(u64) -> bool,
    ) -> (Vec<SentMessage>, Vec<ScheduledMessage>) {
        let mut sent = Vec::with_capacity(messages.len());
        let mut to_disk = Vec::new();
        for (slot, new) in messages.iter().enumerate() {
            // Batches are validated to at most SEND_BATCH_MAX entries.
            let body = MessageRef { log_index, slot: u16::try_from(slot).unwrap_or(u16::MAX) };
            let body_bytes = new.stored_bytes();
            if let Some(deliver_at_ms) = new.deliver_at_ms.filter(|&at| at > now_ms) {
                let scheduled = ScheduledMessage {
                    queue,
                    message_id: new.message_id,
                    body_ref: body,
                    deliver_at_ms,
                    sent_ms: now_ms,
                    body_bytes,
                };
                if goes_to_disk(deliver_at_ms) {
                    self.on_disk += 1;
                    self.on_disk_bytes = self.on_disk_bytes.saturating_add(u64::from(body_bytes));
                    self.stored_bytes = self.stored_bytes.saturating_add(u64::from(body_bytes));
                    to_disk.push(scheduled);
                } else {
                    self.wait(scheduled);
                }
                sent.push(SentMessage { message_id: new.message_id, seq: 0 });
                continue;
            }
            // FIFO: a deduplication id seen within the window answers the first message.
            let dedup_key = match (&self.fifo, &new.fifo, self.config.fifo) {
                (Some(fifo), Some(ids), Some(config)) => {
                    let key = if config.deduplication_per_group {
                        format!("{}\u{0}{}", ids.group_id, ids.deduplication_id)
                    } else {
                        ids.deduplication_id.clone()
                    };
                    if let Some(first) = fifo.dedup.get(&key) {
                        sent.push(SentMessage { message_id: first.message_id, seq: first.seq });
                        continue;
                    }
                    Some(key)
                }
                _ => None,
            };
            let seq = self.take_seq();
            let delay_ms = new.delay_ms.unwrap_or(self.config.delay_ms);
            let visible_at_ms = now_ms.saturating_add(delay_ms);
            let message = Message::entering(new.message_id, body, now_ms, now_ms, visible_at_ms, false, body_bytes);
            self.stored_bytes = self.stored_bytes.saturating_add(u64::from(body_bytes));
            self.messages.insert(seq, message);
            if let (Some(fifo), Some(ids)) = (&mut self.fifo, &new.fifo) {
                fifo.ids.insert(seq, ids.clone());
                if let Some(key) = dedup_key {
                    let window_ends_ms = now_ms.saturating_add(DEDUP_WINDOW_MS);
                    fifo.dedup_ends.insert((window_ends_ms, key.clone()));
                    fifo.dedup.insert(key, Deduplicated { message_id: new.message_id, seq, window_ends_ms });
                }
            }
            self.place(seq, visible_at_ms, true, now_ms);
            sent.push(SentMessage { message_id: new.message_id, seq });
        }
        (sent, to_disk)
    }

    /// The next seq, in the order messages enter the queue. (2^64 per queue cannot happen;
    /// saturating keeps it panic-free.)
    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    /// Puts a scheduled message in the wheel until due (the next settle at or after its time
    /// enqueues it).
    fn wait(&mut self, scheduled: ScheduledMessage) {
        self.count_older_body(scheduled.body_ref.log_index);
        self.stored_bytes = self.stored_bytes.saturating_add(u64::from(scheduled.body_bytes));
        self.wheel.insert((scheduled.deliver_at_ms, scheduled.message_id), scheduled);
    }

    /// Takes a scheduled message loaded from its slice file: into the wheel, unless a purge since
    /// its send dropped it (then false). Settle afterwards (it may be due already).
    pub(crate) fn load_scheduled(&mut self, scheduled: ScheduledMessage) -> bool {
        if scheduled.body_ref.log_index < self.purged_at_log_index {
            return false;
        }
        let body_bytes = self.leave_disk();
        self.wait(ScheduledMessage { body_bytes, ..scheduled });
        true
    }

    /// One scheduled message leaves the slice files: what it counted in `stored_bytes` (the
    /// mean of those on disk, all that is left for the last one) is taken off, and returned.
    fn leave_disk(&mut self) -> u32 {
        let bytes = if self.on_disk <= 1 { self.on_disk_bytes } else { self.on_disk_bytes / self.on_disk };
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.on_disk = self.on_disk.saturating_sub(1);
        self.on_disk_bytes = self.on_disk_bytes.saturating_sub(u64::from(bytes));
        self.stored_bytes = self.stored_bytes.saturating_sub(u64::from(bytes));
        bytes
    }

    /// Cancels a scheduled message waiting in the wheel; false if it is not there.
    pub(crate) fn cancel_waiting(&mut self, message_id: Uuid, deliver_at_ms: u64) -> bool {
        match self.wheel.remove(&(deliver_at_ms, message_id)) {
            Some(scheduled) => {
                self.release_older_body(scheduled.body_ref.log_index);
                self.stored_bytes = self.stored_bytes.saturating_sub(u64::from(scheduled.body_bytes));
                true
            }
            None => false,
        }
    }

    /// Log index of the last purge: scheduled messages sent before it are gone.
    pub(crate) fn purged_at_log_index(&self) -> u64 {
        self.purged_at_log_index
    }

    /// A scheduled message still on disk was cancelled.
    pub(crate) fn cancel_on_disk(&mut self) {
        self.leave_disk();
    }

    /// Leases up to `max_messages` visible messages, lowest seq first, passing
    /// over those received `exhausted_at` times or more (dead letters waiting
    /// for a later receive to move them) and those an earlier call of the same
    /// entry leased (visible again at once: a receive with a visibility timeout
    /// of 0). `now_ms` must be settled.
    pub(crate) fn receive(
        &mut self,
        queue: QueueId,
        log_index: u64,
        now_ms: u64,
        max_messages: usize,
        visibility_timeout_ms: u64,
        exhausted_at: Option<u32>,
    ) -> Vec<Delivery> {
        let limit = exhausted_at.unwrap_or(u32::MAX);
        let seqs: Vec<u64> = match &self.fifo {
            // FIFO: only groups unlocked before this receive; one group may give several
            // messages, in seq order. Answered in seq order.
            Some(fifo) => {
                let mut seqs: Vec<u64> = fifo
                    .open_visible(&self.messages, limit, log_index)
                    .filter(|&(_, held)| !held)
                    .map(|(seq, _)| seq)
                    .take(max_messages)
                    .collect();
                seqs.sort_unstable();
                seqs
            }
            None => self
                .visible
                .iter()
                .filter(|seq| {
                    self.messages.get(*seq).is_some_and(|m| m.receive_count < limit && !m.leased_by(log_index))
                })
                .take(max_messages)
                .copied()
                .collect(),
        };
        let mut deliveries = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let Some(mut message) = self.detach(seq) else {
                continue;
            };
            if message.receive_count == 0 {
                message.first_receive_ms = now_ms;
            }
            message.receive_count = message.receive_count.saturating_add(1);
            message.lease = log_index;
            message.visible_at_ms = now_ms.saturating_add(visibility_timeout_ms);
            deliveries.push(Delivery {
                message_id: message.message_id,
                seq,
                body_ref: message.body_ref(),
                receipt: Receipt { queue, seq, lease: log_index }.encode(),
                receive_count: message.receive_count,
                sent_ms: message.sent_ms,
                first_receive_ms: message.first_receive_ms,
                fifo: self.fifo.as_ref().and_then(|fifo| fifo.ids.get(&seq).cloned()),
            });
            let visible_at_ms = message.visible_at_ms;
            self.messages.insert(seq, message);
            self.place(seq, visible_at_ms, false, now_ms);
        }
        deliveries
    }

    /// A retried receive (FIFO, same attempt id within the window): the messages of the first
    /// receive still in flight under its leases, with their visibility timeout restarted and
    /// the same receipts. `None` when the attempt id is unknown, when none of its messages is
    /// in flight under it any more (the attempt is then forgotten), or for a standard queue.
    /// `now_ms` must be settled.
    pub(crate) fn retry_receive(
        &mut self,
        queue: QueueId,
        attempt_id: &str,
        now_ms: u64,
        visibility_timeout_ms: u64,
    ) -> Option<Vec<Delivery>> {
        let attempt = self.fifo.as_ref()?.attempts.get(attempt_id)?.clone();
        let still_any = attempt
            .delivered
            .iter()
            .any(|&(seq, lease)| self.messages.get(&seq).is_some_and(|m| m.lease == lease && m.visible_at_ms > now_ms));
        if !still_any {
            // Nothing of the first receive is in flight under it any more: forget the attempt, and
            // this receive is a new one.
            if let Some(fifo) = &mut self.fifo {
                fifo.attempts.remove(attempt_id);
                fifo.attempt_ends.remove(&(attempt.window_ends_ms, attempt_id.to_owned()));
            }
            return None;
        }
        let mut deliveries = Vec::new();
        for (seq, lease) in attempt.delivered {
            let still_leased = self.messages.get(&seq).is_some_and(|m| m.lease == lease && m.visible_at_ms > now_ms);
            if !still_leased {
                continue;
            }
            self.set_visible_at(seq, now_ms.saturating_add(visibility_timeout_ms), now_ms);
            let Some(message) = self.messages.get(&seq) else { continue };
            deliveries.push(Delivery {
                message_id: message.message_id,
                seq,
                body_ref: message.body_ref(),
                receipt: Receipt { queue, seq, lease }.encode(),
                receive_count: message.receive_count,
                sent_ms: message.sent_ms,
                first_receive_ms: message.first_receive_ms,
                fifo: self.fifo.as_ref().and_then(|fifo| fifo.ids.get(&seq).cloned()),
            });
        }
        Some(deliveries)
    }

    /// Remembers what a receive with an attempt id delivered (FIFO queues; nothing when empty).
    pub(crate) fn record_receive_attempt(&mut self, attempt_id: &str, deliveries: &[Delivery], now_ms: u64) {
        let Some(fifo) = &mut self.fifo else { return };
        if deliveries.is_empty() {
            return;
        }
        let lease = |d: &Delivery| Receipt::decode(&d.receipt).map(|r| (d.seq, r.lease));
        let delivered = deliveries.iter().filter_map(lease).collect();
        let ends_ms = now_ms.saturating_add(DEDUP_WINDOW_MS);
        fifo.attempt_ends.insert((ends_ms, attempt_id.to_owned()));
        fifo.attempts.insert(attempt_id.to_owned(), ReceiveAttempt { delivered, window_ends_ms: ends_ms });
    }

    /// Whether `seq` was ever handed out; receipts naming a later seq are forged.
    pub(crate) fn seq_issued(&self, seq: u64) -> bool {
        seq < self.next_seq
    }

    /// What the receipt designates at `now_ms`, without changing anything
    /// (so callers can reject a command before mutating).
    pub(crate) fn check_lease(&self, receipt: &Receipt, now_ms: u64) -> LeaseCheck {
        match self.messages.get(&receipt.seq) {
            None if self.moved_away.contains(&receipt.seq) => LeaseCheck::Stale,
            None => LeaseCheck::Gone,
            Some(m) if m.is_expired(&self.config, now_ms) => LeaseCheck::Gone,
            Some(m) if m.receive_count == 0 || m.lease != receipt.lease => LeaseCheck::Stale,
            Some(m) => LeaseCheck::Current { in_flight: m.visible_at_ms > now_ms },
        }
    }

    /// Deletes a message by seq; absent is fine (already deleted or expired).
    pub(crate) fn delete(&mut self, seq: u64) {
        self.remove(seq);
    }

    /// Takes back the latest receive of a message that never reached its receiver: visible at
    /// `now_ms`, with one receive fewer (never received again: no first receive either). The
    /// caller has checked that it is in flight under that receive. `now_ms` must be settled.
    pub(crate) fn return_undelivered(&mut self, seq: u64, now_ms: u64) {
        // Visible first, while its count still says it is in flight (which unlocks its group);
        // a visible message's place does not depend on its count.
        self.set_visible_at(seq, now_ms, now_ms);
        if let Some(message) = self.messages.get_mut(&seq) {
            message.receive_count = message.receive_count.saturating_sub(1);
            if message.receive_count == 0 {
                message.first_receive_ms = 0;
                message.lease = 0;
            }
        }
    }

    /// Sets a message's visibility time. `now_ms` must be settled.
    pub(crate) fn set_visible_at(&mut self, seq: u64, visible_at_ms: u64, now_ms: u64) {
        if let Some(mut message) = self.detach(seq) {
            message.visible_at_ms = visible_at_ms;
            let never_received = message.receive_count == 0;
            self.messages.insert(seq, message);
            self.place(seq, visible_at_ms, never_received, now_ms);
        }
    }

    /// Drops every message, scheduled ones included (those on disk are dropped when loaded);
    /// returns how many. `log_index` is the purge's.
    pub(crate) fn purge(&mut self, log_index: u64) -> u64 {
        let count = self.messages.len() as u64 + self.wheel.len() as u64 + self.on_disk;
        self.messages.clear();
        self.visible.clear();
        self.pending.clear();
        self.older_bodies.clear();
        self.wheel.clear();
        self.on_disk = 0;
        self.on_disk_bytes = 0;
        self.stored_bytes = 0;
        self.purged_at_log_index = log_index;
        if let Some(fifo) = &mut self.fifo {
            // The deduplication window outlives a purge, as in SQS.
            fifo.ids.clear();
            fifo.in_flight.clear();
            fifo.visible_by_group.clear();
            fifo.ready.clear();
        }
        self.delayed = 0;
        count
    }

    /// Bytes of the messages this queue holds ([`NewMessage::stored_bytes`] each), scheduled
    /// ones included, as of the last settle.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// What the message `seq` counts in the stored bytes (0 when gone or unknown).
    pub(crate) fn message_bytes(&self, seq: u64) -> u64 {
        self.messages.get(&seq).map_or(0, |m| u64::from(m.body_bytes))
    }

    /// When the oldest message it holds entered it (scheduled ones aside); `None` when empty.
    pub(crate) fn oldest_enqueued_ms(&self) -> Option<u64> {
        self.messages.values().next().map(|m| m.enqueued_ms)
    }

    /// What each message counts in the stored bytes, for the shard state's format version 3,
    /// which carries them after the serde layout.
    pub(crate) fn sizes(&self) -> QueueSizes {
        QueueSizes {
            messages: self.messages.values().map(|m| m.body_bytes).collect(),
            wheel: self.wheel.values().map(|s| s.body_bytes).collect(),
            on_disk_bytes: self.on_disk_bytes,
        }
    }

    /// Puts back what [`Queue::sizes`] gave, after a decode of the serde layout. Errors when the
    /// sizes are not those of this queue's messages.
    pub(crate) fn set_sizes(&mut self, sizes: QueueSizes) -> Result<(), &'static str> {
        if sizes.messages.len() != self.messages.len() || sizes.wheel.len() != self.wheel.len() {
            return Err("the message sizes do not match the queue's messages");
        }
        let messages = std::mem::take(&mut self.messages).into_iter().zip(sizes.messages);
        self.messages = messages.map(|((seq, message), body_bytes)| (seq, Message { body_bytes, ..message })).collect();
        let wheel = std::mem::take(&mut self.wheel).into_iter().zip(sizes.wheel);
        self.wheel = wheel.map(|((key, due), body_bytes)| (key, ScheduledMessage { body_bytes, ..due })).collect();
        self.on_disk_bytes = sizes.on_disk_bytes;
        self.stored_bytes = self.messages.values().map(|m| u64::from(m.body_bytes)).sum::<u64>()
            + self.wheel.values().map(|s| u64::from(s.body_bytes)).sum::<u64>()
            + self.on_disk_bytes;
        Ok(())
    }

    /// Every size unknown (0), as after a decode of a format version without them.
    #[cfg(test)]
    pub(crate) fn forget_sizes(&mut self) {
        let messages = vec![0; self.messages.len()];
        let wheel = vec![0; self.wheel.len()];
        let _ = self.set_sizes(QueueSizes { messages, wheel, on_disk_bytes: 0 });
    }

    /// Counts as of the last settle of this queue.
    pub(crate) fn counts(&self) -> QueueCounts {
        let pending = self.pending.len() as u64;
        QueueCounts {
            visible: self.visible.len() as u64,
            in_flight: pending.saturating_sub(self.delayed),
            delayed: self.delayed + self.wheel.len() as u64 + self.on_disk,
        }
    }

    /// Counts as they are at `now_ms`, without settling: a message whose delay or visibility
    /// timeout ran out since the last settle counts as visible, and so does a scheduled message
    /// now due (a read never changes the state; the next command settles it the same way).
    /// Costs a walk over the messages that became due since the last settle.
    pub(crate) fn counts_at(&self, now_ms: u64) -> QueueCounts {
        let mut counts = self.counts();
        let (mut were_delayed, mut were_in_flight) = (0, 0);
        for &(_, seq) in self.pending.iter().take_while(|&&(visible_at_ms, _)| visible_at_ms <= now_ms) {
            if self.messages.get(&seq).is_some_and(|m| m.receive_count == 0) {
                were_delayed += 1;
            } else {
                were_in_flight += 1;
            }
        }
        let due_scheduled = self.wheel.keys().take_while(|&&(deliver_at_ms, _)| deliver_at_ms <= now_ms).count() as u64;
        counts.visible += were_delayed + were_in_flight + due_scheduled;
        counts.in_flight = counts.in_flight.saturating_sub(were_in_flight);
        counts.delayed = counts.delayed.saturating_sub(were_delayed + due_scheduled);
        counts
    }

    /// Whether a Receive at `now_ms` would deliver at least one message.
    /// Only messages that became due since the last settle and are expired
    /// are scanned over, so this is cheap in practice.
    pub(crate) fn has_visible(&self, now_ms: u64) -> bool {
        let live = |seq: &u64| self.messages.get(seq).is_some_and(|m| !m.is_expired(&self.config, now_ms));
        if let Some(fifo) = &self.fifo {
            // Only messages of unlocked groups can be delivered; a long poll must not spin on
            // the others.
            // A due pending message (its visibility ran out, so its group unlocks when a command
            // settles the queue) also calls for a receive.
            return fifo.ready.iter().any(|(head, _)| live(head))
                || self.pending.get_min().is_some_and(|&(visible_at_ms, _)| visible_at_ms <= now_ms);
        }
        // The highest visible seq is the least likely to be expired; if it is,
        // all of `visible` is (expired messages are a seq prefix).
        if self.visible.get_max().is_some_and(live) {
            return true;
        }
        // A scheduled message now due is enqueued (visible) by the receive's settle.
        if self.wheel.get_min().is_some_and(|&((deliver_at_ms, _), _)| deliver_at_ms <= now_ms) {
            return true;
        }
        self.pending.range(..=(now_ms, u64::MAX)).any(|(_, seq)| live(seq))
    }

    /// Earliest time after `now_ms` at which a message that is not visible
    /// becomes visible, skipping messages that reach retention first (they will
    /// never be delivered).
    pub(crate) fn next_visible_at_ms(&self, now_ms: u64) -> Option<u64> {
        let start = now_ms.checked_add(1)?;
        let pending = self
            .pending
            .range((start, 0)..)
            .find(|(visible_at_ms, seq)| {
                self.messages.get(seq).is_some_and(|m| !m.is_expired(&self.config, *visible_at_ms))
            })
            .map(|(visible_at_ms, _)| *visible_at_ms);
        let scheduled = self.wheel.range((start, Uuid::nil())..).next().map(|(&(deliver_at_ms, _), _)| deliver_at_ms);
        pending.into_iter().chain(scheduled).min()
    }
}

/// Moving a queue to another shard (see `state::moves`): what its bodies are and where they go.
impl Queue {
    /// Forgets the scheduled messages counted in slice files (which stay with the old shard's
    /// files): answers how many there were and the mean of what they counted.
    pub(crate) fn leave_slice_files(&mut self) -> (u64, u32) {
        let (count, bytes) = (self.on_disk, self.on_disk_bytes);
        self.on_disk = 0;
        self.on_disk_bytes = 0;
        self.stored_bytes = self.stored_bytes.saturating_sub(bytes);
        (count, u32::try_from(bytes / count.max(1)).unwrap_or(u32::MAX))
    }

    /// A scheduled message that came from another shard's slice files with the queue: into the
    /// wheel, or counted as on disk (the caller appends it to this shard's slice file).
    pub(crate) fn arrive_scheduled(&mut self, scheduled: ScheduledMessage, to_disk: bool) {
        if to_disk {
            let bytes = u64::from(scheduled.body_bytes);
            self.on_disk += 1;
            self.on_disk_bytes = self.on_disk_bytes.saturating_add(bytes);
            self.stored_bytes = self.stored_bytes.saturating_add(bytes);
        } else {
            self.wait(scheduled);
        }
    }

    /// Scheduled messages of this queue still in slice files (which a move does not carry).
    pub(crate) fn on_disk(&self) -> u64 {
        self.on_disk
    }

    /// Where every body the queue references is: its messages' in seq order, then its wheel's,
    /// each once.
    pub(crate) fn body_refs(&self) -> Vec<MessageRef> {
        let mut seen = std::collections::BTreeSet::new();
        let messages = self.messages.values().map(Message::body_ref);
        let wheel = self.wheel.values().map(|s| s.body_ref);
        messages.chain(wheel).filter(|at| seen.insert(*at)).collect()
    }

    /// The queue as another shard holds it once its bodies were copied into that shard's log:
    /// every body reference goes through `moved` (which holds one for each of
    /// [`Queue::body_refs`]), and every body counts as older (the copies' log indexes do not
    /// follow the seqs). The purge mark (a log index of
    /// the old shard, which only matters for messages loaded from slice files) becomes
    /// `arrived_at`, the new shard's log index from which the copies lie: records in its files
    /// from an earlier stay of the queue there are dropped when loaded.
    pub(crate) fn rebased(
        &self,
        moved: &std::collections::BTreeMap<MessageRef, MessageRef>,
        arrived_at: u64,
    ) -> Result<Queue, String> {
        let target = |at: MessageRef| moved.get(&at).copied().ok_or_else(|| format!("no copy of the body at {at:?}"));
        let mut queue = self.clone();
        queue.older_bodies = OrdMap::new();
        queue.purged_at_log_index = arrived_at;
        let mut messages = OrdMap::new();
        for (seq, message) in &self.messages {
            let body = target(message.body_ref())?;
            // The copies were made in no particular order (before and after the fence, by one
            // driver or the next): each counts as an older body, so the queue's lowest log index
            // covers them all.
            queue.count_older_body(body.log_index);
            let copy =
                Message { body_log_index: body.log_index, body_slot: body.slot, older_body: true, ..message.clone() };
            messages.insert(*seq, copy);
        }
        queue.messages = messages;
        let mut wheel = OrdMap::new();
        for (key, scheduled) in &self.wheel {
            let body_ref = target(scheduled.body_ref)?;
            queue.count_older_body(body_ref.log_index);
            wheel.insert(*key, ScheduledMessage { body_ref, ..*scheduled });
        }
        queue.wheel = wheel;
        queue.indexed = None;
        Ok(queue)
    }
}
