//! `strata bench`: measures a running service through its HTTP API, the way a tenant sees it.
//!
//! Phases (each can be skipped): durable send throughput from concurrent senders; send latency
//! at a fixed offered rate (open loop: sends are issued on a schedule, not after the previous
//! one returns, so queueing delay is counted); end-to-end latency at that rate (send to receive
//! by long poll, on a queue of its own, so a backlog left in the main queue by earlier phases
//! stays beside it); a preloaded backlog (`--backlog N`); receive+delete drain throughput;
//! memory of the server with many idle queues (`--idle-queues N --server-pid PID`, read from
//! /proc); and the native API next to the SQS API with SigV4 (`--compare-apis-seconds N`, see
//! `bench_apis`); and queue moves between shards (`--move-data-bytes`, `--move-send-seconds`,
//! see `bench_moves`). The report holds the run's settings and the machine's load average before and
//! after, since only ratios from one run on a shared machine mean anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use strata_client::Client;
use strata_client::model::{self, CreateQueue, NewMessage, QueueAttributesChange, SendMessages};
use strata_common::{Clock, ClockExt, SystemClock};
use tokio::sync::Mutex;

/// A benchmark measures the real machine: it reads the operating system's clock.
pub(crate) const CLOCK: SystemClock = SystemClock;
/// Clients creating the idle queues of `--idle-queues` at once.
const IDLE_QUEUE_CREATORS: usize = 16;

/// The flags, which the report repeats as the run's settings (credentials left out).
#[derive(Args, Debug, serde::Serialize)]
pub(crate) struct BenchArgs {
    #[arg(long, env = "STRATA_ENDPOINT", hide_env_values = true)]
    endpoint: String,
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    token: String,
    /// Queue to use (created if missing, purged first).
    #[arg(long, default_value = "bench")]
    queue: String,
    /// Concurrent senders in the throughput phase.
    #[arg(long, default_value_t = 16)]
    senders: usize,
    /// Messages per send request in the throughput phase.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    /// Length of the throughput phase in seconds (0 skips it).
    #[arg(long, default_value_t = 10)]
    throughput_seconds: u64,
    /// Offered rate of the latency phase in messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Length of the latency phase in seconds (0 skips it).
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Length of the end-to-end phase (send to receive at --rate) in seconds (0 skips it).
    #[arg(long, default_value_t = 10)]
    e2e_seconds: u64,
    /// Long-polling receivers of the end-to-end phase.
    #[arg(long, default_value_t = 4)]
    e2e_receivers: usize,
    /// Messages to send (by --senders in batches of --batch) before the drain phase, on top of
    /// what earlier phases left (0: none).
    #[arg(long, default_value_t = 0)]
    backlog: u64,
    /// Concurrent receivers in the drain phase (0 skips it).
    #[arg(long, default_value_t = 16)]
    receivers: usize,
    /// Create this many idle queues and report the server's RSS (needs --server-pid).
    #[arg(long, default_value_t = 0)]
    idle_queues: usize,
    /// Names of the idle queues: PREFIX-000000 on (a new prefix per run measures new queues).
    #[arg(long, default_value = "idle")]
    idle_queue_prefix: String,
    /// Send this many messages, twice, with the delivery of --memory-delivery, and report the
    /// server's RSS after each round (needs --server-pid; 0 skips it). The second round's growth
    /// is the state's cost per message once the server's bounded caches are full.
    #[arg(long, default_value_t = 0)]
    memory_messages: u64,
    /// `scheduled`: deliver-at times 1 to 31 days ahead (kept in slice files); `delayed`: a
    /// 15-minute delay (kept in memory).
    #[arg(long, default_value = "scheduled")]
    memory_delivery: String,
    #[arg(long)]
    server_pid: Option<u32>,
    /// Run the send-batch / receive / delete-batch workload this many seconds through the native
    /// API and then through the SQS API with SigV4 (0 skips it).
    #[arg(long, default_value_t = 0)]
    compare_apis_seconds: u64,
    /// SQS API credentials for --compare-apis-seconds (as `strata dev` writes them).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    #[serde(skip)]
    aws_access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    #[serde(skip)]
    aws_secret_access_key: Option<String>,
    #[arg(long, env = "AWS_DEFAULT_REGION", default_value = "us-east-1")]
    aws_region: String,
    /// Fill a queue with this many bytes of messages and move it between shards 1 and 2
    /// --moves times, reporting each move's pause and the bytes it copied (comma-separated
    /// sizes, one queue each; needs two shards and the admin API).
    #[arg(long, value_delimiter = ',')]
    move_data_bytes: Vec<u64>,
    /// Moves per size of --move-data-bytes.
    #[arg(long, default_value_t = 5)]
    moves: usize,
    /// Message size of --move-data-bytes.
    #[arg(long, default_value_t = 65_536)]
    move_message_bytes: usize,
    /// Send at --rate this many seconds to a queue that stays, then to one moving between
    /// shards all the while, and report both latencies (0 skips it).
    #[arg(long, default_value_t = 0)]
    move_send_seconds: u64,
    /// The tenant of the bench's token, whose queues the move phases move.
    #[arg(long, default_value = "dev")]
    tenant: String,
    #[arg(long, env = "STRATA_ADMIN_ENDPOINT", hide_env_values = true)]
    admin_endpoint: Option<String>,
    #[arg(long, env = "STRATA_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    admin_token: Option<String>,
}

/// The machine's 1-minute load average (`/proc/loadavg`), if readable.
fn load_average_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// What the run was asked to do, and on how many cores, for its report.
fn settings(args: &BenchArgs) -> anyhow::Result<Value> {
    let mut settings = serde_json::to_value(args)?;
    settings["cores"] = json!(std::thread::available_parallelism().map(usize::from).unwrap_or(0));
    Ok(settings)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the server's /proc status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    line.split_whitespace().nth(1).context("bad VmRSS line")?.parse().context("bad VmRSS value")
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let api = Arc::new(Client::with_http(client.clone(), &args.endpoint, &args.token));
    let mut report = serde_json::Map::new();
    report.insert("settings".into(), settings(&args)?);
    report.insert("load_average_1m_before".into(), json!(load_average_1m()));

    let attributes = QueueAttributesChange { visibility_timeout_seconds: Some(60), ..Default::default() };
    let create = api.create_queue(&CreateQueue { attributes, ..CreateQueue::named(&args.queue) }).await;
    if let Err(e) = create {
        bail!("creating the bench queue: {e}");
    }
    api.purge_queue(&args.queue).await?;
    let body = "x".repeat(args.message_bytes);
    let queue = Arc::new(args.queue.clone());
    let batch_of = |n: usize| SendMessages { messages: vec![NewMessage::new(body.as_str()); n] };

    if args.throughput_seconds > 0 {
        let sent = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(new_histogram()?));
        let deadline = CLOCK.instant() + Duration::from_secs(args.throughput_seconds);
        // Encoded once, not per request, so the load generator spends its share of the two cores
        // on sending.
        let request = bytes::Bytes::from(serde_json::to_vec(&batch_of(args.batch))?);
        let mut tasks = Vec::new();
        let started = CLOCK.instant();
        for _ in 0..args.senders {
            let (api, sent, latencies, request, queue) =
                (api.clone(), sent.clone(), latencies.clone(), request.clone(), queue.clone());
            let batch_len = args.batch as u64;
            tasks.push(tokio::spawn(async move {
                let mut local = new_histogram()?;
                while CLOCK.instant() < deadline {
                    let t = CLOCK.instant();
                    api.send_encoded(&queue, request.clone()).await?;
                    local.record(CLOCK.instant().duration_since(t).as_micros() as u64)?;
                    sent.fetch_add(batch_len, Ordering::Relaxed);
                }
                latencies.lock().await.add(&local)?;
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let seconds = CLOCK.instant().duration_since(started).as_secs_f64();
        let total = sent.load(Ordering::Relaxed);
        report.insert(
            "send_throughput".into(),
            json!({
                "senders": args.senders, "batch": args.batch, "message_bytes": args.message_bytes,
                "messages": total, "seconds": seconds, "messages_per_second": total as f64 / seconds,
                "request_latency": percentiles(&*latencies.lock().await),
            }),
        );
        eprintln!("send throughput: {:.0} msg/s", total as f64 / seconds);
    }

    if args.latency_seconds > 0 && args.rate > 0 {
        let request = bytes::Bytes::from(serde_json::to_vec(&batch_of(1))?);
        let (h, errors) = send_at_rate(&api, &queue, request, args.rate, args.latency_seconds).await?;
        report.insert(
            "send_latency_fixed_rate".into(),
            json!({ "offered_messages_per_second": args.rate, "seconds": args.latency_seconds,
                    "errors": errors, "latency": percentiles(&h) }),
        );
        eprintln!(
            "send latency at {} msg/s: p50 {:.2} ms, p99 {:.2} ms",
            args.rate,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0
        );
    }

    if args.e2e_seconds > 0 && args.rate > 0 {
        let e2e_queue = format!("{}-e2e", args.queue);
        let result =
            end_to_end(&api, &e2e_queue, args.rate, args.e2e_seconds, args.e2e_receivers, args.message_bytes).await?;
        report.insert("end_to_end_fixed_rate".into(), result);
    }

    if args.backlog > 0 {
        let started = CLOCK.instant();
        let request = bytes::Bytes::from(serde_json::to_vec(&batch_of(args.batch))?);
        let (senders, batch) = (args.senders.max(1) as u64, args.batch.max(1) as u64);
        let per_sender = args.backlog.div_ceil(senders * batch);
        let mut tasks = Vec::new();
        for _ in 0..senders {
            let (api, request, queue) = (api.clone(), request.clone(), queue.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_sender {
                    api.send_encoded(&queue, request.clone()).await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let sent = per_sender * senders * batch;
        let seconds = CLOCK.instant().duration_since(started).as_secs_f64();
        report.insert("backlog".into(), json!({ "messages": sent, "seconds": seconds }));
        eprintln!("backlog of {sent} messages sent in {seconds:.1} s");
    }

    if args.receivers > 0 {
        let drained = Arc::new(AtomicU64::new(0));
        let started = CLOCK.instant();
        let mut tasks = Vec::new();
        let receive = model::Receive { max_messages: Some(10), wait_seconds: Some(1), ..Default::default() };
        for _ in 0..args.receivers {
            let (api, drained, queue, receive) = (api.clone(), drained.clone(), queue.clone(), receive.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let got = api.receive(&queue, &receive).await?;
                    let receipt_handles: Vec<String> = got.messages.into_iter().map(|m| m.receipt_handle).collect();
                    if receipt_handles.is_empty() {
                        return anyhow::Ok(());
                    }
                    let received = receipt_handles.len() as u64;
                    api.delete_messages(&queue, &model::DeleteMessages { receipt_handles }).await?;
                    drained.fetch_add(received, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        // The last empty long poll of each receiver is not drain time.
        let seconds = (CLOCK.instant().duration_since(started).as_secs_f64() - 1.0).max(0.001);
        let total = drained.load(Ordering::Relaxed);
        report.insert(
            "drain".into(),
            json!({ "receivers": args.receivers, "messages": total, "seconds": seconds,
                    "messages_per_second": total as f64 / seconds }),
        );
        eprintln!("receive+delete drain: {:.0} msg/s", total as f64 / seconds);
    }

    if args.compare_apis_seconds > 0 {
        let sqs = crate::bench_apis::SqsTarget {
            endpoint: args.endpoint.clone(),
            region: args.aws_region.clone(),
            access_key_id: args.aws_access_key_id.clone().context("--compare-apis-seconds needs AWS_ACCESS_KEY_ID")?,
            secret_access_key: args
                .aws_secret_access_key
                .clone()
                .context("--compare-apis-seconds needs AWS_SECRET_ACCESS_KEY")?,
        };
        let result = crate::bench_apis::compare(
            client.clone(),
            &args.endpoint,
            &args.token,
            sqs,
            crate::bench_apis::Workload {
                senders: args.senders,
                receivers: args.receivers.max(1),
                batch: batch_of(args.batch),
                send_seconds: args.compare_apis_seconds,
            },
        )
        .await?;
        report.insert("api_comparison".into(), result);
    }

    if args.idle_queues > 0 {
        let pid = args.server_pid.context("--idle-queues needs --server-pid to read the server's RSS")?;
        let before = rss_kib(pid)?;
        // Created by IDLE_QUEUE_CREATORS clients at once, each its share of the names.
        let started = CLOCK.instant();
        let mut creators = Vec::new();
        for creator in 0..IDLE_QUEUE_CREATORS {
            let (api, count, prefix) = (api.clone(), args.idle_queues, args.idle_queue_prefix.clone());
            creators.push(tokio::spawn(async move {
                for i in (creator..count).step_by(IDLE_QUEUE_CREATORS) {
                    api.create_queue(&CreateQueue::named(format!("{prefix}-{i:06}"))).await?;
                }
                anyhow::Ok(())
            }));
        }
        for creator in creators {
            creator.await??;
        }
        let seconds = CLOCK.instant().duration_since(started).as_secs_f64();
        CLOCK.sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid)?;
        report.insert(
            "idle_queues".into(),
            json!({ "queues": args.idle_queues, "creators": IDLE_QUEUE_CREATORS, "create_seconds": seconds,
                    "rss_before_kib": before, "rss_after_kib": after,
                    "bytes_per_queue": (after.saturating_sub(before) * 1024) as f64 / args.idle_queues as f64 }),
        );
        eprintln!(
            "RSS with {} idle queues: {} KiB (before: {} KiB), created in {seconds:.1} s",
            args.idle_queues, after, before
        );
    }

    if args.memory_messages > 0 {
        let pid = args.server_pid.context("--memory-messages needs --server-pid to read the server's RSS")?;
        let far = match args.memory_delivery.as_str() {
            "scheduled" => true,
            "delayed" => false,
            other => bail!("--memory-delivery is 'scheduled' or 'delayed', not '{other}'"),
        };
        report.insert("memory_per_message".into(), memory_per_message(&api, pid, args.memory_messages, far).await?);
    }

    if !args.move_data_bytes.is_empty() || args.move_send_seconds > 0 {
        let endpoint = args.admin_endpoint.as_deref().context("the move phases need --admin-endpoint")?;
        let admin = Client::with_http(
            client,
            endpoint,
            args.admin_token.as_deref().context("the move phases need --admin-token")?,
        );
        let bench = crate::bench_moves::MoveBench {
            data_bytes: args.move_data_bytes.clone(),
            message_bytes: args.move_message_bytes,
            moves: args.moves,
            send_seconds: args.move_send_seconds,
            rate: args.rate,
            tenant: args.tenant.clone(),
        };
        report.insert("queue_moves".into(), crate::bench_moves::run(&api, &admin, &bench).await?);
    }

    report.insert("load_average_1m_after".into(), json!(load_average_1m()));
    println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    Ok(())
}

/// Sends `request` (one message) to `queue` at `rate` per second for `seconds`, open loop (on a
/// schedule, not after the previous one returns, so queueing delay counts): the latencies from
/// each send's scheduled time, and the number of sends that failed.
pub(crate) async fn send_at_rate(
    api: &Arc<Client>,
    queue: &Arc<String>,
    request: bytes::Bytes,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = rate * seconds;
    let latencies = Arc::new(Mutex::new(new_histogram()?));
    let errors = Arc::new(AtomicU64::new(0));
    let started = CLOCK.instant();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        CLOCK.sleep_until(due).await;
        let (api, latencies, errors, request, queue) =
            (api.clone(), latencies.clone(), errors.clone(), request.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            // Latency from the scheduled time: a late start is the system's delay too.
            match api.send_encoded(&queue, request).await {
                Ok(_) => {
                    let _ = latencies.lock().await.record(CLOCK.instant().duration_since(due).as_micros() as u64);
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let h = latencies.lock().await.clone();
    Ok((h, errors.load(Ordering::Relaxed)))
}

/// Send-to-receive latency at `rate` messages per second for `seconds`, on `queue` (created or
/// purged first): one message per tick, stamped with its scheduled send time; `receivers` long
/// poll, delete what they get and record now minus the stamp. Messages not received within
/// 10 s of the last send count as lost.
async fn end_to_end(
    api: &Arc<Client>,
    queue: &str,
    rate: u64,
    seconds: u64,
    receivers: usize,
    message_bytes: usize,
) -> anyhow::Result<Value> {
    if let Err(e) = api.create_queue(&CreateQueue::named(queue)).await {
        bail!("creating the {queue} queue: {e}");
    }
    api.purge_queue(queue).await?;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let epoch = CLOCK.instant();
    let latencies = Arc::new(Mutex::new(new_histogram()?));
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let queue = Arc::new(queue.to_owned());
    let mut consumers = Vec::new();
    for _ in 0..receivers.max(1) {
        let (api, queue, latencies, received, stop) =
            (api.clone(), queue.clone(), latencies.clone(), received.clone(), stop.clone());
        consumers.push(tokio::spawn(async move {
            let receive = model::Receive { max_messages: Some(10), wait_seconds: Some(1), ..Default::default() };
            let mut local = new_histogram()?;
            while !stop.is_cancelled() {
                let got = api.receive(&queue, &receive).await?;
                let now_us = CLOCK.instant().duration_since(epoch).as_micros() as u64;
                let mut receipt_handles = Vec::with_capacity(got.messages.len());
                for message in got.messages {
                    // The stamp: microseconds since the phase began, then ';'.
                    if let Some(sent_us) = message.body.split(';').next().and_then(|t| t.parse::<u64>().ok()) {
                        local.record(now_us.saturating_sub(sent_us).max(1))?;
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    receipt_handles.push(message.receipt_handle);
                }
                if !receipt_handles.is_empty() {
                    api.delete_messages(&queue, &model::DeleteMessages { receipt_handles }).await?;
                }
            }
            latencies.lock().await.add(&local)?;
            anyhow::Ok(())
        }));
    }
    let padding = "x".repeat(message_bytes.saturating_sub(24));
    let mut senders = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = epoch + interval.mul_f64(i as f64);
        CLOCK.sleep_until(due).await;
        let stamp = due.duration_since(epoch).as_micros();
        let body = format!("{stamp};{padding}");
        let (api, queue, errors) = (api.clone(), queue.clone(), errors.clone());
        senders.push(tokio::spawn(async move {
            let request = SendMessages { messages: vec![NewMessage::new(body)] };
            if api.send(&queue, &request, None).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for sender in senders {
        sender.await?;
    }
    let sent = total - errors.load(Ordering::Relaxed);
    let deadline = CLOCK.instant() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < sent && CLOCK.instant() < deadline {
        CLOCK.sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for consumer in consumers {
        consumer.await??;
    }
    let h = latencies.lock().await;
    let got = received.load(Ordering::Relaxed);
    eprintln!(
        "end-to-end latency at {rate} msg/s: p50 {:.2} ms, p99 {:.2} ms ({got} of {sent} received)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
    Ok(json!({
        "offered_messages_per_second": rate, "seconds": seconds, "receivers": receivers,
        "send_errors": errors.load(Ordering::Relaxed), "sent": sent, "received": got,
        "lost_or_late": sent.saturating_sub(got), "latency": percentiles(&h),
    }))
}

/// Server RSS growth per message, for messages scheduled 1 to 31 days ahead (`far`: kept in
/// slice files) or delayed 15 minutes (kept in memory): two rounds of `messages`, sent by 16
/// concurrent senders in batches of 10.
async fn memory_per_message(api: &Arc<Client>, pid: u32, messages: u64, far: bool) -> anyhow::Result<Value> {
    const SENDERS: u64 = 16;
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let queue = "bench-memory";
    if let Err(e) = api.create_queue(&CreateQueue::named(queue)).await {
        bail!("creating the {queue} queue: {e}");
    }
    let mut rounds = Vec::new();
    for round in 0..2 {
        let before = rss_kib(pid)?;
        let now_ms = strata_common::SystemClock.now_ms();
        let started = CLOCK.instant();
        let mut senders = Vec::new();
        for sender in 0..SENDERS {
            let api = api.clone();
            senders.push(tokio::spawn(async move {
                let mut i = sender * 10;
                while i < messages {
                    let batch = (i..(i + 10).min(messages))
                        .map(|n| {
                            if far {
                                let deliver_at_ms = now_ms + DAY_MS + n * 30 * DAY_MS / messages;
                                NewMessage { deliver_at_ms: Some(deliver_at_ms), ..NewMessage::new("later") }
                            } else {
                                NewMessage { delay_seconds: Some(900), ..NewMessage::new("later") }
                            }
                        })
                        .collect();
                    api.send(queue, &SendMessages { messages: batch }, None).await?;
                    i += SENDERS * 10;
                }
                anyhow::Ok(())
            }));
        }
        for sender in senders {
            sender.await??;
        }
        let seconds = CLOCK.instant().duration_since(started).as_secs_f64();
        CLOCK.sleep(Duration::from_secs(3)).await;
        let after = rss_kib(pid)?;
        let bytes_per_message = (after.saturating_sub(before) * 1024) as f64 / messages as f64;
        eprintln!(
            "round {round}: {messages} {} messages in {seconds:.1} s ({:.0} msg/s); RSS {before} -> {after} KiB, \
             {bytes_per_message:.0} bytes per message",
            if far { "scheduled" } else { "delayed" },
            messages as f64 / seconds
        );
        rounds.push(json!({ "messages": messages, "send_msgs_per_s": messages as f64 / seconds,
                            "rss_before_kib": before, "rss_after_kib": after, "bytes_per_message": bytes_per_message }));
    }
    api.purge_queue(queue).await?;
    Ok(json!({ "delivery": if far { "scheduled" } else { "delayed" }, "rounds": rounds }))
}
