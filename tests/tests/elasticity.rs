//! Where queues live and how that changes (`docs/elasticity.md`), on a real `strata dev`:
//! `--shards N` spreads queues over N shards of its one node, and a queue deletion cut short
//! after its metadata step is finished by the shard's leader, across a SIGKILL.

#![allow(clippy::disallowed_methods)] // a test of real processes in real time

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use strata_client::model;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;
use strata_tests::DevProcess;
use strata_tests::internal::channel;
use strata_tls::pki::LocalCa;
use strata_tls::{Credentials, Role};

/// How long the shard's leader may take to find and finish an interrupted deletion: a start,
/// and a few heartbeats.
const FINISHED_WITHIN: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    strata_common::Clock::now_ms(&strata_common::SystemClock)
}

/// A proxy's credentials, issued by the dev process's own CA.
fn proxy_credentials(dev: &DevProcess) -> anyhow::Result<Credentials> {
    let ca = LocalCa::open_or_create(&dev.data_dir.join("tls"), now_ms())?;
    Ok(ca.credentials(Role::Proxy, "test-proxy", now_ms())?)
}

/// The shard's answer for the queue's stats: `Ok` while it holds the queue's state.
async fn stats_on_shard(dev: &DevProcess, queue: &pb::QueueRef) -> anyhow::Result<Result<(), StrataError>> {
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let channel = channel(&env["STRATA_STORAGE_ENDPOINT"], &proxy_credentials(dev)?, Role::Storage);
    let answer = pb::storage_client::StorageClient::new(channel).get_queue_stats(queue.clone()).await;
    Ok(answer.map(|_| ()).map_err(StrataError::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_cut_short_after_metadata_is_finished_by_the_shards_leader() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &["--shards", "4"])?;
    dev.wait_for_newest_formats().await?;
    let api = dev.api();
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let metadata = MetadataClient::connect_lazy(&env["STRATA_METADATA_ENDPOINTS"], &proxy_credentials(&dev)?)?;

    // Queues spread over the shards.
    let mut shards = BTreeSet::new();
    for i in 0..16 {
        let name = format!("spread-{i}");
        api.create_queue(&model::CreateQueue::named(&name)).await?;
        shards.insert(metadata.get_queue("dev", &name).await?.shard_id);
    }
    assert!(shards.len() >= 3, "16 queues on shards {shards:?} of 4");

    api.create_queue(&model::CreateQueue::named("doomed")).await?;
    let messages = (0..3).map(|i| model::NewMessage::new(format!("m{i}"))).collect();
    api.send("doomed", &model::SendMessages { messages }, None).await?;
    let info = metadata.get_queue("dev", "doomed").await?;
    let queue = pb::QueueRef { shard_id: info.shard_id, queue_id: info.queue_id, tenant: info.tenant.clone() };
    stats_on_shard(&dev, &queue).await??;

    // As a proxy that dies right after metadata's step: the name is gone, the shard still holds
    // the incarnation's state; then the whole process is killed.
    metadata.delete_queue("dev", "doomed").await?;
    dev.restart()?;

    let deadline = Instant::now() + FINISHED_WITHIN;
    loop {
        match stats_on_shard(&dev, &queue).await? {
            Err(e) if e.kind == ErrorKind::QueueNotFound => break,
            still => assert!(Instant::now() < deadline, "the shard still answers {still:?} for the deleted queue"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new queue of the name is a new incarnation, empty; the others are untouched.
    api.create_queue(&model::CreateQueue::named("doomed")).await?;
    let fresh = metadata.get_queue("dev", "doomed").await?;
    assert_ne!(fresh.queue_id, info.queue_id);
    let got = api.receive("doomed", &model::Receive { max_messages: Some(10), ..Default::default() }).await?;
    assert!(got.messages.is_empty(), "{:?}", got.messages);
    assert_eq!(metadata.get_queue("dev", "spread-0").await?.name, "spread-0");
    Ok(())
}
