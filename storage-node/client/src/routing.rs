//! Where a tenant's queue lives: (tenant, name) → queue incarnation and shard → storage node
//! address, cached from metadata.
//!
//! Caches are only hints. A storage node that answers `QueueNotFound` for a cached incarnation
//! makes the proxy drop the entry and ask metadata again, so a deleted-and-recreated queue is
//! never served from a stale incarnation. A replicated shard is reached at the replica believed to
//! lead: a replica that does not lead names the leader, and one that cannot be reached makes the
//! proxy try the next replica ([`Router::reroute`]).

use std::collections::HashMap;

use parking_lot::Mutex;
use strata_common::error::StrataError;
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;

use crate::clients::{StorageClients, StorageGrpcClient};

/// Cached queue placements at most; the cache is cleared when it would grow past this.
const QUEUE_CACHE_ENTRIES_MAX: usize = 100_000;

pub struct Router {
    pub metadata: MetadataClient,
    storage: StorageClients,
    queues: Mutex<HashMap<(String, String), pb::QueueInfo>>,
    shards: Mutex<HashMap<u64, ShardRoute>>,
}

/// Where a shard is reached: the replica believed to lead, and every replica's address.
#[derive(Debug, Clone)]
struct ShardRoute {
    current: String,
    replicas: Vec<String>,
}

impl Router {
    pub fn new(metadata: MetadataClient, storage: StorageClients) -> Self {
        Self { metadata, storage, queues: Mutex::new(HashMap::new()), shards: Mutex::new(HashMap::new()) }
    }

    /// The queue's placement, from cache or metadata.
    pub async fn queue(&self, tenant: &str, name: &str) -> Result<pb::QueueInfo, StrataError> {
        let key = (tenant.to_string(), name.to_string());
        if let Some(info) = self.queues.lock().get(&key) {
            return Ok(info.clone());
        }
        let info = self.metadata.get_queue(tenant, name).await?;
        self.remember(info.clone());
        Ok(info)
    }

    pub fn remember(&self, info: pb::QueueInfo) {
        let mut queues = self.queues.lock();
        if queues.len() >= QUEUE_CACHE_ENTRIES_MAX {
            queues.clear();
        }
        queues.insert((info.tenant.clone(), info.name.clone()), info);
    }

    pub fn forget(&self, tenant: &str, name: &str) {
        self.queues.lock().remove(&(tenant.to_string(), name.to_string()));
    }

    /// A client for the storage node at `address`.
    pub fn storage_at(&self, address: &str) -> Result<StorageGrpcClient, StrataError> {
        self.storage.get(address)
    }

    /// A client for the replica of `shard_id` believed to lead (its writer at first).
    pub async fn storage_for(&self, shard_id: u64) -> Result<StorageGrpcClient, StrataError> {
        let cached = self.shards.lock().get(&shard_id).map(|route| route.current.clone());
        let address = match cached {
            Some(a) => a,
            None => {
                let shard = self.metadata.get_shard(shard_id).await?;
                let replicas = shard.replicas.iter().map(|r| r.address.clone()).collect();
                let route = ShardRoute { current: shard.address.clone(), replicas };
                self.shards.lock().insert(shard_id, route);
                shard.address
            }
        };
        self.storage.get(&address)
    }

    /// After a replica of `shard_id` answered `Unavailable`: go to `leader` when it named one,
    /// else to the next replica; after the last one, read the placement from metadata again
    /// (replicas may have moved to other nodes). False when there is nowhere else to go (one
    /// replica).
    pub fn reroute(&self, shard_id: u64, leader: Option<&str>) -> bool {
        let mut shards = self.shards.lock();
        let Some(route) = shards.get_mut(&shard_id) else { return false };
        match leader {
            Some(leader) if leader != route.current => {
                route.current = leader.to_owned();
                true
            }
            _ if route.replicas.len() > 1 => {
                match route.replicas.iter().position(|r| *r == route.current) {
                    Some(at) if at + 1 < route.replicas.len() => route.current = route.replicas[at + 1].clone(),
                    _ => {
                        shards.remove(&shard_id);
                    }
                }
                true
            }
            _ => false,
        }
    }
}

/// The storage-side reference of a queue for one request.
pub fn queue_ref(info: &pb::QueueInfo) -> pb::QueueRef {
    pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: info.tenant.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router_with(shard_id: u64, current: &str, replicas: &[&str]) -> Router {
        let credentials = strata_tls::pki::test_credentials(strata_tls::Role::Proxy, "proxy");
        let metadata = MetadataClient::connect_lazy("https://127.0.0.1:9", &credentials).expect("lazy client");
        let router = Router::new(metadata, StorageClients::new(credentials));
        let route =
            ShardRoute { current: current.to_owned(), replicas: replicas.iter().map(|r| r.to_string()).collect() };
        router.shards.lock().insert(shard_id, route);
        router
    }

    fn current(router: &Router, shard_id: u64) -> String {
        router.shards.lock().get(&shard_id).map(|r| r.current.clone()).unwrap_or_default()
    }

    // Tokio for the lazily connecting metadata client the router holds (never called here).
    #[tokio::test]
    async fn reroute_follows_a_named_leader_else_the_next_replica() {
        let router = router_with(1, "http://a", &["http://a", "http://b", "http://c"]);
        assert!(router.reroute(1, Some("http://c")));
        assert_eq!(current(&router, 1), "http://c");
        // No leader named, at the last replica (or at one not listed): the placement is read
        // from metadata again.
        assert!(router.reroute(1, None));
        assert_eq!(current(&router, 1), "", "the route is dropped");
        let router = router_with(1, "http://a", &["http://a", "http://b", "http://c"]);
        // Named as leader but already there (it stepped down meanwhile): the next one.
        assert!(router.reroute(1, Some("http://a")));
        assert_eq!(current(&router, 1), "http://b");
        // A single replica: nowhere else to go; an unknown shard neither.
        let single = router_with(2, "http://a", &["http://a"]);
        assert!(!single.reroute(2, None));
        assert!(!single.reroute(3, None));
    }
}
