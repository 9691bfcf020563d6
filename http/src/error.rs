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

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self(StrataError::invalid(message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let StrataError { kind, message, retry_after_s, .. } = self.0;
        if kind == ErrorKind::Internal {
            tracing::error!(%message, "internal error answered to a tenant");
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
