//! A shard replicated on three storage nodes (one metadata voter, three storage nodes in three
//! zones, real gRPC and Raft transport on loopback, each node with its own directory): the
//! catalog places the replicas, the nodes open the group, sends acknowledged by the leader
//! survive the leader's node going away, and the node coming back catches up.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use strata_common::format::{FormatGate, NEWEST_GENERATION};
use strata_common::proto::{self as pb, storage_client::StorageClient};
use strata_common::{Clock, Random, SystemClock};
use strata_metadata::MetadataNode;
use strata_metadata_client::MetadataClient;
use strata_storage::queue::{Command, MessageRef};
use strata_storage::shard::{BATCHED_CALLS_GENERATION, Shard, ShardEntry, ShardLogSettings};
use strata_storage::{ObjectStoreSettings, StorageNode, StorageSettings};
use strata_tls::Role;
use strata_tls::pki::{test_channel, test_credentials};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "replicated-tenant";
const MESSAGES: usize = 100;

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

/// A client of the storage node at `addr`, as a proxy.
fn storage_client(addr: SocketAddr) -> StorageClient<tonic::transport::Channel> {
    StorageClient::new(test_channel(&format!("https://{addr}"), Role::Proxy, Role::Storage))
}

async fn start_node(root: &Path, index: usize, listen: SocketAddr, metadata_endpoint: &str) -> StorageNode {
    // A snapshot every 5 entries: the returning node catches up by snapshot (its peers purged
    // their logs past it), which once left its log unable to take the next append.
    let log = ShardLogSettings { snapshot_every_entries: 5, ..ShardLogSettings::default() };
    start_node_with(root, index, listen, metadata_endpoint, log, Duration::from_secs(3600)).await
}

async fn start_node_with(
    root: &Path,
    index: usize,
    listen: SocketAddr,
    metadata_endpoint: &str,
    log: ShardLogSettings,
    tier_interval: Duration,
) -> StorageNode {
    let dir = root.join(format!("storage-{index}"));
    let settings = StorageSettings {
        node_id: format!("storage-{index}"),
        data_dir: dir.clone(),
        listen,
        metadata_endpoint: metadata_endpoint.to_string(),
        object_store: ObjectStoreSettings::Local { dir: root.join("bucket") },
        initial_shards: 1,
        log,
        tier_interval,
        expire_interval: Duration::from_secs(1),
        cache_memory_bytes: 8 << 20,
        cache_disk_bytes: 16 << 20,
        replication_factor: 3,
        zone: format!("zone-{index}"),
        format_generation_max: NEWEST_GENERATION,
        tls: test_credentials(Role::Storage, &format!("storage-{index}")),
        disk_reserve_bytes: strata_storage::disk::DISK_RESERVE_BYTES_DEFAULT,
    };
    StorageNode::start(settings, Arc::new(SystemClock), Random::os()).await.expect("storage node starts")
}

/// Log settings and tier interval that make segments seal, tier and snapshot within a test:
/// 16 KiB segments, a snapshot every 8 entries, tiering every 100 ms.
fn tiering_fast() -> (ShardLogSettings, Duration) {
    let log = ShardLogSettings {
        segment_size_bytes_max: 16 * 1024,
        snapshot_every_entries: 8,
        seal_idle_after: Duration::from_millis(300),
        local_retention_bytes: 0,
        upload_after: Duration::ZERO,
        hibernate_after: Duration::ZERO,
    };
    (log, Duration::from_millis(100))
}

/// Index of the node whose replica of shard 1 leads, waiting for an election.
async fn leader(nodes: &[Option<StorageNode>]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, node) in nodes.iter().enumerate() {
            if node.as_ref().and_then(|n| n.shard(1)).is_some_and(|s| s.is_leader()) {
                return i;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader for shard 1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes a call at the leader, again at the new leader while the answer is `Unavailable`.
async fn at_leader<F, Fut>(nodes: &[Option<StorageNode>], addrs: &[SocketAddr], call: F)
where
    F: Fn(StorageClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    for _ in 0..50 {
        let at = leader(nodes).await;
        let client = storage_client(addrs[at]);
        match call(client).await {
            Ok(()) => return,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("call failed: {status}"),
        }
    }
    panic!("no leader took the call");
}

/// The metadata node (a single voter) the storage nodes of a test register with.
struct Metadata {
    node: Arc<MetadataNode>,
    endpoint: String,
    client: MetadataClient,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Metadata {
    async fn start(root: &Path) -> Self {
        let addr = free_addr();
        let endpoint = format!("http://{addr}");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let tls = test_credentials(Role::Metadata, "1");
        let node =
            MetadataNode::open(&root.join("metadata"), &endpoint, clock, FormatGate::new(NEWEST_GENERATION), tls)
                .await
                .expect("metadata opens");
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind metadata");
        let task = tokio::spawn(node.clone().serve_with_listener(listener, stop.clone().cancelled_owned()));
        let client = MetadataClient::connect_lazy(&endpoint, &test_credentials(Role::Operator, "test"))
            .expect("metadata client");
        Self { node, endpoint, client, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.node.shutdown().await;
    }
}

/// Creates the test tenant's queue `name` in metadata and, at the shard's leader, on storage
/// (as a proxy does: a call that meets a replica no longer leading is made again at the leader).
async fn create_queue(
    meta_client: &MetadataClient,
    nodes: &[Option<StorageNode>],
    addrs: &[SocketAddr],
    name: &str,
) -> (pb::QueueInfo, pb::QueueRef) {
    meta_client.ensure_tenant(TENANT).await.expect("tenant");
    let config = pb::QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 30_000, ..Default::default() };
    let info = meta_client.create_queue(TENANT, name, config.clone()).await.expect("create queue");
    let queue = pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: TENANT.into() };
    let ensure = pb::EnsureQueueRequest { queue: Some(queue.clone()), config: Some(config) };
    at_leader(nodes, addrs, |mut c| {
        let ensure = ensure.clone();
        async move { c.ensure_queue(ensure).await.map(|_| ()) }
    })
    .await;
    (info, queue)
}

/// Receives and deletes until `count` messages came back; answers their bodies.
async fn drain(
    mut client: StorageClient<tonic::transport::Channel>,
    queue: &pb::QueueRef,
    count: usize,
) -> Vec<String> {
    let mut bodies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bodies.len() < count {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {count} messages came back", bodies.len());
        let request = pb::ReceiveRequest {
            queue: Some(queue.clone()),
            max_messages: 10,
            visibility_timeout_ms: Some(600_000),
            wait_ms: 1_000,
            ..Default::default()
        };
        let got = match client.receive(request).await {
            Ok(got) => got.into_inner().messages,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if got.is_empty() {
            continue;
        }
        let receipts = got.iter().map(|m| m.receipt_handle.clone()).collect();
        bodies.extend(got.into_iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
        client
            .delete(pb::DeleteRequest {
                queue: Some(queue.clone()),
                receipt_handles: receipts,
                meter: None,
                caller: None,
            })
            .await
            .expect("delete");
    }
    bodies
}

/// Waits (at most 20 s) until `shard`'s replica of `queue` holds no message, or fails with
/// `what` and the counts last seen.
async fn wait_until_empty(shard: &Shard, queue: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let counts = shard.state().0.queue_counts(queue, TENANT);
        if counts.is_some_and(|c| c.visible + c.in_flight + c.delayed == 0) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `bodies` at the leader, ten per request.
async fn send_all(nodes: &[Option<StorageNode>], addrs: &[SocketAddr], queue: &pb::QueueRef, bodies: &[String]) {
    for (batch, chunk) in bodies.chunks(10).enumerate() {
        let messages: Vec<pb::NewMessage> =
            chunk.iter().map(|b| pb::NewMessage { body: Bytes::from(b.clone()), ..Default::default() }).collect();
        let request_id = format!("send-{}-{batch}", &chunk[0][..4.min(chunk[0].len())]);
        let send = pb::SendRequest { queue: Some(queue.clone()), messages, request_id, meter: None, caller: None };
        at_leader(nodes, addrs, |mut c| {
            let send = send.clone();
            async move { c.send(send).await.map(|_| ()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_on_three_nodes_keeps_acknowledged_sends_when_its_leader_goes() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(root.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());

    // Each node waits at start until all three registered: start them together.
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let (a, b, c) = tokio::join!(
        start_node(root.path(), 0, addrs[0], &metadata_endpoint),
        start_node(root.path(), 1, addrs[1], &metadata_endpoint),
        start_node(root.path(), 2, addrs[2], &metadata_endpoint),
    );
    let mut nodes = vec![Some(a), Some(b), Some(c)];
    let shard = meta_client.get_shard(1).await.expect("shard 1");
    assert_eq!(shard.replicas.len(), 3, "{shard:?}");

    // Calls go to the leader, as a proxy's do: one that meets a replica no longer leading (an
    // early election may still move leadership) is made again at the leader; sends carry
    // request ids, so a retried one is stored once.
    let (info, queue) = create_queue(&meta_client, &nodes, &addrs, "replicated").await;
    let sent: Vec<String> = (0..MESSAGES).map(|i| format!("m{i:03}")).collect();
    send_all(&nodes, &addrs, &queue, &sent).await;
    // A follower serves no counts and takes no send, and names the leader instead. (Leadership
    // may still move under load: wait until a follower names the node that leads.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (first, mut at_follower) = loop {
        let first = leader(&nodes).await;
        let follower = (0..3).find(|&i| i != first).expect("a follower");
        let mut client = storage_client(addrs[follower]);
        if let Err(status) = client.get_queue_stats(queue.clone()).await {
            let error = strata_common::error::StrataError::from(status);
            assert_eq!(error.kind, strata_common::error::ErrorKind::Unavailable, "{error:?}");
            if error.leader_hint == Some(format!("http://{}", addrs[first])) {
                break (first, client);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no follower named the leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = pb::NewMessage { body: Bytes::from_static(b"to a follower"), ..Default::default() };
    let refused = at_follower
        .send(pb::SendRequest { queue: Some(queue.clone()), messages: vec![message], ..Default::default() })
        .await
        .expect_err("a follower must not take a send");
    let error = strata_common::error::StrataError::from(refused);
    assert_eq!(error.kind, strata_common::error::ErrorKind::Unavailable);
    assert_eq!(error.leader_hint, Some(format!("http://{}", addrs[first])), "{error:?}");

    // The leader's node goes away; another replica leads and has every acknowledged send.
    if let Some(node) = nodes[first].take() {
        node.shutdown().await;
    }
    let second = leader(&nodes).await;
    assert_ne!(second, first);
    let client = storage_client(addrs[second]);
    let mut bodies = drain(client.clone(), &queue, MESSAGES).await;
    bodies.sort();
    assert_eq!(bodies, sent, "every acknowledged send, exactly once");

    // The node comes back from its directory and catches up with the deletes.
    nodes[first] = Some(start_node(root.path(), first, addrs[first], &metadata_endpoint).await);
    let back = nodes[first].as_ref().and_then(|n| n.shard(1)).expect("shard 1 reopened");
    wait_until_empty(&back, info.queue_id, "the returning replica did not catch up").await;

    // A planned stop hands leadership to another voter instead of leaving it to an election.
    let current = leader(&nodes).await;
    let shard = nodes[current].as_ref().and_then(|n| n.shard(1)).expect("the leader's replica");
    assert!(shard.hand_off_leadership().await, "the leader did not hand off");
    assert!(!shard.is_leader());
    assert_ne!(leader(&nodes).await, current);
    // A follower has nothing to hand off.
    assert!(!shard.hand_off_leadership().await);

    drop(client);
    drop(at_follower);
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    metadata.stop().await;
}

/// Tiering with three replicas: the leader claims a writer epoch and uploads; followers drop the
/// segments it tiered; after the leader goes, the next one claims a new epoch (the old one is
/// fenced from the catalog), tiers on from where the catalog ends, and serves old messages whose
/// local copies it dropped as a follower from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_shards_tier_from_the_leader_and_followers_release_what_it_tiered() {
    let root = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(root.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());

    let (log, tier_every) = tiering_fast();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let (a, b, c) = tokio::join!(
        start_node_with(root.path(), 0, addrs[0], &metadata_endpoint, log.clone(), tier_every),
        start_node_with(root.path(), 1, addrs[1], &metadata_endpoint, log.clone(), tier_every),
        start_node_with(root.path(), 2, addrs[2], &metadata_endpoint, log.clone(), tier_every),
    );
    let mut nodes = vec![Some(a), Some(b), Some(c)];
    let (_, queue) = create_queue(&meta_client, &nodes, &addrs, "tiered").await;
    let padding = "x".repeat(1000);
    let first_batch: Vec<String> = (0..200).map(|i| format!("a{i:03}{padding}")).collect();
    send_all(&nodes, &addrs, &queue, &first_batch).await;

    // The leader tiers under the epoch it claimed; every follower drops some tiered segments.
    // (Leadership may still move under load: judged against the leader of the moment.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (first, first_epoch) = loop {
        let first = leader(&nodes).await;
        let shard = meta_client.get_shard(1).await.expect("shard");
        let segments = meta_client.list_segments(1).await.expect("segments");
        let followers_released = (0..3).filter(|&i| i != first).all(|i| {
            let node = nodes[i].as_ref().expect("running");
            node.reader.stats.segments_removed_locally.load(Ordering::Relaxed) > 0
        });
        let key = format!("epoch-{:010}", shard.writer_epoch);
        let current = segments.iter().filter(|s| s.object_key.contains(&key)).count();
        if current >= 2 && followers_released && shard.node_id == format!("storage-{first}") {
            assert!(shard.writer_epoch >= 1);
            break (first, shard.writer_epoch);
        }
        assert!(tokio::time::Instant::now() < deadline, "no tiering with followers releasing: {shard:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The leader goes. The next one claims a new epoch, and tiers on where the catalog ends.
    if let Some(node) = nodes[first].take() {
        node.shutdown().await;
    }
    let second_batch: Vec<String> = (0..100).map(|i| format!("b{i:03}{padding}")).collect();
    send_all(&nodes, &addrs, &queue, &second_batch).await;
    let second = leader(&nodes).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shard = meta_client.get_shard(1).await.expect("shard");
        let segments = meta_client.list_segments(1).await.expect("segments");
        let new_key = format!("epoch-{:010}", shard.writer_epoch);
        if shard.writer_epoch > first_epoch && segments.iter().any(|s| s.object_key.contains(&new_key)) {
            assert_eq!(shard.node_id, format!("storage-{second}"));
            // The catalog never covers an index twice.
            for pair in segments.windows(2) {
                assert!(pair[0].last_index < pair[1].first_index, "overlapping segments: {segments:?}");
            }
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new leader did not tier: {shard:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The deposed writer's epoch can no longer change the catalog.
    let fenced = meta_client.remove_segments(1, first_epoch, vec![]).await;
    assert!(fenced.is_err(), "a stale writer epoch was accepted");

    // Both remaining nodes restart (cold caches, the old leader still away): every message comes
    // back, the old ones from the bucket (their local copies were released).
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    for &i in &others {
        if let Some(node) = nodes[i].take() {
            node.shutdown().await;
        }
    }
    let (x, y) = tokio::join!(
        start_node_with(root.path(), others[0], addrs[others[0]], &metadata_endpoint, log.clone(), tier_every),
        start_node_with(root.path(), others[1], addrs[others[1]], &metadata_endpoint, log.clone(), tier_every),
    );
    nodes[others[0]] = Some(x);
    nodes[others[1]] = Some(y);
    let third = leader(&nodes).await;
    let client = storage_client(addrs[third]);
    let mut bodies = drain(client, &queue, first_batch.len() + second_batch.len()).await;
    bodies.sort();
    let mut sent: Vec<String> = first_batch.into_iter().chain(second_batch).collect();
    sent.sort();
    assert!(bodies == sent, "every acknowledged send, exactly once");
    let gets = nodes[third].as_ref().expect("running").reader.stats.object_gets.load(Ordering::Relaxed);
    assert!(gets > 0, "old messages were not read from the bucket");

    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    metadata.stop().await;
}

/// A replica moves off the shard's leader to a fourth node while sends go on: the new node joins
/// as a learner and becomes a voter, the old one leaves and drops its data, and the group then
/// survives losing one of its original replicas with every acknowledged send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_to_a_new_node_without_losing_a_send() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(root.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());

    // Frequent snapshots: the new node joins by snapshot, so the old replica may leave only once
    // the bucket holds what the snapshot leaves out (tiering every 100 ms).
    let (log, tier_every) = tiering_fast();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let (a, b, c) = tokio::join!(
        start_node_with(root.path(), 0, addrs[0], &metadata_endpoint, log.clone(), tier_every),
        start_node_with(root.path(), 1, addrs[1], &metadata_endpoint, log.clone(), tier_every),
        start_node_with(root.path(), 2, addrs[2], &metadata_endpoint, log.clone(), tier_every),
    );
    // The fourth node registers once the shard exists: it holds no replica yet.
    let d = start_node_with(root.path(), 3, addrs[3], &metadata_endpoint, log.clone(), tier_every).await;
    assert!(d.shard_ids().is_empty());
    let mut nodes = vec![Some(a), Some(b), Some(c), Some(d)];

    let (_, queue) = create_queue(&meta_client, &nodes, &addrs, "moving").await;
    let batch = |name: &str| -> Vec<String> { (0..30).map(|i| format!("{name}{i:02}")).collect() };
    let mut sent = batch("a");
    send_all(&nodes, &addrs, &queue, &sent).await;

    // Refused: moving to a node that already holds a replica, or from one that holds none.
    assert!(meta_client.move_replica(1, "storage-0", "storage-1").await.is_err());
    assert!(meta_client.move_replica(1, "storage-3", "storage-0").await.is_err());

    // Move the leader's replica to the fourth node; sends go on meanwhile.
    let from = leader(&nodes).await;
    let moved = meta_client.move_replica(1, &format!("storage-{from}"), "storage-3").await.expect("move");
    assert_eq!(moved.leaving, [format!("storage-{from}")]);
    let during = batch("b");
    send_all(&nodes, &addrs, &queue, &during).await;
    sent.extend(during);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shard = meta_client.get_shard(1).await.expect("shard");
        let done = shard.leaving.is_empty()
            && nodes[3].as_ref().and_then(|n| n.shard(1)).is_some()
            && nodes[from].as_ref().and_then(|n| n.shard(1)).is_none();
        if done {
            let mut replicas: Vec<String> = shard.replicas.iter().map(|r| r.node_id.clone()).collect();
            replicas.sort();
            let mut expected: Vec<String> = (0..4).filter(|&i| i != from).map(|i| format!("storage-{i}")).collect();
            expected.sort();
            assert_eq!(replicas, expected);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the move did not finish: {shard:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!root.path().join(format!("storage-{from}/shards/00000001")).exists(), "the old replica kept its data");
    // What the new replica copied from its peers goes once the bucket holds it.
    let joined = nodes[3].as_ref().and_then(|n| n.shard(1)).expect("the new replica");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !joined.backfill().covered().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "backfill files stayed: {:?}", joined.backfill().covered());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(joined);

    // The group is the two remaining originals and the new node: it commits without the
    // node that left, and without one of the originals.
    if let Some(node) = nodes[from].take() {
        node.shutdown().await;
    }
    let after = batch("c");
    send_all(&nodes, &addrs, &queue, &after).await;
    sent.extend(after);
    let original = (0..3).find(|&i| i != from).expect("an original replica");
    if let Some(node) = nodes[original].take() {
        node.shutdown().await;
    }
    let last = batch("d");
    send_all(&nodes, &addrs, &queue, &last).await;
    sent.extend(last);

    let at = leader(&nodes).await;
    let client = storage_client(addrs[at]);
    let mut bodies = drain(client, &queue, sent.len()).await;
    bodies.sort();
    sent.sort();
    assert_eq!(bodies, sent, "every acknowledged send, exactly once");

    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    metadata.stop().await;
}

/// A replica moved to a new node joins by snapshot, so its log lacks the entries before it.
/// With nothing tiered yet it reads those messages from its peers' logs and copies them into
/// backfill files, after which it needs no peer to read them; the old replica does not leave the
/// group meanwhile (the bucket does not hold what the new one lacked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joined_by_snapshot_copies_older_entries_from_its_peers() {
    let root = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(root.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());

    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let (a, b, c) = tokio::join!(
        start_node(root.path(), 0, addrs[0], &metadata_endpoint),
        start_node(root.path(), 1, addrs[1], &metadata_endpoint),
        start_node(root.path(), 2, addrs[2], &metadata_endpoint),
    );
    let d = start_node(root.path(), 3, addrs[3], &metadata_endpoint).await;
    let nodes = vec![Some(a), Some(b), Some(c), Some(d)];
    let (info, queue) = create_queue(&meta_client, &nodes, &addrs, "joined").await;
    // One entry per message, snapshots every 5 entries: the leader's log is purged past most.
    let sent: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    for one in sent.chunks(1) {
        send_all(&nodes, &addrs, &queue, one).await;
    }

    let from = (leader(&nodes).await + 1) % 3;
    meta_client.move_replica(1, &format!("storage-{from}"), "storage-3").await.expect("move");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (joined, applied) = loop {
        let joined = nodes[3].as_ref().and_then(|n| n.shard(1));
        let caught_up = joined.as_ref().and_then(|s| {
            let counts = s.state().0.queue_counts(info.queue_id, TENANT)?;
            (counts.visible == sent.len() as u64).then(|| s.applied_index())?
        });
        if let (Some(joined), Some(applied)) = (joined, caught_up) {
            break (joined, applied);
        }
        assert!(tokio::time::Instant::now() < deadline, "the new replica did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let missing = (1..=applied).filter(|&i| joined.wal().read(i).is_ok_and(|e| e.is_none())).count();
    assert!(missing > 10, "the replica did not join by snapshot (its log lacks only {missing} entries)");

    // Every message, including those before its log starts, reads back at the new replica.
    let mut bodies = Vec::new();
    for log_index in 1..=applied {
        if let Some(Ok(message)) = joined.read_messages(&[MessageRef { log_index, slot: 0 }]).await.pop() {
            bodies.push(String::from_utf8_lossy(&message.message.body).into_owned());
        }
    }
    bodies.sort();
    assert_eq!(bodies, sent, "messages before the replica's snapshot read from its peers");

    // Nothing is tiered (tiering runs hourly here): the old replica stays in the group.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shard = meta_client.get_shard(1).await.expect("shard");
    assert_eq!(shard.leaving, [format!("storage-{from}")], "{shard:?}");
    assert!(nodes[from].as_ref().and_then(|n| n.shard(1)).is_some(), "the old replica left too early");

    // Meanwhile the new replica copied those entries from its peers: with every peer gone, it
    // still reads every message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let purged = joined.purged_index().expect("joined by snapshot");
    while joined.backfill_verified_through() < purged {
        assert!(tokio::time::Instant::now() < deadline, "the new replica did not copy its peers' log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!joined.backfill().covered().is_empty(), "nothing was copied");
    let mut nodes = nodes;
    for peer in (0..3).filter_map(|i| nodes[i].take()) {
        peer.shutdown().await;
    }
    let mut bodies = Vec::new();
    for log_index in 1..=applied {
        if let Some(Ok(message)) = joined.read_messages(&[MessageRef { log_index, slot: 0 }]).await.pop() {
            bodies.push(String::from_utf8_lossy(&message.message.body).into_owned());
        }
    }
    bodies.sort();
    assert_eq!(bodies, sent, "messages before the replica's snapshot read from its backfill files");
    drop(joined);

    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    metadata.stop().await;
}

/// Scheduled messages far ahead wait in slice files beside the shard's snapshot, not in its
/// state. A replica moved to a new node joins by snapshot: the snapshot carries the slice files
/// as they stood at its index, so the new replica holds every scheduled message, reopens from
/// its directory, and cancels one when it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joined_by_snapshot_receives_the_slice_files_of_scheduled_messages() {
    let root = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(root.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());
    let (log, tier_every) = tiering_fast();
    let start = |index: usize, addr: SocketAddr| {
        start_node_with(root.path(), index, addr, &metadata_endpoint, log.clone(), tier_every)
    };
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let (a, b, c) = tokio::join!(start(0, addrs[0]), start(1, addrs[1]), start(2, addrs[2]));
    let d = start(3, addrs[3]).await;
    let mut nodes = vec![Some(a), Some(b), Some(c), Some(d)];
    let (_, queue) = create_queue(&meta_client, &nodes, &addrs, "scheduled").await;

    // Five messages a day ahead, one send each: their slice starts far beyond a minute from now.
    let ids = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let day_ahead_ms = SystemClock.now_ms() + 86_400_000;
    for i in 0..5u64 {
        let message = pb::NewMessage {
            body: Bytes::from(format!("scheduled-{i}")),
            deliver_at_ms: Some(day_ahead_ms + i),
            ..Default::default()
        };
        let send = pb::SendRequest {
            queue: Some(queue.clone()),
            messages: vec![message],
            request_id: format!("scheduled-{i}"),
            meter: None,
            caller: None,
        };
        at_leader(&nodes, &addrs, |mut c| {
            let (send, ids) = (send.clone(), ids.clone());
            async move {
                let sent = c.send(send).await?.into_inner();
                ids.lock().extend(sent.messages.into_iter().map(|m| m.message_id));
                Ok(())
            }
        })
        .await;
    }
    let ids = std::mem::take(&mut *ids.lock());
    assert_eq!(ids.len(), 5);
    // More entries: the replicas snapshot (every 8) and purge their logs past the sends.
    let plain: Vec<String> = (0..20).map(|i| format!("p{i:02}")).collect();
    for one in plain.chunks(1) {
        send_all(&nodes, &addrs, &queue, one).await;
    }

    // A follower's replica moves to the fourth node, which joins by snapshot.
    let from = (leader(&nodes).await + 1) % 3;
    meta_client.move_replica(1, &format!("storage-{from}"), "storage-3").await.expect("move");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shard = meta_client.get_shard(1).await.expect("shard");
        if shard.leaving.is_empty() && nodes[from].as_ref().and_then(|n| n.shard(1)).is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the move did not finish: {shard:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(node) = nodes[from].take() {
        node.shutdown().await;
    }
    let joined = nodes[3].as_ref().and_then(|n| n.shard(1)).expect("the new replica");
    let missing = (1..=10).filter(|&i| joined.wal().read(i).is_ok_and(|e| e.is_none())).count();
    assert_eq!(missing, 10, "the new replica did not join by snapshot");
    let counts = joined.state().0.slice_record_counts();
    assert_eq!(counts.values().sum::<u64>(), 5, "{counts:?}");
    let slice_records = |shard: &strata_storage::shard::Shard| {
        let dir = shard.state().slice_dir().expect("slice files open").to_path_buf();
        counts
            .keys()
            .map(|&slice| strata_storage::schedule_files::read_slice(&dir, slice).expect("a slice file"))
            .collect::<Vec<_>>()
    };
    let lead = leader(&nodes).await;
    let leader_shard = nodes[lead].as_ref().and_then(|n| n.shard(1)).expect("the leader's replica");
    assert_eq!(slice_records(&joined), slice_records(&leader_shard), "the slice files differ");
    drop((joined, leader_shard));

    // It reopens from its directory (the slice files match what its snapshot counts).
    if let Some(node) = nodes[3].take() {
        node.shutdown().await;
    }
    nodes[3] = Some(start(3, addrs[3]).await);
    let joined = nodes[3].as_ref().and_then(|n| n.shard(1)).expect("the new replica reopened");
    assert_eq!(joined.state().0.slice_record_counts(), counts);
    drop(joined);

    // Leadership goes to it; cancelling a message searches its slice file.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lead = leader(&nodes).await;
        if lead == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new replica never led");
        let shard = nodes[lead].as_ref().and_then(|n| n.shard(1)).expect("the leader's replica");
        shard.hand_off_leadership().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = storage_client(addrs[3]);
    let cancel = |id: &str| pb::CancelScheduledRequest { queue: Some(queue.clone()), message_id: id.to_owned() };
    client.cancel_scheduled(cancel(&ids[2])).await.expect("cancel a message from the shipped slice file");
    // Same deliver-at time (so the same slice), another id.
    let mut unknown = *uuid::Uuid::parse_str(&ids[3]).expect("a message id").as_bytes();
    unknown[15] ^= 0xff;
    let unknown = uuid::Uuid::from_bytes(unknown).to_string();
    let status = client.cancel_scheduled(cancel(&unknown)).await.expect_err("an unknown id");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    drop(client);
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    metadata.stop().await;
}

/// Receives and deletes of many clients at once share log entries on a replicated shard: every
/// message is delivered exactly once while its lease holds, every delete applies, the leader's
/// log holds entries of several calls, and the replicas apply them to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_receives_and_deletes_share_entries_and_keep_every_guarantee() {
    const DRAINERS: usize = 12;
    const SENT: usize = 600;
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(root.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());
    // No snapshot (and so no purge) during the test: the whole log stays to be read back.
    let log = ShardLogSettings { snapshot_every_entries: 100_000, ..ShardLogSettings::default() };
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let hour = Duration::from_secs(3600);
    let (a, b, c) = tokio::join!(
        start_node_with(root.path(), 0, addrs[0], &metadata_endpoint, log.clone(), hour),
        start_node_with(root.path(), 1, addrs[1], &metadata_endpoint, log.clone(), hour),
        start_node_with(root.path(), 2, addrs[2], &metadata_endpoint, log.clone(), hour),
    );
    let nodes = vec![Some(a), Some(b), Some(c)];
    let (info, queue) = create_queue(&meta_client, &nodes, &addrs, "shared-entries").await;
    let sent: Vec<String> = (0..SENT).map(|i| format!("m{i:04}")).collect();
    send_all(&nodes, &addrs, &queue, &sent).await;
    // Entries of several calls are written once every node reads them.
    let at = leader(&nodes).await;
    let shard = nodes[at].as_ref().and_then(|n| n.shard(1)).expect("the leader's replica");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while shard.log_format().writing() < BATCHED_CALLS_GENERATION {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster never wrote generation {BATCHED_CALLS_GENERATION}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_drain_index = shard.applied_index().expect("applied") + 1;

    // Each drainer receives (a lease of ten minutes, longer than the test) and deletes what it
    // got, until every message came back.
    let delivered = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let drainers: Vec<_> = (0..DRAINERS)
        .map(|_| {
            let (mut client, queue, delivered) = (storage_client(addrs[at]), queue.clone(), delivered.clone());
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while delivered.lock().len() < SENT {
                    assert!(tokio::time::Instant::now() < deadline, "the drain stalled");
                    let request = pb::ReceiveRequest {
                        queue: Some(queue.clone()),
                        max_messages: 10,
                        visibility_timeout_ms: Some(600_000),
                        wait_ms: 200,
                        ..Default::default()
                    };
                    let got = client.receive(request).await.expect("receive").into_inner().messages;
                    if got.is_empty() {
                        continue;
                    }
                    let receipts = got.iter().map(|m| m.receipt_handle.clone()).collect();
                    let request = pb::DeleteRequest {
                        queue: Some(queue.clone()),
                        receipt_handles: receipts,
                        meter: None,
                        caller: None,
                    };
                    let results = client.delete(request).await.expect("delete").into_inner().results;
                    assert!(results.iter().all(|r| r.error_code.is_empty()), "a delete failed: {results:?}");
                    delivered.lock().extend(got.into_iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
                }
            })
        })
        .collect();
    for drainer in drainers {
        drainer.await.expect("drainer");
    }
    let mut bodies = delivered.lock().clone();
    bodies.sort();
    assert_eq!(bodies, sent, "every message exactly once");

    // The leader's log holds entries that several clients' calls shared.
    let last_index = shard.applied_index().expect("applied");
    let mut calls_per_entry = Vec::new();
    let mut index = first_drain_index;
    while index <= last_index {
        let entries = shard.local_entries(index, 256).expect("the log is local");
        assert!(!entries.is_empty(), "entry {index} is missing");
        for bytes in &entries {
            let entry = strata_storage::shard::decode_entry(bytes, shard.log_format()).expect("decodes");
            if let openraft::EntryPayload::Normal(ShardEntry(command)) = entry.payload
                && let Command::Calls { calls } = command.command
            {
                calls_per_entry.push(calls.len());
            }
        }
        index += entries.len() as u64;
    }
    let shared = calls_per_entry.iter().filter(|&&n| n > 1).count();
    eprintln!(
        "entries of calls: {}, of several calls: {shared}, most calls in one: {:?}",
        calls_per_entry.len(),
        calls_per_entry.iter().max()
    );
    assert!(shared > 0, "no entry carried the calls of several clients: {calls_per_entry:?}");

    // Every replica applies them to the same, empty queue.
    for node in nodes.iter().flatten() {
        let replica = node.shard(1).expect("a replica of shard 1");
        wait_until_empty(&replica, info.queue_id, "a replica did not apply every delete").await;
    }

    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    metadata.stop().await;
}
