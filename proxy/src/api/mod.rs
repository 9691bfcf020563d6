//! The native HTTP/JSON API (`/v1/...`). Its shapes are the types of [`strata_client::model`]; the
//! OpenAPI document served at `/openapi.json` is generated from them and from the routes below
//! (`openapi.json` in this crate is a committed copy, checked by a test).
//!
//! Every `/v1` route needs a JWT bearer token; the tenant is the token's verified subject and
//! nothing else. Request bodies are JSON, parsed here so that every malformed request gets a JSON
//! error with a stable code. Limits: request body [`HTTP_REQUEST_BYTES_MAX`], message body
//! [`MESSAGE_BODY_BYTES_MAX`], batches of at most 10.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use strata_client::model::{self, admin};
use strata_common::error::{ErrorKind, StrataError};
use strata_common::limits::{
    self, HTTP_REQUEST_BYTES_MAX, LIST_QUEUES_PAGE_MAX, LONG_POLL_MS_MAX, MESSAGE_BODY_BYTES_MAX,
};
use strata_common::names::validate_queue_name;
use strata_common::proto as pb;
use strata_common::{Clock, Random};
use strata_http::server::ServerLimits;
use strata_metadata_client::MetadataClient;
use strata_tls::Credentials;
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, IntoResponses, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::JwtVerifier;
use crate::credentials::{admin_path_tenant, verified_subject};
use crate::error::{ApiError, json_errors, public_message};
use crate::metering::{CallId, Charge, Meter, message_payload_bytes};
use crate::queue_rules;
use crate::queues;
use crate::quotas::{Admission, ConcurrencyLimits, Quotas};
use crate::routing::Router as Placement;
use crate::sqs::auth::AccessKeys;
use crate::sqs::{self, SqsState};
use crate::storage_client::{CoLocatedStorage, StorageClients};
use callers::NativeCaller;

mod callers;
mod dead_letters;
mod message_trace;
mod queue_metrics;
mod queue_moves;
mod settings;
mod tags;
mod tenants;

pub(crate) use settings::default_config;
use settings::{DELAY_S_MAX, VISIBILITY_TIMEOUT_S_MAX};

const BATCH_ENTRIES_MAX: usize = limits::SEND_BATCH_MAX;

/// What the proxy needs to run.
pub struct ProxySettings {
    pub metadata_endpoint: String,
    /// The proxy's credentials on the internal plane (metadata and storage calls).
    pub tls: Credentials,
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
    /// How many calls (and receives) of one tenant this proxy serves at once.
    pub concurrency: ConcurrencyLimits,
}

#[derive(Clone)]
struct AppState {
    placement: Arc<Placement>,
    verifier: Arc<JwtVerifier>,
    admin_verifier: Arc<JwtVerifier>,
    sqs: Arc<SqsState>,
    meter: Meter,
    /// Tenants' last scrapes of `/v1/metrics`.
    tenant_scrapes: Arc<queue_metrics::TenantScrapes>,
}

/// The proxy's two routers: the tenant-facing API (native and SQS) and the operators' admin API,
/// served on its own listener.
pub struct Routers {
    pub api: Router,
    pub admin: Router,
    /// The proxy's readiness: the metadata quorum reachable.
    pub readiness: strata_http::observe::Readiness,
}

/// The proxy's axum routers.
pub fn router(settings: ProxySettings) -> Result<Routers, StrataError> {
    let metadata = MetadataClient::connect_lazy(&settings.metadata_endpoint, &settings.tls)?
        .with_seams(settings.clock.clone(), settings.random.clone());
    let readiness = {
        let metadata = metadata.clone();
        strata_http::observe::Readiness::new(settings.clock.clone(), move || {
            let metadata = metadata.clone();
            async move { vec![metadata.quorum_check().await] }
        })
    };
    let storage = match settings.co_located_storage {
        Some(co_located) => StorageClients::with_co_located(settings.tls, co_located),
        None => StorageClients::new(settings.tls),
    };
    let placement = Arc::new(Placement::new(metadata.clone(), storage));
    let meter = if settings.metering { Meter::start(placement.clone()) } else { Meter::disabled() };
    let sqs = Arc::new(SqsState {
        placement: placement.clone(),
        keys: AccessKeys::new(metadata),
        quotas: Quotas::new(placement.clone(), settings.fleet_proxies, settings.concurrency),
        clock: settings.clock,
        meter: meter.clone(),
    });
    let state = AppState {
        placement,
        verifier: Arc::new(settings.verifier),
        admin_verifier: Arc::new(settings.admin_verifier),
        sqs: sqs.clone(),
        meter,
        tenant_scrapes: Arc::default(),
    };
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/admin/v1/tenants/{tenant}/access-keys",
            post(create_access_key::<AdminTenant>).get(list_access_keys::<AdminTenant>),
        )
        .route("/admin/v1/tenants/{tenant}/access-keys/{id}", delete(revoke_access_key::<AdminTenant>))
        .route("/admin/v1/tenants/{tenant}/access-keys/{id}/rotate", post(rotate_access_key::<AdminTenant>))
        .route("/admin/v1/tenants", get(tenants::list))
        .route("/admin/v1/tenants/{tenant}/queues", get(tenants::queues))
        .route("/admin/v1/tenants/{tenant}/queues/{name}/placement", get(queue_moves::placement))
        .route("/admin/v1/tenants/{tenant}/queues/{name}/move", post(queue_moves::start))
        .route("/admin/v1/queue-moves", get(queue_moves::list))
        .route("/admin/v1/storage-nodes", get(list_storage_nodes))
        .route("/admin/v1/storage-nodes/{node}/drain", post(drain_node))
        .route("/admin/v1/shards", post(add_shard))
        .route("/admin/v1/shards/{id}", get(get_shard))
        .route("/admin/v1/shards/{id}/move-replica", post(move_replica))
        .route("/admin/v1/shards/{id}/transfer-leader", post(transfer_leader))
        .route("/admin/v1/shards/{id}/split", post(queue_moves::split))
        .route("/admin/v1/metadata-members", get(list_metadata_members).post(change_metadata_members))
        .route("/admin/v1/limit-plans", get(list_limit_plans))
        .route("/admin/v1/limit-plans/{name}", axum::routing::put(set_limit_plan))
        .route("/admin/v1/tenants/{tenant}/limits", get(get_limits::<AdminTenant>).put(set_tenant_limits))
        .fallback(|| async { ApiError(StrataError::new(ErrorKind::UnknownRoute, "no such admin route")) })
        .layer(DefaultBodyLimit::max(HTTP_REQUEST_BYTES_MAX))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state.clone());
    let sqs_router = Router::new()
        // The JSON protocol posts to `/`; the query protocol posts or gets at `/` or at a queue URL.
        // Static segments win in axum, so the native `/v1/...` routes keep theirs.
        .route("/", post(sqs::handle).get(sqs::handle))
        .route("/{account}/{queue}", post(sqs::handle).get(sqs::handle))
        .layer(DefaultBodyLimit::max(HTTP_REQUEST_BYTES_MAX))
        .layer(axum::middleware::from_fn(|request, next| crate::call_metrics::record("sqs", request, next)))
        .with_state(sqs);
    let (native, document) = native_routes().split_for_parts();
    let document = document.to_pretty_json().map_err(|e| StrataError::internal(format!("OpenAPI document: {e}")))?;
    let api = native
        .route("/openapi.json", get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }))
        .route("/healthz", get(|| async { "ok" }))
        // Everything else under `/v1/` is the native API's too (the tenant id `v1` is reserved),
        // never an SQS queue URL `/{account}/{queue}`.
        .route("/v1/{*rest}", any(no_such_route))
        .fallback(no_such_route)
        .layer(DefaultBodyLimit::max(HTTP_REQUEST_BYTES_MAX))
        // The native API's own routes answer errors in JSON only (the SQS routes merged below
        // answer in their protocol's shapes).
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), callers::request_ids))
        .layer(axum::middleware::from_fn(|request, next| crate::call_metrics::record("native", request, next)))
        .with_state(state)
        .merge(sqs_router);
    Ok(Routers { api, admin, readiness })
}

/// Serves the router on `listener` within `limits` until `shutdown` resolves (see
/// [`strata_http::server`]).
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    strata_http::server::serve(router, listener, limits, shutdown).await
}

async fn no_such_route() -> ApiError {
    ApiError(StrataError::new(ErrorKind::UnknownRoute, "no such route; see /openapi.json"))
}

/// The OpenAPI document's frame: what is not generated from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strata native API",
        version = "1.0.0",
        description = "Queues and messages over HTTP/JSON. Authenticate with a JWT bearer token; the tenant is \
            the token's subject. Errors are {\"error\": {\"code\", \"message\"}} with stable codes: \
            QueueNotFound, QueueAlreadyExists, InvalidParameter, InvalidReceipt, StaleReceipt, \
            MessageNotInFlight, ScheduledMessageNotFound, MessageNotFound, AccessKeyNotFound, LimitExceeded, IdempotencyConflict, \
            TooLarge, Unauthenticated, Throttled, Unavailable, Internal, UnknownRoute, InsufficientStorage.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(model::ErrorBody)),
    modifiers(&BearerToken)
)]
struct NativeApi;

/// The bearer-token security scheme the routes name.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        openapi.components.get_or_insert_default().add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The tenant API's routes, each with its OpenAPI description.
fn native_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(NativeApi::openapi())
        .routes(routes!(create_queue, list_queues))
        .routes(routes!(get_queue, delete_queue, set_queue_attributes))
        .routes(routes!(send_messages))
        .routes(routes!(receive_messages))
        .routes(routes!(delete_messages))
        .routes(routes!(change_visibility))
        .routes(routes!(purge_queue))
        .routes(routes!(cancel_scheduled))
        .routes(routes!(tags::list, tags::add))
        .routes(routes!(tags::remove))
        .routes(routes!(queue_metrics::read))
        .routes(routes!(message_trace::read))
        .routes(routes!(queue_metrics::scrape))
        .routes(routes!(dead_letters::sources))
        .routes(routes!(dead_letters::start, dead_letters::list))
        .routes(routes!(dead_letters::cancel))
        .routes(routes!(own_limits))
        .routes(routes!(create_own_access_key, list_own_access_keys))
        .routes(routes!(revoke_own_access_key))
        .routes(routes!(rotate_own_access_key))
}

/// The native API's OpenAPI document, as served at `/openapi.json`.
#[cfg(test)]
fn openapi_json() -> String {
    native_routes().into_openapi().to_pretty_json().unwrap_or_default()
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
    async fn admit(&self, tenant: &str, request_bytes: usize) -> Result<Admission, ApiError> {
        Ok(self.sqs.quotas.admit(tenant, request_bytes as u64, false).await?)
    }

    /// Reads a call's JSON body, admits the call under the tenant's quotas (before parsing, so
    /// malformed calls count too), and parses it; answers the raw body (part of the billing key)
    /// and the request, and the admission, which holds the call's slot under way until the
    /// handler drops it. A receive is held to the tenant's in-flight limit as well.
    async fn admit_json<T: DeserializeOwned>(
        &self,
        tenant: &str,
        body: Result<Bytes, BytesRejection>,
        receive: bool,
    ) -> Result<(Bytes, T, Admission), ApiError> {
        let body = body_bytes(body)?;
        let admission = self.sqs.quotas.admit(tenant, body.len() as u64, receive).await?;
        let request = parse_body(&body)?;
        Ok((body, request, admission))
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

/// The `{name}` of a queue route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct QueuePath {
    /// A FIFO queue's name ends with `.fifo`, and only a FIFO queue's.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$")]
    name: String,
}

/// The error answers every tenant call may give, each an [`model::ErrorBody`].
struct Errors;

impl IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        const ERRORS: [(u16, &str); 9] = [
            (400, "The request is malformed or breaks a rule (code `InvalidParameter`, `InvalidReceipt`, ...)."),
            (401, "No valid bearer token."),
            (404, "No such queue (or message, or task) of this tenant, or no such route (`UnknownRoute`)."),
            (
                409,
                "A queue of this name exists with other settings (`QueueAlreadyExists`), or a request id was used by \
                   another request (`IdempotencyConflict`).",
            ),
            (413, "The request or a message is too large."),
            (
                429,
                "Over the tenant's rate limits, or with as many calls under way as it may have; retry after \
                   `Retry-After` seconds.",
            ),
            (500, "The service failed; retry, and report it if it persists."),
            (503, "The service cannot answer now; retry."),
            (
                507,
                "The storage holding the queue is low on disk space and takes no new messages for now \
                   (`InsufficientStorage`); receives and deletes go on. Retry after `Retry-After` seconds.",
            ),
        ];
        ERRORS
            .into_iter()
            .map(|(status, description)| {
                let content = Content::new(Some(Ref::from_schema_name("Error")));
                let response = ResponseBuilder::new().description(description).content("application/json", content);
                (status.to_string(), response.build().into())
            })
            .collect()
    }
}

fn queue_answer(info: &pb::QueueInfo, stats: Option<&pb::QueueStats>) -> model::Queue {
    let config = info.config.clone().unwrap_or_default();
    model::Queue {
        name: info.name.clone(),
        queue_id: info.queue_id.to_string(),
        created_timestamp_ms: info.created_ms,
        last_modified_timestamp_ms: info.modified_ms,
        attributes: settings::attributes(&info.tenant, &config),
        tags: info.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        approximate_number_of_messages: stats.map(|s| s.visible),
        approximate_number_of_messages_not_visible: stats.map(|s| s.in_flight),
        approximate_number_of_messages_delayed: stats.map(|s| s.delayed),
    }
}

async fn get_limits<O: KeyOwner>(State(state): State<AppState>, owner: O) -> Result<Json<model::LimitsInfo>, ApiError> {
    Ok(Json(limits_info_answer(state.placement.metadata.get_tenant_limits(owner.tenant()).await?)))
}

async fn set_tenant_limits(
    State(state): State<AppState>,
    AdminTenant(tenant): AdminTenant,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<model::LimitsInfo>, ApiError> {
    let request: admin::SetTenantLimits = parse_json(body)?;
    let overrides = limits_to_pb(request.overrides);
    let info = state.placement.metadata.set_tenant_limits(&tenant, &request.plan, overrides).await?;
    Ok(Json(limits_info_answer(info)))
}

/// The `{name}` of a limit plan route.
#[derive(Debug, Deserialize)]
struct PlanName {
    name: String,
}

fn plan_answer(plan: pb::LimitPlan) -> admin::LimitPlan {
    admin::LimitPlan { name: plan.name, limits: limits_answer(plan.limits) }
}

async fn set_limit_plan(
    State(state): State<AppState>,
    _: Operator,
    Path(PlanName { name }): Path<PlanName>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<admin::LimitPlan>, ApiError> {
    let limits: model::TenantLimits = parse_json(body)?;
    let plan = state.placement.metadata.set_limit_plan(&name, limits_to_pb(limits)).await?;
    Ok(Json(plan_answer(plan)))
}

async fn list_limit_plans(State(state): State<AppState>, _: Operator) -> Result<Json<admin::LimitPlanList>, ApiError> {
    let plans = state.placement.metadata.list_limit_plans().await?;
    Ok(Json(admin::LimitPlanList { limit_plans: plans.into_iter().map(plan_answer).collect() }))
}

/// The `{id}` of an access-key route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyId {
    /// The access key id.
    id: String,
}

async fn create_access_key<O: KeyOwner>(State(state): State<AppState>, owner: O) -> Result<Response, ApiError> {
    let key = state.placement.metadata.create_access_key(owner.tenant()).await?;
    let now_ms = state.sqs.clock.now_ms();
    Ok((StatusCode::CREATED, Json(access_key_answer(key, now_ms))).into_response())
}

async fn list_access_keys<O: KeyOwner>(
    State(state): State<AppState>,
    owner: O,
) -> Result<Json<model::AccessKeyList>, ApiError> {
    let keys = state.placement.metadata.list_access_keys(owner.tenant()).await?;
    let now_ms = state.sqs.clock.now_ms();
    Ok(Json(model::AccessKeyList { access_keys: keys.into_iter().map(|k| access_key_answer(k, now_ms)).collect() }))
}

async fn revoke_access_key<O: KeyOwner>(
    State(state): State<AppState>,
    owner: O,
    Path(KeyId { id }): Path<KeyId>,
) -> Result<Json<model::AccessKey>, ApiError> {
    let key = state.placement.metadata.revoke_access_key(owner.tenant(), &id).await?;
    state.sqs.keys.forget(&id);
    Ok(Json(access_key_answer(key, state.sqs.clock.now_ms())))
}

async fn rotate_access_key<O: KeyOwner>(
    State(state): State<AppState>,
    owner: O,
    Path(KeyId { id }): Path<KeyId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: model::RotateKey = parse_json(body)?;
    let grace_s = request.grace_seconds.unwrap_or(0);
    if grace_s > ROTATION_GRACE_S_MAX {
        return Err(ApiError::invalid(format!("grace_seconds must be 0-{ROTATION_GRACE_S_MAX}")));
    }
    let key = state.placement.metadata.rotate_access_key(owner.tenant(), &id, grace_s * 1000).await?;
    state.sqs.keys.forget(&id);
    let now_ms = state.sqs.clock.now_ms();
    Ok((StatusCode::CREATED, Json(access_key_answer(key, now_ms))).into_response())
}

// The tenant API's own routes over the handlers above (typed for the OpenAPI document).

/// Create a queue
///
/// Idempotent with identical settings and tags; a queue of that name with other settings answers
/// `QueueAlreadyExists`.
#[utoipa::path(post, path = "/v1/queues", tag = "queues", request_body = model::CreateQueue,
    responses((status = 201, description = "created", body = model::Queue), Errors), security(("bearer" = [])))]
async fn create_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, request, _admission): (_, model::CreateQueue, _) = state.admit_json(&tenant, body, false).await?;
    validate_name(&request.name)?;
    tags::check(&request.tags)?;
    let config =
        settings::apply(&request.attributes, &state.placement, &tenant, &request.name, default_config(), true).await?;
    let mut info = queues::create_queue(&state.placement, &tenant, &request.name, config).await?;
    if !request.tags.is_empty() {
        info = state.placement.metadata.tag_queue(&tenant, &request.name, request.tags.into_iter().collect()).await?;
    }
    state.charge(&tenant, &call, &body, Charge::new("CreateQueue", &request.name)).await?;
    Ok((StatusCode::CREATED, Json(queue_answer(&info, None))).into_response())
}

/// List queues
///
/// In name order, a page at a time; pass `next_token` for the next page.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", params(model::ListQueuesQuery),
    responses((status = 200, description = "success", body = model::QueueList), Errors), security(("bearer" = [])))]
async fn list_queues(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    uri: axum::http::Uri,
    query: Result<Query<model::ListQueuesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<model::QueueList>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?;
    let max = query.max_results.unwrap_or(LIST_QUEUES_PAGE_MAX);
    if !(1..=LIST_QUEUES_PAGE_MAX).contains(&max) {
        return Err(ApiError::invalid(format!("max_results must be 1-{LIST_QUEUES_PAGE_MAX}")));
    }
    let start_after = query.next_token.unwrap_or_default();
    let page = state.placement.metadata.list_queues(&tenant, &query.prefix, &start_after, max).await?;
    let next_token = if page.truncated { page.queues.last().map(|q| q.name.clone()) } else { None };
    let queues = page.queues.iter().map(|q| queue_answer(q, None)).collect();
    let query_text = uri.query().unwrap_or("").as_bytes();
    state.charge(&tenant, &call, query_text, Charge::new("ListQueues", "")).await?;
    Ok(Json(model::QueueList { queues, next_token }))
}

/// A queue's settings, tags and approximate counts
#[utoipa::path(get, path = "/v1/queues/{name}", tag = "queues", params(QueuePath),
    responses((status = 200, description = "success", body = model::Queue), Errors), security(("bearer" = [])))]
async fn get_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
) -> Result<Json<model::Queue>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    let stats =
        queues::on_queue(&state.placement, &tenant, &name, |mut c, q| async move { c.get_queue_stats(q).await })
            .await?;
    // From metadata, not the placement cache: settings and tags change without a new incarnation.
    let info = state.placement.metadata.get_queue(&tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("GetQueueAttributes", &name)).await?;
    Ok(Json(queue_answer(&info, Some(&stats))))
}

/// Delete a queue and its messages
#[utoipa::path(delete, path = "/v1/queues/{name}", tag = "queues", params(QueuePath),
    responses((status = 204, description = "deleted"), Errors), security(("bearer" = [])))]
async fn delete_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
) -> Result<StatusCode, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    queues::delete_queue(&state.placement, &tenant, &name).await?;
    state.charge(&tenant, &call, b"", Charge::new("DeleteQueue", &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change a queue's settings
///
/// Absent fields keep their values; `null` clears `dead_letter` or `redrive_allow`.
#[utoipa::path(patch, path = "/v1/queues/{name}", tag = "queues", params(QueuePath),
    request_body = model::QueueAttributesChange,
    responses((status = 200, description = "success", body = model::Queue), Errors), security(("bearer" = [])))]
async fn set_queue_attributes(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<model::Queue>, ApiError> {
    let (body, change, _admission): (_, model::QueueAttributesChange, _) =
        state.admit_json(&tenant, body, false).await?;
    let current = queues::info(&state.placement, &tenant, &name).await?;
    let base = current.config.clone().unwrap_or_default();
    let config = settings::apply(&change, &state.placement, &tenant, &name, base, false).await?;
    let info = queues::set_config(&state.placement, &tenant, &name, config).await?;
    state.charge(&tenant, &call, &body, Charge::new("SetQueueAttributes", &name)).await?;
    Ok(Json(queue_answer(&info, None)))
}

/// Delete every message of a queue
#[utoipa::path(post, path = "/v1/queues/{name}/purge", tag = "queues", params(QueuePath),
    responses((status = 200, description = "success", body = model::PurgeResult), Errors), security(("bearer" = [])))]
async fn purge_queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(QueuePath { name }): Path<QueuePath>,
) -> Result<Json<model::PurgeResult>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    let purged = queues::on_queue(&state.placement, &tenant, &name, |mut c, q| async move { c.purge(q).await }).await?;
    state.charge(&tenant, &call, b"", Charge::new("PurgeQueue", &name)).await?;
    Ok(Json(model::PurgeResult { purged: purged.purged }))
}

/// The `{name}` and `{message_id}` of a scheduled message's route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ScheduledPath {
    /// The queue.
    name: String,
    /// The id a send with `deliver_at_ms` answered.
    message_id: String,
}

/// Cancel a message sent with deliver_at_ms that is not due yet
#[utoipa::path(delete, path = "/v1/queues/{name}/scheduled/{message_id}", tag = "messages", params(ScheduledPath),
    responses((status = 200, description = "success", body = model::CancelResult), Errors), security(("bearer" = [])))]
async fn cancel_scheduled(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    Path(ScheduledPath { name, message_id }): Path<ScheduledPath>,
) -> Result<Json<model::CancelResult>, ApiError> {
    let _admission = state.admit(&tenant, 0).await?;
    queues::on_queue(&state.placement, &tenant, &name, |mut c, q| {
        let message_id = message_id.clone();
        async move { c.cancel_scheduled(pb::CancelScheduledRequest { queue: Some(q), message_id }).await }
    })
    .await?;
    state.charge(&tenant, &call, message_id.as_bytes(), Charge::new("CancelScheduledMessage", &name)).await?;
    Ok(Json(model::CancelResult { cancelled: true }))
}

// ------------------------------------------------------------------------------------ messages

fn message_to_pb(m: model::NewMessage, config: &pb::QueueConfig) -> Result<pb::NewMessage, ApiError> {
    if m.body.is_empty() {
        return Err(ApiError::invalid("message body must not be empty"));
    }
    if !m.body.chars().all(queue_rules::valid_body_char) {
        return Err(ApiError::invalid(
            "message body has characters queues cannot carry: use #x9, #xA, #xD, #x20-#xD7FF, #xE000-#xFFFD or \
             #x10000-#x10FFFF (as SQS)",
        ));
    }
    if m.attributes.len() > queue_rules::MESSAGE_ATTRIBUTES_MAX {
        return Err(ApiError::invalid(format!(
            "a message has at most {} attributes",
            queue_rules::MESSAGE_ATTRIBUTES_MAX
        )));
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
        attributes.insert(name.clone(), attribute_to_pb(&name, a)?);
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
        // The call's trace context, when it is traced and sampled.
        trace_header: strata_telemetry::trace::current_trace_header().unwrap_or_default(),
    })
}

/// A message attribute checked by SQS's rules: its name, a `String`, `Number` or `Binary` type
/// (with an optional `.label`), a value of that type.
fn attribute_to_pb(name: &str, a: model::MessageAttribute) -> Result<pb::MessageAttribute, ApiError> {
    if !queue_rules::valid_attribute_name(name) {
        return Err(ApiError::invalid(format!(
            "attribute name '{name}' is invalid: use 1-{} of A-Z, a-z, 0-9, '_', '-', '.', no leading, trailing or \
             double periods, and no 'AWS.' or 'Amazon.' prefix",
            queue_rules::ATTRIBUTE_NAME_CHARS_MAX
        )));
    }
    let base_type = a.data_type.split('.').next().unwrap_or("");
    match base_type {
        "Binary" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&a.value)
                .map_err(|_| ApiError::invalid(format!("attribute '{name}' is Binary but its value is not base64")))?;
            Ok(pb::MessageAttribute { data_type: a.data_type, string_value: String::new(), binary_value: bytes })
        }
        "String" | "Number" => {
            if a.value.is_empty() || !a.value.chars().all(queue_rules::valid_body_char) {
                return Err(ApiError::invalid(format!(
                    "attribute '{name}' needs a value of characters queues can carry"
                )));
            }
            if base_type == "Number" && a.value.trim().parse::<f64>().is_err() {
                return Err(ApiError::invalid(format!("attribute '{name}' is a Number but its value is not one")));
            }
            Ok(pb::MessageAttribute { data_type: a.data_type, string_value: a.value, binary_value: Vec::new() })
        }
        _ => Err(ApiError::invalid(format!(
            "attribute '{name}' has type '{}': use String, Number or Binary (optionally with a .label)",
            a.data_type
        ))),
    }
}

/// Send 1-10 messages; answered after they are durable
#[utoipa::path(post, path = "/v1/queues/{name}/messages", tag = "messages",
    params(QueuePath, ("x-strata-request-id" = Option<String>, Header, pattern = r"^[A-Za-z0-9._-]{1,128}$",
        description = "Makes the send idempotent: a retry with the same id (same tenant and queue) is stored once \
            and answered with the first attempt's message ids. The same id with other messages answers 409 \
            IdempotencyConflict and stores nothing. Remembered for the shard's last 20,000 sends.")),
    request_body = model::SendMessages,
    responses((status = 200, description = "success", body = model::SendResult), Errors), security(("bearer" = [])))]
async fn send_messages(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    NativeCaller(caller): NativeCaller,
    Path(QueuePath { name }): Path<QueuePath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<model::SendResult>, ApiError> {
    let (body, request, _admission): (_, model::SendMessages, _) = state.admit_json(&tenant, body, false).await?;
    if request.messages.is_empty() || request.messages.len() > BATCH_ENTRIES_MAX {
        return Err(ApiError::invalid(format!("messages must hold 1-{BATCH_ENTRIES_MAX} entries")));
    }
    let config = queues::info(&state.placement, &tenant, &name).await?.config.unwrap_or_default();
    let messages = request.messages.into_iter().map(|m| message_to_pb(m, &config)).collect::<Result<Vec<_>, _>>()?;
    let payload_in_bytes = messages.iter().map(|m| message_payload_bytes(&m.body, &m.attributes)).sum();
    state.sqs.quotas.admit_store(&tenant, payload_in_bytes).await?;
    let action = if messages.len() == 1 { "SendMessage" } else { "SendMessageBatch" };
    let meter = state.meter.record(&tenant, &call, &body, Charge { payload_in_bytes, ..Charge::new(action, &name) });
    let sent = queues::send(&state.placement, &tenant, &name, &call, messages, meter, Some(caller)).await?;
    let messages = sent
        .messages
        .iter()
        .map(|m| model::SentMessage {
            message_id: m.message_id.clone(),
            sequence_number: config.fifo_queue.then(|| m.seq.to_string()),
        })
        .collect();
    Ok(Json(model::SendResult { messages }))
}

fn received_answer(m: pb::ReceivedMessage) -> model::ReceivedMessage {
    let attributes = m
        .attributes
        .into_iter()
        .map(|(k, a)| {
            let value = if a.data_type.starts_with("Binary") {
                base64::engine::general_purpose::STANDARD.encode(&a.binary_value)
            } else {
                a.string_value
            };
            (k, model::MessageAttribute { data_type: a.data_type, value })
        })
        .collect();
    let fifo = !m.message_group_id.is_empty();
    model::ReceivedMessage {
        message_id: m.message_id,
        receipt_handle: m.receipt_handle,
        body: String::from_utf8_lossy(&m.body).into_owned(),
        attributes,
        receive_count: m.receive_count,
        sent_timestamp_ms: m.sent_ms,
        first_receive_timestamp_ms: m.first_receive_ms,
        group_id: fifo.then_some(m.message_group_id),
        deduplication_id: fifo.then_some(m.message_deduplication_id),
        sequence_number: fifo.then(|| m.sequence_number.to_string()),
        trace_header: (!m.trace_header.is_empty()).then_some(m.trace_header),
    }
}

/// Receive 1-10 messages, long polling up to 20 s
#[utoipa::path(post, path = "/v1/queues/{name}/receive", tag = "messages", params(QueuePath),
    request_body = model::Receive,
    responses((status = 200, description = "success", body = model::ReceiveResult), Errors), security(("bearer" = [])))]
async fn receive_messages(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    NativeCaller(caller): NativeCaller,
    Path(QueuePath { name }): Path<QueuePath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<model::ReceiveResult>, ApiError> {
    let (body, request, _admission): (_, model::Receive, _) = state.admit_json(&tenant, body, true).await?;
    let max_messages = request.max_messages.unwrap_or(1);
    if !(1..=BATCH_ENTRIES_MAX as u32).contains(&max_messages) {
        return Err(ApiError::invalid(format!("max_messages must be 1-{BATCH_ENTRIES_MAX}")));
    }
    let config = queues::info(&state.placement, &tenant, &name).await?.config.unwrap_or_default();
    let wait_ms = match request.wait_seconds {
        Some(s) if s.saturating_mul(1000) > LONG_POLL_MS_MAX => {
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
        let (receive_request_attempt_id, caller) = (attempt_id.clone(), Some(caller.clone()));
        async move {
            c.receive(pb::ReceiveRequest {
                queue: Some(q),
                max_messages,
                visibility_timeout_ms,
                wait_ms,
                receive_request_attempt_id,
                caller,
            })
            .await
        }
    })
    .await?;
    queues::link_to_sends(&received);
    let payload_out_bytes = received.messages.iter().map(|m| message_payload_bytes(&m.body, &m.attributes)).sum();
    let charge = Charge {
        payload_out_bytes,
        empty_receive: received.messages.is_empty(),
        ..Charge::new("ReceiveMessage", &name)
    };
    state.charge(&tenant, &call, &body, charge).await?;
    Ok(Json(model::ReceiveResult { messages: received.messages.into_iter().map(received_answer).collect() }))
}

/// Delete 1-10 messages by receipt handle
#[utoipa::path(post, path = "/v1/queues/{name}/delete", tag = "messages", params(QueuePath),
    request_body = model::DeleteMessages,
    responses((status = 200, description = "success", body = model::DeleteResult), Errors), security(("bearer" = [])))]
async fn delete_messages(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    NativeCaller(caller): NativeCaller,
    Path(QueuePath { name }): Path<QueuePath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<model::DeleteResult>, ApiError> {
    let (body, request, _admission): (_, model::DeleteMessages, _) = state.admit_json(&tenant, body, false).await?;
    if request.receipt_handles.is_empty() || request.receipt_handles.len() > BATCH_ENTRIES_MAX {
        return Err(ApiError::invalid(format!("receipt_handles must hold 1-{BATCH_ENTRIES_MAX} entries")));
    }
    let receipts = request.receipt_handles;
    // The record travels with the delete: the shard keeps it in the delete's own log entry.
    let action = if receipts.len() == 1 { "DeleteMessage" } else { "DeleteMessageBatch" };
    let meter = state.meter.record(&tenant, &call, &body, Charge::new(action, &name)).map(pb::MeterRecord::from);
    let response = queues::on_queue(&state.placement, &tenant, &name, |mut c, q| {
        let (receipt_handles, meter, caller) = (receipts.clone(), meter.clone(), Some(caller.clone()));
        async move { c.delete(pb::DeleteRequest { queue: Some(q), receipt_handles, meter, caller }).await }
    })
    .await?;
    let results = response
        .results
        .into_iter()
        .map(|r| model::DeleteOutcome {
            ok: r.error_code.is_empty(),
            error: (!r.error_code.is_empty()).then(|| {
                let kind = ErrorKind::from_code(&r.error_code).unwrap_or(ErrorKind::Internal);
                model::ErrorDetail { message: public_message(kind, r.error_message), code: r.error_code }
            }),
        })
        .collect();
    Ok(Json(model::DeleteResult { results }))
}

/// Change the visibility timeout of a received message
#[utoipa::path(post, path = "/v1/queues/{name}/visibility", tag = "messages", params(QueuePath),
    request_body = model::ChangeVisibility,
    responses((status = 204, description = "changed"), Errors), security(("bearer" = [])))]
async fn change_visibility(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    call: CallId,
    NativeCaller(caller): NativeCaller,
    Path(QueuePath { name }): Path<QueuePath>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (body, request, _admission): (_, model::ChangeVisibility, _) = state.admit_json(&tenant, body, false).await?;
    if request.visibility_timeout_seconds > VISIBILITY_TIMEOUT_S_MAX {
        return Err(ApiError::invalid(format!("visibility_timeout_seconds must be 0-{VISIBILITY_TIMEOUT_S_MAX}")));
    }
    let receipt = request.receipt_handle;
    let visibility_timeout_ms = request.visibility_timeout_seconds * 1000;
    queues::on_queue(&state.placement, &tenant, &name, |mut c, q| {
        let (receipt_handle, caller) = (receipt.clone(), Some(caller.clone()));
        async move {
            let request = pb::ChangeVisibilityRequest { queue: Some(q), receipt_handle, visibility_timeout_ms, caller };
            c.change_visibility(request).await
        }
    })
    .await?;
    state.charge(&tenant, &call, &body, Charge::new("ChangeMessageVisibility", &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------- access keys

/// Longest grace period of a rotated key.
const ROTATION_GRACE_S_MAX: u64 = 7 * 24 * 3600;

fn access_key_answer(key: pb::AccessKey, now_ms: u64) -> model::AccessKey {
    let active = key.revoked_at_ms == 0 || now_ms < key.revoked_at_ms;
    model::AccessKey {
        access_key_id: key.access_key_id,
        secret_access_key: (!key.secret_access_key.is_empty()).then_some(key.secret_access_key),
        created_timestamp_ms: key.created_ms,
        status: if active { model::KeyStatus::Active } else { model::KeyStatus::Revoked },
        revoked_at_timestamp_ms: (key.revoked_at_ms != 0).then_some(key.revoked_at_ms),
    }
}

async fn list_storage_nodes(
    State(state): State<AppState>,
    _: Operator,
) -> Result<Json<admin::StorageNodeList>, ApiError> {
    let answer = state.placement.metadata.storage_nodes().await?;
    let storage_nodes = answer.nodes.into_iter().map(node_answer).collect();
    Ok(Json(admin::StorageNodeList { storage_nodes, format_generation: answer.format_generation }))
}

fn node_answer(n: pb::StorageNodeInfo) -> admin::StorageNode {
    admin::StorageNode {
        node_id: n.node_id,
        address: n.address,
        zone: n.zone,
        capacity_bytes: n.capacity_bytes,
        live: n.live,
        registered_ms: n.registered_ms,
        format_generation_max: n.format_generation_max,
        drain_started_ms: (n.drain_started_ms != 0).then_some(n.drain_started_ms),
        shards: n.shards,
    }
}

/// The `{node}` of a storage node route.
#[derive(Debug, Deserialize)]
struct NodePath {
    node: String,
}

/// Starts draining a storage node; the drain goes on in the background (the node leaves the
/// list once drained).
async fn drain_node(
    State(state): State<AppState>,
    _: Operator,
    Path(NodePath { node }): Path<NodePath>,
) -> Result<Response, ApiError> {
    let answer = state.placement.metadata.drain_node(&node).await?;
    Ok((StatusCode::ACCEPTED, Json(node_answer(answer))).into_response())
}

pub(super) fn shard_answer(shard: pb::ShardInfo) -> admin::Shard {
    admin::Shard {
        shard_id: shard.shard_id,
        writer: shard.node_id,
        writer_epoch: shard.writer_epoch,
        replicas: shard
            .replicas
            .into_iter()
            .map(|r| admin::Replica { node_id: r.node_id, address: r.address })
            .collect(),
        leaving: shard.leaving,
    }
}

/// The `{id}` of a shard route.
#[derive(Debug, Deserialize)]
pub(super) struct ShardId {
    pub(super) id: u64,
}

async fn get_shard(
    State(state): State<AppState>,
    _: Operator,
    Path(ShardId { id }): Path<ShardId>,
) -> Result<Json<admin::Shard>, ApiError> {
    Ok(Json(shard_answer(state.placement.metadata.get_shard(id).await?)))
}

/// Moves a replica of a shard to another storage node; the move completes in the background
/// (`leaving` empties once the old node has left the shard's group).
async fn move_replica(
    State(state): State<AppState>,
    _: Operator,
    Path(ShardId { id }): Path<ShardId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: admin::MoveReplica = parse_json(body)?;
    let shard = state.placement.metadata.move_replica(id, &request.from_node, &request.to_node).await?;
    Ok((StatusCode::ACCEPTED, Json(shard_answer(shard))).into_response())
}

/// Adds a shard on the least loaded live storage nodes; its replicas start it at their next
/// heartbeat, and new queues are placed on it as on the others.
async fn add_shard(
    State(state): State<AppState>,
    _: Operator,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: admin::AddShard = parse_json(body)?;
    let shard = state.placement.metadata.add_shard(request.replicas.unwrap_or(0)).await?;
    Ok((StatusCode::CREATED, Json(shard_answer(shard))).into_response())
}

/// Hands a shard's leadership to the replica on another node, at the shard's leader; answers
/// once the transfer is done (writes to the shard pause for as long).
async fn transfer_leader(
    State(state): State<AppState>,
    _: Operator,
    Path(ShardId { id }): Path<ShardId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<admin::LeaderTransferred>, ApiError> {
    let request: admin::TransferLeader = parse_json(body)?;
    let transfer = pb::TransferShardLeaderRequest { shard_id: id, to_node: request.to_node };
    let answer = crate::queues::on_shard(&state.placement, id, |mut c| {
        let transfer = transfer.clone();
        async move { c.transfer_shard_leader(transfer).await }
    })
    .await?;
    Ok(Json(admin::LeaderTransferred { shard_id: id, leader_node: answer.leader_node }))
}

fn members_answer(members: pb::MetadataMembersResponse) -> admin::MetadataMembers {
    admin::MetadataMembers {
        members: members
            .members
            .into_iter()
            .map(|m| admin::MetadataMember { node_id: m.node_id, address: m.address })
            .collect(),
        leader_id: members.leader_id,
        health: members
            .health
            .into_iter()
            .map(|h| admin::MemberHealth {
                node_id: h.node_id,
                state: h.state,
                last_contact_ms: h.last_contact_ms,
                lag_entries: h.lag_entries,
            })
            .collect(),
    }
}

async fn list_metadata_members(
    State(state): State<AppState>,
    _: Operator,
) -> Result<Json<admin::MetadataMembers>, ApiError> {
    Ok(Json(members_answer(state.placement.metadata.list_metadata_members().await?)))
}

/// Adds members (running, caught up first) to the metadata quorum and removes others.
async fn change_metadata_members(
    State(state): State<AppState>,
    _: Operator,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<admin::MetadataMembers>, ApiError> {
    let request: admin::ChangeMembers = parse_json(body)?;
    let add = request.add.into_iter().map(|m| pb::MetadataMember { node_id: m.node_id, address: m.address }).collect();
    let members = state.placement.metadata.change_metadata_members(add, request.remove).await?;
    Ok(Json(members_answer(members)))
}

// ------------------------------------------------------------------------------------ limits

fn limits_answer(limits: Option<pb::TenantLimits>) -> model::TenantLimits {
    let limits = limits.unwrap_or_default();
    model::TenantLimits {
        requests_per_second: limits.requests_per_second,
        payload_bytes_per_second: limits.payload_bytes_per_second,
        queues_max: limits.queues_max,
        in_flight_messages_max: limits.in_flight_messages_max,
        stored_bytes_max: limits.stored_bytes_max,
    }
}

fn limits_to_pb(limits: model::TenantLimits) -> pb::TenantLimits {
    pb::TenantLimits {
        requests_per_second: limits.requests_per_second,
        payload_bytes_per_second: limits.payload_bytes_per_second,
        queues_max: limits.queues_max,
        in_flight_messages_max: limits.in_flight_messages_max,
        stored_bytes_max: limits.stored_bytes_max,
    }
}

/// A tenant's limits: 0 means none of that kind (in overrides: the plan's).
fn limits_info_answer(info: pb::TenantLimitsInfo) -> model::LimitsInfo {
    model::LimitsInfo {
        tenant: info.tenant,
        plan: info.plan,
        overrides: limits_answer(info.overrides),
        effective: limits_answer(info.effective),
        capped_reason: info.capped_reason,
    }
}

/// The tenant's limits
///
/// Its plan, its own overrides, and what applies; `capped_reason` is set while a billing hard
/// cap refuses its calls.
#[utoipa::path(get, path = "/v1/limits", tag = "limits",
    responses((status = 200, description = "success", body = model::LimitsInfo), Errors), security(("bearer" = [])))]
async fn own_limits(state: State<AppState>, tenant: Tenant) -> Result<Json<model::LimitsInfo>, ApiError> {
    get_limits(state, tenant).await
}

/// Create an access key for the SQS-compatible API (AWS SigV4)
///
/// The secret is shown only in this answer.
#[utoipa::path(post, path = "/v1/access-keys", tag = "access keys",
    responses((status = 201, description = "created", body = model::AccessKey), Errors), security(("bearer" = [])))]
async fn create_own_access_key(state: State<AppState>, tenant: Tenant) -> Result<Response, ApiError> {
    create_access_key(state, tenant).await
}

/// List the tenant's access keys (without secrets)
#[utoipa::path(get, path = "/v1/access-keys", tag = "access keys",
    responses((status = 200, description = "success", body = model::AccessKeyList), Errors), security(("bearer" = [])))]
async fn list_own_access_keys(state: State<AppState>, tenant: Tenant) -> Result<Json<model::AccessKeyList>, ApiError> {
    list_access_keys(state, tenant).await
}

/// Revoke an access key at once
#[utoipa::path(delete, path = "/v1/access-keys/{id}", tag = "access keys", params(KeyId),
    responses((status = 200, description = "success", body = model::AccessKey), Errors), security(("bearer" = [])))]
async fn revoke_own_access_key(
    state: State<AppState>,
    tenant: Tenant,
    key: Path<KeyId>,
) -> Result<Json<model::AccessKey>, ApiError> {
    revoke_access_key(state, tenant, key).await
}

/// Replace an access key by a new one; the old one keeps working for grace_seconds
#[utoipa::path(post, path = "/v1/access-keys/{id}/rotate", tag = "access keys", params(KeyId),
    request_body = model::RotateKey,
    responses((status = 201, description = "created", body = model::AccessKey), Errors), security(("bearer" = [])))]
async fn rotate_own_access_key(
    state: State<AppState>,
    tenant: Tenant,
    key: Path<KeyId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    rotate_access_key(state, tenant, key, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `openapi.json` is the document the proxy serves, generated from the API's
    /// types and routes. After a change to them, write the new document with
    /// `STRATA_WRITE_OPENAPI=1 cargo test -p strata-proxy openapi` and commit it.
    #[test]
    fn the_committed_openapi_json_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = openapi_json() + "\n";
        if std::env::var_os("STRATA_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write openapi.json");
        }
        let committed = std::fs::read_to_string(&path).expect("read openapi.json");
        assert!(
            committed == generated,
            "proxy/openapi.json differs from the document generated from the API's types; \
             regenerate it with STRATA_WRITE_OPENAPI=1 cargo test -p strata-proxy openapi"
        );
    }

    #[test]
    fn every_tenant_route_is_documented() {
        let document: serde_json::Value = serde_json::from_str(&openapi_json()).expect("JSON");
        let paths = document["paths"].as_object().expect("paths");
        let operations: usize = paths.values().map(|p| p.as_object().map_or(0, |o| o.len())).sum();
        assert_eq!(operations, 26, "{:?}", paths.keys().collect::<Vec<_>>());
        for schema in ["Queue", "CreateQueue", "NewMessage", "ReceivedMessage", "Error", "MoveTask", "AccessKey"] {
            assert!(document["components"]["schemas"][schema].is_object(), "no schema {schema}");
        }
        assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        // Every error kind's status is among the answers a call documents.
        let answers = &document["paths"]["/v1/queues/{name}/messages"]["post"]["responses"];
        for kind in ErrorKind::ALL {
            assert!(
                answers[kind.http_status().to_string()].is_object(),
                "{kind} ({}) undocumented",
                kind.http_status()
            );
        }
    }
}
