//! Client load for tests on a cluster: one task sending unique bodies to a queue and one
//! receiving and deleting from it, each recording what it did and how it ended in a [`History`]
//! for the checker. [`Load`] runs them for every queue of several tenants.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster::LocalCluster;
use crate::history::{History, Outcome, Report, Stream};
use crate::{Api, model};

/// Pause between one client's sends: about 20 sends per second per queue.
const SEND_PAUSE: Duration = Duration::from_millis(50);
/// Longer than a message stays unacknowledged in the tests, so a redelivery means a lost delete
/// or a failover, not a slow receiver.
const VISIBILITY_S: u64 = 30;

fn outcome(answer: &Result<(u16, serde_json::Value), strata_client::ClientError>) -> Outcome {
    match answer {
        Ok((200..=299, _)) => Outcome::Ok,
        Ok((400..=499, _)) => Outcome::Failed,
        Ok(_) => Outcome::Unknown,
        // Refused before anything was sent (the proxy is down): definitely not done.
        Err(e) if e.never_sent() => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

/// Sends unique bodies to one queue, alternating proxies, until `stop`. A FIFO queue's messages
/// all go to one group, in order (each with its unique id as its deduplication id).
pub async fn sender(history: History, stream: Stream, proxies: Vec<Api>, stop: CancellationToken) {
    let path = format!("/v1/queues/{}/messages", stream.queue);
    let fifo = stream.is_fifo();
    let mut i = 0usize;
    while !stop.is_cancelled() {
        let id = format!("{stream}/{i}");
        let started_ms = history.now_ms();
        let message =
            if fifo { json!({ "body": id, "group_id": "g", "deduplication_id": id }) } else { json!({ "body": id }) };
        let answer = proxies[i % proxies.len()].post(&path, json!({ "messages": [message] })).await;
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

/// How long [`Load::finish`] waits for every acknowledged send to be delivered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// A sender and a receiver for each queue of each tenant, spread over a cluster's proxies.
pub struct Load {
    pub history: History,
    pub streams: Vec<Stream>,
    stop_sending: CancellationToken,
    stop_receiving: CancellationToken,
    senders: Vec<tokio::task::JoinHandle<()>>,
    receivers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Creates `queues` for every tenant of `tenants` and starts their clients.
    pub async fn start(cluster: &LocalCluster, tenants: &[&str], queues: &[&str]) -> anyhow::Result<Self> {
        let env = cluster.credentials()?;
        let endpoints: Vec<String> = env["STRATA_PROXY_ENDPOINTS"].split(',').map(str::to_owned).collect();
        let mut clients = Vec::new();
        for tenant in tenants {
            let token = cluster.token_for(tenant)?;
            clients.push(((*tenant).to_owned(), endpoints.iter().map(|e| Api::new(e, &token)).collect()));
        }
        Self::start_with(clients, queues).await
    }

    /// Creates `queues` for every tenant of `clients` (with its clients of the proxies) and
    /// starts their clients.
    pub async fn start_with(clients: Vec<(String, Vec<Api>)>, queues: &[&str]) -> anyhow::Result<Self> {
        let history = History::new();
        let (stop_sending, stop_receiving) = (CancellationToken::new(), CancellationToken::new());
        let mut streams = Vec::new();
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for (tenant, proxies) in &clients {
            for queue in queues {
                proxies[0].create_queue(&model::CreateQueue::named(*queue)).await?;
                let stream = Stream::new(tenant, queue);
                streams.push(stream.clone());
                let (h, s, p) = (history.clone(), stream.clone(), proxies.clone());
                senders.push(tokio::spawn(sender(h, s, p, stop_sending.clone())));
                let (h, p) = (history.clone(), proxies.clone());
                receivers.push(tokio::spawn(receiver(h, stream, p, stop_receiving.clone())));
            }
        }
        Ok(Self { history, streams, stop_sending, stop_receiving, senders, receivers })
    }

    /// Stops sending, drains until every acknowledged send was delivered (or a timeout), stops
    /// the receivers and judges the run.
    pub async fn finish(self) -> Report {
        self.stop_sending.cancel();
        // A send still under way when sending stops may yet be acknowledged: the drain must
        // wait for it, so it starts once every sender has recorded its last outcome.
        for task in self.senders {
            task.await.expect("sender task");
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.history.undelivered() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.stop_receiving.cancel();
        for task in self.receivers {
            task.await.expect("receiver task");
        }
        self.history.check()
    }
}
