//! Attacks on a real `strata dev`, as a stranger on the network would try them: each must be
//! refused, and nothing acknowledged before may be lost or taken.

#![allow(clippy::disallowed_methods)] // a test of real processes in real time

use serde_json::json;
use strata_client::sqs::SignOptions;
use strata_tests::{DevProcess, model};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_signatures_must_cover_the_action_and_the_body() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("loot")).await?;
    api.send("loot", &model::SendMessages { messages: vec![model::NewMessage::new("secret")] }, None).await?;
    let queue_url = format!("{}/dev/loot", dev.endpoint);
    let get_attributes = json!({ "QueueUrl": queue_url, "AttributeNames": ["All"] });

    // Signed as an SDK signs, the call works: the refusals below are the checks, not the fixture.
    let (status, answer) =
        dev.sqs_call("GetQueueAttributes", None, &get_attributes, &SignOptions::default(), &[]).await?;
    assert_eq!(status, 200, "{answer}");

    // A signature that leaves X-Amz-Target out, replayed as ReceiveMessage.
    let unsigned_target = SignOptions { unsigned_headers: vec!["x-amz-target"], ..Default::default() };
    let receive = json!({ "QueueUrl": queue_url });
    let (status, answer) =
        dev.sqs_call("GetQueueAttributes", Some("ReceiveMessage"), &receive, &unsigned_target, &[]).await?;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("com.amazonaws.sqs#IncompleteSignature")), "{answer}");

    // UNSIGNED-PAYLOAD: the body (the whole input of a JSON call) would be nobody's.
    let unsigned_body = SignOptions { unsigned_payload: true, ..Default::default() };
    let (status, answer) = dev.sqs_call("ReceiveMessage", None, &receive, &unsigned_body, &[]).await?;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("com.amazonaws.sqs#IncompleteSignature")), "{answer}");

    // Nothing was taken: the message is still visible.
    let queue = api.get_queue("loot").await?;
    assert_eq!(queue.approximate_number_of_messages, Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_for_another_request_stores_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("payments")).await?;
    dev.wait_for_newest_formats().await?;
    let queue_url = format!("{}/dev/payments", dev.endpoint);
    let invocation = [("amz-sdk-invocation-id", "0f7d3b2a-1c9e-4e55-9a51-7d2c6b1e8f40")];
    let send = |body: &str| json!({ "QueueUrl": queue_url, "MessageBody": body });
    let options = SignOptions::default();

    let (status, first) = dev.sqs_call("SendMessage", None, &send("pay 10"), &options, &invocation).await?;
    assert_eq!(status, 200, "{first}");
    // An SDK's retry of the same call: the first answer, stored once.
    let (status, retry) = dev.sqs_call("SendMessage", None, &send("pay 10"), &options, &invocation).await?;
    assert_eq!((status, &retry["MessageId"]), (200, &first["MessageId"]), "{retry}");
    // The same invocation id for another message: refused, nothing stored.
    let (status, other) = dev.sqs_call("SendMessage", None, &send("pay 9999"), &options, &invocation).await?;
    assert_eq!((status, other["__type"].as_str()), (400, Some("com.amazonaws.sqs#InvalidParameterValue")), "{other}");

    // The same through the native API's request id.
    let with_id = api.with_header("x-strata-request-id", "pay-run-7");
    let batch = |body: &str| model::SendMessages { messages: vec![model::NewMessage::new(body)] };
    with_id.send("payments", &batch("pay 20"), None).await?;
    let conflict = with_id.send("payments", &batch("pay 2000"), None).await.expect_err("a conflict");
    assert_eq!(conflict.code(), Some("IdempotencyConflict"), "{conflict}");

    let queue = api.get_queue("payments").await?;
    assert_eq!(queue.approximate_number_of_messages, Some(2), "only the first of each id is stored");
    Ok(())
}

/// Every file and directory under `root`, with its mode bits.
fn modes(root: &std::path::Path) -> anyhow::Result<Vec<(std::path::PathBuf, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        out.push((dir.clone(), std::fs::metadata(&dir)?.permissions().mode() & 0o777));
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.permissions().mode() & 0o777));
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_the_data_directory_is_open_to_other_users() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("private")).await?;
    api.send("private", &model::SendMessages { messages: vec![model::NewMessage::new("a body")] }, None).await?;
    api.create_access_key(strata_client::KeyOwner::Caller).await?;
    // A restart writes snapshots, credentials and keys again.
    dev.restart()?;
    dev.api().get_queue("private").await?;
    let modes = modes(&dev.data_dir)?;
    assert!(modes.len() > 10, "{modes:?}");
    let open: Vec<_> = modes.iter().filter(|(_, mode)| mode & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    Ok(())
}

/// Whether the server has closed `stream` (a read answers end of file or an error, not data).
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (to a request cut short): the connection closes after it.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_closed_while_calls_go_on() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir()?;
    let args = ["--connections-per-ip-max", "20", "--header-read-timeout-ms", "1000", "--body-read-timeout-ms", "1000"];
    let dev = DevProcess::start(&dir.path().join("dev"), &args)?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("calm")).await?;
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", dev.port).parse()?;
    // The stranger comes from another loopback address than the tenant's client.
    let connect = || async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        anyhow::Ok(socket.connect(server).await?)
    };
    let mut idle = Vec::new();
    for _ in 0..25 {
        idle.push(connect().await?);
    }
    // The 5 beyond the per-address cap are closed at once; the tenant is not affected.
    let mut closed_at_once = 0;
    for stream in idle.iter_mut().skip(20) {
        closed_at_once += usize::from(closed_by_server(stream, std::time::Duration::from_secs(5)).await);
    }
    assert_eq!(closed_at_once, 5);
    api.send("calm", &model::SendMessages { messages: vec![model::NewMessage::new("still served")] }, None).await?;

    // A client that sends half a body and stops is cut off.
    let mut slow = connect().await?;
    let head = format!(
        "POST /v1/queues/calm/messages HTTP/1.1\r\nhost: {server}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"messages\": [",
        dev.token
    );
    slow.write_all(head.as_bytes()).await?;
    assert!(closed_by_server(&mut slow, std::time::Duration::from_secs(10)).await, "a stalled body is cut off");

    // A kept-alive connection that goes quiet after a call is closed too.
    let mut kept_alive = connect().await?;
    kept_alive.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {server}\r\n\r\n").as_bytes()).await?;
    assert!(closed_by_server(&mut kept_alive, std::time::Duration::from_secs(10)).await, "an idle keep-alive stays");

    // The idle ones are closed by the header timeout, while calls go on.
    for stream in idle.iter_mut().take(20) {
        assert!(closed_by_server(stream, std::time::Duration::from_secs(10)).await, "an idle connection stays open");
    }
    let queue = api.get_queue("calm").await?;
    assert_eq!(queue.approximate_number_of_messages, Some(1));
    Ok(())
}

/// The status line of the answer to `head` (a request head announcing a body that never comes).
async fn answer_before_the_body(server: std::net::SocketAddr, head: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    stream.write_all(head.as_bytes()).await?;
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buffer)).await??;
    let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned() + "\n" + &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_request_without_a_live_key_is_refused_before_its_body() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", dev.port).parse()?;
    // 16 MB announced, none sent: the answer comes without waiting for it.
    let unsigned = format!(
        "POST / HTTP/1.1\r\nhost: {server}\r\nx-amz-target: AmazonSQS.SendMessage\r\n\
         content-type: application/x-amz-json-1.0\r\ncontent-length: 16000000\r\n\r\n"
    );
    let answer = answer_before_the_body(server, &unsigned).await?;
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("MissingAuthenticationToken"), "{answer}");
    let unknown_key = format!(
        "POST / HTTP/1.1\r\nhost: {server}\r\nx-amz-target: AmazonSQS.SendMessage\r\n\
         content-type: application/x-amz-json-1.0\r\nx-amz-date: 20261206T120000Z\r\n\
         authorization: AWS4-HMAC-SHA256 Credential=SKNOSUCHKEY000000000/20261206/us-east-1/sqs/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={}\r\n\
         content-length: 16000000\r\n\r\n",
        "0".repeat(64)
    );
    let answer = answer_before_the_body(server, &unknown_key).await?;
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("InvalidClientTokenId"), "{answer}");
    Ok(())
}

/// Opens a connection, sends `head` (announcing 16,000,000 bytes) and up to 15.9 MiB of body as
/// long as the server reads it, and answers the connection, still open.
async fn hold_a_body(server: std::net::SocketAddr, head: String) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..15 {
        match tokio::time::timeout(std::time::Duration::from_secs(2), stream.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            // The server stopped reading (or closed): hold what is there.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_unauthenticated_bodies_do_not_grow_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("calm")).await?;
    let before_kib = dev.rss_kib()?;
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", dev.port).parse()?;
    let sqs = format!(
        "POST / HTTP/1.1\r\nhost: {server}\r\nx-amz-target: AmazonSQS.SendMessage\r\n\
         content-type: application/x-amz-json-1.0\r\ncontent-length: 16000000\r\n\r\n"
    );
    let native = format!(
        "POST /v1/queues/calm/messages HTTP/1.1\r\nhost: {server}\r\n\
         content-type: application/json\r\ncontent-length: 16000000\r\n\r\n"
    );
    // 48 strangers, half on each API, each holding a 16 MB body open.
    let holders =
        (0..48).map(|i| tokio::spawn(hold_a_body(server, if i % 2 == 0 { sqs.clone() } else { native.clone() })));
    let mut held = Vec::new();
    for holder in holders {
        held.push(holder.await??);
    }
    let grown_kib = dev.rss_kib()?.saturating_sub(before_kib);
    // Calls go on meanwhile.
    api.send("calm", &model::SendMessages { messages: vec![model::NewMessage::new("still served")] }, None).await?;
    assert!(grown_kib < 64 * 1024, "48 held bodies grew the server by {grown_kib} KiB");
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_long_polls_cannot_take_the_proxy_from_the_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &["--tenant-receives-max", "4"])?;
    let greedy = dev.api();
    greedy.create_queue(&model::CreateQueue::named("empty")).await?;
    let other = strata_tests::Api::new(&dev.endpoint, &dev.token_for("other")?);
    other.create_queue(&model::CreateQueue::named("work")).await?;

    // Four long polls of 5 s on an empty queue hold all of the tenant's receives.
    let poll = || {
        let api = greedy.clone();
        tokio::spawn(async move { api.post("/v1/queues/empty/receive", json!({ "wait_seconds": 5 })).await })
    };
    let polls: Vec<_> = (0..4).map(|_| poll()).collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // A fifth is refused at once, on the native API and in the SQS API's shape.
    let started = std::time::Instant::now();
    let (status, refusal) = greedy.post("/v1/queues/empty/receive", json!({ "wait_seconds": 5 })).await?;
    assert_eq!((status, refusal["error"]["code"].as_str()), (429, Some("Throttled")), "{refusal}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused only after {:?}", started.elapsed());
    let receive = json!({ "QueueUrl": "empty", "WaitTimeSeconds": 5 });
    let (status, refusal) = dev.sqs_call("ReceiveMessage", None, &receive, &SignOptions::default(), &[]).await?;
    assert_eq!(status, 400, "{refusal}");
    assert!(refusal.to_string().contains("RequestThrottled"), "{refusal}");

    // Meanwhile the tenant's other calls, and another tenant's receives, go on.
    let body = |b: &str| model::SendMessages { messages: vec![model::NewMessage::new(b)] };
    greedy.send("empty", &body("a send of the greedy tenant"), None).await?;
    other.send("work", &body("another tenant's message"), None).await?;
    let got = other.receive("work", &model::Receive::default()).await?;
    assert_eq!(got.messages.len(), 1);

    // The long polls end (one with the message sent meanwhile); the slots come back.
    for poll in polls {
        poll.await??;
    }
    let (status, _) = greedy.post("/v1/queues/empty/receive", json!({ "wait_seconds": 0 })).await?;
    assert_eq!(status, 200);
    Ok(())
}

/// Every file under `root` that holds `needle`.
fn files_holding(root: &std::path::Path, needle: &[u8]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle)?);
        } else if std::fs::read(&path)?.windows(needle.len()).any(|w| w == needle) {
            found.push(path);
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_key_secrets_are_sealed_in_every_file_and_still_verify_signatures() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    dev.wait_for_newest_formats().await?;
    let key = dev.api().create_access_key(strata_client::KeyOwner::Caller).await?;
    let (id, secret_text) = (key.access_key_id, key.secret_access_key.expect("a new key's secret"));
    let list = json!({});
    let (status, answer) = dev.sqs_call_as((&id, &secret_text), "ListQueues", &list).await?;
    assert_eq!(status, 200, "{answer}");
    // Written to the log, then to snapshots and files again on restart: nowhere in clear.
    dev.restart()?;
    let (status, answer) = dev.sqs_call_as((&id, &secret_text), "ListQueues", &list).await?;
    assert_eq!(status, 200, "{answer}");
    let holding = files_holding(&dev.data_dir, secret_text.as_bytes())?;
    assert!(holding.is_empty(), "the secret is in clear in {holding:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_stored_in_clear_before_sealing_is_sealed_in_place_and_still_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    // The dev key is made at first start, before metadata raises the format generation: in clear.
    let env: std::collections::BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let secret = env["AWS_SECRET_ACCESS_KEY"].clone();
    dev.wait_for_newest_formats().await?;
    // The leader seals it in place and snapshots the catalog: the snapshot holds it no more.
    let metadata_dir = dev.data_dir.join("metadata");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let snapshots = files_named(&metadata_dir, "snapshot")?;
        let holding: Vec<_> = snapshots
            .iter()
            .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes())))
            .collect();
        if !snapshots.is_empty() && holding.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshots {snapshots:?}, holding the secret in clear: {holding:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // The sealed secret still verifies signatures, after a restart too.
    let (status, answer) = dev.sqs_call("ListQueues", None, &json!({}), &SignOptions::default(), &[]).await?;
    assert_eq!(status, 200, "{answer}");
    dev.restart()?;
    let (status, answer) = dev.sqs_call("ListQueues", None, &json!({}), &SignOptions::default(), &[]).await?;
    assert_eq!(status, 200, "{answer}");
    Ok(())
}

/// Every file named `name` under `root`.
fn files_named(root: &std::path::Path, name: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files_named(&path, name)?);
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    Ok(found)
}
