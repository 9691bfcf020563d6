//! The Raft transport of a single-voter group: there are no peers to reach.
//!
//! `strata dev` runs every Raft group (the metadata quorum and each shard) with one voter, so
//! openraft never needs to send an RPC. Every call answers `Unreachable`; if one is ever made,
//! the group was configured with a second member that this build cannot talk to, and it is
//! logged loudly. Multi-node replication replaces this with a gRPC transport.

use std::future::Future;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RaftNetworkV2, RaftTypeConfig};

#[derive(Debug, thiserror::Error)]
#[error("this Raft group has a single voter and no transport to peer {0}")]
struct NoPeerTransport(String);

/// A network factory for single-voter groups.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleVoterNetwork;

/// The per-peer client of [`SingleVoterNetwork`]; every RPC fails.
#[derive(Debug)]
pub struct NoPeer {
    target: String,
}

impl NoPeer {
    fn unreachable<C: RaftTypeConfig>(&self) -> Unreachable<C> {
        tracing::error!(target_node = %self.target, "RPC attempted in a single-voter Raft group");
        Unreachable::new(&NoPeerTransport(self.target.clone()))
    }
}

impl<C: RaftTypeConfig> RaftNetworkFactory<C> for SingleVoterNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, target: C::NodeId, _node: &C::Node) -> Self::Network {
        NoPeer { target: target.to_string() }
    }
}

impl<C: RaftTypeConfig> RaftNetworkV2<C> for NoPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(&mut self, _rpc: VoteRequest<C>, _option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: openraft::alias::VoteOf<C>,
        _snapshot: openraft::alias::SnapshotOf<C, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
