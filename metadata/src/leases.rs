//! Storage-node leases: a registered node is live while it has heartbeated within
//! [`LEASE_MS`].
//!
//! Leases are kept by the metadata leader in memory, not in the replicated catalog: a heartbeat
//! every few seconds from every node would otherwise be a Raft write each. The cost is that a new
//! leader cannot know who heartbeated its predecessor, so it starts every known node's lease
//! afresh when it starts leading (in a new term): liveness errs towards "live" for one lease
//! after a failover, never towards declaring a live node dead.

use std::collections::HashMap;

use parking_lot::Mutex;
use strata_common::format::FormatGeneration;

use strata_common::limits::LEASE_MS;

#[derive(Default)]
struct Inner {
    /// The leader term the heartbeats below were received in.
    term: u64,
    /// When this member started taking heartbeats in `term`.
    since_ms: u64,
    /// Node id → its last heartbeat.
    heartbeats: HashMap<String, Heartbeat>,
    /// Shard id → its load as its leader last reported it: (log entries per minute, when).
    shard_loads: HashMap<u64, (u64, u64)>,
}

/// What a node's last heartbeat said.
struct Heartbeat {
    /// When it came (ms, from the metadata clock).
    at_ms: u64,
    /// The newest format generation the node reads.
    format_generation_max: FormatGeneration,
}

/// The leases this member knows, for the term it leads in.
#[derive(Default)]
pub struct Leases {
    inner: Mutex<Inner>,
}

impl Leases {
    /// Starts afresh when `term` is a new leader term.
    fn in_term(inner: &mut Inner, term: u64, now_ms: u64) {
        if inner.term != term {
            *inner = Inner { term, since_ms: now_ms, ..Inner::default() };
        }
    }

    /// Records a heartbeat of `node_id`, which reads format generations up to
    /// `format_generation_max`.
    pub fn heartbeat(&self, node_id: &str, term: u64, now_ms: u64, format_generation_max: FormatGeneration) {
        let mut inner = self.inner.lock();
        Self::in_term(&mut inner, term, now_ms);
        inner.heartbeats.insert(node_id.to_owned(), Heartbeat { at_ms: now_ms, format_generation_max });
    }

    /// Records the load of a shard, as its leader reported it in a heartbeat.
    pub fn shard_load(&self, shard_id: u64, entries_per_minute: u64, term: u64, now_ms: u64) {
        let mut inner = self.inner.lock();
        Self::in_term(&mut inner, term, now_ms);
        inner.shard_loads.insert(shard_id, (entries_per_minute, now_ms));
    }

    /// A shard's load (log entries per minute) as reported within the last lease in `term`;
    /// `None` when unknown.
    pub fn load_of(&self, shard_id: u64, term: u64, now_ms: u64) -> Option<u64> {
        let inner = self.inner.lock();
        if inner.term != term {
            return None;
        }
        let &(load, at_ms) = inner.shard_loads.get(&shard_id)?;
        (now_ms.saturating_sub(at_ms) < LEASE_MS).then_some(load)
    }

    /// The newest format generation `node_id` reads, as it said in a heartbeat in `term` (`None`
    /// before its first heartbeat to this leader).
    pub fn format_generation_max(&self, node_id: &str, term: u64) -> Option<FormatGeneration> {
        let inner = self.inner.lock();
        if inner.term != term {
            return None;
        }
        inner.heartbeats.get(node_id).map(|h| h.format_generation_max)
    }

    /// Whether `node_id` is live: it heartbeated within the lease, or this member began leading
    /// less than a lease ago (and so cannot know).
    pub fn is_live(&self, node_id: &str, term: u64, now_ms: u64) -> bool {
        let mut inner = self.inner.lock();
        Self::in_term(&mut inner, term, now_ms);
        let since = inner.heartbeats.get(node_id).map_or(inner.since_ms, |h| h.at_ms);
        now_ms.saturating_sub(since) < LEASE_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_from_the_last_heartbeat_and_a_new_term_starts_afresh() {
        let leases = Leases::default();
        // A new leader: everyone is live for one lease, then only who heartbeated.
        assert!(leases.is_live("a", 1, 1_000));
        leases.heartbeat("a", 1, 5_000, 1);
        assert_eq!(leases.format_generation_max("a", 1), Some(1));
        assert_eq!(leases.format_generation_max("b", 1), None);
        assert!(leases.is_live("b", 1, 1_000 + LEASE_MS - 1));
        assert!(!leases.is_live("b", 1, 1_000 + LEASE_MS));
        assert!(leases.is_live("a", 1, 5_000 + LEASE_MS - 1));
        assert!(!leases.is_live("a", 1, 5_000 + LEASE_MS));
        // Another term (this member leads again after someone else did): a fresh start.
        assert!(leases.is_live("b", 2, 40_000));
        assert!(!leases.is_live("a", 2, 40_000 + LEASE_MS));
    }
}
