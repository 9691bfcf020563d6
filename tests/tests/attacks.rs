//! Attacks on a real `strata dev`, as a stranger on the network would try them: each must be
//! refused, and nothing acknowledged before may be lost or taken.

#![allow(clippy::disallowed_methods)] // a test of real processes in real time

use std::collections::BTreeMap;

use serde_json::{Value, json};
use strata_client::sqs::{SignOptions, SqsSigner};
use strata_common::{Clock, SystemClock};
use strata_tests::{DevProcess, model};

/// Sends a signed JSON-protocol call, as `options` sign it; answers the status and body.
async fn sqs_call(
    dev: &DevProcess,
    action: &str,
    sent_as: Option<&str>,
    body: &Value,
    options: &SignOptions,
) -> anyhow::Result<(u16, Value)> {
    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let signer = SqsSigner::new(&env["AWS_DEFAULT_REGION"], &env["AWS_ACCESS_KEY_ID"], &env["AWS_SECRET_ACCESS_KEY"]);
    let url = format!("{}/", dev.endpoint);
    let bytes = serde_json::to_vec(body)?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(SystemClock.now_ms());
    let mut request = reqwest::Client::new().post(&url).body(bytes.clone());
    for (name, value) in signer.json_call_headers(&url, action, &bytes, at, options)? {
        // The captured request, replayed with another action in its (unsigned) target header.
        let value = match (name.as_str(), sent_as) {
            ("x-amz-target", Some(other)) => format!("AmazonSQS.{other}"),
            _ => value,
        };
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

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
    let (status, answer) = sqs_call(&dev, "GetQueueAttributes", None, &get_attributes, &SignOptions::default()).await?;
    assert_eq!(status, 200, "{answer}");

    // A signature that leaves X-Amz-Target out, replayed as ReceiveMessage.
    let unsigned_target = SignOptions { unsigned_headers: vec!["x-amz-target"], ..Default::default() };
    let receive = json!({ "QueueUrl": queue_url });
    let (status, answer) =
        sqs_call(&dev, "GetQueueAttributes", Some("ReceiveMessage"), &receive, &unsigned_target).await?;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("com.amazonaws.sqs#IncompleteSignature")), "{answer}");

    // UNSIGNED-PAYLOAD: the body (the whole input of a JSON call) would be nobody's.
    let unsigned_body = SignOptions { unsigned_payload: true, ..Default::default() };
    let (status, answer) = sqs_call(&dev, "ReceiveMessage", None, &receive, &unsigned_body).await?;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("com.amazonaws.sqs#IncompleteSignature")), "{answer}");

    // Nothing was taken: the message is still visible.
    let queue = api.get_queue("loot").await?;
    assert_eq!(queue.approximate_number_of_messages, Some(1));
    Ok(())
}
