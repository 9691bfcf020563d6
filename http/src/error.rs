//! HTTP error responses: `{"error": {"code": "...", "message": "..."}}` with the status of the
//! error's kind. Codes are the stable [`ErrorKind`] codes; messages never carry internal detail:
//! the message of an `Internal` or `Unavailable` error (which may name a shard, a peer's
//! address, a file or a peer's error) goes to the log, and the caller gets a fixed one (one of
//! two for `Unavailable`: the metadata quorum's loss has its own words, as it lasts).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use strata_common::error::{ErrorKind, METADATA_UNAVAILABLE_MESSAGE, StrataError};

/// An error answered to a tenant.
#[derive(Debug)]
pub struct ApiError(pub StrataError);

impl From<StrataError> for ApiError {
    fn from(e: StrataError) -> Self {
        Self(e)
    }
}

/// What a caller is told of an internal error.
pub const INTERNAL_ERROR_MESSAGE: &str =
    "the service failed to complete the request; retry, and report it if it persists";

/// What a caller is told when the service cannot take a request now.
pub const UNAVAILABLE_MESSAGE: &str = "the service cannot take this request now (a leader change, a restart or \
    a lost connection); retry shortly. A send retried with the same x-strata-request-id is stored once";

/// The message a caller may see for an error of `kind` whose message is `message`: the message
/// itself, or for the kinds that carry internal detail a fixed text (the detail is logged here).
pub fn public_message(kind: ErrorKind, message: String) -> String {
    match kind {
        ErrorKind::Internal => {
            tracing::error!(%message, "internal error answered to a caller");
            INTERNAL_ERROR_MESSAGE.to_owned()
        }
        ErrorKind::Unavailable => {
            tracing::warn!(%message, "unavailable answered to a caller");
            match message.starts_with(METADATA_UNAVAILABLE_MESSAGE) {
                true => METADATA_UNAVAILABLE_MESSAGE.to_owned(),
                false => UNAVAILABLE_MESSAGE.to_owned(),
            }
        }
        _ => message,
    }
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self(StrataError::invalid(message))
    }
}

/// Longest text of a framework answer carried into a JSON error.
const FRAMEWORK_MESSAGE_CHARS_MAX: usize = 300;

/// Middleware (`axum::middleware::map_response`) that turns the error answers the web framework
/// makes itself (a method a path does not take, a path that is not UTF-8, a body over its limit)
/// into JSON errors of the same status with a stable code, like every other error.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let kind = match status {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => ErrorKind::UnknownRoute,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        StatusCode::UNAUTHORIZED => ErrorKind::Unauthenticated,
        StatusCode::TOO_MANY_REQUESTS => ErrorKind::Throttled,
        StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable,
        s if s.is_server_error() => ErrorKind::Internal,
        _ => ErrorKind::InvalidParameter,
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4 * FRAMEWORK_MESSAGE_CHARS_MAX).await.unwrap_or_default();
    let text: String = String::from_utf8_lossy(&text).chars().take(FRAMEWORK_MESSAGE_CHARS_MAX).collect();
    let message = match (kind, text.is_empty()) {
        (ErrorKind::UnknownRoute, _) if status == StatusCode::METHOD_NOT_ALLOWED => {
            "this path does not take this method; see /openapi.json".to_owned()
        }
        (ErrorKind::UnknownRoute, _) => "no such route; see /openapi.json".to_owned(),
        (_, true) => status.canonical_reason().unwrap_or("error").to_owned(),
        (_, false) => text,
    };
    let message = public_message(kind, message);
    let mut answer = (status, Json(json!({ "error": { "code": kind.code(), "message": message } }))).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        answer.headers_mut().insert(header::ALLOW, allow.clone());
    }
    answer
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let StrataError { kind, message, retry_after_s, .. } = self.0;
        let message = public_message(kind, message);
        let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response =
            (status, Json(json!({ "error": { "code": kind.code(), "message": message } }))).into_response();
        if let Some(seconds) = retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status and body text of `e` as answered.
    async fn answered(e: StrataError) -> (StatusCode, String) {
        let response = ApiError(e).into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn internal_and_unavailable_errors_answer_without_their_detail() {
        let detail = "shard 3: reading /var/lib/strata/shard-3/state.snap from 10.0.0.7:9000 failed";
        let hidden = [
            (StrataError::internal(detail), StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR_MESSAGE),
            (StrataError::unavailable(detail), StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE),
            (
                StrataError::unavailable(format!("{METADATA_UNAVAILABLE_MESSAGE}. {detail}")),
                StatusCode::SERVICE_UNAVAILABLE,
                METADATA_UNAVAILABLE_MESSAGE,
            ),
        ];
        for (error, status, public) in hidden {
            let (answered_status, text) = answered(error).await;
            assert_eq!(answered_status, status);
            assert!(text.contains(public) && !text.contains("10.0.0.7") && !text.contains("shard"), "{text}");
        }
        let (_, text) = answered(StrataError::invalid("max_messages must be 1-10")).await;
        assert!(text.contains("max_messages must be 1-10"));
    }
}
