//! What an idle queue costs a running `strata dev`: the resident memory of the whole process
//! (metadata, shard state, proxy, billing) grows by at most [`IDLE_QUEUE_BYTES_MAX`] per queue,
//! and so do the heap bytes its allocator has handed out (`strata_process_heap_bytes`). The heap
//! figure is the one to compare between versions: it counts what the process's data holds, while
//! resident memory also counts what the allocator keeps free, which varies from run to run by
//! about 100 bytes per queue.
//!
//! The process's bounded caches (recent log entries, recent request answers, the metering
//! pipeline) fill as calls go by, whatever they are for, so they are warmed first: 10,000
//! queues are created and 8 MiB of messages sent before the measured 10,000 queues.

use std::time::Duration;

use strata_common::{Clock, SystemClock};
use strata_tests::{Api, DevProcess, model};

/// The bound the issue sets for an idle queue (`strata dev`, the whole process).
const IDLE_QUEUE_BYTES_MAX: u64 = 2048;
/// Queues created at once, like as many clients.
const CREATORS: usize = 16;

async fn create_queues(api: &Api, prefix: &str, count: usize) -> anyhow::Result<()> {
    let creators = (0..CREATORS).map(|creator| {
        let (api, prefix) = (api.clone(), prefix.to_owned());
        tokio::spawn(async move {
            for i in (creator..count).step_by(CREATORS) {
                api.create_queue(&model::CreateQueue::named(format!("{prefix}-{i:05}"))).await?;
            }
            anyhow::Ok(())
        })
    });
    for creator in creators.collect::<Vec<_>>() {
        creator.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_costs_the_process_at_most_2_kib() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();

    create_queues(&api, "warm", 10_000).await?;
    api.create_queue(&model::CreateQueue::named("traffic")).await?;
    let body = "x".repeat(1024);
    for _ in 0..800 {
        let messages = (0..10).map(|_| model::NewMessage::new(&body)).collect();
        api.send("traffic", &model::SendMessages { messages }, None).await?;
    }
    SystemClock.sleep(Duration::from_secs(2)).await;
    let before_kib = dev.rss_kib()?;
    let before_heap_bytes = dev.heap_bytes().await?;

    let queues = 10_000;
    create_queues(&api, "idle", queues).await?;
    SystemClock.sleep(Duration::from_secs(2)).await;
    let grown_bytes = dev.rss_kib()?.saturating_sub(before_kib) * 1024;
    let per_queue = grown_bytes / queues as u64;
    eprintln!("{queues} idle queues grew the process by {grown_bytes} bytes, {per_queue} per queue");
    let heap_grown_bytes = dev.heap_bytes().await?.saturating_sub(before_heap_bytes);
    let heap_per_queue = heap_grown_bytes / queues as u64;
    eprintln!("{queues} idle queues grew the heap by {heap_grown_bytes} bytes, {heap_per_queue} per queue");
    assert!(per_queue <= IDLE_QUEUE_BYTES_MAX, "an idle queue costs {per_queue} bytes of RSS");
    assert!(heap_per_queue <= IDLE_QUEUE_BYTES_MAX, "an idle queue holds {heap_per_queue} bytes of heap");
    Ok(())
}
