//! One conformance suite for the billing store, run against SQLite (a file in a temporary
//! directory) and a real PostgreSQL server (`STRATA_TEST_POSTGRES_URL`, which the test command
//! sets after starting one; each run uses a database of its own).

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::time::Duration;

use sqlx::Connection;
use strata_billing::pricing::{HOUR_MS, HourUsage, Month, Plan};
use strata_billing::store::{
    BillingStore, KEY_HORIZON_MS, MeterRecord, Package, RECORDS_PER_BATCH_MAX, StoreError, default_plan, usage_csv,
};
use strata_common::metering::sum_usage;

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
    // Repeated inside one batch, and a batch larger than one multi-row insert: still once each.
    let big: Vec<MeterRecord> =
        (0..600).map(|i| record("hooli", &format!("b-{}", i % 400), HOUR_10_MS, "SendMessage", 1)).collect();
    assert_eq!(store.record(&big).await.expect("record a big batch"), 400);
    let hooli = store.usage("hooli", 0, u64::MAX >> 1).await.expect("usage");
    assert_eq!((hooli.len(), hooli[0].calls, hooli[0].units), (1, 400, 400));

    // A metering-queue batch counts once however often it comes: its records with generated
    // keys under the batch's key, those with client keys each under its own.
    let batch = vec![
        record("vandelay", "p-1", HOUR_10_MS, "ReceiveMessage", 1),
        record("vandelay", "p-2", HOUR_10_MS + 1, "ReceiveMessage", 2),
        record("vandelay", "c-9", HOUR_10_MS + 2, "ReceiveMessage", 4),
    ];
    assert_eq!(store.record_batches(&[("m-1".into(), batch.clone())]).await.expect("record a batch"), 3);
    assert_eq!(store.record_batches(&[("m-1".into(), batch.clone())]).await.expect("record a batch again"), 0);
    // A client's retry of c-9 in another batch counts nothing; that batch's own records do.
    let retried = vec![
        record("vandelay", "c-9", HOUR_10_MS + 3, "ReceiveMessage", 4),
        record("vandelay", "p-3", HOUR_10_MS + 4, "ReceiveMessage", 1),
    ];
    assert_eq!(store.record_batches(&[("m-2".into(), retried)]).await.expect("record another batch"), 1);
    let vandelay = store.usage("vandelay", 0, u64::MAX >> 1).await.expect("usage");
    assert_eq!((vandelay.len(), vandelay[0].calls, vandelay[0].units), (1, 4, 8));
    assert!(matches!(store.record_batches(&[(String::new(), batch.clone())]).await, Err(StoreError::Invalid(_))));
    // Several batches in one call: each counted once, a repeated one not again.
    let two = vec![
        ("m-3".to_string(), vec![record("vandelay", "p-4", HOUR_10_MS, "ReceiveMessage", 1)]),
        ("m-1".to_string(), batch),
    ];
    assert_eq!(store.record_batches(&two).await.expect("record two batches"), 1);

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

    // Outbox reads count once per shard sequence number: a stale read and two billing services
    // reading at once add nothing twice, and a read starting inside what was counted is refused
    // with the point to trim through. A client's key (`c-`) still counts once across shards;
    // generated keys (`p-`) come summed.
    let outbox: Vec<MeterRecord> =
        (1..=5).map(|i| record("umbrella", &format!("p-{i}"), HOUR_10_MS, "SendMessage", 2)).collect();
    let sums = |range: std::ops::Range<usize>| sum_usage(&outbox[range]);
    assert_eq!(store.record_outbox(7, 1, 3, &[], &sums(0..3)).await.expect("count"), 3);
    assert_eq!(store.record_outbox(7, 1, 2, &[], &sums(0..2)).await.expect("stale read"), 0);
    assert!(matches!(
        store.record_outbox(7, 1, 4, &[], &sums(0..4)).await,
        Err(StoreError::OutboxOverlap { counted_through_seq: 3 })
    ));
    let rest = sums(3..5);
    let (a, b) = tokio::join!(store.record_outbox(7, 4, 5, &[], &rest), store.record_outbox(7, 4, 5, &[], &rest));
    assert_eq!(a.expect("one service") + b.expect("the other"), 2);
    let client_keyed = record("umbrella", "c-retried", HOUR_10_MS, "SendMessage", 2);
    assert_eq!(store.record_outbox(8, 1, 1, std::slice::from_ref(&client_keyed), &[]).await.expect("count"), 1);
    assert_eq!(store.record_outbox(9, 1, 1, std::slice::from_ref(&client_keyed), &[]).await.expect("other shard"), 0);
    // The numbering must match what the read holds.
    assert!(matches!(store.record_outbox(9, 2, 4, &[], &sums(0..2)).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.record_outbox(9, 0, 1, &[], &sums(0..2)).await, Err(StoreError::Invalid(_))));
    let umbrella = store.usage("umbrella", 0, u64::MAX >> 1).await.expect("usage");
    assert_eq!((umbrella.len(), umbrella[0].calls, umbrella[0].units), (1, 6, 12));

    // Reopened, the store still holds everything (and counts nothing twice).
    drop(store);
    let store = BillingStore::open(url).await.expect("reopen");
    assert_eq!(store.record(&batch).await.expect("record after reopen"), 0);
    let total: u64 = store.hourly_units("acme", 0, u64::MAX >> 1).await.expect("hours").iter().map(|h| h.units).sum();
    assert_eq!(total, 1 + 3 + 2 + 5 + 1 + 1 + 50);

    // Keys are forgotten once their hour ended the horizon ago; usage stays.
    let last = record("wayne", "r-1", HOUR_10_MS + 7, "SendMessage", 1);
    store.record(std::slice::from_ref(&last)).await.expect("record");
    let expiry_ms = HOUR_10_MS + HOUR_MS + KEY_HORIZON_MS;
    assert_eq!(store.prune_keys(expiry_ms - 1).await.expect("prune"), 0);
    assert_eq!(store.record(std::slice::from_ref(&last)).await.expect("still known"), 0);
    assert!(store.prune_keys(expiry_ms).await.expect("prune") >= 1);
    assert_eq!(store.record(std::slice::from_ref(&last)).await.expect("forgotten, so new"), 1);
    let wayne = store.usage("wayne", 0, u64::MAX >> 1).await.expect("usage");
    assert_eq!(wayne[0].calls, 2);

    invoicing(&store).await;
    schema_versions(url, store).await;
}

/// The schema's version: opening again keeps the data; a database a newer release wrote is
/// refused instead of misread.
async fn schema_versions(url: &str, store: BillingStore) {
    let before = store.usage("acme", 0, u64::MAX >> 1).await.expect("usage");
    drop(store);
    let again = BillingStore::open(url).await.expect("open again");
    assert_eq!(again.usage("acme", 0, u64::MAX >> 1).await.expect("usage"), before);
    drop(again);
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    sqlx::query("UPDATE schema_version SET version = 2 WHERE id = 1").execute(&pool).await.expect("bump");
    pool.close().await;
    let Err(refused) = BillingStore::open(url).await else { panic!("a newer schema must be refused") };
    assert!(matches!(refused, StoreError::SchemaTooNew { found: 2, known: 1 }), "{refused}");
}

/// Plans, prepaid packages carried over months, invoices and the CSV export.
async fn invoicing(store: &BillingStore) {
    let (jan, feb, mar) =
        (Month { year: 2026, month: 1 }, Month { year: 2026, month: 2 }, Month { year: 2026, month: 3 });
    let start = |m: Month| m.start_ms().expect("month");
    assert_eq!(store.plan("initech").await.expect("plan"), default_plan());
    let plan = Plan::PayPerCall { free_units_per_month: 100, price_per_million_units: 1_000_000 };
    store.set_plan("initech", &plan).await.expect("set plan");
    assert_eq!(store.plan("initech").await.expect("plan"), plan);
    let package = Package {
        package_id: "p-1".into(),
        units: 200,
        valid_from_ms: start(jan),
        valid_until_ms: start(Month { year: 2026, month: 7 }),
        price: 150,
    };
    store.add_package("initech", &package).await.expect("add package");
    store.add_package("initech", &Package { units: 9_999, ..package.clone() }).await.expect("same id again");
    assert_eq!(store.packages("initech").await.expect("packages"), std::slice::from_ref(&package));
    let backwards = Package { valid_until_ms: package.valid_from_ms, ..package.clone() };
    assert!(matches!(store.add_package("initech", &backwards).await, Err(StoreError::Invalid(_))));

    // January 250 units (100 free, 150 from the package), February 120 (100 free, 20), March 200
    // (100 free, the package's last 30, 70 on demand at one micro each).
    let mut customer = record("initech", "i-1", start(jan), "SendMessage", 250);
    customer.sub_tenant = "Lumbergh, Bill".into();
    let usage = [
        customer,
        record("initech", "i-2", start(feb), "SendMessage", 120),
        record("initech", "i-3", start(mar), "SendMessage", 200),
    ];
    store.record(&usage).await.expect("record");

    let january = store.invoice("initech", jan).await.expect("invoice");
    assert_eq!(january.total, 150, "{january:?}");
    assert_eq!(january.lines[0].description, "prepaid package p-1 bought");
    assert_eq!((january.rating.free_units, january.rating.package_units["p-1"]), (100, 150));
    let march = store.invoice("initech", mar).await.expect("invoice");
    let rating = &march.rating;
    assert_eq!((rating.free_units, rating.package_units["p-1"], rating.on_demand_units), (100, 30, 70));
    assert_eq!(march.total, 70);
    assert_eq!(rating.balances_after[0].remaining_units, 0);
    // Another tenant's invoice holds only its own unit of March (in its free tier).
    let other = store.invoice("globex", mar).await.expect("invoice");
    assert_eq!((other.total, other.rating.total_units, other.plan), (0, 1, default_plan()));

    let rows = store.usage("initech", start(jan), start(feb)).await.expect("usage");
    let csv = usage_csv(&rows).expect("csv");
    assert_eq!(
        csv,
        "hour_start,queue,sub_tenant,action,calls,units,bytes_in,bytes_out,empty_receives\n\
         2026-01-01T00:00:00Z,orders,\"Lumbergh, Bill\",SendMessage,1,250,250000,0,0\n"
    );
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
