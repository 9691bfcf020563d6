//! The billing store: metering records aggregated into hourly usage, in SQL.
//!
//! # What it owns
//!
//! Tables, the same on SQLite (embedded, the default) and PostgreSQL (production), reached
//! through one code path (`sqlx`'s `Any` driver, portable SQL):
//! - `metering_records`: one row per (tenant, request id) counted whose key may come again,
//!   and one per metering-queue batch counted ([`BillingStore::record_batches`]);
//! - `outbox_cursors`: per shard, the metering outbox sequence number counted through;
//! - `hourly_usage`: per tenant, hour, queue, sub-tenant and action, the calls, billable units,
//!   bytes in and out, and empty receives;
//! - `tenant_plans` and `packages`: what each tenant pays by, from which
//!   [`BillingStore::invoice`] rates a month (see [`crate::pricing`]).
//!
//! # What it guarantees
//!
//! Each record counts once per (tenant, request id), whatever the number of times it is
//! delivered (retries, redeliveries of the metering queue, outboxes read again): what marks it
//! counted (its key's row, or its shard's cursor for [`BillingStore::record_outbox`]) and its
//! addition to the hourly aggregate commit in one transaction, and a record already marked adds
//! nothing. A request id never suppresses another tenant's record. A batch is durable when the
//! call returns (SQLite runs in WAL mode with `synchronous=FULL`). Every read names its tenant:
//! no query returns another tenant's rows.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use strata_common::limits::{RECEIVE_BATCH_MAX, RETENTION_MS_MAX};
pub use strata_common::metering::MeterRecord;
use strata_common::metering::{
    BATCH_RECORDS_MAX, READ_METERING_RECORDS_MAX, SYSTEM_TENANT, UsageSum, check_record, check_usage_sum,
    hour_start_ms, key_may_repeat, sum_usage,
};

use crate::pricing::{
    HOUR_MS, HourUsage, InvoiceLine, Micros, Month, MonthRating, PackageBalance, Plan, PricingError, rate_month,
};

/// Longest accepted text field of plans, packages and budgets (tenant, package id), in bytes;
/// records are checked by [`check_record`].
pub const TEXT_FIELD_BYTES_MAX: usize = 256;
/// How long after its hour a counted key is kept ([`BillingStore::prune_keys`]): longer than
/// any record can come again. A metering-queue batch is redelivered only while the queue keeps
/// it (at most [`RETENTION_MS_MAX`]); a client retries a call within minutes. A day to spare.
pub const KEY_HORIZON_MS: u64 = RETENTION_MS_MAX + 24 * HOUR_MS;
/// Most records per [`BillingStore::record`] call.
pub const RECORDS_PER_BATCH_MAX: usize = 1_000;
/// Prefix of the key under which [`BillingStore::record_batches`] marks a metering-queue batch
/// counted (with the system tenant, which no call is billed to): unlike any billing key.
const BATCH_KEY_PREFIX: &str = "batch-";
/// Rows of the multi-row insert of metering records (3 parameters each). Every execution has
/// exactly this many rows, so the statement is parsed once and then served from the
/// connection's statement cache; a shorter chunk repeats its last record, which the conflict
/// clause skips. Small enough that binding (SQLite looks each numbered parameter up by name)
/// stays cheap.
const INSERT_ROWS: usize = 50;

/// The insert of [`INSERT_ROWS`] metering records, answering the rows that were new.
static INSERT_RECORDS_SQL: LazyLock<String> = LazyLock::new(|| {
    let rows: Vec<String> =
        (0..INSERT_ROWS).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
    format!(
        "INSERT INTO metering_records (tenant, request_id, hour_start_ms) VALUES {}
         ON CONFLICT (tenant, request_id) DO NOTHING RETURNING tenant, request_id",
        rows.join(", ")
    )
});

/// A row of hourly usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub hour_start_ms: u64,
    pub queue: String,
    pub sub_tenant: String,
    pub action: String,
    pub calls: u64,
    pub units: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub empty_receives: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid metering record: {0}")]
    Invalid(String),
    #[error("billing database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Pricing(#[from] PricingError),
    /// An outbox read that starts inside what was counted (a trim failed after the count):
    /// trim through `counted_through_seq` and read again.
    #[error("the outbox read starts before sequence number {counted_through_seq}, which was counted already")]
    OutboxOverlap { counted_through_seq: u64 },
    /// The database was written by a newer release.
    #[error("the billing database has schema version {found}; this release knows up to {known}")]
    SchemaTooNew { found: i64, known: i64 },
}

/// The version of the tables below (see `docs/formats.md`), kept in `schema_version`. A
/// database from before the version was kept has these tables and no version: it is version 1.
/// A later schema adds a migration from each older version and bumps this.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    id BIGINT NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL
)";

const SCHEMA: [&str; 8] = [
    "CREATE TABLE IF NOT EXISTS metering_records (
        tenant TEXT NOT NULL,
        request_id TEXT NOT NULL,
        hour_start_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, request_id)
    )",
    "CREATE INDEX IF NOT EXISTS metering_records_by_hour ON metering_records (hour_start_ms)",
    "CREATE TABLE IF NOT EXISTS outbox_cursors (
        shard_id BIGINT NOT NULL PRIMARY KEY,
        counted_through_seq BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS hourly_usage (
        tenant TEXT NOT NULL,
        hour_start_ms BIGINT NOT NULL,
        queue TEXT NOT NULL,
        sub_tenant TEXT NOT NULL,
        action TEXT NOT NULL,
        calls BIGINT NOT NULL,
        units BIGINT NOT NULL,
        bytes_in BIGINT NOT NULL,
        bytes_out BIGINT NOT NULL,
        empty_receives BIGINT NOT NULL,
        PRIMARY KEY (tenant, hour_start_ms, queue, sub_tenant, action)
    )",
    "CREATE TABLE IF NOT EXISTS tenant_plans (
        tenant TEXT NOT NULL PRIMARY KEY,
        plan TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS packages (
        tenant TEXT NOT NULL,
        package_id TEXT NOT NULL,
        units BIGINT NOT NULL,
        valid_from_ms BIGINT NOT NULL,
        valid_until_ms BIGINT NOT NULL,
        price BIGINT NOT NULL,
        PRIMARY KEY (tenant, package_id)
    )",
    "CREATE TABLE IF NOT EXISTS tenant_budgets (
        tenant TEXT NOT NULL PRIMARY KEY,
        monthly_budget BIGINT NOT NULL,
        hard_cap BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS budget_alerts (
        tenant TEXT NOT NULL,
        month TEXT NOT NULL,
        kind TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        spent BIGINT NOT NULL,
        PRIMARY KEY (tenant, month, kind)
    )",
];

/// A tenant's monthly spending limits (0: none). Crossing the budget raises an alert; reaching
/// the hard cap refuses the tenant's calls until the month ends or the cap is raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub monthly_budget: Micros,
    pub hard_cap: Micros,
}

/// What a budget alert says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The month's spend reached the budget.
    BudgetReached,
    /// The month's spend reached the hard cap: calls are refused.
    HardCapReached,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            AlertKind::BudgetReached => "budget_reached",
            AlertKind::HardCapReached => "hard_cap_reached",
        }
    }
}

/// A budget alert: raised once per tenant, month and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub month: Month,
    pub kind: AlertKind,
    pub at_ms: u64,
    /// The month's spend when it was raised.
    pub spent: Micros,
}

/// How far back an invoice looks for packages bought earlier whose balance carries over.
pub const PACKAGE_HISTORY_MONTHS_MAX: u32 = 60;

/// A prepaid package bought by a tenant: `units` for usage in hours starting in
/// `valid_from_ms..valid_until_ms`, for `price`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub package_id: String,
    pub units: u64,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
    pub price: Micros,
}

/// A tenant's invoice for one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub tenant: String,
    pub month: Month,
    pub plan: Plan,
    pub lines: Vec<InvoiceLine>,
    pub total: Micros,
    /// Where the month's units went (free tier, packages, on demand).
    pub rating: MonthRating,
}

/// The plan of a tenant nobody set one for: the first million units of each month free, then
/// $0.40 per million.
pub fn default_plan() -> Plan {
    Plan::PayPerCall { free_units_per_month: 1_000_000, price_per_million_units: 400_000 }
}

fn check_text(name: &str, value: &str) -> Result<(), StoreError> {
    if value.len() > TEXT_FIELD_BYTES_MAX {
        return Err(StoreError::Invalid(format!("{name} is longer than {TEXT_FIELD_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// Usage rows as CSV (RFC 4180, with a header line), hours as RFC 3339 UTC.
pub fn usage_csv(rows: &[UsageRow]) -> Result<String, StoreError> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let invalid = |e: csv::Error| StoreError::Invalid(e.to_string());
    out.write_record([
        "hour_start",
        "queue",
        "sub_tenant",
        "action",
        "calls",
        "units",
        "bytes_in",
        "bytes_out",
        "empty_receives",
    ])
    .map_err(invalid)?;
    for row in rows {
        let hour = i64::try_from(row.hour_start_ms)
            .ok()
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        out.write_record([
            hour,
            row.queue.clone(),
            row.sub_tenant.clone(),
            row.action.clone(),
            row.calls.to_string(),
            row.units.to_string(),
            row.bytes_in.to_string(),
            row.bytes_out.to_string(),
            row.empty_receives.to_string(),
        ])
        .map_err(invalid)?;
    }
    let bytes = out.into_inner().map_err(|e| StoreError::Invalid(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// A tenant's usage rows for a range of hours.
const USAGE_ROWS_SQL: &str =
    "SELECT hour_start_ms, queue, sub_tenant, action, calls, units, bytes_in, bytes_out, empty_receives
     FROM hourly_usage WHERE tenant = $1 AND hour_start_ms >= $2 AND hour_start_ms < $3
     ORDER BY hour_start_ms, queue, sub_tenant, action";
/// A tenant's billable units per hour for a range of hours.
const HOURLY_UNITS_SQL: &str = "SELECT hour_start_ms, CAST(SUM(units) AS BIGINT) AS units FROM hourly_usage
     WHERE tenant = $1 AND hour_start_ms >= $2 AND hour_start_ms < $3
     GROUP BY hour_start_ms ORDER BY hour_start_ms";

/// The billing store (cheap to clone: a connection pool).
#[derive(Debug, Clone)]
pub struct BillingStore {
    pool: AnyPool,
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl BillingStore {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`) and creates the tables if needed.
    /// SQLite files are created on first use.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_owned() };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 8 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if sqlite {
                        // Durable at commit: WAL mode with an fsync per commit.
                        sqlx::query("PRAGMA journal_mode=WAL").execute(&mut *connection).await?;
                        sqlx::query("PRAGMA synchronous=FULL").execute(&mut *connection).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        sqlx::query(SCHEMA_VERSION_TABLE).execute(&pool).await?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_version WHERE id = 1").fetch_optional(&pool).await?;
        if let Some(version) = found.filter(|v| *v > SCHEMA_VERSION) {
            return Err(StoreError::SchemaTooNew { found: version, known: SCHEMA_VERSION });
        }
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        sqlx::query("INSERT INTO schema_version (id, version) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(SCHEMA_VERSION)
            .execute(&pool)
            .await?;
        Ok(Self { pool })
    }

    /// Readiness: the database answers a query.
    pub async fn ready_check(&self) -> strata_telemetry::ReadyCheck {
        let answered = sqlx::query("SELECT 1").execute(&self.pool).await;
        let problem = answered.err().map(|e| {
            tracing::info!(error = %e, "readiness: the billing database did not answer");
            "the billing database did not answer".to_owned()
        });
        strata_telemetry::ReadyCheck::new("database", problem)
    }

    /// Counts `records` into hourly usage, each once per (tenant, request id); answers how many
    /// were new. Durable when it returns.
    pub async fn record(&self, records: &[MeterRecord]) -> Result<usize, StoreError> {
        check_batch(records, RECORDS_PER_BATCH_MAX)?;
        if records.is_empty() {
            return Ok(0);
        }
        let mut transaction = self.pool.begin().await?;
        let new = count(&mut transaction, records).await?;
        transaction.commit().await?;
        Ok(new)
    }

    /// Counts batches of the metering queue, each given with its message id, in one
    /// transaction; answers how many calls were new. Durable when it returns. A batch comes
    /// again only as itself (the queue redelivers it when its deletion did not happen), and a
    /// record whose billing key was generated for one attempt travels in exactly one batch:
    /// those records are summed and counted once per batch, under one key for the whole batch,
    /// instead of a key each. A key the client chose is checked record by record, as
    /// [`BillingStore::record`] does, since its retry may travel in another batch.
    pub async fn record_batches(&self, batches: &[(String, Vec<MeterRecord>)]) -> Result<usize, StoreError> {
        // As many as one receive of the metering queue answers.
        let batches_max = RECEIVE_BATCH_MAX as usize;
        if batches.len() > batches_max {
            return Err(StoreError::Invalid(format!("at most {batches_max} batches per call")));
        }
        for (batch_id, records) in batches {
            check_batch(records, BATCH_RECORDS_MAX)?;
            if batch_id.is_empty() || batch_id.len() > TEXT_FIELD_BYTES_MAX {
                return Err(StoreError::Invalid(format!("a batch id is 1-{TEXT_FIELD_BYTES_MAX} bytes")));
            }
        }
        let mut transaction = self.pool.begin().await?;
        let mut new = 0;
        for (batch_id, records) in batches {
            new += count_batch(&mut transaction, batch_id, records).await?;
        }
        transaction.commit().await?;
        Ok(new)
    }

    /// Counts what was read from the metering outbox of shard `shard_id`: its records numbered
    /// `first_seq..=through_seq`, the client-keyed ones in `keyed` and the others summed in
    /// `usage` (see `ReadMetering`). Answers how many calls were new. Durable when it returns.
    ///
    /// The store keeps, per shard, the sequence number counted through, in the same transaction
    /// as the counts: a read at or below it (read again after a trim failed, or by a second
    /// billing service) counts nothing, and one that starts inside it is refused with
    /// [`StoreError::OutboxOverlap`]. The shard itself applies a request id once, so a record
    /// whose billing key was generated for one attempt needs no other check and can be summed
    /// before it gets here. A key the client chose
    /// ([`strata_common::metering::key_may_repeat`]) is still checked against every key
    /// counted, since its retry may have reached another shard.
    pub async fn record_outbox(
        &self,
        shard_id: u64,
        first_seq: u64,
        through_seq: u64,
        keyed: &[MeterRecord],
        usage: &[UsageSum],
    ) -> Result<usize, StoreError> {
        check_batch(keyed, READ_METERING_RECORDS_MAX)?;
        if usage.len() > READ_METERING_RECORDS_MAX {
            return Err(StoreError::Invalid(format!("at most {READ_METERING_RECORDS_MAX} usage rows per read")));
        }
        usage.iter().try_for_each(|u| check_usage_sum(u).map_err(StoreError::Invalid))?;
        let calls = usage.iter().try_fold(keyed.len() as u64, |total, u| total.checked_add(u.calls));
        if first_seq == 0 || calls.and_then(|calls| first_seq.checked_add(calls)) != Some(through_seq + 1) {
            return Err(StoreError::Invalid(format!(
                "an outbox read numbered {first_seq}..={through_seq} must hold as many records"
            )));
        }
        let shard = to_i64(shard_id, "shard id")?;
        let mut transaction = self.pool.begin().await?;
        // Reads the shard's cursor by writing its row (created at 0 the first time), so that
        // concurrent counters of one shard take turns.
        let counted_through: i64 = sqlx::query(
            "INSERT INTO outbox_cursors (shard_id, counted_through_seq) VALUES ($1, 0)
             ON CONFLICT (shard_id) DO UPDATE SET counted_through_seq = outbox_cursors.counted_through_seq
             RETURNING counted_through_seq",
        )
        .bind(shard)
        .fetch_one(&mut *transaction)
        .await?
        .try_get(0)?;
        let counted_through_seq = to_u64(counted_through);
        if counted_through_seq >= through_seq {
            return Ok(0);
        }
        if counted_through_seq >= first_seq {
            return Err(StoreError::OutboxOverlap { counted_through_seq });
        }
        let new = count(&mut transaction, keyed).await? + add_usage(&mut transaction, usage).await?;
        sqlx::query("UPDATE outbox_cursors SET counted_through_seq = $2 WHERE shard_id = $1")
            .bind(shard)
            .bind(to_i64(through_seq, "sequence number")?)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(new)
    }

    /// Forgets the counted keys of hours that ended [`KEY_HORIZON_MS`] or more before
    /// `now_ms`, so `metering_records` stays bounded; answers how many went. Usage is kept.
    pub async fn prune_keys(&self, now_ms: u64) -> Result<u64, StoreError> {
        // The last hour start whose hour ended by the cutoff.
        let Some(last_hour_ms) = now_ms.checked_sub(KEY_HORIZON_MS + HOUR_MS) else { return Ok(0) };
        let done = sqlx::query("DELETE FROM metering_records WHERE hour_start_ms <= $1")
            .bind(to_i64(last_hour_ms, "time")?)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Rows of a query whose parameters are a tenant ($1) and a range of hours ($2..$3).
    async fn tenant_rows(
        &self,
        sql: &'static str,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        let query = sqlx::query(sql).bind(tenant).bind(to_i64(from_ms, "time")?).bind(to_i64(to_ms, "time")?);
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// `tenant`'s usage rows for hours starting in `from_ms..to_ms`, ordered by hour, queue,
    /// sub-tenant and action.
    pub async fn usage(&self, tenant: &str, from_ms: u64, to_ms: u64) -> Result<Vec<UsageRow>, StoreError> {
        let rows = self.tenant_rows(USAGE_ROWS_SQL, tenant, from_ms, to_ms).await?;
        rows.iter()
            .map(|row| {
                Ok(UsageRow {
                    hour_start_ms: to_u64(row.try_get("hour_start_ms")?),
                    queue: row.try_get("queue")?,
                    sub_tenant: row.try_get("sub_tenant")?,
                    action: row.try_get("action")?,
                    calls: to_u64(row.try_get("calls")?),
                    units: to_u64(row.try_get("units")?),
                    bytes_in: to_u64(row.try_get("bytes_in")?),
                    bytes_out: to_u64(row.try_get("bytes_out")?),
                    empty_receives: to_u64(row.try_get("empty_receives")?),
                })
            })
            .collect()
    }

    /// `tenant`'s billable units per hour in `from_ms..to_ms`, in order: the input of
    /// [`crate::pricing::rate_month`].
    pub async fn hourly_units(&self, tenant: &str, from_ms: u64, to_ms: u64) -> Result<Vec<HourUsage>, StoreError> {
        let rows = self.tenant_rows(HOURLY_UNITS_SQL, tenant, from_ms, to_ms).await?;
        rows.iter()
            .map(|row| {
                Ok(HourUsage {
                    hour_start_ms: to_u64(row.try_get("hour_start_ms")?),
                    units: to_u64(row.try_get("units")?),
                })
            })
            .collect()
    }

    /// Sets `tenant`'s price plan, replacing the one it had (an invoice uses the plan set when
    /// it is made).
    pub async fn set_plan(&self, tenant: &str, plan: &Plan) -> Result<(), StoreError> {
        check_text("tenant", tenant)?;
        let plan = serde_json::to_string(plan).map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query(
            "INSERT INTO tenant_plans (tenant, plan) VALUES ($1, $2)
             ON CONFLICT (tenant) DO UPDATE SET plan = excluded.plan",
        )
        .bind(tenant)
        .bind(plan)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `tenant`'s price plan ([`default_plan`] when none was set).
    pub async fn plan(&self, tenant: &str) -> Result<Plan, StoreError> {
        let row = sqlx::query("SELECT plan FROM tenant_plans WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => {
                let text: String = row.try_get("plan")?;
                serde_json::from_str(&text).map_err(|e| StoreError::Invalid(format!("a stored plan is damaged: {e}")))
            }
            None => Ok(default_plan()),
        }
    }

    /// Adds a prepaid package to `tenant`, once per package id: adding the same id again
    /// changes nothing.
    pub async fn add_package(&self, tenant: &str, package: &Package) -> Result<(), StoreError> {
        check_text("tenant", tenant)?;
        check_text("package id", &package.package_id)?;
        if package.package_id.is_empty() || package.valid_from_ms >= package.valid_until_ms {
            return Err(StoreError::Invalid("a package needs an id and a validity that ends after it starts".into()));
        }
        sqlx::query(
            "INSERT INTO packages (tenant, package_id, units, valid_from_ms, valid_until_ms, price)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, package_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(&package.package_id)
        .bind(to_i64(package.units, "units")?)
        .bind(to_i64(package.valid_from_ms, "time")?)
        .bind(to_i64(package.valid_until_ms, "time")?)
        .bind(to_i64(package.price, "price")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `tenant`'s packages, by start of validity.
    pub async fn packages(&self, tenant: &str) -> Result<Vec<Package>, StoreError> {
        let rows = sqlx::query(
            "SELECT package_id, units, valid_from_ms, valid_until_ms, price FROM packages WHERE tenant = $1
             ORDER BY valid_from_ms, package_id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Package {
                    package_id: row.try_get("package_id")?,
                    units: to_u64(row.try_get("units")?),
                    valid_from_ms: to_u64(row.try_get("valid_from_ms")?),
                    valid_until_ms: to_u64(row.try_get("valid_until_ms")?),
                    price: to_u64(row.try_get("price")?),
                })
            })
            .collect()
    }

    /// Sets `tenant`'s monthly budget and hard cap (0: none).
    pub async fn set_budget(&self, tenant: &str, budget: Budget) -> Result<(), StoreError> {
        check_text("tenant", tenant)?;
        sqlx::query(
            "INSERT INTO tenant_budgets (tenant, monthly_budget, hard_cap) VALUES ($1, $2, $3)
             ON CONFLICT (tenant) DO UPDATE SET monthly_budget = excluded.monthly_budget, hard_cap = excluded.hard_cap",
        )
        .bind(tenant)
        .bind(to_i64(budget.monthly_budget, "budget")?)
        .bind(to_i64(budget.hard_cap, "hard cap")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every tenant whose budget was ever set (a budget set back to zeros is listed too, so a
    /// cap it had is lifted).
    pub async fn budgets(&self) -> Result<Vec<(String, Budget)>, StoreError> {
        let rows = sqlx::query("SELECT tenant, monthly_budget, hard_cap FROM tenant_budgets ORDER BY tenant")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let budget = Budget {
                    monthly_budget: to_u64(row.try_get("monthly_budget")?),
                    hard_cap: to_u64(row.try_get("hard_cap")?),
                };
                Ok((row.try_get("tenant")?, budget))
            })
            .collect()
    }

    /// `tenant`'s budget (none set: zeros).
    pub async fn budget(&self, tenant: &str) -> Result<Budget, StoreError> {
        let row = sqlx::query("SELECT monthly_budget, hard_cap FROM tenant_budgets WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(Budget::default()) };
        Ok(Budget {
            monthly_budget: to_u64(row.try_get("monthly_budget")?),
            hard_cap: to_u64(row.try_get("hard_cap")?),
        })
    }

    /// Raises an alert once per (tenant, month, kind); answers whether it is new.
    pub async fn raise_alert(&self, tenant: &str, alert: &Alert) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO budget_alerts (tenant, month, kind, at_ms, spent) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, month, kind) DO NOTHING",
        )
        .bind(tenant)
        .bind(alert.month.to_string())
        .bind(alert.kind.as_str())
        .bind(to_i64(alert.at_ms, "time")?)
        .bind(to_i64(alert.spent, "spend")?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// `tenant`'s alerts, newest month first.
    pub async fn alerts(&self, tenant: &str) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(
            "SELECT month, kind, at_ms, spent FROM budget_alerts WHERE tenant = $1 ORDER BY month DESC, at_ms",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let month: String = row.try_get("month")?;
                let kind: String = row.try_get("kind")?;
                let damaged = || StoreError::Invalid(format!("a stored alert is damaged: {month} {kind}"));
                Ok(Alert {
                    month: month.parse().map_err(|_| damaged())?,
                    kind: match kind.as_str() {
                        "budget_reached" => AlertKind::BudgetReached,
                        "hard_cap_reached" => AlertKind::HardCapReached,
                        _ => return Err(damaged()),
                    },
                    at_ms: to_u64(row.try_get("at_ms")?),
                    spent: to_u64(row.try_get("spent")?),
                })
            })
            .collect()
    }

    /// `tenant`'s invoice for `month`: its usage rated against its plan and packages, plus the
    /// packages bought that month. Package balances are what earlier months left of them (those
    /// months are rated again, from the month the first package started, at most
    /// [`PACKAGE_HISTORY_MONTHS_MAX`] back), so an invoice is a function of the stored usage and
    /// the plan set now.
    pub async fn invoice(&self, tenant: &str, month: Month) -> Result<Invoice, StoreError> {
        let plan = self.plan(tenant).await?;
        let packages = self.packages(tenant).await?;
        let month_start_ms = month.start_ms()?;
        // Balances at the month's start: what earlier months left. Every month since the first
        // package began is rated again (an expired package may have been drawn before a
        // still-valid one in a month both covered).
        let mut first = month;
        for p in packages.iter().filter(|p| p.valid_from_ms < month_start_ms) {
            first = first.min(Month::of_ms(p.valid_from_ms)?);
        }
        let earliest = (0..PACKAGE_HISTORY_MONTHS_MAX).fold(month, |m, _| m.previous());
        let first = first.max(earliest);
        let mut balances: Vec<PackageBalance> = packages
            .iter()
            .map(|p| PackageBalance {
                package_id: p.package_id.clone(),
                remaining_units: p.units,
                valid_from_ms: p.valid_from_ms,
                valid_until_ms: p.valid_until_ms,
            })
            .collect();
        // Every hour from the first month on, read once and cut by month.
        let hours = self.hourly_units(tenant, first.start_ms()?, month.end_ms()?).await?;
        let mut at = first;
        let rating = loop {
            let (from, to) = (at.start_ms()?, at.end_ms()?);
            let start = hours.partition_point(|h| h.hour_start_ms < from);
            let end = hours.partition_point(|h| h.hour_start_ms < to);
            let rating = rate_month(&plan, at, &balances, &hours[start..end])?;
            if at == month {
                break rating;
            }
            balances = rating.balances_after;
            at = at.next();
        };
        let month_end_ms = month.end_ms()?;
        let mut lines: Vec<InvoiceLine> = packages
            .iter()
            .filter(|p| (month_start_ms..month_end_ms).contains(&p.valid_from_ms))
            .map(|p| InvoiceLine {
                description: format!("prepaid package {} bought", p.package_id),
                units: p.units,
                amount: p.price,
            })
            .collect();
        lines.extend(rating.lines.iter().cloned());
        let total = lines.iter().try_fold(0u64, |sum, l| sum.checked_add(l.amount)).ok_or(PricingError::Overflow)?;
        Ok(Invoice { tenant: tenant.to_owned(), month, plan, lines, total, rating })
    }
}

/// Checks a batch of at most `records_max` records before anything is stored.
fn check_batch(records: &[MeterRecord], records_max: usize) -> Result<(), StoreError> {
    if records.len() > records_max {
        return Err(StoreError::Invalid(format!("at most {records_max} records per batch")));
    }
    records.iter().try_for_each(|r| check_record(r).map_err(StoreError::Invalid))
}

/// Adds `records` to hourly usage within `transaction`, each once per (tenant, request id):
/// a record counts only if its key has no row in `metering_records` yet (it gets one), and
/// only its first occurrence in the batch counts. Answers how many were counted.
async fn count(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    records: &[MeterRecord],
) -> Result<usize, StoreError> {
    let mut counted = vec![false; records.len()];
    // Each (tenant, request id) is counted by its first record in the batch, if it is new.
    let mut first: HashMap<(&str, &str), usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        first.entry((r.tenant.as_str(), r.request_id.as_str())).or_insert(i);
    }
    // The keys not seen before: one multi-row insert per chunk answers which they are.
    for chunk in records.chunks(INSERT_ROWS) {
        let mut insert = sqlx::query(INSERT_RECORDS_SQL.as_str());
        for i in 0..INSERT_ROWS {
            let r = &chunk[i.min(chunk.len() - 1)];
            insert = insert.bind(&r.tenant).bind(&r.request_id).bind(to_i64(hour_start_ms(r.at_ms), "time")?);
        }
        for row in insert.fetch_all(&mut **transaction).await? {
            let key: (&str, &str) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(&i) = first.get(&key) {
                counted[i] = true;
            }
        }
    }
    let counted = records.iter().zip(&counted).filter(|(_, counted)| **counted).map(|(r, _)| r);
    add_usage(transaction, &sum_usage(counted)).await
}

/// Counts one metering-queue batch within `transaction` (see [`BillingStore::record_batches`]).
async fn count_batch(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: &str,
    records: &[MeterRecord],
) -> Result<usize, StoreError> {
    let (keyed, generated): (Vec<&MeterRecord>, Vec<&MeterRecord>) =
        records.iter().partition(|r| key_may_repeat(&r.request_id));
    let mut new = 0;
    if let Some(newest_ms) = generated.iter().map(|r| r.at_ms).max() {
        // Kept as long as the newest record's key would be, so past any redelivery.
        let claimed = sqlx::query(
            "INSERT INTO metering_records (tenant, request_id, hour_start_ms) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, request_id) DO NOTHING RETURNING request_id",
        )
        .bind(SYSTEM_TENANT)
        .bind(format!("{BATCH_KEY_PREFIX}{batch_id}"))
        .bind(to_i64(hour_start_ms(newest_ms), "time")?)
        .fetch_optional(&mut **transaction)
        .await?;
        if claimed.is_some() {
            new += add_usage(transaction, &sum_usage(generated)).await?;
        }
    }
    let keyed: Vec<MeterRecord> = keyed.into_iter().cloned().collect();
    Ok(new + count(transaction, &keyed).await?)
}

/// Adds usage rows to hourly usage within `transaction`; answers the calls they hold.
async fn add_usage(transaction: &mut sqlx::Transaction<'_, sqlx::Any>, rows: &[UsageSum]) -> Result<usize, StoreError> {
    let mut new = 0;
    for row in rows {
        sqlx::query(
            "INSERT INTO hourly_usage
               (tenant, hour_start_ms, queue, sub_tenant, action, calls, units, bytes_in, bytes_out, empty_receives)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (tenant, hour_start_ms, queue, sub_tenant, action) DO UPDATE SET
               calls = hourly_usage.calls + excluded.calls,
               units = hourly_usage.units + excluded.units,
               bytes_in = hourly_usage.bytes_in + excluded.bytes_in,
               bytes_out = hourly_usage.bytes_out + excluded.bytes_out,
               empty_receives = hourly_usage.empty_receives + excluded.empty_receives",
        )
        .bind(&row.tenant)
        .bind(to_i64(row.hour_start_ms, "time")?)
        .bind(&row.queue)
        .bind(&row.sub_tenant)
        .bind(&row.action)
        .bind(to_i64(row.calls, "calls")?)
        .bind(to_i64(row.units, "units")?)
        .bind(to_i64(row.bytes_in, "bytes in")?)
        .bind(to_i64(row.bytes_out, "bytes out")?)
        .bind(to_i64(row.empty_receives, "empty receives")?)
        .execute(&mut **transaction)
        .await?;
        new += row.calls as usize;
    }
    Ok(new)
}
