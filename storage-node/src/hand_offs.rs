//! Drains the hand-off outbox of a shard this node leads (see `queue::state::hand_offs` and
//! `docs/elasticity.md`): messages leaving for a dead-letter queue or a move task's
//! destination on another shard.
//!
//! # What it guarantees
//!
//! * Entries go out in seq order, a batch to one queue at a time, and the outbox is trimmed
//!   through a batch only once the destination's shard applied it; a pass stops at the first
//!   batch that is not accepted, so no entry overtakes another (the destination's mark never
//!   passes an entry it has not taken).
//! * The destination is found in metadata by its queue id at every batch, so a queue that moved
//!   is followed. A destination metadata no longer knows (deleted), or whose shard refuses the
//!   messages (a queue of another kind), sends them back to the queue they left.
//! * Hand-offs open only once the cluster writes format generation 10: the leader proposes
//!   `OpenHandOffs` then, so every replica of the shard, whatever its release, applies every
//!   entry before it the old way and every entry after it the new way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strata_common::error::{ErrorKind, StrataError};
use strata_metadata_client::MetadataClient;
use tokio_util::sync::CancellationToken;

use crate::node::ShardMap;
use crate::queue::{Command, HAND_OFF_BATCH_MESSAGES, HandOffBatch};
use crate::queue_moves::{Target, step};
use crate::shard::{HAND_OFFS_GENERATION, Shard};

/// How often a shard's leader looks at its outbox.
const HAND_OFF_TICK: Duration = Duration::from_millis(200);
/// Most batches one pass hands over (the next tick goes on).
const BATCHES_PER_PASS: usize = 50;

/// What became of a batch.
enum Outcome {
    /// Its destination took it: trim the outbox through it.
    Accepted,
    /// Its destination is gone or refuses it: back to where it came from.
    Gone,
}

/// On the shard's leader: opens hand-offs once the cluster's generation allows, then drains the
/// outbox every [`HAND_OFF_TICK`].
pub(crate) async fn hand_off_loop(
    shard: Arc<Shard>,
    shards: ShardMap,
    metadata: MetadataClient,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = shard.clock().sleep(HAND_OFF_TICK) => {}
        }
        if !shard.is_leader() || shard.log_format().writing() < HAND_OFFS_GENERATION {
            continue;
        }
        match pass(&shard, &shards, &metadata).await {
            Ok(()) => {}
            // A destination moving, or moved since it was looked up: the next pass goes on.
            Err(e) if matches!(e.kind, ErrorKind::QueueMoving | ErrorKind::QueueNotFound) => {
                tracing::debug!(shard = shard.shard_id, error = %e, "a hand-off waits for its destination");
            }
            Err(e) => {
                tracing::warn!(shard = shard.shard_id, error = %e, "handing messages to another shard failed; will retry");
            }
        }
    }
}

async fn pass(shard: &Arc<Shard>, shards: &ShardMap, metadata: &MetadataClient) -> Result<(), StrataError> {
    if !shard.state().0.hand_offs_open() {
        step(shard, Command::OpenHandOffs).await?;
    }
    // One per destination shard, each remembering where its leader was found.
    let mut targets: HashMap<u64, Target> = HashMap::new();
    for _ in 0..BATCHES_PER_PASS {
        let Some(batch) = shard.state().0.hand_off_batch(HAND_OFF_BATCH_MESSAGES) else { return Ok(()) };
        let (through_seq, queue, count) = (batch.through_seq, batch.queue, batch.arrivals.len());
        match hand_over(shard, shards, metadata, &mut targets, batch).await? {
            Outcome::Accepted => step(shard, Command::TrimHandOffs { through_seq }).await?,
            Outcome::Gone => {
                step(shard, Command::ReturnHandOffs { through_seq }).await?;
                tracing::info!(
                    shard = shard.shard_id,
                    queue_id = queue,
                    count,
                    "messages for a queue that is gone went back"
                );
            }
        }
    }
    Ok(())
}

/// Hands one batch to its destination's shard.
async fn hand_over(
    shard: &Arc<Shard>,
    shards: &ShardMap,
    metadata: &MetadataClient,
    targets: &mut HashMap<u64, Target>,
    batch: HandOffBatch,
) -> Result<Outcome, StrataError> {
    let info = match metadata.locate_queue(&batch.tenant, batch.queue).await {
        Ok(info) => info,
        Err(e) if e.kind == ErrorKind::QueueNotFound => return Ok(Outcome::Gone),
        Err(e) => return Err(e),
    };
    let (mut messages, mut trace_headers) = (Vec::new(), Vec::new());
    for read in shard.read_messages(&batch.bodies).await {
        let stored = read?;
        messages.push(stored.message);
        trace_headers.push(stored.trace_header);
    }
    let HandOffBatch { tenant, queue, arrivals, .. } = batch;
    let command =
        Command::AcceptHandOffs { source_shard: shard.shard_id, queue, tenant, arrivals, messages, trace_headers };
    let target = targets.entry(info.shard_id).or_insert_with(|| Target::new(shards, metadata, shard, info.shard_id));
    match target.propose(command).await {
        Ok(()) => Ok(Outcome::Accepted),
        // The destination's shard refuses these messages (see `accept_hand_offs`).
        Err(e) if e.kind == ErrorKind::InvalidParameter => Ok(Outcome::Gone),
        // Moving, moved since the lookup (the next pass looks again), or unreachable.
        Err(e) => Err(e),
    }
}
