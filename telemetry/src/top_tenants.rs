//! Opt-in per-tenant figures: the API calls and payload bytes of the busiest tenants, for
//! operators who want to see who is hot (`strata_tenant_calls_total`,
//! `strata_tenant_payload_bytes_total`, labelled `tenant`).
//!
//! Off unless a process asks for the top N ([`keep_top`]; `STRATA_METRICS_TOP_TENANTS=N` for
//! any role): the process's other series carry no tenant label, and these stay bounded too,
//! registered like the process figures (a collector read at each scrape). Each scrape
//! shows only the N tenants with the most calls since the process started; the counts of at most
//! [`TENANTS_TRACKED_MAX`] tenants are kept (a tenant beyond is not counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Unit;

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

/// The families the collector emits, with their units.
pub(crate) const FAMILY_NAMES: [&str; 2] = ["tenant_calls", "tenant_payload_bytes"];

/// Encodes the busiest tenants' series at each scrape (none when off).
#[derive(Debug)]
pub(crate) struct TopTenantsCollector;

impl Collector for TopTenantsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let top = TOP.load(Ordering::Relaxed);
        if top == 0 {
            return Ok(());
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
        let help = "API calls accepted, of the busiest tenants (opt-in)";
        calls.encode(encoder.encode_descriptor("tenant_calls", help, None, calls.metric_type())?)?;
        let help = "Message payload bytes in and out, of the busiest tenants (opt-in)";
        bytes.encode(encoder.encode_descriptor("tenant_payload", help, Some(&Unit::Bytes), bytes.metric_type())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_busiest_tenants_are_shown_and_only_when_asked() {
        count_call("quiet", 1);
        let body = crate::render();
        assert!(!body.contains("strata_tenant_calls"), "off by default: {body}");
        keep_top(2);
        for (tenant, calls) in [("a", 5), ("b", 3), ("c", 1)] {
            for _ in 0..calls {
                count_call(tenant, 10);
            }
        }
        let body = crate::render();
        assert!(body.contains("strata_tenant_calls_total{tenant=\"a\"} 5"), "{body}");
        assert!(body.contains("strata_tenant_payload_bytes_total{tenant=\"b\"} 30"), "{body}");
        assert!(!body.contains("tenant=\"c\"") && !body.contains("quiet"), "{body}");
        keep_top(0);
    }
}
