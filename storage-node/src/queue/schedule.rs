//! Scheduled messages (native API `deliver_at_ms`, up to a year ahead) whose memory does not grow
//! with the number of far-future messages.
//!
//! Time is cut into slices of [`SLICE_MS`]. A message due in a slice that starts at least
//! [`LOAD_LEAD_MS`] after the shard clock is not kept in memory: apply hands a [`SliceRecord`] to
//! the storage node, which appends it to that slice's file (`schedule_files`), and the state keeps
//! only a [`Slice`] summary per non-empty slice (at most ~52,600 for a year). Cancelling such a
//! message appends a cancel record to the same file.
//!
//! When a slice comes within [`LOAD_LEAD_MS`] of the clock, the storage node proposes
//! [`Command::StartScheduledLoad`](super::Command::StartScheduledLoad): from then on the slice's
//! file is frozen (later sends and cancels for it go to memory). The node then reads the file and
//! proposes its records in order as [`Command::LoadScheduled`](super::Command::LoadScheduled)
//! chunks, dropping cancelled messages; each chunk moves its messages into their queues' wheels
//! (`store`), in memory until due. The chunks carry the records themselves, so replaying the log
//! never reads a slice file, and every replica loads the same messages.
//!
//! A scheduled message's id encodes its deliver-at time ([`scheduled_message_id`]), so a cancel
//! by id finds its slice without any per-message index.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::{MessageRef, QueueId};

/// Width of a time slice: one file and one summary each.
pub const SLICE_MS: u64 = 10 * 60 * 1000;
/// How long before its start a slice is loaded into memory.
pub const LOAD_LEAD_MS: u64 = 60 * 1000;
/// Most messages one [`Command::LoadScheduled`](super::Command::LoadScheduled) carries.
pub const LOAD_CHUNK_RECORDS_MAX: usize = 2_000;

/// The start of the slice holding `deliver_at_ms`.
pub fn slice_of(deliver_at_ms: u64) -> u64 {
    deliver_at_ms - deliver_at_ms % SLICE_MS
}

/// The id of a message scheduled for `deliver_at_ms`: a version-8 UUID whose first 48 bits are
/// the deliver-at time in milliseconds (as in a version-7 UUID) and whose other bits are random.
pub fn scheduled_message_id(deliver_at_ms: u64, random: Uuid) -> Uuid {
    let mut bytes = *random.as_bytes();
    bytes[..6].copy_from_slice(&deliver_at_ms.to_be_bytes()[2..]);
    Uuid::new_v8(bytes)
}

/// The deliver-at time a scheduled message's id carries; `None` if it is not such an id.
pub fn deliver_at_of(message_id: &Uuid) -> Option<u64> {
    if message_id.get_version_num() != 8 {
        return None;
    }
    let mut time = [0u8; 8];
    time[2..].copy_from_slice(&message_id.as_bytes()[..6]);
    Some(u64::from_be_bytes(time))
}

/// A message waiting for its deliver-at time, on disk or in a queue's wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    pub queue: QueueId,
    pub message_id: Uuid,
    pub body_ref: MessageRef,
    pub deliver_at_ms: u64,
    pub sent_ms: u64,
    /// What it counts in its queue's stored bytes while in the wheel. Not part of the serde
    /// layout, nor of slice records: a message loaded from disk counts its queue's mean (see
    /// `Queue::load_scheduled`).
    #[serde(skip)]
    pub body_bytes: u32,
}

/// One record of a slice file, in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SliceRecord {
    Message(ScheduledMessage),
    /// The message `message_id` of `queue` was cancelled by the command at `log_index`.
    Cancel {
        log_index: u64,
        queue: QueueId,
        message_id: Uuid,
    },
}

impl SliceRecord {
    /// The log index of the command that wrote the record (its Send, or its cancel).
    pub fn log_index(&self) -> u64 {
        match self {
            SliceRecord::Message(m) => m.body_ref.log_index,
            SliceRecord::Cancel { log_index, .. } => *log_index,
        }
    }
}

/// Whether a slice file's records hold message `message_id` of `queue`, sent after the queue's
/// last purge (`purged_at_log_index`) and not cancelled: what a cancel needs before it is
/// proposed, since the state keeps no index of the messages on disk.
pub fn is_waiting_in(records: &[SliceRecord], queue: QueueId, message_id: Uuid, purged_at_log_index: u64) -> bool {
    let sent = records.iter().any(|r| {
        matches!(r, SliceRecord::Message(m)
            if m.queue == queue && m.message_id == message_id && m.body_ref.log_index >= purged_at_log_index)
    });
    let cancelled = records
        .iter()
        .any(|r| matches!(r, SliceRecord::Cancel { queue: q, message_id: id, .. } if *q == queue && *id == message_id));
    sent && !cancelled
}

/// A change to the slice files that an apply asks the storage node to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceWrite {
    Append {
        slice_start_ms: u64,
        record: SliceRecord,
    },
    /// The slice is loaded: its file is no longer needed (replay reads the load commands).
    Remove {
        slice_start_ms: u64,
    },
}

/// What the state knows of a slice file: counts, not messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Records in the file (messages and cancels).
    pub records: u64,
    /// Lowest body log index of its messages: segment GC keeps the log from there.
    pub min_log_index: u64,
    /// Set by `StartScheduledLoad`: the file takes no more records.
    pub loading: bool,
    /// Records already loaded (a prefix of the file).
    pub loaded: u64,
    /// Messages cancelled while the slice was loading and not loaded yet: skipped when they come.
    pub cancels: BTreeSet<(QueueId, Uuid)>,
}

/// The slice summaries of a shard, and the file writes the last apply asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Schedule {
    pub(crate) slices: BTreeMap<u64, Slice>,
    /// Drained by the storage node after every apply; never snapshotted.
    #[serde(skip)]
    pub(crate) writes: Vec<SliceWrite>,
}

impl Schedule {
    /// Whether a message due at `deliver_at_ms` goes to its slice file (else to memory) at `now_ms`.
    pub(crate) fn goes_to_disk(&self, deliver_at_ms: u64, now_ms: u64) -> bool {
        let slice_start_ms = slice_of(deliver_at_ms);
        slice_start_ms >= now_ms.saturating_add(LOAD_LEAD_MS)
            && !self.slices.get(&slice_start_ms).is_some_and(|s| s.loading)
    }

    fn append(&mut self, slice_start_ms: u64, record: SliceRecord) {
        let slice = self
            .slices
            .entry(slice_start_ms)
            .or_insert_with(|| Slice { min_log_index: record.log_index(), ..Slice::default() });
        slice.records += 1;
        if let SliceRecord::Message(m) = &record {
            slice.min_log_index = slice.min_log_index.min(m.body_ref.log_index);
        }
        self.writes.push(SliceWrite::Append { slice_start_ms, record });
    }

    pub(crate) fn append_message(&mut self, message: ScheduledMessage) {
        self.append(slice_of(message.deliver_at_ms), SliceRecord::Message(message));
    }

    /// Appends a cancel to a slice that is on disk and not loading; false if there is none.
    pub(crate) fn append_cancel(
        &mut self,
        log_index: u64,
        queue: QueueId,
        message_id: Uuid,
        deliver_at_ms: u64,
    ) -> bool {
        let slice_start_ms = slice_of(deliver_at_ms);
        if self.slices.get(&slice_start_ms).is_none_or(|s| s.loading) {
            return false;
        }
        self.append(slice_start_ms, SliceRecord::Cancel { log_index, queue, message_id });
        true
    }

    /// Lowest body log index of any message on disk.
    pub(crate) fn min_log_index(&self) -> Option<u64> {
        self.slices.values().map(|s| s.min_log_index).min()
    }

    /// The first slice, if it is due for loading at `now_ms`: its start and summary.
    pub(crate) fn next_load(&self, now_ms: u64) -> Option<(u64, &Slice)> {
        let (&start, slice) = self.slices.first_key_value()?;
        (start < now_ms.saturating_add(LOAD_LEAD_MS)).then_some((start, slice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_id_carries_its_deliver_at_time() {
        for deliver_at_ms in [0, 1, 1_795_000_000_123, (1 << 48) - 1] {
            let id = scheduled_message_id(deliver_at_ms, strata_common::Random::os().uuid());
            assert_eq!(deliver_at_of(&id), Some(deliver_at_ms));
            assert_eq!(id.get_version_num(), 8);
        }
        assert_eq!(deliver_at_of(&strata_common::Random::os().uuid()), None);
    }

    #[test]
    fn slices_start_on_their_width() {
        assert_eq!(slice_of(0), 0);
        assert_eq!(slice_of(SLICE_MS - 1), 0);
        assert_eq!(slice_of(SLICE_MS), SLICE_MS);
        assert_eq!(slice_of(5 * SLICE_MS + 7), 5 * SLICE_MS);
    }
}
