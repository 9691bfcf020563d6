//! Who an HTTP request is from, for every front door with JSON errors (the native API, the
//! admin API, the billing API): the verified subject of its bearer token, and the tenant an
//! operator names in an admin path.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use strata_common::error::{ErrorKind, StrataError};

use crate::auth::JwtVerifier;
use crate::error::ApiError;

/// The subject of the request's `Authorization: Bearer` token, verified by `verifier` (a
/// tenant, or an operator for the admin audience); `Unauthenticated` with an actionable message
/// otherwise.
pub fn verified_subject(verifier: &JwtVerifier, headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = verifier.verify_authorization_header(header).map_err(|e| {
        tracing::debug!(error = %e, "authentication failed");
        ApiError(StrataError::new(ErrorKind::Unauthenticated, e.public_message()))
    })?;
    Ok(token.tenant)
}

/// The tenant named by the `{tenant}` of an admin path, after the operator's token was verified
/// by `admin_verifier`; the request is logged with both.
pub async fn admin_path_tenant<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    admin_verifier: &JwtVerifier,
) -> Result<String, ApiError> {
    let operator = verified_subject(admin_verifier, &parts.headers)?;
    let params = axum::extract::RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::invalid(format!("bad path: {e}")))?;
    let tenant = params
        .iter()
        .find(|(name, _)| *name == "tenant")
        .map(|(_, value)| value.to_string())
        .ok_or_else(|| ApiError::invalid("the path names no tenant"))?;
    strata_common::names::validate_tenant(&tenant).map_err(ApiError)?;
    tracing::info!(%operator, %tenant, path = %parts.uri.path(), "admin request");
    Ok(tenant)
}
