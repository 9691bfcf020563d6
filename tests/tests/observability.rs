//! What operators watch, checked with the real thing: Debian's Prometheus scrapes `strata dev`
//! and every process of a local cluster with the scrape token, `promtool check metrics` accepts
//! every exposition, and queries over the scraped series count exactly the calls the test made.
//! A cluster's processes export traces to a real OTLP receiver.

#![allow(clippy::disallowed_methods)] // a test waits in real time

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use strata_tests::cluster::LocalCluster;
use strata_tests::otlp::OtlpReceiver;
use strata_tests::prometheus::{Prometheus, promtool_check_metrics, promtool_check_rules};
use strata_tests::{Api, DevProcess, model};

/// Every `strata_*` series name in `text` (a query, a rules file) is one Strata exports.
fn assert_names_exported(text: &str) {
    let exported = strata_telemetry::family_names();
    for name in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("strata_")) {
        let stem = ["_total", "_bucket"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(exported.iter().any(|e| e == name || e == stem), "{name} is not exported; exported: {exported:?}");
    }
}

/// Long enough for a first scrape of a process that just started (1 s interval).
const SCRAPED_WITHIN: Duration = Duration::from_secs(60);

async fn scrape(target: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("http://{target}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("scrape");
    (response.status().as_u16(), response.text().await.expect("scrape body"))
}

fn host_port(endpoint: &str) -> String {
    endpoint.trim_start_matches("http://").trim_end_matches('/').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_strata_dev_and_counts_the_sends_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&dir.path().join("dev"), &[]).expect("strata dev");
    let env: BTreeMap<String, String> = dev.credentials_env().expect("credentials").into_iter().collect();
    let token_file = PathBuf::from(&env["STRATA_METRICS_TOKEN_FILE"]);
    let token = std::fs::read_to_string(&token_file).expect("scrape token").trim().to_string();
    let target = host_port(&env["STRATA_ADMIN_ENDPOINT"]);

    // /metrics is answered to the scrape token only.
    assert_eq!(scrape(&target, None).await.0, 401);
    assert_eq!(scrape(&target, Some("not-the-token-at-all")).await.0, 401);
    assert_eq!(scrape(&target, Some(&dev.token)).await.0, 401, "a tenant's token is not the scrape token");

    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("watched")).await.expect("create");
    for i in 0..7 {
        api.post_ok("/v1/queues/watched/messages", json!({ "messages": [{ "body": format!("m{i}") }] }))
            .await
            .expect("native send");
    }
    let (status, url) = dev
        .sqs_call("GetQueueUrl", None, &json!({ "QueueName": "watched" }), &Default::default(), &[])
        .await
        .expect("GetQueueUrl");
    assert_eq!(status, 200, "{url}");
    let queue_url = url["QueueUrl"].as_str().expect("QueueUrl").to_string();
    for i in 0..3 {
        let body = json!({ "QueueUrl": queue_url, "MessageBody": format!("s{i}") });
        let (status, answer) = dev.sqs_call("SendMessage", None, &body, &Default::default(), &[]).await.expect("send");
        assert_eq!(status, 200, "{answer}");
    }

    let (status, body) = scrape(&target, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let complaints = promtool_check_metrics(&body).expect("promtool");
    assert!(complaints.is_empty(), "promtool check metrics: {complaints}");
    for family in [
        "strata_wal_fsync_duration_seconds_count",
        "strata_raft_commit_duration_seconds_count{group=\"shard\"}",
        "strata_raft_groups_led{group=\"metadata\"} 1",
        "strata_api_connections_open",
        "strata_process_open_fds",
    ] {
        assert!(body.contains(family), "{family} missing from the scrape:\n{body}");
    }
    assert!(!body.contains("watched"), "a queue's name leaked into the default scrape");
    assert!(!body.contains("tenant=\""), "a tenant's name in the default scrape");

    let prometheus = Prometheus::start(&dir.path().join("prometheus"), std::slice::from_ref(&target), &token_file)
        .expect("prometheus");
    let native = "sum(strata_api_requests_total{api=\"native\",action=\"SendMessage\",code=\"200\"})";
    assert_eq!(prometheus.wait_for(native, 7.0, SCRAPED_WITHIN).await.expect("query"), Some(7.0));
    let sqs = "sum(strata_api_requests_total{api=\"sqs\",action=\"SendMessage\",code=\"200\"})";
    assert_eq!(prometheus.wait_for(sqs, 3.0, SCRAPED_WITHIN).await.expect("query"), Some(3.0));
    assert_eq!(prometheus.scalar("up").await.expect("query"), Some(1.0));

    // The dashboard of infra/observability: every query is valid PromQL and names only
    // families Strata exports (on its roles' /metrics or the tenant-scoped endpoint).
    let dashboard =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/observability/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).expect("dashboard")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    for query in queries {
        prometheus.check_query(query).await.expect("valid PromQL");
        assert_names_exported(query);
    }
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/observability/alerts.yml");
    assert_names_exported(&std::fs::read_to_string(rules).expect("alert rules"));
    let log = dev.log().expect("the dev log");
    assert!(!log.contains('\x1b'), "colour codes in a log that is not a terminal:\n{log}");
    assert!(!log.contains("call answered"), "the access log is off unless asked for");
}

/// `STRATA_METRICS_TOP_TENANTS=N` adds the busiest tenants' calls and payload bytes to the scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busiest_tenants_are_scraped_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start_with_env(&dir.path().join("dev"), &[], &[("STRATA_METRICS_TOP_TENANTS", "1")])
        .expect("strata dev");
    let env: BTreeMap<String, String> = dev.credentials_env().expect("credentials").into_iter().collect();
    let token = std::fs::read_to_string(&env["STRATA_METRICS_TOKEN_FILE"]).expect("scrape token").trim().to_string();
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("hot")).await.expect("create");
    for _ in 0..4 {
        api.post_ok("/v1/queues/hot/messages", json!({ "messages": [{ "body": "12345" }] })).await.expect("send");
    }
    let other = Api::new(&dev.endpoint, &dev.token_for("colder").expect("token"));
    other.create_queue(&model::CreateQueue::named("cold")).await.expect("create");
    other.post_ok("/v1/queues/cold/messages", json!({ "messages": [{ "body": "1" }] })).await.expect("send");
    let (status, body) = scrape(&host_port(&env["STRATA_ADMIN_ENDPOINT"]), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let complaints = promtool_check_metrics(&body).expect("promtool");
    assert!(complaints.is_empty(), "promtool check metrics: {complaints}");
    // The dev tenant's queue creation and four sends; the other tenant is not in the top one.
    assert!(body.contains("strata_tenant_calls_total{tenant=\"dev\"} 5"), "{body}");
    assert!(body.contains("strata_tenant_payload_bytes_total{tenant=\"dev\"} 20"), "{body}");
    assert!(!body.contains("colder"), "{body}");
}

/// `STRATA_LOG_FORMAT=json` writes one JSON object per line; `STRATA_ACCESS_LOG=1` adds a line
/// per answered call, naming its action, status and time, never its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_the_access_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("STRATA_LOG_FORMAT", "json"), ("STRATA_ACCESS_LOG", "1")];
    let dev = DevProcess::start_with_env(&dir.path().join("dev"), &[], &env).expect("strata dev");
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("logged")).await.expect("create");
    api.post_ok("/v1/queues/logged/messages", json!({ "messages": [{ "body": "a secret body" }] }))
        .await
        .expect("send");
    let mut access = Vec::new();
    for _ in 0..50 {
        let log = dev.log().expect("the dev log");
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect();
        access = lines.into_iter().filter(|l| l["target"] == "strata_access").collect();
        if access.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let send = access.iter().find(|l| l["fields"]["action"] == "SendMessage").expect("the send's access line");
    assert_eq!(send["fields"]["status"], 200, "{send}");
    assert_eq!(send["fields"]["path"], "/v1/queues/logged/messages", "{send}");
    assert!(send["fields"]["duration_ms"].is_u64(), "{send}");
    assert!(!dev.log().expect("log").contains("a secret body"), "a message body reached the log");
}

/// Prometheus scrapes every process of a local cluster; and every process exports traces, so
/// that a client's traced send is one trace across the proxy and the storage node's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_of_a_local_cluster_is_scraped_and_traced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver =
        OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp-receiver").as_ref(), &dir.path().join("otlp")).expect("receiver");
    let cluster = LocalCluster::up_with_env(&dir.path().join("cluster"), LocalCluster::port_base(1), &receiver.env())
        .expect("up");
    let env = cluster.credentials().expect("credentials");
    let token_file = PathBuf::from(&env["STRATA_METRICS_TOKEN_FILE"]);
    let token = std::fs::read_to_string(&token_file).expect("scrape token").trim().to_string();
    let targets: Vec<String> = env["STRATA_METRICS_TARGETS"].split(',').map(str::to_string).collect();
    assert_eq!(targets.len(), 9, "two proxies, billing, three metadata members, three storage nodes");
    for target in &targets {
        assert_eq!(scrape(target, None).await.0, 401, "{target} answers /metrics without the token");
        let (status, body) = scrape(target, Some(&token)).await;
        assert_eq!(status, 200, "{target}: {body}");
        let complaints = promtool_check_metrics(&body).expect("promtool");
        assert!(complaints.is_empty(), "{target}: promtool check metrics: {complaints}");
    }

    let proxies: Vec<Api> =
        env["STRATA_PROXY_ENDPOINTS"].split(',').map(|e| Api::new(e, &env["STRATA_TOKEN"])).collect();
    proxies[0].create_queue(&model::CreateQueue::named("watched")).await.expect("create");
    for i in 0..6 {
        proxies[i % 2]
            .post_ok("/v1/queues/watched/messages", json!({ "messages": [{ "body": format!("m{i}") }] }))
            .await
            .expect("send");
    }

    let prometheus = Prometheus::start(&dir.path().join("prometheus"), &targets, &token_file).expect("prometheus");
    assert_eq!(prometheus.wait_for("sum(up)", 9.0, SCRAPED_WITHIN).await.expect("query"), Some(9.0));
    let sends = "sum(strata_api_requests_total{action=\"SendMessage\",code=\"200\"})";
    assert_eq!(prometheus.wait_for(sends, 6.0, SCRAPED_WITHIN).await.expect("query"), Some(6.0));
    // Three metadata members with one leader; three shards of three replicas, one leader each.
    for (query, expected) in [
        ("sum(strata_raft_groups{group=\"metadata\"})", 3.0),
        ("sum(strata_raft_groups_led{group=\"metadata\"})", 1.0),
        ("sum(strata_raft_groups_without_leader{group=\"metadata\"})", 0.0),
        ("sum(strata_raft_groups{group=\"shard\"})", 9.0),
        ("sum(strata_raft_groups_led{group=\"shard\"})", 3.0),
    ] {
        assert_eq!(
            prometheus.wait_for(query, expected, SCRAPED_WITHIN).await.expect("query"),
            Some(expected),
            "{query}"
        );
    }
    drop(prometheus);

    let trace_id = "5b8efff798038103d269b633813fc60c";
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/queues/watched/messages", env["STRATA_PROXY_ENDPOINTS"].split(',').next().unwrap_or("")))
        .bearer_auth(&env["STRATA_TOKEN"])
        .header("traceparent", format!("00-{trace_id}-eee19b7ec3c1b174-01"))
        .json(&json!({ "messages": [{ "body": "traced" }] }))
        .send()
        .await
        .expect("a traced send");
    assert_eq!(answer.status(), 200);
    let in_trace = |spans: &[serde_json::Value], service: &str, name: &str| {
        spans.iter().find(|s| s["trace_id"] == trace_id && s["service"] == service && s["name"] == name).cloned()
    };
    let spans = receiver
        .wait_for("the traced send's spans", Duration::from_secs(20), |spans| {
            in_trace(spans, "strata-storage", "raft commit").is_some()
        })
        .await
        .expect("spans");
    let call = in_trace(&spans, "strata-proxy", "SendMessage").expect("the proxy's span");
    let storage = in_trace(&spans, "strata-storage", "/strata.v1.Storage/Send").expect("the storage node's span");
    let commit = in_trace(&spans, "strata-storage", "raft commit").expect("the Raft commit's span");
    assert_eq!(storage["parent_span_id"], call["span_id"], "the trace crosses from the proxy: {spans:#?}");
    assert_eq!(commit["parent_span_id"], storage["span_id"], "{spans:#?}");
    cluster.down().expect("down");
}

/// Counts are true without traffic: a queue whose consumer died shows its messages visible
/// again once their visibility timeout runs out, and a delayed message visible once due, with
/// no command on the queue in between (depth alarms and KEDA read exactly this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_counts_follow_visibility_timeouts_and_delays_without_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&dir.path().join("dev"), &[]).expect("strata dev");
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("quiet")).await.expect("create");
    api.post_ok(
        "/v1/queues/quiet/messages",
        json!({ "messages": [{ "body": "taken" }, { "body": "later", "delay_seconds": 2 }] }),
    )
    .await
    .expect("send");
    let taken = api
        .receive(
            "quiet",
            &model::Receive { max_messages: Some(1), visibility_timeout_seconds: Some(1), ..Default::default() },
        )
        .await
        .expect("receive");
    assert_eq!(taken.messages.len(), 1);
    let counts = |q: &model::Queue| {
        (
            q.approximate_number_of_messages,
            q.approximate_number_of_messages_not_visible,
            q.approximate_number_of_messages_delayed,
        )
    };
    assert_eq!(counts(&api.get_queue("quiet").await.expect("read")), (Some(0), Some(1), Some(1)));
    // The consumer went away; nothing else touches the queue.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(counts(&api.get_queue("quiet").await.expect("read")), (Some(2), Some(0), Some(0)));
}

/// `/readyz` of a role: its status and its needs (`"ok"` or the problem).
async fn readyz(target: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{target}/readyz")).await.expect("readyz");
    (response.status().as_u16(), response.json().await.expect("readyz body"))
}

/// Polls `target`'s `/readyz` until its status is `status` (at most a minute); its last body.
async fn readyz_until(target: &str, status: u16) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..120 {
        let (now, body) = readyz(target).await;
        if now == status {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{target}/readyz never answered {status}; last: {last}");
}

/// Readiness turns false when the metadata quorum is lost, on every role that needs it, and
/// says why; admin calls and queue creation then fail at once with an error that says so
/// (before, they waited out the 10 s failover window), while sends and receives to existing
/// queues go on. Once a majority runs again, all is ready and admin calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_and_admin_calls_fail_fast_when_the_metadata_quorum_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::up(&dir.path().join("cluster"), LocalCluster::port_base(0)).expect("up");
    let env = cluster.credentials().expect("credentials");
    let targets: Vec<String> = env["STRATA_METRICS_TARGETS"].split(',').map(str::to_string).collect();
    // Proxies, billing, metadata members 1-3, storage nodes 1-3.
    let (proxy, billing, member_1, storage_1) = (&targets[0], &targets[2], &targets[3], &targets[6]);
    for target in &targets {
        let body = readyz_until(target, 200).await;
        assert_eq!(body["ready"], true, "{target}: {body}");
    }
    assert_eq!(readyz(storage_1).await.1["needs"]["shards"], "ok");

    let tenant = Api::new(env["STRATA_PROXY_ENDPOINTS"].split(',').next().expect("a proxy"), &env["STRATA_TOKEN"]);
    let admin = Api::new(&env["STRATA_ADMIN_ENDPOINT"], &env["STRATA_ADMIN_TOKEN"]);
    tenant.create_queue(&model::CreateQueue::named("kept")).await.expect("create");
    tenant.post_ok("/v1/queues/kept/messages", json!({ "messages": [{ "body": "before" }] })).await.expect("send");
    // The alert rules of infra/observability, evaluated by a real Prometheus scraping everything.
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/observability/alerts.yml");
    promtool_check_rules(&rules).expect("promtool check rules");
    let token_file = PathBuf::from(&env["STRATA_METRICS_TOKEN_FILE"]);
    let prometheus = Prometheus::start_with_rules(&dir.path().join("prometheus"), &targets, &token_file, Some(&rules))
        .expect("prometheus");
    assert_eq!(prometheus.wait_for("sum(up)", 9.0, SCRAPED_WITHIN).await.expect("query"), Some(9.0));
    let quiet_until = std::time::Instant::now() + SCRAPED_WITHIN;
    loop {
        let rules = prometheus.rules().await.expect("rules");
        if !rules.is_empty() && rules.iter().all(|(_, health, _)| health == "ok") {
            break;
        }
        assert!(std::time::Instant::now() < quiet_until, "rules not all evaluated without error: {rules:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(prometheus.alerts().await.expect("alerts"), vec![], "a healthy cluster raises no alert");

    cluster.kill9("metadata-2").expect("kill metadata-2");
    cluster.kill9("metadata-3").expect("kill metadata-3");
    for target in [member_1, proxy, billing, storage_1] {
        let body = readyz_until(target, 503).await;
        let problem = body["needs"]["metadata_quorum"].as_str().unwrap_or_default().to_owned();
        assert!(problem.contains("metadata quorum is unavailable"), "{target}: {body}");
    }
    // A load balancer may leave the quorum out of its verdict: the data plane still serves.
    let excluded = reqwest::get(format!("http://{proxy}/readyz?exclude=metadata_quorum")).await.expect("readyz");
    assert_eq!(excluded.status().as_u16(), 200);

    // The quorum-loss alert and the dead targets' alerts become active.
    let active_until = std::time::Instant::now() + SCRAPED_WITHIN;
    loop {
        let alerts = prometheus.alerts().await.expect("alerts");
        let named = |name: &str| alerts.iter().filter(|(n, _, _)| n == name).count();
        if named("StrataMetadataQuorumLost") == 1 && named("StrataTargetDown") == 2 {
            break;
        }
        assert!(std::time::Instant::now() < active_until, "alerts: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(prometheus);

    let started = std::time::Instant::now();
    let refused = admin.metadata_members().await.expect_err("no quorum, no member list");
    let admin_took = started.elapsed();
    let started = std::time::Instant::now();
    let not_created = tenant.create_queue(&model::CreateQueue::named("new")).await.expect_err("no quorum, no queue");
    let create_took = started.elapsed();
    eprintln!(
        "with the quorum lost: an admin call failed after {admin_took:?}, a queue creation after {create_took:?}"
    );
    for error in [&refused, &not_created] {
        let strata_client::ClientError::Api { status, code, message, .. } = error else { panic!("{error}") };
        assert_eq!((*status, code.as_str()), (503, "Unavailable"), "{error}");
        assert!(message.contains("metadata quorum is unavailable"), "{error}");
    }
    // The client's failover window, which the calls used to wait out in full.
    let window = strata_metadata_client::FAILOVER_WAIT;
    assert!(admin_took < window && create_took < window, "{admin_took:?}, {create_took:?}");

    tenant.post_ok("/v1/queues/kept/messages", json!({ "messages": [{ "body": "during" }] })).await.expect("send");
    let received = tenant
        .receive("kept", &model::Receive { max_messages: Some(10), ..Default::default() })
        .await
        .expect("receive");
    assert_eq!(received.messages.len(), 2, "{received:?}");

    cluster.start("metadata-2").expect("restart metadata-2");
    for target in [member_1, proxy, billing, storage_1] {
        readyz_until(target, 200).await;
    }
    tenant.create_queue(&model::CreateQueue::named("new")).await.expect("create once a majority runs");
    // The leader tells the dead member from the live ones.
    let members = admin.metadata_members().await.expect("members once a majority runs");
    let mut states: Vec<(u64, String)> = members.health.iter().map(|h| (h.node_id, h.state.clone())).collect();
    states.sort();
    let dead = states.iter().find(|(id, _)| *id == 3).map(|(_, state)| state.as_str());
    assert_eq!(dead, Some("unreachable"), "{members:?}");
    let leaders = states.iter().filter(|(_, state)| state == "leader").count();
    let live = states.iter().filter(|(_, state)| state == "live").count();
    assert_eq!((leaders, live), (1, 1), "{members:?}");

    // The operators' listings of tenants and of a tenant's queues with their figures.
    let tenant_id = env["STRATA_TENANT"].clone();
    let tenants = admin.tenants(None).await.expect("tenants");
    let listed = tenants.tenants.iter().find(|t| t.tenant == tenant_id).expect("the tenant is listed");
    let queues = admin.tenant_queues(&tenant_id, None).await.expect("the tenant's queues");
    assert_eq!(listed.queues, queues.queues.len() as u64, "{tenants:?} {queues:?}");
    let kept = queues.queues.iter().find(|q| q.name == "kept").expect("kept is listed");
    assert!(queues.queues.iter().any(|q| q.name == "new"), "{queues:?}");
    assert_eq!(kept.depth.in_flight, 2, "{queues:?}");
    let messages: u64 = queues.queues.iter().map(|q| q.depth.visible + q.depth.in_flight + q.depth.delayed).sum();
    assert_eq!((queues.totals.queues, queues.totals.messages), (listed.queues, messages), "{queues:?}");
    assert!(kept.stored_bytes > 0 && queues.totals.stored_bytes >= kept.stored_bytes, "{queues:?}");
    cluster.down().expect("down");
}
