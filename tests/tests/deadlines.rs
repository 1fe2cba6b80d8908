//! Scenarios: a step that hangs (spinning on the CPU or sleeping in WASI)
//! or goes silent is stopped by its wall or idle deadline, the host tears
//! the instance down, and the next attempt is a fresh instance.

use std::time::Duration;

use serde_json::json;
use stepd_runtime::{AttemptLimits, AttemptOutcome, AttemptRequest, CancellationToken};
use stepd_tests::{attempt, context, load, runtime, Scratch};

const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(60);
/// Loose on purpose: CI machines are shared. The benchmark measures the
/// real lateness (about a millisecond).
const LATE_BOUND: f64 = 0.25;

fn assert_stopped_near_deadline(report: &stepd_runtime::AttemptReport, expected: &AttemptOutcome) {
    assert_eq!(&report.outcome, expected, "report: {report:?}");
    let overrun = report
        .deadline_overrun_seconds
        .expect("a deadline stop reports its overrun");
    assert!(overrun < LATE_BOUND, "stopped {overrun:.3}s after the deadline");
    assert!(
        report.wall_clock_seconds < LATE_BOUND + 0.2 + SHORT.as_secs_f64() + 1.0,
        "report: {report:?}"
    );
}

#[tokio::test]
async fn given_a_cpu_spinning_step_when_the_wall_deadline_passes_then_it_is_stopped_as_wall_timeout() {
    let rt = runtime();
    let hang = load(&rt, "hang");
    let scratch = Scratch::new();
    let report = attempt(
        &rt,
        &hang,
        &scratch.workspace(),
        1,
        json!({"attempts": [1], "mode": "spin"}),
        SHORT,
        LONG,
    )
    .await;
    assert_stopped_near_deadline(&report, &AttemptOutcome::WallTimeout);
    assert!(
        report.wall_clock_seconds >= SHORT.as_secs_f64(),
        "stopped before the deadline: {report:?}"
    );
    let fuel = report.fuel_consumed.expect("fuel is metered by default");
    assert!(fuel > 1_000_000, "a spinning guest burns fuel: {fuel}");
}

#[tokio::test]
async fn given_a_sleeping_step_when_the_wall_deadline_passes_then_it_is_stopped_as_wall_timeout() {
    let rt = runtime();
    let hang = load(&rt, "hang");
    let scratch = Scratch::new();
    let report = attempt(
        &rt,
        &hang,
        &scratch.workspace(),
        1,
        json!({"attempts": [1], "mode": "sleep"}),
        SHORT,
        LONG,
    )
    .await;
    assert_stopped_near_deadline(&report, &AttemptOutcome::WallTimeout);
    assert!(report.wall_clock_seconds >= SHORT.as_secs_f64());
}

#[tokio::test]
async fn given_a_cpu_spinning_step_when_it_stays_silent_then_the_idle_deadline_stops_it() {
    let rt = runtime();
    let hang = load(&rt, "hang");
    let scratch = Scratch::new();
    let report = attempt(
        &rt,
        &hang,
        &scratch.workspace(),
        1,
        json!({"attempts": [1], "mode": "spin"}),
        LONG,
        SHORT,
    )
    .await;
    assert_stopped_near_deadline(&report, &AttemptOutcome::IdleTimeout);
    assert!(
        report.idle_seconds >= SHORT.as_secs_f64(),
        "idle for {}s",
        report.idle_seconds
    );
    assert!(
        report.output.text().contains("hanging (spin)"),
        "output before the hang is kept: {:?}",
        report.output
    );
}

#[tokio::test]
async fn given_a_step_that_prints_then_sleeps_when_it_goes_silent_then_the_idle_deadline_stops_it() {
    let rt = runtime();
    let idle = load(&rt, "idle");
    let scratch = Scratch::new();
    let report = attempt(
        &rt,
        &idle,
        &scratch.workspace(),
        1,
        json!({"attempts": [1]}),
        LONG,
        SHORT,
    )
    .await;
    assert_stopped_near_deadline(&report, &AttemptOutcome::IdleTimeout);
    let text = report.output.text();
    assert_eq!(
        text.lines().count(),
        3,
        "the three lines printed before going silent: {text:?}"
    );
}

#[tokio::test]
async fn given_a_step_that_keeps_printing_when_it_runs_past_the_idle_timeout_then_it_is_not_stopped() {
    let rt = runtime();
    let chatty = load(&rt, "chatty");
    let scratch = Scratch::new();
    // Prints every 30 ms for 1 s; the idle timeout is 200 ms.
    let report = attempt(
        &rt,
        &chatty,
        &scratch.workspace(),
        1,
        json!({"intervalMs": 30, "durationMs": 1000}),
        LONG,
        SHORT,
    )
    .await;
    assert!(report.outcome.is_success(), "report: {:?}", report.outcome);
    assert!(
        report.wall_clock_seconds >= 1.0,
        "ran its full second: {}",
        report.wall_clock_seconds
    );
    assert!(
        report.output.chunks.len() >= 10,
        "kept printing: {} chunks",
        report.output.chunks.len()
    );
}

#[tokio::test]
async fn given_any_stop_when_the_next_attempt_runs_then_it_is_a_fresh_instance_that_succeeds() {
    let rt = runtime();
    let hang = load(&rt, "hang");
    let scratch = Scratch::new();
    let inputs = json!({"attempts": [1, 2], "mode": "spin"});
    let first = attempt(&rt, &hang, &scratch.workspace(), 1, inputs.clone(), SHORT, LONG).await;
    assert_eq!(first.outcome, AttemptOutcome::WallTimeout);
    let second = attempt(
        &rt,
        &hang,
        &scratch.workspace(),
        2,
        json!({"attempts": [1, 2], "mode": "sleep"}),
        LONG,
        SHORT,
    )
    .await;
    assert_eq!(second.outcome, AttemptOutcome::IdleTimeout);
    let third = attempt(&rt, &hang, &scratch.workspace(), 3, inputs, LONG, LONG).await;
    match &third.outcome {
        // The guest counts `run` calls in a static: 1 proves no state
        // survived from the two stopped instances.
        AttemptOutcome::Succeeded { summary, .. } => {
            assert!(summary.contains("runs in this instance: 1"), "summary: {summary}")
        }
        other => panic!("attempt 3 should succeed, got {other}"),
    }
}

#[tokio::test]
async fn given_a_hanging_step_when_it_is_cancelled_then_it_stops_at_once_as_cancelled() {
    let rt = runtime();
    let hang = load(&rt, "hang");
    let scratch = Scratch::new();
    for mode in ["spin", "sleep"] {
        let cancel = CancellationToken::new();
        let request = AttemptRequest {
            workspace: scratch.workspace(),
            context: context(1, json!({"attempts": [1], "mode": mode})),
            limits: AttemptLimits::new(LONG, LONG),
            cancel: cancel.clone(),
            grants: stepd_runtime::AttemptGrants::default(),
        };
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let report = rt.run_attempt(&hang, request).await.expect("attempt set up");
        canceller.await.expect("canceller");
        assert_eq!(report.outcome, AttemptOutcome::Cancelled, "mode {mode}");
        assert!(
            report.wall_clock_seconds < 2.0,
            "mode {mode}: cancel took {}s",
            report.wall_clock_seconds
        );
    }
}
