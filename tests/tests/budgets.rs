//! `JOB_SELF_HEAL_MAX_RESETS` is a budget per job, not per claim. Given a
//! step that always fails the same way, a budget of one hard reset and two
//! job attempts served by two workers, on both deployments: the first job
//! attempt spends the hard reset, the second (on whichever worker claims
//! it) gets none, and the job is dead-lettered with exactly one
//! `task.self_heal.escalated` in its history.

use std::time::Duration;

use serde_json::json;
use stepd_tests::cluster::{task, Cluster, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_reset_budget_holds_across_queue_retries_and_workers() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start_with(mode, 2, 0, &[("JOB_SELF_HEAL_MAX_RESETS", "1")]).await;
        let lint = json!({"id": "lint", "title": "fails the same way", "plugin": "no-progress"});
        let id = cluster
            .submit(&task(
                2,
                vec![lint],
                json!({"stepMaxAttempts": 3, "stepNoProgressLimit": 2}),
            ))
            .await;
        let job = cluster.wait_status(&id, "dead_letter", Duration::from_secs(90)).await;
        let names = cluster.event_names(&id).await;
        let escalations = names.iter().filter(|n| *n == "task.self_heal.escalated").count();
        let job_starts = names.iter().filter(|n| *n == "task.job.started").count();
        assert_eq!(job_starts, 2, "{mode:?}: two job attempts ran: {names:?}");
        assert_eq!(
            escalations, 1,
            "{mode:?}: one hard reset for the whole job: {names:?}\n{job}"
        );
        cluster.shutdown().await;
    }
}
