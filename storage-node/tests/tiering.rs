//! Tiering end to end, against the local-directory object store and a real S3-compatible server
//! (Garage on loopback, started by `infra/garage.sh` if the test command has not already).
//!
//! Real metadata node, real storage node, real gRPC, real foyer cache. Segments are made tiny so
//! that many seal and tier; nothing is removed by hand. The test then restarts the storage node
//! (cold cache), drains messages whose segments exist only in the bucket, reads them again (warm
//! cache: no new object-store reads), deletes them, and waits for segment GC to empty the bucket.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use strata_common::format::{FormatGate, NEWEST_GENERATION};
use strata_common::proto::{self as pb, storage_client::StorageClient};
use strata_common::{Clock, Random, SystemClock};
use strata_metadata::MetadataNode;
use strata_metadata_client::MetadataClient;
use strata_storage::shard::{RETURN_UNDELIVERED_GENERATION, ShardLogSettings};
use strata_storage::{ObjectStoreSettings, StorageNode, StorageSettings};
use strata_tls::Role;
use strata_tls::pki::{test_channel, test_credentials};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "tier-tenant";
const MESSAGES: usize = 400;
const BODY_BYTES: usize = 1024;

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

fn body_of(i: usize) -> String {
    let head = format!("message-{i:05}-");
    format!("{head}{}", "x".repeat(BODY_BYTES - head.len()))
}

/// Tiny segments that seal, snapshot and tier within a test, uploaded as soon as sealed.
fn tiny_segments() -> ShardLogSettings {
    ShardLogSettings {
        segment_size_bytes_max: 24 * 1024,
        snapshot_every_entries: 16,
        seal_idle_after: Duration::from_millis(300),
        local_retention_bytes: 0,
        upload_after: Duration::ZERO,
        hibernate_after: Duration::ZERO,
    }
}

async fn start_storage(
    dir: &Path,
    metadata_endpoint: &str,
    store: &ObjectStoreSettings,
    listen: SocketAddr,
) -> StorageNode {
    start_storage_with(dir, metadata_endpoint, store, listen, tiny_segments()).await
}

async fn start_storage_with(
    dir: &Path,
    metadata_endpoint: &str,
    store: &ObjectStoreSettings,
    listen: SocketAddr,
    log: ShardLogSettings,
) -> StorageNode {
    let settings = StorageSettings {
        node_id: "tier-test-node".into(),
        data_dir: dir.to_path_buf(),
        listen,
        metadata_endpoint: metadata_endpoint.to_string(),
        object_store: store.clone(),
        initial_shards: 1,
        log,
        tier_interval: Duration::from_millis(100),
        expire_interval: Duration::from_secs(1),
        cache_memory_bytes: 32 << 20,
        cache_disk_bytes: 64 << 20,
        replication_factor: 1,
        zone: String::new(),
        format_generation_max: NEWEST_GENERATION,
        tls: test_credentials(Role::Storage, "tier-test-node"),
        disk_reserve_bytes: strata_storage::disk::DISK_RESERVE_BYTES_DEFAULT,
    };
    StorageNode::start(settings, Arc::new(SystemClock), Random::os()).await.expect("storage node starts")
}

async fn storage_client(addr: SocketAddr) -> StorageClient<tonic::transport::Channel> {
    StorageClient::new(test_channel(&format!("https://{addr}"), Role::Proxy, Role::Storage))
}

async fn object_keys(store: &dyn ObjectStore) -> BTreeSet<String> {
    let listed: Vec<_> =
        store.list(Some(&object_store::path::Path::from("shards"))).try_collect().await.expect("list the bucket");
    listed.into_iter().map(|m| m.location.to_string()).collect()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Receives every message of the queue once (long visibility), checking bodies and that no
/// message counts more than `expected_receive_count` receives.
async fn receive_all_counted(
    client: &mut StorageClient<tonic::transport::Channel>,
    queue: &pb::QueueRef,
    expected_receive_count: u32,
) -> Vec<String> {
    let mut receipts = Vec::new();
    let mut seen = BTreeMap::new();
    while seen.len() < MESSAGES {
        let request = pb::ReceiveRequest {
            queue: Some(queue.clone()),
            max_messages: 10,
            visibility_timeout_ms: Some(600_000),
            wait_ms: 2_000,
            ..Default::default()
        };
        let got = client.receive(request).await.expect("receive").into_inner().messages;
        assert!(!got.is_empty(), "queue ran dry after {} of {MESSAGES} messages", seen.len());
        for m in got {
            let body = String::from_utf8(m.body.to_vec()).expect("utf-8 body");
            let index: usize = body[8..13].parse().expect("numbered body");
            assert_eq!(body, body_of(index), "body of message {index} came back damaged");
            assert!(seen.insert(index, m.message_id).is_none(), "message {index} delivered twice while leased");
            assert!(m.receive_count <= expected_receive_count, "message {index} counts {} receives", m.receive_count);
            receipts.push(m.receipt_handle);
        }
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (0..MESSAGES).collect::<Vec<_>>());
    receipts
}

/// A metadata node serving on loopback, with an operator's client.
struct Metadata {
    node: Arc<MetadataNode>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    cancel: CancellationToken,
    endpoint: String,
    client: MetadataClient,
}

impl Metadata {
    async fn start(dir: &Path) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let addr = free_addr();
        let endpoint = format!("http://{addr}");
        let node = MetadataNode::open(
            &dir.join("metadata"),
            &endpoint,
            clock,
            FormatGate::new(NEWEST_GENERATION),
            test_credentials(Role::Metadata, "1"),
        )
        .await
        .expect("metadata opens");
        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind metadata");
        let task = tokio::spawn(node.clone().serve_with_listener(listener, cancel.clone().cancelled_owned()));
        let client = MetadataClient::connect_lazy(&endpoint, &test_credentials(Role::Operator, "test"))
            .expect("metadata client");
        Self { node, task, cancel, endpoint, client }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        self.node.shutdown().await;
    }
}

/// Sends the numbered bodies, then waits until every send has left the local disk by itself:
/// sealed (the tail once idle), uploaded, cataloged, deleted locally. Afterwards every body
/// lives only in the bucket.
/// Sends the numbered bodies, ten per request.
async fn send_numbered(client: &mut StorageClient<tonic::transport::Channel>, queue: &pb::QueueRef) {
    for batch in 0..MESSAGES / 10 {
        let messages = (0..10)
            .map(|j| pb::NewMessage { body: Bytes::from(body_of(batch * 10 + j)), ..Default::default() })
            .collect();
        let request = pb::SendRequest { queue: Some(queue.clone()), messages, ..Default::default() };
        client.send(request).await.expect("send");
    }
}

async fn send_all_and_wait_until_only_the_bucket_holds_them(
    node: &StorageNode,
    client: &mut StorageClient<tonic::transport::Channel>,
    queue: &pb::QueueRef,
) {
    send_numbered(client, queue).await;
    let shard = node.shard(node.shard_ids()[0]).expect("one shard");
    let last_send_index = shard.wal().last_index().expect("sends are in the log");
    wait_for("the sends to be tiered and removed locally", Duration::from_secs(60), async || {
        shard.wal().first_index().is_none_or(|first| first > last_send_index)
    })
    .await;
}

async fn receive_all(client: &mut StorageClient<tonic::transport::Channel>, queue: &pb::QueueRef) -> Vec<String> {
    receive_all_counted(client, queue, u32::MAX).await
}

async fn tiering_round_trip(store_settings: ObjectStoreSettings) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(dir.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());

    let storage_dir = dir.path().join("storage");
    let storage_addr = free_addr();
    let node = start_storage(&storage_dir, &metadata_endpoint, &store_settings, storage_addr).await;
    let store = store_settings.build().expect("object store");

    meta_client.ensure_tenant(TENANT).await.expect("tenant");
    let config = pb::QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 30_000, ..Default::default() };
    let info = meta_client.create_queue(TENANT, "tiered", config.clone()).await.expect("create queue");
    let queue = pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: TENANT.into() };
    let mut client = storage_client(storage_addr).await;
    client
        .ensure_queue(pb::EnsureQueueRequest { queue: Some(queue.clone()), config: Some(config) })
        .await
        .expect("ensure");

    send_all_and_wait_until_only_the_bucket_holds_them(&node, &mut client, &queue).await;
    let shard = node.shard(node.shard_ids()[0]).expect("one shard");
    // Catalog first: an upload precedes its catalog entry, so every key read from the catalog
    // must be in a listing taken after it (the tier loop keeps running meanwhile).
    let catalog = meta_client.list_segments(info.shard_id).await.expect("catalog");
    let tiered_keys = object_keys(store.as_ref()).await;
    assert!(tiered_keys.len() >= 3, "expected several tiered segments, found {tiered_keys:?}");
    assert!(catalog.iter().all(|s| tiered_keys.contains(&s.object_key)), "catalog names an object that is not there");
    assert!(catalog.iter().all(|s| s.object_key.contains("epoch-0000000001")), "first writer epoch is 1");
    drop(shard);

    // Cold cache: restart the node with its cache directory gone.
    drop(client);
    node.shutdown().await;
    std::fs::remove_dir_all(storage_dir.join("cache")).expect("remove the cache directory");
    let node = start_storage(&storage_dir, &metadata_endpoint, &store_settings, storage_addr).await;
    let mut client = storage_client(storage_addr).await;
    let receipts = receive_all(&mut client, &queue).await;
    let gets_cold = node.reader.stats.object_gets.load(Ordering::Relaxed);
    assert!(gets_cold > 0, "cold reads must come from the bucket");
    assert!(node.reader.stats.block_cache_misses.load(Ordering::Relaxed) > 0);

    // Warm cache: make everything visible again and read it all a second time.
    for receipt in &receipts {
        let request = pb::ChangeVisibilityRequest {
            queue: Some(queue.clone()),
            receipt_handle: receipt.clone(),
            visibility_timeout_ms: 0,
            caller: None,
        };
        client.change_visibility(request).await.expect("change visibility");
    }
    let receipts = receive_all(&mut client, &queue).await;
    assert_eq!(
        node.reader.stats.object_gets.load(Ordering::Relaxed),
        gets_cold,
        "warm reads must be served by the cache"
    );
    assert!(node.reader.stats.block_cache_hits.load(Ordering::Relaxed) > 0);

    for chunk in receipts.chunks(10) {
        let request = pb::DeleteRequest {
            queue: Some(queue.clone()),
            receipt_handles: chunk.to_vec(),
            meter: None,
            caller: None,
        };
        let results = client.delete(request).await.expect("delete").into_inner().results;
        assert!(results.iter().all(|r| r.error_code.is_empty()), "delete failed: {results:?}");
    }
    let stats = client.get_queue_stats(queue.clone()).await.expect("stats").into_inner();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));

    // Every segment that held these messages is garbage now and must leave the bucket.
    // GC deletes the objects, then their catalog records: wait for both.
    wait_for(
        "segment GC to remove the tiered segments from the bucket and the catalog",
        Duration::from_secs(60),
        async || {
            let now = object_keys(store.as_ref()).await;
            let catalog = meta_client.list_segments(info.shard_id).await.expect("catalog");
            tiered_keys.iter().all(|k| !now.contains(k)) && catalog.iter().all(|s| !tiered_keys.contains(&s.object_key))
        },
    )
    .await;

    drop(client);
    node.shutdown().await;
    metadata.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiering_round_trip_local_directory() {
    let bucket = tempfile::tempdir().expect("tempdir");
    tiering_round_trip(ObjectStoreSettings::Local { dir: bucket.path().to_path_buf() }).await;
}

/// Reads the S3 settings the test command exported, or starts Garage through the same script.
fn garage_settings() -> ObjectStoreSettings {
    let mut vars: BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("STRATA_TEST_S3_")).collect();
    if !vars.contains_key("STRATA_TEST_S3_ENDPOINT") {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let output = std::process::Command::new("bash")
            .arg(root.join("infra/garage.sh"))
            .arg("start")
            .arg(root.join("target/garage"))
            .output()
            .expect("run infra/garage.sh (installs and starts Garage)");
        assert!(output.status.success(), "garage.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                vars.insert(k.to_string(), v.to_string());
            }
        }
    }
    let get = |k: &str| vars.get(k).cloned().unwrap_or_else(|| panic!("{k} missing from the Garage settings"));
    ObjectStoreSettings::S3 {
        endpoint: get("STRATA_TEST_S3_ENDPOINT"),
        bucket: get("STRATA_TEST_S3_BUCKET"),
        region: get("STRATA_TEST_S3_REGION"),
        access_key_id: get("STRATA_TEST_S3_ACCESS_KEY_ID"),
        secret_access_key: get("STRATA_TEST_S3_SECRET_ACCESS_KEY"),
        // Each run writes under its own prefix: the bucket outlives test runs.
        prefix: format!("tiering-test-{}", uuid::Uuid::new_v4()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiering_round_trip_garage_s3() {
    tiering_round_trip(garage_settings()).await;
}

/// A TCP relay in front of the S3 server, so a test can take the bucket away for real: cut, it
/// drops the connections it relays and closes new ones at once; restored, it relays again.
struct Relay {
    endpoint: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    relayed: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let endpoint = format!("http://{}", listener.local_addr().expect("relay address"));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let relayed = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (up_in, relayed_in) = (up.clone(), relayed.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up_in.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let target = target.clone();
                relayed_in.lock().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self { endpoint, up, relayed, accepting }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.relayed.lock().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// Receives of messages that live only in the bucket while the bucket is unreachable: each
/// fails (`Unavailable`, retry), but none counts: no receive count rises, no message stays
/// hidden and none is dead-lettered (max receive count 2, five failed receives). Once the bucket
/// is back, every message is delivered exactly once, as its first receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_outage_during_receives_counts_no_receive_and_dead_letters_nothing() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let ObjectStoreSettings::S3 { endpoint, bucket, region, access_key_id, secret_access_key, prefix } =
        garage_settings()
    else {
        unreachable!("garage_settings answers S3 settings");
    };
    let relay = Relay::start(endpoint.trim_start_matches("http://").to_owned()).await;
    let store_settings = ObjectStoreSettings::S3 {
        endpoint: relay.endpoint.clone(),
        bucket,
        region,
        access_key_id,
        secret_access_key,
        prefix,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(dir.path()).await;
    let (metadata_endpoint, meta_client) = (metadata.endpoint.clone(), metadata.client.clone());
    let storage_dir = dir.path().join("storage");
    let storage_addr = free_addr();
    let node = start_storage(&storage_dir, &metadata_endpoint, &store_settings, storage_addr).await;
    let mut client = storage_client(storage_addr).await;

    meta_client.ensure_tenant(TENANT).await.expect("tenant");
    let base = pb::QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 60_000, ..Default::default() };
    let dead_letters = meta_client.create_queue(TENANT, "outage-dlq", base.clone()).await.expect("create the DLQ");
    let config = pb::QueueConfig { dead_letter_queue_id: dead_letters.queue_id, max_receive_count: 2, ..base.clone() };
    let source = meta_client.create_queue(TENANT, "outage", config.clone()).await.expect("create the queue");
    let queue_ref =
        |info: &pb::QueueInfo| pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: TENANT.into() };
    let (queue, dlq) = (queue_ref(&source), queue_ref(&dead_letters));
    for (queue, config) in [(&dlq, base), (&queue, config)] {
        let request = pb::EnsureQueueRequest { queue: Some(queue.clone()), config: Some(config) };
        client.ensure_queue(request).await.expect("ensure");
    }
    send_all_and_wait_until_only_the_bucket_holds_them(&node, &mut client, &queue).await;
    // Cold cache, so every body must come from the bucket.
    drop(client);
    node.shutdown().await;
    std::fs::remove_dir_all(storage_dir.join("cache")).expect("remove the cache directory");
    let node = start_storage(&storage_dir, &metadata_endpoint, &store_settings, storage_addr).await;
    let mut client = storage_client(storage_addr).await;
    // Taking receives back is a command of format generation 5: wait until the node writes it.
    let shard = node.shard(node.shard_ids()[0]).expect("one shard");
    wait_for("the cluster to write the newest format generation", Duration::from_secs(30), async || {
        shard.log_format().writing() >= RETURN_UNDELIVERED_GENERATION
    })
    .await;
    drop(shard);

    relay.cut();
    for attempt in 0..5 {
        let request = pb::ReceiveRequest {
            queue: Some(queue.clone()),
            max_messages: 10,
            visibility_timeout_ms: Some(60_000),
            ..Default::default()
        };
        let answer = client.receive(request).await;
        let status = answer.expect_err("a receive of bodies only the bucket holds fails while it is away");
        assert_eq!(status.code(), tonic::Code::Unavailable, "attempt {attempt}: {status:?}");
        let stats = client.get_queue_stats(queue.clone()).await.expect("stats").into_inner();
        assert_eq!(
            (stats.visible, stats.in_flight),
            (MESSAGES as u64, 0),
            "attempt {attempt}: a failed receive left messages hidden"
        );
    }
    relay.restore();

    let receipts = receive_all_counted(&mut client, &queue, 1).await;
    assert_eq!(receipts.len(), MESSAGES);
    for receipt in receipts.chunks(10) {
        let request = pb::DeleteRequest {
            queue: Some(queue.clone()),
            receipt_handles: receipt.to_vec(),
            meter: None,
            caller: None,
        };
        let results = client.delete(request).await.expect("delete").into_inner().results;
        assert!(results.iter().all(|r| r.error_code.is_empty()), "delete failed: {results:?}");
    }
    let dead = client.get_queue_stats(dlq.clone()).await.expect("DLQ stats").into_inner();
    assert_eq!((dead.visible, dead.in_flight), (0, 0), "messages were dead-lettered by receives that failed");

    drop(client);
    node.shutdown().await;
    metadata.stop().await;
}

/// Sealed segments kept for reads wait before they are uploaded: a queue drained within the wait
/// uploads nothing (its segments leave the local disk as dead), while a backlog still there after
/// it is uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_drained_before_they_are_due_are_never_uploaded() {
    const UPLOAD_AFTER: Duration = Duration::from_secs(10);
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let metadata = Metadata::start(dir.path()).await;
    let store_settings = ObjectStoreSettings::Local { dir: dir.path().join("bucket") };
    let storage_addr = free_addr();
    // The local retention budget only holds segments while the disk has 1 GiB of room.
    let room = strata_storage::disk::DiskGuard::new(dir.path(), strata_storage::disk::DISK_RESERVE_BYTES_DEFAULT)
        .room_above_reserve_bytes();
    assert!(room >= 2 << 30, "this test needs 2 GiB free on the temporary directory's disk, found {room} bytes");
    let log = ShardLogSettings { local_retention_bytes: 1 << 30, upload_after: UPLOAD_AFTER, ..tiny_segments() };
    let node =
        start_storage_with(&dir.path().join("storage"), &metadata.endpoint, &store_settings, storage_addr, log).await;
    let store = store_settings.build().expect("object store");
    metadata.client.ensure_tenant(TENANT).await.expect("tenant");
    let config = pb::QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 30_000, ..Default::default() };
    let info = metadata.client.create_queue(TENANT, "drained", config.clone()).await.expect("create queue");
    let queue = pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: TENANT.into() };
    let mut client = storage_client(storage_addr).await;
    let ensure = pb::EnsureQueueRequest { queue: Some(queue.clone()), config: Some(config) };
    client.ensure_queue(ensure).await.expect("ensure");
    let shard = node.shard(info.shard_id).expect("the shard");

    // Sent and drained at once: the sealed segments die before they are due.
    send_numbered(&mut client, &queue).await;
    let sealed = shard.wal().sealed_segments().len();
    assert!(sealed >= 3, "expected several sealed segments, found {sealed}");
    let receipts = receive_all(&mut client, &queue).await;
    for chunk in receipts.chunks(10) {
        let request = pb::DeleteRequest {
            queue: Some(queue.clone()),
            receipt_handles: chunk.to_vec(),
            meter: None,
            caller: None,
        };
        client.delete(request).await.expect("delete");
    }
    let last_drained_index = shard.applied_index().expect("applied");
    wait_for("the dead segments to leave the local disk", UPLOAD_AFTER * 3, async || {
        shard.wal().sealed_segments().iter().all(|s| s.first_index > last_drained_index)
    })
    .await;
    assert_eq!(node.reader.stats.segments_uploaded.load(Ordering::Relaxed), 0, "a drained segment was uploaded");
    assert!(object_keys(store.as_ref()).await.is_empty(), "the bucket holds segments nobody reads");

    // A backlog still there once its segments are due goes to the bucket.
    send_numbered(&mut client, &queue).await;
    wait_for("the backlog to be uploaded", UPLOAD_AFTER * 3, async || {
        node.reader.stats.segments_uploaded.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(!object_keys(store.as_ref()).await.is_empty());

    drop(client);
    drop(shard);
    node.shutdown().await;
    metadata.stop().await;
}
