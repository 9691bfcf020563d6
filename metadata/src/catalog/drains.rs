//! Storage nodes drained and removed, in the catalog (see `docs/elasticity.md`): which nodes are
//! draining, and the Raft ids removed nodes held (never given again).
//!
//! A draining node takes no new replica (no new shard, no replica moved to it); the metadata
//! leader moves its replicas away one by one (`crate::drains`), after its storage node handed
//! over the leadership of the shards it leads, and removes it once it holds none. The drain is
//! in the catalog, so whichever member leads next carries it on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_common::error::StrataError;

use super::{Catalog, DRAINS_GENERATION};

/// What catalog format version 7 appends after the queue moves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drains {
    /// Node id -> when its drain started.
    draining: BTreeMap<String, u64>,
    /// The highest Raft id a removed node held: a node registering later gets a higher one, so
    /// no group ever meets one id on two nodes.
    removed_raft_id_max: u64,
}

impl Drains {
    pub fn is_empty(&self) -> bool {
        *self == Drains::default()
    }
}

impl Catalog {
    /// Starts draining `node_id` (again: nothing changes).
    pub(super) fn drain_node(&mut self, node_id: &str, now_ms: u64) -> Result<(), StrataError> {
        if self.format_generation < DRAINS_GENERATION {
            return Err(StrataError::invalid(format!(
                "nodes are drained once the cluster writes format generation {DRAINS_GENERATION}"
            )));
        }
        if !self.nodes.contains_key(node_id) {
            return Err(StrataError::invalid(format!("storage node {node_id} is not registered")));
        }
        self.drains.draining.entry(node_id.to_owned()).or_insert(now_ms);
        Ok(())
    }

    /// Deregisters a drained node: refused while it is not draining or still holds a replica.
    pub(super) fn remove_node(&mut self, node_id: &str) -> Result<(), StrataError> {
        if !self.is_draining(node_id) {
            return Err(StrataError::invalid(format!("storage node {node_id} is not draining; drain it first")));
        }
        let held: Vec<String> = self
            .shards
            .values()
            .filter(|s| s.replicas.iter().chain(&s.leaving).any(|r| r == node_id))
            .map(|s| s.shard_id.to_string())
            .collect();
        if !held.is_empty() {
            return Err(StrataError::invalid(format!(
                "storage node {node_id} still holds replicas of shards {}",
                held.join(", ")
            )));
        }
        if let Some(node) = self.nodes.remove(node_id) {
            self.drains.removed_raft_id_max = self.drains.removed_raft_id_max.max(node.raft_id);
        }
        self.drains.draining.remove(node_id);
        Ok(())
    }

    pub fn is_draining(&self, node_id: &str) -> bool {
        self.drains.draining.contains_key(node_id)
    }

    /// The draining nodes and when each drain started.
    pub fn draining_nodes(&self) -> impl Iterator<Item = (&String, u64)> {
        self.drains.draining.iter().map(|(node, &at)| (node, at))
    }

    /// Where a replica of shard `shard_id` on a draining node goes: a node of `live` that is not
    /// draining and holds no replica of the shard, in a zone the shard's other replicas do not
    /// use when there is one, hosting the fewest shards.
    pub fn replacement_for(&self, shard_id: u64, leaving: &str, live: &[String]) -> Option<String> {
        let shard = self.shards.get(&shard_id)?;
        let zone_of = |node: &str| self.nodes.get(node).map(|n| n.zone.clone()).unwrap_or_default();
        let used_zones: Vec<String> =
            shard.replicas.iter().filter(|r| r.as_str() != leaving).map(|r| zone_of(r)).collect();
        let candidates = self.nodes.values().filter(|n| {
            live.contains(&n.node_id)
                && !self.is_draining(&n.node_id)
                && !shard.replicas.contains(&n.node_id)
                && !shard.leaving.contains(&n.node_id)
        });
        candidates
            .min_by_key(|n| (used_zones.contains(&n.zone), self.shards_of(&n.node_id).count(), n.node_id.clone()))
            .map(|n| n.node_id.clone())
    }

    /// The Raft id of a node registering for the first time.
    pub(super) fn next_raft_id(&self) -> u64 {
        let registered = self.nodes.values().map(|n| n.raft_id).max().unwrap_or(0);
        registered.max(self.drains.removed_raft_id_max) + 1
    }
}
