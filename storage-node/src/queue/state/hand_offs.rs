//! Messages handed from one shard to a queue on another (see `docs/elasticity.md`): a dead
//! letter whose dead-letter queue lives elsewhere, a message a move task moves to a queue
//! elsewhere, or either going back to the queue it left when its destination is gone.
//!
//! # What it guarantees
//!
//! * A message leaves its queue and enters the shard's **outbox** in one apply, so it is in
//!   exactly one of the two at every log index. Its receipts are stale from then on (the queue
//!   remembers it as moved away), as for a move within the shard.
//! * The shard's leader drains the outbox in seq order (`crate::hand_offs`); the destination's
//!   shard applies each entry once: a queue keeps, per source shard, the highest outbox seq it
//!   accepted (its **mark**), and an entry at or below it changes nothing. Entries leave in seq
//!   order and the drain stops at the first one that is not accepted, so a mark never passes an
//!   entry its queue has not taken; marks move with their queue to another shard. So a message
//!   handed off is never lost and never taken twice, and a FIFO group keeps its order.
//! * The outbox's entries are trimmed only once accepted; an entry whose destination is gone
//!   goes back to the queue it left (and that queue stops dead-lettering to it until its
//!   configuration changes), or is dropped when that queue is gone too. A batch accepted whose
//!   answer was lost, and whose queue was deleted before the next try, goes back too: its copy
//!   went with the deleted queue, so the message is in one live queue still.
//! * Nothing changes before the cluster writes format generation 10 and the shard's log says
//!   so ([`Command::OpenHandOffs`](super::super::Command::OpenHandOffs)): every replica applies
//!   every entry alike, whichever release it runs.
//!
//! # Limits
//!
//! At most [`HAND_OFF_OUTBOX_MAX`] messages wait in the outbox; when it is full, exhausted
//! messages wait in their queue (passed over by receives) and move tasks pause.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::super::store::{Handed, Moved};
use super::super::types::{
    HandOffArrival, MessageRef, MoveTaskId, MoveTaskStatus, NewMessage, QueueError, QueueId, Response,
};
use super::{ShardState, reindex};

/// Most messages waiting in a shard's hand-off outbox.
pub const HAND_OFF_OUTBOX_MAX: usize = 10_000;
/// Most messages one [`Command::AcceptHandOffs`](super::super::Command::AcceptHandOffs) carries.
pub const HAND_OFF_BATCH_MESSAGES: usize = 100;
/// About how many bytes of messages one batch carries (at least one message): far below a gRPC
/// message's limit, so that no batch of large bodies is ever too large to hand over.
pub(crate) const HAND_OFF_BATCH_BYTES: u64 = 1 << 20;

/// What a shard keeps of the messages it hands to other shards and of those handed to it. Not in
/// the serde layout of the shard state: shard states of format version 6 carry it after the
/// moves (older ones hold none, and hand-offs closed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOffs {
    /// Whether messages leave through the outbox (see the module doc).
    open: bool,
    /// The seq of the next outbox entry (seqs start at 1).
    next_seq: u64,
    /// Messages on their way to another queue, by seq.
    outbox: BTreeMap<u64, HandOff>,
    /// Per queue of this shard: source shard -> the highest outbox seq of that shard it accepted.
    marks: BTreeMap<QueueId, BTreeMap<u64, u64>>,
    /// A queue whose dead-letter queue was found gone -> that dead-letter queue: its exhausted
    /// messages are delivered again rather than handed off, until its configuration changes.
    dead_letter_gone: BTreeMap<QueueId, QueueId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HandOff {
    tenant: String,
    from: QueueId,
    to: QueueId,
    why: Why,
    message: Handed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Why {
    DeadLetter,
    Task(MoveTaskId),
    /// Going back to the queue it left (`to`), its destination gone.
    Return,
}

/// The first entries of a shard's outbox, all to one queue: what its leader hands over next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOffBatch {
    pub tenant: String,
    pub queue: QueueId,
    /// The seq of its last entry.
    pub through_seq: u64,
    pub arrivals: Vec<HandOffArrival>,
    /// Where each arrival's body is on this shard.
    pub bodies: Vec<MessageRef>,
}

impl ShardState {
    /// What shard state format version 6 carries after the moves.
    pub fn hand_offs(&self) -> &HandOffs {
        &self.hand_offs
    }

    /// Puts back what [`ShardState::hand_offs`] gave.
    pub fn restore_hand_offs(&mut self, hand_offs: HandOffs) {
        self.hand_offs = hand_offs;
    }

    /// Whether the state holds anything of hand-offs (which only shard state version 6 carries).
    pub fn holds_hand_offs(&self) -> bool {
        self.hand_offs != HandOffs::default()
    }

    /// This state as read from a format version without hand-offs (test support).
    #[cfg(test)]
    pub fn without_hand_offs(&self) -> ShardState {
        ShardState { hand_offs: HandOffs::default(), ..self.clone() }
    }

    /// Whether messages leave for other shards' queues (see the module doc).
    pub fn hand_offs_open(&self) -> bool {
        self.hand_offs.open
    }

    /// Whether messages wait in the outbox.
    pub fn has_hand_offs(&self) -> bool {
        !self.hand_offs.outbox.is_empty()
    }

    /// The first entries of the outbox that go to one queue, at most `max` of them and about
    /// [`HAND_OFF_BATCH_BYTES`] (at least one).
    pub fn hand_off_batch(&self, max: usize) -> Option<HandOffBatch> {
        let (_, first) = self.hand_offs.outbox.first_key_value()?;
        let (tenant, queue) = (first.tenant.clone(), first.to);
        let same = self.hand_offs.outbox.iter().take_while(|(_, h)| h.to == queue && h.tenant == tenant).take(max);
        let (mut arrivals, mut bodies, mut through_seq, mut bytes) = (Vec::new(), Vec::new(), 0, 0u64);
        for (&seq, h) in same {
            bytes += u64::from(h.message.body_bytes);
            if !arrivals.is_empty() && bytes > HAND_OFF_BATCH_BYTES {
                break;
            }
            arrivals.push(HandOffArrival {
                seq,
                from: h.from,
                dead_letter: h.why == Why::DeadLetter,
                message_id: h.message.message_id,
                sent_ms: h.message.sent_ms,
                body_bytes: h.message.body_bytes,
                fifo: h.message.fifo.clone(),
            });
            bodies.push(h.message.body);
            through_seq = seq;
        }
        Some(HandOffBatch { tenant, queue, through_seq, arrivals, bodies })
    }

    pub(super) fn open_hand_offs(&mut self) -> Result<Response, QueueError> {
        self.hand_offs.open = true;
        self.hand_offs.next_seq = self.hand_offs.next_seq.max(1);
        Ok(Response::Moved)
    }

    /// How many more messages the outbox takes.
    pub(super) fn hand_off_room(&self) -> usize {
        HAND_OFF_OUTBOX_MAX.saturating_sub(self.hand_offs.outbox.len())
    }

    /// Whether outbox entries wait for `queue` (a later message must not overtake them).
    pub(super) fn hands_off_to(&self, queue: QueueId) -> bool {
        self.hand_offs.outbox.values().any(|h| h.to == queue)
    }

    /// Whether `queue` found its dead-letter queue `dead_letter` gone.
    pub(super) fn dead_letter_gone(&self, queue: QueueId, dead_letter: QueueId) -> bool {
        self.hand_offs.dead_letter_gone.get(&queue) == Some(&dead_letter)
    }

    /// The queue's configuration changed: it dead-letters again to whatever it names now.
    pub(super) fn forget_gone_dead_letter(&mut self, queue: QueueId) {
        self.hand_offs.dead_letter_gone.remove(&queue);
    }

    /// Messages taken out of `from` into the outbox, for `to` on another shard.
    fn hand_off(&mut self, tenant: &str, from: QueueId, to: QueueId, why: Why, moved: Vec<Moved>) {
        for message in moved {
            let seq = self.hand_offs.next_seq;
            self.hand_offs.next_seq += 1;
            let entry = HandOff { tenant: tenant.to_owned(), from, to, why, message: Handed::from(message) };
            self.hand_offs.outbox.insert(seq, entry);
        }
    }

    /// Dead letters of `from` for `to`, not on this shard (or moving).
    pub(super) fn hand_off_dead_letters(&mut self, tenant: &str, from: QueueId, to: QueueId, moved: Vec<Moved>) {
        self.hand_off(tenant, from, to, Why::DeadLetter, moved);
    }

    /// Messages move task `task_id` took out of `from` for `to`, not on this shard.
    pub(super) fn hand_off_for_task(
        &mut self,
        tenant: &str,
        from: QueueId,
        to: QueueId,
        task_id: MoveTaskId,
        moved: Vec<Moved>,
    ) {
        self.hand_off(tenant, from, to, Why::Task(task_id), moved);
    }

    /// Lowest log index of a body an outbox entry still needs.
    pub(super) fn min_hand_off_log_index(&self) -> Option<u64> {
        self.hand_offs.outbox.values().map(|h| h.message.body.log_index).min()
    }

    /// A queue leaves the shard (deleted or released): its marks and notes go too (a released
    /// queue's marks went with its export).
    pub(super) fn forget_hand_offs_of(&mut self, queue: QueueId) {
        self.hand_offs.marks.remove(&queue);
        self.hand_offs.dead_letter_gone.remove(&queue);
    }

    /// The queue's marks, for its export.
    pub(super) fn marks_of(&self, queue: QueueId) -> Vec<(u64, u64)> {
        self.hand_offs.marks.get(&queue).map(|m| m.iter().map(|(&s, &seq)| (s, seq)).collect()).unwrap_or_default()
    }

    /// Marks an adopted queue brought from its old shard.
    pub(super) fn set_marks(&mut self, queue: QueueId, marks: Vec<(u64, u64)>) {
        if !marks.is_empty() {
            self.hand_offs.marks.insert(queue, marks.into_iter().collect());
        }
    }

    /// Takes messages another shard handed off into `queue`, each once; their bodies are
    /// `messages`, stored in this entry (slot by slot).
    pub(super) fn accept_hand_offs(
        &mut self,
        source_shard: u64,
        queue: QueueId,
        tenant: &str,
        arrivals: &[HandOffArrival],
        messages: &[NewMessage],
        log_index: u64,
    ) -> Result<Response, QueueError> {
        if arrivals.is_empty() || arrivals.len() != messages.len() || arrivals.len() > HAND_OFF_BATCH_MESSAGES {
            return Err(QueueError::InvalidParameter("a hand-off's messages do not match its bodies".to_owned()));
        }
        if arrivals.iter().zip(messages).any(|(a, m)| a.message_id != m.message_id) {
            return Err(QueueError::InvalidParameter("a hand-off's bodies belong to other messages".to_owned()));
        }
        let now_ms = self.clock_ms;
        let mark = self.hand_offs.marks.get(&queue).and_then(|m| m.get(&source_shard)).copied().unwrap_or(0);
        let (arrived, last_seq) = self.with_queue(queue, tenant, |q| {
            // A FIFO queue takes only FIFO messages (with their groups), a standard one only
            // standard ones: a refusal sends them back to where they came from.
            if arrivals.iter().any(|a| a.fifo.is_some() != q.config.fifo.is_some()) {
                return Err(QueueError::InvalidParameter(
                    "the destination queue is not of the kind (standard or FIFO) of the messages".to_owned(),
                ));
            }
            q.settle(now_ms);
            let mut arrived = Vec::new();
            let mut last_seq = mark;
            for (slot, a) in arrivals.iter().enumerate().filter(|(_, a)| a.seq > mark) {
                let slot = u16::try_from(slot).map_err(|_| QueueError::TooManyEntries)?;
                let handed = Handed {
                    message_id: a.message_id,
                    body: MessageRef { log_index, slot },
                    sent_ms: a.sent_ms,
                    body_bytes: a.body_bytes,
                    fifo: a.fifo.clone(),
                };
                arrived.push((a.from, a.dead_letter, a.message_id, q.adopt(handed.into_moved(), now_ms)));
                last_seq = last_seq.max(a.seq);
            }
            Ok((arrived, last_seq))
        })?;
        if last_seq > mark {
            self.hand_offs.marks.entry(queue).or_default().insert(source_shard, last_seq);
        }
        for (from, dead_letter, message_id, seq) in arrived {
            self.trace_arrived(log_index, from, queue, &[(message_id, seq)], dead_letter);
        }
        Ok(Response::Moved)
    }

    /// Drops the outbox's entries through `through_seq`: their destinations took them.
    pub(super) fn trim_hand_offs(&mut self, through_seq: u64) -> Result<Response, QueueError> {
        while self.hand_offs.outbox.first_key_value().is_some_and(|(&seq, _)| seq <= through_seq) {
            self.hand_offs.outbox.pop_first();
        }
        Ok(Response::Moved)
    }

    /// The outbox's entries through `through_seq` found no destination: each goes back to the
    /// queue it left (here when it is here and serves, else through the outbox under a new seq,
    /// so that a repeated or late `ReturnHandOffs` or `TrimHandOffs` of the same seqs never
    /// touches it), or is dropped when it was going back already.
    pub(super) fn return_hand_offs(&mut self, through_seq: u64, log_index: u64) -> Result<Response, QueueError> {
        let now_ms = self.clock_ms;
        let seqs: Vec<u64> = self.hand_offs.outbox.range(..=through_seq).map(|(&seq, _)| seq).collect();
        for seq in seqs {
            let Some(entry) = self.hand_offs.outbox.remove(&seq) else { continue };
            let HandOff { tenant, from, to, why, message } = entry;
            if why == Why::Return {
                continue;
            }
            // A task that completed as its last messages left did not complete after all.
            if let Why::Task(task_id) = why
                && let Some(task) = self.move_tasks.get_mut(&task_id)
            {
                task.status = MoveTaskStatus::Failed("the destination queue was deleted".to_owned());
            }
            let serves_here = self.get(from, &tenant).is_some() && !self.is_moving(from);
            if !serves_here {
                let back = HandOff { tenant, from: to, to: from, why: Why::Return, message };
                let seq = self.hand_offs.next_seq;
                self.hand_offs.next_seq += 1;
                self.hand_offs.outbox.insert(seq, back);
                continue;
            }
            if why == Why::DeadLetter {
                self.hand_offs.dead_letter_gone.insert(from, to);
            }
            let moved = message.into_moved();
            let message_id = moved.message_id();
            if let Some(q) = self.queues.get_mut(&from) {
                q.settle(now_ms);
                let back_seq = q.adopt(moved, now_ms);
                reindex(&mut self.by_expiry, &mut self.by_log_index, from, q);
                self.trace_arrived(log_index, to, from, &[(message_id, back_seq)], false);
            }
        }
        Ok(Response::Moved)
    }
}
