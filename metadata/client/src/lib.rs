//! The metadata client every other component uses. Cheap to clone.
//!
//! It takes one endpoint (`strata dev`) or every member of the quorum, comma-separated. Calls go
//! to the member believed to lead; a member that does not lead answers `Unavailable` with the
//! leader's address when it knows it, and the call moves there. Without a hint (an election in
//! progress, a member down) it tries the next member after a short pause, for at most
//! [`FAILOVER_WAIT`]. When a whole round of members either did not answer or answered that they
//! reach no majority, the quorum is lost and the call fails at once, saying so
//! ([`METADATA_UNAVAILABLE_MESSAGE`]).
//!
//! Every call returns a [`StrataError`] whose kind survived the wire; transport failures come
//! back as `Unavailable`, so callers retry instead of blaming the tenant.
//!
//! Every call carries a request id, the same on each retry, and the quorum applies a mutation
//! once per id: a call cut off in flight (the member died after taking it) is safe to retry.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata_common::error::{
    ERROR_CODE_METADATA_KEY, LEADER_HINT_METADATA_KEY, METADATA_UNAVAILABLE_MESSAGE, QUORUM_LOST, QUORUM_METADATA_KEY,
    StrataError,
};
use strata_common::limits;
use strata_common::proto::{self as pb, metadata_client};
use strata_common::{Clock, Random, SystemClock};
use strata_tls::{Credentials, Role};
use tonic::body::Body;
use tonic::codegen::http::Request;
use tonic::transport::Channel;
use tower::util::MapRequest;

use strata_common::grpc::REQUEST_ID_KEY;

/// A random request id: 26 characters of a 32-letter alphabet (130 bits).
fn new_request_id(random: &Random) -> tonic::metadata::AsciiMetadataValue {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let id = random.string(ALPHABET, 26);
    tonic::metadata::AsciiMetadataValue::try_from(id.as_str())
        .unwrap_or_else(|_| tonic::metadata::AsciiMetadataValue::from_static("none"))
}

/// Deadline of one metadata call.
const METADATA_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call keeps looking for the leader (elections take about a second).
pub const FAILOVER_WAIT: Duration = Duration::from_secs(10);
/// Longest a readiness check waits for the metadata quorum.
pub const QUORUM_CHECK_WAIT: Duration = Duration::from_secs(2);
/// Pause before trying the next member when no leader is known.
const NEXT_MEMBER_PAUSE: Duration = Duration::from_millis(100);

/// A member's client; its requests carry the caller's trace context.
type Client = metadata_client::MetadataClient<MapRequest<Channel, fn(Request<Body>) -> Request<Body>>>;

/// What a member's failed answer means for the call.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The service's answer (it carries an error kind): back to the caller.
    Final,
    /// The member is not the leader (naming it or not), an election is under way, or it answered
    /// without saying why: go on.
    Elsewhere,
    /// The member reaches no majority: try the others once.
    QuorumLost,
    /// No answer: the member is down, unreachable, or the connection broke mid-call (which the
    /// request id makes safe to retry).
    Unreachable,
}

impl Answer {
    fn of(status: &tonic::Status) -> Self {
        let metadata = status.metadata();
        let quorum = metadata.get(QUORUM_METADATA_KEY).and_then(|v| v.to_str().ok());
        if quorum == Some(QUORUM_LOST) {
            return Answer::QuorumLost;
        }
        let unavailable =
            matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled);
        if !unavailable || metadata.get(ERROR_CODE_METADATA_KEY).is_some() {
            return Answer::Final;
        }
        let marked = quorum.is_some() || metadata.get(LEADER_HINT_METADATA_KEY).is_some();
        // A transport failure carries its cause; an answer a member sent without marks is an
        // older release's "not the leader".
        match !marked && std::error::Error::source(status).is_some() {
            true => Answer::Unreachable,
            false => Answer::Elsewhere,
        }
    }
}

/// The error of a call no member could take: a whole round of members was unreachable or said
/// the quorum is lost (`lost`, the last such answer). It starts with the public words of
/// [`METADATA_UNAVAILABLE_MESSAGE`]; the detail follows (no address: the last failure is logged).
fn quorum_unavailable(lost: Option<&tonic::Status>, last: &tonic::Status, members: usize) -> StrataError {
    let detail = match lost {
        Some(lost) => lost.message().to_owned(),
        None => {
            tracing::debug!(last = %last.message(), "no metadata member answered");
            format!("none of the {members} members answered")
        }
    };
    StrataError::unavailable(format!("{METADATA_UNAVAILABLE_MESSAGE}. {detail}"))
}

#[derive(Clone)]
pub struct MetadataClient {
    members: Arc<Members>,
    clock: Arc<dyn Clock>,
    random: Random,
}

struct Members {
    /// What this process presents to members, and trusts them by.
    credentials: Credentials,
    /// `(endpoint, client)` of every member: those given, then leaders named by hints (members
    /// added since), at most [`KNOWN_MEMBERS_MAX`].
    endpoints: parking_lot::RwLock<Vec<(String, Client)>>,
    /// Index of the member believed to lead.
    current: AtomicUsize,
}

/// Most member endpoints a client remembers.
const KNOWN_MEMBERS_MAX: usize = 16;

fn member_client(endpoint: &str, credentials: &Credentials) -> Result<Client, StrataError> {
    let channel = strata_tls::lazy_channel(endpoint, METADATA_CALL_TIMEOUT, credentials, Role::Metadata)
        .map_err(|e| StrataError::invalid(format!("bad metadata endpoint '{endpoint}': {e}")))?;
    let traced: fn(Request<Body>) -> Request<Body> = strata_telemetry::trace::injected::<Body>;
    Ok(metadata_client::MetadataClient::new(MapRequest::new(channel, traced))
        .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX))
}

impl Members {
    /// The index of `endpoint`, remembering it if it is new (a member added since the client
    /// was configured, named as leader by another). `None` if it cannot be remembered.
    fn position_of(&self, endpoint: &str) -> Option<usize> {
        if let Some(at) = self.endpoints.read().iter().position(|(e, _)| e == endpoint) {
            return Some(at);
        }
        let client = member_client(endpoint, &self.credentials).ok()?;
        let mut endpoints = self.endpoints.write();
        if let Some(at) = endpoints.iter().position(|(e, _)| e == endpoint) {
            return Some(at);
        }
        if endpoints.len() >= KNOWN_MEMBERS_MAX {
            return None;
        }
        endpoints.push((endpoint.to_owned(), client));
        Some(endpoints.len() - 1)
    }
}

impl MetadataClient {
    /// A client for `endpoints`: one `https://host:port`, or every quorum member's,
    /// comma-separated; connects lazily, over mutual TLS with `credentials`.
    pub fn connect_lazy(endpoints: &str, credentials: &Credentials) -> Result<Self, StrataError> {
        let mut members = Vec::new();
        for endpoint in endpoints.split(',').map(|e| e.trim().trim_end_matches('/')).filter(|e| !e.is_empty()) {
            members.push((endpoint.to_string(), member_client(endpoint, credentials)?));
        }
        if members.is_empty() {
            return Err(StrataError::invalid("no metadata endpoint given"));
        }
        members.truncate(KNOWN_MEMBERS_MAX);
        let members = Members {
            credentials: credentials.clone(),
            endpoints: parking_lot::RwLock::new(members),
            current: AtomicUsize::new(0),
        };
        Ok(Self { members: Arc::new(members), clock: Arc::new(SystemClock), random: Random::os() })
    }

    /// The same client timing its failover on `clock` and drawing request ids from `random`.
    pub fn with_seams(self, clock: Arc<dyn Clock>, random: Random) -> Self {
        Self { clock, random, ..self }
    }

    /// The clock this client times its calls on (components built on the client use it too).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Where this client draws ids from (components built on the client use it too).
    pub fn random(&self) -> &Random {
        &self.random
    }

    /// Sends `request` to the leader, following hints and trying members in turn. Every attempt
    /// carries the same request id, so a mutation retried after an answer that never arrived is
    /// applied once.
    async fn call<Req, T, F, Fut>(&self, request: Req, send: F) -> Result<T, StrataError>
    where
        Req: Clone,
        F: Fn(Client, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let members = &self.members;
        let deadline = self.clock.instant() + FAILOVER_WAIT;
        let request_id = new_request_id(&self.random);
        // Members (by position) that did not answer, or answered that they reach no majority,
        // since a member last answered otherwise; once that is every member, waiting cannot help.
        let mut silent = std::collections::BTreeSet::new();
        let mut lost: Option<tonic::Status> = None;
        loop {
            let (at, count, client) = {
                let endpoints = members.endpoints.read();
                let at = members.current.load(Ordering::Relaxed) % endpoints.len();
                (at, endpoints.len(), endpoints[at].1.clone())
            };
            let mut attempt = tonic::Request::new(request.clone());
            attempt.metadata_mut().insert(REQUEST_ID_KEY, request_id.clone());
            let status = match send(client, attempt).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            match Answer::of(&status) {
                Answer::Final => return Err(status.into()),
                Answer::Elsewhere => silent.clear(),
                Answer::QuorumLost => {
                    silent.insert(at);
                    lost = Some(status.clone());
                }
                // Alone, a member that cannot be reached is final: there is nowhere else to go.
                Answer::Unreachable if count == 1 => return Err(status.into()),
                Answer::Unreachable => _ = silent.insert(at),
            }
            if silent.len() >= count {
                return Err(quorum_unavailable(lost.as_ref(), &status, count));
            }
            if self.clock.instant() >= deadline {
                return Err(status.into());
            }
            let hint = status.metadata().get(LEADER_HINT_METADATA_KEY).and_then(|v| v.to_str().ok());
            match hint.map(|leader| members.position_of(leader.trim_end_matches('/'))) {
                Some(Some(leader)) if leader != at => members.current.store(leader, Ordering::Relaxed),
                _ => {
                    let _ =
                        members.current.compare_exchange(at, (at + 1) % count, Ordering::Relaxed, Ordering::Relaxed);
                    self.clock.sleep(NEXT_MEMBER_PAUSE).await;
                }
            }
        }
    }

    pub async fn ensure_tenant(&self, tenant: &str) -> Result<pb::Tenant, StrataError> {
        let request = pb::EnsureTenantRequest { tenant: tenant.to_string() };
        self.call(request, |mut c, r| async move { c.ensure_tenant(r).await }).await
    }

    pub async fn create_queue(
        &self,
        tenant: &str,
        name: &str,
        config: pb::QueueConfig,
    ) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::CreateQueueRequest {
            tenant: tenant.to_string(),
            name: name.to_string(),
            config: Some(config),
            now_ms: 0,
        };
        self.call(request, |mut c, r| async move { c.create_queue(r).await }).await
    }

    pub async fn get_queue(&self, tenant: &str, name: &str) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::QueueName { tenant: tenant.to_string(), name: name.to_string() };
        self.call(request, |mut c, r| async move { c.get_queue(r).await }).await
    }

    /// The queue of `tenant` whose id is `queue_id`; `QueueNotFound` when it is gone.
    pub async fn locate_queue(&self, tenant: &str, queue_id: u64) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::LocateQueueRequest { tenant: tenant.to_string(), queue_id };
        self.call(request, |mut c, r| async move { c.locate_queue(r).await }).await
    }

    pub async fn list_queues(
        &self,
        tenant: &str,
        prefix: &str,
        start_after: &str,
        max_results: u32,
    ) -> Result<pb::ListQueuesResponse, StrataError> {
        let request = pb::ListQueuesRequest {
            tenant: tenant.to_string(),
            prefix: prefix.to_string(),
            max_results,
            start_after: start_after.to_string(),
        };
        self.call(request, |mut c, r| async move { c.list_queues(r).await }).await
    }

    pub async fn delete_queue(&self, tenant: &str, name: &str) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::QueueName { tenant: tenant.to_string(), name: name.to_string() };
        self.call(request, |mut c, r| async move { c.delete_queue(r).await }).await
    }

    /// Adds a shard of `replicas` replicas (0: as many as shard 1 has) on the least loaded
    /// live storage nodes.
    pub async fn add_shard(&self, replicas: u32) -> Result<pb::ShardInfo, StrataError> {
        let request = pb::AddShardRequest { replicas };
        self.call(request, |mut c, r| async move { c.add_shard(r).await }).await
    }

    /// Ends a deletion once the queue's shard dropped the incarnation's state (idempotent).
    pub async fn queue_dropped(&self, queue_id: u64) -> Result<(), StrataError> {
        let request = pb::QueueDroppedRequest { queue_id };
        self.call(request, |mut c, r| async move { c.queue_dropped(r).await }).await.map(|_| ())
    }

    /// Starts moving a queue to shard `to_shard` (docs/elasticity.md); its source shard's
    /// leader drives the move.
    pub async fn start_queue_move(
        &self,
        tenant: &str,
        name: &str,
        to_shard: u64,
    ) -> Result<pb::QueueMoveInfo, StrataError> {
        let request = pb::StartQueueMoveRequest { tenant: tenant.to_owned(), name: name.to_owned(), to_shard };
        self.call(request, |mut c, r| async move { c.start_queue_move(r).await }).await
    }

    /// A move's decision: switch its queue's routing to the target, or roll back for `reason`
    /// (refused when the other was taken).
    pub async fn decide_queue_move(&self, move_id: u64, switch: bool, reason: &str) -> Result<(), StrataError> {
        let request = pb::DecideQueueMoveRequest { move_id, switch, reason: reason.to_owned() };
        self.call(request, |mut c, r| async move { c.decide_queue_move(r).await }).await.map(|_| ())
    }

    /// Ends a decided move, with how long its queue was fenced and the bytes it copied.
    pub async fn finish_queue_move(&self, move_id: u64, paused_ms: u64, bytes_moved: u64) -> Result<(), StrataError> {
        let request = pb::FinishQueueMoveRequest { move_id, paused_ms, bytes_moved };
        self.call(request, |mut c, r| async move { c.finish_queue_move(r).await }).await.map(|_| ())
    }

    /// The last finished moves, oldest first, then those under way.
    pub async fn list_queue_moves(&self) -> Result<Vec<pb::QueueMoveInfo>, StrataError> {
        let moves = self.call(pb::Empty {}, |mut c, r| async move { c.list_queue_moves(r).await }).await?;
        Ok(moves.moves)
    }

    pub async fn set_queue_config(
        &self,
        tenant: &str,
        name: &str,
        config: pb::QueueConfig,
    ) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::SetQueueConfigRequest {
            tenant: tenant.to_string(),
            name: name.to_string(),
            config: Some(config),
            now_ms: 0,
        };
        self.call(request, |mut c, r| async move { c.set_queue_config(r).await }).await
    }

    /// Registers (or re-registers) a storage node; answers the shards it hosts (none while too
    /// few nodes are registered to place the first shards).
    pub async fn register_storage_node(
        &self,
        request: pb::RegisterStorageNodeRequest,
    ) -> Result<pb::RegisterStorageNodeResponse, StrataError> {
        self.call(request, |mut c, r| async move { c.register_storage_node(r).await }).await
    }

    pub async fn get_shard(&self, shard_id: u64) -> Result<pb::ShardInfo, StrataError> {
        self.call(pb::GetShardRequest { shard_id }, |mut c, r| async move { c.get_shard(r).await }).await
    }

    pub async fn commit_segment(&self, segment: pb::Segment) -> Result<(), StrataError> {
        let request = pb::CommitSegmentRequest { segment: Some(segment) };
        self.call(request, |mut c, r| async move { c.commit_segment(r).await }).await?;
        Ok(())
    }

    /// Makes this node the writer of `shard_id` as its Raft leader in `raft_term`: answers the
    /// shard with its new writer epoch.
    pub async fn claim_shard_writer(
        &self,
        shard_id: u64,
        node_id: &str,
        raft_term: u64,
    ) -> Result<pb::ShardInfo, StrataError> {
        let request = pb::ClaimShardWriterRequest { shard_id, node_id: node_id.to_owned(), raft_term };
        self.call(request, |mut c, r| async move { c.claim_shard_writer(r).await }).await
    }

    /// Keeps `node_id`'s lease, saying the newest format generation it reads; answers the lease,
    /// the shards the node holds a replica of and the generation the cluster writes.
    /// Keeps the node's lease, reporting the load of the shards it leads.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        format_generation_max: u32,
        shard_loads: Vec<pb::ShardLoad>,
    ) -> Result<pb::HeartbeatResponse, StrataError> {
        let request = pb::HeartbeatRequest { node_id: node_id.to_owned(), format_generation_max, shard_loads };
        self.call(request, |mut c, r| async move { c.heartbeat(r).await }).await
    }

    /// Every registered storage node, with whether its lease is current and which format
    /// generations it reads, and the format generation the cluster writes.
    /// The queues placed on shard `shard_id`, by queue id, at most `max`.
    pub async fn list_shard_queues(&self, shard_id: u64, max: u32) -> Result<Vec<pb::QueueInfo>, StrataError> {
        let request = pb::ListShardQueuesRequest { shard_id, max };
        let answer = self.call(request, |mut c, r| async move { c.list_shard_queues(r).await }).await?;
        Ok(answer.queues)
    }

    /// Starts draining storage node `node_id`.
    pub async fn drain_node(&self, node_id: &str) -> Result<pb::StorageNodeInfo, StrataError> {
        let request = pb::DrainNodeRequest { node_id: node_id.to_string() };
        self.call(request, |mut c, r| async move { c.drain_node(r).await }).await
    }

    pub async fn storage_nodes(&self) -> Result<pb::ListStorageNodesResponse, StrataError> {
        let request = pb::ListStorageNodesRequest {};
        self.call(request, |mut c, r| async move { c.list_storage_nodes(r).await }).await
    }

    /// Moves a replica of `shard_id` from `from_node` to `to_node` (a live node).
    pub async fn move_replica(
        &self,
        shard_id: u64,
        from_node: &str,
        to_node: &str,
    ) -> Result<pb::ShardInfo, StrataError> {
        let request = pb::MoveReplicaRequest { shard_id, from_node: from_node.to_owned(), to_node: to_node.to_owned() };
        self.call(request, |mut c, r| async move { c.move_replica(r).await }).await
    }

    /// Reports, as the shard's leader, that its group's voters are `voters` (node ids).
    pub async fn confirm_replicas(&self, shard_id: u64, voters: Vec<String>) -> Result<pb::ShardInfo, StrataError> {
        let request = pb::ConfirmReplicasRequest { shard_id, voters };
        self.call(request, |mut c, r| async move { c.confirm_replicas(r).await }).await
    }

    /// Adds and removes metadata quorum members (see `ChangeMetadataMembersRequest`).
    pub async fn change_metadata_members(
        &self,
        add: Vec<pb::MetadataMember>,
        remove: Vec<u64>,
    ) -> Result<pb::MetadataMembersResponse, StrataError> {
        let request = pb::ChangeMetadataMembersRequest { add, remove };
        self.call(request, |mut c, r| async move { c.change_metadata_members(r).await }).await
    }

    /// The metadata quorum's voters and leader.
    pub async fn list_metadata_members(&self) -> Result<pb::MetadataMembersResponse, StrataError> {
        let request = pb::ListMetadataMembersRequest {};
        self.call(request, |mut c, r| async move { c.list_metadata_members(r).await }).await
    }

    /// Tenants after `start_after` by id (at most `max_results`, 1000 a page).
    pub async fn list_tenants(
        &self,
        start_after: &str,
        max_results: u32,
    ) -> Result<pb::ListTenantsResponse, StrataError> {
        let request = pb::ListTenantsRequest { start_after: start_after.to_owned(), max_results };
        self.call(request, |mut c, r| async move { c.list_tenants(r).await }).await
    }

    /// Readiness: whether the metadata quorum takes calls through this client (a linearizable
    /// read at its leader, within [`QUORUM_CHECK_WAIT`]), and if not, why (no address: the
    /// detail is logged).
    pub async fn quorum_check(&self) -> strata_telemetry::ReadyCheck {
        let answered =
            strata_common::ClockExt::timeout(&*self.clock, QUORUM_CHECK_WAIT, self.list_metadata_members()).await;
        let problem = match answered {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(match e.message.strip_prefix(METADATA_UNAVAILABLE_MESSAGE) {
                Some(detail) => format!("the metadata quorum is unavailable{detail}"),
                None => {
                    tracing::info!(error = %e, "readiness: the metadata quorum did not answer");
                    format!("the metadata quorum did not answer ({})", e.kind)
                }
            }),
            Err(_) => Some(format!("the metadata quorum did not answer within {} s", QUORUM_CHECK_WAIT.as_secs())),
        };
        strata_telemetry::ReadyCheck::new("metadata_quorum", problem)
    }

    pub async fn list_segments(&self, shard_id: u64) -> Result<Vec<pb::Segment>, StrataError> {
        let request = pb::ListSegmentsRequest { shard_id };
        Ok(self.call(request, |mut c, r| async move { c.list_segments(r).await }).await?.segments)
    }

    /// Removes segments from the catalog, as the shard's writer of `writer_epoch`.
    pub async fn remove_segments(
        &self,
        shard_id: u64,
        writer_epoch: u64,
        object_keys: Vec<String>,
    ) -> Result<(), StrataError> {
        let request = pb::RemoveSegmentsRequest { shard_id, object_keys, writer_epoch };
        self.call(request, |mut c, r| async move { c.remove_segments(r).await }).await?;
        Ok(())
    }

    /// A new access key of `tenant`, with its secret (shown only here).
    pub async fn create_access_key(&self, tenant: &str) -> Result<pb::AccessKey, StrataError> {
        let request = pb::CreateAccessKeyRequest { tenant: tenant.to_string() };
        self.call(request, |mut c, r| async move { c.create_access_key(r).await }).await
    }

    /// Replaces `access_key_id` by a new key (answered with its secret); the old one keeps
    /// working for `grace_ms`.
    pub async fn rotate_access_key(
        &self,
        tenant: &str,
        access_key_id: &str,
        grace_ms: u64,
    ) -> Result<pb::AccessKey, StrataError> {
        let request = pb::RotateAccessKeyRequest {
            tenant: tenant.to_string(),
            access_key_id: access_key_id.to_string(),
            grace_ms,
        };
        self.call(request, |mut c, r| async move { c.rotate_access_key(r).await }).await
    }

    pub async fn revoke_access_key(&self, tenant: &str, access_key_id: &str) -> Result<pb::AccessKey, StrataError> {
        let request = pb::AccessKeyRef { tenant: tenant.to_string(), access_key_id: access_key_id.to_string() };
        self.call(request, |mut c, r| async move { c.revoke_access_key(r).await }).await
    }

    /// The tenant's keys without secrets.
    pub async fn list_access_keys(&self, tenant: &str) -> Result<Vec<pb::AccessKey>, StrataError> {
        let request = pb::ListAccessKeysRequest { tenant: tenant.to_string() };
        Ok(self.call(request, |mut c, r| async move { c.list_access_keys(r).await }).await?.keys)
    }

    /// A key with its secret, whatever its state (the proxy's SigV4 check).
    /// Creates or replaces a named limits plan.
    pub async fn set_limit_plan(&self, name: &str, limits: pb::TenantLimits) -> Result<pb::LimitPlan, StrataError> {
        let request = pb::LimitPlan { name: name.to_owned(), limits: Some(limits) };
        self.call(request, |mut c, r| async move { c.set_limit_plan(r).await }).await
    }

    pub async fn list_limit_plans(&self) -> Result<Vec<pb::LimitPlan>, StrataError> {
        let response: pb::ListLimitPlansResponse =
            self.call(pb::ListLimitPlansRequest {}, |mut c, r| async move { c.list_limit_plans(r).await }).await?;
        Ok(response.plans)
    }

    /// Puts a tenant on a limits plan (empty: the default plan) with its own overrides.
    pub async fn set_tenant_limits(
        &self,
        tenant: &str,
        plan: &str,
        overrides: pb::TenantLimits,
    ) -> Result<pb::TenantLimitsInfo, StrataError> {
        let request =
            pb::SetTenantLimitsRequest { tenant: tenant.to_owned(), plan: plan.to_owned(), overrides: Some(overrides) };
        self.call(request, |mut c, r| async move { c.set_tenant_limits(r).await }).await
    }

    /// Refuses a tenant's calls for `reason`, or lets them through again (empty reason).
    pub async fn set_tenant_capped(&self, tenant: &str, reason: &str) -> Result<pb::TenantLimitsInfo, StrataError> {
        let request = pb::SetTenantCappedRequest { tenant: tenant.to_owned(), capped_reason: reason.to_owned() };
        self.call(request, |mut c, r| async move { c.set_tenant_capped(r).await }).await
    }

    pub async fn get_tenant_limits(&self, tenant: &str) -> Result<pb::TenantLimitsInfo, StrataError> {
        let request = pb::TenantRef { tenant: tenant.to_owned() };
        self.call(request, |mut c, r| async move { c.get_tenant_limits(r).await }).await
    }

    pub async fn lookup_access_key(&self, access_key_id: &str) -> Result<pb::AccessKey, StrataError> {
        let request = pb::LookupAccessKeyRequest { access_key_id: access_key_id.to_string() };
        self.call(request, |mut c, r| async move { c.lookup_access_key(r).await }).await
    }

    /// Adds or replaces tags of a queue; answers the queue with all its tags.
    pub async fn tag_queue(
        &self,
        tenant: &str,
        name: &str,
        tags: std::collections::HashMap<String, String>,
    ) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::TagQueueRequest { tenant: tenant.to_string(), name: name.to_string(), tags };
        self.call(request, |mut c, r| async move { c.tag_queue(r).await }).await
    }

    pub async fn untag_queue(&self, tenant: &str, name: &str, keys: Vec<String>) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::UntagQueueRequest { tenant: tenant.to_string(), name: name.to_string(), keys };
        self.call(request, |mut c, r| async move { c.untag_queue(r).await }).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use strata_common::error::ErrorKind;
    use strata_common::{Clock, ManualClock, Random};

    use super::*;

    /// With no member answering, a call gives up after one round of the members, saying the
    /// quorum is unavailable; its pauses between members run on the client's clock (the seam a
    /// simulator drives).
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // the test gives the real attempts real time to fail
    async fn a_round_of_silent_members_ends_the_call() {
        let clock = ManualClock::new(0);
        // Nothing listens on the discard and echo ports of loopback: every attempt is refused.
        let credentials = strata_tls::pki::test_credentials(strata_tls::Role::Proxy, "proxy");
        let client = MetadataClient::connect_lazy("https://127.0.0.1:9,https://127.0.0.1:7", &credentials)
            .expect("client")
            .with_seams(Arc::new(clock.clone()), Random::seeded(3));
        let call = tokio::spawn(async move { client.get_queue("t", "q").await });
        let start = clock.instant();
        while !call.is_finished() {
            // Let the attempt fail and the loop reach its pause before time moves again.
            tokio::time::sleep(Duration::from_millis(5)).await;
            clock.advance_ms(NEXT_MEMBER_PAUSE.as_millis() as u64);
        }
        let error = call.await.expect("the call task").expect_err("no member answers");
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert!(error.message.starts_with(METADATA_UNAVAILABLE_MESSAGE), "{}", error.message);
        assert!(error.message.contains("none of the 2 members answered"), "{}", error.message);
        let waited = clock.instant() - start;
        assert!(waited >= NEXT_MEMBER_PAUSE && waited < FAILOVER_WAIT, "gave up after {waited:?}");
    }

    #[test]
    fn answers_are_told_apart() {
        let with = |mut status: tonic::Status, key: &'static str, value: &'static str| {
            status.metadata_mut().insert(key, tonic::metadata::AsciiMetadataValue::from_static(value));
            status
        };
        let not_leader = tonic::Status::unavailable("not the leader");
        assert_eq!(Answer::of(&not_leader), Answer::Elsewhere, "an older member's answer");
        let refused = tonic::Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert_eq!(Answer::of(&refused), Answer::Unreachable, "a transport failure");
        let electing = with(not_leader.clone(), QUORUM_METADATA_KEY, strata_common::error::QUORUM_ELECTING);
        assert_eq!(Answer::of(&electing), Answer::Elsewhere);
        let hinted = with(not_leader.clone(), LEADER_HINT_METADATA_KEY, "https://127.0.0.1:7001");
        assert_eq!(Answer::of(&hinted), Answer::Elsewhere);
        let lost: tonic::Status = StrataError::unavailable("quorum lost").into();
        assert_eq!(Answer::of(&lost), Answer::Final, "an unmarked service answer is the caller's");
        assert_eq!(Answer::of(&with(lost, QUORUM_METADATA_KEY, QUORUM_LOST)), Answer::QuorumLost);
        assert_eq!(Answer::of(&StrataError::queue_not_found("q").into()), Answer::Final);
    }
}
