//! Which queues the last applied commands may have made receivable, so that a storage node
//! wakes only the long polls of those queues (see `Shard::queue_waker`).
//!
//! Not part of the state's value: never persisted (a state decoded from a snapshot knows no
//! touches, and its readers then wake every waiter once) and ignored by its equality.

use std::collections::VecDeque;

use super::types::QueueId;

/// What an applied command may have made receivable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Messages of this queue (sent, made visible, moved in) or the queue itself (created,
    /// changed, purged, deleted).
    Queue(QueueId),
    /// Possibly any queue of the shard (scheduled messages loaded, messages moved by a task).
    All,
}

/// Touches of the most recent applies kept, at most.
const TOUCHES_KEPT: usize = 4096;

/// The touches of the last applied commands, by log index.
#[derive(Clone, Default)]
pub struct Touches {
    entries: VecDeque<(u64, Touch)>,
    /// Every apply from this log index on is recorded (`None` before the first apply).
    complete_from: Option<u64>,
}

impl PartialEq for Touches {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Touches {}

/// Not part of the state's value: a state prints the same whatever it last touched.
impl std::fmt::Debug for Touches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Touches")
    }
}

impl Touches {
    /// Records the apply at `log_index` and what it touched.
    pub(crate) fn record(&mut self, log_index: u64, touch: Option<Touch>) {
        self.complete_from.get_or_insert(log_index);
        if let Some(touch) = touch {
            self.entries.push_back((log_index, touch));
        }
        while self.entries.len() > TOUCHES_KEPT {
            if let Some((index, _)) = self.entries.pop_front() {
                self.complete_from = Some(index + 1);
            }
        }
    }

    /// What the applies after `after_index` touched, or `None` when some of them are not known
    /// (more happened than are kept, or the state was decoded since): then anything may have
    /// changed.
    pub fn since(&self, after_index: u64) -> Option<Vec<Touch>> {
        match self.complete_from {
            Some(from) if from <= after_index.saturating_add(1) => {
                Some(self.entries.iter().filter(|(index, _)| *index > after_index).map(|(_, touch)| *touch).collect())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_since_an_index_are_known_only_when_every_apply_after_it_is() {
        let mut touches = Touches::default();
        assert_eq!(touches.since(0), None, "nothing applied yet: unknown");
        touches.record(5, Some(Touch::Queue(1)));
        touches.record(6, None);
        touches.record(7, Some(Touch::Queue(2)));
        assert_eq!(touches.since(4), Some(vec![Touch::Queue(1), Touch::Queue(2)]));
        assert_eq!(touches.since(6), Some(vec![Touch::Queue(2)]));
        assert_eq!(touches.since(7), Some(vec![]));
        assert_eq!(touches.since(3), None, "index 4 was applied before the record started");
        for index in 8..8 + TOUCHES_KEPT as u64 {
            touches.record(index, Some(Touch::All));
        }
        assert_eq!(touches.since(6), None, "the oldest touches were let go");
        assert_eq!(touches.since(7).map(|t| t.len()), Some(TOUCHES_KEPT));
        assert_eq!(touches.since(9).map(|t| t.len()), Some(TOUCHES_KEPT - 2));
    }
}
