//! A local cluster started by `infra/local-cluster.sh` from the test build of `strata`: Garage,
//! three metadata members, three storage nodes, two proxies, each its own process. Tests kill,
//! pause and restart its processes by name (`metadata-2`, `storage-1`, `proxy-2`, ...) and ask
//! each process's Raft transport which groups it leads. `down` runs however the test ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use strata_common::proto as pb;
use strata_common::proto::raft_transport_client::RaftTransportClient;

use strata_metadata_client::MetadataClient;
use strata_tls::{Credentials, Role, TlsFiles};

use crate::{run_ok, strata_binary};

/// The credentials `STRATA_TLS_CA`, `STRATA_TLS_CERT` and `STRATA_TLS_KEY` of a credentials
/// file name (an operator's, in the files `strata dev` and `infra/local-cluster.sh` write).
pub fn tls_from_env(env: &BTreeMap<String, String>) -> anyhow::Result<Credentials> {
    let file = |key: &str| env.get(key).map(PathBuf::from).with_context(|| format!("{key} is not set"));
    let files = TlsFiles { ca: file("STRATA_TLS_CA")?, cert: file("STRATA_TLS_CERT")?, key: file("STRATA_TLS_KEY")? };
    Ok(Credentials::load(files)?)
}

/// The processes of the cluster, by name.
pub const METADATA: [&str; 3] = ["metadata-1", "metadata-2", "metadata-3"];
pub const STORAGE: [&str; 3] = ["storage-1", "storage-2", "storage-3"];
pub const PROXIES: [&str; 2] = ["proxy-1", "proxy-2"];

pub struct LocalCluster {
    pub dir: PathBuf,
    port_base: u16,
}

impl LocalCluster {
    /// Starts a cluster in `dir` with ports from `port_base` (see the script for the layout).
    pub fn up(dir: &Path, port_base: u16) -> anyhow::Result<Self> {
        Self::up_with_format_cap(dir, port_base, &[], 0)
    }

    /// [`LocalCluster::up`] with `env` set for every process.
    pub fn up_with_env(dir: &Path, port_base: u16, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let cluster = Self { dir: dir.to_path_buf(), port_base };
        let mut up = cluster.script("up");
        up.envs(env.iter().copied());
        run_ok(&mut up).context("local-cluster.sh up")?;
        Ok(cluster)
    }

    /// [`LocalCluster::up`] with the processes `capped` reading format generations only up to
    /// `generation`, as processes of an older release would (`docs/formats.md`).
    pub fn up_with_format_cap(dir: &Path, port_base: u16, capped: &[&str], generation: u32) -> anyhow::Result<Self> {
        let cluster = Self { dir: dir.to_path_buf(), port_base };
        let mut up = cluster.script("up");
        up.env("STRATA_FORMAT_CAPPED", capped.join(" ")).env("STRATA_FORMAT_CAP", generation.to_string());
        run_ok(&mut up).context("local-cluster.sh up")?;
        Ok(cluster)
    }

    /// A port base below the ephemeral range, spread by process and by `slot` so parallel test
    /// processes do not meet.
    pub fn port_base(slot: u16) -> u16 {
        21_000 + ((std::process::id() % 40) as u16 * 2 + slot) * 100
    }

    fn script(&self, verb: &str) -> Command {
        let mut command = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/local-cluster.sh"));
        command
            .arg(verb)
            .arg(&self.dir)
            .env("STRATA_BIN", strata_binary())
            .env("STRATA_PORT_BASE", self.port_base.to_string());
        command
    }

    /// Stops everything (also done on drop).
    pub fn down(&self) -> anyhow::Result<()> {
        run_ok(&mut self.script("down")).map(|_| ())
    }

    /// The variables of `cluster-credentials.env`.
    pub fn credentials(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(self.dir.join("cluster-credentials.env"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect())
    }

    /// The operator's credentials on the cluster's internal plane (mutual TLS).
    pub fn operator_tls(&self) -> anyhow::Result<Credentials> {
        tls_from_env(&self.credentials()?)
    }

    /// A metadata client of every member, as the operator.
    pub fn metadata_client(&self) -> anyhow::Result<MetadataClient> {
        let env = self.credentials()?;
        Ok(MetadataClient::connect_lazy(&env["STRATA_METADATA_ENDPOINTS"], &tls_from_env(&env)?)?)
    }

    /// What went wrong when every internal port of the cluster was called in plaintext and with
    /// a certificate of another CA (made in `other_ca_dir`): nothing, when each refused both.
    pub async fn refuses_strangers(&self, other_ca_dir: &Path) -> anyhow::Result<Vec<String>> {
        let env = self.credentials()?;
        let forged = crate::internal::forged_credentials(other_ca_dir, PathBuf::from(&env["STRATA_TLS_CA"]))?;
        let mut wrong = Vec::new();
        for name in METADATA.iter().chain(&STORAGE) {
            let role = if name.starts_with("metadata") { Role::Metadata } else { Role::Storage };
            wrong.extend(crate::internal::refuses_strangers(&self.grpc_address(name)?, &forged, role).await);
        }
        Ok(wrong)
    }

    /// What went wrong when every shard group of the storage node `name` was sent a Raft
    /// message (an empty vote) with a storage certificate of the cluster's own CA naming no
    /// replica, and with one naming `replica`, a replica of every shard: nothing, when the first
    /// was refused before the message was read and the second got as far as decoding it.
    pub async fn shard_raft_hears_only_replicas(&self, name: &str, replica: &str) -> anyhow::Result<Vec<String>> {
        let now_ms = strata_common::Clock::now_ms(&strata_common::SystemClock);
        let ca = strata_tls::pki::LocalCa::open_or_create(&self.dir.join("tls"), now_ms)?;
        let timeout = std::time::Duration::from_secs(5);
        let address = self.grpc_address(name)?;
        let client = |node: &str| -> anyhow::Result<RaftTransportClient<tonic::transport::Channel>> {
            let credentials = ca.credentials(Role::Storage, node, now_ms)?;
            Ok(RaftTransportClient::new(strata_tls::lazy_channel(&address, timeout, &credentials, Role::Storage)?))
        };
        let (mut intruder, mut member) = (client("intruder")?, client(replica)?);
        let mut wrong = Vec::new();
        let groups = self.raft_status(name).await?;
        anyhow::ensure!(!groups.is_empty(), "{name} serves no shard group");
        for group in groups.iter().map(|g| g.group) {
            let vote = pb::RaftMessage { group, payload: Default::default() };
            match intruder.vote(vote.clone()).await {
                Err(status) if status.code() == tonic::Code::PermissionDenied => {}
                other => wrong.push(format!("shard {group} of {name} heard a non-replica: {other:?}")),
            }
            match member.vote(vote).await {
                Err(status) if status.code() == tonic::Code::InvalidArgument => {}
                other => wrong.push(format!("shard {group} of {name} did not hear its replica {replica}: {other:?}")),
            }
        }
        Ok(wrong)
    }

    /// A token for `tenant`, minted with the proxies' key.
    pub fn token_for(&self, tenant: &str) -> anyhow::Result<String> {
        let mut command = Command::new(strata_binary());
        command.arg("token").arg("--config").arg(self.dir.join("proxy-1.toml")).args(["--tenant", tenant]);
        Ok(run_ok(&mut command)?.trim().to_owned())
    }

    /// The gRPC address (`http://127.0.0.1:port`) of a metadata member or storage node.
    pub fn grpc_address(&self, name: &str) -> anyhow::Result<String> {
        let offset = match name.split_once('-') {
            Some(("metadata", i)) => i.parse::<u16>()?,
            Some(("storage", i)) => 10 + i.parse::<u16>()?,
            _ => bail!("{name} serves no gRPC"),
        };
        Ok(format!("https://127.0.0.1:{}", self.port_base + offset))
    }

    fn pid(&self, name: &str) -> anyhow::Result<String> {
        let pid = std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .with_context(|| format!("{name} has no pid file"))?;
        Ok(pid.trim().to_owned())
    }

    fn signal(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        run_ok(Command::new("kill").args([signal, &self.pid(name)?])).map(|_| ())
    }

    /// SIGKILL: no shutdown path runs. Waits until the process is gone.
    pub fn kill9(&self, name: &str) -> anyhow::Result<()> {
        self.end(name, "-KILL", 200)
    }

    /// SIGTERM: the process shuts down as an operator's stop would (a leader hands over first).
    /// Waits until it is gone (at most 30 s).
    pub fn stop(&self, name: &str) -> anyhow::Result<()> {
        self.end(name, "-TERM", 3_000)
    }

    fn end(&self, name: &str, signal: &str, waits_10ms: u32) -> anyhow::Result<()> {
        let pid = self.pid(name)?;
        self.signal(name, signal)?;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        for _ in 0..waits_10ms {
            // An ended child of the script's shell is reaped by init: gone or a zombie.
            let state = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                // Gone for the script too, even while the zombie waits to be reaped.
                let _ = std::fs::remove_file(self.dir.join(format!("{name}.pid")));
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        bail!("{name} (pid {pid}) did not end after {signal}")
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, "-STOP")
    }

    /// SIGCONT after [`LocalCluster::pause`].
    pub fn resume(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, "-CONT")
    }

    /// Starts a process that died again, on its data directory.
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        let mut command = self.script("start");
        command.arg(name);
        run_ok(&mut command).map(|_| ())
    }

    /// Adds storage node `name` (`storage-4` to `storage-9`) to the running cluster.
    pub fn add_storage(&self, name: &str) -> anyhow::Result<()> {
        let mut command = self.script("add");
        command.arg(name);
        run_ok(&mut command).map(|_| ())
    }

    /// The Raft groups the process `name` serves, with its view of each (role, term, leader).
    pub async fn raft_status(&self, name: &str) -> anyhow::Result<Vec<pb::RaftGroupStatus>> {
        let role = if name.starts_with("metadata") { Role::Metadata } else { Role::Storage };
        let timeout = std::time::Duration::from_secs(2);
        let channel = strata_tls::lazy_channel(&self.grpc_address(name)?, timeout, &self.operator_tls()?, role)?;
        let mut client = RaftTransportClient::new(channel);
        let status = client.status(pb::RaftStatusRequest {});
        Ok(tokio::time::timeout(timeout, status).await??.into_inner().groups)
    }

    /// Which of `names` leads group `group`, waiting out an election (at most 30 s).
    pub async fn wait_for_leader(&self, names: &[&str], group: u64) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(leader) = self.leader_of(names, group).await {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no leader of group {group} among {names:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Which of `names` leads group `group` now, if one says so.
    pub async fn leader_of(&self, names: &[&str], group: u64) -> Option<String> {
        for name in names {
            let Ok(groups) = self.raft_status(name).await else { continue };
            if groups.iter().any(|g| g.group == group && g.role == "leader") {
                return Some(name.to_string());
            }
        }
        None
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // A paused process would not see the script's SIGTERM.
        for name in STORAGE.iter().chain(&METADATA).chain(&PROXIES) {
            let _ = self.resume(name);
        }
        let _ = self.script("down").output();
    }
}
