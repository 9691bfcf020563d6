//! The metering vocabulary shared by the proxies (which meter calls) and the billing service
//! (which counts them): the record of one billable call, billable units, and where records go.
//!
//! Proxies append batches of [`MeterRecord`]s, as one message each, to the [`METERING_QUEUE`]
//! of the [`SYSTEM_TENANT`], a queue of Strata itself: a record is as durable as any
//! acknowledged message before the call it bills is answered. The billing service consumes the
//! queue and counts each record once per (tenant, request id).

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

/// Billable units of one call with `payload_bytes` of payload: one per started 64 KiB, at least
/// one (an empty receive is one unit too).
pub fn billable_units(payload_bytes: u64) -> u64 {
    payload_bytes.div_ceil(UNIT_PAYLOAD_BYTES).max(1)
}

/// One accepted call, as a proxy meters it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterRecord {
    /// The call's id: the same on every retry of the call.
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
        assert_eq!(decode_batch(&body).unwrap(), vec![record]);
        assert!(decode_batch(b"{").is_err());
    }
}
