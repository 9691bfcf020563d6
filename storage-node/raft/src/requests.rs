//! [`RecentRequests`]: the answers of recently applied requests, kept in a replicated state so
//! that a command retried with the same request id (its proposer never learned whether the
//! first attempt was applied) is applied once and answered as the first time.
//!
//! Part of the state it lives in (snapshotted with it), so every replica answers a retry alike.
//! Bounded: only the newest `capacity` ids are kept, by the log index that applied them. Held in
//! persistent maps, so a copy of the state for a snapshot takes constant time.

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "R: Serialize", deserialize = "R: Deserialize<'de> + Clone"))]
pub struct RecentRequests<R> {
    /// Request id -> the answer applying it gave.
    answers: OrdMap<String, R>,
    /// The same ids by the log index that applied them, oldest first, to forget the oldest.
    by_index: OrdMap<u64, String>,
}

impl<R> Default for RecentRequests<R> {
    fn default() -> Self {
        Self { answers: OrdMap::new(), by_index: OrdMap::new() }
    }
}

impl<R: Clone> RecentRequests<R> {
    /// The first answer to `request_id`, if it is among the ids kept.
    pub fn answer(&self, request_id: &str) -> Option<&R> {
        self.answers.get(request_id)
    }

    /// Remembers the answer the command at `log_index` gave to `request_id`, forgetting the
    /// oldest ids beyond `capacity`.
    pub fn remember(&mut self, log_index: u64, request_id: &str, answer: &R, capacity: usize) {
        self.answers.insert(request_id.to_owned(), answer.clone());
        self.by_index.insert(log_index, request_id.to_owned());
        while self.by_index.len() > capacity {
            let Some(&(oldest_index, _)) = self.by_index.get_min() else { break };
            if let Some(oldest) = self.by_index.remove(&oldest_index) {
                self.answers.remove(&oldest);
            }
        }
    }

    /// Rewrites each answer kept in place (an answer that holds what the state changes in
    /// place, such as a secret sealed after it was answered).
    pub fn update_answers(&mut self, mut update: impl FnMut(&mut R)) {
        let ids: Vec<String> = self.answers.keys().cloned().collect();
        for id in ids {
            if let Some(answer) = self.answers.get_mut(&id) {
                update(answer);
            }
        }
    }

    /// The request id remembered at `log_index`, with its answer.
    pub fn at(&self, log_index: u64) -> Option<(&str, &R)> {
        let id = self.by_index.get(&log_index)?;
        Some((id.as_str(), self.answers.get(id)?))
    }

    /// The log index of the oldest request remembered.
    pub fn oldest_log_index(&self) -> Option<u64> {
        self.by_index.get_min().map(|(index, _)| *index)
    }

    /// Whether any id kept starts with `prefix`.
    pub fn any_with_prefix(&self, prefix: &str) -> bool {
        self.answers
            .range::<_, str>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|(id, _)| id.starts_with(prefix))
    }

    /// The ids kept, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.answers.keys().map(String::as_str)
    }

    /// How many ids are kept.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_ids_up_to_capacity_in_both_maps() {
        let mut recent = RecentRequests::default();
        for i in 0..8u64 {
            recent.remember(i + 1, &format!("r{i}"), &i, 5);
        }
        assert_eq!(recent.len(), 5);
        assert_eq!(recent.by_index.len(), 5);
        assert_eq!(recent.answer("r2"), None);
        assert_eq!(recent.answer("r3"), Some(&3));
        assert_eq!(recent.answer("r7"), Some(&7));
        assert!(recent.any_with_prefix("r") && recent.any_with_prefix("r6"));
        assert!(!recent.any_with_prefix("r2") && !recent.any_with_prefix("s"));
    }
}
