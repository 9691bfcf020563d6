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
//! - an access key id is unique for the life of the service (revoked keys are kept, so an id
//!   is never issued twice) and belongs to exactly one tenant; a tenant has at most
//!   [`ACCESS_KEYS_PER_TENANT_MAX`] keys that are not yet revoked;
//! - every claim of a shard's writer role starts a new writer epoch (a new Raft term's leader,
//!   or, from generation 8, a restarted leader claiming again in its term), so objects written
//!   after a change of leader or a restart never share a key with objects written before.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use strata_common::error::{ErrorKind, StrataError};
use strata_common::format::{
    FormatGeneration, LEGACY_FORMAT_VERSION, LEGACY_GENERATION, Persisted, cannot_hold, invalid_data, postcard_done,
    postcard_exact, postcard_into, postcard_of_versions, postcard_take, unknown_version,
};
use strata_common::proto as pb;
use strata_raft::raft_state::ReplicatedState;
use strata_raft::requests::RecentRequests;

/// Most shards one registration may create.
pub const INITIAL_SHARDS_MAX: u32 = 64;

/// Most shards a cluster may have (each is a Raft group on every one of its replicas' nodes).
pub const SHARDS_MAX: usize = 1_024;

/// Most queues one tenant may have (their state costs a few hundred bytes each on a storage node
/// and a record here).
pub const QUEUES_PER_TENANT_MAX: u64 = 100_000;

use strata_common::limits::QUEUE_TAGS_MAX;

pub mod drains;
pub mod moves;
pub use moves::{FinishedMove, MovePhase, QueueMove};

/// Most access keys a tenant may hold at once (revoked keys past their grace period do not count).
pub const ACCESS_KEYS_PER_TENANT_MAX: usize = 10;

/// Revoked keys kept per tenant (listed as revoked); older ones are forgotten.
pub const REVOKED_ACCESS_KEYS_KEPT_MAX: usize = 50;

/// A SigV4 secret access key. It is replicated and snapshotted as is (SigV4 verification needs
/// the secret itself), but its `Debug` output is redacted so that commands and records can be
/// logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    pub access_key_id: String,
    pub tenant: String,
    pub secret: Secret,
    pub created_ms: u64,
    /// When the key stops (or stopped) working; `None` while it is active.
    pub revoked_at_ms: Option<u64>,
}

impl AccessKeyRecord {
    pub fn is_active_at(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// A queue's settings, as recorded in the catalog: retention, visibility, delay, SQS limits and
/// defaults, redrive and FIFO settings (the field docs are on the gRPC twin,
/// `proto::QueueConfig`). Persisted: the fields and their order are part of the catalog's format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub retention_ms: u64,
    pub visibility_timeout_ms: u64,
    pub delay_ms: u64,
    pub maximum_message_bytes: u64,
    pub receive_wait_ms: u64,
    pub redrive_policy: String,
    pub redrive_allow_policy: String,
    pub dead_letter_queue_id: u64,
    pub max_receive_count: u32,
    pub fifo_queue: bool,
    pub content_based_deduplication: bool,
    pub deduplication_per_group: bool,
    pub throughput_per_group: bool,
}

strata_common::same_fields!(QueueConfig, pb::QueueConfig, {
    retention_ms, visibility_timeout_ms, delay_ms, maximum_message_bytes, receive_wait_ms, redrive_policy,
    redrive_allow_policy, dead_letter_queue_id, max_receive_count, fifo_queue, content_based_deduplication,
    deduplication_per_group, throughput_per_group,
});

/// A tenant's limits; 0 means no limit of that kind. Persisted like [`QueueConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub requests_per_second: u64,
    pub payload_bytes_per_second: u64,
    pub queues_max: u64,
    pub in_flight_messages_max: u64,
    /// Not part of the serde layout: [`MetaCommand::SetStoredBytesMax`] sets it, and catalogs of
    /// format version 4 carry it after their layout; older ones hold none (0).
    #[serde(skip)]
    pub stored_bytes_max: u64,
}

strata_common::same_fields!(Limits, pb::TenantLimits, {
    requests_per_second, payload_bytes_per_second, queues_max, in_flight_messages_max, stored_bytes_max,
});

/// The limits plan a plan-less tenant follows.
pub const DEFAULT_LIMIT_PLAN: &str = "default";
/// Most limit plans.
pub const LIMIT_PLANS_MAX: usize = 1_000;
/// Longest limit plan name.
pub const LIMIT_PLAN_NAME_CHARS_MAX: usize = 64;
/// Longest reason a tenant is capped.
pub const CAPPED_REASON_CHARS_MAX: usize = 512;

/// A tenant's limits plan, its own overrides, and why its calls are refused (empty: they are not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLimitsRecord {
    pub plan: String,
    pub overrides: Limits,
    pub capped_reason: String,
}

/// Each of `overrides`' limits that is set (non-zero), else `plan`'s.
pub fn effective_limits(plan: &Limits, overrides: &Limits) -> Limits {
    let pick = |own: u64, inherited: u64| if own != 0 { own } else { inherited };
    Limits {
        requests_per_second: pick(overrides.requests_per_second, plan.requests_per_second),
        payload_bytes_per_second: pick(overrides.payload_bytes_per_second, plan.payload_bytes_per_second),
        queues_max: pick(overrides.queues_max, plan.queues_max),
        in_flight_messages_max: pick(overrides.in_flight_messages_max, plan.in_flight_messages_max),
        stored_bytes_max: pick(overrides.stored_bytes_max, plan.stored_bytes_max),
    }
}

/// A limit plan's name: 1-64 of `A-Z a-z 0-9 _ -`.
fn validate_limit_plan_name(name: &str) -> Result<(), StrataError> {
    let valid = (1..=LIMIT_PLAN_NAME_CHARS_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(StrataError::invalid(format!(
            "a limit plan name is 1-{LIMIT_PLAN_NAME_CHARS_MAX} characters of A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
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
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub address: String,
    pub registered_ms: u64,
    pub zone: String,
    pub capacity_bytes: u64,
    /// The node's id in every Raft group it is a voter of; assigned at its first registration.
    pub raft_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard_id: u64,
    /// The writer: the replica that last claimed the shard (its Raft leader), at first the first
    /// replica. Only the writer uploads segments and changes the segment catalog.
    pub node_id: String,
    /// Incremented by every claim of a new writer; part of every object key the writer uploads.
    pub writer_epoch: u64,
    /// The shard's Raft term of the last claim: a claim from an older term is refused.
    pub writer_term: u64,
    /// Every replica (distinct nodes); the first one created the Raft group, a node moved in
    /// comes last (so it never creates one).
    pub replicas: Vec<String>,
    /// Nodes moved off the shard that may still be voters of its group, until its leader
    /// confirms the group's voters are `replicas`.
    pub leaving: Vec<String>,
}

/// Most replicas per shard.
pub const REPLICATION_FACTOR_MAX: u32 = 5;

/// The replicas of the shard at position `index` among `nodes` (`(node id, zone)`, sorted by
/// id): `count` distinct nodes, in distinct zones while there are unused zones, starting at a
/// node that rotates with `index` so writers spread over the nodes. Fewer than `count` only if
/// there are fewer nodes.
pub fn place_replicas(nodes: &[(String, String)], index: usize, count: usize) -> Vec<String> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let start = index % nodes.len();
    let rotated: Vec<&(String, String)> = nodes[start..].iter().chain(&nodes[..start]).collect();
    let mut chosen: Vec<String> = Vec::new();
    let mut zones: Vec<&str> = Vec::new();
    for (node, zone) in &rotated {
        if chosen.len() < count && !zones.contains(&zone.as_str()) {
            chosen.push(node.clone());
            zones.push(zone);
        }
    }
    for (node, _) in &rotated {
        if chosen.len() < count && !chosen.contains(node) {
            chosen.push(node.clone());
        }
    }
    chosen
}

/// A tiered segment of a shard, as recorded in the catalog. Persisted like [`QueueConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub shard_id: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub object_key: String,
    pub size_bytes: u64,
    pub crc32c: u32,
    pub writer_epoch: u64,
}

strata_common::same_fields!(SegmentRecord, pb::Segment, {
    shard_id, first_index, last_index, object_key, size_bytes, crc32c, writer_epoch,
});

/// A change the catalog has recorded and a storage node still has to carry out: the leader of
/// [`Operation::shard_id`] does it and tells metadata, which ends it; a leader after a crash
/// finds it here and does it again (every step is idempotent). See `docs/elasticity.md`.
/// Persisted in catalogs of version 5: new variants go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// A deleted queue incarnation whose state its shard still holds (it holds back the shard's
    /// segment garbage collection until it goes).
    DropQueue { tenant: String, queue_id: u64, shard_id: u64 },
    /// A queue moving between shards, driven by its source shard's leader. Only catalogs of
    /// version 6 hold it.
    MoveQueue(QueueMove),
}

impl Operation {
    /// The shard whose leader carries the operation out.
    pub fn shard_id(&self) -> u64 {
        match self {
            Operation::DropQueue { shard_id, .. } => *shard_id,
            Operation::MoveQueue(queue_move) => queue_move.from_shard,
        }
    }
}

/// Most operations the journal holds: a deletion is refused (`Unavailable`, retry) while this
/// many wait for their storage nodes, which only happens while those nodes are down.
pub const OPERATIONS_MAX: usize = 100_000;

/// A mutation of the catalog, carried in a Raft log entry. New variants go at the end: the
/// variant index is part of the log's encoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    EnsureTenant {
        tenant: String,
        now_ms: u64,
    },
    CreateQueue {
        tenant: String,
        name: String,
        config: QueueConfig,
        now_ms: u64,
    },
    DeleteQueue {
        tenant: String,
        name: String,
    },
    SetQueueConfig {
        tenant: String,
        name: String,
        config: QueueConfig,
        now_ms: u64,
    },
    RegisterStorageNode {
        node_id: String,
        address: String,
        initial_shards: u32,
        now_ms: u64,
        zone: String,
        capacity_bytes: u64,
        replication_factor: u32,
    },
    CommitSegment(SegmentRecord),
    RemoveSegments {
        shard_id: u64,
        object_keys: Vec<String>,
        /// The remover's writer epoch: only the shard's current writer may remove segments.
        writer_epoch: u64,
    },
    /// The id and secret are drawn by the proposer, so applying stays deterministic.
    CreateAccessKey {
        tenant: String,
        access_key_id: String,
        secret: Secret,
        now_ms: u64,
    },
    /// Creates the new key and ends the old one `grace_ms` after `now_ms`.
    RotateAccessKey {
        tenant: String,
        old_access_key_id: String,
        access_key_id: String,
        secret: Secret,
        grace_ms: u64,
        now_ms: u64,
    },
    RevokeAccessKey {
        tenant: String,
        access_key_id: String,
        now_ms: u64,
    },
    /// Adds or replaces tags.
    TagQueue {
        tenant: String,
        name: String,
        tags: BTreeMap<String, String>,
    },
    UntagQueue {
        tenant: String,
        name: String,
        keys: Vec<String>,
    },
    /// The leader of a shard's Raft group in `raft_term` becomes its writer, with a new writer
    /// epoch; refused if a claim of a later term was made (the claimant was deposed).
    ClaimShardWriter {
        shard_id: u64,
        node_id: String,
        raft_term: u64,
    },
    /// Moves a replica of a shard from one node to another (see `MoveReplicaRequest`).
    MoveReplica {
        shard_id: u64,
        from: String,
        to: String,
    },
    /// The shard's leader saw its group's voters become `voters`: the move is done.
    ConfirmReplicas {
        shard_id: u64,
        voters: Vec<String>,
    },
    /// Creates or replaces a named limits plan.
    SetLimitPlan {
        name: String,
        limits: Limits,
    },
    /// Puts a tenant on a limits plan (empty: the default plan) with its own overrides.
    SetTenantLimits {
        tenant: String,
        plan: String,
        overrides: Limits,
    },
    /// Refuses a tenant's calls for `reason`, or lets them through again (empty reason).
    SetTenantCapped {
        tenant: String,
        reason: String,
    },
    /// The cluster writes format generation `generation` from now on (never lowered). Proposed
    /// once every metadata member and storage node reads it (see `docs/formats.md`); only
    /// command format version 2 holds it.
    SetFormatGeneration {
        generation: FormatGeneration,
    },
    /// Sets the stored-bytes limit of a limits plan or of a tenant's overrides (0: none, or the
    /// plan's); only command format version 4 holds it. [`MetaCommand::SetLimitPlan`] and
    /// [`MetaCommand::SetTenantLimits`] leave that limit as it was.
    SetStoredBytesMax {
        of: LimitsOf,
        stored_bytes_max: u64,
    },
    /// Replaces the secret of a key stored in clear (made before the cluster sealed secrets) by
    /// that secret sealed (see [`crate::sealing`]); nothing when it is sealed already or the key
    /// is gone. A key's secret never changes, so the sealed one is the same secret. Only command
    /// format version 4 holds it.
    SealSecret {
        access_key_id: String,
        secret: Secret,
    },
    /// The shard of a deleted queue incarnation dropped its state: the deletion's
    /// [`Operation::DropQueue`] ends (nothing when there is none). Only command format version 5
    /// holds it.
    QueueDropped {
        queue_id: u64,
    },
    /// Adds a shard (a new Raft group) on `replicas` (registered, distinct; the first creates
    /// the group), with the next shard id. The proposer picks live, least loaded nodes
    /// ([`Catalog::place_new_shard`]). Only command format version 5 holds it.
    AddShard {
        replicas: Vec<String>,
    },
    /// Starts moving a queue to shard `to_shard` ([`Operation::MoveQueue`]; refused while
    /// another operation holds the queue). Only command format version 6 holds it, as the two
    /// after it.
    StartQueueMove {
        tenant: String,
        name: String,
        to_shard: u64,
        now_ms: u64,
    },
    /// Takes a move's decision: switch (route the queue to the target) or roll back.
    SetQueueMovePhase {
        move_id: u64,
        phase: MovePhase,
    },
    /// Ends a decided move (its driver finished the shards' steps), with its figures.
    FinishQueueMove {
        move_id: u64,
        now_ms: u64,
        paused_ms: u64,
        bytes_moved: u64,
    },
    /// Starts draining a storage node: it takes no new replica, and the metadata leader moves
    /// its replicas away. Only command format version 7 holds it, as the one after it.
    DrainNode {
        node_id: String,
        now_ms: u64,
    },
    /// Deregisters a drained node that holds no replica any more.
    RemoveNode {
        node_id: String,
    },
    /// [`MetaCommand::CreateQueue`] on `shard_id` when it is one of the queue's two choices
    /// ([`Catalog::queue_shard_choices`]; the proposer picks the less loaded), else on the
    /// first. Only command format version 7 holds it.
    CreateQueueOn {
        tenant: String,
        name: String,
        config: QueueConfig,
        now_ms: u64,
        shard_id: u64,
    },
}

/// Whose limits a command sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitsOf {
    Plan(String),
    Tenant(String),
}

impl fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaCommand::EnsureTenant { tenant, .. } => write!(f, "ensure-tenant {tenant}"),
            MetaCommand::SetLimitPlan { name, .. } => write!(f, "set-limit-plan {name}"),
            MetaCommand::SetTenantLimits { tenant, plan, .. } => write!(f, "set-tenant-limits {tenant} plan={plan}"),
            MetaCommand::SetTenantCapped { tenant, reason } => {
                write!(f, "set-tenant-capped {tenant} capped={}", !reason.is_empty())
            }
            MetaCommand::SetFormatGeneration { generation } => write!(f, "set-format-generation {generation}"),
            MetaCommand::SetStoredBytesMax { of, stored_bytes_max } => {
                write!(f, "set-stored-bytes-max {of:?} {stored_bytes_max}")
            }
            MetaCommand::SealSecret { access_key_id, .. } => write!(f, "seal-secret {access_key_id}"),
            MetaCommand::QueueDropped { queue_id } => write!(f, "queue-dropped {queue_id}"),
            MetaCommand::AddShard { replicas } => write!(f, "add-shard {}", replicas.join(",")),
            MetaCommand::StartQueueMove { tenant, name, to_shard, .. } => {
                write!(f, "start-queue-move {tenant}/{name} to={to_shard}")
            }
            MetaCommand::SetQueueMovePhase { move_id, phase } => write!(f, "set-queue-move-phase {move_id} {phase:?}"),
            MetaCommand::FinishQueueMove { move_id, .. } => write!(f, "finish-queue-move {move_id}"),
            MetaCommand::DrainNode { node_id, .. } => write!(f, "drain-node {node_id}"),
            MetaCommand::RemoveNode { node_id } => write!(f, "remove-node {node_id}"),
            MetaCommand::CreateQueueOn { tenant, name, shard_id, .. } => {
                write!(f, "create-queue {tenant}/{name} on={shard_id}")
            }
            MetaCommand::CreateQueue { tenant, name, .. } => write!(f, "create-queue {tenant}/{name}"),
            MetaCommand::DeleteQueue { tenant, name } => write!(f, "delete-queue {tenant}/{name}"),
            MetaCommand::SetQueueConfig { tenant, name, .. } => write!(f, "set-queue-config {tenant}/{name}"),
            MetaCommand::TagQueue { tenant, name, tags } => write!(f, "tag-queue {tenant}/{name} n={}", tags.len()),
            MetaCommand::UntagQueue { tenant, name, keys } => write!(f, "untag-queue {tenant}/{name} n={}", keys.len()),
            MetaCommand::RegisterStorageNode { node_id, .. } => write!(f, "register-node {node_id}"),
            MetaCommand::CommitSegment(s) => write!(f, "commit-segment {}", s.object_key),
            MetaCommand::ClaimShardWriter { shard_id, node_id, raft_term } => {
                write!(f, "claim-shard-writer {shard_id} {node_id} term {raft_term}")
            }
            MetaCommand::MoveReplica { shard_id, from, to } => write!(f, "move-replica {shard_id} {from} -> {to}"),
            MetaCommand::ConfirmReplicas { shard_id, voters } => {
                write!(f, "confirm-replicas {shard_id} {}", voters.join(","))
            }
            MetaCommand::RemoveSegments { shard_id, object_keys, .. } => {
                write!(f, "remove-segments shard={shard_id} n={}", object_keys.len())
            }
            MetaCommand::CreateAccessKey { tenant, access_key_id, .. } => {
                write!(f, "create-access-key {tenant}/{access_key_id}")
            }
            MetaCommand::RotateAccessKey { tenant, old_access_key_id, access_key_id, .. } => {
                write!(f, "rotate-access-key {tenant}/{old_access_key_id}->{access_key_id}")
            }
            MetaCommand::RevokeAccessKey { tenant, access_key_id, .. } => {
                write!(f, "revoke-access-key {tenant}/{access_key_id}")
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

/// A metadata log entry: a command, and the id of the request that proposed it. A request
/// retried with the same id (the caller did not learn whether the first attempt was applied)
/// is answered with the first attempt's response and applied once, as long as its id is among
/// the last [`REQUEST_IDS_KEPT`] seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaEntry {
    pub request_id: Option<String>,
    pub command: MetaCommand,
}

impl fmt::Display for MetaEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.command.fmt(f)
    }
}

/// How many recent request ids the catalog remembers (retries come within seconds).
pub const REQUEST_IDS_KEPT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    Tenant(TenantRecord),
    Queue(QueueRecord),
    Shards(Vec<ShardRecord>),
    AccessKey(AccessKeyRecord),
    Error(MetaError),
    Shard(ShardRecord),
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
    /// By access key id.
    access_keys: BTreeMap<String, AccessKeyRecord>,
    /// Live queues per tenant, for the per-tenant limit.
    queues_per_tenant: BTreeMap<String, u64>,
    /// Named limits plans.
    limit_plans: BTreeMap<String, Limits>,
    /// Tenants with a plan, overrides or a cap.
    tenant_limits: BTreeMap<String, TenantLimitsRecord>,
    /// Recent request ids and what applying them answered.
    requests: RecentRequests<MetaResponse>,
    /// The format generation the cluster writes. Not part of the serde layout: catalog format
    /// version 2 appends it (see the `Persisted` impl).
    #[serde(skip)]
    format_generation: FormatGeneration,
    /// Operations storage nodes still have to carry out, by the log index that recorded them.
    /// Not part of the serde layout: catalog format version 5 appends it.
    #[serde(skip)]
    operations: BTreeMap<u64, Operation>,
    /// Queue epochs and finished moves. Not part of the serde layout: catalog format version 6
    /// appends it.
    #[serde(skip)]
    moves: moves::Moves,
    /// Nodes draining, and Raft ids of removed nodes. Not part of the serde layout: catalog
    /// format version 7 appends it.
    #[serde(skip)]
    drains: drains::Drains,
}

/// The format generation from which new SigV4 secrets are stored sealed (see
/// [`crate::sealing`]): a release before it would take the sealed text for the secret.
pub const SEALED_SECRETS_GENERATION: FormatGeneration = 3;
/// The format generation from which limits may hold a stored-bytes limit
/// ([`Limits::stored_bytes_max`]): the metadata formats of version 4 carry it.
pub const STORED_BYTES_LIMITS_GENERATION: FormatGeneration = 4;
/// The format generation from which secrets stored in clear are sealed
/// ([`MetaCommand::SealSecret`], command format version 4).
pub const SEAL_CLEAR_SECRETS_GENERATION: FormatGeneration = 4;
/// The metadata command and catalog format version of generation 4: stored-bytes limits, and
/// secrets sealed after their key was made.
const VERSION_4: u8 = 4;
/// The format generation from which queue deletions are journaled ([`Operation::DropQueue`],
/// ended by [`MetaCommand::QueueDropped`]): metadata commands and catalogs of version 5. From it
/// too, a writer claiming its shard again in the same Raft term (after a restart) gets a new
/// writer epoch (members of older releases would keep the old one, so the catalogs would part).
pub const OPERATIONS_GENERATION: FormatGeneration = 8;
/// The metadata command and catalog format version of generation 8: the operations journal.
const VERSION_5: u8 = 5;
/// The format generation from which queues move between shards ([`MetaCommand::StartQueueMove`]
/// and the two after it, [`Operation::MoveQueue`]): metadata commands and catalogs of version 6.
pub const QUEUE_MOVES_GENERATION: FormatGeneration = 9;
/// The metadata command and catalog format version of generation 9: queue moves.
const VERSION_6: u8 = 6;
/// The format generation from which storage nodes are drained and removed
/// ([`MetaCommand::DrainNode`], [`MetaCommand::RemoveNode`]): metadata commands and catalogs of
/// version 7.
pub const DRAINS_GENERATION: FormatGeneration = 10;
/// The format generation from which new queues go to the less loaded of two shards
/// ([`MetaCommand::CreateQueueOn`], command format version 7).
pub const LOAD_PLACEMENT_GENERATION: FormatGeneration = 10;
/// The metadata command and catalog format version of generation 10: node drains, placement by
/// load.
const VERSION_7: u8 = 7;

/// A metadata log entry, persisted (see `docs/formats.md`). Version 1 is the postcard encoding
/// of [`MetaEntry`] without [`MetaCommand::SetFormatGeneration`] (the legacy version is the same
/// layout); version 2 adds that command as the enum's last variant; version 3 is the layout of
/// 2 whose access-key secrets may be sealed; version 4 adds [`MetaCommand::SetStoredBytesMax`]
/// and [`MetaCommand::SealSecret`] as the last variants; version 5 adds
/// [`MetaCommand::QueueDropped`] and [`MetaCommand::AddShard`] as the last ones; version 6
/// [`MetaCommand::StartQueueMove`], [`MetaCommand::SetQueueMovePhase`] and
/// [`MetaCommand::FinishQueueMove`]; version 7 [`MetaCommand::DrainNode`],
/// [`MetaCommand::RemoveNode`] and [`MetaCommand::CreateQueueOn`].
impl Persisted for MetaEntry {
    const VERSIONS: &'static [u8] = &[LEGACY_FORMAT_VERSION, 2, 2, 3, 4, 4, 4, 4, VERSION_5, VERSION_6, VERSION_7];

    fn version_needed(&self) -> u8 {
        match &self.command {
            MetaCommand::CreateAccessKey { secret, .. } | MetaCommand::RotateAccessKey { secret, .. }
                if crate::sealing::is_sealed(&secret.0) =>
            {
                3
            }
            MetaCommand::StartQueueMove { .. }
            | MetaCommand::SetQueueMovePhase { .. }
            | MetaCommand::FinishQueueMove { .. } => VERSION_6,
            MetaCommand::DrainNode { .. } | MetaCommand::RemoveNode { .. } | MetaCommand::CreateQueueOn { .. } => {
                VERSION_7
            }
            MetaCommand::QueueDropped { .. } | MetaCommand::AddShard { .. } => VERSION_5,
            MetaCommand::SetStoredBytesMax { .. } | MetaCommand::SealSecret { .. } => VERSION_4,
            MetaCommand::SetFormatGeneration { .. } => 2,
            _ => LEGACY_FORMAT_VERSION,
        }
    }

    fn encode_body(&self, version: u8, out: &mut Vec<u8>) -> std::io::Result<()> {
        if version < self.version_needed() {
            return Err(cannot_hold("metadata command", version));
        }
        postcard_into(self, out)
    }

    fn decode_body(version: u8, body: &[u8]) -> std::io::Result<Self> {
        // Every version so far is one layout; version 2 may hold one more command, version 3
        // sealed secrets, versions 4 and 5 more commands again.
        let layouts = [LEGACY_FORMAT_VERSION, 1, 2, 3, 4, VERSION_5, VERSION_6, VERSION_7];
        postcard_of_versions("metadata command", version, &layouts, body)
    }
}

/// The catalog in a metadata snapshot. Version 1 is the postcard encoding of [`Catalog`]'s serde
/// layout (the legacy version is the same); version 2 appends the format generation; version 3
/// is the layout of 2 whose access-key secrets may be sealed; version 4 appends after the
/// generation the stored-bytes limits ([`StoredBytesLimits`]); version 5 appends after them
/// the operations journal ([`Catalog::operations`]); version 6 appends after it the queue
/// epochs and finished moves, and its journal may hold [`Operation::MoveQueue`]; version 7
/// appends after them the node drains ([`drains::Drains`]).
impl Persisted for Catalog {
    const VERSIONS: &'static [u8] = &[LEGACY_FORMAT_VERSION, 2, 2, 3, 4, 4, 4, 4, VERSION_5, VERSION_6, VERSION_7];

    fn version_needed(&self) -> u8 {
        let moving = self.operations.values().any(|op| matches!(op, Operation::MoveQueue(_)));
        if !self.drains.is_empty() {
            VERSION_7
        } else if moving || !self.moves.is_empty() {
            VERSION_6
        } else if !self.operations.is_empty() {
            VERSION_5
        } else if self.stored_bytes_limits() != StoredBytesLimits::default() {
            VERSION_4
        } else if self.access_keys.values().any(|k| crate::sealing::is_sealed(&k.secret.0)) {
            3
        } else if self.format_generation > LEGACY_GENERATION {
            2
        } else {
            LEGACY_FORMAT_VERSION
        }
    }

    fn encode_body(&self, version: u8, out: &mut Vec<u8>) -> std::io::Result<()> {
        if version < self.version_needed() {
            return Err(cannot_hold("metadata catalog", version));
        }
        postcard_into(self, out)?;
        if version >= 2 {
            postcard_into(&self.format_generation, out)?;
        }
        if version >= VERSION_4 {
            postcard_into(&self.stored_bytes_limits(), out)?;
        }
        if version >= VERSION_5 {
            postcard_into(&self.operations, out)?;
        }
        if version >= VERSION_6 {
            postcard_into(&self.moves, out)?;
        }
        if version >= VERSION_7 {
            postcard_into(&self.drains, out)?;
        }
        Ok(())
    }

    fn decode_body(version: u8, body: &[u8]) -> std::io::Result<Self> {
        match version {
            LEGACY_FORMAT_VERSION | 1 => postcard_exact(body),
            2..=VERSION_7 => {
                // The serde layout, then what each version appends, in order; nothing after.
                let mut rest = body;
                let mut catalog: Catalog = postcard_take(&mut rest)?;
                catalog.format_generation = postcard_take(&mut rest)?;
                if version >= VERSION_4 {
                    catalog.set_stored_bytes_limits(postcard_take(&mut rest)?)?;
                }
                if version >= VERSION_5 {
                    catalog.operations = postcard_take(&mut rest)?;
                }
                if version >= VERSION_6 {
                    catalog.moves = postcard_take(&mut rest)?;
                }
                if version >= VERSION_7 {
                    catalog.drains = postcard_take(&mut rest)?;
                }
                postcard_done(rest)?;
                Ok(catalog)
            }
            v => Err(unknown_version("metadata catalog", v)),
        }
    }
}

/// The stored-bytes limits of a catalog's plans and tenants' overrides, in the order of their
/// maps: what catalog format version 4 appends.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredBytesLimits {
    plans: Vec<u64>,
    tenants: Vec<u64>,
}

impl Catalog {
    /// The stored-bytes limits, empty when none is set.
    fn stored_bytes_limits(&self) -> StoredBytesLimits {
        let plans: Vec<u64> = self.limit_plans.values().map(|l| l.stored_bytes_max).collect();
        let tenants: Vec<u64> = self.tenant_limits.values().map(|r| r.overrides.stored_bytes_max).collect();
        if plans.iter().chain(&tenants).all(|&bytes| bytes == 0) {
            return StoredBytesLimits::default();
        }
        StoredBytesLimits { plans, tenants }
    }

    fn set_stored_bytes_limits(&mut self, limits: StoredBytesLimits) -> std::io::Result<()> {
        if limits == StoredBytesLimits::default() {
            return Ok(());
        }
        if limits.plans.len() != self.limit_plans.len() || limits.tenants.len() != self.tenant_limits.len() {
            return Err(invalid_data("the stored-bytes limits do not match the catalog's plans and tenants"));
        }
        for (plan, bytes) in self.limit_plans.values_mut().zip(limits.plans) {
            plan.stored_bytes_max = bytes;
        }
        for (record, bytes) in self.tenant_limits.values_mut().zip(limits.tenants) {
            record.overrides.stored_bytes_max = bytes;
        }
        Ok(())
    }
}

/// SplitMix64's finalizer: every bit of `x` moves every bit of the answer.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

    /// The shards a new queue of `tenant` named `name` may go to, first choice first: two picked
    /// by stable hashes of its name (one when they coincide) among the shards that take queues.
    /// From generation 8, only shards whose group runs (a leader claimed the writer role) take
    /// queues, so a shard added at runtime serves its first queue at once; all of them while
    /// none is claimed yet (a cluster just made). The proposer places the queue on the less
    /// loaded of the two ([`MetaCommand::CreateQueueOn`]), so queues spread by load without
    /// every create of a burst landing on one shard.
    pub fn queue_shard_choices(&self, tenant: &str, name: &str) -> Vec<u64> {
        let mut shard_ids: Vec<u64> = self.shards.keys().copied().collect();
        let claimed: Vec<u64> = self.shards.values().filter(|s| s.writer_epoch > 0).map(|s| s.shard_id).collect();
        if self.format_generation >= OPERATIONS_GENERATION && !claimed.is_empty() {
            shard_ids = claimed;
        }
        if shard_ids.is_empty() {
            return Vec::new();
        }
        let count = shard_ids.len() as u64;
        let hash = stable_hash(&[tenant, name]);
        let first = shard_ids[(hash % count) as usize];
        // FNV's low bits of two hashes of the same bytes move together: the second choice
        // mixes all of the hash's bits.
        let second = shard_ids[(mix64(hash) % count) as usize];
        if first == second { vec![first] } else { vec![first, second] }
    }

    /// Creates a queue on `preferred` when it is one of its choices
    /// ([`Catalog::queue_shard_choices`]), else on the first choice; an existing queue of the
    /// same configuration is answered as created.
    fn create_queue(
        &mut self,
        log_index: u64,
        tenant: &str,
        name: &str,
        config: &QueueConfig,
        now_ms: u64,
        preferred: Option<u64>,
    ) -> Result<QueueRecord, StrataError> {
        strata_common::names::validate_queue_name(name)?;
        if !self.tenants.contains_key(tenant) {
            return Err(StrataError::new(ErrorKind::Unauthenticated, "unknown tenant"));
        }
        if let Some(existing) = self.queue(tenant, name) {
            if existing.config == *config {
                return Ok(existing.clone());
            }
            return Err(StrataError::new(
                ErrorKind::QueueAlreadyExists,
                format!("queue '{name}' already exists with different attributes"),
            ));
        }
        self.check_dead_letter_not_moving(None, config.dead_letter_queue_id)?;
        let count = self.queues_per_tenant.get(tenant).copied().unwrap_or(0);
        let limit = match self.limits_of(tenant).1.queues_max {
            0 => QUEUES_PER_TENANT_MAX,
            own => own.min(QUEUES_PER_TENANT_MAX),
        };
        if count >= limit {
            return Err(StrataError::new(
                ErrorKind::LimitExceeded,
                format!("this tenant may have at most {limit} queues; delete some first"),
            ));
        }
        let choices = self.queue_shard_choices(tenant, name);
        let Some(&first) = choices.first() else {
            return Err(StrataError::unavailable("no storage node has registered yet; retry shortly"));
        };
        let shard_id = preferred.filter(|p| choices.contains(p)).unwrap_or(first);
        let record = QueueRecord {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            queue_id: log_index,
            shard_id,
            config: config.clone(),
            created_ms: now_ms,
            modified_ms: now_ms,
            tags: BTreeMap::new(),
        };
        self.queues.insert((tenant.to_owned(), name.to_owned()), record.clone());
        *self.queues_per_tenant.entry(tenant.to_owned()).or_insert(0) += 1;
        Ok(record)
    }

    /// The queues placed on `shard_id`, by queue id, at most `max` (a scan of every queue).
    pub fn queues_on_shard(&self, shard_id: u64, max: usize) -> Vec<&QueueRecord> {
        let mut on_shard: Vec<&QueueRecord> = self.queues.values().filter(|q| q.shard_id == shard_id).collect();
        on_shard.sort_by_key(|q| q.queue_id);
        on_shard.truncate(max);
        on_shard
    }

    /// The live queue of `tenant` whose id is `queue_id` (a scan of the tenant's queues).
    pub fn queue_by_id(&self, tenant: &str, queue_id: u64) -> Option<&QueueRecord> {
        let of_tenant = self.queues.range((tenant.to_string(), String::new())..);
        of_tenant.take_while(|((t, _), _)| t == tenant).map(|(_, q)| q).find(|q| q.queue_id == queue_id)
    }

    /// Tenants after `start_after` by id, at most `max`, with their live queue counts; and
    /// whether more follow.
    pub fn list_tenants(&self, start_after: &str, max: usize) -> (Vec<(TenantRecord, u64)>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut page: Vec<(TenantRecord, u64)> = self
            .tenants
            .range::<str, _>((Excluded(start_after), Unbounded))
            .take(max.saturating_add(1))
            .map(|(id, record)| (record.clone(), self.queues_per_tenant.get(id).copied().unwrap_or(0)))
            .collect();
        let more = page.len() > max;
        page.truncate(max);
        (page, more)
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

    /// The format generation the cluster writes.
    pub fn format_generation(&self) -> FormatGeneration {
        self.format_generation
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every registered storage node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// The shards `node_id` was moved off that may still count it as a voter.
    pub fn shards_leaving<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a ShardRecord> + 'a {
        self.shards.values().filter(move |s| s.leaving.iter().any(|r| r == node_id))
    }

    /// The shards `node_id` holds a replica of.
    pub fn shards(&self) -> impl Iterator<Item = &ShardRecord> {
        self.shards.values()
    }

    pub fn shards_of<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a ShardRecord> + 'a {
        self.shards.values().filter(move |s| s.replicas.iter().any(|r| r == node_id))
    }

    /// The replicas of a new shard: `count` of the nodes `live`, those hosting the fewest
    /// shards first, in distinct zones while there are unused zones (see [`place_replicas`]).
    /// Fewer than `count` only if fewer are live. Draining nodes take none.
    pub fn place_new_shard(&self, live: &[String], count: usize) -> Vec<String> {
        let mut nodes: Vec<(usize, String, String)> = self
            .nodes
            .values()
            .filter(|n| live.contains(&n.node_id) && !self.is_draining(&n.node_id))
            .map(|n| (self.shards_of(&n.node_id).count(), n.node_id.clone(), n.zone.clone()))
            .collect();
        nodes.sort();
        let nodes: Vec<(String, String)> = nodes.into_iter().map(|(_, node, zone)| (node, zone)).collect();
        place_replicas(&nodes, 0, count)
    }

    /// The open operations of the shards `shard_ids`, oldest first, at most `max`: (id, what).
    pub fn operations_of(&self, shard_ids: &[u64], max: usize) -> Vec<(u64, Operation)> {
        let of_shards = self.operations.iter().filter(|(_, op)| shard_ids.contains(&op.shard_id()));
        of_shards.take(max).map(|(&id, op)| (id, op.clone())).collect()
    }

    pub fn segments(&self, shard_id: u64) -> Vec<SegmentRecord> {
        self.segments.get(&shard_id).map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    fn queue_mut(&mut self, tenant: &str, name: &str) -> Result<&mut QueueRecord, StrataError> {
        self.queues.get_mut(&(tenant.to_string(), name.to_string())).ok_or_else(|| StrataError::queue_not_found(name))
    }

    pub fn access_key(&self, access_key_id: &str) -> Option<&AccessKeyRecord> {
        self.access_keys.get(access_key_id)
    }

    /// Up to `max` keys whose secret is stored in clear (made before the cluster sealed secrets,
    /// or by a member without KEKs): their ids and secrets.
    pub fn clear_secrets(&self, max: usize) -> Vec<(String, Secret)> {
        let clear = self.access_keys.values().filter(|k| !crate::sealing::is_sealed(&k.secret.0));
        clear.take(max).map(|k| (k.access_key_id.clone(), k.secret.clone())).collect()
    }

    /// A tenant's keys (active and kept revoked ones), by id.
    pub fn limit_plans(&self) -> &BTreeMap<String, Limits> {
        &self.limit_plans
    }

    /// A tenant's limits record and its effective limits.
    pub fn limits_of(&self, tenant: &str) -> (TenantLimitsRecord, Limits) {
        let record = self.tenant_limits.get(tenant).cloned().unwrap_or_default();
        let plan_name = if record.plan.is_empty() { DEFAULT_LIMIT_PLAN } else { &record.plan };
        let plan = self.limit_plans.get(plan_name).cloned().unwrap_or_default();
        let effective = effective_limits(&plan, &record.overrides);
        (record, effective)
    }

    pub fn access_keys_of(&self, tenant: &str) -> Vec<AccessKeyRecord> {
        self.access_keys.values().filter(|k| k.tenant == tenant).cloned().collect()
    }

    /// The tenant's key `access_key_id`, as "not found" when it belongs to someone else.
    fn own_access_key(&mut self, tenant: &str, access_key_id: &str) -> Result<&mut AccessKeyRecord, StrataError> {
        self.access_keys.get_mut(access_key_id).filter(|k| k.tenant == tenant).ok_or_else(|| {
            StrataError::new(ErrorKind::AccessKeyNotFound, format!("access key '{access_key_id}' does not exist"))
        })
    }

    /// Adds a key after checking the id is new and the tenant has room. The tenant's last
    /// [`REVOKED_ACCESS_KEYS_KEPT_MAX`] revoked keys stay in the catalog, answered as revoked.
    fn add_access_key(&mut self, record: AccessKeyRecord) -> Result<MetaResponse, StrataError> {
        if self.access_keys.contains_key(&record.access_key_id) {
            return Err(StrataError::invalid("access key id already issued; retry to draw another"));
        }
        let now_ms = record.created_ms;
        let tenant = record.tenant.clone();
        let active = self.access_keys.values().filter(|k| k.tenant == tenant && k.is_active_at(now_ms)).count();
        if active >= ACCESS_KEYS_PER_TENANT_MAX {
            return Err(StrataError::new(
                ErrorKind::LimitExceeded,
                format!("a tenant may hold at most {ACCESS_KEYS_PER_TENANT_MAX} access keys; revoke one first"),
            ));
        }
        let mut revoked: Vec<(u64, String)> = self
            .access_keys
            .values()
            .filter(|k| k.tenant == tenant && !k.is_active_at(now_ms))
            .map(|k| (k.revoked_at_ms.unwrap_or(0), k.access_key_id.clone()))
            .collect();
        if revoked.len() > REVOKED_ACCESS_KEYS_KEPT_MAX {
            revoked.sort();
            for (_, id) in &revoked[..revoked.len() - REVOKED_ACCESS_KEYS_KEPT_MAX] {
                self.access_keys.remove(id);
            }
        }
        self.tenants.entry(tenant.clone()).or_insert_with(|| TenantRecord { tenant, created_ms: now_ms });
        self.access_keys.insert(record.access_key_id.clone(), record.clone());
        Ok(MetaResponse::AccessKey(record))
    }

    fn apply_command(&mut self, log_index: u64, command: &MetaCommand) -> Result<MetaResponse, StrataError> {
        match command {
            MetaCommand::SetLimitPlan { name, limits } => {
                validate_limit_plan_name(name)?;
                if !self.limit_plans.contains_key(name) && self.limit_plans.len() >= LIMIT_PLANS_MAX {
                    return Err(StrataError::new(
                        ErrorKind::LimitExceeded,
                        format!("at most {LIMIT_PLANS_MAX} limit plans; change an existing one"),
                    ));
                }
                let stored_bytes_max = self.limit_plans.get(name).map_or(0, |l| l.stored_bytes_max);
                self.limit_plans.insert(name.clone(), Limits { stored_bytes_max, ..*limits });
                Ok(MetaResponse::Done)
            }
            MetaCommand::SetTenantLimits { tenant, plan, overrides } => {
                strata_common::names::validate_tenant(tenant)?;
                if !plan.is_empty() && !self.limit_plans.contains_key(plan) {
                    return Err(StrataError::invalid(format!("no limit plan '{plan}'; create it first")));
                }
                let record = self.tenant_limits.entry(tenant.clone()).or_default();
                record.plan = plan.clone();
                record.overrides = Limits { stored_bytes_max: record.overrides.stored_bytes_max, ..*overrides };
                Ok(MetaResponse::Done)
            }
            MetaCommand::SealSecret { access_key_id, secret } => {
                if !crate::sealing::is_sealed(&secret.0) {
                    return Err(StrataError::invalid("a secret to seal in place must be sealed"));
                }
                let seal = |record: &mut AccessKeyRecord| {
                    if !crate::sealing::is_sealed(&record.secret.0) {
                        record.secret = secret.clone();
                    }
                };
                if let Some(record) = self.access_keys.get_mut(access_key_id) {
                    seal(record);
                }
                // The key's creation is remembered with its answer, which holds the secret too.
                self.requests.update_answers(|answer| match answer {
                    MetaResponse::AccessKey(record) if record.access_key_id == *access_key_id => seal(record),
                    _ => {}
                });
                Ok(MetaResponse::Done)
            }
            MetaCommand::SetStoredBytesMax { of, stored_bytes_max } => {
                let limits = match of {
                    LimitsOf::Plan(name) => self
                        .limit_plans
                        .get_mut(name)
                        .ok_or_else(|| StrataError::invalid(format!("no limit plan '{name}'; create it first")))?,
                    LimitsOf::Tenant(tenant) => {
                        strata_common::names::validate_tenant(tenant)?;
                        &mut self.tenant_limits.entry(tenant.clone()).or_default().overrides
                    }
                };
                limits.stored_bytes_max = *stored_bytes_max;
                Ok(MetaResponse::Done)
            }
            MetaCommand::AddShard { replicas } => {
                if self.shards.is_empty() {
                    return Err(StrataError::unavailable(
                        "the cluster has no shards yet: storage nodes make the first ones as they register",
                    ));
                }
                if self.shards.len() >= SHARDS_MAX {
                    return Err(StrataError::new(
                        ErrorKind::LimitExceeded,
                        format!("a cluster has at most {SHARDS_MAX} shards"),
                    ));
                }
                let count = replicas.len();
                if count == 0 || count > REPLICATION_FACTOR_MAX as usize {
                    return Err(StrataError::invalid(format!("a shard has 1-{REPLICATION_FACTOR_MAX} replicas")));
                }
                let distinct: std::collections::BTreeSet<&String> = replicas.iter().collect();
                if distinct.len() != count {
                    return Err(StrataError::invalid("a shard's replicas are on distinct nodes"));
                }
                if let Some(unknown) = replicas.iter().find(|r| !self.nodes.contains_key(*r)) {
                    return Err(StrataError::invalid(format!("storage node {unknown} is not registered")));
                }
                let shard_id = self.shards.keys().next_back().copied().unwrap_or(0) + 1;
                let record = ShardRecord {
                    shard_id,
                    node_id: replicas[0].clone(),
                    writer_epoch: 0,
                    writer_term: 0,
                    replicas: replicas.clone(),
                    leaving: Vec::new(),
                };
                self.shards.insert(shard_id, record.clone());
                Ok(MetaResponse::Shard(record))
            }
            MetaCommand::StartQueueMove { tenant, name, to_shard, now_ms } => {
                Ok(MetaResponse::Queue(self.start_queue_move(log_index, tenant, name, *to_shard, *now_ms)?))
            }
            MetaCommand::SetQueueMovePhase { move_id, phase } => {
                self.set_queue_move_phase(*move_id, phase)?;
                Ok(MetaResponse::Done)
            }
            MetaCommand::FinishQueueMove { move_id, now_ms, paused_ms, bytes_moved } => {
                self.finish_queue_move(*move_id, *now_ms, *paused_ms, *bytes_moved)?;
                Ok(MetaResponse::Done)
            }
            MetaCommand::DrainNode { node_id, now_ms } => {
                self.drain_node(node_id, *now_ms)?;
                Ok(MetaResponse::Done)
            }
            MetaCommand::RemoveNode { node_id } => {
                self.remove_node(node_id)?;
                Ok(MetaResponse::Done)
            }
            MetaCommand::QueueDropped { queue_id } => {
                self.operations
                    .retain(|_, op| !matches!(op, Operation::DropQueue { queue_id: q, .. } if q == queue_id));
                Ok(MetaResponse::Done)
            }
            MetaCommand::SetFormatGeneration { generation } => {
                self.format_generation = self.format_generation.max(*generation);
                Ok(MetaResponse::Done)
            }
            MetaCommand::SetTenantCapped { tenant, reason } => {
                strata_common::names::validate_tenant(tenant)?;
                if reason.len() > CAPPED_REASON_CHARS_MAX {
                    return Err(StrataError::invalid(format!("a reason is at most {CAPPED_REASON_CHARS_MAX} bytes")));
                }
                self.tenant_limits.entry(tenant.clone()).or_default().capped_reason = reason.clone();
                Ok(MetaResponse::Done)
            }
            MetaCommand::EnsureTenant { tenant, now_ms } => {
                strata_common::names::validate_tenant_or_system(tenant)?;
                let record = self
                    .tenants
                    .entry(tenant.clone())
                    .or_insert_with(|| TenantRecord { tenant: tenant.clone(), created_ms: *now_ms });
                Ok(MetaResponse::Tenant(record.clone()))
            }
            MetaCommand::CreateQueue { tenant, name, config, now_ms } => {
                Ok(MetaResponse::Queue(self.create_queue(log_index, tenant, name, config, *now_ms, None)?))
            }
            MetaCommand::CreateQueueOn { tenant, name, config, now_ms, shard_id } => {
                Ok(MetaResponse::Queue(self.create_queue(log_index, tenant, name, config, *now_ms, Some(*shard_id))?))
            }
            MetaCommand::DeleteQueue { tenant, name } => {
                let journaled = self.format_generation >= OPERATIONS_GENERATION;
                if journaled && self.operations.len() >= OPERATIONS_MAX {
                    return Err(StrataError::unavailable(
                        "too many deleted queues wait for their storage nodes; retry later",
                    ));
                }
                let moving = self.queue(tenant, name).is_some_and(|r| self.is_moving(r.queue_id));
                if moving {
                    return Err(StrataError::unavailable("the queue is moving between shards; retry in a moment"));
                }
                let record = self
                    .queues
                    .remove(&(tenant.clone(), name.clone()))
                    .ok_or_else(|| StrataError::queue_not_found(name))?;
                self.forget_queue_epoch(record.queue_id);
                if journaled {
                    let (queue_id, shard_id) = (record.queue_id, record.shard_id);
                    self.operations
                        .insert(log_index, Operation::DropQueue { tenant: tenant.clone(), queue_id, shard_id });
                }
                if let Some(count) = self.queues_per_tenant.get_mut(tenant) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.queues_per_tenant.remove(tenant);
                    }
                }
                Ok(MetaResponse::Queue(record))
            }
            MetaCommand::SetQueueConfig { tenant, name, config, now_ms } => {
                let queue_id = self.queue_mut(tenant, name)?.queue_id;
                self.check_dead_letter_not_moving(Some(queue_id), config.dead_letter_queue_id)?;
                let record = self.queue_mut(tenant, name)?;
                record.config = config.clone();
                record.modified_ms = *now_ms;
                Ok(MetaResponse::Queue(record.clone()))
            }
            MetaCommand::TagQueue { tenant, name, tags } => {
                let record = self.queue_mut(tenant, name)?;
                for (key, value) in tags {
                    strata_common::names::validate_tag(key, value)?;
                }
                let added = tags.keys().filter(|k| !record.tags.contains_key(*k)).count();
                if record.tags.len() + added > QUEUE_TAGS_MAX {
                    // InvalidParameter, as SQS answers (InvalidParameterValue) for too many tags.
                    return Err(StrataError::invalid(format!("a queue may have at most {QUEUE_TAGS_MAX} tags")));
                }
                record.tags.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(MetaResponse::Queue(record.clone()))
            }
            MetaCommand::UntagQueue { tenant, name, keys } => {
                let record = self.queue_mut(tenant, name)?;
                for key in keys {
                    record.tags.remove(key);
                }
                Ok(MetaResponse::Queue(record.clone()))
            }
            MetaCommand::RegisterStorageNode {
                node_id,
                address,
                initial_shards,
                now_ms,
                zone,
                capacity_bytes,
                replication_factor,
            } => {
                if *initial_shards > INITIAL_SHARDS_MAX {
                    return Err(StrataError::invalid(format!("initial_shards must be at most {INITIAL_SHARDS_MAX}")));
                }
                let replication_factor = (*replication_factor).max(1);
                if replication_factor > REPLICATION_FACTOR_MAX {
                    return Err(StrataError::invalid(format!(
                        "replication_factor must be at most {REPLICATION_FACTOR_MAX}"
                    )));
                }
                // A node keeps its Raft id across registrations.
                let raft_id = match self.nodes.get(node_id) {
                    Some(known) => known.raft_id,
                    None => self.next_raft_id(),
                };
                let record = NodeRecord {
                    node_id: node_id.clone(),
                    address: address.clone(),
                    registered_ms: *now_ms,
                    zone: zone.clone(),
                    capacity_bytes: *capacity_bytes,
                    raft_id,
                };
                self.nodes.insert(node_id.clone(), record);
                // The shards are created once enough nodes have registered to place them.
                let count = usize::try_from(replication_factor).unwrap_or(1);
                if self.shards.is_empty() && self.nodes.len() >= count {
                    let nodes: Vec<(String, String)> =
                        self.nodes.values().map(|n| (n.node_id.clone(), n.zone.clone())).collect();
                    for (index, shard_id) in (1..=u64::from(*initial_shards)).enumerate() {
                        let replicas = place_replicas(&nodes, index, count);
                        let writer = replicas.first().cloned().unwrap_or_else(|| node_id.clone());
                        self.shards.insert(
                            shard_id,
                            ShardRecord {
                                shard_id,
                                node_id: writer,
                                writer_epoch: 0,
                                writer_term: 0,
                                replicas,
                                leaving: Vec::new(),
                            },
                        );
                    }
                }
                let hosted = self.shards.values().filter(|s| s.replicas.contains(node_id)).cloned().collect();
                Ok(MetaResponse::Shards(hosted))
            }
            MetaCommand::CommitSegment(segment) => {
                let shard = self
                    .shards
                    .get(&segment.shard_id)
                    .ok_or_else(|| StrataError::invalid(format!("unknown shard {}", segment.shard_id)))?;
                check_writer_epoch(shard, segment.writer_epoch)?;
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
            MetaCommand::RemoveSegments { shard_id, object_keys, writer_epoch } => {
                let shard = self
                    .shards
                    .get(shard_id)
                    .ok_or_else(|| StrataError::invalid(format!("unknown shard {shard_id}")))?;
                check_writer_epoch(shard, *writer_epoch)?;
                if let Some(per_shard) = self.segments.get_mut(shard_id) {
                    per_shard.retain(|_, s| !object_keys.contains(&s.object_key));
                }
                Ok(MetaResponse::Done)
            }
            MetaCommand::ClaimShardWriter { shard_id, node_id, raft_term } => {
                let shard = self
                    .shards
                    .get_mut(shard_id)
                    .ok_or_else(|| StrataError::invalid(format!("unknown shard {shard_id}")))?;
                // A node being moved off may still lead until the group lets it go.
                if !shard.replicas.contains(node_id) && !shard.leaving.contains(node_id) {
                    return Err(StrataError::invalid(format!("{node_id} holds no replica of shard {shard_id}")));
                }
                // From the operations generation, the writer that claims again in its term (its
                // process restarted: a Raft term can outlive a single voter's restart) gets a new
                // epoch too, so what it uploads never meets what it uploaded before.
                let reclaim = self.format_generation >= OPERATIONS_GENERATION
                    && *raft_term == shard.writer_term
                    && shard.node_id == *node_id;
                if *raft_term > shard.writer_term || reclaim {
                    shard.node_id = node_id.clone();
                    shard.writer_term = *raft_term;
                    shard.writer_epoch += 1;
                } else if *raft_term < shard.writer_term || shard.node_id != *node_id {
                    // One leader per term: a different node in the same term is a bug elsewhere.
                    return Err(StrataError::invalid(format!(
                        "claim of shard {shard_id} in Raft term {raft_term} is stale (term {} claimed by {})",
                        shard.writer_term, shard.node_id
                    )));
                }
                Ok(MetaResponse::Shard(shard.clone()))
            }
            MetaCommand::MoveReplica { shard_id, from, to } => {
                if !self.nodes.contains_key(to) {
                    return Err(StrataError::invalid(format!("storage node {to} is not registered")));
                }
                if self.is_draining(to) {
                    return Err(StrataError::invalid(format!("storage node {to} is draining")));
                }
                let shard = self
                    .shards
                    .get_mut(shard_id)
                    .ok_or_else(|| StrataError::invalid(format!("unknown shard {shard_id}")))?;
                if !shard.leaving.is_empty() {
                    return Err(StrataError::invalid(format!(
                        "shard {shard_id} is still moving a replica off {}; retry once that is done",
                        shard.leaving.join(", ")
                    )));
                }
                if !shard.replicas.contains(from) {
                    return Err(StrataError::invalid(format!("{from} holds no replica of shard {shard_id}")));
                }
                if shard.replicas.contains(to) {
                    return Err(StrataError::invalid(format!("{to} already holds a replica of shard {shard_id}")));
                }
                shard.replicas.retain(|r| r != from);
                shard.replicas.push(to.clone());
                shard.leaving.push(from.clone());
                Ok(MetaResponse::Shard(shard.clone()))
            }
            MetaCommand::ConfirmReplicas { shard_id, voters } => {
                let shard = self
                    .shards
                    .get_mut(shard_id)
                    .ok_or_else(|| StrataError::invalid(format!("unknown shard {shard_id}")))?;
                let mut have: Vec<&String> = voters.iter().collect();
                let mut want: Vec<&String> = shard.replicas.iter().collect();
                have.sort();
                want.sort();
                if have != want {
                    return Err(StrataError::invalid(format!(
                        "shard {shard_id}'s voters are not its replicas yet (another move came in between)"
                    )));
                }
                shard.leaving.clear();
                Ok(MetaResponse::Shard(shard.clone()))
            }
            MetaCommand::CreateAccessKey { tenant, access_key_id, secret, now_ms } => {
                strata_common::names::validate_tenant(tenant)?;
                self.add_access_key(AccessKeyRecord {
                    access_key_id: access_key_id.clone(),
                    tenant: tenant.clone(),
                    secret: secret.clone(),
                    created_ms: *now_ms,
                    revoked_at_ms: None,
                })
            }
            MetaCommand::RotateAccessKey { tenant, old_access_key_id, access_key_id, secret, grace_ms, now_ms } => {
                let old = self.own_access_key(tenant, old_access_key_id)?;
                if !old.is_active_at(*now_ms) {
                    return Err(StrataError::invalid(format!("access key '{old_access_key_id}' is already revoked")));
                }
                // The new key must fit beside the old one, which still counts during its grace.
                let added = self.add_access_key(AccessKeyRecord {
                    access_key_id: access_key_id.clone(),
                    tenant: tenant.clone(),
                    secret: secret.clone(),
                    created_ms: *now_ms,
                    revoked_at_ms: None,
                })?;
                self.own_access_key(tenant, old_access_key_id)?.revoked_at_ms = Some(now_ms.saturating_add(*grace_ms));
                Ok(added)
            }
            MetaCommand::RevokeAccessKey { tenant, access_key_id, now_ms } => {
                let key = self.own_access_key(tenant, access_key_id)?;
                let ends_at = key.revoked_at_ms.map_or(*now_ms, |at| at.min(*now_ms));
                key.revoked_at_ms = Some(ends_at);
                Ok(MetaResponse::AccessKey(key.clone()))
            }
        }
    }
}

/// Fences writers: only the shard's current writer epoch may change its segment catalog. A
/// writer whose epoch is older was replaced (another replica, or itself in a later term, claimed
/// the shard).
fn check_writer_epoch(shard: &ShardRecord, writer_epoch: u64) -> Result<(), StrataError> {
    if writer_epoch > shard.writer_epoch {
        return Err(StrataError::invalid("segment writer epoch is from the future"));
    }
    if writer_epoch < shard.writer_epoch {
        return Err(StrataError::invalid(format!(
            "writer epoch {writer_epoch} of shard {} is stale (current: {}): another writer took over",
            shard.shard_id, shard.writer_epoch
        )));
    }
    Ok(())
}

impl ReplicatedState for Catalog {
    type Command = MetaEntry;
    type Response = MetaResponse;
    const METRICS_GROUP: &'static str = "metadata";

    fn apply(&mut self, log_index: u64, entry: &MetaEntry) -> MetaResponse {
        if let Some(first) = entry.request_id.as_deref().and_then(|id| self.requests.answer(id)) {
            return first.clone();
        }
        let response = self.apply_command(log_index, &entry.command).unwrap_or_else(|e| MetaResponse::Error(e.into()));
        if let Some(id) = &entry.request_id {
            self.requests.remember(log_index, id, &response, REQUEST_IDS_KEPT);
        }
        response
    }

    fn noop_response() -> MetaResponse {
        MetaResponse::Done
    }

    fn copy_for_snapshot(&self) -> Self {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a command without a request id.
    trait Run {
        fn run(&mut self, log_index: u64, command: &MetaCommand) -> MetaResponse;
    }

    impl Run for Catalog {
        fn run(&mut self, log_index: u64, command: &MetaCommand) -> MetaResponse {
            self.apply(log_index, &MetaEntry { request_id: None, command: command.clone() })
        }
    }

    fn with_id(id: &str, command: MetaCommand) -> MetaEntry {
        MetaEntry { request_id: Some(id.to_owned()), command }
    }

    #[test]
    fn a_retried_request_is_applied_once_and_answered_as_the_first_time() {
        let mut c = Catalog::default();
        let create = |key: &str| MetaCommand::CreateAccessKey {
            tenant: "t1".into(),
            access_key_id: key.into(),
            secret: Secret("s".repeat(40)),
            now_ms: 0,
        };
        let first = c.apply(1, &with_id("r1", create("SKAAAAAAAAAAAAAAAAAAAA")));
        // The retry was drawn again by the proposer (a new key id): still the first answer.
        let retry = c.apply(2, &with_id("r1", create("SKBBBBBBBBBBBBBBBBBBBB")));
        assert_eq!(first, retry);
        assert_eq!(c.access_keys_of("t1").len(), 1);
        // Another id is another request.
        c.apply(3, &with_id("r2", create("SKCCCCCCCCCCCCCCCCCCCC")));
        assert_eq!(c.access_keys_of("t1").len(), 2);
    }

    #[test]
    fn request_ids_are_remembered_up_to_the_bound() {
        let mut c = Catalog::default();
        for i in 0..(REQUEST_IDS_KEPT as u64 + 5) {
            c.apply(i + 1, &with_id(&format!("r{i}"), MetaCommand::EnsureTenant { tenant: "t".into(), now_ms: 0 }));
        }
        assert_eq!(c.requests.len(), REQUEST_IDS_KEPT);
        assert!(
            c.requests.answer("r0").is_none() && c.requests.answer(&format!("r{}", REQUEST_IDS_KEPT + 4)).is_some()
        );
    }

    #[test]
    fn stale_writers_are_fenced_from_the_segment_catalog() {
        let mut c = Catalog::default();
        register_node(&mut c, 1);
        claim(&mut c, 2, "n1", 1);
        claim(&mut c, 3, "n1", 2);
        let epoch = c.shard(1).map(|s| s.writer_epoch).unwrap_or(0);
        assert_eq!(epoch, 2);
        let segment = |writer_epoch| SegmentRecord {
            shard_id: 1,
            first_index: 1,
            last_index: 9,
            object_key: format!("k{writer_epoch}"),
            size_bytes: 1,
            crc32c: 1,
            writer_epoch,
        };
        let stale = c.run(3, &MetaCommand::CommitSegment(segment(epoch - 1)));
        assert!(matches!(stale, MetaResponse::Error(_)), "{stale:?}");
        assert_eq!(c.run(4, &MetaCommand::CommitSegment(segment(epoch))), MetaResponse::Done);
        let remove = |writer_epoch| MetaCommand::RemoveSegments {
            shard_id: 1,
            object_keys: vec![format!("k{epoch}")],
            writer_epoch,
        };
        assert!(matches!(c.run(5, &remove(epoch - 1)), MetaResponse::Error(_)));
        assert_eq!(c.segments(1).len(), 1, "a stale writer removed nothing");
        assert_eq!(c.run(6, &remove(epoch)), MetaResponse::Done);
        assert!(c.segments(1).is_empty());
    }

    fn config() -> QueueConfig {
        QueueConfig { retention_ms: 60_000, visibility_timeout_ms: 30_000, ..Default::default() }
    }

    #[test]
    fn a_replica_moves_to_the_end_and_the_old_node_leaves_once_confirmed() {
        let mut c = Catalog::default();
        for (i, node) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
            register(&mut c, i as u64 + 1, node, "z", 3);
        }
        let replicas = |c: &Catalog| c.shard(1).map(|s| (s.replicas.clone(), s.leaving.clone())).expect("shard");
        let (before, _) = replicas(&c);
        let from = before[0].clone();
        let mv = |from: &str, to: &str| MetaCommand::MoveReplica { shard_id: 1, from: from.into(), to: to.into() };
        // Refused: an unknown target, a target already a replica, a source that is not one.
        assert!(matches!(c.run(5, &mv(&from, "n9")), MetaResponse::Error(_)));
        assert!(matches!(c.run(6, &mv(&from, &before[1])), MetaResponse::Error(_)));
        assert!(matches!(c.run(7, &mv("n4", &from)), MetaResponse::Error(_)));
        assert!(matches!(c.run(8, &mv(&from, "n4")), MetaResponse::Shard(_)));
        let (after, leaving) = replicas(&c);
        assert_eq!(after, [&before[1..], &["n4".to_owned()]].concat(), "the new node comes last");
        assert_eq!(leaving, std::slice::from_ref(&from));
        assert_eq!(c.shards_leaving(&from).map(|s| s.shard_id).collect::<Vec<_>>(), [1]);
        assert!(c.shards_of(&from).all(|s| s.shard_id != 1));
        // One move at a time; a confirmation must name the new replicas.
        assert!(matches!(c.run(9, &mv(&after[0], &from)), MetaResponse::Error(_)));
        let confirm = |voters: &[String]| MetaCommand::ConfirmReplicas { shard_id: 1, voters: voters.to_vec() };
        assert!(matches!(c.run(10, &confirm(&before)), MetaResponse::Error(_)));
        let mut shuffled = after.clone();
        shuffled.reverse();
        assert!(matches!(c.run(11, &confirm(&shuffled)), MetaResponse::Shard(_)));
        assert!(replicas(&c).1.is_empty());
        assert_eq!(c.shards_leaving(&from).count(), 0);
    }

    #[test]
    fn a_draining_node_takes_no_replica_and_is_removed_only_once_it_holds_none() {
        let mut c = Catalog::default();
        for (i, node) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
            register(&mut c, i as u64 + 1, node, if i == 3 { "z2" } else { "z1" }, 3);
        }
        let drain = |node: &str| MetaCommand::DrainNode { node_id: node.into(), now_ms: 5 };
        assert!(matches!(c.run(5, &drain("n1")), MetaResponse::Error(_)), "before generation 10");
        c.run(6, &MetaCommand::SetFormatGeneration { generation: DRAINS_GENERATION });
        assert!(matches!(c.run(7, &drain("n9")), MetaResponse::Error(_)), "an unknown node");
        let held: Vec<u64> = c.shards_of("n1").map(|s| s.shard_id).collect();
        assert!(!held.is_empty());
        assert_eq!(c.run(8, &drain("n1")), MetaResponse::Done);
        assert_eq!(c.run(9, &drain("n1")), MetaResponse::Done, "again: nothing changes");
        let remove = MetaCommand::RemoveNode { node_id: "n1".into() };
        assert!(matches!(c.run(10, &remove), MetaResponse::Error(_)), "it still holds replicas");
        // No replica moves to it, and no new shard lands on it.
        let live: Vec<String> = ["n1", "n2", "n3", "n4"].map(str::to_owned).to_vec();
        assert!(!c.place_new_shard(&live, 4).contains(&"n1".to_owned()));
        let onto_it = MetaCommand::MoveReplica { shard_id: held[0], from: "n4".into(), to: "n1".into() };
        assert!(matches!(c.run(11, &onto_it), MetaResponse::Error(_)));
        // Its replicas go to the node in another zone first, then to those holding the fewest.
        let mut index = 12;
        for shard_id in held {
            let to = c.replacement_for(shard_id, "n1", &live).expect("a node takes the replica");
            assert!(to != "n1" && c.shard(shard_id).is_some_and(|s| !s.replicas.contains(&to)));
            let moved = c.run(index, &MetaCommand::MoveReplica { shard_id, from: "n1".into(), to: to.clone() });
            assert!(matches!(moved, MetaResponse::Shard(_)), "{moved:?}");
            let voters = c.shard(shard_id).map(|s| s.replicas.clone()).unwrap_or_default();
            assert!(matches!(
                c.run(index + 1, &MetaCommand::ConfirmReplicas { shard_id, voters }),
                MetaResponse::Shard(_)
            ));
            index += 2;
        }
        let raft_id = c.node("n1").map(|n| n.raft_id).unwrap_or_default();
        assert_eq!(c.run(index, &remove), MetaResponse::Done);
        assert!(c.node("n1").is_none() && !c.is_draining("n1"));
        // A node registering later never gets the removed node's Raft id.
        register(&mut c, index + 1, "n1", "z1", 3);
        assert!(c.node("n1").is_some_and(|n| n.raft_id > raft_id.max(4)));
        let mut bytes = vec![Catalog::FORMAT_VERSION];
        c.encode_body(Catalog::FORMAT_VERSION, &mut bytes).expect("encode");
        let back = Catalog::decode_versioned(&bytes).expect("decode");
        assert_eq!(format!("{back:?}"), format!("{c:?}"), "the drains survive a snapshot");
    }

    #[test]
    fn a_new_queue_goes_to_the_preferred_of_its_two_shards_and_only_to_one_of_them() {
        let mut c = Catalog::default();
        for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
            register(&mut c, i as u64 + 1, node, "z", 1);
        }
        c.run(4, &MetaCommand::EnsureTenant { tenant: "acme".into(), now_ms: 5 });
        // Names whose two choices differ, and one preferred shard outside its choices.
        let names: Vec<String> = (0..40).map(|i| format!("q{i}")).collect();
        let two: Vec<&String> = names.iter().filter(|n| c.queue_shard_choices("acme", n).len() == 2).collect();
        assert!(two.len() > 10, "most names have two choices among two shards");
        for (index, name) in (10..).zip(&two) {
            let choices = c.queue_shard_choices("acme", name);
            let create = MetaCommand::CreateQueueOn {
                tenant: "acme".into(),
                name: (*name).clone(),
                config: config(),
                now_ms: 5,
                shard_id: choices[1],
            };
            assert!(matches!(c.run(index, &create), MetaResponse::Queue(ref q) if q.shard_id == choices[1]));
        }
        // A shard that is not among a queue's choices is not taken: the first choice is.
        let one = names.iter().find(|n| c.queue_shard_choices("acme", n).len() == 1).expect("a name with one choice");
        let first = c.queue_shard_choices("acme", one)[0];
        let outside = if first == 1 { 2 } else { 1 };
        let create = MetaCommand::CreateQueueOn {
            tenant: "acme".into(),
            name: one.clone(),
            config: config(),
            now_ms: 5,
            shard_id: outside,
        };
        assert!(matches!(c.run(100, &create), MetaResponse::Queue(ref q) if q.shard_id == first));
    }

    fn claim(c: &mut Catalog, index: u64, node: &str, raft_term: u64) -> MetaResponse {
        c.run(index, &MetaCommand::ClaimShardWriter { shard_id: 1, node_id: node.into(), raft_term })
    }

    fn register_node(c: &mut Catalog, index: u64) -> MetaResponse {
        register(c, index, "n1", "z1", 1)
    }

    fn register(c: &mut Catalog, index: u64, node: &str, zone: &str, replication_factor: u32) -> MetaResponse {
        let command = MetaCommand::RegisterStorageNode {
            node_id: node.into(),
            address: format!("http://{node}"),
            initial_shards: 2,
            now_ms: 0,
            zone: zone.into(),
            capacity_bytes: 1 << 40,
            replication_factor,
        };
        c.run(index, &command)
    }

    fn hosted(response: &MetaResponse) -> Vec<u64> {
        match response {
            MetaResponse::Shards(shards) => shards.iter().map(|s| s.shard_id).collect(),
            other => panic!("not a registration answer: {other:?}"),
        }
    }

    #[test]
    fn replicas_go_to_distinct_nodes_and_zones_first() {
        let nodes = |spec: &[(&str, &str)]| -> Vec<(String, String)> {
            spec.iter().map(|(n, z)| (n.to_string(), z.to_string())).collect()
        };
        // Four nodes in two zones: three replicas use both zones before doubling one up.
        let two_zones = nodes(&[("a", "z1"), ("b", "z1"), ("c", "z2"), ("d", "z2")]);
        for index in 0..8 {
            let replicas = place_replicas(&two_zones, index, 3);
            assert_eq!(replicas.len(), 3);
            let mut distinct = replicas.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{replicas:?}");
            let zones: Vec<&str> = replicas
                .iter()
                .filter_map(|r| two_zones.iter().find(|(n, _)| n == r))
                .map(|(_, z)| z.as_str())
                .collect();
            assert!(zones[..2].contains(&"z1") && zones[..2].contains(&"z2"), "first two in two zones: {replicas:?}");
        }
        // Writers (first replicas) rotate over the nodes.
        let writers: Vec<String> = (0..4).map(|i| place_replicas(&two_zones, i, 3)[0].clone()).collect();
        assert_eq!(writers, vec!["a", "b", "c", "d"]);
        // Never more replicas than nodes.
        assert_eq!(place_replicas(&two_zones[..2], 0, 3).len(), 2);
        assert!(place_replicas(&[], 0, 3).is_empty());
    }

    #[test]
    fn shards_are_created_once_enough_nodes_registered_and_each_node_learns_its_replicas() {
        let mut c = Catalog::default();
        assert_eq!(hosted(&register(&mut c, 1, "n1", "z1", 3)), Vec::<u64>::new(), "one node: no shards yet");
        assert_eq!(hosted(&register(&mut c, 2, "n2", "z2", 3)), Vec::<u64>::new());
        assert_eq!(hosted(&register(&mut c, 3, "n3", "z3", 3)), vec![1, 2], "the third node creates them");
        for shard_id in [1, 2] {
            let shard = c.shard(shard_id).cloned().expect("shard");
            let mut replicas = shard.replicas.clone();
            replicas.sort();
            assert_eq!(replicas, vec!["n1", "n2", "n3"]);
            assert_eq!(shard.node_id, shard.replicas[0], "the writer is the first replica");
        }
        assert_ne!(c.shard(1).map(|s| s.node_id.clone()), c.shard(2).map(|s| s.node_id.clone()), "writers spread");
        // The earlier nodes learn their replicas when they register again; raft ids stay.
        let raft_ids: Vec<u64> = ["n1", "n2", "n3"].iter().filter_map(|n| c.node(n)).map(|n| n.raft_id).collect();
        assert_eq!(raft_ids, vec![1, 2, 3]);
        assert_eq!(hosted(&register(&mut c, 4, "n1", "z1", 3)), vec![1, 2]);
        assert_eq!(c.node("n1").map(|n| n.raft_id), Some(1));
        // Registering again changes no writer epoch: only claims do.
        let before = c.shard(1).map(|s| s.writer_epoch);
        register(&mut c, 5, "n2", "z", 3);
        assert_eq!(c.shard(1).map(|s| s.writer_epoch), before);
    }

    fn catalog_with_node() -> Catalog {
        let mut c = Catalog::default();
        register_node(&mut c, 1);
        c.run(2, &MetaCommand::EnsureTenant { tenant: "t1".into(), now_ms: 0 });
        c.run(3, &MetaCommand::EnsureTenant { tenant: "t2".into(), now_ms: 0 });
        c
    }

    fn create(c: &mut Catalog, index: u64, tenant: &str, name: &str, config: QueueConfig) -> MetaResponse {
        c.run(index, &MetaCommand::CreateQueue { tenant: tenant.into(), name: name.into(), config, now_ms: 5 })
    }

    #[test]
    fn create_is_idempotent_and_conflicts_on_other_attributes() {
        let mut c = catalog_with_node();
        let MetaResponse::Queue(q) = create(&mut c, 10, "t1", "q", config()) else { panic!() };
        assert_eq!(q.queue_id, 10);
        assert_eq!(create(&mut c, 11, "t1", "q", config()), MetaResponse::Queue(q));
        let other = QueueConfig { delay_ms: 5, ..config() };
        let MetaResponse::Error(e) = create(&mut c, 12, "t1", "q", other) else { panic!() };
        assert_eq!(e.code, "QueueAlreadyExists");
    }

    #[test]
    fn a_deletion_is_journaled_from_the_operations_generation_until_its_shard_dropped_it() {
        let mut c = catalog_with_node();
        let delete = |name: &str| MetaCommand::DeleteQueue { tenant: "t1".into(), name: name.into() };
        create(&mut c, 10, "t1", "old", config());
        c.run(11, &delete("old"));
        assert!(c.operations.is_empty(), "before generation 8 a deletion is the old two calls");

        c.run(12, &MetaCommand::SetFormatGeneration { generation: OPERATIONS_GENERATION });
        create(&mut c, 13, "t1", "a", config());
        create(&mut c, 14, "t1", "b", config());
        let shard_of = |c: &Catalog, name: &str| c.queue("t1", name).map(|q| q.shard_id).unwrap_or_default();
        let (shard_a, shard_b) = (shard_of(&c, "a"), shard_of(&c, "b"));
        c.run(15, &delete("a"));
        c.run(16, &delete("b"));
        assert_eq!(c.queue("t1", "a"), None, "the name is free at once");
        let open = c.operations_of(&[shard_a], 10);
        assert_eq!(
            open.first(),
            Some(&(15, Operation::DropQueue { tenant: "t1".into(), queue_id: 13, shard_id: shard_a }))
        );
        assert!(c.operations_of(&[shard_a + 100], 10).is_empty(), "only the shards asked about");
        assert_eq!(c.operations_of(&[1, 2], 1).len(), 1, "at most max");

        // The drop ends it; ending it again, or one never journaled, is no error.
        for _ in 0..2 {
            assert_eq!(c.run(17, &MetaCommand::QueueDropped { queue_id: 13 }), MetaResponse::Done);
        }
        assert_eq!(c.run(18, &MetaCommand::QueueDropped { queue_id: 10 }), MetaResponse::Done);
        let left = Operation::DropQueue { tenant: "t1".into(), queue_id: 14, shard_id: shard_b };
        assert_eq!(c.operations.values().collect::<Vec<_>>(), [&left]);

        // A full journal refuses deletions (retry later) and keeps the queue.
        for id in 0..OPERATIONS_MAX as u64 {
            c.operations.insert(1_000 + id, Operation::DropQueue { tenant: "t".into(), queue_id: id, shard_id: 1 });
        }
        create(&mut c, 19, "t1", "kept", config());
        let MetaResponse::Error(e) = c.run(20, &delete("kept")) else { panic!("refused") };
        assert_eq!(e.code, ErrorKind::Unavailable.code());
        assert!(c.queue("t1", "kept").is_some());
    }

    #[test]
    fn a_queue_move_is_switched_or_rolled_back_never_both_and_holds_its_queue_meanwhile() {
        let mut c = Catalog::default();
        register(&mut c, 1, "n1", "z1", 1);
        c.run(2, &MetaCommand::EnsureTenant { tenant: "t1".into(), now_ms: 0 });
        let start = |c: &mut Catalog, index, to_shard| {
            c.run(index, &MetaCommand::StartQueueMove { tenant: "t1".into(), name: "q".into(), to_shard, now_ms: 9 })
        };
        let phase =
            |c: &mut Catalog, index, move_id, phase| c.run(index, &MetaCommand::SetQueueMovePhase { move_id, phase });
        let switched = MovePhase::Switched { at_ms: 10 };
        let rolling_back = MovePhase::RollingBack { reason: "refused".into() };
        let MetaResponse::Queue(q) = create(&mut c, 3, "t1", "q", config()) else { panic!("created") };
        let other = if q.shard_id == 1 { 2 } else { 1 };
        assert!(matches!(start(&mut c, 4, other), MetaResponse::Error(_)), "before generation 9");
        c.run(5, &MetaCommand::SetFormatGeneration { generation: QUEUE_MOVES_GENERATION });
        assert!(matches!(start(&mut c, 6, other), MetaResponse::Error(_)), "the target has not started");
        for (index, shard_id) in [(7, 1), (8, 2)] {
            c.run(index, &MetaCommand::ClaimShardWriter { shard_id, node_id: "n1".into(), raft_term: 1 });
        }
        assert!(matches!(start(&mut c, 9, q.shard_id), MetaResponse::Error(_)), "to the shard it is on");
        assert!(matches!(start(&mut c, 10, 77), MetaResponse::Error(_)), "to no shard");
        assert!(matches!(start(&mut c, 11, other), MetaResponse::Queue(_)));
        assert!(matches!(start(&mut c, 12, other), MetaResponse::Error(_)), "one operation per queue");
        let delete = MetaCommand::DeleteQueue { tenant: "t1".into(), name: "q".into() };
        assert!(matches!(c.run(13, &delete), MetaResponse::Error(_)), "not deleted while moving");
        // No dead-letter relation is made with a moving queue (its move checked them at the fence).
        let with_dead_letter = QueueConfig { dead_letter_queue_id: q.queue_id, max_receive_count: 3, ..config() };
        assert!(matches!(create(&mut c, 130, "t1", "src", with_dead_letter.clone()), MetaResponse::Error(_)));
        let set =
            MetaCommand::SetQueueConfig { tenant: "t1".into(), name: "q".into(), config: with_dead_letter, now_ms: 9 };
        assert!(matches!(c.run(131, &set), MetaResponse::Error(_)), "nor set on it");
        let finish = |c: &mut Catalog, index, move_id| {
            c.run(index, &MetaCommand::FinishQueueMove { move_id, now_ms: 20, paused_ms: 5, bytes_moved: 100 })
        };
        assert!(matches!(finish(&mut c, 14, 11), MetaResponse::Error(_)), "not decided yet");

        // Switched: routed to the target with a new epoch; a roll back is refused after it.
        assert_eq!(phase(&mut c, 15, 11, switched.clone()), MetaResponse::Done);
        assert_eq!(phase(&mut c, 16, 11, switched.clone()), MetaResponse::Done, "taken again: no change");
        assert!(matches!(phase(&mut c, 17, 11, rolling_back.clone()), MetaResponse::Error(_)));
        let moved = c.queue("t1", "q").cloned().unwrap_or_else(|| panic!("the queue is gone"));
        assert_eq!((moved.shard_id, c.queue_epoch(q.queue_id)), (other, 1));
        assert_eq!(finish(&mut c, 18, 11), MetaResponse::Done);
        assert_eq!(finish(&mut c, 19, 11), MetaResponse::Done, "ended already");

        // Rolled back: the queue stays; a switch is refused after it.
        assert!(matches!(start(&mut c, 20, q.shard_id), MetaResponse::Queue(_)));
        assert_eq!(phase(&mut c, 21, 20, rolling_back), MetaResponse::Done);
        assert!(matches!(phase(&mut c, 22, 20, switched), MetaResponse::Error(_)));
        assert_eq!(finish(&mut c, 23, 20), MetaResponse::Done);
        assert_eq!(c.queue("t1", "q").map(|q| q.shard_id), Some(other));
        assert_eq!(c.queue_epoch(q.queue_id), 1);
        let (open, finished) = c.queue_moves();
        assert!(open.is_empty());
        assert_eq!(finished.iter().map(|f| f.move_id).collect::<Vec<_>>(), [11, 20]);
        assert!(matches!(c.run(24, &delete), MetaResponse::Queue(_)), "deleted once no move holds it");
        assert_eq!(c.queue_epoch(q.queue_id), 0, "its epoch went with it");
    }

    #[test]
    fn a_shard_is_added_on_the_least_loaded_live_nodes() {
        let mut c = Catalog::default();
        let add = |c: &mut Catalog, index, replicas: &[&str]| {
            let replicas = replicas.iter().map(|r| r.to_string()).collect();
            c.run(index, &MetaCommand::AddShard { replicas })
        };
        assert!(matches!(add(&mut c, 1, &["n1"]), MetaResponse::Error(_)), "no shards yet");
        register(&mut c, 2, "n1", "z1", 2);
        register(&mut c, 3, "n2", "z2", 2);
        register(&mut c, 4, "n3", "z3", 2);
        let live: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| n.to_string()).collect();
        // Shards 1 and 2 were placed on n1 and n2 as they registered: n3 hosts none, the others
        // two each (the lower id first).
        let placed = c.place_new_shard(&live, 2);
        assert_eq!(placed, ["n3", "n1"]);
        assert_eq!(c.place_new_shard(&live[..1], 2), ["n1"], "only live nodes");
        let MetaResponse::Shard(added) = add(&mut c, 5, &["n3", "n1"]) else { panic!("added") };
        assert_eq!((added.shard_id, added.node_id.as_str(), added.writer_epoch), (3, "n3", 0));
        assert_eq!(c.shard_count(), 3);
        for (index, replicas) in [(6, &["n1", "n1"][..]), (7, &["n9"][..]), (8, &[][..])] {
            assert!(matches!(add(&mut c, index, replicas), MetaResponse::Error(_)), "{replicas:?}");
        }
        assert_eq!(c.shard_count(), 3);

        // From generation 8 queues go to shards a leader claimed: not the new one until it is.
        c.run(9, &MetaCommand::SetFormatGeneration { generation: OPERATIONS_GENERATION });
        c.run(10, &MetaCommand::EnsureTenant { tenant: "t1".into(), now_ms: 0 });
        claim(&mut c, 11, "n1", 1);
        let on_shards = |c: &mut Catalog, first: u64| -> std::collections::BTreeSet<u64> {
            (first..first + 30)
                .filter_map(|i| match create(c, i, "t1", &format!("q{i}"), config()) {
                    MetaResponse::Queue(q) => Some(q.shard_id),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(on_shards(&mut c, 100), [1].into(), "only the claimed shard");
        let claim3 = MetaCommand::ClaimShardWriter { shard_id: 3, node_id: "n1".into(), raft_term: 1 };
        c.run(200, &claim3);
        assert!(on_shards(&mut c, 300).contains(&3), "the added shard takes queues once claimed");
    }

    #[test]
    fn recreated_queue_gets_new_incarnation_and_tenants_are_separate() {
        let mut c = catalog_with_node();
        create(&mut c, 10, "t1", "q", config());
        create(&mut c, 11, "t2", "q", config());
        assert_eq!(c.queue("t2", "q").map(|q| q.queue_id), Some(11));
        c.run(12, &MetaCommand::DeleteQueue { tenant: "t1".into(), name: "q".into() });
        assert!(c.queue("t1", "q").is_none());
        assert!(c.queue("t2", "q").is_some());
        create(&mut c, 13, "t1", "q", config());
        assert_eq!(c.queue("t1", "q").map(|q| q.queue_id), Some(13));
        let MetaResponse::Error(e) = c.run(14, &MetaCommand::DeleteQueue { tenant: "t2".into(), name: "zz".into() })
        else {
            panic!()
        };
        assert_eq!(e.code, "QueueNotFound");
    }

    #[test]
    fn listing_pages_within_one_tenant() {
        let mut c = catalog_with_node();
        for (i, name) in ["a1", "a2", "b1", "a3"].iter().enumerate() {
            create(&mut c, 10 + i as u64, "t1", name, config());
        }
        create(&mut c, 20, "t2", "a0", config());
        let (page, more) = c.list_queues("t1", "a", "", 2);
        assert_eq!(page.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["a1", "a2"]);
        assert!(more);
        let (page, more) = c.list_queues("t1", "a", "a2", 2);
        assert_eq!(page.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["a3"]);
        assert!(!more);
    }

    #[test]
    fn claims_move_the_writer_by_raft_term_and_segments_are_idempotent() {
        let mut c = Catalog::default();
        register(&mut c, 1, "n1", "z1", 3);
        register(&mut c, 2, "n2", "z2", 3);
        register(&mut c, 3, "n3", "z3", 3);
        assert_eq!(c.shard(1).map(|s| s.writer_epoch), Some(0));
        let writer = |c: &Catalog| c.shard(1).map(|s| (s.node_id.clone(), s.writer_epoch, s.writer_term));
        assert!(matches!(claim(&mut c, 4, "n2", 3), MetaResponse::Shard(_)));
        assert_eq!(writer(&c), Some(("n2".into(), 1, 3)));
        // The same leader asking again in its term (a restart) before generation 8: the same epoch.
        assert!(matches!(claim(&mut c, 5, "n2", 3), MetaResponse::Shard(_)));
        assert_eq!(writer(&c), Some(("n2".into(), 1, 3)));
        // A deposed leader (older term), or another node in the same term, is refused.
        assert!(matches!(claim(&mut c, 6, "n1", 2), MetaResponse::Error(_)));
        assert!(matches!(claim(&mut c, 7, "n3", 3), MetaResponse::Error(_)));
        assert!(matches!(claim(&mut c, 8, "elsewhere", 9), MetaResponse::Error(_)), "not a replica");
        assert_eq!(writer(&c), Some(("n2".into(), 1, 3)));
        // The next term's leader takes over with a new epoch.
        claim(&mut c, 9, "n1", 4);
        assert_eq!(writer(&c), Some(("n1".into(), 2, 4)));
        claim(&mut c, 10, "n1", 5);
        assert_eq!(writer(&c), Some(("n1".into(), 3, 5)));
        // From generation 8, the same leader claiming again in its term (its process restarted)
        // gets a new epoch; others in the term are still refused.
        c.run(11, &MetaCommand::SetFormatGeneration { generation: OPERATIONS_GENERATION });
        claim(&mut c, 12, "n1", 5);
        assert_eq!(writer(&c), Some(("n1".into(), 4, 5)));
        assert!(matches!(claim(&mut c, 13, "n2", 5), MetaResponse::Error(_)));
        assert_eq!(writer(&c), Some(("n1".into(), 4, 5)));
        let mut c = catalog_with_node();
        claim(&mut c, 5, "n1", 1);
        claim(&mut c, 6, "n1", 2);
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
        assert_eq!(c.run(7, &MetaCommand::CommitSegment(seg.clone())), MetaResponse::Done);
        assert_eq!(c.run(8, &MetaCommand::CommitSegment(seg.clone())), MetaResponse::Done);
        let conflicting = SegmentRecord { object_key: "other".into(), ..seg.clone() };
        assert!(matches!(c.run(9, &MetaCommand::CommitSegment(conflicting)), MetaResponse::Error(_)));
        assert_eq!(c.segments(1), vec![seg]);
        c.run(10, &MetaCommand::RemoveSegments { shard_id: 1, object_keys: vec!["k".into()], writer_epoch: 2 });
        assert!(c.segments(1).is_empty());
    }

    fn create_key(c: &mut Catalog, index: u64, tenant: &str, id: &str, now_ms: u64) -> MetaResponse {
        let command = MetaCommand::CreateAccessKey {
            tenant: tenant.into(),
            access_key_id: id.into(),
            secret: Secret(format!("secret-of-{id}")),
            now_ms,
        };
        c.run(index, &command)
    }

    #[test]
    fn access_keys_rotate_revoke_and_stay_with_their_tenant() {
        let mut c = catalog_with_node();
        assert!(matches!(create_key(&mut c, 10, "t1", "K1", 100), MetaResponse::AccessKey(_)));
        let MetaResponse::Error(e) = create_key(&mut c, 11, "t2", "K1", 100) else { panic!("duplicate id") };
        assert_eq!(e.code, "InvalidParameter");

        // Another tenant cannot revoke or rotate t1's key: it answers as a missing one.
        let revoke = |tenant: &str, now_ms| MetaCommand::RevokeAccessKey {
            tenant: tenant.into(),
            access_key_id: "K1".into(),
            now_ms,
        };
        let MetaResponse::Error(e) = c.run(12, &revoke("t2", 200)) else { panic!("cross-tenant revoke") };
        assert_eq!(e.code, "AccessKeyNotFound");

        // Rotation with a grace period: both work until it ends, then only the new one.
        let rotate = MetaCommand::RotateAccessKey {
            tenant: "t1".into(),
            old_access_key_id: "K1".into(),
            access_key_id: "K2".into(),
            secret: Secret("s2".into()),
            grace_ms: 1_000,
            now_ms: 300,
        };
        assert!(matches!(c.run(13, &rotate), MetaResponse::AccessKey(k) if k.access_key_id == "K2"));
        let k1 = c.access_key("K1").cloned().expect("kept");
        assert!(k1.is_active_at(1_299) && !k1.is_active_at(1_300));
        // Revoking during the grace period ends it at once.
        c.run(14, &revoke("t1", 500));
        assert!(!c.access_key("K1").expect("kept").is_active_at(500));
        assert_eq!(c.access_keys_of("t1").len(), 2);
        assert!(c.access_keys_of("t2").is_empty());
        assert!(format!("{rotate:?}").contains("<redacted>") && !format!("{rotate:?}").contains("s2\""));
    }

    #[test]
    fn a_tenant_holds_a_bounded_number_of_active_keys() {
        let mut c = catalog_with_node();
        for i in 0..ACCESS_KEYS_PER_TENANT_MAX {
            assert!(matches!(create_key(&mut c, 10 + i as u64, "t1", &format!("K{i}"), 1), MetaResponse::AccessKey(_)));
        }
        let MetaResponse::Error(e) = create_key(&mut c, 50, "t1", "KX", 1) else { panic!("over the limit") };
        assert_eq!(e.code, "LimitExceeded");
        c.run(51, &MetaCommand::RevokeAccessKey { tenant: "t1".into(), access_key_id: "K0".into(), now_ms: 2 });
        assert!(matches!(create_key(&mut c, 52, "t1", "KX", 3), MetaResponse::AccessKey(_)));
    }

    #[test]
    fn tags_are_validated_bounded_and_removable() {
        let mut c = catalog_with_node();
        create(&mut c, 10, "t1", "q", config());
        let tag = |c: &mut Catalog, index, tags: &[(&str, &str)]| {
            let tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            c.run(index, &MetaCommand::TagQueue { tenant: "t1".into(), name: "q".into(), tags })
        };
        assert!(
            matches!(tag(&mut c, 11, &[("team", "a"), ("env", "dev")]), MetaResponse::Queue(q) if q.tags.len() == 2)
        );
        assert!(matches!(tag(&mut c, 12, &[("", "x")]), MetaResponse::Error(e) if e.code == "InvalidParameter"));
        let many: Vec<(String, String)> = (0..QUEUE_TAGS_MAX).map(|i| (format!("k{i}"), String::new())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(matches!(tag(&mut c, 13, &many), MetaResponse::Error(e) if e.code == "InvalidParameter"));
        let untag = MetaCommand::UntagQueue { tenant: "t1".into(), name: "q".into(), keys: vec!["team".into()] };
        assert!(matches!(c.run(14, &untag), MetaResponse::Queue(q) if q.tags.keys().collect::<Vec<_>>() == ["env"]));
        let other = MetaCommand::UntagQueue { tenant: "t2".into(), name: "q".into(), keys: vec![] };
        assert!(matches!(c.run(15, &other), MetaResponse::Error(e) if e.code == "QueueNotFound"));
    }

    #[test]
    fn a_tenant_has_a_bounded_number_of_queues_and_deleting_makes_room() {
        let mut c = catalog_with_node();
        for i in 0..QUEUES_PER_TENANT_MAX {
            assert!(matches!(create(&mut c, 10 + i, "t1", &format!("q{i}"), config()), MetaResponse::Queue(_)));
        }
        let over = create(&mut c, 1_000_000, "t1", "one-more", config());
        assert!(matches!(over, MetaResponse::Error(ref e) if e.code == "LimitExceeded"), "{over:?}");
        // Other tenants are not affected, and re-creating an existing queue still answers it.
        assert!(matches!(create(&mut c, 1_000_001, "t2", "one-more", config()), MetaResponse::Queue(_)));
        assert!(matches!(create(&mut c, 1_000_002, "t1", "q0", config()), MetaResponse::Queue(_)));
        c.run(1_000_003, &MetaCommand::DeleteQueue { tenant: "t1".into(), name: "q0".into() });
        assert!(matches!(create(&mut c, 1_000_004, "t1", "one-more", config()), MetaResponse::Queue(_)));
    }
}

/// Golden fixtures of the catalog's persisted values (see `docs/formats.md`): every command kind,
/// and a catalog built by them.
#[cfg(test)]
mod format_tests {
    use std::path::PathBuf;

    use strata_common::format::golden;

    use super::*;

    const NOW_MS: u64 = 1_796_569_000_000;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats/metadata")
    }

    fn config() -> QueueConfig {
        QueueConfig {
            retention_ms: 345_600_000,
            visibility_timeout_ms: 30_000,
            delay_ms: 0,
            maximum_message_bytes: 262_144,
            receive_wait_ms: 0,
            redrive_policy: r#"{"deadLetterTargetArn":"arn:aws:sqs:strata:acme:dlq","maxReceiveCount":"3"}"#.into(),
            redrive_allow_policy: String::new(),
            dead_letter_queue_id: 4,
            max_receive_count: 3,
            fifo_queue: true,
            content_based_deduplication: true,
            deduplication_per_group: true,
            throughput_per_group: false,
        }
    }

    fn limits() -> Limits {
        Limits {
            requests_per_second: 1_000,
            payload_bytes_per_second: 10 << 20,
            queues_max: 100,
            in_flight_messages_max: 0,
            stored_bytes_max: 0,
        }
    }

    /// A tenant's stored-bytes limit (format version 4 on).
    fn set_stored_bytes_limit() -> MetaEntry {
        MetaEntry {
            request_id: Some("req-stored-bytes".into()),
            command: MetaCommand::SetStoredBytesMax { of: LimitsOf::Tenant("t1".into()), stored_bytes_max: 5 << 30 },
        }
    }

    /// One command of every kind, in an order that also builds a catalog of every kind.
    fn commands() -> Vec<(&'static str, MetaEntry)> {
        let tenant = || "acme".to_string();
        let entry = |command| MetaEntry { request_id: Some("r-1".into()), command };
        vec![
            ("ensure-tenant", entry(MetaCommand::EnsureTenant { tenant: tenant(), now_ms: NOW_MS })),
            (
                "register-storage-node",
                entry(MetaCommand::RegisterStorageNode {
                    node_id: "node-1".into(),
                    address: "http://10.0.0.1:9500".into(),
                    initial_shards: 2,
                    now_ms: NOW_MS,
                    zone: "zone-a".into(),
                    capacity_bytes: 1 << 40,
                    replication_factor: 1,
                }),
            ),
            (
                "create-queue",
                entry(MetaCommand::CreateQueue {
                    tenant: tenant(),
                    name: "orders.fifo".into(),
                    config: config(),
                    now_ms: NOW_MS,
                }),
            ),
            (
                "create-queue-2",
                entry(MetaCommand::CreateQueue {
                    tenant: tenant(),
                    name: "spare".into(),
                    config: QueueConfig::default(),
                    now_ms: NOW_MS,
                }),
            ),
            (
                "set-queue-config",
                entry(MetaCommand::SetQueueConfig {
                    tenant: tenant(),
                    name: "orders.fifo".into(),
                    config: QueueConfig { delay_ms: 5_000, ..config() },
                    now_ms: NOW_MS + 1,
                }),
            ),
            (
                "tag-queue",
                entry(MetaCommand::TagQueue {
                    tenant: tenant(),
                    name: "orders.fifo".into(),
                    tags: BTreeMap::from([("team".into(), "payments".into()), ("env".into(), "prod".into())]),
                }),
            ),
            (
                "untag-queue",
                entry(MetaCommand::UntagQueue {
                    tenant: tenant(),
                    name: "orders.fifo".into(),
                    keys: vec!["env".into()],
                }),
            ),
            (
                "claim-shard-writer",
                entry(MetaCommand::ClaimShardWriter { shard_id: 1, node_id: "node-1".into(), raft_term: 2 }),
            ),
            (
                "commit-segment",
                entry(MetaCommand::CommitSegment(SegmentRecord {
                    shard_id: 1,
                    first_index: 7,
                    last_index: 33,
                    object_key: "shards/00000001/epoch-0000000002/00000000000000000007-00000000000000000033.seg".into(),
                    size_bytes: 25_768,
                    crc32c: 0xDEAD_BEEF,
                    writer_epoch: 2,
                })),
            ),
            (
                "remove-segments",
                entry(MetaCommand::RemoveSegments {
                    shard_id: 1,
                    object_keys: vec!["shards/none.seg".into()],
                    writer_epoch: 2,
                }),
            ),
            (
                "move-replica",
                entry(MetaCommand::MoveReplica { shard_id: 2, from: "node-1".into(), to: "node-2".into() }),
            ),
            ("confirm-replicas", entry(MetaCommand::ConfirmReplicas { shard_id: 2, voters: vec!["node-1".into()] })),
            (
                "create-access-key",
                entry(MetaCommand::CreateAccessKey {
                    tenant: tenant(),
                    access_key_id: "SKAAAAAAAAAAAAAAAAAA".into(),
                    secret: Secret("s".repeat(40)),
                    now_ms: NOW_MS,
                }),
            ),
            (
                "rotate-access-key",
                entry(MetaCommand::RotateAccessKey {
                    tenant: tenant(),
                    old_access_key_id: "SKAAAAAAAAAAAAAAAAAA".into(),
                    access_key_id: "SKBBBBBBBBBBBBBBBBBB".into(),
                    secret: Secret("t".repeat(40)),
                    grace_ms: 3_600_000,
                    now_ms: NOW_MS + 2,
                }),
            ),
            (
                "revoke-access-key",
                entry(MetaCommand::RevokeAccessKey {
                    tenant: tenant(),
                    access_key_id: "SKBBBBBBBBBBBBBBBBBB".into(),
                    now_ms: NOW_MS + 3,
                }),
            ),
            ("set-limit-plan", entry(MetaCommand::SetLimitPlan { name: "gold".into(), limits: limits() })),
            (
                "set-tenant-limits",
                entry(MetaCommand::SetTenantLimits {
                    tenant: tenant(),
                    plan: "gold".into(),
                    overrides: Limits { queues_max: 5, ..Limits::default() },
                }),
            ),
            (
                "set-tenant-capped",
                entry(MetaCommand::SetTenantCapped { tenant: tenant(), reason: "budget reached".into() }),
            ),
            (
                "delete-queue",
                MetaEntry {
                    request_id: None,
                    command: MetaCommand::DeleteQueue { tenant: tenant(), name: "spare".into() },
                },
            ),
        ]
    }

    fn set_format_generation() -> MetaEntry {
        MetaEntry { request_id: None, command: MetaCommand::SetFormatGeneration { generation: 1 } }
    }

    #[test]
    fn every_command_kind_matches_its_golden_fixture() {
        for (name, entry) in commands() {
            golden::check(&fixtures(), &format!("command-{name}"), &entry);
        }
        // Only version 2 holds it.
        golden::check(&fixtures(), "command-set-format-generation", &set_format_generation());
        assert!(set_format_generation().encode_body(LEGACY_FORMAT_VERSION, &mut Vec::new()).is_err());
        // Only version 3 holds a sealed secret: a release before it would take it for the secret.
        golden::check(&fixtures(), "command-create-access-key-sealed", &create_sealed_key());
        assert!(create_sealed_key().encode_body(2, &mut Vec::new()).is_err());
        // Only version 4 holds a stored-bytes limit, or a secret sealed in place.
        golden::check(&fixtures(), "command-set-stored-bytes-max", &set_stored_bytes_limit());
        assert!(set_stored_bytes_limit().encode_body(3, &mut Vec::new()).is_err());
        golden::check(&fixtures(), "command-seal-secret", &seal_secret("SKOLD"));
        assert!(seal_secret("SKOLD").encode_body(3, &mut Vec::new()).is_err());
        // Only version 5 holds the end of a journaled deletion, or an added shard.
        golden::check(&fixtures(), "command-queue-dropped", &queue_dropped());
        assert!(queue_dropped().encode_body(VERSION_4, &mut Vec::new()).is_err());
        let add_shard = MetaEntry {
            request_id: Some("req-add-shard".into()),
            command: MetaCommand::AddShard { replicas: vec!["node-1".into(), "node-2".into()] },
        };
        golden::check(&fixtures(), "command-add-shard", &add_shard);
        assert!(add_shard.encode_body(VERSION_4, &mut Vec::new()).is_err());
    }

    fn queue_dropped() -> MetaEntry {
        MetaEntry { request_id: Some("req-dropped".into()), command: MetaCommand::QueueDropped { queue_id: 3 } }
    }

    /// The secret of key `access_key_id` sealed in place (a fixed text, as in [`create_sealed_key`]).
    fn seal_secret(access_key_id: &str) -> MetaEntry {
        MetaEntry {
            request_id: None,
            command: MetaCommand::SealSecret {
                access_key_id: access_key_id.into(),
                secret: Secret(format!("{}kek-1:{}", crate::sealing::SEALED_PREFIX, "B".repeat(70))),
            },
        }
    }

    #[test]
    fn a_secret_stored_in_clear_is_sealed_in_place_once() {
        let mut catalog = Catalog::default();
        let create = |id: &str, secret: &str| MetaEntry {
            request_id: Some(format!("req-{id}")),
            command: MetaCommand::CreateAccessKey {
                tenant: "t1".into(),
                access_key_id: id.into(),
                secret: Secret(secret.into()),
                now_ms: 1_700_000_000_000,
            },
        };
        catalog.apply(1, &create("SKOLD", "clear-secret-of-an-old-key-0000000000000"));
        assert_eq!(catalog.clear_secrets(10).len(), 1);
        catalog.apply(2, &seal_secret("SKOLD"));
        assert!(crate::sealing::is_sealed(&catalog.access_key("SKOLD").unwrap().secret.0));
        assert!(catalog.clear_secrets(10).is_empty());
        // So is the remembered answer of the key's creation (a retry answers it).
        let Some(MetaResponse::AccessKey(answered)) = catalog.requests.answer("req-SKOLD") else {
            panic!("the creation's answer is remembered")
        };
        assert!(crate::sealing::is_sealed(&answered.secret.0));
        // A sealed secret is left as it is; a key that is gone is no error; a clear text is refused.
        let before = catalog.access_key("SKOLD").unwrap().secret.0.clone();
        let again = MetaCommand::SealSecret {
            access_key_id: "SKOLD".into(),
            secret: Secret(format!("{}other", crate::sealing::SEALED_PREFIX)),
        };
        catalog.apply(3, &MetaEntry { request_id: None, command: again });
        assert_eq!(catalog.access_key("SKOLD").unwrap().secret.0, before);
        catalog.apply(4, &seal_secret("SKGONE"));
        assert!(catalog.access_key("SKGONE").is_none());
        let clear = MetaCommand::SealSecret { access_key_id: "SKOLD".into(), secret: Secret("in clear".into()) };
        assert!(matches!(catalog.apply(5, &MetaEntry { request_id: None, command: clear }), MetaResponse::Error(_)));
    }

    /// A key created with a sealed secret (a fixed text: the fixture pins the layout, not AES).
    fn create_sealed_key() -> MetaEntry {
        MetaEntry {
            request_id: Some("req-sealed".into()),
            command: MetaCommand::CreateAccessKey {
                tenant: "t1".into(),
                access_key_id: "SKSEALED".into(),
                secret: Secret(format!("{}kek-1:{}", crate::sealing::SEALED_PREFIX, "A".repeat(70))),
                now_ms: 1_700_000_000_000,
            },
        }
    }

    #[test]
    fn a_catalog_of_every_kind_matches_its_golden_fixture() {
        let mut catalog = Catalog::default();
        for (index, (name, entry)) in (1..).zip(commands()) {
            let entry = MetaEntry { request_id: entry.request_id.map(|id| format!("{id}-{name}")), ..entry };
            catalog.apply(index, &entry);
        }
        assert_eq!(catalog.queues.len(), 1, "the catalog holds what the commands made");
        golden::check(&fixtures(), "catalog", &catalog);

        // Once the cluster writes generation 1, only catalog version 2 holds the catalog.
        catalog.apply(100, &set_format_generation());
        assert_eq!(catalog.format_generation(), 1);
        golden::check(&fixtures(), "catalog-generation-1", &catalog);
        assert!(catalog.encode_body(LEGACY_FORMAT_VERSION, &mut Vec::new()).is_err());
        catalog
            .apply(101, &MetaEntry { request_id: None, command: MetaCommand::SetFormatGeneration { generation: 0 } });
        assert_eq!(catalog.format_generation(), 1, "never lowered");

        // A sealed secret in the catalog: only version 3 holds it.
        catalog.apply(102, &create_sealed_key());
        golden::check(&fixtures(), "catalog-sealed-secret", &catalog);
        assert!(catalog.encode_body(2, &mut Vec::new()).is_err());

        // A stored-bytes limit: only version 4 holds it.
        catalog.apply(103, &set_stored_bytes_limit());
        assert_eq!(catalog.limits_of("t1").1.stored_bytes_max, 5 << 30);
        let plan = MetaCommand::SetStoredBytesMax { of: LimitsOf::Plan("gold".into()), stored_bytes_max: 1 << 30 };
        catalog.apply(104, &MetaEntry { request_id: None, command: plan });
        assert_eq!(catalog.limit_plans()["gold"].stored_bytes_max, 1 << 30);
        // Setting the other limits leaves the stored-bytes limit as it was.
        catalog.apply(
            105,
            &MetaEntry {
                request_id: None,
                command: MetaCommand::SetLimitPlan { name: "gold".into(), limits: limits() },
            },
        );
        assert_eq!(catalog.limit_plans()["gold"].stored_bytes_max, 1 << 30);
        golden::check(&fixtures(), "catalog-stored-bytes-limit", &catalog);
        assert!(catalog.encode_body(3, &mut Vec::new()).is_err());

        // A journaled deletion: only version 5 holds the operations journal.
        catalog
            .apply(106, &MetaEntry { request_id: None, command: MetaCommand::SetFormatGeneration { generation: 8 } });
        let delete = MetaCommand::DeleteQueue { tenant: "acme".into(), name: "orders.fifo".into() };
        catalog.apply(107, &MetaEntry { request_id: None, command: delete });
        assert_eq!(catalog.operations.len(), 1);
        golden::check(&fixtures(), "catalog-operations", &catalog);
        assert!(catalog.encode_body(VERSION_4, &mut Vec::new()).is_err());

        // A queue moved once (its epoch, a finished move) and moving back: only version 6.
        catalog
            .apply(108, &MetaEntry { request_id: None, command: MetaCommand::SetFormatGeneration { generation: 9 } });
        for shard_id in [1, 2] {
            let node_id = catalog.shards[&shard_id].node_id.clone();
            let claim = MetaCommand::ClaimShardWriter { shard_id, node_id, raft_term: 7 };
            catalog.apply(108 + shard_id, &MetaEntry { request_id: None, command: claim });
        }
        let create = MetaCommand::CreateQueue {
            tenant: "acme".into(),
            name: "movable".into(),
            config: QueueConfig::default(),
            now_ms: NOW_MS,
        };
        catalog.apply(111, &MetaEntry { request_id: None, command: create });
        let at = catalog.queue("acme", "movable").map(|q| q.shard_id).unwrap_or_default();
        let other = if at == 1 { 2 } else { 1 };
        for (index, command) in (112..).zip(move_commands(112, other)) {
            let answer = catalog.apply(index, &command);
            assert!(!matches!(answer, MetaResponse::Error(_)), "{command:?}: {answer:?}");
        }
        let moved = catalog.queue("acme", "movable").cloned().unwrap_or_else(|| panic!("the queue is gone"));
        assert_eq!((moved.shard_id, catalog.queue_epoch(moved.queue_id)), (other, 1));
        let (open, finished) = catalog.queue_moves();
        assert_eq!((open.len(), finished.len()), (1, 1));
        golden::check(&fixtures(), "catalog-moves", &catalog);
        assert!(catalog.encode_body(VERSION_5, &mut Vec::new()).is_err());

        // Generation 10: a node draining.
        catalog
            .apply(116, &MetaEntry { request_id: None, command: MetaCommand::SetFormatGeneration { generation: 10 } });
        let node_id = catalog.nodes().next().map(|n| n.node_id.clone()).unwrap_or_default();
        let drain = MetaCommand::DrainNode { node_id, now_ms: NOW_MS };
        assert_eq!(catalog.apply(117, &MetaEntry { request_id: None, command: drain }), MetaResponse::Done);
        assert_eq!(catalog.version_needed(), VERSION_7);
        golden::check(&fixtures(), "catalog-drains", &catalog);
        assert!(catalog.encode_body(VERSION_6, &mut Vec::new()).is_err());
    }

    #[test]
    fn the_commands_of_a_node_drain_match_their_golden_fixtures() {
        let entry = |command| MetaEntry { request_id: None, command };
        let commands = [
            ("drain-node", entry(MetaCommand::DrainNode { node_id: "storage-2".into(), now_ms: NOW_MS })),
            ("remove-node", entry(MetaCommand::RemoveNode { node_id: "storage-2".into() })),
            (
                "create-queue-on",
                entry(MetaCommand::CreateQueueOn {
                    tenant: "acme".into(),
                    name: "orders".into(),
                    config: QueueConfig { retention_ms: 60_000, ..QueueConfig::default() },
                    now_ms: NOW_MS,
                    shard_id: 2,
                }),
            ),
        ];
        for (name, entry) in commands {
            assert_eq!(entry.version_needed(), VERSION_7);
            golden::check(&fixtures(), &format!("command-{name}"), &entry);
            assert!(entry.encode_body(VERSION_6, &mut Vec::new()).is_err());
        }
    }

    /// A move of `movable` to `to_shard` started at `first_index`, switched and finished, then
    /// one back started.
    fn move_commands(first_index: u64, to_shard: u64) -> Vec<MetaEntry> {
        let entry = |command: MetaCommand| MetaEntry { request_id: Some(format!("req-{}", command)), command };
        let start = |to_shard| MetaCommand::StartQueueMove {
            tenant: "acme".into(),
            name: "movable".into(),
            to_shard,
            now_ms: NOW_MS,
        };
        vec![
            entry(start(to_shard)),
            entry(MetaCommand::SetQueueMovePhase {
                move_id: first_index,
                phase: MovePhase::Switched { at_ms: NOW_MS + 1 },
            }),
            entry(MetaCommand::FinishQueueMove {
                move_id: first_index,
                now_ms: NOW_MS + 2,
                paused_ms: 40,
                bytes_moved: 4096,
            }),
            entry(start(if to_shard == 1 { 2 } else { 1 })),
        ]
    }

    #[test]
    fn the_commands_of_a_queue_move_match_their_golden_fixtures() {
        let rolling_back = MetaEntry {
            request_id: None,
            command: MetaCommand::SetQueueMovePhase {
                move_id: 9,
                phase: MovePhase::RollingBack { reason: "the target did not answer".into() },
            },
        };
        let mut entries = move_commands(9, 2);
        entries.push(rolling_back);
        for (name, entry) in [
            "start-queue-move",
            "switch-queue-move",
            "finish-queue-move",
            "start-queue-move-back",
            "roll-back-queue-move",
        ]
        .into_iter()
        .zip(entries)
        {
            assert_eq!(entry.version_needed(), VERSION_6);
            golden::check(&fixtures(), &format!("command-{name}"), &entry);
            assert!(entry.encode_body(VERSION_5, &mut Vec::new()).is_err());
        }
    }
}
