//! Every request and response body of the native API, as serde types. The proxy parses requests
//! into these and answers with them, `openapi.json` is generated from them (their doc comments
//! are its descriptions), and [`crate::Client`] sends and reads them.
//!
//! Requests refuse unknown fields (a misspelt setting is an error, not silently ignored).
//! Responses may gain fields in later releases; a client reading them ignores what it does not
//! know. Optional response fields are left out when they do not apply (FIFO fields of a standard
//! queue's message, a key's secret after its creation).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

// ------------------------------------------------------------------------------------ errors

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code a program may switch on (`QueueNotFound`, `QueueAlreadyExists`,
/// `InvalidParameter`, `InvalidReceipt`, `StaleReceipt`, `MessageNotInFlight`,
/// `ScheduledMessageNotFound`, `AccessKeyNotFound`, `LimitExceeded`, `IdempotencyConflict`, `TooLarge`,
/// `Unauthenticated`, `Throttled`, `Unavailable`, `Internal`, `UnknownRoute`; new codes may be
/// added) and a
/// message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

// ------------------------------------------------------------------------------------ queues

/// Whether a FIFO queue deduplicates across the queue or per message group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeduplicationScope {
    Queue,
    MessageGroup,
}

/// Whether a FIFO queue's throughput limit is per queue or per message group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThroughputLimit {
    PerQueue,
    PerMessageGroupId,
}

/// Where a message goes after too many receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// The dead-letter queue: a queue of the same tenant, kind and shard whose `redrive_allow`
    /// allows this queue.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$")]
    pub queue: String,
    /// Receives before a message moves there.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_receive_count: u64,
}

/// Which queues may use a queue as their dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedrivePermission {
    AllowAll,
    DenyAll,
    ByQueue,
}

/// Which queues may use this queue as their dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveAllow {
    pub permission: RedrivePermission,
    /// With `by_queue` only: 1-10 queue names.
    #[serde(default)]
    #[schema(max_items = 10)]
    pub source_queues: Vec<String>,
}

/// `null` (clear the setting) apart from an absent field (keep it).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The settings a create or an update names; an absent field keeps its value (or default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueAttributesChange {
    /// How long a message is kept (default 4 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 1_209_600)]
    pub retention_seconds: Option<u64>,
    /// How long a received message stays hidden (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 43_200)]
    pub visibility_timeout_seconds: Option<u64>,
    /// Delay of every message sent (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 900)]
    pub delay_seconds: Option<u64>,
    /// Largest message (body plus attribute names, types and values) the queue takes (default
    /// 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1024, maximum = 1_048_576)]
    pub maximum_message_bytes: Option<u64>,
    /// Long-poll wait of a receive that gives no `wait_seconds` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 20)]
    pub receive_wait_seconds: Option<u64>,
    /// FIFO queue: messages of a group are delivered in order, one in flight at a time, and
    /// sends are deduplicated for 5 minutes. Fixed at creation; defaults to whether the name ends
    /// with `.fifo`, and must agree with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fifo: Option<bool>,
    /// FIFO only: a send without `deduplication_id` is deduplicated by the SHA-256 of its body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_based_deduplication: Option<bool>,
    /// FIFO only (default `queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_scope: Option<DeduplicationScope>,
    /// FIFO only (default `per_queue`); `per_message_group_id` needs `deduplication_scope`
    /// `message_group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_limit: Option<ThroughputLimit>,
    /// Where a message goes after `max_receive_count` receives; `null` removes it.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DeadLetter>)]
    pub dead_letter: Option<Option<DeadLetter>>,
    /// Which queues may use this queue as their dead-letter queue; `null` (the default) allows
    /// all.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RedriveAllow>)]
    pub redrive_allow: Option<Option<RedriveAllow>>,
}

/// A queue's settings as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueAttributes {
    pub retention_seconds: u64,
    pub visibility_timeout_seconds: u64,
    pub delay_seconds: u64,
    pub maximum_message_bytes: u64,
    pub receive_wait_seconds: u64,
    pub fifo: bool,
    /// FIFO queues only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_based_deduplication: Option<bool>,
    /// FIFO queues only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_scope: Option<DeduplicationScope>,
    /// FIFO queues only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_limit: Option<ThroughputLimit>,
    /// Absent when the queue has no dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    /// Absent when every queue may use this one as its dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_allow: Option<RedriveAllow>,
}

/// A queue's tags: at most 50, keys of 1-128 characters, values of at most 256.
pub type Tags = BTreeMap<String, String>;

/// Creates a queue (idempotent with identical settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQueue {
    /// A FIFO queue's name ends with `.fifo`, and only a FIFO queue's.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$")]
    pub name: String,
    #[serde(default)]
    pub attributes: QueueAttributesChange,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl CreateQueue {
    /// A queue of this name with the default settings and no tags.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), attributes: QueueAttributesChange::default(), tags: BTreeMap::new() }
    }
}

/// A queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Queue {
    pub name: String,
    /// The queue's incarnation: a queue deleted and created again has a new one.
    pub queue_id: String,
    pub created_timestamp_ms: u64,
    pub last_modified_timestamp_ms: u64,
    pub attributes: QueueAttributes,
    pub tags: BTreeMap<String, String>,
    /// Visible messages (reading one queue only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximate_number_of_messages: Option<u64>,
    /// Messages in flight (reading one queue only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximate_number_of_messages_not_visible: Option<u64>,
    /// Delayed and scheduled messages (reading one queue only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximate_number_of_messages_delayed: Option<u64>,
}

/// Which queues to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQueuesQuery {
    /// Only queues whose names start with this.
    #[serde(default)]
    pub prefix: String,
    /// Queues per page (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub max_results: Option<u32>,
    /// The `next_token` of the page before.
    pub next_token: Option<String>,
}

/// A page of queues, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<Queue>,
    /// Set when more queues follow: pass it to get the next page.
    pub next_token: Option<String>,
}

/// How many messages a purge deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PurgeResult {
    pub purged: u64,
}

/// A scheduled message was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CancelResult {
    pub cancelled: bool,
}

/// A queue's tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSet {
    pub tags: BTreeMap<String, String>,
}

// ----------------------------------------------------------------------------- queue metrics

/// Which minutes of a queue's metrics to read: Unix seconds, `from` inclusive, `to` exclusive.
/// Without them, the last hour; at most 15 days, which is as long as minutes are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueMetricsQuery {
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// A queue's depth at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDepth {
    /// Messages ready to be received.
    pub visible: u64,
    /// Messages received and within their visibility timeout.
    pub in_flight: u64,
    /// Messages delayed or scheduled.
    pub delayed: u64,
    /// Seconds since the oldest message entered the queue (0 when it is empty).
    pub oldest_message_age_seconds: u64,
}

/// What happened to a queue in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueMinute {
    /// The minute's start, in Unix seconds.
    pub start: u64,
    pub sent: u64,
    /// Messages delivered.
    pub received: u64,
    pub deleted: u64,
    /// Receives that delivered nothing.
    pub empty_receives: u64,
    /// Messages moved to the dead-letter queue after their last receive.
    pub moved_to_dead_letter: u64,
    /// Bytes of the messages sent (bodies and attributes).
    pub bytes_in: u64,
    /// Bytes of the messages delivered.
    pub bytes_out: u64,
    /// The depth near the minute's end, when something happened in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<QueueDepth>,
}

/// A queue's metrics at one-minute resolution; minutes in which nothing happened are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueMetrics {
    /// Unix seconds: the first minute asked for.
    pub from: u64,
    /// Unix seconds: the end of the last minute asked for.
    pub to: u64,
    /// The depth now.
    pub now: QueueDepth,
    pub minutes: Vec<QueueMinute>,
}

// ----------------------------------------------------------------------------- message trace

/// What happened to one message, by its id, for its retention: every send, receive, visibility
/// change, delete and move, who made each call, and where the message is now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageTrace {
    pub message_id: String,
    /// The queue asked about.
    pub queue: String,
    /// In the order they happened, following the message into the queues it moved to.
    pub events: Vec<MessageEvent>,
    pub now: MessageNow,
}

/// One thing that happened to a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageEvent {
    /// Unix milliseconds (the queue's clock).
    pub at_ms: u64,
    /// The queue it happened in.
    pub queue: String,
    /// `sent`, `received`, `visibility_changed`, `returned` (a receive that could not be
    /// delivered was taken back), `deleted`, `moved_to`, `arrived_from`, `cancelled` (a
    /// scheduled message), `purged` (its queue).
    pub event: String,
    /// The credential of the call: an access key id, or `token:` and a fingerprint of the
    /// bearer token (absent for the service's own work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The request id the call was answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `received`: how many times it has been received, this time included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_count: Option<u32>,
    /// `received`, `visibility_changed`: when it becomes visible again (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_at_ms: Option<u64>,
    /// `moved_to`: where; `arrived_from`: from where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_queue: Option<String>,
    /// `moved_to`, `arrived_from`: a dead-letter move (received too often), not a move task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<bool>,
    /// `sent`: when a message scheduled for later is due (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<u64>,
}

/// Where a message is now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageNow {
    /// `visible`, `in_flight` (received, not yet visible again), `delayed` (not yet visible:
    /// a delay or a deliver-at time), `deleted`, `purged`, `cancelled`, or `expired` (gone with
    /// no call to explain it: its retention ran out, or its queue was deleted).
    pub state: String,
    /// The queue holding it, while one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// While held and not visible: when it becomes visible (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_at_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------- messages

/// A message attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageAttribute {
    /// `String`, `Number` or `Binary` (base64 value), optionally with a `.suffix`.
    #[serde(rename = "type")]
    pub data_type: String,
    pub value: String,
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// At most 1 MiB (with the attributes: at most the queue's `maximum_message_bytes`), of the
    /// characters SQS accepts (#x9, #xA, #xD, #x20-#xD7FF, #xE000-#xFFFD, #x10000-#x10FFFF).
    #[schema(min_length = 1)]
    pub body: String,
    /// At most 10, named by SQS's rule (1-256 of `A-Z a-z 0-9 _ - .`, no leading, trailing or
    /// double periods, no `AWS.` or `Amazon.` prefix).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, MessageAttribute>,
    /// Standard queues; the queue's delay when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 900)]
    pub delay_seconds: Option<u64>,
    /// Deliver at this unix time in milliseconds, at most one year ahead; a time already passed
    /// delivers at once; not with `delay_seconds`; standard queues only. The message id returned
    /// then carries this time, and the message can be cancelled by it until due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<u64>,
    /// FIFO queues (required there, refused elsewhere): letters, digits and punctuation. A FIFO
    /// message takes the queue's delay, not `delay_seconds` or `deliver_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub group_id: Option<String>,
    /// FIFO queues: a send with an id seen in the last 5 minutes is accepted and not stored
    /// again; required unless the queue has `content_based_deduplication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub deduplication_id: Option<String>,
}

impl NewMessage {
    /// A message of this body with nothing else set.
    pub fn new(body: impl Into<String>) -> Self {
        Self { body: body.into(), ..Self::default() }
    }
}

/// Sends 1-10 messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessages {
    #[schema(min_items = 1, max_items = 10)]
    pub messages: Vec<NewMessage>,
}

/// A message stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SentMessage {
    pub message_id: String,
    /// FIFO queues: the message's place in its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
}

/// The messages stored, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SendResult {
    pub messages: Vec<SentMessage>,
}

/// Receives messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Receive {
    /// Most messages to answer (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10)]
    pub max_messages: Option<u32>,
    /// Long-poll wait; the queue's `receive_wait_seconds` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 20)]
    pub wait_seconds: Option<u64>,
    /// How long the messages stay hidden; the queue's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 43_200)]
    pub visibility_timeout_seconds: Option<u64>,
    /// FIFO queues: a retry with the same id within 5 minutes answers the same messages
    /// (ignored by standard queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub attempt_id: Option<String>,
}

/// A message received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReceivedMessage {
    pub message_id: String,
    /// Deletes the message or changes its visibility, until it is received again.
    pub receipt_handle: String,
    pub body: String,
    pub attributes: BTreeMap<String, MessageAttribute>,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    pub sent_timestamp_ms: u64,
    pub first_receive_timestamp_ms: u64,
    /// FIFO queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// FIFO queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_id: Option<String>,
    /// FIFO queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
    /// The trace context of the call that sent the message, when that call was traced and
    /// sampled (AWS X-Ray format, as SQS's `AWSTraceHeader`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_header: Option<String>,
}

/// The messages received (none when the wait ended empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReceiveResult {
    pub messages: Vec<ReceivedMessage>,
}

/// Deletes 1-10 received messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteMessages {
    #[schema(min_items = 1, max_items = 10)]
    pub receipt_handles: Vec<String>,
}

/// The outcome of one delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeleteOutcome {
    pub ok: bool,
    /// Why this delete failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// One outcome per receipt handle, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeleteResult {
    pub results: Vec<DeleteOutcome>,
}

/// Changes how long a received message stays hidden, from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeVisibility {
    pub receipt_handle: String,
    #[schema(maximum = 43_200)]
    pub visibility_timeout_seconds: u64,
}

// ------------------------------------------------------------------------------ dead letters

/// A page of listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next_token` of the page before.
    pub next_token: Option<String>,
}

/// The queues that use a queue as their dead-letter queue (at most 1000 a page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterSources {
    pub queues: Vec<String>,
    /// Set when more queues follow.
    pub next_token: Option<String>,
}

/// Starts moving a dead-letter queue's messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMoveTask {
    /// Where the messages go; by default the dead-letter queue's only source queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$")]
    pub destination: Option<String>,
    /// Pace (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 500)]
    pub max_messages_per_second: Option<u64>,
}

/// A move task started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MoveTaskStarted {
    pub task_id: String,
}

/// Where a move task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveTaskStatus {
    Running,
    Completed,
    Cancelled,
    Failed,
}

/// A move task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MoveTask {
    pub task_id: String,
    pub status: MoveTaskStatus,
    pub source: String,
    pub destination: String,
    pub max_messages_per_second: u32,
    pub moved: u64,
    pub to_move: u64,
    pub started_timestamp_ms: u64,
    /// Why a failed task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// A dead-letter queue's move tasks, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MoveTaskList {
    pub tasks: Vec<MoveTask>,
}

/// A move task cancelled: how many messages it had moved (they stay moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MoveTaskCancelled {
    pub moved: u64,
}

// ------------------------------------------------------------------------------- access keys

/// Whether an access key works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Revoked,
}

/// An access key of the SQS-compatible API (AWS SigV4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessKey {
    pub access_key_id: String,
    /// Only in the answers to create and rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    pub created_timestamp_ms: u64,
    pub status: KeyStatus,
    /// When the key stops or stopped working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_timestamp_ms: Option<u64>,
}

/// A tenant's access keys (without secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessKeyList {
    pub access_keys: Vec<AccessKey>,
}

/// Replaces an access key by a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working (default 0: it stops at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 604_800)]
    pub grace_seconds: Option<u64>,
}

// ------------------------------------------------------------------------------------ limits

/// Rate and size limits of a tenant; 0 means none of that kind (in overrides: the plan's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    pub requests_per_second: u64,
    pub payload_bytes_per_second: u64,
    pub queues_max: u64,
    pub in_flight_messages_max: u64,
    /// Bytes of messages (bodies and attributes, scheduled ones included) the tenant's queues
    /// may hold together; sends are refused while they hold more.
    pub stored_bytes_max: u64,
}

/// A tenant's limits: its plan, its own overrides and what applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LimitsInfo {
    pub tenant: String,
    pub plan: String,
    pub overrides: TenantLimits,
    /// The overrides over the plan (or over the plan named `default` when the tenant names none).
    pub effective: TenantLimits,
    /// Not empty while the tenant's calls are refused: why (a billing hard cap reached).
    pub capped_reason: String,
}

/// The operators' admin API (its own listener and token audience; not in `openapi.json`).
pub mod admin {
    use serde::{Deserialize, Serialize};

    use super::{QueueDepth, TenantLimits};

    /// A tenant, as an operator's listing shows it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantSummary {
        pub tenant: String,
        pub created_ms: u64,
        /// Its queues.
        pub queues: u64,
    }

    /// A page of tenants, by id.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantList {
        pub tenants: Vec<TenantSummary>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next_token: Option<String>,
    }

    /// Messages through a queue (or a tenant's queues) in the last whole minute.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LastMinute {
        pub sent: u64,
        pub received: u64,
        pub deleted: u64,
        pub empty_receives: u64,
    }

    /// One of a tenant's queues, with its depth, stored bytes and last minute.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantQueue {
        pub name: String,
        pub shard_id: u64,
        pub depth: QueueDepth,
        pub stored_bytes: u64,
        pub last_minute: LastMinute,
    }

    /// A page of a tenant's queues, by name, and the page's totals.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantQueues {
        pub tenant: String,
        pub queues: Vec<TenantQueue>,
        /// Summed over this page's queues.
        pub totals: TenantTotals,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next_token: Option<String>,
    }

    /// A tenant's figures summed over queues.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantTotals {
        pub queues: u64,
        /// Messages held: visible, in flight and delayed.
        pub messages: u64,
        pub stored_bytes: u64,
        pub last_minute: LastMinute,
    }

    /// A storage node as metadata knows it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StorageNode {
        pub node_id: String,
        pub address: String,
        pub zone: String,
        pub capacity_bytes: u64,
        pub live: bool,
        pub registered_ms: u64,
        /// The newest format generation this node's build can read and write.
        pub format_generation_max: u32,
        /// Draining since this time (`strata cluster drain-node`); absent when not draining.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub drain_started_ms: Option<u64>,
        /// How many shards it holds a replica of.
        #[serde(default)]
        pub shards: u32,
    }

    /// The storage nodes and the cluster's format generation.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StorageNodeList {
        pub storage_nodes: Vec<StorageNode>,
        pub format_generation: u32,
    }

    /// A replica of a shard.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Replica {
        pub node_id: String,
        pub address: String,
    }

    /// A shard: its writer and replicas.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Shard {
        pub shard_id: u64,
        pub writer: String,
        pub writer_epoch: u64,
        pub replicas: Vec<Replica>,
        /// Nodes being moved out of the shard's group.
        pub leaving: Vec<String>,
    }

    /// Moves a replica of a shard to another storage node.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MoveReplica {
        pub from_node: String,
        pub to_node: String,
    }

    /// Adds a shard on the least loaded live storage nodes.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AddShard {
        /// Replicas of the new shard; as many as shard 1 has when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub replicas: Option<u32>,
    }

    /// Hands a shard's leadership to the replica on another storage node.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TransferLeader {
        pub to_node: String,
    }

    /// Who leads a shard after a leadership transfer: the node asked for, or the replica
    /// leadership fell back to when that one did not take over in time.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LeaderTransferred {
        pub shard_id: u64,
        pub leader_node: String,
    }

    /// Where a queue lives: its shard, and how many times it moved between shards.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct QueuePlacement {
        pub tenant: String,
        pub name: String,
        pub queue_id: u64,
        pub shard_id: u64,
        pub epoch: u64,
    }

    /// Moves a queue to another shard.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MoveQueue {
        pub to_shard: u64,
    }

    /// A queue's move between shards, under way or ended.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct QueueMove {
        pub move_id: u64,
        pub tenant: String,
        pub name: String,
        pub queue_id: u64,
        pub from_shard: u64,
        pub to_shard: u64,
        /// `started`, `switched`, `rolling back` (under way), `completed` or `rolled back`.
        pub phase: String,
        /// Why it rolls or rolled back.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub reason: String,
        pub started_ms: u64,
        /// When routing switched to the target (0: not yet, or never).
        #[serde(default)]
        pub switched_ms: u64,
        /// When it ended (0: under way).
        #[serde(default)]
        pub finished_ms: u64,
        /// How long calls on the queue waited (ended moves).
        #[serde(default)]
        pub paused_ms: u64,
        /// Bytes of state and bodies copied to the target (ended moves).
        #[serde(default)]
        pub bytes_moved: u64,
    }

    impl QueueMove {
        pub fn is_under_way(&self) -> bool {
            self.finished_ms == 0
        }
    }

    /// The last finished moves, oldest first, then those under way.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct QueueMoves {
        pub moves: Vec<QueueMove>,
    }

    /// Splits a shard: a new shard takes some of its queues.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SplitShard {
        /// How many of its queues move; half of them when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub queues: Option<u32>,
    }

    /// A split under way: the new shard and the moves of queues to it, as started.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ShardSplit {
        pub shard: Shard,
        pub moves: Vec<QueueMove>,
        /// Queues whose move could not start (another operation holds them, say), with why.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub refused: Vec<String>,
    }

    /// A member of the metadata quorum.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MetadataMember {
        pub node_id: u64,
        pub address: String,
    }

    /// The metadata quorum.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MetadataMembers {
        pub members: Vec<MetadataMember>,
        pub leader_id: u64,
        /// Each member as the leader sees it.
        #[serde(default)]
        pub health: Vec<MemberHealth>,
    }

    /// A metadata member as the quorum's leader sees it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MemberHealth {
        pub node_id: u64,
        /// `leader`, `live` (acknowledged the leader within a second) or `unreachable`.
        pub state: String,
        /// Milliseconds since the member last acknowledged the leader; absent: not since this
        /// leader was elected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_contact_ms: Option<u64>,
        /// Log entries the member is known to lack; absent: not known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub lag_entries: Option<u64>,
    }

    /// Adds members (running, caught up first) to the metadata quorum and removes others.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ChangeMembers {
        #[serde(default)]
        pub add: Vec<MetadataMember>,
        #[serde(default)]
        pub remove: Vec<u64>,
    }

    /// Sets a tenant's plan and overrides.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SetTenantLimits {
        /// A limits plan (empty or absent: the plan named `default`, if any).
        #[serde(default)]
        pub plan: String,
        #[serde(default)]
        pub overrides: TenantLimits,
    }

    /// A named set of limits tenants can be put on.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LimitPlan {
        pub name: String,
        pub limits: TenantLimits,
    }

    /// Every limits plan.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LimitPlanList {
        pub limit_plans: Vec<LimitPlan>,
    }
}
