//! The routes by which a role is watched, served on its admin listener: `/metrics` for a
//! scraper that presents the scrape token (`Authorization: Bearer <token>`), and `/healthz`
//! (the process answers) for anyone, as a liveness probe holds no credentials and learns
//! nothing from it.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strata_common::error::{ErrorKind, StrataError};
use strata_telemetry::ScrapeToken;

use crate::error::ApiError;

/// `/metrics`, answered to holders of `token` only.
pub fn metrics_route(token: ScrapeToken) -> Router {
    Router::new().route("/metrics", get(move |headers: HeaderMap| async move { metrics(&token, &headers) }))
}

/// The whole admin listener of a role that serves no admin API (storage nodes, metadata
/// members): `/metrics` and `/healthz`.
pub fn admin_router(token: ScrapeToken) -> Router {
    metrics_route(token).route("/healthz", get(|| async { "ok" }))
}

fn metrics(token: &ScrapeToken, headers: &HeaderMap) -> Response {
    if !token.admits(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        strata_telemetry::api().auth_failures.get_or_create(&strata_telemetry::ReasonLabel { reason: "scrape" }).inc();
        let error = StrataError::new(ErrorKind::Unauthenticated, "present the scrape token as a bearer token");
        return ApiError(error).into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, strata_telemetry::CONTENT_TYPE)], strata_telemetry::render())
        .into_response()
}

/// Reads a scrape token from `path` (a file of one line, at least
/// [`strata_telemetry::SCRAPE_TOKEN_CHARS_MIN`] characters).
pub fn read_scrape_token(path: &std::path::Path) -> Result<ScrapeToken, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    ScrapeToken::new(&text).map_err(|e| format!("{}: {e}", path.display()))
}
