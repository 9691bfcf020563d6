//! A shard's metering outbox: the records of billable calls whose commands this shard applied.
//!
//! # What it owns
//!
//! A proxy puts a call's metering record ([`MeterRecord`]) in the same log entry as the call's
//! command. When the command applies without error, the record enters the outbox with the next
//! outbox sequence number, in the same state transition: the call's effect and its record are
//! committed (and fsynced) together, so neither exists without the other. The billing service
//! reads the oldest records from the shard's leader and, once it has counted them, proposes
//! `TrimMetering` to drop them.
//!
//! # What it guarantees
//!
//! - A record leaves the outbox only through a trim at or past its sequence number.
//! - The outbox holds at most [`OUTBOX_RECORDS_MAX`] records and about [`OUTBOX_BYTES_MAX`]
//!   bytes. When it is full (the billing service is behind), metered commands are refused with
//!   `MeteringBacklogFull` and change nothing: a call is never served unbilled.
//!
//! The records are a persistent vector, so a copy of the state for a snapshot takes constant
//! time however many records wait.

use imbl::Vector;

use serde::{Deserialize, Serialize};
use strata_common::metering::{MeterRecord, UsageSum, key_may_repeat, sum_usage, text_bytes};

/// Most records an outbox holds.
pub const OUTBOX_RECORDS_MAX: usize = 200_000;
/// Most bytes (by [`record_bytes`]) an outbox holds.
pub const OUTBOX_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A record's size beyond its text fields (its numbers and the collection's overhead).
const RECORD_OVERHEAD_BYTES: usize = 64;

/// A record's size, as the outbox counts it.
fn record_bytes(r: &MeterRecord) -> usize {
    text_bytes(r) + RECORD_OVERHEAD_BYTES
}

/// What [`MeterOutbox::read`] answers: the records numbered `first_seq..=through_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRead {
    pub first_seq: u64,
    pub through_seq: u64,
    /// The records whose billing key may come again in another call, in order.
    pub keyed: Vec<MeterRecord>,
    /// The other records, summed per usage row.
    pub usage: Vec<UsageSum>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterOutbox {
    /// The sequence number of `records[0]` (the next record's is `first_seq + records.len()`).
    first_seq: u64,
    records: Vector<MeterRecord>,
    /// Sum of [`record_bytes`] over `records`.
    bytes: usize,
}

impl Default for MeterOutbox {
    fn default() -> Self {
        // Sequence numbers start at 1, so a trim through 0 drops nothing.
        Self { first_seq: 1, records: Vector::new(), bytes: 0 }
    }
}

impl MeterOutbox {
    /// Whether a new record would exceed the limits.
    pub fn is_full(&self) -> bool {
        self.records.len() >= OUTBOX_RECORDS_MAX || self.bytes >= OUTBOX_BYTES_MAX
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds a record (the caller checked [`Self::is_full`] first).
    pub fn push(&mut self, record: MeterRecord) {
        self.bytes += record_bytes(&record);
        self.records.push_back(record);
    }

    /// The oldest `records_max` records, for counting: those whose key a client chose as they
    /// are, the others summed per usage row (`None` when the outbox is empty).
    pub fn read(&self, records_max: usize) -> Option<OutboxRead> {
        let count = self.records.len().min(records_max);
        let through_seq = self.first_seq + (count as u64).checked_sub(1)?;
        let oldest = || self.records.iter().take(count);
        Some(OutboxRead {
            first_seq: self.first_seq,
            through_seq,
            keyed: oldest().filter(|r| key_may_repeat(&r.request_id)).cloned().collect(),
            usage: sum_usage(oldest().filter(|r| !key_may_repeat(&r.request_id))),
        })
    }

    /// The oldest `records_max` records and the sequence number of the last of them (`None`
    /// when the outbox is empty).
    #[cfg(test)]
    pub fn oldest(&self, records_max: usize) -> Option<(u64, Vec<MeterRecord>)> {
        let records: Vec<MeterRecord> = self.records.iter().take(records_max).cloned().collect();
        let through_seq = self.first_seq + (records.len() as u64).checked_sub(1)?;
        Some((through_seq, records))
    }

    /// Drops every record up to and including `through_seq`; a trim of records already
    /// dropped (a retried trim) drops nothing more.
    pub fn trim(&mut self, through_seq: u64) {
        while self.first_seq <= through_seq {
            let Some(record) = self.records.pop_front() else { break };
            self.bytes -= record_bytes(&record);
            self.first_seq += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> MeterRecord {
        MeterRecord { request_id: id.into(), tenant: "acme".into(), action: "SendMessage".into(), ..Default::default() }
    }

    #[test]
    fn records_leave_only_by_a_trim_through_their_sequence_number() {
        let mut outbox = MeterOutbox::default();
        assert_eq!(outbox.oldest(10), None);
        for id in ["a", "b", "c"] {
            outbox.push(record(id));
        }
        let (through, records) = outbox.oldest(2).unwrap();
        assert_eq!(through, 2);
        assert_eq!(records, vec![record("a"), record("b")]);
        outbox.trim(0);
        assert_eq!(outbox.len(), 3);
        outbox.trim(through);
        outbox.trim(through);
        assert_eq!(outbox.oldest(10), Some((3, vec![record("c")])));
        outbox.push(record("d"));
        outbox.trim(100);
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes, 0);
        outbox.push(record("e"));
        assert_eq!(outbox.oldest(10), Some((5, vec![record("e")])));
    }

    #[test]
    fn a_read_keeps_client_keyed_records_and_sums_the_others() {
        let mut outbox = MeterOutbox::default();
        assert_eq!(outbox.read(10), None);
        let priced = |id| MeterRecord { units: 2, ..record(id) };
        for id in ["p-1", "c-1", "p-2", "p-3", "c-2"] {
            outbox.push(priced(id));
        }
        outbox.trim(1);
        let read = outbox.read(3).unwrap();
        assert_eq!((read.first_seq, read.through_seq), (2, 4));
        assert_eq!(read.keyed, vec![priced("c-1")]);
        assert_eq!(read.usage.len(), 1);
        assert_eq!((read.usage[0].calls, read.usage[0].units, read.usage[0].tenant.as_str()), (2, 4, "acme"));
    }

    #[test]
    fn the_outbox_is_full_at_its_record_limit() {
        let mut outbox = MeterOutbox::default();
        for _ in 0..OUTBOX_RECORDS_MAX {
            assert!(!outbox.is_full());
            outbox.push(record("r"));
        }
        assert!(outbox.is_full());
        outbox.trim(1);
        assert!(!outbox.is_full());
    }
}
