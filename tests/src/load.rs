//! Client load for tests on a cluster: one task sending unique bodies to a queue and one
//! receiving and deleting from it, each recording what it did and how it ended in a [`History`]
//! for the checker.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Api;
use crate::history::{History, Outcome, Stream};

/// Pause between one client's sends: about 20 sends per second per queue.
const SEND_PAUSE: Duration = Duration::from_millis(50);
/// Longer than a message stays unacknowledged in the tests, so a redelivery means a lost delete
/// or a failover, not a slow receiver.
const VISIBILITY_S: u64 = 30;

fn outcome(answer: &anyhow::Result<(u16, serde_json::Value)>) -> Outcome {
    match answer {
        Ok((200..=299, _)) => Outcome::Ok,
        Ok((400..=499, _)) => Outcome::Failed,
        Ok(_) => Outcome::Unknown,
        // Refused before anything was sent (the proxy is down): definitely not done.
        Err(e) if e.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_connect) => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

/// Sends unique bodies to one queue, alternating proxies, until `stop`.
pub async fn sender(history: History, stream: Stream, proxies: Vec<Api>, stop: CancellationToken) {
    let path = format!("/v1/queues/{}/messages", stream.queue);
    let mut i = 0usize;
    while !stop.is_cancelled() {
        let id = format!("{stream}/{i}");
        let started_ms = history.now_ms();
        let answer = proxies[i % proxies.len()].post(&path, json!({ "messages": [{ "body": id }] })).await;
        history.send(&stream, &id, started_ms, outcome(&answer));
        i += 1;
        tokio::time::sleep(SEND_PAUSE).await;
    }
}

/// Receives from one queue and deletes what it got, alternating proxies, until `stop`.
pub async fn receiver(history: History, stream: Stream, proxies: Vec<Api>, stop: CancellationToken) {
    let receive = format!("/v1/queues/{}/receive", stream.queue);
    let delete = format!("/v1/queues/{}/delete", stream.queue);
    let mut turn = 0usize;
    while !stop.is_cancelled() {
        turn += 1;
        let proxy = &proxies[turn % proxies.len()];
        let started_ms = history.now_ms();
        let body = json!({ "max_messages": 10, "wait_seconds": 1, "visibility_timeout_seconds": VISIBILITY_S });
        let Ok((200, got)) = proxy.post(&receive, body).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let messages = got["messages"].as_array().cloned().unwrap_or_default();
        let ids: Vec<String> = messages.iter().map(|m| m["body"].as_str().unwrap_or_default().to_owned()).collect();
        history.receive(&stream, ids.clone(), started_ms);
        if messages.is_empty() {
            continue;
        }
        let handles: Vec<&str> = messages.iter().map(|m| m["receipt_handle"].as_str().unwrap_or_default()).collect();
        let answer = proxy.post(&delete, json!({ "receipt_handles": handles })).await;
        match &answer {
            Ok((200, results)) => {
                let results = results["results"].as_array().cloned().unwrap_or_default();
                for (id, result) in ids.iter().zip(results) {
                    let ok = result["ok"].as_bool() == Some(true);
                    history.delete(id, if ok { Outcome::Ok } else { Outcome::Failed });
                }
            }
            other => {
                for id in &ids {
                    history.delete(id, outcome(other));
                }
            }
        }
    }
}
