//! Fault tests on a local cluster (`infra/local-cluster.sh`: Garage, three metadata members,
//! three storage nodes holding three replicas of every shard, two proxies; all real processes).
//!
//! Under a steady mixed load (three tenants with two queues each; per queue one client sending
//! unique message bodies and one receiving and deleting, spread over both proxies) the test
//! repeatedly:
//!
//! * SIGKILLs and restarts the storage node leading a shard, then a follower of it;
//! * SIGKILLs and restarts the metadata leader, then a proxy;
//! * SIGSTOPs a shard leader for three election timeouts and resumes it;
//! * SIGKILLs two of the three storage nodes: no send may be acknowledged until one is back;
//!   then restarts both.
//!
//! Before the load, every internal port (metadata and storage) is checked to answer neither
//! plaintext gRPC nor a certificate of another CA: the whole run is on mutual TLS.
//!
//! Then it heals everything, stops sending, drains every queue and has the history checker
//! ([`strata_tests::history`]) judge the run: nothing acknowledged lost, nothing invented,
//! nothing across tenants or queues, nothing redelivered after a delete; duplicates and the
//! recovery times are printed. `STRATA_FAULT_ROUNDS=N` runs the fault sequence N times (1 in
//! CI).

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::time::Duration;

use strata_tests::cluster::{LocalCluster, METADATA, PROXIES, STORAGE};
use strata_tests::history::{History, Stream};
use strata_tests::load::Load;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const QUEUES: [&str; 2] = ["orders", "events"];
/// How long the load runs undisturbed between faults, and a killed process stays down.
const SETTLE: Duration = Duration::from_secs(3);
const DOWN: Duration = Duration::from_secs(2);
/// Longer than a shard's election timeout (0.5-1 s) several times over.
const PAUSED: Duration = Duration::from_secs(3);

/// The storage node leading `shard` (waiting out an election), and the others holding it.
async fn shard_roles(cluster: &LocalCluster, shard: u64) -> (String, Vec<String>) {
    let leader = cluster.wait_for_leader(&STORAGE, shard).await.expect("a shard leader");
    let followers = STORAGE.iter().filter(|n| **n != leader).map(|n| n.to_string()).collect();
    (leader, followers)
}

/// SIGKILL `name`, keep it down a while, start it again.
async fn crash_and_restart(cluster: &LocalCluster, history: &History, name: &str, what: &str) {
    history.fault(&format!("SIGKILL of {what} ({name})"));
    cluster.kill9(name).expect("kill");
    tokio::time::sleep(DOWN).await;
    cluster.start(name).expect("restart");
    tokio::time::sleep(SETTLE).await;
}

async fn run_faults(cluster: &LocalCluster, history: &History, shards: &[u64], streams: &[Stream], round: usize) {
    let shard = shards[round % shards.len()];
    let (leader, _) = shard_roles(cluster, shard).await;
    crash_and_restart(cluster, history, &leader, &format!("shard {shard}'s leader")).await;

    let (_, followers) = shard_roles(cluster, shard).await;
    crash_and_restart(cluster, history, &followers[round % 2], &format!("a follower of shard {shard}")).await;

    let leader = cluster.wait_for_leader(&METADATA, strata_metadata::server::METADATA_GROUP).await.expect("a leader");
    crash_and_restart(cluster, history, &leader, "the metadata leader").await;

    crash_and_restart(cluster, history, PROXIES[round % 2], "a proxy").await;

    let (leader, _) = shard_roles(cluster, shard).await;
    history.fault(&format!("SIGSTOP of shard {shard}'s leader ({leader})"));
    cluster.pause(&leader).expect("pause");
    tokio::time::sleep(PAUSED).await;
    cluster.resume(&leader).expect("resume");
    tokio::time::sleep(SETTLE).await;
    // The resumed leader has heard of its successor's term: one leader per shard.
    for &s in shards {
        let mut leaders = Vec::new();
        for name in STORAGE {
            let groups = cluster.raft_status(name).await.expect("status");
            if groups.iter().any(|g| g.group == s && g.role == "leader") {
                leaders.push(name);
            }
        }
        assert!(leaders.len() <= 1, "shard {s} has two leaders after a pause: {leaders:?}");
    }

    // Two of three replicas of every shard down: nothing may be acknowledged until one is back.
    let (leader, followers) = shard_roles(cluster, shard).await;
    let down = [leader, followers[round % 2].clone()];
    for name in &down {
        cluster.kill9(name).expect("kill");
    }
    let killed_ms = history.now_ms();
    tokio::time::sleep(SETTLE).await;
    let healed_ms = history.now_ms();
    let unsafe_acks = history.acknowledged_sends_between(streams, killed_ms, healed_ms);
    assert!(unsafe_acks.is_empty(), "acknowledged with two of three replicas down: {unsafe_acks:?}");
    history.fault(&format!("restart of one of two killed storage nodes ({})", down[0]));
    cluster.start(&down[0]).expect("restart");
    tokio::time::sleep(SETTLE).await;
    cluster.start(&down[1]).expect("restart");
    tokio::time::sleep(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_through_crashes_pauses_and_lost_majorities() {
    let rounds: usize = std::env::var("STRATA_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::up(&dir.path().join("faults-cluster"), LocalCluster::port_base(1)).expect("up");
    let metadata = cluster.metadata_client().expect("metadata client");
    let wrong = cluster.refuses_strangers(&dir.path().join("other-ca")).await.expect("probe the internal ports");
    assert!(wrong.is_empty(), "{wrong:#?}");
    let load = Load::start(&cluster, &TENANTS, &QUEUES).await.expect("start the load");
    let mut shards = Vec::new();
    for stream in &load.streams {
        let info = metadata.get_queue(&stream.tenant, &stream.queue).await.expect("queue placement");
        if !shards.contains(&info.shard_id) {
            shards.push(info.shard_id);
        }
    }
    shards.sort_unstable();

    tokio::time::sleep(SETTLE).await;
    for round in 0..rounds {
        run_faults(&cluster, &load.history, &shards, &load.streams, round).await;
    }

    // Healed: stop sending, drain until every acknowledged send has been delivered.
    let report = load.finish().await;
    println!("fault test ({rounds} round(s), shards {shards:?}):\n{report}");
    assert!(report.is_safe(), "{report}");
    assert!(report.sends_acknowledged > 0);
    for (fault, recovery) in &report.recoveries {
        assert!(recovery.is_some(), "no acknowledged send on some queue after {fault}:\n{report}");
    }
}
