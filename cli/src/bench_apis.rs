//! `strata bench --compare-apis-seconds N`: the same workload through the native API (JWT) and
//! through the SQS API (JSON protocol, every request SigV4-signed with `aws-sigv4`, as an AWS SDK
//! signs it), one after the other against the same server: SendMessageBatch from concurrent
//! senders for N seconds, then ReceiveMessage + DeleteMessageBatch until the queue is drained.
//! Reports throughput and per-call latency (p50/p99) of each call type for both APIs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use strata_client::model::{self, CreateQueue, QueueAttributesChange, SendMessages};
use strata_client::sqs::{SignOptions, SqsSigner};
use strata_common::{Clock, SystemClock};
use tokio::sync::Mutex;

use crate::bench::{CLOCK, new_histogram, percentiles};

/// Where and as whom the SQS API is called.
pub(crate) struct SqsTarget {
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// One API's client for the three calls of the workload.
enum Client {
    Native { client: strata_client::Client, queue: String },
    Sqs { http: reqwest::Client, target: SqsTarget, signer: SqsSigner, queue_url: String },
}

impl Client {
    /// One SigV4-signed JSON-protocol call.
    async fn sqs(&self, action: &str, body: &Value) -> anyhow::Result<Value> {
        let Client::Sqs { http, target, signer, .. } = self else { bail!("not the SQS client") };
        let bytes = serde_json::to_vec(body)?;
        let url = format!("{}/", target.endpoint.trim_end_matches('/'));
        let now = UNIX_EPOCH + Duration::from_millis(SystemClock.now_ms());
        let headers = signer.json_call_headers(&url, action, &bytes, now, &SignOptions::default())?;
        let mut request = http.post(&url).body(bytes);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{action}: {status}: {value}");
        }
        Ok(value)
    }

    async fn send_batch(&self, batch: &SendMessages) -> anyhow::Result<()> {
        match self {
            Client::Native { client, queue } => {
                client.send(queue, batch, None).await?;
            }
            Client::Sqs { queue_url, .. } => {
                let entries: Vec<Value> = batch
                    .messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| json!({ "Id": i.to_string(), "MessageBody": m.body }))
                    .collect();
                let answer =
                    self.sqs("SendMessageBatch", &json!({ "QueueUrl": queue_url, "Entries": entries })).await?;
                if answer["Failed"].as_array().is_some_and(|f| !f.is_empty()) {
                    bail!("SendMessageBatch entries failed: {}", answer["Failed"]);
                }
            }
        }
        Ok(())
    }

    /// Receives up to 10 messages (1 s long poll); answers their receipt handles.
    async fn receive(&self) -> anyhow::Result<Vec<String>> {
        let handles = |messages: &Value, field: &str| -> Vec<String> {
            messages.as_array().into_iter().flatten().filter_map(|m| m[field].as_str().map(str::to_string)).collect()
        };
        match self {
            Client::Native { client, queue } => {
                let request = model::Receive { max_messages: Some(10), wait_seconds: Some(1), ..Default::default() };
                let got = client.receive(queue, &request).await?;
                Ok(got.messages.into_iter().map(|m| m.receipt_handle).collect())
            }
            Client::Sqs { queue_url, .. } => {
                let request = json!({ "QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1 });
                let got = self.sqs("ReceiveMessage", &request).await?;
                Ok(handles(&got["Messages"], "ReceiptHandle"))
            }
        }
    }

    async fn delete_batch(&self, receipts: Vec<String>) -> anyhow::Result<()> {
        match self {
            Client::Native { client, queue } => {
                client.delete_messages(queue, &model::DeleteMessages { receipt_handles: receipts }).await?;
            }
            Client::Sqs { queue_url, .. } => {
                let entries: Vec<Value> = receipts
                    .iter()
                    .enumerate()
                    .map(|(i, r)| json!({ "Id": i.to_string(), "ReceiptHandle": r }))
                    .collect();
                self.sqs("DeleteMessageBatch", &json!({ "QueueUrl": queue_url, "Entries": entries })).await?;
            }
        }
        Ok(())
    }
}

/// Latency histograms of the three calls, shared by the workers of one run.
struct Latencies {
    send: Mutex<Histogram<u64>>,
    receive: Mutex<Histogram<u64>>,
    delete: Mutex<Histogram<u64>>,
}

/// The workload both APIs run.
#[derive(Clone)]
pub(crate) struct Workload {
    pub senders: usize,
    pub receivers: usize,
    /// A native-API send; the SQS run sends the same bodies as SendMessageBatch entries.
    pub batch: SendMessages,
    pub send_seconds: u64,
}

async fn run_workload(client: Arc<Client>, workload: Workload) -> anyhow::Result<Value> {
    let Workload { senders, receivers, batch, send_seconds: seconds } = workload;
    let latencies = Arc::new(Latencies {
        send: Mutex::new(new_histogram()?),
        receive: Mutex::new(new_histogram()?),
        delete: Mutex::new(new_histogram()?),
    });
    let batch_len = batch.messages.len() as u64;
    let batch = Arc::new(batch);
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = CLOCK.instant() + Duration::from_secs(seconds);
    let started = CLOCK.instant();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (client, batch, sent, latencies) = (client.clone(), batch.clone(), sent.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = new_histogram()?;
            while CLOCK.instant() < deadline {
                let t = CLOCK.instant();
                client.send_batch(&batch).await?;
                local.record(CLOCK.instant().duration_since(t).as_micros() as u64)?;
                sent.fetch_add(batch_len, Ordering::Relaxed);
            }
            latencies.send.lock().await.add(&local)?;
            anyhow::Ok(())
        }));
    }
    for task in tasks.drain(..) {
        task.await??;
    }
    let send_seconds = CLOCK.instant().duration_since(started).as_secs_f64();

    let drained = Arc::new(AtomicU64::new(0));
    let started = CLOCK.instant();
    for _ in 0..receivers {
        let (client, drained, latencies) = (client.clone(), drained.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let (mut receives, mut deletes) = (new_histogram()?, new_histogram()?);
            loop {
                let t = CLOCK.instant();
                let receipts = client.receive().await?;
                if receipts.is_empty() {
                    break;
                }
                receives.record(CLOCK.instant().duration_since(t).as_micros() as u64)?;
                let count = receipts.len() as u64;
                let t = CLOCK.instant();
                client.delete_batch(receipts).await?;
                deletes.record(CLOCK.instant().duration_since(t).as_micros() as u64)?;
                drained.fetch_add(count, Ordering::Relaxed);
            }
            latencies.receive.lock().await.add(&receives)?;
            latencies.delete.lock().await.add(&deletes)?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    // Each receiver's last, empty long poll (1 s) is not drain time.
    let drain_seconds = (CLOCK.instant().duration_since(started).as_secs_f64() - 1.0).max(0.001);
    let (sent, drained) = (sent.load(Ordering::Relaxed), drained.load(Ordering::Relaxed));
    Ok(json!({
        "send_messages_per_second": sent as f64 / send_seconds,
        "drain_messages_per_second": drained as f64 / drain_seconds,
        "messages_sent": sent,
        "messages_drained": drained,
        "send_batch_latency": percentiles(&*latencies.send.lock().await),
        "receive_latency": percentiles(&*latencies.receive.lock().await),
        "delete_batch_latency": percentiles(&*latencies.delete.lock().await),
    }))
}

/// Runs the workload on the native API, then on the SQS API; each on its own fresh queue.
pub(crate) async fn compare(
    http: reqwest::Client,
    endpoint: &str,
    token: &str,
    sqs: SqsTarget,
    workload: Workload,
) -> anyhow::Result<Value> {
    let queue = "bench-compare-native".to_string();
    let client = strata_client::Client::with_http(http.clone(), endpoint, token);
    let attributes = QueueAttributesChange { visibility_timeout_seconds: Some(60), ..Default::default() };
    client.create_queue(&CreateQueue { attributes, ..CreateQueue::named(&queue) }).await?;
    client.purge_queue(&queue).await?;
    let native = Client::Native { client, queue };
    let native_result = run_workload(Arc::new(native), workload.clone()).await?;
    eprintln!("native API: {native_result}");

    let signer = SqsSigner::new(&sqs.region, &sqs.access_key_id, &sqs.secret_access_key);
    let mut client = Client::Sqs { http, target: sqs, signer, queue_url: String::new() };
    let created = client
        .sqs("CreateQueue", &json!({ "QueueName": "bench-compare-sqs", "Attributes": { "VisibilityTimeout": "60" } }))
        .await?;
    let queue_url = created["QueueUrl"].as_str().context("CreateQueue answered no QueueUrl")?.to_string();
    client.sqs("PurgeQueue", &json!({ "QueueUrl": queue_url })).await?;
    if let Client::Sqs { queue_url: url, .. } = &mut client {
        *url = queue_url;
    }
    let sqs_result = run_workload(Arc::new(client), workload).await?;
    eprintln!("SQS API (SigV4): {sqs_result}");
    Ok(json!({ "native": native_result, "sqs_sigv4": sqs_result }))
}
