//! A message's trace on the native API (`GET /v1/queues/{name}/messages/{message_id}/trace`):
//! what happened to it, as its shard's leader recorded it from the log (see the storage node's
//! `message_trace`), with queue names for the queue ids the shard knows. A tenant reads only
//! its own queues' messages; another's queue answers like a missing one.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use strata_client::model;
use strata_common::limits::LIST_QUEUES_PAGE_MAX;
use strata_common::proto as pb;
use utoipa::IntoParams;

use super::{AppState, Errors, Tenant};
use crate::error::ApiError;
use crate::metering::{CallId, Charge};
use crate::queues;

/// The `{name}` and `{message_id}` of a message route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct MessagePath {
    /// A FIFO queue's name ends with `.fifo`, and only a FIFO queue's.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$")]
    name: String,
    /// The message's id, as its send answered it.
    message_id: String,
}

/// Longest message id taken (a uuid is 36 characters).
const MESSAGE_ID_CHARS_MAX: usize = 64;

/// What happened to a message
///
/// Every send, receive, visibility change, delete, take-back and move of the message, who made
/// each call (its credential and request id) and when, and where the message is now: kept for
/// its retention. The message is followed into the queues it moved to (a dead-letter move, a
/// move task).
#[utoipa::path(get, path = "/v1/queues/{name}/messages/{message_id}/trace", tag = "messages", params(MessagePath),
    responses((status = 200, description = "success", body = model::MessageTrace), Errors), security(("bearer" = [])))]
pub(super) async fn read(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(MessagePath { name, message_id }): Path<MessagePath>,
) -> Result<Json<model::MessageTrace>, ApiError> {
    if message_id.is_empty() || message_id.len() > MESSAGE_ID_CHARS_MAX {
        return Err(ApiError::invalid(format!("a message id is 1-{MESSAGE_ID_CHARS_MAX} characters")));
    }
    let _admission = state.admit(&tenant, 0).await?;
    let id = message_id.clone();
    let answer = queues::on_queue(&state.placement, &tenant, &name, move |mut c, queue| {
        let message_id = id.clone();
        async move { c.get_message_trace(pb::MessageTraceRequest { queue: Some(queue), message_id }).await }
    })
    .await?;
    state.charge(&tenant, &call, b"", Charge::new("GetMessageTrace", &name)).await?;
    let names = queue_names(&state, &tenant, &answer).await?;
    let name_of = |id: u64| names.get(&id).cloned().unwrap_or_else(|| format!("(deleted queue {id})"));
    let now = now_of(&answer, &name_of);
    let events = answer
        .events
        .into_iter()
        .map(|e| {
            let some = |s: String| (!s.is_empty()).then_some(s);
            let other = matches!(e.kind.as_str(), "moved_to" | "arrived_from");
            model::MessageEvent {
                at_ms: e.at_ms,
                queue: name_of(e.queue_id),
                credential: some(e.credential),
                request_id: some(e.request_id),
                receive_count: (e.kind == "received").then_some(e.receive_count),
                visible_at_ms: matches!(e.kind.as_str(), "received" | "visibility_changed").then_some(e.visible_at_ms),
                other_queue: other.then(|| name_of(e.other_queue_id)),
                dead_letter: other.then_some(e.dead_letter),
                deliver_at_ms: (e.deliver_at_ms > 0).then_some(e.deliver_at_ms),
                event: e.kind,
            }
        })
        .collect();
    Ok(Json(model::MessageTrace { message_id, queue: name, events, now }))
}

/// Where the message is now: held by a queue (visible, in flight or delayed), else gone as its
/// last event says, or expired when no event explains it.
fn now_of(answer: &pb::MessageTraceResponse, name_of: &impl Fn(u64) -> String) -> model::MessageNow {
    if answer.held {
        let received = answer
            .events
            .iter()
            .rev()
            .find(|e| e.queue_id == answer.held_in_queue_id)
            .is_some_and(|e| matches!(e.kind.as_str(), "received" | "visibility_changed"));
        let (state, visible_at_ms) = match answer.visible_at_ms {
            at if at <= answer.now_ms => ("visible", None),
            at if received => ("in_flight", Some(at)),
            at => ("delayed", Some(at)),
        };
        return model::MessageNow {
            state: state.to_owned(),
            queue: Some(name_of(answer.held_in_queue_id)),
            visible_at_ms,
        };
    }
    let state = match answer.events.last().map(|e| e.kind.as_str()) {
        Some("deleted") => "deleted",
        Some("purged") => "purged",
        Some("cancelled") => "cancelled",
        // A message scheduled far ahead waits in a file the shard does not search.
        _ if answer.events.iter().any(|e| e.kind == "sent" && e.deliver_at_ms > answer.now_ms) => "delayed",
        _ => "expired",
    };
    model::MessageNow { state: state.to_owned(), queue: None, visible_at_ms: None }
}

/// The tenant's names of the queue ids `answer` names (as many as still exist).
async fn queue_names(
    state: &AppState,
    tenant: &str,
    answer: &pb::MessageTraceResponse,
) -> Result<BTreeMap<u64, String>, ApiError> {
    let mut wanted: BTreeSet<u64> = answer.events.iter().flat_map(|e| [e.queue_id, e.other_queue_id]).collect();
    wanted.insert(answer.held_in_queue_id);
    wanted.remove(&0);
    let mut names = BTreeMap::new();
    let mut after = String::new();
    while !wanted.is_empty() {
        let page = state.placement.metadata.list_queues(tenant, "", &after, LIST_QUEUES_PAGE_MAX).await?;
        for queue in &page.queues {
            if wanted.remove(&queue.queue_id) {
                names.insert(queue.queue_id, queue.name.clone());
            }
        }
        match page.queues.last() {
            Some(last) if page.truncated => after = last.name.clone(),
            _ => break,
        }
    }
    Ok(names)
}
