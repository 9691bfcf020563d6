//! Whether the metadata quorum can take calls, as one member sees it.
//!
//! A member that cannot reach a majority says so at once instead of letting the call wait for a
//! commit that cannot happen: the leader when no majority acknowledged it for
//! [`QUORUM_SILENCE_MAX`], any other member when it knew no leader for [`LEADERLESS_MAX`]
//! (longer than an election takes). Its answer carries [`QUORUM_LOST`], and the metadata client
//! tries the other members once before it gives up, since one member's view is not the
//! quorum's. The same view answers a member's `/readyz`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use strata_common::Clock;
use strata_common::error::{ErrorKind, QUORUM_ELECTING, QUORUM_LOST, QUORUM_METADATA_KEY, StrataError};
use tonic::Status;

use crate::MetaRaftConfig;

/// Longest a leader goes without a majority's acknowledgement before it answers that the quorum
/// is lost (heartbeats go every 100 ms).
pub const QUORUM_SILENCE_MAX: Duration = Duration::from_secs(1);
/// Longest a member knows no leader before it answers that the quorum is lost (an election
/// takes 0.5-1 s, a second one as long again).
pub const LEADERLESS_MAX: Duration = Duration::from_secs(2);

/// The quorum as this member sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumView {
    /// This member leads, and a majority acknowledged it lately.
    Leads,
    /// Another member leads.
    Follows { leader: u64 },
    /// No leader for a moment: an election is under way.
    Electing,
    /// No majority reachable from here for `silent`.
    Lost { silent: Duration, members: usize, leader: bool },
}

impl QuorumView {
    /// Whether calls can be served through this member (at the leader it names, if not here).
    pub fn serves(&self) -> bool {
        matches!(self, QuorumView::Leads | QuorumView::Follows { .. })
    }

    /// Why the quorum cannot take calls, in words an operator can act on; `None` when it can.
    pub fn problem(&self) -> Option<String> {
        match self {
            QuorumView::Leads | QuorumView::Follows { .. } => None,
            QuorumView::Electing => Some("the metadata quorum is electing a leader".to_owned()),
            QuorumView::Lost { silent, members, leader } => {
                let seen = if *leader { "its leader has heard from no majority" } else { "no leader has been seen" };
                Some(format!(
                    "the metadata quorum is unavailable: {seen} of its {members} members for {:.1} s; \
                     metadata changes (queues, keys, limits) wait until a majority of the members runs",
                    silent.as_secs_f64()
                ))
            }
        }
    }

    /// The answer to a call this member does not take because the quorum is lost.
    pub(crate) fn refusal(&self) -> Option<Status> {
        let QuorumView::Lost { .. } = self else { return None };
        let message = self.problem()?;
        let mut status: Status = StrataError::new(ErrorKind::Unavailable, message).into();
        status
            .metadata_mut()
            .insert(QUORUM_METADATA_KEY, tonic::metadata::AsciiMetadataValue::from_static(QUORUM_LOST));
        Some(status)
    }
}

/// Marks a not-the-leader answer that names no leader: the caller waits for the election.
pub(crate) fn mark_electing(status: &mut Status) {
    status
        .metadata_mut()
        .insert(QUORUM_METADATA_KEY, tonic::metadata::AsciiMetadataValue::from_static(QUORUM_ELECTING));
}

/// Since when this member has known no leader (on its clock); `None` while it knows one.
#[derive(Clone, Default)]
pub(crate) struct Leaderless(Arc<parking_lot::Mutex<Option<Instant>>>);

impl Leaderless {
    /// Follows the group's metrics until the group shuts down, noting when its leader goes
    /// unknown and when one is known again.
    pub(crate) fn watch(
        mut metrics: openraft::alias::WatchReceiverOf<MetaRaftConfig, openraft::RaftMetrics<MetaRaftConfig>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let leaderless = Leaderless::default();
        let since = leaderless.0.clone();
        tokio::spawn(async move {
            // The metrics change with every apply; the lock is taken only when a leader comes
            // or goes.
            let mut known_before = None;
            loop {
                let known = metrics.borrow_watched().current_leader.is_some();
                if known_before != Some(known) {
                    known_before = Some(known);
                    *since.lock() = (!known).then(|| clock.instant());
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        leaderless
    }

    /// How long this member has known no leader, as of `now`.
    pub(crate) fn for_how_long(&self, now: Instant) -> Option<Duration> {
        self.0.lock().map(|since| now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_quorum_refuses_calls() {
        let lost = QuorumView::Lost { silent: Duration::from_millis(2500), members: 3, leader: false };
        let refusal = lost.refusal().expect("a lost quorum refuses");
        assert_eq!(refusal.metadata().get(QUORUM_METADATA_KEY).and_then(|v| v.to_str().ok()), Some(QUORUM_LOST));
        assert_eq!(StrataError::from(refusal.clone()).kind, ErrorKind::Unavailable);
        assert!(
            refusal.message().contains("no leader has been seen of its 3 members for 2.5 s"),
            "{}",
            refusal.message()
        );
        for view in [QuorumView::Leads, QuorumView::Follows { leader: 2 }, QuorumView::Electing] {
            assert!(view.refusal().is_none(), "{view:?}");
        }
        assert!(QuorumView::Follows { leader: 2 }.serves() && !QuorumView::Electing.serves() && !lost.serves());
    }
}
