//! Distributed traces (OpenTelemetry): how a call's trace context enters a process, crosses to
//! the next one, and stays with a message.
//!
//! # What it owns
//!
//! - Whether this process exports traces ([`enable`], [`enabled`]): the binary sets up the OTLP
//!   exporter and says so once. Spans are only made while it is on, so a process without an
//!   exporter pays nothing per call.
//! - Which API calls are traced ([`traces_call`]): a client's `traceparent` decides; otherwise
//!   a share of the calls, drawn at random. A call not traced makes no span at all, here or in
//!   the processes it calls (they make spans only for a sampled caller), so the calls not kept
//!   cost next to nothing.
//! - W3C trace context in HTTP headers (`traceparent`, `tracestate`): a call's span is made the
//!   child of the caller's context (a client's `traceparent` through [`TracedCall`], the proxy's
//!   over gRPC through [`GrpcServerSpans`]), and [`inject`] writes the current span's context for
//!   the next process.
//! - One span per traced gRPC call served ([`GrpcServerSpans`]), named by its method.
//! - A message's trace header ([`current_trace_header`]): the sending call's span context in the
//!   AWS X-Ray format SQS keeps as the `AWSTraceHeader` system attribute, and [`link_to`], which
//!   links the current span (a receive) to the span such a header names (the send).
//!
//! # What it guarantees
//!
//! A header that does not parse is ignored: a bad `traceparent` starts a new trace, as the W3C
//! recommendation says, and never fails the call.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether this process exports traces.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// A call without a `traceparent` is traced when a random u64 falls below this.
static SAMPLE_BELOW: AtomicU64 = AtomicU64::new(0);
/// Draws of [`traces_call`], hashed into its random numbers.
static DRAWS: AtomicU64 = AtomicU64::new(0);

/// Says that this process exports traces, and traces `sample_ratio` (0.0 to 1.0) of the API
/// calls that come without a `traceparent`: from now on spans are made and contexts propagated.
/// The exporter's own sampler must keep every span it is given a parent for, or none
/// (`ParentBased(AlwaysOn)`): the choice is made here.
pub fn enable(sample_ratio: f64) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let below = if sample_ratio >= 1.0 { u64::MAX } else { (sample_ratio.max(0.0) * u64::MAX as f64) as u64 };
    SAMPLE_BELOW.store(below, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Release);
}

/// Whether an API call with `headers` is traced: as its `traceparent` says when it carries a
/// valid one, else by a random draw at the configured ratio. Never while traces are off. A
/// traced call's span takes its parent from the answer ([`TracedCall::adopt`]).
pub fn traces_call(headers: &http::HeaderMap) -> Option<TracedCall> {
    if !enabled() {
        return None;
    }
    if headers.contains_key("traceparent")
        && let Some(parent) = remote_parent(headers)
    {
        return parent.span().span_context().is_sampled().then_some(TracedCall(Some(parent)));
    }
    let draw = RandomState::new().hash_one(DRAWS.fetch_add(1, Ordering::Relaxed));
    let sampled = match SAMPLE_BELOW.load(Ordering::Relaxed) {
        u64::MAX => true,
        below => draw < below,
    };
    sampled.then_some(TracedCall(None))
}

/// A traced API call: the client's trace context, when it sent one.
pub struct TracedCall(Option<opentelemetry::Context>);

impl TracedCall {
    /// Makes `span` (the call's, not yet entered) the child of the client's span, or the root
    /// of a trace of its own.
    pub fn adopt(self, span: &tracing::Span) {
        if let Some(parent) = self.0 {
            // Fails only when no exporting layer is installed, or the span was entered already.
            let _ = span.set_parent(parent);
        }
    }
}

/// Whether this process exports traces (see [`enable`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The trace context `headers` carry, if they carry a valid one.
fn remote_parent(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    parent.span().span_context().is_valid().then_some(parent)
}

/// Writes the current span's trace context into `headers`, for the process a request goes to.
pub fn inject(headers: &mut http::HeaderMap) {
    if !traced() {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

/// Names `span`'s exported span `name` (a call's action, known only once it is parsed), even
/// after it started.
pub fn rename(span: &tracing::Span, name: &'static str) {
    if enabled() {
        span.context().span().update_name(name);
    }
}

/// Whether the current span belongs to a sampled trace this process exports: work done for a
/// traced call makes child spans; background work, outside any call, makes none.
pub fn traced() -> bool {
    enabled() && tracing::Span::current().context().span().span_context().is_sampled()
}

/// `request` with the current span's trace context in its headers (see [`inject`]): for a
/// client's `map_request`.
pub fn injected<B>(mut request: http::Request<B>) -> http::Request<B> {
    inject(request.headers_mut());
    request
}

/// The current span's context as an AWS X-Ray trace header (`Root=1-...;Parent=...;Sampled=1`),
/// when this process exports traces and the current span is sampled: what a sent message keeps
/// so that its receive can link to its send.
pub fn current_trace_header() -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_sampled()
        .then(|| opentelemetry_aws::trace::xray_propagator::span_context_to_string(&span_context))?
}

/// Links the current span to the span `trace_header` names (the X-Ray format, as
/// [`current_trace_header`] writes it and SQS clients send it); a header that does not parse
/// is passed over.
pub fn link_to(trace_header: &str) {
    if !enabled() {
        return;
    }
    if let Some(sent) = opentelemetry_aws::trace::xray_propagator::span_context_from_str(trace_header) {
        tracing::Span::current().add_link(sent);
    }
}

/// Whether `value` may be kept as a message's trace header: at most
/// [`TRACE_HEADER_CHARS_MAX`] printable ASCII characters (what X-Ray headers are made of).
pub fn valid_trace_header(value: &str) -> bool {
    !value.is_empty() && value.len() <= TRACE_HEADER_CHARS_MAX && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Longest trace header a message keeps.
pub const TRACE_HEADER_CHARS_MAX: usize = 256;

/// A tower layer that serves each gRPC request that carries a sampled trace context inside a
/// span of its own (`otel.kind = server`, named by the request's path), the child of that
/// context. Requests without one (Raft's own traffic, callers that do not trace) pass as they
/// are, and so does everything while this process exports no traces.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerSpans;

impl<S> tower::Layer<S> for GrpcServerSpans {
    type Service = GrpcServerSpansService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerSpansService { inner }
    }
}

/// The service [`GrpcServerSpans`] makes.
#[derive(Debug, Clone)]
pub struct GrpcServerSpansService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcServerSpansService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, tracing::instrument::Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let parent = enabled().then(|| remote_parent(request.headers())).flatten();
        let Some(parent) = parent.filter(|p| p.span().span_context().is_sampled()) else {
            return futures::future::Either::Left(self.inner.call(request));
        };
        let span = tracing::info_span!(
            "grpc call",
            otel.name = request.uri().path(),
            otel.kind = "server",
            rpc.system = "grpc",
        );
        // Fails only when no exporting layer is installed.
        let _ = span.set_parent(parent);
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        futures::future::Either::Right(call.instrument(span))
    }
}
