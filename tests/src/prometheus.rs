//! A real Prometheus (Debian's package, installed by `infra/prometheus.sh`) on loopback, started
//! by a test with a config of its own that scrapes Strata's `/metrics` with the scrape token,
//! and queried through its HTTP API.

#![allow(clippy::disallowed_methods)] // a test harness waits in real time

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// A Prometheus server scraping fixed targets every second; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub endpoint: String,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `targets` (host:port) at `/metrics` with the bearer
    /// token in `token_file`.
    pub fn start(dir: &Path, targets: &[String], token_file: &Path) -> anyhow::Result<Self> {
        Self::start_with_rules(dir, targets, token_file, None)
    }

    /// [`Prometheus::start`], evaluating the alert rules of `rules` every second.
    pub fn start_with_rules(
        dir: &Path,
        targets: &[String],
        token_file: &Path,
        rules: Option<&Path>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = crate::free_port();
        let targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let rule_files = rules.map(|r| format!("rule_files: ['{}']\n", r.display())).unwrap_or_default();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n{rule_files}\
             scrape_configs:\n  - job_name: strata\n    \
             authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: [{targets}]\n",
            token_file.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (infra/prometheus.sh install)")?;
        Ok(Self { child, endpoint: format!("http://127.0.0.1:{port}") })
    }

    /// The value of an instant query that answers one number, or `None` while it answers none.
    pub async fn scalar(&self, query: &str) -> anyhow::Result<Option<f64>> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.endpoint), [("query", query)])?;
        let response = match reqwest::Client::new().get(url).send().await {
            Ok(response) => response,
            // Still starting.
            Err(e) if e.is_connect() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let body: Value = response.json().await?;
        anyhow::ensure!(body["status"] == "success", "query {query} failed: {body}");
        let results = body["data"]["result"].as_array().context("no result list")?;
        match results.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one["value"][1].as_str().context("no value")?.parse()?)),
            more => anyhow::bail!("query {query} answered {} series", more.len()),
        }
    }

    /// Waits (at most `limit`) until `query` answers `expected`; answers the last value seen.
    pub async fn wait_for(&self, query: &str, expected: f64, limit: Duration) -> anyhow::Result<Option<f64>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let value = self.scalar(query).await?;
            if value == Some(expected) || std::time::Instant::now() >= deadline {
                return Ok(value);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Prometheus {
    /// Runs `query` as an instant query; an error if Prometheus refuses it (bad PromQL).
    pub async fn check_query(&self, query: &str) -> anyhow::Result<()> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.endpoint), [("query", query)])?;
        let body: Value = reqwest::Client::new().get(url).send().await?.json().await?;
        anyhow::ensure!(body["status"] == "success", "query {query} refused: {body}");
        Ok(())
    }

    /// `(alert name, state, labels)` of every alert pending or firing now.
    pub async fn alerts(&self) -> anyhow::Result<Vec<(String, String, Value)>> {
        let body: Value = reqwest::get(format!("{}/api/v1/alerts", self.endpoint)).await?.json().await?;
        let alerts = body["data"]["alerts"].as_array().context("no alert list")?;
        Ok(alerts
            .iter()
            .map(|a| {
                let name = a["labels"]["alertname"].as_str().unwrap_or_default().to_owned();
                (name, a["state"].as_str().unwrap_or_default().to_owned(), a["labels"].clone())
            })
            .collect())
    }

    /// `(rule name, health, last error)` of every rule loaded.
    pub async fn rules(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let body: Value = reqwest::get(format!("{}/api/v1/rules", self.endpoint)).await?.json().await?;
        let groups = body["data"]["groups"].as_array().context("no rule groups")?;
        Ok(groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let text = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
                (text("name"), text("health"), text("lastError"))
            })
            .collect())
    }
}

/// Runs `promtool check rules` on a rules file; answers its output when it fails.
pub fn promtool_check_rules(path: &Path) -> anyhow::Result<()> {
    let output = Command::new("promtool").args(["check", "rules"]).arg(path).output().context("starting promtool")?;
    anyhow::ensure!(
        output.status.success(),
        "promtool check rules {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool check metrics` on a scrape's body: the exposition is well formed and follows
/// Prometheus's naming conventions. Answers promtool's complaints (empty when none).
pub fn promtool_check_metrics(body: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool (infra/prometheus.sh install)")?;
    child.stdin.take().context("promtool stdin")?.write_all(body.as_bytes())?;
    let output = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(output.status.success() || !text.trim().is_empty(), "promtool failed without a word");
    Ok(if output.status.success() { String::new() } else { text })
}
