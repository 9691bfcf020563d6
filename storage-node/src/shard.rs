//! One shard: a Raft group whose log is the WAL and whose state is the queue state machine.
//!
//! [`Shard::propose`] stamps a command with the leader's clock and returns once the entry is
//! durable (fsynced by group commit) and applied. Message bodies are read back from the log by
//! [`MessageRef`]: from the local WAL while the segment is on disk, otherwise from object storage
//! through the [`TieredReader`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use openraft::{BasicNode, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use strata_common::Clock;
use strata_common::error::{ErrorKind, StrataError};
use strata_wal::group::{RaftGroup, open_single_voter};
use strata_wal::raft_state::{ReplicatedState, StateGuard};
use strata_wal::raft_store::SegmentRetention;
use strata_wal::{FsyncFailure, WalOptions};
use tokio::sync::watch;

use crate::queue::{Command, MessageRef, NewMessage, QueueError, Response, ShardCommand, ShardState};
use crate::tier::TieredReader;

/// A shard log entry: one queue command stamped with the leader's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry(pub ShardCommand);

impl fmt::Display for ShardEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.0.command {
            Command::CreateQueue { .. } => "create-queue",
            Command::SetQueueConfig { .. } => "set-queue-config",
            Command::DeleteQueue { .. } => "delete-queue",
            Command::Send { .. } => "send",
            Command::Receive { .. } => "receive",
            Command::Delete { .. } => "delete",
            Command::ChangeVisibility { .. } => "change-visibility",
            Command::Purge { .. } => "purge",
            Command::Expire => "expire",
            Command::StartMoveTask { .. } => "start-move-task",
            Command::CancelMoveTask { .. } => "cancel-move-task",
            Command::MoveStep { .. } => "move-step",
            Command::ReceiveAttempt { .. } => "receive-attempt",
        };
        write!(f, "{name}@{}", self.0.now_ms)
    }
}

/// The replicated state of a shard.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardMachine(pub ShardState);

impl ReplicatedState for ShardMachine {
    type Command = ShardEntry;
    type Response = Response;

    fn apply(&mut self, log_index: u64, command: &ShardEntry) -> Response {
        self.0.apply(log_index, &command.0)
    }

    fn noop_response() -> Response {
        Response::Expired { count: 0 }
    }
}

openraft::declare_raft_types!(
    /// Raft types of a shard group.
    pub ShardRaftConfig:
        D = ShardEntry,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
);

/// Settings of a shard's log.
#[derive(Debug, Clone)]
pub struct ShardLogSettings {
    /// A segment is sealed (and becomes eligible for tiering) at this size.
    pub segment_size_bytes_max: u64,
    /// State machine snapshot every this many entries; segments below the snapshot may leave
    /// the local disk once tiered.
    pub snapshot_every_entries: u64,
    /// A shard that appended nothing for this long seals its active segment, so the tail of an
    /// idle queue tiers too instead of waiting for the segment to fill.
    pub seal_idle_after: std::time::Duration,
}

impl Default for ShardLogSettings {
    fn default() -> Self {
        Self {
            segment_size_bytes_max: 64 * 1024 * 1024,
            snapshot_every_entries: 20_000,
            seal_idle_after: std::time::Duration::from_secs(60),
        }
    }
}

/// Maps a state-machine error onto the public error vocabulary (exhaustive, no wildcard).
pub fn queue_error(e: QueueError) -> StrataError {
    let kind = match &e {
        QueueError::QueueNotFound => ErrorKind::QueueNotFound,
        QueueError::QueueAlreadyExists => ErrorKind::Internal,
        QueueError::InvalidParameter(_) | QueueError::TooManyEntries => ErrorKind::InvalidParameter,
        QueueError::InvalidReceipt => ErrorKind::InvalidReceipt,
        QueueError::StaleReceipt => ErrorKind::StaleReceipt,
        QueueError::MessageNotInFlight => ErrorKind::MessageNotInFlight,
        QueueError::InFlightLimit => ErrorKind::LimitExceeded,
    };
    StrataError::new(kind, e.to_string())
}

/// A running shard.
pub struct Shard {
    pub shard_id: u64,
    pub writer_epoch: u64,
    group: RaftGroup<ShardRaftConfig, ShardMachine>,
    clock: Arc<dyn Clock>,
    tiered: Arc<TieredReader>,
}

impl Shard {
    pub async fn open(
        dir: &Path,
        shard_id: u64,
        writer_epoch: u64,
        settings: &ShardLogSettings,
        clock: Arc<dyn Clock>,
        tiered: Arc<TieredReader>,
    ) -> anyhow::Result<Self> {
        let config = Config {
            cluster_name: format!("strata-shard-{shard_id}"),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every_entries),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        };
        let wal_options = WalOptions {
            segment_size_bytes_max: settings.segment_size_bytes_max,
            on_fsync_error: FsyncFailure::Abort,
            ..Default::default()
        };
        let group = open_single_voter::<ShardRaftConfig, ShardMachine>(
            dir,
            1,
            BasicNode::default(),
            config,
            wal_options,
            SegmentRetention::KeepUntilReleased,
        )
        .await?;
        Ok(Self { shard_id, writer_epoch, group, clock, tiered })
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Proposes a command at the current time; returns after it is durable and applied.
    pub async fn propose(&self, command: Command) -> Result<Response, StrataError> {
        let entry = ShardEntry(ShardCommand { now_ms: self.clock.now_ms(), command });
        let response = self.group.raft.client_write(entry).await.map_err(|e| {
            tracing::warn!(shard = self.shard_id, error = %e, "shard proposal failed");
            StrataError::unavailable("the shard is not available; retry")
        })?;
        match response.data {
            Response::Error(e) => Err(queue_error(e)),
            other => Ok(other),
        }
    }

    /// The applied queue state. Hold the guard briefly: applies wait for it.
    pub fn state(&self) -> StateGuard<'_, ShardRaftConfig, ShardMachine> {
        self.group.state.read()
    }

    /// Changes whenever entries are applied.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.group.state.subscribe_applied()
    }

    /// The last log index Raft has purged: entries at or below it are covered by a snapshot and
    /// are never read by Raft again (restart replay starts after it).
    pub fn purged_index(&self) -> Option<u64> {
        self.group.log.last_purged_index()
    }

    pub fn trigger_snapshot(&self) {
        let raft = self.group.raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "snapshot trigger failed");
            }
        });
    }

    pub fn wal(&self) -> &strata_wal::Wal {
        self.group.log.wal()
    }

    /// Reads the message a [`MessageRef`] points at: local WAL first, then object storage.
    pub async fn read_message(&self, at: MessageRef) -> Result<NewMessage, StrataError> {
        let entry = match self.group.log.read_entry(at.log_index) {
            Ok(Some(entry)) => entry,
            Ok(None) => self.tiered.read_entry(self.shard_id, at.log_index).await?,
            Err(e) => {
                tracing::error!(shard = self.shard_id, index = at.log_index, error = %e, "local log read failed");
                return Err(StrataError::internal("could not read a message from the log"));
            }
        };
        let openraft::EntryPayload::Normal(ShardEntry(ShardCommand {
            command: Command::Send { messages, .. }, ..
        })) = entry.payload
        else {
            tracing::error!(shard = self.shard_id, index = at.log_index, "message reference is not a send entry");
            return Err(StrataError::internal("message reference does not point at a send"));
        };
        messages.into_iter().nth(usize::from(at.slot)).ok_or_else(|| {
            tracing::error!(shard = self.shard_id, index = at.log_index, slot = at.slot, "message slot out of range");
            StrataError::internal("message reference points past its batch")
        })
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.group.raft.shutdown().await {
            tracing::warn!(shard = self.shard_id, error = %e, "shard raft shutdown");
        }
        self.group.log.wal().close();
    }
}

/// Decodes a shard log entry from a WAL record payload (used for tiered segments).
pub fn decode_entry(bytes: &Bytes) -> Result<openraft::alias::EntryOf<ShardRaftConfig>, StrataError> {
    postcard::from_bytes(bytes).map_err(|e| {
        tracing::error!(error = %e, "undecodable shard log entry in a tiered segment");
        StrataError::internal("a stored log entry could not be decoded")
    })
}
