//! `strata`: one binary for every role and for users.
//!
//! - `strata dev` runs the whole service in one process on the embedded defaults.
//! - `strata metadata|storage|proxy|billing --config FILE` run one process of a cluster.
//! - `strata usage|invoice` show the current tenant's bill; `strata plans ...` sets plans,
//!   packages, budgets and limits (operators).
//! - `strata queue|keys|send|receive|delete` talk to a running service (`STRATA_ENDPOINT`,
//!   `STRATA_TOKEN`).
//! - `strata bench` measures a running service.

mod bench;
mod bench_apis;
mod bench_moves;
mod dev;
mod logs;
mod roles;
mod traces;
mod user;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "strata", version, about = "Strata: a serverless, durable, multi-tenant message queue")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process on the embedded defaults (local object store, one replica).
    Dev(dev::DevArgs),
    /// Run one member of the metadata quorum from its config file.
    Metadata(roles::MetadataArgs),
    /// Run one storage node from its config file.
    Storage(roles::RoleArgs),
    /// Run one proxy (native and SQS APIs, admin API) from its config file.
    Proxy(roles::RoleArgs),
    /// Run the billing service (metering consumer, budgets, usage and invoice API) from its
    /// config file.
    Billing(roles::RoleArgs),
    /// Your tenant's usage: per hour, queue, sub-tenant and action.
    Usage(user::UsageArgs),
    /// Your tenant's invoice for a month.
    Invoice(user::InvoiceArgs),
    /// Operators: price plans, prepaid packages, budgets and limits of tenants.
    Plans {
        #[command(subcommand)]
        command: user::PlansCommand,
    },
    /// Print a token the proxies of a proxy config file accept.
    Token(roles::TokenArgs),
    /// Make a local CA for the internal plane (once) and a certificate naming one process.
    Certs(roles::CertsArgs),
    /// Manage queues.
    Queue {
        #[command(subcommand)]
        command: user::QueueCommand,
    },
    /// Manage the access keys of the SQS-compatible API (AWS SigV4).
    Keys {
        #[command(subcommand)]
        command: user::KeysCommand,
    },
    /// Operate a cluster through a proxy's admin API: storage nodes, shards, replica moves.
    Cluster {
        #[command(subcommand)]
        command: user::ClusterCommand,
    },
    /// Send one message.
    Send(user::SendArgs),
    /// Receive messages; prints one JSON object per message.
    Receive(user::ReceiveArgs),
    /// Delete a received message by its receipt handle.
    Delete(user::DeleteArgs),
    /// Cancel a message sent with `--deliver-at-ms` before it is due.
    Cancel(user::CancelArgs),
    /// A message's life by id: sends, receives, deletes, moves, who made each call, where it is.
    Message {
        #[command(subcommand)]
        command: user::MessageCommand,
    },
    /// Measure throughput and latency of a running service.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    // Whatever this process creates, itself or through a library (the billing database, the
    // read cache's files), is its user's only: files 0600, directories 0700.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    // Opt-in: `/metrics` shows the N busiest tenants' calls (strata_telemetry::top_tenants).
    if let Some(n) = std::env::var("STRATA_METRICS_TOP_TENANTS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        strata_telemetry::top_tenants::keep_top(n);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Metadata(args) => roles::metadata(args).await,
            Command::Storage(args) => roles::storage(args).await,
            Command::Proxy(args) => roles::proxy(args).await,
            Command::Token(args) => roles::token(args),
            Command::Certs(args) => roles::certs(args),
            Command::Billing(args) => roles::billing(args).await,
            Command::Usage(args) => user::usage(args).await,
            Command::Invoice(args) => user::invoice(args).await,
            Command::Plans { command } => user::plans(command).await,
            Command::Queue { command } => user::queue(command).await,
            Command::Keys { command } => user::keys(command).await,
            Command::Cluster { command } => user::cluster(command).await,
            Command::Send(args) => user::send(args).await,
            Command::Receive(args) => user::receive(args).await,
            Command::Delete(args) => user::delete(args).await,
            Command::Cancel(args) => user::cancel(args).await,
            Command::Message { command } => user::message(command).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    traces::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
