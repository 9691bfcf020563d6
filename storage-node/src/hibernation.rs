//! Idle shards sleep (see `docs/elasticity.md`): a shard whose leader saw no call for
//! [`ShardLogSettings::hibernate_after`](crate::shard::ShardLogSettings::hibernate_after) and
//! whose timers have no work proposes [`Command::Hibernate`]; every replica that applies it
//! stops its Raft ticker (no heartbeats, no election timer) and its per-shard timers, which wait
//! until it wakes, and drops its caches (the decoded recent log entries, up to 8 MiB; a
//! scheduled slice's records). Its queues' state stays in memory: waking costs no election and
//! no reload.
//!
//! # What wakes a shard
//!
//! * A call routed to it (the gRPC service notes every call on a replica): the leader proposes
//!   the call as usual, and its entry wakes the followers as they apply it. Raft needs no ticker
//!   to replicate or to confirm a leader's reads, so the first call is served at once.
//! * Any entry after the `Hibernate` entry, applied by any replica (a new leader's first entry
//!   too).
//! * No leader known to a sleeping replica (a follower that missed the `Hibernate` entry made
//!   its leader step down, say): it wakes to elect one.
//! * Its leader's node losing its lease in metadata (seen in this node's heartbeats): the
//!   followers wake, so that one of them is elected, as if the shard had never slept.
//! * Work for its timers arriving just before it slept (a move task started, scheduled messages
//!   coming due, messages past retention): one timer per shard keeps watch while it sleeps.
//!
//! A replica opened again (a restart) starts awake; its shard hibernates again once idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata_common::ClockExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::queue::Command;
use crate::shard::{HIBERNATION_GENERATION, Shard};

/// How often a shard looks whether it may hibernate (or, asleep, whether scheduled messages
/// come due).
const HIBERNATE_TICK: Duration = Duration::from_secs(1);
/// How long the proposal of a hibernation may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a replica of a shard sleeps, and when it last served a call.
pub struct Hibernation {
    shard_id: u64,
    /// Starts or stops the replica's Raft ticker.
    set_tick: Box<dyn Fn(bool) + Send + Sync>,
    /// Drops what the replica keeps in memory only to be faster.
    drop_caches: Box<dyn Fn() + Send + Sync>,
    asleep: watch::Sender<bool>,
    /// Held while the flag and the ticker change together, so that a sleep and a wake racing
    /// never leave the ticker off under an awake flag.
    switching: parking_lot::Mutex<()>,
    last_call_ms: AtomicU64,
}

impl Hibernation {
    pub(crate) fn new(
        shard_id: u64,
        set_tick: Box<dyn Fn(bool) + Send + Sync>,
        drop_caches: Box<dyn Fn() + Send + Sync>,
        now_ms: u64,
    ) -> Self {
        let (asleep, _) = watch::channel(false);
        let switching = parking_lot::Mutex::new(());
        Self { shard_id, set_tick, drop_caches, asleep, switching, last_call_ms: AtomicU64::new(now_ms) }
    }

    pub fn is_asleep(&self) -> bool {
        *self.asleep.borrow()
    }

    /// Stops the Raft ticker and the timers, and drops the caches (nothing when asleep
    /// already).
    pub(crate) fn sleep(&self) {
        let _switching = self.switching.lock();
        if self.asleep.send_if_modified(|asleep| !std::mem::replace(asleep, true)) {
            (self.set_tick)(false);
            (self.drop_caches)();
            tracing::info!(shard = self.shard_id, "shard hibernates");
        }
    }

    /// Starts the Raft ticker and the timers again (nothing when awake).
    pub(crate) fn wake(&self, why: &str) {
        // Every call and every apply asks: an awake replica answers without the lock. One
        // falling asleep meanwhile is woken by the call's own entry.
        if !self.is_asleep() {
            return;
        }
        let _switching = self.switching.lock();
        if self.asleep.send_if_modified(|asleep| std::mem::replace(asleep, false)) {
            (self.set_tick)(true);
            tracing::info!(shard = self.shard_id, why, "shard wakes");
        }
    }

    /// A call reached the replica at `now_ms`: it wakes, and its idle time starts over.
    pub(crate) fn note_call(&self, now_ms: u64) {
        self.last_call_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.wake("a call");
    }

    /// How long the replica has served no call.
    fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_call_ms.load(Ordering::Relaxed))
    }

    /// Returns once the replica is awake.
    pub(crate) async fn until_awake(&self) {
        let mut asleep = self.asleep.subscribe();
        // The sender lives as long as `self`.
        let _ = asleep.wait_for(|asleep| !*asleep).await;
    }
}

/// On every replica: while awake and leading, proposes a hibernation once the shard has been idle
/// for `after` with no timed work; while asleep, wakes it when its timers have work or it knows
/// no leader. Does nothing when `after` is zero.
pub(crate) async fn hibernate_loop(shard: Arc<Shard>, after: Duration, cancel: CancellationToken) {
    if after.is_zero() {
        return;
    }
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = shard.clock().sleep(HIBERNATE_TICK) => {}
        }
        let now_ms = shard.now_ms();
        let hibernation = shard.hibernation();
        if hibernation.is_asleep() {
            if shard.state().0.has_timed_work(now_ms) {
                hibernation.wake("its timers have work");
            } else if !shard.leader_known() {
                hibernation.wake("no leader is known");
            }
            continue;
        }
        let busy = shard.state().0.has_timed_work(now_ms) || shard.moves_replicas();
        // Older releases cannot read the entry: a cluster hibernates once it writes generation 10.
        let readable = shard.log_format().writing() >= HIBERNATION_GENERATION;
        if !shard.is_leader() || !readable || hibernation.idle_ms(now_ms) < after_ms || busy {
            continue;
        }
        match shard.clock().timeout(PROPOSE_TIMEOUT, shard.propose(Command::Hibernate)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(shard = shard.shard_id, error = %e, "the shard did not hibernate"),
            Err(_) => tracing::debug!(shard = shard.shard_id, "the shard's hibernation timed out"),
        }
    }
}
