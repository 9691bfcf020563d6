//! The metadata quorum: a Raft group (openraft, one voter in `strata dev`) whose state is the
//! [`catalog::Catalog`] of tenants, queues, shard placement, storage nodes and segments.
//!
//! [`server`] runs the group and serves it over gRPC; [`client`] is how every other component
//! talks to it. Its Raft log is the same WAL as the shards' (`strata-wal`).

pub mod backup;
pub mod catalog;
pub mod client;
mod formats;
pub mod leases;
pub mod server;

pub use catalog::{
    Catalog, MetaCommand, MetaEntry, MetaResponse, QueueConfig, QueueRecord, SegmentRecord, ShardRecord,
};
pub use client::MetadataClient;
pub use server::MetadataNode;

openraft::declare_raft_types!(
    /// Raft types of the metadata quorum.
    pub MetaRaftConfig:
        D = MetaEntry,
        R = MetaResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);
