//! The user CLI against a real `strata dev`: JSON output, exit codes, error messages.

use std::process::{Command, Output};

use serde_json::Value;
use strata_tests::{DevProcess, strata_binary};

fn strata(dev: &DevProcess, args: &[&str]) -> Output {
    Command::new(strata_binary())
        .args(args)
        .env("STRATA_ENDPOINT", &dev.endpoint)
        .env("STRATA_TOKEN", &dev.token)
        .output()
        .expect("run the strata CLI")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn queue_send_receive_delete_round_trip_and_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;

    let created = strata(&dev, &["queue", "create", "cli-q", "--visibility-timeout-seconds", "60"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let listed = strata(&dev, &["queue", "list"]);
    assert_eq!(stdout(&listed).trim(), "cli-q");
    for body in ["one", "two"] {
        let sent = strata(&dev, &["send", "cli-q", body]);
        assert!(sent.status.success(), "{}", stderr(&sent));
    }

    let received = strata(&dev, &["receive", "cli-q", "--max", "10", "--wait", "1"]);
    assert!(received.status.success(), "{}", stderr(&received));
    let messages: Vec<Value> = stdout(&received).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let bodies: Vec<&str> = messages.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, ["one", "two"]);
    for m in &messages {
        assert!(m["message_id"].is_string() && m["receipt_handle"].is_string());
        let receipt = m["receipt_handle"].as_str().unwrap_or_default();
        let deleted = strata(&dev, &["delete", "cli-q", receipt]);
        assert!(deleted.status.success(), "{}", stderr(&deleted));
    }
    let attributes = strata(&dev, &["queue", "attributes", "cli-q"]);
    let attributes: Value = serde_json::from_str(&stdout(&attributes))?;
    assert_eq!(attributes["approximate_number_of_messages"], Value::from(0));
    assert_eq!(attributes["approximate_number_of_messages_not_visible"], Value::from(0));

    let missing = strata(&dev, &["receive", "no-such-queue"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("QueueNotFound"), "{}", stderr(&missing));
    let bad_receipt = strata(&dev, &["delete", "cli-q", "not-a-receipt"]);
    assert!(!bad_receipt.status.success());
    assert!(stderr(&bad_receipt).contains("InvalidReceipt"), "{}", stderr(&bad_receipt));

    let deleted = strata(&dev, &["queue", "delete", "cli-q"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = strata(&dev, &["queue", "attributes", "cli-q"]);
    assert!(!gone.status.success());

    let unauthenticated = Command::new(strata_binary())
        .args(["queue", "list"])
        .env("STRATA_ENDPOINT", &dev.endpoint)
        .env("STRATA_TOKEN", "expired-or-bogus")
        .output()?;
    assert!(!unauthenticated.status.success());
    assert!(stderr(&unauthenticated).contains("Unauthenticated"), "{}", stderr(&unauthenticated));
    Ok(())
}
