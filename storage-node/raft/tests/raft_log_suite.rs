//! openraft's storage conformance suite against the WAL-backed log store and the generic state
//! machine store, each test on a fresh directory.

use std::io;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use strata_common::format::FormatGate;
use strata_raft::raft_state::{ReplicatedState, StateMachineStore};
use strata_raft::raft_store::{SegmentRetention, WalLogStore};
use strata_wal::{FsyncFailure, WalOptions};
use tempfile::TempDir;

mod support;
use support::Applied;

openraft::declare_raft_types!(
    pub SuiteConfig:
        D = String,
        R = String,
        NodeId = u64,
        Node = openraft::BasicNode,
);

impl ReplicatedState for Applied {
    type Command = String;
    type Response = String;

    fn apply(&mut self, _log_index: u64, command: &String) -> String {
        self.0.push(command.clone());
        command.clone()
    }

    fn noop_response() -> String {
        String::new()
    }

    fn copy_for_snapshot(&self) -> Self {
        self.clone()
    }
}

struct Builder {
    retention: SegmentRetention,
    segment_size_bytes_max: u64,
}

impl StoreBuilder<SuiteConfig, WalLogStore<SuiteConfig>, StateMachineStore<SuiteConfig, Applied>, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, WalLogStore<SuiteConfig>, StateMachineStore<SuiteConfig, Applied>), StorageError<SuiteConfig>>
    {
        let dir = TempDir::new().map_err(|e| StorageError::read(SuiteConfig::err_from_error(&e)))?;
        let options = WalOptions {
            segment_size_bytes_max: self.segment_size_bytes_max,
            on_fsync_error: FsyncFailure::Poison,
            ..Default::default()
        };
        let log = WalLogStore::open(&dir.path().join("raft"), options, self.retention, FormatGate::newest())
            .map_err(|e: io::Error| StorageError::read(SuiteConfig::err_from_error(&e)))?;
        let sm = StateMachineStore::open(&dir.path().join("state"), FormatGate::newest())
            .map_err(|e| StorageError::read(SuiteConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_with_default_segments() -> Result<(), StorageError<SuiteConfig>> {
    Suite::test_all(Builder { retention: SegmentRetention::KeepUntilReleased, segment_size_bytes_max: 64 << 20 }).await
}

/// Tiny segments make every multi-entry test cross segment boundaries, and removal on purge
/// exercises physical deletion under the suite's purge tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_with_tiny_segments_removed_on_purge() -> Result<(), StorageError<SuiteConfig>> {
    Suite::test_all(Builder { retention: SegmentRetention::RemoveOnPurge, segment_size_bytes_max: 128 }).await
}
