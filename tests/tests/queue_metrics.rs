//! Per-queue metrics for tenants: the minutes a queue's replicas keep equal the calls the test
//! made, minute by minute, across a SIGKILL restart; the tenant-scoped Prometheus endpoint shows
//! the depth of the tenant's own queues only; another tenant's queue answers like a missing one.

#![allow(clippy::disallowed_methods)] // a test waits in real time

use std::time::Duration;

use serde_json::json;
use strata_client::model::{self, QueueMinute};
use strata_common::{Clock, SystemClock};
use strata_tests::prometheus::promtool_check_metrics;
use strata_tests::{Api, DevProcess};

/// Waits until a minute after `after` (Unix minutes) has at least `room_s` seconds left;
/// answers that minute, so the calls that follow land in it.
async fn minute_with_room(after: u64, room_s: u64) -> u64 {
    loop {
        let now_s = SystemClock.now_ms() / 1000;
        if now_s / 60 > after && 60 - now_s % 60 >= room_s {
            return now_s / 60;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn counts(m: &QueueMinute) -> [u64; 7] {
    [m.sent, m.received, m.deleted, m.empty_receives, m.moved_to_dead_letter, m.bytes_in, m.bytes_out]
}

async fn receive(api: &Api, max: u32, visibility_s: u64) -> Vec<model::ReceivedMessage> {
    let request = model::Receive {
        max_messages: Some(max),
        wait_seconds: Some(0),
        visibility_timeout_seconds: Some(visibility_s),
        ..Default::default()
    };
    api.receive("counted", &request).await.expect("receive").messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_metrics_count_every_call_per_minute_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[]).expect("strata dev");
    let api = dev.api();
    api.post_ok("/v1/queues", json!({ "name": "counted-dlq" })).await.expect("create the dead-letter queue");
    let dead_letter = json!({ "queue": "counted-dlq", "max_receive_count": 1 });
    api.post_ok("/v1/queues", json!({ "name": "counted", "attributes": { "dead_letter": dead_letter } }))
        .await
        .expect("create");

    // One minute's calls: 5 sends of 2 bytes, 5 deliveries, 2 deletes, 3 moved to the
    // dead-letter queue, 2 receives that found nothing.
    let first = minute_with_room(0, 25).await;
    let messages: Vec<_> = (0..5).map(|i| json!({ "body": format!("m{i}") })).collect();
    api.post_ok("/v1/queues/counted/messages", json!({ "messages": messages })).await.expect("send");
    let taken = receive(&api, 3, 1).await;
    assert_eq!(taken.len(), 3);
    let receipts: Vec<_> = taken[..2].iter().map(|m| m.receipt_handle.clone()).collect();
    api.post_ok("/v1/queues/counted/delete", json!({ "receipt_handles": receipts })).await.expect("delete");
    assert_eq!(receive(&api, 10, 1).await.len(), 2);
    assert!(receive(&api, 10, 1).await.is_empty(), "everything is in flight");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Each message left was received once: it moves to the dead-letter queue.
    assert!(receive(&api, 10, 1).await.is_empty());
    let expected_first = [5, 5, 2, 2, 3, 10, 10];

    let metrics = api.queue_metrics("counted", Some(first * 60), Some(first * 60 + 60)).await.expect("metrics");
    assert_eq!(metrics.minutes.len(), 1, "{metrics:?}");
    assert_eq!(metrics.minutes[0].start, first * 60);
    assert_eq!(counts(&metrics.minutes[0]), expected_first, "{metrics:?}");
    assert_eq!((metrics.now.visible, metrics.now.in_flight, metrics.now.delayed), (0, 0, 0));
    let dlq = api.queue_metrics("counted-dlq", None, None).await.expect("the dead-letter queue's metrics");
    assert_eq!(dlq.now.visible, 3, "{dlq:?}");
    assert!(dlq.now.oldest_message_age_seconds < 60, "{dlq:?}");

    // Another tenant: the queue answers as missing, and its scrape shows none of ours.
    let other = Api::new(&dev.endpoint, &dev.token_for("someone-else").expect("token"));
    let refused = other.queue_metrics("counted", None, None).await.expect_err("another tenant's queue");
    assert!(matches!(&refused, strata_client::ClientError::Api { status: 404, .. }), "{refused}");
    let scrape = |token: String| {
        let url = format!("{}/v1/metrics", dev.endpoint);
        async move {
            let response = reqwest::Client::new().get(url).bearer_auth(token).send().await.expect("scrape");
            (response.status().as_u16(), response.text().await.expect("scrape body"))
        }
    };
    let (status, text) = scrape(dev.token_for("someone-else").expect("token")).await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("counted"), "{text}");
    let (status, text) = scrape(dev.token.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("strata_queue_messages_visible{queue=\"counted-dlq\"} 3"), "{text}");
    assert!(text.contains("strata_queue_messages_visible{queue=\"counted\"} 0"), "{text}");
    let complaints = promtool_check_metrics(&text).expect("promtool");
    assert!(complaints.is_empty(), "promtool check metrics: {complaints}");
    let (status, _) = scrape("not-a-token".to_owned()).await;
    assert_eq!(status, 401);

    // SIGKILL, then a later minute's calls.
    dev.restart().expect("restart after SIGKILL");
    let api = dev.api();
    let second = minute_with_room(first, 10).await;
    let messages: Vec<_> = (0..2).map(|i| json!({ "body": format!("after-{i}") })).collect();
    api.post_ok("/v1/queues/counted/messages", json!({ "messages": messages })).await.expect("send");

    let metrics = api.queue_metrics("counted", Some(first * 60), Some(second * 60 + 60)).await.expect("metrics");
    assert_eq!(metrics.minutes.len(), 2, "{metrics:?}");
    assert_eq!(counts(&metrics.minutes[0]), expected_first, "the first minute, as before the SIGKILL: {metrics:?}");
    assert_eq!(metrics.minutes[1].start, second * 60);
    assert_eq!(counts(&metrics.minutes[1]), [2, 0, 0, 0, 0, 14, 0], "{metrics:?}");
    assert_eq!(metrics.minutes[1].depth.map(|d| d.visible), Some(2), "{metrics:?}");
    assert_eq!(metrics.now.visible, 2);

    // Counts written down by the replica's own flush (no read in between) survive a SIGKILL.
    api.post_ok("/v1/queues/counted/messages", json!({ "messages": [{ "body": "flushed" }] })).await.expect("send");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    dev.restart().expect("restart after SIGKILL");
    let api = dev.api();
    let metrics = api.queue_metrics("counted", Some(first * 60), None).await.expect("metrics");
    let sent: u64 = metrics.minutes.iter().map(|m| m.sent).sum();
    assert_eq!(sent, 8, "{metrics:?}");

    // The CLI shows the same.
    let out = dev
        .command_with_credentials(&strata_tests::strata_binary().to_string_lossy())
        .expect("cli")
        .args(["queue", "metrics", "counted", "--minutes", "30", "--json"])
        .output()
        .expect("strata queue metrics");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: model::QueueMetrics = serde_json::from_slice(&out.stdout).expect("JSON");
    let sent: u64 = shown.minutes.iter().map(|m| m.sent).sum();
    assert_eq!(sent, 8, "{shown:?}");

    // Bad ranges are refused with a clear error.
    let refused = api.queue_metrics("counted", Some(100), Some(100)).await.expect_err("empty range");
    assert!(matches!(&refused, strata_client::ClientError::Api { status: 400, .. }), "{refused}");
    let refused = api.queue_metrics("counted", Some(0), Some(16 * 86_400)).await.expect_err("over 15 days");
    assert!(refused.to_string().contains("15 days"), "{refused}");
}
