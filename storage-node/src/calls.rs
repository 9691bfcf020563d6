//! A shard's proposal batcher: the receives, deletes and visibility changes of many clients
//! share one log entry ([`Command::Calls`]).
//!
//! A client's receive or delete costs the shard a log entry: encoding, an append, replication,
//! an apply and an answer, however little it carries. The batcher keeps at most
//! [`ENTRIES_IN_FLIGHT_MAX`] entries of gathered calls on their way through the log; the calls
//! that arrive meanwhile wait and leave together in the next entry (at most
//! [`CALLS_PER_ENTRY_MAX`]), so the busier the shard, the more calls one entry carries, and a
//! lone call leaves at once on its own. It is the log's group commit one level up: the WAL
//! shares an fsync among entries, the batcher shares an entry among calls.
//!
//! Guarantees: every call is answered with its own outcome once its entry is durable and
//! applied, exactly as a call proposed on its own would be (the state applies the calls of an
//! entry one after another, each with its own metering record; see [`Command::Calls`]). An
//! entry that fails (no longer the leader, the shard stopping) fails each of its calls with that
//! error. Until the cluster writes [`BATCHED_CALLS_GENERATION`], every call is proposed on its
//! own, as releases before it did.

use std::sync::Arc;

use strata_common::error::StrataError;
use strata_common::metering::MeterRecord;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::NodeError;
use crate::queue::{CALLS_PER_ENTRY_MAX, Call, Command, Response};
use crate::shard::{BATCHED_CALLS_GENERATION, EntryWriter, answer_of};

/// Entries of gathered calls on their way through the log at once, per shard. More keeps the
/// log busier at low load; fewer gathers more calls per entry.
const ENTRIES_IN_FLIGHT_MAX: usize = 4;

/// Calls that may wait for an entry, per shard; callers beyond wait for room (each caller
/// already holds a request slot of its proxy, so this bounds memory, not admission).
const CALLS_WAITING_MAX: usize = 4 * CALLS_PER_ENTRY_MAX * ENTRIES_IN_FLIGHT_MAX;

/// A call waiting for its entry, and where its answer goes.
struct Pending {
    call: Call,
    answer: oneshot::Sender<Result<Response, StrataError>>,
}

/// The handle callers propose through; the gathering runs in a task of its own until the
/// handle is dropped.
pub(crate) struct CallBatcher {
    waiting: mpsc::Sender<Pending>,
}

impl CallBatcher {
    pub(crate) fn start(writer: EntryWriter) -> Self {
        let (waiting, rx) = mpsc::channel(CALLS_WAITING_MAX);
        tokio::spawn(gather_loop(writer, rx));
        Self { waiting }
    }

    /// Proposes `command` (one of [`Command::batchable`]) with its metering record, and answers
    /// once the entry carrying it is durable and applied.
    pub(crate) async fn propose(&self, command: Command, meter: Option<MeterRecord>) -> Result<Response, StrataError> {
        let stopped = || StrataError::from(NodeError::shard_unavailable("the shard is stopping", "call batcher gone"));
        let (answer, answered) = oneshot::channel();
        self.waiting.send(Pending { call: Call { command, meter }, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Takes whatever calls wait (at least one) whenever an entry may leave, and writes them.
async fn gather_loop(writer: EntryWriter, mut waiting: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
    loop {
        // Calls gather in the channel while every entry is under way.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let mut calls = vec![first];
        while calls.len() < CALLS_PER_ENTRY_MAX {
            match waiting.try_recv() {
                Ok(next) => calls.push(next),
                Err(_) => break,
            }
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            write(&writer, calls).await;
            drop(permit);
        });
    }
}

/// Writes the gathered calls in one entry (or each on its own: a lone call, or a cluster that
/// does not read such entries yet) and answers each caller.
async fn write(writer: &EntryWriter, mut calls: Vec<Pending>) {
    // A caller that went away while its call waited (a client that timed out) is not served:
    // its receive would only hide messages until their visibility timeout ran out.
    calls.retain(|p| !p.answer.is_closed());
    if calls.is_empty() {
        return;
    }
    if calls.len() == 1 || writer.format().writing() < BATCHED_CALLS_GENERATION {
        let alone = calls.into_iter().map(|p| async move {
            let outcome = writer.write(None, p.call.meter, p.call.command).await;
            // A caller that went away needs no answer.
            let _ = p.answer.send(outcome);
        });
        futures::future::join_all(alone).await;
        return;
    }
    let (calls, answers): (Vec<Call>, Vec<_>) = calls.into_iter().map(|p| (p.call, p.answer)).unzip();
    let count = calls.len();
    let outcomes = match writer.write(None, None, Command::Calls { calls }).await {
        Ok(Response::Calls(responses)) if responses.len() == count => responses.into_iter().map(answer_of).collect(),
        Ok(other) => {
            let e: StrataError =
                NodeError::bug("unexpected answer to a batch of calls", format_args!("{count} calls: {other:?}"))
                    .into();
            vec![Err(e); count]
        }
        Err(e) => vec![Err(e); count],
    };
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        let _ = answer.send(outcome);
    }
}
