//! Queue moves between shards on the admin API (see `docs/elasticity.md`): where a queue lives,
//! starting a move, and the moves under way and recently ended. Metadata journals each move;
//! the leader of the queue's shard carries it out.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use strata_client::model::admin::{MoveQueue, QueueMove, QueueMoves, QueuePlacement};
use strata_common::names::{validate_queue_name, validate_tenant};
use strata_common::proto as pb;

use super::{AppState, Operator, parse_json};
use crate::error::ApiError;

/// `GET /admin/v1/tenants/{tenant}/queues/{name}/placement`: the queue's shard and epoch.
pub(super) async fn placement(
    State(state): State<AppState>,
    _: Operator,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<QueuePlacement>, ApiError> {
    validate_tenant(&tenant).map_err(ApiError)?;
    validate_queue_name(&name).map_err(ApiError)?;
    let info = state.placement.metadata.get_queue(&tenant, &name).await?;
    Ok(Json(QueuePlacement {
        tenant: info.tenant,
        name: info.name,
        queue_id: info.queue_id,
        shard_id: info.shard_id,
        epoch: info.epoch,
    }))
}

/// `POST /admin/v1/tenants/{tenant}/queues/{name}/move`: starts moving the queue to another
/// shard; answers the move as started (202: it goes on in the background).
pub(super) async fn start(
    State(state): State<AppState>,
    _: Operator,
    Path((tenant, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_tenant(&tenant).map_err(ApiError)?;
    validate_queue_name(&name).map_err(ApiError)?;
    let request: MoveQueue = parse_json(body)?;
    let started = state.placement.metadata.start_queue_move(&tenant, &name, request.to_shard).await?;
    Ok((StatusCode::ACCEPTED, Json(move_answer(started))).into_response())
}

/// `GET /admin/v1/queue-moves`: the last finished moves, oldest first, then those under way.
pub(super) async fn list(State(state): State<AppState>, _: Operator) -> Result<Json<QueueMoves>, ApiError> {
    let moves = state.placement.metadata.list_queue_moves().await?;
    Ok(Json(QueueMoves { moves: moves.into_iter().map(move_answer).collect() }))
}

fn move_answer(m: pb::QueueMoveInfo) -> QueueMove {
    QueueMove {
        move_id: m.move_id,
        tenant: m.tenant,
        name: m.name,
        queue_id: m.queue_id,
        from_shard: m.from_shard,
        to_shard: m.to_shard,
        phase: m.phase,
        reason: m.reason,
        started_ms: m.started_ms,
        switched_ms: m.switched_ms,
        finished_ms: m.finished_ms,
        paused_ms: m.paused_ms,
        bytes_moved: m.bytes_moved,
    }
}
