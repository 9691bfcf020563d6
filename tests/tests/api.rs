//! The native HTTP API of a real `strata dev`: tenant isolation with real tokens, authentication
//! failures, limits and error shapes, long polling, restart persistence, the OpenAPI document.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_common::{Clock, SystemClock};
use strata_proxy::auth::JwtIssuer;
use strata_tests::{DevProcess, model};

fn token_for(dev: &DevProcess, tenant: &str, audience: &str) -> String {
    dev.token_for_audience(tenant, audience).expect("mint a token")
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_touch_each_others_queues() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let alice = dev.api().with_token(&token_for(&dev, "alice", "strata"));
    let bob = dev.api().with_token(&token_for(&dev, "bob", "strata"));

    let created = alice.create_queue(&model::CreateQueue::named("orders")).await?;
    alice.post_ok("/v1/queues/orders/messages", json!({ "messages": [{ "body": "alice's secret" }] })).await?;

    // Bob's view of Alice's queue is exactly his view of a queue that does not exist.
    let (status, missing) = bob.get("/v1/queues/never-created").await?;
    assert_eq!((status, error_code(&missing)), (404, "QueueNotFound"));
    let (status, body) = bob.get("/v1/queues/orders").await?;
    assert_eq!((status, error_code(&body)), (404, "QueueNotFound"));
    assert_eq!(body["error"]["message"], json!("queue 'orders' does not exist"));
    for (path, request) in [
        ("/v1/queues/orders/receive", json!({ "max_messages": 10 })),
        ("/v1/queues/orders/messages", json!({ "messages": [{ "body": "x" }] })),
        ("/v1/queues/orders/purge", json!({})),
        ("/v1/queues/orders/delete", json!({ "receipt_handles": ["AQYABg"] })),
    ] {
        let (status, body) = bob.post(path, request).await?;
        assert_eq!((status, error_code(&body)), (404, "QueueNotFound"), "{path}");
    }
    let (status, list) = bob.get("/v1/queues").await?;
    assert_eq!(status, 200);
    assert_eq!(list["queues"], json!([]));

    // Bob's own queue of the same name is a different queue.
    let bobs = bob.create_queue(&model::CreateQueue::named("orders")).await?;
    assert_ne!(bobs.queue_id, created.queue_id);
    let got = bob.post_ok("/v1/queues/orders/receive", json!({ "max_messages": 10 })).await?;
    assert_eq!(got["messages"], json!([]));
    let got = alice.post_ok("/v1/queues/orders/receive", json!({ "max_messages": 10 })).await?;
    assert_eq!(got["messages"][0]["body"], json!("alice's secret"));
    Ok(())
}

/// A send retried with the client's request id is stored once and answered like the first
/// attempt; the same id in another queue or another tenant is another send; a bad id is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_with_the_clients_request_id_is_stored_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let alice = dev.api().with_token(&token_for(&dev, "alice", "strata"));
    let bob = dev.api().with_token(&token_for(&dev, "bob", "strata"));
    for api in [&alice, &bob] {
        api.create_queue(&model::CreateQueue::named("orders")).await?;
    }
    alice.create_queue(&model::CreateQueue::named("invoices")).await?;
    // Request digests are written from format generation 2 on.
    dev.wait_for_newest_formats().await?;

    let send = json!({ "messages": [{ "body": "once" }, { "body": "twice" }] });
    let with_id = alice.with_header("x-strata-request-id", "order-42.attempt_1");
    let first = with_id.post_ok("/v1/queues/orders/messages", send.clone()).await?;
    let again = with_id.post_ok("/v1/queues/orders/messages", send.clone()).await?;
    assert_eq!(first, again, "a retry answers the first attempt's message ids");
    let other_queue = with_id.post_ok("/v1/queues/invoices/messages", send.clone()).await?;
    assert_ne!(other_queue, first);
    let other_tenant = bob
        .with_header("x-strata-request-id", "order-42.attempt_1")
        .post_ok("/v1/queues/orders/messages", send.clone())
        .await?;
    assert_ne!(other_tenant, first);
    // The same id with another request: refused, and nothing of it stored.
    let changed = json!({ "messages": [{ "body": "once" }, { "body": "a different second message" }] });
    let (status, body) = with_id.post("/v1/queues/orders/messages", changed).await?;
    assert_eq!((status, error_code(&body)), (409, "IdempotencyConflict"), "{body}");
    assert_eq!(with_id.post_ok("/v1/queues/orders/messages", send.clone()).await?, first, "the first answer stays");

    for (api, queue) in [(&alice, "orders"), (&alice, "invoices"), (&bob, "orders")] {
        let got = api
            .post_ok(&format!("/v1/queues/{queue}/receive"), json!({ "max_messages": 10, "wait_seconds": 1 }))
            .await?;
        let bodies: Vec<&str> =
            got["messages"].as_array().into_iter().flatten().filter_map(|m| m["body"].as_str()).collect();
        assert_eq!(bodies.len(), 2, "{queue}: {got}");
        assert!(!bodies.contains(&"a different second message"), "{queue}: {got}");
    }

    for bad in ["", "has space", "colon:inside", &"x".repeat(129)] {
        let (status, body) =
            alice.with_header("x-strata-request-id", bad).post("/v1/queues/orders/messages", send.clone()).await?;
        assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "{bad:?}: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_errors_are_401_with_actionable_messages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    let (status, body) = api.without_token().get("/v1/queues").await?;
    assert_eq!((status, error_code(&body)), (401, "Unauthenticated"));
    let (status, body) = api.with_token(&token_for(&dev, "alice", "someone-else")).get("/v1/queues").await?;
    assert_eq!((status, error_code(&body)), (401, "Unauthenticated"));
    let (status, body) = api.with_token("not.a.jwt").get("/v1/queues").await?;
    assert_eq!((status, error_code(&body)), (401, "Unauthenticated"));
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Operators' tokens have a key of their own: the tenant key cannot sign one.
    let admin = dev.admin_api()?;
    assert_eq!(admin.get("/admin/v1/storage-nodes").await?.0, 200);
    let secret = hex::decode(std::fs::read_to_string(dev.data_dir.join("jwt-hs256.secret"))?.trim())?;
    let now_s = SystemClock.now_ms() / 1000;
    let forged = JwtIssuer::hmac("dev-hs256", &secret, "strata-dev", "strata-admin").mint("mallory", 600, now_s)?;
    let (status, body) = admin.with_token(&forged).get("/admin/v1/storage-nodes").await?;
    assert_eq!((status, error_code(&body)), (401, "Unauthenticated"), "{body}");
    // A token may not live longer than the service accepts (30 days for `strata dev`).
    let long = JwtIssuer::hmac("dev-hs256", &secret, "strata-dev", "strata").mint("dev", 31 * 24 * 3600, now_s)?;
    let (status, body) = api.with_token(&long).get("/v1/queues").await?;
    assert_eq!((status, error_code(&body)), (401, "Unauthenticated"), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("lives longer")), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_bad_input_get_json_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("limits")).await?;

    let big = "x".repeat(1024 * 1024 + 1);
    let (status, body) = api.post("/v1/queues/limits/messages", json!({ "messages": [{ "body": big }] })).await?;
    assert_eq!((status, error_code(&body)), (413, "TooLarge"));
    let exact = "y".repeat(1024 * 1024);
    let (status, _) = api.post("/v1/queues/limits/messages", json!({ "messages": [{ "body": exact }] })).await?;
    assert_eq!(status, 200, "a message of exactly 1 MiB is accepted");

    let eleven: Vec<Value> = (0..11).map(|i| json!({ "body": format!("m{i}") })).collect();
    let (status, body) = api.post("/v1/queues/limits/messages", json!({ "messages": eleven })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"));
    let (status, body) = api.post("/v1/queues/limits/receive", json!({ "max_messages": 11 })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"));
    let (status, body) = api.post("/v1/queues/limits/receive", json!({ "wait_seconds": 21 })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"));
    let (status, body) = api.post("/v1/queues/limits/receive", json!({ "wait_seconds": u64::MAX })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "no overflow");
    // The native API refuses what the SQS API refuses.
    let refused = [
        json!({ "body": "nul \u{0} inside" }),
        json!({ "body": "bell \u{7}" }),
        json!({ "body": "m", "attributes": { "AWS.trace": { "type": "String", "value": "x" } } }),
        json!({ "body": "m", "attributes": { "a..b": { "type": "String", "value": "x" } } }),
        json!({ "body": "m", "attributes": { "when": { "type": "Date", "value": "x" } } }),
        json!({ "body": "m", "attributes": { "n": { "type": "Number", "value": "many" } } }),
        json!({ "body": "m", "attributes": { "s": { "type": "String", "value": "" } } }),
        json!({ "body": "m", "attributes": (0..11).map(|i| (format!("a{i}"), json!({ "type": "String", "value": "v" }))).collect::<serde_json::Map<_, _>>() }),
    ];
    for message in refused {
        let (status, body) = api.post("/v1/queues/limits/messages", json!({ "messages": [message] })).await?;
        assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "{message}: {body}");
    }
    let labeled =
        json!({ "body": "tab\tand newline\n", "attributes": { "n": { "type": "Number.int", "value": "7" } } });
    let (status, body) = api.post("/v1/queues/limits/messages", json!({ "messages": [labeled] })).await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.post("/v1/queues", json!({ "name": "bad/name" })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"));
    let (status, body) =
        api.post("/v1/queues", json!({ "name": "short", "attributes": { "retention_seconds": 59 } })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"));
    let (status, body) =
        api.post("/v1/queues", json!({ "name": "limits", "attributes": { "delay_seconds": 5 } })).await?;
    assert_eq!((status, error_code(&body)), (409, "QueueAlreadyExists"));
    let (status, body) = api.post("/v1/queues/limits/delete", json!({ "receipt_handles": ["garbage!"] })).await?;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["error"]["code"], json!("InvalidReceipt"));
    let (status, body) = api.post("/v1/queues/limits/receive", json!({ "unknown_field": 1 })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"));

    // The document served is the committed one (which a proxy test checks is generated from
    // the API's types and routes).
    let (status, doc) = api.without_token().get("/openapi.json").await?;
    assert_eq!(status, 200);
    let committed: Value = serde_json::from_str(include_str!("../../proxy/openapi.json"))?;
    assert!(doc == committed, "the served /openapi.json differs from proxy/openapi.json");
    assert!(doc["paths"]["/v1/queues/{name}/receive"]["post"].is_object());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_when_a_message_arrives_and_state_survives_restart() -> anyhow::Result<()> {
    long_poll_attributes_restart_and_recreate(&[]).await
}

/// The same walk with the proxy reaching the storage node over gRPC on loopback, as a proxy in
/// another process does, instead of calling its service in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_works_with_storage_calls_over_loopback_grpc() -> anyhow::Result<()> {
    long_poll_attributes_restart_and_recreate(&["--storage-rpc", "loopback"]).await
}

async fn long_poll_attributes_restart_and_recreate(dev_args: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), dev_args)?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("poll")).await?;

    let sender = api.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.post_ok("/v1/queues/poll/messages", json!({ "messages": [{ "body": "wake" }] })).await
    });
    let started = Instant::now();
    let got =
        api.post_ok("/v1/queues/poll/receive", json!({ "wait_seconds": 20, "visibility_timeout_seconds": 0 })).await?;
    send.await??;
    assert_eq!(got["messages"][0]["body"], json!("wake"));
    // Functional, not a performance bound: the poll ends with the send, far before its 20 s deadline.
    assert!(started.elapsed() < Duration::from_secs(15), "long poll did not wake up on send");

    // Attributes and counts, then a restart keeps the queue and its message.
    api.post_ok("/v1/queues/poll/messages", json!({ "messages": [{ "body": "delayed", "delay_seconds": 600 }] }))
        .await?;
    let (_, attributes) = api.get("/v1/queues/poll").await?;
    assert_eq!(attributes["approximate_number_of_messages"], json!(1));
    assert_eq!(attributes["approximate_number_of_messages_delayed"], json!(1));
    dev.restart()?;
    let api = dev.api();
    let (status, attributes) = api.get("/v1/queues/poll").await?;
    assert_eq!(status, 200);
    assert_eq!(attributes["approximate_number_of_messages"], json!(1));
    assert_eq!(attributes["approximate_number_of_messages_delayed"], json!(1));
    let got = api.post_ok("/v1/queues/poll/receive", json!({ "max_messages": 10 })).await?;
    assert_eq!(got["messages"][0]["body"], json!("wake"));
    assert_eq!(got["messages"][0]["receive_count"], json!(2));
    let receipt = got["messages"][0]["receipt_handle"].clone();
    let deleted = api.post_ok("/v1/queues/poll/delete", json!({ "receipt_handles": [receipt] })).await?;
    assert_eq!(deleted["results"][0]["ok"], json!(true));

    // Deleting and re-creating a name gives a new incarnation with none of the old messages.
    let (status, _) = api.call(reqwest::Method::DELETE, "/v1/queues/poll", None).await?;
    assert_eq!(status, 204);
    api.create_queue(&model::CreateQueue::named("poll")).await?;
    let (_, attributes) = api.get("/v1/queues/poll").await?;
    assert_eq!(attributes["approximate_number_of_messages"], json!(0));
    assert_eq!(attributes["approximate_number_of_messages_delayed"], json!(0));
    Ok(())
}

/// The native API has the SQS API's queue features: FIFO queues (the `.fifo` naming rule, group
/// and deduplication ids), dead-letter queues and their allow policies, move tasks and tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_dead_letters_move_tasks_and_tags_on_the_native_api() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    let patch = |path: &'static str, body: Value| api.call(reqwest::Method::PATCH, path, Some(body));
    let delete = |path: &'static str| api.call(reqwest::Method::DELETE, path, None);

    // The name decides the kind; an explicit kind must agree with it and never changes.
    let fifo = api
        .post_ok(
            "/v1/queues",
            json!({ "name": "jobs.fifo", "attributes": {
        "content_based_deduplication": true } }),
        )
        .await?;
    assert_eq!(fifo["attributes"]["fifo"], json!(true));
    assert_eq!(fifo["attributes"]["deduplication_scope"], json!("queue"));
    for attributes in [json!({ "fifo": true }), json!({ "content_based_deduplication": true })] {
        let (status, body) = api.post("/v1/queues", json!({ "name": "plain", "attributes": attributes })).await?;
        assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "{body}");
    }
    let (status, _) = api.post("/v1/queues", json!({ "name": "odd.fifo", "attributes": { "fifo": false } })).await?;
    assert_eq!(status, 400);
    let plain = api.create_queue(&model::CreateQueue::named("plain")).await?;
    assert!(!plain.attributes.fifo);
    let (status, body) = patch("/v1/queues/plain", json!({ "fifo": true })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "{body}");

    // FIFO sends need a group; duplicates (by content here) are stored once; order holds.
    let (status, body) = api.post("/v1/queues/jobs.fifo/messages", json!({ "messages": [{ "body": "a" }] })).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("group id"), "{body}");
    let (status, _) =
        api.post("/v1/queues/plain/messages", json!({ "messages": [{ "body": "a", "group_id": "g" }] })).await?;
    assert_eq!(status, 400);
    let mut ids = Vec::new();
    for body in ["a", "b", "a"] {
        let sent = api
            .post_ok("/v1/queues/jobs.fifo/messages", json!({ "messages": [{ "body": body, "group_id": "g1" }] }))
            .await?;
        assert!(sent["messages"][0]["sequence_number"].is_string(), "{sent}");
        ids.push(sent["messages"][0]["message_id"].clone());
    }
    assert_eq!(ids[0], ids[2], "a duplicate answers the first send's id");
    let got = api.post_ok("/v1/queues/jobs.fifo/receive", json!({ "max_messages": 10 })).await?;
    let bodies: Vec<&str> =
        got["messages"].as_array().into_iter().flatten().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, ["a", "b"]);
    assert_eq!(got["messages"][0]["group_id"], json!("g1"));
    assert!(got["messages"][0]["deduplication_id"].is_string());

    // Dead-letter queues: set, read back, refused by an allow policy, of the wrong kind, removed.
    api.create_queue(&model::CreateQueue::named("work-dlq")).await?;
    api.post_ok(
        "/v1/queues",
        json!({ "name": "closed-dlq", "attributes": {
        "redrive_allow": { "permission": "deny_all" } } }),
    )
    .await?;
    let work = api
        .post_ok(
            "/v1/queues",
            json!({ "name": "work", "attributes": {
        "visibility_timeout_seconds": 0, "dead_letter": { "queue": "work-dlq", "max_receive_count": 1 } } }),
        )
        .await?;
    assert_eq!(work["attributes"]["dead_letter"], json!({ "queue": "work-dlq", "max_receive_count": 1 }));
    let (_, sources) = api.get("/v1/queues/work-dlq/dead-letter-sources").await?;
    assert_eq!(sources["queues"], json!(["work"]));
    for (target, fragment) in [("closed-dlq", "allow policy"), ("jobs.fifo", "FIFO"), ("nope", "does not exist")] {
        let (status, body) = patch(
            "/v1/queues/plain",
            json!({ "dead_letter": {
            "queue": target, "max_receive_count": 3 } }),
        )
        .await?;
        assert!(status == 400 || status == 404, "{target}: {status} {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains(fragment), "{target}: {body}");
    }

    // A message received once too often moves to the dead-letter queue; a move task brings it back.
    api.post_ok("/v1/queues/work/messages", json!({ "messages": [{ "body": "poison" }] })).await?;
    let first = api.post_ok("/v1/queues/work/receive", json!({ "wait_seconds": 1 })).await?;
    assert_eq!(first["messages"][0]["body"], json!("poison"));
    let again = api.post_ok("/v1/queues/work/receive", json!({ "wait_seconds": 1 })).await?;
    assert_eq!(again["messages"], json!([]), "moved to the dead-letter queue on its second receive");
    // Its first receipt deletes nothing now, and says so.
    let receipt = first["messages"][0]["receipt_handle"].clone();
    let deleted = api.post_ok("/v1/queues/work/delete", json!({ "receipt_handles": [receipt] })).await?;
    assert_eq!(deleted["results"][0]["ok"], json!(false), "{deleted}");
    assert_eq!(deleted["results"][0]["error"]["code"], json!("StaleReceipt"), "{deleted}");
    let (_, dlq) = api.get("/v1/queues/work-dlq").await?;
    assert_eq!(dlq["approximate_number_of_messages"], json!(1), "{dlq}");
    let started = api.post_ok("/v1/queues/work-dlq/move-tasks", json!({ "max_messages_per_second": 10 })).await?;
    assert!(started["task_id"].is_string(), "{started}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let task = loop {
        let (_, listed) = api.get("/v1/queues/work-dlq/move-tasks").await?;
        let task = listed["tasks"][0].clone();
        if task["status"] == json!("completed") || Instant::now() > deadline {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((task["status"].clone(), task["moved"].clone()), (json!("completed"), json!(1)), "{task}");
    assert_eq!(task["destination"], json!("work"));
    let (status, body) = api.post("/v1/queues/plain-dlq-less/move-tasks", json!({})).await?;
    assert_eq!((status, error_code(&body)), (404, "QueueNotFound"));
    let (status, body) = api.post("/v1/queues/plain/move-tasks", json!({})).await?;
    assert_eq!(status, 400, "not a dead-letter queue: {body}");
    let (_, removed) = patch("/v1/queues/work", json!({ "dead_letter": null })).await?;
    assert!(removed["attributes"].get("dead_letter").is_none(), "{removed}");

    // Tags: at creation, added, removed; another tenant sees none of it.
    api.post_ok("/v1/queues", json!({ "name": "tagged", "tags": { "team": "payments" } })).await?;
    let tags = api.post_ok("/v1/queues/tagged/tags", json!({ "tags": { "env": "prod" } })).await?;
    assert_eq!(tags["tags"], json!({ "env": "prod", "team": "payments" }));
    let (status, _) = delete("/v1/queues/tagged/tags/team").await?;
    assert_eq!(status, 204);
    let (_, queue) = api.get("/v1/queues/tagged").await?;
    assert_eq!(queue["tags"], json!({ "env": "prod" }));
    let (status, body) = api.post("/v1/queues/tagged/tags", json!({ "tags": { "": "x" } })).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"));
    let mallory = api.with_token(&token_for(&dev, "mallory", "strata"));
    let (status, body) = mallory.get("/v1/queues/tagged/tags").await?;
    assert_eq!((status, error_code(&body)), (404, "QueueNotFound"));
    Ok(())
}
