//! The figures of one tenant's queues in Prometheus text, for the tenant-scoped endpoint a
//! tenant's own Prometheus (or KEDA through it) scrapes with the tenant's token. Built afresh
//! for each scrape from the queues' depths; nothing of other tenants is in its registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// One queue's depth, as a scrape reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepthSample {
    pub queue: String,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub oldest_age_s: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The depths of `queues` as Prometheus text (format 0.0.4), series named `strata_queue_*`
/// with a `queue` label.
pub fn render_queue_depths(queues: &[QueueDepthSample]) -> String {
    let mut registry = Registry::with_prefix("strata");
    let mut add = |name: &str, help: &str, unit: Option<Unit>, value: fn(&QueueDepthSample) -> u64| {
        let family = Family::<QueueLabel, Gauge>::default();
        for queue in queues {
            family.get_or_create(&QueueLabel { queue: queue.queue.clone() }).set(gauge(value(queue)));
        }
        match unit {
            Some(unit) => registry.register_with_unit(name, help, unit, family),
            None => registry.register(name, help, family),
        }
    };
    add("queue_messages_visible", "Messages ready to be received", None, |q| q.visible);
    add("queue_messages_in_flight", "Messages received and within their visibility timeout", None, |q| q.in_flight);
    add("queue_messages_delayed", "Messages delayed or scheduled", None, |q| q.delayed);
    let oldest = "Age of the oldest message in the queue (0 when empty)";
    add("queue_oldest_message_age", oldest, Some(Unit::Seconds), |q| q.oldest_age_s);
    let mut body = String::with_capacity(256 + queues.len() * 256);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, &registry);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_has_its_four_series() {
        let queues = [
            QueueDepthSample { queue: "orders".into(), visible: 3, in_flight: 1, delayed: 2, oldest_age_s: 40 },
            QueueDepthSample { queue: "empty".into(), ..Default::default() },
        ];
        let text = render_queue_depths(&queues);
        for line in [
            "strata_queue_messages_visible{queue=\"orders\"} 3",
            "strata_queue_messages_in_flight{queue=\"orders\"} 1",
            "strata_queue_messages_delayed{queue=\"orders\"} 2",
            "strata_queue_oldest_message_age_seconds{queue=\"orders\"} 40",
            "strata_queue_messages_visible{queue=\"empty\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
