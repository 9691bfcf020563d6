//! Unit tests of the shard state machine: each command, each error path,
//! tenant isolation and the memory figures quoted in the module doc.

use std::collections::BTreeMap;

use bytes::Bytes;
use strata_common::metering::MeterRecord;
use uuid::Uuid;

use super::store::{Message, Queue};
use super::*;

const TENANT: &str = "tenant-a";
const OTHER_TENANT: &str = "tenant-b";
const Q: QueueId = 7;

fn config() -> QueueConfig {
    QueueConfig { retention_ms: 120_000, visibility_timeout_ms: 10_000, delay_ms: 0, redrive: None, fifo: None }
}

fn new_message(n: u128) -> NewMessage {
    NewMessage {
        message_id: Uuid::from_u128(n),
        body: Bytes::from(format!("body {n}")),
        attributes: BTreeMap::new(),
        delay_ms: None,
        deliver_at_ms: None,
        fifo: None,
    }
}

/// A shard with a log index counter, so tests read like a command sequence.
struct Shard {
    state: ShardState,
    log_index: u64,
}

impl Shard {
    fn new() -> Self {
        Self { state: ShardState::new(), log_index: 0 }
    }

    /// A shard with queue `Q` of `TENANT` created at time 0.
    fn with_queue() -> Self {
        let mut shard = Self::new();
        let response = shard.apply(0, Command::CreateQueue { queue: Q, tenant: TENANT.to_owned(), config: config() });
        assert_eq!(response, Response::QueueCreated);
        shard
    }

    fn apply(&mut self, now_ms: u64, command: Command) -> Response {
        self.log_index += 1;
        let response =
            self.state.apply(self.log_index, &ShardCommand { now_ms, command, request_id: None, meter: None });
        // After every command, the FIFO indexes of every queue match a scan of its messages.
        for queue in [Q, DLQ, FIFO_Q] {
            if let Some(q) = self.state.queue_for_tests(queue) {
                assert!(q.fifo_index_is_consistent(), "FIFO index of queue {queue} is inconsistent");
            }
        }
        response
    }

    fn send(&mut self, now_ms: u64, ids: &[u128]) -> Vec<SentMessage> {
        let messages = ids.iter().map(|&n| new_message(n)).collect();
        match self.apply(now_ms, Command::Send { queue: Q, tenant: TENANT.to_owned(), messages }) {
            Response::Sent(sent) => sent,
            other => panic!("send failed: {other:?}"),
        }
    }

    fn receive(&mut self, now_ms: u64, max: u32, timeout_ms: Option<u64>) -> Vec<Delivery> {
        match self.apply(now_ms, receive_cmd(max, timeout_ms)) {
            Response::Received(deliveries) => deliveries,
            other => panic!("receive failed: {other:?}"),
        }
    }

    fn delete(&mut self, now_ms: u64, receipts: &[&str]) -> Response {
        self.apply(
            now_ms,
            Command::Delete {
                queue: Q,
                tenant: TENANT.to_owned(),
                receipts: receipts.iter().map(|r| (*r).to_owned()).collect(),
            },
        )
    }

    fn change_visibility(&mut self, now_ms: u64, receipt: &str, timeout_ms: u64) -> Response {
        self.apply(
            now_ms,
            Command::ChangeVisibility {
                queue: Q,
                tenant: TENANT.to_owned(),
                receipt: receipt.to_owned(),
                visibility_timeout_ms: timeout_ms,
            },
        )
    }

    fn counts(&self) -> QueueCounts {
        self.state.queue_counts(Q, TENANT).expect("queue exists")
    }

    /// Applies a command that must fail, and checks it changed nothing.
    /// `now_ms` must not move the clock, so the whole state can be compared.
    fn apply_rejected(&mut self, now_ms: u64, command: Command) -> QueueError {
        let before = self.state.clone();
        let response = self.apply(now_ms, command);
        assert_eq!(self.state, before, "a rejected command changed the state");
        match response {
            Response::Error(error) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

fn receive_cmd(max: u32, timeout_ms: Option<u64>) -> Command {
    Command::Receive { queue: Q, tenant: TENANT.to_owned(), max_messages: max, visibility_timeout_ms: timeout_ms }
}

fn ids(deliveries: &[Delivery]) -> Vec<u128> {
    deliveries.iter().map(|d| d.message_id.as_u128()).collect()
}

#[test]
fn create_queue_is_idempotent_for_the_same_tenant() {
    let mut shard = Shard::with_queue();
    let changed = QueueConfig { retention_ms: RETENTION_MS_MAX, ..config() };
    let response = shard.apply(1, Command::CreateQueue { queue: Q, tenant: TENANT.to_owned(), config: changed });
    assert_eq!(response, Response::QueueCreated);
    // The stored config is kept: CreateQueue never changes an existing queue.
    assert_eq!(shard.state.queue_config(Q, TENANT), Some(&config()));
}

#[test]
fn create_queue_rejects_a_taken_id_and_bad_input() {
    let mut shard = Shard::with_queue();
    let error =
        shard.apply_rejected(0, Command::CreateQueue { queue: Q, tenant: OTHER_TENANT.to_owned(), config: config() });
    assert_eq!(error, QueueError::QueueAlreadyExists);

    let error = shard.apply_rejected(0, Command::CreateQueue { queue: Q + 1, tenant: String::new(), config: config() });
    assert!(matches!(error, QueueError::InvalidParameter(_)));

    for bad in [
        QueueConfig { retention_ms: RETENTION_MS_MIN - 1, ..config() },
        QueueConfig { retention_ms: RETENTION_MS_MAX + 1, ..config() },
        QueueConfig { visibility_timeout_ms: VISIBILITY_TIMEOUT_MS_MAX + 1, ..config() },
        QueueConfig { delay_ms: DELAY_MS_MAX + 1, ..config() },
    ] {
        assert!(matches!(bad.validate(), Err(QueueError::InvalidParameter(_))));
        let error =
            shard.apply_rejected(0, Command::CreateQueue { queue: Q + 1, tenant: TENANT.to_owned(), config: bad });
        assert!(matches!(error, QueueError::InvalidParameter(_)), "{bad:?}");
    }
    assert_eq!(QueueConfig::default().validate(), Ok(()));
    assert_eq!(QueueConfig::default().retention_ms, RETENTION_MS_DEFAULT);
    assert_eq!(QueueConfig::default().visibility_timeout_ms, VISIBILITY_TIMEOUT_MS_DEFAULT);
}

#[test]
fn set_queue_config_changes_later_behaviour() {
    let mut shard = Shard::with_queue();
    let new_config =
        QueueConfig { retention_ms: 60_000, visibility_timeout_ms: 0, delay_ms: 5_000, redrive: None, fifo: None };
    let response = shard.apply(0, Command::SetQueueConfig { queue: Q, tenant: TENANT.to_owned(), config: new_config });
    assert_eq!(response, Response::QueueConfigSet);
    assert_eq!(shard.state.queue_config(Q, TENANT), Some(&new_config));

    // The new delay applies to the next send.
    shard.send(0, &[1]);
    assert_eq!(shard.receive(4_999, 10, None), vec![]);
    let first = shard.receive(5_000, 10, None);
    assert_eq!(ids(&first), vec![1]);
    // Visibility timeout 0: still visible right after the receive.
    assert_eq!(ids(&shard.receive(5_000, 10, None)), vec![1]);

    let error = shard.apply_rejected(
        5_000,
        Command::SetQueueConfig {
            queue: Q,
            tenant: TENANT.to_owned(),
            config: QueueConfig { retention_ms: 0, ..new_config },
        },
    );
    assert!(matches!(error, QueueError::InvalidParameter(_)));
}

#[test]
fn shorter_retention_applies_to_stored_messages() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    shard.apply(
        0,
        Command::SetQueueConfig {
            queue: Q,
            tenant: TENANT.to_owned(),
            config: QueueConfig { retention_ms: RETENTION_MS_MIN, ..config() },
        },
    );
    assert!(shard.state.has_expirable(RETENTION_MS_MIN));
    assert_eq!(shard.apply(RETENTION_MS_MIN, Command::Expire), Response::Expired { count: 1 });
}

#[test]
fn delete_queue_removes_it_and_old_receipts_do_not_match_a_new_incarnation() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    let delivery = shard.receive(0, 1, None).remove(0);
    assert_eq!(shard.state.min_live_log_index(), Some(2));

    let response = shard.apply(0, Command::DeleteQueue { queue: Q, tenant: TENANT.to_owned() });
    assert_eq!(response, Response::QueueDeleted);
    assert_eq!(shard.state.queue_counts(Q, TENANT), None);
    assert_eq!(shard.state.min_live_log_index(), None);
    assert!(!shard.state.has_expirable(u64::MAX));
    assert_eq!(shard.apply_rejected(0, receive_cmd(1, None)), QueueError::QueueNotFound);
    assert_eq!(
        shard.apply_rejected(0, Command::DeleteQueue { queue: Q, tenant: TENANT.to_owned() },),
        QueueError::QueueNotFound
    );

    // A new incarnation has a new id; the old receipt names the old one.
    let new_q = Q + 1;
    shard.apply(0, Command::CreateQueue { queue: new_q, tenant: TENANT.to_owned(), config: config() });
    let response =
        shard.apply(0, Command::Delete { queue: new_q, tenant: TENANT.to_owned(), receipts: vec![delivery.receipt] });
    assert_eq!(response, Response::Deleted(vec![Err(QueueError::InvalidReceipt)]));
}

#[test]
fn send_assigns_seqs_slots_and_delays() {
    let mut shard = Shard::with_queue();
    let sent = shard.send(1_000, &[1, 2, 3]);
    assert_eq!(sent.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(sent[2].message_id, Uuid::from_u128(3));
    let sent = shard.send(1_000, &[4]);
    assert_eq!(sent[0].seq, 3);

    let deliveries = shard.receive(1_000, 10, None);
    let refs: Vec<MessageRef> = deliveries.iter().map(|d| d.body_ref).collect();
    assert_eq!(
        refs,
        vec![
            MessageRef { log_index: 2, slot: 0 },
            MessageRef { log_index: 2, slot: 1 },
            MessageRef { log_index: 2, slot: 2 },
            MessageRef { log_index: 3, slot: 0 },
        ]
    );
    assert!(deliveries.iter().all(|d| d.sent_ms == 1_000));

    // Per-message delay overrides the queue delay, including Some(0).
    let mut shard = Shard::with_queue();
    shard.apply(
        0,
        Command::SetQueueConfig {
            queue: Q,
            tenant: TENANT.to_owned(),
            config: QueueConfig {
                delay_ms: 3_000,
                // Long enough for the 15-minute delay below.
                retention_ms: RETENTION_MS_MAX,
                ..config()
            },
        },
    );
    let mut no_delay = new_message(1);
    no_delay.delay_ms = Some(0);
    let mut long_delay = new_message(2);
    long_delay.delay_ms = Some(DELAY_MS_MAX);
    let queue_delay = new_message(3);
    shard.apply(
        0,
        Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![no_delay, long_delay, queue_delay] },
    );
    assert_eq!(shard.counts(), QueueCounts { visible: 1, in_flight: 0, delayed: 2 });
    assert_eq!(shard.state.next_visible_at_ms(Q, TENANT, 0), Some(3_000));
    assert_eq!(ids(&shard.receive(0, 10, Some(0))), vec![1]);
    assert_eq!(ids(&shard.receive(3_000, 10, Some(0))), vec![1, 3]);
    assert_eq!(ids(&shard.receive(DELAY_MS_MAX, 10, Some(0))), vec![1, 2, 3]);
}

#[test]
fn send_validation_rejects_the_whole_batch() {
    let mut shard = Shard::with_queue();
    let send = |messages: Vec<NewMessage>| Command::Send { queue: Q, tenant: TENANT.to_owned(), messages };

    assert!(matches!(shard.apply_rejected(0, send(vec![])), QueueError::InvalidParameter(_)));
    let too_many = (0..=SEND_BATCH_MAX as u128).map(new_message).collect();
    assert_eq!(shard.apply_rejected(0, send(too_many)), QueueError::TooManyEntries);

    let mut many_attributes = new_message(2);
    for i in 0..=MESSAGE_ATTRIBUTES_MAX {
        many_attributes.attributes.insert(format!("a{i}"), AttributeValue::Number(i.to_string()));
    }
    assert!(matches!(
        shard.apply_rejected(0, send(vec![new_message(1), many_attributes])),
        QueueError::InvalidParameter(_)
    ));

    let mut empty_name = new_message(2);
    empty_name.attributes.insert(String::new(), AttributeValue::String("x".to_owned()));
    assert!(matches!(shard.apply_rejected(0, send(vec![new_message(1), empty_name])), QueueError::InvalidParameter(_)));

    let mut long_delay = new_message(2);
    long_delay.delay_ms = Some(DELAY_MS_MAX + 1);
    assert!(matches!(shard.apply_rejected(0, send(vec![new_message(1), long_delay])), QueueError::InvalidParameter(_)));

    // Exactly at the limits is fine.
    let mut full = new_message(3);
    for i in 0..MESSAGE_ATTRIBUTES_MAX {
        full.attributes.insert(format!("a{i}"), AttributeValue::Binary(vec![1, 2]));
    }
    let mut batch: Vec<NewMessage> = (10..10 + SEND_BATCH_MAX as u128 - 1).map(new_message).collect();
    batch.push(full);
    assert!(matches!(shard.apply(0, send(batch)), Response::Sent(s) if s.len() == SEND_BATCH_MAX));
}

#[test]
fn receive_leases_lowest_seq_first() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2, 3]);
    let first = shard.receive(100, 2, None);
    assert_eq!(ids(&first), vec![1, 2]);
    for d in &first {
        assert_eq!(d.receive_count, 1);
        assert_eq!(d.first_receive_ms, 100);
        let receipt = Receipt::decode(&d.receipt).expect("our own receipt decodes");
        assert_eq!(receipt.queue, Q);
        assert_eq!(receipt.seq, d.seq);
        assert_eq!(receipt.lease, shard.log_index);
    }
    assert_eq!(shard.counts(), QueueCounts { visible: 1, in_flight: 2, delayed: 0 });
    assert_eq!(shard.state.next_visible_at_ms(Q, TENANT, 100), Some(10_100));

    assert_eq!(ids(&shard.receive(200, 10, None)), vec![3]);
    assert_eq!(shard.receive(300, 10, None), vec![]);
    assert!(!shard.state.has_visible(Q, TENANT, 10_099));
    assert!(shard.state.has_visible(Q, TENANT, 10_100));

    // After the visibility timeout the leased messages come back, in seq order.
    let second = shard.receive(10_100, 10, Some(50_000));
    assert_eq!(ids(&second), vec![1, 2]);
    assert!(second.iter().all(|d| d.receive_count == 2));
    assert!(second.iter().all(|d| d.first_receive_ms == 100));
    assert_ne!(second[0].receipt, first[0].receipt);
    let third = shard.receive(10_200, 10, None);
    assert_eq!(ids(&third), vec![3]);
}

#[test]
fn receive_rejects_bad_parameters() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    for max in [0, RECEIVE_BATCH_MAX + 1] {
        assert!(matches!(shard.apply_rejected(0, receive_cmd(max, None)), QueueError::InvalidParameter(_)));
    }
    assert!(matches!(
        shard.apply_rejected(0, receive_cmd(1, Some(VISIBILITY_TIMEOUT_MS_MAX + 1))),
        QueueError::InvalidParameter(_)
    ));
    assert_eq!(shard.receive(0, 1, Some(VISIBILITY_TIMEOUT_MS_MAX)).len(), 1);
}

#[test]
fn receive_with_zero_timeout_leaves_the_message_visible() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    let first = shard.receive(0, 1, Some(0));
    assert_eq!(shard.counts(), QueueCounts { visible: 1, in_flight: 0, delayed: 0 });
    let second = shard.receive(0, 1, Some(0));
    assert_eq!(second[0].receive_count, 2);
    // The first receipt was superseded by the second receive.
    assert_eq!(shard.delete(0, &[&first[0].receipt]), Response::Deleted(vec![Err(QueueError::StaleReceipt)]));
    // It is not in flight, so its visibility cannot be changed...
    assert_eq!(shard.change_visibility(0, &second[0].receipt, 100), Response::Error(QueueError::MessageNotInFlight));
    // ...but the latest receipt still deletes it.
    assert_eq!(shard.delete(0, &[&second[0].receipt]), Response::Deleted(vec![Ok(())]));
    assert_eq!(shard.counts(), QueueCounts::default());
}

#[test]
fn delete_per_entry_results() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2, 3]);
    let first = shard.receive(0, 3, Some(1_000));
    // Message 3 is received again after its timeout: its first receipt is stale.
    let again = shard.receive(1_000, 1, None);
    assert_eq!(ids(&again), vec![1]);

    let wrong_queue = Receipt { queue: Q + 1, seq: 1, lease: 2 }.encode();
    let unissued_seq = Receipt { queue: Q, seq: 99, lease: 2 }.encode();
    let truncated = &first[1].receipt[..first[1].receipt.len() - 2];
    let response = shard.delete(
        1_000,
        &[
            &first[0].receipt, // stale: message 1 was received again
            &again[0].receipt, // current
            &again[0].receipt, // same again: already gone, Ok
            "garbage!",
            &wrong_queue,
            &unissued_seq,
            truncated,
            // Visibility timeout ran out but not received again: still deletes.
            &first[1].receipt,
        ],
    );
    assert_eq!(
        response,
        Response::Deleted(vec![
            Err(QueueError::StaleReceipt),
            Ok(()),
            Ok(()),
            Err(QueueError::InvalidReceipt),
            Err(QueueError::InvalidReceipt),
            Err(QueueError::InvalidReceipt),
            Err(QueueError::InvalidReceipt),
            Ok(()),
        ])
    );
    assert_eq!(ids(&shard.receive(1_000, 10, None)), vec![3]);

    let error = shard.apply_rejected(1_000, Command::Delete { queue: Q, tenant: TENANT.to_owned(), receipts: vec![] });
    assert!(matches!(error, QueueError::InvalidParameter(_)));
    let error = shard.apply_rejected(
        1_000,
        Command::Delete {
            queue: Q,
            tenant: TENANT.to_owned(),
            receipts: vec![again[0].receipt.clone(); DELETE_BATCH_MAX + 1],
        },
    );
    assert_eq!(error, QueueError::TooManyEntries);
}

#[test]
fn delete_of_an_unreceived_message_with_a_forged_receipt_is_stale() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    // Lease 0 matches the placeholder lease of a never-received message; it
    // must not be accepted.
    let forged = Receipt { queue: Q, seq: 0, lease: 0 }.encode();
    assert_eq!(shard.delete(0, &[&forged]), Response::Deleted(vec![Err(QueueError::StaleReceipt)]));
    assert_eq!(shard.counts().visible, 1);
}

#[test]
fn change_visibility() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2]);
    let leased = shard.receive(0, 2, Some(1_000));

    // Extend message 1 to 5 s.
    assert_eq!(shard.change_visibility(500, &leased[0].receipt, 4_500), Response::VisibilityChanged);
    assert_eq!(ids(&shard.receive(1_000, 10, Some(0))), vec![2]);
    assert_eq!(ids(&shard.receive(5_000, 10, Some(0))), vec![1, 2]);

    // Message 2's first receipt is stale now.
    assert_eq!(shard.change_visibility(5_000, &leased[1].receipt, 100), Response::Error(QueueError::StaleReceipt));

    // Timeout 0 makes an in-flight message visible at once.
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    let leased = shard.receive(0, 1, None);
    assert_eq!(shard.receive(1, 1, None), vec![]);
    assert_eq!(shard.change_visibility(1, &leased[0].receipt, 0), Response::VisibilityChanged);
    assert_eq!(shard.counts(), QueueCounts { visible: 1, in_flight: 0, delayed: 0 });
    // And then it is no longer in flight.
    assert_eq!(shard.change_visibility(1, &leased[0].receipt, 100), Response::Error(QueueError::MessageNotInFlight));
}

#[test]
fn change_visibility_errors_change_nothing() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2]);
    let leased = shard.receive(0, 2, Some(1_000));
    shard.delete(0, &[&leased[1].receipt]);
    let cv = |receipt: &str, timeout_ms: u64| Command::ChangeVisibility {
        queue: Q,
        tenant: TENANT.to_owned(),
        receipt: receipt.to_owned(),
        visibility_timeout_ms: timeout_ms,
    };

    assert!(matches!(
        shard.apply_rejected(0, cv(&leased[0].receipt, VISIBILITY_TIMEOUT_MS_MAX + 1)),
        QueueError::InvalidParameter(_)
    ));
    assert_eq!(shard.apply_rejected(0, cv("", 10)), QueueError::InvalidReceipt);
    assert_eq!(shard.apply_rejected(0, cv(&leased[0].receipt[1..], 10)), QueueError::InvalidReceipt);
    // Deleted message.
    assert_eq!(shard.apply_rejected(0, cv(&leased[1].receipt, 10)), QueueError::MessageNotInFlight);
    // Lease ran out (clock moves, so check the response only).
    assert_eq!(shard.change_visibility(1_000, &leased[0].receipt, 10), Response::Error(QueueError::MessageNotInFlight));
}

#[test]
fn retention_hides_and_expire_drops() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    shard.send(50_000, &[2]);
    assert_eq!(shard.state.min_live_log_index(), Some(2));
    assert!(!shard.state.has_expirable(119_999));
    assert!(shard.state.has_expirable(120_000));

    // Message 1 expires at 120 000: Expire drops it, not message 2.
    assert_eq!(shard.apply(120_000, Command::Expire), Response::Expired { count: 1 });
    assert_eq!(shard.state.min_live_log_index(), Some(3));
    assert_eq!(shard.counts().visible, 1);
    assert_eq!(shard.apply(120_000, Command::Expire), Response::Expired { count: 0 });

    // Message 2 is past retention at 170 000: never delivered, dropped lazily.
    assert!(!shard.state.has_visible(Q, TENANT, 170_000));
    assert_eq!(shard.receive(170_000, 10, None), vec![]);
    assert_eq!(shard.counts(), QueueCounts::default());
    assert_eq!(shard.state.min_live_log_index(), None);
    assert!(!shard.state.has_expirable(u64::MAX));
}

#[test]
fn in_flight_message_past_retention_is_gone() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    let leased = shard.receive(0, 1, Some(VISIBILITY_TIMEOUT_MS_MAX));
    // Never visible again before retention: nothing to wake up for.
    assert_eq!(shard.state.next_visible_at_ms(Q, TENANT, 0), None);
    assert_eq!(
        shard.change_visibility(120_000, &leased[0].receipt, 10),
        Response::Error(QueueError::MessageNotInFlight)
    );
    assert_eq!(shard.delete(120_000, &[&leased[0].receipt]), Response::Deleted(vec![Ok(())]));
    assert_eq!(shard.counts(), QueueCounts::default());
}

#[test]
fn expire_covers_every_queue() {
    let mut shard = Shard::with_queue();
    shard.apply(
        0,
        Command::CreateQueue {
            queue: Q + 1,
            tenant: OTHER_TENANT.to_owned(),
            config: QueueConfig { retention_ms: 60_000, ..config() },
        },
    );
    shard.send(0, &[1, 2]);
    shard.apply(0, Command::Send { queue: Q + 1, tenant: OTHER_TENANT.to_owned(), messages: vec![new_message(3)] });
    assert_eq!(shard.apply(60_000, Command::Expire), Response::Expired { count: 1 });
    assert_eq!(shard.apply(1_000_000, Command::Expire), Response::Expired { count: 2 });
}

#[test]
fn purge_drops_everything() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2, 3]);
    let leased = shard.receive(0, 1, None);
    let response = shard.apply(0, Command::Purge { queue: Q, tenant: TENANT.to_owned() });
    assert_eq!(response, Response::Purged { count: 3 });
    assert_eq!(shard.counts(), QueueCounts::default());
    assert_eq!(shard.state.min_live_log_index(), None);
    assert_eq!(shard.delete(0, &[&leased[0].receipt]), Response::Deleted(vec![Ok(())]));
    // Seqs keep increasing after a purge.
    assert_eq!(shard.send(0, &[4])[0].seq, 3);
}

#[test]
fn clock_going_backwards_is_clamped() {
    let mut shard = Shard::with_queue();
    shard.send(10_000, &[1]);
    // A new leader with a slightly late clock: applied at 10 000, not 9 000.
    let leased = shard.receive(9_000, 1, Some(1_000));
    assert_eq!(leased[0].first_receive_ms, 10_000);
    assert_eq!(shard.state.clock_ms(), 10_000);
    assert_eq!(shard.receive(10_999, 1, None), vec![]);
    assert_eq!(ids(&shard.receive(0, 1, None)), vec![]);
    assert_eq!(ids(&shard.receive(11_000, 1, None)), vec![1]);
    assert_eq!(shard.state.has_visible(Q, TENANT, 0), shard.state.has_visible(Q, TENANT, 11_000));
}

#[test]
fn other_tenant_sees_nothing_and_changes_nothing() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2]);
    let leased = shard.receive(0, 1, None);
    let other = || OTHER_TENANT.to_owned();
    let commands = vec![
        Command::SetQueueConfig { queue: Q, tenant: other(), config: config() },
        Command::DeleteQueue { queue: Q, tenant: other() },
        Command::Send { queue: Q, tenant: other(), messages: vec![new_message(3)] },
        Command::Receive { queue: Q, tenant: other(), max_messages: 10, visibility_timeout_ms: None },
        Command::Delete { queue: Q, tenant: other(), receipts: vec![leased[0].receipt.clone()] },
        Command::ChangeVisibility {
            queue: Q,
            tenant: other(),
            receipt: leased[0].receipt.clone(),
            visibility_timeout_ms: 0,
        },
        Command::Purge { queue: Q, tenant: other() },
    ];
    for command in commands {
        let missing = match &command {
            Command::Send { messages, .. } => {
                Command::Send { queue: Q + 100, tenant: other(), messages: messages.clone() }
            }
            _ => Command::Purge { queue: Q + 100, tenant: other() },
        };
        // Same answer as for a queue that does not exist at all.
        assert_eq!(shard.apply_rejected(0, missing), QueueError::QueueNotFound);
        assert_eq!(shard.apply_rejected(0, command), QueueError::QueueNotFound);
    }
    assert_eq!(shard.state.queue_counts(Q, OTHER_TENANT), None);
    assert_eq!(shard.state.queue_config(Q, OTHER_TENANT), None);
    assert!(!shard.state.has_visible(Q, OTHER_TENANT, 0));
    assert_eq!(shard.state.next_visible_at_ms(Q, OTHER_TENANT, 0), None);
    assert_eq!(shard.counts(), QueueCounts { visible: 1, in_flight: 1, delayed: 0 });
}

/// The state as a snapshot of it reads back.
fn round_trip(state: &ShardState) -> ShardState {
    crate::shard::decode_state(&crate::shard::encode_state(state).expect("encode")).expect("decode")
}

#[test]
fn snapshot_round_trip() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2, 3]);
    shard.receive(10, 1, None);
    let restored = round_trip(&shard.state);
    assert_eq!(restored, shard.state);
}

#[test]
fn stored_bytes_follow_messages_in_and_out() {
    let mut shard = Shard::with_queue();
    let stored = |shard: &Shard| shard.state.queue_stored_bytes(Q, TENANT).expect("queue exists");
    assert_eq!(stored(&shard), 0);
    // "body 1" and "body 22" (6 and 7 bytes); an attribute counts its name, data type and value.
    shard.send(0, &[1, 22]);
    assert_eq!(stored(&shard), 13);
    let with_attribute = NewMessage {
        attributes: BTreeMap::from([("k".to_owned(), AttributeValue::String("vv".to_owned()))]),
        ..new_message(3)
    };
    assert_eq!(with_attribute.stored_bytes(), 6 + 1 + "String".len() as u32 + 2);
    shard.apply(1, Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![with_attribute] });
    assert_eq!(stored(&shard), 28);
    assert_eq!(shard.state.queue_stored_bytes(Q, OTHER_TENANT), None, "another tenant's queue is not found");

    // A receive keeps them stored; a delete releases the message's own size.
    let deliveries = shard.receive(2, 1, None);
    assert_eq!(stored(&shard), 28);
    shard.delete(3, &[deliveries[0].receipt.as_str()]);
    assert_eq!(stored(&shard), 22);

    // A snapshot keeps the sizes (format version 3), and older versions read them as 0.
    let restored = round_trip(&shard.state);
    assert_eq!(restored.queue_stored_bytes(Q, TENANT), Some(22));
    assert_eq!(shard.state.without_stored_sizes().queue_stored_bytes(Q, TENANT), Some(0));

    // Expiry releases what it drops; a purge releases everything.
    shard.send(60_000, &[4]);
    shard.apply(125_000, Command::Expire);
    assert_eq!(stored(&shard), 6, "the first two expired, the last one stays");
    shard.apply(125_001, Command::Purge { queue: Q, tenant: TENANT.to_owned() });
    assert_eq!(stored(&shard), 0);
}

#[test]
fn memory_figures_in_the_module_doc_hold() {
    use std::mem::size_of;
    // Module doc: an 80-byte record per message, a 304-byte one per queue.
    assert_eq!(size_of::<Message>(), 80);
    assert_eq!(size_of::<Queue>(), 304);
}

// ------------------------------------------------------------------------------ dead letters

const DLQ: QueueId = 9;

/// `Q` with a redrive to `DLQ` after `max_receive_count` receives, both of `TENANT`.
fn shard_with_dead_letter_queue(max_receive_count: u32) -> Shard {
    let mut shard = Shard::new();
    let create = |queue, config| Command::CreateQueue { queue, tenant: TENANT.to_owned(), config };
    assert_eq!(shard.apply(0, create(DLQ, config())), Response::QueueCreated);
    let redrive = Some(Redrive { dead_letter_queue: DLQ, max_receive_count });
    assert_eq!(shard.apply(0, create(Q, QueueConfig { redrive, ..config() })), Response::QueueCreated);
    shard
}

fn receive_from(shard: &mut Shard, queue: QueueId, now_ms: u64) -> Vec<Delivery> {
    let command =
        Command::Receive { queue, tenant: TENANT.to_owned(), max_messages: 10, visibility_timeout_ms: Some(1_000) };
    match shard.apply(now_ms, command) {
        Response::Received(deliveries) => deliveries,
        other => panic!("receive failed: {other:?}"),
    }
}

#[test]
fn a_message_received_max_receive_count_times_moves_to_the_dead_letter_queue_once() {
    let mut shard = shard_with_dead_letter_queue(2);
    shard.send(0, &[1, 2]);
    // Two receives each; the visibility timeout (1 s) runs out between them.
    assert_eq!(receive_from(&mut shard, Q, 0).len(), 2);
    assert_eq!(receive_from(&mut shard, Q, 2_000).len(), 2);
    // Message 2 is deleted on its second delivery: only message 1 is exhausted.
    let second = receive_from(&mut shard, Q, 2_000);
    assert!(second.is_empty(), "both are in flight");
    let min_log_index_before = shard.state.min_live_log_index();
    let third = receive_from(&mut shard, Q, 4_000);
    assert!(third.is_empty(), "exhausted messages are not delivered again: {third:?}");
    assert_eq!(shard.counts().visible + shard.counts().in_flight, 0, "nothing left in the source");
    let counts = shard.state.queue_counts(DLQ, TENANT).expect("dead-letter queue");
    assert_eq!(counts.visible, 2, "both moved, exactly once");
    // The moved messages keep their ids and bodies and start with no receives.
    let moved = receive_from(&mut shard, DLQ, 4_000);
    let mut ids: Vec<_> = moved.iter().map(|d| d.message_id).collect();
    ids.sort();
    assert_eq!(ids, vec![Uuid::from_u128(1), Uuid::from_u128(2)]);
    assert!(moved.iter().all(|d| d.receive_count == 1 && d.body_ref.log_index == 3), "{moved:?}");
    assert!(moved.iter().all(|d| d.sent_ms == 0), "they keep their send time: {moved:?}");
    // Their bodies still count as live, so the log under them is not released.
    assert_eq!(shard.state.min_live_log_index(), min_log_index_before);
}

#[test]
fn dead_letters_are_not_moved_to_a_missing_or_foreign_queue() {
    let mut shard = Shard::new();
    let redrive = Some(Redrive { dead_letter_queue: DLQ, max_receive_count: 1 });
    let create = |queue, tenant: &str, config| Command::CreateQueue { queue, tenant: tenant.to_owned(), config };
    assert_eq!(shard.apply(0, create(Q, TENANT, QueueConfig { redrive, ..config() })), Response::QueueCreated);
    // The dead-letter id names another tenant's queue: nothing may cross tenants.
    assert_eq!(shard.apply(0, create(DLQ, OTHER_TENANT, config())), Response::QueueCreated);
    shard.send(0, &[1]);
    assert_eq!(receive_from(&mut shard, Q, 0).len(), 1);
    // Exhausted, but with no dead-letter queue of its tenant it is delivered again.
    assert_eq!(receive_from(&mut shard, Q, 2_000).len(), 1);
    assert_eq!(shard.state.queue_counts(DLQ, OTHER_TENANT).map(|c| c.visible), Some(0));
}

#[test]
fn a_rejected_receive_moves_nothing() {
    let mut shard = shard_with_dead_letter_queue(1);
    shard.send(0, &[1]);
    assert_eq!(receive_from(&mut shard, Q, 0).len(), 1);
    // At 5 s the message is visible and exhausted; a receive with a bad argument must not move it.
    shard.apply(5_000, Command::Expire);
    let error = shard.apply_rejected(5_000, receive_cmd(0, None));
    assert!(matches!(error, QueueError::InvalidParameter(_)), "{error:?}");
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(0));
}

#[test]
fn moves_per_receive_are_bounded_and_the_next_receive_goes_on() {
    let mut shard = shard_with_dead_letter_queue(1);
    let ids: Vec<u128> = (0..150).collect();
    for chunk in ids.chunks(10) {
        shard.send(0, chunk);
    }
    // Receive all 150 once (15 receives of 10).
    for _ in 0..15 {
        assert_eq!(receive_from(&mut shard, Q, 0).len(), 10);
    }
    let first = receive_from(&mut shard, Q, 2_000);
    assert!(first.is_empty());
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(100));
    receive_from(&mut shard, Q, 2_000);
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(150));
    assert_eq!(shard.counts().visible, 0);
}

#[test]
fn a_moved_in_body_stays_live_through_receives_visibility_changes_and_until_deleted() {
    let mut shard = shard_with_dead_letter_queue(1);
    shard.send(0, &[1]); // body at log index 3
    // The dead-letter queue gets a newer message of its own first.
    let direct = Command::Send { queue: DLQ, tenant: TENANT.to_owned(), messages: vec![new_message(2)] };
    assert!(matches!(shard.apply(0, direct), Response::Sent(_)));
    assert_eq!(receive_from(&mut shard, Q, 0).len(), 1);
    assert!(receive_from(&mut shard, Q, 2_000).is_empty(), "moved");
    assert_eq!(shard.state.min_live_log_index(), Some(3));
    // Receive both from the dead-letter queue and delete only the direct one; make the moved one
    // visible again: its old body must stay live all along.
    let got = receive_from(&mut shard, DLQ, 2_000);
    assert_eq!(got.len(), 2);
    // The direct message (seq 0, newer body) is first in the queue; the moved one's older body
    // must still count.
    assert_eq!(shard.state.min_live_log_index(), Some(3));
    let (moved, direct): (Vec<_>, Vec<_>) = got.into_iter().partition(|d| d.message_id == Uuid::from_u128(1));
    let delete =
        |receipt: &str| Command::Delete { queue: DLQ, tenant: TENANT.to_owned(), receipts: vec![receipt.to_owned()] };
    assert!(matches!(shard.apply(2_000, delete(&direct[0].receipt)), Response::Deleted(_)));
    let change = Command::ChangeVisibility {
        queue: DLQ,
        tenant: TENANT.to_owned(),
        receipt: moved[0].receipt.clone(),
        visibility_timeout_ms: 0,
    };
    assert_eq!(shard.apply(2_000, change), Response::VisibilityChanged);
    assert_eq!(shard.state.min_live_log_index(), Some(3));
    let again = receive_from(&mut shard, DLQ, 2_000);
    assert_eq!(shard.state.min_live_log_index(), Some(3));
    assert!(matches!(shard.apply(2_000, delete(&again[0].receipt)), Response::Deleted(_)));
    assert_eq!(shard.state.min_live_log_index(), None, "nothing left anywhere");
}

// -------------------------------------------------------------------------------------- FIFO

const FIFO_Q: QueueId = 11;

fn fifo_shard(deduplication_per_group: bool) -> Shard {
    let mut shard = Shard::new();
    // An hour of retention, so that messages outlive the 5-minute deduplication window.
    let config =
        QueueConfig { retention_ms: 3_600_000, fifo: Some(FifoConfig { deduplication_per_group }), ..config() };
    let create = Command::CreateQueue { queue: FIFO_Q, tenant: TENANT.to_owned(), config };
    assert_eq!(shard.apply(0, create), Response::QueueCreated);
    shard
}

fn fifo_message(n: u128, group: &str, dedup: &str) -> NewMessage {
    NewMessage {
        fifo: Some(FifoIds { group_id: group.to_owned(), deduplication_id: dedup.to_owned() }),
        ..new_message(n)
    }
}

fn fifo_send(shard: &mut Shard, now_ms: u64, messages: Vec<NewMessage>) -> Response {
    shard.apply(now_ms, Command::Send { queue: FIFO_Q, tenant: TENANT.to_owned(), messages })
}

fn fifo_receive(shard: &mut Shard, now_ms: u64, max: u32, timeout_ms: u64) -> Vec<(u128, String)> {
    let command = Command::Receive {
        queue: FIFO_Q,
        tenant: TENANT.to_owned(),
        max_messages: max,
        visibility_timeout_ms: Some(timeout_ms),
    };
    match shard.apply(now_ms, command) {
        Response::Received(deliveries) => deliveries
            .into_iter()
            .map(|d| (d.message_id.as_u128(), d.fifo.map(|f| f.group_id).unwrap_or_default()))
            .collect(),
        other => panic!("receive failed: {other:?}"),
    }
}

fn fifo_receipts(shard: &mut Shard, now_ms: u64, max: u32) -> Vec<(u128, String)> {
    let command =
        Command::Receive { queue: FIFO_Q, tenant: TENANT.to_owned(), max_messages: max, visibility_timeout_ms: None };
    match shard.apply(now_ms, command) {
        Response::Received(deliveries) => deliveries.into_iter().map(|d| (d.message_id.as_u128(), d.receipt)).collect(),
        other => panic!("receive failed: {other:?}"),
    }
}

#[test]
fn fifo_groups_deliver_in_order_and_lock_while_a_message_is_in_flight() {
    let mut shard = fifo_shard(false);
    let sent = fifo_send(
        &mut shard,
        0,
        vec![fifo_message(1, "a", "d1"), fifo_message(2, "a", "d2"), fifo_message(3, "b", "d3")],
    );
    assert!(matches!(sent, Response::Sent(ref s) if s.len() == 3), "{sent:?}");
    // One message: the head of group a, which locks a.
    let first = fifo_receipts(&mut shard, 0, 1);
    assert_eq!(first.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1]);
    // Group a is locked: only b's message comes.
    assert_eq!(fifo_receive(&mut shard, 0, 10, 10_000), [(3, "b".to_owned())]);
    assert!(!shard.state.has_visible(FIFO_Q, TENANT, 0), "a's second message is visible but locked");
    assert!(fifo_receive(&mut shard, 0, 10, 10_000).is_empty());
    // Deleting a's head opens the group, in order.
    let delete = Command::Delete { queue: FIFO_Q, tenant: TENANT.to_owned(), receipts: vec![first[0].1.clone()] };
    assert!(matches!(shard.apply(0, delete), Response::Deleted(_)));
    assert_eq!(fifo_receive(&mut shard, 0, 10, 10_000), [(2, "a".to_owned())]);
}

#[test]
fn fifo_one_receive_may_take_several_messages_of_an_open_group_in_order() {
    let mut shard = fifo_shard(false);
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1"), fifo_message(2, "b", "d2"), fifo_message(3, "a", "d3")]);
    let got = fifo_receive(&mut shard, 0, 10, 1_000);
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3]);
    // After the visibility timeout the group opens again from its head, in the same order.
    let again = fifo_receive(&mut shard, 2_000, 10, 1_000);
    assert_eq!(again.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn fifo_group_stays_locked_while_any_of_its_messages_is_in_flight() {
    let mut shard = fifo_shard(false);
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1"), fifo_message(2, "a", "d2")]);
    let both = fifo_receipts(&mut shard, 0, 10);
    assert_eq!(both.len(), 2);
    // The second message becomes visible again while the first is still in flight.
    let change = Command::ChangeVisibility {
        queue: FIFO_Q,
        tenant: TENANT.to_owned(),
        receipt: both[1].1.clone(),
        visibility_timeout_ms: 0,
    };
    assert_eq!(shard.apply(0, change), Response::VisibilityChanged);
    assert!(fifo_receive(&mut shard, 0, 10, 10_000).is_empty(), "message 1 still locks group a");
}

#[test]
fn fifo_deduplication_window_per_queue_and_per_group() {
    let mut shard = fifo_shard(false);
    let Response::Sent(first) = fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "same")]) else { panic!() };
    // Within the window: accepted, answered with the first message, not stored again (also
    // from another group, the scope being the queue).
    let Response::Sent(again) =
        fifo_send(&mut shard, 299_999, vec![fifo_message(2, "a", "same"), fifo_message(3, "b", "same")])
    else {
        panic!()
    };
    assert!(again.iter().all(|s| *s == first[0]), "{again:?}");
    assert_eq!(shard.state.queue_counts(FIFO_Q, TENANT).map(|c| c.visible), Some(1));
    // After the 5-minute window the same id is a new message.
    let Response::Sent(later) = fifo_send(&mut shard, 300_000, vec![fifo_message(4, "a", "same")]) else { panic!() };
    assert_ne!(later[0], first[0]);
    assert_eq!(shard.state.queue_counts(FIFO_Q, TENANT).map(|c| c.visible), Some(2));

    let mut per_group = fifo_shard(true);
    fifo_send(&mut per_group, 0, vec![fifo_message(1, "a", "same"), fifo_message(2, "b", "same")]);
    assert_eq!(per_group.state.queue_counts(FIFO_Q, TENANT).map(|c| c.visible), Some(2));
}

#[test]
fn fifo_rules_are_checked_before_anything_changes() {
    let mut shard = fifo_shard(false);
    let send = |messages| Command::Send { queue: FIFO_Q, tenant: TENANT.to_owned(), messages };
    for bad in [
        vec![new_message(1)],
        vec![NewMessage { delay_ms: Some(1_000), ..fifo_message(1, "a", "d") }],
        vec![fifo_message(1, "", "d")],
        vec![fifo_message(1, "a", &"x".repeat(129))],
        vec![fifo_message(1, "a", "d"), fifo_message(2, "a b", "e")],
    ] {
        let error = shard.apply_rejected(0, send(bad));
        assert!(matches!(error, QueueError::InvalidParameter(_)), "{error:?}");
    }
    let mut standard = Shard::with_queue();
    let error = standard.apply_rejected(
        0,
        Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![fifo_message(1, "a", "d")] },
    );
    assert!(matches!(error, QueueError::InvalidParameter(_)), "{error:?}");
    let to_fifo = QueueConfig { fifo: Some(FifoConfig { deduplication_per_group: false }), ..config() };
    let error =
        standard.apply_rejected(0, Command::SetQueueConfig { queue: Q, tenant: TENANT.to_owned(), config: to_fifo });
    assert!(matches!(error, QueueError::InvalidParameter(_)), "{error:?}");
}

#[test]
fn fifo_locks_and_deduplication_survive_a_snapshot_round_trip() {
    let mut shard = fifo_shard(false);
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1"), fifo_message(2, "a", "d2")]);
    assert_eq!(fifo_receive(&mut shard, 0, 1, 60_000).len(), 1);
    let restored = round_trip(&shard.state);
    assert_eq!(restored, shard.state);
    shard.state = restored;
    assert!(fifo_receive(&mut shard, 1_000, 10, 60_000).is_empty(), "group a is still locked");
    let Response::Sent(dup) = fifo_send(&mut shard, 1_000, vec![fifo_message(3, "a", "d1")]) else { panic!() };
    assert_eq!(dup[0].message_id.as_u128(), 1, "still deduplicated");
}

// -------------------------------------------------------------------------------- move tasks

fn start_move(shard: &mut Shard, source: QueueId, destination: QueueId, rate: u32) -> Response {
    shard.apply(0, Command::StartMoveTask { tenant: TENANT.to_owned(), source, destination, max_per_second: rate })
}

#[test]
fn a_move_task_moves_in_steps_and_completes_when_the_source_is_empty() {
    let mut shard = shard_with_dead_letter_queue(1);
    let to_dlq = Command::Send { queue: DLQ, tenant: TENANT.to_owned(), messages: (1..=5).map(new_message).collect() };
    assert!(matches!(shard.apply(0, to_dlq), Response::Sent(_)));
    let Response::MoveTask(task) = start_move(&mut shard, DLQ, Q, 10) else { panic!("start") };
    assert_eq!((task.to_move, task.status.clone()), (5, MoveTaskStatus::Running));
    // A second task on the same source is refused while the first runs.
    assert!(matches!(start_move(&mut shard, DLQ, Q, 10), Response::Error(QueueError::InvalidParameter(_))));
    let step = |shard: &mut Shard| shard.apply(0, Command::MoveStep { task_id: task.task_id, max_messages: 3 });
    assert!(
        matches!(step(&mut shard), Response::MoveTask(ref t) if t.moved == 3 && t.status == MoveTaskStatus::Running)
    );
    assert!(
        matches!(step(&mut shard), Response::MoveTask(ref t) if t.moved == 5 && t.status == MoveTaskStatus::Completed)
    );
    assert_eq!(shard.counts().visible, 5);
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(0));
    assert_eq!(shard.state.move_tasks_of(TENANT, DLQ).len(), 1);
    assert!(shard.state.running_move_tasks().is_empty());
}

#[test]
fn move_tasks_cancel_fail_and_check_their_input() {
    let mut shard = shard_with_dead_letter_queue(1);
    for bad_rate in [0, MOVE_PER_SECOND_MAX + 1] {
        assert!(matches!(start_move(&mut shard, DLQ, Q, bad_rate), Response::Error(_)));
    }
    assert!(matches!(start_move(&mut shard, DLQ, DLQ, 1), Response::Error(_)));
    // A destination not on this shard, before hand-offs open: refused with why.
    assert!(matches!(start_move(&mut shard, DLQ, 999, 1), Response::Error(QueueError::InvalidParameter(_))));
    let other =
        Command::StartMoveTask { tenant: OTHER_TENANT.to_owned(), source: DLQ, destination: Q, max_per_second: 1 };
    assert!(matches!(shard.apply(0, other), Response::Error(QueueError::QueueNotFound)));

    let send = Command::Send { queue: DLQ, tenant: TENANT.to_owned(), messages: vec![new_message(1)] };
    shard.apply(0, send);
    let Response::MoveTask(task) = start_move(&mut shard, DLQ, Q, 1) else { panic!("start") };
    let cancel = |tenant: &str| Command::CancelMoveTask { tenant: tenant.to_owned(), task_id: task.task_id };
    assert!(matches!(shard.apply(0, cancel(OTHER_TENANT)), Response::Error(_)), "another tenant cannot cancel");
    assert!(
        matches!(shard.apply(0, cancel(TENANT)), Response::MoveTask(ref t) if t.status == MoveTaskStatus::Cancelled)
    );
    assert!(matches!(shard.apply(0, cancel(TENANT)), Response::Error(_)), "only a running task can be cancelled");
    // A cancelled task does not move anything.
    shard.apply(0, Command::MoveStep { task_id: task.task_id, max_messages: 10 });
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(1));

    // A task whose destination disappears fails instead of losing messages.
    let Response::MoveTask(task) = start_move(&mut shard, DLQ, Q, 1) else { panic!("restart") };
    shard.apply(0, Command::DeleteQueue { queue: Q, tenant: TENANT.to_owned() });
    let step = shard.apply(0, Command::MoveStep { task_id: task.task_id, max_messages: 10 });
    assert!(matches!(step, Response::MoveTask(ref t) if matches!(t.status, MoveTaskStatus::Failed(_))), "{step:?}");
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(1));
}

#[test]
fn fifo_dead_letters_keep_their_group_in_a_fifo_dead_letter_queue() {
    let mut shard = Shard::new();
    let fifo = Some(FifoConfig { deduplication_per_group: false });
    let create = |queue, config| Command::CreateQueue { queue, tenant: TENANT.to_owned(), config };
    shard.apply(0, create(DLQ, QueueConfig { retention_ms: 3_600_000, fifo, ..config() }));
    let redrive = Some(Redrive { dead_letter_queue: DLQ, max_receive_count: 1 });
    shard.apply(0, create(FIFO_Q, QueueConfig { retention_ms: 3_600_000, fifo, redrive, ..config() }));
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1"), fifo_message(2, "a", "d2")]);
    assert_eq!(fifo_receive(&mut shard, 0, 10, 1_000).len(), 2);
    assert!(fifo_receive(&mut shard, 2_000, 10, 1_000).is_empty(), "both moved");
    let command = Command::Receive {
        queue: DLQ,
        tenant: TENANT.to_owned(),
        max_messages: 1,
        visibility_timeout_ms: Some(60_000),
    };
    let Response::Received(got) = shard.apply(2_000, command.clone()) else { panic!("receive") };
    assert_eq!(got[0].message_id.as_u128(), 1);
    assert_eq!(got[0].fifo.as_ref().map(|f| f.group_id.as_str()), Some("a"));
    // The group is locked in the dead-letter queue too.
    let Response::Received(none) = shard.apply(2_000, command) else { panic!("receive") };
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn fifo_receive_attempt_retries_answer_the_same_receipts() {
    let mut shard = fifo_shard(false);
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1"), fifo_message(2, "b", "d2")]);
    let attempt = |shard: &mut Shard, now_ms, id: &str| {
        let command = Command::ReceiveAttempt {
            queue: FIFO_Q,
            tenant: TENANT.to_owned(),
            max_messages: 1,
            visibility_timeout_ms: Some(30_000),
            attempt_id: id.to_owned(),
        };
        match shard.apply(now_ms, command) {
            Response::Received(d) => d.into_iter().map(|d| (d.message_id.as_u128(), d.receipt)).collect::<Vec<_>>(),
            other => panic!("receive failed: {other:?}"),
        }
    };
    let first = attempt(&mut shard, 0, "try-1");
    assert_eq!(first.len(), 1);
    // The retry (a lost answer, say) gets the same message and receipt, not the next one.
    assert_eq!(attempt(&mut shard, 20_000, "try-1"), first);
    // Its visibility restarted at the retry: at 40 s (past the first 30 s) it is still in flight.
    assert_eq!(attempt(&mut shard, 40_000, "try-2").iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2]);
    assert_eq!(attempt(&mut shard, 40_000, "try-1"), first);
    // Once deleted, nothing of the first receive is in flight: the attempt id starts a new receive.
    let delete = Command::Delete { queue: FIFO_Q, tenant: TENANT.to_owned(), receipts: vec![first[0].1.clone()] };
    assert!(matches!(shard.apply(40_000, delete), Response::Deleted(_)));
    assert!(attempt(&mut shard, 40_000, "try-1").is_empty(), "group b is locked by try-2, group a is empty");
    // A bad attempt id changes nothing.
    let bad = Command::ReceiveAttempt {
        queue: FIFO_Q,
        tenant: TENANT.to_owned(),
        max_messages: 1,
        visibility_timeout_ms: None,
        attempt_id: "no spaces".to_owned(),
    };
    assert!(matches!(shard.apply_rejected(40_000, bad), QueueError::InvalidParameter(_)));
}

#[test]
fn receives_stop_at_the_in_flight_limit_until_messages_come_back() {
    let mut shard = Shard::new();
    let config = QueueConfig { retention_ms: 3_600_000, visibility_timeout_ms: 60_000, ..config() };
    shard.apply(0, Command::CreateQueue { queue: Q, tenant: TENANT.to_owned(), config });
    let batches = IN_FLIGHT_MAX / 10;
    for b in 0..batches {
        shard.send(0, &(0..10).map(|i| u128::from(b * 10 + i)).collect::<Vec<_>>());
    }
    shard.send(0, &[u128::from(IN_FLIGHT_MAX) + 1]);
    for _ in 0..batches {
        assert_eq!(shard.receive(0, 10, None).len(), 10);
    }
    assert_eq!(shard.counts().in_flight, IN_FLIGHT_MAX);
    assert!(matches!(shard.apply(0, receive_cmd(10, None)), Response::Error(QueueError::InFlightLimit)));
    // When the visibility timeouts run out, receiving works again.
    assert_eq!(shard.receive(60_000, 10, None).len(), 10);
}

#[test]
fn fifo_message_whose_visibility_ran_out_on_a_quiet_queue_is_receivable() {
    let mut shard = fifo_shard(false);
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1")]);
    assert_eq!(fifo_receive(&mut shard, 0, 1, 1_000).len(), 1);
    assert!(!shard.state.has_visible(FIFO_Q, TENANT, 500));
    // No command touched the queue since; the long poll must still see it as receivable.
    assert!(shard.state.has_visible(FIFO_Q, TENANT, 2_000));
    assert_eq!(fifo_receive(&mut shard, 2_000, 1, 1_000).len(), 1);
}

#[test]
fn fifo_receive_attempt_whose_messages_came_back_receives_again() {
    let mut shard = fifo_shard(false);
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1")]);
    let command = |timeout_ms| Command::ReceiveAttempt {
        queue: FIFO_Q,
        tenant: TENANT.to_owned(),
        max_messages: 1,
        visibility_timeout_ms: Some(timeout_ms),
        attempt_id: "x".to_owned(),
    };
    assert!(matches!(shard.apply(0, command(30_000)), Response::Received(ref d) if d.len() == 1));
    // At 40 s the message is visible again: the same attempt id delivers it anew.
    let again = shard.apply(40_000, command(30_000));
    assert!(matches!(again, Response::Received(ref d) if d.len() == 1 && d[0].receive_count == 2), "{again:?}");
}

#[test]
fn fifo_dead_letter_scan_passes_over_locked_groups() {
    let mut shard = Shard::new();
    let fifo = Some(FifoConfig { deduplication_per_group: false });
    let create = |queue, config| Command::CreateQueue { queue, tenant: TENANT.to_owned(), config };
    shard.apply(0, create(DLQ, QueueConfig { retention_ms: 3_600_000, fifo, ..config() }));
    let redrive = Some(Redrive { dead_letter_queue: DLQ, max_receive_count: 2 });
    shard.apply(0, create(FIFO_Q, QueueConfig { retention_ms: 3_600_000, fifo, redrive, ..config() }));
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "a1"), fifo_message(2, "a", "a2"), fifo_message(3, "b", "b1")]);
    let all = fifo_receipts(&mut shard, 0, 10);
    assert_eq!(all.len(), 3);
    // a1 stays in flight for long; a2 and b1 come back at 30 s (the queue's 10 s timeout ran out).
    let keep = Command::ChangeVisibility {
        queue: FIFO_Q,
        tenant: TENANT.to_owned(),
        receipt: all[0].1.clone(),
        visibility_timeout_ms: 120_000,
    };
    assert_eq!(shard.apply(0, keep), Response::VisibilityChanged);
    assert_eq!(fifo_receive(&mut shard, 31_000, 1, 10_000), [(3, "b".to_owned())], "b1's second receive");
    // At 61 s b1 is exhausted; a2 is visible but group a is locked: b1 must move anyway.
    assert!(fifo_receive(&mut shard, 61_000, 1, 10_000).is_empty());
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(1));
}

/// A long pseudo-random run of sends, receives, deletes and visibility changes on a FIFO queue:
/// after every command the FIFO indexes match a scan (checked in `Shard::apply`), and no receive
/// ever hands out a message of a group that has another message in flight.
#[test]
fn fifo_random_walk_keeps_groups_exclusive_and_indexes_consistent() {
    let mut shard = fifo_shard(false);
    let mut seed: u64 = 0x5eed;
    let mut next = |bound: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    let mut in_flight: BTreeMap<u128, (String, String, u64)> = BTreeMap::new(); // id -> (group, receipt, until)
    let mut now_ms = 0;
    let mut sent = 0u128;
    for _ in 0..3_000 {
        now_ms += next(400);
        in_flight.retain(|_, (_, _, until)| *until > now_ms);
        match next(4) {
            0 => {
                sent += 1;
                let group = format!("g{}", next(5));
                fifo_send(&mut shard, now_ms, vec![fifo_message(sent, &group, &format!("d{sent}"))]);
            }
            1 => {
                let timeout_ms = 200 + next(2_000);
                let command = Command::Receive {
                    queue: FIFO_Q,
                    tenant: TENANT.to_owned(),
                    max_messages: 1 + next(10) as u32,
                    visibility_timeout_ms: Some(timeout_ms),
                };
                let Response::Received(got) = shard.apply(now_ms, command) else { panic!("receive") };
                // One receive may take several messages of a group; none of a group already busy.
                let busy: Vec<String> = in_flight.values().map(|(g, _, _)| g.clone()).collect();
                for d in got {
                    let group = d.fifo.map(|f| f.group_id).unwrap_or_default();
                    let clash = busy.contains(&group);
                    assert!(!clash, "group {group} handed out while another of its messages is in flight");
                    in_flight.insert(d.message_id.as_u128(), (group, d.receipt, now_ms + timeout_ms));
                }
            }
            2 => {
                if let Some((&id, (_, receipt, _))) = in_flight.iter().nth(next(in_flight.len().max(1) as u64) as usize)
                {
                    let delete =
                        Command::Delete { queue: FIFO_Q, tenant: TENANT.to_owned(), receipts: vec![receipt.clone()] };
                    shard.apply(now_ms, delete);
                    in_flight.remove(&id);
                }
            }
            _ => {
                if let Some((&id, (_, receipt, _))) = in_flight.iter().nth(next(in_flight.len().max(1) as u64) as usize)
                {
                    let change = Command::ChangeVisibility {
                        queue: FIFO_Q,
                        tenant: TENANT.to_owned(),
                        receipt: receipt.clone(),
                        visibility_timeout_ms: 0,
                    };
                    shard.apply(now_ms, change);
                    in_flight.remove(&id);
                }
            }
        }
    }
}

// -------------------------------------------------------------------------- scheduled messages

mod scheduled {
    use std::collections::BTreeSet;

    use super::super::schedule::{
        LOAD_CHUNK_RECORDS_MAX, LOAD_LEAD_MS, SLICE_MS, SliceRecord, SliceWrite, deliver_at_of, is_waiting_in,
        scheduled_message_id, slice_of,
    };
    use super::*;
    use crate::shard::SliceLoad;

    const DAY_MS: u64 = 24 * 3600 * 1000;
    /// A time well inside a slice, so "now" is never on a slice boundary by accident.
    const T0: u64 = 1_000 * SLICE_MS + 12_345;

    /// The shard plus the slice files its applies wrote, kept in memory as the storage node
    /// keeps them on disk, and the node's loader.
    struct Scheduled {
        shard: Shard,
        files: BTreeMap<u64, Vec<SliceRecord>>,
    }

    impl Scheduled {
        fn new() -> Self {
            let mut shard = Shard::new();
            let create = Command::CreateQueue { queue: Q, tenant: TENANT.to_owned(), config: config() };
            assert_eq!(shard.apply(T0, create), Response::QueueCreated);
            Self { shard, files: BTreeMap::new() }
        }

        fn apply(&mut self, now_ms: u64, command: Command) -> Response {
            let response = self.shard.apply(now_ms, command);
            for write in self.shard.state.take_slice_writes() {
                match write {
                    SliceWrite::Append { slice_start_ms, record } => {
                        self.files.entry(slice_start_ms).or_default().push(record)
                    }
                    SliceWrite::Remove { slice_start_ms } => {
                        self.files.remove(&slice_start_ms);
                    }
                }
            }
            response
        }

        /// Sends one message per deliver-at time; answers their ids.
        fn send_at(&mut self, now_ms: u64, deliver_at: &[u64]) -> Vec<Uuid> {
            let messages: Vec<NewMessage> = deliver_at
                .iter()
                .enumerate()
                .map(|(i, &at)| NewMessage {
                    message_id: scheduled_message_id(at, Uuid::from_u128(i as u128 + 1)),
                    deliver_at_ms: Some(at),
                    ..new_message(i as u128)
                })
                .collect();
            match self.apply(now_ms, Command::Send { queue: Q, tenant: TENANT.to_owned(), messages }) {
                Response::Sent(sent) => sent.into_iter().map(|s| s.message_id).collect(),
                other => panic!("send failed: {other:?}"),
            }
        }

        /// What the storage node's loader does at `now_ms`, until nothing is due.
        fn load_due(&mut self, now_ms: u64) -> u64 {
            let mut loaded = 0;
            while let Some((start, slice)) = self.shard.state.next_slice_to_load(now_ms) {
                let command = if slice.loading {
                    let load = SliceLoad::new(start, self.files.get(&start).cloned().unwrap_or_default());
                    let to = (slice.loaded + LOAD_CHUNK_RECORDS_MAX as u64).min(slice.records);
                    let messages = load.messages_between(slice.loaded, to);
                    Command::LoadScheduled { slice_start_ms: start, from: slice.loaded, to, messages }
                } else {
                    Command::StartScheduledLoad { slice_start_ms: start }
                };
                match self.apply(now_ms, command) {
                    Response::ScheduledLoaded { count } => loaded += count,
                    other => panic!("load step failed: {other:?}"),
                }
            }
            loaded
        }

        fn receive_ids(&mut self, now_ms: u64) -> Vec<Uuid> {
            self.shard.receive(now_ms, 10, None).into_iter().map(|d| d.message_id).collect()
        }

        /// Receives and deletes everything visible at `now_ms`; each message must come once.
        fn drain(&mut self, now_ms: u64) -> BTreeSet<Uuid> {
            let mut arrived = BTreeSet::new();
            loop {
                let deliveries = self.shard.receive(now_ms, 10, None);
                if deliveries.is_empty() {
                    return arrived;
                }
                let receipts: Vec<&str> = deliveries.iter().map(|d| d.receipt.as_str()).collect();
                self.shard.delete(now_ms, &receipts);
                for d in &deliveries {
                    assert!(arrived.insert(d.message_id), "{} arrived twice", d.message_id);
                }
            }
        }

        fn counts(&self) -> QueueCounts {
            self.shard.state.queue_counts(Q, TENANT).expect("queue exists")
        }

        /// A cancel as the storage node makes it: the slice file is searched first while the
        /// message's slice is on disk.
        fn cancel(&mut self, now_ms: u64, tenant: &str, message_id: Uuid) -> Response {
            let slice_start_ms = deliver_at_of(&message_id).map(slice_of);
            if let Some(records) = slice_start_ms.and_then(|start| self.files.get(&start))
                && let Some(purged_at) = self.shard.state.purged_at_log_index(Q, tenant)
                && !is_waiting_in(records, Q, message_id, purged_at)
            {
                return Response::Error(QueueError::ScheduledMessageNotFound);
            }
            self.apply(now_ms, Command::CancelScheduled { queue: Q, tenant: tenant.to_owned(), message_id })
        }
    }

    #[test]
    fn a_far_future_message_waits_on_disk_and_arrives_at_its_time() {
        let mut s = Scheduled::new();
        let at = T0 + 30 * DAY_MS + 777;
        let ids = s.send_at(T0, &[at]);
        assert_eq!(s.files.values().map(Vec::len).sum::<usize>(), 1, "one record in a slice file");
        assert_eq!(s.counts(), QueueCounts { visible: 0, in_flight: 0, delayed: 1 });
        assert!(s.receive_ids(T0 + 1).is_empty());
        // Nothing is due before the slice's lead time; then the slice loads into memory.
        assert_eq!(s.load_due(at - LOAD_LEAD_MS - SLICE_MS), 0);
        assert_eq!(s.load_due(at - 1), 1);
        assert!(s.files.is_empty(), "a loaded slice's file goes");
        assert!(s.receive_ids(at - 1).is_empty(), "never before its time");
        assert!(!s.shard.state.has_visible(Q, TENANT, at - 1));
        assert_eq!(s.shard.state.next_visible_at_ms(Q, TENANT, at - 1), Some(at));
        assert!(s.shard.state.has_visible(Q, TENANT, at));
        let delivered = s.shard.receive(at, 10, None);
        assert_eq!(delivered.iter().map(|d| d.message_id).collect::<Vec<_>>(), ids);
        assert_eq!(delivered[0].sent_ms, T0, "the send time is reported, not the due time");
    }

    #[test]
    fn memory_does_not_grow_with_far_future_messages() {
        let encoded_with = |count: u64| {
            let mut s = Scheduled::new();
            for batch in 0..count.div_ceil(10) {
                let times: Vec<u64> = (0..10).map(|i| T0 + 90 * DAY_MS + (batch * 10 + i) * 7).collect();
                s.send_at(T0, &times);
            }
            assert_eq!(s.counts().delayed, count.div_ceil(10) * 10);
            postcard::to_allocvec(&s.shard.state).expect("encode").len()
        };
        let small = encoded_with(10);
        let large = encoded_with(20_000);
        // Only the counters' varints grow (a few bytes), not one entry per message.
        assert!(large - small < 16, "state grew from {small} to {large} bytes");
    }

    /// Moves queue `Q` from `from` to `to` as a move's driver does, its scheduled messages read
    /// from `from`'s slice files; the bodies are stand-ins.
    fn move_scheduled(from: &mut Scheduled, to: &mut Scheduled, move_id: MoveId, now_ms: u64) {
        let fence = Command::FenceQueue { queue: Q, tenant: TENANT.to_owned(), move_id };
        assert_eq!(from.apply(now_ms, fence), Response::Moved);
        let copy = from.shard.state.export_queue(Q, move_id).expect("export");
        let mut scheduled = Vec::new();
        for start in copy.slice_starts() {
            scheduled.extend(copy.scheduled_in(start, from.files.get(&start).map_or(&[][..], Vec::as_slice)));
        }
        for (offset, part) in (0..).zip(copy.state_parts(&scheduled).expect("encode")) {
            assert_eq!(offset, 0, "one part");
            let adopt = Command::AdoptState { queue: Q, tenant: TENANT.to_owned(), move_id, offset, part };
            assert_eq!(to.apply(now_ms, adopt), Response::Moved);
        }
        let mut refs = copy.body_refs();
        refs.extend(scheduled.iter().map(|m| m.body_ref));
        let messages = refs.iter().map(|at| new_message(u128::from(at.log_index))).collect();
        let bodies = Command::AdoptBodies { queue: Q, move_id, refs, messages, trace_headers: Vec::new() };
        assert_eq!(to.apply(now_ms, bodies), Response::Moved);
        assert_eq!(to.apply(now_ms, Command::AdoptQueue { queue: Q, move_id }), Response::Moved);
        assert_eq!(to.apply(now_ms, Command::OpenQueue { queue: Q, move_id }), Response::Moved);
        assert_eq!(from.apply(now_ms, Command::ReleaseQueue { queue: Q, move_id }), Response::Moved);
    }

    #[test]
    fn a_moved_queue_takes_its_scheduled_messages_from_the_slice_files_along_and_never_twice() {
        let mut a = Scheduled::new();
        a.shard.log_index = 10_000;
        let ids = a.send_at(T0, &[T0 + DAY_MS, T0 + 2 * DAY_MS, T0 + 30_000]);
        let cancel = Command::CancelScheduled { queue: Q, tenant: TENANT.to_owned(), message_id: ids[1] };
        assert_eq!(a.apply(T0, cancel), Response::ScheduledCancelled);
        let mut b = Scheduled { shard: Shard::new(), files: BTreeMap::new() };
        move_scheduled(&mut a, &mut b, 7, T0);
        // One waits in b's wheel, one in b's slice file (the cancelled one stayed behind).
        assert_eq!(b.shard.counts().delayed, 2);
        let in_files: Vec<Uuid> = b
            .files
            .values()
            .flatten()
            .filter_map(|r| match r {
                SliceRecord::Message(m) => Some(m.message_id),
                SliceRecord::Cancel { .. } => None,
            })
            .collect();
        assert_eq!(in_files, [ids[0]]);

        // Back to a before a's old records load: they are dropped, the one that came back is not.
        move_scheduled(&mut b, &mut a, 8, T0 + 1_000);
        assert_eq!(a.drain(T0 + 31_000), BTreeSet::from([ids[2]]));
        assert_eq!(a.load_due(T0 + DAY_MS), 1, "the day-ahead message loads once");
        assert_eq!(a.drain(T0 + DAY_MS), BTreeSet::from([ids[0]]));
        a.load_due(T0 + 3 * DAY_MS);
        assert!(a.drain(T0 + 3 * DAY_MS).is_empty(), "the cancelled message never comes");
        assert_eq!(b.load_due(T0 + 3 * DAY_MS), 0, "b's records of the queue gone are dropped");
    }

    #[test]
    fn scheduled_messages_count_in_stored_bytes_on_disk_and_in_memory() {
        let mut s = Scheduled::new();
        let stored = |s: &Scheduled| s.shard.state.queue_stored_bytes(Q, TENANT).expect("queue exists");
        let far = T0 + 30 * DAY_MS;
        // Three on disk ("body 0" to "body 2", 6 bytes each) and one in the wheel.
        let ids = s.send_at(T0, &[far, far + 1, far + 2, T0 + 1_000]);
        assert_eq!(stored(&s), 24);
        assert_eq!(round_trip(&s.shard.state).queue_stored_bytes(Q, TENANT), Some(24), "kept by a snapshot");
        // A cancel on disk releases the mean of those on disk; one in the wheel its own size.
        assert_eq!(s.cancel(T0 + 1, TENANT, ids[0]), Response::ScheduledCancelled);
        assert_eq!(stored(&s), 18);
        assert_eq!(s.cancel(T0 + 2, TENANT, ids[3]), Response::ScheduledCancelled);
        assert_eq!(stored(&s), 12);
        // Loaded, due, received and deleted: nothing is left.
        assert_eq!(s.load_due(far), 2);
        assert_eq!(stored(&s), 12, "loading moves them, it does not release them");
        assert_eq!(s.drain(far + 2).len(), 2);
        assert_eq!(stored(&s), 0);
    }

    #[test]
    fn retention_counts_from_the_due_time() {
        let mut s = Scheduled::new();
        let at = T0 + 10 * DAY_MS;
        s.send_at(T0, &[at]);
        s.load_due(at);
        // The queue keeps messages for 120 s (config()): long past since the send, not since due.
        assert_eq!(s.receive_ids(at + 1).len(), 1);
        s.apply(at + 200_000, Command::Expire);
        assert_eq!(s.counts(), QueueCounts::default(), "expired 120 s after it was due");
    }

    #[test]
    fn near_messages_wait_in_memory_and_past_times_deliver_at_once() {
        let mut s = Scheduled::new();
        let ids = s.send_at(T0, &[T0 + 5_000, T0 - 5_000]);
        assert!(s.files.is_empty(), "within the lead time: no slice file");
        assert_eq!(s.counts(), QueueCounts { visible: 1, in_flight: 0, delayed: 1 });
        assert_eq!(s.receive_ids(T0), vec![ids[1]]);
        assert_eq!(s.receive_ids(T0 + 5_000), vec![ids[0]]);
    }

    #[test]
    fn cancel_works_on_disk_while_loading_and_in_memory() {
        let mut s = Scheduled::new();
        let far = T0 + 2 * DAY_MS;
        let ids = s.send_at(T0, &[far, far + 1, far + 2, far + 3, T0 + 5_000]);
        // On disk: a cancel record.
        assert_eq!(s.cancel(T0, TENANT, ids[0]), Response::ScheduledCancelled);
        assert_eq!(s.counts().delayed, 4);
        // In memory.
        assert_eq!(s.cancel(T0, TENANT, ids[4]), Response::ScheduledCancelled);
        // While its slice loads, before its chunk.
        let start = far - far % SLICE_MS;
        assert_eq!(
            s.apply(far - 1, Command::StartScheduledLoad { slice_start_ms: start }),
            Response::ScheduledLoaded { count: 0 }
        );
        assert_eq!(s.cancel(far - 1, TENANT, ids[1]), Response::ScheduledCancelled);
        assert_eq!(s.load_due(far - 1), 2, "ids 2 and 3 load; 0 and 1 were cancelled");
        // Loaded, in memory.
        assert_eq!(s.cancel(far - 1, TENANT, ids[2]), Response::ScheduledCancelled);
        assert_eq!(s.counts().delayed, 1);
        assert_eq!(s.receive_ids(far + 10), vec![ids[3]]);
        // Due already, cancelled twice, another tenant's, not a scheduled id.
        let not_found = Response::Error(QueueError::ScheduledMessageNotFound);
        assert_eq!(s.cancel(far + 10, TENANT, ids[3]), not_found);
        assert_eq!(s.cancel(far + 10, TENANT, ids[2]), not_found);
        assert_eq!(s.cancel(far + 10, OTHER_TENANT, ids[2]), Response::Error(QueueError::QueueNotFound));
        assert_eq!(s.cancel(far + 10, TENANT, Uuid::from_u128(5)), not_found);
    }

    #[test]
    fn purge_and_delete_drop_scheduled_messages() {
        let mut s = Scheduled::new();
        let far = T0 + 3 * DAY_MS;
        s.send_at(T0, &[far, T0 + 5_000]);
        assert_eq!(s.apply(T0, Command::Purge { queue: Q, tenant: TENANT.to_owned() }), Response::Purged { count: 2 });
        let kept = s.send_at(T0 + 1, &[far + 5]);
        assert_eq!(s.counts().delayed, 1);
        assert_eq!(s.load_due(far), 1, "the message sent after the purge loads; the one before is dropped");
        assert_eq!(s.receive_ids(far + 5), kept);
        assert_eq!(s.counts(), QueueCounts { visible: 0, in_flight: 1, delayed: 0 });

        s.send_at(far + 6, &[far + 9 * DAY_MS]);
        assert_eq!(
            s.apply(far + 6, Command::DeleteQueue { queue: Q, tenant: TENANT.to_owned() }),
            Response::QueueDeleted
        );
        assert_eq!(s.load_due(far + 9 * DAY_MS), 0, "a deleted queue's scheduled messages are dropped");
        assert_eq!(s.shard.state.min_live_log_index(), None);
    }

    #[test]
    fn scheduled_bodies_keep_the_log_live() {
        let mut s = Scheduled::new();
        s.send_at(T0, &[T0 + DAY_MS]);
        let body_index = s.shard.log_index;
        s.shard.send(T0 + 1, &[1]);
        let received = s.shard.receive(T0 + 1, 10, None);
        s.shard.delete(T0 + 1, &[received[0].receipt.as_str()]);
        assert_eq!(s.shard.state.min_live_log_index(), Some(body_index), "kept by the slice on disk");
        s.load_due(T0 + DAY_MS - 1);
        assert_eq!(s.shard.state.min_live_log_index(), Some(body_index), "kept by the wheel");
        let delivered = s.shard.receive(T0 + DAY_MS, 10, None);
        assert_eq!(delivered[0].body_ref.log_index, body_index);
        s.shard.delete(T0 + DAY_MS, &[delivered[0].receipt.as_str()]);
        assert_eq!(s.shard.state.min_live_log_index(), None);
    }

    #[test]
    fn invalid_deliver_at_times_are_refused_and_change_nothing() {
        let mut s = Scheduled::new();
        let send = |at: u64, id: Uuid, delay_ms: Option<u64>| Command::Send {
            queue: Q,
            tenant: TENANT.to_owned(),
            messages: vec![NewMessage { message_id: id, deliver_at_ms: Some(at), delay_ms, ..new_message(1) }],
        };
        let year_and_a_day = T0 + DELIVER_AHEAD_MS_MAX + 1;
        let cases = [
            send(year_and_a_day, scheduled_message_id(year_and_a_day, Uuid::nil()), None),
            send(T0 + DAY_MS, Uuid::from_u128(1), None),
            send(T0 + DAY_MS, scheduled_message_id(T0 + DAY_MS, Uuid::nil()), Some(0)),
        ];
        for command in cases {
            assert!(matches!(s.apply(T0, command), Response::Error(QueueError::InvalidParameter(_))));
        }
        let fifo = QueueConfig { fifo: Some(FifoConfig { deduplication_per_group: false }), ..config() };
        s.apply(T0, Command::CreateQueue { queue: FIFO_Q, tenant: TENANT.to_owned(), config: fifo });
        let at = T0 + DAY_MS;
        let message = NewMessage {
            message_id: scheduled_message_id(at, Uuid::nil()),
            deliver_at_ms: Some(at),
            fifo: Some(FifoIds { group_id: "g".into(), deduplication_id: "d".into() }),
            ..new_message(1)
        };
        let response = s.apply(T0, Command::Send { queue: FIFO_Q, tenant: TENANT.to_owned(), messages: vec![message] });
        assert!(matches!(response, Response::Error(QueueError::InvalidParameter(_))));
        assert!(s.files.is_empty());
        assert_eq!(s.counts(), QueueCounts::default());
        // The last day of the year is fine.
        s.send_at(T0, &[T0 + DELIVER_AHEAD_MS_MAX]);
        assert_eq!(s.counts().delayed, 1);
    }

    #[test]
    fn load_steps_out_of_order_are_refused() {
        let mut s = Scheduled::new();
        let far = T0 + DAY_MS;
        s.send_at(T0, &[far, far + 1]);
        let start = far - far % SLICE_MS;
        let early = s.apply(T0, Command::StartScheduledLoad { slice_start_ms: start });
        assert!(matches!(early, Response::Error(QueueError::InvalidParameter(_))), "not due for loading yet");
        let not_loading = Command::LoadScheduled { slice_start_ms: start, from: 0, to: 2, messages: Vec::new() };
        assert!(matches!(s.apply(far, not_loading), Response::Error(QueueError::InvalidParameter(_))));
        s.apply(far, Command::StartScheduledLoad { slice_start_ms: start });
        let skipping = Command::LoadScheduled { slice_start_ms: start, from: 1, to: 2, messages: Vec::new() };
        assert!(matches!(s.apply(far, skipping), Response::Error(QueueError::InvalidParameter(_))));
        assert_eq!(s.load_due(far), 2);
    }

    /// A random walk of sends (past, near and far deliver-at times), cancels, purges, snapshot
    /// round trips and clock jumps, each followed by the loader and a full drain, against a
    /// plain map of what is scheduled: exactly the due messages arrive, each once; cancels
    /// answer as the map says; counts and body liveness follow.
    #[test]
    fn random_walk_matches_a_plain_map_of_what_is_scheduled() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        let mut s = Scheduled::new();
        let mut now = T0;
        let mut scheduled: BTreeMap<Uuid, u64> = BTreeMap::new();
        let mut gone: Vec<Uuid> = Vec::new();
        let mut n = 0u128;
        for step in 0..1_500 {
            match next(10) {
                0..=3 => {
                    let count = 1 + next(10) as usize;
                    let messages: Vec<NewMessage> = (0..count)
                        .map(|_| {
                            n += 1;
                            let at = match next(4) {
                                0 => now.saturating_sub(next(10_000)),
                                1 => now + next(120_000),
                                2 => now + next(3_600_000),
                                _ => now + next(60 * DAY_MS),
                            };
                            let id = scheduled_message_id(at, Uuid::from_u128(n));
                            NewMessage { message_id: id, deliver_at_ms: Some(at), ..new_message(n) }
                        })
                        .collect();
                    for m in &messages {
                        scheduled.insert(m.message_id, m.deliver_at_ms.unwrap_or(0));
                    }
                    let response = s.apply(now, Command::Send { queue: Q, tenant: TENANT.to_owned(), messages });
                    assert!(matches!(response, Response::Sent(_)), "{response:?}");
                }
                4 | 5 => {
                    let pick = if next(3) == 0 || scheduled.is_empty() {
                        gone.get(next(gone.len().max(1) as u64) as usize).copied()
                    } else {
                        scheduled.keys().nth(next(scheduled.len() as u64) as usize).copied()
                    };
                    let Some(id) = pick else { continue };
                    let expected = match scheduled.get(&id) {
                        Some(&at) if at > now => Response::ScheduledCancelled,
                        _ => Response::Error(QueueError::ScheduledMessageNotFound),
                    };
                    assert_eq!(s.cancel(now, TENANT, id), expected, "step {step}");
                    if expected == Response::ScheduledCancelled {
                        scheduled.remove(&id);
                        gone.push(id);
                    }
                }
                6 => {
                    if next(4) == 0 {
                        s.apply(now, Command::Purge { queue: Q, tenant: TENANT.to_owned() });
                        gone.extend(scheduled.keys());
                        scheduled.clear();
                    } else {
                        s.shard.state = round_trip(&s.shard.state);
                    }
                }
                _ => now += next(3 * DAY_MS),
            }
            s.load_due(now);
            let arrived = s.drain(now);
            let due: BTreeSet<Uuid> = scheduled.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
            assert_eq!(arrived, due, "step {step}: what arrived is what was due");
            scheduled.retain(|id, _| !due.contains(id));
            gone.extend(due);
            assert_eq!(s.counts(), QueueCounts { delayed: scheduled.len() as u64, ..QueueCounts::default() });
            // Slice files keep the log live until loaded, even when all they hold was cancelled or
            // purged; the log must be live whenever something is scheduled.
            assert!(scheduled.is_empty() || s.shard.state.min_live_log_index().is_some(), "step {step}");
        }
        assert!(n > 3_000, "the walk sent {n} messages");
        // Past every deliver-at time: what is still scheduled arrives, and only that.
        now += 61 * DAY_MS;
        s.load_due(now);
        assert!(s.files.is_empty(), "every slice loaded");
        assert_eq!(s.drain(now), scheduled.keys().copied().collect::<BTreeSet<_>>());
        assert_eq!(s.shard.state.min_live_log_index(), None);
    }

    #[test]
    fn many_messages_load_in_chunks() {
        let mut s = Scheduled::new();
        let far = T0 + 5 * DAY_MS;
        let total = LOAD_CHUNK_RECORDS_MAX as u64 * 2 + 30;
        for batch in 0..total / 10 {
            let times: Vec<u64> = (0..10).map(|i| far + batch * 10 + i).collect();
            s.send_at(T0, &times);
        }
        assert_eq!(s.load_due(far), total);
        let mut received = 0;
        while !s.receive_ids(far + total).is_empty() {
            received += 10;
        }
        assert_eq!(received, total);
    }
}

// ------------------------------------------------------------------------------- request ids

#[test]
fn a_send_retried_with_its_request_id_is_stored_once_and_answered_the_same() {
    let mut shard = Shard::with_queue();
    let send = |ids: &[u128]| Command::Send {
        queue: Q,
        tenant: TENANT.to_owned(),
        messages: ids.iter().map(|&n| new_message(n)).collect(),
    };
    let once = |shard: &mut Shard, id: &str, command: Command| {
        shard.log_index += 1;
        shard
            .state
            .apply(shard.log_index, &ShardCommand { now_ms: 5, command, request_id: Some(id.to_owned()), meter: None })
    };
    let first = once(&mut shard, "req-1", send(&[1, 2]));
    // The retry was prepared again (new message ids): still the first answer, nothing stored.
    let retry = once(&mut shard, "req-1", send(&[3, 4]));
    assert_eq!(first, retry);
    assert_eq!(shard.counts().visible, 2);
    once(&mut shard, "req-2", send(&[5]));
    assert_eq!(shard.counts().visible, 3, "another id is another send");
}

#[test]
fn a_request_id_reused_for_another_request_is_refused_and_stores_nothing() {
    let mut shard = Shard::with_queue();
    let messages = |ids: &[u128], body: &str| -> Vec<NewMessage> {
        ids.iter().map(|&n| NewMessage { body: Bytes::from(body.to_owned()), ..new_message(n) }).collect()
    };
    let send = |shard: &mut Shard, key: String, messages: Vec<NewMessage>| {
        shard.log_index += 1;
        let command = Command::Send { queue: Q, tenant: TENANT.to_owned(), messages };
        shard.state.apply(shard.log_index, &ShardCommand { now_ms: 5, command, request_id: Some(key), meter: None })
    };
    let first = send(&mut shard, request_key("req-1", &messages(&[1], "pay 10")), messages(&[1], "pay 10"));
    assert!(matches!(first, Response::Sent(_)), "{first:?}");
    // An exact retry (its message ids drawn anew) is answered as the first time.
    let retry = send(&mut shard, request_key("req-1", &messages(&[2], "pay 10")), messages(&[2], "pay 10"));
    assert_eq!(retry, first);
    // The same id with another body: refused, nothing stored, and the first answer stays.
    let other = send(&mut shard, request_key("req-1", &messages(&[3], "pay 99")), messages(&[3], "pay 99"));
    assert_eq!(other, Response::Error(QueueError::IdempotencyConflict));
    assert_eq!(shard.counts().visible, 1);
    let retry = send(&mut shard, request_key("req-1", &messages(&[4], "pay 10")), messages(&[4], "pay 10"));
    assert_eq!(retry, first);
    // An id remembered without a digest (a command from before digests) answers its retries.
    let legacy = send(&mut shard, "req-2".to_owned(), messages(&[5], "a"));
    let retry = send(&mut shard, request_key("req-2", &messages(&[6], "a")), messages(&[6], "a"));
    assert_eq!(retry, legacy);
    assert_eq!(shard.counts().visible, 2);
}

#[test]
fn request_ids_are_forgotten_beyond_the_bound() {
    let mut shard = Shard::with_queue();
    for i in 0..(REQUEST_IDS_KEPT as u128 + 3) {
        shard.log_index += 1;
        let command = Command::Purge { queue: Q, tenant: TENANT.to_owned() };
        shard.state.apply(
            shard.log_index,
            &ShardCommand { now_ms: 5, command, request_id: Some(format!("r{i}")), meter: None },
        );
    }
    let bytes = postcard::to_allocvec(&shard.state).expect("encode").len();
    // About 20,000 remembered ids with small answers; an unbounded map would keep growing.
    assert!(bytes < 64 * REQUEST_IDS_KEPT, "state is {bytes} bytes");
    shard.log_index += 1;
    let command = Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![new_message(1)] };
    let replay = shard
        .state
        .apply(shard.log_index, &ShardCommand { now_ms: 5, command, request_id: Some("r0".into()), meter: None });
    assert!(matches!(replay, Response::Sent(_)), "r0 was forgotten, so this is a new send: {replay:?}");
}

// ----------------------------------------------------------------------------- metering outbox

fn meter(id: &str) -> MeterRecord {
    MeterRecord { request_id: id.into(), tenant: TENANT.into(), action: "SendMessage".into(), ..Default::default() }
}

impl Shard {
    fn metered(&mut self, request_id: &str, record: &str, command: Command) -> Response {
        self.log_index += 1;
        let cmd = ShardCommand { now_ms: 5, command, request_id: Some(request_id.into()), meter: Some(meter(record)) };
        self.state.apply(self.log_index, &cmd)
    }

    fn outbox_ids(&self) -> Vec<String> {
        let oldest = self.state.metering().oldest(usize::MAX);
        oldest.map(|(_, records)| records.into_iter().map(|r| r.request_id).collect()).unwrap_or_default()
    }
}

#[test]
fn a_metered_command_keeps_its_record_exactly_when_it_applies() {
    let mut shard = Shard::with_queue();
    let send = |n| Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![new_message(n)] };
    assert!(matches!(shard.metered("s1", "m1", send(1)), Response::Sent(_)));
    // A retry of the same request is answered from memory and keeps no second record.
    assert!(matches!(shard.metered("s1", "m1", send(2)), Response::Sent(_)));
    // A command that fails changes nothing, its record included.
    let missing = Command::Send { queue: Q + 1, tenant: TENANT.to_owned(), messages: vec![new_message(3)] };
    assert!(matches!(shard.metered("s2", "m2", missing), Response::Error(QueueError::QueueNotFound)));
    let foreign = Command::Send { queue: Q, tenant: OTHER_TENANT.to_owned(), messages: vec![new_message(4)] };
    assert!(matches!(shard.metered("s3", "m3", foreign), Response::Error(_)));
    assert_eq!(shard.outbox_ids(), vec!["m1"]);
    assert_eq!(shard.counts().visible, 1);

    // The outbox survives a snapshot, and a trim drops what was counted.
    let restored = round_trip(&shard.state);
    assert_eq!(restored, shard.state);
    shard.metered("s4", "m4", send(5));
    let (through_seq, _) = shard.state.metering().oldest(1).unwrap();
    shard.apply(5, Command::TrimMetering { through_seq });
    assert_eq!(shard.outbox_ids(), vec!["m4"]);
}

#[test]
fn a_full_outbox_refuses_metered_commands_until_it_is_trimmed() {
    let mut shard = Shard::with_queue();
    let purge = || Command::Purge { queue: Q, tenant: TENANT.to_owned() };
    for i in 0..super::outbox::OUTBOX_RECORDS_MAX {
        shard.metered(&format!("p{i}"), &format!("m{i}"), purge());
    }
    let send = Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![new_message(1)] };
    let refused = shard.metered("last", "m-last", send.clone());
    assert_eq!(refused, Response::Error(QueueError::MeteringBacklogFull));
    assert_eq!(shard.counts().visible, 0, "a refused send stores nothing");
    // Unmetered commands (the storage node's own) still apply.
    assert!(matches!(shard.apply(5, Command::Expire), Response::Expired { .. }));
    shard.apply(5, Command::TrimMetering { through_seq: 10 });
    // The refusal was not remembered under the request id: its retry now goes through.
    assert!(matches!(shard.metered("last", "m-last", send), Response::Sent(_)));
    assert_eq!(shard.state.metering().len(), super::outbox::OUTBOX_RECORDS_MAX - 10 + 1);
}

fn return_undelivered(shard: &mut Shard, queue: QueueId, now_ms: u64, receipts: &[&str]) -> Response {
    let receipts = receipts.iter().map(|r| (*r).to_owned()).collect();
    shard.apply(now_ms, Command::ReturnUndelivered { queue, tenant: TENANT.to_owned(), receipts })
}

#[test]
fn undelivered_receives_are_taken_back_without_counting_or_dead_lettering() {
    let mut shard = shard_with_dead_letter_queue(2);
    shard.send(0, &[1, 2]);
    // Ten receives whose bodies could not be read: each one is taken back at once.
    for attempt in 0..10u64 {
        let now_ms = attempt * 10;
        let got = receive_from(&mut shard, Q, now_ms);
        assert_eq!(ids(&got), vec![1, 2], "attempt {attempt}: both are visible again");
        assert!(got.iter().all(|d| d.receive_count == 1), "attempt {attempt}: counts rose: {got:?}");
        let receipts: Vec<&str> = got.iter().map(|d| d.receipt.as_str()).collect();
        assert_eq!(return_undelivered(&mut shard, Q, now_ms, &receipts), Response::VisibilityChanged);
        assert_eq!(shard.counts().visible, 2);
    }
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).expect("dead-letter queue").visible, 0);
    // A delivered receive counts: message 1 is delivered, message 2 taken back.
    let got = receive_from(&mut shard, Q, 1_000);
    assert_eq!(return_undelivered(&mut shard, Q, 1_000, &[got[1].receipt.as_str()]), Response::VisibilityChanged);
    let again = receive_from(&mut shard, Q, 3_000);
    let counts: Vec<(u128, u32)> = again.iter().map(|d| (d.message_id.as_u128(), d.receive_count)).collect();
    assert_eq!(counts, vec![(1, 2), (2, 1)]);
    // A receipt no longer current (the message was received again since) takes nothing back.
    let stale = got[0].receipt.as_str();
    assert_eq!(return_undelivered(&mut shard, Q, 3_000, &[stale]), Response::VisibilityChanged);
    assert_eq!(shard.counts().in_flight, 2, "a stale receipt changed nothing");
}

#[test]
fn an_undelivered_fifo_message_unlocks_its_group_in_order() {
    let mut shard = fifo_shard(false);
    let messages = vec![fifo_message(1, "g", "d1"), fifo_message(2, "g", "d2")];
    assert!(matches!(fifo_send(&mut shard, 0, messages), Response::Sent(_)));
    let got = fifo_receipts(&mut shard, 0, 10);
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2]);
    assert!(fifo_receive(&mut shard, 0, 10, 30_000).is_empty(), "the group is locked while in flight");
    let receipts: Vec<&str> = got.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(return_undelivered(&mut shard, FIFO_Q, 0, &receipts), Response::VisibilityChanged);
    assert_eq!(fifo_receive(&mut shard, 0, 10, 30_000), vec![(1, "g".to_owned()), (2, "g".to_owned())]);
}

#[test]
fn a_receipt_of_a_message_moved_away_is_stale_and_deletes_nothing() {
    let mut shard = shard_with_dead_letter_queue(1);
    shard.send(0, &[1, 2]);
    let first = receive_from(&mut shard, Q, 0);
    // Message 2 is deleted: its receipt stays a success on a second delete, as in SQS.
    assert_eq!(shard.delete(0, &[first[1].receipt.as_str()]), Response::Deleted(vec![Ok(())]));
    // The visibility timeout runs out and the next receive moves message 1 to the DLQ.
    assert!(receive_from(&mut shard, Q, 2_000).is_empty());
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).expect("dead-letter queue").visible, 1);
    let receipts = [first[0].receipt.as_str(), first[1].receipt.as_str()];
    assert_eq!(shard.delete(2_000, &receipts), Response::Deleted(vec![Err(QueueError::StaleReceipt), Ok(())]));
    assert_eq!(
        shard.change_visibility(2_000, receipts[0], 0),
        Response::Error(QueueError::StaleReceipt),
        "a visibility change of a moved message says so too"
    );
    assert_eq!(shard.state.queue_counts(DLQ, TENANT).expect("dead-letter queue").visible, 1, "nothing deleted");
    // The memory survives a snapshot.
    let restored = round_trip(&shard.state);
    assert_eq!(restored, shard.state);
}

/// A snapshot copies the state while applies wait: the copy shares the queue's messages instead
/// of copying them, and what is applied after the copy does not reach it.
#[test]
fn a_copy_for_a_snapshot_shares_the_messages_and_keeps_what_it_copied() {
    let mut shard = Shard::with_queue();
    for batch in 0..100 {
        shard.send(1, &(batch * 10..batch * 10 + 10).collect::<Vec<_>>());
    }
    let copy = shard.state.clone();
    let shared = |state: &ShardState| state.queue_for_tests(Q).expect("queue").clone();
    assert!(shared(&shard.state).shares_messages_with(&shared(&copy)));
    let encoded = postcard::to_allocvec(&copy).expect("encode");

    let received = shard.receive(2, 10, None);
    assert_eq!(received.len(), 10);
    shard.send(3, &[5_000]);
    let receipt = received[0].receipt.clone();
    assert_eq!(shard.delete(4, &[receipt.as_str()]), Response::Deleted(vec![Ok(())]));

    assert_eq!(postcard::to_allocvec(&copy).expect("encode"), encoded, "a later apply changed the copy");
    let counts = |state: &ShardState| state.queue_counts(Q, TENANT).expect("queue");
    assert_eq!((counts(&copy).visible, counts(&copy).in_flight), (1_000, 0));
    assert_eq!((counts(&shard.state).visible, counts(&shard.state).in_flight), (991, 9));
}

// ------------------------------------------------------------------------ calls sharing an entry

fn call(command: Command, meter: Option<MeterRecord>) -> Call {
    Call { command, meter }
}

impl Shard {
    /// Applies `calls` in one entry and answers each call's response.
    fn calls(&mut self, now_ms: u64, calls: Vec<Call>) -> Vec<Response> {
        match self.apply(now_ms, Command::Calls { calls }) {
            Response::Calls(responses) => responses,
            other => panic!("calls answered {other:?}"),
        }
    }
}

#[test]
fn calls_of_one_entry_apply_in_order_each_with_its_own_answer_and_record() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2, 3]);
    let first = shard.receive(0, 1, None);
    let responses = shard.calls(
        5,
        vec![
            call(receive_cmd(1, None), Some(meter("receive"))),
            call(
                Command::Delete { queue: Q, tenant: TENANT.to_owned(), receipts: vec![first[0].receipt.clone()] },
                None,
            ),
            // Another tenant's call fails alone, and its record is not kept.
            call(
                Command::Receive {
                    queue: Q,
                    tenant: OTHER_TENANT.to_owned(),
                    max_messages: 1,
                    visibility_timeout_ms: None,
                },
                Some(meter("foreign")),
            ),
            // A call that may not share an entry is refused alone, and changes nothing.
            call(Command::Purge { queue: Q, tenant: TENANT.to_owned() }, None),
            call(receive_cmd(10, None), Some(meter("receive-rest"))),
        ],
    );
    let [
        Response::Received(one),
        Response::Deleted(deleted),
        Response::Error(foreign),
        Response::Error(purge),
        Response::Received(rest),
    ] = responses.as_slice()
    else {
        panic!("unexpected answers {responses:?}");
    };
    assert_eq!(one.iter().map(|d| d.message_id.as_u128()).collect::<Vec<_>>(), [2]);
    assert_eq!(deleted, &[Ok(())]);
    assert_eq!(foreign, &QueueError::QueueNotFound);
    assert!(matches!(purge, QueueError::InvalidParameter(_)), "{purge:?}");
    assert_eq!(rest.iter().map(|d| d.message_id.as_u128()).collect::<Vec<_>>(), [3]);
    assert_eq!(shard.outbox_ids(), vec!["receive", "receive-rest"]);
    assert_eq!(shard.counts(), QueueCounts { visible: 0, in_flight: 2, delayed: 0 });
    // Receipts of calls sharing an entry are distinct, and each deletes its own message.
    assert_ne!(one[0].receipt, rest[0].receipt);
    assert_eq!(shard.delete(5, &[&one[0].receipt, &rest[0].receipt]), Response::Deleted(vec![Ok(()), Ok(())]));
}

#[test]
fn receives_sharing_an_entry_never_lease_one_message_twice_and_keep_fifo_order() {
    // Standard: the first receive leaves its message visible at once; the second passes it over.
    let mut shard = Shard::with_queue();
    shard.send(0, &[1, 2]);
    let responses = shard.calls(0, vec![call(receive_cmd(1, Some(0)), None), call(receive_cmd(10, Some(0)), None)]);
    let ids = |r: &Response| match r {
        Response::Received(d) => d.iter().map(|d| d.message_id.as_u128()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(responses.iter().map(ids).collect::<Vec<_>>(), [vec![1], vec![2]]);
    // A later entry receives both again.
    assert_eq!(shard.receive(0, 10, None).len(), 2);

    // FIFO: group a's head is leased (and visible again at once) by the first call; the second
    // call may not take a's next message past it, only group b's.
    let mut shard = fifo_shard(false);
    fifo_send(&mut shard, 0, vec![fifo_message(1, "a", "d1"), fifo_message(2, "a", "d2"), fifo_message(3, "b", "d3")]);
    let fifo_receive = |max| Command::Receive {
        queue: FIFO_Q,
        tenant: TENANT.to_owned(),
        max_messages: max,
        visibility_timeout_ms: Some(0),
    };
    let responses = shard.calls(0, vec![call(fifo_receive(1), None), call(fifo_receive(10), None)]);
    assert_eq!(responses.iter().map(ids).collect::<Vec<_>>(), [vec![1], vec![3]]);
    assert_eq!(fifo_receipts(&mut shard, 0, 10).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn an_entry_with_too_many_calls_is_refused_whole() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    let calls = (0..=CALLS_PER_ENTRY_MAX).map(|_| call(receive_cmd(1, None), Some(meter("r")))).collect();
    let responses = shard.calls(0, calls);
    assert_eq!(responses.len(), CALLS_PER_ENTRY_MAX + 1);
    assert!(responses.iter().all(|r| *r == Response::Error(QueueError::TooManyEntries)));
    assert_eq!(shard.counts().visible, 1);
    assert!(shard.outbox_ids().is_empty());
}

// ------------------------------------------------------------------------ counts without traffic

#[test]
fn counts_read_later_see_visibility_timeouts_delays_and_schedules_that_ran_out() {
    let mut shard = Shard::with_queue();
    shard.send(1, &[1, 2, 3, 4]);
    let delayed = NewMessage { delay_ms: Some(15_000), ..new_message(5) };
    let id = super::schedule::scheduled_message_id(20_000, Uuid::from_u128(6));
    let scheduled = NewMessage { message_id: id, deliver_at_ms: Some(20_000), ..new_message(6) };
    let sent =
        shard.apply(2, Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![delayed, scheduled] });
    assert!(matches!(sent, Response::Sent(_)), "{sent:?}");
    // Three received with a 10 s visibility timeout, one of them 5 s: all four in flight at 3.
    let received = shard.receive(3, 3, Some(10_000));
    assert_eq!(received.len(), 3);
    assert_eq!(shard.change_visibility(3, &received[0].receipt, 5_000), Response::VisibilityChanged);
    let at = |now_ms| shard.state.queue_counts_at(Q, TENANT, now_ms).expect("queue");
    assert_eq!(at(3), QueueCounts { visible: 1, in_flight: 3, delayed: 2 });
    // No command since: the one with 5 s is visible again at 8 s, the others at 13 s, the
    // delayed one at 17 s and the scheduled one at 20 s.
    assert_eq!(at(8_003), QueueCounts { visible: 2, in_flight: 2, delayed: 2 });
    assert_eq!(at(13_003), QueueCounts { visible: 4, in_flight: 0, delayed: 2 });
    assert_eq!(at(17_002), QueueCounts { visible: 5, in_flight: 0, delayed: 1 });
    assert_eq!(at(20_000), QueueCounts { visible: 6, in_flight: 0, delayed: 0 });
    // Reading changed nothing: the state still holds the counts of its last command, and the
    // next command settles the queue to what was read.
    assert_eq!(shard.counts(), QueueCounts { visible: 1, in_flight: 3, delayed: 2 });
    assert_eq!(shard.receive(20_000, 1, None).len(), 1);
    assert_eq!(shard.counts(), QueueCounts { visible: 5, in_flight: 1, delayed: 0 });
}

/// The message trace records what each applied call did to its messages, with the caller the
/// log kept: a stale receipt's delete and a receive of nothing record nothing.
#[test]
fn the_message_trace_records_what_calls_did_to_each_message() {
    use crate::message_trace::{CallBy, TraceEvent};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = shard_with_dead_letter_queue(1);
    shard.state.message_trace().open(dir.path()).expect("open");
    let caller = |request: &str| CallerNote {
        credential: "AKIDEXAMPLE".into(),
        request_id: request.into(),
        trace_headers: Vec::new(),
    };
    let by = |request: &str| CallBy { credential: "AKIDEXAMPLE".into(), request_id: request.into() };
    let send = Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![new_message(1), new_message(2)] };
    assert!(matches!(shard.apply(0, send.with_caller(Some(caller("s")))), Response::Sent(_)));
    let first = match shard.apply(10, receive_cmd(1, Some(5_000)).with_caller(Some(caller("r")))) {
        Response::Received(d) => d,
        other => panic!("{other:?}"),
    };
    let stale = first[0].receipt.clone();
    // Message 1 again once visible (moved away: it was received once already), message 2.
    assert_eq!(shard.receive(6_000, 10, None).len(), 1);
    let receipt_of_2 = match shard.state.message_trace().read(Q, Uuid::from_u128(2)).expect("read").last() {
        Some(r) => matches!(r.event, TraceEvent::Received { .. }),
        None => false,
    };
    assert!(receipt_of_2, "message 2 was received");
    let changed = Command::ChangeVisibility {
        queue: Q,
        tenant: TENANT.to_owned(),
        receipt: stale.clone(),
        visibility_timeout_ms: 1_000,
    };
    assert!(matches!(shard.apply(6_100, changed), Response::Error(_)), "message 1 left: its receipt is stale");
    assert!(matches!(shard.delete(6_200, &[&stale]), Response::Deleted(_)));
    shard.apply(7_000, Command::Purge { queue: Q, tenant: TENANT.to_owned() }.with_caller(Some(caller("p"))));

    let events = |queue, n| -> Vec<(u64, TraceEvent)> {
        let records = shard.state.message_trace().read(queue, Uuid::from_u128(n)).expect("read");
        records.into_iter().map(|r| (r.at_ms, r.event)).collect()
    };
    let moved = events(Q, 1);
    assert_eq!(
        moved,
        [
            (0, TraceEvent::Sent { by: by("s"), seq: 0, deliver_at_ms: None }),
            (10, TraceEvent::Received { by: by("r"), receive_count: 1, visible_at_ms: 5_010 }),
            (6_000, TraceEvent::MovedTo { to: DLQ, dead_letter: true }),
            (7_000, TraceEvent::Purged { by: by("p") }),
        ],
        "no visibility change or delete with a stale receipt; the queue's purge (a read keeps only \
         those that found the message)"
    );
    assert_eq!(events(DLQ, 1), [(6_000, TraceEvent::ArrivedFrom { from: Q, seq: 0, dead_letter: true })]);
    let kept = events(Q, 2);
    assert!(
        matches!(kept[1], (6_000, TraceEvent::Received { receive_count: 1, visible_at_ms: 16_000, .. })),
        "{kept:?}"
    );
}

// ------------------------------------------------------------------- moves between shards

/// Moves `queue` from `source` to `target` as a move's driver does: fence, export, the state
/// and the bodies in parts, adopt, release. The bodies are stand-ins (the test has no log).
fn move_queue(source: &mut Shard, target: &mut Shard, queue: QueueId, move_id: MoveId) {
    let fence = Command::FenceQueue { queue, tenant: TENANT.to_owned(), move_id };
    assert_eq!(source.apply(source.clock(), fence), Response::Moved);
    let exported = source.state.export_queue(queue, move_id).expect("export");
    // The target lags far behind the source's log: leases must still never collide.
    let now_ms = source.clock();
    let mut offset = 0;
    for part in exported.state_parts(&[]).expect("encode") {
        let len = part.len() as u64;
        let adopt = Command::AdoptState { queue, tenant: exported.tenant().to_owned(), move_id, offset, part };
        assert_eq!(target.apply(now_ms, adopt), Response::Moved);
        offset += len;
    }
    for refs in exported.body_refs().chunks(2) {
        let messages =
            refs.iter().map(|at| new_message(u128::from(at.log_index) << 16 | u128::from(at.slot))).collect();
        let bodies = Command::AdoptBodies { queue, move_id, refs: refs.to_vec(), messages, trace_headers: Vec::new() };
        assert_eq!(target.apply(now_ms, bodies), Response::Moved);
    }
    assert_eq!(target.apply(now_ms, Command::AdoptQueue { queue, move_id }), Response::Moved);
    assert_eq!(target.apply(now_ms, Command::OpenQueue { queue, move_id }), Response::Moved);
    assert_eq!(source.apply(now_ms, Command::ReleaseQueue { queue, move_id }), Response::Moved);
    assert!(source.state.queue_counts(queue, TENANT).is_none(), "the source holds nothing of the queue");
}

impl Shard {
    fn clock(&self) -> u64 {
        self.state.clock_ms()
    }
}

#[test]
fn a_moved_queue_keeps_its_messages_leases_and_receipts_and_never_reissues_a_lease() {
    let mut source = Shard::with_queue();
    source.log_index = 10_000;
    source.send(1_000, &[1, 2, 3, 4]);
    let leased = source.receive(1_000, 2, Some(60_000));
    assert_eq!(leased.len(), 2);
    let before = source.counts();

    let mut target = Shard::new();
    move_queue(&mut source, &mut target, Q, 42);
    assert_eq!(target.counts(), before, "the same messages, visible and in flight");

    // A receipt from before the move deletes its message at the target.
    assert_eq!(target.delete(2_000, &[&leased[0].receipt]), Response::Deleted(vec![Ok(())]));
    // Each new delivery's lease lies above every lease of the source.
    let again = target.receive(2_000, 10, Some(60_000));
    assert_eq!(again.iter().map(|d| d.message_id.as_u128()).collect::<Vec<_>>(), [3, 4]);
    for delivery in &again {
        let receipt = Receipt::decode(&delivery.receipt).expect("receipt");
        assert!(receipt.lease > source.log_index, "lease {} is at or below the source's log", receipt.lease);
    }
    // The second message's old receipt still leases it: it stays in flight until its timeout.
    let visible = target.receive(61_001, 10, Some(60_000));
    assert_eq!(visible.iter().map(|d| d.message_id.as_u128()).collect::<Vec<_>>(), [2]);
    assert_eq!(target.delete(61_001, &[&leased[1].receipt]), Response::Error(QueueError::StaleReceipt).into_deleted());
    // Bodies resolve at the target's copies, in seq order.
    let refs: Vec<MessageRef> = visible.iter().map(|d| d.body_ref).collect();
    assert!(refs.iter().all(|at| at.log_index <= target.log_index));
}

impl Response {
    /// A delete's answer for one receipt that failed with `self`'s error.
    fn into_deleted(self) -> Response {
        match self {
            Response::Error(e) => Response::Deleted(vec![Err(e)]),
            other => other,
        }
    }
}

#[test]
fn a_fenced_queue_answers_moving_until_released_or_unfenced_and_remembers_no_moving_answer() {
    let mut shard = Shard::with_queue();
    shard.send(1_000, &[1]);
    let fence = Command::FenceQueue { queue: Q, tenant: TENANT.to_owned(), move_id: 5 };
    assert_eq!(shard.apply(1_000, fence.clone()), Response::Moved);
    assert_eq!(shard.apply(1_000, fence), Response::Moved, "repeated by its move: done already");
    let other = Command::FenceQueue { queue: Q, tenant: TENANT.to_owned(), move_id: 6 };
    assert_eq!(shard.apply_rejected(1_000, other), QueueError::QueueMoving);
    assert_eq!(shard.apply_rejected(1_000, receive_cmd(1, None)), QueueError::QueueMoving);
    let delete_queue = Command::DeleteQueue { queue: Q, tenant: TENANT.to_owned() };
    assert_eq!(shard.apply_rejected(1_000, delete_queue), QueueError::QueueMoving);
    // A send refused for the move is not remembered: its retry after a roll back is stored.
    let send = || ShardCommand {
        now_ms: 1_000,
        command: Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![new_message(2)] },
        request_id: Some("r1".to_owned()),
        meter: None,
    };
    shard.log_index += 1;
    assert_eq!(shard.state.apply(shard.log_index, &send()), Response::Error(QueueError::QueueMoving));
    assert_eq!(shard.apply(1_000, Command::UnfenceQueue { queue: Q, move_id: 5 }), Response::Moved);
    shard.log_index += 1;
    assert!(matches!(shard.state.apply(shard.log_index, &send()), Response::Sent(_)));
    assert_eq!(shard.counts().visible, 2);
    // Release only by the move that fenced.
    let release = Command::ReleaseQueue { queue: Q, move_id: 5 };
    assert!(matches!(shard.apply_rejected(1_000, release), QueueError::InvalidParameter(_)));
}

#[test]
fn a_send_retried_at_the_target_after_a_move_is_answered_its_first_answer() {
    let mut source = Shard::with_queue();
    let command = Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![new_message(1)] };
    let key = request_key("req-1", &[new_message(1)]);
    let send = ShardCommand { now_ms: 1_000, command, request_id: Some(key.clone()), meter: None };
    source.log_index += 1;
    let first = source.state.apply(source.log_index, &send);
    let mut target = Shard::new();
    move_queue(&mut source, &mut target, Q, 7);
    target.log_index += 1;
    assert_eq!(target.state.apply(target.log_index, &send), first);
    assert_eq!(target.counts().visible, 1, "stored once");
    // And again after a second move onward.
    let mut third = Shard::new();
    move_queue(&mut target, &mut third, Q, 8);
    third.log_index += 1;
    assert_eq!(third.state.apply(third.log_index, &send), first);
    assert_eq!(third.counts().visible, 1);
}

#[test]
fn a_moved_fifo_queue_keeps_its_group_locks_order_and_deduplication_window() {
    let mut source = fifo_shard(false);
    let sent = fifo_send(
        &mut source,
        1_000,
        vec![fifo_message(1, "g1", "d1"), fifo_message(2, "g1", "d2"), fifo_message(3, "g2", "d3")],
    );
    assert!(matches!(sent, Response::Sent(_)));
    assert_eq!(fifo_receive(&mut source, 1_000, 1, 60_000), [(1, "g1".to_owned())]);
    let mut target = Shard::new();
    move_queue(&mut source, &mut target, FIFO_Q, 9);
    // g1 stays locked by message 1 in flight; g2 is served.
    assert_eq!(fifo_receive(&mut target, 2_000, 10, 60_000), [(3, "g2".to_owned())]);
    // A duplicate within the window is answered the first message and stored nothing.
    match fifo_send(&mut target, 2_000, vec![fifo_message(9, "g1", "d2")]) {
        Response::Sent(sent) => assert_eq!(sent[0].message_id, Uuid::from_u128(2)),
        other => panic!("send failed: {other:?}"),
    }
    // Message 1's visibility runs out: g1 delivers 1 then 2, in order.
    let order: Vec<u128> = fifo_receive(&mut target, 61_500, 10, 60_000).into_iter().map(|(id, _)| id).collect();
    assert_eq!(order, [1, 2]);
}

#[test]
fn an_adoption_holds_its_bodies_back_from_garbage_collection_and_a_roll_back_drops_it() {
    let mut source = Shard::with_queue();
    source.send(1_000, &[1, 2]);
    let fence = Command::FenceQueue { queue: Q, tenant: TENANT.to_owned(), move_id: 3 };
    assert_eq!(source.apply(1_000, fence), Response::Moved);
    let exported = source.state.export_queue(Q, 3).expect("export");
    let mut target = Shard::new();
    let part = exported.state_parts(&[]).expect("encode")[0].clone();
    assert_eq!(
        target.apply(1_000, Command::AdoptState { queue: Q, tenant: TENANT.to_owned(), move_id: 3, offset: 0, part }),
        Response::Moved
    );
    let messages = vec![new_message(1), new_message(2)];
    let bodies =
        Command::AdoptBodies { queue: Q, move_id: 3, refs: exported.body_refs(), messages, trace_headers: vec![] };
    assert_eq!(target.apply(1_000, bodies), Response::Moved);
    let bodies_at = target.log_index;
    assert_eq!(target.state.min_live_log_index(), Some(bodies_at), "staged bodies are live");
    assert_eq!(target.apply_rejected(1_000, receive_cmd(1, None)), QueueError::QueueNotFound, "not served yet");
    assert_eq!(target.apply(1_000, Command::DropAdoption { queue: Q, move_id: 3 }), Response::Moved);
    assert_eq!(target.state.min_live_log_index(), None);
    assert!(!target.state.holds_moves(), "nothing of the move is left");
    assert_eq!(source.apply(1_000, Command::UnfenceQueue { queue: Q, move_id: 3 }), Response::Moved);
    assert_eq!(source.receive(1_000, 10, None).len(), 2, "the source serves again");
}

#[test]
fn copies_made_out_of_order_stay_live_and_an_adopted_queue_serves_only_once_opened() {
    let mut source = Shard::with_queue();
    source.send(1_000, &[1, 2, 3]);
    let fence = Command::FenceQueue { queue: Q, tenant: TENANT.to_owned(), move_id: 4 };
    assert_eq!(source.apply(1_000, fence), Response::Moved);
    let exported = source.state.export_queue(Q, 4).expect("export");
    let mut target = Shard::new();
    for part in exported.state_parts(&[]).expect("encode") {
        let adopt = Command::AdoptState { queue: Q, tenant: TENANT.to_owned(), move_id: 4, offset: 0, part };
        assert_eq!(target.apply(1_000, adopt), Response::Moved);
    }
    // The last message's body is copied first (a driver after another, say).
    let mut first_copy = None;
    for at in exported.body_refs().into_iter().rev() {
        let bodies = Command::AdoptBodies {
            queue: Q,
            move_id: 4,
            refs: vec![at],
            messages: vec![new_message(9)],
            trace_headers: vec![],
        };
        assert_eq!(target.apply(1_000, bodies), Response::Moved);
        first_copy.get_or_insert(target.log_index);
    }
    assert_eq!(target.apply(1_000, Command::AdoptQueue { queue: Q, move_id: 4 }), Response::Moved);
    // Whole, but not served before the switch: a roll back would drop what it did.
    assert_eq!(target.apply_rejected(1_000, receive_cmd(1, None)), QueueError::QueueMoving);
    assert_eq!(target.apply(1_000, Command::OpenQueue { queue: Q, move_id: 4 }), Response::Moved);
    assert_eq!(target.apply(1_000, Command::OpenQueue { queue: Q, move_id: 4 }), Response::Moved, "again: no change");
    assert_eq!(target.apply(1_000, Command::DropAdoption { queue: Q, move_id: 4 }), Response::Moved);
    assert_eq!(target.counts().visible, 3, "an opened queue is never dropped as an adoption");
    // The first message goes: the third's copy, the oldest entry, is still live.
    let first = target.receive(1_000, 1, None);
    assert_eq!(target.delete(1_000, &[&first[0].receipt]), Response::Deleted(vec![Ok(())]));
    assert_eq!(target.state.min_live_log_index(), first_copy);
}

#[test]
fn a_queue_a_move_cannot_carry_yet_is_refused_at_the_fence() {
    let mut shard = Shard::with_queue();
    let dlq = Command::CreateQueue { queue: DLQ, tenant: TENANT.to_owned(), config: config() };
    assert_eq!(shard.apply(0, dlq), Response::QueueCreated);
    let redrive = Some(Redrive { dead_letter_queue: DLQ, max_receive_count: 3 });
    let set =
        Command::SetQueueConfig { queue: Q, tenant: TENANT.to_owned(), config: QueueConfig { redrive, ..config() } };
    assert_eq!(shard.apply(0, set), Response::QueueConfigSet);
    for queue in [Q, DLQ] {
        let fence = Command::FenceQueue { queue, tenant: TENANT.to_owned(), move_id: 1 };
        assert!(matches!(shard.apply_rejected(0, fence), QueueError::InvalidParameter(_)), "queue {queue}");
    }
    let fence = Command::FenceQueue { queue: Q, tenant: OTHER_TENANT.to_owned(), move_id: 1 };
    assert_eq!(shard.apply_rejected(0, fence), QueueError::QueueNotFound, "another tenant's queue");

    // Once hand-offs are open, dead letters reach a queue on another shard: both may move. The
    // source of a running move task may not (the task stays with its shard).
    assert_eq!(shard.apply(0, Command::OpenHandOffs), Response::Moved);
    let to_dlq = Command::Send { queue: DLQ, tenant: TENANT.to_owned(), messages: vec![new_message(1)] };
    assert!(matches!(shard.apply(0, to_dlq), Response::Sent(_)));
    assert!(matches!(start_move(&mut shard, DLQ, Q, 1), Response::MoveTask(_)));
    let fence = |queue| Command::FenceQueue { queue, tenant: TENANT.to_owned(), move_id: 2 };
    assert!(matches!(shard.apply_rejected(0, fence(DLQ)), QueueError::InvalidParameter(_)), "a task's source");
    assert_eq!(shard.apply(0, fence(Q)), Response::Moved, "a task's destination and a dead letter's source");
}

// ---------------------------------------------------------- hand-offs between shards

/// The id the tests give the shard messages are handed from.
const FROM_SHARD: u64 = 1;

/// A shard with hand-offs open.
fn opened(mut shard: Shard) -> Shard {
    assert_eq!(shard.apply(0, Command::OpenHandOffs), Response::Moved);
    shard
}

/// The `AcceptHandOffs` of the first batch of `from`'s outbox (bodies are stand-ins: the test has
/// no log), and the seq it goes through.
fn accept_first_batch(from: &Shard) -> (Command, u64) {
    let batch = from.state.hand_off_batch(HAND_OFF_BATCH_MESSAGES).expect("messages wait in the outbox");
    let messages = batch.arrivals.iter().map(|a| NewMessage { message_id: a.message_id, ..new_message(0) }).collect();
    let HandOffBatch { tenant, queue, through_seq, arrivals, .. } = batch;
    let accept =
        Command::AcceptHandOffs { source_shard: FROM_SHARD, queue, tenant, arrivals, messages, trace_headers: vec![] };
    (accept, through_seq)
}

/// Hands `from`'s first batch to `to` as the leader of `from` does: accepted, then trimmed.
fn hand_over(from: &mut Shard, to: &mut Shard) {
    let (accept, through_seq) = accept_first_batch(from);
    let now_ms = from.clock();
    assert_eq!(to.apply(now_ms, accept), Response::Moved);
    assert_eq!(from.apply(now_ms, Command::TrimHandOffs { through_seq }), Response::Moved);
}

/// Shard "a" holds `Q`, whose dead-letter queue `DLQ` (after one receive) is on shard "b".
fn shards_with_dead_letter_elsewhere() -> (Shard, Shard) {
    let mut a = opened(Shard::new());
    let redrive = Some(Redrive { dead_letter_queue: DLQ, max_receive_count: 1 });
    let create = |queue, config| Command::CreateQueue { queue, tenant: TENANT.to_owned(), config };
    assert_eq!(a.apply(0, create(Q, QueueConfig { redrive, ..config() })), Response::QueueCreated);
    let mut b = opened(Shard::new());
    b.log_index = 500;
    assert_eq!(b.apply(0, create(DLQ, config())), Response::QueueCreated);
    (a, b)
}

#[test]
fn dead_letters_leave_for_another_shard_once_and_arrive_there_once() {
    let (mut a, mut b) = shards_with_dead_letter_elsewhere();
    a.send(0, &[1, 2, 3]);
    let send_index = a.log_index;
    assert_eq!(receive_from(&mut a, Q, 0).len(), 3);
    let old_receipt = receive_from(&mut a, Q, 0);
    assert!(old_receipt.is_empty(), "in flight");
    // Exhausted at 2 s: they leave the queue for the outbox in the receive that reached them.
    assert!(receive_from(&mut a, Q, 2_000).is_empty(), "exhausted messages are not delivered");
    assert_eq!(a.counts(), QueueCounts::default());
    assert!(a.state.has_hand_offs());
    // Their bodies stay live on the source until they are handed over.
    assert_eq!(a.state.min_live_log_index(), Some(send_index));

    let (accept, through_seq) = accept_first_batch(&a);
    assert_eq!(b.apply(2_000, accept.clone()), Response::Moved);
    // The same entry again (its answer lost, the leader changed) changes nothing.
    assert_eq!(b.apply(2_000, accept), Response::Moved);
    assert_eq!(b.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(3), "each arrived once");
    assert_eq!(a.apply(2_000, Command::TrimHandOffs { through_seq }), Response::Moved);
    assert!(!a.state.has_hand_offs());
    assert_eq!(a.state.min_live_log_index(), None, "the source's log is released");

    // At the dead-letter queue: the same ids, bodies in b's log, in the order they left.
    let arrived = receive_from(&mut b, DLQ, 2_000);
    assert_eq!(ids(&arrived), [1, 2, 3]);
    let accept_index = b.log_index - 2;
    assert!(arrived.iter().all(|d| d.body_ref.log_index == accept_index), "{arrived:?}");
    assert_eq!(b.state.min_live_log_index(), Some(accept_index));
}

#[test]
fn before_hand_offs_open_exhausted_messages_stay_where_they_are() {
    let mut a = Shard::new();
    let redrive = Some(Redrive { dead_letter_queue: DLQ, max_receive_count: 1 });
    let create =
        Command::CreateQueue { queue: Q, tenant: TENANT.to_owned(), config: QueueConfig { redrive, ..config() } };
    assert_eq!(a.apply(0, create), Response::QueueCreated);
    a.send(0, &[1]);
    assert_eq!(receive_from(&mut a, Q, 0).len(), 1);
    assert_eq!(receive_from(&mut a, Q, 2_000).len(), 1, "delivered again, as releases before generation 10 do");
    assert!(!a.state.has_hand_offs() && !a.state.holds_hand_offs());
}

#[test]
fn dead_letters_for_a_queue_gone_come_back_and_are_delivered_until_the_configuration_changes() {
    let (mut a, _) = shards_with_dead_letter_elsewhere();
    a.send(0, &[1, 2]);
    assert_eq!(receive_from(&mut a, Q, 0).len(), 2);
    assert!(receive_from(&mut a, Q, 2_000).is_empty());
    let (_, through_seq) = accept_first_batch(&a);
    // The leader found no such queue in metadata: back to the queue they left.
    assert_eq!(a.apply(2_000, Command::ReturnHandOffs { through_seq }), Response::Moved);
    assert!(!a.state.has_hand_offs());
    assert_eq!(ids(&receive_from(&mut a, Q, 2_000)), [1, 2], "delivered again, not dead-lettered");
    assert_eq!(ids(&receive_from(&mut a, Q, 4_000)), [1, 2], "and again: its dead-letter queue is gone");
    // A new configuration names a dead-letter queue again: the next receive hands them off.
    let redrive = Some(Redrive { dead_letter_queue: DLQ + 1, max_receive_count: 1 });
    let set =
        Command::SetQueueConfig { queue: Q, tenant: TENANT.to_owned(), config: QueueConfig { redrive, ..config() } };
    assert_eq!(a.apply(4_000, set), Response::QueueConfigSet);
    assert!(receive_from(&mut a, Q, 6_000).is_empty());
    assert_eq!(a.state.hand_off_batch(10).map(|b| (b.queue, b.arrivals.len())), Some((DLQ + 1, 2)));
}

#[test]
fn a_destination_of_another_kind_refuses_and_changes_nothing() {
    let (mut a, _) = shards_with_dead_letter_elsewhere();
    let mut b = opened(fifo_shard(false));
    a.send(0, &[1]);
    receive_from(&mut a, Q, 0);
    receive_from(&mut a, Q, 2_000);
    let (accept, _) = accept_first_batch(&a);
    let Command::AcceptHandOffs { arrivals, messages, tenant, .. } = accept else { unreachable!() };
    let into_fifo = Command::AcceptHandOffs {
        source_shard: FROM_SHARD,
        queue: FIFO_Q,
        tenant,
        arrivals,
        messages,
        trace_headers: vec![],
    };
    // The state stays as it was (`apply_rejected` checks), marks included.
    assert!(matches!(b.apply_rejected(0, into_fifo), QueueError::InvalidParameter(_)));
}

#[test]
fn a_move_task_to_another_shard_hands_off_and_fails_when_its_destination_is_gone() {
    let (mut a, mut b) = shards_with_dead_letter_elsewhere();
    let to_dlq = Command::Send { queue: DLQ, tenant: TENANT.to_owned(), messages: (1..=5).map(new_message).collect() };
    assert!(matches!(b.apply(0, to_dlq), Response::Sent(_)));
    // Back to Q, which b does not hold.
    let Response::MoveTask(task) = start_move(&mut b, DLQ, Q, 10) else { panic!("start") };
    let step = |shard: &mut Shard| shard.apply(0, Command::MoveStep { task_id: task.task_id, max_messages: 3 });
    assert!(matches!(step(&mut b), Response::MoveTask(ref t) if t.moved == 3 && t.status == MoveTaskStatus::Running));
    assert!(matches!(step(&mut b), Response::MoveTask(ref t) if t.moved == 5 && t.status == MoveTaskStatus::Completed));
    hand_over(&mut b, &mut a);
    assert_eq!(a.counts().visible, 5);
    assert_eq!(ids(&a.receive(0, 10, None)), [1, 2, 3, 4, 5], "in the order they left");

    // A task to a queue that is gone: its messages come back, and the task fails.
    let to_dlq = Command::Send { queue: DLQ, tenant: TENANT.to_owned(), messages: vec![new_message(6)] };
    assert!(matches!(b.apply(0, to_dlq), Response::Sent(_)));
    let Response::MoveTask(task) = start_move(&mut b, DLQ, 99, 10) else { panic!("start") };
    assert!(matches!(b.apply(0, Command::MoveStep { task_id: task.task_id, max_messages: 3 }), Response::MoveTask(_)));
    let (_, through_seq) = accept_first_batch(&b);
    assert_eq!(b.apply(0, Command::ReturnHandOffs { through_seq }), Response::Moved);
    assert_eq!(b.state.queue_counts(DLQ, TENANT).map(|c| c.visible), Some(1));
    let status = b.state.move_tasks_of(TENANT, DLQ).first().map(|t| t.status.clone());
    assert!(matches!(status, Some(MoveTaskStatus::Failed(_))), "{status:?}");
}

#[test]
fn a_queue_keeps_its_hand_off_marks_when_it_moves_so_a_repeated_entry_stays_a_repeat() {
    let (mut a, mut b) = shards_with_dead_letter_elsewhere();
    a.send(0, &[1, 2]);
    receive_from(&mut a, Q, 0);
    receive_from(&mut a, Q, 2_000);
    let (accept, _) = accept_first_batch(&a);
    assert_eq!(b.apply(2_000, accept.clone()), Response::Moved);
    // The dead-letter queue moves on before the source saw the answer; the source repeats.
    let mut c = opened(Shard::new());
    move_queue(&mut b, &mut c, DLQ, 3);
    assert_eq!(c.apply(2_000, accept), Response::Moved);
    assert_eq!(c.state.queue_counts(DLQ, TENANT).map(|q| q.visible), Some(2), "not taken twice");
    assert_eq!(round_trip(&c.state), c.state, "the marks survive a snapshot");
}

#[test]
fn a_full_outbox_holds_exhausted_messages_in_their_queue() {
    let (mut a, _) = shards_with_dead_letter_elsewhere();
    let ids_all: Vec<u128> = (0..HAND_OFF_OUTBOX_MAX as u128 + 5).collect();
    for chunk in ids_all.chunks(SEND_BATCH_MAX) {
        a.send(0, chunk);
    }
    let receive_all = |a: &mut Shard, now_ms| while !receive_from(a, Q, now_ms).is_empty() {};
    receive_all(&mut a, 0);
    // Exhausted: they move, 100 per receive, until the outbox is full; then they wait unseen.
    for _ in 0..=ids_all.len() / 100 {
        assert!(receive_from(&mut a, Q, 2_000).is_empty());
    }
    let waiting = a.counts().visible;
    assert_eq!(waiting, 5, "{:?}", a.counts());
    assert_eq!(ids_all.len() as u64 - waiting, HAND_OFF_OUTBOX_MAX as u64);
    let (_, through_seq) = accept_first_batch(&a);
    assert_eq!(a.apply(2_000, Command::TrimHandOffs { through_seq }), Response::Moved);
    assert!(receive_from(&mut a, Q, 2_000).is_empty());
    assert_eq!(a.counts().visible, 0, "room again: they leave too");
    assert_eq!(round_trip(&a.state), a.state);
}

#[test]
fn a_hibernate_entry_puts_the_shard_to_sleep_until_the_next_entry_and_changes_nothing_else() {
    let mut shard = Shard::with_queue();
    shard.send(0, &[1]);
    let before = shard.state.clone();
    assert_eq!(shard.apply(0, Command::Hibernate), Response::Moved);
    assert_eq!(shard.state.asleep_at(), Some(shard.log_index));
    assert_eq!(shard.state.without_sleep(), before, "nothing but the flag changed");
    assert!(!shard.state.has_timed_work(0), "an idle shard has no timed work");
    assert_eq!(shard.receive(0, 1, None).len(), 1);
    assert_eq!(shard.state.asleep_at(), None, "any later command wakes it");
    // Work a timer must do keeps a shard awake: here a message past its retention.
    assert!(shard.state.has_timed_work(config().retention_ms + 1));
}

#[test]
fn hand_off_batches_are_bounded_in_bytes_and_a_late_return_never_drops_a_message_going_back() {
    let (mut a, _) = shards_with_dead_letter_elsewhere();
    let big = |n| NewMessage { body: Bytes::from(vec![b'x'; 600 * 1024]), ..new_message(n) };
    let send = Command::Send { queue: Q, tenant: TENANT.to_owned(), messages: vec![big(1), big(2), big(3)] };
    assert!(matches!(a.apply(0, send), Response::Sent(_)));
    receive_from(&mut a, Q, 0);
    receive_from(&mut a, Q, 2_000);
    let batch = a.state.hand_off_batch(HAND_OFF_BATCH_MESSAGES).expect("a batch");
    assert_eq!(batch.arrivals.len(), 1, "600 KiB bodies go one by one, under a mebibyte");

    // A move task's messages, back from another shard's queue to the dead-letter queue's
    // shard b, where their source queue no longer is: they go back through the outbox, under
    // new seqs, so a late repeat of the return leaves them.
    let (_, mut b) = shards_with_dead_letter_elsewhere();
    let to_dlq = Command::Send { queue: DLQ, tenant: TENANT.to_owned(), messages: vec![new_message(7)] };
    assert!(matches!(b.apply(0, to_dlq), Response::Sent(_)));
    let Response::MoveTask(task) = start_move(&mut b, DLQ, Q, 10) else { panic!("start") };
    assert!(matches!(b.apply(0, Command::MoveStep { task_id: task.task_id, max_messages: 1 }), Response::MoveTask(_)));
    let (_, through_seq) = accept_first_batch(&b);
    // Its source (the dead-letter queue) moves away before the return.
    let mut c = opened(Shard::new());
    move_queue(&mut b, &mut c, DLQ, 9);
    assert_eq!(b.apply(0, Command::ReturnHandOffs { through_seq }), Response::Moved);
    assert_eq!(b.apply(0, Command::ReturnHandOffs { through_seq }), Response::Moved, "a late repeat");
    let back = b.state.hand_off_batch(10).expect("the message goes back through the outbox");
    assert!(back.through_seq > through_seq && back.queue == DLQ && back.arrivals.len() == 1, "{back:?}");
    hand_over(&mut b, &mut c);
    assert_eq!(c.state.queue_counts(DLQ, TENANT).map(|q| q.visible), Some(1), "back in its queue, once");
}
