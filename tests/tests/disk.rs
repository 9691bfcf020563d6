//! Disk as a shared resource.
//!
//! - `strata dev` on a small tmpfs, filled by one tenant's sends. Sends are refused at the
//!   free-space reserve with the documented error (native `InsufficientStorage` 507, SQS
//!   `ServiceUnavailable` 503) while reads go on; nothing acknowledged is lost; once space
//!   returns the same process takes sends again by itself. Needs to mount a tmpfs (root, as the
//!   test command runs): a machine where that fails fails the test rather than skipping it.
//! - A tenant over its stored-bytes limit is refused sends (native `LimitExceeded`, SQS
//!   `OverLimit`) while another tenant's sends go on, and sends again once it has received and
//!   deleted its messages.

#![allow(clippy::disallowed_methods)] // a test of a real process in real time

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_client::sqs::SignOptions;
use strata_tests::{Api, DevProcess, model};

/// A tmpfs mounted for the test, unmounted when dropped (after the process using it stopped).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "tmpfs"])
            .arg(at)
            .status()?;
        anyhow::ensure!(status.success(), "mount -t tmpfs failed: this test needs to mount a tmpfs (root)");
        Ok(Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const BODY_BYTES: usize = 256 * 1024;

fn body(i: usize) -> String {
    format!("{i:06}-{}", "x".repeat(BODY_BYTES))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_at_the_reserve_loses_nothing_and_recovers_by_itself() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tmpfs = Tmpfs::mount(&dir.path().join("small"), 96)?;
    // Ballast on the same file system, freed later to give space back.
    let ballast = tmpfs.0.join("ballast");
    std::fs::write(&ballast, vec![1u8; 24 << 20])?;
    let dev = DevProcess::start(
        &tmpfs.0.join("dev"),
        &["--disk-reserve-mib", "16", "--cache-disk-mib", "4", "--cache-memory-mib", "8", "--segment-bytes", "4194304"],
    )?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("fill")).await?;

    // One tenant sends until the node refuses at its reserve.
    let mut acknowledged = BTreeSet::new();
    let refusal = loop {
        let i = acknowledged.len();
        anyhow::ensure!(i < 1_000, "96 MiB took 1,000 sends of 256 KiB without a refusal");
        let (status, answer) =
            api.post("/v1/queues/fill/messages", json!({ "messages": [{ "body": body(i) }] })).await?;
        match status {
            200 => {
                acknowledged.insert(format!("{i:06}"));
            }
            _ => break (status, answer),
        }
    };
    println!("{} sends of 256 KiB acknowledged before the refusal", acknowledged.len());
    assert_eq!(refusal.0, 507, "{}", refusal.1);
    assert_eq!(refusal.1["error"]["code"], "InsufficientStorage", "{}", refusal.1);
    assert!(acknowledged.len() > 20, "refused after only {} sends", acknowledged.len());
    // The SQS API says the same in its own shape (SDKs retry a 503), and reads go on.
    let send = json!({ "QueueUrl": "fill", "MessageBody": "over the reserve" });
    let (status, answer) = dev.sqs_call("SendMessage", None, &send, &SignOptions::default(), &[]).await?;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.to_string().contains("ServiceUnavailable"), "{answer}");
    api.get_queue("fill").await?;

    // Space returns: the same process takes sends again by itself.
    std::fs::remove_file(&ballast)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = acknowledged.len();
    loop {
        let (status, answer) =
            api.post("/v1/queues/fill/messages", json!({ "messages": [{ "body": body(after) }] })).await?;
        if status == 200 {
            acknowledged.insert(format!("{after:06}"));
            break;
        }
        assert_eq!(status, 507, "{answer}");
        assert!(Instant::now() < deadline, "sends still refused 30 s after space returned");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every acknowledged message is there, once.
    let mut received = BTreeSet::new();
    let mut empty_receives = 0;
    while empty_receives < 2 {
        let request =
            model::Receive { max_messages: Some(10), visibility_timeout_seconds: Some(600), ..Default::default() };
        let got = api.receive("fill", &request).await?;
        if got.messages.is_empty() {
            empty_receives += 1;
        }
        for message in got.messages {
            let id = message.body.split('-').next().unwrap_or_default().to_owned();
            assert!(received.insert(id.clone()), "{id} delivered twice");
        }
    }
    assert_eq!(received, acknowledged);
    drop(dev);
    Ok(())
}

/// Sends one message of `bytes` bytes to `queue`; answers the status and the answer.
async fn send_sized(api: &Api, queue: &str, i: usize, bytes: usize) -> anyhow::Result<(u16, Value)> {
    let body = format!("{i:06}-{}", "s".repeat(bytes - 7));
    Ok(api.post(&format!("/v1/queues/{queue}/messages"), json!({ "messages": [{ "body": body }] })).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_over_its_stored_bytes_limit_does_not_stop_another_tenants_sends() -> anyhow::Result<()> {
    const LIMIT_BYTES: u64 = 100_000;
    const MESSAGE_BYTES: usize = 10_000;
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(dir.path(), &[])?;
    // A stored-bytes limit takes format generation 4, which metadata raises after start.
    dev.wait_for_newest_formats().await?;
    let admin = dev.admin_api()?;
    let limit = json!({ "overrides": { "stored_bytes_max": LIMIT_BYTES } });
    let (status, answer) = admin.call(reqwest::Method::PUT, "/admin/v1/tenants/dev/limits", Some(limit)).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["effective"]["stored_bytes_max"], LIMIT_BYTES, "{answer}");
    // The other limits set later leave it as it was, and a plan carries one too.
    let (status, plan) = admin
        .call(reqwest::Method::PUT, "/admin/v1/limit-plans/small", Some(json!({ "stored_bytes_max": 5_000 })))
        .await?;
    assert_eq!(status, 200, "{plan}");
    let on_plan = json!({ "plan": "small", "overrides": {} });
    let (_, answer) = admin.call(reqwest::Method::PUT, "/admin/v1/tenants/planned/limits", Some(on_plan)).await?;
    assert_eq!(answer["effective"]["stored_bytes_max"], 5_000, "{answer}");

    let hog = dev.api();
    let neighbour = Api::new(&dev.endpoint, &dev.token_for("neighbour")?);
    hog.create_queue(&model::CreateQueue::named("hoard")).await?;
    neighbour.create_queue(&model::CreateQueue::named("hoard")).await?;

    // The hog sends until refused. The proxy sums a tenant's stored bytes every 2 s and counts
    // the sends it admits in between, so one at a time they stop at the limit (a slow sum that
    // times out lets a few more through).
    let mut acknowledged = BTreeSet::new();
    let started = Instant::now();
    let refusal = loop {
        let i = acknowledged.len();
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "never refused after {i} sends");
        match send_sized(&hog, "hoard", i, MESSAGE_BYTES).await? {
            (200, _) => {
                acknowledged.insert(format!("{i:06}"));
            }
            refused => break refused,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("{} sends of {MESSAGE_BYTES} bytes acknowledged before the refusal", acknowledged.len());
    assert_eq!(refusal.1["error"]["code"], "LimitExceeded", "{}", refusal.1);
    assert_eq!(refusal.0, 400, "{}", refusal.1);
    let limit_messages = (LIMIT_BYTES as usize).div_ceil(MESSAGE_BYTES);
    assert!(acknowledged.len() >= limit_messages, "refused under the limit after {} sends", acknowledged.len());
    assert!(
        acknowledged.len() <= limit_messages + 5,
        "{} sends passed a limit of {limit_messages}",
        acknowledged.len()
    );
    // The SQS API refuses in its own shape.
    let send = json!({ "QueueUrl": "hoard", "MessageBody": "over the limit" });
    let (status, answer) = dev.sqs_call("SendMessage", None, &send, &SignOptions::default(), &[]).await?;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.to_string().contains("OverLimit"), "{answer}");

    // Another tenant's sends go on.
    for i in 0..20 {
        let (status, answer) = send_sized(&neighbour, "hoard", i, MESSAGE_BYTES).await?;
        assert_eq!(status, 200, "the neighbour was refused: {answer}");
    }

    // The hog receives and deletes everything (reads go on over the limit): every acknowledged
    // message comes once, and then it may send again.
    let mut received = BTreeSet::new();
    loop {
        let request =
            model::Receive { max_messages: Some(10), visibility_timeout_seconds: Some(600), ..Default::default() };
        let got = hog.receive("hoard", &request).await?;
        if got.messages.is_empty() {
            break;
        }
        let receipt_handles = got.messages.iter().map(|m| m.receipt_handle.clone()).collect();
        hog.delete_messages("hoard", &model::DeleteMessages { receipt_handles }).await?;
        for message in got.messages {
            let id = message.body.split('-').next().unwrap_or_default().to_owned();
            assert!(received.insert(id.clone()), "{id} delivered twice");
        }
    }
    assert_eq!(received, acknowledged);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match send_sized(&hog, "hoard", 999_999, MESSAGE_BYTES).await? {
            (200, _) => break,
            (_, answer) => {
                assert_eq!(answer["error"]["code"], "LimitExceeded", "{answer}");
                assert!(Instant::now() < deadline, "still refused 30 s after the queue was emptied");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    drop(dev);
    Ok(())
}
