//! Deadlines of one attempt: the wall deadline, the idle deadline (time since
//! the last output chunk or progress call) and the operator's cancel flag.
//!
//! Two paths enforce them, because neither alone stops every guest:
//! - the store's epoch-deadline callback runs [`AttemptClock::check`] every
//!   tick while guest code executes, trapping a CPU-bound guest;
//! - [`AttemptClock::watch`] is raced against the call on the tokio side,
//!   stopping a guest that is blocked in a host call (a WASI sleep or poll),
//!   where epochs never fire.
//!
//! Both compare real-clock [`Instant`]s, never tick counts (which drift).
//!
//! A third, the epoch ticker's thread, checks each attempt at its deadline
//! ([`DeadlineCheck`]) and decides the stop then, however long the
//! attempt's task waits for an async thread. The first of the three to see
//! a deadline passed latches the stop and its instant; the others answer
//! the latched stop from then on, so a decided attempt runs no more guest
//! code and reports the instant it was stopped, not the instant its task
//! got around to tearing it down.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::capture::ActivityClock;
use super::engine::{DeadlineCheck, Ticks};

/// Why the host stopped an attempt before it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The attempt ran past its wall-clock deadline.
    #[error("wall-clock deadline passed")]
    WallTimeout,
    /// The attempt produced no output and no progress for too long.
    #[error("idle deadline passed (no output or progress)")]
    IdleTimeout,
    /// An operator (or the host) cancelled the attempt.
    #[error("cancelled")]
    Cancelled,
}

/// How close to a deadline [`AttemptClock::watch`] switches from tokio's
/// timer (whole milliseconds, rounded up) to the epoch ticker's ticks.
const NEAR_DEADLINE: Duration = Duration::from_millis(2);

/// `at + after`, or a point a century away when that overflows: an absurd
/// timeout means "never", not a panic.
fn far_add(at: Instant, after: Duration) -> Instant {
    at.checked_add(after)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

/// The deadlines of one attempt, checked against the real clock.
#[derive(Debug)]
pub struct AttemptClock {
    wall_deadline: Instant,
    idle_timeout: Duration,
    activity: Arc<ActivityClock>,
    cancel: CancellationToken,
    ticks: Option<Arc<Ticks>>,
    stopped: OnceLock<(StopReason, Instant)>,
}

impl AttemptClock {
    /// Deadlines for an attempt that started when `activity` did.
    pub fn new(
        wall_timeout: Duration,
        idle_timeout: Duration,
        activity: Arc<ActivityClock>,
        cancel: CancellationToken,
    ) -> Self {
        AttemptClock {
            wall_deadline: far_add(activity.started(), wall_timeout),
            idle_timeout,
            activity,
            cancel,
            ticks: None,
            stopped: OnceLock::new(),
        }
    }

    /// Also wake on the epoch ticker's `ticks` when a deadline is near, for
    /// a stop at the deadline rather than within tokio's rounding (the
    /// ticker fires at the deadlines on its board).
    pub fn with_ticks(self, ticks: Arc<Ticks>) -> Self {
        AttemptClock {
            ticks: Some(ticks),
            ..self
        }
    }

    /// The instant the idle deadline falls on, given the activity so far.
    pub fn idle_deadline(&self) -> Instant {
        far_add(self.activity.last(), self.idle_timeout)
    }

    /// The instant the wall deadline falls on.
    pub fn wall_deadline(&self) -> Instant {
        self.wall_deadline
    }

    /// The decided stop, or decide it now if a deadline passed (or a
    /// cancel came) at `now`. Once decided, the answer never changes.
    pub fn stop_if_due(&self, now: Instant) -> Option<StopReason> {
        if let Some((reason, _)) = self.stopped.get() {
            return Some(*reason);
        }
        let reason = self.check(now)?;
        // Another path may have decided in between: its stop stands.
        let _ = self.stopped.set((reason, now));
        self.stopped.get().map(|(reason, _)| *reason)
    }

    /// The decided stop and the instant it was decided at.
    pub fn stopped(&self) -> Option<(StopReason, Instant)> {
        self.stopped.get().copied()
    }

    /// The nearer of the two deadlines.
    pub fn next_deadline(&self) -> Instant {
        self.wall_deadline.min(self.idle_deadline())
    }

    /// Whether a deadline or a cancel says stop at `now`: a cancel first,
    /// then the wall deadline, then the idle deadline. Decides nothing.
    pub fn check(&self, now: Instant) -> Option<StopReason> {
        if self.cancel.is_cancelled() {
            Some(StopReason::Cancelled)
        } else if now >= self.wall_deadline {
            Some(StopReason::WallTimeout)
        } else if now >= self.idle_deadline() {
            Some(StopReason::IdleTimeout)
        } else {
            None
        }
    }

    /// Resolves when the attempt must stop. Sleeps on tokio's timer until
    /// shortly before the nearer deadline, then on the epoch ticks, checking
    /// again each time (output may have moved the idle deadline).
    pub async fn watch(&self) -> StopReason {
        loop {
            let now = Instant::now();
            if let Some(reason) = self.stop_if_due(now) {
                return reason;
            }
            let next = self.next_deadline();
            let near = next.saturating_duration_since(now) <= NEAR_DEADLINE;
            match &self.ticks {
                Some(ticks) if near => {
                    // Listening before checking again: the tick the board
                    // fires at the deadline cannot slip between the two.
                    let notified = ticks.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if let Some(reason) = self.stop_if_due(Instant::now()) {
                        return reason;
                    }
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return StopReason::Cancelled,
                        () = &mut notified => {}
                        // Should the ticker stall: never later than tokio's timer.
                        () = tokio::time::sleep_until(next.into()) => {}
                    }
                }
                ticks => {
                    let until = if ticks.is_some() { next - NEAR_DEADLINE } else { next };
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return StopReason::Cancelled,
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                }
            }
        }
    }
}

impl DeadlineCheck for AttemptClock {
    fn check_at(&self, now: Instant) -> Option<Instant> {
        match self.stop_if_due(now) {
            Some(_) => None,
            None => Some(self.next_deadline()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(wall_ms: u64, idle_ms: u64) -> (AttemptClock, Arc<ActivityClock>, CancellationToken) {
        let activity = Arc::new(ActivityClock::new(Instant::now()));
        let cancel = CancellationToken::new();
        let clock = AttemptClock::new(
            Duration::from_millis(wall_ms),
            Duration::from_millis(idle_ms),
            activity.clone(),
            cancel.clone(),
        );
        (clock, activity, cancel)
    }

    #[test]
    fn cancel_wins_over_deadlines_and_wall_over_idle() {
        let (clock, activity, cancel) = clock(10, 10);
        let later = activity.started() + Duration::from_millis(20);
        assert_eq!(clock.check(later), Some(StopReason::WallTimeout));
        cancel.cancel();
        assert_eq!(clock.check(later), Some(StopReason::Cancelled));
    }

    #[test]
    fn activity_pushes_the_idle_deadline_back() {
        let (clock, activity, _cancel) = clock(10_000, 5);
        std::thread::sleep(Duration::from_millis(6));
        assert_eq!(clock.check(Instant::now()), Some(StopReason::IdleTimeout));
        activity.touch();
        assert_eq!(clock.check(Instant::now()), None);
    }

    #[tokio::test]
    async fn watch_resolves_on_the_idle_deadline_unless_output_arrives() {
        let (clock, activity, _cancel) = clock(10_000, 40);
        let toucher = {
            let activity = activity.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    activity.touch();
                }
            })
        };
        let reason = clock.watch().await;
        let elapsed = activity.started().elapsed();
        toucher.await.expect("toucher task");
        assert_eq!(reason, StopReason::IdleTimeout);
        // Five touches 20 ms apart keep it alive for at least ~100 ms.
        assert!(elapsed >= Duration::from_millis(100), "stopped after {elapsed:?}");
    }

    #[tokio::test]
    async fn watch_resolves_at_once_on_cancel() {
        let (clock, _activity, cancel) = clock(10_000, 10_000);
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cancel.cancel();
        });
        let reason = tokio::time::timeout(Duration::from_secs(5), clock.watch())
            .await
            .expect("cancel stops the watch");
        canceller.await.expect("canceller task");
        assert_eq!(reason, StopReason::Cancelled);
    }

    #[test]
    fn a_deadline_is_decided_on_time_while_every_async_thread_is_busy() {
        use crate::engine::{engine_config, EpochTicker};
        let settings = stepd_settings::RuntimeSettings::default();
        let engine = wasmtime::Engine::new(&engine_config(&settings).expect("config")).expect("engine");
        let ticker = EpochTicker::start(&engine, Duration::from_millis(10)).expect("ticker");
        let (clock, _activity, _cancel) = clock(30, 10_000);
        let clock = Arc::new(clock.with_ticks(ticker.ticks()));
        let board = Arc::downgrade(&clock) as std::sync::Weak<dyn DeadlineCheck>;
        let _watch = ticker.ticks().watch_deadlines(board, clock.next_deadline());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // The only async thread is held well past the deadline, as by
            // a thousand spinning guests: the watch runs 200 ms late.
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(clock.watch().await, StopReason::WallTimeout);
        });
        let (reason, at) = clock.stopped().expect("a decided stop");
        assert_eq!(reason, StopReason::WallTimeout);
        let late = at.saturating_duration_since(clock.wall_deadline());
        assert!(late < Duration::from_millis(20), "decided {late:?} after the deadline");
    }

    #[test]
    fn a_decided_stop_stands_whatever_comes_after() {
        let (clock, activity, cancel) = clock(10, 10_000);
        let later = activity.started() + Duration::from_millis(20);
        assert_eq!(clock.stop_if_due(activity.started()), None);
        assert_eq!(clock.stop_if_due(later), Some(StopReason::WallTimeout));
        cancel.cancel();
        assert_eq!(clock.stop_if_due(later), Some(StopReason::WallTimeout));
        assert_eq!(clock.stopped(), Some((StopReason::WallTimeout, later)));
    }
}
