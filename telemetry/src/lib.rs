//! What every role shows of itself: the metrics of `/metrics` (Prometheus text format 0.0.4).
//!
//! # What it owns
//!
//! - The catalog of metric families ([`api`], [`storage`], [`raft`], [`tier`], [`cache`],
//!   [`billing`]), one process-wide set each. A process serves whatever roles run
//!   in it (`strata dev` all of them), and Prometheus scrapes one target per process, so one set
//!   per process is what a scrape wants. Code on the hot path records into them directly: an
//!   atomic add, or a hash lookup and an atomic add for a labelled family.
//! - [`process`]: CPU, resident memory and open file descriptors of this process, read at scrape.
//! - [`render`]: the scrape's body; [`ScrapeToken`]: who may scrape.
//!
//! # What it guarantees
//!
//! No label takes a tenant's or a queue's name, and every label value comes from a fixed list
//! (actions, status codes, roles): the series a scrape returns stay bounded however many tenants
//! and queues there are. Per-queue figures are served by the queue metrics API instead; the
//! busiest tenants' calls are an opt-in ([`top_tenants`]), bounded by the N asked for.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::{Registry, Unit};
use sha2::{Digest, Sha256};

pub mod process;
mod ready;
pub use ready::ReadyCheck;
mod tenant;
pub mod top_tenants;
pub mod trace;
pub use tenant::{QueueDepthSample, render_queue_depths};

/// The `Content-Type` of [`render`]'s body.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Durations of calls that may long poll: 1 ms to about 33 s.
fn call_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Durations of disk and log work: 50 µs to about 1.6 s.
fn io_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Counts of things gathered into one batch: 1 to 1,024.
fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Durations of background transfers: 10 ms to about 80 s.
fn transfer_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// An API call's labels: which API, which action, which HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `native` or `sqs`.
    pub api: &'static str,
    /// The action (`SendMessage`, `ReceiveMessage`...), or `unknown`.
    pub action: &'static str,
    pub code: u16,
}

/// Which disk of a process: `data` (a storage node's data directory).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiskLabel {
    pub disk: &'static str,
}

/// An API call's labels without its status (for the latency histogram).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub api: &'static str,
    pub action: &'static str,
}

/// One label naming a reason, a kind or a result, from a fixed list.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Which kind of Raft group: `shard` (a storage shard) or `metadata` (the metadata quorum).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: &'static str,
}

/// The front door: calls by API, action and status, their latency, and what was turned away.
#[derive(Debug)]
pub struct ApiMetrics {
    pub requests: Family<CallLabels, Counter>,
    pub duration: Family<ActionLabels, Histogram, fn() -> Histogram>,
    /// Calls refused by admission: `rate`, `bytes`, `calls`, `receives`, `quota`, `budget`.
    pub throttled: Family<ReasonLabel, Counter>,
    /// Calls whose credentials were missing or wrong, by API.
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub connections_open: Gauge,
    pub long_polls_waiting: Gauge,
}

/// The write path of a storage node: its WAL's fsyncs and group commits.
#[derive(Debug)]
pub struct StorageMetrics {
    pub wal_fsync_seconds: Histogram,
    pub wal_written_bytes: Counter,
    /// WAL appends made durable by one fsync.
    pub group_commit_appends: Histogram,
    /// Free space of the data directory's disk above its reserve (a family, so that processes
    /// without a data disk show no series rather than a zero).
    pub disk_free_bytes: Family<DiskLabel, Gauge>,
}

/// Raft groups (shards and the metadata quorum), by kind of group.
#[derive(Debug)]
pub struct RaftMetrics {
    /// A log entry from its proposal to its answer (appended, replicated, applied).
    pub commit_seconds: Family<GroupLabel, Histogram, fn() -> Histogram>,
    /// Entries committed but not applied yet, summed over this process's groups.
    pub apply_lag_entries: Family<GroupLabel, Gauge>,
    pub snapshot_build_seconds: Family<GroupLabel, Histogram, fn() -> Histogram>,
    pub leader_changes: Family<GroupLabel, Counter>,
    /// Groups this process leads.
    pub groups_led: Family<GroupLabel, Gauge>,
    /// Groups this process is a member of.
    pub groups: Family<GroupLabel, Gauge>,
    /// Groups that know no leader now: for `metadata`, the quorum is lost or electing.
    pub groups_without_leader: Family<GroupLabel, Gauge>,
    /// 1 while this member reaches a majority of its group, else 0 (metadata members only).
    pub quorum_reachable: Family<GroupLabel, Gauge>,
}

/// Tiering of sealed segments to the bucket.
#[derive(Debug)]
pub struct TierMetrics {
    /// Sealed segments' bytes not in the bucket yet.
    pub pending_bytes: Gauge,
    pub upload_seconds: Histogram,
    pub uploaded_bytes: Counter,
    pub upload_failures: Counter,
}

/// The block cache in front of the bucket.
#[derive(Debug)]
pub struct CacheMetrics {
    /// Block reads by `hit` or `miss`.
    pub requests: Family<ReasonLabel, Counter>,
    /// The `hit` and `miss` series of `requests`, resolved once so reads skip the label lookup.
    pub hits: Counter,
    pub misses: Counter,
}

/// Billing's progress through the metering records.
#[derive(Debug)]
pub struct BillingMetrics {
    /// Metering records counted (new ones; a record seen again is not).
    pub counted_records: Counter,
    /// When billing last read every live node's metering records in one pass, or started
    /// (Unix seconds).
    pub last_pass_unix_seconds: Gauge,
}

static API: LazyLock<ApiMetrics> = LazyLock::new(|| ApiMetrics {
    requests: Family::default(),
    duration: Family::new_with_constructor(call_seconds),
    throttled: Family::default(),
    auth_failures: Family::default(),
    connections_open: Gauge::default(),
    long_polls_waiting: Gauge::default(),
});

static STORAGE: LazyLock<StorageMetrics> = LazyLock::new(|| StorageMetrics {
    wal_fsync_seconds: io_seconds(),
    wal_written_bytes: Counter::default(),
    group_commit_appends: batch_sizes(),
    disk_free_bytes: Family::default(),
});

static RAFT: LazyLock<RaftMetrics> = LazyLock::new(|| RaftMetrics {
    commit_seconds: Family::new_with_constructor(io_seconds),
    apply_lag_entries: Family::default(),
    snapshot_build_seconds: Family::new_with_constructor(transfer_seconds),
    leader_changes: Family::default(),
    groups_led: Family::default(),
    groups: Family::default(),
    groups_without_leader: Family::default(),
    quorum_reachable: Family::default(),
});

static TIER: LazyLock<TierMetrics> = LazyLock::new(|| TierMetrics {
    pending_bytes: Gauge::default(),
    upload_seconds: transfer_seconds(),
    uploaded_bytes: Counter::default(),
    upload_failures: Counter::default(),
});

static CACHE: LazyLock<CacheMetrics> = LazyLock::new(|| {
    let requests: Family<ReasonLabel, Counter> = Family::default();
    let hits = requests.get_or_create_owned(&ReasonLabel { reason: "hit" });
    let misses = requests.get_or_create_owned(&ReasonLabel { reason: "miss" });
    CacheMetrics { requests, hits, misses }
});

static BILLING: LazyLock<BillingMetrics> =
    LazyLock::new(|| BillingMetrics { counted_records: Counter::default(), last_pass_unix_seconds: Gauge::default() });

pub fn api() -> &'static ApiMetrics {
    &API
}
pub fn storage() -> &'static StorageMetrics {
    &STORAGE
}
pub fn raft() -> &'static RaftMetrics {
    &RAFT
}
pub fn tier() -> &'static TierMetrics {
    &TIER
}
pub fn cache() -> &'static CacheMetrics {
    &CACHE
}
pub fn billing() -> &'static BillingMetrics {
    &BILLING
}

/// The registry and the names of the families in it (a family without series yet shows nothing
/// in a scrape, so the names are kept for checking dashboards and alert rules against).
struct Families {
    registry: Registry,
    names: Vec<String>,
}

impl Families {
    fn register(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.names.push(format!("strata_{name}"));
        self.registry.register(name, help, metric);
    }

    fn register_with_unit(
        &mut self,
        name: &str,
        help: &str,
        unit: Unit,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names.push(format!("strata_{name}_{}", unit.as_str()));
        self.registry.register_with_unit(name, help, unit, metric);
    }
}

/// Every family, registered once under the `strata_` prefix (metrics are shared handles: the
/// registry holds clones of the statics above).
static REGISTRY: LazyLock<Families> = LazyLock::new(|| {
    let mut registry = Families { registry: Registry::with_prefix("strata"), names: Vec::new() };
    let a = api();
    registry.register("api_requests", "API calls answered, by API, action and HTTP status", a.requests.clone());
    registry.register_with_unit(
        "api_request_duration",
        "Time from a call's arrival to its answer (long polls included)",
        Unit::Seconds,
        a.duration.clone(),
    );
    registry.register("api_throttled", "Calls refused by admission control, by reason", a.throttled.clone());
    registry.register("api_auth_failures", "Calls refused for missing or wrong credentials", a.auth_failures.clone());
    registry.register("api_connections_open", "Client connections open", a.connections_open.clone());
    registry.register("api_long_polls_waiting", "Receives waiting for a message", a.long_polls_waiting.clone());

    let s = storage();
    registry.register_with_unit("wal_fsync_duration", "WAL fsyncs", Unit::Seconds, s.wal_fsync_seconds.clone());
    registry.register_with_unit("wal_written", "Bytes written to the WAL", Unit::Bytes, s.wal_written_bytes.clone());
    registry.register(
        "wal_group_commit_appends",
        "WAL appends (each of one or more log entries) made durable by one fsync",
        s.group_commit_appends.clone(),
    );
    registry.register_with_unit(
        "disk_free",
        "Free space of the storage data disk above its reserve",
        Unit::Bytes,
        s.disk_free_bytes.clone(),
    );

    let r = raft();
    registry.register_with_unit(
        "raft_commit_duration",
        "A log entry from its proposal to its answer, by kind of group",
        Unit::Seconds,
        r.commit_seconds.clone(),
    );
    registry.register(
        "raft_apply_lag_entries",
        "Entries committed but not yet applied, summed over this process's groups",
        r.apply_lag_entries.clone(),
    );
    registry.register_with_unit(
        "raft_snapshot_build_duration",
        "Building and storing a snapshot",
        Unit::Seconds,
        r.snapshot_build_seconds.clone(),
    );
    registry.register(
        "raft_leader_changes",
        "Leaders newly known at a scrape (several elections between two scrapes count once)",
        r.leader_changes.clone(),
    );
    registry.register("raft_groups_led", "Raft groups this process leads", r.groups_led.clone());
    registry.register("raft_groups", "Raft groups this process is a member of", r.groups.clone());
    registry.register(
        "raft_groups_without_leader",
        "Raft groups that know no leader (metadata: the quorum is lost or electing)",
        r.groups_without_leader.clone(),
    );
    registry.register(
        "raft_quorum_reachable",
        "1 while this member reaches a majority of its group (leads with a recent quorum, or follows a leader), else 0",
        r.quorum_reachable.clone(),
    );

    let t = tier();
    registry.register_with_unit(
        "tier_pending",
        "Bytes of sealed segments not yet in the bucket",
        Unit::Bytes,
        t.pending_bytes.clone(),
    );
    registry.register_with_unit("tier_upload_duration", "Segment uploads", Unit::Seconds, t.upload_seconds.clone());
    registry.register_with_unit("tier_uploaded", "Bytes uploaded", Unit::Bytes, t.uploaded_bytes.clone());
    registry.register("tier_upload_failures", "Segment uploads that failed", t.upload_failures.clone());

    registry.register("cache_requests", "Block cache lookups, by result", cache().requests.clone());

    let b = billing();
    registry.register("billing_counted_records", "Metering records counted", b.counted_records.clone());
    registry.register_with_unit(
        "billing_last_pass_timestamp",
        "When billing last read every live storage node's metering records in one pass, or started (Unix time)",
        Unit::Seconds,
        b.last_pass_unix_seconds.clone(),
    );

    registry.registry.register_collector(Box::new(process::ProcessCollector));
    registry.names.extend(process::FAMILY_NAMES.iter().map(|n| format!("strata_{n}")));
    registry.registry.register_collector(Box::new(top_tenants::TopTenantsCollector));
    registry.names.extend(top_tenants::FAMILY_NAMES.iter().map(|n| format!("strata_{n}")));
    registry
});

/// One unit of a gauge held while this lives (a waiting long poll, say): added when made,
/// taken back when dropped, whichever way the holder ends.
#[derive(Debug)]
pub struct Held(&'static Gauge);

impl Held {
    pub fn new(gauge: &'static Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The real time an operation took, for a histogram. Metrics only observe: no decision is ever
/// taken on a timer's reading, so it reads the real clock instead of the `Clock` seam.
#[derive(Debug, Clone, Copy)]
pub struct Timer(std::time::Instant);

impl Timer {
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// Seconds since [`Timer::start`].
    #[allow(clippy::disallowed_methods)]
    pub fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// Observes the seconds since [`Timer::start`] into `histogram`.
    pub fn observe(&self, histogram: &Histogram) {
        histogram.observe(self.seconds());
    }
}

/// Work that brings gauges up to date just before a scrape reads them (figures that are cheaper
/// to read when asked than to keep current on every change, such as Raft groups' lag).
type Sampler = Box<dyn Fn() + Send + Sync>;

static SAMPLERS: std::sync::Mutex<Vec<Sampler>> = std::sync::Mutex::new(Vec::new());

/// Runs `sampler` before every scrape from now on (register it once per process).
pub fn add_sampler(sampler: impl Fn() + Send + Sync + 'static) {
    SAMPLERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Box::new(sampler));
}

/// The name of every family a role's scrape may show, and of the tenant-scoped endpoint's (with
/// units, without the `_total` and `_bucket` of their series); for checking dashboards and
/// alert rules against.
pub fn family_names() -> Vec<String> {
    let tenant = tenant::render_queue_depths(&[QueueDepthSample::default()]);
    let tenant_names =
        tenant.lines().filter_map(|l| l.strip_prefix("# TYPE ").and_then(|rest| rest.split_whitespace().next()));
    let mut names: Vec<String> = REGISTRY.names.iter().cloned().chain(tenant_names.map(str::to_owned)).collect();
    names.sort();
    names
}

/// The body of a scrape: every family in the Prometheus text format. Scrapes take turns, so
/// one never encodes gauges another is bringing up to date.
pub fn render() -> String {
    let samplers = SAMPLERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for sampler in samplers.iter() {
        sampler();
    }
    let mut body = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, &REGISTRY.registry);
    body
}

/// The secret a scraper presents as `Authorization: Bearer <token>` (Prometheus's
/// `authorization.credentials_file`). Only its SHA-256 is kept, and requests are compared by
/// digest, so the comparison's time says nothing about the token.
#[derive(Clone)]
pub struct ScrapeToken {
    sha256: [u8; 32],
}

impl std::fmt::Debug for ScrapeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeToken(..)")
    }
}

/// Shortest scrape token accepted.
pub const SCRAPE_TOKEN_CHARS_MIN: usize = 16;

impl ScrapeToken {
    /// A token of at least [`SCRAPE_TOKEN_CHARS_MIN`] characters (surrounding whitespace, such
    /// as a file's final newline, is not part of it).
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < SCRAPE_TOKEN_CHARS_MIN {
            return Err(format!("a scrape token needs at least {SCRAPE_TOKEN_CHARS_MIN} characters"));
        }
        Ok(Self { sha256: Sha256::digest(token.as_bytes()).into() })
    }

    /// Whether an `Authorization` header's value presents this token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else { return false };
        let digest: [u8; 32] = Sha256::digest(presented.trim_ascii()).into();
        digest == self.sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_scrape() {
        api().requests.get_or_create(&CallLabels { api: "native", action: "SendMessage", code: 200 }).inc_by(3);
        storage().wal_fsync_seconds.observe(0.002);
        let body = render();
        assert!(
            body.contains("strata_api_requests_total{api=\"native\",action=\"SendMessage\",code=\"200\"} 3"),
            "{body}"
        );
        assert!(body.contains("# TYPE strata_wal_fsync_duration_seconds histogram"), "{body}");
        assert!(body.contains("strata_process_resident_memory_bytes "), "{body}");
        assert!(body.contains("strata_process_heap_bytes "), "{body}");
    }

    #[test]
    fn scrape_token_admits_only_itself() {
        assert!(ScrapeToken::new("short").is_err());
        let token = ScrapeToken::new("0123456789abcdef0123\n").expect("long enough");
        assert!(token.admits(Some(b"Bearer 0123456789abcdef0123")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdef012")));
        assert!(!token.admits(Some(b"Basic 0123456789abcdef0123")));
        assert!(!token.admits(None));
    }
}
