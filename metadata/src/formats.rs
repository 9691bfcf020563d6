//! The cluster's format generation: which versions of the persisted formats every process may
//! write (see `docs/formats.md`, rolling upgrades).
//!
//! # What it owns
//!
//! The catalog records the generation the cluster writes. Every process reads generations up
//! to its own newest (its release's, or a lower cap from its configuration) and says so: storage
//! nodes in their registration and heartbeats, metadata members in their Raft transport's
//! status. [`raise_format_generation`] runs on every member; while one leads, it raises the
//! catalog's generation to the newest that every metadata member and every registered storage
//! node reads, and never lowers it. [`follow_catalog`] makes a member write what its catalog says.
//!
//! # What it guarantees
//!
//! A generation is recorded only after every voter of every group has said it reads it, so a
//! half-upgraded cluster never holds an entry, snapshot or segment that one of its processes
//! cannot read. A registered node that never reports (down, or gone for good) holds the
//! generation where it is; a node that reads less than the cluster writes is refused at
//! registration. Processes write the new generation once they learn it (a storage node from its
//! next heartbeat); until then they write the older one, which everyone reads.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::MemberError;
use strata_common::ClockExt;
use strata_common::error::StrataError;
use strata_common::format::{FormatGate, FormatGeneration};
use strata_common::proto as pb;
use strata_common::proto::raft_transport_client::RaftTransportClient;
use strata_raft::raft_state::SharedState;
use strata_tls::Role;

use crate::MetaRaftConfig;
use crate::catalog::{Catalog, MetaCommand};
use crate::server::MetadataNode;

/// How often the leader looks whether the generation can be raised.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long a member's status may take to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Raises `format` to the catalog's generation whenever an apply changes it, for as long as the
/// state lives.
pub(crate) fn follow_catalog(state: &Arc<SharedState<MetaRaftConfig, Catalog>>, format: &FormatGate) {
    format.raise(state.read().format_generation());
    let mut applied = state.subscribe_applied();
    let state: Weak<SharedState<MetaRaftConfig, Catalog>> = Arc::downgrade(state);
    let format = format.clone();
    tokio::spawn(async move {
        while applied.changed().await.is_ok() {
            let Some(state) = state.upgrade() else { return };
            format.raise(state.read().format_generation());
        }
    });
}

/// Every [`CHECK_INTERVAL`] while `node` leads: raises the cluster's generation as far as every
/// process reads. Runs until aborted.
pub(crate) async fn raise_format_generation(node: Arc<MetadataNode>) {
    loop {
        node.clock.sleep(CHECK_INTERVAL).await;
        match raise_once(&node).await {
            Ok(Some(generation)) => tracing::info!(generation, "the cluster writes a new format generation"),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "format generation not raised this time"),
        }
    }
}

/// One look: the generation raised to, if it was.
async fn raise_once(node: &MetadataNode) -> Result<Option<FormatGeneration>, StrataError> {
    if !node.is_leader() {
        return Ok(None);
    }
    let current = node.catalog().format_generation();
    let mut readable = node.format.readable_max();
    if readable <= current {
        return Ok(None);
    }
    let term = node.term();
    let storage_nodes: Vec<String> = node.catalog().nodes().map(|n| n.node_id.clone()).collect();
    for node_id in storage_nodes {
        match node.leases.format_generation_max(&node_id, term) {
            Some(generation) => readable = readable.min(generation),
            None => {
                let detail = format!("storage node {node_id} has not reported yet");
                return Err(MemberError::quorum("a storage node has not reported its formats yet", detail).into());
            }
        }
    }
    let (members, _) = node.members();
    let own_id = node.node_id();
    for (member_id, address) in members.into_iter().filter(|(id, _)| *id != own_id) {
        readable = readable.min(member_format_generation(node, &address).await.map_err(|e| {
            MemberError::quorum("a metadata member did not report its formats", format_args!("member {member_id}: {e}"))
        })?);
    }
    if readable <= current {
        return Ok(None);
    }
    node.propose(None, MetaCommand::SetFormatGeneration { generation: readable })
        .await
        .map_err(|status| MemberError::quorum("raising the format generation", status.message()))?;
    Ok(Some(readable))
}

/// The newest format generation the metadata member at `address` reads (0 from a release that
/// does not report it).
async fn member_format_generation(node: &MetadataNode, address: &str) -> Result<FormatGeneration, String> {
    let ask = async {
        let channel = strata_tls::lazy_channel(address, STATUS_TIMEOUT, &node.credentials, Role::Metadata)
            .map_err(|e| e.to_string())?;
        let mut client = RaftTransportClient::new(channel);
        let status = client.status(pb::RaftStatusRequest {}).await.map_err(|e| e.message().to_owned())?;
        Ok(status.into_inner().format_generation_max)
    };
    node.clock.timeout(STATUS_TIMEOUT, ask).await.map_err(|_| "timed out".to_string())?
}
