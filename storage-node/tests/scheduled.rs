//! Scheduled messages end to end on a real storage node: deliver-at times spread over a month,
//! slice files on disk, the node's loader, cancels by id, and restarts, under a clock moved by
//! hand (so a month passes in seconds).
//!
//! Real metadata node, real storage node, real gRPC, real files. After every clock step the test
//! drains what is due and checks that nothing arrives before its time, that every message
//! arrives exactly once, and that no cancelled message ever arrives.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_common::format::{FormatGate, NEWEST_GENERATION};
use strata_common::proto::{self as pb, storage_client::StorageClient};
use strata_common::{Clock, ManualClock, Random, SystemClock};
use strata_metadata::MetadataNode;
use strata_metadata_client::MetadataClient;
use strata_storage::queue::schedule::{deliver_at_of, scheduled_message_id};
use strata_storage::shard::ShardLogSettings;
use strata_storage::{ObjectStoreSettings, StorageNode, StorageSettings};
use strata_tls::Role;
use strata_tls::pki::{test_channel, test_credentials};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "schedule-tenant";
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

/// The wall clock jumps when the test says (a month in seconds); the node's timers (its loops'
/// ticks, long-poll waits) run in real time, as they would on a machine whose clock was set.
struct JumpingWallClock(ManualClock);

impl Clock for JumpingWallClock {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    fn instant(&self) -> Instant {
        SystemClock.instant()
    }

    fn sleep(&self, duration: Duration) -> strata_common::clock::Sleep {
        SystemClock.sleep(duration)
    }
}

async fn start_storage(dir: &Path, metadata_endpoint: &str, listen: SocketAddr, clock: &ManualClock) -> StorageNode {
    let settings = StorageSettings {
        node_id: "schedule-test-node".into(),
        data_dir: dir.to_path_buf(),
        listen,
        metadata_endpoint: metadata_endpoint.to_string(),
        object_store: ObjectStoreSettings::Local { dir: dir.join("bucket") },
        initial_shards: 1,
        // Frequent snapshots: slice files must be synced before each, and loaded ones removed.
        log: ShardLogSettings { snapshot_every_entries: 8, ..ShardLogSettings::default() },
        tier_interval: Duration::from_secs(3600),
        expire_interval: Duration::from_millis(200),
        cache_memory_bytes: 8 << 20,
        cache_disk_bytes: 16 << 20,
        replication_factor: 1,
        zone: String::new(),
        format_generation_max: NEWEST_GENERATION,
        tls: test_credentials(Role::Storage, "schedule-test-node"),
        disk_reserve_bytes: strata_storage::disk::DISK_RESERVE_BYTES_DEFAULT,
    };
    StorageNode::start(settings, Arc::new(JumpingWallClock(clock.clone())), Random::seeded(14))
        .await
        .expect("storage node starts")
}

fn slice_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "slice") {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

type Client = StorageClient<tonic::transport::Channel>;

/// Receives and deletes everything visible now; answers the ids.
async fn drain(client: &mut Client, queue: &pb::QueueRef) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let request = pb::ReceiveRequest { queue: Some(queue.clone()), max_messages: 10, ..Default::default() };
        let got = client.receive(request).await.expect("receive").into_inner().messages;
        if got.is_empty() {
            return ids;
        }
        let receipts = got.iter().map(|m| m.receipt_handle.clone()).collect();
        client
            .delete(pb::DeleteRequest {
                queue: Some(queue.clone()),
                receipt_handles: receipts,
                meter: None,
                caller: None,
            })
            .await
            .expect("delete");
        ids.extend(got.into_iter().map(|m| m.message_id));
    }
}

async fn cancel(client: &mut Client, queue: &pb::QueueRef, message_id: &str) -> Result<(), tonic::Status> {
    let request = pb::CancelScheduledRequest { queue: Some(queue.clone()), message_id: message_id.to_owned() };
    client.cancel_scheduled(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_scheduled_messages_arrives_on_time_across_restarts() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let metadata_addr = free_addr();
    let metadata_endpoint = format!("http://{metadata_addr}");
    let system_clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metadata = MetadataNode::open(
        &dir.path().join("metadata"),
        &metadata_endpoint,
        system_clock.clone(),
        FormatGate::new(NEWEST_GENERATION),
        test_credentials(Role::Metadata, "1"),
    )
    .await
    .expect("metadata opens");
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(metadata_addr).await.expect("bind metadata");
    let metadata_task = tokio::spawn(metadata.clone().serve_with_listener(listener, stop.clone().cancelled_owned()));
    let meta_client = MetadataClient::connect_lazy(&metadata_endpoint, &test_credentials(Role::Operator, "test"))
        .expect("metadata client");

    let start_ms = system_clock.now_ms();
    let clock = ManualClock::new(start_ms);
    let storage_dir = dir.path().join("storage");
    let storage_addr = free_addr();
    let mut node = start_storage(&storage_dir, &metadata_endpoint, storage_addr, &clock).await;

    meta_client.ensure_tenant(TENANT).await.expect("tenant");
    let config = pb::QueueConfig { retention_ms: 14 * DAY_MS, visibility_timeout_ms: 30_000, ..Default::default() };
    let info = meta_client.create_queue(TENANT, "later", config.clone()).await.expect("create queue");
    let queue = pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: TENANT.into() };
    let mut client = StorageClient::new(test_channel(&format!("https://{storage_addr}"), Role::Proxy, Role::Storage));
    client
        .ensure_queue(pb::EnsureQueueRequest { queue: Some(queue.clone()), config: Some(config) })
        .await
        .expect("ensure");

    // 300 messages over 30 days (some within the next minutes, in memory from the start), in
    // batches of 10 whose times interleave.
    let times: Vec<u64> = (0..300u64).map(|i| start_ms + 5_000 + (i * 7_919 % 300) * 2 * HOUR_MS + i * 13).collect();
    let mut due_at: BTreeMap<String, u64> = BTreeMap::new();
    for batch in times.chunks(10) {
        let messages = batch
            .iter()
            .map(|&at| pb::NewMessage {
                body: Bytes::from(format!("due {at}")),
                deliver_at_ms: Some(at),
                ..Default::default()
            })
            .collect();
        let sent = client
            .send(pb::SendRequest { queue: Some(queue.clone()), messages, ..Default::default() })
            .await
            .expect("send");
        for (m, &at) in sent.into_inner().messages.iter().zip(batch) {
            let id = uuid::Uuid::parse_str(&m.message_id).expect("uuid");
            assert_eq!(deliver_at_of(&id), Some(at), "the id carries the deliver-at time");
            due_at.insert(m.message_id.clone(), at);
        }
    }
    assert!(slice_files(&storage_dir).len() > 50, "far-future messages wait in slice files");

    // Cancel every 7th; unknown and other ids are refused.
    let cancelled: BTreeSet<String> = due_at.keys().step_by(7).cloned().collect();
    for id in &cancelled {
        cancel(&mut client, &queue, id).await.expect("cancel a scheduled message");
    }
    let again = cancel(&mut client, &queue, cancelled.first().expect("one")).await.expect_err("cancelled twice");
    assert_eq!(again.code(), tonic::Code::NotFound);
    let unknown = scheduled_message_id(start_ms + 3 * DAY_MS, uuid::Uuid::new_v4()).to_string();
    assert_eq!(cancel(&mut client, &queue, &unknown).await.expect_err("unknown").code(), tonic::Code::NotFound);
    let plain = uuid::Uuid::new_v4().to_string();
    assert_eq!(cancel(&mut client, &queue, &plain).await.expect_err("not scheduled").code(), tonic::Code::NotFound);
    let other_tenant = pb::QueueRef { tenant: "someone-else".into(), ..queue.clone() };
    let some_id = due_at.keys().nth(1).expect("an id").clone();
    let refused = cancel(&mut client, &other_tenant, &some_id).await.expect_err("another tenant's queue");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let stats = client.get_queue_stats(queue.clone()).await.expect("stats").into_inner();
    assert_eq!(stats.delayed, (due_at.len() - cancelled.len()) as u64);

    // Walk the clock through the month in 12-hour steps, restarting the node twice on the way.
    let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
    let mut now_ms = start_ms;
    let end_ms = start_ms + 31 * DAY_MS;
    let mut step = 0;
    while now_ms < end_ms {
        now_ms += 12 * HOUR_MS;
        step += 1;
        clock.set_ms(now_ms);
        if step == 10 || step == 45 {
            drop(client);
            node.shutdown().await;
            node = start_storage(&storage_dir, &metadata_endpoint, storage_addr, &clock).await;
            client = StorageClient::new(test_channel(&format!("https://{storage_addr}"), Role::Proxy, Role::Storage));
        }
        let expected: usize = due_at.iter().filter(|(id, at)| **at <= now_ms && !cancelled.contains(*id)).count();
        let deadline = Instant::now() + Duration::from_secs(20);
        while delivered.len() < expected {
            assert!(Instant::now() < deadline, "only {} of {expected} due messages arrived", delivered.len());
            for id in drain(&mut client, &queue).await {
                let at = *due_at.get(&id).unwrap_or_else(|| panic!("a message never sent: {id}"));
                assert!(at <= now_ms, "message due at {at} arrived at {now_ms}");
                assert!(!cancelled.contains(&id), "a cancelled message arrived");
                assert!(delivered.insert(id, now_ms).is_none(), "a message arrived twice");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(delivered.len(), expected, "more arrived than was due");
    }
    assert_eq!(delivered.len(), due_at.len() - cancelled.len());
    let stats = client.get_queue_stats(queue.clone()).await.expect("stats").into_inner();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));

    // Loaded slices leave the disk once a snapshot no longer counts them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !slice_files(&storage_dir).is_empty() {
        assert!(Instant::now() < deadline, "slice files left behind: {:?}", slice_files(&storage_dir));
        let message = pb::NewMessage { body: Bytes::from_static(b"tick"), ..Default::default() };
        client
            .send(pb::SendRequest { queue: Some(queue.clone()), messages: vec![message], ..Default::default() })
            .await
            .expect("send");
        drain(&mut client, &queue).await;
    }

    drop(client);
    node.shutdown().await;
    stop.cancel();
    let _ = metadata_task.await;
    metadata.shutdown().await;
}
