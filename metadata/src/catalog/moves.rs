//! Queue moves between shards in the catalog (see `docs/elasticity.md`): the journaled
//! operation, its phases, the queue epochs and the record of finished moves.
//!
//! Metadata decides each move's outcome: a move is switched (its queue routed to the target
//! shard, the queue's epoch raised) or rolled back, never both, whatever its drivers do; a
//! driver acts on the shards only after metadata took its decision, so a driver that lost its
//! shard's leadership and goes on cannot undo what the next one did.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use strata_common::error::{ErrorKind, StrataError};

use super::{Catalog, OPERATIONS_MAX, Operation, QUEUE_MOVES_GENERATION};

/// A queue's move between shards, driven by the leader of its source shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMove {
    pub tenant: String,
    pub name: String,
    pub queue_id: u64,
    pub from_shard: u64,
    pub to_shard: u64,
    pub started_ms: u64,
    pub phase: MovePhase,
}

/// Where a move stands. `Started` goes to `Switched` or to `RollingBack`, never back and
/// never from one of those to the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovePhase {
    /// The driver fences the queue on the source and hands it to the target.
    Started,
    /// The queue is routed to the target (at `at_ms`); the source releases its copy.
    Switched { at_ms: u64 },
    /// The move failed before its switch, for `reason`: the source serves again, and what the
    /// target got is dropped.
    RollingBack { reason: String },
}

/// A move that ended, for `strata cluster moves`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedMove {
    pub move_id: u64,
    pub queue: QueueMove,
    pub finished_ms: u64,
    /// How long the queue was fenced (calls on it waited), by its driver's clock.
    pub paused_ms: u64,
    /// Bytes of state and bodies copied to the target.
    pub bytes_moved: u64,
}

/// Finished moves the catalog keeps, newest last.
pub const FINISHED_MOVES_KEPT: usize = 100;

/// What catalog format version 6 appends after the operations journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moves {
    /// Queue id -> how many times it moved (absent: never).
    epochs: BTreeMap<u64, u64>,
    finished: VecDeque<FinishedMove>,
}

impl Moves {
    pub(super) fn is_empty(&self) -> bool {
        self.epochs.is_empty() && self.finished.is_empty()
    }
}

fn unknown_move(move_id: u64) -> StrataError {
    StrataError::invalid(format!("no queue move {move_id} is under way"))
}

impl Catalog {
    /// How many times the queue incarnation moved between shards.
    pub fn queue_epoch(&self, queue_id: u64) -> u64 {
        self.moves.epochs.get(&queue_id).copied().unwrap_or(0)
    }

    /// Moves under way (by id) and the last [`FINISHED_MOVES_KEPT`] that ended, oldest first.
    pub fn queue_moves(&self) -> (Vec<(u64, QueueMove)>, Vec<FinishedMove>) {
        let open = self.operations.iter().filter_map(|(&id, op)| match op {
            Operation::MoveQueue(m) => Some((id, m.clone())),
            Operation::DropQueue { .. } => None,
        });
        (open.collect(), self.moves.finished.iter().cloned().collect())
    }

    /// The source shard of move `move_id` while it is under way.
    pub fn move_source(&self, move_id: u64) -> Option<u64> {
        match self.operations.get(&move_id) {
            Some(Operation::MoveQueue(m)) => Some(m.from_shard),
            _ => None,
        }
    }

    /// The move of the queue incarnation under way, if any: its id and what it is.
    pub fn queue_move_of(&self, queue_id: u64) -> Option<(u64, QueueMove)> {
        self.operations.iter().find_map(|(&id, op)| match op {
            Operation::MoveQueue(m) if m.queue_id == queue_id => Some((id, m.clone())),
            _ => None,
        })
    }

    /// Whether the queue incarnation is moving between shards.
    pub(super) fn is_moving(&self, queue_id: u64) -> bool {
        self.queue_move_of(queue_id).is_some()
    }

    /// Refuses, for a moment, a dead-letter relation one of whose queues is moving: the move
    /// checked the relations when it fenced its queue, and would carry a new one nowhere.
    pub(super) fn check_dead_letter_not_moving(
        &self,
        queue_id: Option<u64>,
        dead_letter_queue_id: u64,
    ) -> Result<(), StrataError> {
        if dead_letter_queue_id == 0 {
            return Ok(());
        }
        if queue_id.is_some_and(|id| self.is_moving(id)) || self.is_moving(dead_letter_queue_id) {
            return Err(StrataError::unavailable(
                "a queue of this dead-letter relation is moving between shards; retry in a moment",
            ));
        }
        Ok(())
    }

    /// Whether an operation holds the queue incarnation (a move or a pending drop).
    pub(super) fn operation_holds(&self, queue_id: u64) -> bool {
        self.operations.values().any(|op| match op {
            Operation::MoveQueue(m) => m.queue_id == queue_id,
            Operation::DropQueue { queue_id: q, .. } => *q == queue_id,
        })
    }

    pub(super) fn start_queue_move(
        &mut self,
        log_index: u64,
        tenant: &str,
        name: &str,
        to_shard: u64,
        now_ms: u64,
    ) -> Result<super::QueueRecord, StrataError> {
        if self.format_generation < QUEUE_MOVES_GENERATION {
            return Err(StrataError::invalid(format!(
                "queues move between shards once the cluster writes format generation {QUEUE_MOVES_GENERATION}"
            )));
        }
        let record = self.queue_mut(tenant, name)?.clone();
        let target = self.shards.get(&to_shard).ok_or_else(|| StrataError::invalid(format!("no shard {to_shard}")))?;
        if record.shard_id == to_shard {
            return Err(StrataError::invalid(format!("the queue is on shard {to_shard} already")));
        }
        if target.writer_epoch == 0 {
            return Err(StrataError::invalid(format!("shard {to_shard} has not started yet; retry in a moment")));
        }
        if self.operation_holds(record.queue_id) {
            return Err(StrataError::invalid("the queue is moving or being dropped already; wait for that to end"));
        }
        if self.operations.len() >= OPERATIONS_MAX {
            return Err(StrataError::unavailable("too many operations wait for their storage nodes; retry later"));
        }
        let queue_move = QueueMove {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            queue_id: record.queue_id,
            from_shard: record.shard_id,
            to_shard,
            started_ms: now_ms,
            phase: MovePhase::Started,
        };
        self.operations.insert(log_index, Operation::MoveQueue(queue_move));
        Ok(record)
    }

    /// Takes a move's decision: `Switched` routes its queue to the target and raises its epoch.
    /// Taking the decision it has taken already changes nothing; the other one is refused.
    pub(super) fn set_queue_move_phase(&mut self, move_id: u64, phase: &MovePhase) -> Result<(), StrataError> {
        let Some(Operation::MoveQueue(queue_move)) = self.operations.get(&move_id) else {
            return Err(unknown_move(move_id));
        };
        match (&queue_move.phase, phase) {
            (MovePhase::Started, MovePhase::Started) => return Ok(()),
            (MovePhase::Switched { .. }, MovePhase::Switched { .. }) => return Ok(()),
            (MovePhase::RollingBack { .. }, MovePhase::RollingBack { .. }) => return Ok(()),
            (MovePhase::Started, MovePhase::Switched { .. } | MovePhase::RollingBack { .. }) => {}
            _ => {
                return Err(StrataError::new(
                    ErrorKind::InvalidParameter,
                    format!("queue move {move_id} was decided otherwise already"),
                ));
            }
        }
        let queue_move = queue_move.clone();
        if let MovePhase::Switched { .. } = phase {
            let record = self.queue_mut(&queue_move.tenant, &queue_move.name)?;
            if record.queue_id != queue_move.queue_id {
                return Err(StrataError::internal("a moving queue's record names another incarnation"));
            }
            record.shard_id = queue_move.to_shard;
            *self.moves.epochs.entry(queue_move.queue_id).or_insert(0) += 1;
        }
        if let Some(Operation::MoveQueue(m)) = self.operations.get_mut(&move_id) {
            m.phase = phase.clone();
        }
        Ok(())
    }

    /// Ends a decided move and records it among the finished ones. Ending one that ended
    /// already changes nothing.
    pub(super) fn finish_queue_move(
        &mut self,
        move_id: u64,
        now_ms: u64,
        paused_ms: u64,
        bytes_moved: u64,
    ) -> Result<(), StrataError> {
        let Some(Operation::MoveQueue(queue_move)) = self.operations.get(&move_id) else {
            return if self.moves.finished.iter().any(|f| f.move_id == move_id) {
                Ok(())
            } else {
                Err(unknown_move(move_id))
            };
        };
        if queue_move.phase == MovePhase::Started {
            return Err(StrataError::invalid(format!("queue move {move_id} is not decided yet")));
        }
        let queue = queue_move.clone();
        self.operations.remove(&move_id);
        self.moves.finished.push_back(FinishedMove { move_id, queue, finished_ms: now_ms, paused_ms, bytes_moved });
        while self.moves.finished.len() > FINISHED_MOVES_KEPT {
            self.moves.finished.pop_front();
        }
        Ok(())
    }

    /// A queue incarnation is gone (deleted): its epoch goes with it.
    pub(super) fn forget_queue_epoch(&mut self, queue_id: u64) {
        self.moves.epochs.remove(&queue_id);
    }
}
