//! A host's capacity is never a step's failure. Given a runtime with two
//! instance slots, when six attempts of a step that sleeps start at once,
//! then every one of them runs in its turn and ends by its own idle
//! deadline — none fails to instantiate (`maximum concurrent limit`), none
//! is charged for waiting; and an attempt cancelled while it waits for a
//! slot ends `cancelled` without starting.

use std::time::{Duration, Instant};

use serde_json::json;
use stepd_runtime::{AttemptLimits, AttemptOutcome, AttemptRequest, CancellationToken, Runtime};
use stepd_settings::RuntimeSettings;
use stepd_tests::{context, load, test_settings, Scratch};

fn sleeping(scratch: &Scratch, cancel: CancellationToken) -> AttemptRequest {
    AttemptRequest {
        workspace: scratch.workspace(),
        context: context(1, json!({"attempts": [1], "mode": "sleep"})),
        limits: AttemptLimits::new(Duration::from_secs(30), Duration::from_millis(300)),
        cancel,
        grants: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_attempts_on_two_slots_each_run_in_turn_and_end_by_their_own_deadline() {
    let rt = std::sync::Arc::new(
        Runtime::new(RuntimeSettings {
            pool_slots: 2,
            ..test_settings()
        })
        .expect("runtime"),
    );
    let hang = load(&rt, "hang");
    let scratches: Vec<Scratch> = (0..6).map(|_| Scratch::new()).collect();
    let started = Instant::now();
    let mut runs = Vec::new();
    for scratch in &scratches {
        let (rt, hang, request) = (rt.clone(), hang.clone(), sleeping(scratch, CancellationToken::new()));
        runs.push(tokio::spawn(async move { rt.run_attempt(&hang, request).await }));
    }
    for run in runs {
        let report = run.await.expect("join").expect("the attempt runs");
        assert_eq!(report.outcome, AttemptOutcome::IdleTimeout, "{}", report.outcome);
        // Waiting for a slot is not charged to the attempt.
        assert!(report.wall_clock_seconds < 1.0, "{}", report.wall_clock_seconds);
    }
    // Three turns of two 300 ms attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );

    // Both slots busy: a third attempt waits, and a cancel ends it unstarted.
    let busy: Vec<_> = scratches[..2]
        .iter()
        .map(|s| {
            let (rt, hang, request) = (rt.clone(), hang.clone(), sleeping(s, CancellationToken::new()));
            tokio::spawn(async move { rt.run_attempt(&hang, request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cancel = CancellationToken::new();
    let waiting = {
        let (rt, hang, request) = (rt.clone(), hang.clone(), sleeping(&scratches[2], cancel.clone()));
        tokio::spawn(async move { rt.run_attempt(&hang, request).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel.cancel();
    let report = waiting.await.expect("join").expect("the attempt ends");
    assert_eq!(report.outcome, AttemptOutcome::Cancelled);
    assert_eq!(report.wall_clock_seconds, 0.0, "it never started");
    for run in busy {
        let report = run.await.expect("join").expect("runs");
        assert_eq!(report.outcome, AttemptOutcome::IdleTimeout);
    }
}
