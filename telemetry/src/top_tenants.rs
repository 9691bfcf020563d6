//! Opt-in per-tenant figures: the API calls and payload bytes of the busiest tenants, for
//! operators who want to see who is hot (`strata_tenant_calls_total`,
//! `strata_tenant_payload_bytes_total`, labelled `tenant`).
//!
//! Off unless a process asks for the top N ([`keep_top`], a proxy's `metrics_top_tenants`):
//! the process's other series carry no tenant label, and these stay bounded too. Each scrape
//! shows only the N tenants with the most calls since the process started; the counts of at most
//! [`TENANTS_TRACKED_MAX`] tenants are kept (a tenant beyond is not counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// Most tenants whose counts one process keeps.
pub const TENANTS_TRACKED_MAX: usize = 100_000;
/// Most tenants a scrape shows.
pub const TOP_TENANTS_MAX: usize = 1_000;

/// How many tenants a scrape shows (0: off).
static TOP: AtomicUsize = AtomicUsize::new(0);
/// Calls and payload bytes by tenant.
static COUNTS: LazyLock<Mutex<HashMap<String, (u64, u64)>>> = LazyLock::new(Mutex::default);

/// Shows the `n` busiest tenants in this process's scrapes (at most [`TOP_TENANTS_MAX`]; 0
/// turns them off).
pub fn keep_top(n: usize) {
    TOP.store(n.min(TOP_TENANTS_MAX), Ordering::Relaxed);
}

/// Counts an API call of `tenant` carrying `payload_bytes` (in and out), when the top is kept.
pub fn count_call(tenant: &str, payload_bytes: u64) {
    if TOP.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut counts = COUNTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(count) = counts.get_mut(tenant) {
        count.0 += 1;
        count.1 += payload_bytes;
    } else if counts.len() < TENANTS_TRACKED_MAX {
        counts.insert(tenant.to_owned(), (1, payload_bytes));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// Appends the busiest tenants' series to a scrape's `body` (nothing when off).
pub(crate) fn render(body: &mut String) {
    let top = TOP.load(Ordering::Relaxed);
    if top == 0 {
        return;
    }
    let mut busiest: Vec<(String, (u64, u64))> =
        COUNTS.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(t, c)| (t.clone(), *c)).collect();
    busiest.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    busiest.truncate(top);
    let calls = Family::<TenantLabel, Counter>::default();
    let bytes = Family::<TenantLabel, Counter>::default();
    for (tenant, (call_count, byte_count)) in busiest {
        let label = TenantLabel { tenant };
        calls.get_or_create(&label).inc_by(call_count);
        bytes.get_or_create(&label).inc_by(byte_count);
    }
    let mut registry = Registry::with_prefix("strata");
    registry.register("tenant_calls", "API calls accepted, of the busiest tenants (opt-in)", calls);
    registry.register_with_unit(
        "tenant_payload",
        "Message payload bytes in and out, of the busiest tenants (opt-in)",
        Unit::Bytes,
        bytes,
    );
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(body, &registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_busiest_tenants_are_shown_and_only_when_asked() {
        count_call("quiet", 1);
        let mut body = String::new();
        render(&mut body);
        assert!(body.is_empty(), "off by default: {body}");
        keep_top(2);
        for (tenant, calls) in [("a", 5), ("b", 3), ("c", 1)] {
            for _ in 0..calls {
                count_call(tenant, 10);
            }
        }
        render(&mut body);
        assert!(body.contains("strata_tenant_calls_total{tenant=\"a\"} 5"), "{body}");
        assert!(body.contains("strata_tenant_payload_bytes_total{tenant=\"b\"} 30"), "{body}");
        assert!(!body.contains("tenant=\"c\"") && !body.contains("quiet"), "{body}");
        keep_top(0);
    }
}
