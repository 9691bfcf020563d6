//! The process's log: where events go and how they look, the same for every role.
//!
//! - Text to stderr, with colour only when stderr is a terminal; `STRATA_LOG_FORMAT=json` writes
//!   one JSON object per line instead (for log shippers).
//! - `RUST_LOG` filters as usual; unset, `info` with the chatty libraries at `warn`.
//! - `STRATA_ACCESS_LOG=1` adds the access log: one line per answered API call (target
//!   `strata_access`).
//! - Traces are exported over OTLP when configured (see [`crate::traces`]).
//! - Repeated warnings and errors are rate-limited per place in the code
//!   ([`REPEATS_BURST`] at once, then one per [`REPEAT_EVERY`]): a peer that is down must not
//!   flood the log. How many were left out is logged once a minute.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use strata_common::{ClockExt, SystemClock};
use tracing::callsite::Identifier;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Warnings and errors from one place in the code logged at once before the limit applies.
pub(crate) const REPEATS_BURST: u32 = 10;
/// Then at most one per this long from that place.
pub(crate) const REPEAT_EVERY: Duration = Duration::from_secs(1);
/// How often the count of events left out is logged.
const SUPPRESSED_REPORT_EVERY: Duration = Duration::from_secs(60);
/// The filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,openraft=warn,foyer=warn";

/// Sets up the process's log (see the module doc), and its traces when the environment asks for
/// them (see [`crate::traces`]), for a process of `role`; later calls change nothing.
pub(crate) fn init(role: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let access = std::env::var("STRATA_ACCESS_LOG").is_ok_and(|v| v == "1" || v == "true");
    let level = if access { "info" } else { "off" };
    let filter = match format!("{}={level}", strata_proxy::ACCESS_LOG_TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let repeats = RepeatLimit::new();
    let json = std::env::var("STRATA_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let layer = match json {
        true => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        false => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = if crate::traces::configured() { crate::traces::layer(role) } else { None };
    let installed = tracing_subscriber::registry()
        .with(layer.with_filter(repeats.clone()).with_filter(filter))
        .with(traces)
        .try_init();
    if installed.is_ok()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(repeats.report_suppressed());
    }
}

/// The per-callsite limit on repeated warnings and errors.
#[derive(Clone)]
struct RepeatLimit {
    limiter: Arc<DefaultKeyedRateLimiter<Identifier>>,
    /// Events left out since the last report, by place in the code.
    suppressed: Arc<Mutex<HashMap<Identifier, (&'static Metadata<'static>, u64)>>>,
}

impl RepeatLimit {
    fn new() -> Self {
        let burst = NonZeroU32::new(REPEATS_BURST).unwrap_or(NonZeroU32::MIN);
        let quota =
            Quota::with_period(REPEAT_EVERY).map_or(Quota::per_second(NonZeroU32::MIN), |q| q.allow_burst(burst));
        Self { limiter: Arc::new(RateLimiter::keyed(quota)), suppressed: Arc::default() }
    }

    /// Whether an event from `metadata`'s place may be logged now.
    fn admits(&self, metadata: &'static Metadata<'static>) -> bool {
        if *metadata.level() > Level::WARN {
            return true;
        }
        let place = metadata.callsite();
        if self.limiter.check_key(&place).is_ok() {
            return true;
        }
        let mut suppressed = self.suppressed.lock().unwrap_or_else(PoisonError::into_inner);
        suppressed.entry(place).or_insert((metadata, 0)).1 += 1;
        false
    }

    /// Logs, every [`SUPPRESSED_REPORT_EVERY`], how many events each place had left out.
    async fn report_suppressed(self) {
        let mut tick = SystemClock.interval(SUPPRESSED_REPORT_EVERY);
        loop {
            tick.tick().await;
            let drained: Vec<_> =
                self.suppressed.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, v)| v).collect();
            for (metadata, count) in drained {
                tracing::warn!(
                    suppressed = count,
                    of = metadata.name(),
                    target = metadata.target(),
                    "repeated log events left out in the last minute"
                );
            }
            self.limiter.retain_recent();
        }
    }
}

impl<S: Subscriber> Filter<S> for RepeatLimit {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _: &Context<'_, S>) -> bool {
        self.admits(event.metadata())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn repeated_warnings_are_limited_per_place_and_counted() {
        let limit = RepeatLimit::new();
        let logged = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Count(logged.clone()).with_filter(limit.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..25 {
                tracing::warn!(attempt = i, "heartbeat failed");
            }
            assert_eq!(logged.load(Ordering::Relaxed), REPEATS_BURST as usize, "a burst, then none within a second");
            tracing::warn!("another place in the code has its own allowance");
            for i in 0..25 {
                tracing::info!(call = i, "information is never limited");
            }
        });
        assert_eq!(logged.load(Ordering::Relaxed), REPEATS_BURST as usize + 1 + 25);
        let counted: u64 = limit.suppressed.lock().unwrap().values().map(|(_, n)| n).sum();
        assert_eq!(counted, 25 - u64::from(REPEATS_BURST));
    }
}
