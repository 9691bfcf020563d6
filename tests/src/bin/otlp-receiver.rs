//! A small OTLP/gRPC trace receiver for the tests, run as its own process: it serves the
//! OpenTelemetry collector's `TraceService` on a loopback port, prints `listening on ADDR` once,
//! and appends every span it receives to a file as one JSON object per line (service name, span
//! name, kind, trace and span ids, parent span id, links).
//!
//! Usage: `otlp-receiver SPANS_FILE`

use std::io::Write;
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;
use tonic::{Request, Response, Status};

struct Receiver {
    out: Mutex<std::fs::File>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut lines = String::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                let links: Vec<_> = span
                    .links
                    .iter()
                    .map(|l| json!({ "trace_id": hex::encode(&l.trace_id), "span_id": hex::encode(&l.span_id) }))
                    .collect();
                let line = json!({
                    "service": service,
                    "name": span.name,
                    "kind": span.kind,
                    "trace_id": hex::encode(&span.trace_id),
                    "span_id": hex::encode(&span.span_id),
                    "parent_span_id": hex::encode(&span.parent_span_id),
                    "links": links,
                });
                lines.push_str(&line.to_string());
                lines.push('\n');
            }
        }
        let mut out = self.out.lock().map_err(|_| Status::internal("the spans file is poisoned"))?;
        out.write_all(lines.as_bytes()).and_then(|()| out.flush()).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: otlp-receiver SPANS_FILE"))?;
    let out = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Receiver { out: Mutex::new(out) }))
        .serve_with_incoming(tokio_stream_of(listener))
        .await?;
    Ok(())
}

/// The listener's connections as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
