//! Who makes a native API call, as the shard's log keeps it beside the call (the message trace
//! reads it): the request id the call is answered with, and which bearer token it came with.
//!
//! Every native call is answered with `x-strata-request-id`: the client's own id when it sent a
//! valid one (which also makes a send idempotent, see [`crate::metering::CallId`]), else a new
//! one.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use strata_common::proto as pb;

use super::AppState;
use crate::error::ApiError;
use crate::metering::{CLIENT_REQUEST_ID_CHARS_MAX, REQUEST_ID_HEADER, valid_token};

/// The id a native call is answered with.
#[derive(Debug, Clone)]
struct RequestId(String);

/// Middleware: gives each native call its request id and answers it in `x-strata-request-id`.
pub(super) async fn request_ids(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_token(v, CLIENT_REQUEST_ID_CHARS_MAX))
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| state.placement.metadata.random().uuid().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Hex digits of a bearer token's SHA-256 that name it in the log: enough to tell a tenant's
/// tokens apart, never the token.
const TOKEN_FINGERPRINT_HEX: usize = 16;

/// Who makes a native call: `token:<fingerprint>` of its bearer token, and its request id.
pub(super) struct NativeCaller(pub(super) pb::Caller);

impl FromRequestParts<AppState> for NativeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let token = parts.headers.get(header::AUTHORIZATION).map_or(&[][..], HeaderValue::as_bytes);
        let fingerprint = hex::encode(Sha256::digest(token));
        let credential = format!("token:{}", &fingerprint[..TOKEN_FINGERPRINT_HEX]);
        Ok(NativeCaller(pb::Caller { credential, request_id }))
    }
}
