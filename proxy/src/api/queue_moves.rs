//! Queue moves between shards on the admin API (see `docs/elasticity.md`): where a queue lives,
//! starting a move, the moves under way and recently ended, and splitting a shard (a new shard
//! and moves of some of its queues to it). Metadata journals each move; the leader of the
//! queue's shard carries it out.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use strata_client::model::admin::{MoveQueue, QueueMove, QueueMoves, QueuePlacement, ShardSplit, SplitShard};
use strata_common::error::StrataError;
use strata_common::names::{validate_queue_name, validate_tenant};
use strata_common::proto as pb;

use super::{AppState, Operator, ShardId, parse_json, shard_answer};
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

/// Most queues a split looks at on the shard it splits.
const SPLIT_QUEUES_MAX: u32 = 10_000;
/// How long a split waits for its new shard's group to run (a leader claims it).
const SPLIT_SHARD_READY_WAIT: Duration = Duration::from_secs(30);

/// `POST /admin/v1/shards/{id}/split`: adds a shard on the live nodes hosting the fewest shards,
/// waits until its group runs, and starts moving some of the shard's queues (of its first
/// [`SPLIT_QUEUES_MAX`] by id) to it: half by default, every other queue by id, so old and new
/// queues spread alike. Answers the moves as started (202: they go on in the background;
/// `strata cluster moves` shows them). Not idempotent: a retry adds another shard.
pub(super) async fn split(
    State(state): State<AppState>,
    _: Operator,
    Path(ShardId { id }): Path<ShardId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: SplitShard = parse_json(body)?;
    let metadata = &state.placement.metadata;
    metadata.get_shard(id).await?;
    let queues = metadata.list_shard_queues(id, SPLIT_QUEUES_MAX).await?;
    if queues.len() < 2 {
        return Err(StrataError::invalid(format!("shard {id} holds fewer than two queues: nothing to split")).into());
    }
    let count = match request.queues {
        None => queues.len() / 2,
        Some(n) if n >= 1 && (n as usize) < queues.len() => n as usize,
        Some(n) => {
            return Err(StrataError::invalid(format!(
                "queues must be between 1 and {} (the shard holds {}), not {n}",
                queues.len() - 1,
                queues.len()
            ))
            .into());
        }
    };
    let added = metadata.add_shard(0).await?;
    let clock = state.sqs.clock.clone();
    let started = clock.instant();
    while metadata.get_shard(added.shard_id).await?.writer_epoch == 0 {
        if clock.instant().duration_since(started) > SPLIT_SHARD_READY_WAIT {
            return Err(StrataError::unavailable(format!(
                "shard {} was added, but its group did not start within {} s; move queues to it once it runs",
                added.shard_id,
                SPLIT_SHARD_READY_WAIT.as_secs()
            ))
            .into());
        }
        clock.sleep(Duration::from_millis(200)).await;
    }
    // Every other queue first, then the rest, as many as asked.
    let order = queues.iter().skip(1).step_by(2).chain(queues.iter().step_by(2));
    let (mut moves, mut refused) = (Vec::new(), Vec::new());
    for queue in order.take(count) {
        match metadata.start_queue_move(&queue.tenant, &queue.name, added.shard_id).await {
            Ok(started) => moves.push(move_answer(started)),
            Err(e) => refused.push(format!("{}/{}: {}", queue.tenant, queue.name, e.message)),
        }
    }
    let shard = shard_answer(metadata.get_shard(added.shard_id).await?);
    Ok((StatusCode::ACCEPTED, Json(ShardSplit { shard, moves, refused })).into_response())
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
