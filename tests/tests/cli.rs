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

/// The CLI as a new user meets it: FIFO queues by name, bodies from standard input, purge, tags,
/// dead-letter settings, a missing environment that says which file to source, and billing
/// found through its own endpoint.
#[test]
fn fifo_purge_tags_stdin_bodies_and_missing_settings() -> anyhow::Result<()> {
    use std::io::Write;
    use std::process::Stdio;

    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let ok = |args: &[&str]| -> anyhow::Result<String> {
        let output = strata(&dev, args);
        anyhow::ensure!(output.status.success(), "strata {args:?}: {}", stderr(&output));
        Ok(stdout(&output))
    };

    let created: Value = serde_json::from_str(&ok(&["queue", "create", "cli.fifo", "--tag", "team=a"])?)?;
    assert_eq!(created["attributes"]["fifo"], Value::from(true));
    assert_eq!(created["tags"]["team"], Value::from("a"));

    let mut send = Command::new(strata_binary())
        .args(["send", "cli.fifo", "--body-file", "-", "--group-id", "g", "--deduplication-id", "d1"])
        .env("STRATA_ENDPOINT", &dev.endpoint)
        .env("STRATA_TOKEN", &dev.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    send.stdin.take().expect("stdin").write_all("line one\nline two\n".as_bytes())?;
    let sent = send.wait_with_output()?;
    assert!(sent.status.success(), "{}", stderr(&sent));
    let without_group = strata(&dev, &["send", "cli.fifo", "x"]);
    assert!(!without_group.status.success());
    assert!(stderr(&without_group).contains("group id"), "{}", stderr(&without_group));

    let received: Value = serde_json::from_str(ok(&["receive", "cli.fifo", "--wait", "1"])?.trim())?;
    assert_eq!(received["body"], Value::from("line one\nline two\n"));
    assert_eq!(received["group_id"], Value::from("g"));

    ok(&["queue", "purge", "cli.fifo"])?;
    let attributes: Value = serde_json::from_str(&ok(&["queue", "attributes", "cli.fifo"])?)?;
    assert_eq!(attributes["approximate_number_of_messages_not_visible"], Value::from(0));

    let tags: Value =
        serde_json::from_str(&ok(&["queue", "tags", "cli.fifo", "--tag", "env=dev", "--untag", "team"])?)?;
    assert_eq!(tags["tags"], serde_json::json!({ "env": "dev" }));

    ok(&["queue", "create", "cli-dlq"])?;
    ok(&["queue", "create", "cli-work"])?;
    let updated: Value = serde_json::from_str(&ok(&[
        "queue",
        "update",
        "cli-work",
        "--dead-letter-queue",
        "cli-dlq",
        "--max-receive-count",
        "3",
    ])?)?;
    assert_eq!(updated["attributes"]["dead_letter"]["queue"], Value::from("cli-dlq"));
    assert_eq!(ok(&["queue", "dead-letter-sources", "cli-dlq"])?.trim(), "cli-work");

    // Without the environment `strata dev` writes, the error names the file to source.
    let home = dir.path().join("home");
    let unset = Command::new(strata_binary()).args(["queue", "list"]).env_clear().env("HOME", &home).output()?;
    assert!(!unset.status.success());
    let message = stderr(&unset);
    assert!(message.contains("STRATA_ENDPOINT is not set"), "{message}");
    assert!(message.contains(&format!("{}", home.join(".strata/dev/dev-credentials.env").display())), "{message}");

    // Billing through STRATA_BILLING_ENDPOINT when it is set (here the only endpoint that works).
    let invoice = Command::new(strata_binary())
        .args(["invoice", "--json"])
        .env("STRATA_ENDPOINT", "http://127.0.0.1:9")
        .env("STRATA_BILLING_ENDPOINT", &dev.endpoint)
        .env("STRATA_TOKEN", &dev.token)
        .output()?;
    assert!(invoice.status.success(), "{}", stderr(&invoice));
    let invoice: Value = serde_json::from_str(&stdout(&invoice))?;
    assert!(invoice["total"].as_str().is_some_and(|t| t.contains('.')), "money in currency units: {invoice}");
    Ok(())
}
