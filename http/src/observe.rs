//! The routes by which a role is watched, served on its admin listener: `/metrics` for a
//! scraper that presents the scrape token (`Authorization: Bearer <token>`); `/healthz` (the
//! process answers) and `/readyz` (it can serve: each of its needs met) for anyone, as probes
//! hold no credentials. `/readyz` names what is missing, never an address or a tenant.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::{Clock, ClockExt};
use strata_telemetry::{ReadyCheck, ScrapeToken};

use crate::error::ApiError;

/// `/metrics`, answered to holders of `token` only.
pub fn metrics_route(token: ScrapeToken) -> Router {
    Router::new().route("/metrics", get(move |headers: HeaderMap| async move { metrics(&token, &headers) }))
}

/// The whole admin listener of a role that serves no admin API (storage nodes, metadata
/// members): `/metrics`, `/healthz` and `/readyz`.
pub fn admin_router(token: ScrapeToken, readiness: Readiness) -> Router {
    metrics_route(token).route("/healthz", get(|| async { "ok" })).merge(readyz_route(readiness))
}

/// How long a `/readyz` answer is reused: probes from many places cost one check a second.
const READINESS_REUSE: Duration = Duration::from_secs(1);
/// Longest a check may take; one that takes longer is not met.
const READINESS_CHECK_WAIT: Duration = Duration::from_secs(3);

type Checks = Pin<Box<dyn Future<Output = Vec<ReadyCheck>> + Send>>;

/// A role's needs, checked on demand and the answer reused for [`READINESS_REUSE`].
#[derive(Clone)]
pub struct Readiness {
    check: Arc<dyn Fn() -> Checks + Send + Sync>,
    clock: Arc<dyn Clock>,
    last: Arc<tokio::sync::Mutex<Option<Checked>>>,
}

/// When the needs were checked, and the answer.
type Checked = (Instant, Vec<ReadyCheck>);

impl Readiness {
    /// Readiness by `check`, timed on `clock`.
    pub fn new<F, Fut>(clock: Arc<dyn Clock>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<ReadyCheck>> + Send + 'static,
    {
        Self { check: Arc::new(move || Box::pin(check()) as Checks), clock, last: Default::default() }
    }

    /// The role's needs now (or as checked less than [`READINESS_REUSE`] ago).
    pub async fn checks(&self) -> Vec<ReadyCheck> {
        let mut last = self.last.lock().await;
        let now = self.clock.instant();
        if let Some((at, checks)) = last.as_ref()
            && now.saturating_duration_since(*at) < READINESS_REUSE
        {
            return checks.clone();
        }
        let checks = match self.clock.timeout(READINESS_CHECK_WAIT, (self.check)()).await {
            Ok(checks) => checks,
            Err(_) => vec![ReadyCheck::new(
                "checks",
                Some(format!("the readiness checks took over {} s", READINESS_CHECK_WAIT.as_secs())),
            )],
        };
        *last = Some((self.clock.instant(), checks.clone()));
        checks
    }
}

/// `/readyz`: 200 when every need is met, else 503; the body says which are not and why. As
/// with Kubernetes' own `/readyz`, `?exclude=NEED` (repeatable) leaves a need out of the verdict,
/// not out of the body: a load balancer in front of proxies may keep sending to them while the
/// metadata quorum is lost (`?exclude=metadata_quorum`), as sends and receives go on.
pub fn readyz_route(readiness: Readiness) -> Router {
    Router::new().route(
        "/readyz",
        get(move |uri: axum::http::Uri| {
            let readiness = readiness.clone();
            async move {
                let excluded: Vec<String> = uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|pair| pair.strip_prefix("exclude="))
                    .map(str::to_owned)
                    .collect();
                let checks = readiness.checks().await;
                let ready = checks.iter().all(|c| c.is_met() || excluded.iter().any(|e| e == c.need));
                let needs: serde_json::Map<String, serde_json::Value> = checks
                    .into_iter()
                    .map(|c| (c.need.to_owned(), c.problem.map_or_else(|| "ok".into(), serde_json::Value::String)))
                    .collect();
                let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                (status, axum::Json(serde_json::json!({ "ready": ready, "needs": needs })))
            }
        }),
    )
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
