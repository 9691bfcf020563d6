//! Queue tags on the native API: read, add (or overwrite) and remove. Tags live in metadata
//! beside the queue (at most 50 per queue, keys 1-128 characters, values 0-256).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use strata_client::model::{self, Tags};
use strata_common::limits::QUEUE_TAGS_MAX;
use strata_common::names::validate_tag;

use super::{AppState, Errors, QueuePath, Tenant};
use crate::error::ApiError;
use crate::metering::{CallId, Charge};

/// Checks tags given with a create before the queue exists (so a bad tag creates nothing).
pub(super) fn check(tags: &Tags) -> Result<(), ApiError> {
    if tags.len() > QUEUE_TAGS_MAX {
        return Err(ApiError::invalid(format!("a queue may have at most {QUEUE_TAGS_MAX} tags")));
    }
    tags.iter().try_for_each(|(key, value)| validate_tag(key, value)).map_err(ApiError)
}

fn tags_answer(info: strata_common::proto::QueueInfo) -> model::TagSet {
    model::TagSet { tags: info.tags.into_iter().collect() }
}

/// The queue's tags
#[utoipa::path(get, path = "/v1/queues/{name}/tags", tag = "queues", params(QueuePath),
    responses((status = 200, description = "success", body = model::TagSet), Errors), security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
) -> Result<Json<model::TagSet>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    // From metadata, not the placement cache: tags change without a new incarnation.
    let info = state.placement.metadata.get_queue(&tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("ListQueueTags", &name)).await?;
    Ok(Json(tags_answer(info)))
}

/// Add tags, overwriting the values of keys the queue has
#[utoipa::path(post, path = "/v1/queues/{name}/tags", tag = "queues", params(QueuePath),
    request_body = model::TagSet,
    responses((status = 200, description = "the queue's tags now", body = model::TagSet), Errors),
    security(("bearer" = [])))]
pub(super) async fn add(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<model::TagSet>, ApiError> {
    let (body, request, _admission): (_, model::TagSet, _) = state.admit_json(&tenant, body, false).await?;
    if request.tags.is_empty() {
        return Err(ApiError::invalid("tags must name at least one tag"));
    }
    check(&request.tags)?;
    let info = state.placement.metadata.tag_queue(&tenant, &name, request.tags.into_iter().collect()).await?;
    state.charge(&tenant, &call, &body, Charge::new("TagQueue", &name)).await?;
    Ok(Json(tags_answer(info)))
}

/// The `{name}` and `{key}` of a tag's route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct TagPath {
    /// The queue.
    name: String,
    /// The tag's key.
    key: String,
}

/// Remove a tag
///
/// Removing a key the queue does not have is not an error.
#[utoipa::path(delete, path = "/v1/queues/{name}/tags/{key}", tag = "queues", params(TagPath),
    responses((status = 204, description = "removed"), Errors), security(("bearer" = [])))]
pub(super) async fn remove(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(TagPath { name, key }): Path<TagPath>,
) -> Result<StatusCode, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    state.placement.metadata.untag_queue(&tenant, &name, vec![key.clone()]).await?;
    state.charge(&tenant, &call, key.as_bytes(), Charge::new("UntagQueue", &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
