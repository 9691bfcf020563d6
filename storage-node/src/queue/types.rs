//! Commands, responses, configuration and limits of the queue state machine.
//!
//! Everything here crosses a boundary: commands travel through the Raft log,
//! responses go back to the proxy, and errors become tenant-visible error codes.
//! All types are serde-serializable (postcard in the log and in snapshots).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_common::metering::MeterRecord;
use uuid::Uuid;

use super::schedule::ScheduledMessage;

/// Queue incarnation id, unique for the whole service (assigned by metadata).
/// Deleting and re-creating a queue with the same name yields a new id, so
/// receipts of the old incarnation never match the new one.
pub type QueueId = u64;

// The limits are shared with every front door (see `strata_common::limits`).
pub use strata_common::limits::{
    DELAY_MS_MAX, DELETE_BATCH_MAX, DELIVER_AHEAD_MS_MAX, MESSAGE_ATTRIBUTES_MAX, RECEIVE_BATCH_MAX,
    REQUEST_ID_CHARS_MAX, RETENTION_MS_DEFAULT, RETENTION_MS_MAX, RETENTION_MS_MIN, SEND_BATCH_MAX,
    VISIBILITY_TIMEOUT_MS_DEFAULT, VISIBILITY_TIMEOUT_MS_MAX,
};

/// Per-queue settings. Changing them affects later commands only: a new
/// visibility timeout applies to later receives, a new delay to later sends,
/// but a new retention period applies to the messages already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// How long a message is kept after it was sent, delivered or not.
    pub retention_ms: u64,
    /// How long a received message stays invisible unless the receive overrides it.
    pub visibility_timeout_ms: u64,
    /// How long a new message stays invisible unless the send overrides it.
    pub delay_ms: u64,
    /// Where messages go once received `max_receive_count` times.
    pub redrive: Option<Redrive>,
    /// Set for FIFO queues (fixed at creation).
    pub fifo: Option<FifoConfig>,
}

/// How a FIFO queue deduplicates: within [`DEDUP_WINDOW_MS`] of the first send, a message with
/// the same deduplication id (per queue, or per message group) is accepted but not stored again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FifoConfig {
    /// Deduplication ids are scoped to the message group instead of the queue.
    pub deduplication_per_group: bool,
}

/// The FIFO deduplication window (SQS's: 5 minutes).
pub const DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Longest message group id and deduplication id (SQS's: 128 characters).
pub const FIFO_ID_CHARS_MAX: usize = 128;

/// A dead-letter queue on the same shard, and after how many receives a message moves there:
/// the receive that would deliver it for the `max_receive_count + 1`-th time moves it instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redrive {
    pub dead_letter_queue: QueueId,
    pub max_receive_count: u32,
}

/// Bounds of `max_receive_count` (SQS's).
pub const MAX_RECEIVE_COUNT_MIN: u32 = 1;
pub const MAX_RECEIVE_COUNT_MAX: u32 = 1000;

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            retention_ms: RETENTION_MS_DEFAULT,
            visibility_timeout_ms: VISIBILITY_TIMEOUT_MS_DEFAULT,
            delay_ms: 0,
            redrive: None,
            fifo: None,
        }
    }
}

impl QueueConfig {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), QueueError> {
        if !(RETENTION_MS_MIN..=RETENTION_MS_MAX).contains(&self.retention_ms) {
            return Err(QueueError::InvalidParameter(format!(
                "retention_ms must be between {RETENTION_MS_MIN} and {RETENTION_MS_MAX}"
            )));
        }
        check_visibility_timeout(self.visibility_timeout_ms)?;
        check_delay(self.delay_ms)?;
        if let Some(redrive) = self.redrive
            && !(MAX_RECEIVE_COUNT_MIN..=MAX_RECEIVE_COUNT_MAX).contains(&redrive.max_receive_count)
        {
            return Err(QueueError::InvalidParameter(format!(
                "max_receive_count must be between {MAX_RECEIVE_COUNT_MIN} and {MAX_RECEIVE_COUNT_MAX}"
            )));
        }
        Ok(())
    }
}

pub(crate) fn check_visibility_timeout(timeout_ms: u64) -> Result<(), QueueError> {
    if timeout_ms > VISIBILITY_TIMEOUT_MS_MAX {
        return Err(QueueError::InvalidParameter(format!(
            "visibility_timeout_ms must be at most {VISIBILITY_TIMEOUT_MS_MAX}"
        )));
    }
    Ok(())
}

pub(crate) fn check_delay(delay_ms: u64) -> Result<(), QueueError> {
    if delay_ms > DELAY_MS_MAX {
        return Err(QueueError::InvalidParameter(format!("delay_ms must be at most {DELAY_MS_MAX}")));
    }
    Ok(())
}

/// Typed message attribute value, as SQS's data types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttributeValue {
    String(String),
    /// A number kept as its decimal text, as SQS does.
    Number(String),
    Binary(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A data type with a custom label after its base type ("Number.int", "Binary.png"): the
    /// full data type, and the value as its base type holds it (never `Labeled` again).
    Labeled {
        data_type: String,
        value: Box<AttributeValue>,
    },
}

/// One message of a Send. The body and attributes live only in the Raft log
/// entry that carries the Send; the state machine keeps a [`MessageRef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Chosen by the proxy before proposing, so a retried proposal is recognisable.
    pub message_id: Uuid,
    pub body: Bytes,
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Overrides the queue's `delay_ms` for this message (`Some(0)` means no delay).
    pub delay_ms: Option<u64>,
    /// Delivers the message at this time (unix ms on the shard clock) instead: at most
    /// [`DELIVER_AHEAD_MS_MAX`] ahead, standard queues only, not with `delay_ms`. A time already
    /// passed delivers at once. A message due later than now must have the id
    /// [`scheduled_message_id`](super::schedule::scheduled_message_id) gives for this time.
    pub deliver_at_ms: Option<u64>,
    /// FIFO queues only, and then required: the ordering group and the deduplication id.
    pub fifo: Option<FifoIds>,
}

impl NewMessage {
    /// What the message counts in its queue's stored bytes: its body and its attributes (names,
    /// data types and values), as SQS counts a message's size.
    pub fn stored_bytes(&self) -> u32 {
        let attributes: usize = self.attributes.iter().map(|(name, value)| name.len() + value.stored_bytes()).sum();
        u32::try_from(self.body.len().saturating_add(attributes)).unwrap_or(u32::MAX)
    }
}

impl AttributeValue {
    /// Bytes of its data type and value.
    fn stored_bytes(&self) -> usize {
        let data_type_bytes = match self {
            AttributeValue::String(_) => "String".len(),
            AttributeValue::Number(_) => "Number".len(),
            AttributeValue::Binary(_) => "Binary".len(),
            AttributeValue::Labeled { data_type, .. } => data_type.len(),
        };
        data_type_bytes + self.value_bytes()
    }

    fn value_bytes(&self) -> usize {
        match self {
            AttributeValue::String(text) | AttributeValue::Number(text) => text.len(),
            AttributeValue::Binary(bytes) => bytes.len(),
            AttributeValue::Labeled { value, .. } => value.value_bytes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FifoIds {
    pub group_id: String,
    pub deduplication_id: String,
}

/// Where a message body is: the Send log entry and the message's position in
/// that entry's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageRef {
    pub log_index: u64,
    pub slot: u16,
}

/// A command as stored in the Raft log: the leader's wall clock at proposal
/// time travels with it, so every replica applies the same time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCommand {
    pub now_ms: u64,
    pub command: Command,
    /// Set by a proposer that may retry the command (a proxy's send): a command whose request
    /// id was seen among the shard's last [`REQUEST_IDS_KEPT`] is not applied again and gets
    /// the first answer.
    pub request_id: Option<String>,
    /// The metering record of the call this command serves: it enters the shard's metering
    /// outbox when the command applies without error (see [`super::outbox`]).
    pub meter: Option<MeterRecord>,
}

/// Request ids a shard remembers, with their answers (a proxy retries within seconds).
pub const REQUEST_IDS_KEPT: usize = 20_000;

/// Separates a send's request id from the digest of its request in [`ShardCommand::request_id`]
/// (shard command format version 2 on: see [`request_key`]).
pub const REQUEST_DIGEST_SEPARATOR: char = '\u{1f}';

/// A send's request key: its request id and a digest of what it sends (bodies, attributes,
/// delays, FIFO ids; not the message ids, which each attempt draws anew). A retry of the same
/// request has the same key; the same id with other messages has another one, which the shard
/// answers with [`QueueError::IdempotencyConflict`].
pub fn request_key(request_id: &str, messages: &[NewMessage]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for m in messages {
        // postcard of the request's own fields: a deterministic encoding (attributes are a
        // BTreeMap), framed by the message's length so that no two lists of messages meet.
        let fields = (&m.body, &m.attributes, m.delay_ms, m.deliver_at_ms, &m.fifo);
        let encoded = postcard::to_allocvec(&fields).unwrap_or_default();
        digest.update((encoded.len() as u64).to_be_bytes());
        digest.update(&encoded);
    }
    let digest = digest.finalize();
    format!("{request_id}{REQUEST_DIGEST_SEPARATOR}{}", hex::encode(&digest[..16]))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Idempotent: if the queue already exists for the same tenant, nothing
    /// changes (the stored config is kept; use `SetQueueConfig` to change it).
    CreateQueue {
        queue: QueueId,
        tenant: String,
        config: QueueConfig,
    },
    SetQueueConfig {
        queue: QueueId,
        tenant: String,
        config: QueueConfig,
    },
    DeleteQueue {
        queue: QueueId,
        tenant: String,
    },
    Send {
        queue: QueueId,
        tenant: String,
        messages: Vec<NewMessage>,
    },
    Receive {
        queue: QueueId,
        tenant: String,
        max_messages: u32,
        /// Overrides the queue's visibility timeout for this receive; 0 is allowed.
        visibility_timeout_ms: Option<u64>,
    },
    /// Per-entry results in `Response::Deleted`, in request order.
    Delete {
        queue: QueueId,
        tenant: String,
        receipts: Vec<String>,
    },
    ChangeVisibility {
        queue: QueueId,
        tenant: String,
        receipt: String,
        visibility_timeout_ms: u64,
    },
    Purge {
        queue: QueueId,
        tenant: String,
    },
    /// Drops messages past retention in every queue of the shard.
    Expire,
    /// Starts moving the messages of `source` (typically a dead-letter queue) to `destination`,
    /// at most `max_per_second`; the storage node then proposes [`Command::MoveStep`]s.
    StartMoveTask {
        tenant: String,
        source: QueueId,
        destination: QueueId,
        max_per_second: u32,
    },
    CancelMoveTask {
        tenant: String,
        task_id: MoveTaskId,
    },
    /// Moves up to `max_messages` visible messages of a running task.
    MoveStep {
        task_id: MoveTaskId,
        max_messages: u32,
    },
    /// A Receive with an attempt id (SQS ReceiveRequestAttemptId, FIFO queues): retried within
    /// [`DEDUP_WINDOW_MS`], it answers the same messages and receipts while they are still in
    /// flight under them, and restarts their visibility timeout.
    ReceiveAttempt {
        queue: QueueId,
        tenant: String,
        max_messages: u32,
        visibility_timeout_ms: Option<u64>,
        attempt_id: String,
    },
    /// Cancels a message scheduled with `deliver_at_ms` that is not due yet.
    CancelScheduled {
        queue: QueueId,
        tenant: String,
        message_id: Uuid,
    },
    /// Freezes a slice file for loading (see `schedule`): proposed by the storage node once the
    /// slice is within [`LOAD_LEAD_MS`](super::schedule::LOAD_LEAD_MS) of the clock.
    StartScheduledLoad {
        slice_start_ms: u64,
    },
    /// The records `from..to` of a loading slice file: its messages (cancelled ones left out by
    /// the proposer) move into their queues' wheels. Proposed by the storage node.
    LoadScheduled {
        slice_start_ms: u64,
        from: u64,
        to: u64,
        messages: Vec<ScheduledMessage>,
    },
    /// Drops the metering outbox's records up to and including `through_seq`, once the billing
    /// service has counted them.
    TrimMetering {
        through_seq: u64,
    },
    /// Takes back receives whose messages never reached the receiver (their bodies could not be
    /// read): each message still leased under its receipt becomes visible at once with the
    /// receive count it had before. Shard command version 3 and later.
    ReturnUndelivered {
        queue: QueueId,
        tenant: String,
        receipts: Vec<String>,
    },
    /// Calls of many clients in one log entry (a shard's proposal batcher gathers them while
    /// the entries before are being written): applied one after another at the entry's log
    /// index and time, each answered on its own in [`Response::Calls`]. Only receives, deletes
    /// and visibility changes ride here ([`Command::batchable`]); anything else in a batch is
    /// answered `InvalidParameter`. A receive passes over messages leased earlier in the same
    /// entry (their receipts would be the same). Shard command version 4 and later.
    Calls {
        calls: Vec<Call>,
    },
    /// A client's call with who made it ([`CallerNote`]): applied as `command` is, and the note
    /// kept in the log beside it (a send's trace headers are read back with its messages).
    /// Wraps one call (never `Calls` or another `WithCaller`); may ride in a `Calls` entry when
    /// its call may. Shard command version 5 and later.
    WithCaller {
        caller: CallerNote,
        command: Box<Command>,
    },
    /// Freezes a queue for its move `move_id` to another shard: from here every call on it
    /// answers [`QueueError::QueueMoving`] until the move releases it (or rolls back,
    /// [`Command::UnfenceQueue`]). Refused for a queue a move does not carry yet (see
    /// `state::moves`). Proposed by the move's driver. Shard command version 6 and later, as
    /// every move command.
    FenceQueue {
        queue: QueueId,
        tenant: String,
        move_id: u64,
    },
    /// Ends the fence of a move that rolled back: the queue serves here again.
    UnfenceQueue {
        queue: QueueId,
        move_id: u64,
    },
    /// Drops a fenced queue's state once its move switched routing to the target shard.
    ReleaseQueue {
        queue: QueueId,
        move_id: u64,
    },
    /// On the target: the part at byte `offset` of the moving queue's exported state.
    AdoptState {
        queue: QueueId,
        tenant: String,
        move_id: u64,
        offset: u64,
        part: Bytes,
    },
    /// On the target: copies of the moving queue's bodies (the messages they belong to, as
    /// their sends carried them), and where each was on the source (`refs`, one per message).
    /// Read back as a send's messages are, by log index and slot.
    AdoptBodies {
        queue: QueueId,
        move_id: u64,
        refs: Vec<MessageRef>,
        messages: Vec<NewMessage>,
        trace_headers: Vec<Option<String>>,
    },
    /// On the target: every part arrived; the queue is whole, and serves once opened
    /// ([`Command::OpenQueue`]).
    AdoptQueue {
        queue: QueueId,
        move_id: u64,
    },
    /// On the target: drops what the move brought before its routing switched.
    DropAdoption {
        queue: QueueId,
        move_id: u64,
    },
    /// On the target, once metadata switched the queue's routing here: the adopted queue
    /// serves (until then it answers [`QueueError::QueueMoving`], so nothing it did could be
    /// lost to a roll back).
    OpenQueue {
        queue: QueueId,
        move_id: u64,
    },
    /// From here on, messages whose dead-letter queue or move task destination is not on this
    /// shard leave through its hand-off outbox (see `state::hand_offs`). Proposed by the
    /// shard's leader once its cluster writes format generation 10; until then such messages
    /// stay where they are. Shard command version 7 and later, as every hand-off command.
    OpenHandOffs,
    /// On the shard of `queue`: messages another shard (`source_shard`) handed off to it, each
    /// once (a hand-off seq at or below the queue's mark for that shard changes nothing). Their
    /// bodies are `messages`, read back by log index and slot as a send's are.
    AcceptHandOffs {
        source_shard: u64,
        queue: QueueId,
        tenant: String,
        arrivals: Vec<HandOffArrival>,
        messages: Vec<NewMessage>,
        trace_headers: Vec<Option<String>>,
    },
    /// Drops the hand-off outbox's entries up to and including `through_seq`, once their
    /// destinations accepted them.
    TrimHandOffs {
        through_seq: u64,
    },
    /// The outbox's entries up to and including `through_seq` found no destination (deleted,
    /// or refusing them): each goes back to the queue it left.
    ReturnHandOffs {
        through_seq: u64,
    },
    /// The shard's leader found it idle: every replica stops its Raft ticker and its timers
    /// until a call, or any later entry, wakes it (see `crate::hibernation`). Changes nothing
    /// else. Shard command version 7 and later.
    Hibernate,
}

/// One message of a [`Command::AcceptHandOffs`]: where it came from and what its queue keeps
/// of it (its body is the entry's message of the same slot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOffArrival {
    /// Its seq in the source shard's outbox.
    pub seq: u64,
    /// The queue it left.
    pub from: QueueId,
    /// Whether it left as a dead letter (else a move task or a return moved it).
    pub dead_letter: bool,
    pub message_id: Uuid,
    pub sent_ms: u64,
    /// What it counts in its queue's stored bytes.
    pub body_bytes: u32,
    pub fifo: Option<FifoIds>,
}

/// Who made a call, and the trace contexts of the messages it sent: what the log keeps of a
/// call beyond its command ([`Command::WithCaller`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerNote {
    /// The credential the call was made with, as its proxy verified it: an access key id, or
    /// `token` for a call with the tenant's bearer token. At most [`CREDENTIAL_CHARS_MAX`].
    pub credential: String,
    /// The request id the caller was answered with. At most [`REQUEST_ID_CHARS_MAX`].
    pub request_id: String,
    /// A send's messages' trace headers (SQS's `AWSTraceHeader`, X-Ray format), by position in
    /// the send; empty when none has one. Each as [`strata_telemetry::trace::valid_trace_header`]
    /// allows.
    pub trace_headers: Vec<Option<String>>,
}

/// Longest credential name a [`CallerNote`] holds.
pub const CREDENTIAL_CHARS_MAX: usize = 128;

impl CallerNote {
    /// Whether the note is within its limits for a command carrying `messages` messages.
    pub fn check(&self, messages: usize) -> Result<(), QueueError> {
        let invalid = |what: &str| Err(QueueError::InvalidParameter(what.to_owned()));
        if self.credential.len() > CREDENTIAL_CHARS_MAX {
            return invalid("a caller's credential name is too long");
        }
        if self.request_id.len() > REQUEST_ID_CHARS_MAX {
            return invalid("a caller's request id is too long");
        }
        if self.trace_headers.len() > messages {
            return invalid("more trace headers than messages");
        }
        if self.trace_headers.iter().flatten().any(|h| !strata_telemetry::trace::valid_trace_header(h)) {
            return invalid("a trace header is empty, too long or not printable ASCII");
        }
        Ok(())
    }

    /// The trace header of the message at `slot` of its send, if it has one.
    pub fn trace_header(&self, slot: u16) -> Option<&str> {
        self.trace_headers.get(usize::from(slot)).and_then(Option::as_deref)
    }
}

/// One client's call in a [`Command::Calls`] entry, with its metering record (which enters the
/// outbox when the call succeeds, as [`ShardCommand::meter`] does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub command: Command,
    pub meter: Option<MeterRecord>,
}

/// Most calls one [`Command::Calls`] entry carries. Applies refuse a larger entry, so the value
/// is part of the command's meaning: raising it takes a new shard command version (a replica of
/// the older release would refuse what a newer one applies).
pub const CALLS_PER_ENTRY_MAX: usize = 64;

impl Command {
    /// Whether the command may share a log entry with others ([`Command::Calls`]): the calls
    /// clients make at the rate they receive, which neither place message bodies in the entry
    /// (sends locate bodies by log index and slot) nor remember request ids.
    pub fn batchable(&self) -> bool {
        match self {
            Command::WithCaller { command, .. } => command.batchable(),
            command => matches!(
                command,
                Command::Receive { .. }
                    | Command::ReceiveAttempt { .. }
                    | Command::Delete { .. }
                    | Command::ChangeVisibility { .. }
                    | Command::ReturnUndelivered { .. }
            ),
        }
    }

    /// The call itself and who made it: a [`Command::WithCaller`] unwrapped once.
    pub fn call_and_caller(&self) -> (&Command, Option<&CallerNote>) {
        match self {
            Command::WithCaller { caller, command } => (command, Some(caller)),
            command => (command, None),
        }
    }

    /// [`Command::call_and_caller`], taking the command apart.
    pub fn into_call_and_caller(self) -> (Command, Option<CallerNote>) {
        match self {
            Command::WithCaller { caller, command } => (*command, Some(caller)),
            command => (command, None),
        }
    }

    /// `self` noted with `caller` (unchanged when there is no note to keep).
    pub fn with_caller(self, caller: Option<CallerNote>) -> Command {
        match caller {
            Some(caller) => Command::WithCaller { caller, command: Box::new(self) },
            None => self,
        }
    }

    /// Whether the command is one of the hand-offs of messages between shards (shard command
    /// version 7).
    pub fn is_hand_off_step(&self) -> bool {
        matches!(
            self,
            Command::OpenHandOffs
                | Command::AcceptHandOffs { .. }
                | Command::TrimHandOffs { .. }
                | Command::ReturnHandOffs { .. }
        )
    }

    /// Whether another shard's leader may propose the command on this shard (`AdoptQueueStep`):
    /// the steps of a move on its target, and the hand-off of messages.
    pub fn is_from_another_shard(&self) -> bool {
        self.is_adoption_step() || matches!(self, Command::AcceptHandOffs { .. })
    }

    /// Whether the command needs shard command version 7: a hand-off, or a hibernation.
    pub fn needs_version_7(&self) -> bool {
        self.is_hand_off_step() || matches!(self, Command::Hibernate)
    }

    /// Whether the command is one of a queue's move between shards (shard command version 6).
    pub fn is_move_step(&self) -> bool {
        self.is_adoption_step()
            || matches!(self, Command::FenceQueue { .. } | Command::UnfenceQueue { .. } | Command::ReleaseQueue { .. })
    }

    /// Whether the command is a step of a move on its target shard: what a source's driver may
    /// propose there (`AdoptQueueStep`).
    pub fn is_adoption_step(&self) -> bool {
        matches!(
            self,
            Command::AdoptState { .. }
                | Command::AdoptBodies { .. }
                | Command::AdoptQueue { .. }
                | Command::DropAdoption { .. }
                | Command::OpenQueue { .. }
        )
    }

    /// Whether the command is or carries a [`Command::WithCaller`] (shard command version 5).
    pub fn holds_caller_notes(&self) -> bool {
        match self {
            Command::WithCaller { .. } => true,
            Command::Calls { calls } => calls.iter().any(|c| c.command.holds_caller_notes()),
            _ => false,
        }
    }
}

/// A move task's id: the log index of the command that started it.
pub type MoveTaskId = u64;

/// Fastest move task (SQS's MaxNumberOfMessagesPerSecond maximum).
pub const MOVE_PER_SECOND_MAX: u32 = 500;
/// Most messages one move step moves.
pub const MOVE_STEP_MESSAGES_MAX: u32 = 100;
/// Finished tasks kept per source queue (ListMessageMoveTasks shows at most 10).
pub const MOVE_TASKS_KEPT_PER_SOURCE: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveTaskStatus {
    Running,
    Completed,
    Cancelled,
    Failed(String),
}

/// A task moving messages between two queues of one tenant on this shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveTask {
    pub task_id: MoveTaskId,
    pub tenant: String,
    pub source: QueueId,
    pub destination: QueueId,
    pub max_per_second: u32,
    pub moved: u64,
    /// Messages in the source when the task started.
    pub to_move: u64,
    pub status: MoveTaskStatus,
    pub started_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    pub message_id: Uuid,
    pub seq: u64,
}

/// One delivered message. The body is read from the log through `body_ref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub message_id: Uuid,
    pub seq: u64,
    pub body_ref: MessageRef,
    /// Opaque handle for Delete and ChangeVisibility; valid for this delivery only.
    pub receipt: String,
    /// Including this delivery.
    pub receive_count: u32,
    pub sent_ms: u64,
    pub first_receive_ms: u64,
    /// FIFO queues: the message's group and deduplication ids (its sequence number is `seq`).
    pub fifo: Option<FifoIds>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    QueueCreated,
    QueueConfigSet,
    QueueDeleted,
    /// In request order.
    Sent(Vec<SentMessage>),
    /// Lowest seq first; may be empty.
    Received(Vec<Delivery>),
    /// One result per receipt, in request order.
    Deleted(Vec<Result<(), QueueError>>),
    VisibilityChanged,
    /// Messages removed (messages already past retention are not counted).
    Purged {
        count: u64,
    },
    /// Messages past retention removed from all queues.
    Expired {
        count: u64,
    },
    /// The command was rejected and changed nothing.
    Error(QueueError),
    /// A move task after the command.
    MoveTask(MoveTask),
    /// The scheduled message was cancelled: it will not be delivered.
    ScheduledCancelled,
    /// A slice load step: how many messages it moved into memory.
    ScheduledLoaded {
        count: u64,
    },
    MeteringTrimmed,
    /// The answers to the calls of a [`Command::Calls`] entry, in its order.
    Calls(Vec<Response>),
    /// A step of a queue's move between shards was taken (or had been).
    Moved,
}

/// Approximate counts, as SQS's `ApproximateNumberOf{Messages, MessagesNotVisible,
/// MessagesDelayed}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueCounts {
    /// Ready to be received.
    pub visible: u64,
    /// Received and within their visibility timeout.
    pub in_flight: u64,
    /// Never received and within their delivery delay, or waiting for their deliver-at time.
    pub delayed: u64,
}

/// Tenant-visible errors. Kept deliberately small: each variant maps to one
/// SQS-style error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum QueueError {
    /// The queue does not exist, or belongs to another tenant (the two are
    /// indistinguishable on purpose).
    #[error("queue does not exist")]
    QueueNotFound,
    /// CreateQueue for a queue id already held by another tenant. Queue ids are
    /// assigned by metadata, never chosen by tenants, so this is an internal
    /// conflict and reveals nothing about the other tenant.
    #[error("queue id already in use")]
    QueueAlreadyExists,
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A Send or Delete batch with more than the allowed number of entries.
    #[error("too many entries in batch")]
    TooManyEntries,
    /// The receipt handle is malformed or names another queue.
    #[error("receipt handle is invalid")]
    InvalidReceipt,
    /// The message was received again after this receipt was issued; only the
    /// latest receipt may delete it or change its visibility.
    #[error("receipt handle is stale: the message was received again")]
    StaleReceipt,
    /// ChangeVisibility on a message that is not in flight: deleted, past
    /// retention, or whose visibility timeout has already run out.
    #[error("message is not in flight")]
    MessageNotInFlight,
    /// A receive while the queue already has [`IN_FLIGHT_MAX`] messages in flight.
    #[error("the queue has {IN_FLIGHT_MAX} messages in flight; delete or change the visibility of some first")]
    InFlightLimit,
    /// No message with this id is scheduled on the queue: it was never sent with a deliver-at
    /// time, is due already (delete it with its receipt), or was cancelled.
    #[error("no message with this id is waiting for its deliver-at time on this queue")]
    ScheduledMessageNotFound,
    /// A metered command while the shard's metering outbox is full: the billing service is
    /// behind, and the call is refused rather than served unbilled.
    #[error("the shard's metering backlog is full (billing is behind); retry later")]
    MeteringBacklogFull,
    /// A send whose request id was used by a different request (other messages): nothing is
    /// stored. Never remembered, so never persisted.
    #[error("this request id was used by a different request; use a new id for a new request")]
    IdempotencyConflict,
    /// The queue is moving to another shard: retry in a moment (proxies do, at its new shard).
    /// Never remembered, so never persisted.
    #[error("the queue is moving between shards; retry")]
    QueueMoving,
}

/// Most messages a queue may have in flight (received, not yet deleted or visible again): SQS's
/// limit. Receives beyond it fail with `InFlightLimit` (SQS `OverLimit`).
pub const IN_FLIGHT_MAX: u64 = 120_000;
