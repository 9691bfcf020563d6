//! Traces over OTLP, checked with a real receiver (`otlp-receiver`, its own process): a traced
//! send is one trace across the API call, the storage node's gRPC call and the Raft commit; the
//! message keeps its send's trace header (SQS's `AWSTraceHeader`), and the receive's span links
//! to the send's.

#![allow(clippy::disallowed_methods)] // a test waits in real time

use std::time::Duration;

use serde_json::{Value, json};
use strata_client::sqs::SignOptions;
use strata_tests::DevProcess;
use strata_tests::otlp::OtlpReceiver;

/// How long spans may take to arrive (the batch exporter sends every 100 ms here).
const EXPORTED_WITHIN: Duration = Duration::from_secs(20);

/// The W3C `traceparent` of a sampled client span.
fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

fn named<'a>(spans: &'a [Value], trace_id: &str, name: &str) -> Option<&'a Value> {
    spans.iter().find(|s| s["trace_id"] == trace_id && s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_send_is_one_trace_to_the_raft_commit_and_its_receive_links_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver =
        OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp-receiver").as_ref(), &dir.path().join("otlp")).expect("receiver");
    // No call is traced but those a client samples.
    let dev = DevProcess::start_with_env(&dir.path().join("dev"), &[], &receiver.env()).expect("strata dev");
    // Messages keep trace headers once every replica reads them (format generation 7).
    dev.wait_for_newest_formats().await.expect("newest formats");
    let sqs = |action: &'static str, body: Value, extra: Vec<(&'static str, String)>| {
        let dev = &dev;
        async move {
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            dev.sqs_call(action, None, &body, &SignOptions::default(), &extra).await.expect(action)
        }
    };
    let (status, created) = sqs("CreateQueue", json!({ "QueueName": "traced" }), vec![]).await;
    assert_eq!(status, 200, "{created}");
    let queue_url = created["QueueUrl"].as_str().expect("QueueUrl").to_owned();

    // Untraced, and never sampled here: nothing is exported for it.
    let (status, _) = sqs("SendMessage", json!({ "QueueUrl": queue_url, "MessageBody": "untraced" }), vec![]).await;
    assert_eq!(status, 200);
    let (status, untraced) = sqs(
        "ReceiveMessage",
        json!({ "QueueUrl": queue_url, "MessageSystemAttributeNames": ["All"], "WaitTimeSeconds": 2 }),
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{untraced}");
    let message = &untraced["Messages"][0];
    assert_eq!(message["Body"], "untraced");
    assert!(message["Attributes"].get("AWSTraceHeader").is_none(), "an untraced send keeps no trace header: {message}");
    let (status, _) =
        sqs("DeleteMessage", json!({ "QueueUrl": queue_url, "ReceiptHandle": message["ReceiptHandle"] }), vec![]).await;
    assert_eq!(status, 200);

    let send_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let (status, sent) = sqs(
        "SendMessage",
        json!({ "QueueUrl": queue_url, "MessageBody": "traced" }),
        vec![("traceparent", traceparent(send_trace, client_span))],
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let receive_trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, received) = sqs(
        "ReceiveMessage",
        json!({ "QueueUrl": queue_url, "MessageSystemAttributeNames": ["AWSTraceHeader"], "WaitTimeSeconds": 2 }),
        vec![("traceparent", traceparent(receive_trace, "b7ad6b7169203331"))],
    )
    .await;
    assert_eq!(status, 200, "{received}");
    let message = &received["Messages"][0];
    assert_eq!(message["Body"], "traced");

    let spans = receiver
        .wait_for("the send's and the receive's spans", EXPORTED_WITHIN, |spans| {
            named(spans, send_trace, "raft commit").is_some() && named(spans, receive_trace, "ReceiveMessage").is_some()
        })
        .await
        .expect("spans");
    for span in &spans {
        assert!(
            span["trace_id"] == send_trace || span["trace_id"] == receive_trace,
            "a span of a trace no client sampled was exported: {span}"
        );
        assert_eq!(span["service"], "strata-dev", "{span}");
    }
    let call = named(&spans, send_trace, "SendMessage").expect("the send's API call span");
    assert_eq!(call["parent_span_id"], client_span, "the API call continues the client's trace: {call}");
    let storage = named(&spans, send_trace, "/strata.v1.Storage/Send").expect("the storage node's span");
    assert_eq!(storage["parent_span_id"], call["span_id"], "{storage}");
    let commit = named(&spans, send_trace, "raft commit").expect("the Raft commit's span");
    assert_eq!(commit["parent_span_id"], storage["span_id"], "{commit}");

    // The message keeps its send's trace context, and the receive links to the send.
    let send_span = call["span_id"].as_str().expect("span id");
    let expected_header = format!("Root=1-{}-{};Parent={send_span};Sampled=1", &send_trace[..8], &send_trace[8..]);
    assert_eq!(message["Attributes"]["AWSTraceHeader"], expected_header.as_str(), "{message}");
    let receive = named(&spans, receive_trace, "ReceiveMessage").expect("the receive's span");
    assert_eq!(receive["links"], json!([{ "trace_id": send_trace, "span_id": send_span }]), "{receive}");

    // The native API the same way: a traced send's message carries its trace header, and every
    // call is answered with its request id.
    let native_trace = "11112222333344445555666677778888";
    let client = reqwest::Client::new();
    let sent = client
        .post(format!("{}/v1/queues/traced/messages", dev.endpoint))
        .bearer_auth(&dev.token)
        .header("traceparent", traceparent(native_trace, client_span))
        .json(&json!({ "messages": [{ "body": "native" }] }))
        .send()
        .await
        .expect("native send");
    assert_eq!(sent.status(), 200);
    assert!(sent.headers().contains_key("x-strata-request-id"), "{:?}", sent.headers());
    let received: Value = client
        .post(format!("{}/v1/queues/traced/receive", dev.endpoint))
        .bearer_auth(&dev.token)
        .json(&json!({ "wait_seconds": 2 }))
        .send()
        .await
        .expect("native receive")
        .json()
        .await
        .expect("JSON");
    let header = received["messages"][0]["trace_header"].as_str().unwrap_or_default().to_owned();
    let root = format!("Root=1-{}-{};", &native_trace[..8], &native_trace[8..]);
    assert!(header.starts_with(&root) && header.ends_with(";Sampled=1"), "{received}");
}

/// A client's own `AWSTraceHeader` is kept as given and returned to receivers, and its digest
/// answered, as SQS does; any other system attribute, or a header that is not printable ASCII,
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_trace_header_is_kept_as_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&dir.path().join("dev"), &[]).expect("strata dev");
    dev.wait_for_newest_formats().await.expect("newest formats");
    let call = |action: &'static str, body: Value| {
        let dev = &dev;
        async move { dev.sqs_call(action, None, &body, &SignOptions::default(), &[]).await.expect(action) }
    };
    let (_, created) = call("CreateQueue", json!({ "QueueName": "headers" })).await;
    let queue_url = created["QueueUrl"].as_str().expect("QueueUrl").to_owned();
    let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let system = |value: &str| json!({ "AWSTraceHeader": { "DataType": "String", "StringValue": value } });
    let (status, sent) = call(
        "SendMessage",
        json!({ "QueueUrl": queue_url, "MessageBody": "m", "MessageSystemAttributes": system(header) }),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["MD5OfMessageSystemAttributes"].as_str().map(str::len), Some(32), "{sent}");
    let (status, batch) = call(
        "SendMessageBatch",
        json!({ "QueueUrl": queue_url, "Entries": [
            { "Id": "a", "MessageBody": "a", "MessageSystemAttributes": system("Root=1-00000000-000000000000000000000001;Parent=0000000000000001;Sampled=0") },
            { "Id": "b", "MessageBody": "b" },
        ] }),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["Successful"].as_array().map(Vec::len), Some(2), "{batch}");

    let mut headers = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let (status, received) = call(
            "ReceiveMessage",
            json!({ "QueueUrl": queue_url, "MaxNumberOfMessages": 10, "AttributeNames": ["All"], "WaitTimeSeconds": 1 }),
        )
        .await;
        assert_eq!(status, 200, "{received}");
        for m in received["Messages"].as_array().into_iter().flatten() {
            headers
                .insert(m["Body"].as_str().unwrap_or_default().to_owned(), m["Attributes"]["AWSTraceHeader"].clone());
        }
        if headers.len() == 3 {
            break;
        }
    }
    assert_eq!(headers["m"], header);
    assert_eq!(headers["a"], "Root=1-00000000-000000000000000000000001;Parent=0000000000000001;Sampled=0");
    assert_eq!(headers["b"], Value::Null, "a message sent without one has none");

    for refused in [
        json!({ "QueueUrl": queue_url, "MessageBody": "x", "MessageSystemAttributes": { "SenderId": { "DataType": "String", "StringValue": "me" } } }),
        json!({ "QueueUrl": queue_url, "MessageBody": "x", "MessageSystemAttributes": system("a header\twith a tab") }),
        json!({ "QueueUrl": queue_url, "MessageBody": "x", "MessageSystemAttributes": system(&"R".repeat(257)) }),
        json!({ "QueueUrl": queue_url, "MessageBody": "x", "MessageSystemAttributes": { "AWSTraceHeader": { "DataType": "Number", "StringValue": "1" } } }),
    ] {
        let (status, answer) = call("SendMessage", refused.clone()).await;
        assert_eq!(status, 400, "{refused} -> {answer}");
        assert!(answer["__type"].as_str().unwrap_or_default().ends_with("InvalidParameterValue"), "{answer}");
    }
}
