//! The operators' view of tenants on the admin API: every tenant with its queue count, and one
//! tenant's queues with their depth, stored bytes and last whole minute of traffic, summed.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use strata_client::model::QueueDepth;
use strata_client::model::admin::{LastMinute, TenantList, TenantQueue, TenantQueues, TenantSummary, TenantTotals};
use strata_common::error::{ErrorKind, StrataError};
use strata_common::limits::LIST_QUEUES_PAGE_MAX;
use strata_common::names::validate_tenant;
use strata_common::proto as pb;

use super::queue_metrics::read_each;
use super::{AppState, Operator};
use crate::error::ApiError;
use crate::queues;

/// Queues a page of one tenant's listing shows (each is read from its shard twice).
const TENANT_QUEUES_PAGE_MAX: u32 = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    next_token: Option<String>,
}

fn page(query: Result<Query<PageQuery>, QueryRejection>) -> Result<String, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?;
    Ok(query.next_token.unwrap_or_default())
}

/// `GET /admin/v1/tenants`: tenants by id, 1000 a page.
pub(super) async fn list(
    State(state): State<AppState>,
    _: Operator,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<TenantList>, ApiError> {
    let start_after = page(query)?;
    let answer = state.placement.metadata.list_tenants(&start_after, LIST_QUEUES_PAGE_MAX).await?;
    let next_token = if answer.truncated { answer.tenants.last().map(|t| t.tenant.clone()) } else { None };
    let tenants = answer
        .tenants
        .into_iter()
        .map(|t| TenantSummary { tenant: t.tenant, created_ms: t.created_ms, queues: t.queues })
        .collect();
    Ok(Json(TenantList { tenants, next_token }))
}

/// One queue's figures: its stats and its last whole minute.
async fn queue_figures(
    placement: &super::Placement,
    tenant: &str,
    info: &pb::QueueInfo,
    last_minute: u64,
) -> Result<TenantQueue, StrataError> {
    let name = info.name.as_str();
    let stats = queues::on_queue(placement, tenant, name, |mut c, q| async move { c.get_queue_stats(q).await }).await?;
    let metrics = queues::on_queue(placement, tenant, name, move |mut c, queue| async move {
        let request = pb::QueueMetricsRequest { queue: Some(queue), from_minute: last_minute, to_minute: last_minute };
        c.get_queue_metrics(request).await
    })
    .await?;
    let minute = metrics.minutes.first();
    Ok(TenantQueue {
        name: info.name.clone(),
        shard_id: info.shard_id,
        depth: QueueDepth {
            visible: stats.visible,
            in_flight: stats.in_flight,
            delayed: stats.delayed,
            oldest_message_age_seconds: stats.oldest_age_s,
        },
        stored_bytes: stats.stored_bytes,
        last_minute: LastMinute {
            sent: minute.map_or(0, |m| m.sent),
            received: minute.map_or(0, |m| m.received),
            deleted: minute.map_or(0, |m| m.deleted),
            empty_receives: minute.map_or(0, |m| m.empty_receives),
        },
    })
}

/// `GET /admin/v1/tenants/{tenant}/queues`: the tenant's queues by name, 100 a page, with their
/// depth, stored bytes and last whole minute, and the page's totals.
pub(super) async fn queues(
    State(state): State<AppState>,
    _: Operator,
    Path(tenant): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<TenantQueues>, ApiError> {
    validate_tenant(&tenant).map_err(ApiError)?;
    let start_after = page(query)?;
    let listed = state.placement.metadata.list_queues(&tenant, "", &start_after, TENANT_QUEUES_PAGE_MAX).await?;
    let next_token = if listed.truncated { listed.queues.last().map(|q| q.name.clone()) } else { None };
    let last_minute = (state.sqs.clock.now_ms() / 60_000).saturating_sub(1);
    let figures = read_each(&listed.queues, |info| {
        let (placement, tenant) = (state.placement.clone(), tenant.clone());
        async move { queue_figures(&placement, &tenant, &info, last_minute).await }
    })
    .await?;
    let mut queues = Vec::with_capacity(figures.len());
    for (_, figures) in figures {
        match figures {
            Ok(queue) => queues.push(queue),
            // Deleted since it was listed.
            Err(e) if e.kind == ErrorKind::QueueNotFound => {}
            Err(e) => return Err(ApiError(e)),
        }
    }
    let mut totals = TenantTotals { queues: queues.len() as u64, ..TenantTotals::default() };
    for q in &queues {
        totals.messages += q.depth.visible + q.depth.in_flight + q.depth.delayed;
        totals.stored_bytes += q.stored_bytes;
        totals.last_minute.sent += q.last_minute.sent;
        totals.last_minute.received += q.last_minute.received;
        totals.last_minute.deleted += q.last_minute.deleted;
        totals.last_minute.empty_receives += q.last_minute.empty_receives;
    }
    Ok(Json(TenantQueues { tenant, queues, totals, next_token }))
}
