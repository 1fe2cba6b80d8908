//! Secrets stay out of what the API and the workers write on an operator's
//! or a step's behalf. Given a server and workers that hold a granted
//! secret (a name that does not look secret, so only the grant marks it),
//! on both deployments:
//! - when an operator pauses and resumes a job with the secret in the
//!   reason, then the control-event rows, the `task.control` events and
//!   the job's live control show it redacted;
//! - when a step fails with the secret in its error, then the job's
//!   `lastError` shows it redacted;
//! - and no file, database row or log line holds it.

use std::time::Duration;

use serde_json::{json, Value};
use stepd_tests::cluster::{task, write_step, Cluster, Mode};
use stepd_tests::files_holding;

const LONG: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_reason_and_a_steps_error_reach_no_record_with_a_secret_in_them() {
    let secret = "mc-7f3e9a1b2c4d5e6f";
    for mode in Mode::BOTH {
        let cluster = Cluster::start_with(
            mode,
            1,
            0,
            &[
                ("STEPD_GRANT_SECRETS", "MODEL_CREDENTIAL"),
                ("MODEL_CREDENTIAL", secret),
            ],
        )
        .await;
        // An operator's reason.
        let id = cluster
            .submit(&task(1, vec![write_step("slow", "a.txt", "a\n", 1500)], json!({})))
            .await;
        cluster.wait_event(&id, "task.step.attempt.started", 1, LONG).await;
        let reason = format!("the key {secret} leaked into a log");
        let (status, body) = cluster.control(&id, json!({"action": "pause", "reason": reason})).await;
        assert_eq!(status, 200, "{mode:?}: {body}");
        let (status, body) = cluster
            .control(&id, json!({"action": "resume", "reason": reason}))
            .await;
        assert_eq!(status, 200, "{mode:?}: {body}");
        let job = cluster.wait_status(&id, "succeeded", LONG).await;
        let rows = job["controlEvents"].as_array().cloned().unwrap_or_default();
        assert_eq!(rows.len(), 2, "{mode:?}: {job}");
        for row in &rows {
            assert_eq!(row["reason"], "the key [REDACTED] leaked into a log", "{mode:?}: {row}");
        }
        let events = cluster.events(&id).await;
        assert!(
            events
                .iter()
                .any(|e| e.to_string().contains("the key [REDACTED] leaked")),
            "{mode:?}: the reason is in an event, redacted"
        );

        // A step's error.
        let bad = json!({"id": "bad", "plugin": "hostile",
                         "inputs": {"probe": "leak", "env": "MODEL_CREDENTIAL"},
                         "capabilities": {"secrets": ["MODEL_CREDENTIAL"]}});
        let failed = cluster.submit(&task(1, vec![bad], json!({}))).await;
        let job = cluster
            .wait_job(&failed, "failed", LONG, |j| j["status"] == "failed")
            .await;
        let last_error = job["lastError"].as_str().unwrap_or_default().to_owned();
        assert!(last_error.contains("[REDACTED]"), "{mode:?}: {last_error}");

        // Nowhere else either.
        let everything: Value = json!([job, events, cluster.job(&id).await]);
        assert!(!everything.to_string().contains(secret), "{mode:?}: {everything}");
        let leaked = files_holding(cluster.dir(), secret);
        assert!(leaked.is_empty(), "{mode:?}: the secret is in {leaked:?}");
        assert!(!cluster.server.log().contains(secret), "{mode:?}: the server logged it");
        let (holding, read) = cluster.tables_holding(secret).await;
        assert!(holding.is_empty(), "{mode:?}: rows of {holding:?} hold it");
        if mode == Mode::Scale {
            assert!(read >= 5, "{mode:?}: only {read} tables read");
        }
        cluster.shutdown().await;
    }
}
