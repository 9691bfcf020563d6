//! API calls in `/metrics`: each answered call counts by API, action and HTTP status, with its
//! latency; calls refused for their credentials count as authentication failures.
//!
//! Every label value comes from a fixed list (an unknown SQS action or an unrouted path counts
//! as `unknown`), so a stranger cannot grow the number of series.
//!
//! The same middleware makes each call's span when traces are on, and writes the access log: one `INFO` event per answered call with target
//! [`ACCESS_LOG_TARGET`], off unless the log filter turns that target on.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use strata_telemetry::{ActionLabels, CallLabels, ReasonLabel, Timer};
use tracing::Instrument;

/// The SQS action a response answered, set by the SQS handler for [`record`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallAction(pub(crate) &'static str);

const UNKNOWN: &str = "unknown";

/// The SQS action a request names (`X-Amz-Target: AmazonSQS.<Action>`, or an `Action=`
/// parameter of the query string or the form body), as a label.
pub(crate) fn sqs_action(headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> &'static str {
    let named = match headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        Some(target) => target.strip_prefix(super::sqs::TARGET_PREFIX),
        None => query.and_then(|q| form_action(q.as_bytes())).or_else(|| form_action(body)),
    };
    named.and_then(super::sqs::query::action_name).unwrap_or(UNKNOWN)
}

/// The value of a form's `Action=` parameter, when it is plain text (as every action name is).
fn form_action(form: &[u8]) -> Option<&str> {
    form.split(|b| *b == b'&').find_map(|pair| pair.strip_prefix(b"Action=")).and_then(|a| std::str::from_utf8(a).ok())
}

/// The native API's action of a routed request, named as the SQS action it matches.
fn native_action(method: &Method, path: Option<&str>) -> &'static str {
    let Some(path) = path else { return UNKNOWN };
    match (method.as_str(), path) {
        ("POST", "/v1/queues") => "CreateQueue",
        ("GET", "/v1/queues") => "ListQueues",
        ("GET", "/v1/queues/{name}") => "GetQueueAttributes",
        ("DELETE", "/v1/queues/{name}") => "DeleteQueue",
        ("PATCH", "/v1/queues/{name}") => "SetQueueAttributes",
        ("POST", "/v1/queues/{name}/purge") => "PurgeQueue",
        ("POST", "/v1/queues/{name}/messages") => "SendMessage",
        ("POST", "/v1/queues/{name}/receive") => "ReceiveMessage",
        ("POST", "/v1/queues/{name}/delete") => "DeleteMessage",
        ("POST", "/v1/queues/{name}/visibility") => "ChangeMessageVisibility",
        ("DELETE", "/v1/queues/{name}/scheduled/{message_id}") => "CancelScheduledMessage",
        ("GET", "/v1/queues/{name}/tags") => "ListQueueTags",
        ("GET", "/v1/queues/{name}/metrics") => "GetQueueMetrics",
        ("GET", "/v1/queues/{name}/messages/{message_id}/trace") => "GetMessageTrace",
        ("GET", "/v1/metrics") => "GetMetrics",
        ("POST", "/v1/queues/{name}/tags") => "TagQueue",
        ("DELETE", "/v1/queues/{name}/tags/{key}") => "UntagQueue",
        ("GET", "/v1/queues/{name}/dead-letter-sources") => "ListDeadLetterSourceQueues",
        ("POST", "/v1/queues/{name}/move-tasks") => "StartMessageMoveTask",
        ("GET", "/v1/queues/{name}/move-tasks") => "ListMessageMoveTasks",
        ("DELETE", "/v1/queues/{name}/move-tasks/{task_id}") => "CancelMessageMoveTask",
        ("GET", "/v1/limits") => "GetLimits",
        ("POST", "/v1/access-keys") => "CreateAccessKey",
        ("GET", "/v1/access-keys") => "ListAccessKeys",
        ("DELETE", "/v1/access-keys/{id}") => "RevokeAccessKey",
        ("POST", "/v1/access-keys/{id}/rotate") => "RotateAccessKey",
        _ => UNKNOWN,
    }
}

/// The `tracing` target of access log events.
pub const ACCESS_LOG_TARGET: &str = "strata_access";
/// Most characters of a request path an access log event carries.
const ACCESS_LOG_PATH_CHARS_MAX: usize = 256;

/// Middleware recording each call of `api` (`native` or `sqs`) once it is answered.
pub(crate) async fn record(api: &'static str, request: Request, next: Next) -> Response {
    let native = (api == "native")
        .then(|| native_action(request.method(), request.extensions().get::<MatchedPath>().map(MatchedPath::as_str)));
    let access = tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO).then(|| {
        let path: String = request.uri().path().chars().take(ACCESS_LOG_PATH_CHARS_MAX).collect();
        let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
        (request.method().clone(), path, peer)
    });
    let timer = Timer::start();
    let span =
        strata_telemetry::trace::traces_call(request.headers()).map(|traced| call_span(api, native, &request, traced));
    let response = match &span {
        Some(span) => next.run(request).instrument(span.clone()).await,
        None => next.run(request).await,
    };
    let action = native.or_else(|| response.extensions().get::<CallAction>().map(|a| a.0)).unwrap_or(UNKNOWN);
    let status = response.status();
    if let Some(span) = span {
        strata_telemetry::trace::rename(&span, action);
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    let metrics = strata_telemetry::api();
    metrics.requests.get_or_create(&CallLabels { api, action, code: status.as_u16() }).inc();
    timer.observe(&metrics.duration.get_or_create(&ActionLabels { api, action }));
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        metrics.auth_failures.get_or_create(&ReasonLabel { reason: api }).inc();
    }
    if let Some((method, path, peer)) = access {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            api,
            action,
            %method,
            path,
            status = status.as_u16(),
            duration_ms = (timer.seconds() * 1000.0).round() as u64,
            peer = peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            "call answered"
        );
    }
    response
}

/// The span of one traced API call: the child of the client's `traceparent` when it sent one,
/// named by its action once that is known (an SQS call's action may be in its body).
fn call_span(
    api: &'static str,
    native: Option<&'static str>,
    request: &Request,
    traced: strata_telemetry::trace::TracedCall,
) -> tracing::Span {
    let span = tracing::info_span!(
        "api call",
        otel.name = native.unwrap_or("api call"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        api,
        http.request.method = %request.method(),
        http.response.status_code = tracing::field::Empty,
    );
    traced.adopt(&span);
    span
}

/// Counts a call refused by admission control for `reason`.
pub(crate) fn throttled(reason: &'static str) {
    strata_telemetry::api().throttled.get_or_create(&ReasonLabel { reason }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_come_from_fixed_lists() {
        let mut headers = HeaderMap::new();
        assert_eq!(sqs_action(&headers, Some("Action=SendMessage&QueueUrl=x"), b""), "SendMessage");
        assert_eq!(sqs_action(&headers, None, b"QueueUrl=x&Action=ReceiveMessage"), "ReceiveMessage");
        assert_eq!(sqs_action(&headers, None, b"Action=MadeUp"), UNKNOWN);
        headers.insert("x-amz-target", "AmazonSQS.DeleteMessage".parse().expect("header"));
        assert_eq!(sqs_action(&headers, None, b"{}"), "DeleteMessage");
        headers.insert("x-amz-target", "AmazonSQS.Whatever".parse().expect("header"));
        assert_eq!(sqs_action(&headers, None, b"{}"), UNKNOWN);
        assert_eq!(native_action(&Method::POST, Some("/v1/queues/{name}/messages")), "SendMessage");
        assert_eq!(native_action(&Method::POST, None), UNKNOWN);
    }
}
