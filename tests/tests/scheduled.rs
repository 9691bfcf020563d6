//! Scheduled messages through the native API of a real `strata dev`: deliver-at times near and
//! far, cancel by id, input errors, and SIGKILL restarts with messages waiting in memory and in
//! slice files. (A month of deliveries under a hand-moved clock is in the storage node's tests.)

use serde_json::{Value, json};
use strata_common::{Clock, SystemClock};
use strata_tests::{Api, DevProcess, model};

const DAY_MS: u64 = 24 * 3600 * 1000;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

async fn send_at(api: &Api, body: &str, deliver_at_ms: u64) -> anyhow::Result<String> {
    let sent = api
        .post_ok("/v1/queues/later/messages", json!({ "messages": [{ "body": body, "deliver_at_ms": deliver_at_ms }] }))
        .await?;
    Ok(sent["messages"][0]["message_id"].as_str().unwrap_or_default().to_owned())
}

async fn cancel(api: &Api, queue: &str, id: &str) -> anyhow::Result<(u16, Value)> {
    api.call(reqwest::Method::DELETE, &format!("/v1/queues/{queue}/scheduled/{id}"), None).await.map_err(Into::into)
}

async fn delayed(api: &Api) -> anyhow::Result<Value> {
    let (_, attributes) = api.get("/v1/queues/later").await?;
    Ok(attributes["approximate_number_of_messages_delayed"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_are_cancelled_by_id_and_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("later")).await?;
    let now_ms = SystemClock.now_ms();

    let soon_ms = now_ms + 4_000;
    let soon = send_at(&api, "soon", soon_ms).await?;
    let in_300_days = send_at(&api, "in 300 days", now_ms + 300 * DAY_MS).await?;
    let in_2_days = send_at(&api, "in 2 days", now_ms + 2 * DAY_MS).await?;
    assert_ne!(soon, in_300_days);
    assert_eq!(delayed(&api).await?, json!(3));

    // Bad input: both a delay and a time, more than a year ahead.
    let both = json!({ "messages": [{ "body": "x", "delay_seconds": 5, "deliver_at_ms": now_ms + DAY_MS }] });
    let (status, body) = api.post("/v1/queues/later/messages", both).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "{body}");
    let too_far = json!({ "messages": [{ "body": "x", "deliver_at_ms": now_ms + 400 * DAY_MS }] });
    let (status, body) = api.post("/v1/queues/later/messages", too_far).await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "{body}");

    // Cancel by id; twice, unknown ids, other tenants and bad ids are refused.
    let (status, body) = cancel(&api, "later", &in_2_days).await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cancel(&api, "later", &in_2_days).await?;
    assert_eq!((status, error_code(&body)), (404, "ScheduledMessageNotFound"), "{body}");
    let (status, body) = cancel(&api, "later", "6f1c2a4e-0000-4000-8000-000000000000").await?;
    assert_eq!((status, error_code(&body)), (404, "ScheduledMessageNotFound"), "{body}");
    let (status, body) = cancel(&api, "later", "not-an-id").await?;
    assert_eq!((status, error_code(&body)), (400, "InvalidParameter"), "{body}");
    let other = api.with_token(&dev.token_for("mallory")?);
    other.create_queue(&model::CreateQueue::named("later")).await?;
    let (status, body) = cancel(&other, "later", &in_300_days).await?;
    assert_eq!((status, error_code(&body)), (404, "ScheduledMessageNotFound"), "{body}");
    assert_eq!(delayed(&api).await?, json!(2));

    // SIGKILL: the near message (in memory) and the far one (in a slice file) are both still there.
    dev.restart()?;
    let api = dev.api();
    let (_, attributes) = api.get("/v1/queues/later").await?;
    let waiting = attributes["approximate_number_of_messages_delayed"].as_u64().unwrap_or(0)
        + attributes["approximate_number_of_messages"].as_u64().unwrap_or(0);
    assert_eq!(waiting, 2, "{attributes}");

    // The near one arrives at its time, not before.
    let got = api.post_ok("/v1/queues/later/receive", json!({ "wait_seconds": 20, "max_messages": 10 })).await?;
    let messages = got["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 1, "{got}");
    assert_eq!(messages[0]["body"], json!("soon"));
    assert_eq!(messages[0]["message_id"], json!(soon));
    let first_receive_ms = messages[0]["first_receive_timestamp_ms"].as_u64().unwrap_or(0);
    assert!(first_receive_ms >= soon_ms, "received at {first_receive_ms}, due at {soon_ms}");
    assert_eq!(messages[0]["sent_timestamp_ms"].as_u64().map(|sent| sent < soon_ms), Some(true));
    let (status, body) = cancel(&api, "later", &soon).await?;
    assert_eq!((status, error_code(&body)), (404, "ScheduledMessageNotFound"), "due already: {body}");

    // The far one is cancelled after the restart, and stays cancelled across another SIGKILL.
    let (status, body) = cancel(&api, "later", &in_300_days).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(delayed(&api).await?, json!(0));
    dev.restart()?;
    let api = dev.api();
    assert_eq!(delayed(&api).await?, json!(0));
    let (status, body) = cancel(&api, "later", &in_300_days).await?;
    assert_eq!((status, error_code(&body)), (404, "ScheduledMessageNotFound"), "{body}");
    let got = api.post_ok("/v1/queues/later/receive", json!({ "wait_seconds": 1, "max_messages": 10 })).await?;
    assert_eq!(got["messages"], json!([]), "only the received message is left, and it is in flight");
    Ok(())
}
