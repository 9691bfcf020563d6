//! `strata-storage-client`: how the front doors and services reach the storage nodes.
//!
//! - [`clients`]: one cached gRPC client per storage node address (or the node's service itself
//!   when it runs in the same process);
//! - [`routing`]: where a tenant's queue lives (from metadata, cached), following shard leaders;
//! - [`queues`]: queue operations with the stale-placement recovery and retries every caller
//!   needs.
//!
//! It depends on `strata-common` and `strata-metadata-client`, never on a server.

pub mod clients;
pub mod queues;
pub mod routing;
