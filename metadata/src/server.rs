//! Runs the metadata Raft group and serves it over gRPC.
//!
//! Mutations go through the log (`client_write` returns after the entry is applied, so a reply
//! reflects durable, applied state). Reads are linearizable: each first confirms through
//! openraft's read-index that this node still leads and has applied everything committed before
//! the read began.
//!
//! `strata dev` runs one voter ([`MetadataNode::open`]). A quorum member
//! ([`MetadataNode::open_member`]) also serves the Raft transport on its gRPC port, and only the
//! leader answers: any other member answers `Unavailable` with the leader's address, when it
//! knows it, in the [`LEADER_HINT_METADATA_KEY`] response header, and [`crate::MetadataClient`]
//! follows it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::error::MemberError;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ForwardToLeader;
use openraft::{BasicNode, Config, ReadPolicy, SnapshotPolicy};
use strata_common::error::{ErrorKind, LEADER_HINT_METADATA_KEY, StrataError};
use strata_common::format::FormatGate;
use strata_common::limits::{LIST_QUEUES_PAGE_MAX, REQUEST_ID_CHARS_MAX};
use strata_common::proto::metadata_server::{Metadata, MetadataServer};
use strata_common::proto::{self as pb};
use strata_common::{Clock, limits};
use strata_raft::group::{GroupStorage, RaftGroup, open_group, open_single_voter};
use strata_raft::raft_state::StateGuard;
use strata_raft::raft_store::SegmentRetention;
use strata_raft::transport::{GroupId, GrpcNetwork, RaftRouter, Senders};
use strata_tls::{AuthorizeLayer, Credentials, Listener, Peer, Role};

use crate::catalog::{
    DRAINS_GENERATION, LOAD_PLACEMENT_GENERATION, OPERATIONS_GENERATION, Operation, QUEUE_MOVES_GENERATION,
    SEALED_SECRETS_GENERATION, STORED_BYTES_LIMITS_GENERATION,
};
use crate::sealing::Keks;
use strata_wal::{FsyncFailure, WalOptions};
use tonic::{Request, Response, Status};

use crate::MetaRaftConfig;
use crate::catalog::{
    AccessKeyRecord, Catalog, FinishedMove, Limits, LimitsOf, MetaCommand, MetaEntry, MetaResponse, MovePhase,
    NodeRecord, QueueConfig, QueueMove, QueueRecord, Secret, ShardRecord,
};

/// Longest reason a rolled-back move keeps.
const MOVE_REASON_CHARS_MAX: usize = 512;
use crate::leases::Leases;
use crate::quorum::{LEADERLESS_MAX, Leaderless, QUORUM_SILENCE_MAX, QuorumView};
use strata_common::limits::LEASE_MS;

/// Most voters of the metadata quorum.
pub const METADATA_MEMBERS_MAX: usize = 7;
/// How long a membership change waits for a new member to catch up.
pub const MEMBER_CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// A member that acknowledged the leader within this long is live (heartbeats go every 100 ms).
pub const MEMBER_LIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
/// How far behind the leader's log a new member may be when it becomes a voter.
pub const MEMBER_CATCH_UP_LAG_ENTRIES: u64 = 64;

/// Log entries between metadata snapshots. The catalog is small; frequent snapshots keep
/// restart replay short and let old segments go.
const METADATA_SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;
/// Most operations one heartbeat hands a storage node; the rest come with the next ones.
const OPERATIONS_PER_HEARTBEAT_MAX: usize = 100;
/// Most queues one `ListShardQueues` answer holds.
const SHARD_QUEUES_PAGE_MAX: usize = 10_000;
/// Most shard loads one heartbeat reports (as many shards as a cluster may have).
const SHARD_LOADS_PER_HEARTBEAT_MAX: usize = 1_024;
/// WAL segment size of the metadata log.
const METADATA_SEGMENT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Access key ids: this prefix, then random characters of [`ACCESS_KEY_ID_ALPHABET`] (90 bits).
const ACCESS_KEY_ID_PREFIX: &str = "SK";
const ACCESS_KEY_ID_RANDOM_CHARS: usize = 18;
const ACCESS_KEY_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Secrets: 40 characters of the base64 alphabet (240 bits), like AWS secret access keys.
const SECRET_ACCESS_KEY_CHARS: usize = 40;
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Draws a new access key id and secret from the operating system's CSPRNG (never a seeded source).
fn new_access_key() -> (String, Secret) {
    let random_part = strata_common::random::secret_string(ACCESS_KEY_ID_ALPHABET, ACCESS_KEY_ID_RANDOM_CHARS);
    let id = format!("{ACCESS_KEY_ID_PREFIX}{random_part}");
    let secret = Secret(strata_common::random::secret_string(SECRET_ALPHABET, SECRET_ACCESS_KEY_CHARS));
    (id, secret)
}

/// The wire form of a key; its secret (opened when sealed) only when `keks` is given.
fn access_key_pb(key: AccessKeyRecord, keks: Option<&Keks>) -> Result<pb::AccessKey, StrataError> {
    let secret_access_key = match keks {
        Some(keks) => keks.open(&key.secret.0, &key.access_key_id)?,
        None => String::new(),
    };
    Ok(pb::AccessKey {
        access_key_id: key.access_key_id,
        tenant: key.tenant,
        secret_access_key,
        created_ms: key.created_ms,
        revoked_at_ms: key.revoked_at_ms.unwrap_or(0),
    })
}

/// A metadata response the command cannot give: a bug, reported as one.
fn unexpected(response: MetaResponse) -> Status {
    MemberError::bug("unexpected metadata response", format_args!("{response:?}")).into()
}

fn access_key_response(response: MetaResponse, keks: Option<&Keks>) -> Result<Response<pb::AccessKey>, Status> {
    match response {
        MetaResponse::AccessKey(key) => Ok(Response::new(access_key_pb(key, keks)?)),
        other => Err(unexpected(other)),
    }
}

/// The metadata quorum's group id on the Raft transport.
pub const METADATA_GROUP: GroupId = 0;
use strata_common::grpc::REQUEST_ID_KEY;

/// The request id a mutation carries, if any.
fn request_id<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get(REQUEST_ID_KEY) else { return Ok(None) };
    match value.to_str() {
        Ok(id) if !id.is_empty() && id.len() <= REQUEST_ID_CHARS_MAX => Ok(Some(id.to_owned())),
        _ => {
            Err(StrataError::invalid(format!("{REQUEST_ID_KEY} must be 1-{REQUEST_ID_CHARS_MAX} ASCII characters"))
                .into())
        }
    }
}

/// A storage node acts only as itself: the node id a request names must be the name its
/// certificate names (the role table already let only storage certificates through).
fn own_storage_node<T>(request: &Request<T>, node_id: &str) -> Result<(), Status> {
    match request.extensions().get::<Peer>() {
        Some(peer) if peer.identity.role == Role::Storage && peer.identity.name == node_id => Ok(()),
        Some(peer) => {
            Err(Status::permission_denied(format!("{} may not act as storage node '{node_id}'", peer.identity)))
        }
        None => Err(Status::unauthenticated("no client certificate")),
    }
}

/// Only a storage node holding a replica of a move's source shard (the one whose leader drives
/// it) may decide or finish the move; a move no longer under way is left to the catalog, which
/// answers a repeat as done.
fn move_driver<T>(request: &Request<T>, catalog: &Catalog, move_id: u64) -> Result<(), Status> {
    let peer = request.extensions().get::<Peer>().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let Some(from_shard) = catalog.move_source(move_id) else { return Ok(()) };
    let name = &peer.identity.name;
    let holds = catalog.shard(from_shard).is_some_and(|s| s.replicas.contains(name) || s.leaving.contains(name));
    if peer.identity.role == Role::Storage && holds {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{} holds no replica of shard {from_shard}, whose leader drives move {move_id}",
        peer.identity
    )))
}

/// Reports at each scrape whether `node` reaches its quorum (while it is open).
fn sample_quorum(node: &Arc<MetadataNode>) {
    let node = Arc::downgrade(node);
    let label =
        strata_telemetry::GroupLabel { group: <Catalog as strata_raft::raft_state::ReplicatedState>::METRICS_GROUP };
    strata_telemetry::add_sampler(move || {
        if let Some(node) = node.upgrade() {
            let reachable = i64::from(node.quorum_view().serves());
            strata_telemetry::raft().quorum_reachable.get_or_create(&label).set(reachable);
        }
    });
}

/// How a quorum member finds the others.
#[derive(Debug, Clone)]
pub struct MemberSettings {
    pub node_id: u64,
    /// Every voter's gRPC address (`http://host:port`), this member's included.
    pub members: BTreeMap<u64, String>,
    /// Set on exactly one member of a new quorum: it creates the group with `members` as voters
    /// on its first start (later starts ignore it).
    pub initialize: bool,
}

/// A running metadata node.
pub struct MetadataNode {
    group: RaftGroup<MetaRaftConfig, Catalog>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The Raft transport of a quorum member (`None` for the single voter of `strata dev`).
    router: Option<RaftRouter>,
    /// Storage-node leases, while this member leads.
    pub(crate) leases: Leases,
    /// Which format generation this member writes (the catalog's), and the newest it reads.
    pub(crate) format: FormatGate,
    /// This member's certificate and CA on the internal plane: it serves and calls only over
    /// mutual TLS.
    pub(crate) credentials: Credentials,
    /// The KEKs that seal SigV4 secrets at rest (see [`crate::sealing`]); none: in clear.
    keks: parking_lot::RwLock<Keks>,
    /// Since when this member has known no leader.
    leaderless: Leaderless,
}

fn raft_config() -> Config {
    Config {
        cluster_name: "strata-metadata".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(METADATA_SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    }
}

fn group_storage(format: &FormatGate) -> GroupStorage {
    GroupStorage {
        wal: WalOptions {
            segment_size_bytes_max: METADATA_SEGMENT_BYTES_MAX,
            on_fsync_error: FsyncFailure::Abort,
            ..Default::default()
        },
        retention: SegmentRetention::RemoveOnPurge,
        format: format.clone(),
    }
}

impl MetadataNode {
    /// Opens (or creates) the single-voter metadata group of `strata dev` in `dir`; `address` is
    /// the advertised gRPC address.
    /// `format` says which format generations this process reads; it writes the catalog's.
    pub async fn open(
        dir: &Path,
        address: &str,
        clock: Arc<dyn Clock>,
        format: FormatGate,
        credentials: Credentials,
    ) -> anyhow::Result<Arc<Self>> {
        let group = open_single_voter::<MetaRaftConfig, Catalog>(
            dir,
            1,
            BasicNode { addr: address.to_string() },
            raft_config(),
            group_storage(&format),
        )
        .await?;
        crate::formats::follow_catalog(&group.state, &format);
        let keks = parking_lot::RwLock::default();
        let leaderless = Leaderless::watch(group.raft.metrics(), clock.clone());
        Ok(Arc::new(Self {
            group,
            clock,
            router: None,
            leases: Leases::default(),
            format,
            credentials,
            keks,
            leaderless,
        }))
    }

    /// Opens (or creates) this member's replica of the metadata quorum in `dir`. Returns at once;
    /// the members elect a leader once a majority of them is up.
    pub async fn open_member(
        dir: &Path,
        member: &MemberSettings,
        clock: Arc<dyn Clock>,
        format: FormatGate,
        credentials: Credentials,
    ) -> anyhow::Result<Arc<Self>> {
        if !member.members.contains_key(&member.node_id) {
            anyhow::bail!("metadata member {} is not in its own member list", member.node_id);
        }
        let voters: BTreeMap<u64, BasicNode> =
            member.members.iter().map(|(&id, addr)| (id, BasicNode { addr: addr.clone() })).collect();
        let group = open_group::<MetaRaftConfig, Catalog, _>(
            dir,
            member.node_id,
            raft_config(),
            group_storage(&format),
            GrpcNetwork::new(METADATA_GROUP, credentials.clone(), Role::Metadata),
            member.initialize.then_some(voters),
        )
        .await?;
        crate::formats::follow_catalog(&group.state, &format);
        let router = RaftRouter::new(format.readable_max());
        router.register(METADATA_GROUP, group.raft.clone(), Senders::MembersById);
        let (leases, keks) = (Leases::default(), parking_lot::RwLock::default());
        let leaderless = Leaderless::watch(group.raft.metrics(), clock.clone());
        let node = Arc::new(Self { group, clock, router: Some(router), leases, format, credentials, keks, leaderless });
        sample_quorum(&node);
        Ok(node)
    }

    /// The quorum's voters (node id → endpoint) and its leader, as this member knows them.
    pub fn members(&self) -> (BTreeMap<u64, String>, Option<u64>) {
        let metrics = self.group.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        (members, metrics.current_leader)
    }

    /// On the leader: each of `members` as the leader sees it (its own entry says `leader`).
    /// Elsewhere: empty, as only the leader hears from every member.
    pub fn member_health(&self, members: impl Iterator<Item = u64>) -> Vec<pb::MemberHealth> {
        let contacts = self.group.voter_contacts();
        let metrics = self.group.raft.metrics().borrow_watched().clone();
        if metrics.state != openraft::ServerState::Leader {
            return Vec::new();
        }
        let last_index = metrics.last_log_index.unwrap_or(0);
        members
            .map(|node_id| {
                if node_id == metrics.id {
                    return pb::MemberHealth {
                        node_id,
                        state: "leader".to_owned(),
                        last_contact_ms: Some(0),
                        lag_entries: Some(0),
                    };
                }
                let contact = contacts.iter().find(|c| c.id == node_id);
                let acked_ago = contact.and_then(|c| c.acked_ago);
                let live = acked_ago.is_some_and(|ago| ago <= MEMBER_LIVE_WITHIN);
                pb::MemberHealth {
                    node_id,
                    state: if live { "live" } else { "unreachable" }.to_owned(),
                    last_contact_ms: acked_ago.map(|ago| u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)),
                    lag_entries: contact.and_then(|c| c.matched_index).map(|m| last_index.saturating_sub(m)),
                }
            })
            .collect()
    }

    /// Makes the voters the current ones plus `add` minus `remove`, on the leader: each new
    /// member joins as a learner and is waited for (up to [`MEMBER_CATCH_UP_WAIT`]) until it
    /// is within [`MEMBER_CATCH_UP_LAG_ENTRIES`] of the log, then the voters are replaced
    /// through joint consensus. Asking again for what is already so changes nothing.
    pub async fn change_members(
        &self,
        add: BTreeMap<u64, String>,
        remove: BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, String>, Status> {
        self.read_barrier().await?;
        let (current, _) = self.members();
        let mut target = current.clone();
        target.retain(|id, _| !remove.contains(id));
        for (id, addr) in &add {
            if remove.contains(id) {
                return Err(StrataError::invalid(format!("member {id} is both added and removed")).into());
            }
            if addr.parse::<tonic::codegen::http::Uri>().is_err() || !addr.starts_with("http") {
                return Err(StrataError::invalid(format!("'{addr}' is not an http(s) endpoint")).into());
            }
            target.insert(*id, addr.clone());
        }
        if target.is_empty() || target.len() > METADATA_MEMBERS_MAX {
            return Err(StrataError::invalid(format!("the quorum must keep 1-{METADATA_MEMBERS_MAX} members")).into());
        }
        if target.keys().eq(current.keys()) {
            return Ok(current);
        }
        let failed = |what: &'static str, e: &dyn std::fmt::Display| -> Status { MemberError::quorum(what, e).into() };
        let raft = &self.group.raft;
        for (&id, addr) in target.iter().filter(|(id, _)| !current.contains_key(id)) {
            let node = BasicNode { addr: addr.clone() };
            raft.add_learner(id, node, false).await.map_err(|e| failed("adding a metadata learner failed", &e))?;
        }
        let deadline = self.clock.instant() + MEMBER_CATCH_UP_WAIT;
        loop {
            let metrics = raft.metrics().borrow_watched().clone();
            let last = metrics.last_log_index.unwrap_or(0);
            let caught_up = target.keys().filter(|id| !current.contains_key(id)).all(|id| {
                let matched = metrics.replication.as_ref().and_then(|r| r.get(id).cloned().flatten());
                matched.is_some_and(|m| m.index + MEMBER_CATCH_UP_LAG_ENTRIES >= last)
            });
            if caught_up {
                break;
            }
            if self.clock.instant() >= deadline {
                return Err(StrataError::unavailable(
                    "a new member did not catch up in time: is it running and reachable at its endpoint?",
                )
                .into());
            }
            self.clock.sleep(std::time::Duration::from_millis(100)).await;
        }
        let ids: BTreeSet<u64> = target.keys().copied().collect();
        raft.change_membership(ids, false).await.map_err(|e| failed("changing the metadata voters failed", &e))?;
        tracing::info!(members = ?target, "metadata members changed");
        Ok(target)
    }

    /// Whether this member leads now.
    pub fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    /// The latest snapshot this member stored, if any.
    pub async fn latest_snapshot(
        &self,
    ) -> Result<Option<openraft::alias::SnapshotOf<MetaRaftConfig, Vec<u8>>>, StrataError> {
        Ok(self.group.raft.get_snapshot().await.map_err(|e| MemberError::bug("reading the snapshot failed", e))?)
    }

    /// Takes a snapshot now (it is also taken every few hundred entries).
    pub async fn snapshot_now(&self) -> Result<(), StrataError> {
        let trigger = self.group.raft.trigger().snapshot().await;
        Ok(trigger.map_err(|e| MemberError::quorum("triggering a snapshot failed", e))?)
    }

    /// The member that leads, as far as this one knows.
    pub async fn current_leader(&self) -> Option<u64> {
        self.group.raft.current_leader().await
    }

    /// The quorum as this member sees it now.
    pub fn quorum_view(&self) -> QuorumView {
        let members = self.group.raft.metrics().borrow_watched().membership_config.membership().voter_ids().count();
        if let Some(silent) = self.group.quorum_silence() {
            return match silent > QUORUM_SILENCE_MAX {
                true => QuorumView::Lost { silent, members, leader: true },
                false => QuorumView::Leads,
            };
        }
        if let Some(leader) = self.group.raft.metrics().borrow_watched().current_leader {
            return QuorumView::Follows { leader };
        }
        match self.leaderless.for_how_long(self.clock.instant()) {
            Some(silent) if silent > LEADERLESS_MAX => QuorumView::Lost { silent, members, leader: false },
            _ => QuorumView::Electing,
        }
    }

    /// Readiness: this member reaches its quorum.
    pub fn ready_check(&self) -> strata_telemetry::ReadyCheck {
        strata_telemetry::ReadyCheck::new("metadata_quorum", self.quorum_view().problem())
    }

    /// Answers `Unavailable`, with the leader's address when known: the caller retries there.
    /// Without one, the answer says whether an election is under way or the quorum is lost.
    fn not_leader(&self, forward: Option<&ForwardToLeader<MetaRaftConfig>>) -> Status {
        let leader = forward.and_then(|f| f.leader_node.as_ref()).and_then(|n| n.addr.parse().ok());
        if leader.is_none()
            && let Some(refusal) = self.quorum_view().refusal()
        {
            return refusal;
        }
        let mut status = Status::unavailable("this metadata member is not the leader; retry at the leader");
        match leader {
            Some(addr) => _ = status.metadata_mut().insert(LEADER_HINT_METADATA_KEY, addr),
            None => crate::quorum::mark_electing(&mut status),
        }
        status
    }

    /// Refuses at once a call that would wait for a quorum this member cannot reach.
    fn require_quorum(&self) -> Result<(), Status> {
        self.quorum_view().refusal().map_or(Ok(()), Err)
    }

    /// Proposes a command and returns its applied result; a command retried with the same
    /// request id is applied once (see [`MetaEntry`]).
    pub async fn propose(&self, request_id: Option<String>, command: MetaCommand) -> Result<MetaResponse, Status> {
        self.require_quorum()?;
        let entry = MetaEntry { request_id, command };
        let timer = strata_telemetry::Timer::start();
        let written = self.group.raft.client_write(entry).await;
        let group = strata_telemetry::GroupLabel {
            group: <Catalog as strata_raft::raft_state::ReplicatedState>::METRICS_GROUP,
        };
        timer.observe(&strata_telemetry::raft().commit_seconds.get_or_create(&group));
        let response = written.map_err(|e| {
            tracing::debug!(error = %e, "metadata proposal not taken here");
            self.not_leader(e.forward_to_leader())
        })?;
        match response.data {
            MetaResponse::Error(e) => Err(StrataError::from(e).into()),
            other => Ok(other),
        }
    }

    /// Waits until a read of the catalog here is linearizable: this member leads and has applied
    /// every entry committed before the call.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        self.require_quorum()?;
        self.group.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map(|_| ()).map_err(|e| {
            tracing::debug!(error = %e, "metadata read not served here");
            self.not_leader(e.forward_to_leader())
        })
    }

    /// The Raft term this member is in (the one it leads in, after a read barrier).
    /// This member's id in the quorum.
    pub(crate) fn node_id(&self) -> u64 {
        self.group.raft.metrics().borrow_watched().id
    }

    pub(crate) fn term(&self) -> u64 {
        self.group.raft.metrics().borrow_watched().current_term
    }

    /// The applied catalog. Hold the guard briefly.
    pub fn catalog(&self) -> StateGuard<'_, MetaRaftConfig, Catalog> {
        self.group.state.read()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Serves the gRPC API on `listener`, over mutual TLS and by the role table, until
    /// `shutdown` resolves.
    pub async fn serve_with_listener(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let raft_transport = self.router.as_ref().map(RaftRouter::service);
        let upgrades = tokio::spawn(crate::formats::raise_format_generation(self.clone()));
        let sealing = tokio::spawn(crate::sealing::seal_clear_secrets(self.clone()));
        let drains = tokio::spawn(crate::drains::drive_drains(self.clone()));
        let incoming = strata_tls::incoming(listener, self.credentials.clone(), self.clock.clone());
        let service = MetadataServer::new(MetadataService { node: self })
            .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
        let served = tonic::transport::Server::builder()
            .initial_stream_window_size(limits::GRPC_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(limits::GRPC_CONNECTION_WINDOW_BYTES)
            .layer(AuthorizeLayer::new(Listener::Metadata))
            .layer(strata_telemetry::trace::GrpcServerSpans)
            .add_service(service)
            .add_optional_service(raft_transport)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        upgrades.abort();
        sealing.abort();
        drains.abort();
        served?;
        Ok(())
    }

    /// Seals SigV4 secrets created from now on under `keks` (once the cluster writes
    /// [`SEALED_SECRETS_GENERATION`]), and opens those sealed before.
    pub fn use_keks(&self, keks: Keks) {
        *self.keks.write() = keks;
    }

    /// This member's KEKs.
    pub(crate) fn keks(&self) -> Keks {
        self.keks.read().clone()
    }

    /// The command that changes the stored-bytes limit of `of` from `was` to what `limits` say,
    /// if it changes. Refused while some process of the cluster could not read it (the cluster
    /// writes a format generation before [`STORED_BYTES_LIMITS_GENERATION`]).
    fn stored_bytes_command(
        &self,
        of: LimitsOf,
        was: u64,
        limits: &Limits,
    ) -> Result<Option<MetaCommand>, StrataError> {
        if limits.stored_bytes_max == was {
            return Ok(None);
        }
        let generation = self.catalog().format_generation();
        if generation < STORED_BYTES_LIMITS_GENERATION {
            return Err(StrataError::invalid(format!(
                "stored-bytes limits take format generation {STORED_BYTES_LIMITS_GENERATION}; this cluster writes \
                 {generation} until every process runs a release that reads it"
            )));
        }
        Ok(Some(MetaCommand::SetStoredBytesMax { of, stored_bytes_max: limits.stored_bytes_max }))
    }

    /// Proposes what [`MetadataNode::stored_bytes_command`] gave, after the limits' own command
    /// (under a request id of its own, derived from the call's).
    async fn propose_stored_bytes(
        &self,
        request_id: Option<String>,
        command: Option<MetaCommand>,
    ) -> Result<(), StrataError> {
        if let Some(command) = command {
            self.propose(request_id.map(|id| format!("{id}/stored-bytes")), command).await?;
        }
        Ok(())
    }

    /// A new secret as stored: sealed when this member holds a KEK and the cluster reads sealed
    /// secrets, else in clear.
    fn stored_secret(&self, secret: Secret, access_key_id: &str) -> Result<Secret, StrataError> {
        if self.catalog().format_generation() < SEALED_SECRETS_GENERATION {
            return Ok(secret);
        }
        match self.keks.read().seal(&secret.0, access_key_id) {
            Some(sealed) => Ok(Secret(sealed?)),
            None => Ok(secret),
        }
    }

    /// Stops the Raft group.
    pub async fn shutdown(&self) {
        // A leader stopping on purpose hands over first: no member waits out an election.
        if self.router.is_some() && self.group.hand_off_leadership().await {
            tracing::info!("metadata leadership handed off");
        }
        if let Some(router) = &self.router {
            router.deregister(METADATA_GROUP);
        }
        if let Err(e) = self.group.raft.shutdown().await {
            tracing::warn!(error = %e, "metadata raft shutdown");
        }
        self.group.log.wal().close();
    }
}

impl From<QueueRecord> for pb::QueueInfo {
    fn from(q: QueueRecord) -> Self {
        Self {
            tenant: q.tenant,
            name: q.name,
            queue_id: q.queue_id,
            shard_id: q.shard_id,
            config: Some(q.config.into()),
            created_ms: q.created_ms,
            modified_ms: q.modified_ms,
            tags: q.tags.into_iter().collect(),
            // Filled in where the catalog is at hand (`queue_info`).
            epoch: 0,
        }
    }
}

/// A queue's record with its epoch.
fn queue_info(catalog: &Catalog, record: QueueRecord) -> pb::QueueInfo {
    let epoch = catalog.queue_epoch(record.queue_id);
    pb::QueueInfo { epoch, ..record.into() }
}

/// A move under way, as the API shows it.
fn move_info(move_id: u64, m: &QueueMove) -> pb::QueueMoveInfo {
    let (phase, reason, switched_ms) = match &m.phase {
        MovePhase::Started => ("started", String::new(), 0),
        MovePhase::Switched { at_ms } => ("switched", String::new(), *at_ms),
        MovePhase::RollingBack { reason } => ("rolling back", reason.clone(), 0),
    };
    pb::QueueMoveInfo {
        move_id,
        tenant: m.tenant.clone(),
        name: m.name.clone(),
        queue_id: m.queue_id,
        from_shard: m.from_shard,
        to_shard: m.to_shard,
        started_ms: m.started_ms,
        phase: phase.to_owned(),
        reason,
        switched_ms,
        ..Default::default()
    }
}

/// A move that ended, as the API shows it.
fn finished_info(f: &FinishedMove) -> pb::QueueMoveInfo {
    let mut info = move_info(f.move_id, &f.queue);
    info.phase =
        if matches!(f.queue.phase, MovePhase::Switched { .. }) { "completed" } else { "rolled back" }.to_owned();
    pb::QueueMoveInfo { finished_ms: f.finished_ms, paused_ms: f.paused_ms, bytes_moved: f.bytes_moved, ..info }
}

struct MetadataService {
    node: Arc<MetadataNode>,
}

impl MetadataService {
    /// Proposes a command answered by a shard record; answers the shard.
    async fn propose_shard(
        &self,
        request_id: Option<String>,
        command: MetaCommand,
    ) -> Result<Response<pb::ShardInfo>, Status> {
        match self.node.propose(request_id, command).await? {
            MetaResponse::Shard(shard) => Ok(Response::new(self.shard_info(&shard))),
            other => Err(unexpected(other)),
        }
    }

    /// A storage node as listed: its record, its lease and drain, how many shards it holds.
    fn node_info(&self, catalog: &Catalog, n: &NodeRecord, term: u64, now_ms: u64) -> pb::StorageNodeInfo {
        pb::StorageNodeInfo {
            node_id: n.node_id.clone(),
            address: n.address.clone(),
            zone: n.zone.clone(),
            capacity_bytes: n.capacity_bytes,
            raft_id: n.raft_id,
            live: self.node.leases.is_live(&n.node_id, term, now_ms),
            registered_ms: n.registered_ms,
            format_generation_max: self.node.leases.format_generation_max(&n.node_id, term).unwrap_or_default(),
            drain_started_ms: catalog.draining_nodes().find(|(id, _)| **id == n.node_id).map_or(0, |(_, at)| at),
            shards: u32::try_from(catalog.shards_of(&n.node_id).count()).unwrap_or(u32::MAX),
        }
    }

    fn shard_info(&self, shard: &ShardRecord) -> pb::ShardInfo {
        let catalog = self.node.catalog();
        let address = catalog.node(&shard.node_id).map(|n| n.address.clone()).unwrap_or_default();
        let replicas = shard
            .replicas
            .iter()
            .filter_map(|id| catalog.node(id))
            .map(|n| pb::Replica { node_id: n.node_id.clone(), address: n.address.clone(), raft_id: n.raft_id })
            .collect();
        let (term, now_ms) = (self.node.term(), self.node.now_ms());
        pb::ShardInfo {
            shard_id: shard.shard_id,
            node_id: shard.node_id.clone(),
            address,
            writer_epoch: shard.writer_epoch,
            replicas,
            leaving: shard.leaving.clone(),
            // A shard no leader claimed yet has no writer to lose.
            writer_lease_lost: shard.writer_epoch > 0 && !self.node.leases.is_live(&shard.node_id, term, now_ms),
        }
    }
}

fn members_response(members: &BTreeMap<u64, String>, node: &MetadataNode) -> pb::MetadataMembersResponse {
    let (_, leader) = node.members();
    pb::MetadataMembersResponse {
        members: members
            .iter()
            .map(|(&node_id, address)| pb::MetadataMember { node_id, address: address.clone() })
            .collect(),
        leader_id: leader.unwrap_or(0),
        health: node.member_health(members.keys().copied()),
    }
}

fn queue_response(response: MetaResponse) -> Result<Response<pb::QueueInfo>, Status> {
    match response {
        MetaResponse::Queue(q) => Ok(Response::new(q.into())),
        other => Err(unexpected(other)),
    }
}

fn required_config(config: Option<pb::QueueConfig>) -> Result<QueueConfig, Status> {
    config.map(Into::into).ok_or_else(|| StrataError::invalid("queue config is required").into())
}

#[tonic::async_trait]
impl Metadata for MetadataService {
    async fn ensure_tenant(&self, request: Request<pb::EnsureTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let request_id = request_id(&request)?;
        let tenant = request.into_inner().tenant;
        match self.node.propose(request_id, MetaCommand::EnsureTenant { tenant, now_ms: self.node.now_ms() }).await? {
            MetaResponse::Tenant(t) => Ok(Response::new(pb::Tenant { tenant: t.tenant, created_ms: t.created_ms })),
            other => Err(unexpected(other)),
        }
    }

    async fn create_queue(&self, request: Request<pb::CreateQueueRequest>) -> Result<Response<pb::QueueInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let config = required_config(r.config)?;
        let now_ms = if r.now_ms == 0 { self.node.now_ms() } else { r.now_ms };
        let (tenant, name) = (r.tenant, r.name);
        // On the less loaded of its two shards, as their leaders last reported (a shard not
        // heard from counts as idle; ties keep the first choice).
        let by_load = {
            let catalog = self.node.catalog();
            let (term, clock_ms) = (self.node.term(), self.node.now_ms());
            let load = |shard: u64| self.node.leases.load_of(shard, term, clock_ms).unwrap_or(0);
            let choices = catalog.queue_shard_choices(&tenant, &name);
            (catalog.format_generation() >= LOAD_PLACEMENT_GENERATION)
                .then(|| choices.into_iter().min_by_key(|&shard| load(shard)))
                .flatten()
        };
        let command = match by_load {
            Some(shard_id) => MetaCommand::CreateQueueOn { tenant, name, config, now_ms, shard_id },
            None => MetaCommand::CreateQueue { tenant, name, config, now_ms },
        };
        queue_response(self.node.propose(request_id, command).await?)
    }

    async fn get_queue(&self, request: Request<pb::QueueName>) -> Result<Response<pb::QueueInfo>, Status> {
        self.node.read_barrier().await?;
        let r = request.into_inner();
        let catalog = self.node.catalog();
        let found = catalog.queue(&r.tenant, &r.name).cloned();
        found
            .map(|q| Response::new(queue_info(&catalog, q)))
            .ok_or_else(|| StrataError::queue_not_found(&r.name).into())
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.node.read_barrier().await?;
        let r = request.into_inner();
        let max = if r.max_results == 0 { LIST_QUEUES_PAGE_MAX } else { r.max_results.min(LIST_QUEUES_PAGE_MAX) };
        let (queues, truncated) = self.node.catalog().list_queues(&r.tenant, &r.prefix, &r.start_after, max as usize);
        Ok(Response::new(pb::ListQueuesResponse { queues: queues.into_iter().map(Into::into).collect(), truncated }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.node.read_barrier().await?;
        let r = request.into_inner();
        let max = if r.max_results == 0 { LIST_QUEUES_PAGE_MAX } else { r.max_results.min(LIST_QUEUES_PAGE_MAX) };
        let (tenants, truncated) = self.node.catalog().list_tenants(&r.start_after, max as usize);
        let tenants = tenants
            .into_iter()
            .map(|(t, queues)| pb::TenantSummary { tenant: t.tenant, created_ms: t.created_ms, queues })
            .collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants, truncated }))
    }

    async fn delete_queue(&self, request: Request<pb::QueueName>) -> Result<Response<pb::QueueInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        queue_response(
            self.node.propose(request_id, MetaCommand::DeleteQueue { tenant: r.tenant, name: r.name }).await?,
        )
    }

    async fn set_queue_config(
        &self,
        request: Request<pb::SetQueueConfigRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let config = required_config(r.config)?;
        let now_ms = if r.now_ms == 0 { self.node.now_ms() } else { r.now_ms };
        queue_response(
            self.node
                .propose(request_id, MetaCommand::SetQueueConfig { tenant: r.tenant, name: r.name, config, now_ms })
                .await?,
        )
    }

    async fn tag_queue(&self, request: Request<pb::TagQueueRequest>) -> Result<Response<pb::QueueInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let command = MetaCommand::TagQueue { tenant: r.tenant, name: r.name, tags: r.tags.into_iter().collect() };
        queue_response(self.node.propose(request_id, command).await?)
    }

    async fn untag_queue(&self, request: Request<pb::UntagQueueRequest>) -> Result<Response<pb::QueueInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        queue_response(
            self.node
                .propose(request_id, MetaCommand::UntagQueue { tenant: r.tenant, name: r.name, keys: r.keys })
                .await?,
        )
    }

    async fn register_storage_node(
        &self,
        request: Request<pb::RegisterStorageNodeRequest>,
    ) -> Result<Response<pb::RegisterStorageNodeResponse>, Status> {
        let request_id = request_id(&request)?;
        own_storage_node(&request, &request.get_ref().node_id)?;
        let r = request.into_inner();
        let node_id = r.node_id.clone();
        let address_ok =
            r.address.parse::<tonic::codegen::http::Uri>().is_ok_and(|u| u.host().is_some() && u.port().is_some());
        if !address_ok {
            return Err(StrataError::invalid(format!(
                "storage node {node_id}: address '{}' is not scheme://host:port",
                r.address
            ))
            .into());
        }
        self.node.read_barrier().await?;
        let generation = self.node.catalog().format_generation();
        if r.format_generation_max < generation {
            return Err(StrataError::new(
                ErrorKind::InvalidParameter,
                format!(
                    "storage node {node_id} reads format generations up to {}, but the cluster writes {generation}: \
                     run a release that reads it",
                    r.format_generation_max
                ),
            )
            .into());
        }
        let command = MetaCommand::RegisterStorageNode {
            node_id: r.node_id,
            address: r.address,
            initial_shards: r.initial_shards,
            now_ms: self.node.now_ms(),
            zone: r.zone,
            capacity_bytes: r.capacity_bytes,
            replication_factor: r.replication_factor,
        };
        match self.node.propose(request_id, command).await? {
            // The placement as it is now, read at one moment with the shard count (another
            // registration may have created the shards since this one applied).
            MetaResponse::Shards(_) => {
                let (hosted, count) = {
                    let catalog = self.node.catalog();
                    (catalog.shards_of(&node_id).cloned().collect::<Vec<_>>(), catalog.shard_count() as u64)
                };
                Ok(Response::new(pb::RegisterStorageNodeResponse {
                    shards: hosted.iter().map(|s| self.shard_info(s)).collect(),
                    shards_in_catalog: count,
                    format_generation: self.node.catalog().format_generation(),
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn get_shard(&self, request: Request<pb::GetShardRequest>) -> Result<Response<pb::ShardInfo>, Status> {
        self.node.read_barrier().await?;
        let shard_id = request.into_inner().shard_id;
        let shard = self.node.catalog().shard(shard_id).cloned();
        match shard {
            Some(shard) => Ok(Response::new(self.shard_info(&shard))),
            None => Err(StrataError::invalid(format!("unknown shard {shard_id}")).into()),
        }
    }

    async fn commit_segment(&self, request: Request<pb::CommitSegmentRequest>) -> Result<Response<pb::Empty>, Status> {
        let request_id = request_id(&request)?;
        let segment = request.into_inner().segment.ok_or_else(|| StrataError::invalid("segment is required"))?;
        self.node.propose(request_id, MetaCommand::CommitSegment(segment.into())).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn claim_shard_writer(
        &self,
        request: Request<pb::ClaimShardWriterRequest>,
    ) -> Result<Response<pb::ShardInfo>, Status> {
        let request_id = request_id(&request)?;
        own_storage_node(&request, &request.get_ref().node_id)?;
        let r = request.into_inner();
        let command =
            MetaCommand::ClaimShardWriter { shard_id: r.shard_id, node_id: r.node_id, raft_term: r.raft_term };
        self.propose_shard(request_id, command).await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        own_storage_node(&request, &request.get_ref().node_id)?;
        self.node.read_barrier().await?;
        let pb::HeartbeatRequest { node_id, format_generation_max, shard_loads } = request.into_inner();
        let (shards, leaving, format_generation, operations): (Vec<ShardRecord>, Vec<ShardRecord>, _, _) = {
            let catalog = self.node.catalog();
            if catalog.node(&node_id).is_none() {
                return Err(StrataError::invalid(format!("storage node {node_id} is not registered")).into());
            }
            let shards: Vec<ShardRecord> = catalog.shards_of(&node_id).cloned().collect();
            let shard_ids: Vec<u64> = shards.iter().map(|s| s.shard_id).collect();
            (
                shards,
                catalog.shards_leaving(&node_id).cloned().collect(),
                catalog.format_generation(),
                catalog.operations_of(&shard_ids, OPERATIONS_PER_HEARTBEAT_MAX),
            )
        };
        let (mut queue_drops, mut queue_moves) = (Vec::new(), Vec::new());
        for (id, op) in operations {
            match op {
                Operation::DropQueue { tenant, queue_id, shard_id } => {
                    queue_drops.push(pb::QueueRef { shard_id, queue_id, tenant });
                }
                Operation::MoveQueue(queue_move) => queue_moves.push(move_info(id, &queue_move)),
            }
        }
        let (term, now_ms) = (self.node.term(), self.node.now_ms());
        self.node.leases.heartbeat(&node_id, term, now_ms, format_generation_max);
        // Only the load of a shard the node is the writer (the claimed leader) of counts.
        let writer_of: Vec<u64> =
            shards.iter().filter(|s| s.node_id == node_id && s.writer_epoch > 0).map(|s| s.shard_id).collect();
        for load in shard_loads.iter().filter(|l| writer_of.contains(&l.shard_id)).take(SHARD_LOADS_PER_HEARTBEAT_MAX) {
            self.node.leases.shard_load(load.shard_id, load.entries_per_minute, term, now_ms);
        }
        let shards = shards.iter().map(|s| self.shard_info(s)).collect();
        let leaving_shards = leaving.iter().map(|s| self.shard_info(s)).collect();
        let draining = self.node.catalog().is_draining(&node_id);
        Ok(Response::new(pb::HeartbeatResponse {
            draining,
            lease_ms: LEASE_MS,
            shards,
            leaving_shards,
            format_generation,
            queue_drops,
            queue_moves,
        }))
    }

    async fn list_storage_nodes(
        &self,
        _: Request<pb::ListStorageNodesRequest>,
    ) -> Result<Response<pb::ListStorageNodesResponse>, Status> {
        self.node.read_barrier().await?;
        let (term, now_ms) = (self.node.term(), self.node.now_ms());
        let catalog = self.node.catalog();
        let nodes = catalog.nodes().map(|n| self.node_info(&catalog, n, term, now_ms)).collect();
        Ok(Response::new(pb::ListStorageNodesResponse { nodes, format_generation: catalog.format_generation() }))
    }

    async fn list_shard_queues(
        &self,
        request: Request<pb::ListShardQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.node.read_barrier().await?;
        let r = request.into_inner();
        let asked = usize::try_from(r.max).unwrap_or(usize::MAX);
        let max = if asked == 0 { SHARD_QUEUES_PAGE_MAX } else { asked.min(SHARD_QUEUES_PAGE_MAX) };
        let catalog = self.node.catalog();
        let on_shard = catalog.queues_on_shard(r.shard_id, max);
        let truncated = on_shard.len() == max;
        let queues = on_shard.into_iter().map(|q| q.clone().into()).collect();
        Ok(Response::new(pb::ListQueuesResponse { queues, truncated }))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::StorageNodeInfo>, Status> {
        let request_id = request_id(&request)?;
        let node_id = request.into_inner().node_id;
        // Members of older releases could not read the entry.
        if self.node.catalog().format_generation() < DRAINS_GENERATION {
            return Err(StrataError::invalid(format!(
                "nodes are drained once the cluster writes format generation {DRAINS_GENERATION}"
            ))
            .into());
        }
        let command = MetaCommand::DrainNode { node_id: node_id.clone(), now_ms: self.node.now_ms() };
        self.node.propose(request_id, command).await?;
        let (term, now_ms) = (self.node.term(), self.node.now_ms());
        let catalog = self.node.catalog();
        let node = catalog.node(&node_id).ok_or_else(|| StrataError::invalid("the node was removed already"))?;
        Ok(Response::new(self.node_info(&catalog, node, term, now_ms)))
    }

    async fn move_replica(&self, request: Request<pb::MoveReplicaRequest>) -> Result<Response<pb::ShardInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        // Leases live on the leader: this member must lead to judge them.
        self.node.read_barrier().await?;
        if !self.node.leases.is_live(&r.to_node, self.node.term(), self.node.now_ms()) {
            return Err(StrataError::unavailable(format!(
                "storage node {} has not heartbeated within its lease; move the replica to a live node",
                r.to_node
            ))
            .into());
        }
        let command = MetaCommand::MoveReplica { shard_id: r.shard_id, from: r.from_node, to: r.to_node };
        self.propose_shard(request_id, command).await
    }

    async fn add_shard(&self, request: Request<pb::AddShardRequest>) -> Result<Response<pb::ShardInfo>, Status> {
        let request_id = request_id(&request)?;
        let wanted = request.into_inner().replicas;
        // Leases live on the leader: this member must lead to judge them.
        self.node.read_barrier().await?;
        let (term, now_ms) = (self.node.term(), self.node.now_ms());
        let replicas = {
            let catalog = self.node.catalog();
            if catalog.format_generation() < OPERATIONS_GENERATION {
                return Err(StrataError::invalid(format!(
                    "shards are added once the cluster writes format generation {OPERATIONS_GENERATION}"
                ))
                .into());
            }
            let count = match wanted {
                0 => catalog.shard(1).map_or(1, |s| s.replicas.len()),
                n => usize::try_from(n).unwrap_or(usize::MAX),
            };
            let live: Vec<String> = catalog
                .nodes()
                .filter(|n| self.node.leases.is_live(&n.node_id, term, now_ms))
                .map(|n| n.node_id.clone())
                .collect();
            let replicas = catalog.place_new_shard(&live, count);
            if replicas.len() < count {
                return Err(StrataError::invalid(format!(
                    "a shard of {count} replicas needs {count} live storage nodes; {} are live",
                    replicas.len()
                ))
                .into());
            }
            replicas
        };
        self.propose_shard(request_id, MetaCommand::AddShard { replicas }).await
    }

    async fn confirm_replicas(
        &self,
        request: Request<pb::ConfirmReplicasRequest>,
    ) -> Result<Response<pb::ShardInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let command = MetaCommand::ConfirmReplicas { shard_id: r.shard_id, voters: r.voters };
        self.propose_shard(request_id, command).await
    }

    async fn change_metadata_members(
        &self,
        request: Request<pb::ChangeMetadataMembersRequest>,
    ) -> Result<Response<pb::MetadataMembersResponse>, Status> {
        let r = request.into_inner();
        let add = r.add.into_iter().map(|m| (m.node_id, m.address)).collect();
        let members = self.node.change_members(add, r.remove.into_iter().collect()).await?;
        Ok(Response::new(members_response(&members, &self.node)))
    }

    async fn list_metadata_members(
        &self,
        _: Request<pb::ListMetadataMembersRequest>,
    ) -> Result<Response<pb::MetadataMembersResponse>, Status> {
        self.node.read_barrier().await?;
        let (members, _) = self.node.members();
        Ok(Response::new(members_response(&members, &self.node)))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        self.node.read_barrier().await?;
        let shard_id = request.into_inner().shard_id;
        let segments = self.node.catalog().segments(shard_id);
        Ok(Response::new(pb::ListSegmentsResponse { segments: segments.into_iter().map(Into::into).collect() }))
    }

    async fn remove_segments(
        &self,
        request: Request<pb::RemoveSegmentsRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let command = MetaCommand::RemoveSegments {
            shard_id: r.shard_id,
            object_keys: r.object_keys,
            writer_epoch: r.writer_epoch,
        };
        self.node.propose(request_id, command).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn queue_dropped(&self, request: Request<pb::QueueDroppedRequest>) -> Result<Response<pb::Empty>, Status> {
        let request_id = request_id(&request)?;
        let queue_id = request.into_inner().queue_id;
        // Before the journal's generation no deletion was journaled, and the command cannot be
        // written: there is nothing to end.
        if self.node.catalog().format_generation() >= OPERATIONS_GENERATION {
            self.node.propose(request_id, MetaCommand::QueueDropped { queue_id }).await?;
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn start_queue_move(
        &self,
        request: Request<pb::StartQueueMoveRequest>,
    ) -> Result<Response<pb::QueueMoveInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        // Older members could not read the command: it is not written before the generation.
        if self.node.catalog().format_generation() < QUEUE_MOVES_GENERATION {
            return Err(StrataError::invalid(format!(
                "queues move between shards once the cluster writes format generation {QUEUE_MOVES_GENERATION}"
            ))
            .into());
        }
        let now_ms = self.node.now_ms();
        let command = MetaCommand::StartQueueMove { tenant: r.tenant, name: r.name, to_shard: r.to_shard, now_ms };
        let queue_id = match self.node.propose(request_id, command).await? {
            MetaResponse::Queue(record) => record.queue_id,
            other => return Err(unexpected(other)),
        };
        let started = self.node.catalog().queue_move_of(queue_id);
        started.map(|(id, m)| Response::new(move_info(id, &m))).ok_or_else(|| {
            // Ended already (a quick roll back) between the proposal and this read.
            Status::from(StrataError::invalid("the move ended at once; see the finished moves"))
        })
    }

    async fn decide_queue_move(
        &self,
        request: Request<pb::DecideQueueMoveRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let request_id = request_id(&request)?;
        self.node.read_barrier().await?;
        move_driver(&request, &self.node.catalog(), request.get_ref().move_id)?;
        let r = request.into_inner();
        let phase = if r.switch {
            MovePhase::Switched { at_ms: self.node.now_ms() }
        } else {
            MovePhase::RollingBack { reason: r.reason.chars().take(MOVE_REASON_CHARS_MAX).collect() }
        };
        self.node.propose(request_id, MetaCommand::SetQueueMovePhase { move_id: r.move_id, phase }).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn finish_queue_move(
        &self,
        request: Request<pb::FinishQueueMoveRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let request_id = request_id(&request)?;
        self.node.read_barrier().await?;
        move_driver(&request, &self.node.catalog(), request.get_ref().move_id)?;
        let r = request.into_inner();
        let command = MetaCommand::FinishQueueMove {
            move_id: r.move_id,
            now_ms: self.node.now_ms(),
            paused_ms: r.paused_ms,
            bytes_moved: r.bytes_moved,
        };
        self.node.propose(request_id, command).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn locate_queue(&self, request: Request<pb::LocateQueueRequest>) -> Result<Response<pb::QueueInfo>, Status> {
        self.node.read_barrier().await?;
        let r = request.into_inner();
        let catalog = self.node.catalog();
        let found = catalog.queue_by_id(&r.tenant, r.queue_id).cloned();
        found
            .map(|q| Response::new(queue_info(&catalog, q)))
            .ok_or_else(|| StrataError::new(ErrorKind::QueueNotFound, format!("no queue has id {}", r.queue_id)).into())
    }

    async fn list_queue_moves(&self, _: Request<pb::Empty>) -> Result<Response<pb::ListQueueMovesResponse>, Status> {
        self.node.read_barrier().await?;
        let (open, finished) = self.node.catalog().queue_moves();
        let moves = finished.iter().map(finished_info).chain(open.iter().map(|(id, m)| move_info(*id, m))).collect();
        Ok(Response::new(pb::ListQueueMovesResponse { moves }))
    }

    async fn create_access_key(
        &self,
        request: Request<pb::CreateAccessKeyRequest>,
    ) -> Result<Response<pb::AccessKey>, Status> {
        let request_id = request_id(&request)?;
        let tenant = request.into_inner().tenant;
        self.node.read_barrier().await?;
        let (access_key_id, secret) = new_access_key();
        let secret = self.node.stored_secret(secret, &access_key_id)?;
        let command = MetaCommand::CreateAccessKey { tenant, access_key_id, secret, now_ms: self.node.now_ms() };
        let response = self.node.propose(request_id, command).await?;
        access_key_response(response, Some(&self.node.keks.read()))
    }

    async fn rotate_access_key(
        &self,
        request: Request<pb::RotateAccessKeyRequest>,
    ) -> Result<Response<pb::AccessKey>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        self.node.read_barrier().await?;
        let (access_key_id, secret) = new_access_key();
        let secret = self.node.stored_secret(secret, &access_key_id)?;
        let command = MetaCommand::RotateAccessKey {
            tenant: r.tenant,
            old_access_key_id: r.access_key_id,
            access_key_id,
            secret,
            grace_ms: r.grace_ms,
            now_ms: self.node.now_ms(),
        };
        let response = self.node.propose(request_id, command).await?;
        access_key_response(response, Some(&self.node.keks.read()))
    }

    async fn revoke_access_key(&self, request: Request<pb::AccessKeyRef>) -> Result<Response<pb::AccessKey>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let command = MetaCommand::RevokeAccessKey {
            tenant: r.tenant,
            access_key_id: r.access_key_id,
            now_ms: self.node.now_ms(),
        };
        access_key_response(self.node.propose(request_id, command).await?, None)
    }

    async fn list_access_keys(
        &self,
        request: Request<pb::ListAccessKeysRequest>,
    ) -> Result<Response<pb::ListAccessKeysResponse>, Status> {
        self.node.read_barrier().await?;
        let tenant = request.into_inner().tenant;
        let keys = self.node.catalog().access_keys_of(&tenant);
        Ok(Response::new(pb::ListAccessKeysResponse {
            keys: keys.into_iter().map(|k| access_key_pb(k, None)).collect::<Result<_, _>>()?,
        }))
    }

    async fn lookup_access_key(
        &self,
        request: Request<pb::LookupAccessKeyRequest>,
    ) -> Result<Response<pb::AccessKey>, Status> {
        self.node.read_barrier().await?;
        let id = request.into_inner().access_key_id;
        let key = self.node.catalog().access_key(&id).cloned();
        match key {
            Some(key) => Ok(Response::new(access_key_pb(key, Some(&self.node.keks.read()))?)),
            None => {
                Err(StrataError::new(ErrorKind::AccessKeyNotFound, format!("access key '{id}' does not exist")).into())
            }
        }
    }

    async fn set_limit_plan(&self, request: Request<pb::LimitPlan>) -> Result<Response<pb::LimitPlan>, Status> {
        let request_id = request_id(&request)?;
        let plan = request.into_inner();
        let limits: Limits = plan.limits.unwrap_or_default().into();
        let was = self.node.catalog().limit_plans().get(&plan.name).map_or(0, |l| l.stored_bytes_max);
        let stored_bytes = self.node.stored_bytes_command(LimitsOf::Plan(plan.name.clone()), was, &limits)?;
        self.node.propose(request_id.clone(), MetaCommand::SetLimitPlan { name: plan.name.clone(), limits }).await?;
        self.node.propose_stored_bytes(request_id, stored_bytes).await?;
        Ok(Response::new(plan))
    }

    async fn list_limit_plans(
        &self,
        _: Request<pb::ListLimitPlansRequest>,
    ) -> Result<Response<pb::ListLimitPlansResponse>, Status> {
        self.node.read_barrier().await?;
        let plans = self
            .node
            .catalog()
            .limit_plans()
            .iter()
            .map(|(name, limits)| pb::LimitPlan { name: name.clone(), limits: Some((*limits).into()) })
            .collect();
        Ok(Response::new(pb::ListLimitPlansResponse { plans }))
    }

    async fn set_tenant_limits(
        &self,
        request: Request<pb::SetTenantLimitsRequest>,
    ) -> Result<Response<pb::TenantLimitsInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let overrides: Limits = r.overrides.unwrap_or_default().into();
        let was = self.node.catalog().limits_of(&r.tenant).0.overrides.stored_bytes_max;
        let stored_bytes = self.node.stored_bytes_command(LimitsOf::Tenant(r.tenant.clone()), was, &overrides)?;
        let command = MetaCommand::SetTenantLimits { tenant: r.tenant.clone(), plan: r.plan, overrides };
        self.node.propose(request_id.clone(), command).await?;
        self.node.propose_stored_bytes(request_id, stored_bytes).await?;
        Ok(Response::new(self.tenant_limits(&r.tenant)))
    }

    async fn set_tenant_capped(
        &self,
        request: Request<pb::SetTenantCappedRequest>,
    ) -> Result<Response<pb::TenantLimitsInfo>, Status> {
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        self.node
            .propose(request_id, MetaCommand::SetTenantCapped { tenant: r.tenant.clone(), reason: r.capped_reason })
            .await?;
        Ok(Response::new(self.tenant_limits(&r.tenant)))
    }

    async fn get_tenant_limits(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::TenantLimitsInfo>, Status> {
        self.node.read_barrier().await?;
        Ok(Response::new(self.tenant_limits(&request.into_inner().tenant)))
    }
}

impl MetadataService {
    fn tenant_limits(&self, tenant: &str) -> pb::TenantLimitsInfo {
        let (record, effective) = self.node.catalog().limits_of(tenant);
        pb::TenantLimitsInfo {
            tenant: tenant.to_owned(),
            plan: record.plan,
            overrides: Some(record.overrides.into()),
            effective: Some(effective.into()),
            capped_reason: record.capped_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_raft::raft_state::ReplicatedState;

    use super::*;

    /// A catalog of four nodes (three replicas a shard) with a queue moving from its shard.
    fn catalog_with_a_move() -> (Catalog, u64, u64) {
        let mut c = Catalog::default();
        let mut index = 0;
        let mut run = |c: &mut Catalog, command: MetaCommand| {
            index += 1;
            let answer = c.apply(index, &MetaEntry { request_id: None, command });
            assert!(!matches!(answer, MetaResponse::Error(_)), "{answer:?}");
            index
        };
        for node in ["n1", "n2", "n3", "n4"] {
            let register = MetaCommand::RegisterStorageNode {
                node_id: node.into(),
                address: format!("http://{node}"),
                initial_shards: 2,
                now_ms: 0,
                zone: String::new(),
                capacity_bytes: 1 << 40,
                replication_factor: 3,
            };
            run(&mut c, register);
        }
        run(&mut c, MetaCommand::SetFormatGeneration { generation: QUEUE_MOVES_GENERATION });
        for shard_id in [1, 2] {
            let node_id = c.shard(shard_id).map(|s| s.node_id.clone()).unwrap_or_default();
            run(&mut c, MetaCommand::ClaimShardWriter { shard_id, node_id, raft_term: 1 });
        }
        run(&mut c, MetaCommand::EnsureTenant { tenant: "acme".into(), now_ms: 0 });
        let config = QueueConfig { retention_ms: 60_000, visibility_timeout_ms: 30_000, ..Default::default() };
        run(&mut c, MetaCommand::CreateQueue { tenant: "acme".into(), name: "q".into(), config, now_ms: 0 });
        let from = c.queue("acme", "q").map(|q| q.shard_id).unwrap_or_default();
        let to_shard = if from == 1 { 2 } else { 1 };
        let move_id =
            run(&mut c, MetaCommand::StartQueueMove { tenant: "acme".into(), name: "q".into(), to_shard, now_ms: 0 });
        (c, move_id, from)
    }

    fn as_peer(role: Role, name: &str) -> Request<()> {
        let mut request = Request::new(());
        let identity = strata_tls::Identity { role, name: name.to_owned() };
        request.extensions_mut().insert(Peer { identity, remote_addr: ([127, 0, 0, 1], 1).into() });
        request
    }

    #[test]
    fn only_a_storage_node_holding_the_source_shard_decides_a_move() {
        let (c, move_id, from) = catalog_with_a_move();
        let replicas = c.shard(from).map(|s| s.replicas.clone()).unwrap_or_default();
        let stranger = ["n1", "n2", "n3", "n4"].into_iter().find(|n| !replicas.iter().any(|r| r == n));
        let stranger = stranger.expect("one of four nodes holds no replica of a 3-replica shard");
        assert!(move_driver(&as_peer(Role::Storage, &replicas[0]), &c, move_id).is_ok());
        let refused = move_driver(&as_peer(Role::Storage, stranger), &c, move_id).expect_err("a stranger");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let refused = move_driver(&as_peer(Role::Proxy, &replicas[0]), &c, move_id).expect_err("a proxy");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // A move no longer under way is left to the catalog.
        assert!(move_driver(&as_peer(Role::Storage, stranger), &c, move_id + 1000).is_ok());
    }
}
