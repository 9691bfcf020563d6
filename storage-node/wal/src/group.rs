//! Opening a Raft group on local disk: a [`WalLogStore`], a [`StateMachineStore`] and an
//! openraft node, wired the same way for the metadata quorum and for every shard.
//!
//! Layout under the group's directory: `raft/` (the log and the vote/committed/purged facts)
//! and `state/` (the snapshot). This groups have one voter; replication adds voters
//! with a real transport instead of [`SingleVoterNetwork`].

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, RaftTypeConfig, ServerState};

use crate::WalOptions;
use crate::raft_state::{EntryCommand, ReplicatedState, SharedState, StateMachineStore};
use crate::raft_store::{SegmentRetention, WalLogStore};
use crate::single_voter::SingleVoterNetwork;

/// How long opening a group may wait for its single voter to become leader and re-apply its log.
const GROUP_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Raft group and handles to its parts.
pub struct RaftGroup<C: RaftTypeConfig, S: ReplicatedState>
where
    C: RaftTypeConfig<D = S::Command, R = S::Response>,
    C::Entry: EntryCommand<S::Command>,
{
    pub raft: Raft<C, StateMachineStore<C, S>>,
    pub state: Arc<SharedState<C, S>>,
    pub log: WalLogStore<C>,
}

/// Opens the group in `dir` with this node as its only voter, initializing it on first start,
/// and returns once the node leads and has re-applied everything committed before a restart.
pub async fn open_single_voter<C, S>(
    dir: &Path,
    node_id: C::NodeId,
    node: C::Node,
    config: Config,
    wal_options: WalOptions,
    retention: SegmentRetention,
) -> io::Result<RaftGroup<C, S>>
where
    C: RaftTypeConfig<D = S::Command, R = S::Response>,
    C::Entry: EntryCommand<S::Command> + Clone,
    S: ReplicatedState,
{
    let log = WalLogStore::<C>::open(&dir.join("raft"), wal_options, retention)?;
    let sm = StateMachineStore::<C, S>::open(&dir.join("state"))?;
    let state = sm.shared();
    let config = Arc::new(config.validate().map_err(io::Error::other)?);
    let raft =
        Raft::new(node_id.clone(), config, SingleVoterNetwork, log.clone(), sm).await.map_err(io::Error::other)?;
    let initialized = raft.is_initialized().await.map_err(io::Error::other)?;
    if !initialized {
        let members = BTreeMap::from([(node_id, node)]);
        raft.initialize(members).await.map_err(io::Error::other)?;
    }
    raft.wait(Some(GROUP_READY_TIMEOUT))
        .state(ServerState::Leader, "single voter becomes leader")
        .await
        .map_err(io::Error::other)?;
    // A leader commits a blank entry of its term; once that is applied, every entry acknowledged
    // before a restart has been re-applied to the state machine.
    raft.write_blank().await.map_err(io::Error::other)?;
    Ok(RaftGroup { raft, state, log })
}
