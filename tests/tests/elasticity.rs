//! Where queues live and how that changes (`docs/elasticity.md`). On a real `strata dev`:
//! `--shards N` spreads queues over N shards of its one node, a queue deletion cut short after
//! its metadata step is finished by the shard's leader across a SIGKILL, and the restarted
//! leader writes under a new writer epoch. On a local
//! cluster: an operator hands a shard's leadership to another replica under sends, the shard's
//! record names the new writer with a new writer epoch, a shard added at runtime takes queues,
//! a fourth storage node added by `infra/local-cluster.sh add` takes a replica of it, and no
//! acknowledged send is lost. In both, shards are added while the service runs, queues move
//! between shards, and dead letters and move tasks reach queues on other shards.

#![allow(clippy::disallowed_methods)] // a test of real processes in real time

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use strata_client::model;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::format::NEWEST_GENERATION;
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;
use strata_tests::cluster::{LocalCluster, METADATA, STORAGE};
use strata_tests::internal::channel;
use strata_tests::load::Load;
use strata_tests::{DevProcess, strata_binary};
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

/// The shard's writer epoch once a writer claimed one above `above`.
async fn claimed_epoch(metadata: &MetadataClient, shard_id: u64, above: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + FINISHED_WITHIN;
    loop {
        let epoch = metadata.get_shard(shard_id).await.map(|s| s.writer_epoch).unwrap_or(0);
        if epoch > above {
            return Ok(epoch);
        }
        anyhow::ensure!(Instant::now() < deadline, "shard {shard_id}'s writer epoch stays {epoch}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

    // Each leadership of a shard claims a new writer epoch, also a leader restarted in its Raft
    // term (a single voter keeps its term across restarts).
    let epoch_before = claimed_epoch(&metadata, info.shard_id, 0).await?;

    // As a proxy that dies right after metadata's step: the name is gone, the shard still holds
    // the incarnation's state; then the whole process is killed.
    metadata.delete_queue("dev", "doomed").await?;
    dev.restart()?;
    claimed_epoch(&metadata, info.shard_id, epoch_before).await?;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_at_runtime_takes_new_queues_and_survives_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    dev.wait_for_newest_formats().await?;
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let metadata = MetadataClient::connect_lazy(&env["STRATA_METADATA_ENDPOINTS"], &proxy_credentials(&dev)?)?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("before")).await?;

    let (ok, added, stderr) = cluster_cli(&env, &["add-shard"]);
    assert!(ok, "{stderr}");
    assert_eq!(added["shard_id"], 2, "{added}");
    assert_eq!(added["replicas"].as_array().map(Vec::len), Some(1), "{added}");
    let (ok, _, stderr) = cluster_cli(&env, &["add-shard", "--replicas", "3"]);
    assert!(!ok && stderr.contains("live storage nodes"), "{stderr}");

    // New queues spread over both shards once the new one runs (its leader claimed it, within
    // a heartbeat); one on it serves calls.
    claimed_epoch(&metadata, 2, 0).await?;
    let mut on_new = None;
    for i in 0..60 {
        let name = format!("q{i:02}");
        api.create_queue(&model::CreateQueue::named(&name)).await?;
        if metadata.get_queue("dev", &name).await?.shard_id == 2 {
            on_new = Some(name);
            break;
        }
    }
    let name = on_new.ok_or_else(|| anyhow::anyhow!("none of 60 new queues went to the added shard"))?;
    let messages = vec![model::NewMessage::new("on the added shard")];
    api.send(&name, &model::SendMessages { messages }, None).await?;

    // After a restart the node opens the added shard with the others.
    dev.restart()?;
    let got = api.receive(&name, &model::Receive { max_messages: Some(10), ..Default::default() }).await?;
    let bodies: Vec<&str> = got.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["on the added shard"]);
    assert_eq!(metadata.get_queue("dev", "before").await?.shard_id, 1);
    Ok(())
}

/// Moves `name` of tenant `dev` to the other of shards 1 and 2, `times` times, each through the
/// admin API and until it ends; answers each move as it ended.
async fn move_back_and_forth(
    admin: strata_client::Client,
    name: &str,
    times: usize,
) -> anyhow::Result<Vec<model::admin::QueueMove>> {
    let mut ended = Vec::new();
    for _ in 0..times {
        let at = admin.queue_placement("dev", name).await?.shard_id;
        let to_shard = if at == 1 { 2 } else { 1 };
        let started = admin.move_queue("dev", name, &model::admin::MoveQueue { to_shard }).await?;
        let done = ended_move(&admin, started.move_id).await?;
        anyhow::ensure!(done.phase == "completed", "move of {name} rolled back: {done:?}");
        ended.push(done);
    }
    Ok(ended)
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_move_between_shards_back_and_forth_under_load_losing_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &["--shards", "2"])?;
    dev.wait_for_newest_formats().await?;
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let endpoint = &env["STRATA_ENDPOINT"];
    let clients = vec![
        ("dev".to_owned(), vec![dev.api()]),
        ("acme".to_owned(), vec![strata_tests::Api::new(endpoint, &dev.token_for("acme")?)]),
    ];
    // Sends with unique ids, receives and deletes on a standard and a FIFO queue of two tenants.
    let load = Load::start_with(clients, &["hot", "hot.fifo"]).await?;
    claimed_epoch(&MetadataClient::connect_lazy(&env["STRATA_METADATA_ENDPOINTS"], &proxy_credentials(&dev)?)?, 2, 0)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The standard and the FIFO queue of `dev` each move 20 times, both at once.
    let admin = dev.admin_api()?;
    let (standard, fifo) =
        tokio::join!(move_back_and_forth(admin.clone(), "hot", 20), move_back_and_forth(admin.clone(), "hot.fifo", 20));
    let moves: Vec<_> = standard?.into_iter().chain(fifo?).collect();
    let (ok, placement, stderr) = cluster_cli(&env, &["queue", "dev", "hot"]);
    assert!(ok, "{stderr}");
    assert_eq!(placement["epoch"], 20, "{placement}");
    assert_eq!(placement["shard_id"], admin.queue_placement("dev", "hot").await?.shard_id, "{placement}");
    let (ok, listed, stderr) = cluster_cli(&env, &["moves"]);
    assert!(ok, "{stderr}");
    assert_eq!(listed["moves"].as_array().map(Vec::len), Some(40), "{listed}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;
    let mut paused: Vec<u64> = moves.iter().map(|m| m.paused_ms).collect();
    paused.sort_unstable();
    let copied: u64 = moves.iter().map(|m| m.bytes_moved).sum();
    println!(
        "{report}\n{} moves: paused p50 {} ms, p99 {} ms, max {} ms; {copied} bytes copied",
        moves.len(),
        quantile(&paused, 0.5),
        quantile(&paused, 0.99),
        quantile(&paused, 1.0)
    );
    assert!(report.is_safe(), "{report}");
    assert!(report.sends_acknowledged > 200, "{report}");
    // Calls on a moving queue wait for the move and go on at its new shard: none fails.
    assert_eq!((report.sends_failed, report.sends_unknown), (0, 0), "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    Ok(())
}

/// The move `move_id` once it ended, completed or rolled back.
async fn ended_move(admin: &strata_client::Client, move_id: u64) -> anyhow::Result<model::admin::QueueMove> {
    let deadline = Instant::now() + FINISHED_WITHIN;
    loop {
        if let Ok(moves) = admin.queue_moves().await
            && let Some(done) = moves.moves.into_iter().find(|m| m.move_id == move_id && !m.is_under_way())
        {
            return Ok(done);
        }
        anyhow::ensure!(Instant::now() < deadline, "move {move_id} never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cut_short_by_sigkill_completes_after_a_restart_and_one_not_possible_rolls_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &["--shards", "2"])?;
    dev.wait_for_newest_formats().await?;
    let (api, admin) = (dev.api(), dev.admin_api()?);
    api.create_queue(&model::CreateQueue::named("big")).await?;
    // 240 messages of 64 KiB: copying them takes a while, long enough to be cut short.
    let body = |i: usize| format!("{i:04}-{}", "x".repeat(64 * 1024));
    for batch in 0..24 {
        let messages = (0..10).map(|j| model::NewMessage::new(body(batch * 10 + j))).collect();
        api.send("big", &model::SendMessages { messages }, None).await?;
    }
    // The process (source and target leader, and metadata's) dies as the move copies bodies,
    // right after the fence, and right after the switch.
    let mut completed = 0;
    let copying = "queue move: copying bodies";
    for step in [copying, "queue move: fenced", "queue move: switched"] {
        let seen_before = dev.log()?.matches(step).count();
        let copies_before = dev.log()?.matches(copying).count();
        let at = admin.queue_placement("dev", "big").await?.shard_id;
        let to_shard = if at == 1 { 2 } else { 1 };
        let started = admin.move_queue("dev", "big", &model::admin::MoveQueue { to_shard }).await?;
        let deadline = Instant::now() + FINISHED_WITHIN;
        while dev.log()?.matches(step).count() == seen_before {
            anyhow::ensure!(Instant::now() < deadline, "the move never logged '{step}'");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        dev.restart()?;
        let ended = ended_move(&admin, started.move_id).await?;
        let copies = dev.log()?.matches(copying).count() - copies_before;
        println!("killed at '{step}': the move {} ({}), its bodies copied {copies} times", ended.phase, ended.reason);
        if step == copying {
            assert_eq!(copies, 2, "the restarted node hands the queue over again");
        }
        if ended.phase == "completed" {
            completed += 1;
        }
        let placement = admin.queue_placement("dev", "big").await?;
        assert_eq!(placement.epoch, completed, "{placement:?} after {ended:?}");
    }
    anyhow::ensure!(completed > 0, "no move completed");

    // Every message is there once, whole.
    let mut bodies = BTreeSet::new();
    let deadline = Instant::now() + FINISHED_WITHIN;
    while bodies.len() < 240 && Instant::now() < deadline {
        let request = model::Receive { max_messages: Some(10), wait_seconds: Some(1), ..Default::default() };
        for m in api.receive("big", &request).await?.messages {
            assert!(bodies.insert(m.body.clone()), "delivered twice: {}", &m.body[..4]);
        }
    }
    let expected: BTreeSet<String> = (0..240).map(body).collect();
    assert!(bodies == expected, "{} of 240 messages came back whole", bodies.intersection(&expected).count());

    // A queue holding messages scheduled a day ahead (in slice files) takes them along: at the
    // new shard one can be cancelled by its id, and the other still waits there.
    api.create_queue(&model::CreateQueue::named("later")).await?;
    let tomorrow =
        || model::NewMessage { deliver_at_ms: Some(now_ms() + 86_400_000), ..model::NewMessage::new("later") };
    let sent = api.send("later", &model::SendMessages { messages: vec![tomorrow(), tomorrow()] }, None).await?;
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let at = admin.queue_placement("dev", "later").await?.shard_id;
    let to = if at == 1 { "2" } else { "1" };
    let (ok, moved, stderr) = cluster_cli(&env, &["move-queue", "dev", "later", "--to-shard", to]);
    assert!(ok, "{stderr}");
    assert_eq!(moved["phase"], "completed", "{moved}");
    let placement = admin.queue_placement("dev", "later").await?;
    assert_eq!((placement.shard_id.to_string().as_str(), placement.epoch), (to, 1));
    api.cancel_scheduled("later", &sent.messages[0].message_id).await?;
    let waiting = api.get_queue("later").await?;
    assert_eq!(waiting.approximate_number_of_messages_delayed, Some(1), "{waiting:?}");

    // The source of a running move task is not moved (the task stays with its shard): the
    // move rolls back, with the reason, and the queue serves where it was.
    api.create_queue(&model::CreateQueue::named("dlq")).await?;
    let dead_letter = Some(Some(model::DeadLetter { queue: "dlq".into(), max_receive_count: 3 }));
    let attributes = model::QueueAttributesChange { dead_letter, ..Default::default() };
    api.create_queue(&model::CreateQueue { attributes, ..model::CreateQueue::named("src") }).await?;
    for batch in 0..5 {
        let messages = (0..10).map(|i| model::NewMessage::new(format!("dead {batch}-{i}"))).collect();
        api.send("dlq", &model::SendMessages { messages }, None).await?;
    }
    // One message a second: it runs for the rest of the test.
    let slow = model::StartMoveTask { destination: None, max_messages_per_second: Some(1) };
    api.start_move_task("dlq", &slow).await?;
    let at = admin.queue_placement("dev", "dlq").await?.shard_id;
    let to = if at == 1 { "2" } else { "1" };
    let (ok, _, stderr) = cluster_cli(&env, &["move-queue", "dev", "dlq", "--to-shard", to]);
    assert!(!ok && stderr.contains("rolled back") && stderr.contains("move task"), "{stderr}");
    let placement = admin.queue_placement("dev", "dlq").await?;
    assert_eq!((placement.shard_id, placement.epoch), (at, 0));
    api.send("dlq", &model::SendMessages { messages: vec![model::NewMessage::new("still here")] }, None).await?;
    Ok(())
}

/// Puts queue `name` of `dev` on `shard`, moving it there when it was placed elsewhere.
async fn place_on(admin: &strata_client::Client, name: &str, shard: u64) -> anyhow::Result<()> {
    if admin.queue_placement("dev", name).await?.shard_id != shard {
        let started = admin.move_queue("dev", name, &model::admin::MoveQueue { to_shard: shard }).await?;
        let ended = ended_move(admin, started.move_id).await?;
        anyhow::ensure!(ended.phase == "completed", "{name} did not move to shard {shard}: {ended:?}");
    }
    Ok(())
}

/// Receives every message of `queue` once with no visibility timeout, and then once more: each
/// is received once (and, with a maximum receive count of 1, a dead letter then). Answers how
/// many were received.
async fn receive_each_once(api: &strata_client::Client, queue: &str, count: usize) -> anyhow::Result<usize> {
    let request = model::Receive { max_messages: Some(10), visibility_timeout_seconds: Some(0), ..Default::default() };
    let (mut seen, deadline) = (BTreeSet::new(), Instant::now() + FINISHED_WITHIN);
    while seen.len() < count {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {count} messages of {queue} came", seen.len());
        seen.extend(api.receive(queue, &request).await?.messages.into_iter().map(|m| m.message_id));
    }
    // The receives that find them exhausted move them.
    for _ in 0..=count / 10 {
        api.receive(queue, &request).await?;
    }
    Ok(seen.len())
}

/// Receives and deletes every message of `queue` until `count` came (within a deadline): their
/// bodies in the order received.
async fn drain(api: &strata_client::Client, queue: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let request = model::Receive { max_messages: Some(10), wait_seconds: Some(1), ..Default::default() };
    let (mut bodies, deadline) = (Vec::new(), Instant::now() + FINISHED_WITHIN);
    while bodies.len() < count {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {count} messages reached {queue}", bodies.len());
        let got = api.receive(queue, &request).await?.messages;
        if got.is_empty() {
            continue;
        }
        let receipt_handles = got.iter().map(|m| m.receipt_handle.clone()).collect();
        api.delete_messages(queue, &model::DeleteMessages { receipt_handles }).await?;
        bodies.extend(got.into_iter().map(|m| m.body));
    }
    Ok(bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_move_tasks_reach_queues_on_another_shard_across_a_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &["--shards", "2"])?;
    dev.wait_for_newest_formats().await?;
    let api = dev.api();
    // Under a steady load on two other queues of two tenants, judged by the history checker.
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let clients = vec![
        ("dev".to_owned(), vec![dev.api()]),
        ("acme".to_owned(), vec![strata_tests::Api::new(&env["STRATA_ENDPOINT"], &dev.token_for("acme")?)]),
    ];
    let load = Load::start_with(clients, &["steady", "steady.fifo"]).await?;
    let admin = dev.admin_api()?;
    // A standard queue on shard 1 with its dead-letter queue on shard 2, and a FIFO queue on
    // shard 2 with its dead-letter queue on shard 1.
    for (name, shard) in [("dlq", 2), ("dlq.fifo", 1)] {
        api.create_queue(&model::CreateQueue::named(name)).await?;
        place_on(&admin, name, shard).await?;
    }
    for (name, dead_letter, shard) in [("src", "dlq", 1), ("src.fifo", "dlq.fifo", 2)] {
        let dead_letter = Some(Some(model::DeadLetter { queue: dead_letter.into(), max_receive_count: 1 }));
        let attributes = model::QueueAttributesChange { dead_letter, ..Default::default() };
        api.create_queue(&model::CreateQueue { attributes, ..model::CreateQueue::named(name) }).await?;
        place_on(&admin, name, shard).await?;
    }
    let standard: Vec<String> = (0..30).map(|i| format!("standard {i:02}")).collect();
    for chunk in standard.chunks(10) {
        let messages = chunk.iter().map(|b| model::NewMessage::new(b.clone())).collect();
        api.send("src", &model::SendMessages { messages }, None).await?;
    }
    // Two groups, interleaved, each in order.
    let fifo: Vec<(String, String)> = (0..30).map(|i| (format!("g{}", i % 2), format!("fifo {i:02}"))).collect();
    for chunk in fifo.chunks(10) {
        let messages = chunk
            .iter()
            .map(|(group, body)| model::NewMessage {
                group_id: Some(group.clone()),
                deduplication_id: Some(body.replace(' ', "-")),
                ..model::NewMessage::new(body.clone())
            })
            .collect();
        api.send("src.fifo", &model::SendMessages { messages }, None).await?;
    }
    assert_eq!(receive_each_once(&api, "src", 30).await?, 30);
    assert_eq!(receive_each_once(&api, "src.fifo", 30).await?, 30);
    // The process dies while dead letters may still wait in a shard's outbox.
    dev.restart()?;
    let mut arrived = drain(&api, "dlq", 30).await?;
    arrived.sort();
    assert_eq!(arrived, standard, "every dead letter arrived once");
    let arrived = drain(&api, "dlq.fifo", 30).await?;
    for group in ["g0", "g1"] {
        let sent: Vec<&String> = fifo.iter().filter(|(g, _)| g == group).map(|(_, body)| body).collect();
        let got: Vec<&String> = arrived.iter().filter(|body| sent.contains(body)).collect();
        assert_eq!(got, sent, "group {group} arrived whole and in order");
    }
    for queue in ["src", "src.fifo"] {
        let left = api.get_queue(queue).await?;
        assert_eq!(left.approximate_number_of_messages, Some(0), "{queue}: {left:?}");
    }

    // A move task takes dead letters back to their source queue on the other shard.
    let messages = standard.iter().take(10).map(|b| model::NewMessage::new(b.clone())).collect();
    api.send("dlq", &model::SendMessages { messages }, None).await?;
    let started = api.start_move_task("dlq", &model::StartMoveTask::default()).await?;
    let mut back = drain(&api, "src", 10).await?;
    back.sort();
    assert_eq!(back, standard[..10], "the task moved each once");
    let tasks = api.move_tasks("dlq").await?;
    let task = tasks.tasks.iter().find(|t| t.task_id == started.task_id).expect("the task is listed");
    assert_eq!((task.status, task.moved), (model::MoveTaskStatus::Completed, 10), "{task:?}");

    // Queues with dead-letter relations move; their dead letters follow.
    place_on(&admin, "dlq", 1).await?;
    place_on(&admin, "src", 2).await?;
    let messages = vec![model::NewMessage::new("after the moves")];
    api.send("src", &model::SendMessages { messages }, None).await?;
    receive_each_once(&api, "src", 1).await?;
    assert_eq!(drain(&api, "dlq", 1).await?, ["after the moves"]);

    // Dead letters for a dead-letter queue deleted meanwhile come back to their queue.
    api.delete_queue("dlq").await?;
    let messages = vec![model::NewMessage::new("no dead-letter queue")];
    api.send("src", &model::SendMessages { messages }, None).await?;
    receive_each_once(&api, "src", 1).await?;
    assert_eq!(drain(&api, "src", 1).await?, ["no dead-letter queue"]);

    let report = load.finish().await;
    println!("{report}");
    assert!(report.is_safe(), "{report}");
    assert!(report.sends_acknowledged > 100, "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adoption_left_by_a_driver_of_an_ended_move_is_swept() -> anyhow::Result<()> {
    use strata_common::format::Persisted;
    use strata_storage::queue::{Command, ShardCommand};
    use strata_storage::shard::ShardEntry;

    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &["--shards", "2"])?;
    dev.wait_for_newest_formats().await?;
    let (api, admin) = (dev.api(), dev.admin_api()?);
    api.create_queue(&model::CreateQueue::named("swept")).await?;
    let from = admin.queue_placement("dev", "swept").await?;
    let to_shard = if from.shard_id == 1 { 2 } else { 1 };
    let started = admin.move_queue("dev", "swept", &model::admin::MoveQueue { to_shard }).await?;
    assert_eq!(ended_move(&admin, started.move_id).await?.phase, "completed");

    // As a driver that lost its shard's leadership and goes on after the move ended: the first
    // part of an adoption of the queue, on the shard it left.
    let command = Command::AdoptState {
        queue: from.queue_id,
        tenant: "dev".into(),
        move_id: started.move_id,
        offset: 0,
        part: Default::default(),
    };
    let entry = ShardEntry(ShardCommand { now_ms: 0, command, request_id: None, meter: None });
    let mut bytes = vec![ShardEntry::FORMAT_VERSION];
    entry.encode_body(ShardEntry::FORMAT_VERSION, &mut bytes)?;
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let ca = LocalCa::open_or_create(&dev.data_dir.join("tls"), now_ms())?;
    let storage = ca.credentials(Role::Storage, "stale-driver", now_ms())?;
    let channel = channel(&env["STRATA_STORAGE_ENDPOINT"], &storage, Role::Storage);
    let request = pb::AdoptQueueStepRequest { shard_id: from.shard_id, entry: bytes };
    pb::storage_client::StorageClient::new(channel).adopt_queue_step(request).await?;

    // The shard's leader drops it within a heartbeat or two.
    let swept = "dropped an adoption left over by an ended move";
    let deadline = Instant::now() + FINISHED_WITHIN;
    while !dev.log()?.contains(swept) {
        anyhow::ensure!(Instant::now() < deadline, "the left-over adoption was never dropped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The queue itself serves on at its shard.
    api.send("swept", &model::SendMessages { messages: vec![model::NewMessage::new("on")] }, None).await?;
    Ok(())
}

/// Lines of `name`'s log in the local cluster that contain `text`.
fn logged(cluster: &LocalCluster, name: &str, text: &str) -> usize {
    std::fs::read_to_string(cluster.dir.join(format!("{name}.log"))).map_or(0, |log| log.matches(text).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_move_between_nodes_under_load_and_each_leader_may_die_mid_move() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = LocalCluster::up(&dir.path().join("cluster"), LocalCluster::port_base(3))?;
    let env = cluster.credentials()?;
    newest_formats(&env).await?;
    // Each of the three shards led by another node, so a move crosses nodes.
    for (shard_id, node) in (1..).zip(STORAGE) {
        cluster.wait_for_leader(&STORAGE, shard_id).await?;
        let (ok, _, stderr) = cluster_cli(&env, &["transfer-leader", &shard_id.to_string(), "--to", node]);
        anyhow::ensure!(ok, "{stderr}");
    }
    let api = strata_tests::Api::new(&env["STRATA_ENDPOINT"], &env["STRATA_TOKEN"]);
    api.create_queue(&model::CreateQueue::named("big")).await?;
    let body = |i: usize| format!("{i:04}-{}", "x".repeat(64 * 1024));
    for batch in 0..24 {
        let messages = (0..10).map(|j| model::NewMessage::new(body(batch * 10 + j))).collect();
        api.send("big", &model::SendMessages { messages }, None).await?;
    }
    let load = Load::start(&cluster, &["dev", "acme"], &["moving", "moving.fifo"]).await?;
    let admin = strata_client::Client::new(&env["STRATA_ADMIN_ENDPOINT"], &env["STRATA_ADMIN_TOKEN"]);
    let next_shard = |at: u64| at % 3 + 1;

    // Moves between nodes under load, through the proxies, both queues of `dev`.
    let mut pauses = Vec::new();
    for _ in 0..3 {
        for name in ["moving", "moving.fifo"] {
            let to_shard = next_shard(admin.queue_placement("dev", name).await?.shard_id);
            let started = admin.move_queue("dev", name, &model::admin::MoveQueue { to_shard }).await?;
            let ended = ended_move(&admin, started.move_id).await?;
            anyhow::ensure!(ended.phase == "completed", "{ended:?}");
            pauses.push(ended.paused_ms);
        }
    }

    // The source's leader, the target's leader and metadata's leader each die as `big` moves.
    let mut outcomes = Vec::new();
    for victim in ["source", "target", "metadata"] {
        let placement = admin.queue_placement("dev", "big").await?;
        let to_shard = next_shard(placement.shard_id);
        let source_leader = cluster.wait_for_leader(&STORAGE, placement.shard_id).await?;
        let node = match victim {
            "source" => source_leader.clone(),
            "target" => cluster.wait_for_leader(&STORAGE, to_shard).await?,
            _ => cluster.wait_for_leader(&METADATA, strata_metadata::server::METADATA_GROUP).await?,
        };
        // Killed once the move copies bodies (source), or once the queue is fenced.
        let step = if victim == "source" { "queue move: copying bodies" } else { "queue move: fenced" };
        let before = logged(&cluster, &source_leader, step);
        let started = admin.move_queue("dev", "big", &model::admin::MoveQueue { to_shard }).await?;
        let deadline = Instant::now() + FINISHED_WITHIN;
        while logged(&cluster, &source_leader, step) == before {
            anyhow::ensure!(Instant::now() < deadline, "{source_leader} never logged '{step}'");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cluster.kill9(&node)?;
        let ended = ended_move(&admin, started.move_id).await;
        cluster.start(&node)?;
        let ended = ended?;
        println!("{victim} leader {node} killed mid-move: {} {}", ended.phase, ended.reason);
        outcomes.push(ended.phase);
    }
    anyhow::ensure!(outcomes.iter().any(|p| p == "completed"), "no move completed: {outcomes:?}");

    // Dead letters and a move task between shards led by different nodes.
    api.create_queue(&model::CreateQueue::named("dlq")).await?;
    let dead_letter = Some(Some(model::DeadLetter { queue: "dlq".into(), max_receive_count: 1 }));
    let attributes = model::QueueAttributesChange { dead_letter, ..Default::default() };
    api.create_queue(&model::CreateQueue { attributes, ..model::CreateQueue::named("src") }).await?;
    place_on(&admin, "dlq", 1).await?;
    place_on(&admin, "src", 2).await?;
    let sent: Vec<String> = (0..10).map(|i| format!("dead {i}")).collect();
    let messages = sent.iter().map(|b| model::NewMessage::new(b.clone())).collect();
    api.send("src", &model::SendMessages { messages }, None).await?;
    receive_each_once(&api, "src", 10).await?;
    let mut arrived = drain(&api, "dlq", 10).await?;
    arrived.sort();
    assert_eq!(arrived, sent, "the dead letters crossed nodes once each");
    let messages = sent.iter().map(|b| model::NewMessage::new(format!("{b} again"))).collect();
    api.send("dlq", &model::SendMessages { messages }, None).await?;
    api.start_move_task("dlq", &model::StartMoveTask::default()).await?;
    assert_eq!(drain(&api, "src", 10).await?.len(), 10, "the move task crossed nodes");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    pauses.sort_unstable();
    println!(
        "{report}\nmoves between nodes: paused p50 {} ms, max {} ms",
        quantile(&pauses, 0.5),
        quantile(&pauses, 1.0)
    );
    assert!(report.is_safe(), "{report}");

    let mut bodies = BTreeSet::new();
    let deadline = Instant::now() + FINISHED_WITHIN;
    while bodies.len() < 240 && Instant::now() < deadline {
        let request = model::Receive { max_messages: Some(10), wait_seconds: Some(1), ..Default::default() };
        if let Ok(got) = api.receive("big", &request).await {
            bodies.extend(got.messages.into_iter().map(|m| m.body));
        }
    }
    let expected: BTreeSet<String> = (0..240).map(body).collect();
    assert!(bodies == expected, "{} of 240 messages came back whole", bodies.intersection(&expected).count());
    Ok(())
}

/// Waits until the cluster writes the newest format generation.
async fn newest_formats(env: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + FINISHED_WITHIN;
    while cluster_cli(env, &["nodes"]).1["format_generation"] != NEWEST_GENERATION {
        anyhow::ensure!(Instant::now() < deadline, "the cluster never wrote generation {NEWEST_GENERATION}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `strata cluster ARGS` against the cluster's admin API: (succeeded, stdout as JSON, stderr).
fn cluster_cli(env: &BTreeMap<String, String>, args: &[&str]) -> (bool, serde_json::Value, String) {
    let mut command = std::process::Command::new(strata_binary());
    command.arg("cluster").args(args);
    for key in ["STRATA_ADMIN_ENDPOINT", "STRATA_ADMIN_TOKEN"] {
        command.env(key, &env[key]);
    }
    let output = command.output().expect("run strata cluster");
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.success(), json, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_replica_asked_for_and_the_writer_follows_under_sends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = LocalCluster::up(&dir.path().join("cluster"), LocalCluster::port_base(3))?;
    let env = cluster.credentials()?;
    let api = strata_tests::Api::new(&env["STRATA_ENDPOINT"], &env["STRATA_TOKEN"]);
    api.create_queue(&model::CreateQueue::named("orders")).await?;
    let shard_id = cluster.metadata_client()?.get_queue("dev", "orders").await?.shard_id;
    let leader = cluster.wait_for_leader(&STORAGE, shard_id).await?;
    let to = STORAGE.iter().find(|n| **n != leader).copied().unwrap_or_default();

    // Sends go on throughout, through the proxy.
    let sending = tokio::spawn({
        let api = api.clone();
        async move {
            let mut acknowledged = Vec::new();
            for i in 0..300 {
                let body = format!("m{i:03}");
                let messages = vec![model::NewMessage::new(&body)];
                if api.send("orders", &model::SendMessages { messages }, None).await.is_ok() {
                    acknowledged.push(body);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acknowledged
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shard = shard_id.to_string();
    // The writer is claimed as soon as a replica leads, without waiting for an upload.
    let deadline = Instant::now() + FINISHED_WITHIN;
    let before = loop {
        let (_, record, _) = cluster_cli(&env, &["shard", &shard]);
        if record["writer"] == leader {
            break record;
        }
        assert!(Instant::now() < deadline, "the shard's record names {} while {leader} leads", record["writer"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (ok, moved, stderr) = cluster_cli(&env, &["transfer-leader", &shard, "--to", to]);
    assert!(ok, "{stderr}");
    assert_eq!(moved["leader_node"], to, "{moved}");
    assert_eq!(cluster.leader_of(&STORAGE, shard_id).await.as_deref(), Some(to));
    let deadline = Instant::now() + FINISHED_WITHIN;
    loop {
        let (_, record, _) = cluster_cli(&env, &["shard", &shard]);
        if record["writer"] == to {
            let epochs = (before["writer_epoch"].as_u64(), record["writer_epoch"].as_u64());
            assert!(matches!(epochs, (Some(old), Some(new)) if new > old), "writer epochs {epochs:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the shard's record still names {}", record["writer"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Refused with a reason: a node without a replica; a replica that does not answer.
    let (ok, _, stderr) = cluster_cli(&env, &["transfer-leader", &shard, "--to", "storage-9"]);
    assert!(!ok && stderr.contains("holds no replica"), "{stderr}");
    let paused = STORAGE.iter().find(|n| **n != to).copied().unwrap_or_default();
    cluster.pause(paused)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, _, stderr) = cluster_cli(&env, &["transfer-leader", &shard, "--to", paused]);
    cluster.resume(paused)?;
    assert!(!ok && stderr.contains("has not answered"), "{stderr}");
    assert_eq!(cluster.leader_of(&STORAGE, shard_id).await.as_deref(), Some(to), "leadership stayed");

    // A shard added at runtime (once the cluster writes the newest formats): a replica on each
    // node, a leader, and queues of its own.
    newest_formats(&env).await?;
    let (ok, added, stderr) = cluster_cli(&env, &["add-shard"]);
    assert!(ok, "{stderr}");
    assert_eq!(added["replicas"].as_array().map(Vec::len), Some(3), "{added}");
    let added_shard = added["shard_id"].as_u64().unwrap_or_default();
    let metadata = cluster.metadata_client()?;
    claimed_epoch(&metadata, added_shard, 0).await?;
    let mut on_added = None;
    for i in 0..80 {
        let name = format!("q{i:02}");
        api.create_queue(&model::CreateQueue::named(&name)).await?;
        if metadata.get_queue("dev", &name).await?.shard_id == added_shard {
            on_added = Some(name);
            break;
        }
    }
    let name = on_added.ok_or_else(|| anyhow::anyhow!("none of 80 new queues went to the added shard"))?;
    api.send(&name, &model::SendMessages { messages: vec![model::NewMessage::new("added")] }, None).await?;
    let got = api.receive(&name, &model::Receive { max_messages: Some(10), ..Default::default() }).await?;
    assert_eq!(got.messages.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["added"]);

    // A fourth storage node joins, and the added shard's replica on storage-1 moves to it
    // (the README's example), its queue still served.
    cluster.add_storage("storage-4")?;
    live_nodes(&env, 4).await?;
    let shard = added_shard.to_string();
    let (ok, _, stderr) = cluster_cli(&env, &["move-replica", &shard, "--from", "storage-1", "--to", "storage-4"]);
    assert!(ok, "{stderr}");
    let deadline = Instant::now() + FINISHED_WITHIN;
    loop {
        let (_, record, _) = cluster_cli(&env, &["shard", &shard]);
        let replicas: Vec<&str> =
            record["replicas"].as_array().into_iter().flatten().filter_map(|r| r["node_id"].as_str()).collect();
        if replicas.contains(&"storage-4") && record["leaving"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never finished moving: {record}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    api.send(&name, &model::SendMessages { messages: vec![model::NewMessage::new("moved")] }, None).await?;
    let got = api.receive(&name, &model::Receive { max_messages: Some(10), ..Default::default() }).await?;
    assert_eq!(got.messages.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["moved"]);

    // Every acknowledged send is there, once.
    let mut acknowledged = sending.await?;
    assert!(acknowledged.len() >= 250, "only {} of 300 sends acknowledged", acknowledged.len());
    let mut received = Vec::new();
    let deadline = Instant::now() + FINISHED_WITHIN;
    while received.len() < acknowledged.len() && Instant::now() < deadline {
        let receive =
            model::Receive { max_messages: Some(10), visibility_timeout_seconds: Some(600), ..Default::default() };
        let got = api.receive("orders", &receive).await?;
        received.extend(got.messages.into_iter().map(|m| m.body));
    }
    received.sort();
    acknowledged.sort();
    assert_eq!(received, acknowledged, "every acknowledged send, exactly once");
    Ok(())
}

/// Waits until `live` storage nodes keep their lease.
async fn live_nodes(env: &BTreeMap<String, String>, live: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + FINISHED_WITHIN;
    loop {
        let (_, nodes, _) = cluster_cli(env, &["nodes"]);
        let now = nodes["storage_nodes"].as_array().into_iter().flatten().filter(|n| n["live"] == true).count();
        if now == live {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{now} live storage nodes, not {live}: {nodes}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every shard's replicas, by shard id (none still leaving).
async fn replicas_of_shards(cluster: &LocalCluster) -> anyhow::Result<BTreeMap<u64, Vec<String>>> {
    let metadata = cluster.metadata_client()?;
    let mut shards = BTreeMap::new();
    for shard_id in 1.. {
        let Ok(shard) = metadata.get_shard(shard_id).await else { break };
        anyhow::ensure!(shard.leaving.is_empty(), "shard {shard_id} still moves a replica: {shard:?}");
        shards.insert(shard_id, shard.replicas.into_iter().map(|r| r.node_id).collect());
    }
    Ok(shards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_drain_and_leave_and_new_ones_fill_under_load_and_a_dead_node_is_replaced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = LocalCluster::up(&dir.path().join("cluster"), LocalCluster::port_base(2))?;
    let env = cluster.credentials()?;
    newest_formats(&env).await?;
    let load = Load::start(&cluster, &["dev", "acme"], &["draining", "draining.fifo"]).await?;

    // A fourth node joins; storage-1 drains: its leaderships, then its replicas, go (to the
    // new node, the only one without them), and it leaves the cluster.
    cluster.add_storage("storage-4")?;
    live_nodes(&env, 4).await?;
    let started = Instant::now();
    let (ok, drained, stderr) = cluster_cli(&env, &["drain-node", "storage-1"]);
    assert!(ok, "{stderr}");
    assert_eq!(drained["drained"], true, "{drained}");
    println!("storage-1 drained in {} ms:\n{stderr}", started.elapsed().as_millis());
    let (_, nodes, _) = cluster_cli(&env, &["nodes"]);
    let listed: Vec<&str> =
        nodes["storage_nodes"].as_array().into_iter().flatten().filter_map(|n| n["node_id"].as_str()).collect();
    assert!(!listed.contains(&"storage-1"), "{nodes}");
    let shards = replicas_of_shards(&cluster).await?;
    for (shard_id, replicas) in &shards {
        assert_eq!(replicas.len(), 3, "shard {shard_id}: {replicas:?}");
        assert!(!replicas.contains(&"storage-1".to_owned()) && replicas.contains(&"storage-4".to_owned()));
    }
    cluster.stop("storage-1")?;

    // storage-2 dies; a fifth node joins, and draining the dead node replaces it from the
    // snapshot, the bucket and the live replicas.
    cluster.kill9("storage-2")?;
    cluster.add_storage("storage-5")?;
    let started = Instant::now();
    let (ok, drained, stderr) = cluster_cli(&env, &["drain-node", "storage-2"]);
    assert!(ok, "{stderr}");
    assert_eq!(drained["drained"], true, "{drained}");
    println!("dead storage-2 replaced in {} ms:\n{stderr}", started.elapsed().as_millis());
    for (shard_id, replicas) in replicas_of_shards(&cluster).await? {
        assert_eq!(replicas.len(), 3, "shard {shard_id}: {replicas:?}");
        assert!(replicas.contains(&"storage-5".to_owned()) && !replicas.contains(&"storage-2".to_owned()));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    println!("{report}");
    assert!(report.is_safe(), "{report}");
    assert!(report.sends_acknowledged > 200, "{report}");
    Ok(())
}

/// How many times `text` is in the dev process's log.
fn dev_logged(dev: &DevProcess, text: &str) -> anyhow::Result<usize> {
    Ok(dev.log()?.matches(text).count())
}

/// Waits until the dev process logged `text` more than `before` times.
async fn dev_logs_again(dev: &DevProcess, text: &str, before: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + FINISHED_WITHIN;
    while dev_logged(dev, text)? <= before {
        anyhow::ensure!(Instant::now() < deadline, "the dev process never logged '{text}' again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_shard_is_woken_by_a_send_a_receive_and_a_long_poll() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &["--hibernate-after-ms", "500"])?;
    dev.wait_for_newest_formats().await?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("sleepy")).await?;
    let (mut wake_ms, mut sent, mut received) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    for cycle in 0..15 {
        let before = dev_logged(&dev, "shard hibernates")?;
        dev_logs_again(&dev, "shard hibernates", before).await?;
        let woken = dev_logged(&dev, "shard wakes")?;
        let started = Instant::now();
        match cycle % 3 {
            // A send wakes it and is stored.
            0 => {
                let body = format!("sent to a sleeping shard {cycle}");
                api.send("sleepy", &model::SendMessages { messages: vec![model::NewMessage::new(&body)] }, None)
                    .await?;
                wake_ms.push(started.elapsed().as_millis() as u64);
                sent.insert(body);
            }
            // A receive wakes it and gets what is there.
            1 => {
                let request = model::Receive { max_messages: Some(10), ..Default::default() };
                let got = api.receive("sleepy", &request).await?;
                wake_ms.push(started.elapsed().as_millis() as u64);
                for m in got.messages {
                    let receipt_handles = vec![m.receipt_handle.clone()];
                    api.delete_messages("sleepy", &model::DeleteMessages { receipt_handles }).await?;
                    received.insert(m.body);
                }
            }
            // A long poll wakes it, and a send during the poll ends the poll.
            _ => {
                let (poller, body) = (api.clone(), format!("sent during a long poll {cycle}"));
                let poll = tokio::spawn(async move {
                    let request =
                        model::Receive { max_messages: Some(1), wait_seconds: Some(10), ..Default::default() };
                    poller.receive("sleepy", &request).await
                });
                dev_logs_again(&dev, "shard wakes", woken).await?;
                wake_ms.push(started.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(200)).await;
                api.send("sleepy", &model::SendMessages { messages: vec![model::NewMessage::new(&body)] }, None)
                    .await?;
                sent.insert(body);
                let got = poll.await??;
                anyhow::ensure!(!got.messages.is_empty(), "the long poll ended empty");
                for m in got.messages {
                    let receipt_handles = vec![m.receipt_handle.clone()];
                    api.delete_messages("sleepy", &model::DeleteMessages { receipt_handles }).await?;
                    received.insert(m.body);
                }
            }
        }
        assert!(dev_logged(&dev, "shard wakes")? > woken, "cycle {cycle}: the call did not wake the shard");
    }
    // Whatever is left arrives, once.
    received.extend(drain(&api, "sleepy", sent.len() - received.len()).await?);
    assert_eq!(received, sent, "every message sent to a sleeping shard arrived");
    wake_ms.sort_unstable();
    println!(
        "{} wakes by a call: p50 {} ms, p99 {} ms, max {} ms",
        wake_ms.len(),
        quantile(&wake_ms, 0.5),
        quantile(&wake_ms, 0.99),
        quantile(&wake_ms, 1.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_of_an_idle_shard_sleeps_and_a_dead_leader_is_replaced_while_it_sleeps() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = LocalCluster::up_with_env(
        &dir.path().join("cluster"),
        LocalCluster::port_base(1),
        &[("STRATA_HIBERNATE_AFTER_S", "2")],
    )?;
    let env = cluster.credentials()?;
    newest_formats(&env).await?;
    let api = strata_tests::Api::new(&env["STRATA_ENDPOINT"], &env["STRATA_TOKEN"]);
    api.create_queue(&model::CreateQueue::named("sleepy")).await?;
    let shard_id = cluster.metadata_client()?.get_queue("dev", "sleepy").await?.shard_id;
    let text = format!("shard={shard_id}");
    let hibernated = |node: &str| {
        let log = std::fs::read_to_string(cluster.dir.join(format!("{node}.log"))).unwrap_or_default();
        log.lines().filter(|l| l.contains("shard hibernates") && l.contains(&text)).count()
    };
    // Every replica of the idle shard sleeps.
    let deadline = Instant::now() + FINISHED_WITHIN;
    while STORAGE.iter().any(|node| hibernated(node) == 0) {
        anyhow::ensure!(Instant::now() < deadline, "not every replica of shard {shard_id} hibernated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A send wakes it, and is stored.
    api.send("sleepy", &model::SendMessages { messages: vec![model::NewMessage::new("first")] }, None).await?;
    // It sleeps again; its leader's node dies meanwhile: its followers wake (the dead node's
    // lease runs out), elect a leader, and the next send is served there.
    let before: Vec<usize> = STORAGE.iter().map(|node| hibernated(node)).collect();
    let deadline = Instant::now() + FINISHED_WITHIN;
    while STORAGE.iter().zip(&before).any(|(node, &n)| hibernated(node) == n) {
        anyhow::ensure!(Instant::now() < deadline, "shard {shard_id} never hibernated again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = cluster.wait_for_leader(&STORAGE, shard_id).await?;
    cluster.kill9(&leader)?;
    let started = Instant::now();
    // Before any call: the followers wake once the dead node's lease runs out, and elect.
    let survivors: Vec<&str> = STORAGE.iter().copied().filter(|node| *node != leader).collect();
    let lease_lost = |node: &str| {
        let log = std::fs::read_to_string(cluster.dir.join(format!("{node}.log"))).unwrap_or_default();
        log.lines().any(|l| l.contains("shard wakes") && l.contains(&text) && l.contains("lost its lease"))
    };
    let deadline = Instant::now() + FINISHED_WITHIN;
    while !survivors.iter().any(|node| lease_lost(node)) {
        anyhow::ensure!(Instant::now() < deadline, "no follower woke when its leader's node lost its lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elected = cluster.wait_for_leader(&survivors, shard_id).await?;
    println!("a sleeping shard whose leader died elected {elected} after {} ms", started.elapsed().as_millis());
    let deadline = Instant::now() + FINISHED_WITHIN;
    loop {
        let second = model::SendMessages { messages: vec![model::NewMessage::new("second")] };
        if api.send("sleepy", &second, None).await.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the new leader did not serve the sleeping shard");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut bodies = drain(&api, "sleepy", 2).await?;
    bodies.sort();
    assert_eq!(bodies, ["first", "second"]);
    cluster.start(&leader)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_queues_go_to_the_less_loaded_shard() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &["--shards", "2"])?;
    dev.wait_for_newest_formats().await?;
    let (api, admin) = (dev.api(), dev.admin_api()?);
    // A steady load on a queue of shard 1; shard 2 idle. The shards' leader reports their loads
    // with its heartbeats.
    api.create_queue(&model::CreateQueue::named("busy")).await?;
    place_on(&admin, "busy", 1).await?;
    let load = Load::start_with(vec![("dev".to_owned(), vec![dev.api()])], &["busy"]).await?;
    tokio::time::sleep(Duration::from_millis(3 * strata_common::limits::HEARTBEAT_INTERVAL_MS)).await;
    let mut on_shard = BTreeMap::new();
    for i in 0..30 {
        let name = format!("new-{i:02}");
        api.create_queue(&model::CreateQueue::named(&name)).await?;
        *on_shard.entry(admin.queue_placement("dev", &name).await?.shard_id).or_insert(0) += 1;
    }
    let report = load.finish().await;
    assert!(report.is_safe(), "{report}");
    println!("new queues by shard under a load on shard 1: {on_shard:?}");
    // Each goes to the less loaded of its two shards: all but those whose two choices are one.
    let (busy, idle) = (on_shard.get(&1).copied().unwrap_or(0), on_shard.get(&2).copied().unwrap_or(0));
    assert!(idle > 2 * busy, "{on_shard:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_splits_and_half_its_queues_move_online_to_the_new_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    dev.wait_for_newest_formats().await?;
    let api = dev.api();
    let names: Vec<String> = (0..6).map(|i| format!("part-{i}")).collect();
    for name in &names {
        api.create_queue(&model::CreateQueue::named(name)).await?;
        let messages = (0..5).map(|j| model::NewMessage::new(format!("{name} {j}"))).collect();
        api.send(name, &model::SendMessages { messages }, None).await?;
    }
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    // Refused with the reason: more queues than the shard can give.
    let (ok, _, stderr) = cluster_cli(&env, &["split-shard", "1", "--queues", "100000"]);
    assert!(!ok && stderr.contains("the shard holds"), "{stderr}");
    let held: usize = stderr
        .split("the shard holds ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no queue count in: {stderr}"))?;
    assert!(held >= names.len(), "{stderr}");
    let (ok, split, stderr) = cluster_cli(&env, &["split-shard", "1"]);
    assert!(ok, "{stderr}");
    let new_shard = split["shard"]["shard_id"].as_u64().unwrap_or_default();
    assert_eq!(new_shard, 2, "{split}");
    let moves = split["moves"].as_array().cloned().unwrap_or_default();
    assert_eq!(moves.len(), held / 2, "{split}");
    assert!(moves.iter().all(|m| m["phase"] == "completed" && m["to_shard"] == 2), "{split}");
    let admin = dev.admin_api()?;
    let mut shards = BTreeSet::new();
    for name in &names {
        shards.insert(admin.queue_placement("dev", name).await?.shard_id);
        // Every message is where its queue is now.
        let mut bodies = drain(&api, name, 5).await?;
        bodies.sort();
        assert_eq!(bodies, (0..5).map(|j| format!("{name} {j}")).collect::<Vec<_>>());
    }
    assert_eq!(shards, BTreeSet::from([1, 2]), "the queues are on both shards now");
    Ok(())
}
