//! Crash test with a real process: concurrent senders with unique bodies, `strata dev` SIGKILLed
//! in the middle, restarted on the same directory, several times; then a full drain.
//!
//! Checks: every acknowledged message is delivered (0 lost) and nothing that was never sent
//! appears. Messages whose send was cut off by the kill may or may not be delivered.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_sends_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    dev.api().create_queue(&model::CreateQueue::named(QUEUE)).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    for round in 0..ROUNDS {
        let api = dev.api();
        let tasks: Vec<_> =
            (0..SENDERS).map(|id| tokio::spawn(sender(api.clone(), round, id, ledger.clone()))).collect();
        // Let acknowledgements accumulate, then kill in the middle of the traffic.
        let acked_before = ledger.lock().expect("ledger").acknowledged.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while ledger.lock().expect("ledger").acknowledged.len() < acked_before + 200 {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: sends stopped being acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        dev.kill9();
        for task in tasks {
            task.await?;
        }
        dev.restart()?;
    }

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
