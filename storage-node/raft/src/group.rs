//! Opening a Raft group on local disk: a [`WalLogStore`], a [`StateMachineStore`] and an
//! openraft node, wired the same way for the metadata quorum and for every shard.
//!
//! Layout under the group's directory: `raft/` (the log and the vote/committed/purged facts)
//! and `state/` (the snapshot). `strata dev` groups have one voter ([`open_single_voter`]);
//! replicated groups talk to their peers through the gRPC transport ([`crate::transport`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use strata_common::Clock;

use openraft::async_runtime::WatchReceiver;
use openraft::network::{NetSnapshot, RaftNetworkFactory};
use openraft::{Config, Raft, RaftTypeConfig, ServerState};

use openraft::alias::{LogIdOf, VoteOf};

use crate::persisted::PersistedRaftTypes;
use crate::raft_state::{EntryCommand, ReplicatedState, SharedState, StateMachineStore};
use crate::raft_store::{SegmentRetention, WalLogStore};
use crate::single_voter::SingleVoterNetwork;
use strata_common::format::FormatGate;
use strata_wal::WalOptions;

/// How long opening a group may wait for its single voter to become leader and re-apply its log.
const GROUP_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Raft group and handles to its parts.
pub struct RaftGroup<C: RaftTypeConfig, S: ReplicatedState>
where
    C: PersistedRaftTypes + RaftTypeConfig<D = S::Command, R = S::Response>,
    C::Entry: EntryCommand<S::Command>,
{
    pub raft: Raft<C, StateMachineStore<C, S>>,
    pub state: Arc<SharedState<C, S>>,
    pub log: WalLogStore<C>,
    /// Keeps the group in the scrape's Raft figures while it is open.
    _probe: Arc<dyn crate::probe::Probe>,
}

/// What a leader knows of another voter: see [`RaftGroup::voter_contacts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterContact<Id> {
    pub id: Id,
    pub acked_ago: Option<Duration>,
    pub matched_index: Option<u64>,
}

/// A voter that acknowledged a heartbeat within this long is taken to be running.
const RECENT_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a leader that stops waits for its successor to take over.
const HAND_OFF_WAIT: Duration = Duration::from_secs(2);

impl<C, S> RaftGroup<C, S>
where
    C: PersistedRaftTypes + RaftTypeConfig<D = S::Command, R = S::Response>,
    C::Entry: EntryCommand<S::Command>,
    S: ReplicatedState,
{
    /// Whether this member leads its group now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Whether this member knows a leader of its group (itself or another).
    pub fn leader_known(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader.is_some()
    }

    /// On the leader: how long since a majority of the voters last acknowledged it (zero when
    /// it is the only voter, or has not yet been acknowledged since its election). `None` when
    /// this member does not lead.
    pub fn quorum_silence(&self) -> Option<Duration> {
        // Called before every metadata proposal: read in place, not cloned.
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow_watched();
        if metrics.state != ServerState::Leader {
            return None;
        }
        if metrics.membership_config.membership().voter_ids().count() <= 1 {
            return Some(Duration::ZERO);
        }
        Some(metrics.last_quorum_acked.map_or(Duration::ZERO, |at| openraft::Instant::elapsed(&*at)))
    }

    /// On the leader: each other voter, with how long ago it last acknowledged a heartbeat
    /// (`None`: not since this member leads) and the last log index it is known to hold.
    /// Empty elsewhere.
    pub fn voter_contacts(&self) -> Vec<VoterContact<C::NodeId>> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return Vec::new();
        }
        let heartbeats = metrics.heartbeat.as_ref();
        let replication = metrics.replication.as_ref();
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != metrics.id)
            .map(|id| VoterContact {
                acked_ago: heartbeats
                    .and_then(|h| h.get(&id).cloned().flatten())
                    .map(|at| openraft::Instant::elapsed(&*at)),
                matched_index: replication.and_then(|r| r.get(&id).cloned().flatten()).map(|m| m.index()),
                id,
            })
            .collect()
    }

    /// On the leader: hands leadership to the most up-to-date other voter that answered
    /// heartbeats lately, and waits (at most [`HAND_OFF_WAIT`]) until this member no longer
    /// leads, so a planned stop costs no election timeout. Answers whether leadership moved;
    /// elsewhere, does nothing.
    pub async fn hand_off_leadership(&self) -> bool {
        let Some(successor) = self.successors().first().cloned() else { return false };
        if let Err(e) = self.raft.trigger().transfer_leader(successor).await {
            tracing::warn!(error = %e, "handing off leadership failed");
            return false;
        }
        self.successor_within(HAND_OFF_WAIT).await.is_some()
    }

    /// On the leader: the other voters that answered heartbeats lately and trail its log by at
    /// most [`TRANSFER_LAG_ENTRIES_MAX`], most up to date first (then by id, highest first).
    /// Empty elsewhere.
    fn successors(&self) -> Vec<C::NodeId> {
        let last_index = self.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        let mut ready: Vec<VoterContact<C::NodeId>> = self
            .voter_contacts()
            .into_iter()
            .filter(|c| c.acked_ago.is_some_and(|ago| ago < RECENT_HEARTBEAT))
            .filter(|c| c.matched_index.is_some_and(|m| m.saturating_add(TRANSFER_LAG_ENTRIES_MAX) >= last_index))
            .collect();
        // Among equally caught-up voters, the highest id first (as before transfers had a target).
        ready.sort_by_key(|c| std::cmp::Reverse((c.matched_index, c.id)));
        ready.into_iter().map(|c| c.id).collect()
    }

    /// Waits at most `wait` for another member to lead; answers it.
    async fn successor_within(&self, wait: Duration) -> Option<C::NodeId> {
        let deadline = crate::RAFT_CLOCK.instant() + wait;
        loop {
            let metrics = self.raft.metrics().borrow_watched().clone();
            if let Some(leader) = metrics.current_leader.filter(|l| *l != metrics.id) {
                return Some(leader);
            }
            if crate::RAFT_CLOCK.instant() >= deadline {
                return None;
            }
            crate::RAFT_CLOCK.sleep(Duration::from_millis(10)).await;
        }
    }

    /// On the leader: hands leadership to voter `to`, which must have answered heartbeats
    /// lately and trail the log by at most [`TRANSFER_LAG_ENTRIES_MAX`] entries. Writes pause
    /// while it takes over. If it has not within `wait`, the fallback: leadership goes to the
    /// most up-to-date other voter instead (a transfer leaves this member refusing writes
    /// until someone takes over, so it must not be left hanging). Answers who leads then:
    /// `None` if nobody took over within the fallback's `wait` either (an election follows).
    pub async fn transfer_leadership(
        &self,
        to: C::NodeId,
        wait: Duration,
    ) -> Result<Option<C::NodeId>, TransferRefused> {
        let own_id = self.raft.metrics().borrow_watched().id;
        if !self.is_leader() {
            return Err(TransferRefused::NotLeader);
        }
        if to == own_id {
            return Ok(Some(to));
        }
        let contact = self.voter_contacts().into_iter().find(|c| c.id == to).ok_or(TransferRefused::NotAVoter)?;
        let successors = self.successors();
        if !successors.contains(&to) {
            let answering = contact.acked_ago.is_some_and(|ago| ago < RECENT_HEARTBEAT);
            return Err(if answering { TransferRefused::Behind } else { TransferRefused::NotAnswering });
        }
        self.raft.trigger().transfer_leader(to).await.map_err(|e| TransferRefused::Stopped(e.to_string()))?;
        if let Some(leader) = self.successor_within(wait).await {
            return Ok(Some(leader));
        }
        let Some(instead) = successors.into_iter().find(|id| *id != to) else { return Ok(None) };
        tracing::warn!(?to, ?instead, "the voter asked for did not take over in time; handing leadership to another");
        self.raft.trigger().transfer_leader(instead).await.map_err(|e| TransferRefused::Stopped(e.to_string()))?;
        Ok(self.successor_within(wait).await)
    }
}

/// How far a voter's log may trail the leader's for leadership to be handed to it: it must
/// catch up before it can take writes, and writes wait meanwhile.
pub const TRANSFER_LAG_ENTRIES_MAX: u64 = 1_000;

/// Why leadership was not handed to the voter asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefused {
    #[error("this member does not lead the group")]
    NotLeader,
    #[error("the node is not a voter of the group")]
    NotAVoter,
    #[error("the node has not answered the leader's heartbeats lately")]
    NotAnswering,
    #[error(
        "the node's log trails the leader's by more than {TRANSFER_LAG_ENTRIES_MAX} entries; retry once it caught up"
    )]
    Behind,
    #[error("the group stopped: {0}")]
    Stopped(String),
}

/// Where a group keeps its log (the WAL and Raft's facts) and its state machine, inside its
/// directory.
const LOG_STORE_DIR: &str = "raft";
const STATE_DIR: &str = "state";

/// Opens the group in `dir` with this node as its only voter, initializing it on first start,
/// and returns once the node leads and has re-applied everything committed before a restart.
pub async fn open_single_voter<C, S>(
    dir: &Path,
    node_id: C::NodeId,
    node: C::Node,
    config: Config,
    storage: GroupStorage,
) -> io::Result<RaftGroup<C, S>>
where
    C: PersistedRaftTypes + RaftTypeConfig<D = S::Command, R = S::Response>,
    C::Entry: EntryCommand<S::Command> + Clone,
    S: ReplicatedState,
{
    let members = BTreeMap::from([(node_id, node)]);
    let group = open_group(dir, node_id, config, storage, SingleVoterNetwork, Some(members)).await?;
    group
        .raft
        .wait(Some(GROUP_READY_TIMEOUT))
        .state(ServerState::Leader, "single voter becomes leader")
        .await
        .map_err(io::Error::other)?;
    // A leader commits a blank entry of its term; once that is applied, every entry acknowledged
    // before a restart has been re-applied to the state machine.
    group.raft.write_blank().await.map_err(io::Error::other)?;
    Ok(group)
}

/// Seeds a new group directory from a snapshot taken elsewhere (a copy kept in object storage,
/// after every replica's disk was lost): this node's vote is `vote_after(snapshot's last log
/// id)`, which must be in that log id's term, so its first election is in a later one; then the
/// state starts from the snapshot with `members` as voters. Open the group afterwards without
/// initial members: the log counts as purged up to the snapshot, and the other members, started
/// empty, catch up from this one once it leads. Refuses a directory with a stored snapshot.
pub fn seed_group<C, S>(
    dir: &Path,
    snapshot: &[u8],
    members: BTreeMap<C::NodeId, C::Node>,
    vote_after: impl FnOnce(&LogIdOf<C>) -> VoteOf<C>,
) -> io::Result<LogIdOf<C>>
where
    C: PersistedRaftTypes,
    S: ReplicatedState,
{
    let voters = members.keys().cloned().collect::<BTreeSet<_>>();
    let membership = openraft::Membership::new(vec![voters], members).map_err(io::Error::other)?;
    // The vote first: a crash before the snapshot is stored leaves a directory seeding again.
    crate::raft_state::seed_snapshot::<C, S>(&dir.join(STATE_DIR), snapshot, membership, |last| {
        crate::raft_store::seed_vote::<C>(&dir.join(LOG_STORE_DIR), &vote_after(last))
    })
}

/// How a group keeps its log and state on disk.
#[derive(Clone)]
pub struct GroupStorage {
    pub wal: WalOptions,
    pub retention: SegmentRetention,
    /// Which format generation the group writes, and the newest it reads.
    pub format: FormatGate,
}

/// Opens the group in `dir`, talking to its peers through `network`. On a first start the node
/// given `initial_members` initializes the group with them as voters (exactly one node of a new
/// group does; the others learn the membership from it). Returns at once: a leader is elected
/// when enough voters are up.
pub async fn open_group<C, S, N>(
    dir: &Path,
    node_id: C::NodeId,
    config: Config,
    storage: GroupStorage,
    network: N,
    initial_members: Option<BTreeMap<C::NodeId, C::Node>>,
) -> io::Result<RaftGroup<C, S>>
where
    C: PersistedRaftTypes + RaftTypeConfig<D = S::Command, R = S::Response>,
    C::Entry: EntryCommand<S::Command> + Clone,
    S: ReplicatedState,
    N: RaftNetworkFactory<C>,
    N::Network: NetSnapshot<C, SnapshotData = Vec<u8>>,
{
    let GroupStorage { wal, retention, format } = storage;
    let log = WalLogStore::<C>::open(&dir.join(LOG_STORE_DIR), wal, retention, format.clone())?;
    let sm = StateMachineStore::<C, S>::open(&dir.join(STATE_DIR), format)?;
    let state = sm.shared();
    let config = Arc::new(config.validate().map_err(io::Error::other)?);
    let raft = Raft::new(node_id, config, network, log.clone(), sm).await.map_err(io::Error::other)?;
    if let Some(members) = initial_members
        && !raft.is_initialized().await.map_err(io::Error::other)?
    {
        raft.initialize(members).await.map_err(io::Error::other)?;
    }
    let _probe = crate::probe::watch::<C>(S::METRICS_GROUP, raft.metrics());
    Ok(RaftGroup { raft, state, log, _probe })
}
