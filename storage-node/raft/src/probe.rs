//! The Raft figures of `/metrics` (groups, apply lag, groups led or without a leader, leader
//! changes), read from every open
//! group of this process when a scrape asks, so that no apply pays for them.
//!
//! Each [`RaftGroup`](crate::group::RaftGroup) holds its probe; the process-wide list keeps
//! weak references, so a closed group drops out of the next scrape by itself.

use std::sync::{Arc, Mutex, Once, PoisonError, Weak};

use openraft::async_runtime::WatchReceiver;
use openraft::{LogIdOptionExt, RaftTypeConfig, ServerState};
use strata_telemetry::GroupLabel;

/// What one group reports at a scrape.
pub(crate) struct Sample {
    group: &'static str,
    apply_lag_entries: u64,
    leads: bool,
    leader_known: bool,
    /// Leaders elected since the last scrape, as this member saw them.
    new_leaders: u64,
}

pub(crate) trait Probe: Send + Sync {
    fn sample(&self) -> Sample;
}

/// A term and the leader known in it.
type TermLeader<C> = (<C as RaftTypeConfig>::Term, Option<<C as RaftTypeConfig>::NodeId>);

/// The probe of one group: its metrics channel, and the leader it last reported.
pub(crate) struct GroupProbe<C: RaftTypeConfig> {
    group: &'static str,
    metrics: openraft::alias::WatchReceiverOf<C, openraft::RaftMetrics<C>>,
    last_term_led: Mutex<Option<TermLeader<C>>>,
}

impl<C: RaftTypeConfig> Probe for GroupProbe<C> {
    fn sample(&self) -> Sample {
        let metrics = self.metrics.borrow_watched();
        let apply_lag_entries = metrics.local_committed.next_index().saturating_sub(metrics.last_applied.next_index());
        let leader = (metrics.current_term, metrics.current_leader.clone());
        let mut last = self.last_term_led.lock().unwrap_or_else(PoisonError::into_inner);
        let new_leaders = u64::from(leader.1.is_some() && last.as_ref() != Some(&leader));
        *last = Some(leader);
        Sample {
            group: self.group,
            apply_lag_entries,
            leads: metrics.state == ServerState::Leader,
            leader_known: metrics.current_leader.is_some(),
            new_leaders,
        }
    }
}

/// One kind of group's figures summed.
#[derive(Default)]
struct Totals {
    group: &'static str,
    groups: u64,
    apply_lag_entries: u64,
    led: u64,
    without_leader: u64,
}

static PROBES: Mutex<Vec<Weak<dyn Probe>>> = Mutex::new(Vec::new());
static SAMPLER: Once = Once::new();

/// Adds a group's probe to the scrape, for as long as the returned handle lives.
pub(crate) fn watch<C: RaftTypeConfig>(
    group: &'static str,
    metrics: openraft::alias::WatchReceiverOf<C, openraft::RaftMetrics<C>>,
) -> Arc<dyn Probe> {
    SAMPLER.call_once(|| strata_telemetry::add_sampler(sample_all));
    // The leader known at opening is not a change this process saw.
    let known = {
        let now = metrics.borrow_watched();
        now.current_leader.is_some().then(|| (now.current_term, now.current_leader.clone()))
    };
    let probe: Arc<dyn Probe> = Arc::new(GroupProbe::<C> { group, metrics, last_term_led: Mutex::new(known) });
    PROBES.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&probe));
    probe
}

/// Sums every live group's figures by kind of group into the Raft gauges.
fn sample_all() {
    let live: Vec<Arc<dyn Probe>> = {
        let mut probes = PROBES.lock().unwrap_or_else(PoisonError::into_inner);
        probes.retain(|p| p.strong_count() > 0);
        probes.iter().filter_map(Weak::upgrade).collect()
    };
    let raft = strata_telemetry::raft();
    let mut totals: Vec<Totals> = Vec::new();
    for sample in live.iter().map(|p| p.sample()) {
        raft.leader_changes.get_or_create(&GroupLabel { group: sample.group }).inc_by(sample.new_leaders);
        let at = match totals.iter().position(|t| t.group == sample.group) {
            Some(at) => at,
            None => {
                totals.push(Totals { group: sample.group, ..Totals::default() });
                totals.len() - 1
            }
        };
        let total = &mut totals[at];
        total.groups += 1;
        total.apply_lag_entries += sample.apply_lag_entries;
        total.led += u64::from(sample.leads);
        total.without_leader += u64::from(!sample.leader_known);
    }
    // Kinds of group with no group left drop out rather than keep their last figures.
    for family in [&raft.groups, &raft.apply_lag_entries, &raft.groups_led, &raft.groups_without_leader] {
        family.clear();
    }
    for total in totals {
        let label = GroupLabel { group: total.group };
        raft.groups.get_or_create(&label).set(total.groups as i64);
        raft.apply_lag_entries.get_or_create(&label).set(total.apply_lag_entries as i64);
        raft.groups_led.get_or_create(&label).set(total.led as i64);
        raft.groups_without_leader.get_or_create(&label).set(total.without_leader as i64);
    }
}
