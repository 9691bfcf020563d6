//! The process's traces: OpenTelemetry spans exported over OTLP (gRPC), when configured.
//!
//! Configured by the standard OpenTelemetry environment variables:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): where spans go, an
//!   OTLP/gRPC receiver such as an OpenTelemetry Collector (`http://collector:4317`). Unset, the
//!   process exports nothing and makes no spans.
//! - `OTEL_TRACES_SAMPLER_ARG`: the share of API calls without a `traceparent` that are traced,
//!   0.0 to 1.0 (default [`DEFAULT_SAMPLE_RATIO`]). A call that arrives with a `traceparent`
//!   follows its caller's decision. Calls not traced make no span (see
//!   `strata_telemetry::trace::traces_call`).
//! - `OTEL_SERVICE_NAME`: the service name spans carry (default `strata-<role>`).
//! - `OTEL_BSP_*`: the batch exporter's queue and delays.
//!
//! Only Strata's own spans are exported (not the HTTP and gRPC libraries'), with warnings and
//! errors logged inside them as span events. Export runs on the SDK's own thread; a full queue
//! drops spans rather than slowing calls.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// Share of traces started in this process that are kept, unless `OTEL_TRACES_SAMPLER_ARG`
/// says otherwise.
pub(crate) const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// The exporting provider, kept to flush it when the process ends.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether the environment asks for traces.
pub(crate) fn configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The layer that turns this process's spans into exported traces, for a process of `role`;
/// `None` (with the reason logged to stderr) when the exporter cannot be built. Must run inside
/// the async runtime: the gRPC exporter's connection lives there.
pub(crate) fn layer<S>(role: &str) -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("warning: traces are not exported: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(format!("strata-{role}"));
    }
    // Which calls are traced is chosen as they arrive (strata_telemetry::trace::traces_call):
    // the exporter keeps every span it is given.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .build();
    let ratio = std::env::var("OTEL_TRACES_SAMPLER_ARG")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r))
        .unwrap_or(DEFAULT_SAMPLE_RATIO);
    let tracer = provider.tracer("strata");
    let _ = PROVIDER.set(provider);
    strata_telemetry::trace::enable(ratio);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(exported));
    Some(Box::new(layer))
}

/// What the trace layer takes: Strata's own spans, and warnings and errors inside them.
fn exported(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("strata") && (metadata.is_span() || *metadata.level() <= Level::WARN)
}

/// Exports the spans still queued; called once as the process ends, outside the async runtime
/// (which must still exist: the exporter's connection runs on it).
pub(crate) fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: traces still queued may be lost: {e}");
    }
}
