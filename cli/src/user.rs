//! User subcommands: thin wrappers over the native HTTP API that print JSON.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Clone)]
pub struct Connection {
    /// Service endpoint, e.g. http://127.0.0.1:9324
    #[arg(long, env = "STRATA_ENDPOINT", hide_env_values = true)]
    endpoint: String,
    /// Bearer token (JWT) of your tenant.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Create a queue (idempotent with identical attributes).
    Create {
        name: String,
        #[arg(long)]
        retention_seconds: Option<u64>,
        #[arg(long)]
        visibility_timeout_seconds: Option<u64>,
        #[arg(long)]
        delay_seconds: Option<u64>,
        #[command(flatten)]
        connection: Connection,
    },
    /// List queues.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a queue and all its messages.
    Delete {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a queue's attributes and approximate counts.
    Attributes {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Whose keys: your own (tenant token), or any tenant's as an operator (`--tenant`, admin API).
#[derive(Args, Clone)]
pub struct KeyOwner {
    /// Manage this tenant's keys through the admin API (needs STRATA_ADMIN_ENDPOINT and
    /// STRATA_ADMIN_TOKEN) instead of your own.
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long, env = "STRATA_ADMIN_ENDPOINT", hide_env_values = true)]
    admin_endpoint: Option<String>,
    #[arg(long, env = "STRATA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Service endpoint, e.g. http://127.0.0.1:9324
    #[arg(long, env = "STRATA_ENDPOINT", hide_env_values = true)]
    endpoint: Option<String>,
    /// Bearer token (JWT) of your tenant.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl KeyOwner {
    /// The connection and the path prefix of the key routes.
    fn resolve(self) -> anyhow::Result<(Connection, String)> {
        match self.tenant {
            Some(tenant) => {
                let endpoint = self.admin_endpoint.context("--tenant needs STRATA_ADMIN_ENDPOINT")?;
                let token = self.admin_token.context("--tenant needs STRATA_ADMIN_TOKEN")?;
                Ok((Connection { endpoint, token }, format!("/admin/v1/tenants/{}/access-keys", urlencode(&tenant))))
            }
            None => {
                let endpoint = self.endpoint.context("set STRATA_ENDPOINT (or --endpoint)")?;
                let token = self.token.context("set STRATA_TOKEN (or --token)")?;
                Ok((Connection { endpoint, token }, "/v1/access-keys".to_string()))
            }
        }
    }
}

/// The operators' admin API of a proxy.
#[derive(clap::Args)]
pub struct AdminConnection {
    #[arg(long, env = "STRATA_ADMIN_ENDPOINT", hide_env_values = true)]
    admin_endpoint: String,
    #[arg(long, env = "STRATA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// List the storage nodes, with whether each keeps its lease.
    Nodes {
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Show a shard's writer, replicas, and any replica still leaving.
    Shard {
        shard_id: u64,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// List the metadata quorum's members; with --add/--remove, change them (an added member
    /// must be running: it catches up before it votes).
    MetadataMembers {
        /// A member to add, as ID=ENDPOINT (repeatable).
        #[arg(long, value_parser = member_arg)]
        add: Vec<(u64, String)>,
        /// A member id to remove (repeatable).
        #[arg(long)]
        remove: Vec<u64>,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Move a replica of a shard to another (live) storage node; completes in the background.
    MoveReplica {
        shard_id: u64,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        admin: AdminConnection,
    },
}

/// `ID=ENDPOINT`, a metadata member to add.
fn member_arg(text: &str) -> Result<(u64, String), String> {
    let (id, endpoint) = text.split_once('=').ok_or("expected ID=ENDPOINT, such as 4=http://10.0.0.4:7001")?;
    let id = id.parse().map_err(|_| format!("'{id}' is not a member id"))?;
    Ok((id, endpoint.to_owned()))
}

pub async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let admin = |a: AdminConnection| Connection { endpoint: a.admin_endpoint, token: a.admin_token };
    let answer = match command {
        ClusterCommand::Nodes { admin: a } => {
            call(&admin(a), reqwest::Method::GET, "/admin/v1/storage-nodes", None).await?
        }
        ClusterCommand::Shard { shard_id, admin: a } => {
            call(&admin(a), reqwest::Method::GET, &format!("/admin/v1/shards/{shard_id}"), None).await?
        }
        ClusterCommand::MetadataMembers { add, remove, admin: a } if add.is_empty() && remove.is_empty() => {
            call(&admin(a), reqwest::Method::GET, "/admin/v1/metadata-members", None).await?
        }
        ClusterCommand::MetadataMembers { add, remove, admin: a } => {
            let add: Vec<_> = add.iter().map(|(id, address)| json!({ "node_id": id, "address": address })).collect();
            let body = json!({ "add": add, "remove": remove });
            call(&admin(a), reqwest::Method::POST, "/admin/v1/metadata-members", Some(body)).await?
        }
        ClusterCommand::MoveReplica { shard_id, from, to, admin: a } => {
            let path = format!("/admin/v1/shards/{shard_id}/move-replica");
            let body = json!({ "from_node": from, "to_node": to });
            call(&admin(a), reqwest::Method::POST, &path, Some(body)).await?
        }
    };
    print(&answer);
    Ok(())
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an access key for the SQS API; prints its secret (shown only this once).
    Create {
        #[command(flatten)]
        owner: KeyOwner,
    },
    /// List the access keys (without secrets).
    List {
        #[command(flatten)]
        owner: KeyOwner,
    },
    /// Replace a key by a new one; prints the new secret. The old key stops after the grace period.
    Rotate {
        access_key_id: String,
        /// How long the old key keeps working, in seconds (0-604800).
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
        #[command(flatten)]
        owner: KeyOwner,
    },
    /// Revoke a key at once.
    Revoke {
        access_key_id: String,
        #[command(flatten)]
        owner: KeyOwner,
    },
}

#[derive(Args)]
pub struct SendArgs {
    queue: String,
    body: String,
    #[arg(long, conflicts_with = "deliver_at_ms")]
    delay_seconds: Option<u64>,
    /// Deliver at this unix time in milliseconds (up to a year ahead); cancel with
    /// `strata cancel QUEUE MESSAGE_ID` until then.
    #[arg(long)]
    deliver_at_ms: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args)]
pub struct CancelArgs {
    queue: String,
    /// The id a send with `--deliver-at-ms` answered.
    message_id: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args)]
pub struct ReceiveArgs {
    queue: String,
    /// Messages to receive at most (1-10).
    #[arg(long, default_value_t = 1)]
    max: u32,
    /// Long-poll for up to this many seconds (0-20).
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Hide received messages for this many seconds (default: the queue's).
    #[arg(long)]
    visibility: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args)]
pub struct DeleteArgs {
    queue: String,
    receipt: String,
    #[command(flatten)]
    connection: Connection,
}

/// Sends a request and returns its JSON body, or fails with the service's error code and message.
async fn call(
    connection: &Connection,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", connection.endpoint.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url).bearer_auth(&connection.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.context("reading the response")?;
    let value: Value =
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    if !status.is_success() {
        let code = value["error"]["code"].as_str().unwrap_or("Error");
        let message = value["error"]["message"].as_str().unwrap_or("unexpected response");
        bail!("{code} ({status}): {message}");
    }
    Ok(value)
}

fn print(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

pub async fn queue(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Create { name, retention_seconds, visibility_timeout_seconds, delay_seconds, connection } => {
            let mut attributes = serde_json::Map::new();
            for (key, value) in [
                ("retention_seconds", retention_seconds),
                ("visibility_timeout_seconds", visibility_timeout_seconds),
                ("delay_seconds", delay_seconds),
            ] {
                if let Some(v) = value {
                    attributes.insert(key.to_string(), json!(v));
                }
            }
            let body = json!({ "name": name, "attributes": attributes });
            print(&call(&connection, reqwest::Method::POST, "/v1/queues", Some(body)).await?);
        }
        QueueCommand::List { prefix, connection } => {
            let mut token: Option<String> = None;
            loop {
                let mut path = format!("/v1/queues?prefix={}", urlencode(&prefix));
                if let Some(t) = &token {
                    path.push_str(&format!("&next_token={}", urlencode(t)));
                }
                let page = call(&connection, reqwest::Method::GET, &path, None).await?;
                for queue in page["queues"].as_array().into_iter().flatten() {
                    println!("{}", queue["name"].as_str().unwrap_or_default());
                }
                match page["next_token"].as_str() {
                    Some(t) => token = Some(t.to_string()),
                    None => break,
                }
            }
        }
        QueueCommand::Delete { name, connection } => {
            call(&connection, reqwest::Method::DELETE, &format!("/v1/queues/{}", urlencode(&name)), None).await?;
            eprintln!("deleted queue {name}");
        }
        QueueCommand::Attributes { name, connection } => {
            print(&call(&connection, reqwest::Method::GET, &format!("/v1/queues/{}", urlencode(&name)), None).await?);
        }
    }
    Ok(())
}

pub async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { owner } => {
            let (connection, base) = owner.resolve()?;
            print(&call(&connection, reqwest::Method::POST, &base, None).await?);
        }
        KeysCommand::List { owner } => {
            let (connection, base) = owner.resolve()?;
            print(&call(&connection, reqwest::Method::GET, &base, None).await?);
        }
        KeysCommand::Rotate { access_key_id, grace_seconds, owner } => {
            let (connection, base) = owner.resolve()?;
            let path = format!("{base}/{}/rotate", urlencode(&access_key_id));
            let body = json!({ "grace_seconds": grace_seconds });
            print(&call(&connection, reqwest::Method::POST, &path, Some(body)).await?);
        }
        KeysCommand::Revoke { access_key_id, owner } => {
            let (connection, base) = owner.resolve()?;
            let path = format!("{base}/{}", urlencode(&access_key_id));
            print(&call(&connection, reqwest::Method::DELETE, &path, None).await?);
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let mut message = json!({ "body": args.body });
    if let Some(d) = args.delay_seconds {
        message["delay_seconds"] = json!(d);
    }
    if let Some(at) = args.deliver_at_ms {
        message["deliver_at_ms"] = json!(at);
    }
    let path = format!("/v1/queues/{}/messages", urlencode(&args.queue));
    let response = call(&args.connection, reqwest::Method::POST, &path, Some(json!({ "messages": [message] }))).await?;
    for m in response["messages"].as_array().into_iter().flatten() {
        println!("{}", serde_json::to_string(m)?);
    }
    Ok(())
}

pub async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let mut body = json!({ "max_messages": args.max, "wait_seconds": args.wait });
    if let Some(v) = args.visibility {
        body["visibility_timeout_seconds"] = json!(v);
    }
    let path = format!("/v1/queues/{}/receive", urlencode(&args.queue));
    let response = call(&args.connection, reqwest::Method::POST, &path, Some(body)).await?;
    for m in response["messages"].as_array().into_iter().flatten() {
        println!("{}", serde_json::to_string(m)?);
    }
    Ok(())
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let path = format!("/v1/queues/{}/scheduled/{}", urlencode(&args.queue), urlencode(&args.message_id));
    call(&args.connection, reqwest::Method::DELETE, &path, None).await?;
    eprintln!("cancelled");
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let path = format!("/v1/queues/{}/delete", urlencode(&args.queue));
    let body = json!({ "receipt_handles": [args.receipt] });
    let response = call(&args.connection, reqwest::Method::POST, &path, Some(body)).await?;
    let result = &response["results"][0];
    if result["ok"].as_bool() != Some(true) {
        let code = result["error"]["code"].as_str().unwrap_or("Error");
        let message = result["error"]["message"].as_str().unwrap_or("delete failed");
        bail!("{code}: {message}");
    }
    eprintln!("deleted");
    Ok(())
}
