//! The native HTTP/JSON API (`/v1/...`), documented in `openapi.json` (served at `/openapi.json`).
//!
//! Every `/v1` route needs a JWT bearer token; the tenant is the token's verified subject and
//! nothing else. Request bodies are JSON, parsed here so that every malformed request gets a JSON
//! error with a stable code. Limits: request body [`HTTP_REQUEST_BYTES_MAX`], message body
//! [`MESSAGE_BODY_BYTES_MAX`], batches of at most 10.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::limits::{
    self, HTTP_REQUEST_BYTES_MAX, LIST_QUEUES_PAGE_MAX, LONG_POLL_MS_MAX, MESSAGE_BODY_BYTES_MAX,
};
use strata_common::names::validate_queue_name;
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;

use crate::auth::JwtVerifier;
use crate::credentials::{admin_path_tenant, verified_subject};
use crate::error::ApiError;
use crate::metering::{CallId, Charge, Meter, message_payload_bytes};
use crate::queue_rules::{self, Refusal};
use crate::queues;
use crate::quotas::Quotas;
use crate::routing::Router as Placement;
use crate::sqs::auth::AccessKeys;
use crate::sqs::{self, SqsState};
use crate::storage_client::{CoLocatedStorage, StorageClients};
use strata_common::{Clock, Random};

const OPENAPI_JSON: &str = include_str!("../../openapi.json");

mod dead_letters;
mod settings;
mod tags;

pub(crate) use settings::default_config;
use settings::{DELAY_S_MAX, QueueAttributesInput, VISIBILITY_TIMEOUT_S_MAX};

const BATCH_ENTRIES_MAX: usize = limits::SEND_BATCH_MAX;

/// What the proxy needs to run.
pub struct ProxySettings {
    pub metadata_endpoint: String,
    pub verifier: JwtVerifier,
    /// A storage node in this process, called without a network hop (`strata dev`).
    pub co_located_storage: Option<CoLocatedStorage>,
    /// Time for SigV4 checks, key revocation, quotas and retries.
    pub clock: Arc<dyn Clock>,
    /// Where request ids and billing keys are drawn from.
    pub random: Random,
    /// Verifies operators' tokens on the admin API (its own audience).
    pub admin_verifier: JwtVerifier,
    /// Meter every accepted call into the system metering queue (off only to measure its cost).
    pub metering: bool,
    /// How many proxies share each tenant's rate limits: this one enforces 1/N of them.
    pub fleet_proxies: u32,
}

#[derive(Clone)]
struct AppState {
    placement: Arc<Placement>,
    verifier: Arc<JwtVerifier>,
    admin_verifier: Arc<JwtVerifier>,
    sqs: Arc<SqsState>,
    meter: Meter,
}

/// The proxy's two routers: the tenant-facing API (native and SQS) and the operators' admin API,
/// served on its own listener.
pub struct Routers {
    pub api: Router,
    pub admin: Router,
}

/// The proxy's axum routers.
pub fn router(settings: ProxySettings) -> Result<Routers, StrataError> {
    let metadata = MetadataClient::connect_lazy(&settings.metadata_endpoint)?
        .with_seams(settings.clock.clone(), settings.random.clone());
    let storage = settings.co_located_storage.map(StorageClients::with_co_located).unwrap_or_default();
    let placement = Arc::new(Placement::new(metadata.clone(), storage));
    let meter = if settings.metering { Meter::start(placement.clone()) } else { Meter::disabled() };
    let sqs = Arc::new(SqsState {
        placement: placement.clone(),
        keys: AccessKeys::new(metadata),
        quotas: Quotas::new(placement.clone(), settings.fleet_proxies),
        clock: settings.clock,
        meter: meter.clone(),
    });
    let state = AppState {
        placement,
        verifier: Arc::new(settings.verifier),
        admin_verifier: Arc::new(settings.admin_verifier),
        sqs: sqs.clone(),
        meter,
    };
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/admin/v1/tenants/{tenant}/access-keys",
            post(create_access_key::<AdminTenant>).get(list_access_keys::<AdminTenant>),
        )
        .route("/admin/v1/tenants/{tenant}/access-keys/{id}", delete(revoke_access_key::<AdminTenant>))
        .route("/admin/v1/tenants/{tenant}/access-keys/{id}/rotate", post(rotate_access_key::<AdminTenant>))
        .route("/admin/v1/storage-nodes", get(list_storage_nodes))
        .route("/admin/v1/shards/{id}", get(get_shard))
        .route("/admin/v1/shards/{id}/move-replica", post(move_replica))
        .route("/admin/v1/metadata-members", get(list_metadata_members).post(change_metadata_members))
        .route("/admin/v1/limit-plans", get(list_limit_plans))
        .route("/admin/v1/limit-plans/{name}", axum::routing::put(set_limit_plan))
        .route("/admin/v1/tenants/{tenant}/limits", get(get_limits::<AdminTenant>).put(set_tenant_limits))
        .fallback(|| async { ApiError(StrataError::invalid("no such admin route")) })
        .layer(DefaultBodyLimit::max(HTTP_REQUEST_BYTES_MAX))
        .with_state(state.clone());
    let sqs_router = Router::new()
        // The JSON protocol posts to `/`; the query protocol posts or gets at `/` or at a queue URL.
        // Static segments win in axum, so the native `/v1/...` routes keep theirs.
        .route("/", post(sqs::handle).get(sqs::handle))
        .route("/{account}/{queue}", post(sqs::handle).get(sqs::handle))
        .layer(DefaultBodyLimit::max(HTTP_REQUEST_BYTES_MAX))
        .with_state(sqs);
    let api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/queues", post(create_queue).get(list_queues))
        .route("/v1/queues/{name}", get(get_queue).delete(delete_queue).patch(set_queue_attributes))
        .route("/v1/queues/{name}/messages", post(send_messages))
        .route("/v1/queues/{name}/receive", post(receive_messages))
        .route("/v1/queues/{name}/delete", post(delete_messages))
        .route("/v1/queues/{name}/visibility", post(change_visibility))
        .route("/v1/queues/{name}/purge", post(purge_queue))
        .route("/v1/queues/{name}/scheduled/{message_id}", delete(cancel_scheduled))
        .route("/v1/queues/{name}/tags", get(tags::list).post(tags::add))
        .route("/v1/queues/{name}/tags/{key}", delete(tags::remove))
        .route("/v1/queues/{name}/dead-letter-sources", get(dead_letters::sources))
        .route("/v1/queues/{name}/move-tasks", post(dead_letters::start).get(dead_letters::list))
        .route("/v1/queues/{name}/move-tasks/{task_id}", delete(dead_letters::cancel))
        .route("/v1/limits", get(get_limits::<Tenant>))
        .route("/v1/access-keys", post(create_access_key::<Tenant>).get(list_access_keys::<Tenant>))
        .route("/v1/access-keys/{id}", delete(revoke_access_key::<Tenant>))
        .route("/v1/access-keys/{id}/rotate", post(rotate_access_key::<Tenant>))
        // Everything else under `/v1/` is the native API's too (the tenant id `v1` is reserved),
        // never an SQS queue URL `/{account}/{queue}`.
        .route("/v1/{*rest}", any(no_such_route))
        .fallback(no_such_route)
        .layer(DefaultBodyLimit::max(HTTP_REQUEST_BYTES_MAX))
        .with_state(state)
        .merge(sqs_router);
    Ok(Routers { api, admin })
}

/// Serves the router on `addr` until `shutdown` resolves.
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Without TCP_NODELAY a response split over two writes waits for the peer's delayed ACK
    // (~40 ms per request).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

async fn no_such_route() -> ApiError {
    ApiError(StrataError::invalid("no such route; see /openapi.json"))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// Whose access keys (or limits) a request reads or manages: the verified tenant itself (tenant
/// API), or the tenant named in the path by a verified operator (admin API).
trait KeyOwner: FromRequestParts<AppState, Rejection = ApiError> + Send {
    fn tenant(&self) -> &str;
}

impl KeyOwner for Tenant {
    fn tenant(&self) -> &str {
        &self.0
    }
}

/// A tenant named by an operator on the admin API (`/admin/v1/tenants/{tenant}/...`), after
/// the operator's token was verified against the admin audience.
struct AdminTenant(String);

impl KeyOwner for AdminTenant {
    fn tenant(&self) -> &str {
        &self.0
    }
}

impl FromRequestParts<AppState> for AdminTenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(AdminTenant(admin_path_tenant(parts, state, &state.admin_verifier).await?))
    }
}

/// An operator with a verified admin token (cluster-wide admin routes).
struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let operator = verify_operator(parts, state)?;
        tracing::info!(%operator, path = %parts.uri.path(), "admin request");
        Ok(Operator)
    }
}

/// The operator named by the request's admin token.
fn verify_operator(parts: &Parts, state: &AppState) -> Result<String, ApiError> {
    verified_subject(&state.admin_verifier, &parts.headers)
}

/// The `{id}` of an access-key route.
#[derive(Debug, Deserialize)]
struct KeyId {
    id: String,
}

/// The verified tenant of a request.
struct Tenant(String);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Tenant(verified_subject(&state.verifier, &parts.headers)?))
    }
}

impl FromRequestParts<AppState> for CallId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        CallId::from_headers(&parts.headers).map_err(ApiError)
    }
}

impl AppState {
    /// Checks the tenant's quotas (and billing cap) before a call carrying `request_bytes`.
    async fn admit(&self, tenant: &str, request_bytes: usize) -> Result<(), ApiError> {
        Ok(self.sqs.quotas.admit(tenant, request_bytes as u64, false).await?)
    }

    /// Reads a call's JSON body, admits the call under the tenant's quotas (before parsing, so
    /// malformed calls count too), and parses it; answers the raw body (part of the billing key)
    /// and the request. A receive is held to the tenant's in-flight limit as well.
    async fn admit_json<T: DeserializeOwned>(
        &self,
        tenant: &str,
        body: Result<Bytes, BytesRejection>,
        receive: bool,
    ) -> Result<(Bytes, T), ApiError> {
        let body = body_bytes(body)?;
        self.sqs.quotas.admit(tenant, body.len() as u64, receive).await?;
        let request = parse_body(&body)?;
        Ok((body, request))
    }

    /// Charges an accepted call (durably) before it is answered.
    async fn charge(&self, tenant: &str, call: &CallId, body: &[u8], charge: Charge) -> Result<(), ApiError> {
        Ok(self.meter.charge(tenant, call, body, charge).await?)
    }
}

fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    parse_body(&body_bytes(body)?)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(StrataError::new(
                ErrorKind::TooLarge,
                format!("request body exceeds {HTTP_REQUEST_BYTES_MAX} bytes"),
            ))
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"))
        }
    })
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON request: {e}")))
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    validate_queue_name(name).map_err(ApiError)
}

// ------------------------------------------------------------------------------------ queues

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQueueRequest {
    name: String,
    #[serde(default)]
    attributes: QueueAttributesInput,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

fn queue_json(info: &pb::QueueInfo, stats: Option<&pb::QueueStats>) -> serde_json::Value {
    let config = info.config.clone().unwrap_or_default();
    let tags: BTreeMap<&String, &String> = info.tags.iter().collect();
    let mut value = json!({
        "name": info.name,
        "queue_id": info.queue_id.to_string(),
        "created_timestamp_ms": info.created_ms,
        "last_modified_timestamp_ms": info.modified_ms,
        "attributes": settings::attributes_json(&info.tenant, &config),
        "tags": tags,
    });
    if let Some(stats) = stats {
        value["approximate_number_of_messages"] = json!(stats.visible);
        value["approximate_number_of_messages_not_visible"] = json!(stats.in_flight);
        value["approximate_number_of_messages_delayed"] = json!(stats.delayed);
    }
    value
}

async fn create_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, request): (_, CreateQueueRequest) = state.admit_json(&tenant, body, false).await?;
    validate_name(&request.name)?;
    tags::check(&request.tags)?;
    let (config, dead_letter_shard) =
        request.attributes.apply(&state.placement, &tenant, &request.name, default_config(), true).await?;
    let mut info =
        queue_rules::create_queue_with_dead_letter(&state.placement, &tenant, &request.name, config, dead_letter_shard)
            .await?;
    if !request.tags.is_empty() {
        info = state.placement.metadata.tag_queue(&tenant, &request.name, request.tags.into_iter().collect()).await?;
    }
    state.charge(&tenant, &call, &body, Charge::new("CreateQueue", &request.name)).await?;
    Ok((StatusCode::CREATED, Json(queue_json(&info, None))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQueuesQuery {
    #[serde(default)]
    prefix: String,
    max_results: Option<u32>,
    next_token: Option<String>,
}

async fn list_queues(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    uri: axum::http::Uri,
    query: Result<Query<ListQueuesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?;
    let max = query.max_results.unwrap_or(LIST_QUEUES_PAGE_MAX);
    if !(1..=LIST_QUEUES_PAGE_MAX).contains(&max) {
        return Err(ApiError::invalid(format!("max_results must be 1-{LIST_QUEUES_PAGE_MAX}")));
    }
    let start_after = query.next_token.unwrap_or_default();
    let page = state.placement.metadata.list_queues(&tenant, &query.prefix, &start_after, max).await?;
    let next_token = if page.truncated { page.queues.last().map(|q| q.name.clone()) } else { None };
    let queues: Vec<_> = page.queues.iter().map(|q| queue_json(q, None)).collect();
    let query_text = uri.query().unwrap_or("").as_bytes();
    state.charge(&tenant, &call, query_text, Charge::new("ListQueues", "")).await?;
    Ok(Json(json!({ "queues": queues, "next_token": next_token })))
}

async fn get_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    let stats =
        queues::on_queue(&state.placement, &tenant, &name, |mut c, q| async move { c.get_queue_stats(q).await })
            .await?;
    // From metadata, not the placement cache: settings and tags change without a new incarnation.
    let info = state.placement.metadata.get_queue(&tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("GetQueueAttributes", &name)).await?;
    Ok(Json(queue_json(&info, Some(&stats))))
}

async fn delete_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.admit(&tenant, 0).await?;
    queues::delete_queue(&state.placement, &tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("DeleteQueue", &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_queue_attributes(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (body, input): (_, QueueAttributesInput) = state.admit_json(&tenant, body, false).await?;
    let current = queues::info(&state.placement, &tenant, &name).await?;
    let base = current.config.clone().unwrap_or_default();
    let (config, dead_letter_shard) = input.apply(&state.placement, &tenant, &name, base, false).await?;
    if dead_letter_shard.is_some_and(|shard| shard != current.shard_id) {
        return Err(ApiError(Refusal::DifferentShard.into()));
    }
    let info = queues::set_config(&state.placement, &tenant, &name, config).await?;
    state.charge(&tenant, &call, &body, Charge::new("SetQueueAttributes", &name)).await?;
    Ok(Json(queue_json(&info, None)))
}

async fn purge_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    let purged = queues::on_queue(&state.placement, &tenant, &name, |mut c, q| async move { c.purge(q).await }).await?;
    state.charge(&tenant, &call, b"", Charge::new("PurgeQueue", &name)).await?;
    Ok(Json(json!({ "purged": purged.purged })))
}

async fn cancel_scheduled(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path((name, message_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admit(&tenant, 0).await?;
    queues::on_queue(&state.placement, &tenant, &name, |mut c, q| {
        let message_id = message_id.clone();
        async move { c.cancel_scheduled(pb::CancelScheduledRequest { queue: Some(q), message_id }).await }
    })
    .await?;
    state.charge(&tenant, &call, message_id.as_bytes(), Charge::new("CancelScheduledMessage", &name)).await?;
    Ok(Json(json!({ "cancelled": true })))
}

// ------------------------------------------------------------------------------------ messages

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AttributeJson {
    /// "String", "Number" or "Binary" (base64 value).
    #[serde(rename = "type")]
    data_type: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageInput {
    body: String,
    #[serde(default)]
    attributes: BTreeMap<String, AttributeJson>,
    delay_seconds: Option<u64>,
    /// Deliver at this unix time in milliseconds (up to a year ahead); not with `delay_seconds`.
    deliver_at_ms: Option<u64>,
    /// FIFO queues: the message group, delivered in order one message at a time.
    group_id: Option<String>,
    /// FIFO queues: a send with an id seen in the last 5 minutes is accepted and not stored
    /// again. Not needed when the queue deduplicates by content.
    deduplication_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    messages: Vec<MessageInput>,
}

fn message_to_pb(m: MessageInput, config: &pb::QueueConfig) -> Result<pb::NewMessage, ApiError> {
    if m.body.is_empty() {
        return Err(ApiError::invalid("message body must not be empty"));
    }
    if m.body.len() > MESSAGE_BODY_BYTES_MAX {
        return Err(ApiError(StrataError::new(
            ErrorKind::TooLarge,
            format!("message body is {} bytes; the limit is {MESSAGE_BODY_BYTES_MAX}", m.body.len()),
        )));
    }
    let has_own_delay = m.delay_seconds.is_some() || m.deliver_at_ms.is_some();
    let (message_group_id, message_deduplication_id) = queue_rules::fifo_ids(
        config,
        m.group_id.as_deref(),
        m.deduplication_id.as_deref(),
        has_own_delay,
        m.body.as_bytes(),
    )?;
    if m.delay_seconds.is_some_and(|d| d > DELAY_S_MAX) {
        return Err(ApiError::invalid(format!("delay_seconds must be 0-{DELAY_S_MAX}")));
    }
    // The shard checks the deliver-at time against its own clock (at most a year ahead).
    if m.delay_seconds.is_some() && m.deliver_at_ms.is_some() {
        return Err(ApiError::invalid("a message takes delay_seconds or deliver_at_ms, not both"));
    }
    let mut attributes = std::collections::HashMap::new();
    for (name, a) in m.attributes {
        let value = if a.data_type.starts_with("Binary") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&a.value)
                .map_err(|_| ApiError::invalid(format!("attribute '{name}' is Binary but its value is not base64")))?;
            pb::MessageAttribute { data_type: a.data_type, string_value: String::new(), binary_value: bytes }
        } else {
            pb::MessageAttribute { data_type: a.data_type, string_value: a.value, binary_value: Vec::new() }
        };
        attributes.insert(name, value);
    }
    let size_bytes = message_payload_bytes(m.body.as_bytes(), &attributes);
    let limit = queue_rules::maximum_message_bytes(config);
    if size_bytes > limit {
        return Err(ApiError(StrataError::new(
            ErrorKind::TooLarge,
            format!("the message (body and attributes) is {size_bytes} bytes; this queue takes at most {limit}"),
        )));
    }
    Ok(pb::NewMessage {
        body: Bytes::from(m.body),
        attributes,
        delay_ms: m.delay_seconds.map(|d| d * 1000),
        deliver_at_ms: m.deliver_at_ms,
        message_group_id,
        message_deduplication_id,
    })
}

/// Sends 1-10 messages. With `x-strata-request-id`, a retry (same tenant, same queue) is
/// stored once and answered like the first attempt.
async fn send_messages(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (body, request): (_, SendRequest) = state.admit_json(&tenant, body, false).await?;
    if request.messages.is_empty() || request.messages.len() > BATCH_ENTRIES_MAX {
        return Err(ApiError::invalid(format!("messages must hold 1-{BATCH_ENTRIES_MAX} entries")));
    }
    let config = queues::info(&state.placement, &tenant, &name).await?.config.unwrap_or_default();
    let messages = request.messages.into_iter().map(|m| message_to_pb(m, &config)).collect::<Result<Vec<_>, _>>()?;
    let payload_in_bytes = messages.iter().map(|m| message_payload_bytes(&m.body, &m.attributes)).sum();
    let action = if messages.len() == 1 { "SendMessage" } else { "SendMessageBatch" };
    let meter = state.meter.record(&tenant, &call, &body, Charge { payload_in_bytes, ..Charge::new(action, &name) });
    let sent = queues::send(&state.placement, &tenant, &name, &call, messages, meter).await?;
    let messages: Vec<_> = sent
        .messages
        .iter()
        .map(|m| {
            let mut sent = json!({ "message_id": m.message_id });
            if config.fifo_queue {
                sent["sequence_number"] = json!(m.seq.to_string());
            }
            sent
        })
        .collect();
    Ok(Json(json!({ "messages": messages })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveRequest {
    max_messages: Option<u32>,
    /// Long-poll wait; the queue's `receive_wait_seconds` when absent.
    wait_seconds: Option<u64>,
    visibility_timeout_seconds: Option<u64>,
    /// FIFO queues: a retry with the same id (within 5 minutes) answers the same messages.
    attempt_id: Option<String>,
}

fn received_json(m: pb::ReceivedMessage) -> serde_json::Value {
    let attributes: BTreeMap<String, serde_json::Value> = m
        .attributes
        .into_iter()
        .map(|(k, a)| {
            let value = if a.data_type.starts_with("Binary") {
                base64::engine::general_purpose::STANDARD.encode(&a.binary_value)
            } else {
                a.string_value
            };
            (k, json!({ "type": a.data_type, "value": value }))
        })
        .collect();
    let mut value = json!({
        "message_id": m.message_id,
        "receipt_handle": m.receipt_handle,
        "body": String::from_utf8_lossy(&m.body),
        "attributes": attributes,
        "receive_count": m.receive_count,
        "sent_timestamp_ms": m.sent_ms,
        "first_receive_timestamp_ms": m.first_receive_ms,
    });
    if !m.message_group_id.is_empty() {
        value["group_id"] = json!(m.message_group_id);
        value["deduplication_id"] = json!(m.message_deduplication_id);
        value["sequence_number"] = json!(m.sequence_number.to_string());
    }
    value
}

async fn receive_messages(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (body, request): (_, ReceiveRequest) = state.admit_json(&tenant, body, true).await?;
    let max_messages = request.max_messages.unwrap_or(1);
    if !(1..=BATCH_ENTRIES_MAX as u32).contains(&max_messages) {
        return Err(ApiError::invalid(format!("max_messages must be 1-{BATCH_ENTRIES_MAX}")));
    }
    let config = queues::info(&state.placement, &tenant, &name).await?.config.unwrap_or_default();
    let wait_ms = match request.wait_seconds {
        Some(s) if s * 1000 > LONG_POLL_MS_MAX => {
            return Err(ApiError::invalid(format!("wait_seconds must be 0-{}", LONG_POLL_MS_MAX / 1000)));
        }
        Some(s) => s * 1000,
        None => config.receive_wait_ms,
    };
    let attempt_id = match request.attempt_id {
        Some(id) if !queue_rules::valid_fifo_id(&id) => {
            return Err(ApiError::invalid("attempt_id must be 1-128 characters of letters, digits and punctuation"));
        }
        // As SQS: used by FIFO queues only.
        Some(id) if config.fifo_queue => id,
        _ => String::new(),
    };
    if request.visibility_timeout_seconds.is_some_and(|v| v > VISIBILITY_TIMEOUT_S_MAX) {
        return Err(ApiError::invalid(format!("visibility_timeout_seconds must be 0-{VISIBILITY_TIMEOUT_S_MAX}")));
    }
    let visibility_timeout_ms = request.visibility_timeout_seconds.map(|v| v * 1000);
    let received = queues::on_queue_polling(&state.placement, &tenant, &name, wait_ms, |mut c, q| {
        let receive_request_attempt_id = attempt_id.clone();
        async move {
            c.receive(pb::ReceiveRequest {
                queue: Some(q),
                max_messages,
                visibility_timeout_ms,
                wait_ms,
                receive_request_attempt_id,
            })
            .await
        }
    })
    .await?;
    let payload_out_bytes = received.messages.iter().map(|m| message_payload_bytes(&m.body, &m.attributes)).sum();
    let charge = Charge {
        payload_out_bytes,
        empty_receive: received.messages.is_empty(),
        ..Charge::new("ReceiveMessage", &name)
    };
    state.charge(&tenant, &call, &body, charge).await?;
    let messages: Vec<_> = received.messages.into_iter().map(received_json).collect();
    Ok(Json(json!({ "messages": messages })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteRequest {
    receipt_handles: Vec<String>,
}

async fn delete_messages(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (body, request): (_, DeleteRequest) = state.admit_json(&tenant, body, false).await?;
    if request.receipt_handles.is_empty() || request.receipt_handles.len() > BATCH_ENTRIES_MAX {
        return Err(ApiError::invalid(format!("receipt_handles must hold 1-{BATCH_ENTRIES_MAX} entries")));
    }
    let receipts = request.receipt_handles;
    let response = queues::on_queue(&state.placement, &tenant, &name, |mut c, q| {
        let receipt_handles = receipts.clone();
        async move { c.delete(pb::DeleteRequest { queue: Some(q), receipt_handles }).await }
    })
    .await?;
    let action = if response.results.len() == 1 { "DeleteMessage" } else { "DeleteMessageBatch" };
    state.charge(&tenant, &call, &body, Charge::new(action, &name)).await?;
    let results: Vec<_> = response
        .results
        .iter()
        .map(|r| {
            if r.error_code.is_empty() {
                json!({ "ok": true })
            } else {
                json!({ "ok": false, "error": { "code": r.error_code, "message": r.error_message } })
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisibilityRequest {
    receipt_handle: String,
    visibility_timeout_seconds: u64,
}

async fn change_visibility(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (body, request): (_, VisibilityRequest) = state.admit_json(&tenant, body, false).await?;
    if request.visibility_timeout_seconds > VISIBILITY_TIMEOUT_S_MAX {
        return Err(ApiError::invalid(format!("visibility_timeout_seconds must be 0-{VISIBILITY_TIMEOUT_S_MAX}")));
    }
    let receipt = request.receipt_handle;
    let visibility_timeout_ms = request.visibility_timeout_seconds * 1000;
    queues::on_queue(&state.placement, &tenant, &name, |mut c, q| {
        let receipt_handle = receipt.clone();
        async move {
            c.change_visibility(pb::ChangeVisibilityRequest { queue: Some(q), receipt_handle, visibility_timeout_ms })
                .await
        }
    })
    .await?;
    state.charge(&tenant, &call, &body, Charge::new("ChangeMessageVisibility", &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------- access keys

/// Longest grace period of a rotated key.
const ROTATION_GRACE_S_MAX: u64 = 7 * 24 * 3600;

fn access_key_json(key: &pb::AccessKey, now_ms: u64) -> serde_json::Value {
    let mut value = json!({
        "access_key_id": key.access_key_id,
        "created_timestamp_ms": key.created_ms,
        "status": if key.revoked_at_ms == 0 || now_ms < key.revoked_at_ms { "active" } else { "revoked" },
    });
    if key.revoked_at_ms != 0 {
        value["revoked_at_timestamp_ms"] = json!(key.revoked_at_ms);
    }
    if !key.secret_access_key.is_empty() {
        value["secret_access_key"] = json!(key.secret_access_key);
    }
    value
}

async fn list_storage_nodes(State(state): State<AppState>, _: Operator) -> Result<Json<serde_json::Value>, ApiError> {
    let answer = state.placement.metadata.storage_nodes().await?;
    let nodes: Vec<_> = answer
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "address": n.address,
                "zone": n.zone,
                "capacity_bytes": n.capacity_bytes,
                "live": n.live,
                "registered_ms": n.registered_ms,
                "format_generation_max": n.format_generation_max,
            })
        })
        .collect();
    Ok(Json(json!({ "storage_nodes": nodes, "format_generation": answer.format_generation })))
}

fn shard_json(shard: &pb::ShardInfo) -> serde_json::Value {
    json!({
        "shard_id": shard.shard_id,
        "writer": shard.node_id,
        "writer_epoch": shard.writer_epoch,
        "replicas": shard.replicas.iter().map(|r| json!({ "node_id": r.node_id, "address": r.address })).collect::<Vec<_>>(),
        "leaving": shard.leaving,
    })
}

/// The `{id}` of a shard route.
#[derive(Debug, Deserialize)]
struct ShardId {
    id: u64,
}

async fn get_shard(
    State(state): State<AppState>,
    _: Operator,
    Path(ShardId { id }): Path<ShardId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(shard_json(&state.placement.metadata.get_shard(id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveReplicaRequest {
    from_node: String,
    to_node: String,
}

/// Moves a replica of a shard to another storage node; the move completes in the background
/// (`leaving` empties once the old node has left the shard's group).
async fn move_replica(
    State(state): State<AppState>,
    _: Operator,
    Path(ShardId { id }): Path<ShardId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: MoveReplicaRequest = parse_json(body)?;
    let shard = state.placement.metadata.move_replica(id, &request.from_node, &request.to_node).await?;
    Ok((StatusCode::ACCEPTED, Json(shard_json(&shard))).into_response())
}

fn members_json(members: &pb::MetadataMembersResponse) -> serde_json::Value {
    let list: Vec<_> = members.members.iter().map(|m| json!({ "node_id": m.node_id, "address": m.address })).collect();
    json!({ "members": list, "leader_id": members.leader_id })
}

async fn list_metadata_members(
    State(state): State<AppState>,
    _: Operator,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(members_json(&state.placement.metadata.list_metadata_members().await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberJson {
    node_id: u64,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeMembersRequest {
    #[serde(default)]
    add: Vec<MemberJson>,
    #[serde(default)]
    remove: Vec<u64>,
}

/// Adds members (running, caught up first) to the metadata quorum and removes others.
async fn change_metadata_members(
    State(state): State<AppState>,
    _: Operator,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: ChangeMembersRequest = parse_json(body)?;
    let add = request.add.into_iter().map(|m| pb::MetadataMember { node_id: m.node_id, address: m.address }).collect();
    let members = state.placement.metadata.change_metadata_members(add, request.remove).await?;
    Ok(Json(members_json(&members)))
}

// ------------------------------------------------------------------------------------ limits

/// A tenant's limits on the wire are `pb::TenantLimits` as JSON: 0 (or absent) means none of
/// that kind (in overrides: the plan's).
fn limits_info_json(info: pb::TenantLimitsInfo) -> serde_json::Value {
    json!({
        "tenant": info.tenant,
        "plan": info.plan,
        "overrides": info.overrides.unwrap_or_default(),
        "effective": info.effective.unwrap_or_default(),
        "capped_reason": info.capped_reason,
    })
}

async fn get_limits<O: KeyOwner>(State(state): State<AppState>, owner: O) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(limits_info_json(state.placement.metadata.get_tenant_limits(owner.tenant()).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTenantLimitsRequest {
    /// A limits plan (empty or absent: the plan named `default`, if any).
    #[serde(default)]
    plan: String,
    #[serde(default)]
    overrides: pb::TenantLimits,
}

async fn set_tenant_limits(
    State(state): State<AppState>,
    AdminTenant(tenant): AdminTenant,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: SetTenantLimitsRequest = parse_json(body)?;
    let info = state.placement.metadata.set_tenant_limits(&tenant, &request.plan, request.overrides).await?;
    Ok(Json(limits_info_json(info)))
}

/// The `{name}` of a limit plan route.
#[derive(Debug, Deserialize)]
struct PlanName {
    name: String,
}

async fn set_limit_plan(
    State(state): State<AppState>,
    _: Operator,
    Path(PlanName { name }): Path<PlanName>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limits: pb::TenantLimits = parse_json(body)?;
    let plan = state.placement.metadata.set_limit_plan(&name, limits).await?;
    Ok(Json(json!({ "name": plan.name, "limits": plan.limits.unwrap_or_default() })))
}

async fn list_limit_plans(State(state): State<AppState>, _: Operator) -> Result<Json<serde_json::Value>, ApiError> {
    let plans: Vec<_> = state
        .placement
        .metadata
        .list_limit_plans()
        .await?
        .into_iter()
        .map(|p| json!({ "name": p.name, "limits": p.limits.unwrap_or_default() }))
        .collect();
    Ok(Json(json!({ "limit_plans": plans })))
}

async fn create_access_key<O: KeyOwner>(State(state): State<AppState>, owner: O) -> Result<Response, ApiError> {
    let key = state.placement.metadata.create_access_key(owner.tenant()).await?;
    let now_ms = state.sqs.clock.now_ms();
    Ok((StatusCode::CREATED, Json(access_key_json(&key, now_ms))).into_response())
}

async fn list_access_keys<O: KeyOwner>(
    State(state): State<AppState>,
    owner: O,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = state.placement.metadata.list_access_keys(owner.tenant()).await?;
    let now_ms = state.sqs.clock.now_ms();
    let keys: Vec<_> = keys.iter().map(|k| access_key_json(k, now_ms)).collect();
    Ok(Json(json!({ "access_keys": keys })))
}

async fn revoke_access_key<O: KeyOwner>(
    State(state): State<AppState>,
    owner: O,
    Path(KeyId { id }): Path<KeyId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = state.placement.metadata.revoke_access_key(owner.tenant(), &id).await?;
    state.sqs.keys.forget(&id);
    Ok(Json(access_key_json(&key, state.sqs.clock.now_ms())))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the old key keeps working (default 0: it stops at once).
    grace_seconds: Option<u64>,
}

async fn rotate_access_key<O: KeyOwner>(
    State(state): State<AppState>,
    owner: O,
    Path(KeyId { id }): Path<KeyId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: RotateRequest = parse_json(body)?;
    let grace_s = request.grace_seconds.unwrap_or(0);
    if grace_s > ROTATION_GRACE_S_MAX {
        return Err(ApiError::invalid(format!("grace_seconds must be 0-{ROTATION_GRACE_S_MAX}")));
    }
    let key = state.placement.metadata.rotate_access_key(owner.tenant(), &id, grace_s * 1000).await?;
    state.sqs.keys.forget(&id);
    let now_ms = state.sqs.clock.now_ms();
    Ok((StatusCode::CREATED, Json(access_key_json(&key, now_ms))).into_response())
}
