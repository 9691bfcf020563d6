//! The Raft transport between the voters of a group: openraft's RPCs over gRPC.
//!
//! # What it owns
//!
//! * [`RaftRouter`]: the gRPC service (`strata.v1.RaftTransport`) a process serves once for all
//!   of its Raft groups. Each group registers its [`Raft`] under a [`GroupId`]; a message for a
//!   group that is not registered here (not hosted, or shutting down) answers `Unavailable`, which
//!   the sender treats as an unreachable peer.
//!   `Status` reports each registered group's role, term, leader and log progress.
//! * [`GrpcNetwork`]: the client side, openraft's network factory for one group. A peer's
//!   address is its `BasicNode::addr` (`https://host:port` of the peer's Raft transport); every
//!   connection is mutual TLS, to a peer whose certificate names the group's role.
//!
//! Messages are the openraft request and response types, postcard-encoded, in
//! `RaftMessage.payload`. A snapshot travels whole in one message (the state is small: message
//! bodies stay in the log).
//!
//! # How it fails
//!
//! Transport failures (connection refused, unknown group, a peer shutting down) are
//! `Unreachable`, so openraft backs off before retrying; an undecodable message is a bug between
//! two builds and answers `InvalidArgument`. Nothing here retries by itself: openraft does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use strata_common::ClockExt;

use bytes::Bytes;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, LogIdOptionExt, OptionalSend, Raft, RaftNetworkV2, RaftTypeConfig, ServerState};
use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_common::format::FormatGeneration;
use strata_common::proto::raft_transport_client::RaftTransportClient;
use strata_common::proto::raft_transport_server::{RaftTransport, RaftTransportServer};
use strata_common::proto::{self as pb};
use strata_tls::{Credentials, Role};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Which Raft group of a process a message is for (the metadata quorum, or a shard).
pub type GroupId = u64;

type Reply = Pin<Box<dyn Future<Output = Result<Vec<u8>, Status>> + Send>>;

/// The openraft RPCs, on both sides of the transport.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    TransferLeader,
}

/// One registered group, behind encoded messages.
trait GroupEndpoint: Send + Sync {
    fn handle(&self, rpc: Rpc, payload: Bytes) -> Reply;
    fn status(&self, group: GroupId) -> pb::RaftGroupStatus;
    /// Whether the process a certificate names may send this group Raft messages.
    fn admits(&self, peer_name: &str) -> bool;
}

/// Who may send a group Raft messages, besides the role the table requires.
#[derive(Clone)]
pub enum Senders {
    /// Only members (voters or learners) of the group: the certificate's name is the member's
    /// Raft node id (the metadata quorum). A process that has not joined a group yet hears from
    /// any process of the role, as the one that brings it the membership.
    MembersById,
    /// The processes whose certificate names the predicate admits (the shards: their members'
    /// certificates name storage nodes, whose Raft ids only metadata maps, so a shard admits the
    /// nodes its placement in metadata lists).
    Named(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

struct RaftEndpoint<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    raft: Raft<C, SM>,
    senders: Senders,
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(payload).map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    postcard::to_allocvec(value).map_err(|e| Status::internal(format!("unencodable Raft message: {e}")))
}

/// A Raft that fails locally (shutting down, fatal) cannot take messages: the sender backs off.
fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the Raft group cannot take messages: {e}"))
}

impl<C, SM> GroupEndpoint for RaftEndpoint<C, SM>
where
    C: RaftTypeConfig<NodeId = u64, Term = u64, Node = BasicNode>,
    SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
{
    fn status(&self, group: GroupId) -> pb::RaftGroupStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader_address = metrics
            .current_leader
            .and_then(|id| metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone()));
        pb::RaftGroupStatus {
            group,
            node_id: metrics.id,
            role: role.to_owned(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_address: leader_address.unwrap_or_default(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index: metrics.last_applied.index().unwrap_or(0),
        }
    }

    fn admits(&self, peer_name: &str) -> bool {
        match &self.senders {
            Senders::Named(admits) => admits(peer_name),
            // A process that has not joined yet (no membership) hears from whoever brings it
            // the group's membership; once it knows the members, only they are heard.
            Senders::MembersById => {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow_watched();
                let membership = metrics.membership_config.membership();
                membership.nodes().next().is_none()
                    || peer_name.parse::<u64>().is_ok_and(|id| membership.get_node(&id).is_some())
            }
        }
    }

    fn handle(&self, rpc: Rpc, payload: Bytes) -> Reply {
        let raft = self.raft.clone();
        Box::pin(async move {
            match rpc {
                Rpc::AppendEntries => encode(&raft.append_entries(decode(&payload)?).await.map_err(unavailable)?),
                Rpc::Vote => encode(&raft.vote(decode(&payload)?).await.map_err(unavailable)?),
                Rpc::InstallSnapshot => {
                    let (vote, meta, data): (VoteOf<C>, SnapshotMetaOf<C>, Vec<u8>) = decode(&payload)?;
                    let snapshot = openraft::Snapshot { meta, snapshot: data };
                    encode(&raft.install_full_snapshot(vote, snapshot).await.map_err(unavailable)?)
                }
                Rpc::TransferLeader => {
                    encode(&raft.handle_transfer_leader(decode(&payload)?).await.map_err(unavailable)?)
                }
            }
        })
    }
}

/// The Raft transport service of a process: routes each message to its registered group.
#[derive(Clone)]
pub struct RaftRouter {
    groups: Arc<RwLock<HashMap<GroupId, Arc<dyn GroupEndpoint>>>>,
    /// The newest format generation this process reads, which `Status` reports.
    format_generation_max: FormatGeneration,
}

impl RaftRouter {
    /// The transport of a process that reads format generations up to `format_generation_max`.
    pub fn new(format_generation_max: FormatGeneration) -> Self {
        Self { groups: Arc::default(), format_generation_max }
    }

    /// Delivers messages for `group` from `senders` to `raft` from now on (replacing an earlier
    /// registration).
    pub fn register<C, SM>(&self, group: GroupId, raft: Raft<C, SM>, senders: Senders)
    where
        C: RaftTypeConfig<NodeId = u64, Term = u64, Node = BasicNode>,
        SM: RaftStateMachine<C, SnapshotData = Vec<u8>>,
    {
        self.groups.write().insert(group, Arc::new(RaftEndpoint { raft, senders }));
    }

    /// Stops delivering messages for `group` (before its Raft shuts down).
    pub fn deregister(&self, group: GroupId) {
        self.groups.write().remove(&group);
    }

    /// The gRPC service to add to a server.
    pub fn service(&self) -> RaftTransportServer<Self> {
        RaftTransportServer::new(self.clone())
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }

    /// Hands a message to its group and wraps the answer.
    async fn route(&self, rpc: Rpc, request: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let group = request.get_ref().group;
        let endpoint = self.groups.read().get(&group).cloned();
        let endpoint = endpoint.ok_or_else(|| Status::unavailable(format!("Raft group {group} is not served here")))?;
        let Some(peer) = request.extensions().get::<strata_tls::Peer>() else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        if !endpoint.admits(&peer.identity.name) {
            let peer = &peer.identity;
            tracing::warn!(group, %peer, "Raft message from a process that is not a member refused");
            return Err(Status::permission_denied(format!("{peer} is not a member of Raft group {group}")));
        }
        let m = request.into_inner();
        let payload = endpoint.handle(rpc, m.payload).await?;
        Ok(Response::new(pb::RaftMessage { group: m.group, payload: payload.into() }))
    }
}

/// Largest Raft message: a batch of entries or a whole snapshot.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

#[tonic::async_trait]
impl RaftTransport for RaftRouter {
    async fn append_entries(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        self.route(Rpc::AppendEntries, request).await
    }

    async fn vote(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        self.route(Rpc::Vote, request).await
    }

    async fn install_snapshot(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        self.route(Rpc::InstallSnapshot, request).await
    }

    async fn transfer_leader(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        self.route(Rpc::TransferLeader, request).await
    }

    async fn status(&self, _: Request<pb::RaftStatusRequest>) -> Result<Response<pb::RaftStatusResponse>, Status> {
        let mut groups: Vec<_> = self.groups.read().iter().map(|(&id, endpoint)| endpoint.status(id)).collect();
        groups.sort_by_key(|g| g.group);
        Ok(Response::new(pb::RaftStatusResponse { groups, format_generation_max: self.format_generation_max }))
    }
}

/// openraft's network factory for one group over [`RaftRouter`]s, over mutual TLS.
#[derive(Debug, Clone)]
pub struct GrpcNetwork {
    group: GroupId,
    /// What this process presents to its peers.
    credentials: Credentials,
    /// The role every peer of the group has (its certificate must name it).
    peer_role: Role,
}

impl GrpcNetwork {
    pub fn new(group: GroupId, credentials: Credentials, peer_role: Role) -> Self {
        Self { group, credentials, peer_role }
    }
}

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl<C: RaftTypeConfig<Node = BasicNode>> RaftNetworkFactory<C> for GrpcNetwork {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: C::NodeId, node: &BasicNode) -> GrpcPeer {
        let connector = strata_tls::client::Connector::new(self.credentials.clone(), self.peer_role);
        let client = Endpoint::from_shared(node.addr.clone())
            .map(|e| e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).connect_with_connector_lazy(connector))
            .map(|channel| {
                RaftTransportClient::new(channel)
                    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            });
        if let Err(e) = &client {
            tracing::error!(target_node = %target, addr = %node.addr, error = %e, "a Raft peer's address is invalid");
        }
        GrpcPeer { group: self.group, target: target.to_string(), client: client.ok() }
    }
}

/// The client of one peer of one group.
pub struct GrpcPeer {
    group: GroupId,
    target: String,
    client: Option<RaftTransportClient<Channel>>,
}

#[derive(Debug, thiserror::Error)]
#[error("Raft peer {target}: {message}")]
struct PeerError {
    target: String,
    message: String,
}

impl GrpcPeer {
    /// Sends one encoded message; transport failures are `Unreachable`, others `Network`.
    async fn call<C: RaftTypeConfig, Resp: DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, RPCError<C>> {
        let target = self.target.clone();
        let fail = |message: String| PeerError { target: target.clone(), message };
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&fail("invalid address".into()))));
        };
        let message = pb::RaftMessage { group: self.group, payload: payload.into() };
        let call = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(message).await,
                Rpc::Vote => client.vote(message).await,
                Rpc::InstallSnapshot => client.install_snapshot(message).await,
                Rpc::TransferLeader => client.transfer_leader(message).await,
            }
        };
        let response = match crate::RAFT_CLOCK.timeout(timeout, call).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                return Err(RPCError::Network(NetworkError::new(&fail(status.message().to_owned()))));
            }
            Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&fail(status.message().to_owned())))),
            Err(_) => return Err(RPCError::Unreachable(Unreachable::new(&fail(format!("no answer in {timeout:?}"))))),
        };
        postcard::from_bytes(&response.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&fail(format!("undecodable answer: {e}")))))
    }
}

fn encode_request<C: RaftTypeConfig, T: Serialize>(value: &T) -> Result<Vec<u8>, RPCError<C>> {
    postcard::to_allocvec(value).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
}

impl<C: RaftTypeConfig<Node = BasicNode>> RaftNetworkV2<C> for GrpcPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let payload = encode_request(&rpc)?;
        self.call(Rpc::AppendEntries, payload, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        let payload = encode_request(&rpc)?;
        self.call(Rpc::Vote, payload, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        let payload = encode_request(&req)?;
        self.call(Rpc::TransferLeader, payload, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let payload = encode_request::<C, _>(&(vote, snapshot.meta, snapshot.snapshot))?;
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = self.call(Rpc::InstallSnapshot, payload, option.hard_ttl()) => result.map_err(StreamingError::from),
        }
    }
}
