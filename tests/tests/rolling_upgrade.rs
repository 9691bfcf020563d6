//! A rolling upgrade on a local cluster (`infra/local-cluster.sh`: Garage, three metadata members,
//! three storage nodes holding three replicas of every shard, two proxies; all real processes).
//!
//! One metadata member and one storage node start capped at format generation 0: they read only
//! what releases from before format versions wrote, as processes of that release would (a
//! version they do not know is an error for them, see `docs/formats.md`). Under a steady mixed
//! load the test checks that the cluster keeps writing generation 0 while they are there and
//! that they keep up with every group. Then it upgrades them one process at a time (stop, start
//! without the cap), checks that the cluster moves to generation 1 by itself, goes on under load,
//! and has the history checker judge the whole run: nothing acknowledged lost, nothing invented,
//! nothing redelivered after a delete.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::time::Duration;

use strata_common::format::{LEGACY_GENERATION, NEWEST_GENERATION};
use strata_metadata_client::MetadataClient;
use strata_tests::cluster::{LocalCluster, METADATA, STORAGE};
use strata_tests::load::Load;

const TENANTS: [&str; 2] = ["acme", "globex"];
const QUEUES: [&str; 2] = ["orders", "events"];
/// The processes of the old release.
const OLD: [&str; 2] = ["metadata-3", "storage-3"];
/// How long the load runs at each step: several metadata checks (2 s) and snapshots.
const RUN: Duration = Duration::from_secs(8);
const RAISE_TIMEOUT: Duration = Duration::from_secs(60);
/// How far a healthy follower's applied index may trail the leader's when both are read.
const APPLIED_LAG_MAX: u64 = 200;

/// The generation the cluster writes, and what each storage node says it reads.
async fn generations(metadata: &MetadataClient) -> (u32, Vec<(String, u32)>) {
    let answer = metadata.storage_nodes().await.expect("list storage nodes");
    let nodes = answer.nodes.into_iter().map(|n| (n.node_id, n.format_generation_max)).collect();
    (answer.format_generation, nodes)
}

/// Every group `name` serves is running and has applied close to what its leader applied.
async fn keeps_up(cluster: &LocalCluster, name: &str, peers: &[&str]) {
    let groups = cluster.raft_status(name).await.unwrap_or_else(|e| panic!("{name} does not answer: {e}"));
    assert!(!groups.is_empty(), "{name} serves no group");
    for group in groups {
        assert_ne!(group.role, "shutdown", "{name} stopped group {}", group.group);
        let leader = cluster.wait_for_leader(peers, group.group).await.expect("a leader");
        let leading = cluster.raft_status(&leader).await.expect("leader status");
        let led = leading.iter().find(|g| g.group == group.group).expect("the leader's group");
        // Read the follower again after the leader: its index only grows.
        let own = cluster.raft_status(name).await.expect("status");
        let own = own.iter().find(|g| g.group == group.group).expect("the group");
        assert!(
            own.last_applied_index + APPLIED_LAG_MAX >= led.last_applied_index,
            "{name} lags in group {}: applied {} of the leader's {}",
            group.group,
            own.last_applied_index,
            led.last_applied_index
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_under_load_never_writes_what_an_old_process_cannot_read_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::up_with_format_cap(
        &dir.path().join("upgrade-cluster"),
        LocalCluster::port_base(2),
        &OLD,
        LEGACY_GENERATION,
    )
    .expect("up");
    let metadata = cluster.metadata_client().expect("metadata client");
    let load = Load::start(&cluster, &TENANTS, &QUEUES).await.expect("start the load");
    let history = &load.history;

    // Half upgraded: the old processes hold the cluster at generation 0 and keep up.
    tokio::time::sleep(RUN).await;
    let (generation, nodes) = generations(&metadata).await;
    assert_eq!(generation, LEGACY_GENERATION, "raised with an old process in the cluster: {nodes:?}");
    assert!(nodes.contains(&("storage-3".to_string(), LEGACY_GENERATION)), "{nodes:?}");
    keeps_up(&cluster, "storage-3", &STORAGE).await;
    keeps_up(&cluster, "metadata-3", &METADATA).await;

    // Upgrade one process at a time: stop it, start the new release (no cap) on its data.
    for name in OLD {
        history.fault(&format!("upgrade of {name}"));
        let config = cluster.dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&config).expect("config");
        let upgraded: String =
            text.lines().filter(|l| !l.starts_with("format_generation_max")).map(|l| l.to_owned() + "\n").collect();
        assert_ne!(text, upgraded, "{name} was capped");
        cluster.stop(name).expect("stop");
        std::fs::write(&config, upgraded).expect("write config");
        cluster.start(name).expect("start");
        tokio::time::sleep(RUN).await;
        if name != OLD[OLD.len() - 1] {
            assert_eq!(generations(&metadata).await.0, LEGACY_GENERATION, "raised before every process was upgraded");
        }
    }

    // All upgraded: the cluster moves to the new generation by itself, and goes on in it.
    let deadline = tokio::time::Instant::now() + RAISE_TIMEOUT;
    let raised_ms = loop {
        let (generation, nodes) = generations(&metadata).await;
        if generation == NEWEST_GENERATION {
            break history.now_ms();
        }
        assert!(tokio::time::Instant::now() < deadline, "never raised: generation {generation}, nodes {nodes:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    history.fault("format generation raised");
    tokio::time::sleep(RUN).await;
    for name in STORAGE {
        keeps_up(&cluster, name, &STORAGE).await;
    }
    for name in METADATA {
        keeps_up(&cluster, name, &METADATA).await;
    }
    let after_raise = history.acknowledged_sends_between(&load.streams, raised_ms, history.now_ms());
    assert!(!after_raise.is_empty(), "nothing was acknowledged in the new generation");

    let report = load.finish().await;
    println!("rolling upgrade:\n{report}");
    assert!(report.is_safe(), "{report}");
    assert!(report.sends_acknowledged > 0);
}
