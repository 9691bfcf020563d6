//! HTTP error responses: `{"error": {"code": "...", "message": "..."}}` with the status of the
//! error's kind. Codes are the stable [`ErrorKind`] codes; messages never carry internal detail.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use strata_common::error::{ErrorKind, StrataError};

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

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self(StrataError::invalid(message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let StrataError { kind, mut message, retry_after_s, .. } = self.0;
        if kind == ErrorKind::Internal {
            // The detail (a peer's error, a file, an address) is for the logs, not the caller.
            tracing::error!(%message, "internal error answered to a tenant");
            message = INTERNAL_ERROR_MESSAGE.to_owned();
        }
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

    #[tokio::test]
    async fn an_internal_error_answers_without_its_detail() {
        let detail = "reading /var/lib/strata/shard-3/state.snap from 10.0.0.7:9000 failed";
        let response = ApiError(StrataError::internal(detail)).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(INTERNAL_ERROR_MESSAGE) && !text.contains("10.0.0.7") && !text.contains("/var/lib"),
            "{text}"
        );
        let invalid = ApiError::invalid("max_messages must be 1-10").into_response();
        let body = axum::body::to_bytes(invalid.into_body(), 1 << 16).await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("max_messages must be 1-10"));
    }
}
