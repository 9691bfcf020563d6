//! Service-wide limits, each a named constant with where its number comes from. Every front door
//! and the queue state machine check against these same constants (DESIGN.md §10).

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Shortest retention period: one minute (SQS `MessageRetentionPeriod` minimum).
pub const RETENTION_MS_MIN: u64 = MINUTE_MS;
/// Longest retention period: 14 days (SQS maximum).
pub const RETENTION_MS_MAX: u64 = 14 * DAY_MS;
/// Retention period of a queue created without one: 4 days (SQS default).
pub const RETENTION_MS_DEFAULT: u64 = 4 * DAY_MS;
/// Longest visibility timeout, for the queue default, a receive override and a visibility change
/// alike: 12 hours (SQS maximum).
pub const VISIBILITY_TIMEOUT_MS_MAX: u64 = 12 * HOUR_MS;
/// Visibility timeout of a queue created without one: 30 seconds (SQS default).
pub const VISIBILITY_TIMEOUT_MS_DEFAULT: u64 = 30 * SECOND_MS;
/// Longest delivery delay, per queue or per message: 15 minutes (SQS maximum).
pub const DELAY_MS_MAX: u64 = 15 * MINUTE_MS;
/// Latest deliver-at time a native-API send may ask for: one year ahead.
pub const DELIVER_AHEAD_MS_MAX: u64 = 365 * DAY_MS;
/// Longest request id (the id a proposer keeps across retries of one call).
pub const REQUEST_ID_CHARS_MAX: usize = 64;
/// Most messages one Receive returns (SQS `MaxNumberOfMessages` maximum).
pub const RECEIVE_BATCH_MAX: u32 = 10;
/// Most messages in one Send (SQS batch maximum).
pub const SEND_BATCH_MAX: usize = 10;
/// Most receipts in one Delete (SQS batch maximum).
pub const DELETE_BATCH_MAX: usize = 10;
/// Most attributes on one message. SQS allows 10; we allow a few more.
pub const MESSAGE_ATTRIBUTES_MAX: usize = 16;

/// Largest message body: 1 MiB, SQS's current maximum (DESIGN.md §10).
pub const MESSAGE_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Largest message counting attributes: body plus attribute names and values may not exceed it.
pub const MESSAGE_TOTAL_BYTES_MAX: usize = MESSAGE_BODY_BYTES_MAX + 64 * 1024;

/// Largest HTTP request body the proxy accepts: a batch of 10 maximal messages, JSON-escaped
/// (worst case roughly 1.4x for base64 or escaped text), plus envelope.
pub const HTTP_REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest gRPC message between components: one full batch plus framing.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 24 * 1024 * 1024;

/// Longest long poll (SQS's WaitTimeSeconds maximum).
pub const LONG_POLL_MS_MAX: u64 = 20_000;

/// Queues listed per page at most.
pub const LIST_QUEUES_PAGE_MAX: u32 = 1000;

/// HTTP/2 flow-control windows between components. The defaults (64 KiB) make a batch of ten
/// 1 KiB messages from each of many concurrent requests stall on WINDOW_UPDATE round trips.
pub const GRPC_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
pub const GRPC_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// How long a storage node's heartbeat keeps it live in metadata.
pub const LEASE_MS: u64 = 10_000;
/// How often a storage node heartbeats: several times per lease, so one lost heartbeat is no
/// expiry.
pub const HEARTBEAT_INTERVAL_MS: u64 = LEASE_MS / 4;

/// Most tags on one queue (SQS's limit).
pub const QUEUE_TAGS_MAX: usize = 50;
/// Longest tag key and value, in characters (SQS's limits).
pub const TAG_KEY_CHARS_MAX: usize = 128;
pub const TAG_VALUE_CHARS_MAX: usize = 256;
