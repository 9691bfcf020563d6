//! A real OTLP receiver for the tests: `otlp-receiver` (this package's binary, built on the
//! `opentelemetry-proto` types) run as its own process on a loopback port. Processes under test
//! export to [`OtlpReceiver::endpoint`]; [`OtlpReceiver::spans`] reads what arrived.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub struct OtlpReceiver {
    child: Child,
    spans_file: PathBuf,
    endpoint: String,
}

impl OtlpReceiver {
    /// Starts `binary` (an integration test passes `env!("CARGO_BIN_EXE_otlp-receiver")`),
    /// writing what it receives under `dir`.
    pub fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let spans_file = dir.join("spans.jsonl");
        let mut child = Command::new(binary)
            .arg(&spans_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("the receiver's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line.trim().strip_prefix("listening on ").context("the receiver did not say where it listens")?;
        Ok(Self { endpoint: format!("http://{address}"), child, spans_file })
    }

    /// Where processes send their spans (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The environment of a process that exports here: spans sent every 100 ms, and only the
    /// calls a client traces with a sampled `traceparent` (no other call is sampled).
    pub fn env(&self) -> [(&str, &str); 3] {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ]
    }

    /// Every span received so far: `service`, `name`, `kind`, `trace_id`, `span_id`,
    /// `parent_span_id`, `links` (`trace_id`, `span_id`).
    pub fn spans(&self) -> anyhow::Result<Vec<Value>> {
        let text = match std::fs::read_to_string(&self.spans_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        text.lines().map(|line| serde_json::from_str(line).context("a span line")).collect()
    }

    /// The spans received once `done` holds for them, waiting at most `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans()?;
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() > deadline {
                bail!("{what}: not received within {timeout:?}; received: {spans:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
