//! A metadata quorum of three members on loopback, each with its own directory, driven through
//! `MetadataClient` with every member's endpoint: calls reach the leader wherever they start,
//! reads are linearizable, the quorum survives its leader going away with nothing acknowledged
//! lost, and a member coming back catches up.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_common::format::{FormatGate, NEWEST_GENERATION};
use strata_common::proto as pb;
use strata_common::{Clock, SystemClock};
use strata_metadata::MetadataNode;
use strata_metadata::server::MemberSettings;
use strata_metadata_client::MetadataClient;
use strata_tls::Role;
use strata_tls::pki::test_credentials;
use tokio::sync::oneshot;

struct Member {
    id: u64,
    node: Arc<MetadataNode>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

/// A metadata client as an operator (catalog changes, member changes).
fn operator(endpoints: &str) -> MetadataClient {
    MetadataClient::connect_lazy(endpoints, &test_credentials(Role::Operator, "test")).expect("client")
}

/// A metadata client as a storage node (registration).
fn storage_node(endpoints: &str) -> MetadataClient {
    MetadataClient::connect_lazy(endpoints, &test_credentials(Role::Storage, "storage-1")).expect("client")
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

async fn start(root: &Path, id: u64, addrs: &BTreeMap<u64, SocketAddr>, initialize: bool) -> Member {
    let members = addrs.iter().map(|(&id, addr)| (id, format!("http://{addr}"))).collect();
    let settings = MemberSettings { node_id: id, members, initialize };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let node = MetadataNode::open_member(
        &root.join(format!("member-{id}")),
        &settings,
        clock,
        FormatGate::new(NEWEST_GENERATION),
        test_credentials(Role::Metadata, &id.to_string()),
    )
    .await
    .expect("open the member");
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
    let clients: Vec<MetadataClient> = addrs.keys().map(|&id| operator(&endpoints(id))).collect();
    clients[0].ensure_tenant("acme").await.expect("tenant");
    storage_node(&endpoints(1))
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

/// Membership: a fourth member joins (it catches up before it votes) and an original one is
/// removed while the quorum serves; then the quorum commits without the removed member and
/// without another original one, so the new member votes, and it holds the whole catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_while_the_quorum_serves() {
    let root = tempfile::tempdir().expect("tempdir");
    let addrs: BTreeMap<u64, SocketAddr> = (1..=4).map(|id| (id, free_addr())).collect();
    let originals: BTreeMap<u64, SocketAddr> =
        addrs.iter().filter(|(id, _)| **id <= 3).map(|(k, v)| (*k, *v)).collect();
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start(root.path(), id, &originals, id == 1).await);
    }
    // The client knows the original members only: it learns the fourth from leader hints.
    let endpoints: Vec<String> = originals.values().map(|a| format!("http://{a}")).collect();
    let client = operator(&endpoints.join(","));
    client.ensure_tenant("acme").await.expect("tenant");
    let storage = pb::RegisterStorageNodeRequest {
        node_id: "storage-1".into(),
        address: "http://127.0.0.1:1".into(),
        initial_shards: 1,
        ..Default::default()
    };
    storage_node(&endpoints.join(",")).register_storage_node(storage).await.expect("register a storage node");
    let mut expected = Vec::new();
    for i in 0..10 {
        let name = format!("q{i:02}");
        client.create_queue("acme", &name, config()).await.expect("create");
        expected.push(name);
    }

    // Refused: a bad endpoint, and a quorum left without members.
    let bad = pb::MetadataMember { node_id: 9, address: "not an endpoint".into() };
    assert!(client.change_metadata_members(vec![bad], vec![]).await.is_err());
    assert!(client.change_metadata_members(vec![], vec![1, 2, 3]).await.is_err());

    members.push(start(root.path(), 4, &addrs, false).await);
    let fourth = pb::MetadataMember { node_id: 4, address: format!("http://{}", addrs[&4]) };
    let changed = client.change_metadata_members(vec![fourth.clone()], vec![1]).await.expect("change members");
    let ids: Vec<u64> = changed.members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids, [2, 3, 4]);
    // Asking again changes nothing.
    let again = client.change_metadata_members(vec![fourth], vec![1]).await.expect("same change again");
    assert_eq!(again.members.iter().map(|m| m.node_id).collect::<Vec<_>>(), [2, 3, 4]);

    // Without the removed member and another original one, the quorum still commits.
    for id in [1, 2] {
        let at = members.iter().position(|m| m.id == id).expect("running");
        stop(members.remove(at)).await;
    }
    for i in 10..15 {
        let name = format!("q{i:02}");
        client.create_queue("acme", &name, config()).await.expect("create with members 3 and 4");
        expected.push(name);
    }
    assert_eq!(queue_names(&client).await, expected);
    let listed = client.list_metadata_members().await.expect("members");
    assert!([3, 4].contains(&listed.leader_id), "{listed:?}");
    // A client given member 3 alone reaches the leader wherever it is (member 4 through 3's
    // hint, member 4 being in no client's configuration).
    let only_third = operator(&format!("http://{}", addrs[&3]));
    assert_eq!(queue_names(&only_third).await, expected);
    for member in members {
        stop(member).await;
    }
}

/// Every member's disk is lost: one new member is seeded from the newest snapshot copy in the
/// bucket, with a new member list (other addresses), and two more start empty. The quorum elects
/// the restored member, the others catch up from it, the catalog is as the copy had it (what
/// came after the copy is lost, as documented), new writes get fresh ids, and the quorum keeps
/// the catalog without the restored member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_that_lost_every_disk_restores_from_the_bucket() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = root.path().join("bucket");
    std::fs::create_dir_all(&bucket).expect("bucket dir");
    let store = object_store::local::LocalFileSystem::new_with_prefix(&bucket).expect("local store");

    let before = root.path().join("before");
    let addrs: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start(&before, id, &addrs, id == 1).await);
    }
    let endpoints =
        |addrs: &BTreeMap<u64, SocketAddr>| addrs.values().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(",");
    let client = operator(&endpoints(&addrs));
    client.ensure_tenant("acme").await.expect("tenant");
    let storage = pb::RegisterStorageNodeRequest {
        node_id: "storage-1".into(),
        address: "http://127.0.0.1:1".into(),
        initial_shards: 2,
        ..Default::default()
    };
    storage_node(&endpoints(&addrs)).register_storage_node(storage).await.expect("register a storage node");
    let mut kept = Vec::new();
    for name in ["orders", "invoices"] {
        kept.push(client.create_queue("acme", name, config()).await.expect("create"));
    }
    let lead = leader(&members).await;
    let leader_node = &members.iter().find(|m| m.id == lead).expect("leader").node;
    leader_node.snapshot_now().await.expect("snapshot");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leader_node.latest_snapshot().await.expect("snapshot").is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    strata_metadata::backup::backup_once(leader_node, &store).await.expect("backup").expect("a copy");
    // After the copy: lost with the disks.
    client.create_queue("acme", "late", config()).await.expect("create");
    for member in members {
        stop(member).await;
    }
    drop(client);

    let after = root.path().join("after");
    let addrs: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let settings = MemberSettings {
        node_id: 1,
        members: addrs.iter().map(|(&id, addr)| (id, format!("http://{addr}"))).collect(),
        initialize: false,
    };
    let (_, index) =
        strata_metadata::backup::restore_newest(&store, &after.join("member-1"), &settings).await.expect("restore");
    assert!(index > 0);
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start(&after, id, &addrs, false).await);
    }
    let client = operator(&endpoints(&addrs));
    assert_eq!(queue_names(&client).await, ["invoices", "orders"]);
    let info = client.get_queue("acme", "orders").await.expect("a restored queue");
    assert_eq!(info.queue_id, kept[0].queue_id);
    let fresh = client.create_queue("acme", "fresh", config()).await.expect("create after restore");
    assert!(kept.iter().all(|q| q.queue_id != fresh.queue_id), "a new queue reused an id");

    // A directory holding a replica is not overwritten.
    let refused = strata_metadata::backup::restore_newest(&store, &after.join("member-1"), &settings).await;
    assert!(refused.is_err(), "{refused:?}");

    // The empty members caught up from the restored one: they keep the catalog without it.
    let restored = members.remove(0);
    stop(restored).await;
    assert_eq!(queue_names(&client).await, ["fresh", "invoices", "orders"]);
    for member in members {
        stop(member).await;
    }
}
