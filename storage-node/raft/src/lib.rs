//! `strata-raft`: the Raft runtime of every shard and of the metadata quorum, on top of the WAL.
//!
//! - [`raft_store`]: openraft's log storage on a [`strata_wal::Wal`] (entries, vote, committed
//!   and purged ids);
//! - [`raft_state`]: openraft's state machine around any deterministic [`raft_state::ReplicatedState`],
//!   with snapshots and their side files;
//! - [`persisted`]: the persisted forms of the log's own data (entries, votes, log ids,
//!   memberships), versioned and gated by the cluster's format generation (`docs/formats.md`);
//! - [`transport`]: Raft messages between processes over gRPC, one router per process;
//! - [`group`]: opening a group (single voter or replicated) from those parts;
//! - `probe`: the Raft figures of `/metrics`, read from every open group at a scrape;
//! - [`requests`]: the answers of recently applied request ids, for exactly-once retries.
//!
//! Time: openraft runs its elections, heartbeats and timeouts on tokio's timer, so this crate's
//! own waits and timeouts read the same time through [`RAFT_CLOCK`] (tokio's clock, which a test
//! can pause) rather than through a clock of their caller's choosing that Raft would not follow.

pub mod group;
pub mod persisted;
mod probe;
pub mod raft_state;
pub mod raft_store;
pub mod requests;
pub mod single_voter;
pub mod transport;

/// The clock Raft runs on: tokio's, as openraft's own timers are.
pub(crate) const RAFT_CLOCK: strata_common::SystemClock = strata_common::SystemClock;
