//! `strata bench --move-data-bytes ... --move-send-seconds N`: what moving queues between shards
//! costs (see `docs/elasticity.md`), on a service with at least two shards (`strata dev
//! --shards 2`), through its HTTP and admin APIs.
//!
//! * Per queue size: a queue filled with that many bytes of messages moves back and forth;
//!   each move's pause (how long calls on the queue waited, as the move reports it), the bytes
//!   it copied and its duration from request to end, with p50, p99 and max over the moves.
//! * Sends at a fixed rate for N seconds to a queue that stays put, then for N seconds to one
//!   that moves back and forth the whole time: the send latency of both, in one run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use strata_client::Client;
use strata_client::model::admin::{MoveQueue, QueueMove};
use strata_client::model::{CreateQueue, NewMessage, SendMessages};
use strata_common::Clock;
use tokio_util::sync::CancellationToken;

use crate::bench::{CLOCK, percentiles, send_at_rate};

/// Concurrent senders filling a queue before its moves.
const FILLERS: usize = 8;
/// How long one move may take before the bench gives up on it.
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the move phases are asked to do.
pub(crate) struct MoveBench {
    pub data_bytes: Vec<u64>,
    pub message_bytes: usize,
    pub moves: usize,
    pub send_seconds: u64,
    pub rate: u64,
    /// The tenant whose queues these are (the one the bench's token names).
    pub tenant: String,
}

pub(crate) async fn run(api: &Arc<Client>, admin: &Client, bench: &MoveBench) -> anyhow::Result<Value> {
    let mut report = serde_json::Map::new();
    for &bytes in &bench.data_bytes {
        let queue = format!("bench-move-{bytes}");
        let count = fill(api, &queue, bytes, bench.message_bytes).await?;
        let mut moves = Vec::new();
        for _ in 0..bench.moves {
            let started = CLOCK.instant();
            let ended = move_once(admin, &bench.tenant, &queue).await?;
            moves.push((ended, CLOCK.instant().duration_since(started)));
        }
        let paused: Vec<u64> = moves.iter().map(|(m, _)| m.paused_ms).collect();
        let took: Vec<u64> = moves.iter().map(|(_, d)| d.as_millis() as u64).collect();
        let copied: Vec<u64> = moves.iter().map(|(m, _)| m.bytes_moved).collect();
        eprintln!(
            "moves of {bytes} bytes ({count} messages): paused p50 {} ms, p99 {} ms, max {} ms; {} bytes copied per move",
            quantile(&paused, 0.5),
            quantile(&paused, 0.99),
            quantile(&paused, 1.0),
            quantile(&copied, 0.5)
        );
        report.insert(
            format!("move_{bytes}_bytes"),
            json!({
                "messages": count, "message_bytes": bench.message_bytes, "moves": moves.len(),
                "paused_ms": summary(&paused), "move_ms": summary(&took), "bytes_copied": summary(&copied),
            }),
        );
        api.delete_queue(&queue).await?;
    }
    if bench.send_seconds > 0 {
        report.insert("send_latency_with_moves".into(), sends_with_and_without_moves(api, admin, bench).await?);
    }
    Ok(Value::Object(report))
}

/// Fills `queue` (created) with about `bytes` of messages of `message_bytes`; answers how many.
async fn fill(api: &Arc<Client>, queue: &str, bytes: u64, message_bytes: usize) -> anyhow::Result<u64> {
    api.create_queue(&CreateQueue::named(queue)).await?;
    let count = bytes.div_ceil(message_bytes as u64);
    let per_batch = (256 * 1024 / message_bytes).clamp(1, 10) as u64;
    let body = "x".repeat(message_bytes);
    let batches = count.div_ceil(per_batch);
    let mut tasks = Vec::new();
    for filler in 0..FILLERS as u64 {
        let (api, queue, body) = (api.clone(), queue.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in (filler..batches).step_by(FILLERS) {
                let messages = vec![NewMessage::new(body.as_str()); per_batch as usize];
                api.send(&queue, &SendMessages { messages }, None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(batches * per_batch)
}

/// Moves `tenant`'s `queue` between shards 1 and 2 and waits for the move to end.
async fn move_once(admin: &Client, tenant: &str, queue: &str) -> anyhow::Result<QueueMove> {
    let at = admin.queue_placement(tenant, queue).await?.shard_id;
    let to_shard = if at == 1 { 2 } else { 1 };
    let started = admin.move_queue(tenant, queue, &MoveQueue { to_shard }).await.with_context(|| {
        format!("moving {queue} to shard {to_shard} (moves need two shards: strata dev --shards 2)")
    })?;
    let ended = crate::user::wait_for_move(admin, started.move_id, MOVE_TIMEOUT).await?;
    if ended.phase != "completed" {
        bail!("a move of {queue} rolled back: {}", ended.reason);
    }
    Ok(ended)
}

/// Send latency at `rate` to a queue that stays put, then to one that moves all the while.
async fn sends_with_and_without_moves(api: &Arc<Client>, admin: &Client, bench: &MoveBench) -> anyhow::Result<Value> {
    let request = bytes::Bytes::from(serde_json::to_vec(&SendMessages { messages: vec![NewMessage::new("m")] })?);
    let mut result = serde_json::Map::new();
    for moving in [false, true] {
        let name = if moving { "bench-move-sends-moving" } else { "bench-move-sends-still" };
        api.create_queue(&CreateQueue::named(name)).await?;
        let queue = Arc::new(name.to_owned());
        let stop = CancellationToken::new();
        let mover = moving.then(|| {
            let (admin, stop, name, tenant) = (admin.clone(), stop.clone(), name.to_owned(), bench.tenant.clone());
            tokio::spawn(async move {
                let mut moved = 0u64;
                while !stop.is_cancelled() {
                    move_once(&admin, &tenant, &name).await?;
                    moved += 1;
                }
                anyhow::Ok(moved)
            })
        });
        let (latencies, errors) = send_at_rate(api, &queue, request.clone(), bench.rate, bench.send_seconds).await?;
        stop.cancel();
        let moves = match mover {
            Some(task) => task.await?.context("moving the queue")?,
            None => 0,
        };
        eprintln!(
            "sends at {} msg/s {}: p50 {:.2} ms, p99 {:.2} ms ({moves} moves, {errors} errors)",
            bench.rate,
            if moving { "while the queue moves" } else { "to a queue that stays" },
            latencies.value_at_quantile(0.5) as f64 / 1000.0,
            latencies.value_at_quantile(0.99) as f64 / 1000.0
        );
        let key = if moving { "moving" } else { "still" };
        result.insert(key.into(), json!({ "moves": moves, "errors": errors, "latency": percentiles(&latencies) }));
        api.delete_queue(name).await?;
    }
    result.insert("offered_messages_per_second".into(), json!(bench.rate));
    result.insert("seconds".into(), json!(bench.send_seconds));
    Ok(Value::Object(result))
}

fn quantile(values: &[u64], q: f64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or(0)
}

fn summary(values: &[u64]) -> Value {
    json!({ "p50": quantile(values, 0.5), "p99": quantile(values, 0.99), "max": quantile(values, 1.0) })
}
