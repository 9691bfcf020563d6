//! The public error vocabulary.
//!
//! Every crate keeps a precise internal error enum and maps it, with an exhaustive `match`, onto
//! the small, stable [`ErrorKind`] that tenants see (as a JSON `code` on the HTTP API) and that
//! crosses component boundaries (as a gRPC status plus the `x-strata-error` metadata key).
//! Codes are append-only: a client may switch on them.

use std::fmt;

/// gRPC metadata key carrying the stable error code.
pub const ERROR_CODE_METADATA_KEY: &str = "x-strata-error";

/// The stable, public classification of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The queue does not exist (or belongs to another tenant: the answer is the same).
    QueueNotFound,
    /// A queue with this name already exists with different attributes.
    QueueAlreadyExists,
    /// A request parameter is missing or out of range.
    InvalidParameter,
    /// A receipt handle is malformed, for another queue, or no longer current.
    InvalidReceipt,
    /// A message or request exceeds a size limit.
    TooLarge,
    /// The credential is missing, malformed, expired or not valid for this service.
    Unauthenticated,
    /// The tenant is over a quota; retry later.
    Throttled,
    /// The service cannot take the request now (leader change, shutting down); retry.
    Unavailable,
    /// A bug or an unexpected failure on our side.
    Internal,
    /// The access key does not exist (or belongs to another tenant: the answer is the same).
    AccessKeyNotFound,
    /// A per-tenant count limit (queues, access keys, tags) would be exceeded.
    LimitExceeded,
    /// A visibility change for a message that is not in flight (deleted, expired, or its
    /// visibility timeout already ran out).
    MessageNotInFlight,
    /// The receipt is well formed but no longer the message's latest: it was received again
    /// since, or moved to another queue (a dead-letter move, a move task). The message is left
    /// as it is.
    StaleReceipt,
    /// No message with this id waits for its deliver-at time on the queue (never scheduled, due
    /// already, or cancelled).
    ScheduledMessageNotFound,
    /// The queue holds no record of a message with this id (never sent to it, or its trace is
    /// past its keeping).
    MessageNotFound,
    /// A request id was used before by a different request; nothing was done.
    IdempotencyConflict,
    /// No route has this method and path.
    UnknownRoute,
    /// The storage holding the queue is low on disk space: it takes no new messages or queues
    /// until space returns (by itself); receives and deletes go on. Retry later.
    InsufficientStorage,
    /// The queue is moving to another shard for a moment: retry (proxies do, at its new shard;
    /// a tenant sees it only when a move outlasts the proxy's wait, as a retryable 503).
    QueueMoving,
}

impl ErrorKind {
    /// Every kind, for exhaustive tests of mappings.
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::QueueNotFound,
        ErrorKind::QueueAlreadyExists,
        ErrorKind::InvalidParameter,
        ErrorKind::InvalidReceipt,
        ErrorKind::TooLarge,
        ErrorKind::Unauthenticated,
        ErrorKind::Throttled,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::AccessKeyNotFound,
        ErrorKind::LimitExceeded,
        ErrorKind::MessageNotInFlight,
        ErrorKind::StaleReceipt,
        ErrorKind::ScheduledMessageNotFound,
        ErrorKind::MessageNotFound,
        ErrorKind::IdempotencyConflict,
        ErrorKind::UnknownRoute,
        ErrorKind::InsufficientStorage,
        ErrorKind::QueueMoving,
    ];

    /// The stable code string shown to tenants.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::QueueNotFound => "QueueNotFound",
            ErrorKind::QueueAlreadyExists => "QueueAlreadyExists",
            ErrorKind::InvalidParameter => "InvalidParameter",
            ErrorKind::InvalidReceipt => "InvalidReceipt",
            ErrorKind::TooLarge => "TooLarge",
            ErrorKind::Unauthenticated => "Unauthenticated",
            ErrorKind::Throttled => "Throttled",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::Internal => "Internal",
            ErrorKind::AccessKeyNotFound => "AccessKeyNotFound",
            ErrorKind::LimitExceeded => "LimitExceeded",
            ErrorKind::MessageNotInFlight => "MessageNotInFlight",
            ErrorKind::StaleReceipt => "StaleReceipt",
            ErrorKind::ScheduledMessageNotFound => "ScheduledMessageNotFound",
            ErrorKind::MessageNotFound => "MessageNotFound",
            ErrorKind::IdempotencyConflict => "IdempotencyConflict",
            ErrorKind::UnknownRoute => "UnknownRoute",
            ErrorKind::InsufficientStorage => "InsufficientStorage",
            ErrorKind::QueueMoving => "QueueMoving",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The HTTP status a front door answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::QueueNotFound
            | ErrorKind::AccessKeyNotFound
            | ErrorKind::ScheduledMessageNotFound
            | ErrorKind::MessageNotFound
            | ErrorKind::UnknownRoute => 404,
            ErrorKind::QueueAlreadyExists | ErrorKind::IdempotencyConflict => 409,
            ErrorKind::InvalidParameter
            | ErrorKind::InvalidReceipt
            | ErrorKind::LimitExceeded
            | ErrorKind::MessageNotInFlight
            | ErrorKind::StaleReceipt => 400,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Throttled => 429,
            ErrorKind::Unavailable | ErrorKind::QueueMoving => 503,
            ErrorKind::Internal => 500,
            ErrorKind::InsufficientStorage => 507,
        }
    }

    fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::QueueNotFound
            | ErrorKind::AccessKeyNotFound
            | ErrorKind::ScheduledMessageNotFound
            | ErrorKind::MessageNotFound => tonic::Code::NotFound,
            ErrorKind::QueueAlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::InvalidParameter | ErrorKind::InvalidReceipt | ErrorKind::StaleReceipt => {
                tonic::Code::InvalidArgument
            }
            ErrorKind::TooLarge => tonic::Code::OutOfRange,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::Throttled | ErrorKind::InsufficientStorage => tonic::Code::ResourceExhausted,
            ErrorKind::LimitExceeded | ErrorKind::MessageNotInFlight | ErrorKind::IdempotencyConflict => {
                tonic::Code::FailedPrecondition
            }
            ErrorKind::Unavailable | ErrorKind::QueueMoving => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
            ErrorKind::UnknownRoute => tonic::Code::Unimplemented,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An error with its public kind and a message a tenant can act on (never internal detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StrataError {
    pub kind: ErrorKind,
    pub message: String,
    /// With `Unavailable` from a replica that does not lead: the leader's address, when known.
    /// Internal (between components); never shown to tenants.
    pub leader_hint: Option<String>,
    /// With `Throttled`: when a retry may succeed, in whole seconds (HTTP `Retry-After`).
    pub retry_after_s: Option<u64>,
}

/// gRPC metadata key carrying [`StrataError::leader_hint`] (the metadata quorum's members use it
/// too, on answers without an error kind).
pub const LEADER_HINT_METADATA_KEY: &str = "x-strata-leader";

/// gRPC metadata key with which a metadata member says why it did not take a call although it
/// answered: [`QUORUM_ELECTING`] (no leader yet; wait) or [`QUORUM_LOST`] (no majority reachable
/// for a while; another member may still reach one). A transport failure carries neither.
pub const QUORUM_METADATA_KEY: &str = "x-strata-quorum";
/// [`QUORUM_METADATA_KEY`]: an election is under way or the leader is unknown for a moment.
pub const QUORUM_ELECTING: &str = "electing";
/// [`QUORUM_METADATA_KEY`]: this member has reached no majority for longer than an election takes.
pub const QUORUM_LOST: &str = "lost";

/// The words, public, with which an `Unavailable` error says that the metadata quorum cannot take
/// calls (lost its majority, or no member answers). Callers see this much of the message; the
/// detail after it (members, how long) goes to the log.
pub const METADATA_UNAVAILABLE_MESSAGE: &str = "the service's metadata quorum is unavailable: queues cannot be \
    created, changed or deleted, nor access keys or limits, until it recovers (sends and receives to existing \
    queues go on); retry later";

impl StrataError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), leader_hint: None, retry_after_s: None }
    }

    /// Over a rate quota; a retry after `retry_after_s` seconds may succeed.
    pub fn throttled(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self { retry_after_s: Some(retry_after_s), ..Self::new(ErrorKind::Throttled, message) }
    }

    /// A replica that does not lead answers this; `leader` is where to go instead, if known.
    pub fn not_leader(what: &str, leader: Option<String>) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            message: format!("this replica does not lead {what}; retry at the leader"),
            leader_hint: leader,
            retry_after_s: None,
        }
    }

    pub fn queue_not_found(name: &str) -> Self {
        Self::new(ErrorKind::QueueNotFound, format!("queue '{name}' does not exist"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameter, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// The public form of an internal failure of `kind`: only `what`, fixed words of the crate
    /// that failed (no runtime value can reach it), with a retry hint when it is `Unavailable`.
    /// The caller logs the detail.
    pub fn concealed(kind: ErrorKind, what: &'static str) -> Self {
        let message = if kind == ErrorKind::Unavailable { format!("{what}; retry") } else { what.to_owned() };
        Self::new(kind, message)
    }

    /// Low on disk space: new messages are refused until space returns.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: Some(INSUFFICIENT_STORAGE_RETRY_AFTER_S),
            ..Self::new(ErrorKind::InsufficientStorage, message)
        }
    }
}

/// How long a caller refused for low disk space is told to wait before retrying.
pub const INSUFFICIENT_STORAGE_RETRY_AFTER_S: u64 = 5;

impl From<StrataError> for tonic::Status {
    fn from(e: StrataError) -> Self {
        let mut status = tonic::Status::new(e.kind.grpc_code(), e.message);
        if let Ok(value) = e.kind.code().parse() {
            status.metadata_mut().insert(ERROR_CODE_METADATA_KEY, value);
        }
        if let Some(value) = e.leader_hint.and_then(|leader| leader.parse().ok()) {
            status.metadata_mut().insert(LEADER_HINT_METADATA_KEY, value);
        }
        status
    }
}

impl From<tonic::Status> for StrataError {
    /// A status from a Strata server carries its code; anything else (transport failures,
    /// timeouts) is reported as unavailable so callers retry rather than blame the tenant.
    fn from(status: tonic::Status) -> Self {
        let kind =
            status.metadata().get(ERROR_CODE_METADATA_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorKind::from_code);
        let mut error = match kind {
            Some(ErrorKind::InsufficientStorage) => StrataError::insufficient_storage(status.message()),
            Some(kind) => StrataError::new(kind, status.message()),
            None => StrataError::unavailable(format!("internal call failed: {}", status.message())),
        };
        error.leader_hint =
            status.metadata().get(LEADER_HINT_METADATA_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
            assert!(seen.insert(kind.code()));
        }
    }

    #[test]
    fn grpc_round_trip_keeps_kind_and_message() {
        for kind in ErrorKind::ALL {
            let status: tonic::Status = StrataError::new(kind, "m").into();
            let back = StrataError::from(status);
            assert_eq!((back.kind, back.message.as_str()), (kind, "m"));
        }
        // A low-disk refusal keeps telling the caller when to retry across the hop.
        let status: tonic::Status = StrataError::insufficient_storage("m").into();
        assert_eq!(StrataError::from(status).retry_after_s, Some(INSUFFICIENT_STORAGE_RETRY_AFTER_S));
        let foreign = StrataError::from(tonic::Status::internal("boom"));
        assert_eq!(foreign.kind, ErrorKind::Unavailable);
    }
}
