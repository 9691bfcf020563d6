//! The clock seam. Production code asks a [`Clock`] for the time, and sleeps, waits with a
//! deadline and ticks through it, instead of calling `SystemTime::now`, `Instant::now` or
//! `tokio::time` directly (clippy's `disallowed-methods` enforces this), so tests and
//! simulations can drive time by hand.
//!
//! Two kinds of time cross the seam: wall-clock milliseconds ([`Clock::now_ms`], for timestamps
//! that are stored or compared across processes) and a monotonic [`Instant`]
//! ([`Clock::instant`], for measuring how long something took and for deadlines within one
//! process). Sleeping is on the monotonic time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A sleep handed out by a [`Clock`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Wall-clock time, monotonic time and sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Monotonic time, for durations and deadlines within this process.
    fn instant(&self) -> Instant;

    /// A future that completes once `duration` of monotonic time has passed.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// What [`ClockExt::timeout`] returns when the deadline passes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline passed")]
pub struct TimedOut;

/// Helpers every clock has, built on [`Clock::instant`] and [`Clock::sleep`].
pub trait ClockExt: Clock {
    /// Sleeps until `deadline` (returns at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        self.sleep(deadline.saturating_duration_since(self.instant()))
    }

    /// Runs `future` for at most `limit`; [`TimedOut`] if the limit passes first (the future is
    /// dropped).
    fn timeout<F: Future>(&self, limit: Duration, future: F) -> Timeout<F> {
        Timeout { future, sleep: self.sleep(limit) }
    }

    /// Ticks every `period`, the first tick after one period. A tick that comes late (the
    /// caller was busy) does not make the following ticks come early: the next one is a period
    /// after the late one.
    fn interval(&self, period: Duration) -> Interval
    where
        Self: Sized + Clone,
    {
        Interval { clock: Arc::new(self.clone()), period, next: self.instant() + period }
    }
}

impl<C: Clock + ?Sized> ClockExt for C {}

pin_project_lite::pin_project! {
    /// A future bounded by a deadline (see [`ClockExt::timeout`]); the future runs in place.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        this.sleep.as_mut().poll(cx).map(|()| Err(TimedOut))
    }
}

/// Ticks at a fixed period on a clock (see [`ClockExt::interval`]).
pub struct Interval {
    clock: Arc<dyn Clock>,
    period: Duration,
    next: Instant,
}

impl Interval {
    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        self.clock.sleep_until(self.next).await;
        self.next = self.clock.instant().max(self.next) + self.period;
    }
}

/// A shared clock is a clock (so `Arc<dyn Clock>` has [`ClockExt`]'s helpers too).
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }

    fn instant(&self) -> Instant {
        (**self).instant()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        (**self).sleep(duration)
    }
}

/// The operating system's clock, sleeping through tokio's timer (so a test that pauses tokio's
/// time pauses this clock's monotonic time and sleeps too).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        #[allow(clippy::disallowed_methods)] // the one place that reads the real wall clock
        let now = SystemTime::now();
        // A clock before 1970 is a broken machine; report the epoch rather than panic.
        now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn instant(&self) -> Instant {
        #[allow(clippy::disallowed_methods)] // the one place that reads the real monotonic clock
        tokio::time::Instant::now().into_std()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        // Tokio's timer wakes on millisecond ticks: a zero sleep (a deadline already passed)
        // would wait for the next one. It completes at once instead.
        if duration.is_zero() {
            return Box::pin(std::future::ready(()));
        }
        #[allow(clippy::disallowed_methods)] // the one place that sleeps on the real timer
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The operating system's clock shifted by a fixed offset: a process that must run at another
/// time than now (a test opening a data directory written months ago, whose messages would
/// otherwise have expired) starts at a chosen time and then advances in real time. Only the
/// wall-clock time is shifted.
#[derive(Debug, Clone, Copy)]
pub struct ShiftedClock {
    offset_ms: i64,
}

impl ShiftedClock {
    /// A clock that reads `start_ms` now.
    pub fn starting_at(start_ms: u64) -> Self {
        let now_ms = SystemClock.now_ms();
        Self { offset_ms: start_ms as i64 - now_ms as i64 }
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.offset_ms)
    }

    fn instant(&self) -> Instant {
        SystemClock.instant()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        SystemClock.sleep(duration)
    }
}

/// A clock moved by hand (tests, simulation). Wall-clock and monotonic time start at the given
/// points and move only when told to; a sleep completes when [`ManualClock::advance_ms`] carries
/// monotonic time past its deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
    /// Monotonic time is `origin` plus this many milliseconds; sleepers watch it.
    elapsed_ms: Arc<tokio::sync::watch::Sender<u64>>,
    origin: Instant,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(0)
    }
}

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        #[allow(clippy::disallowed_methods)] // any fixed origin serves; monotonic time is relative
        let origin = Instant::now();
        Self {
            now_ms: Arc::new(AtomicU64::new(now_ms)),
            elapsed_ms: Arc::new(tokio::sync::watch::Sender::new(0)),
            origin,
        }
    }

    /// Moves wall-clock and monotonic time forward, waking the sleeps whose deadline passed.
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
        self.elapsed_ms.send_modify(|elapsed| *elapsed += delta_ms);
    }

    /// Sets wall-clock time (which may go backwards, as a real one can); monotonic time stays.
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_millis(*self.elapsed_ms.borrow())
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn instant(&self) -> Instant {
        self.origin + self.elapsed()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let deadline = self.elapsed().saturating_add(duration);
        let mut elapsed = self.elapsed_ms.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if every handle is gone, nothing will ever
            // advance it and the sleep never ends, as a real sleep on a stopped clock would not.
            if elapsed.wait_for(|now_ms| Duration::from_millis(*now_ms) >= deadline).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_system_sleep_until_a_passed_deadline_ends_at_once() {
        // Not on the timer's next millisecond tick: paced loops (strata bench) issue work
        // whose time has come without waiting.
        let mut sleep = SystemClock.sleep_until(SystemClock.instant());
        assert!(poll_once(&mut sleep).await.is_some());
        let mut zero = SystemClock.sleep(Duration::ZERO);
        assert!(poll_once(&mut zero).await.is_some());
    }

    #[tokio::test]
    async fn manual_sleep_ends_only_when_time_is_advanced_past_its_deadline() {
        let clock = ManualClock::new(1_000);
        let start = clock.instant();
        let mut sleep = clock.sleep(Duration::from_millis(100));
        assert!(poll_once(&mut sleep).await.is_none());
        clock.advance_ms(99);
        assert!(poll_once(&mut sleep).await.is_none());
        clock.advance_ms(1);
        sleep.await;
        assert_eq!(clock.instant() - start, Duration::from_millis(100));
        assert_eq!(clock.now_ms(), 1_100);
    }

    #[tokio::test]
    async fn manual_timeout_reports_timed_out_when_the_clock_passes_the_limit() {
        let clock = ManualClock::new(0);
        let waiting = clock.timeout(Duration::from_millis(50), std::future::pending::<()>());
        let advancer = clock.clone();
        let handle = tokio::spawn(async move {
            tokio::task::yield_now().await;
            advancer.advance_ms(50);
        });
        assert_eq!(waiting.await, Err(TimedOut));
        handle.await.expect("advancer");
        assert_eq!(clock.timeout(Duration::from_millis(50), async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn manual_interval_ticks_once_per_period() {
        let clock = ManualClock::new(0);
        let mut ticks = clock.interval(Duration::from_millis(10));
        let mut first = Box::pin(ticks.tick());
        assert!(poll_once(&mut first).await.is_none());
        clock.advance_ms(10);
        first.await;
        // A tick taken late (25 ms in) sets the next one a period after it, not at 20 ms.
        clock.advance_ms(15);
        ticks.tick().await;
        let mut third = Box::pin(ticks.tick());
        clock.advance_ms(9);
        assert!(poll_once(&mut third).await.is_none());
        clock.advance_ms(1);
        third.await;
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_tokio_time() {
        let start = SystemClock.instant();
        SystemClock.sleep(Duration::from_secs(3600)).await;
        assert!(SystemClock.instant() - start >= Duration::from_secs(3600));
    }

    /// Polls a future once: `Some` if it completed.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match Pin::new(&mut *future).poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
