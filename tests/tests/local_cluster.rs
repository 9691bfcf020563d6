//! `infra/local-cluster.sh up DIR` / `down DIR` from the built binary: Garage, three metadata
//! members, three storage nodes (three replicas per shard) and two proxies as separate processes
//! with their own config files. Through the written credentials: the native API on both proxies,
//! the SQS API with the AWS CLI, shard Raft messages heard from replicas only, a storage node
//! SIGKILLed without losing acknowledged sends, and a clean stop.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use strata_tests::cluster::LocalCluster;
use strata_tests::{Api, model, run_ok, strata_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_comes_up_serves_both_apis_survives_a_storage_kill_and_goes_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::up(&dir.path().join("cluster"), LocalCluster::port_base(0)).expect("up");
    let env = cluster.credentials().expect("credentials");
    for key in
        ["STRATA_ENDPOINT", "STRATA_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "STRATA_PROXY_ENDPOINTS"]
    {
        assert!(env.get(key).is_some_and(|v| !v.is_empty()), "{key} missing from cluster-credentials.env");
    }
    // A shard's Raft messages are heard from its replicas only, not from any storage node.
    let wrong = cluster.shard_raft_hears_only_replicas("storage-1", "storage-2").await.expect("probe shard Raft");
    assert!(wrong.is_empty(), "{wrong:#?}");
    let token = &env["STRATA_TOKEN"];
    let proxies: Vec<Api> = env["STRATA_PROXY_ENDPOINTS"].split(',').map(|e| Api::new(e, token)).collect();
    assert_eq!(proxies.len(), 2);
    proxies[0].create_queue(&model::CreateQueue::named("orders")).await.expect("create through proxy 1");

    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let body = format!("m{i:02}");
        let proxy = &proxies[i % 2];
        proxy.post_ok("/v1/queues/orders/messages", json!({ "messages": [{ "body": body }] })).await.expect("send");
        acknowledged.push(body);
    }

    // The SQS API with the real AWS CLI, with the written credentials.
    let mut aws = Command::new("aws");
    aws.args(["sqs", "list-queues"]).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    aws.env("HOME", dir.path());
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"] {
        aws.env(key, &env[key]);
    }
    let listed = run_ok(&mut aws).expect("aws sqs list-queues");
    assert!(listed.contains("/dev/orders"), "{listed}");

    // The operators' view through the CLI: three live storage nodes, each shard on all three; a
    // move onto a node that already holds the replica is refused with a reason.
    let cli = |args: &[&str]| {
        let mut command = Command::new(strata_binary());
        command.args(args);
        for key in ["STRATA_ADMIN_ENDPOINT", "STRATA_ADMIN_TOKEN"] {
            command.env(key, &env[key]);
        }
        command.output().expect("run strata")
    };
    let nodes = cli(&["cluster", "nodes"]);
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).expect("nodes JSON");
    let live: Vec<&str> = nodes["storage_nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["live"] == true)
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(live, ["storage-1", "storage-2", "storage-3"], "{nodes}");
    let shard = cli(&["cluster", "shard", "1"]);
    let shard: serde_json::Value = serde_json::from_slice(&shard.stdout).expect("shard JSON");
    assert_eq!(shard["replicas"].as_array().map(Vec::len), Some(3), "{shard}");
    let members = cli(&["cluster", "metadata-members"]);
    let members: serde_json::Value = serde_json::from_slice(&members.stdout).expect("members JSON");
    let ids: Vec<u64> =
        members["members"].as_array().into_iter().flatten().filter_map(|m| m["node_id"].as_u64()).collect();
    assert_eq!(ids, [1, 2, 3], "{members}");
    assert!(ids.contains(&members["leader_id"].as_u64().unwrap_or(0)), "{members}");
    let refused = cli(&["cluster", "move-replica", "1", "--from", "storage-1", "--to", "storage-2"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already holds a replica"), "{stderr}");

    // SIGKILL one storage node (whichever leads or follows): sends keep being acknowledged.
    cluster.kill9("storage-1").expect("kill -9 a storage node");
    for i in 20..40 {
        let body = format!("m{i:02}");
        let proxy = &proxies[i % 2];
        proxy
            .post_ok("/v1/queues/orders/messages", json!({ "messages": [{ "body": body }] }))
            .await
            .expect("send after the kill");
        acknowledged.push(body);
    }
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < acknowledged.len() && tokio::time::Instant::now() < deadline {
        let got = proxies[1]
            .post_ok(
                "/v1/queues/orders/receive",
                json!({ "max_messages": 10, "wait_seconds": 1, "visibility_timeout_seconds": 600 }),
            )
            .await
            .expect("receive");
        received.extend(
            got["messages"].as_array().into_iter().flatten().map(|m| m["body"].as_str().unwrap_or_default().to_owned()),
        );
    }
    received.sort();
    assert_eq!(received, acknowledged, "every acknowledged send, exactly once");

    cluster.down().expect("local-cluster.sh down");
    let left: Vec<_> = std::fs::read_dir(&cluster.dir)
        .expect("cluster dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .collect();
    assert!(left.is_empty(), "pid files left after down: {left:?}");
    assert!(proxies[0].get("/healthz").await.is_err(), "a proxy still answers after down");
}
