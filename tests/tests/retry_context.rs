//! The retry context reaches the guest on the step's next attempt wherever
//! that attempt runs. Given a `flaky` step that fails its first three
//! attempts, three attempts per job attempt and two job attempts, on both
//! deployments (two workers each): when the third failure sends the job
//! back to the queue, then the fourth attempt — the first of the next job
//! attempt, on whichever worker claims it — is told about the third
//! failure, as the second and third were told about theirs.

use std::time::Duration;

use serde_json::json;
use stepd_tests::cluster::{task, Cluster, Mode};

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
            let start = format!("=== attempt {n} ===");
            let from = log
                .find(&start)
                .unwrap_or_else(|| panic!("{mode:?}: no attempt {n} in:\n{log}"));
            let rest = &log[from + start.len()..];
            rest[..rest.find("=== attempt").unwrap_or(rest.len())].to_owned()
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
