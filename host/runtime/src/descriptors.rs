//! The process's file descriptors, shared between attempts and the host.
//!
//! Every handle a guest holds (an open file or directory, a stream) is an
//! entry in its store's resource table, and an open file or directory is a
//! host descriptor. Two bounds keep a guest from starving the process:
//! each attempt's table is capped at `RuntimeSettings::handles_limit`
//! (past it, the guest traps and the attempt ends `handle_limit`), and
//! the attempts running at once may together claim no more than the
//! process's descriptor limit minus [`DESCRIPTOR_RESERVE`], which stays
//! for the API, the store, the broker connection, git and the artifacts.
//! An attempt that would overdraw the budget waits for one to finish.

use std::sync::{Arc, OnceLock};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors never handed to attempts: room for the host's own work
/// (connections, the SQLite file and journal, git objects, artifacts,
/// scan threads) however many attempts run.
pub const DESCRIPTOR_RESERVE: u64 = 512;

/// The fewest handles an attempt may be given: a step's standard streams,
/// its workspace and a few files.
pub const MIN_HANDLES_PER_ATTEMPT: usize = 16;

/// Raise the process's soft descriptor limit to its hard limit, so the
/// budget is as large as the operator allowed. Returns the soft limit now
/// in force (`None`: unlimited). Call once at start-up, before anything
/// opens many files.
pub fn raise_descriptor_limit() -> std::io::Result<Option<u64>> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// The soft descriptor limit in force (`None`: unlimited).
pub fn descriptor_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// The descriptors attempts may hold together, and each attempt's share.
#[derive(Debug, Clone)]
pub(crate) struct DescriptorBudget {
    permits: Arc<Semaphore>,
    per_attempt: usize,
}

/// One budget per process, however many runtimes it builds: descriptors
/// are a process resource.
static PROCESS_BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// Descriptors attempts may share under `process_limit`.
fn budget_size(process_limit: Option<u64>) -> usize {
    process_limit
        .map_or(u64::MAX, |limit| limit.saturating_sub(DESCRIPTOR_RESERVE))
        .min(Semaphore::MAX_PERMITS as u64) as usize
}

impl DescriptorBudget {
    /// The process's budget (`process_limit - DESCRIPTOR_RESERVE`, fixed by
    /// the first runtime), of which each attempt claims `handles_limit`, or
    /// its share when `slots` attempts at once would overdraw the budget
    /// (never fewer than [`MIN_HANDLES_PER_ATTEMPT`]): a host configured to
    /// run a thousand steps runs them all, each with fewer handles, rather
    /// than a few with many while the rest wait. `None` when the process
    /// cannot spare even [`MIN_HANDLES_PER_ATTEMPT`].
    pub(crate) fn for_process(process_limit: Option<u64>, handles_limit: usize, slots: usize) -> Option<Self> {
        let permits = PROCESS_BUDGET.get_or_init(|| Arc::new(Semaphore::new(budget_size(process_limit))));
        Self::within(permits.clone(), process_limit, handles_limit, slots)
    }

    fn within(permits: Arc<Semaphore>, process_limit: Option<u64>, handles_limit: usize, slots: usize) -> Option<Self> {
        let budget = budget_size(process_limit);
        if budget < MIN_HANDLES_PER_ATTEMPT {
            return None;
        }
        let share = budget / slots.max(1);
        Some(DescriptorBudget {
            permits,
            per_attempt: handles_limit.min(share).clamp(MIN_HANDLES_PER_ATTEMPT, budget),
        })
    }

    /// A budget of its own (tests).
    #[cfg(test)]
    fn new(process_limit: Option<u64>, handles_limit: usize, slots: usize) -> Option<Self> {
        let permits = Arc::new(Semaphore::new(budget_size(process_limit)));
        Self::within(permits, process_limit, handles_limit, slots)
    }

    /// The handles one attempt may hold.
    pub(crate) fn per_attempt(&self) -> usize {
        self.per_attempt
    }

    /// The descriptors not claimed by a running attempt.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Claim one attempt's share, waiting while running attempts hold the
    /// rest; released when the permit drops.
    pub(crate) async fn claim(&self) -> OwnedSemaphorePermit {
        let wanted = u32::try_from(self.per_attempt).unwrap_or(u32::MAX);
        match self.permits.clone().acquire_many_owned(wanted).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("the descriptor budget is never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_the_reserve_and_shrinks_a_share_that_would_not_fit() {
        let budget = DescriptorBudget::new(Some(20_000), 1024, 1).expect("room");
        assert_eq!(budget.per_attempt(), 1024);
        assert_eq!(budget.available(), 20_000 - DESCRIPTOR_RESERVE as usize);
        let small = DescriptorBudget::new(Some(DESCRIPTOR_RESERVE + 100), 1024, 1).expect("room");
        assert_eq!(small.per_attempt(), 100);
        assert!(DescriptorBudget::new(Some(DESCRIPTOR_RESERVE + 10), 1024, 1).is_none());
        assert!(DescriptorBudget::new(Some(100), 1024, 1).is_none());
    }

    #[test]
    fn a_thousand_slots_share_the_budget_so_all_of_them_fit_at_once() {
        let budget = DescriptorBudget::new(Some(20_000), 1024, 1000).expect("room");
        assert_eq!(budget.per_attempt(), 19);
        assert!(budget.per_attempt() * 1000 <= budget.available());
        // Never below the floor: past it, attempts wait instead.
        let crowded = DescriptorBudget::new(Some(20_000), 1024, 100_000).expect("room");
        assert_eq!(crowded.per_attempt(), MIN_HANDLES_PER_ATTEMPT);
    }

    #[tokio::test]
    async fn attempts_past_the_budget_wait_for_a_running_one_to_finish() {
        let budget = DescriptorBudget::new(Some(DESCRIPTOR_RESERVE + 2048), 1024, 1).expect("room");
        let first = budget.claim().await;
        let _second = budget.claim().await;
        assert_eq!(budget.available(), 0);
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), budget.claim()).await;
        assert!(third.is_err(), "a third attempt would overdraw the budget");
        drop(first);
        let third = tokio::time::timeout(std::time::Duration::from_secs(5), budget.claim()).await;
        assert!(third.is_ok(), "a finished attempt hands its share on");
    }
}
