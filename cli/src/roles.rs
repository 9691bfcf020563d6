//! Cluster roles, each a process of its own started from a config file (TOML), the same file a
//! real deployment uses: `strata metadata|storage|proxy --config FILE`. A metadata member's file:
//!
//! ```toml
//! node_id = 1
//! data_dir = "/var/lib/strata/metadata-1"
//! listen = "127.0.0.1:9401"        # the metadata API and the Raft transport
//! initialize = true                # on exactly one member, for the quorum's first start
//!
//! [members]                        # every member's advertised endpoint, this one's included
//! 1 = "https://127.0.0.1:9401"
//! 2 = "https://127.0.0.1:9402"
//! 3 = "https://127.0.0.1:9403"
//!
//! [tls]                            # every role's file has one: the internal plane is mTLS only
//! ca = "/etc/strata/tls/ca.pem"
//! cert = "/etc/strata/tls/metadata-1.pem"   # names spiffe://strata/metadata/1
//! key = "/etc/strata/tls/metadata-1.key"
//! ```
//!
//! `strata certs` makes a CA and such certificates (see `docs/security.md`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use strata_common::format::{FormatGate, FormatGeneration, NEWEST_GENERATION};
use strata_common::{Clock, Random, SystemClock};
use strata_http::observe::Readiness;
use strata_metadata::sealing::{KekSource, Keks};
use strata_metadata::server::MemberSettings;
use strata_metadata::{MetadataNode, backup};
use strata_proxy::ProxySettings;
use strata_proxy::auth::{JwtIssuer, JwtKey, JwtVerifier};
use strata_proxy::quotas::ConcurrencyLimits;
use strata_storage::shard::ShardLogSettings;
use strata_storage::{ObjectStoreSettings, StorageNode, StorageSettings};
use strata_telemetry::ReadyCheck;
use strata_tls::{Credentials, TlsFiles};
use tokio_util::sync::CancellationToken;

use crate::dev::shutdown_signal;

#[derive(Args, Debug)]
pub(crate) struct RoleArgs {
    /// The role's config file (TOML).
    #[arg(long)]
    config: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct MetadataArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// Before starting, seed this member's empty data directory from the newest copy of the
    /// quorum's snapshots in `[object_store]` (disaster recovery after every member's disk is
    /// gone; catalog changes after that copy are lost). Start the other members empty, without
    /// `initialize`.
    #[arg(long)]
    restore_from_bucket: bool,
}

/// A metadata member's config file. With `[object_store]`, the leader copies the quorum's
/// snapshots there every `backup_interval_s` (under `metadata/snapshots/`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataConfig {
    node_id: u64,
    data_dir: PathBuf,
    listen: SocketAddr,
    #[serde(default)]
    initialize: bool,
    /// Member id (as text: TOML keys are strings) -> advertised endpoint.
    members: BTreeMap<String, String>,
    object_store: Option<ObjectStoreSettings>,
    #[serde(default = "default_backup_interval_s")]
    backup_interval_s: u64,
    /// The newest format generation this member reads (see docs/formats.md): this release's
    /// unless set lower, which makes it behave as an older release would (rolling-upgrade tests).
    #[serde(default = "newest_generation")]
    format_generation_max: FormatGeneration,
    tls: TlsFiles,
    /// The KEKs that seal SigV4 secrets at rest, the sealing one first (docs/security.md).
    #[serde(default)]
    kek: Vec<KekSource>,
    /// An HTTP listener for `/metrics` and `/healthz`, and the scrape token's file (see
    /// [`serve_observed`]).
    admin_listen: Option<SocketAddr>,
    metrics_token_file: Option<PathBuf>,
}

/// The token Prometheus presents to scrape `/metrics`, from a role's `metrics_token_file`
/// (`None` without one: the role then serves no `/metrics`).
fn scrape_token(file: Option<&Path>) -> anyhow::Result<Option<strata_telemetry::ScrapeToken>> {
    file.map(strata_http::observe::read_scrape_token)
        .transpose()
        .map_err(|e| anyhow::anyhow!("metrics_token_file: {e}"))
}

/// For a role without an admin API (metadata members, storage nodes): serves `/metrics`,
/// `/healthz` and `/readyz` (by `readiness`) on `admin_listen` until `cancel`. Both settings go
/// together: `/metrics` is never open, and a token without a listener would be a mistake left
/// unnoticed.
async fn serve_observed(
    admin_listen: Option<SocketAddr>,
    metrics_token_file: Option<&Path>,
    readiness: Readiness,
    cancel: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = admin_listen else {
        if metrics_token_file.is_some() {
            anyhow::bail!("metrics_token_file needs admin_listen, the address /metrics is served on");
        }
        return Ok(None);
    };
    let token =
        scrape_token(metrics_token_file)?.context("admin_listen needs metrics_token_file: /metrics is never open")?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let router = strata_http::observe::admin_router(token, readiness);
    let limits = strata_proxy::ServerLimits::default();
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = strata_proxy::api::serve(router, listener, limits, cancel.cancelled_owned()).await {
            tracing::error!(error = %e, "the admin listener stopped");
        }
    })))
}

fn newest_generation() -> FormatGeneration {
    NEWEST_GENERATION
}

fn default_backup_interval_s() -> u64 {
    60
}

/// A role's credentials on the internal plane, from its config's `[tls]` files.
fn load_tls(files: &TlsFiles) -> anyhow::Result<Credentials> {
    Credentials::load(files.clone()).context("loading the [tls] credentials")
}

fn read_config<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid config file", path.display()))
}

/// Runs one metadata member until SIGTERM or Ctrl-C.
pub(crate) async fn metadata(args: MetadataArgs) -> anyhow::Result<()> {
    crate::logs::init("metadata");
    let config: MetadataConfig = read_config(&args.role.config)?;
    let mut members = BTreeMap::new();
    for (id, endpoint) in config.members {
        let id: u64 = id.parse().with_context(|| format!("member id '{id}' is not a number"))?;
        members.insert(id, endpoint);
    }
    let settings = MemberSettings { node_id: config.node_id, members, initialize: config.initialize };
    strata_wal::private_fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    strata_wal::private_fs::restrict_dir(&config.data_dir)
        .with_context(|| format!("restricting {} to its owner", config.data_dir.display()))?;
    if args.restore_from_bucket {
        let store = config.object_store.as_ref().context("--restore-from-bucket needs [object_store] in the config")?;
        let (key, index) = backup::restore_newest(store.build()?.as_ref(), &config.data_dir, &settings)
            .await
            .context("restoring metadata from the bucket")?;
        tracing::info!(key, index, "metadata member seeded from a snapshot copy");
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let format = FormatGate::new(config.format_generation_max);
    let tls = load_tls(&config.tls)?;
    let keks = Keks::load(&config.kek).context("loading the [[kek]] keys")?;
    if keks.is_empty() {
        tracing::warn!("no [[kek]] configured: SigV4 secrets are stored in clear");
    }
    let node = MetadataNode::open_member(&config.data_dir, &settings, clock.clone(), format, tls)
        .await
        .context("opening metadata")?;
    node.use_keks(keks);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(node = config.node_id, listen = %config.listen, "metadata member running");
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(node.clone().serve_with_listener(listener, cancel.clone().cancelled_owned()));
    let readiness = {
        let node = node.clone();
        Readiness::new(clock.clone(), move || {
            let check = node.ready_check();
            async move { vec![check] }
        })
    };
    let admin =
        serve_observed(config.admin_listen, config.metrics_token_file.as_deref(), readiness, cancel.clone()).await?;
    let backups = match &config.object_store {
        Some(store) => {
            let interval = Duration::from_secs(config.backup_interval_s.max(1));
            Some(tokio::spawn(backup::run(node.clone(), store.build()?, interval, cancel.clone())))
        }
        None => None,
    };
    shutdown_signal().await;
    cancel.cancel();
    let _ = serving.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Some(backups) = backups {
        let _ = backups.await;
    }
    node.shutdown().await;
    Ok(())
}

/// A storage node's config file.
///
/// ```toml
/// node_id = "storage-1"
/// data_dir = "/var/lib/strata/storage-1"
/// listen = "127.0.0.1:9501"          # storage gRPC and the shards' Raft transport
/// metadata = "https://127.0.0.1:9401,https://127.0.0.1:9402,https://127.0.0.1:9403"
/// zone = "zone-a"
/// replication_factor = 3
/// initial_shards = 4                 # used by the registration that creates the shards
///
/// [object_store]                     # or: kind = "local", dir = "..."
/// kind = "s3"
/// endpoint = "http://127.0.0.1:3900"
/// bucket = "strata"
/// region = "garage"
/// access_key_id = "..."
/// secret_access_key = "..."
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageConfig {
    node_id: String,
    data_dir: PathBuf,
    listen: SocketAddr,
    metadata: String,
    #[serde(default)]
    zone: String,
    #[serde(default = "one")]
    replication_factor: u32,
    #[serde(default = "one")]
    initial_shards: u32,
    object_store: ObjectStoreSettings,
    #[serde(default = "default_segment_bytes")]
    segment_bytes: u64,
    #[serde(default = "default_tier_interval_ms")]
    tier_interval_ms: u64,
    /// Sealed segments kept on local disk after tiering, newest first, for reads (default
    /// 1 GiB per shard, never more than half the room above the disk reserve, and
    /// none when that room is under 1 GiB).
    #[serde(default = "default_local_retention_bytes")]
    local_retention_bytes: u64,
    /// How long a sealed segment kept for reads waits before it is uploaded (default 60 s):
    /// what consumers delete meanwhile is never uploaded.
    #[serde(default = "default_upload_after_ms")]
    upload_after_ms: u64,
    /// A shard idle this long (no call, nothing due) hibernates: its Raft heartbeats and timers
    /// stop until a call wakes it (default 300 s; 0: never).
    #[serde(default = "default_hibernate_after_s")]
    hibernate_after_s: u64,
    #[serde(default = "default_cache_memory_mib")]
    cache_memory_mib: usize,
    #[serde(default = "default_cache_disk_mib")]
    cache_disk_mib: usize,
    /// As a metadata member's.
    #[serde(default = "newest_generation")]
    format_generation_max: FormatGeneration,
    /// Free space kept on the data directory's disk (default 256 MiB): below it, new messages
    /// and queues are refused until space returns.
    #[serde(default = "default_disk_reserve_bytes")]
    disk_reserve_bytes: u64,
    tls: TlsFiles,
    /// An HTTP listener for `/metrics` and `/healthz`, and the scrape token's file (see
    /// [`serve_observed`]).
    admin_listen: Option<SocketAddr>,
    metrics_token_file: Option<PathBuf>,
}

fn default_disk_reserve_bytes() -> u64 {
    strata_storage::disk::DISK_RESERVE_BYTES_DEFAULT
}

fn one() -> u32 {
    1
}
fn default_segment_bytes() -> u64 {
    ShardLogSettings::default().segment_size_bytes_max
}
fn default_local_retention_bytes() -> u64 {
    ShardLogSettings::default().local_retention_bytes
}
fn default_upload_after_ms() -> u64 {
    ShardLogSettings::default().upload_after.as_millis() as u64
}
fn default_hibernate_after_s() -> u64 {
    ShardLogSettings::default().hibernate_after.as_secs()
}
fn default_tier_interval_ms() -> u64 {
    5_000
}
fn default_cache_memory_mib() -> usize {
    64
}
fn default_cache_disk_mib() -> usize {
    256
}

/// Runs one storage node until SIGTERM or Ctrl-C.
pub(crate) async fn storage(args: RoleArgs) -> anyhow::Result<()> {
    crate::logs::init("storage");
    let config: StorageConfig = read_config(&args.config)?;
    let cancel = CancellationToken::new();
    // The admin listener serves while the node starts (its `/readyz` says so meanwhile).
    let checker = Arc::new(std::sync::OnceLock::<strata_storage::ReadyChecker>::new());
    let readiness = {
        let checker = checker.clone();
        Readiness::new(Arc::new(SystemClock), move || {
            let checker = checker.get().cloned();
            async move {
                match checker {
                    Some(checker) => checker.checks(true).await,
                    None => vec![ReadyCheck::new("start", Some("the storage node is starting".to_owned()))],
                }
            }
        })
    };
    let admin =
        serve_observed(config.admin_listen, config.metrics_token_file.as_deref(), readiness, cancel.clone()).await?;
    let settings = StorageSettings {
        node_id: config.node_id,
        data_dir: config.data_dir,
        listen: config.listen,
        metadata_endpoint: config.metadata,
        object_store: config.object_store,
        initial_shards: config.initial_shards,
        log: ShardLogSettings {
            segment_size_bytes_max: config.segment_bytes,
            local_retention_bytes: config.local_retention_bytes,
            upload_after: Duration::from_millis(config.upload_after_ms),
            hibernate_after: Duration::from_secs(config.hibernate_after_s),
            ..ShardLogSettings::default()
        },
        tier_interval: Duration::from_millis(config.tier_interval_ms),
        expire_interval: Duration::from_secs(1),
        cache_memory_bytes: config.cache_memory_mib * 1024 * 1024,
        cache_disk_bytes: config.cache_disk_mib * 1024 * 1024,
        replication_factor: config.replication_factor,
        zone: config.zone,
        format_generation_max: config.format_generation_max,
        tls: load_tls(&config.tls)?,
        disk_reserve_bytes: config.disk_reserve_bytes,
    };
    let node =
        StorageNode::start(settings, Arc::new(SystemClock), Random::os()).await.context("starting the storage node")?;
    let _ = checker.set(node.ready_checker());
    tracing::info!(address = %node.address, shards = node.shard_ids().len(), "storage node running");
    shutdown_signal().await;
    cancel.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    node.shutdown().await;
    Ok(())
}

/// A proxy's config file. Tokens are HS256: tenants' signed with `keys`, operators' (the admin
/// API takes only tokens of `admin_audience`) with `admin_keys`, which share no secret with
/// `keys`. A token may live at most `token_lifetime_s_max` (`admin_token_lifetime_s_max`),
/// a day unless set.
///
/// ```toml
/// listen = "127.0.0.1:9324"
/// admin_listen = "127.0.0.1:9325"
/// metadata = "https://127.0.0.1:9401,https://127.0.0.1:9402,https://127.0.0.1:9403"
/// issuer = "strata-cluster"
/// audience = "strata"
/// admin_audience = "strata-admin"
///
/// [[keys]]
/// kid = "k1"
/// secret_hex = "..."
///
/// [[admin_keys]]
/// kid = "a1"
/// secret_hex = "..."
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyConfig {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    metadata: String,
    issuer: String,
    audience: String,
    admin_audience: String,
    keys: Vec<KeyConfig>,
    admin_keys: Vec<KeyConfig>,
    #[serde(default = "day_s")]
    token_lifetime_s_max: u64,
    #[serde(default = "day_s")]
    admin_token_lifetime_s_max: u64,
    /// Meter every accepted call for billing (default on; off only to measure its cost).
    #[serde(default = "yes")]
    metering: bool,
    /// How many proxies serve the cluster behind one balancer: each enforces 1/N of every
    /// tenant's rate limits (default 1).
    #[serde(default = "one")]
    fleet_proxies: u32,
    /// Calls of one tenant this proxy serves at once, long polls included (default 1,000).
    #[serde(default = "tenant_calls_max")]
    tenant_calls_under_way_max: u32,
    /// Receives (long polls) of one tenant this proxy serves at once (default 200).
    #[serde(default = "tenant_receives_max")]
    tenant_receives_under_way_max: u32,
    tls: TlsFiles,
    /// The token Prometheus presents to scrape `/metrics` on the admin listener (no `/metrics`
    /// without it).
    metrics_token_file: Option<PathBuf>,
}

fn tenant_calls_max() -> u32 {
    ConcurrencyLimits::default().calls_max
}

fn tenant_receives_max() -> u32 {
    ConcurrencyLimits::default().receives_max
}

fn yes() -> bool {
    true
}

fn day_s() -> u64 {
    strata_proxy::auth::TOKEN_LIFETIME_S_MAX_DEFAULT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    kid: String,
    secret_hex: String,
}

/// The HMAC secrets of `keys`.
fn secrets(keys: &[KeyConfig], table: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    if keys.is_empty() {
        anyhow::bail!("the config needs at least one [[{table}]] entry to verify tokens");
    }
    keys.iter()
        .map(|key| {
            let secret = hex::decode(&key.secret_hex)
                .with_context(|| format!("{table} '{}': secret_hex is not hex", key.kid))?;
            Ok((key.kid.clone(), secret))
        })
        .collect()
}

/// What a role's tokens are checked against (the same settings in the proxy's and billing's
/// config files).
struct TokenSettings<'a> {
    issuer: &'a str,
    audience: &'a str,
    admin_audience: &'a str,
    keys: &'a [KeyConfig],
    admin_keys: &'a [KeyConfig],
    lifetime_s_max: u64,
    admin_lifetime_s_max: u64,
}

impl TokenSettings<'_> {
    /// The tenant API's verifier and the admin API's: each takes its own audience only, signed
    /// with its own keys (a secret in both lists is refused), and refuses a token naming both.
    fn verifiers(&self) -> anyhow::Result<(JwtVerifier, JwtVerifier)> {
        let (tenant, admin) = (secrets(self.keys, "keys")?, secrets(self.admin_keys, "admin_keys")?);
        if tenant.iter().any(|(_, secret)| admin.iter().any(|(_, a)| a == secret)) {
            anyhow::bail!("a secret is in both [[keys]] and [[admin_keys]]: operators' tokens need keys of their own");
        }
        if self.audience == self.admin_audience {
            anyhow::bail!("audience and admin_audience must differ");
        }
        let verifier = |audience: &str, other: &str, keys: &[(String, Vec<u8>)], lifetime_s_max: u64| {
            JwtVerifier::new(
                self.issuer,
                audience,
                keys.iter().map(|(kid, secret)| JwtKey::hmac(kid, secret)).collect(),
            )
            .with_other_audiences([other])
            .with_lifetime_s_max(lifetime_s_max)
        };
        Ok((
            verifier(self.audience, self.admin_audience, &tenant, self.lifetime_s_max),
            verifier(self.admin_audience, self.audience, &admin, self.admin_lifetime_s_max),
        ))
    }
}

/// Runs one proxy until SIGTERM or Ctrl-C.
pub(crate) async fn proxy(args: RoleArgs) -> anyhow::Result<()> {
    crate::logs::init("proxy");
    let config: ProxyConfig = read_config(&args.config)?;
    let (verifier, admin_verifier) = TokenSettings {
        issuer: &config.issuer,
        audience: &config.audience,
        admin_audience: &config.admin_audience,
        keys: &config.keys,
        admin_keys: &config.admin_keys,
        lifetime_s_max: config.token_lifetime_s_max,
        admin_lifetime_s_max: config.admin_token_lifetime_s_max,
    }
    .verifiers()?;
    let routers = strata_proxy::router(ProxySettings {
        metadata_endpoint: config.metadata.clone(),
        tls: load_tls(&config.tls)?,
        verifier,
        co_located_storage: None,
        clock: Arc::new(SystemClock),
        random: Random::os(),
        admin_verifier,
        metering: config.metering,
        fleet_proxies: config.fleet_proxies,
        concurrency: ConcurrencyLimits {
            calls_max: config.tenant_calls_under_way_max,
            receives_max: config.tenant_receives_under_way_max,
        },
    })?;
    let admin = routers.admin.merge(strata_http::observe::readyz_route(routers.readiness));
    let admin = match scrape_token(config.metrics_token_file.as_deref())? {
        Some(token) => admin.merge(strata_http::observe::metrics_route(token)),
        None => admin,
    };
    serve_until_signal("proxy", (routers.api, config.listen), (admin, config.admin_listen), CancellationToken::new())
        .await
}

/// Serves a role's tenant and admin routers on their listeners until SIGTERM or Ctrl-C, then
/// cancels `cancel` (the role's background work too) and waits for the servers to stop.
async fn serve_until_signal(
    role: &str,
    (api, listen): (axum::Router, SocketAddr),
    (admin, admin_listen): (axum::Router, SocketAddr),
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let api_listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let admin_listener = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on {admin_listen}"))?;
    tracing::info!(%listen, admin = %admin_listen, "{role} running");
    let limits = strata_proxy::ServerLimits::default();
    let api_task = tokio::spawn(strata_proxy::api::serve(api, api_listener, limits, cancel.clone().cancelled_owned()));
    let admin_task =
        tokio::spawn(strata_proxy::api::serve(admin, admin_listener, limits, cancel.clone().cancelled_owned()));
    shutdown_signal().await;
    cancel.cancel();
    let _ = api_task.await;
    let _ = admin_task.await;
    Ok(())
}

/// A billing service's config file: where it listens, the metadata quorum, its database, and
/// the same token settings as the proxies (tenants read their own usage with their tokens).
///
/// ```toml
/// listen = "127.0.0.1:9330"
/// admin_listen = "127.0.0.1:9331"
/// metadata = "https://127.0.0.1:9401,https://127.0.0.1:9402,https://127.0.0.1:9403"
/// database = "postgres://strata:secret@127.0.0.1:5432/strata_billing"
/// issuer = "strata"
/// audience = "strata"
/// admin_audience = "strata-admin"
/// [[keys]]
/// kid = "k1"
/// secret_hex = "..."
/// [[admin_keys]]
/// kid = "a1"
/// secret_hex = "..."
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BillingConfig {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    metadata: String,
    database: String,
    issuer: String,
    audience: String,
    admin_audience: String,
    keys: Vec<KeyConfig>,
    admin_keys: Vec<KeyConfig>,
    #[serde(default = "day_s")]
    token_lifetime_s_max: u64,
    #[serde(default = "day_s")]
    admin_token_lifetime_s_max: u64,
    tls: TlsFiles,
    /// As a proxy's.
    metrics_token_file: Option<PathBuf>,
}

/// Runs the billing service until SIGTERM or Ctrl-C: counts the metering queue, enforces
/// budgets, and serves usage and invoices (one instance per cluster; a second one is safe, as
/// counting is idempotent, but does the work twice).
pub(crate) async fn billing(args: RoleArgs) -> anyhow::Result<()> {
    crate::logs::init("billing");
    let config: BillingConfig = read_config(&args.config)?;
    let (verifier, admin_verifier) = TokenSettings {
        issuer: &config.issuer,
        audience: &config.audience,
        admin_audience: &config.admin_audience,
        keys: &config.keys,
        admin_keys: &config.admin_keys,
        lifetime_s_max: config.token_lifetime_s_max,
        admin_lifetime_s_max: config.admin_token_lifetime_s_max,
    }
    .verifiers()?;
    let cancel = CancellationToken::new();
    let routers = strata_billing::service::start(
        strata_billing::service::BillingSettings {
            database_url: config.database.clone(),
            metadata_endpoint: config.metadata.clone(),
            tls: load_tls(&config.tls)?,
            verifier,
            admin_verifier,
            clock: Arc::new(SystemClock),
            random: Random::os(),
        },
        cancel.clone(),
    )
    .await?;
    let not_found = || async {
        let kind = strata_common::error::ErrorKind::UnknownRoute;
        strata_proxy::error::ApiError(strata_common::error::StrataError::new(kind, "no such billing route"))
    };
    let json_errors = axum::middleware::map_response(strata_proxy::error::json_errors);
    let api = routers.api.fallback(not_found).layer(json_errors.clone());
    let mut admin = routers
        .admin
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .merge(strata_http::observe::readyz_route(routers.readiness));
    if let Some(token) = scrape_token(config.metrics_token_file.as_deref())? {
        admin = admin.merge(strata_http::observe::metrics_route(token));
    }
    let admin = admin.fallback(not_found).layer(json_errors);
    serve_until_signal("billing", (api, config.listen), (admin, config.admin_listen), cancel).await
}

#[derive(Args, Debug)]
pub(crate) struct CertsArgs {
    /// The CA's directory: its key and certificate are made there on first use (0600), and
    /// certificates are written there too unless `--out` says otherwise.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The role the certificate names: proxy, storage, metadata, billing, autoscaler, operator.
    #[arg(long)]
    role: strata_tls::Role,
    /// The process's name among its role (a storage node's id, a metadata member's id...).
    #[arg(long)]
    name: String,
    /// A host name or IP address the process is reached at besides loopback (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Where to write `<role>-<name>.pem` and `.key` (default: the CA's directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Issues a certificate of the local CA (making the CA first if needed) and prints the `[tls]`
/// section that names it. Run it again to rotate: processes reload changed files by themselves.
pub(crate) fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let now_ms = SystemClock.now_ms();
    let ca = strata_tls::pki::LocalCa::open_or_create(&args.ca_dir, now_ms)?;
    let identity = strata_tls::Identity::new(args.role, &args.name)?;
    let out = args.out.unwrap_or_else(|| args.ca_dir.clone());
    let files = ca.issue(&identity, &args.hosts, &out, &format!("{}-{}", args.role, args.name), now_ms)?;
    println!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    /// A proxy's config file: its issuer, an audience and the first key of it sign the token.
    #[arg(long)]
    config: PathBuf,
    /// The tenant (or operator) the token is for.
    #[arg(long)]
    tenant: String,
    /// For the admin API (the config's admin audience) instead of the tenant API.
    #[arg(long)]
    admin: bool,
    /// Lifetime in seconds (at most what the config accepts: a day unless set).
    #[arg(long, default_value_t = 24 * 3600)]
    ttl_seconds: u64,
}

/// Prints a token the proxies of `config` accept (operators of a cluster mint tokens this way).
pub(crate) fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config: ProxyConfig = read_config(&args.config)?;
    let (keys, table, audience, lifetime_s_max) = if args.admin {
        (&config.admin_keys, "admin_keys", &config.admin_audience, config.admin_token_lifetime_s_max)
    } else {
        (&config.keys, "keys", &config.audience, config.token_lifetime_s_max)
    };
    if args.ttl_seconds > lifetime_s_max {
        anyhow::bail!("--ttl-seconds {} is longer than the {lifetime_s_max} s the config accepts", args.ttl_seconds);
    }
    let (kid, secret) = secrets(keys, table)?.swap_remove(0);
    let issuer = JwtIssuer::hmac(&kid, &secret, &config.issuer, audience);
    println!("{}", issuer.mint(&args.tenant, args.ttl_seconds, SystemClock.now_ms() / 1000)?);
    Ok(())
}
