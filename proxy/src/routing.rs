//! Where a tenant's queue lives: (tenant, name) → queue incarnation and shard → storage node
//! address, cached from metadata.
//!
//! Caches are only hints. A storage node that answers `QueueNotFound` for a cached incarnation
//! makes the proxy drop the entry and ask metadata again, so a deleted-and-recreated queue is
//! never served from a stale incarnation.

use std::collections::HashMap;

use parking_lot::Mutex;
use strata_common::error::StrataError;
use strata_common::proto as pb;
use strata_metadata::MetadataClient;

use crate::storage_client::{StorageClients, StorageGrpcClient};

/// Cached queue placements at most; the cache is cleared when it would grow past this.
const QUEUE_CACHE_ENTRIES_MAX: usize = 100_000;

pub struct Router {
    pub metadata: MetadataClient,
    storage: StorageClients,
    queues: Mutex<HashMap<(String, String), pb::QueueInfo>>,
    shard_addresses: Mutex<HashMap<u64, String>>,
}

impl Router {
    pub fn new(metadata: MetadataClient, storage: StorageClients) -> Self {
        Self { metadata, storage, queues: Mutex::new(HashMap::new()), shard_addresses: Mutex::new(HashMap::new()) }
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

    /// A client for the storage node hosting `shard_id`.
    pub async fn storage_for(&self, shard_id: u64) -> Result<StorageGrpcClient, StrataError> {
        let cached = self.shard_addresses.lock().get(&shard_id).cloned();
        let address = match cached {
            Some(a) => a,
            None => {
                let shard = self.metadata.get_shard(shard_id).await?;
                self.shard_addresses.lock().insert(shard_id, shard.address.clone());
                shard.address
            }
        };
        self.storage.get(&address)
    }
}

/// The storage-side reference of a queue for one request.
pub fn queue_ref(info: &pb::QueueInfo) -> pb::QueueRef {
    pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: info.tenant.clone() }
}
