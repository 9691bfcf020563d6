//! A three-voter Raft group over the gRPC transport on loopback, each voter with its own WAL and
//! state directory: replication, leader failover without losing an acknowledged write, a
//! restarted voter catching up (through a snapshot, since the others purge their logs), and a
//! group that has lost its majority refusing to acknowledge until a voter comes back.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use strata_common::format::FormatGate;
use strata_common::proto as pb;
use strata_common::proto::raft_transport_client::RaftTransportClient;

use openraft::{BasicNode, Config, SnapshotPolicy};
use strata_common::SystemClock;
use strata_raft::group::{GroupStorage, RaftGroup, TransferRefused, open_group};
use strata_raft::raft_state::ReplicatedState;
use strata_raft::raft_store::SegmentRetention;
use strata_raft::transport::{GrpcNetwork, RaftRouter, Senders};
use strata_tls::pki::{test_channel, test_credentials};
use strata_tls::{AuthorizeLayer, Listener, Role};
use strata_wal::{FsyncFailure, WalOptions};
use tokio::sync::oneshot;

mod support;
use support::Applied;

openraft::declare_raft_types!(
    pub ClusterConfig:
        D = String,
        R = u64,
        NodeId = u64,
        Node = BasicNode,
);

impl ReplicatedState for Applied {
    type Command = String;
    type Response = u64;

    fn apply(&mut self, log_index: u64, command: &String) -> u64 {
        self.0.push(command.clone());
        log_index
    }

    fn noop_response() -> u64 {
        0
    }

    fn copy_for_snapshot(&self) -> Self {
        self.clone()
    }
}

const GROUP: u64 = 7;

struct Voter {
    id: u64,
    group: RaftGroup<ClusterConfig, Applied>,
    router: RaftRouter,
    stop_server: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    /// While set, the voter's transport refuses leadership transfers handed to it (as a voter
    /// would that is too slow to take over): every other message goes through.
    refuse_transfers: Arc<AtomicBool>,
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

fn node(addr: SocketAddr) -> BasicNode {
    BasicNode { addr: format!("http://{addr}") }
}

async fn start_voter(id: u64, dir: &Path, addr: SocketAddr, members: Option<BTreeMap<u64, BasicNode>>) -> Voter {
    let config = Config {
        cluster_name: "raft-cluster-test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Frequent snapshots and no kept log: a voter that was away catches up by snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    let wal = WalOptions { on_fsync_error: FsyncFailure::Abort, ..Default::default() };
    let group = open_group::<ClusterConfig, Applied, _>(
        dir,
        id,
        config,
        GroupStorage { wal, retention: SegmentRetention::RemoveOnPurge, format: FormatGate::newest() },
        GrpcNetwork::new(GROUP, test_credentials(Role::Storage, &id.to_string()), Role::Storage),
        members,
    )
    .await
    .expect("open the group");
    let router = RaftRouter::new(strata_common::format::NEWEST_GENERATION);
    router.register(GROUP, group.raft.clone(), Senders::MembersById);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the Raft transport");
    let (stop_server, stopped) = oneshot::channel::<()>();
    let service = router.service();
    let incoming =
        strata_tls::incoming(listener, test_credentials(Role::Storage, &id.to_string()), Arc::new(SystemClock));
    let refuse_transfers = Arc::new(AtomicBool::new(false));
    let refusing = refuse_transfers.clone();
    let refuse = tower::util::MapRequestLayer::new(move |mut request: http::Request<tonic::body::Body>| {
        if refusing.load(Ordering::Relaxed) && request.uri().path().ends_with("/TransferLeader") {
            *request.uri_mut() = http::Uri::from_static("/strata.v1.RaftTransport/Refused");
        }
        request
    });
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .layer(refuse)
            .layer(AuthorizeLayer::new(Listener::Storage))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Voter { id, group, router, stop_server, server, refuse_transfers }
}

async fn stop_voter(voter: Voter) {
    voter.router.deregister(GROUP);
    let _ = voter.group.raft.shutdown().await;
    let _ = voter.stop_server.send(());
    let _ = voter.server.await;
    voter.group.log.wal().close();
}

/// Waits until one of `voters` sees a leader among `among`; answers its id.
async fn leader_among(voters: &[Voter], among: &[u64]) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for v in voters {
            if let Some(leader) = v.group.raft.current_leader().await
                && among.contains(&leader)
                && voters.iter().any(|v| v.id == leader)
            {
                return leader;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader among {among:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn voter(voters: &[Voter], id: u64) -> &Voter {
    voters.iter().find(|v| v.id == id).expect("a running voter")
}

/// Writes through whichever running voter leads, as a client does: a voter that is not (or no
/// longer) leader refuses before appending anything, so trying again cannot apply it twice.
async fn write(voters: &[Voter], command: &str) -> u64 {
    let ids: Vec<u64> = voters.iter().map(|v| v.id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = leader_among(voters, &ids).await;
        match voter(voters, leader).group.raft.client_write(command.to_owned()).await {
            Ok(response) => return response.data,
            Err(e) if e.forward_to_leader().is_some() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write {command} failed: {e}"),
        }
    }
}

/// Waits until a voter has applied every command in `acked`, in order.
async fn wait_applied(v: &Voter, acked: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let applied = v.group.state.read().0.clone();
        if applied.len() >= acked.len() {
            assert_eq!(&applied[..acked.len()], acked, "voter {} applied something else", v.id);
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "voter {} applied {} of {}", v.id, applied.len(), acked.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dir_of(root: &Path, id: u64) -> PathBuf {
    root.join(format!("voter-{id}"))
}

/// Voters 1-3 in `root`, the first creating the group; with their addresses.
async fn start_three_voters(root: &Path) -> (BTreeMap<u64, SocketAddr>, Vec<Voter>) {
    let addrs: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let members: BTreeMap<u64, BasicNode> = addrs.iter().map(|(&id, &addr)| (id, node(addr))).collect();
    let mut voters = Vec::new();
    for (&id, &addr) in &addrs {
        let initial = (id == 1).then(|| members.clone());
        voters.push(start_voter(id, &dir_of(root, id), addr, initial).await);
    }
    (addrs, voters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_fail_over_catch_up_and_refuse_without_a_majority() {
    let root = tempfile::tempdir().expect("tempdir");
    let (addrs, mut voters) = start_three_voters(root.path()).await;
    let members: BTreeMap<u64, BasicNode> = addrs.iter().map(|(&id, &addr)| (id, node(addr))).collect();

    // Replication: 100 acknowledged writes reach every voter.
    let leader = leader_among(&voters, &[1, 2, 3]).await;
    let mut acked = Vec::new();
    for i in 0..100 {
        let command = format!("a{i}");
        write(&voters, &command).await;
        acked.push(command);
    }
    for v in &voters {
        wait_applied(v, &acked).await;
    }
    // The transport's Status: every voter names the same leader in one term, which alone calls
    // itself leader, and all have applied the writes. (Asked again if leadership moved between
    // the three questions, as it may under load.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Only members send the group Raft messages: a certificate of the role that names no member
    // is refused before the message is read; a member's gets as far as decoding it.
    let first = format!("https://{}", addrs.values().next().expect("a voter"));
    let stranger = test_channel(&first, Role::Storage, Role::Storage);
    let message = pb::RaftMessage { group: GROUP, payload: Default::default() };
    let refused = RaftTransportClient::new(stranger).vote(message.clone()).await.expect_err("a non-member's vote");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let member =
        strata_tls::lazy_channel(&first, Duration::from_secs(5), &test_credentials(Role::Storage, "2"), Role::Storage)
            .expect("channel");
    let undecodable = RaftTransportClient::new(member).vote(message).await.expect_err("an empty vote");
    assert_eq!(undecodable.code(), tonic::Code::InvalidArgument, "{undecodable:?}");

    loop {
        let mut statuses = Vec::new();
        for addr in addrs.values() {
            let channel = test_channel(&format!("https://{addr}"), Role::Operator, Role::Storage);
            let mut client = RaftTransportClient::new(channel);
            let groups = client.status(pb::RaftStatusRequest {}).await.expect("status").into_inner().groups;
            assert_eq!(groups.len(), 1, "{groups:?}");
            assert_eq!(groups[0].group, GROUP);
            assert!(groups[0].last_applied_index >= 100, "{groups:?}");
            statuses.push(groups.into_iter().next().expect("one group"));
        }
        let leader_now = statuses[0].leader_id;
        let agreed = statuses.iter().all(|s| {
            (s.leader_id, s.term) == (leader_now, statuses[0].term)
                && (s.role == "leader") == (s.node_id == leader_now)
                && members.get(&leader_now).is_some_and(|n| n.addr == s.leader_address)
        });
        if agreed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the voters never agreed on a leader: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Failover: the leader goes; the other two elect one and lose nothing acknowledged.
    let old_leader = leader;
    let position = voters.iter().position(|v| v.id == old_leader).expect("leader runs");
    stop_voter(voters.remove(position)).await;
    let survivors: Vec<u64> = voters.iter().map(|v| v.id).collect();
    let leader = leader_among(&voters, &survivors).await;
    assert_ne!(leader, old_leader);
    for i in 0..100 {
        let command = format!("b{i}");
        write(&voters, &command).await;
        acked.push(command);
    }
    for v in &voters {
        wait_applied(v, &acked).await;
    }

    // The old leader comes back from its directory and catches up. Its peers purged their logs
    // past where it stopped (after ~102 entries), so it can only catch up by a snapshot.
    // Snapshots are built in the background: wait for them rather than race them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for v in &voters {
        loop {
            let purged = v.group.log.last_purged_index();
            if purged.is_some_and(|p| p > 110) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "voter {} purged only to {purged:?}", v.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let back = start_voter(old_leader, &dir_of(root.path(), old_leader), addrs[&old_leader], None).await;
    wait_applied(&back, &acked).await;
    voters.push(back);

    // Without a majority nothing is acknowledged: stop two voters, the one left must not accept.
    let keep = leader;
    let mut stopped = Vec::new();
    while voters.len() > 1 {
        let position = voters.iter().position(|v| v.id != keep).expect("another voter");
        let v = voters.remove(position);
        stopped.push(v.id);
        stop_voter(v).await;
    }
    let alone = voter(&voters, keep);
    let attempt = tokio::time::timeout(Duration::from_secs(3), alone.group.raft.client_write("lost".to_owned())).await;
    assert!(!matches!(attempt, Ok(Ok(_))), "a write was acknowledged by a single voter of three: {attempt:?}");

    // One voter back: a majority again, writes are acknowledged, and the refused one never
    // appears before them.
    let id = stopped[0];
    voters.push(start_voter(id, &dir_of(root.path(), id), addrs[&id], None).await);
    write(&voters, "c0").await;
    for v in &voters {
        let applied = {
            wait_applied(v, &acked).await;
            v.group.state.read().0.clone()
        };
        let tail: Vec<&String> = applied[acked.len()..].iter().collect();
        assert!(tail.iter().all(|c| *c == "c0" || *c == "lost"), "unexpected commands: {tail:?}");
    }
    for v in voters {
        stop_voter(v).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_goes_to_the_voter_asked_for_or_falls_back_to_another() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_, voters) = start_three_voters(root.path()).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(format!("before-{i}"));
        write(&voters, &acked[i]).await;
    }
    // Heartbeats answered lately: give every follower a few rounds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = leader_among(&voters, &[1, 2, 3]).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();

    // To a caught-up voter: it leads.
    let wait = Duration::from_secs(2);
    let moved = voter(&voters, leader).group.transfer_leadership(others[0], wait).await.expect("transfer");
    assert_eq!(moved, Some(others[0]));
    assert_eq!(leader_among(&voters, &[1, 2, 3]).await, others[0]);
    // Refused: not a voter; not the leader.
    let refused = voter(&voters, others[0]).group.transfer_leadership(9, wait).await;
    assert_eq!(refused, Err(TransferRefused::NotAVoter));
    let refused = voter(&voters, leader).group.transfer_leadership(others[1], wait).await;
    assert_eq!(refused, Err(TransferRefused::NotLeader));

    // To a voter that does not take over (its transport refuses the hand-over): leadership falls
    // back to the other caught-up voter before an election timeout would end the pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (current, stuck, instead) = (others[0], leader, others[1]);
    voter(&voters, stuck).refuse_transfers.store(true, Ordering::Relaxed);
    let short = Duration::from_millis(150);
    let moved = voter(&voters, current).group.transfer_leadership(stuck, short).await.expect("transfer");
    assert_eq!(moved, Some(instead), "fell back to the other voter");
    for i in 0..5 {
        acked.push(format!("after-{i}"));
        write(&voters, &acked[5 + i]).await;
    }
    for v in &voters {
        wait_applied(v, &acked).await;
    }
    for v in voters {
        stop_voter(v).await;
    }
}
