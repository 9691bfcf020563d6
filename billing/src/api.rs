//! The billing HTTP API: usage (JSON or CSV), invoices and budget alerts for the tenant of the
//! verified token (`/v1/billing/...`), and the same for any tenant plus plans, packages and
//! budgets for operators (`/admin/v1/tenants/{tenant}/billing/...`, admin tokens only).
//!
//! A tenant's routes take no tenant parameter at all: the tenant is the token's subject, so
//! no request can name another tenant's usage or invoices. The routers have no fallback, so
//! `strata dev` merges them into the proxy's listeners and `strata billing` serves them alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use strata_common::Clock;
use strata_common::error::StrataError;
use strata_http::auth::JwtVerifier;
use strata_http::credentials::{admin_path_tenant, verified_subject};
use strata_http::error::ApiError;

use crate::pricing::{HOUR_MS, Month, Plan};
use crate::store::{Alert, BillingStore, Budget, Package, StoreError, UsageRow, usage_csv};

/// Longest range of one usage query: about 13 months of hours.
pub const USAGE_RANGE_MS_MAX: u64 = 400 * 24 * HOUR_MS;

/// What the billing routes share.
#[derive(Clone)]
pub struct BillingApi {
    pub store: BillingStore,
    pub verifier: Arc<JwtVerifier>,
    pub admin_verifier: Arc<JwtVerifier>,
    pub clock: Arc<dyn Clock>,
}

/// The tenant-facing and the operators' routes.
pub struct BillingRouters {
    pub api: Router,
    pub admin: Router,
    /// The role's readiness: its database and the metadata quorum reachable.
    pub readiness: strata_http::observe::Readiness,
}

pub fn routers(state: BillingApi, readiness: strata_http::observe::Readiness) -> BillingRouters {
    let api = Router::new()
        .route("/v1/billing/usage", get(usage::<Tenant>))
        .route("/v1/billing/invoices/{month}", get(invoice::<Tenant>))
        .route("/v1/billing/alerts", get(alerts::<Tenant>))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/admin/v1/tenants/{tenant}/billing/usage", get(usage::<AdminTenant>))
        .route("/admin/v1/tenants/{tenant}/billing/invoices/{month}", get(invoice::<AdminTenant>))
        .route("/admin/v1/tenants/{tenant}/billing/alerts", get(alerts::<AdminTenant>))
        .route("/admin/v1/tenants/{tenant}/billing/plan", put(set_plan).get(get_plan))
        .route("/admin/v1/tenants/{tenant}/billing/packages", axum::routing::post(add_package).get(list_packages))
        .route("/admin/v1/tenants/{tenant}/billing/budget", put(set_budget).get(get_budget))
        .with_state(state);
    BillingRouters { api, admin, readiness }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(message) => ApiError::invalid(message),
        StoreError::Pricing(e) => ApiError::invalid(e.to_string()),
        StoreError::Database(_) | StoreError::OutboxOverlap { .. } | StoreError::SchemaTooNew { .. } => {
            tracing::error!(error = %e, "billing database error");
            ApiError(StrataError::unavailable("the billing database is unavailable; retry shortly"))
        }
    }
}

/// Whose billing a request reads.
trait BillingOwner: FromRequestParts<BillingApi, Rejection = ApiError> + Send {
    fn tenant(&self) -> &str;
}

/// The tenant of the request's verified token.
struct Tenant(String);

impl BillingOwner for Tenant {
    fn tenant(&self) -> &str {
        &self.0
    }
}

impl FromRequestParts<BillingApi> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &BillingApi) -> Result<Self, Self::Rejection> {
        Ok(Tenant(verified_subject(&state.verifier, &parts.headers)?))
    }
}

/// A tenant named in the path by an operator with a verified admin token.
struct AdminTenant(String);

impl BillingOwner for AdminTenant {
    fn tenant(&self) -> &str {
        &self.0
    }
}

impl FromRequestParts<BillingApi> for AdminTenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &BillingApi) -> Result<Self, Self::Rejection> {
        Ok(AdminTenant(admin_path_tenant(parts, state, &state.admin_verifier).await?))
    }
}

/// How usage rows are summed: by any of hour, queue, sub-tenant and action (all by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// Start of the range (default: the current month's start), in ms since the Unix epoch.
    from_ms: Option<u64>,
    /// End of the range, exclusive (default: now).
    to_ms: Option<u64>,
    /// A comma-separated subset of `hour,queue,sub_tenant,action`; the others are summed over
    /// (shown as `*`, and the hour as the range's start).
    group_by: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Grouping {
    hour: bool,
    queue: bool,
    sub_tenant: bool,
    action: bool,
}

impl Grouping {
    fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        let Some(text) = text else { return Ok(Self { hour: true, queue: true, sub_tenant: true, action: true }) };
        let mut grouping = Self { hour: false, queue: false, sub_tenant: false, action: false };
        for part in text.split(',').filter(|p| !p.is_empty()) {
            match part {
                "hour" => grouping.hour = true,
                "queue" => grouping.queue = true,
                "sub_tenant" => grouping.sub_tenant = true,
                "action" => grouping.action = true,
                other => {
                    return Err(ApiError::invalid(format!(
                        "group_by takes hour, queue, sub_tenant and action, not '{other}'"
                    )));
                }
            }
        }
        Ok(grouping)
    }

    /// Sums `rows` over the dimensions not grouped by.
    fn apply(self, rows: Vec<UsageRow>, from_ms: u64) -> Vec<UsageRow> {
        let all = |keep: bool, value: String| if keep { value } else { "*".to_owned() };
        let mut groups: BTreeMap<(u64, String, String, String), UsageRow> = BTreeMap::new();
        for row in rows {
            let key = (
                if self.hour { row.hour_start_ms } else { from_ms },
                all(self.queue, row.queue.clone()),
                all(self.sub_tenant, row.sub_tenant.clone()),
                all(self.action, row.action.clone()),
            );
            let sum = groups.entry(key.clone()).or_insert_with(|| UsageRow {
                hour_start_ms: key.0,
                queue: key.1,
                sub_tenant: key.2,
                action: key.3,
                calls: 0,
                units: 0,
                bytes_in: 0,
                bytes_out: 0,
                empty_receives: 0,
            });
            sum.calls += row.calls;
            sum.units += row.units;
            sum.bytes_in += row.bytes_in;
            sum.bytes_out += row.bytes_out;
            sum.empty_receives += row.empty_receives;
        }
        groups.into_values().collect()
    }
}

async fn usage<O: BillingOwner>(
    State(state): State<BillingApi>,
    owner: O,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?;
    let now_ms = state.clock.now_ms();
    let month_start_ms =
        Month::of_ms(now_ms).and_then(Month::start_ms).map_err(|e| ApiError::invalid(e.to_string()))?;
    let from_ms = query.from_ms.unwrap_or(month_start_ms);
    let to_ms = query.to_ms.unwrap_or(now_ms + 1);
    if from_ms >= to_ms || to_ms - from_ms > USAGE_RANGE_MS_MAX {
        return Err(ApiError::invalid(format!(
            "from_ms must come before to_ms, at most {} days apart",
            USAGE_RANGE_MS_MAX / (24 * HOUR_MS)
        )));
    }
    let grouping = Grouping::parse(query.group_by.as_deref())?;
    // Hours that start in the range.
    let rows = state.store.usage(owner.tenant(), from_ms, to_ms).await.map_err(store_error)?;
    let rows = grouping.apply(rows, from_ms);
    match query.format.as_deref() {
        None | Some("json") => {
            let total_units: u64 = rows.iter().map(|r| r.units).sum();
            let body = Usage { tenant: owner.tenant(), from_ms, to_ms, total_units, rows: &rows };
            Ok(Json(body).into_response())
        }
        Some("csv") => {
            let csv = usage_csv(&rows).map_err(store_error)?;
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
        }
        Some(other) => Err(ApiError::invalid(format!("format is json or csv, not '{other}'"))),
    }
}

/// A tenant's usage over a range, as `/usage` answers it in JSON.
#[derive(Serialize)]
struct Usage<'a> {
    tenant: &'a str,
    from_ms: u64,
    to_ms: u64,
    total_units: u64,
    rows: &'a [UsageRow],
}

/// The budget alerts of a tenant.
#[derive(Serialize)]
struct Alerts {
    alerts: Vec<Alert>,
}

/// A tenant's price plan.
#[derive(Serialize)]
struct PlanAnswer<'a> {
    tenant: &'a str,
    plan: Plan,
}

/// A prepaid package sold.
#[derive(Serialize)]
struct PackageAnswer<'a> {
    tenant: &'a str,
    package: Package,
}

/// A tenant's prepaid packages.
#[derive(Serialize)]
struct PackagesAnswer<'a> {
    tenant: &'a str,
    packages: Vec<Package>,
}

/// A tenant's budget and hard cap.
#[derive(Serialize)]
struct BudgetAnswer<'a> {
    tenant: &'a str,
    budget: Budget,
}

fn month_of(text: &str) -> Result<Month, ApiError> {
    text.parse().map_err(|e: crate::pricing::PricingError| ApiError::invalid(e.to_string()))
}

/// The `{month}` of an invoice route (the `{tenant}` too, on the admin routes).
#[derive(Debug, Deserialize)]
struct InvoicePath {
    month: String,
}

async fn invoice<O: BillingOwner>(
    State(state): State<BillingApi>,
    owner: O,
    Path(path): Path<InvoicePath>,
) -> Result<Response, ApiError> {
    let month = month_of(&path.month)?;
    let invoice = state.store.invoice(owner.tenant(), month).await.map_err(store_error)?;
    Ok(Json(invoice).into_response())
}

async fn alerts<O: BillingOwner>(State(state): State<BillingApi>, owner: O) -> Result<Response, ApiError> {
    let alerts = state.store.alerts(owner.tenant()).await.map_err(store_error)?;
    Ok(Json(Alerts { alerts }).into_response())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON request: {e}")))
}

async fn set_plan(
    State(state): State<BillingApi>,
    AdminTenant(tenant): AdminTenant,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let plan: Plan = parse_json(&body)?;
    state.store.set_plan(&tenant, &plan).await.map_err(store_error)?;
    Ok(Json(PlanAnswer { tenant: &tenant, plan }).into_response())
}

async fn get_plan(State(state): State<BillingApi>, AdminTenant(tenant): AdminTenant) -> Result<Response, ApiError> {
    let plan = state.store.plan(&tenant).await.map_err(store_error)?;
    Ok(Json(PlanAnswer { tenant: &tenant, plan }).into_response())
}

async fn add_package(
    State(state): State<BillingApi>,
    AdminTenant(tenant): AdminTenant,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let package: Package = parse_json(&body)?;
    state.store.add_package(&tenant, &package).await.map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(PackageAnswer { tenant: &tenant, package })).into_response())
}

async fn list_packages(
    State(state): State<BillingApi>,
    AdminTenant(tenant): AdminTenant,
) -> Result<Response, ApiError> {
    let packages = state.store.packages(&tenant).await.map_err(store_error)?;
    Ok(Json(PackagesAnswer { tenant: &tenant, packages }).into_response())
}

async fn set_budget(
    State(state): State<BillingApi>,
    AdminTenant(tenant): AdminTenant,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let budget: Budget = parse_json(&body)?;
    state.store.set_budget(&tenant, budget).await.map_err(store_error)?;
    Ok(Json(BudgetAnswer { tenant: &tenant, budget }).into_response())
}

async fn get_budget(State(state): State<BillingApi>, AdminTenant(tenant): AdminTenant) -> Result<Response, ApiError> {
    let budget = state.store.budget(&tenant).await.map_err(store_error)?;
    Ok(Json(BudgetAnswer { tenant: &tenant, budget }).into_response())
}
