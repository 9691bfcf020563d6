//! The metadata quorum: a Raft group (openraft, one voter in `strata dev`) whose state is the
//! [`catalog::Catalog`] of tenants, queues, shard placement, storage nodes and segments.
//!
//! [`server`] runs the group and serves it over gRPC; every other component talks to it through
//! `strata-metadata-client`. Its Raft runtime is the shards' (`strata-raft`).

pub mod backup;
pub mod catalog;
mod drains;
pub mod error;
mod formats;
pub mod leases;
pub mod quorum;
pub mod sealing;
pub mod server;

pub use catalog::{
    Catalog, MetaCommand, MetaEntry, MetaResponse, QueueConfig, QueueRecord, SegmentRecord, ShardRecord,
};
pub use error::MemberError;
pub use server::MetadataNode;

openraft::declare_raft_types!(
    /// Raft types of the metadata quorum.
    pub MetaRaftConfig:
        D = MetaEntry,
        R = MetaResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);
