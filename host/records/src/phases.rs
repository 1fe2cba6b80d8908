//! Where a process's job time goes, by phase: the store, the workspace
//! (materialising, snapshots, diffs, rebuilds), artifacts and wasm
//! attempts. Each phase is a running total of wall time summed over every
//! job in the process (concurrent jobs add up), shown on `/metrics` as
//! `stepd_phase_seconds_total{phase}`; `stepd bench queue` divides the
//! growth over a burst by the burst's jobs for its per-job breakdown.
//! Process-wide because the crates that spend the time (store calls in the
//! worker, workspace calls in self-heal, artifact writes here) share
//! nothing else but this one.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A phase of a job's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting on the database.
    Store,
    /// Workspace directory and object-store work.
    Workspace,
    /// Writing the job's artifact directory.
    Artifacts,
    /// Step attempts: instantiate, run, tear down.
    Wasm,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 4] = [Phase::Store, Phase::Workspace, Phase::Artifacts, Phase::Wasm];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Store => "store",
            Phase::Workspace => "workspace",
            Phase::Artifacts => "artifacts",
            Phase::Wasm => "wasm",
        }
    }

    fn index(self) -> usize {
        match self {
            Phase::Store => 0,
            Phase::Workspace => 1,
            Phase::Artifacts => 2,
            Phase::Wasm => 3,
        }
    }
}

static NANOS: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Add `spent` to `phase`.
pub fn add(phase: Phase, spent: Duration) {
    let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
    NANOS[phase.index()].fetch_add(nanos, Ordering::Relaxed);
}

/// Run `work`, counting its time to `phase`.
pub fn timed<R>(phase: Phase, work: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = work();
    add(phase, started.elapsed());
    result
}

/// Await `work`, counting its time to `phase`.
pub async fn timed_async<F: Future>(phase: Phase, work: F) -> F::Output {
    let started = Instant::now();
    let result = work.await;
    add(phase, started.elapsed());
    result
}

/// Each phase's total so far.
pub fn totals() -> [(Phase, Duration); 4] {
    Phase::ALL.map(|phase| {
        (
            phase,
            Duration::from_nanos(NANOS[phase.index()].load(Ordering::Relaxed)),
        )
    })
}
