//! A storage node: registers with metadata, opens the shards placed on it, serves gRPC, and runs
//! the background loops (tiering, retention expiry).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use strata_common::error::ErrorKind;
use strata_common::format::{FormatGate, FormatGeneration};
use strata_common::limits;
use strata_common::limits::HEARTBEAT_INTERVAL_MS;
use strata_common::proto::ShardInfo;
use strata_common::proto::storage_server::StorageServer;
use strata_common::{Clock, Random};
use strata_metadata_client::MetadataClient;
use strata_raft::transport::RaftRouter;
use strata_tls::{AuthorizeLayer, Credentials, Listener};
use tokio_util::sync::CancellationToken;

use crate::backfill::backfill_shard_once;
use crate::disk::DiskGuard;
use crate::operations::Operations;
use crate::queue::Command;
use crate::service::StorageService;
use crate::shard::{Shard, ShardLogSettings, ShardReplicas, snapshot_due};
use crate::tier::{
    SealedAges, TieredReader, claim_writer_epoch, kept_for_reads_bytes, probe_conditional_create,
    release_tiered_segments, tier_shard_once, tiered_through_snapshot,
};

/// Where tiered segments go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectStoreSettings {
    /// A local directory (the `strata dev` default).
    Local { dir: PathBuf },
    /// Any S3-compatible endpoint.
    S3 {
        endpoint: String,
        bucket: String,
        region: String,
        access_key_id: String,
        secret_access_key: String,
        /// Key prefix inside the bucket, so several clusters (or test runs) can share one bucket.
        #[serde(default)]
        prefix: String,
    },
}

/// How long a bucket request is retried before its error reaches the caller: a receive of
/// tiered messages waits at most this long on an unreachable bucket before it is answered
/// `Unavailable` (and its messages are taken back), instead of object_store's 3 minutes.
fn bucket_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 3,
        retry_timeout: Duration::from_secs(10),
    }
}

impl ObjectStoreSettings {
    pub fn build(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        match self {
            ObjectStoreSettings::Local { dir } => {
                strata_wal::private_fs::create_dir_all(dir)?;
                Ok(Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?))
            }
            ObjectStoreSettings::S3 { endpoint, bucket, region, access_key_id, secret_access_key, prefix } => {
                let store = object_store::aws::AmazonS3Builder::new()
                    .with_endpoint(endpoint)
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false)
                    .with_retry(bucket_retry())
                    .build()?;
                if prefix.is_empty() {
                    Ok(Arc::new(store))
                } else {
                    Ok(Arc::new(object_store::prefix::PrefixStore::new(store, prefix.as_str())))
                }
            }
        }
    }
}

/// Settings of a storage node.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// gRPC listen address (also advertised to metadata).
    pub listen: SocketAddr,
    pub metadata_endpoint: String,
    pub object_store: ObjectStoreSettings,
    /// Shards created on the first registration when the catalog has none.
    pub initial_shards: u32,
    pub log: ShardLogSettings,
    pub tier_interval: Duration,
    pub expire_interval: Duration,
    pub cache_memory_bytes: usize,
    pub cache_disk_bytes: usize,
    /// Replicas per shard: 1 in `strata dev`; with more, the node waits at start until enough
    /// nodes have registered to place the shards, and replicates each shard it hosts.
    pub replication_factor: u32,
    /// Failure domain, for placing replicas apart.
    pub zone: String,
    /// The newest format generation this node reads (`NEWEST_GENERATION`; lower only to make
    /// it behave as an older release would, as the rolling-upgrade test does). It writes the
    /// generation its cluster has reached.
    pub format_generation_max: FormatGeneration,
    /// The node's certificate and CA: it serves, and calls metadata and its peers, only over
    /// mutual TLS.
    pub tls: Credentials,
    /// Free space kept on the data directory's disk: below it, new messages and queues are
    /// refused until space returns (see [`crate::disk`]).
    pub disk_reserve_bytes: u64,
}

/// The shards this node serves now, shared with its gRPC service. Replicas come and go while
/// the node runs, as metadata moves them.
pub type ShardMap = Arc<RwLock<HashMap<u64, Arc<Shard>>>>;

/// A running storage node.
pub struct StorageNode {
    pub reader: Arc<TieredReader>,
    /// The address registered with metadata, where the proxy looks for this node.
    pub address: String,
    host: Arc<Host>,
    service: StorageServer<StorageService>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Checks a storage node's readiness.
#[derive(Clone)]
pub struct ReadyChecker {
    host: Arc<Host>,
}

/// Most shard ids a readiness answer names.
const READY_SHARDS_NAMED_MAX: usize = 8;

impl ReadyChecker {
    /// Its shards led or followed, its disk above the reserve, and (when `metadata_too`; not
    /// when the metadata quorum runs in the same process) the metadata quorum reachable.
    pub async fn checks(&self, metadata_too: bool) -> Vec<strata_telemetry::ReadyCheck> {
        let shards: Vec<Arc<Shard>> = self.host.shards.read().values().cloned().collect();
        let mut leaderless: Vec<u64> = shards.iter().filter(|s| !s.leader_known()).map(|s| s.shard_id).collect();
        leaderless.sort_unstable();
        let problem = (!leaderless.is_empty()).then(|| {
            let named: Vec<String> = leaderless.iter().take(READY_SHARDS_NAMED_MAX).map(u64::to_string).collect();
            format!(
                "{} of its {} shard replicas know no leader (shards {}{})",
                leaderless.len(),
                shards.len(),
                named.join(", "),
                if leaderless.len() > named.len() { ", ..." } else { "" }
            )
        });
        let mut checks = vec![strata_telemetry::ReadyCheck::new("shards", problem), self.host.disk.ready_check()];
        if metadata_too {
            checks.push(self.host.metadata.quorum_check().await);
        }
        checks
    }
}

/// A shard replica this node runs, with its background loops.
struct Hosted {
    shard: Arc<Shard>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What opening, running and closing shard replicas needs.
struct Host {
    settings: StorageSettings,
    clock: Arc<dyn Clock>,
    metadata: MetadataClient,
    store: Arc<dyn ObjectStore>,
    reader: Arc<TieredReader>,
    router: RaftRouter,
    shards: ShardMap,
    hosted: tokio::sync::Mutex<HashMap<u64, Hosted>>,
    cancel: CancellationToken,
    /// Which format generation this node's shards write, and the newest they read.
    format: FormatGate,
    /// The data directory's free space (new data is refused below the reserve; sealed segments
    /// are kept locally for reads only while there is room).
    disk: Arc<DiskGuard>,
    /// Carries out what metadata's journal hands this node.
    operations: Operations,
}

/// How long start-up keeps retrying registration while metadata comes up.
const REGISTER_ATTEMPTS_MAX: u32 = 100;
/// How long a replicated node waits for its peers to register (200 ms each: 10 minutes).
const PLACEMENT_WAIT_ATTEMPTS_MAX: u32 = 3_000;

impl StorageNode {
    /// Registers, opens shards, starts serving and the background loops.
    pub async fn start(settings: StorageSettings, clock: Arc<dyn Clock>, random: Random) -> anyhow::Result<Self> {
        let metadata = MetadataClient::connect_lazy(&settings.metadata_endpoint, &settings.tls)?
            .with_seams(clock.clone(), random.clone());
        let address = format!("http://{}", settings.listen);
        let format = FormatGate::new(settings.format_generation_max);
        let mut attempt = 0;
        let placements = loop {
            let request = strata_common::proto::RegisterStorageNodeRequest {
                node_id: settings.node_id.clone(),
                address: address.clone(),
                initial_shards: settings.initial_shards,
                replication_factor: settings.replication_factor,
                zone: settings.zone.clone(),
                format_generation_max: format.readable_max(),
                ..Default::default()
            };
            match metadata.register_storage_node(request).await {
                // Replicated: the shards exist once enough nodes registered; ask again until then.
                // (A node joining later may hold none yet: replicas are moved to it.)
                Ok(r)
                    if r.shards_in_catalog == 0
                        && settings.replication_factor > 1
                        && attempt < PLACEMENT_WAIT_ATTEMPTS_MAX =>
                {
                    attempt += 1;
                    tracing::info!("waiting for enough storage nodes to place the shards");
                    clock.sleep(Duration::from_millis(200)).await;
                }
                Ok(r) => {
                    tracing::info!(
                        shards = r.shards.len(),
                        in_catalog = r.shards_in_catalog,
                        format_generation = r.format_generation,
                        "registered"
                    );
                    format.raise(r.format_generation);
                    break r.shards;
                }
                // The cluster writes formats this node cannot read: waiting does not help.
                Err(e) if e.kind == ErrorKind::InvalidParameter => return Err(e.into()),
                Err(e) if attempt < REGISTER_ATTEMPTS_MAX => {
                    attempt += 1;
                    tracing::info!(error = %e, "waiting for metadata to register");
                    clock.sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let store = settings.object_store.build()?;
        probe_conditional_create(store.as_ref(), &settings.node_id, clock.now_ms()).await;
        let reader = Arc::new(
            TieredReader::open(
                store.clone(),
                metadata.clone(),
                &settings.data_dir.join("cache"),
                settings.cache_memory_bytes,
                settings.cache_disk_bytes,
            )
            .await?,
        );
        let shards: ShardMap = Arc::default();
        let disk = DiskGuard::new(&settings.data_dir, settings.disk_reserve_bytes);
        let host = Arc::new(Host {
            settings: settings.clone(),
            clock,
            metadata: metadata.clone(),
            store,
            reader: reader.clone(),
            router: RaftRouter::new(format.readable_max()),
            shards: shards.clone(),
            hosted: tokio::sync::Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            format,
            disk: disk.clone(),
            operations: Operations::default(),
        });
        for placement in &placements {
            host.open_shard(placement, false).await?;
        }

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(disk.clone().watch(host.clock.clone(), host.cancel.clone())));
        let service = StorageServer::new(StorageService::new(shards, random, disk))
            .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        let serve_cancel = host.cancel.clone();
        let served = service.clone();
        let raft_transport = host.router.service();
        let incoming = strata_tls::incoming(listener, settings.tls.clone(), host.clock.clone());
        tasks.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .initial_stream_window_size(limits::GRPC_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(limits::GRPC_CONNECTION_WINDOW_BYTES)
                .layer(AuthorizeLayer::new(Listener::Storage))
                .layer(strata_telemetry::trace::GrpcServerSpans)
                .add_service(served)
                .add_service(raft_transport)
                .serve_with_incoming_shutdown(incoming, serve_cancel.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "storage gRPC server stopped");
            }
        }));
        tasks.push(tokio::spawn(heartbeat_loop(host.clone())));
        Ok(Self { reader, address, host, service, tasks })
    }

    /// The replica of `shard_id` this node runs, if it runs one.
    pub fn shard(&self, shard_id: u64) -> Option<Arc<Shard>> {
        self.host.shards.read().get(&shard_id).cloned()
    }

    /// The ids of the shards this node runs a replica of.
    pub fn shard_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.host.shards.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// What answers this node's readiness (see [`ReadyChecker::checks`]); it outlives no
    /// more than the node's parts.
    pub fn ready_checker(&self) -> ReadyChecker {
        ReadyChecker { host: self.host.clone() }
    }

    /// The gRPC service itself, for a proxy in the same process to call without a network hop
    /// (the same requests and answers as over gRPC).
    pub fn grpc_service(&self) -> StorageServer<StorageService> {
        self.service.clone()
    }

    /// Hands off the leadership of the shards it leads (while still serving, so the successors
    /// can win their votes), then stops serving and the loops, then the shards.
    pub async fn shutdown(self) {
        let shards: Vec<Arc<Shard>> = self.host.shards.read().values().cloned().collect();
        for shard in shards {
            shard.hand_off_leadership().await;
        }
        self.host.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let ids: Vec<u64> = self.host.hosted.lock().await.keys().copied().collect();
        for shard_id in ids {
            self.host.close_shard(shard_id, false).await;
        }
        self.reader.close().await;
    }
}

impl Host {
    fn shard_dir(&self, shard_id: u64) -> PathBuf {
        self.settings.data_dir.join("shards").join(format!("{shard_id:08}"))
    }

    /// Opens this node's replica of a shard and starts its loops. A replica that `joins` a
    /// running group (moved here) never creates the group: its leader brings it up to date.
    async fn open_shard(&self, placement: &ShardInfo, joins: bool) -> anyhow::Result<()> {
        let mut replicas = shard_replicas(placement, &self.settings.node_id)?;
        if joins && let Some(replicas) = replicas.as_mut() {
            replicas.initialize = false;
        }
        let shard = Arc::new(
            Shard::open(
                &self.shard_dir(placement.shard_id),
                placement.shard_id,
                &self.settings.node_id,
                &self.settings.log,
                self.clock.clone(),
                self.reader.clone(),
                replicas.as_ref(),
                &self.router,
                self.format.clone(),
                self.settings.tls.clone(),
            )
            .await?,
        );
        shard.set_placement(placement.clone());
        tracing::info!(node = self.settings.node_id, shard = placement.shard_id, joins, "shard open");
        let cancel = self.cancel.child_token();
        let settings = &self.settings;
        let tasks = vec![
            tokio::spawn(tier_loop(
                shard.clone(),
                TierLoop {
                    store: self.store.clone(),
                    metadata: self.metadata.clone(),
                    reader: self.reader.clone(),
                    disk: self.disk.clone(),
                    interval: settings.tier_interval,
                    seal_idle_after: settings.log.seal_idle_after,
                    local_retention_bytes: settings.log.local_retention_bytes,
                    upload_after: settings.log.upload_after,
                },
                cancel.clone(),
            )),
            tokio::spawn(snapshot_loop(shard.clone(), settings.log.snapshot_every_entries, cancel.clone())),
            tokio::spawn(expire_loop(shard.clone(), settings.expire_interval, cancel.clone())),
            tokio::spawn(queue_metrics_loop(shard.clone(), cancel.clone())),
            tokio::spawn(move_loop(shard.clone(), cancel.clone())),
            tokio::spawn(schedule_loop(shard.clone(), cancel.clone())),
            tokio::spawn(membership_loop(shard.clone(), self.metadata.clone(), cancel.clone())),
            tokio::spawn(writer_loop(shard.clone(), self.metadata.clone(), cancel.clone())),
            tokio::spawn(backfill_loop(shard.clone(), self.metadata.clone(), cancel.clone())),
            tokio::spawn(crate::hibernation::hibernate_loop(
                shard.clone(),
                settings.log.hibernate_after,
                cancel.clone(),
            )),
            tokio::spawn(crate::hand_offs::hand_off_loop(
                shard.clone(),
                self.shards.clone(),
                self.metadata.clone(),
                cancel.clone(),
            )),
        ];
        self.shards.write().insert(placement.shard_id, shard.clone());
        self.hosted.lock().await.insert(placement.shard_id, Hosted { shard, cancel, tasks });
        Ok(())
    }

    /// Stops this node's replica of a shard; with `remove_data`, deletes its directory too (the
    /// replica was moved off this node and its group no longer counts it).
    async fn close_shard(&self, shard_id: u64, remove_data: bool) {
        let Some(hosted) = self.hosted.lock().await.remove(&shard_id) else { return };
        self.shards.write().remove(&shard_id);
        hosted.cancel.cancel();
        for task in hosted.tasks {
            let _ = task.await;
        }
        self.router.deregister(shard_id);
        hosted.shard.shutdown().await;
        if remove_data {
            match std::fs::remove_dir_all(self.shard_dir(shard_id)) {
                Ok(()) => tracing::info!(shard = shard_id, "replica moved off this node: its data is removed"),
                Err(e) => tracing::warn!(shard = shard_id, error = %e, "removing a moved replica's data failed"),
            }
        }
    }

    /// Follows metadata's placement: opens replicas moved or added here, closes the ones moved
    /// off once their move is done (before that, the group may still need them as voters), and
    /// hands each running replica its shard's placement.
    async fn reconcile(&self, assigned: &[ShardInfo], leaving: &[ShardInfo]) {
        let running: Vec<u64> = self.hosted.lock().await.keys().copied().collect();
        for placement in assigned.iter().filter(|p| !running.contains(&p.shard_id)) {
            // A shard added at runtime that never had a writer is created by its first replica;
            // a replica moved here joins its running group.
            let creates = placement.writer_epoch == 0
                && placement.replicas.first().is_some_and(|r| r.node_id == self.settings.node_id);
            if let Err(e) = self.open_shard(placement, !creates).await {
                tracing::warn!(shard = placement.shard_id, error = %e, "opening a replica moved here failed; will retry");
            }
        }
        for shard_id in running {
            match assigned.iter().chain(leaving).find(|p| p.shard_id == shard_id) {
                Some(placement) => {
                    if let Some(shard) = self.shards.read().get(&shard_id) {
                        shard.set_placement(placement.clone());
                        // A sleeping replica wakes to elect a leader when its leader's node is
                        // gone, and to move a replica.
                        if placement.writer_lease_lost {
                            shard.hibernation().wake("its leader's node lost its lease");
                        } else if !placement.leaving.is_empty() {
                            shard.hibernation().wake("a replica moves");
                        }
                    }
                }
                None => self.close_shard(shard_id, true).await,
            }
        }
    }
}

/// Keeps this node's lease in metadata, and follows the placement each heartbeat answers.
async fn heartbeat_loop(host: Arc<Host>) {
    // The applied index and time of each shard led at the last heartbeat, to report its load.
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    loop {
        tokio::select! {
            _ = host.cancel.cancelled() => return,
            () = host.clock.sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS)) => {}
        }
        let shard_loads = shard_loads(&host.shards, &mut last, host.clock.now_ms());
        match host.metadata.heartbeat(&host.settings.node_id, host.format.readable_max(), shard_loads).await {
            Ok(answer) => {
                host.format.raise(answer.format_generation);
                host.reconcile(&answer.shards, &answer.leaving_shards).await;
                let drain = answer.draining.then(|| host.settings.node_id.clone());
                host.operations.run(&host.shards, &host.metadata, answer.queue_drops, answer.queue_moves, drain);
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat to metadata failed; will retry"),
        }
    }
}

/// The load of each shard this node leads: log entries applied per minute since `last` (which
/// this updates; a shard first seen reports nothing yet).
fn shard_loads(
    shards: &ShardMap,
    last: &mut HashMap<u64, (u64, u64)>,
    now_ms: u64,
) -> Vec<strata_common::proto::ShardLoad> {
    let led: Vec<(u64, u64)> = shards
        .read()
        .values()
        .filter(|s| s.is_leader())
        .map(|s| (s.shard_id, s.applied_index().unwrap_or(0)))
        .collect();
    last.retain(|id, _| led.iter().any(|(led_id, _)| led_id == id));
    let mut loads = Vec::new();
    for (shard_id, index) in led {
        if let Some(&(before, at_ms)) = last.get(&shard_id) {
            let elapsed_ms = now_ms.saturating_sub(at_ms).max(1);
            let entries_per_minute = index.saturating_sub(before).saturating_mul(60_000) / elapsed_ms;
            loads.push(strata_common::proto::ShardLoad { shard_id, entries_per_minute });
        }
        last.insert(shard_id, (index, now_ms));
    }
    loads
}

/// How often a shard's leader compares its group's voters with the replicas of the placement
/// its node's heartbeats last brought.
const MEMBERSHIP_TICK: Duration = Duration::from_secs(1);

/// On the leader: makes the group's voters metadata's replicas (a replica moved to a new node:
/// the node joins as a learner, catches up, becomes a voter, and the old one is removed, through
/// openraft's joint consensus), then confirms the move to metadata.
async fn membership_loop(shard: Arc<Shard>, metadata: MetadataClient, cancel: CancellationToken) {
    loop {
        if !shard.pause(MEMBERSHIP_TICK, &cancel).await {
            return;
        }
        // The placement comes with this node's heartbeats: nothing is asked while none moves.
        let Some(placement) = shard.placement().filter(|p| p.replicas.len() > 1) else { continue };
        if !shard.is_leader() {
            continue;
        }
        if !shard.voters_are(&placement) {
            // A replica that joined by snapshot lacks the entries before it: the old one leaves
            // only once every live entry up to this leader's snapshot is in the bucket.
            let may_remove = match tiered_through_snapshot(&shard, &metadata).await {
                Ok(tiered) => tiered,
                Err(e) => {
                    tracing::warn!(shard = shard.shard_id, error = %e, "reading the segment catalog failed");
                    false
                }
            };
            let matched = tokio::select! {
                _ = cancel.cancelled() => return,
                matched = shard.change_voters(&placement, may_remove) => matched,
            };
            match matched {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(shard = shard.shard_id, error = %e, "changing the group's voters failed; will retry");
                    continue;
                }
            }
        }
        if !placement.leaving.is_empty() {
            let voters = placement.replicas.iter().map(|r| r.node_id.clone()).collect();
            match metadata.confirm_replicas(shard.shard_id, voters).await {
                Ok(confirmed) => {
                    tracing::info!(shard = shard.shard_id, left = ?placement.leaving, "replica move done");
                    shard.set_placement(confirmed);
                }
                Err(e) => tracing::warn!(shard = shard.shard_id, error = %e, "confirming a replica move failed"),
            }
        }
    }
}

/// On the leader: claims the shard's writer role in metadata as soon as it leads in a new Raft
/// term, so the writer epoch in object keys changes with every change of leader and the
/// shard's record names its current writer (not only once it next uploads).
async fn writer_loop(shard: Arc<Shard>, metadata: MetadataClient, cancel: CancellationToken) {
    loop {
        if !shard.pause(MEMBERSHIP_TICK, &cancel).await {
            return;
        }
        if shard.is_leader()
            && let Err(e) = claim_writer_epoch(&shard, &metadata).await
        {
            tracing::warn!(shard = shard.shard_id, error = %e, "claiming the shard's writer role failed; will retry");
        }
    }
}

/// How often a replica checks for live entries before its snapshot that only its peers hold.
const BACKFILL_TICK: Duration = Duration::from_secs(1);

/// Any replica: copies the live entries before its snapshot that only its peers hold (see
/// `backfill`), soon after it caught up by snapshot rather than at the next tiering pass.
async fn backfill_loop(shard: Arc<Shard>, metadata: MetadataClient, cancel: CancellationToken) {
    loop {
        if !shard.pause(BACKFILL_TICK, &cancel).await {
            return;
        }
        match backfill_shard_once(&shard, &metadata).await {
            Ok(pass) if pass != Default::default() => tracing::info!(shard = shard.shard_id, ?pass, "backfill pass"),
            Ok(_) => {}
            Err(e) => tracing::warn!(shard = shard.shard_id, error = %e, "backfill pass failed; will retry"),
        }
    }
}

/// How often a shard that applies entries checks whether its state is due for a snapshot (an
/// idle shard does not check: without applies it cannot become due).
const SNAPSHOT_TICK: Duration = Duration::from_millis(100);
/// A snapshot asked for and not stored after this long is asked for again.
const SNAPSHOT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Snapshots the shard's state when [`snapshot_due`], on every replica. Log bytes count from
/// what this process wrote since it saw the stored snapshot (after a restart, from then).
async fn snapshot_loop(shard: Arc<Shard>, every_entries: u64, cancel: CancellationToken) {
    let clock = shard.clock().clone();
    let mut applied = shard.subscribe_applied();
    // The first check comes at once: what was replayed at start may be due already.
    applied.mark_changed();
    // The stored snapshot's index, and the log's bytes written when it was first seen.
    let mut seen: Option<(u64, u64)> = None;
    let mut asked_at = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = clock.sleep(SNAPSHOT_TICK) => {}
        }
        let Some((snapshot_index, snapshot_bytes)) = shard.stored_snapshot() else { continue };
        let written = shard.wal().stats().bytes_written;
        let (_, written_at) = match seen {
            Some(same @ (index, _)) if index == snapshot_index => same,
            _ => {
                asked_at = None;
                *seen.insert((snapshot_index, written))
            }
        };
        let entries_since = shard.applied_index().unwrap_or(0).saturating_sub(snapshot_index);
        let asked_lately = asked_at.is_some_and(|at| clock.instant().duration_since(at) < SNAPSHOT_RETRY_AFTER);
        if !asked_lately
            && snapshot_due(entries_since, written.saturating_sub(written_at), snapshot_bytes, every_entries)
        {
            shard.trigger_snapshot();
            asked_at = Some(clock.instant());
        }
    }
}

/// What a shard's tiering loop works with.
struct TierLoop {
    store: Arc<dyn ObjectStore>,
    metadata: MetadataClient,
    reader: Arc<TieredReader>,
    disk: Arc<DiskGuard>,
    interval: Duration,
    seal_idle_after: Duration,
    local_retention_bytes: u64,
    upload_after: Duration,
}

async fn tier_loop(shard: Arc<Shard>, tier: TierLoop, cancel: CancellationToken) {
    let TierLoop { store, metadata, reader, disk, interval, seal_idle_after, local_retention_bytes, upload_after } =
        tier;
    let mut sealed_ages = SealedAges::default();
    // An idle shard seals its active segment after `seal_idle_after`, so its tail tiers too.
    let mut last_seen_index = None;
    let clock = shard.clock().clone();
    let mut idle_since = clock.instant();
    loop {
        if !shard.pause(interval, &cancel).await {
            return;
        }
        let last_index = shard.wal().last_index();
        if last_index != last_seen_index {
            last_seen_index = last_index;
            idle_since = clock.instant();
        } else if clock.instant().duration_since(idle_since) >= seal_idle_after {
            if let Err(e) = shard.wal().seal_active() {
                tracing::warn!(shard = shard.shard_id, error = %e, "sealing an idle segment failed");
            }
            idle_since = clock.instant();
        }
        let keep_local_bytes = kept_for_reads_bytes(local_retention_bytes, disk.room_above_reserve_bytes());
        // Only the leader uploads and collects; followers drop what it has tiered (and count
        // nothing pending: the leader does).
        if !shard.is_leader() {
            sealed_ages.release_pending();
            match release_tiered_segments(&shard, &metadata, &reader, keep_local_bytes).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(shard = shard.shard_id, removed, "released tiered segments"),
                Err(e) => tracing::warn!(shard = shard.shard_id, error = %e, "releasing tiered segments failed"),
            }
            continue;
        }
        // A replica move waits until the bucket holds what the new replica lacks: nothing waits.
        let moving = shard.placement().is_some_and(|p| !shard.voters_are(&p));
        let upload_after = if moving { Duration::ZERO } else { upload_after };
        let pass = tier_shard_once(
            &shard,
            store.as_ref(),
            &metadata,
            &reader,
            keep_local_bytes,
            &mut sealed_ages,
            upload_after,
        );
        match pass.await {
            Ok(pass) if pass != Default::default() => tracing::info!(shard = shard.shard_id, ?pass, "tiering pass"),
            Ok(_) => {}
            Err(e) => tracing::warn!(shard = shard.shard_id, error = %e, "tiering pass failed; will retry"),
        }
    }
}

/// This node's part in a shard's replication: `None` when the shard has a single replica.
fn shard_replicas(placement: &ShardInfo, node_id: &str) -> anyhow::Result<Option<ShardReplicas>> {
    if placement.replicas.len() <= 1 {
        return Ok(None);
    }
    let own =
        placement.replicas.iter().find(|r| r.node_id == node_id).ok_or_else(|| {
            anyhow::anyhow!("shard {} is placed here but does not list this node", placement.shard_id)
        })?;
    Ok(Some(ShardReplicas {
        raft_id: own.raft_id,
        voters: placement.replicas.iter().map(|r| (r.raft_id, r.address.clone())).collect(),
        initialize: placement.replicas.first().is_some_and(|first| first.node_id == node_id),
    }))
}

/// How often running move tasks take a step; each step moves a tick's share of the task's rate.
const MOVE_TICK: Duration = Duration::from_millis(200);

/// Paces the shard's running move tasks: every tick, each task earns `max_per_second` credits,
/// and a step moves one message per `ticks_per_second` credits it holds (so a task slower than
/// a message per tick steps every few ticks, at its rate).
async fn move_loop(shard: Arc<Shard>, cancel: CancellationToken) {
    let ticks_per_second = (1000 / MOVE_TICK.as_millis()).max(1) as u32;
    let mut credits: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    loop {
        if !shard.pause(MOVE_TICK, &cancel).await {
            return;
        }
        if !shard.is_leader() {
            continue;
        }
        let running = shard.state().0.running_move_tasks();
        credits.retain(|id, _| running.iter().any(|t| t.task_id == *id));
        for task in running {
            // Nothing to move now but messages still in flight or delayed: no step (a step on an
            // empty source completes the task).
            let idle = {
                let state = shard.state();
                let counts = state.0.queue_counts(task.source, &task.tenant);
                let empty = counts.is_none_or(|c| c.visible + c.in_flight + c.delayed == 0);
                !empty && !state.0.has_visible(task.source, &task.tenant, shard.now_ms())
            };
            if idle {
                credits.remove(&task.task_id);
                continue;
            }
            // At most a second's worth is saved up.
            let credit = credits.entry(task.task_id).or_insert(0);
            *credit = credit.saturating_add(task.max_per_second).min(task.max_per_second.max(ticks_per_second));
            let max_messages = *credit / ticks_per_second;
            if max_messages == 0 {
                continue;
            }
            *credit -= max_messages * ticks_per_second;
            if let Err(e) = shard.propose(Command::MoveStep { task_id: task.task_id, max_messages }).await {
                tracing::warn!(shard = shard.shard_id, task = task.task_id, error = %e, "move step failed; will retry");
            }
        }
    }
}

/// How often the shard looks for a slice of scheduled messages coming due.
const SCHEDULE_TICK: Duration = Duration::from_millis(250);

/// Loads slices of scheduled messages as they come due (see `queue::schedule`), a chunk per
/// proposal, as fast as the log takes them.
async fn schedule_loop(shard: Arc<Shard>, cancel: CancellationToken) {
    let mut cache = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = shard.clock().sleep(SCHEDULE_TICK) => {}
        }
        // A sleeping shard keeps no slice in memory, and waits until it wakes.
        if shard.hibernation().is_asleep() {
            cache = None;
            tokio::select! {
                _ = cancel.cancelled() => return,
                () = shard.hibernation().until_awake() => {}
            }
        }
        while shard.is_leader() {
            match shard.load_scheduled_step(&mut cache).await {
                Ok(true) if !cancel.is_cancelled() => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(shard = shard.shard_id, error = %e, "loading scheduled messages failed; will retry");
                    cache = None;
                    break;
                }
            }
        }
    }
}

/// How often a replica removes the queue minutes past their retention.
const QUEUE_METRICS_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Writes down the replica's per-queue counts every [`queue_metrics::FLUSH_INTERVAL`] (and a last
/// time when the replica closes), and prunes old minutes every hour.
async fn queue_metrics_loop(shard: Arc<Shard>, cancel: CancellationToken) {
    let mut since_prune = Duration::ZERO;
    loop {
        let stopping = !shard.pause(crate::queue_metrics::FLUSH_INTERVAL, &cancel).await;
        if let Err(e) = shard.write_queue_metrics().await {
            tracing::warn!(shard = shard.shard_id, error = %e, "writing queue metrics failed: the counts of the last second are lost");
        }
        // Records that cannot be written now wait: the next write, or the next snapshot, takes them.
        if let Err(e) = shard.write_message_trace().await {
            tracing::warn!(shard = shard.shard_id, error = %e, "writing the message trace failed; will retry");
        }
        if stopping {
            return;
        }
        since_prune += crate::queue_metrics::FLUSH_INTERVAL;
        if since_prune >= QUEUE_METRICS_PRUNE_INTERVAL {
            since_prune = Duration::ZERO;
            if let Err(e) = shard.prune_queue_metrics().await {
                tracing::warn!(shard = shard.shard_id, error = %e, "pruning queue metrics failed; will retry");
            }
            if let Err(e) = shard.prune_message_trace().await {
                tracing::warn!(shard = shard.shard_id, error = %e, "pruning the message trace failed; will retry");
            }
        }
    }
}

async fn expire_loop(shard: Arc<Shard>, interval: Duration, cancel: CancellationToken) {
    loop {
        if !shard.pause(interval, &cancel).await {
            return;
        }
        let due = shard.is_leader() && shard.state().0.has_expirable(shard.now_ms());
        if due && let Err(e) = shard.propose(Command::Expire).await {
            tracing::warn!(shard = shard.shard_id, error = %e, "retention expiry failed; will retry");
        }
    }
}
