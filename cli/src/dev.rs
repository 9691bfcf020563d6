//! `strata dev`: the whole service in one process on the embedded defaults — one metadata voter,
//! one storage node (one replica: "acknowledged" means fsynced on this machine's disk), a local
//! directory as object store, and the proxy. Metadata is reached over gRPC on loopback, exactly as
//! in a cluster, over mutual TLS: on first start `strata dev` makes its own CA in `tls/` and, at
//! every start, a certificate for each role it runs (and one for an operator, named in
//! `dev-credentials.env`). The proxy calls the storage node's gRPC service in process by default (the same
//! encoded requests, without the loopback TCP and HTTP/2 hop); `--storage-rpc loopback` sends
//! them over the storage port instead, as a proxy in another process would.
//!
//! Billing runs here too: it counts the metering queue into SQLite (`billing.db`) and serves
//! usage and invoices on the same listeners.
//!
//! The data directory holds everything: `metadata/`, `storage/`, `objects/` (the bucket), the
//! JWT signing secret and the SigV4 access key of the dev tenant, and `dev-credentials.env`
//! (the native API's endpoint and token, and the AWS variables for the SQS API). Restarting on the same
//! directory keeps every queue and message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strata_common::format::{FormatGate, NEWEST_GENERATION};
use strata_common::{Clock, Random, ShiftedClock, SystemClock};
use strata_metadata::MetadataNode;
use strata_metadata::sealing::{KekSource, Keks};
use strata_metadata_client::MetadataClient;
use strata_proxy::auth::{JwtIssuer, JwtKey, JwtVerifier};
use strata_proxy::quotas::ConcurrencyLimits;
use strata_proxy::storage_client::CoLocatedStorage;
use strata_proxy::{ProxySettings, ServerLimits};
use strata_storage::disk::DISK_RESERVE_BYTES_DEFAULT;
use strata_storage::shard::ShardLogSettings;
use strata_storage::{ObjectStoreSettings, StorageNode, StorageSettings};
use strata_tls::pki::LocalCa;
use strata_tls::{Credentials, Identity, Role, TlsFiles};
use tokio_util::sync::CancellationToken;

/// The tenant `strata dev` creates and issues a token for.
pub(crate) const DEV_TENANT: &str = "dev";
const DEV_KEY_ID: &str = "dev-hs256";
/// The admin API's own signing key: a tenant key never signs an operator's token.
const DEV_ADMIN_KEY_ID: &str = "dev-admin-hs256";
const DEV_ISSUER: &str = "strata-dev";
const DEV_AUDIENCE: &str = "strata";
/// Audience of operators' tokens on the admin API (never accepted by the tenant API).
const DEV_ADMIN_AUDIENCE: &str = "strata-admin";
/// The operator `strata dev` issues an admin token for.
const DEV_OPERATOR: &str = "dev-operator";
/// Region the dev credentials name. Any region verifies; this one is not an AWS region because
/// AWS CLI v1 replaces the configured endpoint by AWS's own for known SQS regions.
const DEV_REGION: &str = "strata-dev";
/// Lifetime of the dev tokens, and the longest `strata dev` accepts (a cluster's default is a
/// day); a restart issues fresh ones.
const DEV_TOKEN_TTL_S: u64 = 30 * 24 * 3600;

#[derive(Args, Debug)]
pub(crate) struct DevArgs {
    /// Where all state lives (default: ~/.strata/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Port of the HTTP API.
    #[arg(long, default_value_t = 9324)]
    port: u16,
    /// Port of the admin API (operators: access keys of any tenant), on loopback.
    #[arg(long, default_value_t = 9325)]
    admin_port: u16,
    /// Port of the metadata gRPC service (loopback).
    #[arg(long, default_value_t = 9400)]
    metadata_port: u16,
    /// Port of the storage gRPC service (loopback).
    #[arg(long, default_value_t = 9500)]
    storage_port: u16,
    /// How the proxy reaches the storage node's gRPC service.
    #[arg(long, value_enum, default_value_t = StorageRpc::InProcess)]
    storage_rpc: StorageRpc,
    /// Do not meter calls for billing (only to measure what metering costs).
    #[arg(long)]
    no_metering: bool,
    /// The billing database (default: SQLite at DATA_DIR/billing.db; or postgres://...).
    #[arg(long)]
    billing_database: Option<String>,
    /// Shards (Raft groups) the storage node runs, all on this one node, so queues can be spread
    /// and moved between shards on one machine. Used when the data directory is new: the shards
    /// are made once, when the storage node first registers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(strata_metadata::catalog::INITIAL_SHARDS_MAX)))]
    shards: u32,
    /// Seal WAL segments at this size (smaller means earlier tiering).
    #[arg(long, default_value_t = ShardLogSettings::default().segment_size_bytes_max)]
    segment_bytes: u64,
    /// Snapshot the queue state every this many log entries.
    #[arg(long, default_value_t = ShardLogSettings::default().snapshot_every_entries)]
    snapshot_every: u64,
    /// Seal the active segment after this many idle milliseconds, so idle tails tier too.
    #[arg(long, default_value_t = ShardLogSettings::default().seal_idle_after.as_millis() as u64)]
    seal_idle_ms: u64,
    /// Sealed segments kept on local disk after tiering, newest first, for reads, in bytes per
    /// shard (never more than half the room above the disk reserve, none under 1 GiB of room).
    #[arg(long, default_value_t = ShardLogSettings::default().local_retention_bytes)]
    local_retention_bytes: u64,
    /// How long a sealed segment kept for reads waits before it is uploaded, in milliseconds
    /// (what consumers delete meanwhile is never uploaded).
    #[arg(long, default_value_t = ShardLogSettings::default().upload_after.as_millis() as u64)]
    upload_after_ms: u64,
    /// A shard idle this long (no call, nothing due) hibernates until a call wakes it, in
    /// milliseconds (0: never).
    #[arg(long, default_value_t = ShardLogSettings::default().hibernate_after.as_millis() as u64)]
    hibernate_after_ms: u64,
    /// How often sealed segments are tiered, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    tier_interval_ms: u64,
    /// S3-compatible endpoint for tiered segments (default: DATA_DIR/objects on local disk).
    #[arg(long, env = "STRATA_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long, env = "STRATA_S3_BUCKET", default_value = "strata")]
    s3_bucket: String,
    #[arg(long, env = "STRATA_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    #[arg(long, env = "STRATA_S3_ACCESS_KEY_ID", default_value = "", hide_env_values = true)]
    s3_access_key_id: String,
    #[arg(long, env = "STRATA_S3_SECRET_ACCESS_KEY", default_value = "", hide_env_values = true)]
    s3_secret_access_key: String,
    /// Key prefix inside the bucket.
    #[arg(long, env = "STRATA_S3_PREFIX", default_value = "")]
    s3_prefix: String,
    /// Memory for cached blocks of tiered segments, in MiB.
    #[arg(long, default_value_t = 64)]
    cache_memory_mib: usize,
    /// Local disk for cached blocks of tiered segments, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_disk_mib: usize,
    /// Run the service's clock from this unix time in milliseconds instead of now (tests that
    /// open a data directory written at another time).
    #[arg(long, hide = true)]
    clock_start_unix_ms: Option<u64>,
    /// Draw message ids and other ids from a generator seeded with this number instead of the
    /// operating system's (runs that must be replayed). Secrets never come from it.
    #[arg(long, hide = true)]
    random_seed: Option<u64>,
    /// Open connections from one IP address at most, on each HTTP listener.
    #[arg(long, hide = true, default_value_t = ServerLimits::default().connections_per_ip_max)]
    connections_per_ip_max: usize,
    /// Longest wait for a request's head (and an idle connection's next request), in ms.
    #[arg(long, hide = true, default_value_t = ServerLimits::default().header_read_timeout.as_millis() as u64)]
    header_read_timeout_ms: u64,
    /// Longest wait for the next bytes of a request body, in ms.
    #[arg(long, hide = true, default_value_t = ServerLimits::default().body_read_timeout.as_millis() as u64)]
    body_read_timeout_ms: u64,
    /// Free disk space kept for snapshots and recovery, in MiB: below it, new messages and
    /// queues are refused until space returns.
    #[arg(long, hide = true, default_value_t = DISK_RESERVE_BYTES_DEFAULT >> 20)]
    disk_reserve_mib: u64,
    /// Calls of one tenant under way at once at most, long polls included.
    #[arg(long, hide = true, default_value_t = ConcurrencyLimits::default().calls_max)]
    tenant_calls_max: u32,
    /// Receives (long polls) of one tenant under way at once at most.
    #[arg(long, hide = true, default_value_t = ConcurrencyLimits::default().receives_max)]
    tenant_receives_max: u32,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StorageRpc {
    /// Call the service in this process (no network hop).
    InProcess,
    /// Connect to the storage port on loopback, as a separate proxy would.
    Loopback,
}

pub(crate) fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from(".strata-dev"), |h| PathBuf::from(h).join(".strata/dev"))
}

/// Length of the dev HMAC secrets.
const DEV_SECRET_BYTES: usize = 32;

/// The KEK that seals `strata dev`'s SigV4 secrets at rest: `kek-dev-1.secret` in the data
/// directory (0600), made on first start. (A deployment keeps its KEK away from the data.)
fn dev_kek(dir: &Path) -> anyhow::Result<Keks> {
    let file = dir.join("kek-dev-1.secret");
    if !file.exists() {
        let hex = strata_common::random::secret_string(b"0123456789abcdef", 2 * strata_metadata::sealing::KEK_BYTES);
        write_secret_file(&file, hex.as_bytes())?;
    }
    Keks::load(&[KekSource { id: "dev-1".into(), file: Some(file), env: None }])
}

/// The internal plane's credentials of `strata dev`: its own CA, kept in the data directory,
/// and a certificate for each role (and an operator) issued at every start, all 0600.
struct DevTls {
    metadata: Credentials,
    storage: Credentials,
    proxy: Credentials,
    billing: Credentials,
    /// For tools and tests that call the internal plane as an operator.
    operator: TlsFiles,
}

impl DevTls {
    fn issue(dir: &Path, now_ms: u64) -> anyhow::Result<Self> {
        let ca = LocalCa::open_or_create(dir, now_ms)?;
        let issue = |role, name| ca.credentials(role, name, now_ms);
        let operator = Identity::new(Role::Operator, DEV_OPERATOR)?;
        Ok(Self {
            metadata: issue(Role::Metadata, "dev-metadata")?,
            storage: issue(Role::Storage, "dev-storage-1")?,
            proxy: issue(Role::Proxy, "dev-proxy")?,
            billing: issue(Role::Billing, "dev-billing")?,
            operator: ca.issue(&operator, &[], dir, &format!("operator-{DEV_OPERATOR}"), now_ms)?,
        })
    }
}

/// Loads an HMAC signing secret kept in `DIR/file` (the tenant API's or the admin API's),
/// creating it on first start.
fn signing_secret(dir: &Path, file: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(file);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let secret = hex::decode(text.trim()).ok().filter(|s| s.len() == DEV_SECRET_BYTES);
        return secret
            .context("the dev JWT secret file is damaged (expected 64 hex characters); delete it to issue a new one");
    }
    let secret: [u8; DEV_SECRET_BYTES] = strata_common::random::secret_bytes();
    write_secret_file(&path, hex::encode(secret).as_bytes())?;
    Ok(secret.to_vec())
}

/// The token Prometheus presents to scrape `/metrics`, kept in `path` (created on first start).
fn dev_scrape_token(path: &Path) -> anyhow::Result<strata_telemetry::ScrapeToken> {
    if !path.exists() {
        let secret: [u8; DEV_SECRET_BYTES] = strata_common::random::secret_bytes();
        write_secret_file(path, hex::encode(secret).as_bytes())?;
    }
    strata_http::observe::read_scrape_token(path).map_err(|e| anyhow::anyhow!("{e}; delete it to issue a new one"))
}

/// The dev tenant's SigV4 access key, kept in `DIR/dev-access-key` (id and secret, one per
/// line) and re-created when it is missing or was revoked.
async fn dev_access_key(dir: &Path, metadata: &MetadataClient, now_ms: u64) -> anyhow::Result<(String, String)> {
    let path = dir.join("dev-access-key");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some((id, secret)) = text.trim().split_once('\n')
    {
        match metadata.lookup_access_key(id.trim()).await {
            Ok(key)
                if key.tenant == DEV_TENANT
                    && key.secret_access_key == secret.trim()
                    && (key.revoked_at_ms == 0 || now_ms < key.revoked_at_ms) =>
            {
                return Ok((key.access_key_id, key.secret_access_key));
            }
            Ok(_) => tracing::info!("the dev access key was revoked; creating a new one"),
            Err(e) if e.kind == strata_common::error::ErrorKind::AccessKeyNotFound => {
                tracing::info!("the dev access key is unknown; creating a new one")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let key = metadata.create_access_key(DEV_TENANT).await?;
    let text = format!("{}\n{}\n", key.access_key_id, key.secret_access_key);
    write_secret_file(&path, text.as_bytes())?;
    Ok((key.access_key_id, key.secret_access_key))
}

/// Writes a file of secrets atomically; like every file Strata creates it is readable by its
/// owner only from the moment it exists (see `strata_wal::private_fs`).
fn write_secret_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    strata_wal::write_file_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

pub(crate) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    crate::logs::init("dev");
    let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    strata_wal::private_fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    strata_wal::private_fs::restrict_dir(&dir)
        .with_context(|| format!("restricting {} to its owner", dir.display()))?;
    let dir = dir.canonicalize()?;
    let clock: Arc<dyn Clock> = match args.clock_start_unix_ms {
        Some(start_ms) => Arc::new(ShiftedClock::starting_at(start_ms)),
        None => Arc::new(SystemClock),
    };
    let random = args.random_seed.map_or_else(Random::os, Random::seeded);
    let cancel = CancellationToken::new();

    let metadata_addr = SocketAddr::from(([127, 0, 0, 1], args.metadata_port));
    let storage_addr = SocketAddr::from(([127, 0, 0, 1], args.storage_port));
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], args.admin_port));
    let metadata_endpoint = format!("http://{metadata_addr}");

    let tls = DevTls::issue(&dir.join("tls"), clock.now_ms()).context("making the internal plane's certificates")?;
    let metadata = MetadataNode::open(
        &dir.join("metadata"),
        &metadata_endpoint,
        clock.clone(),
        FormatGate::new(NEWEST_GENERATION),
        tls.metadata,
    )
    .await
    .context("opening metadata")?;
    metadata.use_keks(dev_kek(&dir)?);
    let metadata_listener = tokio::net::TcpListener::bind(metadata_addr)
        .await
        .with_context(|| format!("metadata port {metadata_addr} is taken (use --metadata-port)"))?;
    let metadata_task =
        tokio::spawn(metadata.clone().serve_with_listener(metadata_listener, cancel.clone().cancelled_owned()));

    let object_store = match &args.s3_endpoint {
        Some(endpoint) => ObjectStoreSettings::S3 {
            endpoint: endpoint.clone(),
            bucket: args.s3_bucket.clone(),
            region: args.s3_region.clone(),
            access_key_id: args.s3_access_key_id.clone(),
            secret_access_key: args.s3_secret_access_key.clone(),
            prefix: args.s3_prefix.clone(),
        },
        None => ObjectStoreSettings::Local { dir: dir.join("objects") },
    };
    let storage = StorageNode::start(
        StorageSettings {
            node_id: "dev-storage-1".to_string(),
            data_dir: dir.join("storage"),
            listen: storage_addr,
            metadata_endpoint: metadata_endpoint.clone(),
            object_store,
            initial_shards: args.shards,
            log: ShardLogSettings {
                segment_size_bytes_max: args.segment_bytes,
                snapshot_every_entries: args.snapshot_every,
                seal_idle_after: Duration::from_millis(args.seal_idle_ms),
                local_retention_bytes: args.local_retention_bytes,
                upload_after: Duration::from_millis(args.upload_after_ms),
                hibernate_after: Duration::from_millis(args.hibernate_after_ms),
            },
            tier_interval: Duration::from_millis(args.tier_interval_ms),
            expire_interval: Duration::from_secs(1),
            cache_memory_bytes: args.cache_memory_mib * 1024 * 1024,
            cache_disk_bytes: args.cache_disk_mib * 1024 * 1024,
            replication_factor: 1,
            zone: String::new(),
            format_generation_max: NEWEST_GENERATION,
            tls: tls.storage,
            disk_reserve_bytes: args.disk_reserve_mib << 20,
        },
        clock.clone(),
        random.clone(),
    )
    .await
    .context("starting the storage node")?;

    let secret = signing_secret(&dir, "jwt-hs256.secret")?;
    let verifier = JwtVerifier::new(DEV_ISSUER, DEV_AUDIENCE, vec![JwtKey::hmac(DEV_KEY_ID, &secret)])
        .with_other_audiences([DEV_ADMIN_AUDIENCE])
        .with_lifetime_s_max(DEV_TOKEN_TTL_S);
    let issuer = JwtIssuer::hmac(DEV_KEY_ID, &secret, DEV_ISSUER, DEV_AUDIENCE);
    let token = issuer.mint(DEV_TENANT, DEV_TOKEN_TTL_S, clock.now_ms() / 1000)?;
    let metadata_client =
        MetadataClient::connect_lazy(&metadata_endpoint, &tls.proxy)?.with_seams(clock.clone(), random.clone());
    metadata_client.ensure_tenant(DEV_TENANT).await?;
    let (access_key_id, secret_access_key) = dev_access_key(&dir, &metadata_client, clock.now_ms()).await?;

    let co_located_storage = (args.storage_rpc == StorageRpc::InProcess)
        .then(|| CoLocatedStorage::new(storage.address.clone(), storage.grpc_service()));
    let admin_secret = signing_secret(&dir, "jwt-admin-hs256.secret")?;
    let admin_verifier =
        JwtVerifier::new(DEV_ISSUER, DEV_ADMIN_AUDIENCE, vec![JwtKey::hmac(DEV_ADMIN_KEY_ID, &admin_secret)])
            .with_other_audiences([DEV_AUDIENCE])
            .with_lifetime_s_max(DEV_TOKEN_TTL_S);
    let admin_token = JwtIssuer::hmac(DEV_ADMIN_KEY_ID, &admin_secret, DEV_ISSUER, DEV_ADMIN_AUDIENCE).mint(
        DEV_OPERATOR,
        DEV_TOKEN_TTL_S,
        clock.now_ms() / 1000,
    )?;
    let billing = strata_billing::service::start(
        strata_billing::service::BillingSettings {
            database_url: args
                .billing_database
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("billing.db").display())),
            metadata_endpoint: metadata_endpoint.clone(),
            tls: tls.billing,
            verifier: verifier.clone(),
            admin_verifier: admin_verifier.clone(),
            clock: clock.clone(),
            random: random.clone(),
        },
        cancel.clone(),
    )
    .await
    .context("starting billing")?;
    let routers = strata_proxy::router(ProxySettings {
        metadata_endpoint: metadata_endpoint.clone(),
        tls: tls.proxy,
        verifier,
        co_located_storage,
        clock: clock.clone(),
        random,
        admin_verifier,
        metering: !args.no_metering,
        fleet_proxies: 1,
        concurrency: ConcurrencyLimits { calls_max: args.tenant_calls_max, receives_max: args.tenant_receives_max },
    })?;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("admin port {admin_addr} is taken (use --admin-port)"))?;
    let proxy_listener = tokio::net::TcpListener::bind(proxy_addr)
        .await
        .with_context(|| format!("HTTP port {proxy_addr} is taken (use --port)"))?;
    let endpoint = format!("http://{proxy_addr}");
    let scrape_token_file = dir.join("metrics-token");
    let scrape_token = dev_scrape_token(&scrape_token_file)?;
    let credentials = dir.join("dev-credentials.env");
    let env_text = format!(
        "# Written by `strata dev`; `source` this file to use the CLI, curl or SDKs.\n\
         export STRATA_ENDPOINT={endpoint}\nexport STRATA_TOKEN={token}\nexport STRATA_TENANT={DEV_TENANT}\n\
         # The SQS-compatible API (AWS CLI, boto3, SDKs):\n\
         export AWS_ACCESS_KEY_ID={access_key_id}\nexport AWS_SECRET_ACCESS_KEY={secret_access_key}\n\
         export AWS_DEFAULT_REGION={DEV_REGION}\nexport AWS_ENDPOINT_URL={endpoint}\n\
         # The admin API (operators; `strata keys ... --tenant T`):\n\
         export STRATA_ADMIN_ENDPOINT=http://{admin_addr}\nexport STRATA_ADMIN_TOKEN={admin_token}\n\
         # Prometheus: scrape http://{admin_addr}/metrics with this bearer token file.\n\
         export STRATA_METRICS_TOKEN_FILE={scrape_token_file}\n\
         # The internal gRPC plane (mutual TLS): its CA and an operator's certificate.\n\
         export STRATA_METADATA_ENDPOINTS={metadata_endpoint}\nexport STRATA_STORAGE_ENDPOINT=http://{storage_addr}\n\
         export STRATA_TLS_CA={ca}\nexport STRATA_TLS_CERT={cert}\nexport STRATA_TLS_KEY={key}\n",
        scrape_token_file = scrape_token_file.display(),
        ca = tls.operator.ca.display(),
        cert = tls.operator.cert.display(),
        key = tls.operator.key.display(),
    );
    write_secret_file(&credentials, env_text.as_bytes())?;
    println!(
        "strata dev is running (tenant '{DEV_TENANT}', one replica: acknowledged = fsynced on this disk)\n\
         \n  data directory   {dir}\n  HTTP API         {endpoint}  (OpenAPI: {endpoint}/openapi.json)\n  \
         admin API        http://{admin_addr}\n\
         \n  credentials      {creds}\n\
         \nTry:\n  source {creds}\n  strata queue create orders\n  strata send orders 'hello'\n  \
         strata receive orders --wait 5\n  aws sqs list-queues\n\nStop with Ctrl-C.",
        dir = dir.display(),
        creds = credentials.display(),
    );

    let proxy_cancel = cancel.clone();
    let api = routers.api.merge(billing.api);
    let limits = ServerLimits {
        connections_per_ip_max: args.connections_per_ip_max,
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
        ..ServerLimits::default()
    };
    let proxy_task =
        tokio::spawn(strata_proxy::api::serve(api, proxy_listener, limits, proxy_cancel.cancelled_owned()));
    let admin_cancel = cancel.clone();
    let readiness = {
        let (metadata, storage) = (metadata.clone(), storage.ready_checker());
        strata_http::observe::Readiness::new(clock.clone(), move || {
            let (metadata, storage) = (metadata.clone(), storage.clone());
            async move {
                let mut checks = vec![metadata.ready_check()];
                checks.extend(storage.checks(false).await);
                checks
            }
        })
    };
    let admin = routers
        .admin
        .merge(billing.admin)
        .merge(strata_http::observe::metrics_route(scrape_token))
        .merge(strata_http::observe::readyz_route(readiness));
    let admin_task =
        tokio::spawn(strata_proxy::api::serve(admin, admin_listener, limits, admin_cancel.cancelled_owned()));
    shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    let _ = proxy_task.await;
    let _ = admin_task.await;
    storage.shutdown().await;
    let _ = metadata_task.await;
    metadata.shutdown().await;
    Ok(())
}
