//! Model test of the shard queue state machine.
//!
//! `Model` is a deliberately naive reference: each queue is a `Vec` of messages
//! in send order, and every question is answered by a linear scan. Random
//! command sequences are applied to both the real `ShardState` and the model;
//! after every command the responses must match (delivered ids in order,
//! receive counts, per-entry delete results, error kinds) and so must every
//! read-only query. Midway through each sequence the state is snapshotted with
//! in its snapshot format and restored, and the restored copy must keep behaving exactly
//! like the original.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use strata_storage::queue::{
    AttributeValue, Call, CallerNote, Command, DELAY_MS_MAX, DELETE_BATCH_MAX, Delivery, MESSAGE_ATTRIBUTES_MAX,
    MessageRef, NewMessage, QueueConfig, QueueCounts, QueueError, QueueId, RECEIVE_BATCH_MAX, RETENTION_MS_MAX,
    RETENTION_MS_MIN, Response, SEND_BATCH_MAX, SentMessage, ShardCommand, ShardState, VISIBILITY_TIMEOUT_MS_MAX,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ModelMessage {
    id: Uuid,
    seq: u64,
    body_ref: MessageRef,
    sent_ms: u64,
    visible_at_ms: u64,
    receive_count: u32,
    first_receive_ms: u64,
    /// Log index of the latest receive.
    lease: Option<u64>,
}

#[derive(Debug, Clone)]
struct ModelQueue {
    tenant: String,
    config: QueueConfig,
    next_seq: u64,
    /// In send (= seq) order.
    messages: Vec<ModelMessage>,
    /// Time of the last successful command on this queue; counts are as of then.
    settled_ms: u64,
}

impl ModelQueue {
    fn expired(&self, m: &ModelMessage, now_ms: u64) -> bool {
        m.sent_ms + self.config.retention_ms <= now_ms
    }

    /// Drops expired messages; returns how many.
    fn drop_expired(&mut self, now_ms: u64) -> u64 {
        let before = self.messages.len();
        let retention_ms = self.config.retention_ms;
        self.messages.retain(|m| m.sent_ms + retention_ms > now_ms);
        (before - self.messages.len()) as u64
    }

    fn settle(&mut self, now_ms: u64) {
        self.drop_expired(now_ms);
        self.settled_ms = now_ms;
    }

    fn position(&self, seq: u64) -> Option<usize> {
        self.messages.iter().position(|m| m.seq == seq)
    }
}

/// What the harness knows about a receipt string the real state issued.
#[derive(Debug, Clone, Copy)]
struct KnownReceipt {
    queue: QueueId,
    seq: u64,
    lease: u64,
}

#[derive(Debug, Default)]
struct Model {
    clock_ms: u64,
    queues: BTreeMap<QueueId, ModelQueue>,
}

fn invalid() -> QueueError {
    QueueError::InvalidParameter(String::new())
}

fn model_validate(config: &QueueConfig) -> Result<(), QueueError> {
    let ok = (RETENTION_MS_MIN..=RETENTION_MS_MAX).contains(&config.retention_ms)
        && config.visibility_timeout_ms <= VISIBILITY_TIMEOUT_MS_MAX
        && config.delay_ms <= DELAY_MS_MAX;
    if ok { Ok(()) } else { Err(invalid()) }
}

impl Model {
    fn queue_mut(&mut self, queue: QueueId, tenant: &str) -> Result<&mut ModelQueue, QueueError> {
        self.queues.get_mut(&queue).filter(|q| q.tenant == tenant).ok_or(QueueError::QueueNotFound)
    }

    fn queue(&self, queue: QueueId, tenant: &str) -> Option<&ModelQueue> {
        self.queues.get(&queue).filter(|q| q.tenant == tenant)
    }

    fn apply(&mut self, log_index: u64, cmd: &ShardCommand, receipts: &HashMap<String, KnownReceipt>) -> Response {
        self.clock_ms = self.clock_ms.max(cmd.now_ms);
        match &cmd.command {
            // One entry, calls applied in order at its index; only receives, deletes and
            // visibility changes may ride in it.
            Command::Calls { calls } => Response::Calls(
                calls
                    .iter()
                    .map(|call| match call.command.call_and_caller().0 {
                        Command::Receive { .. }
                        | Command::Delete { .. }
                        | Command::ChangeVisibility { .. }
                        | Command::ReturnUndelivered { .. } => self.apply_command(log_index, &call.command, receipts),
                        _ => Response::Error(invalid()),
                    })
                    .collect(),
            ),
            command => self.apply_command(log_index, command, receipts),
        }
    }

    fn apply_command(
        &mut self,
        log_index: u64,
        command: &Command,
        receipts: &HashMap<String, KnownReceipt>,
    ) -> Response {
        let now = self.clock_ms;
        let result = match command {
            Command::CreateQueue { queue, tenant, config } => match self.queues.get(queue) {
                Some(q) if q.tenant == *tenant => Ok(Response::QueueCreated),
                Some(_) => Err(QueueError::QueueAlreadyExists),
                None if tenant.is_empty() => Err(invalid()),
                None => model_validate(config).map(|()| {
                    self.queues.insert(
                        *queue,
                        ModelQueue {
                            tenant: tenant.clone(),
                            config: *config,
                            next_seq: 0,
                            messages: Vec::new(),
                            settled_ms: now,
                        },
                    );
                    Response::QueueCreated
                }),
            },
            Command::SetQueueConfig { queue, tenant, config } => self.queue_mut(*queue, tenant).and_then(|q| {
                model_validate(config)?;
                q.settle(now);
                q.config = *config;
                Ok(Response::QueueConfigSet)
            }),
            Command::DeleteQueue { queue, tenant } => {
                if self.queue(*queue, tenant).is_some() {
                    self.queues.remove(queue);
                    Ok(Response::QueueDeleted)
                } else {
                    Err(QueueError::QueueNotFound)
                }
            }
            Command::Send { queue, tenant, messages } => self.queue_mut(*queue, tenant).and_then(|q| {
                if messages.is_empty() {
                    return Err(invalid());
                }
                if messages.len() > SEND_BATCH_MAX {
                    return Err(QueueError::TooManyEntries);
                }
                for m in messages {
                    if m.delay_ms.is_some_and(|d| d > DELAY_MS_MAX)
                        || m.attributes.len() > MESSAGE_ATTRIBUTES_MAX
                        || m.attributes.keys().any(|k| k.is_empty())
                    {
                        return Err(invalid());
                    }
                }
                q.settle(now);
                let mut sent = Vec::new();
                for (slot, m) in messages.iter().enumerate() {
                    let seq = q.next_seq;
                    q.next_seq += 1;
                    q.messages.push(ModelMessage {
                        id: m.message_id,
                        seq,
                        body_ref: MessageRef { log_index, slot: slot as u16 },
                        sent_ms: now,
                        visible_at_ms: now + m.delay_ms.unwrap_or(q.config.delay_ms),
                        receive_count: 0,
                        first_receive_ms: 0,
                        lease: None,
                    });
                    sent.push(SentMessage { message_id: m.message_id, seq });
                }
                Ok(Response::Sent(sent))
            }),
            Command::Receive { queue, tenant, max_messages, visibility_timeout_ms } => {
                self.queue_mut(*queue, tenant).and_then(|q| {
                    if *max_messages == 0 || *max_messages > RECEIVE_BATCH_MAX {
                        return Err(invalid());
                    }
                    let timeout = visibility_timeout_ms.unwrap_or(q.config.visibility_timeout_ms);
                    if timeout > VISIBILITY_TIMEOUT_MS_MAX {
                        return Err(invalid());
                    }
                    q.settle(now);
                    let mut out = Vec::new();
                    for m in q.messages.iter_mut() {
                        if out.len() == *max_messages as usize {
                            break;
                        }
                        // Leased by an earlier call of the same entry: not again in it.
                        if m.visible_at_ms > now || (m.receive_count > 0 && m.lease == Some(log_index)) {
                            continue;
                        }
                        if m.receive_count == 0 {
                            m.first_receive_ms = now;
                        }
                        m.receive_count += 1;
                        m.lease = Some(log_index);
                        m.visible_at_ms = now + timeout;
                        out.push(Delivery {
                            message_id: m.id,
                            seq: m.seq,
                            body_ref: m.body_ref,
                            receipt: String::new(),
                            receive_count: m.receive_count,
                            sent_ms: m.sent_ms,
                            first_receive_ms: m.first_receive_ms,
                            fifo: None,
                        });
                    }
                    Ok(Response::Received(out))
                })
            }
            Command::Delete { queue, tenant, receipts: texts } => self.queue_mut(*queue, tenant).and_then(|q| {
                if texts.is_empty() {
                    return Err(invalid());
                }
                if texts.len() > DELETE_BATCH_MAX {
                    return Err(QueueError::TooManyEntries);
                }
                q.settle(now);
                let results = texts
                    .iter()
                    .map(|text| match receipts.get(text) {
                        Some(r) if r.queue == *queue && r.seq < q.next_seq => match q.position(r.seq) {
                            None => Ok(()),
                            Some(i) if q.messages[i].lease != Some(r.lease) => Err(QueueError::StaleReceipt),
                            Some(i) => {
                                q.messages.remove(i);
                                Ok(())
                            }
                        },
                        _ => Err(QueueError::InvalidReceipt),
                    })
                    .collect();
                Ok(Response::Deleted(results))
            }),
            Command::ChangeVisibility { queue, tenant, receipt, visibility_timeout_ms } => {
                self.queue_mut(*queue, tenant).and_then(|q| {
                    if *visibility_timeout_ms > VISIBILITY_TIMEOUT_MS_MAX {
                        return Err(invalid());
                    }
                    let r = match receipts.get(receipt) {
                        Some(r) if r.queue == *queue && r.seq < q.next_seq => *r,
                        _ => return Err(QueueError::InvalidReceipt),
                    };
                    let i = q
                        .position(r.seq)
                        .filter(|&i| !q.expired(&q.messages[i], now))
                        .ok_or(QueueError::MessageNotInFlight)?;
                    if q.messages[i].lease != Some(r.lease) {
                        return Err(QueueError::StaleReceipt);
                    }
                    if q.messages[i].visible_at_ms <= now {
                        return Err(QueueError::MessageNotInFlight);
                    }
                    q.settle(now);
                    // Settling cannot have removed it: it was checked unexpired.
                    let i = q.position(r.seq).expect("checked above");
                    q.messages[i].visible_at_ms = now + visibility_timeout_ms;
                    Ok(Response::VisibilityChanged)
                })
            }
            Command::ReturnUndelivered { queue, tenant, receipts: texts } => {
                self.queue_mut(*queue, tenant).and_then(|q| {
                    if texts.len() > RECEIVE_BATCH_MAX as usize {
                        return Err(QueueError::TooManyEntries);
                    }
                    q.settle(now);
                    for text in texts {
                        let Some(r) = receipts.get(text).filter(|r| r.queue == *queue && r.seq < q.next_seq) else {
                            continue;
                        };
                        let Some(i) = q.position(r.seq) else { continue };
                        let m = &mut q.messages[i];
                        // Only a message still in flight under this very receipt is taken back.
                        if m.lease != Some(r.lease)
                            || m.visible_at_ms <= now
                            || m.sent_ms + q.config.retention_ms <= now
                        {
                            continue;
                        }
                        m.receive_count -= 1;
                        if m.receive_count == 0 {
                            m.first_receive_ms = 0;
                            m.lease = None;
                        }
                        m.visible_at_ms = now;
                    }
                    Ok(Response::VisibilityChanged)
                })
            }
            Command::Purge { queue, tenant } => self.queue_mut(*queue, tenant).map(|q| {
                q.settle(now);
                let count = q.messages.len() as u64;
                q.messages.clear();
                Response::Purged { count }
            }),
            Command::Expire => {
                let count = self.queues.values_mut().map(|q| q.drop_expired(now)).sum();
                Ok(Response::Expired { count })
            }
            // A caller's note wraps one call, which applies as it would alone.
            Command::WithCaller { command, .. } => match **command {
                Command::Calls { .. } | Command::WithCaller { .. } => Err(invalid()),
                ref call => return self.apply_command(log_index, call, receipts),
            },
            // Not generated here: move tasks, dead letters, FIFO, scheduled messages, metering and
            // moves between shards have tests of their own.
            Command::StartMoveTask { .. }
            | Command::CancelMoveTask { .. }
            | Command::MoveStep { .. }
            | Command::ReceiveAttempt { .. }
            | Command::CancelScheduled { .. }
            | Command::StartScheduledLoad { .. }
            | Command::LoadScheduled { .. }
            | Command::TrimMetering { .. }
            | Command::Calls { .. }
            | Command::FenceQueue { .. }
            | Command::UnfenceQueue { .. }
            | Command::ReleaseQueue { .. }
            | Command::AdoptState { .. }
            | Command::AdoptBodies { .. }
            | Command::AdoptQueue { .. }
            | Command::DropAdoption { .. }
            | Command::OpenQueue { .. }
            | Command::OpenHandOffs
            | Command::AcceptHandOffs { .. }
            | Command::TrimHandOffs { .. }
            | Command::ReturnHandOffs { .. }
            | Command::Hibernate => {
                unreachable!(
                    "the model test does not generate move-task, receive-attempt, schedule, metering, queue-move or hand-off commands"
                )
            }
        };
        result.unwrap_or_else(Response::Error)
    }

    fn counts(&self, queue: QueueId, tenant: &str) -> Option<QueueCounts> {
        let q = self.queue(queue, tenant)?;
        let mut counts = QueueCounts::default();
        for m in &q.messages {
            if m.visible_at_ms <= q.settled_ms {
                counts.visible += 1;
            } else if m.receive_count == 0 {
                counts.delayed += 1;
            } else {
                counts.in_flight += 1;
            }
        }
        Some(counts)
    }

    fn has_visible(&self, queue: QueueId, tenant: &str, now_ms: u64) -> bool {
        let t = now_ms.max(self.clock_ms);
        self.queue(queue, tenant).is_some_and(|q| q.messages.iter().any(|m| m.visible_at_ms <= t && !q.expired(m, t)))
    }

    fn next_visible_at_ms(&self, queue: QueueId, tenant: &str, now_ms: u64) -> Option<u64> {
        let t = now_ms.max(self.clock_ms);
        let q = self.queue(queue, tenant)?;
        q.messages
            .iter()
            .filter(|m| m.visible_at_ms > t && !q.expired(m, m.visible_at_ms))
            .map(|m| m.visible_at_ms)
            .min()
    }

    fn min_live_log_index(&self) -> Option<u64> {
        self.queues.values().flat_map(|q| q.messages.iter().map(|m| m.body_ref.log_index)).min()
    }

    fn has_expirable(&self, now_ms: u64) -> bool {
        let t = now_ms.max(self.clock_ms);
        self.queues.values().any(|q| q.messages.iter().any(|m| q.expired(m, t)))
    }
}

// ---------------------------------------------------------------------------
// Generated operations
// ---------------------------------------------------------------------------

const SLOTS: usize = 2;
const TENANTS: [&str; SLOTS] = ["tenant-0", "tenant-1"];

#[derive(Debug, Clone)]
enum Pick {
    /// One of the most recently issued receipts.
    Recent(Index),
    /// Any receipt issued so far (often another queue's or long stale).
    Any(Index),
    /// A garbage string.
    Garbage(u8),
    /// A recent receipt with its last characters cut off.
    Truncated(Index, u8),
    /// The n-th receipt issued (modulo their number); for fixed sequences.
    Nth(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Send {
        delays: Vec<Option<u64>>,
        fault: u8,
    },
    Receive {
        max: u32,
        timeout_ms: Option<u64>,
    },
    Delete(Vec<Pick>),
    /// Takes back receives whose bodies could not be read.
    ReturnUndelivered(Vec<Pick>),
    ChangeVisibility {
        pick: Pick,
        timeout_ms: u64,
    },
    Purge,
    Expire,
    SetConfig(QueueConfig),
    DeleteQueue,
    /// CreateQueue for the slot's current id, or (fresh) for a new incarnation.
    CreateQueue {
        fresh: bool,
    },
    /// Replace the restored copy with a fresh snapshot round trip of the original.
    Snapshot,
    /// Calls of several clients in one entry ([`Command::Calls`]), each on a slot's queue.
    Calls(Vec<(usize, Op)>),
}

#[derive(Debug, Clone)]
struct Step {
    slot: usize,
    /// Send the command under the other slot's tenant.
    wrong_tenant: bool,
    /// How far this command's `now_ms` lags the wall clock (leader change).
    skew_ms: u64,
    op: Op,
}

/// `command` with a caller's note one time in three (by `choice`): a note changes nothing the
/// state does.
fn noted(command: Command, choice: u64) -> Command {
    if !choice.is_multiple_of(3) {
        return command;
    }
    let caller = CallerNote {
        credential: "AKIDMODEL".to_owned(),
        request_id: format!("request-{choice}"),
        trace_headers: vec![Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into())],
    };
    command.with_caller(Some(caller))
}

/// A duration below `max_ms`, mostly on a coarse 500 ms grid so that
/// deadlines often coincide exactly (boundary cases), sometimes arbitrary.
fn time_ms(max_ms: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0..max_ms / 500).prop_map(|n| n * 500),
        1 => 0..max_ms,
    ]
}

fn config_strategy() -> impl Strategy<Value = QueueConfig> {
    (
        prop_oneof![
            Just(RETENTION_MS_MIN),
            Just(90_000u64),
            Just(300_000u64),
            Just(1_000u64) // invalid
        ],
        prop_oneof![time_ms(30_000), Just(VISIBILITY_TIMEOUT_MS_MAX + 1)],
        prop_oneof![4 => Just(0u64), 1 => time_ms(10_000)],
    )
        .prop_map(|(retention_ms, visibility_timeout_ms, delay_ms)| QueueConfig {
            retention_ms,
            visibility_timeout_ms,
            delay_ms,
            redrive: None,
            fifo: None,
        })
}

fn pick_strategy() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => any::<Index>().prop_map(Pick::Recent),
        2 => any::<Index>().prop_map(Pick::Any),
        1 => any::<u8>().prop_map(Pick::Garbage),
        1 => (any::<Index>(), 1u8..6).prop_map(|(i, n)| Pick::Truncated(i, n)),
    ]
}

fn timeout_strategy() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(0u64)),
        3 => time_ms(40_000).prop_map(Some),
        1 => Just(Some(VISIBILITY_TIMEOUT_MS_MAX)),
        1 => Just(Some(VISIBILITY_TIMEOUT_MS_MAX + 1)),
    ]
}

/// A call that may share an entry with others, now and then one that may not (a purge).
fn call_strategy() -> impl Strategy<Value = (usize, Op)> {
    let op = prop_oneof![
        6 => (0u32..=RECEIVE_BATCH_MAX + 1, timeout_strategy())
            .prop_map(|(max, timeout_ms)| Op::Receive { max, timeout_ms }),
        4 => prop::collection::vec(pick_strategy(), 0..=DELETE_BATCH_MAX + 1).prop_map(Op::Delete),
        1 => prop::collection::vec(pick_strategy(), 0..=RECEIVE_BATCH_MAX as usize + 1).prop_map(Op::ReturnUndelivered),
        2 => (pick_strategy(), prop_oneof![Just(0u64), time_ms(40_000)])
            .prop_map(|(pick, timeout_ms)| Op::ChangeVisibility { pick, timeout_ms }),
        1 => Just(Op::Purge),
    ];
    (0..SLOTS, op)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let delay = prop_oneof![
        6 => Just(None),
        3 => time_ms(20_000).prop_map(Some),
        1 => prop_oneof![Just(Some(DELAY_MS_MAX)), Just(Some(DELAY_MS_MAX + 1))],
    ];
    prop_oneof![
        6 => time_ms(3_000).prop_map(Op::Advance),
        1 => (1u64..40).prop_map(|n| Op::Advance(n * 10_000)),
        1 => (30_000u64..400_000).prop_map(Op::Advance),
        6 => (prop::collection::vec(delay, 0..=SEND_BATCH_MAX + 1), any::<u8>())
            .prop_map(|(delays, fault)| Op::Send { delays, fault }),
        6 => (0u32..=RECEIVE_BATCH_MAX + 1, timeout_strategy())
            .prop_map(|(max, timeout_ms)| Op::Receive { max, timeout_ms }),
        4 => prop::collection::vec(pick_strategy(), 0..=DELETE_BATCH_MAX + 1).prop_map(Op::Delete),
        2 => prop::collection::vec(pick_strategy(), 0..=RECEIVE_BATCH_MAX as usize + 1).prop_map(Op::ReturnUndelivered),
        3 => (
            pick_strategy(),
            prop_oneof![Just(0u64), time_ms(40_000), Just(VISIBILITY_TIMEOUT_MS_MAX + 1)]
        )
            .prop_map(|(pick, timeout_ms)| Op::ChangeVisibility { pick, timeout_ms }),
        1 => Just(Op::Purge),
        2 => Just(Op::Expire),
        1 => config_strategy().prop_map(Op::SetConfig),
        1 => Just(Op::DeleteQueue),
        1 => any::<bool>().prop_map(|fresh| Op::CreateQueue { fresh }),
        1 => Just(Op::Snapshot),
        4 => prop::collection::vec(call_strategy(), 1..8).prop_map(Op::Calls),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    (0..SLOTS, prop::bool::weighted(0.05), prop_oneof![9 => Just(0u64), 1 => time_ms(5_000)], op_strategy())
        .prop_map(|(slot, wrong_tenant, skew_ms, op)| Step { slot, wrong_tenant, skew_ms, op })
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Makes responses comparable: receipts blanked (the model cannot forge
/// them), parameter error texts blanked (only the kind matters).
fn normalize(response: &Response) -> Response {
    let error = |e: &QueueError| match e {
        QueueError::InvalidParameter(_) => invalid(),
        other => other.clone(),
    };
    match response {
        Response::Received(deliveries) => {
            Response::Received(deliveries.iter().map(|d| Delivery { receipt: String::new(), ..d.clone() }).collect())
        }
        Response::Deleted(results) => {
            Response::Deleted(results.iter().map(|r| r.as_ref().map(|_| ()).map_err(error)).collect())
        }
        Response::Error(e) => Response::Error(error(e)),
        Response::Calls(responses) => Response::Calls(responses.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn restore(state: &ShardState) -> ShardState {
    let bytes = strata_storage::shard::encode_state(state).expect("encode snapshot");
    strata_storage::shard::decode_state(&bytes).expect("decode snapshot")
}

struct Harness {
    /// The original, and after the first snapshot a restored copy.
    shards: Vec<ShardState>,
    model: Model,
    wall_ms: u64,
    log_index: u64,
    /// Current queue id of each slot (a fresh CreateQueue makes a new incarnation).
    slot_queue: [QueueId; SLOTS],
    next_queue_id: QueueId,
    /// Every receipt issued, in order, and what it designates.
    issued: Vec<String>,
    known: HashMap<String, KnownReceipt>,
}

impl Harness {
    fn new() -> Result<Self, TestCaseError> {
        let mut harness = Self {
            shards: vec![ShardState::new()],
            model: Model::default(),
            wall_ms: 1_000,
            log_index: 0,
            slot_queue: [1, 2],
            next_queue_id: 3,
            issued: Vec::new(),
            known: HashMap::new(),
        };
        for (queue, tenant) in harness.slot_queue.into_iter().zip(TENANTS) {
            let config = QueueConfig {
                retention_ms: 90_000,
                visibility_timeout_ms: 5_000,
                delay_ms: 0,
                redrive: None,
                fifo: None,
            };
            let response = harness.apply(0, Command::CreateQueue { queue, tenant: tenant.to_owned(), config })?;
            prop_assert_eq!(response, Response::QueueCreated);
        }
        Ok(harness)
    }

    /// Applies one command to every shard copy and to the model, and checks
    /// that all answer the same.
    fn apply(&mut self, skew_ms: u64, command: Command) -> Result<Response, TestCaseError> {
        self.log_index += 1;
        let cmd = ShardCommand { now_ms: self.wall_ms.saturating_sub(skew_ms), command, request_id: None, meter: None };
        let expected = self.model.apply(self.log_index, &cmd, &self.known);
        let mut first: Option<Response> = None;
        for shard in &mut self.shards {
            let response = shard.apply(self.log_index, &cmd);
            prop_assert_eq!(&normalize(&response), &expected, "command {:?}", cmd);
            match &first {
                // Copies must agree exactly, receipts included.
                Some(first) => prop_assert_eq!(first, &response),
                None => first = Some(response),
            }
        }
        let response = first.unwrap_or(expected);
        match (&response, &cmd.command) {
            (Response::Calls(responses), Command::Calls { calls }) => {
                for (response, call) in responses.iter().zip(calls) {
                    self.learn_receipts(response, &call.command);
                }
            }
            (response, command) => self.learn_receipts(response, command),
        }
        Ok(response)
    }

    fn learn_receipts(&mut self, response: &Response, command: &Command) {
        if let (Response::Received(deliveries), (Command::Receive { queue, .. }, _)) =
            (response, command.call_and_caller())
        {
            for d in deliveries {
                self.issued.push(d.receipt.clone());
                self.known.insert(d.receipt.clone(), KnownReceipt { queue: *queue, seq: d.seq, lease: self.log_index });
            }
        }
    }

    fn receipt(&self, pick: &Pick) -> String {
        const RECENT: usize = 8;
        let recent = &self.issued[self.issued.len().saturating_sub(RECENT)..];
        match pick {
            _ if self.issued.is_empty() => "no-receipt-yet".to_owned(),
            Pick::Recent(i) => i.get(recent).clone(),
            Pick::Any(i) => i.get(&self.issued).clone(),
            Pick::Nth(n) => self.issued[n % self.issued.len()].clone(),
            Pick::Garbage(n) => match n % 4 {
                0 => String::new(),
                1 => "!!not base64!!".to_owned(),
                2 => "AAAAAAAA".to_owned(),
                _ => "A".repeat(usize::from(*n)),
            },
            Pick::Truncated(i, n) => {
                let text = i.get(recent);
                text[..text.len().saturating_sub(usize::from(*n))].to_owned()
            }
        }
    }

    /// The command of a call on `queue` (a receive, delete, take-back, visibility change or
    /// purge).
    fn call_command(&self, queue: QueueId, tenant: String, op: &Op) -> Command {
        let command = match op {
            Op::Receive { max, timeout_ms } => {
                Command::Receive { queue, tenant, max_messages: *max, visibility_timeout_ms: *timeout_ms }
            }
            Op::Delete(picks) => {
                Command::Delete { queue, tenant, receipts: picks.iter().map(|p| self.receipt(p)).collect() }
            }
            Op::ReturnUndelivered(picks) => {
                Command::ReturnUndelivered { queue, tenant, receipts: picks.iter().map(|p| self.receipt(p)).collect() }
            }
            Op::ChangeVisibility { pick, timeout_ms } => Command::ChangeVisibility {
                queue,
                tenant,
                receipt: self.receipt(pick),
                visibility_timeout_ms: *timeout_ms,
            },
            Op::Purge => Command::Purge { queue, tenant },
            other => unreachable!("{other:?} is not a call"),
        };
        noted(command, self.log_index)
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let queue = self.slot_queue[step.slot];
        let tenant_slot = if step.wrong_tenant { (step.slot + 1) % SLOTS } else { step.slot };
        let tenant = TENANTS[tenant_slot].to_owned();
        let skew = step.skew_ms;
        match &step.op {
            Op::Advance(ms) => self.wall_ms += ms,
            Op::Send { delays, fault } => {
                let base = self.log_index * 100;
                let mut messages: Vec<NewMessage> = delays
                    .iter()
                    .enumerate()
                    .map(|(i, delay_ms)| NewMessage {
                        message_id: Uuid::from_u128(u128::from(base + i as u64)),
                        body: Bytes::from_static(b"body"),
                        attributes: BTreeMap::new(),
                        delay_ms: *delay_ms,
                        deliver_at_ms: None,
                        fifo: None,
                    })
                    .collect();
                if let Some(first) = messages.first_mut() {
                    match fault % 16 {
                        0 => {
                            for a in 0..=MESSAGE_ATTRIBUTES_MAX {
                                first.attributes.insert(format!("a{a}"), AttributeValue::Number("1".into()));
                            }
                        }
                        1 => {
                            first.attributes.insert(String::new(), AttributeValue::String("x".into()));
                        }
                        2 => {
                            first.attributes.insert("ok".into(), AttributeValue::Binary(vec![1, 2, 3]));
                        }
                        _ => {}
                    }
                }
                self.apply(skew, noted(Command::Send { queue, tenant, messages }, u64::from(*fault)))?;
            }
            Op::Receive { .. } | Op::Delete(_) | Op::ReturnUndelivered(_) | Op::ChangeVisibility { .. } | Op::Purge => {
                let command = self.call_command(queue, tenant, &step.op);
                self.apply(skew, command)?;
            }
            Op::Calls(calls) => {
                let calls = calls
                    .iter()
                    .map(|(slot, op)| {
                        let command = self.call_command(self.slot_queue[*slot], TENANTS[*slot].to_owned(), op);
                        Call { command, meter: None }
                    })
                    .collect();
                self.apply(skew, Command::Calls { calls })?;
            }
            Op::Expire => {
                self.apply(skew, Command::Expire)?;
            }
            Op::SetConfig(config) => {
                self.apply(skew, Command::SetQueueConfig { queue, tenant, config: *config })?;
            }
            Op::DeleteQueue => {
                self.apply(skew, Command::DeleteQueue { queue, tenant })?;
            }
            Op::CreateQueue { fresh } => {
                let queue = if *fresh {
                    self.next_queue_id += 1;
                    self.slot_queue[step.slot] = self.next_queue_id;
                    self.next_queue_id
                } else {
                    queue
                };
                let config = QueueConfig {
                    retention_ms: 60_000,
                    visibility_timeout_ms: 2_000,
                    delay_ms: 0,
                    redrive: None,
                    fifo: None,
                };
                self.apply(skew, Command::CreateQueue { queue, tenant, config })?;
            }
            Op::Snapshot => self.snapshot()?,
        }
        self.check_queries()
    }

    fn snapshot(&mut self) -> Result<(), TestCaseError> {
        let restored = restore(&self.shards[0]);
        prop_assert_eq!(&restored, &self.shards[0]);
        self.shards.truncate(1);
        self.shards.push(restored);
        Ok(())
    }

    /// Every read-only query agrees with the model, on every copy.
    fn check_queries(&self) -> Result<(), TestCaseError> {
        let probes = [self.wall_ms.saturating_sub(2_000), self.wall_ms, self.wall_ms + 1_000, self.wall_ms + 100_000];
        for shard in &self.shards {
            prop_assert_eq!(shard.min_live_log_index(), self.model.min_live_log_index());
            for &now in &probes {
                prop_assert_eq!(shard.has_expirable(now), self.model.has_expirable(now));
            }
            for queue in self.slot_queue {
                for tenant in TENANTS {
                    prop_assert_eq!(
                        shard.queue_counts(queue, tenant),
                        self.model.counts(queue, tenant),
                        "counts of queue {} for {}",
                        queue,
                        tenant
                    );
                    prop_assert_eq!(
                        shard.queue_config(queue, tenant),
                        self.model.queue(queue, tenant).map(|q| &q.config)
                    );
                    for &now in &probes {
                        prop_assert_eq!(
                            shard.has_visible(queue, tenant, now),
                            self.model.has_visible(queue, tenant, now),
                            "has_visible({}, {}, {})",
                            queue,
                            tenant,
                            now
                        );
                        prop_assert_eq!(
                            shard.next_visible_at_ms(queue, tenant, now),
                            self.model.next_visible_at_ms(queue, tenant, now),
                            "next_visible_at_ms({}, {}, {})",
                            queue,
                            tenant,
                            now
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new()?;
    for (i, step) in steps.iter().enumerate() {
        // Always exercise one snapshot halfway, besides the generated ones.
        if i == steps.len() / 2 {
            harness.snapshot()?;
        }
        harness.step(step)?;
    }
    // The copies end byte-for-byte identical.
    if let [original, restored] = harness.shards.as_slice() {
        prop_assert_eq!(
            strata_storage::shard::encode_state(original).expect("encode"),
            strata_storage::shard::encode_state(restored).expect("encode")
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 300,
        // Failures are reported with the shrunk case; do not write files.
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn shard_state_matches_reference_model(
        steps in prop::collection::vec(step_strategy(), 1..120)
    ) {
        run(&steps)?;
    }
}

/// A fixed sequence covering the paths the generator reaches only by luck:
/// expiry of in-flight messages, stale deletes, and snapshot in the middle.
#[test]
fn fixed_sequence_matches_reference_model() {
    let step = |slot, op| Step { slot, wrong_tenant: false, skew_ms: 0, op };
    let steps = vec![
        step(0, Op::Send { delays: vec![None, Some(1_000), None], fault: 3 }),
        step(0, Op::Receive { max: 2, timeout_ms: Some(500) }),
        step(0, Op::Advance(600)),
        step(0, Op::Receive { max: 10, timeout_ms: None }),
        step(0, Op::Delete(vec![Pick::Nth(0), Pick::Nth(1), Pick::Nth(2), Pick::Nth(3)])),
        step(1, Op::Send { delays: vec![None], fault: 3 }),
        step(1, Op::Receive { max: 1, timeout_ms: Some(0) }),
        step(0, Op::ChangeVisibility { pick: Pick::Nth(4), timeout_ms: 0 }),
        step(0, Op::Advance(200_000)),
        step(1, Op::Receive { max: 1, timeout_ms: None }),
        step(0, Op::Expire),
        step(0, Op::Purge),
    ];
    let result = run(&steps);
    assert!(result.is_ok(), "{result:?}");
}

/// Calls sharing entries: two receives of one entry never lease the same message, even when the
/// first leaves it visible at once; deletes and visibility changes in an entry use receipts of
/// earlier entries; a call that may not share an entry is refused alone.
#[test]
fn calls_sharing_an_entry_match_reference_model() {
    let step = |slot, op| Step { slot, wrong_tenant: false, skew_ms: 0, op };
    let receive = |max, timeout_ms| Op::Receive { max, timeout_ms };
    let steps = vec![
        step(0, Op::Send { delays: vec![None, None, None], fault: 3 }),
        step(0, Op::Calls(vec![(0, receive(1, Some(0))), (0, receive(2, Some(0))), (0, receive(10, None))])),
        step(0, Op::Calls(vec![(0, receive(1, None)), (1, receive(1, None)), (0, Op::Purge)])),
        step(
            0,
            Op::Calls(vec![
                (0, Op::Delete(vec![Pick::Nth(3), Pick::Nth(4)])),
                (0, Op::ChangeVisibility { pick: Pick::Nth(5), timeout_ms: 0 }),
                (0, receive(10, Some(0))),
                (0, receive(10, Some(0))),
            ]),
        ),
    ];
    let result = run(&steps);
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn model_rejects_a_wrong_answer() {
    // Guards the harness itself: a mismatching response must fail the case.
    let mut harness = Harness::new().expect("setup");
    harness.model.queues.get_mut(&1).expect("queue 1").next_seq = 5; // model now disagrees about seqs
    let result =
        harness.step(&Step { slot: 0, wrong_tenant: false, skew_ms: 0, op: Op::Send { delays: vec![None], fault: 3 } });
    assert!(result.is_err());
}
