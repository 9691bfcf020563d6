//! The metering vocabulary shared by the proxies (which meter calls) and the billing service
//! (which counts them): the record of one billable call, billable units, and where records go.
//!
//! A record is durable before the call it bills is answered, by one of two routes:
//!
//! - A call that writes to a shard (a send) carries its record in the same log entry as its
//!   command. The shard keeps the record in its metering outbox once the command applies, so the
//!   call and its record commit together, with one fsync. The billing service drains the outboxes
//!   through the storage nodes (`ReadMetering`, `TrimMetering`).
//! - Every other call's record is appended, in batches of [`MeterRecord`]s as one message each,
//!   to the [`METERING_QUEUE`] of the [`SYSTEM_TENANT`], a queue of Strata itself, which the
//!   billing service consumes.
//!
//! Either way the billing service counts each record once per (tenant, request id).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The tenant that owns Strata's internal queues. It is reserved: no credential can name it
/// ([`crate::names::validate_tenant`] refuses it), so no tenant can read or write its queues.
pub const SYSTEM_TENANT: &str = "strata-system";
/// The system queue metering records travel in, from proxies to the billing service.
pub const METERING_QUEUE: &str = "metering";
/// Payload bytes per billable unit (the SQS convention).
pub const UNIT_PAYLOAD_BYTES: u64 = 64 * 1024;
/// Most encoded bytes of records in one metering message (well under the message limit).
pub const BATCH_BYTES_MAX: usize = 512 * 1024;
/// Most records in one metering message.
pub const BATCH_RECORDS_MAX: usize = 1_000;

/// How long a metering batch a billing service received stays invisible: long enough to store
/// it, and what a crash of the billing service delays its counting by (a batch counted twice is
/// counted once).
const METERING_VISIBILITY_TIMEOUT_MS: u64 = 10_000;

/// The metering queue's attributes: messages kept as long as possible.
pub fn metering_queue_config() -> crate::proto::QueueConfig {
    crate::proto::QueueConfig {
        retention_ms: crate::limits::RETENTION_MS_MAX,
        visibility_timeout_ms: METERING_VISIBILITY_TIMEOUT_MS,
        ..Default::default()
    }
}

/// Billable units of one call with `payload_bytes` of payload: one per started 64 KiB, at least
/// one (an empty receive is one unit too).
pub fn billable_units(payload_bytes: u64) -> u64 {
    payload_bytes.div_ceil(UNIT_PAYLOAD_BYTES).max(1)
}

/// One accepted call, as a proxy meters it. Persisted: in shard log entries and outboxes
/// (postcard, inside the shard's versioned command and state formats) and in metering batches
/// (JSON), so its fields and their order are part of those formats (see `docs/formats.md`); the
/// gRPC `proto::MeterRecord` converts to and from it at the service boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterRecord {
    /// The call's billing key: the same on every retry of the call.
    pub request_id: String,
    /// From the verified credential.
    pub tenant: String,
    /// The tenant's own customer, from `x-strata-customer` (empty when not given).
    pub sub_tenant: String,
    /// The queue's name (empty for calls on no queue).
    pub queue: String,
    /// The API action, such as `SendMessage`.
    pub action: String,
    /// When the call was accepted (milliseconds since the Unix epoch).
    pub at_ms: u64,
    pub units: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// A receive that returned no message.
    pub empty_receive: bool,
}

crate::same_fields!(MeterRecord, crate::proto::MeterRecord, {
    request_id, tenant, sub_tenant, queue, action, at_ms, units, bytes_in, bytes_out, empty_receive,
});

/// Prefix of a billing key derived from the client's id for the call: every retry of the call
/// has the same key.
pub const CLIENT_KEY_PREFIX: &str = "c-";
/// Prefix of a billing key the proxy generated for a call without a client id: unique to one
/// attempt, so no other call has it.
pub const GENERATED_KEY_PREFIX: &str = "p-";

/// Whether another call may carry the same billing key (a client's retry, which may reach
/// another shard or come after a shard forgot its request id), so that counting the record
/// needs every key counted before. A generated key comes again only with the same record
/// read twice.
pub fn key_may_repeat(request_id: &str) -> bool {
    !request_id.starts_with(GENERATED_KEY_PREFIX)
}

/// Usage is counted per hour of this length, starting at multiples of it since the Unix epoch.
pub const USAGE_HOUR_MS: u64 = 3_600_000;

/// The start of the usage hour holding `at_ms`.
pub fn hour_start_ms(at_ms: u64) -> u64 {
    at_ms - at_ms % USAGE_HOUR_MS
}

/// Metering records summed per usage row (the field docs are in `proto/strata.proto`).
pub use crate::proto::UsageSum;

/// Sums `records` per usage row (tenant, hour, queue, sub-tenant, action), in that order.
pub fn sum_usage<'a>(records: impl IntoIterator<Item = &'a MeterRecord>) -> Vec<UsageSum> {
    let mut sums: BTreeMap<(&str, u64, &str, &str, &str), [u64; 5]> = BTreeMap::new();
    for r in records {
        let key =
            (r.tenant.as_str(), hour_start_ms(r.at_ms), r.queue.as_str(), r.sub_tenant.as_str(), r.action.as_str());
        let sum = sums.entry(key).or_default();
        for (total, add) in sum.iter_mut().zip([1, r.units, r.bytes_in, r.bytes_out, u64::from(r.empty_receive)]) {
            *total = total.saturating_add(add);
        }
    }
    sums.into_iter()
        .map(|((tenant, hour_start_ms, queue, sub_tenant, action), [calls, units, bytes_in, bytes_out, empty])| {
            UsageSum {
                tenant: tenant.to_owned(),
                hour_start_ms,
                queue: queue.to_owned(),
                sub_tenant: sub_tenant.to_owned(),
                action: action.to_owned(),
                calls,
                units,
                bytes_in,
                bytes_out,
                empty_receives: empty,
            }
        })
        .collect()
}

/// Checks that a usage row's text fields are within a record's limits and that it names a
/// tenant and an action, at the start of an hour.
pub fn check_usage_sum(sum: &UsageSum) -> Result<(), String> {
    check_text_fields(&[
        ("tenant", &sum.tenant, crate::names::TENANT_ID_CHARS_MAX),
        ("sub_tenant", &sum.sub_tenant, crate::names::TENANT_ID_CHARS_MAX),
        ("queue", &sum.queue, crate::names::QUEUE_NAME_CHARS_MAX),
        ("action", &sum.action, RECORD_ACTION_CHARS_MAX),
    ])?;
    if sum.tenant.is_empty() || sum.action.is_empty() || sum.calls == 0 {
        return Err("a usage row needs a tenant, an action and at least one call".to_owned());
    }
    if !sum.hour_start_ms.is_multiple_of(USAGE_HOUR_MS) {
        return Err("a usage row's hour must start at a whole hour".to_owned());
    }
    Ok(())
}

fn check_text_fields(fields: &[(&str, &String, usize)]) -> Result<(), String> {
    for (name, value, chars_max) in fields {
        if value.len() > *chars_max {
            return Err(format!("the metering record's {name} is longer than {chars_max} characters"));
        }
    }
    Ok(())
}

/// Most outbox records one `ReadMetering` answers (a few MiB), so also most client-keyed records
/// and most usage rows the billing service counts from one shard's read.
pub const READ_METERING_RECORDS_MAX: usize = 10_000;

/// Longest billing key ([`MeterRecord::request_id`]).
pub const RECORD_REQUEST_ID_CHARS_MAX: usize = 128;
/// Longest action name.
pub const RECORD_ACTION_CHARS_MAX: usize = 64;

/// Checks that a record's text fields are within their limits, so a record costs a bounded
/// amount wherever it is kept (a shard's outbox, a metering message).
pub fn check_record(record: &MeterRecord) -> Result<(), String> {
    check_text_fields(&[
        ("request_id", &record.request_id, RECORD_REQUEST_ID_CHARS_MAX),
        ("tenant", &record.tenant, crate::names::TENANT_ID_CHARS_MAX),
        ("sub_tenant", &record.sub_tenant, crate::names::TENANT_ID_CHARS_MAX),
        ("queue", &record.queue, crate::names::QUEUE_NAME_CHARS_MAX),
        ("action", &record.action, RECORD_ACTION_CHARS_MAX),
    ])?;
    if record.request_id.is_empty() || record.tenant.is_empty() || record.action.is_empty() {
        return Err("a metering record needs a request id, a tenant and an action".to_owned());
    }
    Ok(())
}

/// The bytes of a record's text fields, what its size varies by (each place that keeps records
/// adds its own fixed overhead).
pub fn text_bytes(r: &MeterRecord) -> usize {
    r.request_id.len() + r.tenant.len() + r.sub_tenant.len() + r.queue.len() + r.action.len()
}

/// One metering message's body: records as a JSON array.
pub fn encode_batch(records: &[MeterRecord]) -> Vec<u8> {
    // Serializing plain strings and integers cannot fail.
    serde_json::to_vec(records).unwrap_or_default()
}

/// The records of one metering message.
pub fn decode_batch(body: &[u8]) -> Result<Vec<MeterRecord>, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_started_64_kib_blocks_and_at_least_one() {
        assert_eq!(billable_units(0), 1);
        assert_eq!(billable_units(1), 1);
        assert_eq!(billable_units(UNIT_PAYLOAD_BYTES), 1);
        assert_eq!(billable_units(UNIT_PAYLOAD_BYTES + 1), 2);
    }

    #[test]
    fn usage_sums_per_row_and_hour_and_checks_its_rows() {
        let at = |request_id: &str, at_ms: u64, action: &str| MeterRecord {
            request_id: request_id.into(),
            tenant: "acme".into(),
            action: action.into(),
            at_ms,
            units: 2,
            bytes_in: 10,
            ..Default::default()
        };
        let records = [
            at("p-1", USAGE_HOUR_MS + 1, "SendMessage"),
            at("p-2", 2 * USAGE_HOUR_MS - 1, "SendMessage"),
            at("p-3", 2 * USAGE_HOUR_MS, "SendMessage"),
            at("p-4", USAGE_HOUR_MS, "DeleteMessage"),
        ];
        let sums = sum_usage(&records);
        let rows: Vec<(u64, &str, u64, u64, u64)> =
            sums.iter().map(|s| (s.hour_start_ms, s.action.as_str(), s.calls, s.units, s.bytes_in)).collect();
        assert_eq!(
            rows,
            [
                (USAGE_HOUR_MS, "DeleteMessage", 1, 2, 10),
                (USAGE_HOUR_MS, "SendMessage", 2, 4, 20),
                (2 * USAGE_HOUR_MS, "SendMessage", 1, 2, 10)
            ]
        );
        assert!(sums.iter().all(|s| check_usage_sum(s).is_ok()));
        let off_hour = UsageSum { hour_start_ms: 5, ..sums[0].clone() };
        assert!(check_usage_sum(&off_hour).is_err());
        assert!(check_usage_sum(&UsageSum { calls: 0, ..sums[0].clone() }).is_err());
        assert!(check_usage_sum(&UsageSum { action: "x".repeat(65), ..sums[0].clone() }).is_err());
    }

    #[test]
    fn a_batch_round_trips() {
        let record = MeterRecord {
            request_id: "r".into(),
            tenant: "acme".into(),
            sub_tenant: "shop-1".into(),
            queue: "orders".into(),
            action: "SendMessage".into(),
            at_ms: 7,
            units: 2,
            bytes_in: 70_000,
            bytes_out: 0,
            empty_receive: false,
        };
        let body = encode_batch(std::slice::from_ref(&record));
        assert_eq!(decode_batch(&body).unwrap(), vec![record.clone()]);
        assert!(decode_batch(b"{").is_err());
        assert_eq!(check_record(&record), Ok(()));
    }

    #[test]
    fn a_record_must_name_its_call_and_stay_within_limits() {
        let record = MeterRecord {
            request_id: "r".into(),
            tenant: "acme".into(),
            action: "SendMessage".into(),
            ..Default::default()
        };
        assert_eq!(check_record(&record), Ok(()));
        assert!(check_record(&MeterRecord { request_id: String::new(), ..record.clone() }).is_err());
        assert!(check_record(&MeterRecord { tenant: "t".repeat(65), ..record.clone() }).is_err());
        assert!(check_record(&MeterRecord { queue: "q".repeat(81), ..record.clone() }).is_err());
        assert!(check_record(&MeterRecord { request_id: "r".repeat(129), ..record }).is_err());
    }
}
