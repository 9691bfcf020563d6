//! Cluster roles, each a process of its own started from a config file (TOML), the same file a
//! real deployment uses. So far: `strata metadata --config FILE`, one member of the metadata
//! quorum.
//!
//! ```toml
//! node_id = 1
//! data_dir = "/var/lib/strata/metadata-1"
//! listen = "127.0.0.1:9401"        # the metadata API and the Raft transport
//! initialize = true                # on exactly one member, for the quorum's first start
//!
//! [members]                        # every member's advertised endpoint, this one's included
//! 1 = "http://127.0.0.1:9401"
//! 2 = "http://127.0.0.1:9402"
//! 3 = "http://127.0.0.1:9403"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use strata_common::{Clock, SystemClock};
use strata_metadata::MetadataNode;
use strata_metadata::server::MemberSettings;
use tokio_util::sync::CancellationToken;

use crate::dev::{init_tracing, shutdown_signal};

#[derive(Args, Debug)]
pub struct RoleArgs {
    /// The role's config file (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// A metadata member's config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataConfig {
    node_id: u64,
    data_dir: PathBuf,
    listen: SocketAddr,
    #[serde(default)]
    initialize: bool,
    /// Member id (as text: TOML keys are strings) -> advertised endpoint.
    members: BTreeMap<String, String>,
}

fn read_config<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid config file", path.display()))
}

/// Runs one metadata member until SIGTERM or Ctrl-C.
pub async fn metadata(args: RoleArgs) -> anyhow::Result<()> {
    init_tracing();
    let config: MetadataConfig = read_config(&args.config)?;
    let mut members = BTreeMap::new();
    for (id, endpoint) in config.members {
        let id: u64 = id.parse().with_context(|| format!("member id '{id}' is not a number"))?;
        members.insert(id, endpoint);
    }
    let settings = MemberSettings { node_id: config.node_id, members, initialize: config.initialize };
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let node = MetadataNode::open_member(&config.data_dir, &settings, clock).await.context("opening metadata")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(node = config.node_id, listen = %config.listen, "metadata member running");
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(node.clone().serve_with_listener(listener, cancel.clone().cancelled_owned()));
    shutdown_signal().await;
    cancel.cancel();
    let _ = serving.await;
    node.shutdown().await;
    Ok(())
}
