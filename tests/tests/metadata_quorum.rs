//! Three `strata metadata` processes started from their config files, under a steady stream of
//! mutations through one `MetadataClient`, while each member in turn (so the leader at least
//! once) is SIGKILLed and restarted. Afterwards every acknowledged mutation is there, and
//! access-key creations retried across a kill were applied once each (request ids).

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_common::proto as pb;
use strata_common::{Clock, SystemClock};
use strata_metadata_client::MetadataClient;
use strata_tests::{free_port, strata_binary};
use strata_tls::pki::LocalCa;
use strata_tls::{Credentials, Role, TlsFiles};
use tokio::sync::Mutex;

struct Member {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open the member log");
        let child = Command::new(strata_binary())
            .arg("metadata")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn strata metadata");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A failing test must not leave members running.
impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A new certificate of the test's CA (made in `dir/tls` on first use).
fn issue(dir: &Path, role: Role, name: &str) -> TlsFiles {
    let ca = LocalCa::open_or_create(&dir.join("tls"), SystemClock.now_ms()).expect("CA");
    let identity = strata_tls::Identity::new(role, name).expect("identity");
    ca.issue(&identity, &[], &dir.join("tls"), &format!("{role}-{name}"), SystemClock.now_ms()).expect("certificate")
}

/// The `[tls]` section of a config file naming `files`.
fn tls_section(files: &TlsFiles) -> String {
    format!("[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n", files.ca, files.cert, files.key)
}

fn credentials(dir: &Path, role: Role, name: &str) -> Credentials {
    Credentials::load(issue(dir, role, name)).expect("credentials")
}

fn write_configs(dir: &Path) -> (Vec<Member>, String) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let endpoints: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let members_table: String = endpoints.iter().enumerate().map(|(i, e)| format!("{} = \"{e}\"\n", i + 1)).collect();
    let members = (0..3)
        .map(|i| {
            let config = dir.join(format!("metadata-{}.toml", i + 1));
            let text = format!(
                "node_id = {id}\ndata_dir = \"{data}\"\nlisten = \"127.0.0.1:{port}\"\ninitialize = {init}\n\n[members]\n{members_table}\n{tls}",
                id = i + 1,
                data = dir.join(format!("metadata-{}", i + 1)).display(),
                port = ports[i],
                init = i == 0,
                tls = tls_section(&issue(dir, Role::Metadata, &(i + 1).to_string())),
            );
            std::fs::write(&config, text).expect("write a config file");
            Member { config, log: dir.join(format!("metadata-{}.log", i + 1)), child: None }
        })
        .collect();
    (members, endpoints.join(","))
}

#[derive(Default)]
struct Ledger {
    queues_acked: Vec<String>,
    /// Tenants whose one access-key creation was acknowledged, or failed.
    keys_acked: Vec<String>,
    keys_failed: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_members_sigkilled_in_turn_lose_no_acknowledged_mutation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut members, endpoints) = write_configs(dir.path());
    for m in &mut members {
        m.spawn();
    }
    // The mutations come from a proxy; the one storage node registers itself.
    let client =
        MetadataClient::connect_lazy(&endpoints, &credentials(dir.path(), Role::Proxy, "proxy-1")).expect("client");
    let storage_node =
        MetadataClient::connect_lazy(&endpoints, &credentials(dir.path(), Role::Storage, "storage-1")).expect("client");
    client.ensure_tenant("acme").await.expect("tenant (the quorum elects a leader first)");
    storage_node
        .register_storage_node(pb::RegisterStorageNodeRequest {
            node_id: "storage-1".into(),
            address: "http://127.0.0.1:1".into(),
            initial_shards: 2,
            ..Default::default()
        })
        .await
        .expect("register a storage node");

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (client, ledger, running) = (client.clone(), ledger.clone(), running.clone());
        tokio::spawn(async move {
            let config =
                pb::QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 30_000, ..Default::default() };
            let mut i = 0;
            while running.load(Ordering::Relaxed) {
                let name = format!("q{i:05}");
                match client.create_queue("acme", &name, config.clone()).await {
                    Ok(_) => ledger.lock().await.queues_acked.push(name),
                    Err(e) => eprintln!("creating {name} failed: {e}"),
                }
                // One key creation per tenant: a creation applied twice would leave two.
                let tenant = format!("key-{i:05}");
                match client.create_access_key(&tenant).await {
                    Ok(_) => ledger.lock().await.keys_acked.push(tenant),
                    Err(e) => {
                        eprintln!("key creation for {tenant} failed: {e}");
                        ledger.lock().await.keys_failed.push(tenant);
                    }
                }
                i += 1;
            }
        })
    };

    for member in &mut members {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        member.kill9();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        member.spawn();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    running.store(false, Ordering::Relaxed);
    load.await.expect("the load task");

    let ledger = ledger.lock().await;
    assert!(ledger.queues_acked.len() > 20, "too little got through: {}", ledger.queues_acked.len());
    let mut listed = Vec::new();
    let mut start_after = String::new();
    loop {
        let page = client.list_queues("acme", "", &start_after, 1000).await.expect("list queues");
        listed.extend(page.queues.into_iter().map(|q| q.name));
        if !page.truncated {
            break;
        }
        start_after = listed.last().cloned().unwrap_or_default();
    }
    let missing: Vec<&String> = ledger.queues_acked.iter().filter(|q| !listed.contains(q)).collect();
    assert!(missing.is_empty(), "acknowledged queues lost: {missing:?}");
    for tenant in &ledger.keys_acked {
        let keys = client.list_access_keys(tenant).await.expect("list keys").len();
        assert_eq!(keys, 1, "tenant {tenant}: an acknowledged key creation stored {keys} keys");
    }
    for tenant in &ledger.keys_failed {
        let keys = client.list_access_keys(tenant).await.expect("list keys").len();
        assert!(keys <= 1, "tenant {tenant}: a failed key creation stored {keys} keys");
    }
    eprintln!(
        "queues acknowledged {}, key creations acknowledged {} (failed {})",
        ledger.queues_acked.len(),
        ledger.keys_acked.len(),
        ledger.keys_failed.len()
    );
    for m in &mut members {
        m.kill9();
    }
}
