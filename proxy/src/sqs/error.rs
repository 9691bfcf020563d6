//! SQS errors: the code SDKs switch on, the HTTP status, and who is at fault.
//!
//! On the JSON protocol an error is `{"__type": "com.amazonaws.sqs#<Code>", "message": ...}` plus
//! the header `x-amzn-query-error: <query code>;Sender|Receiver`, from which SDKs recover the
//! query-protocol code (for example `AWS.SimpleQueueService.NonExistentQueue`), as SQS sends it.

use strata_common::error::{ErrorKind, StrataError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsError {
    /// The JSON-protocol code (the modeled exception's name, or a common AWS code).
    pub code: &'static str,
    /// The query-protocol code.
    pub query_code: &'static str,
    pub status: u16,
    pub sender_fault: bool,
    pub message: String,
    /// Seconds after which a throttled call may be retried (`Retry-After`).
    pub retry_after_s: Option<u64>,
}

macro_rules! constructors {
    ($($fn_name:ident => ($code:literal, $query_code:literal, $status:literal);)*) => {
        impl SqsError {
            $(
                pub fn $fn_name(message: impl Into<String>) -> Self {
                    Self { code: $code, query_code: $query_code, status: $status, sender_fault: $status < 500, message: message.into(), retry_after_s: None }
                }
            )*
        }
    };
}

constructors! {
    queue_does_not_exist => ("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", 400);
    queue_name_exists => ("QueueNameExists", "QueueAlreadyExists", 400);
    invalid_parameter_value => ("InvalidParameterValue", "InvalidParameterValue", 400);
    missing_parameter => ("MissingParameter", "MissingParameter", 400);
    invalid_attribute_name => ("InvalidAttributeName", "InvalidAttributeName", 400);
    invalid_attribute_value => ("InvalidAttributeValue", "InvalidAttributeValue", 400);
    invalid_message_contents => ("InvalidMessageContents", "InvalidMessageContents", 400);
    receipt_handle_is_invalid => ("ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid", 400);
    message_not_inflight => ("MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight", 400);
    empty_batch_request => ("EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest", 400);
    too_many_entries => ("TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest", 400);
    batch_entry_ids_not_distinct => ("BatchEntryIdsNotDistinct", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct", 400);
    invalid_batch_entry_id => ("InvalidBatchEntryId", "AWS.SimpleQueueService.InvalidBatchEntryId", 400);
    batch_request_too_long => ("BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong", 400);
    unsupported_operation => ("UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation", 400);
    over_limit => ("OverLimit", "OverLimit", 403);
    invalid_action => ("InvalidAction", "InvalidAction", 400);
    malformed_request => ("SerializationException", "MalformedQueryString", 400);
    access_denied => ("AccessDenied", "AccessDenied", 403);
    throttled => ("RequestThrottled", "RequestThrottled", 400);
    service_unavailable => ("ServiceUnavailable", "ServiceUnavailable", 503);
    internal_error => ("InternalError", "InternalError", 500);
}

impl SqsError {
    /// A client error whose code is the same on both protocols (`InvalidClientTokenId`,
    /// `SignatureDoesNotMatch`, `RequestExpired`, `MissingAction`, ...).
    pub fn auth(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self { code, query_code: code, status, sender_fault: true, message: message.into(), retry_after_s: None }
    }

    pub fn missing(parameter: &str) -> Self {
        Self::missing_parameter(format!("The request must contain the parameter {parameter}."))
    }

    pub fn no_such_queue() -> Self {
        Self::queue_does_not_exist("The specified queue does not exist.")
    }
}

impl From<StrataError> for SqsError {
    fn from(e: StrataError) -> Self {
        match e.kind {
            ErrorKind::QueueNotFound => Self::no_such_queue(),
            ErrorKind::QueueAlreadyExists => {
                Self::queue_name_exists("A queue already exists with the same name and different attributes.")
            }
            // The SQS API neither cancels scheduled messages nor traces messages; the kinds are
            // listed for completeness.
            ErrorKind::InvalidParameter
            | ErrorKind::TooLarge
            | ErrorKind::AccessKeyNotFound
            | ErrorKind::ScheduledMessageNotFound
            | ErrorKind::MessageNotFound => Self::invalid_parameter_value(e.message),
            ErrorKind::UnknownRoute => Self::invalid_action("The request names no action of this endpoint."),
            ErrorKind::IdempotencyConflict => Self::invalid_parameter_value(
                "This request id (x-strata-request-id, or the SDK's amz-sdk-invocation-id) was used by a different \
                 request; nothing was sent. Use a new id for a new request.",
            ),
            ErrorKind::InvalidReceipt | ErrorKind::StaleReceipt => Self::receipt_handle_is_invalid(e.message),
            ErrorKind::LimitExceeded => Self::over_limit(e.message),
            ErrorKind::MessageNotInFlight => Self::message_not_inflight(e.message),
            ErrorKind::Unauthenticated => Self::access_denied(e.message),
            ErrorKind::Throttled => Self { retry_after_s: e.retry_after_s, ..Self::throttled(e.message) },
            // SDKs retry a 503 by themselves.
            ErrorKind::InsufficientStorage => {
                Self { retry_after_s: e.retry_after_s, ..Self::service_unavailable(e.message) }
            }
            // A move that outlasted the proxy's wait: SDKs retry a 503 by themselves.
            ErrorKind::QueueMoving => Self::service_unavailable(e.message),
            // The detail (a shard, a peer's address or error, a file) is logged, not answered.
            ErrorKind::Unavailable => {
                tracing::warn!(message = %e.message, "unavailable answered on the SQS API");
                Self::service_unavailable("The service is unavailable. Please try again shortly.")
            }
            ErrorKind::Internal => {
                tracing::error!(message = %e.message, "internal error answered on the SQS API");
                Self::internal_error("We encountered an internal error. Please try again.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_and_internal_errors_answer_without_their_detail() {
        let detail = "shard 7: a replica at 10.0.0.9:7101 did not answer; /var/lib/strata/shard-7";
        for e in [StrataError::unavailable(detail), StrataError::internal(detail)] {
            let answer = SqsError::from(e);
            assert!(!answer.message.contains("10.0.0.9") && !answer.message.contains("shard"), "{answer:?}");
            assert!(answer.status >= 500 && !answer.sender_fault);
        }
        assert!(SqsError::from(StrataError::invalid("MaxNumberOfMessages must be 1-10")).message.contains("1-10"));
    }
}
