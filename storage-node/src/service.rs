//! The storage node's gRPC API: queue operations routed to the shard that holds the queue.
//!
//! Every request names its shard, queue incarnation and tenant; the state machine answers a
//! tenant mismatch exactly like a missing queue. Replies follow the log: a send is answered only
//! after its entry is fsynced and applied.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_common::Random;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::format::Persisted;
use strata_common::limits;
use strata_common::metering::READ_METERING_RECORDS_MAX;
use strata_common::proto::storage_server::Storage;
use strata_common::proto::{self as pb};
use tonic::{Request, Response, Status};

use crate::disk::DiskGuard;
use crate::error::NodeError;
use crate::message_trace::{TraceEvent, TraceRecord};
use crate::node::ShardMap;
use crate::queue::{
    self, AttributeValue, CallerNote, Command, Delivery, FifoConfig, FifoIds, NewMessage, QueueConfig, Redrive,
};
use crate::queue_metrics;
use crate::shard::{
    CALLER_NOTES_GENERATION, HAND_OFFS_GENERATION, QUEUE_MOVES_GENERATION, REQUEST_DIGEST_GENERATION,
    RETURN_UNDELIVERED_GENERATION, Shard, ShardEntry, queue_error,
};

/// How long the replica asked to lead may take to take over before leadership falls back to
/// another caught-up replica (writes to the shard pause meanwhile).
const LEADER_TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Everything the service routes to.
pub struct StorageService {
    shards: ShardMap,
    /// Draws the ids of new messages.
    random: Random,
    /// Refuses new messages and queues while the disk is below its reserve.
    disk: Arc<DiskGuard>,
}

impl StorageService {
    pub fn new(shards: ShardMap, random: Random, disk: Arc<DiskGuard>) -> Self {
        Self { shards, random, disk }
    }

    /// This node's replica of `shard_id`; `Unavailable` (retry elsewhere) when it runs none.
    fn shard(&self, shard_id: u64) -> Result<Arc<Shard>, StrataError> {
        self.shards.read().get(&shard_id).cloned().ok_or_else(|| {
            tracing::warn!(shard = shard_id, "request for a shard this node does not host");
            StrataError::unavailable(format!("shard {shard_id} is not served here; retry"))
        })
    }

    fn route(&self, queue: Option<&pb::QueueRef>) -> Result<(Arc<Shard>, u64, String), StrataError> {
        let queue = queue.ok_or_else(|| StrataError::invalid("queue reference is required"))?;
        let shard = self.shard(queue.shard_id)?;
        // A call wakes a sleeping shard (see `crate::hibernation`).
        shard.hibernation().note_call(shard.now_ms());
        Ok((shard, queue.queue_id, queue.tenant.clone()))
    }

    /// Whether `tenant` may add about `bytes` of data now (see [`crate::disk`]). The system
    /// tenant's metering records are small and carry the charges of receives and deletes, which
    /// go on while the disk is low, so they are never refused.
    fn admit_growth(&self, tenant: &str, bytes: u64) -> Result<(), StrataError> {
        if tenant == strata_common::metering::SYSTEM_TENANT { Ok(()) } else { self.disk.admit_bytes(bytes) }
    }
}

fn config_from_pb(config: Option<pb::QueueConfig>) -> Result<QueueConfig, StrataError> {
    let c = config.ok_or_else(|| StrataError::invalid("queue config is required"))?;
    let redrive = (c.dead_letter_queue_id != 0)
        .then_some(Redrive { dead_letter_queue: c.dead_letter_queue_id, max_receive_count: c.max_receive_count });
    let config = QueueConfig {
        retention_ms: c.retention_ms,
        visibility_timeout_ms: c.visibility_timeout_ms,
        delay_ms: c.delay_ms,
        redrive,
        fifo: c.fifo_queue.then_some(FifoConfig { deduplication_per_group: c.deduplication_per_group }),
    };
    config.validate().map_err(queue_error)?;
    Ok(config)
}

/// Longest custom label of an attribute data type (after `String.`, `Number.`, `Binary.`).
const DATA_TYPE_LABEL_CHARS_MAX: usize = 256;

fn attribute_from_pb(name: &str, a: pb::MessageAttribute) -> Result<AttributeValue, StrataError> {
    let (base, label) = match a.data_type.split_once('.') {
        Some((base, label)) => (base, Some(label)),
        None => (a.data_type.as_str(), None),
    };
    if label.is_some_and(|l| l.is_empty() || l.len() > DATA_TYPE_LABEL_CHARS_MAX) {
        return Err(StrataError::invalid(format!(
            "attribute '{name}' has data type '{}'; a custom label is 1-{DATA_TYPE_LABEL_CHARS_MAX} characters",
            a.data_type
        )));
    }
    let value = match base {
        "String" => AttributeValue::String(a.string_value),
        "Number" => {
            if a.string_value.trim().parse::<f64>().is_err() {
                return Err(StrataError::invalid(format!("attribute '{name}' is not a valid Number")));
            }
            AttributeValue::Number(a.string_value)
        }
        "Binary" => AttributeValue::Binary(a.binary_value.to_vec()),
        _ => {
            return Err(StrataError::invalid(format!(
                "attribute '{name}' has data type '{}'; use String, Number or Binary",
                a.data_type
            )));
        }
    };
    Ok(match label {
        Some(_) => AttributeValue::Labeled { data_type: a.data_type, value: Box::new(value) },
        None => value,
    })
}

fn attribute_to_pb(value: AttributeValue) -> pb::MessageAttribute {
    match value {
        AttributeValue::String(s) => {
            pb::MessageAttribute { data_type: "String".into(), string_value: s, binary_value: Vec::new() }
        }
        AttributeValue::Number(s) => {
            pb::MessageAttribute { data_type: "Number".into(), string_value: s, binary_value: Vec::new() }
        }
        AttributeValue::Binary(b) => {
            pb::MessageAttribute { data_type: "Binary".into(), string_value: String::new(), binary_value: b }
        }
        AttributeValue::Labeled { data_type, value } => pb::MessageAttribute { data_type, ..attribute_to_pb(*value) },
    }
}

/// A message to send at `now_ms`: its id is time-ordered (version 7, the send time first), so
/// that its trace is found by the id alone (see [`crate::message_trace::hour_of`]).
fn message_from_pb(m: pb::NewMessage, random: &Random, now_ms: u64) -> Result<NewMessage, StrataError> {
    let mut attributes = BTreeMap::new();
    for (name, value) in m.attributes {
        let parsed = attribute_from_pb(&name, value)?;
        attributes.insert(name, parsed);
    }
    let fifo = (!m.message_group_id.is_empty() || !m.message_deduplication_id.is_empty())
        .then_some(FifoIds { group_id: m.message_group_id, deduplication_id: m.message_deduplication_id });
    // A scheduled message's id carries its deliver-at time, for cancel by id.
    let message_id = match m.deliver_at_ms {
        Some(deliver_at_ms) => queue::schedule::scheduled_message_id(deliver_at_ms, random.uuid()),
        None => random.uuid_at(now_ms),
    };
    // The body is copied out of the request's receive buffer: the log's cache of recent entries
    // keeps bodies, and a slice would keep the whole buffer (often several times the body) alive.
    let body = Bytes::copy_from_slice(&m.body);
    let message =
        NewMessage { message_id, body, attributes, delay_ms: m.delay_ms, deliver_at_ms: m.deliver_at_ms, fifo };
    // The body and attributes together, as the queue counts its stored bytes.
    let total_bytes = message.stored_bytes() as usize;
    if message.body.len() > limits::MESSAGE_BODY_BYTES_MAX || total_bytes > limits::MESSAGE_TOTAL_BYTES_MAX {
        return Err(StrataError::new(
            ErrorKind::TooLarge,
            format!("message exceeds the {} byte limit", limits::MESSAGE_BODY_BYTES_MAX),
        ));
    }
    Ok(message)
}

/// The billing record a call carries for its shard to keep, checked: well formed, and of the
/// queue's own tenant.
fn meter_of(
    record: Option<pb::MeterRecord>,
    tenant: &str,
) -> Result<Option<strata_common::metering::MeterRecord>, StrataError> {
    let Some(record) = record.map(strata_common::metering::MeterRecord::from) else { return Ok(None) };
    strata_common::metering::check_record(&record).map_err(StrataError::invalid)?;
    if record.tenant != tenant {
        return Err(StrataError::invalid("the metering record names another tenant than the queue"));
    }
    Ok(Some(record))
}

/// A trace record as the proxy gets it.
fn trace_event_to_pb(queue_id: u64, record: TraceRecord) -> pb::MessageTraceEvent {
    let by = record.event.by().cloned().unwrap_or_default();
    let mut event = pb::MessageTraceEvent {
        at_ms: record.at_ms,
        queue_id,
        kind: record.event.kind().to_owned(),
        credential: by.credential,
        request_id: by.request_id,
        ..Default::default()
    };
    match record.event {
        TraceEvent::Sent { deliver_at_ms, .. } => event.deliver_at_ms = deliver_at_ms.unwrap_or(0),
        TraceEvent::Received { receive_count, visible_at_ms, .. } => {
            event.receive_count = receive_count;
            event.visible_at_ms = visible_at_ms;
        }
        TraceEvent::VisibilityChanged { visible_at_ms, .. } => event.visible_at_ms = visible_at_ms,
        TraceEvent::MovedTo { to: other, dead_letter } | TraceEvent::ArrivedFrom { from: other, dead_letter, .. } => {
            event.other_queue_id = other;
            event.dead_letter = dead_letter;
        }
        TraceEvent::Returned
        | TraceEvent::Deleted { .. }
        | TraceEvent::Cancelled { .. }
        | TraceEvent::Purged { .. } => {}
    }
    event
}

/// What the shard's log keeps of who made a call (and the trace headers of a send's messages,
/// by position): nothing until every replica can read it ([`CALLER_NOTES_GENERATION`]), nor
/// when the call names no caller and carries no trace header.
fn caller_note(
    shard: &Shard,
    caller: Option<pb::Caller>,
    mut trace_headers: Vec<Option<String>>,
) -> Result<Option<CallerNote>, StrataError> {
    if shard.log_format().writing() < CALLER_NOTES_GENERATION {
        return Ok(None);
    }
    let messages = trace_headers.len();
    while trace_headers.last().is_some_and(Option::is_none) {
        trace_headers.pop();
    }
    if caller.is_none() && trace_headers.is_empty() {
        return Ok(None);
    }
    let caller = caller.unwrap_or_default();
    let note = CallerNote { credential: caller.credential, request_id: caller.request_id, trace_headers };
    note.check(messages).map_err(queue_error)?;
    Ok(Some(note))
}

/// Reads the bodies of what a receive leased and answers the messages whose bodies were read.
/// Those that could not be read are taken back in the same shard (visible again, their receive
/// count as before), so a receive counts only when it delivers; in a FIFO queue, so are the
/// later messages of the same group, which keeps the group in order. When nothing could be read
/// the read's error is the answer (the caller retries).
async fn deliver(
    shard: &Shard,
    queue_id: u64,
    tenant: &str,
    deliveries: Vec<Delivery>,
) -> Result<Vec<pb::ReceivedMessage>, StrataError> {
    let refs: Vec<_> = deliveries.iter().map(|d| d.body_ref).collect();
    let messages = shard.read_messages(&refs).await;
    let mut out = Vec::with_capacity(deliveries.len());
    let mut undelivered = Vec::new();
    let mut held_groups: HashSet<String> = HashSet::new();
    let mut read_error = None;
    for (d, message) in deliveries.into_iter().zip(messages) {
        let group_held = d.fifo.as_ref().is_some_and(|f| held_groups.contains(&f.group_id));
        let message = match message {
            Ok(message) if !group_held => message,
            other => {
                if let Err(e) = other {
                    read_error.get_or_insert(e);
                }
                if let Some(f) = &d.fifo {
                    held_groups.insert(f.group_id.clone());
                }
                undelivered.push(d.receipt);
                continue;
            }
        };
        out.push(pb::ReceivedMessage {
            message_id: d.message_id.to_string(),
            receipt_handle: d.receipt,
            body: message.message.body,
            attributes: message.message.attributes.into_iter().map(|(k, v)| (k, attribute_to_pb(v))).collect(),
            trace_header: message.trace_header.unwrap_or_default(),
            receive_count: d.receive_count,
            sent_ms: d.sent_ms,
            first_receive_ms: d.first_receive_ms,
            sequence_number: if d.fifo.is_some() { d.seq } else { 0 },
            message_group_id: d.fifo.as_ref().map(|f| f.group_id.clone()).unwrap_or_default(),
            message_deduplication_id: d.fifo.map(|f| f.deduplication_id).unwrap_or_default(),
        });
    }
    if !undelivered.is_empty() {
        return_undelivered(shard, queue_id, tenant, undelivered).await;
    }
    match read_error {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// Takes back leases whose messages were not delivered. A cluster that does not write
/// [`RETURN_UNDELIVERED_GENERATION`] yet only makes them visible again (their receive counts
/// stay raised). A failure here is logged: the messages then come back when their visibility
/// timeout runs out.
async fn return_undelivered(shard: &Shard, queue: u64, tenant: &str, receipts: Vec<String>) {
    let tenant = tenant.to_owned();
    let result = if shard.log_format().writing() >= RETURN_UNDELIVERED_GENERATION {
        shard.propose(Command::ReturnUndelivered { queue, tenant, receipts }).await.map(drop)
    } else {
        let mut result = Ok(());
        for receipt in receipts {
            let command =
                Command::ChangeVisibility { queue, tenant: tenant.clone(), receipt, visibility_timeout_ms: 0 };
            result = result.and(shard.propose(command).await.map(drop));
        }
        result
    };
    if let Err(e) = result {
        tracing::warn!(shard = shard.shard_id, queue, error = %e, "taking back undelivered receives failed");
    }
}

/// The receive a request asks for, checked: a `Receive`, or a `ReceiveAttempt` when it carries
/// an attempt id, noted with its caller.
fn receive_command(
    queue: u64,
    tenant: String,
    r: &pb::ReceiveRequest,
    caller: Option<CallerNote>,
) -> Result<Command, StrataError> {
    let (max_messages, visibility_timeout_ms) = (r.max_messages, r.visibility_timeout_ms);
    if !(1..=queue::RECEIVE_BATCH_MAX).contains(&max_messages) {
        return Err(StrataError::invalid(format!("max messages must be 1-{}", queue::RECEIVE_BATCH_MAX)));
    }
    if visibility_timeout_ms.is_some_and(|v| v > queue::VISIBILITY_TIMEOUT_MS_MAX) {
        return Err(StrataError::invalid("visibility timeout must be at most 12 hours"));
    }
    let command = match r.receive_request_attempt_id.as_str() {
        "" => Command::Receive { queue, tenant, max_messages, visibility_timeout_ms },
        attempt_id => Command::ReceiveAttempt {
            queue,
            tenant,
            max_messages,
            visibility_timeout_ms,
            attempt_id: attempt_id.to_owned(),
        },
    };
    Ok(command.with_caller(caller))
}

/// Receives with long polling: proposes `command` (see [`receive_command`]) only when a message
/// is visible, otherwise waits for the next apply (a send) or the next visibility deadline, until
/// `wait_ms` runs out.
async fn receive(
    shard: &Shard,
    queue_id: u64,
    tenant: String,
    wait_ms: u64,
    command: Command,
) -> Result<Vec<pb::ReceivedMessage>, StrataError> {
    let with_attempt_id = matches!(command.call_and_caller().0, Command::ReceiveAttempt { .. });
    let wait_ms = wait_ms.min(limits::LONG_POLL_MS_MAX);
    let deadline_ms = shard.now_ms() + wait_ms;
    let mut woken = shard.queue_waker(queue_id);
    let mut first = true;
    loop {
        let now_ms = shard.now_ms();
        let (exists, moving, visible, next_visible_ms) = {
            let state = shard.state();
            (
                state.0.queue_config(queue_id, &tenant).is_some(),
                state.0.is_moving(queue_id),
                state.0.has_visible(queue_id, &tenant, now_ms),
                state.0.next_visible_at_ms(queue_id, &tenant, now_ms),
            )
        };
        if !exists {
            return Err(queue_error(queue::QueueError::QueueNotFound));
        }
        // The proxy waits for the move and polls on at the queue's new shard.
        if moving {
            return Err(queue_error(queue::QueueError::QueueMoving));
        }
        // A receive with an attempt id is proposed at once: its retry answers messages in flight.
        if visible || (with_attempt_id && first) {
            first = false;
            if let queue::Response::Received(deliveries) = shard.propose(command.clone()).await?
                && !deliveries.is_empty()
            {
                return deliver(shard, queue_id, &tenant, deliveries).await;
            }
        }
        if now_ms >= deadline_ms {
            shard.count_empty_receive(queue_id);
            return Ok(Vec::new());
        }
        let wake_ms = next_visible_ms.map_or(deadline_ms, |n| n.min(deadline_ms)).max(now_ms + 1);
        let _waiting = strata_telemetry::Held::new(&strata_telemetry::api().long_polls_waiting);
        tokio::select! {
            _ = woken.changed() => {}
            () = shard.clock().sleep(Duration::from_millis(wake_ms - now_ms)) => {}
        }
    }
}

#[tonic::async_trait]
impl Storage for StorageService {
    async fn ensure_queue(&self, request: Request<pb::EnsureQueueRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        self.admit_growth(&tenant, 0)?;
        let config = config_from_pb(r.config)?;
        shard.propose(Command::CreateQueue { queue, tenant: tenant.clone(), config }).await?;
        let stored = shard.state().0.queue_config(queue, &tenant).copied();
        if stored != Some(config) {
            shard.propose(Command::SetQueueConfig { queue, tenant, config }).await?;
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn drop_queue(&self, request: Request<pb::QueueRef>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(Some(&r))?;
        match shard.propose(Command::DeleteQueue { queue, tenant }).await {
            Ok(_) => Ok(Response::new(pb::Empty {})),
            // Already gone (a retried delete): dropping is idempotent.
            Err(e) if e.kind == ErrorKind::QueueNotFound => Ok(Response::new(pb::Empty {})),
            Err(e) => Err(e.into()),
        }
    }

    async fn transfer_shard_leader(
        &self,
        request: Request<pb::TransferShardLeaderRequest>,
    ) -> Result<Response<pb::TransferShardLeaderResponse>, Status> {
        let r = request.into_inner();
        let leader_node = self.shard(r.shard_id)?.transfer_leadership(&r.to_node, LEADER_TRANSFER_WAIT).await?;
        Ok(Response::new(pb::TransferShardLeaderResponse { leader_node }))
    }

    async fn adopt_queue_step(
        &self,
        request: Request<pb::AdoptQueueStepRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let shard = self.shard(r.shard_id)?;
        // Another shard's steps wake a sleeping shard as a client's calls do.
        shard.hibernation().note_call(shard.now_ms());
        let entry = ShardEntry::decode_versioned(&r.entry)
            .map_err(|e| StrataError::invalid(format!("an adoption step does not decode: {e}")))?;
        let command = entry.0.command;
        if !command.is_from_another_shard() {
            return Err(StrataError::invalid("only adoption and hand-off steps are taken from another shard").into());
        }
        let needed = if command.is_hand_off_step() { HAND_OFFS_GENERATION } else { QUEUE_MOVES_GENERATION };
        if shard.log_format().writing() < needed {
            // Not a refusal of the step itself: its sender retries.
            return Err(StrataError::unavailable(
                "the step needs a newer format generation than the cluster writes; retry after the upgrade",
            )
            .into());
        }
        shard.propose(command).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn send(&self, request: Request<pb::SendRequest>) -> Result<Response<pb::SendResponse>, Status> {
        let mut r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        if r.messages.is_empty() || r.messages.len() > queue::SEND_BATCH_MAX {
            return Err(StrataError::invalid(format!("a send carries 1-{} messages", queue::SEND_BATCH_MAX)).into());
        }
        let trace_headers: Vec<Option<String>> = r
            .messages
            .iter_mut()
            .map(|m| Some(std::mem::take(&mut m.trace_header)).filter(|h| !h.is_empty()))
            .collect();
        let caller = caller_note(&shard, r.caller, trace_headers)?;
        let now_ms = shard.now_ms();
        let messages =
            r.messages.into_iter().map(|m| message_from_pb(m, &self.random, now_ms)).collect::<Result<Vec<_>, _>>()?;
        // What the messages will count in their queue's stored bytes is what they take on disk.
        self.admit_growth(&tenant, messages.iter().map(|m| u64::from(m.stored_bytes())).sum())?;
        if r.request_id.len() > queue::REQUEST_ID_CHARS_MAX {
            return Err(StrataError::invalid(format!(
                "request_id is at most {} characters",
                queue::REQUEST_ID_CHARS_MAX
            ))
            .into());
        }
        let meter = meter_of(r.meter, &tenant)?;
        // With every replica able to read it (generation 2), the id carries a digest of the
        // request, and the same id with other messages is refused instead of answered as a retry.
        let digests = shard.log_format().writing() >= REQUEST_DIGEST_GENERATION;
        let request_id = (!r.request_id.is_empty())
            .then(|| if digests { queue::request_key(&r.request_id, &messages) } else { r.request_id });
        let command = Command::Send { queue, tenant, messages }.with_caller(caller);
        match shard.propose_metered(request_id, meter, command).await? {
            queue::Response::Sent(sent) => Ok(Response::new(pb::SendResponse {
                messages: sent
                    .into_iter()
                    .map(|s| pb::SentMessage { message_id: s.message_id.to_string(), seq: s.seq })
                    .collect(),
            })),
            other => Err(NodeError::bug("unexpected answer to a send", format_args!("{other:?}")).into()),
        }
    }

    async fn receive(&self, request: Request<pb::ReceiveRequest>) -> Result<Response<pb::ReceiveResponse>, Status> {
        let mut r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        let caller = caller_note(&shard, r.caller.take(), Vec::new())?;
        let command = receive_command(queue, tenant.clone(), &r, caller)?;
        let messages = receive(&shard, queue, tenant, r.wait_ms, command).await?;
        Ok(Response::new(pb::ReceiveResponse { messages }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        if r.receipt_handles.is_empty() || r.receipt_handles.len() > queue::DELETE_BATCH_MAX {
            return Err(StrataError::invalid(format!("a delete carries 1-{} receipts", queue::DELETE_BATCH_MAX)).into());
        }
        let meter = meter_of(r.meter, &tenant)?;
        let command = Command::Delete { queue, tenant, receipts: r.receipt_handles };
        match shard
            .propose_metered(None, meter, command.with_caller(caller_note(&shard, r.caller, Vec::new())?))
            .await?
        {
            queue::Response::Deleted(results) => Ok(Response::new(pb::DeleteResponse {
                results: results
                    .into_iter()
                    .map(|r| match r {
                        Ok(()) => pb::EntryResult::default(),
                        Err(e) => {
                            let e = queue_error(e);
                            pb::EntryResult { error_code: e.kind.code().to_string(), error_message: e.message }
                        }
                    })
                    .collect(),
            })),
            other => Err(NodeError::bug("unexpected answer to a delete", format_args!("{other:?}")).into()),
        }
    }

    async fn change_visibility(
        &self,
        request: Request<pb::ChangeVisibilityRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        if r.visibility_timeout_ms > queue::VISIBILITY_TIMEOUT_MS_MAX {
            return Err(StrataError::invalid("visibility timeout must be at most 12 hours").into());
        }
        let command = Command::ChangeVisibility {
            queue,
            tenant,
            receipt: r.receipt_handle,
            visibility_timeout_ms: r.visibility_timeout_ms,
        };
        shard.propose(command.with_caller(caller_note(&shard, r.caller, Vec::new())?)).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn purge(&self, request: Request<pb::QueueRef>) -> Result<Response<pb::PurgeResponse>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(Some(&r))?;
        match shard.propose(Command::Purge { queue, tenant }).await? {
            queue::Response::Purged { count } => Ok(Response::new(pb::PurgeResponse { purged: count })),
            other => Err(NodeError::bug("unexpected answer to a purge", format_args!("{other:?}")).into()),
        }
    }

    async fn get_queue_stats(&self, request: Request<pb::QueueRef>) -> Result<Response<pb::QueueStats>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(Some(&r))?;
        shard.read_barrier().await?;
        let now_ms = shard.now_ms();
        let state = shard.state();
        let not_found = || queue_error(queue::QueueError::QueueNotFound);
        let counts = state.0.queue_counts_at(queue, &tenant, now_ms).ok_or_else(not_found)?;
        let stored_bytes = state.0.queue_stored_bytes(queue, &tenant).ok_or_else(not_found)?;
        let oldest_age_s = state.0.queue_gauges(queue, now_ms).map_or(0, |g| g.oldest_age_s);
        Ok(Response::new(pb::QueueStats {
            visible: counts.visible,
            in_flight: counts.in_flight,
            delayed: counts.delayed,
            stored_bytes,
            oldest_age_s,
        }))
    }

    async fn get_queue_metrics(
        &self,
        request: Request<pb::QueueMetricsRequest>,
    ) -> Result<Response<pb::QueueMetricsResponse>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        if r.from_minute > r.to_minute {
            return Err(StrataError::invalid("the metrics' start must not be after their end").into());
        }
        // At the leader, which counts the receives that found nothing.
        shard.read_barrier().await?;
        let (minutes, now) = shard.read_queue_metrics(queue, &tenant, r.from_minute, r.to_minute).await?;
        let gauges = |g: queue_metrics::Gauges| pb::QueueGauges {
            visible: g.visible,
            in_flight: g.in_flight,
            delayed: g.delayed,
            oldest_age_s: g.oldest_age_s,
        };
        let minutes = minutes
            .into_iter()
            .map(|m| pb::QueueMinute {
                minute: m.minute,
                sent: m.counts.sent,
                received: m.counts.received,
                deleted: m.counts.deleted,
                empty_receives: m.counts.empty_receives,
                moved_to_dead_letter: m.counts.moved_to_dead_letter,
                bytes_in: m.counts.bytes_in,
                bytes_out: m.counts.bytes_out,
                gauges: m.gauges.map(gauges),
            })
            .collect();
        Ok(Response::new(pb::QueueMetricsResponse { minutes, now: Some(gauges(now)) }))
    }

    async fn get_message_trace(
        &self,
        request: Request<pb::MessageTraceRequest>,
    ) -> Result<Response<pb::MessageTraceResponse>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        let message_id = uuid::Uuid::parse_str(&r.message_id)
            .map_err(|_| StrataError::new(ErrorKind::MessageNotFound, "no message has this id"))?;
        // At the leader, which holds every record applied so far (written or still waiting).
        shard.read_barrier().await?;
        let history = shard.read_message_trace(queue, &tenant, message_id).await?;
        let events =
            history.records.into_iter().map(|(queue_id, record)| trace_event_to_pb(queue_id, record)).collect();
        let (held, held_in_queue_id, visible_at_ms) = match history.now {
            Some((queue_id, visible_at_ms)) => (true, queue_id, visible_at_ms),
            None => (false, 0, 0),
        };
        Ok(Response::new(pb::MessageTraceResponse {
            events,
            held,
            held_in_queue_id,
            visible_at_ms,
            now_ms: history.now_ms,
        }))
    }

    async fn start_move_task(
        &self,
        request: Request<pb::StartMoveTaskRequest>,
    ) -> Result<Response<pb::MoveTaskInfo>, Status> {
        self.disk.admit()?;
        let r = request.into_inner();
        let (shard, source, tenant) = self.route(r.source.as_ref())?;
        let command = Command::StartMoveTask {
            tenant,
            source,
            destination: r.destination_queue_id,
            max_per_second: r.max_per_second,
        };
        move_task_response(shard.propose(command).await?)
    }

    async fn cancel_move_task(
        &self,
        request: Request<pb::CancelMoveTaskRequest>,
    ) -> Result<Response<pb::MoveTaskInfo>, Status> {
        let r = request.into_inner();
        let (shard, source, tenant) = self.route(r.source.as_ref())?;
        let is_source = shard.state().0.move_tasks_of(&tenant, source).iter().any(|t| t.task_id == r.task_id);
        if !is_source {
            return Err(StrataError::invalid("no such move task for this queue").into());
        }
        move_task_response(shard.propose(Command::CancelMoveTask { tenant, task_id: r.task_id }).await?)
    }

    async fn list_move_tasks(
        &self,
        request: Request<pb::QueueRef>,
    ) -> Result<Response<pb::ListMoveTasksResponse>, Status> {
        let r = request.into_inner();
        let (shard, source, tenant) = self.route(Some(&r))?;
        shard.read_barrier().await?;
        let tasks = shard.state().0.move_tasks_of(&tenant, source);
        Ok(Response::new(pb::ListMoveTasksResponse { tasks: tasks.iter().map(move_task_pb).collect() }))
    }

    async fn cancel_scheduled(
        &self,
        request: Request<pb::CancelScheduledRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let (shard, queue, tenant) = self.route(r.queue.as_ref())?;
        let message_id = uuid::Uuid::parse_str(&r.message_id)
            .map_err(|_| StrataError::invalid(format!("'{}' is not a message id", r.message_id)))?;
        shard.cancel_scheduled(queue, tenant, message_id).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn read_log_entries(
        &self,
        request: Request<pb::ReadLogEntriesRequest>,
    ) -> Result<Response<pb::ReadLogEntriesResponse>, Status> {
        let r = request.into_inner();
        let mut entries = self.shard(r.shard_id)?.local_entries(r.first_index, r.count_max)?;
        if !r.versioned_payloads {
            // A release from before payload versions reads only legacy entries, without a version.
            for entry in &mut entries {
                match strata_wal::format::frame_for_payload(entry) {
                    (strata_wal::format::LEGACY_FRAME_VERSION, legacy) => *entry = entry.slice_ref(legacy),
                    _ => return Err(StrataError::invalid("these log entries need a newer release to read them").into()),
                }
            }
        }
        Ok(Response::new(pb::ReadLogEntriesResponse { entries, versioned_payloads: r.versioned_payloads }))
    }

    async fn read_metering(
        &self,
        request: Request<pb::ReadMeteringRequest>,
    ) -> Result<Response<pb::ReadMeteringResponse>, Status> {
        let records_max = request.into_inner().records_max as usize;
        if !(1..=READ_METERING_RECORDS_MAX).contains(&records_max) {
            return Err(StrataError::invalid(format!("records_max must be 1-{READ_METERING_RECORDS_MAX}")).into());
        }
        let mut leading: Vec<Arc<Shard>> = self.shards.read().values().filter(|s| s.is_leader()).cloned().collect();
        leading.sort_by_key(|s| s.shard_id);
        let mut left = records_max;
        let mut shards = Vec::new();
        for shard in leading {
            if left == 0 {
                break;
            }
            // Applied records are committed: what a leader's state holds is durable.
            let Some(read) = shard.state().0.metering().read(left) else { continue };
            left -= (read.through_seq + 1 - read.first_seq) as usize;
            shards.push(pb::ShardMetering {
                shard_id: shard.shard_id,
                first_seq: read.first_seq,
                through_seq: read.through_seq,
                records: read.keyed.into_iter().map(Into::into).collect(),
                usage: read.usage,
            });
        }
        Ok(Response::new(pb::ReadMeteringResponse { shards }))
    }

    async fn trim_metering(&self, request: Request<pb::TrimMeteringRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.shard(r.shard_id)?.propose(Command::TrimMetering { through_seq: r.through_seq }).await?;
        Ok(Response::new(pb::Empty {}))
    }
}

fn move_task_pb(task: &queue::MoveTask) -> pb::MoveTaskInfo {
    let (status, failure_reason) = match &task.status {
        queue::MoveTaskStatus::Running => ("RUNNING", String::new()),
        queue::MoveTaskStatus::Completed => ("COMPLETED", String::new()),
        queue::MoveTaskStatus::Cancelled => ("CANCELLED", String::new()),
        queue::MoveTaskStatus::Failed(reason) => ("FAILED", reason.clone()),
    };
    pb::MoveTaskInfo {
        task_id: task.task_id,
        source_queue_id: task.source,
        destination_queue_id: task.destination,
        max_per_second: task.max_per_second,
        moved: task.moved,
        to_move: task.to_move,
        status: status.to_string(),
        failure_reason,
        started_ms: task.started_ms,
    }
}

fn move_task_response(response: queue::Response) -> Result<Response<pb::MoveTaskInfo>, Status> {
    match response {
        queue::Response::MoveTask(task) => Ok(Response::new(move_task_pb(&task))),
        other => Err(NodeError::bug("unexpected answer to a move-task command", format_args!("{other:?}")).into()),
    }
}
