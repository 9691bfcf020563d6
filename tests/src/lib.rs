//! Harness for tests that drive the real `strata` binary as a child process.
//!
//! [`DevProcess`] starts `strata dev` on free loopback ports in its own data directory, waits
//! until it serves, and can be SIGKILLed and restarted on the same directory. [`Api`] is the
//! client of the native API (`strata-client`).

#![allow(clippy::disallowed_methods)] // the test harness waits for real processes in real time

pub mod cluster;
pub mod history;
pub mod internal;
pub mod load;
pub mod otlp;
pub mod prometheus;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use strata_client::sqs::{SignOptions, SqsSigner};
use strata_common::format::NEWEST_GENERATION;
use strata_common::limits::HEARTBEAT_INTERVAL_MS;
use strata_common::{Clock, SystemClock};
use strata_proxy::auth::JwtIssuer;

/// How long a `strata dev` start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `strata` binary, built once per test process (a no-op when it is up to date).
pub fn strata_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "strata", "--bin", "strata"])
                .current_dir(&root)
                .status()
                .expect("run cargo build for the strata binary");
            assert!(status.success(), "building the strata binary failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
            target.join("debug/strata")
        })
        .clone()
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A `strata dev` child process.
pub struct DevProcess {
    pub data_dir: PathBuf,
    pub port: u16,
    metadata_port: u16,
    storage_port: u16,
    admin_port: u16,
    extra_args: Vec<String>,
    /// Environment variables set for the process, beyond the test's own.
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub endpoint: String,
    pub token: String,
}

impl DevProcess {
    /// Starts `strata dev` in `data_dir` with extra command-line arguments.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, extra_args, &[])
    }

    /// [`DevProcess::start`] with environment variables `env` set for the process.
    pub fn start_with_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut dev = Self {
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            metadata_port: free_port(),
            storage_port: free_port(),
            admin_port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            endpoint: String::new(),
            token: String::new(),
        };
        dev.spawn()?;
        Ok(dev)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let credentials = self.data_dir.join("dev-credentials.env");
        let _ = std::fs::remove_file(&credentials);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .context("open the dev log")?;
        let child = Command::new(strata_binary())
            .arg("dev")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--port", &self.port.to_string()])
            .args(["--metadata-port", &self.metadata_port.to_string()])
            .args(["--storage-port", &self.storage_port.to_string()])
            .args(["--admin-port", &self.admin_port.to_string()])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn strata dev")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "strata dev exited during start-up with {status}; see {}",
                    self.data_dir.with_extension("log").display()
                );
            }
            if let Ok(text) = std::fs::read_to_string(&credentials) {
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("export STRATA_ENDPOINT=") {
                        self.endpoint = v.to_string();
                    }
                    if let Some(v) = line.strip_prefix("export STRATA_TOKEN=") {
                        self.token = v.to_string();
                    }
                }
                if !self.endpoint.is_empty() && !self.token.is_empty() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("strata dev did not start within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the process wrote to its log (stderr) so far.
    pub fn log(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.data_dir.with_extension("log"))?)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same directory and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// The resident set size of the running process, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.as_ref().context("not running")?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
        Ok(line.split_whitespace().nth(1).context("bad VmRSS line")?.parse()?)
    }

    /// The process's `/metrics`, scraped with its scrape token.
    pub async fn scrape_metrics(&self) -> anyhow::Result<String> {
        let env = self.credentials_env()?;
        let value = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).context(key.to_owned());
        let token = std::fs::read_to_string(value("STRATA_METRICS_TOKEN_FILE")?)?;
        let url = format!("{}/metrics", value("STRATA_ADMIN_ENDPOINT")?.trim_end_matches('/'));
        let response = reqwest::Client::new().get(url).bearer_auth(token.trim()).send().await?;
        Ok(response.error_for_status()?.text().await?)
    }

    /// The heap bytes the process's allocator has handed out (`strata_process_heap_bytes`).
    pub async fn heap_bytes(&self) -> anyhow::Result<u64> {
        let metrics = self.scrape_metrics().await?;
        let line = metrics.lines().find_map(|l| l.strip_prefix("strata_process_heap_bytes "));
        Ok(line.context("no strata_process_heap_bytes in /metrics")?.trim().parse()?)
    }

    /// The variables of `dev-credentials.env` (`STRATA_*` and `AWS_*`), as `source` would set them.
    pub fn credentials_env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let text = std::fs::read_to_string(self.data_dir.join("dev-credentials.env"))?;
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// A command with the dev credentials in its environment and no AWS configuration from the
    /// machine (no ~/.aws files, no inherited AWS_* variables).
    pub fn command_with_credentials(&self, program: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                command.env_remove(key);
            }
        }
        command.env("AWS_CONFIG_FILE", "/dev/null").env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        command.envs(self.credentials_env()?);
        Ok(command)
    }

    /// A token for any tenant, signed with the dev key as an identity provider sharing the key
    /// would sign it.
    pub fn token_for_audience(&self, tenant: &str, audience: &str) -> anyhow::Result<String> {
        // The admin API has a signing key of its own.
        let (file, kid) = match audience {
            "strata-admin" => ("jwt-admin-hs256.secret", "dev-admin-hs256"),
            _ => ("jwt-hs256.secret", "dev-hs256"),
        };
        let text = std::fs::read_to_string(self.data_dir.join(file))?;
        let secret = hex::decode(text.trim()).context("the dev secret is not hex")?;
        let now_s = SystemClock.now_ms() / 1000;
        Ok(JwtIssuer::hmac(kid, &secret, "strata-dev", audience).mint(tenant, 600, now_s)?)
    }

    /// A token for `tenant` with the dev audience.
    pub fn token_for(&self, tenant: &str) -> anyhow::Result<String> {
        self.token_for_audience(tenant, "strata")
    }

    /// A client with the dev tenant's token.
    pub fn api(&self) -> Api {
        Api::new(&self.endpoint, &self.token)
    }

    /// A call of the SQS API's JSON protocol, signed with the dev access key as `options` say
    /// (`sent_as` replaces the action in the sent `X-Amz-Target` after signing; `extra` headers
    /// go unsigned). Answers the status and the JSON body.
    pub async fn sqs_call(
        &self,
        action: &str,
        sent_as: Option<&str>,
        body: &Value,
        options: &SignOptions,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        self.signed_sqs_call(None, action, sent_as, body, options, extra).await
    }

    /// A plain SQS call of `action` signed with the access key `(id, secret)` instead.
    pub async fn sqs_call_as(&self, key: (&str, &str), action: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.signed_sqs_call(Some(key), action, None, body, &SignOptions::default(), &[]).await
    }

    async fn signed_sqs_call(
        &self,
        key: Option<(&str, &str)>,
        action: &str,
        sent_as: Option<&str>,
        body: &Value,
        options: &SignOptions,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let env: std::collections::BTreeMap<String, String> = self.credentials_env()?.into_iter().collect();
        let (access_key_id, secret) =
            key.unwrap_or((env["AWS_ACCESS_KEY_ID"].as_str(), env["AWS_SECRET_ACCESS_KEY"].as_str()));
        let signer = SqsSigner::new(&env["AWS_DEFAULT_REGION"], access_key_id, secret);
        let url = format!("{}/", self.endpoint);
        let bytes = serde_json::to_vec(body)?;
        let at = std::time::UNIX_EPOCH + Duration::from_millis(SystemClock.now_ms());
        let mut request = reqwest::Client::new().post(&url).body(bytes.clone());
        for (name, value) in signer.json_call_headers(&url, action, &bytes, at, options)? {
            let value = match (name.as_str(), sent_as) {
                ("x-amz-target", Some(other)) => format!("AmazonSQS.{other}"),
                _ => value,
            };
            request = request.header(name, value);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// The admin API's endpoint (`STRATA_ADMIN_ENDPOINT`).
    pub fn admin_endpoint(&self) -> anyhow::Result<String> {
        let env = self.credentials_env()?;
        let (_, endpoint) =
            env.into_iter().find(|(k, _)| k == "STRATA_ADMIN_ENDPOINT").context("no STRATA_ADMIN_ENDPOINT")?;
        Ok(endpoint)
    }

    /// A client of the admin API with an operator's token.
    pub fn admin_api(&self) -> anyhow::Result<Api> {
        Ok(Api::new(&self.admin_endpoint()?, &self.token_for_audience("dev-operator", "strata-admin")?))
    }

    /// Waits until the process writes the newest format generation: metadata raises it a few
    /// seconds after start (a data directory may hold older formats), and the storage node
    /// follows at its next heartbeat.
    pub async fn wait_for_newest_formats(&self) -> anyhow::Result<()> {
        let admin = self.admin_api()?;
        let deadline = Instant::now() + START_TIMEOUT;
        while admin.storage_nodes().await?.format_generation < NEWEST_GENERATION {
            if Instant::now() > deadline {
                bail!("the format generation was not raised within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS + 500)).await;
        Ok(())
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The repository's `tests/sqs` directory (Python scripts driving boto3).
pub fn sqs_scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sqs")
}

/// Runs a command to completion; fails with its output when it exits non-zero.
pub fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// The tests call the service through the one client of the native API (the CLI's and the
/// bench's): typed calls, and `call`/`get`/`post` answering status and JSON for tests of errors.
pub use strata_client::Client as Api;
pub use strata_client::model;
