//! The billing store: metering records aggregated into hourly usage, in SQL.
//!
//! # What it owns
//!
//! Two tables, the same on SQLite (embedded, the default) and PostgreSQL (production), reached
//! through one code path (`sqlx`'s `Any` driver, portable SQL):
//! - `metering_records`: one row per (tenant, request id) ever counted;
//! - `hourly_usage`: per tenant, hour, queue, sub-tenant and action, the calls, billable units,
//!   bytes in and out, and empty receives.
//!
//! # What it guarantees
//!
//! [`BillingStore::record`] counts each record once per (tenant, request id), whatever the
//! number of times it is delivered (retries, redeliveries of the metering queue): the record's
//! row and its addition to the hourly aggregate commit in one transaction, and a record whose
//! row exists adds nothing. A request id never suppresses another tenant's record. A batch is
//! durable when `record` returns (SQLite runs in WAL mode with `synchronous=FULL`). Every read
//! names its tenant: no query returns another tenant's rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::pricing::{HOUR_MS, HourUsage};

/// Longest accepted text field (tenant, request id, queue, sub-tenant, action), in bytes.
pub const TEXT_FIELD_BYTES_MAX: usize = 256;
/// Most records per [`BillingStore::record`] call.
pub const RECORDS_PER_BATCH_MAX: usize = 1_000;

/// One accepted call, as the proxy meters it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterRecord {
    /// The call's id: the same on every retry of the call.
    pub request_id: String,
    /// From the verified credential.
    pub tenant: String,
    /// The tenant's own customer, from `x-strata-customer` (empty when not given).
    pub sub_tenant: String,
    /// The queue's name (empty for calls on no queue).
    pub queue: String,
    /// The API action, such as `SendMessage`.
    pub action: String,
    /// When the call was accepted (milliseconds since the Unix epoch).
    pub at_ms: u64,
    pub units: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// A receive that returned no message.
    pub empty_receive: bool,
}

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
}

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS metering_records (
        tenant TEXT NOT NULL,
        request_id TEXT NOT NULL,
        hour_start_ms BIGINT NOT NULL,
        PRIMARY KEY (tenant, request_id)
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
];

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
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(Self { pool })
    }

    /// Counts `records` into hourly usage, each once per (tenant, request id); answers how many
    /// were new. Durable when it returns.
    pub async fn record(&self, records: &[MeterRecord]) -> Result<usize, StoreError> {
        if records.len() > RECORDS_PER_BATCH_MAX {
            return Err(StoreError::Invalid(format!("at most {RECORDS_PER_BATCH_MAX} records per batch")));
        }
        for r in records {
            for (name, value) in [
                ("request id", &r.request_id),
                ("tenant", &r.tenant),
                ("sub-tenant", &r.sub_tenant),
                ("queue", &r.queue),
                ("action", &r.action),
            ] {
                if value.len() > TEXT_FIELD_BYTES_MAX {
                    return Err(StoreError::Invalid(format!("{name} is longer than {TEXT_FIELD_BYTES_MAX} bytes")));
                }
            }
            if r.request_id.is_empty() || r.tenant.is_empty() || r.action.is_empty() {
                return Err(StoreError::Invalid("request id, tenant and action are required".into()));
            }
        }
        let mut transaction = self.pool.begin().await?;
        let mut new = 0;
        for r in records {
            let hour_start_ms = to_i64(r.at_ms - r.at_ms % HOUR_MS, "time")?;
            let inserted = sqlx::query(
                "INSERT INTO metering_records (tenant, request_id, hour_start_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant, request_id) DO NOTHING",
            )
            .bind(&r.tenant)
            .bind(&r.request_id)
            .bind(hour_start_ms)
            .execute(&mut *transaction)
            .await?;
            if inserted.rows_affected() == 0 {
                continue;
            }
            sqlx::query(
                "INSERT INTO hourly_usage
                   (tenant, hour_start_ms, queue, sub_tenant, action, calls, units, bytes_in, bytes_out, empty_receives)
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9)
                 ON CONFLICT (tenant, hour_start_ms, queue, sub_tenant, action) DO UPDATE SET
                   calls = hourly_usage.calls + 1,
                   units = hourly_usage.units + excluded.units,
                   bytes_in = hourly_usage.bytes_in + excluded.bytes_in,
                   bytes_out = hourly_usage.bytes_out + excluded.bytes_out,
                   empty_receives = hourly_usage.empty_receives + excluded.empty_receives",
            )
            .bind(&r.tenant)
            .bind(hour_start_ms)
            .bind(&r.queue)
            .bind(&r.sub_tenant)
            .bind(&r.action)
            .bind(to_i64(r.units, "units")?)
            .bind(to_i64(r.bytes_in, "bytes in")?)
            .bind(to_i64(r.bytes_out, "bytes out")?)
            .bind(i64::from(r.empty_receive))
            .execute(&mut *transaction)
            .await?;
            new += 1;
        }
        transaction.commit().await?;
        Ok(new)
    }

    /// `tenant`'s usage rows for hours starting in `from_ms..to_ms`, ordered by hour, queue,
    /// sub-tenant and action.
    pub async fn usage(&self, tenant: &str, from_ms: u64, to_ms: u64) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT hour_start_ms, queue, sub_tenant, action, calls, units, bytes_in, bytes_out, empty_receives
             FROM hourly_usage WHERE tenant = $1 AND hour_start_ms >= $2 AND hour_start_ms < $3
             ORDER BY hour_start_ms, queue, sub_tenant, action",
        )
        .bind(tenant)
        .bind(to_i64(from_ms, "time")?)
        .bind(to_i64(to_ms, "time")?)
        .fetch_all(&self.pool)
        .await?;
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
        let mut hours: BTreeMap<u64, u64> = BTreeMap::new();
        for row in self.usage(tenant, from_ms, to_ms).await? {
            *hours.entry(row.hour_start_ms).or_default() += row.units;
        }
        Ok(hours.into_iter().map(|(hour_start_ms, units)| HourUsage { hour_start_ms, units }).collect())
    }
}
