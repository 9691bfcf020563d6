//! The proxy in front of a shard replicated on three storage nodes (in one process, with real
//! gRPC, Raft transport and HTTP): sends through the native API keep being acknowledged while
//! the shard's leader node goes away (the proxy follows the leader named by a follower, or
//! tries the next replica), and every acknowledged send is received exactly once.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use strata_common::format::{FormatGate, NEWEST_GENERATION};
use strata_common::{Clock, Random, SystemClock};
use strata_metadata::MetadataNode;
use strata_proxy::ProxySettings;
use strata_proxy::auth::{JwtIssuer, JwtKey, JwtVerifier};
use strata_storage::shard::ShardLogSettings;
use strata_storage::{ObjectStoreSettings, StorageNode, StorageSettings};
use strata_tests::{Api, model};
use strata_tls::Role;
use strata_tls::pki::test_credentials;
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "cluster-test";
const ISSUER: &str = "cluster-test";
const AUDIENCE: &str = "strata";
const SECRET: &[u8] = b"cluster-test-secret-of-enough-length-for-hs256";

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

async fn start_node(root: &Path, index: usize, listen: SocketAddr, metadata_endpoint: &str) -> StorageNode {
    let settings = StorageSettings {
        node_id: format!("storage-{index}"),
        data_dir: root.join(format!("storage-{index}")),
        listen,
        metadata_endpoint: metadata_endpoint.to_string(),
        object_store: ObjectStoreSettings::Local { dir: root.join("bucket") },
        initial_shards: 1,
        log: ShardLogSettings::default(),
        tier_interval: Duration::from_secs(3600),
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

async fn send(api: &Api, body: &str) -> bool {
    let sent = api.post("/v1/queues/orders/messages", json!({ "messages": [{ "body": body }] })).await;
    matches!(sent, Ok((200, _)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_the_shard_leader_through_a_failover() {
    let root = tempfile::tempdir().expect("tempdir");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = CancellationToken::new();
    let metadata_addr = free_addr();
    let metadata_endpoint = format!("http://{metadata_addr}");
    let metadata = MetadataNode::open(
        &root.path().join("metadata"),
        &metadata_endpoint,
        clock.clone(),
        FormatGate::new(NEWEST_GENERATION),
        test_credentials(Role::Metadata, "1"),
    )
    .await
    .expect("metadata opens");
    let listener = tokio::net::TcpListener::bind(metadata_addr).await.expect("bind metadata");
    let metadata_task = tokio::spawn(metadata.clone().serve_with_listener(listener, stop.clone().cancelled_owned()));

    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let (a, b, c) = tokio::join!(
        start_node(root.path(), 0, addrs[0], &metadata_endpoint),
        start_node(root.path(), 1, addrs[1], &metadata_endpoint),
        start_node(root.path(), 2, addrs[2], &metadata_endpoint),
    );
    let mut nodes = vec![Some(a), Some(b), Some(c)];

    let verifier = JwtVerifier::new(ISSUER, AUDIENCE, vec![JwtKey::hmac(KEY_ID, SECRET)]);
    let admin_verifier =
        JwtVerifier::new(ISSUER, "strata-admin", vec![JwtKey::hmac("admin-1", b"an operators-only secret")]);
    let routers = strata_proxy::router(ProxySettings {
        metadata_endpoint: metadata_endpoint.clone(),
        tls: test_credentials(Role::Proxy, "proxy"),
        verifier,
        co_located_storage: None,
        clock: clock.clone(),
        random: Random::os(),
        admin_verifier,
        metering: true,
        fleet_proxies: 1,
        concurrency: Default::default(),
    })
    .expect("proxy router");
    let proxy_addr = free_addr();
    let proxy_listener = tokio::net::TcpListener::bind(proxy_addr).await.expect("bind the proxy");
    let proxy_task = tokio::spawn(strata_proxy::api::serve(
        routers.api,
        proxy_listener,
        Default::default(),
        stop.clone().cancelled_owned(),
    ));
    let token =
        JwtIssuer::hmac(KEY_ID, SECRET, ISSUER, AUDIENCE).mint("acme", 3600, clock.now_ms() / 1000).expect("token");
    let api = Api::new(&format!("http://{proxy_addr}"), &token);
    api.create_queue(&model::CreateQueue::named("orders")).await.expect("create a queue");

    let mut acknowledged = Vec::new();
    for i in 0..30 {
        let body = format!("before-{i:02}");
        assert!(send(&api, &body).await, "a send before the failover failed");
        acknowledged.push(body);
    }
    // The leader's node goes away; sends go on through the proxy.
    let leader = nodes
        .iter()
        .position(|n| n.as_ref().and_then(|n| n.shard(1)).is_some_and(|s| s.is_leader()))
        .expect("a leader");
    if let Some(node) = nodes[leader].take() {
        node.shutdown().await;
    }
    for i in 0..30 {
        let body = format!("after-{i:02}");
        if send(&api, &body).await {
            acknowledged.push(body);
        }
    }
    assert_eq!(acknowledged.len(), 60, "the proxy did not follow the new leader");

    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < acknowledged.len() && tokio::time::Instant::now() < deadline {
        let (status, got) = api
            .post(
                "/v1/queues/orders/receive",
                json!({ "max_messages": 10, "wait_seconds": 1, "visibility_timeout_seconds": 600 }),
            )
            .await
            .expect("receive");
        if status != 200 {
            continue;
        }
        for m in got["messages"].as_array().cloned().unwrap_or_default() {
            received.push(m["body"].as_str().unwrap_or_default().to_owned());
        }
    }
    let unique: BTreeSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "a message was delivered twice");
    let missing: Vec<&String> = acknowledged.iter().filter(|b| !unique.contains(b)).collect();
    assert!(missing.is_empty(), "acknowledged sends never delivered: {missing:?}");

    stop.cancel();
    let _ = proxy_task.await;
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    let _ = metadata_task.await;
    metadata.shutdown().await;
}
