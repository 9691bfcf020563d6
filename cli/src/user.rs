//! User subcommands: thin wrappers over the native HTTP API (through `strata-client`, the one
//! client of it) that print JSON.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Duration;
use strata_client::model::{self, admin};
use strata_client::{Client, path_segment};
use strata_common::Clock;

/// Where a call goes and the token it carries.
pub(crate) struct Target {
    endpoint: String,
    token: String,
}

/// The tenant API: from `--endpoint`/`--token` or the environment `strata dev` writes.
#[derive(Args, Clone)]
pub(crate) struct Connection {
    /// Service endpoint, e.g. http://127.0.0.1:9324
    #[arg(long, env = "STRATA_ENDPOINT", hide_env_values = true)]
    endpoint: Option<String>,
    /// Bearer token (JWT) of your tenant.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// What to do when a setting is missing: name the file `strata dev` writes it to.
fn missing(variable: &str, flag: &str) -> anyhow::Error {
    let credentials = crate::dev::default_data_dir().join("dev-credentials.env");
    anyhow::anyhow!(
        "{variable} is not set: run `source {}` (written by `strata dev`; its banner names it when --data-dir \
         is elsewhere), export {variable} for your cluster, or pass {flag}",
        credentials.display()
    )
}

impl Target {
    fn client(&self) -> Client {
        Client::new(&self.endpoint, &self.token)
    }
}

impl Connection {
    pub(crate) fn target(self) -> anyhow::Result<Target> {
        let endpoint = self.endpoint.ok_or_else(|| missing("STRATA_ENDPOINT", "--endpoint"))?;
        let token = self.token.ok_or_else(|| missing("STRATA_TOKEN", "--token"))?;
        Ok(Target { endpoint, token })
    }

    fn client(self) -> anyhow::Result<Client> {
        Ok(self.target()?.client())
    }
}

#[derive(Subcommand)]
pub(crate) enum QueueCommand {
    /// Create a queue (idempotent with identical attributes). A name ending with .fifo makes a
    /// FIFO queue, and only such a name does.
    Create {
        name: String,
        #[command(flatten)]
        settings: QueueSettings,
        /// A tag, KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = tag_arg)]
        tags: Vec<(String, String)>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Change a queue's settings (those given; the others stay).
    Update {
        name: String,
        #[command(flatten)]
        settings: QueueSettings,
        /// Remove the queue's dead-letter queue.
        #[arg(long, conflicts_with_all = ["dead_letter_queue", "max_receive_count"])]
        no_dead_letter: bool,
        /// Let every queue use this one as its dead-letter queue again.
        #[arg(long, conflicts_with_all = ["redrive_allow", "redrive_allow_source"])]
        no_redrive_allow: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete every message of a queue.
    Purge {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a queue's tags; with --tag/--untag, change them.
    Tags {
        name: String,
        /// A tag to add or overwrite, KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = tag_arg)]
        tags: Vec<(String, String)>,
        /// A tag key to remove (repeatable).
        #[arg(long)]
        untag: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a queue's metrics minute by minute (sent, received, deleted, empty receives, moved
    /// to the dead-letter queue, bytes, depth) and its depth now. Minutes are kept 15 days.
    Metrics {
        name: String,
        /// The last this many minutes (at most 21600, 15 days).
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// Print the answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the queues that use this queue as their dead-letter queue.
    DeadLetterSources {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Move a dead-letter queue's messages back (to its only source queue unless --to), or list
    /// or cancel such moves.
    Move {
        /// The dead-letter queue.
        name: String,
        /// Where the messages go (default: the queue's only source queue).
        #[arg(long, conflicts_with_all = ["list", "cancel"])]
        to: Option<String>,
        /// Messages per second (1-500; default 100).
        #[arg(long, conflicts_with_all = ["list", "cancel"])]
        rate: Option<u64>,
        /// List the queue's move tasks instead.
        #[arg(long, conflicts_with = "cancel")]
        list: bool,
        /// Cancel this move task instead.
        #[arg(long)]
        cancel: Option<String>,
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

/// Settings a queue create or update may give (absent: the default, or unchanged).
#[derive(Args, Clone, Default)]
pub(crate) struct QueueSettings {
    #[arg(long)]
    retention_seconds: Option<u64>,
    #[arg(long)]
    visibility_timeout_seconds: Option<u64>,
    #[arg(long)]
    delay_seconds: Option<u64>,
    /// Largest message (body plus attributes), 1024-1048576 bytes.
    #[arg(long)]
    maximum_message_bytes: Option<u64>,
    /// Long-poll wait of a receive that does not say, 0-20 s.
    #[arg(long)]
    receive_wait_seconds: Option<u64>,
    /// FIFO: deduplicate sends without a deduplication id by their body.
    #[arg(long)]
    content_based_deduplication: Option<bool>,
    /// FIFO: queue or message_group.
    #[arg(long)]
    deduplication_scope: Option<String>,
    /// FIFO: per_queue or per_message_group_id.
    #[arg(long)]
    throughput_limit: Option<String>,
    /// Dead-letter queue: where a message goes after --max-receive-count receives.
    #[arg(long, requires = "max_receive_count")]
    dead_letter_queue: Option<String>,
    /// Receives before a message moves to the dead-letter queue (1-1000).
    #[arg(long, requires = "dead_letter_queue")]
    max_receive_count: Option<u64>,
    /// Who may use this queue as a dead-letter queue: allow_all, deny_all or by_queue.
    #[arg(long)]
    redrive_allow: Option<String>,
    /// With --redrive-allow by_queue: a queue allowed (repeatable, at most 10).
    #[arg(long)]
    redrive_allow_source: Vec<String>,
}

/// `value` as one of the choices of `T` (a snake_case enum of the API), or an error naming them.
fn choice<T: DeserializeOwned>(flag: &str, value: &str, choices: &str) -> anyhow::Result<T> {
    serde_json::from_value(Value::String(value.to_owned()))
        .map_err(|_| anyhow::anyhow!("{flag} must be one of {choices}, not '{value}'"))
}

impl QueueSettings {
    /// The settings given, as the API's change (absent: unchanged, or the default).
    fn change(&self) -> anyhow::Result<model::QueueAttributesChange> {
        let deduplication_scope = match &self.deduplication_scope {
            Some(v) => Some(choice("--deduplication-scope", v, "queue, message_group")?),
            None => None,
        };
        let throughput_limit = match &self.throughput_limit {
            Some(v) => Some(choice("--throughput-limit", v, "per_queue, per_message_group_id")?),
            None => None,
        };
        let dead_letter = match (&self.dead_letter_queue, self.max_receive_count) {
            (Some(queue), Some(max_receive_count)) => {
                Some(Some(model::DeadLetter { queue: queue.clone(), max_receive_count }))
            }
            _ => None,
        };
        let redrive_allow = match &self.redrive_allow {
            Some(permission) => Some(Some(model::RedriveAllow {
                permission: choice("--redrive-allow", permission, "allow_all, deny_all, by_queue")?,
                source_queues: self.redrive_allow_source.clone(),
            })),
            None => None,
        };
        Ok(model::QueueAttributesChange {
            retention_seconds: self.retention_seconds,
            visibility_timeout_seconds: self.visibility_timeout_seconds,
            delay_seconds: self.delay_seconds,
            maximum_message_bytes: self.maximum_message_bytes,
            receive_wait_seconds: self.receive_wait_seconds,
            fifo: None,
            content_based_deduplication: self.content_based_deduplication,
            deduplication_scope,
            throughput_limit,
            dead_letter,
            redrive_allow,
        })
    }
}

/// `KEY=VALUE`, a queue tag.
fn tag_arg(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or("expected KEY=VALUE, such as team=payments")?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Whose keys (or bill): your own (tenant token), or any tenant's as an operator (`--tenant`,
/// admin API).
#[derive(Args, Clone)]
pub(crate) struct KeyOwner {
    /// Manage (or read) this tenant's keys or bill through the admin API (needs STRATA_ADMIN_ENDPOINT and
    /// STRATA_ADMIN_TOKEN) instead of your own.
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long, env = "STRATA_ADMIN_ENDPOINT", hide_env_values = true)]
    admin_endpoint: Option<String>,
    #[arg(long, env = "STRATA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    own: Connection,
}

impl KeyOwner {
    /// The connection and the path of a route family: `/admin/v1/tenants/{tenant}/{admin_route}`
    /// with `--tenant`, else the tenant's own `own_path`.
    fn resolve_to(self, admin_route: &str, own_path: &str) -> anyhow::Result<(Target, String)> {
        match self.tenant {
            Some(tenant) => {
                let endpoint =
                    self.admin_endpoint.ok_or_else(|| missing("STRATA_ADMIN_ENDPOINT", "--admin-endpoint"))?;
                let token = self.admin_token.ok_or_else(|| missing("STRATA_ADMIN_TOKEN", "--admin-token"))?;
                Ok((Target { endpoint, token }, format!("/admin/v1/tenants/{}/{admin_route}", path_segment(&tenant))))
            }
            None => Ok((self.own.target()?, own_path.to_string())),
        }
    }

    /// The connection and the path prefix of the key routes.
    fn resolve(self) -> anyhow::Result<(Target, String)> {
        self.resolve_to("access-keys", "/v1/access-keys")
    }
}

/// The operators' admin API of a proxy.
#[derive(clap::Args)]
pub(crate) struct AdminConnection {
    #[arg(long, env = "STRATA_ADMIN_ENDPOINT", hide_env_values = true)]
    admin_endpoint: String,
    #[arg(long, env = "STRATA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// List the tenants with their queue counts; with a tenant, its queues with their depth,
    /// stored bytes and last minute's messages, and the totals.
    Tenants {
        /// A tenant whose queues to show.
        tenant: Option<String>,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// List the storage nodes, with whether each keeps its lease and which format generations it
    /// reads, and the generation the cluster writes.
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
    /// Add a shard (a new Raft group) on the least loaded live storage nodes; new queues are
    /// placed on it as on the others.
    AddShard {
        /// Replicas of the new shard (default: as many as shard 1 has).
        #[arg(long)]
        replicas: Option<u32>,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Split a shard: add a shard on the live nodes hosting the fewest shards and move some of
    /// its queues there online (half of them by default). Waits for the moves to end and prints
    /// them. Not idempotent: run again, it adds another shard.
    SplitShard {
        shard_id: u64,
        /// How many of its queues move.
        #[arg(long)]
        queues: Option<u32>,
        /// Print the moves as started, without waiting for them to end.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Hand a shard's leadership to its replica on another storage node (which must be caught
    /// up); if that one does not take over within seconds, leadership falls back to another
    /// caught-up replica. Prints who leads then.
    TransferLeader {
        shard_id: u64,
        /// The storage node whose replica is to lead.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Show which shard a queue lives on, and its epoch (how many times it moved).
    Queue {
        tenant: String,
        queue: String,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Move a queue to another shard, online: calls on it pause for about a second (they wait
    /// and go on at the new shard). Waits for the move to end and prints it, with how long the
    /// queue paused and the bytes copied; a move that cannot happen rolls back, with the reason.
    MoveQueue {
        tenant: String,
        queue: String,
        #[arg(long)]
        to_shard: u64,
        /// Print the move as started, without waiting for it to end.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// List the queue moves under way and the last 100 that ended, with their timings.
    Moves {
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Drain a storage node: the shards it leads hand their leadership over, its replicas move
    /// to other live nodes (each joins as a learner, catches up, becomes a voter, then the old
    /// one leaves), and the node is deregistered. Waits until it is gone, printing its progress;
    /// a dead node is replaced the same way.
    DrainNode {
        node: String,
        /// Print the node as its drain started, without waiting for it to end.
        #[arg(long)]
        no_wait: bool,
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

/// How long `drain-node` waits for its node to be drained (each replica move takes a few
/// seconds; a node holds at most a few hundred).
const DRAIN_WAIT: Duration = Duration::from_secs(3600);

/// Waits until storage node `node` left the list of storage nodes (drained and deregistered),
/// telling on stderr how many shards it still holds whenever that changes.
pub(crate) async fn wait_for_drain(client: &Client, node: &str, wait: Duration) -> anyhow::Result<()> {
    let clock = strata_common::SystemClock;
    let started = clock.instant();
    let mut told = None;
    loop {
        let listed = client.storage_nodes().await?;
        let Some(left) = listed.storage_nodes.iter().find(|n| n.node_id == node) else { return Ok(()) };
        if told != Some(left.shards) {
            eprintln!("{node}: {} shard replicas left to move", left.shards);
            told = Some(left.shards);
        }
        if clock.instant().duration_since(started) > wait {
            bail!("{node} still holds {} shard replicas after {} s", left.shards, wait.as_secs());
        }
        clock.sleep(Duration::from_secs(1)).await;
    }
}

/// How long `move-queue` waits for its move to end (a move that cannot finish its hand-over
/// rolls back within 30 s of its start).
const MOVE_WAIT: Duration = Duration::from_secs(90);

/// The move `move_id` once it ended (completed or rolled back), polling the moves every 50 ms
/// for at most `wait`.
pub(crate) async fn wait_for_move(client: &Client, move_id: u64, wait: Duration) -> anyhow::Result<admin::QueueMove> {
    let clock = strata_common::SystemClock;
    let started = clock.instant();
    loop {
        let moves = client.queue_moves().await?.moves;
        if let Some(ended) = moves.into_iter().find(|m| m.move_id == move_id && !m.is_under_way()) {
            return Ok(ended);
        }
        if clock.instant().duration_since(started) > wait {
            bail!("move {move_id} has not ended after {} s; see `strata cluster moves`", wait.as_secs());
        }
        clock.sleep(Duration::from_millis(50)).await;
    }
}

/// `ID=ENDPOINT`, a metadata member to add.
fn member_arg(text: &str) -> Result<(u64, String), String> {
    let (id, endpoint) = text.split_once('=').ok_or("expected ID=ENDPOINT, such as 4=http://10.0.0.4:7001")?;
    let id = id.parse().map_err(|_| format!("'{id}' is not a member id"))?;
    Ok((id, endpoint.to_owned()))
}

pub(crate) async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let admin = |a: AdminConnection| Client::new(&a.admin_endpoint, &a.admin_token);
    match command {
        ClusterCommand::Tenants { tenant: None, admin: a } => {
            let client = admin(a);
            let mut next: Option<String> = None;
            loop {
                let page = client.tenants(next.as_deref()).await?;
                for t in &page.tenants {
                    println!("{}\t{} queues", t.tenant, t.queues);
                }
                match page.next_token {
                    Some(token) => next = Some(token),
                    None => break,
                }
            }
        }
        ClusterCommand::Tenants { tenant: Some(tenant), admin: a } => {
            let client = admin(a);
            let mut next: Option<String> = None;
            loop {
                let page = client.tenant_queues(&tenant, next.as_deref()).await?;
                print(&page);
                match page.next_token {
                    Some(token) => next = Some(token),
                    None => break,
                }
            }
        }
        ClusterCommand::Nodes { admin: a } => print(&admin(a).storage_nodes().await?),
        ClusterCommand::Shard { shard_id, admin: a } => print(&admin(a).shard(shard_id).await?),
        ClusterCommand::MetadataMembers { add, remove, admin: a } if add.is_empty() && remove.is_empty() => {
            print(&admin(a).metadata_members().await?)
        }
        ClusterCommand::MetadataMembers { add, remove, admin: a } => {
            let add = add.into_iter().map(|(node_id, address)| admin::MetadataMember { node_id, address }).collect();
            print(&admin(a).change_metadata_members(&admin::ChangeMembers { add, remove }).await?)
        }
        ClusterCommand::AddShard { replicas, admin: a } => {
            print(&admin(a).add_shard(&admin::AddShard { replicas }).await?)
        }
        ClusterCommand::SplitShard { shard_id, queues, no_wait, admin: a } => {
            let client = admin(a);
            let mut split = client.split_shard(shard_id, &admin::SplitShard { queues }).await?;
            if !no_wait {
                let mut ended = Vec::with_capacity(split.moves.len());
                for started in &split.moves {
                    ended.push(wait_for_move(&client, started.move_id, MOVE_WAIT).await?);
                }
                split.moves = ended;
            }
            print(&split);
        }
        ClusterCommand::TransferLeader { shard_id, to, admin: a } => {
            print(&admin(a).transfer_leader(shard_id, &admin::TransferLeader { to_node: to }).await?)
        }
        ClusterCommand::Queue { tenant, queue, admin: a } => print(&admin(a).queue_placement(&tenant, &queue).await?),
        ClusterCommand::MoveQueue { tenant, queue, to_shard, no_wait, admin: a } => {
            let client = admin(a);
            let started = client.move_queue(&tenant, &queue, &admin::MoveQueue { to_shard }).await?;
            if no_wait {
                print(&started);
            } else {
                let ended = wait_for_move(&client, started.move_id, MOVE_WAIT).await?;
                print(&ended);
                if ended.phase != "completed" {
                    bail!("the move rolled back: {}", ended.reason);
                }
            }
        }
        ClusterCommand::Moves { admin: a } => print(&admin(a).queue_moves().await?),
        ClusterCommand::DrainNode { node, no_wait, admin: a } => {
            let client = admin(a);
            let started = client.drain_node(&node).await?;
            if no_wait {
                print(&started);
            } else {
                wait_for_drain(&client, &node, DRAIN_WAIT).await?;
                print(&serde_json::json!({ "node_id": node, "drained": true }));
            }
        }
        ClusterCommand::MoveReplica { shard_id, from, to, admin: a } => {
            let request = admin::MoveReplica { from_node: from, to_node: to };
            print(&admin(a).move_replica(shard_id, &request).await?)
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
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
pub(crate) struct SendArgs {
    queue: String,
    /// The message body (or give --body-file).
    #[arg(required_unless_present = "body_file", conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the body from this file; `-` reads standard input.
    #[arg(long)]
    body_file: Option<std::path::PathBuf>,
    /// FIFO queues: the message group (messages of a group are delivered in order).
    #[arg(long)]
    group_id: Option<String>,
    /// FIFO queues: a send with an id seen in the last 5 minutes is not stored again.
    #[arg(long)]
    deduplication_id: Option<String>,
    #[arg(long, conflicts_with = "deliver_at_ms")]
    delay_seconds: Option<u64>,
    /// Deliver at this unix time in milliseconds (up to a year ahead); cancel with
    /// `strata cancel QUEUE MESSAGE_ID` until then.
    #[arg(long)]
    deliver_at_ms: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Subcommand)]
pub(crate) enum MessageCommand {
    /// What happened to a message, by its id, for its retention: each send, receive, visibility
    /// change, delete and move, with the credential and request id of each call, and where the
    /// message is now.
    Trace {
        queue: String,
        /// The id its send answered.
        message_id: String,
        /// Print the answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(crate) async fn message(command: MessageCommand) -> anyhow::Result<()> {
    match command {
        MessageCommand::Trace { queue, message_id, json, connection } => {
            let trace = connection.client()?.message_trace(&queue, &message_id).await?;
            match json {
                true => print(&trace),
                false => print_message_trace(&trace),
            }
        }
    }
    Ok(())
}

/// Unix milliseconds as a UTC time to the millisecond.
fn utc_ms(at_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(at_ms).unwrap_or(i64::MAX))
        .map_or_else(|| at_ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
}

/// A message's trace as a table: one row per event, then where the message is now.
fn print_message_trace(trace: &model::MessageTrace) {
    println!("message {} of queue {}", trace.message_id, trace.queue);
    println!("{:<23} {:<20} {:<20} {:<40} detail", "time (UTC)", "queue", "event", "by (credential, request)");
    for e in &trace.events {
        let by = match (&e.credential, &e.request_id) {
            (Some(credential), Some(request)) => format!("{credential} {request}"),
            (Some(credential), None) => credential.clone(),
            _ => "-".to_owned(),
        };
        let mut detail = Vec::new();
        if let Some(count) = e.receive_count {
            detail.push(format!("receive #{count}"));
        }
        if let Some(at) = e.visible_at_ms {
            detail.push(format!("visible again at {}", utc_ms(at)));
        }
        if let Some(other) = &e.other_queue {
            let kind = if e.dead_letter == Some(true) { "dead-letter queue " } else { "" };
            detail.push(format!("{kind}{other}"));
        }
        if let Some(at) = e.deliver_at_ms {
            detail.push(format!("due at {}", utc_ms(at)));
        }
        println!("{:<23} {:<20} {:<20} {:<40} {}", utc_ms(e.at_ms), e.queue, e.event, by, detail.join(", "));
    }
    let mut now = format!("now: {}", trace.now.state);
    if let Some(queue) = &trace.now.queue {
        now.push_str(&format!(" in {queue}"));
    }
    if let Some(at) = trace.now.visible_at_ms {
        now.push_str(&format!(", visible at {}", utc_ms(at)));
    }
    println!("{now}");
}

#[derive(Args)]
pub(crate) struct CancelArgs {
    queue: String,
    /// The id a send with `--deliver-at-ms` answered.
    message_id: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args)]
pub(crate) struct ReceiveArgs {
    queue: String,
    /// Messages to receive at most (1-10).
    #[arg(long, default_value_t = 1)]
    max: u32,
    /// Long-poll for up to this many seconds (0-20; default: the queue's).
    #[arg(long)]
    wait: Option<u64>,
    /// Hide received messages for this many seconds (default: the queue's).
    #[arg(long)]
    visibility: Option<u64>,
    /// FIFO queues: a retry with the same id (within 5 minutes) receives the same messages.
    #[arg(long)]
    attempt_id: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args)]
pub(crate) struct DeleteArgs {
    queue: String,
    receipt: String,
    #[command(flatten)]
    connection: Connection,
}

/// Sends a request and returns its JSON body, or fails with the service's error code and message
/// (for the routes of other services, such as billing's, which `strata-client` has no types for).
async fn call(connection: &Target, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    Ok(connection.client().json(method, path, body.as_ref()).await?)
}

fn print(value: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A queue's metrics as a table: one row per minute in which something happened, then the depth
/// now.
fn print_queue_metrics(metrics: &model::QueueMetrics) {
    let depth = |d: &model::QueueDepth| {
        format!("{:>8} {:>9} {:>8} {:>10}", d.visible, d.in_flight, d.delayed, d.oldest_message_age_seconds)
    };
    println!(
        "{:<17} {:>7} {:>8} {:>7} {:>6} {:>5} {:>10} {:>10} {:>8} {:>9} {:>8} {:>10}",
        "minute (UTC)",
        "sent",
        "received",
        "deleted",
        "empty",
        "dlq",
        "bytes in",
        "bytes out",
        "visible",
        "in flight",
        "delayed",
        "oldest (s)"
    );
    for m in &metrics.minutes {
        let start = chrono::DateTime::from_timestamp(i64::try_from(m.start).unwrap_or(i64::MAX), 0)
            .map_or_else(|| m.start.to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string());
        let depth = m.depth.as_ref().map_or_else(|| format!("{:>38}", "-"), depth);
        println!(
            "{start:<17} {:>7} {:>8} {:>7} {:>6} {:>5} {:>10} {:>10} {depth}",
            m.sent, m.received, m.deleted, m.empty_receives, m.moved_to_dead_letter, m.bytes_in, m.bytes_out
        );
    }
    println!("{:<17} {:>68} {}", "now", "", depth(&metrics.now));
}

pub(crate) async fn queue(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Create { name, settings, tags, connection } => {
            let request = model::CreateQueue { name, attributes: settings.change()?, tags: tags.into_iter().collect() };
            print(&connection.client()?.create_queue(&request).await?);
        }
        QueueCommand::Update { name, settings, no_dead_letter, no_redrive_allow, connection } => {
            let mut change = settings.change()?;
            if no_dead_letter {
                change.dead_letter = Some(None);
            }
            if no_redrive_allow {
                change.redrive_allow = Some(None);
            }
            if change == model::QueueAttributesChange::default() {
                bail!("nothing to change: give at least one setting (see --help)");
            }
            print(&connection.client()?.update_queue(&name, &change).await?);
        }
        QueueCommand::List { prefix, connection } => {
            let client = connection.client()?;
            let mut query = model::ListQueuesQuery { prefix, ..Default::default() };
            loop {
                let page = client.list_queues(&query).await?;
                page.queues.iter().for_each(|queue| println!("{}", queue.name));
                match page.next_token {
                    Some(token) => query.next_token = Some(token),
                    None => break,
                }
            }
        }
        QueueCommand::Delete { name, connection } => {
            connection.client()?.delete_queue(&name).await?;
            eprintln!("deleted queue {name}");
        }
        QueueCommand::Attributes { name, connection } => {
            print(&connection.client()?.get_queue(&name).await?);
        }
        QueueCommand::Purge { name, connection } => {
            let answer = connection.client()?.purge_queue(&name).await?;
            eprintln!("purged {} messages from {name}", answer.purged);
        }
        QueueCommand::Tags { name, tags, untag, connection } => {
            let client = connection.client()?;
            if !tags.is_empty() {
                client.tag_queue(&name, &model::TagSet { tags: tags.into_iter().collect() }).await?;
            }
            for key in untag {
                client.untag_queue(&name, &key).await?;
            }
            print(&client.tags(&name).await?);
        }
        QueueCommand::Metrics { name, minutes, json, connection } => {
            let to_s = strata_common::Clock::now_ms(&strata_common::SystemClock) / 1000 + 1;
            let from_s = to_s.saturating_sub(minutes.max(1).saturating_mul(60));
            let metrics = connection.client()?.queue_metrics(&name, Some(from_s), Some(to_s)).await?;
            match json {
                true => print(&metrics),
                false => print_queue_metrics(&metrics),
            }
        }
        QueueCommand::DeadLetterSources { name, connection } => {
            let client = connection.client()?;
            let mut page_query = model::PageQuery::default();
            loop {
                let page = client.dead_letter_sources(&name, &page_query).await?;
                page.queues.iter().for_each(|queue| println!("{queue}"));
                match page.next_token {
                    Some(token) => page_query.next_token = Some(token),
                    None => break,
                }
            }
        }
        QueueCommand::Move { name, to, rate, list, cancel, connection } => {
            let client = connection.client()?;
            match (list, cancel) {
                (true, _) => print(&client.move_tasks(&name).await?),
                (false, Some(task)) => print(&client.cancel_move_task(&name, &task).await?),
                (false, None) => {
                    let request = model::StartMoveTask { destination: to, max_messages_per_second: rate };
                    print(&client.start_move_task(&name, &request).await?)
                }
            }
        }
    }
    Ok(())
}

/// Whose keys a call names: the tenant given with `--tenant`, else the caller.
fn key_owner(tenant: &Option<String>) -> strata_client::KeyOwner<'_> {
    match tenant {
        Some(tenant) => strata_client::KeyOwner::Tenant(tenant),
        None => strata_client::KeyOwner::Caller,
    }
}

pub(crate) async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let client = |owner: KeyOwner| -> anyhow::Result<(Client, Option<String>)> {
        let tenant = owner.tenant.clone();
        let (target, _) = owner.resolve()?;
        Ok((target.client(), tenant))
    };
    match command {
        KeysCommand::Create { owner } => {
            let (client, tenant) = client(owner)?;
            print(&client.create_access_key(key_owner(&tenant)).await?);
        }
        KeysCommand::List { owner } => {
            let (client, tenant) = client(owner)?;
            print(&client.access_keys(key_owner(&tenant)).await?);
        }
        KeysCommand::Rotate { access_key_id, grace_seconds, owner } => {
            let (client, tenant) = client(owner)?;
            let request = model::RotateKey { grace_seconds: Some(grace_seconds) };
            print(&client.rotate_access_key(key_owner(&tenant), &access_key_id, &request).await?);
        }
        KeysCommand::Revoke { access_key_id, owner } => {
            let (client, tenant) = client(owner)?;
            print(&client.revoke_access_key(key_owner(&tenant), &access_key_id).await?);
        }
    }
    Ok(())
}

/// Largest body file read (the service refuses more than 1 MiB anyway).
const BODY_FILE_BYTES_MAX: u64 = 1 << 20;

fn read_body(args: &SendArgs) -> anyhow::Result<String> {
    use std::io::Read;
    let Some(path) = &args.body_file else { return Ok(args.body.clone().unwrap_or_default()) };
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(BODY_FILE_BYTES_MAX + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(BODY_FILE_BYTES_MAX + 1).read_to_end(&mut bytes))
    };
    read.with_context(|| format!("reading the body from {}", path.display()))?;
    if bytes.len() as u64 > BODY_FILE_BYTES_MAX {
        bail!("the body is larger than {BODY_FILE_BYTES_MAX} bytes, the most a message holds");
    }
    String::from_utf8(bytes).context("the body must be UTF-8 text")
}

pub(crate) async fn send(args: SendArgs) -> anyhow::Result<()> {
    let message = model::NewMessage {
        body: read_body(&args)?,
        attributes: Default::default(),
        delay_seconds: args.delay_seconds,
        deliver_at_ms: args.deliver_at_ms,
        group_id: args.group_id,
        deduplication_id: args.deduplication_id,
    };
    let client = args.connection.client()?;
    let response = client.send(&args.queue, &model::SendMessages { messages: vec![message] }, None).await?;
    for m in &response.messages {
        println!("{}", serde_json::to_string(m)?);
    }
    Ok(())
}

pub(crate) async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let request = model::Receive {
        max_messages: Some(args.max),
        wait_seconds: args.wait,
        visibility_timeout_seconds: args.visibility,
        attempt_id: args.attempt_id,
    };
    let response = args.connection.client()?.receive(&args.queue, &request).await?;
    for m in &response.messages {
        println!("{}", serde_json::to_string(m)?);
    }
    Ok(())
}

pub(crate) async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    args.connection.client()?.cancel_scheduled(&args.queue, &args.message_id).await?;
    eprintln!("cancelled");
    Ok(())
}

pub(crate) async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let request = model::DeleteMessages { receipt_handles: vec![args.receipt] };
    let response = args.connection.client()?.delete_messages(&args.queue, &request).await?;
    match response.results.into_iter().next() {
        Some(model::DeleteOutcome { ok: true, .. }) => {}
        Some(model::DeleteOutcome { error: Some(e), .. }) => bail!("{}: {}", e.code, e.message),
        _ => bail!("Error: delete failed"),
    }
    eprintln!("deleted");
    Ok(())
}

// ---------------------------------------------------------------------------------- billing

#[derive(Args)]
pub(crate) struct UsageArgs {
    /// The month (YYYY-MM, UTC); default: this month.
    #[arg(long)]
    month: Option<String>,
    /// Group by any of hour, queue, sub_tenant and action (comma-separated; default: all).
    #[arg(long)]
    by: Option<String>,
    /// Print the JSON answer.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV.
    #[arg(long)]
    csv: bool,
    /// (`--tenant`: an operator reads a tenant's bill through the admin API.)
    #[command(flatten)]
    owner: KeyOwner,
    #[command(flatten)]
    billing: BillingEndpoints,
}

/// The billing service's own listeners (cluster mode); `strata dev` serves billing on the
/// proxy's, so these are not needed there.
#[derive(Args)]
pub(crate) struct BillingEndpoints {
    /// The billing service's tenant API, instead of STRATA_ENDPOINT.
    #[arg(long, env = "STRATA_BILLING_ENDPOINT", hide_env_values = true)]
    billing_endpoint: Option<String>,
    /// The billing service's admin API (with --tenant), instead of STRATA_ADMIN_ENDPOINT.
    #[arg(long, env = "STRATA_BILLING_ADMIN_ENDPOINT", hide_env_values = true)]
    billing_admin_endpoint: Option<String>,
}

impl BillingEndpoints {
    /// Where the billing routes of `owner` are reached, and their path prefix.
    fn resolve(self, owner: KeyOwner) -> anyhow::Result<(Target, String)> {
        let admin = owner.tenant.is_some();
        let (mut target, prefix) = owner.resolve_to("billing", "/v1/billing")?;
        let endpoint = if admin { self.billing_admin_endpoint } else { self.billing_endpoint };
        if let Some(endpoint) = endpoint {
            target.endpoint = endpoint;
        }
        Ok((target, prefix))
    }
}

#[derive(Args)]
pub(crate) struct InvoiceArgs {
    /// The month (YYYY-MM, UTC); default: this month so far.
    #[arg(long)]
    month: Option<String>,
    /// Print the JSON answer (amounts in currency units).
    #[arg(long)]
    json: bool,
    /// (`--tenant`: an operator reads a tenant's bill through the admin API.)
    #[command(flatten)]
    owner: KeyOwner,
    #[command(flatten)]
    billing: BillingEndpoints,
}

fn month_arg(month: Option<String>) -> anyhow::Result<strata_billing::pricing::Month> {
    use strata_common::Clock;
    match month {
        Some(text) => Ok(text.parse()?),
        None => Ok(strata_billing::pricing::Month::of_ms(strata_common::SystemClock.now_ms())?),
    }
}

/// An amount of micro-units in currency units, with at least two decimals (`12.00`, `0.40`,
/// `0.000004`).
fn currency(micros: u64) -> String {
    let fraction = format!("{:06}", micros % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    format!("{}.{fraction:0<2}", micros / 1_000_000)
}

/// Fields of the billing API's answers that hold money (in micro-units).
const MONEY_FIELDS: [&str; 7] =
    ["price_per_million_units", "fee_per_month", "price", "monthly_budget", "hard_cap", "amount", "total"];

/// Rewrites the money fields of a billing answer into currency units (as strings, exact).
fn money_in_currency(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                match field.as_u64() {
                    Some(micros) if MONEY_FIELDS.contains(&key.as_str()) => *field = json!(currency(micros)),
                    _ => money_in_currency(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(money_in_currency),
        _ => {}
    }
}

/// Dollars (`0.40`, `12`) as micro-units.
fn parse_dollars(text: &str) -> Result<u64, String> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.len() > 6 {
        return Err(format!("'{text}' is not an amount (at most 6 decimals)"));
    }
    let whole: u64 =
        if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("'{text}' is not an amount"))? };
    let fraction: u64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().map_err(|_| format!("'{text}' is not an amount"))?
    };
    whole.checked_mul(1_000_000).and_then(|w| w.checked_add(fraction)).ok_or_else(|| format!("'{text}' is too large"))
}

pub(crate) async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let month = month_arg(args.month)?;
    let (connection, prefix) = args.billing.resolve(args.owner)?;
    let mut path = format!("{prefix}/usage?from_ms={}&to_ms={}", month.start_ms()?, month.end_ms()?);
    if let Some(by) = &args.by {
        path.push_str(&format!("&group_by={}", path_segment(by)));
    }
    if args.csv {
        path.push_str("&format=csv");
    }
    let answer = call(&connection, reqwest::Method::GET, &path, None).await?;
    if args.csv {
        print!("{}", answer.as_str().unwrap_or_default());
        return Ok(());
    }
    if args.json {
        print(&answer);
        return Ok(());
    }
    println!("usage of {} in {month}: {} units", answer["tenant"].as_str().unwrap_or(""), answer["total_units"]);
    println!(
        "{:<20} {:<24} {:<16} {:<24} {:>10} {:>10}",
        "hour (UTC)", "queue", "sub-tenant", "action", "calls", "units"
    );
    for row in answer["rows"].as_array().into_iter().flatten() {
        // Rows grouped without the hour are the month's totals.
        let period = match row["hour_start_ms"].as_u64() {
            Some(hour_ms) => chrono::DateTime::from_timestamp_millis(hour_ms as i64)
                .map_or_else(|| hour_ms.to_string(), |t| t.format("%Y-%m-%d %H:00").to_string()),
            None => format!("{month} (month)"),
        };
        println!(
            "{:<20} {:<24} {:<16} {:<24} {:>10} {:>10}",
            period,
            row["queue"].as_str().unwrap_or(""),
            row["sub_tenant"].as_str().unwrap_or(""),
            row["action"].as_str().unwrap_or(""),
            row["calls"].as_u64().unwrap_or(0),
            row["units"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

pub(crate) async fn invoice(args: InvoiceArgs) -> anyhow::Result<()> {
    let month = month_arg(args.month)?;
    let (connection, prefix) = args.billing.resolve(args.owner)?;
    let mut answer = call(&connection, reqwest::Method::GET, &format!("{prefix}/invoices/{month}"), None).await?;
    if args.json {
        money_in_currency(&mut answer);
        print(&answer);
        return Ok(());
    }
    println!("invoice of {} for {month}", answer["tenant"].as_str().unwrap_or(""));
    for line in answer["lines"].as_array().into_iter().flatten() {
        println!(
            "  {:<48} {:>14} units {:>16}",
            line["description"].as_str().unwrap_or(""),
            line["units"].as_u64().unwrap_or(0),
            currency(line["amount"].as_u64().unwrap_or(0))
        );
    }
    println!("  {:<48} {:>37}", "total", currency(answer["total"].as_u64().unwrap_or(0)));
    Ok(())
}

/// Limits as flags (0 or absent: none of that kind; in a tenant's overrides: the plan's).
#[derive(Args, Clone)]
pub(crate) struct LimitFlags {
    #[arg(long, default_value_t = 0)]
    requests_per_second: u64,
    #[arg(long, default_value_t = 0)]
    payload_bytes_per_second: u64,
    #[arg(long, default_value_t = 0)]
    queues_max: u64,
    #[arg(long, default_value_t = 0)]
    in_flight_messages_max: u64,
    /// Bytes of messages the tenant's queues may hold together.
    #[arg(long, default_value_t = 0)]
    stored_bytes_max: u64,
}

impl LimitFlags {
    fn limits(&self) -> model::TenantLimits {
        model::TenantLimits {
            requests_per_second: self.requests_per_second,
            payload_bytes_per_second: self.payload_bytes_per_second,
            queues_max: self.queues_max,
            in_flight_messages_max: self.in_flight_messages_max,
            stored_bytes_max: self.stored_bytes_max,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum PlansCommand {
    /// Set a tenant's price plan: pay per call (a free tier, then a price per million units)
    /// or dedicated capacity at a flat monthly fee.
    SetPrice {
        #[arg(long)]
        tenant: String,
        /// Units free each month (pay per call).
        #[arg(long, default_value_t = 1_000_000)]
        free_units: u64,
        /// Price of a million units, in dollars (pay per call).
        #[arg(long, value_parser = parse_dollars, default_value = "0.40")]
        price_per_million: u64,
        /// A flat monthly fee in dollars: dedicated capacity instead of pay per call.
        #[arg(long, value_parser = parse_dollars)]
        dedicated_fee: Option<u64>,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Sell a tenant a prepaid package (once per id).
    AddPackage {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        units: u64,
        /// Its price in dollars.
        #[arg(long, value_parser = parse_dollars)]
        price: u64,
        /// First month it covers (YYYY-MM).
        #[arg(long)]
        from_month: String,
        /// How many months it covers.
        #[arg(long, default_value_t = 12)]
        months: u32,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Set a tenant's monthly budget (an alert when reached) and hard cap (calls refused).
    SetBudget {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = parse_dollars, default_value = "0")]
        budget: u64,
        #[arg(long, value_parser = parse_dollars, default_value = "0")]
        hard_cap: u64,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Create or replace a limits plan (the plan named `default` applies to plan-less tenants).
    SetLimitPlan {
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Put a tenant on a limits plan with its own overrides.
    SetLimits {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        plan: String,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Show a tenant's price plan, packages, budget, alerts and limits.
    Show {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        admin: AdminConnection,
    },
}

pub(crate) async fn plans(command: PlansCommand) -> anyhow::Result<()> {
    let admin = |a: AdminConnection| Target { endpoint: a.admin_endpoint, token: a.admin_token };
    let billing = |tenant: &str| format!("/admin/v1/tenants/{}/billing", path_segment(tenant));
    let put = reqwest::Method::PUT;
    let mut answer = match command {
        PlansCommand::SetPrice { tenant, free_units, price_per_million, dedicated_fee, admin: a } => {
            let plan = match dedicated_fee {
                Some(fee) => json!({ "kind": "dedicated", "fee_per_month": fee }),
                None => json!({
                    "kind": "pay_per_call",
                    "free_units_per_month": free_units,
                    "price_per_million_units": price_per_million,
                }),
            };
            call(&admin(a), put, &format!("{}/plan", billing(&tenant)), Some(plan)).await?
        }
        PlansCommand::AddPackage { tenant, id, units, price, from_month, months, admin: a } => {
            let first: strata_billing::pricing::Month = from_month.parse()?;
            let last = (1..months.max(1)).fold(first, |m, _| m.next());
            let package = json!({
                "package_id": id,
                "units": units,
                "valid_from_ms": first.start_ms()?,
                "valid_until_ms": last.end_ms()?,
                "price": price,
            });
            call(&admin(a), reqwest::Method::POST, &format!("{}/packages", billing(&tenant)), Some(package)).await?
        }
        PlansCommand::SetBudget { tenant, budget, hard_cap, admin: a } => {
            let body = json!({ "monthly_budget": budget, "hard_cap": hard_cap });
            call(&admin(a), put, &format!("{}/budget", billing(&tenant)), Some(body)).await?
        }
        PlansCommand::SetLimitPlan { name, limits, admin: a } => {
            serde_json::to_value(admin(a).client().set_limit_plan(&name, &limits.limits()).await?)?
        }
        PlansCommand::SetLimits { tenant, plan, limits, admin: a } => {
            let request = admin::SetTenantLimits { plan, overrides: limits.limits() };
            serde_json::to_value(admin(a).client().set_tenant_limits(&tenant, &request).await?)?
        }
        PlansCommand::Show { tenant, admin: a } => {
            let connection = admin(a);
            let get = |path: String| {
                let connection = &connection;
                async move { call(connection, reqwest::Method::GET, &path, None).await }
            };
            json!({
                "tenant": tenant,
                "plan": get(format!("{}/plan", billing(&tenant))).await?["plan"],
                "packages": get(format!("{}/packages", billing(&tenant))).await?["packages"],
                "budget": get(format!("{}/budget", billing(&tenant))).await?["budget"],
                "alerts": get(format!("{}/alerts", billing(&tenant))).await?["alerts"],
                "limits": connection.client().limits(strata_client::KeyOwner::Tenant(&tenant)).await?,
            })
        }
    };
    money_in_currency(&mut answer);
    print(&answer);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{currency, money_in_currency, parse_dollars};

    #[test]
    fn money_prints_in_currency_units() {
        assert_eq!(currency(12_000_000), "12.00");
        assert_eq!(currency(400_000), "0.40");
        assert_eq!(currency(4), "0.000004");
        assert_eq!(currency(1_234_500), "1.2345");
        let mut answer = json!({ "plan": { "price_per_million_units": 400_000, "free_units_per_month": 1_000_000 },
            "lines": [{ "units": 3, "amount": 1_500_000 }] });
        money_in_currency(&mut answer);
        assert_eq!(answer["plan"]["price_per_million_units"], "0.40");
        assert_eq!(answer["plan"]["free_units_per_month"], 1_000_000);
        assert_eq!(answer["lines"][0]["amount"], "1.50");
        assert_eq!(answer["lines"][0]["units"], 3);
    }

    #[test]
    fn dollars_parse_to_micros() {
        assert_eq!(parse_dollars("0.40"), Ok(400_000));
        assert_eq!(parse_dollars("12"), Ok(12_000_000));
        assert_eq!(parse_dollars(".5"), Ok(500_000));
        assert_eq!(parse_dollars("1.000001"), Ok(1_000_001));
        assert!(parse_dollars("1.0000001").is_err());
        assert!(parse_dollars("x").is_err());
        assert!(parse_dollars("").is_err());
        assert!(parse_dollars("-1").is_err());
    }
}
