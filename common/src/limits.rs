//! Service-wide limits, each a named constant with where its number comes from.
//! Queue-semantics limits (retention, visibility, batch sizes) live with the queue state machine
//! in the storage node; these are the ones every component enforces the same way.

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
