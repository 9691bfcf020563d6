//! Crash tests with a real process: `strata dev` SIGKILLed in the middle of concurrent traffic,
//! restarted on the same directory, several times; then a full drain.
//!
//! Sends: every acknowledged message is delivered (0 lost) and nothing that was never sent
//! appears. Messages whose send was cut off by the kill may or may not be delivered.
//!
//! Receives and deletes (which many clients' calls share log entries for): no acknowledged delete
//! is lost, no message is delivered twice while its lease holds, and every message not delivered
//! is still in the queue.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use strata_tests::{Api, DevProcess, model};

const QUEUE: &str = "crash";
const ROUNDS: usize = 4;
const SENDERS: usize = 8;
const BATCH: usize = 5;

#[derive(Default)]
struct Ledger {
    attempted: BTreeSet<String>,
    acknowledged: BTreeSet<String>,
}

async fn sender(api: Api, round: usize, id: usize, ledger: Arc<Mutex<Ledger>>) {
    for n in 0.. {
        let bodies: Vec<String> = (0..BATCH).map(|j| format!("r{round}-s{id}-n{n}-m{j}")).collect();
        ledger.lock().expect("ledger").attempted.extend(bodies.iter().cloned());
        let messages: Vec<Value> = bodies.iter().map(|b| json!({ "body": b })).collect();
        match api.post(&format!("/v1/queues/{QUEUE}/messages"), json!({ "messages": messages })).await {
            Ok((200, _)) => ledger.lock().expect("ledger").acknowledged.extend(bodies),
            // The process is gone (or going): this sender's round is over.
            _ => return,
        }
    }
}

/// [`ROUNDS`] times: starts the clients `spawn` makes (given the API and the round), lets
/// `acknowledged` rise by `per_round`, SIGKILLs the process in the middle of the traffic, waits
/// for the clients to notice, and restarts it on the same directory.
async fn kill_in_rounds(
    dev: &mut DevProcess,
    what: &str,
    per_round: usize,
    acknowledged: impl Fn() -> usize,
    spawn: impl Fn(&Api, usize) -> Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    for round in 0..ROUNDS {
        let tasks = spawn(&dev.api(), round);
        let before = acknowledged();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acknowledged() < before + per_round {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: {what} stopped being acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        dev.kill9();
        for task in tasks {
            task.await?;
        }
        dev.restart()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_sends_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    dev.api().create_queue(&model::CreateQueue::named(QUEUE)).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    let acknowledged = || ledger.lock().expect("ledger").acknowledged.len();
    kill_in_rounds(&mut dev, "sends", 200, acknowledged, |api, round| {
        (0..SENDERS).map(|id| tokio::spawn(sender(api.clone(), round, id, ledger.clone()))).collect()
    })
    .await?;

    // Drain everything; each message stays invisible long enough to be deleted once.
    let api = dev.api();
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let got = api
            .post_ok(
                &format!("/v1/queues/{QUEUE}/receive"),
                json!({ "max_messages": 10, "wait_seconds": 1, "visibility_timeout_seconds": 600 }),
            )
            .await?;
        let messages = got["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        let receipts: Vec<Value> = messages.iter().map(|m| m["receipt_handle"].clone()).collect();
        for m in &messages {
            *delivered.entry(m["body"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        api.post_ok(&format!("/v1/queues/{QUEUE}/delete"), json!({ "receipt_handles": receipts })).await?;
    }

    let ledger = ledger.lock().expect("ledger");
    let lost: Vec<&String> = ledger.acknowledged.iter().filter(|b| !delivered.contains_key(*b)).collect();
    let never_sent: Vec<&String> = delivered.keys().filter(|b| !ledger.attempted.contains(*b)).collect();
    let duplicates = delivered.values().filter(|n| **n > 1).count();
    eprintln!(
        "rounds={ROUNDS} acknowledged={} attempted={} delivered={} duplicates={duplicates}",
        ledger.acknowledged.len(),
        ledger.attempted.len(),
        delivered.len()
    );
    assert!(ledger.acknowledged.len() >= ROUNDS * 200, "the test must acknowledge traffic in every round");
    assert!(lost.is_empty(), "{} acknowledged messages were lost, e.g. {:?}", lost.len(), lost.first());
    assert!(never_sent.is_empty(), "messages that were never sent were delivered: {never_sent:?}");
    assert_eq!(duplicates, 0, "a message was delivered twice while it was leased");
    Ok(())
}

const DRAIN_QUEUE: &str = "crash-drain";
const PRELOADED: usize = 3_000;
const DRAINERS: usize = 8;
/// Leases outlast the test: a message delivered twice during it was delivered under a lease.
const LEASE_SECONDS: u64 = 1_800;

#[derive(Default)]
struct Deliveries {
    /// Deliveries of each body.
    delivered: BTreeMap<String, usize>,
    /// Bodies whose delete was acknowledged.
    deleted: BTreeSet<String>,
    /// Receipts whose delete was not acknowledged (cut off by a kill), by body.
    undeleted: BTreeMap<String, Value>,
}

/// Whether every delete of an answer succeeded.
fn every_delete_ok(answer: &Value) -> bool {
    answer["results"].as_array().is_some_and(|results| results.iter().all(|r| r["ok"] == Value::Bool(true)))
}

/// Receives and deletes until the process goes away.
async fn drainer(api: Api, deliveries: Arc<Mutex<Deliveries>>) {
    loop {
        let receive = json!({ "max_messages": 10, "visibility_timeout_seconds": LEASE_SECONDS });
        let Ok((200, got)) = api.post(&format!("/v1/queues/{DRAIN_QUEUE}/receive"), receive).await else { return };
        let messages = got["messages"].as_array().cloned().unwrap_or_default();
        let bodies: Vec<String> = messages.iter().map(|m| m["body"].as_str().unwrap_or_default().to_owned()).collect();
        let receipts: Vec<Value> = messages.iter().map(|m| m["receipt_handle"].clone()).collect();
        {
            let mut d = deliveries.lock().expect("deliveries");
            for (body, receipt) in bodies.iter().zip(&receipts) {
                *d.delivered.entry(body.clone()).or_default() += 1;
                d.undeleted.insert(body.clone(), receipt.clone());
            }
        }
        if receipts.is_empty() {
            continue;
        }
        let delete = json!({ "receipt_handles": receipts });
        let Ok((200, answer)) = api.post(&format!("/v1/queues/{DRAIN_QUEUE}/delete"), delete).await else { return };
        assert!(every_delete_ok(&answer), "a delete under a current lease failed: {answer}");
        let mut d = deliveries.lock().expect("deliveries");
        for body in bodies {
            d.undeleted.remove(&body);
            d.deleted.insert(body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_receives_and_deletes_loses_no_acknowledged_delete() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    // Calls share log entries only once the process writes the newest formats.
    dev.wait_for_newest_formats().await?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named(DRAIN_QUEUE)).await?;
    let sent: BTreeSet<String> = (0..PRELOADED).map(|i| format!("m{i:05}")).collect();
    let bodies: Vec<&String> = sent.iter().collect();
    for chunk in bodies.chunks(10) {
        let messages: Vec<Value> = chunk.iter().map(|b| json!({ "body": b })).collect();
        api.post_ok(&format!("/v1/queues/{DRAIN_QUEUE}/messages"), json!({ "messages": messages })).await?;
    }

    let deliveries = Arc::new(Mutex::new(Deliveries::default()));
    let deleted = || deliveries.lock().expect("deliveries").deleted.len();
    kill_in_rounds(&mut dev, "deletes", 300, deleted, |api, _| {
        (0..DRAINERS).map(|_| tokio::spawn(drainer(api.clone(), deliveries.clone()))).collect()
    })
    .await?;

    // Drain what is visible, then delete what was delivered but whose delete was cut off (its
    // lease still holds, so its receipt is current, or the delete applied before the kill).
    let api = dev.api();
    let mut d = std::mem::take(&mut *deliveries.lock().expect("deliveries"));
    loop {
        let receive = json!({ "max_messages": 10, "wait_seconds": 1, "visibility_timeout_seconds": LEASE_SECONDS });
        let got = api.post_ok(&format!("/v1/queues/{DRAIN_QUEUE}/receive"), receive).await?;
        let messages = got["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            let body = m["body"].as_str().unwrap_or_default().to_owned();
            *d.delivered.entry(body.clone()).or_default() += 1;
            d.undeleted.insert(body, m["receipt_handle"].clone());
        }
    }
    let undeleted: Vec<Value> = d.undeleted.values().cloned().collect();
    for chunk in undeleted.chunks(10) {
        let answer =
            api.post_ok(&format!("/v1/queues/{DRAIN_QUEUE}/delete"), json!({ "receipt_handles": chunk })).await?;
        assert!(every_delete_ok(&answer), "a receipt under its lease failed: {answer}");
    }

    let twice: Vec<&String> = d.delivered.iter().filter(|(_, n)| **n > 1).map(|(b, _)| b).collect();
    let deleted_and_back: Vec<&String> = twice.iter().copied().filter(|b| d.deleted.contains(*b)).collect();
    let never_sent: Vec<&String> = d.delivered.keys().filter(|b| !sent.contains(*b)).collect();
    // What was never delivered stayed in flight under a receive the kill cut off; nothing else
    // may be left, and nothing may be missing.
    let queue = api.get_queue(DRAIN_QUEUE).await?;
    let left = queue.approximate_number_of_messages.unwrap_or(0)
        + queue.approximate_number_of_messages_not_visible.unwrap_or(0)
        + queue.approximate_number_of_messages_delayed.unwrap_or(0);
    let never_delivered = (PRELOADED - d.delivered.len()) as u64;
    eprintln!(
        "rounds={ROUNDS} delivered={} acknowledged deletes={} delivered twice={} left={left} never delivered={never_delivered}",
        d.delivered.len(),
        d.deleted.len(),
        twice.len()
    );
    assert!(d.deleted.len() >= ROUNDS * 300, "the test must acknowledge deletes in every round");
    assert!(deleted_and_back.is_empty(), "acknowledged deletes were lost, e.g. {:?}", deleted_and_back.first());
    assert!(twice.is_empty(), "{} messages were delivered twice under a lease, e.g. {:?}", twice.len(), twice.first());
    assert!(never_sent.is_empty(), "messages that were never sent were delivered: {never_sent:?}");
    assert_eq!(left, never_delivered, "messages went missing (or deleted ones came back)");
    assert!(left <= (ROUNDS * DRAINERS * 10) as u64, "more messages in flight than receives the kills cut off");
    Ok(())
}
