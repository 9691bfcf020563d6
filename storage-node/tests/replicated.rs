//! A shard replicated on three storage nodes (one metadata voter, three storage nodes in three
//! zones, real gRPC and Raft transport on loopback, each node with its own directory): the
//! catalog places the replicas, the nodes open the group, sends acknowledged by the leader
//! survive the leader's node going away, and the node coming back catches up.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_common::proto::{self as pb, storage_client::StorageClient};
use strata_common::{Clock, SystemClock};
use strata_metadata::{MetadataClient, MetadataNode};
use strata_storage::shard::ShardLogSettings;
use strata_storage::{ObjectStoreSettings, StorageNode, StorageSettings};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "replicated-tenant";
const MESSAGES: usize = 100;

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

async fn start_node(root: &Path, index: usize, listen: SocketAddr, metadata_endpoint: &str) -> StorageNode {
    let dir = root.join(format!("storage-{index}"));
    let settings = StorageSettings {
        node_id: format!("storage-{index}"),
        data_dir: dir.clone(),
        listen,
        metadata_endpoint: metadata_endpoint.to_string(),
        object_store: ObjectStoreSettings::Local { dir: root.join("bucket") },
        initial_shards: 1,
        // A snapshot every 5 entries: the returning node catches up by snapshot (its peers purged
        // their logs past it), which once left its log unable to take the next append.
        log: ShardLogSettings { snapshot_every_entries: 5, ..ShardLogSettings::default() },
        tier_interval: Duration::from_secs(3600),
        expire_interval: Duration::from_secs(1),
        cache_memory_bytes: 8 << 20,
        cache_disk_bytes: 16 << 20,
        replication_factor: 3,
        zone: format!("zone-{index}"),
    };
    StorageNode::start(settings, Arc::new(SystemClock)).await.expect("storage node starts")
}

/// Index of the node whose replica of shard 1 leads, waiting for an election.
async fn leader(nodes: &[Option<StorageNode>]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, node) in nodes.iter().enumerate() {
            if node.as_ref().and_then(|n| n.shards.get(&1)).is_some_and(|s| s.is_leader()) {
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
        let client = StorageClient::connect(format!("http://{}", addrs[at])).await.expect("connect");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_on_three_nodes_keeps_acknowledged_sends_when_its_leader_goes() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let metadata_addr = free_addr();
    let metadata_endpoint = format!("http://{metadata_addr}");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metadata =
        MetadataNode::open(&root.path().join("metadata"), &metadata_endpoint, clock).await.expect("metadata opens");
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(metadata_addr).await.expect("bind metadata");
    let metadata_task = tokio::spawn(metadata.clone().serve_with_listener(listener, stop.clone().cancelled_owned()));
    let meta_client = MetadataClient::connect_lazy(&metadata_endpoint).expect("metadata client");

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

    meta_client.ensure_tenant(TENANT).await.expect("tenant");
    let config = pb::QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 30_000, ..Default::default() };
    let info = meta_client.create_queue(TENANT, "replicated", config.clone()).await.expect("create queue");
    let queue = pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: TENANT.into() };

    // At the leader, as a proxy does: a call that meets a replica no longer leading (an early
    // election may still move leadership) is made again at the leader; sends carry request ids,
    // so a retried one is stored once.
    let ensure = pb::EnsureQueueRequest { queue: Some(queue.clone()), config: Some(config) };
    at_leader(&nodes, &addrs, |mut c| {
        let ensure = ensure.clone();
        async move { c.ensure_queue(ensure).await.map(|_| ()) }
    })
    .await;
    for batch in 0..MESSAGES / 10 {
        let messages: Vec<pb::NewMessage> = (0..10)
            .map(|j| pb::NewMessage { body: Bytes::from(format!("m{:03}", batch * 10 + j)), ..Default::default() })
            .collect();
        let send = pb::SendRequest { queue: Some(queue.clone()), messages, request_id: format!("send-{batch}") };
        at_leader(&nodes, &addrs, |mut c| {
            let send = send.clone();
            async move { c.send(send).await.map(|_| ()) }
        })
        .await;
    }
    // A follower serves no counts and takes no send, and names the leader instead. (Leadership
    // may still move under load: wait until a follower names the node that leads.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (first, mut at_follower) = loop {
        let first = leader(&nodes).await;
        let follower = (0..3).find(|&i| i != first).expect("a follower");
        let mut client = StorageClient::connect(format!("http://{}", addrs[follower])).await.expect("connect");
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
    let mut client = StorageClient::connect(format!("http://{}", addrs[second])).await.expect("connect");
    let mut bodies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bodies.len() < MESSAGES {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {MESSAGES} messages came back", bodies.len());
        let request = pb::ReceiveRequest {
            queue: Some(queue.clone()),
            max_messages: 10,
            visibility_timeout_ms: Some(600_000),
            wait_ms: 1_000,
            ..Default::default()
        };
        let Ok(got) = client.receive(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let got = got.into_inner().messages;
        let receipts = got.iter().map(|m| m.receipt_handle.clone()).collect();
        bodies.extend(got.into_iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
        client
            .delete(pb::DeleteRequest { queue: Some(queue.clone()), receipt_handles: receipts })
            .await
            .expect("delete");
    }
    bodies.sort();
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i:03}")).collect();
    assert_eq!(bodies, expected, "every acknowledged send, exactly once");

    // The node comes back from its directory and catches up with the deletes.
    nodes[first] = Some(start_node(root.path(), first, addrs[first], &metadata_endpoint).await);
    let back = nodes[first].as_ref().and_then(|n| n.shards.get(&1)).cloned().expect("shard 1 reopened");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let counts = back.state().0.queue_counts(info.queue_id, TENANT);
        if counts.is_some_and(|c| c.visible + c.in_flight + c.delayed == 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the returning replica did not catch up: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(client);
    drop(at_follower);
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    stop.cancel();
    let _ = metadata_task.await;
    metadata.shutdown().await;
}
