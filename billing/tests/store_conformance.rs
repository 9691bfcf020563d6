//! One conformance suite for the billing store, run against SQLite (a file in a temporary
//! directory) and a real PostgreSQL server (`STRATA_TEST_POSTGRES_URL`, which the test command
//! sets after starting one; each run uses a database of its own).

use std::time::Duration;

use sqlx::Connection;
use strata_billing::pricing::{HOUR_MS, HourUsage};
use strata_billing::store::{BillingStore, MeterRecord, RECORDS_PER_BATCH_MAX, StoreError};

/// 2026-03-01T10:00:00Z.
const HOUR_10_MS: u64 = 1_772_359_200_000;

fn record(tenant: &str, request_id: &str, at_ms: u64, action: &str, units: u64) -> MeterRecord {
    MeterRecord {
        request_id: request_id.into(),
        tenant: tenant.into(),
        sub_tenant: String::new(),
        queue: "orders".into(),
        action: action.into(),
        at_ms,
        units,
        bytes_in: units * 1_000,
        bytes_out: 0,
        empty_receive: false,
    }
}

async fn conformance(url: &str) {
    let store = BillingStore::open(url).await.expect("open the store");

    // Each record counts once per (tenant, request id), however often it comes.
    let first = vec![
        record("acme", "r-1", HOUR_10_MS + 5, "SendMessage", 1),
        record("acme", "r-2", HOUR_10_MS + HOUR_MS - 1, "SendMessage", 3),
        record("acme", "r-3", HOUR_10_MS + HOUR_MS, "SendMessage", 2),
    ];
    assert_eq!(store.record(&first).await.expect("record"), 3);
    assert_eq!(store.record(&first).await.expect("record again"), 0);
    let mut mixed = first.clone();
    mixed.push(record("acme", "r-4", HOUR_10_MS + 10, "SendMessage", 5));
    assert_eq!(store.record(&mixed).await.expect("record a mixed batch"), 1);

    // The same request id in another tenant is another call; neither sees the other's usage.
    let mut globex = record("globex", "r-1", HOUR_10_MS, "ReceiveMessage", 1);
    globex.empty_receive = true;
    globex.sub_tenant = "their-customer".into();
    assert_eq!(store.record(std::slice::from_ref(&globex)).await.expect("record"), 1);

    let acme = store.usage("acme", HOUR_10_MS, HOUR_10_MS + 2 * HOUR_MS).await.expect("usage");
    assert_eq!(acme.len(), 2, "{acme:?}");
    assert_eq!((acme[0].hour_start_ms, acme[0].calls, acme[0].units), (HOUR_10_MS, 3, 9));
    assert_eq!((acme[1].hour_start_ms, acme[1].calls, acme[1].units), (HOUR_10_MS + HOUR_MS, 1, 2));
    assert_eq!(acme[0].bytes_in, 9_000);
    let hours = store.hourly_units("acme", HOUR_10_MS, HOUR_10_MS + 2 * HOUR_MS).await.expect("hours");
    assert_eq!(
        hours,
        [
            HourUsage { hour_start_ms: HOUR_10_MS, units: 9 },
            HourUsage { hour_start_ms: HOUR_10_MS + HOUR_MS, units: 2 }
        ]
    );
    let theirs = store.usage("globex", 0, u64::MAX >> 1).await.expect("usage");
    assert_eq!(theirs.len(), 1);
    assert_eq!((theirs[0].sub_tenant.as_str(), theirs[0].empty_receives, theirs[0].calls), ("their-customer", 1, 1));
    assert!(store.usage("nobody", 0, u64::MAX >> 1).await.expect("usage").is_empty());

    // Actions, queues and sub-tenants are rows of their own.
    let mut other = record("acme", "r-5", HOUR_10_MS, "DeleteMessage", 1);
    other.queue = "invoices".into();
    store.record(&[other]).await.expect("record");
    let acme = store.usage("acme", HOUR_10_MS, HOUR_10_MS + HOUR_MS).await.expect("usage");
    let keys: Vec<(&str, &str)> = acme.iter().map(|r| (r.queue.as_str(), r.action.as_str())).collect();
    assert_eq!(keys, [("invoices", "DeleteMessage"), ("orders", "SendMessage")]);

    // Bad input is refused whole: nothing of the batch counts.
    let long = "x".repeat(300);
    let bad = vec![record("acme", "r-6", HOUR_10_MS, "SendMessage", 1), record("acme", &long, HOUR_10_MS, "Send", 1)];
    assert!(matches!(store.record(&bad).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.record(&[record("", "r-7", HOUR_10_MS, "Send", 1)]).await, Err(StoreError::Invalid(_))));
    let too_many: Vec<MeterRecord> =
        (0..=RECORDS_PER_BATCH_MAX).map(|i| record("acme", &format!("b-{i}"), HOUR_10_MS, "Send", 1)).collect();
    assert!(matches!(store.record(&too_many).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.record(&[record("acme", "r-6", HOUR_10_MS, "SendMessage", 1)]).await.expect("record"), 1);

    // The same batch from two deliveries at once still counts once.
    let batch: Vec<MeterRecord> =
        (0..50).map(|i| record("acme", &format!("c-{i}"), HOUR_10_MS + 2 * HOUR_MS, "SendMessage", 1)).collect();
    let (a, b) = tokio::join!(store.record(&batch), store.record(&batch));
    assert_eq!(a.expect("one delivery") + b.expect("the other"), 50);

    // Reopened, the store still holds everything (and counts nothing twice).
    drop(store);
    let store = BillingStore::open(url).await.expect("reopen");
    assert_eq!(store.record(&batch).await.expect("record after reopen"), 0);
    let total: u64 = store.hourly_units("acme", 0, u64::MAX >> 1).await.expect("hours").iter().map(|h| h.units).sum();
    assert_eq!(total, 1 + 3 + 2 + 5 + 1 + 1 + 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_conforms_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&format!("sqlite://{}", dir.path().join("billing.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_conforms_on_postgresql() {
    let server = std::env::var("STRATA_TEST_POSTGRES_URL")
        .expect("STRATA_TEST_POSTGRES_URL is not set: run the test command (infra/test.sh), which starts PostgreSQL");
    // A database of this run's own, dropped afterwards.
    let database = format!("billing_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.expect("create a database");
    let (base, _) = server.rsplit_once('/').expect("a database in the URL");
    conformance(&format!("{base}/{database}")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&mut admin).await.expect("drop it");
}
