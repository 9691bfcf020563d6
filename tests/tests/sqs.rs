//! The SQS-compatible API of a real `strata dev`, driven by the real AWS CLI and boto3 with the
//! variables `strata dev` writes into `dev-credentials.env`, and compared with moto's SQS server.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use strata_client::sqs::SignOptions;
use strata_tests::{Api, DevProcess, run_ok, sqs_scripts_dir};

fn suite() -> String {
    sqs_scripts_dir().join("sqs_suite.py").display().to_string()
}

/// The query protocol (forms in, XML out), with botocore's own query serializer, signer and
/// parser (`tests/sqs/query_protocol.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_protocol_works_with_botocores_query_serializer_and_parser() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let script = sqs_scripts_dir().join("query_protocol.py");
    let out = run_ok(dev.command_with_credentials("python3")?.arg(script))?;
    assert!(!out.is_empty(), "the query-protocol script printed nothing");
    Ok(())
}

/// A FIFO group lock, the deduplication window and a delayed message survive `kill -9` and a
/// restart on the same directory (`tests/sqs/restart_check.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_locks_deduplication_and_delays_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let script = sqs_scripts_dir().join("restart_check.py");
    let state = dir.path().join("state.json");
    run_ok(dev.command_with_credentials("python3")?.arg(&script).arg("before").arg(&state))?;
    dev.restart()?;
    let out = run_ok(dev.command_with_credentials("python3")?.arg(&script).arg("after").arg(&state))?;
    assert!(out.contains("after: ok"), "{out}");
    Ok(())
}

/// Runs the AWS CLI; answers (exit code, stdout, stderr).
fn aws(dev: &DevProcess, args: &[&str], key: Option<(&str, &str)>) -> anyhow::Result<(i32, String, String)> {
    let mut command = dev.command_with_credentials("aws")?;
    command.arg("sqs").args(args);
    if let Some((id, secret)) = key {
        command.env("AWS_ACCESS_KEY_ID", id).env("AWS_SECRET_ACCESS_KEY", secret);
    }
    let output = command.output().context("running the aws CLI")?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn aws_json(dev: &DevProcess, args: &[&str]) -> anyhow::Result<Value> {
    let (code, stdout, stderr) = aws(dev, args, None)?;
    if code != 0 {
        bail!("aws sqs {args:?} exited {code}: {stderr}");
    }
    Ok(if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout)? })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_suite_passes_and_tenants_stay_apart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let out = run_ok(dev.command_with_credentials("python3")?.arg(suite()).arg("strata"))?;
    assert!(out.contains("all passed"), "{out}");

    // A key of another tenant, created through that tenant's native API.
    let alice = dev.api().with_token(&dev.token_for("alice")?);
    let key = alice.post_ok("/v1/access-keys", serde_json::json!({})).await?;
    let (id, secret) = (key["access_key_id"].as_str().unwrap_or(""), key["secret_access_key"].as_str().unwrap_or(""));
    assert!(id.starts_with("SK") && secret.len() == 40, "{key}");
    let out = run_ok(
        dev.command_with_credentials("python3")?
            .arg(suite())
            .arg("other-tenant")
            .env("OTHER_AWS_ACCESS_KEY_ID", id)
            .env("OTHER_AWS_SECRET_ACCESS_KEY", secret),
    )?;
    assert!(out.contains("all passed"), "{out}");
    Ok(())
}

/// Metering through boto3 (`tests/sqs/metering_check.py`): the `x-strata-customer` message
/// attribute names the sub-tenant, a batch naming two is refused and not billed, and two attempts
/// under one SDK invocation id are stored and billed once. The tenant's usage then holds exactly
/// the script's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_calls_are_billed_to_the_customer_attribute_and_once_per_sdk_invocation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let out = run_ok(dev.command_with_credentials("python3")?.arg(sqs_scripts_dir().join("metering_check.py")))?;
    assert!(out.contains("metering: ok"), "{out}");
    let expected: BTreeSet<(String, String, u64)> = [
        ("", "CreateQueue"),
        ("", "SendMessage"),
        ("", "GetQueueAttributes"),
        ("shop-9", "SendMessage"),
        ("shop-9", "SendMessageBatch"),
    ]
    .into_iter()
    .map(|(sub_tenant, action)| (sub_tenant.to_owned(), action.to_owned(), 1))
    .collect();
    let started = Instant::now();
    loop {
        let (status, usage) = dev.api().get("/v1/billing/usage?group_by=sub_tenant,action").await?;
        anyhow::ensure!(status == 200, "usage answered {status}: {usage}");
        let billed: BTreeSet<(String, String, u64)> = usage["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (text("sub_tenant"), text("action"), r["calls"].as_u64().unwrap_or(0))
            })
            .collect();
        if billed == expected || started.elapsed() > Duration::from_secs(30) {
            assert_eq!(billed, expected, "billed (sub-tenant, action, calls)");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_works_unchanged_and_keys_rotate_and_revoke() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;

    let created = aws_json(&dev, &["create-queue", "--queue-name", "cli-orders"])?;
    let url = created["QueueUrl"].as_str().context("QueueUrl")?.to_string();
    assert_eq!(url, format!("{}/dev/cli-orders", dev.endpoint));
    let listed = aws_json(&dev, &["list-queues"])?;
    assert_eq!(listed["QueueUrls"], serde_json::json!([url]));
    let sent = aws_json(&dev, &["send-message", "--queue-url", &url, "--message-body", "hello from the CLI"])?;
    // MD5 of the body, computed independently (hashlib).
    assert_eq!(sent["MD5OfMessageBody"], "59da6b08ceb7b6dcb24f80ac24fb822e");
    let got = aws_json(&dev, &["receive-message", "--queue-url", &url, "--wait-time-seconds", "5"])?;
    let message = &got["Messages"][0];
    assert_eq!(message["Body"], "hello from the CLI");
    let receipt = message["ReceiptHandle"].as_str().context("ReceiptHandle")?;
    aws_json(&dev, &["delete-message", "--queue-url", &url, "--receipt-handle", receipt])?;
    let attributes = aws_json(&dev, &["get-queue-attributes", "--queue-url", &url, "--attribute-names", "All"])?;
    assert_eq!(attributes["Attributes"]["ApproximateNumberOfMessages"], "0");
    assert_eq!(attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"], "0");

    let (code, _, stderr) = aws(&dev, &["get-queue-url", "--queue-name", "never-created"], None)?;
    assert_ne!(code, 0);
    assert!(stderr.contains("AWS.SimpleQueueService.NonExistentQueue"), "{stderr}");

    // Keys through the `strata keys` CLI: a new key works; rotation ends the old one at once
    // (grace 0); revocation ends the new one.
    let strata = |args: &[&str]| -> anyhow::Result<Value> {
        let out =
            run_ok(dev.command_with_credentials(&strata_tests::strata_binary().display().to_string())?.args(args))?;
        Ok(serde_json::from_str(&out)?)
    };
    let first = strata(&["keys", "create"])?;
    let first_key =
        (first["access_key_id"].as_str().context("id")?, first["secret_access_key"].as_str().context("secret")?);
    assert_eq!(aws(&dev, &["list-queues"], Some(first_key))?.0, 0);
    let second = strata(&["keys", "rotate", first_key.0])?;
    let second_key =
        (second["access_key_id"].as_str().context("id")?, second["secret_access_key"].as_str().context("secret")?);
    let (code, _, stderr) = aws(&dev, &["list-queues"], Some(first_key))?;
    assert!(code != 0 && stderr.contains("InvalidClientTokenId"), "rotated-out key: {stderr}");
    assert_eq!(aws(&dev, &["list-queues"], Some(second_key))?.0, 0);
    let listed = strata(&["keys", "list"])?;
    let statuses: BTreeMap<String, String> = listed["access_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            (k["access_key_id"].as_str().unwrap_or("").to_string(), k["status"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(statuses.get(first_key.0).map(String::as_str), Some("revoked"));
    assert_eq!(statuses.get(second_key.0).map(String::as_str), Some("active"));
    assert!(!listed.to_string().contains(second_key.1), "listing must not show secrets");
    strata(&["keys", "revoke", second_key.0])?;
    let (code, _, stderr) = aws(&dev, &["list-queues"], Some(second_key))?;
    assert!(code != 0 && stderr.contains("InvalidClientTokenId"), "revoked key: {stderr}");
    // The dev key is untouched.
    assert_eq!(aws(&dev, &["list-queues"], None)?.0, 0);

    // An operator creates a key for another tenant through the admin API; that key sees only
    // its own tenant's (empty) queue list.
    let carol = strata(&["keys", "create", "--tenant", "carol"])?;
    let carol_key =
        (carol["access_key_id"].as_str().context("id")?, carol["secret_access_key"].as_str().context("secret")?);
    let (code, stdout, stderr) = aws(&dev, &["list-queues"], Some(carol_key))?;
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("cli-orders"), "carol must not see dev's queues: {stdout}");
    let listed = strata(&["keys", "list", "--tenant", "carol"])?;
    assert_eq!(listed["access_keys"].as_array().map(Vec::len), Some(1));
    // Each API takes only its own audience's tokens.
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let (admin_endpoint, admin_token) = (&env["STRATA_ADMIN_ENDPOINT"], &env["STRATA_ADMIN_TOKEN"]);
    let (tenant_on_admin, _) = Api::new(admin_endpoint, &dev.token).get("/admin/v1/tenants/dev/access-keys").await?;
    assert_eq!(tenant_on_admin, 401);
    let (admin_on_tenant, _) = Api::new(&dev.endpoint, admin_token).get("/v1/access-keys").await?;
    assert_eq!(admin_on_tenant, 401);
    Ok(())
}

/// moto's SQS server as a child process, killed on drop.
struct MotoServer {
    child: Child,
    endpoint: String,
}

impl MotoServer {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server (pip install 'moto[server]')")?;
        let server = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One boto3 scenario against moto and against Strata: every observation must agree, except the
/// differences listed (with their reasons) in `tests/sqs/moto_differences.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_against_moto() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let moto = MotoServer::start()?;
    let moto_record = dir.path().join("moto.json");
    // moto fails some of the scenario's checks (the listed differences): its exit code is not
    // the point, its record is.
    let output = Command::new("python3")
        .arg(suite())
        .args(["moto", "--record"])
        .arg(&moto_record)
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()?;
    let moto_out = String::from_utf8_lossy(&output.stdout);

    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let strata_record = dir.path().join("strata.json");
    run_ok(dev.command_with_credentials("python3")?.arg(suite()).args(["strata", "--record"]).arg(&strata_record))?;

    let moto: BTreeMap<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(&moto_record).with_context(|| format!("moto run:\n{moto_out}"))?,
    )?;
    let strata: BTreeMap<String, Value> = serde_json::from_str(&std::fs::read_to_string(&strata_record)?)?;
    let allowed: BTreeMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(sqs_scripts_dir().join("moto_differences.json"))?)?;
    assert!(strata.len() >= 25, "the scenario recorded too little: {strata:?}");
    let mut unexpected = Vec::new();
    let mut differing = Vec::new();
    for key in strata.keys().chain(moto.keys()) {
        if strata.get(key) != moto.get(key) && !differing.contains(key) {
            differing.push(key.clone());
            if !allowed.contains_key(key) {
                unexpected.push(format!("{key}: strata={:?} moto={:?}", strata.get(key), moto.get(key)));
            }
        }
    }
    assert!(unexpected.is_empty(), "differences not listed in moto_differences.json:\n{}", unexpected.join("\n"));
    // Every listed difference is still real, so the list does not rot.
    for key in allowed.keys().filter(|k| !k.starts_with('_')) {
        assert!(differing.contains(key), "'{key}' is listed as a difference but both now agree; remove it");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_urls_in_every_sdk_form_and_create_of_an_existing_queue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let sign = SignOptions::default();
    let call = |action: &'static str, body: serde_json::Value| {
        let (dev, sign) = (&dev, &sign);
        async move { dev.sqs_call(action, None, &body, sign, &[]).await }
    };
    let (status, created) =
        call("CreateQueue", json!({ "QueueName": "forms", "Attributes": { "VisibilityTimeout": "45" } })).await?;
    assert_eq!(status, 200, "{created}");
    // A create naming no attributes gets the existing queue's URL; one naming other values fails.
    let (status, again) = call("CreateQueue", json!({ "QueueName": "forms" })).await?;
    assert_eq!((status, &again["QueueUrl"]), (200, &created["QueueUrl"]), "{again}");
    let (status, conflict) =
        call("CreateQueue", json!({ "QueueName": "forms", "Attributes": { "VisibilityTimeout": "46" } })).await?;
    assert_eq!((status, conflict["__type"].as_str()), (400, Some("com.amazonaws.sqs#QueueNameExists")), "{conflict}");

    let attributes = |url: &str| json!({ "QueueUrl": url, "AttributeNames": ["VisibilityTimeout"] });
    for url in ["http://sqs.elsewhere.example:443/dev/forms", "/dev/forms", "forms"] {
        let (status, answer) = call("GetQueueAttributes", attributes(url)).await?;
        assert_eq!((status, answer["Attributes"]["VisibilityTimeout"].as_str()), (200, Some("45")), "{url}: {answer}");
    }
    for url in ["http://127.0.0.1:1/", "http://127.0.0.1:1/dev/", "/other-tenant/forms", "missing"] {
        let (status, answer) = call("GetQueueAttributes", attributes(url)).await?;
        let code = answer["__type"].as_str();
        assert_eq!((status, code), (400, Some("com.amazonaws.sqs#QueueDoesNotExist")), "{url}: {answer}");
    }
    Ok(())
}
