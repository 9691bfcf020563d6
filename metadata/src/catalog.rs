//! The metadata catalog: the pure, replicated state of the metadata quorum.
//!
//! It records tenants, queues (with their incarnation ids and shard placement), storage nodes,
//! shards and the segment catalog. [`Catalog::apply`] is deterministic: time comes in the
//! command, ids come from the log index (a queue's incarnation id is the index of the entry that
//! created it, unique and increasing for the life of the service).
//!
//! Invariants:
//! - a (tenant, name) pair maps to at most one live queue; deleting and re-creating a name gives a
//!   new incarnation id, so old messages and receipts can never resolve to the new queue;
//! - a segment key is recorded at most once per shard, and committing the same segment twice is a
//!   no-op (uploads may be retried after a crash);
//! - a storage node re-registering bumps the writer epoch of every shard it hosts, so objects it
//!   writes after a restart never share a key with objects written before.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use strata_common::error::{ErrorKind, StrataError};
use strata_wal::raft_state::ReplicatedState;

/// Most shards one registration may create.
pub const INITIAL_SHARDS_MAX: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub retention_ms: u64,
    pub visibility_timeout_ms: u64,
    pub delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub tenant: String,
    pub name: String,
    pub queue_id: u64,
    pub shard_id: u64,
    pub config: QueueConfig,
    pub created_ms: u64,
    pub modified_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub address: String,
    pub registered_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard_id: u64,
    pub node_id: String,
    pub writer_epoch: u64,
}

/// A tiered segment of a shard, as recorded in the catalog (the wire type is the record).
pub type SegmentRecord = strata_common::proto::Segment;

/// A mutation of the catalog, carried in a Raft log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    EnsureTenant { tenant: String, now_ms: u64 },
    CreateQueue { tenant: String, name: String, config: QueueConfig, now_ms: u64 },
    DeleteQueue { tenant: String, name: String },
    SetQueueConfig { tenant: String, name: String, config: QueueConfig, now_ms: u64 },
    RegisterStorageNode { node_id: String, address: String, initial_shards: u32, now_ms: u64 },
    CommitSegment(SegmentRecord),
    RemoveSegments { shard_id: u64, object_keys: Vec<String> },
}

impl fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaCommand::EnsureTenant { tenant, .. } => write!(f, "ensure-tenant {tenant}"),
            MetaCommand::CreateQueue { tenant, name, .. } => write!(f, "create-queue {tenant}/{name}"),
            MetaCommand::DeleteQueue { tenant, name } => write!(f, "delete-queue {tenant}/{name}"),
            MetaCommand::SetQueueConfig { tenant, name, .. } => write!(f, "set-queue-config {tenant}/{name}"),
            MetaCommand::RegisterStorageNode { node_id, .. } => write!(f, "register-node {node_id}"),
            MetaCommand::CommitSegment(s) => write!(f, "commit-segment {}", s.object_key),
            MetaCommand::RemoveSegments { shard_id, object_keys } => {
                write!(f, "remove-segments shard={shard_id} n={}", object_keys.len())
            }
        }
    }
}

/// A public error carried through the log (the kind by its stable code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaError {
    pub code: String,
    pub message: String,
}

impl From<StrataError> for MetaError {
    fn from(e: StrataError) -> Self {
        Self { code: e.kind.code().to_string(), message: e.message }
    }
}

impl From<MetaError> for StrataError {
    fn from(e: MetaError) -> Self {
        StrataError::new(ErrorKind::from_code(&e.code).unwrap_or(ErrorKind::Internal), e.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    Tenant(TenantRecord),
    Queue(QueueRecord),
    Shards(Vec<ShardRecord>),
    Error(MetaError),
}

/// The replicated catalog.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Catalog {
    tenants: BTreeMap<String, TenantRecord>,
    /// Keyed by (tenant, name).
    queues: BTreeMap<(String, String), QueueRecord>,
    nodes: BTreeMap<String, NodeRecord>,
    shards: BTreeMap<u64, ShardRecord>,
    /// Per shard, keyed by first log index.
    segments: BTreeMap<u64, BTreeMap<u64, SegmentRecord>>,
}

/// FNV-1a: a stable hash (unlike std's, which is randomly seeded) for placing queues on shards.
fn stable_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

impl Catalog {
    pub fn queue(&self, tenant: &str, name: &str) -> Option<&QueueRecord> {
        self.queues.get(&(tenant.to_string(), name.to_string()))
    }

    /// Queues of a tenant with names starting with `prefix` and strictly after `start_after`,
    /// in name order; the flag says whether more remain.
    pub fn list_queues(&self, tenant: &str, prefix: &str, start_after: &str, max: usize) -> (Vec<QueueRecord>, bool) {
        let from = (tenant.to_string(), start_after.to_string());
        let mut out = Vec::new();
        let mut more = false;
        for ((t, name), record) in self.queues.range(from..) {
            if t != tenant {
                break;
            }
            if name.as_str() <= start_after || !name.starts_with(prefix) {
                continue;
            }
            if out.len() == max {
                more = true;
                break;
            }
            out.push(record.clone());
        }
        (out, more)
    }

    pub fn shard(&self, shard_id: u64) -> Option<&ShardRecord> {
        self.shards.get(&shard_id)
    }

    pub fn node(&self, node_id: &str) -> Option<&NodeRecord> {
        self.nodes.get(node_id)
    }

    pub fn segments(&self, shard_id: u64) -> Vec<SegmentRecord> {
        self.segments.get(&shard_id).map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    fn apply_command(&mut self, log_index: u64, command: &MetaCommand) -> Result<MetaResponse, StrataError> {
        match command {
            MetaCommand::EnsureTenant { tenant, now_ms } => {
                strata_common::names::validate_tenant(tenant)?;
                let record = self
                    .tenants
                    .entry(tenant.clone())
                    .or_insert_with(|| TenantRecord { tenant: tenant.clone(), created_ms: *now_ms });
                Ok(MetaResponse::Tenant(record.clone()))
            }
            MetaCommand::CreateQueue { tenant, name, config, now_ms } => {
                strata_common::names::validate_queue_name(name)?;
                if !self.tenants.contains_key(tenant) {
                    return Err(StrataError::new(ErrorKind::Unauthenticated, "unknown tenant"));
                }
                if let Some(existing) = self.queue(tenant, name) {
                    if existing.config == *config {
                        return Ok(MetaResponse::Queue(existing.clone()));
                    }
                    return Err(StrataError::new(
                        ErrorKind::QueueAlreadyExists,
                        format!("queue '{name}' already exists with different attributes"),
                    ));
                }
                let shard_ids: Vec<u64> = self.shards.keys().copied().collect();
                if shard_ids.is_empty() {
                    return Err(StrataError::unavailable("no storage node has registered yet; retry shortly"));
                }
                let pick = (stable_hash(&[tenant, name]) % shard_ids.len() as u64) as usize;
                let record = QueueRecord {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    queue_id: log_index,
                    shard_id: shard_ids[pick],
                    config: *config,
                    created_ms: *now_ms,
                    modified_ms: *now_ms,
                };
                self.queues.insert((tenant.clone(), name.clone()), record.clone());
                Ok(MetaResponse::Queue(record))
            }
            MetaCommand::DeleteQueue { tenant, name } => self
                .queues
                .remove(&(tenant.clone(), name.clone()))
                .map(MetaResponse::Queue)
                .ok_or_else(|| StrataError::queue_not_found(name)),
            MetaCommand::SetQueueConfig { tenant, name, config, now_ms } => {
                let record = self
                    .queues
                    .get_mut(&(tenant.clone(), name.clone()))
                    .ok_or_else(|| StrataError::queue_not_found(name))?;
                record.config = *config;
                record.modified_ms = *now_ms;
                Ok(MetaResponse::Queue(record.clone()))
            }
            MetaCommand::RegisterStorageNode { node_id, address, initial_shards, now_ms } => {
                if *initial_shards > INITIAL_SHARDS_MAX {
                    return Err(StrataError::invalid(format!("initial_shards must be at most {INITIAL_SHARDS_MAX}")));
                }
                self.nodes.insert(
                    node_id.clone(),
                    NodeRecord { node_id: node_id.clone(), address: address.clone(), registered_ms: *now_ms },
                );
                if self.shards.is_empty() {
                    for shard_id in 1..=u64::from(*initial_shards) {
                        self.shards
                            .insert(shard_id, ShardRecord { shard_id, node_id: node_id.clone(), writer_epoch: 0 });
                    }
                }
                let mut hosted = Vec::new();
                for shard in self.shards.values_mut().filter(|s| s.node_id == *node_id) {
                    shard.writer_epoch += 1;
                    hosted.push(shard.clone());
                }
                Ok(MetaResponse::Shards(hosted))
            }
            MetaCommand::CommitSegment(segment) => {
                let shard = self
                    .shards
                    .get(&segment.shard_id)
                    .ok_or_else(|| StrataError::invalid(format!("unknown shard {}", segment.shard_id)))?;
                if segment.writer_epoch > shard.writer_epoch {
                    return Err(StrataError::invalid("segment writer epoch is from the future"));
                }
                let per_shard = self.segments.entry(segment.shard_id).or_default();
                match per_shard.get(&segment.first_index) {
                    Some(existing) if existing == segment => Ok(MetaResponse::Done),
                    Some(existing) => Err(StrataError::invalid(format!(
                        "segment at index {} is already recorded as {}",
                        segment.first_index, existing.object_key
                    ))),
                    None => {
                        per_shard.insert(segment.first_index, segment.clone());
                        Ok(MetaResponse::Done)
                    }
                }
            }
            MetaCommand::RemoveSegments { shard_id, object_keys } => {
                if let Some(per_shard) = self.segments.get_mut(shard_id) {
                    per_shard.retain(|_, s| !object_keys.contains(&s.object_key));
                }
                Ok(MetaResponse::Done)
            }
        }
    }
}

impl ReplicatedState for Catalog {
    type Command = MetaCommand;
    type Response = MetaResponse;

    fn apply(&mut self, log_index: u64, command: &MetaCommand) -> MetaResponse {
        self.apply_command(log_index, command).unwrap_or_else(|e| MetaResponse::Error(e.into()))
    }

    fn noop_response() -> MetaResponse {
        MetaResponse::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: QueueConfig = QueueConfig { retention_ms: 60_000, visibility_timeout_ms: 30_000, delay_ms: 0 };

    fn register_node(c: &mut Catalog, index: u64) -> MetaResponse {
        let command = MetaCommand::RegisterStorageNode {
            node_id: "n1".into(),
            address: "a".into(),
            initial_shards: 2,
            now_ms: 0,
        };
        c.apply(index, &command)
    }

    fn catalog_with_node() -> Catalog {
        let mut c = Catalog::default();
        register_node(&mut c, 1);
        c.apply(2, &MetaCommand::EnsureTenant { tenant: "t1".into(), now_ms: 0 });
        c.apply(3, &MetaCommand::EnsureTenant { tenant: "t2".into(), now_ms: 0 });
        c
    }

    fn create(c: &mut Catalog, index: u64, tenant: &str, name: &str, config: QueueConfig) -> MetaResponse {
        c.apply(index, &MetaCommand::CreateQueue { tenant: tenant.into(), name: name.into(), config, now_ms: 5 })
    }

    #[test]
    fn create_is_idempotent_and_conflicts_on_other_attributes() {
        let mut c = catalog_with_node();
        let MetaResponse::Queue(q) = create(&mut c, 10, "t1", "q", CONFIG) else { panic!() };
        assert_eq!(q.queue_id, 10);
        assert_eq!(create(&mut c, 11, "t1", "q", CONFIG), MetaResponse::Queue(q));
        let other = QueueConfig { delay_ms: 5, ..CONFIG };
        let MetaResponse::Error(e) = create(&mut c, 12, "t1", "q", other) else { panic!() };
        assert_eq!(e.code, "QueueAlreadyExists");
    }

    #[test]
    fn recreated_queue_gets_new_incarnation_and_tenants_are_separate() {
        let mut c = catalog_with_node();
        create(&mut c, 10, "t1", "q", CONFIG);
        create(&mut c, 11, "t2", "q", CONFIG);
        assert_eq!(c.queue("t2", "q").map(|q| q.queue_id), Some(11));
        c.apply(12, &MetaCommand::DeleteQueue { tenant: "t1".into(), name: "q".into() });
        assert!(c.queue("t1", "q").is_none());
        assert!(c.queue("t2", "q").is_some());
        create(&mut c, 13, "t1", "q", CONFIG);
        assert_eq!(c.queue("t1", "q").map(|q| q.queue_id), Some(13));
        let MetaResponse::Error(e) = c.apply(14, &MetaCommand::DeleteQueue { tenant: "t2".into(), name: "zz".into() })
        else {
            panic!()
        };
        assert_eq!(e.code, "QueueNotFound");
    }

    #[test]
    fn listing_pages_within_one_tenant() {
        let mut c = catalog_with_node();
        for (i, name) in ["a1", "a2", "b1", "a3"].iter().enumerate() {
            create(&mut c, 10 + i as u64, "t1", name, CONFIG);
        }
        create(&mut c, 20, "t2", "a0", CONFIG);
        let (page, more) = c.list_queues("t1", "a", "", 2);
        assert_eq!(page.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["a1", "a2"]);
        assert!(more);
        let (page, more) = c.list_queues("t1", "a", "a2", 2);
        assert_eq!(page.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["a3"]);
        assert!(!more);
    }

    #[test]
    fn reregistration_bumps_writer_epoch_and_segments_are_idempotent() {
        let mut c = catalog_with_node();
        assert_eq!(c.shard(1).map(|s| s.writer_epoch), Some(1));
        register_node(&mut c, 5);
        assert_eq!(c.shard(1).map(|s| s.writer_epoch), Some(2));
        let seg = SegmentRecord {
            shard_id: 1,
            first_index: 1,
            last_index: 9,
            object_key: "k".into(),
            size_bytes: 3,
            crc32c: 7,
            writer_epoch: 2,
        };
        assert_eq!(c.apply(6, &MetaCommand::CommitSegment(seg.clone())), MetaResponse::Done);
        assert_eq!(c.apply(7, &MetaCommand::CommitSegment(seg.clone())), MetaResponse::Done);
        let conflicting = SegmentRecord { object_key: "other".into(), ..seg.clone() };
        assert!(matches!(c.apply(8, &MetaCommand::CommitSegment(conflicting)), MetaResponse::Error(_)));
        assert_eq!(c.segments(1), vec![seg]);
        c.apply(9, &MetaCommand::RemoveSegments { shard_id: 1, object_keys: vec!["k".into()] });
        assert!(c.segments(1).is_empty());
    }
}
