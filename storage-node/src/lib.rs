//! The storage node: shard logs (the WAL as openraft's log), the queue state machine, tiering of
//! sealed segments to object storage, and the cached read path for tiered data.
//!
//! The proxy reaches it only through its gRPC API ([`service`]): over the network, or by calling
//! the same service in process when both run in one process ([`StorageNode::grpc_service`]).

pub mod backfill;
mod calls;
pub mod disk;
pub mod error;
mod hand_offs;
pub mod hibernation;
pub mod message_trace;
pub mod node;
mod operations;
pub mod queue;
pub mod queue_metrics;
mod queue_moves;
pub mod schedule_files;
pub mod service;
pub mod shard;
pub mod tier;

pub use error::NodeError;
pub use node::{ObjectStoreSettings, ReadyChecker, StorageNode, StorageSettings};
