//! Drives the drains of storage nodes while this member leads (see `docs/elasticity.md`): the
//! catalog says which nodes drain ([`crate::catalog::drains`]); every [`DRAIN_TICK`] the leader
//! moves their replicas to other live nodes and removes a node once it holds none.
//!
//! # What it guarantees
//!
//! * A draining node's shards keep their replica count: each replica moves through the usual
//!   replica move (the new node joins as a learner, catches up from a snapshot, the bucket and
//!   its peers, becomes a voter, and only then is the old one removed), at most
//!   [`MOVES_PER_DRAIN`] at a time per node.
//! * A live draining node hands over the leadership of its shards first (its storage node does,
//!   seeing the drain in its heartbeat answer): a shard it still leads waits. A dead node leads
//!   nothing, so its replicas move at once (a dead node is replaced by draining it).
//! * The drain is in the catalog: a new leader carries it on, and every step is checked by the
//!   catalog when applied, so a step repeated by two leaders does nothing twice.

use std::sync::Arc;
use std::time::Duration;

use strata_common::error::StrataError;

use crate::catalog::MetaCommand;
use crate::server::MetadataNode;

/// How often the leader looks at the drains.
const DRAIN_TICK: Duration = Duration::from_secs(2);
/// Replicas moving off one draining node at a time.
const MOVES_PER_DRAIN: usize = 2;

/// Every [`DRAIN_TICK`] while `node` leads: carries the drains on. Runs until aborted.
pub(crate) async fn drive_drains(node: Arc<MetadataNode>) {
    loop {
        node.clock.sleep(DRAIN_TICK).await;
        if !node.is_leader() {
            continue;
        }
        for step in next_steps(&node) {
            match node.propose(None, step.clone()).await {
                Ok(_) => tracing::info!(%step, "node drain"),
                Err(status) => {
                    tracing::warn!(%step, error = %StrataError::from(status), "a node drain's step failed; will retry");
                }
            }
        }
    }
}

/// The steps the drains take now: replica moves, and removals of nodes that hold nothing.
fn next_steps(node: &MetadataNode) -> Vec<MetaCommand> {
    let (term, now_ms) = (node.term(), node.now_ms());
    let catalog = node.catalog();
    let live: Vec<String> =
        catalog.nodes().filter(|n| node.leases.is_live(&n.node_id, term, now_ms)).map(|n| n.node_id.clone()).collect();
    let mut steps = Vec::new();
    for (draining, _) in catalog.draining_nodes() {
        let held: Vec<_> =
            catalog.shards().filter(|s| s.replicas.iter().chain(&s.leaving).any(|r| r == draining)).collect();
        if held.is_empty() {
            steps.push(MetaCommand::RemoveNode { node_id: draining.clone() });
            continue;
        }
        let mut moving = held.iter().filter(|s| s.leaving.contains(draining)).count();
        let alive = live.contains(draining);
        for shard in held.iter().filter(|s| s.leaving.is_empty()) {
            if moving >= MOVES_PER_DRAIN {
                break;
            }
            // Its leadership moves first; a single replica has no one to hand it to.
            if alive && shard.node_id == *draining && shard.replicas.len() > 1 {
                continue;
            }
            match catalog.replacement_for(shard.shard_id, draining, &live) {
                Some(to) => {
                    steps.push(MetaCommand::MoveReplica { shard_id: shard.shard_id, from: draining.clone(), to });
                    moving += 1;
                }
                None => tracing::warn!(
                    node = %draining,
                    shard = shard.shard_id,
                    "a draining node's replica has nowhere to go (every live node holds one or drains); add a node"
                ),
            }
        }
    }
    steps
}
