//! The retry context reaches the guest on the step's next attempt wherever
//! and however that attempt comes about, on both deployments:
//! - given a `flaky` step that fails its first three attempts, three
//!   attempts per job attempt and two job attempts (two workers): when the
//!   third failure sends the job back to the queue, then the fourth attempt
//!   — the first of the next job attempt, on whichever worker claims it —
//!   is told about the third failure, as the second and third were told
//!   about theirs;
//! - given a step that failed once and is busy in its second attempt: when
//!   an operator presses `retry_step`, the attempt that replaces it is told
//!   the step's last failure; when instead the worker running it is killed,
//!   the attempt another worker runs after the lease expired is told it.

use std::time::Duration;

use serde_json::json;
use stepd_tests::cluster::{task, Cluster, Mode};

const LONG: Duration = Duration::from_secs(90);

/// The text of attempt `n` in a step log (`None` when it has none).
fn attempt_text(log: &str, n: u32) -> Option<String> {
    let start = format!("=== attempt {n} ===");
    let from = log.find(&start)?;
    let rest = &log[from + start.len()..];
    Some(rest[..rest.find("=== attempt").unwrap_or(rest.len())].to_owned())
}

/// What the flaky plugin logs when told about attempt 1's failure.
const TOLD_ABOUT_ONE: &str =
    "retry context: transient_runtime after \"Attempt 1 of step flaky (plugin flaky) step error (retry): \
                              temporary failure on attempt 1";

/// A flaky step that fails attempt 1 and spends `sleep_ms` in attempt 2
/// before it succeeds.
fn busy_second_attempt(sleep_ms: u64) -> serde_json::Value {
    let step = json!({"id": "flaky", "plugin": "flaky",
                      "inputs": {"failAttempts": 1, "sleepOnAttempt": 2, "sleepMs": sleep_ms}});
    task(
        2,
        vec![step],
        json!({"stepMaxAttempts": 3, "stepIdleTimeoutSeconds": 60}),
    )
}

async fn second_attempt_running(cluster: &Cluster, id: &str) {
    cluster.wait_event(id, "task.step.attempt.started", 2, LONG).await;
    // Past its start, into its work.
    tokio::time::sleep(Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_retry_step_tells_the_new_attempt_the_steps_last_failure() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 1, 0).await;
        let id = cluster.submit(&busy_second_attempt(60_000)).await;
        second_attempt_running(&cluster, &id).await;
        let (status, body) = cluster
            .control(
                &id,
                json!({"action": "retry_step", "stepId": "flaky", "reason": "try again"}),
            )
            .await;
        assert_eq!(status, 200, "{mode:?}: {body}");
        cluster.wait_status(&id, "succeeded", LONG).await;
        let log = cluster.artifact_text(&id, "logs/steps/step-0000.log").await;
        let third = attempt_text(&log, 3).unwrap_or_else(|| panic!("{mode:?}: no attempt 3 in:\n{log}"));
        assert!(
            third.contains(TOLD_ABOUT_ONE),
            "{mode:?}: attempt 3 was not told:\n{log}"
        );
        assert!(
            cluster
                .event_names(&id)
                .await
                .iter()
                .any(|n| n == "task.control.recovery.ack"),
            "{mode:?}: the worker acknowledged the retry"
        );
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_by_another_worker_tells_its_attempt_the_steps_last_failure() {
    for mode in Mode::BOTH {
        let mut cluster = Cluster::start(mode, 0, 1).await;
        let id = cluster.submit(&busy_second_attempt(6_000)).await;
        second_attempt_running(&cluster, &id).await;
        cluster.workers[0].kill();
        cluster.spawn_worker();
        cluster.wait_status(&id, "succeeded", LONG).await;
        let names = cluster.event_names(&id).await;
        assert!(
            names.iter().any(|n| n == "task.job.lease_expired"),
            "{mode:?}: the job moved by lease expiry: {names:?}"
        );
        // The killed attempt left no record; the last attempt in the log is
        // the one the second worker ran.
        let log = cluster.artifact_text(&id, "logs/steps/step-0000.log").await;
        // The text after the last attempt's opening line.
        let last = log
            .lines()
            .rev()
            .take_while(|line| !line.starts_with("=== attempt ") || line.contains(':'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !log.is_empty() && last.contains(TOLD_ABOUT_ONE),
            "{mode:?}: the new worker's attempt was not told:\n{log}\nevents: {names:?}\njob: {}",
            cluster.job(&id).await
        );
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_retry_tells_the_next_attempt_what_failed_on_any_worker() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start_with(mode, 2, 0, &[]).await;
        let step = json!({"id": "flaky", "plugin": "flaky", "inputs": {"failAttempts": 3}});
        let id = cluster
            .submit(&task(2, vec![step], json!({"stepMaxAttempts": 3})))
            .await;
        cluster.wait_status(&id, "succeeded", Duration::from_secs(90)).await;
        let names = cluster.event_names(&id).await;
        assert_eq!(
            names.iter().filter(|n| *n == "task.job.started").count(),
            2,
            "{mode:?}: the third failure sent the job back to the queue: {names:?}"
        );
        let log = cluster.artifact_text(&id, "logs/steps/step-0000.log").await;
        let attempt = |n: u32| -> String {
            attempt_text(&log, n).unwrap_or_else(|| panic!("{mode:?}: no attempt {n} in:\n{log}"))
        };
        assert!(
            !attempt(1).contains("retry context"),
            "{mode:?}: attempt 1 was told something:\n{log}"
        );
        for n in 2..=4 {
            let m = n - 1;
            let told = format!(
                "retry context: transient_runtime after \"Attempt {m} of step flaky (plugin flaky) step error (retry): \
                 temporary failure on attempt {m}"
            );
            assert!(attempt(n).contains(&told), "{mode:?}: attempt {n} was not told:\n{log}");
        }
        cluster.shutdown().await;
    }
}
