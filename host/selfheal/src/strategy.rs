//! The strategy ladder (docs/ARCHITECTURE.md#strategy-ladder) and the no-progress rule:
//! given what happened, what self-heal does next. Pure, so every rung is
//! unit-tested.

use super::classify::FailureClass;

/// The closed set of things self-heal can do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A fresh instance, same workspace.
    SoftReset,
    /// A fresh instance on a workspace rebuilt from baseline + patches.
    HardReset,
    /// Give up on this job attempt; the queue retries the job later.
    QueueRetry,
    /// A deterministic failure: the job fails.
    Fail,
    /// A cancel was requested: the job stops.
    Cancel,
}

impl Strategy {
    /// The name events, artifacts and metric tags use.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::SoftReset => "soft_reset",
            Strategy::HardReset => "hard_reset",
            Strategy::QueueRetry => "queue_retry",
            Strategy::Fail => "fail",
            Strategy::Cancel => "cancel",
        }
    }
}

/// What self-heal knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput {
    /// A cancel is pending.
    pub cancel_requested: bool,
    /// The failed attempt's class (already `stuck_no_progress` when the
    /// no-progress rule tripped).
    pub class: FailureClass,
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// The step's attempt budget.
    pub step_max_attempts: u32,
    /// Hard resets the job may still spend.
    pub resets_left: u32,
}

/// Walk the ladder: cancel → deterministic fail → hard reset (stuck, a
/// reset and an attempt left) → soft reset (an attempt left) → queue retry.
pub fn decide(input: DecisionInput) -> Strategy {
    let attempts_left = input.attempt < input.step_max_attempts;
    if input.cancel_requested {
        Strategy::Cancel
    } else if input.class.is_deterministic() {
        Strategy::Fail
    } else if input.class == FailureClass::StuckNoProgress && input.resets_left > 0 && attempts_left {
        Strategy::HardReset
    } else if attempts_left {
        Strategy::SoftReset
    } else {
        Strategy::QueueRetry
    }
}

/// Tracks the run of identical failures of one step. Two failed attempts
/// are identical when both their fingerprints and their diff hashes match
/// (two "changed nothing" diffs match). A success ends the run.
#[derive(Debug, Default, Clone)]
pub struct NoProgressTracker {
    last: Option<(String, Option<String>)>,
    run: u32,
}

impl NoProgressTracker {
    /// Record a failed attempt; returns the length of the current run of
    /// identical failures (1 for a failure unlike the previous one).
    pub fn record_failure(&mut self, fingerprint: &str, diff_hash: Option<&str>) -> u32 {
        let key = (fingerprint.to_owned(), diff_hash.map(str::to_owned));
        if self.last.as_ref() == Some(&key) {
            self.run += 1;
        } else {
            self.run = 1;
            self.last = Some(key);
        }
        self.run
    }

    /// A success: the next failure starts a new run.
    pub fn record_success(&mut self) {
        self.last = None;
        self.run = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(class: FailureClass, attempt: u32) -> DecisionInput {
        DecisionInput {
            cancel_requested: false,
            class,
            attempt,
            step_max_attempts: 3,
            resets_left: 1,
        }
    }

    #[test]
    fn the_ladder_is_walked_in_order() {
        use FailureClass::*;
        assert_eq!(
            decide(DecisionInput {
                cancel_requested: true,
                ..input(DeterministicRepo, 1)
            }),
            Strategy::Cancel
        );
        assert_eq!(decide(input(DeterministicContract, 1)), Strategy::Fail);
        assert_eq!(decide(input(DeterministicPolicy, 1)), Strategy::Fail);
        assert_eq!(decide(input(StuckNoProgress, 2)), Strategy::HardReset);
        assert_eq!(
            decide(DecisionInput {
                resets_left: 0,
                ..input(StuckNoProgress, 2)
            }),
            Strategy::SoftReset
        );
        assert_eq!(decide(input(StuckNoProgress, 3)), Strategy::QueueRetry);
        assert_eq!(decide(input(TransientRuntime, 1)), Strategy::SoftReset);
        assert_eq!(decide(input(TransientRuntime, 3)), Strategy::QueueRetry);
    }

    #[test]
    fn identical_failures_make_a_run_that_a_change_or_a_success_breaks() {
        let mut t = NoProgressTracker::default();
        assert_eq!(t.record_failure("a", None), 1);
        assert_eq!(t.record_failure("a", None), 2);
        assert_eq!(t.record_failure("a", Some("d1")), 1, "the workspace changed: progress");
        assert_eq!(t.record_failure("a", Some("d1")), 2);
        assert_eq!(t.record_failure("b", Some("d1")), 1, "a different failure: progress");
        t.record_success();
        assert_eq!(t.record_failure("b", Some("d1")), 1);
    }
}
