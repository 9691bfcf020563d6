//! A queue's metrics on the native API (`GET /v1/queues/{name}/metrics`): what happened to it
//! minute by minute and its depth, as its shard's replicas keep them (see the storage node's
//! `queue_metrics`); and the depth of all of a tenant's queues in Prometheus text
//! (`GET /v1/metrics`), for the tenant's own Prometheus and KEDA. A tenant reads only its own
//! queues; another's answers like a missing one.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use strata_client::model::{self, QueueDepth, QueueMetricsQuery};
use strata_common::error::{ErrorKind, StrataError};
use strata_common::limits::LIST_QUEUES_PAGE_MAX;
use strata_common::proto as pb;
use strata_telemetry::QueueDepthSample;

use super::{AppState, Errors, QueuePath, Tenant};
use crate::error::ApiError;
use crate::metering::{CallId, Charge};
use crate::queues;

/// Seconds of a minute.
const MINUTE_S: u64 = 60;
/// The minutes read without `from`.
const DEFAULT_MINUTES: u64 = 60;
/// The most minutes one read covers: as long as they are kept.
const MINUTES_MAX: u64 = 15 * 24 * 60;

fn depth(g: Option<pb::QueueGauges>) -> QueueDepth {
    let g = g.unwrap_or_default();
    QueueDepth {
        visible: g.visible,
        in_flight: g.in_flight,
        delayed: g.delayed,
        oldest_message_age_seconds: g.oldest_age_s,
    }
}

/// The first and last minute (Unix minutes, inclusive) that `from`..`to` (Unix seconds) covers
/// at `now_s`.
fn minutes_of(query: &QueueMetricsQuery, now_s: u64) -> Result<(u64, u64), ApiError> {
    // Minutes to come hold nothing yet: a later end is read as the next minute's.
    let to_s = query.to.unwrap_or(now_s + 1).min(now_s.saturating_add(MINUTE_S));
    let from_s = query.from.unwrap_or(to_s.saturating_sub(DEFAULT_MINUTES * MINUTE_S));
    if from_s >= to_s {
        return Err(ApiError::invalid("from must be before to"));
    }
    let (first, last) = (from_s / MINUTE_S, (to_s - 1) / MINUTE_S);
    if last - first >= MINUTES_MAX {
        return Err(ApiError::invalid("a read covers at most 15 days (minutes are kept 15 days)"));
    }
    Ok((first, last))
}

/// The queue's metrics, minute by minute
///
/// Per minute: messages sent, received, deleted and moved to the dead-letter queue, receives
/// that found nothing, bytes in and out, and the depth near the minute's end. Kept 15 days at
/// one-minute resolution; minutes in which nothing happened are left out.
#[utoipa::path(get, path = "/v1/queues/{name}/metrics", tag = "queues", params(QueuePath, QueueMetricsQuery),
    responses((status = 200, description = "success", body = model::QueueMetrics), Errors), security(("bearer" = [])))]
pub(super) async fn read(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
    query: Result<Query<QueueMetricsQuery>, QueryRejection>,
) -> Result<Json<model::QueueMetrics>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?;
    let _admission = state.admit(&tenant, 0).await?;
    let (from_minute, to_minute) = minutes_of(&query, state.sqs.clock.now_ms() / 1000)?;
    let answer = queues::on_queue(&state.placement, &tenant, &name, move |mut c, queue| async move {
        c.get_queue_metrics(pb::QueueMetricsRequest { queue: Some(queue), from_minute, to_minute }).await
    })
    .await?;
    state.charge(&tenant, &call, b"", Charge::new("GetQueueMetrics", &name)).await?;
    let minutes = answer
        .minutes
        .into_iter()
        .map(|m| model::QueueMinute {
            start: m.minute * MINUTE_S,
            sent: m.sent,
            received: m.received,
            deleted: m.deleted,
            empty_receives: m.empty_receives,
            moved_to_dead_letter: m.moved_to_dead_letter,
            bytes_in: m.bytes_in,
            bytes_out: m.bytes_out,
            depth: m.gauges.map(|g| depth(Some(g))),
        })
        .collect();
    Ok(Json(model::QueueMetrics {
        from: from_minute * MINUTE_S,
        to: (to_minute + 1) * MINUTE_S,
        now: depth(answer.now),
        minutes,
    }))
}

/// How long a tenant's scrape is answered again as it was (a scrape reads every queue).
const SCRAPE_REUSE_MS: u64 = 5_000;
/// Tenants whose last scrape is kept, at most.
const SCRAPES_KEPT_MAX: usize = 10_000;

/// The last scrape of each tenant, reused for [`SCRAPE_REUSE_MS`].
#[derive(Default)]
pub(super) struct TenantScrapes(parking_lot::Mutex<std::collections::HashMap<String, (u64, String)>>);

impl TenantScrapes {
    fn fresh(&self, tenant: &str, now_ms: u64) -> Option<String> {
        let scrapes = self.0.lock();
        scrapes
            .get(tenant)
            .filter(|(at_ms, _)| now_ms.saturating_sub(*at_ms) < SCRAPE_REUSE_MS)
            .map(|(_, body)| body.clone())
    }

    fn keep(&self, tenant: &str, now_ms: u64, body: &str) {
        let mut scrapes = self.0.lock();
        if scrapes.len() >= SCRAPES_KEPT_MAX {
            scrapes.retain(|_, (at_ms, _)| now_ms.saturating_sub(*at_ms) < SCRAPE_REUSE_MS);
        }
        if scrapes.len() < SCRAPES_KEPT_MAX {
            scrapes.insert(tenant.to_owned(), (now_ms, body.to_owned()));
        }
    }
}

/// The depth of each of the tenant's queues, in Prometheus text
///
/// For a Prometheus of the tenant's own (and KEDA's Prometheus scaler through it): present the
/// tenant's token as a bearer token. Series `strata_queue_messages_visible`,
/// `strata_queue_messages_in_flight`, `strata_queue_messages_delayed` and
/// `strata_queue_oldest_message_age_seconds`, labelled by queue; the first 1000 queues by name.
/// An answer is reused for 5 seconds; a queue that cannot be read now is left out.
#[utoipa::path(get, path = "/v1/metrics", tag = "queues",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        Errors),
    security(("bearer" = [])))]
pub(super) async fn scrape(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
) -> Result<impl IntoResponse, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    let now_ms = state.sqs.clock.now_ms();
    let body = match state.tenant_scrapes.fresh(&tenant, now_ms) {
        Some(body) => body,
        None => {
            let body = render_depths(&state, &tenant).await?;
            state.tenant_scrapes.keep(&tenant, now_ms, &body);
            body
        }
    };
    state.charge(&tenant, &call, b"", Charge::new("GetMetrics", "")).await?;
    Ok(([(header::CONTENT_TYPE, strata_telemetry::CONTENT_TYPE)], body))
}

/// Queues read at once when a call reads many.
const READ_CONCURRENCY: usize = 16;

/// Runs `read` for each of `queues`, [`READ_CONCURRENCY`] at a time; answers each queue's name
/// and result, by name.
pub(super) async fn read_each<T, F, Fut>(
    queues: &[pb::QueueInfo],
    read: F,
) -> Result<Vec<(String, Result<T, StrataError>)>, ApiError>
where
    T: Send + 'static,
    F: Fn(pb::QueueInfo) -> Fut,
    Fut: std::future::Future<Output = Result<T, StrataError>> + Send + 'static,
{
    let mut answers = Vec::with_capacity(queues.len());
    for chunk in queues.chunks(READ_CONCURRENCY) {
        let mut reads = tokio::task::JoinSet::new();
        for info in chunk {
            let (name, answer) = (info.name.clone(), read(info.clone()));
            reads.spawn(async move { (name, answer.await) });
        }
        while let Some(read) = reads.join_next().await {
            answers.push(read.map_err(|e| ApiError(StrataError::internal(format!("a queue read stopped: {e}"))))?);
        }
    }
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(answers)
}

/// The depth of every queue of `tenant` (the first 1000), in Prometheus text.
async fn render_depths(state: &AppState, tenant: &str) -> Result<String, ApiError> {
    let page = state.placement.metadata.list_queues(tenant, "", "", LIST_QUEUES_PAGE_MAX).await?;
    let stats = read_each(&page.queues, |info| {
        let (placement, tenant) = (state.placement.clone(), tenant.to_owned());
        async move {
            queues::on_queue(&placement, &tenant, &info.name, |mut c, q| async move { c.get_queue_stats(q).await })
                .await
        }
    })
    .await?;
    let mut samples = Vec::with_capacity(stats.len());
    for (queue, stats) in stats {
        match stats {
            Ok(s) => samples.push(QueueDepthSample {
                queue,
                visible: s.visible,
                in_flight: s.in_flight,
                delayed: s.delayed,
                oldest_age_s: s.oldest_age_s,
            }),
            // Deleted since it was listed.
            Err(e) if e.kind == ErrorKind::QueueNotFound => {}
            // Its shard cannot answer now: the others still count.
            Err(e) => tracing::info!(%tenant, %queue, error = %e, "a queue left out of a tenant scrape"),
        }
    }
    Ok(strata_telemetry::render_queue_depths(&samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cover_whole_minutes_up_to_fifteen_days() {
        let now_s = 1_800_000_030;
        let q = |from, to| QueueMetricsQuery { from, to };
        let last = now_s / 60;
        assert_eq!(minutes_of(&q(None, None), now_s).ok(), Some((last - 60, last)));
        assert_eq!(minutes_of(&q(Some(120), Some(180)), now_s).ok(), Some((2, 2)));
        assert_eq!(minutes_of(&q(Some(121), Some(181)), now_s).ok(), Some((2, 3)));
        assert!(minutes_of(&q(Some(180), Some(180)), now_s).is_err());
        assert!(minutes_of(&q(Some(0), Some(MINUTES_MAX * 60)), now_s).is_ok());
        assert!(minutes_of(&q(Some(0), Some(MINUTES_MAX * 60 + 1)), now_s).is_err());
    }
}
