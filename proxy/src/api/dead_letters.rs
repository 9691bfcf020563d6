//! Dead-letter queues on the native API: which queues use a queue as their dead-letter queue,
//! and move tasks that send a dead-letter queue's messages back (to its single source queue, or
//! to a named queue) at a bounded pace. The rules are those of the SQS API
//! ([`crate::queue_rules`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use strata_client::model;
use strata_common::proto as pb;

use super::{AppState, Errors, QueuePath, Tenant};
use crate::error::ApiError;
use crate::metering::{CallId, Charge};
use crate::queue_rules::{self, MOVE_PER_SECOND_DEFAULT, MOVE_PER_SECOND_MAX};
use crate::queues;

/// Most source queues one answer lists.
const SOURCES_PAGE_MAX: usize = 1000;

/// The queues that use this queue as their dead-letter queue
///
/// At most 1000 a page; `next_token` goes on.
#[utoipa::path(get, path = "/v1/queues/{name}/dead-letter-sources", tag = "dead letters",
    params(QueuePath, model::PageQuery),
    responses((status = 200, description = "success", body = model::DeadLetterSources), Errors), security(("bearer" = [])))]
pub(super) async fn sources(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
    query: axum::extract::Query<model::PageQuery>,
) -> Result<Json<model::DeadLetterSources>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
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
    let queues = sources.into_iter().map(|q| q.name).collect();
    Ok(Json(model::DeadLetterSources { queues, next_token: next }))
}

fn task_answer(task: &pb::MoveTaskInfo, source: &str, destination: &str) -> model::MoveTask {
    let status = match task.status.as_str() {
        "RUNNING" => model::MoveTaskStatus::Running,
        "COMPLETED" => model::MoveTaskStatus::Completed,
        "CANCELLED" => model::MoveTaskStatus::Cancelled,
        _ => model::MoveTaskStatus::Failed,
    };
    model::MoveTask {
        task_id: task.task_id.to_string(),
        status,
        source: source.to_owned(),
        destination: destination.to_owned(),
        max_messages_per_second: task.max_per_second,
        moved: task.moved,
        to_move: task.to_move,
        started_timestamp_ms: task.started_ms,
        failure_reason: (!task.failure_reason.is_empty()).then(|| task.failure_reason.clone()),
    }
}

/// Start moving this dead-letter queue's messages back to a source queue
#[utoipa::path(post, path = "/v1/queues/{name}/move-tasks", tag = "dead letters", params(QueuePath),
    request_body = model::StartMoveTask,
    responses((status = 200, description = "success", body = model::MoveTaskStarted), Errors), security(("bearer" = [])))]
pub(super) async fn start(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<model::MoveTaskStarted>, ApiError> {
    let (body, request, _admission): (_, model::StartMoveTask, _) = state.admit_json(&tenant, body, false).await?;
    let rate = request.max_messages_per_second.unwrap_or(MOVE_PER_SECOND_DEFAULT);
    if !(1..=MOVE_PER_SECOND_MAX).contains(&rate) {
        return Err(ApiError::invalid(format!("max_messages_per_second must be 1-{MOVE_PER_SECOND_MAX}")));
    }
    let source = queues::info(&state.placement, &tenant, &name).await?;
    let task_id =
        queue_rules::start_move_task(&state.placement, &tenant, &source, request.destination.as_deref(), rate).await?;
    state.charge(&tenant, &call, &body, Charge::new("StartMessageMoveTask", &name)).await?;
    Ok(Json(model::MoveTaskStarted { task_id: task_id.to_string() }))
}

/// This dead-letter queue's move tasks, newest first
#[utoipa::path(get, path = "/v1/queues/{name}/move-tasks", tag = "dead letters", params(QueuePath),
    responses((status = 200, description = "success", body = model::MoveTaskList), Errors), security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
) -> Result<Json<model::MoveTaskList>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    let tasks = queue_rules::list_move_tasks(&state.placement, &tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("ListMessageMoveTasks", &name)).await?;
    let tasks = tasks.iter().map(|(task, destination)| task_answer(task, &name, destination)).collect();
    Ok(Json(model::MoveTaskList { tasks }))
}

/// The `{name}` and `{task_id}` of a move task's route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct TaskPath {
    /// The dead-letter queue.
    name: String,
    /// The id a start answered.
    task_id: String,
}

/// Cancel a running move task (messages moved stay moved)
#[utoipa::path(delete, path = "/v1/queues/{name}/move-tasks/{task_id}", tag = "dead letters", params(TaskPath),
    responses((status = 200, description = "success", body = model::MoveTaskCancelled), Errors), security(("bearer" = [])))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(TaskPath { name, task_id }): Path<TaskPath>,
) -> Result<Json<model::MoveTaskCancelled>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    let task_id: u64 = task_id.parse().map_err(|_| ApiError::invalid("task_id must be a task id from a start"))?;
    let task = queue_rules::cancel_move_task(&state.placement, &tenant, &name, task_id).await?;
    state.charge(&tenant, &call, task_id.to_string().as_bytes(), Charge::new("CancelMessageMoveTask", &name)).await?;
    Ok(Json(model::MoveTaskCancelled { moved: task.moved }))
}
