//! Dead-letter queues on the native API: which queues use a queue as their dead-letter queue,
//! and move tasks that send a dead-letter queue's messages back (to its single source queue, or
//! to a named queue) at a bounded pace. The rules are those of the SQS API
//! ([`crate::queue_rules`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::json;
use strata_common::proto as pb;

use super::{AppState, Tenant};
use crate::error::ApiError;
use crate::metering::{CallId, Charge};
use crate::queue_rules::{self, MOVE_PER_SECOND_DEFAULT, MOVE_PER_SECOND_MAX};
use crate::queues;

/// Most source queues one answer lists.
const SOURCES_PAGE_MAX: usize = 1000;

/// The queues whose dead-letter queue this is (at most 1000 a page; `next_token` goes on).
pub(super) async fn sources(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    query: axum::extract::Query<SourcesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    let dead_letter = queues::info(&state.placement, &tenant, &name).await?;
    let start_after = query.0.next_token.unwrap_or_default();
    let (sources, next) = queue_rules::dead_letter_sources(
        &state.placement,
        &tenant,
        dead_letter.queue_id,
        start_after,
        SOURCES_PAGE_MAX,
    )
    .await?;
    state.charge(&tenant, &call, b"", Charge::new("ListDeadLetterSourceQueues", &name)).await?;
    let names: Vec<&str> = sources.iter().map(|q| q.name.as_str()).collect();
    Ok(Json(json!({ "queues": names, "next_token": next })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourcesQuery {
    next_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartMoveRequest {
    /// Where the messages go; by default the dead-letter queue's only source queue.
    destination: Option<String>,
    /// Pace, 1-500 messages per second (default 100).
    max_messages_per_second: Option<u64>,
}

fn task_json(task: &pb::MoveTaskInfo, source: &str, destination: &str) -> serde_json::Value {
    let mut value = json!({
        "task_id": task.task_id.to_string(),
        "status": task.status.to_ascii_lowercase(),
        "source": source,
        "destination": destination,
        "max_messages_per_second": task.max_per_second,
        "moved": task.moved,
        "to_move": task.to_move,
        "started_timestamp_ms": task.started_ms,
    });
    if !task.failure_reason.is_empty() {
        value["failure_reason"] = json!(task.failure_reason);
    }
    value
}

/// Starts moving the dead-letter queue's messages.
pub(super) async fn start(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (body, request): (_, StartMoveRequest) = state.admit_json(&tenant, body, false).await?;
    let rate = request.max_messages_per_second.unwrap_or(MOVE_PER_SECOND_DEFAULT);
    if !(1..=MOVE_PER_SECOND_MAX).contains(&rate) {
        return Err(ApiError::invalid(format!("max_messages_per_second must be 1-{MOVE_PER_SECOND_MAX}")));
    }
    let source = queues::info(&state.placement, &tenant, &name).await?;
    let task_id =
        queue_rules::start_move_task(&state.placement, &tenant, &source, request.destination.as_deref(), rate).await?;
    state.charge(&tenant, &call, &body, Charge::new("StartMessageMoveTask", &name)).await?;
    Ok(Json(json!({ "task_id": task_id.to_string() })))
}

/// The dead-letter queue's move tasks, newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    let tasks = queue_rules::list_move_tasks(&state.placement, &tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("ListMessageMoveTasks", &name)).await?;
    let tasks: Vec<_> = tasks.iter().map(|(task, destination)| task_json(task, &name, destination)).collect();
    Ok(Json(json!({ "tasks": tasks })))
}

/// Cancels a running move task; messages moved so far stay moved.
pub(super) async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path((name, task_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    let task_id: u64 = task_id.parse().map_err(|_| ApiError::invalid("task_id must be a task id from a start"))?;
    let task = queue_rules::cancel_move_task(&state.placement, &tenant, &name, task_id).await?;
    state.charge(&tenant, &call, task_id.to_string().as_bytes(), Charge::new("CancelMessageMoveTask", &name)).await?;
    Ok(Json(json!({ "moved": task.moved })))
}
