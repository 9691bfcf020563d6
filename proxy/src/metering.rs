//! Metering: every accepted billable call leaves a durable record before it is answered.
//!
//! # What it owns
//!
//! - [`CallId`]: the id a call's retries share (the client's `x-strata-request-id`, or the AWS
//!   SDKs' `amz-sdk-invocation-id`) and the tenant's own customer (`x-strata-customer`).
//! - [`Meter`]: a send's record travels in its storage request ([`Meter::record`]) and is kept
//!   by the shard with the messages. Other calls' records go through a bounded channel to a
//!   flusher, which appends them in batches (group commit: up to [`BATCH_RECORDS_MAX`] records or
//!   [`BATCH_BYTES_MAX`] bytes, one message each) to the system metering queue
//!   ([`strata_common::metering`]), with up to [`FLUSHES_IN_FLIGHT_MAX`] appends in flight.
//!
//! # What it guarantees
//!
//! A call is answered only once its record is durable: a send's with its messages (one log
//! entry), any other call's once [`Meter::charge`] returns, when its batch is an acknowledged
//! message. Either is replicated and fsynced like any tenant message, so it survives the proxy's
//! crash. A call whose record could not be stored is answered with an error instead of its
//! result (the client retries; its retry carries the same billing key, see
//! [`CallId::billing_key`], so it is counted once).
//!
//! A call is billed ⌈payload / 64 KiB⌉ units, at least one: sends by the message bodies and
//! attributes they carry, receives by those they return. Rejected calls (authentication
//! failures, invalid requests, throttling, errors) answer before they are charged, so they are
//! never billed (docs/design-notes.md, "Billing").

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use strata_common::error::{ErrorKind, StrataError};
use strata_common::metering::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, CLIENT_KEY_PREFIX, GENERATED_KEY_PREFIX, METERING_QUEUE, MeterRecord,
    SYSTEM_TENANT, billable_units, encode_batch, text_bytes,
};
use strata_common::proto as pb;
use strata_common::{Clock, Random};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::queues;
use crate::routing::Router as Placement;

/// The header a client sets to name a call: its retries carry the same id.
pub const REQUEST_ID_HEADER: &str = "x-strata-request-id";
/// The header the AWS SDKs set to the same value on every attempt of one call.
pub const SDK_INVOCATION_ID_HEADER: &str = "amz-sdk-invocation-id";
/// The header naming the tenant's own customer the call is for (usage per sub-tenant).
pub const CUSTOMER_HEADER: &str = "x-strata-customer";
/// The message attribute that names the customer of an SQS send, when the header is absent.
pub const CUSTOMER_ATTRIBUTE: &str = "x-strata-customer";
/// Longest client request id.
pub const CLIENT_REQUEST_ID_CHARS_MAX: usize = 128;
/// Longest customer tag.
pub const CUSTOMER_CHARS_MAX: usize = 64;
/// Metering appends in flight at once.
pub const FLUSHES_IN_FLIGHT_MAX: usize = 4;
/// Records waiting for a flush at most; callers wait for room beyond it.
const PENDING_RECORDS_MAX: usize = 100_000;
/// A record's encoded size beyond its text fields (field names, numbers), for batch sizing.
const RECORD_OVERHEAD_BYTES: usize = 160;

pub(crate) fn valid_token(value: &str, chars_max: usize) -> bool {
    (1..=chars_max).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What a request says about itself for billing: the id its retries share and its customer.
#[derive(Debug, Clone, Default)]
pub struct CallId {
    /// The client's id for the call, if it gave one.
    pub client_id: Option<String>,
    /// The tenant's customer the call is for (empty when not given).
    pub customer: String,
}

impl CallId {
    /// Reads and checks the request's headers: a request id is 1-128 and a customer 1-64 of
    /// `A-Z a-z 0-9 . _ -`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, StrataError> {
        let header = |name: &str, chars_max: usize| -> Result<Option<String>, StrataError> {
            let Some(value) = headers.get(name) else { return Ok(None) };
            match value.to_str().ok().filter(|v| valid_token(v, chars_max)) {
                Some(v) => Ok(Some(v.to_owned())),
                None => Err(StrataError::invalid(format!(
                    "{name} must be 1-{chars_max} characters of A-Z, a-z, 0-9, '.', '_' and '-'"
                ))),
            }
        };
        let client_id = match header(REQUEST_ID_HEADER, CLIENT_REQUEST_ID_CHARS_MAX)? {
            Some(id) => Some(id),
            None => header(SDK_INVOCATION_ID_HEADER, CLIENT_REQUEST_ID_CHARS_MAX)?,
        };
        let customer = header(CUSTOMER_HEADER, CUSTOMER_CHARS_MAX)?.unwrap_or_default();
        Ok(Self { client_id, customer })
    }

    /// Sets the customer from a message attribute when no header named one.
    pub fn customer_from_attribute(&mut self, value: &str) -> Result<(), StrataError> {
        if !self.customer.is_empty() {
            return Ok(());
        }
        if !valid_token(value, CUSTOMER_CHARS_MAX) {
            return Err(StrataError::invalid(format!(
                "the {CUSTOMER_ATTRIBUTE} attribute must be 1-{CUSTOMER_CHARS_MAX} characters of A-Z, a-z, 0-9, \
                 '.', '_' and '-'"
            )));
        }
        self.customer = value.to_owned();
        Ok(())
    }

    /// The key a call is counted once by, per tenant. With a client id, it is a digest of the
    /// id, the action, the queue and the request body, so an exact retry has the same key (and
    /// is counted once) while an id reused for a different call does not make it free. Without
    /// one, every attempt is a call of its own.
    pub fn billing_key(&self, random: &Random, action: &str, queue: &str, body: &[u8]) -> String {
        let Some(id) = &self.client_id else {
            return format!("{GENERATED_KEY_PREFIX}{}", random.uuid().simple());
        };
        let mut digest = framed_digest(&[id.as_bytes(), action.as_bytes(), queue.as_bytes()]);
        digest.update(body);
        format!("{CLIENT_KEY_PREFIX}{}", hex::encode(digest.finalize()))
    }

    /// The storage request id of a send derived from the client's id: the same for every retry
    /// of the call to this queue incarnation, and never another tenant's (the tenant is part of
    /// the digest). None when the client gave no id.
    pub fn send_request_id(&self, tenant: &str, queue_id: u64) -> Option<String> {
        let id = self.client_id.as_ref()?;
        let digest = framed_digest(&[tenant.as_bytes(), &queue_id.to_be_bytes(), id.as_bytes()]);
        // 2 + 62 characters: within the storage node's request-id limit.
        Some(format!("c-{}", &hex::encode(digest.finalize())[..62]))
    }
}

/// A digest of `parts`, each preceded by its length so that no two lists of parts meet.
fn framed_digest(parts: &[&[u8]]) -> Sha256 {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest
}

/// Payload bytes of a message: its body and its attributes' names, types and values (what
/// SQS counts toward the 256 KiB message size).
pub fn message_payload_bytes(body: &[u8], attributes: &HashMap<String, pb::MessageAttribute>) -> u64 {
    let attributes: usize = attributes
        .iter()
        .map(|(name, a)| name.len() + a.data_type.len() + a.string_value.len() + a.binary_value.len())
        .sum();
    (body.len() + attributes) as u64
}

/// What one accepted call is charged for.
#[derive(Debug, Clone, Default)]
pub struct Charge {
    /// The action, in the SQS API's names (`SendMessage`, `ReceiveMessage`, ...), on both APIs.
    pub action: String,
    /// The queue's name (empty for calls on no queue).
    pub queue: String,
    /// Message payload the call carried in.
    pub payload_in_bytes: u64,
    /// Message payload the call returned.
    pub payload_out_bytes: u64,
    /// A receive that returned nothing.
    pub empty_receive: bool,
    /// The record travelled in the call's own storage command (see [`Meter::record`]): the call
    /// is not charged again.
    pub carried: bool,
}

impl Charge {
    pub fn new(action: &str, queue: &str) -> Self {
        Self { action: action.to_owned(), queue: queue.to_owned(), ..Default::default() }
    }
}

struct Pending {
    record: MeterRecord,
    done: oneshot::Sender<Result<(), StrataError>>,
}

/// Meters accepted calls into the system metering queue (or nowhere, when disabled).
#[derive(Clone)]
pub struct Meter {
    /// None when metering is off.
    recorder: Option<Recorder>,
}

/// Where a running meter sends its records, and what stamps them.
#[derive(Clone)]
struct Recorder {
    records: mpsc::Sender<Pending>,
    /// Stamps records (the clock of the placement's metadata client).
    clock: Arc<dyn Clock>,
    /// Draws the billing keys of calls without a client id.
    random: Random,
}

impl Meter {
    /// A meter that stores nothing (for measuring metering's cost, and for tests of other things).
    pub fn disabled() -> Self {
        Self { recorder: None }
    }

    /// A meter appending to the metering queue through `placement`, on the clock and random
    /// source of its metadata client; its flusher runs until every clone of the meter is dropped.
    pub fn start(placement: Arc<Placement>) -> Self {
        let (records, rx) = mpsc::channel(PENDING_RECORDS_MAX);
        let clock = placement.metadata.clock().clone();
        let random = placement.metadata.random().clone();
        tokio::spawn(flush_loop(placement, rx));
        Self { recorder: Some(Recorder { records, clock, random }) }
    }

    /// The record of a call, for a storage command that carries it (a send, a delete): the shard keeps it
    /// exactly when the command applies, so it is durable with the call's effect. None when
    /// metering is off.
    pub fn record(&self, tenant: &str, call: &CallId, body: &[u8], charge: Charge) -> Option<MeterRecord> {
        strata_telemetry::top_tenants::count_call(tenant, charge.payload_in_bytes + charge.payload_out_bytes);
        let recorder = self.recorder.as_ref()?;
        Some(MeterRecord {
            request_id: call.billing_key(&recorder.random, &charge.action, &charge.queue, body),
            tenant: tenant.to_owned(),
            sub_tenant: call.customer.clone(),
            queue: charge.queue,
            action: charge.action,
            at_ms: recorder.clock.now_ms(),
            units: billable_units(charge.payload_in_bytes + charge.payload_out_bytes),
            bytes_in: charge.payload_in_bytes,
            bytes_out: charge.payload_out_bytes,
            empty_receive: charge.empty_receive,
        })
    }

    /// Stores the record of an accepted call in the metering queue; returns once it is durable.
    pub async fn charge(&self, tenant: &str, call: &CallId, body: &[u8], charge: Charge) -> Result<(), StrataError> {
        let (Some(recorder), Some(record)) = (&self.recorder, self.record(tenant, call, body, charge)) else {
            return Ok(());
        };
        let (done, stored) = oneshot::channel();
        let unavailable =
            || StrataError::unavailable("metering is unavailable; retry the call with the same request id");
        recorder.records.send(Pending { record, done }).await.map_err(|_| unavailable())?;
        stored.await.map_err(|_| unavailable())?
    }
}

fn encoded_bytes_estimate(r: &MeterRecord) -> usize {
    text_bytes(r) + RECORD_OVERHEAD_BYTES
}

/// Group commit: takes what is waiting (at least one record), appends it as one message, and
/// answers every waiter with the append's outcome.
async fn flush_loop(placement: Arc<Placement>, mut rx: mpsc::Receiver<Pending>) {
    let flushes = Arc::new(Semaphore::new(FLUSHES_IN_FLIGHT_MAX));
    loop {
        // Records gather in the channel while every flush is busy.
        let Ok(permit) = flushes.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = encoded_bytes_estimate(&first.record);
        let mut batch = vec![first];
        while batch.len() < BATCH_RECORDS_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += encoded_bytes_estimate(&next.record);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let placement = placement.clone();
        tokio::spawn(async move {
            let (records, waiters): (Vec<MeterRecord>, Vec<_>) = batch.into_iter().map(|p| (p.record, p.done)).unzip();
            let outcome = append(&placement, &records).await;
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, records = records.len(), "metering append failed; the calls answer an error");
            }
            for done in waiters {
                // A caller that went away needs no answer.
                let _ = done.send(outcome.clone());
            }
            drop(permit);
        });
    }
}

/// Appends one batch to the metering queue, creating the queue on first use.
async fn append(placement: &Placement, records: &[MeterRecord]) -> Result<(), StrataError> {
    let message = pb::NewMessage { body: encode_batch(records).into(), ..Default::default() };
    // One id for every attempt: a retry at another replica is stored once.
    let request_id = placement.metadata.random().uuid().to_string();
    let send = || {
        queues::on_queue(placement, SYSTEM_TENANT, METERING_QUEUE, |mut c, queue| {
            let (message, request_id) = (message.clone(), request_id.clone());
            async move {
                c.send(pb::SendRequest {
                    queue: Some(queue),
                    messages: vec![message],
                    request_id,
                    meter: None,
                    caller: None,
                })
                .await
            }
        })
    };
    match send().await {
        Err(e) if e.kind == ErrorKind::QueueNotFound => {
            queues::ensure_metering_queue(placement).await?;
            send().await.map(drop)
        }
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use strata_common::metering::key_may_repeat;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_call_id_comes_from_the_client_or_the_sdk_header() {
        let call = CallId::from_headers(&headers(&[(REQUEST_ID_HEADER, "r-1"), (CUSTOMER_HEADER, "shop.7")])).unwrap();
        assert_eq!(call.client_id.as_deref(), Some("r-1"));
        assert_eq!(call.customer, "shop.7");
        let sdk = CallId::from_headers(&headers(&[(SDK_INVOCATION_ID_HEADER, "0b1c-22")])).unwrap();
        assert_eq!(sdk.client_id.as_deref(), Some("0b1c-22"));
        assert!(CallId::from_headers(&headers(&[(CUSTOMER_HEADER, "a b")])).is_err());
        assert!(CallId::from_headers(&headers(&[(REQUEST_ID_HEADER, &"x".repeat(129))])).is_err());
    }

    #[test]
    fn an_exact_retry_keeps_its_billing_key_and_a_reused_id_does_not() {
        let random = Random::seeded(1);
        let call = CallId { client_id: Some("r-1".into()), customer: String::new() };
        let key = call.billing_key(&random, "SendMessage", "orders", b"{\"a\":1}");
        assert_eq!(key, call.billing_key(&random, "SendMessage", "orders", b"{\"a\":1}"));
        assert_ne!(key, call.billing_key(&random, "SendMessage", "orders", b"{\"a\":2}"));
        assert_ne!(key, call.billing_key(&random, "ReceiveMessage", "orders", b"{\"a\":1}"));
        assert_ne!(key, call.billing_key(&random, "SendMessage", "orders2", b"{\"a\":1}"));
        let anonymous = CallId::default();
        assert_ne!(
            anonymous.billing_key(&random, "SendMessage", "q", b""),
            anonymous.billing_key(&random, "SendMessage", "q", b"")
        );
        // Only a key no other call can have is exempt from the billing store's key check.
        assert!(key_may_repeat(&key));
        assert!(!key_may_repeat(&anonymous.billing_key(&random, "SendMessage", "q", b"")));
    }

    #[test]
    fn send_request_ids_fit_the_storage_limit_and_differ_per_tenant() {
        let call = CallId { client_id: Some("x".repeat(128)), customer: String::new() };
        let id = call.send_request_id(&"t".repeat(64), u64::MAX).unwrap();
        assert!(id.len() <= strata_common::limits::REQUEST_ID_CHARS_MAX);
        assert_ne!(call.send_request_id("a", 1), call.send_request_id("b", 1));
        assert_eq!(call.send_request_id("a", 1), call.send_request_id("a", 1));
    }

    #[test]
    fn a_header_customer_wins_over_the_attribute() {
        let mut call = CallId { client_id: None, customer: "h".into() };
        call.customer_from_attribute("a").unwrap();
        assert_eq!(call.customer, "h");
        let mut call = CallId::default();
        call.customer_from_attribute("a").unwrap();
        assert_eq!(call.customer, "a");
        assert!(CallId::default().customer_from_attribute("bad value").is_err());
    }
}
