//! Every message's life by id (`GET /v1/queues/{name}/messages/{id}/trace`, `strata message
//! trace`), checked against the calls a test made: across a dead-letter move and a SIGKILL
//! restart, with the credential and request id of each call, and only for the tenant's own
//! messages.

#![allow(clippy::disallowed_methods)] // a test waits in real time

use serde_json::json;
use strata_client::model;
use strata_client::sqs::SignOptions;
use strata_tests::{Api, DevProcess};

/// The events of a trace as `(queue, event)`.
fn steps(trace: &model::MessageTrace) -> Vec<(&str, &str)> {
    trace.events.iter().map(|e| (e.queue.as_str(), e.event.as_str())).collect()
}

async fn receive(api: &Api, queue: &str, visibility_s: u64) -> Vec<model::ReceivedMessage> {
    let request = model::Receive {
        max_messages: Some(10),
        wait_seconds: Some(1),
        visibility_timeout_seconds: Some(visibility_s),
        ..Default::default()
    };
    api.receive(queue, &request).await.expect("receive").messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_traced_across_a_dead_letter_move_and_a_sigkill_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[]).expect("strata dev");
    // Calls keep their callers once every replica reads them (format generation 7).
    dev.wait_for_newest_formats().await.expect("newest formats");
    let api = dev.api();
    api.post_ok("/v1/queues", json!({ "name": "traced-dlq" })).await.expect("create the dead-letter queue");
    let dead_letter = json!({ "queue": "traced-dlq", "max_receive_count": 1 });
    api.post_ok("/v1/queues", json!({ "name": "traced", "attributes": { "dead_letter": dead_letter } }))
        .await
        .expect("create");
    let credentials: std::collections::BTreeMap<String, String> =
        dev.credentials_env().expect("credentials").into_iter().collect();
    let access_key_id = credentials["AWS_ACCESS_KEY_ID"].clone();

    // Sent on the SQS API, received once (visible again at once), moved to the dead-letter
    // queue by the next receive.
    let (status, queue) = dev
        .sqs_call("GetQueueUrl", None, &json!({ "QueueName": "traced" }), &SignOptions::default(), &[])
        .await
        .expect("url");
    assert_eq!(status, 200, "{queue}");
    let (status, sent) = dev
        .sqs_call(
            "SendMessage",
            None,
            &json!({ "QueueUrl": queue["QueueUrl"], "MessageBody": "followed" }),
            &SignOptions::default(),
            &[],
        )
        .await
        .expect("send");
    assert_eq!(status, 200, "{sent}");
    let id = sent["MessageId"].as_str().expect("MessageId").to_owned();
    assert_eq!(receive(&api, "traced", 0).await.len(), 1);
    assert!(receive(&api, "traced", 0).await.is_empty(), "received once: it moves to the dead-letter queue");

    // Killed before the records could all be written: the log replays what was not.
    dev.restart().expect("restart after SIGKILL");
    let api = dev.api();
    let taken = receive(&api, "traced-dlq", 30).await;
    assert_eq!(taken.len(), 1);
    let request_id = "delete-after-restart";
    let deleted = reqwest::Client::new()
        .post(format!("{}/v1/queues/traced-dlq/delete", dev.endpoint))
        .bearer_auth(&dev.token)
        .header("x-strata-request-id", request_id)
        .json(&json!({ "receipt_handles": [taken[0].receipt_handle] }))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    assert_eq!(deleted.headers()["x-strata-request-id"], request_id);

    let trace = api.message_trace("traced", &id).await.expect("trace");
    assert_eq!(
        steps(&trace),
        [
            ("traced", "sent"),
            ("traced", "received"),
            ("traced", "moved_to"),
            ("traced-dlq", "arrived_from"),
            ("traced-dlq", "received"),
            ("traced-dlq", "deleted"),
        ],
        "{trace:#?}"
    );
    let sent = &trace.events[0];
    assert_eq!(sent.credential.as_deref(), Some(access_key_id.as_str()), "{sent:?}");
    assert!(sent.request_id.as_deref().is_some_and(|r| r.len() == 36), "the SQS request id: {sent:?}");
    let first = &trace.events[1];
    assert_eq!(first.receive_count, Some(1));
    assert!(first.credential.as_deref().is_some_and(|c| c.starts_with("token:")), "{first:?}");
    assert_eq!(first.visible_at_ms, Some(first.at_ms), "received with a visibility timeout of 0");
    assert_eq!((trace.events[2].other_queue.as_deref(), trace.events[2].dead_letter), (Some("traced-dlq"), Some(true)));
    assert_eq!(trace.events[3].other_queue.as_deref(), Some("traced"));
    let again = &trace.events[4];
    assert_eq!((again.receive_count, again.visible_at_ms), (Some(1), Some(again.at_ms + 30_000)));
    assert_eq!(trace.events[5].request_id.as_deref(), Some(request_id));
    assert!(trace.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "in the order they happened");
    assert_eq!(trace.now.state, "deleted");
    // Asked in the dead-letter queue: from its arrival on.
    let there = api.message_trace("traced-dlq", &id).await.expect("trace in the dead-letter queue");
    assert_eq!(steps(&there), [("traced-dlq", "arrived_from"), ("traced-dlq", "received"), ("traced-dlq", "deleted")]);

    // A message still in the queue, in flight after a visibility change, then purged.
    let sent =
        api.post_ok("/v1/queues/traced/messages", json!({ "messages": [{ "body": "held" }] })).await.expect("send");
    let held = sent["messages"][0]["message_id"].as_str().expect("id").to_owned();
    let trace = api.message_trace("traced", &held).await.expect("trace");
    assert_eq!((trace.now.state.as_str(), trace.now.queue.as_deref()), ("visible", Some("traced")), "{trace:?}");
    let taken = receive(&api, "traced", 60).await;
    api.post_ok(
        "/v1/queues/traced/visibility",
        json!({ "receipt_handle": taken[0].receipt_handle, "visibility_timeout_seconds": 120 }),
    )
    .await
    .expect("change visibility");
    let trace = api.message_trace("traced", &held).await.expect("trace");
    assert_eq!(steps(&trace), [("traced", "sent"), ("traced", "received"), ("traced", "visibility_changed")]);
    assert_eq!(trace.now.state, "in_flight");
    assert_eq!(trace.now.visible_at_ms, trace.events[2].visible_at_ms);
    api.post_ok("/v1/queues/traced/purge", json!({})).await.expect("purge");
    let trace = api.message_trace("traced", &held).await.expect("trace");
    assert_eq!(trace.events.last().map(|e| e.event.as_str()), Some("purged"));
    assert_eq!(trace.now.state, "purged");
    // The purge found only the held message: the first one's trace ended before it.
    assert_eq!(api.message_trace("traced", &id).await.expect("trace").events.len(), 6);

    // The CLI shows the same.
    let out = dev
        .command_with_credentials(&strata_tests::strata_binary().to_string_lossy())
        .expect("cli")
        .args(["message", "trace", "traced", &id, "--json"])
        .output()
        .expect("strata message trace");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: model::MessageTrace = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown.events.len(), 6);
    let out = dev
        .command_with_credentials(&strata_tests::strata_binary().to_string_lossy())
        .expect("cli")
        .args(["message", "trace", "traced", &id])
        .output()
        .expect("strata message trace");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("dead-letter queue traced-dlq") && table.contains("now: deleted"), "{table}");

    // Unknown ids and other tenants' messages answer like missing ones.
    let missing = api.message_trace("traced", "0190a5c3-0000-7000-8000-000000000000").await.expect_err("unknown");
    assert!(matches!(&missing, strata_client::ClientError::Api { status: 404, .. }), "{missing}");
    let other = Api::new(&dev.endpoint, &dev.token_for("another-tenant").expect("token"));
    let refused = other.message_trace("traced", &id).await.expect_err("another tenant");
    assert!(refused.to_string().contains("QueueNotFound"), "{refused}");
    other.post_ok("/v1/queues", json!({ "name": "traced" })).await.expect("its own queue of the same name");
    let refused = other.message_trace("traced", &id).await.expect_err("another tenant's queue");
    assert!(refused.to_string().contains("MessageNotFound"), "{refused}");
    let (status, _) = api.get("/v1/queues/traced/messages/not-an-id/trace").await.expect("bad id");
    assert_eq!(status, 404);
}
