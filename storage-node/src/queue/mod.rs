//! The queue state machine of one shard (SQS-like standard queues).
//!
//! # What it owns
//!
//! [`ShardState`] holds every queue of a shard: its tenant, its config, and for
//! each message its id, where its body is in the Raft log ([`MessageRef`]),
//! its send time, its visibility time and its receive lease. Message bodies and
//! attributes are *not* kept: they stay in the Send log entry, and the storage
//! node reads them back through `MessageRef` when delivering.
//!
//! [`ShardState::apply`] is a pure function of (state, log index, command) →
//! (state, response): no I/O, no clock (time comes in [`ShardCommand::now_ms`]),
//! no randomness, and only ordered collections, so every replica applying the
//! same log reaches the same state. The state is snapshotted with postcard.
//!
//! # Semantics
//!
//! * Send assigns each message a per-queue increasing `seq`; it becomes visible
//!   at `now + delay` (the message's delay, else the queue's).
//! * Receive leases up to `max_messages` visible messages, lowest seq first:
//!   each becomes invisible until `now + visibility timeout` and gets a receipt
//!   whose lease is the Receive's log index.
//! * Delete with the latest receipt removes the message; a receipt whose
//!   message is already gone succeeds (idempotent); a receipt superseded by a
//!   later receive fails with `StaleReceipt`.
//! * ChangeVisibility needs the latest receipt of a message still in flight.
//! * A message past retention (`sent + retention <= now`) is never delivered
//!   again; it is dropped by the next command on its queue or by `Expire`.
//! * Move tasks ([`MoveTask`]) move the visible messages of one queue into
//!   another of the same tenant on this shard, a step at a time (the storage
//!   node paces the steps); each step is one state transition, like a
//!   dead-letter move. A task completes when its source is empty.
//! * FIFO queues ([`FifoConfig`]): every message carries a group id and a
//!   deduplication id ([`FifoIds`]). A send whose deduplication id (per queue
//!   or per group) was seen within [`DEDUP_WINDOW_MS`] answers the first
//!   message's id and sequence number and stores nothing. A receive delivers,
//!   in seq order, only messages of groups with no message in flight; several
//!   messages of one group may go out in one receive, in order. A group stays
//!   locked until its in-flight messages are deleted or visible again. An index
//!   of the open groups with visible messages (by their lowest seq) lets a
//!   receive skip locked groups without scanning their messages.
//! * Dead letters: when a queue has a [`Redrive`] to a dead-letter queue of the
//!   same tenant on this shard, a Receive first moves the visible messages it
//!   reaches that were already received `max_receive_count` times into the
//!   dead-letter queue, in the same apply: the move is one state transition, so
//!   a message is never in both queues and never in neither. A moved message
//!   keeps its id and body reference, starts with no receives, and its
//!   retention restarts at the move. If the dead-letter queue does not exist
//!   (deleted), nothing moves.
//!
//! * Calls sharing an entry ([`Command::Calls`]): receives, deletes and
//!   visibility changes of many clients apply one after another at one log
//!   index, each answered on its own; a receive passes over messages an earlier
//!   call of its entry leased (so no two deliveries share a receipt).
//!
//! * Scheduled messages (`deliver_at_ms`, see [`schedule`]): due within about
//!   ten minutes they wait in memory in their queue's wheel, later ones in slice
//!   files the storage node writes for the state; either way they enter the
//!   queue, with a new seq, at their time, and retention counts from then. Until
//!   then they can be cancelled by id.
//!
//! # Invariants
//!
//! * Time never runs backwards: a command is applied at `max(now_ms, clock)`.
//!   A leader change may hand us a slightly older `now_ms`; that is not an error.
//! * Within a queue, seq order is the order messages entered it (sent, moved in,
//!   or due), so the time they entered never decreases with seq and expired
//!   messages are a seq prefix. The body's log index never decreases with seq
//!   among messages sent to the queue; moved-in and scheduled messages keep
//!   older bodies, which the queue counts separately so that its lowest
//!   referenced log index is always known.
//! * Each message is in exactly one of the visible set or the pending set
//!   (delayed or in flight), see `store`.
//! * The shard indexes hold exactly one entry per non-empty queue, keyed by its
//!   oldest message, so `Expire`, `has_expirable` and `min_live_log_index` do
//!   not scan idle queues.
//! * Tenant isolation: every command names its tenant; a queue owned by another
//!   tenant answers exactly like a missing queue (`QueueNotFound`).
//!
//! # How it fails
//!
//! Invalid input (bad batch sizes or limits, garbage receipts, unknown queues)
//! yields [`Response::Error`] and leaves the state unchanged apart from the
//! clock; per-entry Delete failures are reported per entry. Nothing here panics
//! on input: receipts are decoded defensively (see `receipt`).
//!
//! # Memory
//!
//! On a 64-bit target (record sizes checked by a unit test). B-tree values
//! are stored inline in nodes of 11 slots that are 2/3 to fully occupied.
//! * Per idle queue: a 304-byte record plus its 8-byte key in the shard's
//!   queue map, so ~310–470 bytes, plus the tenant string's heap bytes. Its
//!   empty maps and sets allocate nothing, and an empty queue has no entry in
//!   the shard indexes.
//! * Per message: an 80-byte record plus its 8-byte seq key in the message map
//!   (~88–130 bytes), plus an 8-byte key in the visible set or a 16-byte key
//!   in the pending set (~8–24 bytes): about 100–155 bytes per message. A FIFO
//!   message adds its group and deduplication ids (two strings) and, for five
//!   minutes, a deduplication entry.
//! * Per shard: the last [`REQUEST_IDS_KEPT`] request ids (proxies' sends) with
//!   their answers, about 300 bytes each (up to ~6 MB), so that a send retried
//!   at another replica after a failover is stored once.

pub mod outbox;
mod receipt;
pub mod schedule;
mod state;
mod store;
mod touches;
mod types;

#[cfg(test)]
mod tests;

pub use receipt::Receipt;
pub use state::hand_offs::{HAND_OFF_BATCH_MESSAGES, HAND_OFF_OUTBOX_MAX, HandOffBatch, HandOffs};
pub use state::moves::{
    ADOPT_BODIES_PART_MESSAGES, ADOPT_STATE_PART_BYTES, ADOPTED_STATE_BYTES_MAX, MoveId, Moves, QueueCopy,
};
pub use state::{MovedAway, ShardState, StoredSizes};
pub use touches::{Touch, Touches};
pub use types::{
    AttributeValue, CALLS_PER_ENTRY_MAX, CREDENTIAL_CHARS_MAX, Call, CallerNote, Command, DEDUP_WINDOW_MS,
    DELAY_MS_MAX, DELETE_BATCH_MAX, DELIVER_AHEAD_MS_MAX, Delivery, FIFO_ID_CHARS_MAX, FifoConfig, FifoIds,
    HandOffArrival, IN_FLIGHT_MAX, MAX_RECEIVE_COUNT_MAX, MAX_RECEIVE_COUNT_MIN, MESSAGE_ATTRIBUTES_MAX,
    MOVE_PER_SECOND_MAX, MOVE_STEP_MESSAGES_MAX, MOVE_TASKS_KEPT_PER_SOURCE, MessageRef, MoveTask, MoveTaskId,
    MoveTaskStatus, NewMessage, QueueConfig, QueueCounts, QueueError, QueueId, RECEIVE_BATCH_MAX,
    REQUEST_DIGEST_SEPARATOR, REQUEST_ID_CHARS_MAX, REQUEST_IDS_KEPT, RETENTION_MS_DEFAULT, RETENTION_MS_MAX,
    RETENTION_MS_MIN, Redrive, Response, SEND_BATCH_MAX, SentMessage, ShardCommand, VISIBILITY_TIMEOUT_MS_DEFAULT,
    VISIBILITY_TIMEOUT_MS_MAX, request_key,
};
