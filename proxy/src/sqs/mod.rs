//! The SQS-compatible API: the AWS CLI, boto3 and the AWS SDKs talk to the proxy unchanged
//! (`--endpoint-url http://HOST:9324`).
//!
//! This module owns the wire side: SigV4 authentication ([`auth`]), the JSON protocol
//! (`POST /` with `X-Amz-Target: AmazonSQS.<Action>` and `application/x-amz-json-1.0`), the query
//! protocol of older SDKs ([`query`]: forms in, XML out, at `/` or at a queue URL), queue URLs
//! (`http://HOST/<tenant>/<queue>`) and ARNs (`arn:aws:sqs:<region>:<tenant>:<queue>`), and SQS's
//! error codes ([`error`]). Both protocols run the same actions ([`actions`], on the JSON
//! protocol's shapes), on the same queues as the native API. The tenant comes only from the
//! verified access key: a queue URL naming another tenant answers exactly like a missing queue.

pub mod actions;
pub mod auth;
pub mod error;
pub mod md5;
pub mod query;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strata_common::Clock;
use strata_common::limits::HTTP_REQUEST_BYTES_MAX;

use self::auth::{AccessKeys, Caller, Signed};
use self::error::SqsError;
use crate::metering::{CallId, Charge, Meter};
use crate::quotas::Quotas;
use crate::routing::Router as Placement;
use crate::sigv4::SignedParts;

const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.0";
pub(crate) const TARGET_PREFIX: &str = "AmazonSQS.";

/// What the SQS handlers share.
pub struct SqsState {
    pub placement: Arc<Placement>,
    pub keys: AccessKeys,
    pub clock: Arc<dyn Clock>,
    pub meter: Meter,
    pub quotas: Quotas,
}

/// One authenticated request: who calls, and how its queue URLs are spelled.
pub struct Ctx<'a> {
    pub state: &'a SqsState,
    pub caller: Caller,
    /// `http://host[:port]` as the client addressed us, the base of queue URLs.
    pub base_url: String,
    /// The call's id and customer, for metering and idempotent sends.
    pub call: parking_lot::Mutex<CallId>,
    /// What the action is charged for, filled in as it runs (queue, payload).
    pub charge: parking_lot::Mutex<Charge>,
    /// The request body as received (part of the call's billing key).
    pub body: &'a [u8],
    /// The id the call is answered with (`x-amzn-RequestId`).
    pub request_id: &'a str,
}

impl Ctx<'_> {
    pub fn tenant(&self) -> &str {
        &self.caller.tenant
    }

    /// Who makes the call, as the shard's log keeps it: the access key and the request id.
    pub fn storage_caller(&self) -> strata_common::proto::Caller {
        strata_common::proto::Caller {
            credential: self.caller.access_key_id.clone(),
            request_id: self.request_id.to_owned(),
        }
    }

    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/{}/{}", self.base_url, self.caller.tenant, name)
    }

    pub fn queue_arn(&self, name: &str) -> String {
        format!("arn:aws:sqs:{}:{}:{}", self.caller.region, self.caller.tenant, name)
    }

    /// The queue name in a `QueueUrl` of the caller's tenant, in the forms SDKs send: a full URL
    /// with any host (`http://HOST/ACCOUNT/QUEUE`), a path (`/ACCOUNT/QUEUE`) or the bare queue
    /// name. A URL of another tenant's queue, or one that names no queue, answers like a missing
    /// queue.
    pub fn queue_name<'u>(&self, url: &'u str) -> Result<&'u str, SqsError> {
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
            None => url.trim_start_matches('/'),
        };
        let path = path.split(['?', '#']).next().unwrap_or("").trim_end_matches('/');
        let name = match path.rsplit_once('/') {
            Some((account, name)) => {
                let account = account.rsplit('/').next().unwrap_or(account);
                if account != self.caller.tenant {
                    return Err(SqsError::no_such_queue());
                }
                name
            }
            // A bare queue name (some SDKs and tools send one), or the path of a full URL.
            None if url.contains("://") => "",
            None => path,
        };
        if name.is_empty() {
            return Err(SqsError::no_such_queue());
        }
        Ok(name)
    }
}

/// An SQS request (`/` or a queue URL `/{account}/{queue}`), in either protocol. What needs no
/// body (a well-formed signature of a live access key) is checked before the body is read.
pub async fn handle(
    State(state): State<Arc<SqsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = state.placement.metadata.random().uuid().to_string();
    let query_protocol = query::is_query_request(&headers);
    let bare = SignedParts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &headers,
        body: &[],
    };
    let received = match state.keys.precheck(&bare, state.clock.now_ms()).await {
        Ok(signed) => match axum::body::to_bytes(body, HTTP_REQUEST_BYTES_MAX).await {
            Ok(body) => Ok((signed, body)),
            Err(_) => Err(SqsError::malformed_request(format!(
                "The request body could not be read whole, or is larger than {HTTP_REQUEST_BYTES_MAX} bytes."
            ))),
        },
        Err(e) => Err(e),
    };
    let body = received.as_ref().map_or(&[][..], |(_, body)| &body[..]);
    let action = crate::call_metrics::sqs_action(&headers, uri.query(), body);
    let signing = Signing { method: &method, uri: &uri, headers: &headers };
    let mut response = match (received, query_protocol) {
        (Ok((signed, body)), true) => query::handle(&state, signed, &signing, &body, &request_id).await,
        (Ok((signed, body)), false) => json_response(serve(&state, signed, &signing, &body, &request_id).await),
        (Err(e), true) => query::error_answer(&e, &request_id),
        (Err(e), false) => json_response(Err(e)),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response.extensions_mut().insert(crate::call_metrics::CallAction(action));
    response
}

fn json_response(result: Result<Value, SqsError>) -> Response {
    let mut response = match result {
        Ok(value) => (StatusCode::OK, value.to_string()).into_response(),
        Err(e) => error_response(&e),
    };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    response
}

/// What a request's signature covers besides its body: its method, URI and headers.
pub(crate) struct Signing<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
}

/// Verifies the request's signature (read before the body, as `signed`) over its method, path,
/// query, headers and body exactly as received; the context carries the caller, the base of
/// its queue URLs (`http://{Host}`) and `request_id`, the id the call is answered with.
fn authenticate<'s>(
    state: &'s SqsState,
    signed: Signed,
    request: &Signing<'_>,
    body: &'s [u8],
    request_id: &'s str,
) -> Result<Ctx<'s>, SqsError> {
    let Signing { method, uri, headers } = *request;
    let parts =
        SignedParts { method: method.as_str(), path: uri.path(), query: uri.query().unwrap_or(""), headers, body };
    let caller = signed.verify(&parts, state.clock.now_ms())?;
    let call = CallId::from_headers(headers).map_err(|e| SqsError::invalid_parameter_value(e.message))?;
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    Ok(Ctx {
        state,
        caller,
        base_url: format!("http://{host}"),
        call: parking_lot::Mutex::new(call),
        charge: parking_lot::Mutex::new(Charge::default()),
        body,
        request_id,
    })
}

/// Runs an authenticated action and, when it is accepted, charges it before it is answered
/// (a batch with failed entries is accepted; its payload counts the entries stored), unless its
/// record travelled with its storage command.
async fn run(ctx: &Ctx<'_>, action: &str, input: Value) -> Result<Value, SqsError> {
    let _admission = ctx.state.quotas.admit(ctx.tenant(), ctx.body.len() as u64, action == "ReceiveMessage").await?;
    ctx.charge.lock().action = action.to_owned();
    let output = actions::dispatch(ctx, action, input).await?;
    let charge = ctx.charge.lock().clone();
    if !charge.carried {
        let call = ctx.call.lock().clone();
        ctx.state.meter.charge(ctx.tenant(), &call, ctx.body, charge).await?;
    }
    Ok(output)
}

async fn serve(
    state: &SqsState,
    signed: Signed,
    request: &Signing<'_>,
    body: &[u8],
    request_id: &str,
) -> Result<Value, SqsError> {
    let headers = request.headers;
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        SqsError::invalid_action(
            "A JSON-protocol request needs X-Amz-Target: AmazonSQS.<Action> (with Content-Type: \
             application/x-amz-json-1.0); a query-protocol request is a form with Action=<Action>.",
        )
    })?;
    let action = target
        .strip_prefix(TARGET_PREFIX)
        .ok_or_else(|| SqsError::invalid_action(format!("Unknown target '{target}'.")))?;
    let ctx = authenticate(state, signed, request, body, request_id)?;
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| SqsError::malformed_request(format!("The request body is not valid JSON: {e}")))?
    };
    if !input.is_object() {
        return Err(SqsError::malformed_request("The request body must be a JSON object."));
    }
    run(&ctx, action, input).await
}

fn error_response(e: &SqsError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({ "__type": format!("com.amazonaws.sqs#{}", e.code), "message": e.message });
    let mut response = (status, body.to_string()).into_response();
    if let Some(seconds) = e.retry_after_s {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    let fault = if e.sender_fault { "Sender" } else { "Receiver" };
    if let Ok(value) = HeaderValue::from_str(&format!("{};{fault}", e.query_code)) {
        response.headers_mut().insert("x-amzn-query-error", value);
    }
    response
}
