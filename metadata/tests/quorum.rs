//! A metadata quorum of three members on loopback, each with its own directory, driven through
//! `MetadataClient` with every member's endpoint: calls reach the leader wherever they start,
//! reads are linearizable, the quorum survives its leader going away with nothing acknowledged
//! lost, and a member coming back catches up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_common::proto as pb;
use strata_common::{Clock, SystemClock};
use strata_metadata::server::MemberSettings;
use strata_metadata::{MetadataClient, MetadataNode};
use tokio::sync::oneshot;

struct Member {
    id: u64,
    node: Arc<MetadataNode>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

async fn start(root: &Path, id: u64, addrs: &BTreeMap<u64, SocketAddr>, initialize: bool) -> Member {
    let members = addrs.iter().map(|(&id, addr)| (id, format!("http://{addr}"))).collect();
    let settings = MemberSettings { node_id: id, members, initialize };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let node =
        MetadataNode::open_member(&root.join(format!("member-{id}")), &settings, clock).await.expect("open the member");
    let listener = tokio::net::TcpListener::bind(addrs[&id]).await.expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = node.clone();
    let server = tokio::spawn(async move {
        let _ = serving
            .serve_with_listener(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    Member { id, node, stop, server }
}

async fn stop(member: Member) {
    member.node.shutdown().await;
    let _ = member.stop.send(());
    let _ = member.server.await;
}

async fn leader(members: &[Member]) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for m in members {
            if let Some(leader) = m.node.current_leader().await
                && members.iter().any(|m| m.id == leader)
            {
                return leader;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config() -> pb::QueueConfig {
    pb::QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 30_000, ..Default::default() }
}

async fn queue_names(client: &MetadataClient) -> Vec<String> {
    let listed = client.list_queues("acme", "", "", 1000).await.expect("list queues");
    listed.queues.into_iter().map(|q| q.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_follow_the_leader_and_survive_losing_it() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let addrs: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let mut members = Vec::new();
    for &id in addrs.keys() {
        members.push(start(root.path(), id, &addrs, id == 1).await);
    }
    let first_leader = leader(&members).await;

    // Each client starts at a different member; every call ends at the leader.
    let endpoints = |first: u64| {
        let mut ids: Vec<u64> = addrs.keys().copied().collect();
        let start = ids.iter().position(|&id| id == first).unwrap_or(0);
        ids.rotate_left(start);
        ids.iter().map(|id| format!("http://{}", addrs[id])).collect::<Vec<_>>().join(",")
    };
    let clients: Vec<MetadataClient> =
        addrs.keys().map(|&id| MetadataClient::connect_lazy(&endpoints(id)).expect("client")).collect();
    clients[0].ensure_tenant("acme").await.expect("tenant");
    clients[1]
        .register_storage_node(pb::RegisterStorageNodeRequest {
            node_id: "storage-1".into(),
            address: "http://127.0.0.1:1".into(),
            initial_shards: 2,
            ..Default::default()
        })
        .await
        .expect("register a storage node");
    let mut created = Vec::new();
    for i in 0..30 {
        let name = format!("q{i:02}");
        let client = &clients[i % clients.len()];
        client.create_queue("acme", &name, config()).await.expect("create a queue");
        created.push(name);
        // Linearizable: a read through any other client right after sees the write.
        let other = &clients[(i + 1) % clients.len()];
        assert_eq!(other.get_queue("acme", &created[i]).await.expect("read back").name, created[i]);
    }

    // The leader goes away: the others elect one, and everything acknowledged is there.
    let position = members.iter().position(|m| m.id == first_leader).expect("leader runs");
    stop(members.remove(position)).await;
    for i in 30..40 {
        let name = format!("q{i:02}");
        clients[i % clients.len()].create_queue("acme", &name, config()).await.expect("create after failover");
        created.push(name);
    }
    for client in &clients {
        assert_eq!(queue_names(client).await, created);
    }
    assert_ne!(leader(&members).await, first_leader);

    // It comes back from its directory and catches up.
    members.push(start(root.path(), first_leader, &addrs, false).await);
    let back = members.last().expect("the member that came back");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while back.node.catalog().queue("acme", "q39").is_none() {
        assert!(tokio::time::Instant::now() < deadline, "member {first_leader} did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in &created {
        assert!(back.node.catalog().queue("acme", name).is_some(), "{name} missing on member {first_leader}");
    }
    for m in members {
        stop(m).await;
    }
}
