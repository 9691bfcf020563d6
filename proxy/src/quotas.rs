//! Per-tenant quotas at the proxy, over all of a tenant's queues: requests per second, message
//! payload bytes per second, in-flight messages and stored bytes; calls and receives under way
//! at once; and the refusal of a tenant whose billing hard cap was reached. (The number of
//! queues is enforced exactly by metadata, at create.)
//!
//! # What it owns
//!
//! A cache of each tenant's effective limits (from metadata, re-read every
//! [`LIMITS_REFRESH`]) with token buckets (`governor`) for the rates, and, for tenants with an
//! in-flight or stored-bytes limit, the tenant's usage (its in-flight messages and stored bytes
//! summed over its queues, re-read every [`USAGE_REFRESH`]).
//!
//! # How accurate it is
//!
//! - Rates: each proxy enforces `limit / fleet_proxies` (its configured share), with a burst of
//!   one second's share. With N proxies behind a balancer that spreads a tenant's calls evenly,
//!   the tenant gets its limit; a skewed balancer gives it less, never more than the limit plus
//!   one second's burst per proxy.
//! - In-flight messages and stored bytes: the totals are at most [`USAGE_REFRESH`] old, so
//!   receives in that window can overshoot the in-flight limit by what they take. Sends
//!   admitted by this proxy count in its stored total at once, so stored bytes overshoot by
//!   what sends under way and other proxies store in that window. Only the tenant's first
//!   [`USAGE_QUEUES_SUMMED_MAX`] queues (in name order) are summed.
//! - Stored bytes are what the storage nodes count per queue (bodies and attributes, scheduled
//!   messages included); a tenant over its limit can still receive, delete and purge, which is
//!   how it gets under it again.
//! - A changed limit or cap applies within [`LIMITS_REFRESH`] on every proxy.
//! - When metadata cannot be reached, the last limits read stay in force; a tenant never read
//!   is let through (quotas protect the service; they do not decide who may call).
//! - Calls under way ([`ConcurrencyLimits`]) are counted exactly, per proxy: an admitted call
//!   holds its slot (an [`Admission`]) until it is answered, so one tenant's long polls or slow
//!   calls cannot take every connection and task of a proxy from the others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use strata_common::ClockExt;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::proto as pb;

use crate::routing::Router as Placement;

/// How long a tenant's limits are used before metadata is asked again.
pub const LIMITS_REFRESH: Duration = Duration::from_secs(5);
/// How long a tenant's usage (in-flight messages, stored bytes) is used before it is summed again.
pub const USAGE_REFRESH: Duration = Duration::from_secs(2);
/// How long a read of limits or stats may take before the cached value is used.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Tenants cached at most; the cache is cleared when it would grow past this.
const TENANTS_CACHED_MAX: usize = 100_000;
/// Queue stats read at once while a tenant's usage is summed.
const USAGE_READS_AT_ONCE: usize = 32;
/// Queues summed for a tenant's usage at most (one listing page).
pub const USAGE_QUEUES_SUMMED_MAX: u32 = 1_000;

/// Most calls of one tenant under way at once at one proxy, long polls included.
pub const CALLS_UNDER_WAY_PER_TENANT_MAX: u32 = 1_000;
/// Most receives (long polls) of one tenant under way at once at one proxy.
pub const RECEIVES_UNDER_WAY_PER_TENANT_MAX: u32 = 200;

/// How many calls of one tenant one proxy serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyLimits {
    pub calls_max: u32,
    /// Receives, which may wait up to 20 s each, are held to their own, lower limit.
    pub receives_max: u32,
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        Self { calls_max: CALLS_UNDER_WAY_PER_TENANT_MAX, receives_max: RECEIVES_UNDER_WAY_PER_TENANT_MAX }
    }
}

/// One tenant's calls and receives under way at this proxy.
#[derive(Default)]
struct UnderWay {
    calls: AtomicU32,
    receives: AtomicU32,
}

impl UnderWay {
    fn counter(&self, receive: bool) -> &AtomicU32 {
        if receive { &self.receives } else { &self.calls }
    }
}

/// A slot taken in a counter, given back when dropped.
struct Slot {
    under_way: Arc<UnderWay>,
    receive: bool,
}

impl Slot {
    /// Takes a slot if fewer than `max` are taken.
    fn take(under_way: &Arc<UnderWay>, receive: bool, max: u32) -> Option<Slot> {
        let counter = under_way.counter(receive);
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot { under_way: under_way.clone(), receive })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.under_way.counter(self.receive).fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted call: it holds its tenant's slots of calls (and receives) under way until it is
/// dropped, when the call has been answered.
#[must_use = "the call's slot under way is given back when the admission is dropped"]
pub struct Admission {
    _call: Slot,
    _receive: Option<Slot>,
}

/// A tenant's limits as this proxy enforces them.
struct TenantQuota {
    read_at: Instant,
    limits: pb::TenantLimits,
    capped_reason: String,
    requests: Option<Arc<DefaultDirectRateLimiter>>,
    payload_bytes: Option<Arc<DefaultDirectRateLimiter>>,
    /// The tenant's usage and when it was summed.
    usage: Arc<Mutex<Option<(Instant, Usage)>>>,
    /// Whether a call is summing the usage now (the others take the last sum meanwhile).
    summing: Arc<std::sync::atomic::AtomicBool>,
}

/// Clears a tenant's summing flag when dropped.
struct SummingFlag<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SummingFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a tenant holds over its queues.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    in_flight: u64,
    stored_bytes: u64,
}

/// This proxy's bucket for a tenant's rate: its share, with a burst of one second's share.
fn bucket(per_second: u64, share: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    let own = (per_second / u64::from(share.max(1))).max(1);
    let own = NonZeroU32::new(u32::try_from(own).unwrap_or(u32::MAX))?;
    (per_second > 0).then(|| Arc::new(RateLimiter::direct(Quota::per_second(own))))
}

impl TenantQuota {
    fn new(info: pb::TenantLimitsInfo, share: u32, read_at: Instant) -> Self {
        let limits = info.effective.unwrap_or_default();
        Self {
            read_at,
            requests: bucket(limits.requests_per_second, share),
            payload_bytes: bucket(limits.payload_bytes_per_second, share),
            limits,
            capped_reason: info.capped_reason,
            usage: Arc::new(Mutex::new(None)),
            summing: Arc::default(),
        }
    }

    /// The same limits re-read now: the buckets (and what they hold) carry on.
    fn reread(old: &TenantQuota, capped_reason: String, read_at: Instant) -> Self {
        Self {
            read_at,
            limits: old.limits,
            capped_reason,
            requests: old.requests.clone(),
            payload_bytes: old.payload_bytes.clone(),
            usage: old.usage.clone(),
            summing: old.summing.clone(),
        }
    }
}

/// The quota checks of one proxy.
pub struct Quotas {
    placement: Arc<Placement>,
    /// The number of proxies sharing each tenant's rate limits (this proxy enforces 1/N).
    fleet_proxies: u32,
    tenants: Mutex<HashMap<String, Arc<TenantQuota>>>,
    concurrency: ConcurrencyLimits,
    /// Calls under way, by tenant (tenants with none are dropped when the map grows large).
    under_way: Mutex<HashMap<String, Arc<UnderWay>>>,
}

fn throttled(what: &str, wait: Duration) -> StrataError {
    let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    StrataError::throttled(
        format!("over this tenant's {what} quota; retry after {retry_after_s} s or ask for a higher limit"),
        retry_after_s.max(1),
    )
}

impl Quotas {
    pub fn new(placement: Arc<Placement>, fleet_proxies: u32, concurrency: ConcurrencyLimits) -> Self {
        Self {
            placement,
            fleet_proxies: fleet_proxies.max(1),
            tenants: Mutex::new(HashMap::new()),
            concurrency,
            under_way: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a call carrying `payload_bytes` of messages (a receive when `receive`), or answers
    /// why not: `LimitExceeded` for a tenant past its hard cap, `Throttled` (with a retry-after)
    /// over a rate, with as many calls (or receives) under way as it may have, or, for a
    /// receive, at the in-flight limit. The admission holds the call's slots until dropped.
    pub async fn admit(&self, tenant: &str, payload_bytes: u64, receive: bool) -> Result<Admission, StrataError> {
        let admission = self.take_slots(tenant, receive)?;
        self.admit_rates(tenant, payload_bytes, receive).await?;
        Ok(admission)
    }

    /// The tenant's slots of calls (and receives) under way.
    fn take_slots(&self, tenant: &str, receive: bool) -> Result<Admission, StrataError> {
        let under_way = {
            let mut all = self.under_way.lock();
            if all.len() >= TENANTS_CACHED_MAX && !all.contains_key(tenant) {
                all.retain(|_, u| u.calls.load(Ordering::Acquire) > 0);
            }
            all.entry(tenant.to_owned()).or_default().clone()
        };
        let busy = |what: &'static str, max: u32| {
            crate::call_metrics::throttled(what);
            StrataError::throttled(format!("this tenant has {max} {what} under way at once; retry when some end"), 1)
        };
        let call = Slot::take(&under_way, false, self.concurrency.calls_max)
            .ok_or_else(|| busy("calls", self.concurrency.calls_max))?;
        let receive = if receive {
            let max = self.concurrency.receives_max;
            Some(Slot::take(&under_way, true, max).ok_or_else(|| busy("receives", max))?)
        } else {
            None
        };
        Ok(Admission { _call: call, _receive: receive })
    }

    async fn admit_rates(&self, tenant: &str, payload_bytes: u64, receive: bool) -> Result<(), StrataError> {
        let Some(quota) = self.quota(tenant).await else { return Ok(()) };
        if !quota.capped_reason.is_empty() {
            crate::call_metrics::throttled("capped");
            return Err(StrataError::new(
                ErrorKind::LimitExceeded,
                format!("calls are refused: {}", quota.capped_reason),
            ));
        }
        if let Some(requests) = &quota.requests
            && let Err(not_until) = requests.check()
        {
            crate::call_metrics::throttled("requests");
            return Err(throttled("requests per second", not_until.wait_time_from(DefaultClock::default().now())));
        }
        if let (Some(bytes), Some(n)) =
            (&quota.payload_bytes, NonZeroU32::new(payload_bytes.min(u64::from(u32::MAX)) as u32))
        {
            match bytes.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    crate::call_metrics::throttled("payload_bytes");
                    return Err(throttled(
                        "payload bytes per second",
                        not_until.wait_time_from(DefaultClock::default().now()),
                    ));
                }
                // One call larger than a second's share: it would never pass, so it is not held back.
                Err(_) => {}
            }
        }
        if receive { self.admit_receive(&quota, tenant).await } else { Ok(()) }
    }

    /// Admits a send of `bytes` (bodies and attributes): a tenant whose queues hold its
    /// stored-bytes limit or more stores nothing more (`LimitExceeded`) until it receives and
    /// deletes, or purges, some. An admitted send counts in the tenant's usage at once, until
    /// the next sum.
    pub async fn admit_store(&self, tenant: &str, bytes: u64) -> Result<(), StrataError> {
        let Some(quota) = self.quota(tenant).await else { return Ok(()) };
        let max = quota.limits.stored_bytes_max;
        if max == 0 {
            return Ok(());
        }
        let stored = self.usage(&quota, tenant).await.stored_bytes;
        if stored >= max {
            crate::call_metrics::throttled("stored_bytes");
            return Err(StrataError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "this tenant's queues hold {stored} bytes of messages (limit {max}); receive and delete or \
                     purge some, or ask for a higher limit"
                ),
            ));
        }
        if let Some((_, usage)) = quota.usage.lock().as_mut() {
            usage.stored_bytes = usage.stored_bytes.saturating_add(bytes);
        }
        Ok(())
    }

    /// The tenant's usage, summed again when older than [`USAGE_REFRESH`] by one call at a time;
    /// the last sum (or nothing) while another call sums it, or when the storage nodes do not
    /// answer in time.
    async fn usage(&self, quota: &TenantQuota, tenant: &str) -> Usage {
        let clock = self.placement.metadata.clock();
        let cached = *quota.usage.lock();
        let last = cached.map(|(_, usage)| usage).unwrap_or_default();
        match cached {
            Some((at, usage)) if clock.instant().duration_since(at) < USAGE_REFRESH => usage,
            _ if quota.summing.swap(true, Ordering::AcqRel) => last,
            _ => {
                // Given back however the sum ends, a dropped call included.
                let _summing = SummingFlag(&quota.summing);
                let summed = clock.timeout(READ_TIMEOUT, usage_of(self.placement.clone(), tenant.to_owned())).await;
                match summed {
                    Ok(Ok(usage)) => {
                        *quota.usage.lock() = Some((clock.instant(), usage));
                        usage
                    }
                    _ => last,
                }
            }
        }
    }

    /// A tenant at its in-flight limit receives nothing until messages are deleted or their
    /// visibility timeouts end.
    async fn admit_receive(&self, quota: &TenantQuota, tenant: &str) -> Result<(), StrataError> {
        let max = quota.limits.in_flight_messages_max;
        if max == 0 {
            return Ok(());
        }
        let total = self.usage(quota, tenant).await.in_flight;
        if total >= max {
            crate::call_metrics::throttled("in_flight");
            return Err(StrataError::throttled(
                format!("this tenant has {total} messages in flight (limit {max}); delete some or let them time out"),
                1,
            ));
        }
        Ok(())
    }

    /// The tenant's quota, re-read when stale.
    async fn quota(&self, tenant: &str) -> Option<Arc<TenantQuota>> {
        let clock = self.placement.metadata.clock();
        let cached = self.tenants.lock().get(tenant).cloned();
        if let Some(quota) = &cached
            && clock.instant().duration_since(quota.read_at) < LIMITS_REFRESH
        {
            return cached;
        }
        match clock.timeout(READ_TIMEOUT, self.placement.metadata.get_tenant_limits(tenant)).await {
            Ok(Ok(info)) => {
                let fresh = Arc::new(match &cached {
                    Some(old) if old.limits == info.effective.unwrap_or_default() => {
                        TenantQuota::reread(old, info.capped_reason, clock.instant())
                    }
                    _ => TenantQuota::new(info, self.fleet_proxies, clock.instant()),
                });
                let mut tenants = self.tenants.lock();
                if tenants.len() >= TENANTS_CACHED_MAX {
                    tenants.clear();
                }
                tenants.insert(tenant.to_owned(), fresh.clone());
                Some(fresh)
            }
            Ok(Err(e)) => {
                tracing::warn!(tenant, error = %e, "cannot read tenant limits; the last ones read stay in force");
                cached
            }
            Err(_) => cached,
        }
    }
}

/// What a tenant's queues hold (its first listing page), asked of their storage nodes
/// [`USAGE_READS_AT_ONCE`] queues at a time.
async fn usage_of(placement: Arc<Placement>, tenant: String) -> Result<Usage, StrataError> {
    let page = placement.metadata.list_queues(&tenant, "", "", USAGE_QUEUES_SUMMED_MAX).await?;
    let mut reads = tokio::task::JoinSet::new();
    let mut names = page.queues.into_iter().map(|queue| queue.name);
    let mut total = Usage::default();
    loop {
        while reads.len() < USAGE_READS_AT_ONCE
            && let Some(name) = names.next()
        {
            let (placement, tenant) = (placement.clone(), tenant.clone());
            reads.spawn(async move {
                crate::queues::on_queue(
                    &placement,
                    &tenant,
                    &name,
                    |mut c, q| async move { c.get_queue_stats(q).await },
                )
                .await
            });
        }
        let Some(read) = reads.join_next().await else { break };
        let stats = read.map_err(|e| StrataError::internal(format!("a queue stats read failed: {e}")))??;
        total.in_flight += stats.in_flight;
        total.stored_bytes += stats.stored_bytes;
    }
    Ok(total)
}
