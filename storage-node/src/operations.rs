//! Carries out the operations metadata's journal hands this node with its heartbeats (see
//! `docs/elasticity.md`): for each shard this node leads, the steps still to do, each one
//! idempotent, so that an operation whose driver crashed is finished by whoever leads next.
//!
//! Today that is the second step of a queue deletion (dropping a deleted incarnation's state
//! from its shard, which otherwise holds back the shard's segment garbage collection, then
//! telling metadata so), the moves of queues between shards ([`crate::queue_moves`]), and, on
//! a draining node, handing over the leadership of the shards it leads (metadata then moves
//! their replicas away).
//!
//! One pass runs at a time, apart from the heartbeats, so a shard that cannot commit (a lost
//! majority) never delays the node's lease.

use std::sync::Arc;
use std::time::Duration;

use strata_common::ClockExt;
use strata_common::error::ErrorKind;
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;

use crate::node::ShardMap;
use crate::queue::Command;

/// How long one step may take before the pass gives up on it (the next heartbeat brings it
/// again).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs passes, one at a time.
#[derive(Clone, Default)]
pub(crate) struct Operations {
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Operations {
    /// Starts a pass over `queue_drops` and `queue_moves` (and, when `draining` names this
    /// node, its leaderships) unless one is still running (its operations come again with a
    /// later heartbeat if it does not finish them).
    pub(crate) fn run(
        &self,
        shards: &ShardMap,
        metadata: &MetadataClient,
        queue_drops: Vec<pb::QueueRef>,
        queue_moves: Vec<pb::QueueMoveInfo>,
        draining: Option<String>,
    ) {
        let adopting = shards.read().values().any(|s| s.is_leader() && s.state().0.has_adoptions());
        if queue_drops.is_empty() && queue_moves.is_empty() && !adopting && draining.is_none() {
            return;
        }
        let Ok(running) = self.running.clone().try_lock_owned() else { return };
        let (shards, metadata) = (shards.clone(), metadata.clone());
        tokio::spawn(async move {
            drop_queues(&shards, &metadata, queue_drops).await;
            crate::queue_moves::drive_moves(&shards, &metadata, queue_moves).await;
            if adopting {
                crate::queue_moves::sweep(&shards, &metadata).await;
            }
            if let Some(node_id) = draining {
                hand_over_leaderships(&shards, &node_id).await;
            }
            drop(running);
        });
    }
}

/// Drops each deleted incarnation from its shard where this node leads it, then ends the
/// deletion in metadata.
async fn drop_queues(shards: &ShardMap, metadata: &MetadataClient, queue_drops: Vec<pb::QueueRef>) {
    for drop in queue_drops {
        let Some(shard) = shards.read().get(&drop.shard_id).cloned().filter(|s| s.is_leader()) else { continue };
        let command = Command::DeleteQueue { queue: drop.queue_id, tenant: drop.tenant.clone() };
        let dropped = match shard.clock().timeout(STEP_TIMEOUT, shard.propose(command)).await {
            Ok(Ok(_)) => true,
            // Dropped already (by the deleting proxy, or an earlier pass).
            Ok(Err(e)) if e.kind == ErrorKind::QueueNotFound => false,
            Ok(Err(e)) => {
                tracing::warn!(shard = drop.shard_id, queue_id = drop.queue_id, error = %e, "dropping a deleted queue failed; will retry");
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    shard = drop.shard_id,
                    queue_id = drop.queue_id,
                    "dropping a deleted queue timed out; will retry"
                );
                continue;
            }
        };
        if dropped {
            tracing::info!(shard = drop.shard_id, queue_id = drop.queue_id, "dropped a deleted queue's state");
        }
        if let Err(e) = metadata.queue_dropped(drop.queue_id).await {
            tracing::warn!(queue_id = drop.queue_id, error = %e, "ending a deletion in metadata failed; will retry");
        }
    }
}

/// How long a draining node's shard may take to hand its leadership over.
const DRAIN_TRANSFER_WAIT: Duration = Duration::from_secs(3);

/// The node drains: every shard it leads hands its leadership to another replica (the most
/// up-to-date one when the one asked for cannot take it), so that metadata can move the replica
/// away without a leader stepping down under writes.
async fn hand_over_leaderships(shards: &ShardMap, node_id: &str) {
    let led: Vec<_> = shards.read().values().filter(|s| s.is_leader()).cloned().collect();
    for shard in led {
        let replicas = shard.placement().map(|p| p.replicas).unwrap_or_default();
        let Some(to) = replicas.iter().find(|r| r.node_id != node_id) else { continue };
        shard.hibernation().wake("its node drains");
        match shard.transfer_leadership(&to.node_id, DRAIN_TRANSFER_WAIT).await {
            Ok(leader) => {
                tracing::info!(shard = shard.shard_id, leader, "draining: handed the shard's leadership over")
            }
            Err(e) => tracing::warn!(shard = shard.shard_id, error = %e, "draining: the leadership stays for now"),
        }
    }
}
