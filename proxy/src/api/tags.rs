//! Queue tags on the native API: read, add (or overwrite) and remove. Tags live in metadata
//! beside the queue (at most 50 per queue, keys 1-128 characters, values 0-256).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use strata_common::limits::QUEUE_TAGS_MAX;
use strata_common::names::validate_tag;

use super::{AppState, Tenant};
use crate::error::ApiError;
use crate::metering::{CallId, Charge};

/// Checks tags given with a create before the queue exists (so a bad tag creates nothing).
pub(super) fn check(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > QUEUE_TAGS_MAX {
        return Err(ApiError::invalid(format!("a queue may have at most {QUEUE_TAGS_MAX} tags")));
    }
    tags.iter().try_for_each(|(key, value)| validate_tag(key, value)).map_err(ApiError)
}

pub(super) async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    // From metadata, not the placement cache: tags change without a new incarnation.
    let info = state.placement.metadata.get_queue(&tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("ListQueueTags", &name)).await?;
    let tags: BTreeMap<&String, &String> = info.tags.iter().collect();
    Ok(Json(json!({ "tags": tags })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagRequest {
    tags: BTreeMap<String, String>,
}

/// Adds tags, overwriting the values of keys the queue has.
pub(super) async fn add(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (body, request): (_, TagRequest) = state.admit_json(&tenant, body, false).await?;
    if request.tags.is_empty() {
        return Err(ApiError::invalid("tags must name at least one tag"));
    }
    check(&request.tags)?;
    let info = state.placement.metadata.tag_queue(&tenant, &name, request.tags.into_iter().collect()).await?;
    state.charge(&tenant, &call, &body, Charge::new("TagQueue", &name)).await?;
    let tags: BTreeMap<&String, &String> = info.tags.iter().collect();
    Ok(Json(json!({ "tags": tags })))
}

/// Removes one tag (removing a key the queue does not have is not an error).
pub(super) async fn remove(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path((name, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.admit(&tenant, 0).await?;
    state.placement.metadata.untag_queue(&tenant, &name, vec![key.clone()]).await?;
    state.charge(&tenant, &call, key.as_bytes(), Charge::new("UntagQueue", &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
