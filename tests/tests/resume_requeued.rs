//! `resume_from_step` on a job no worker is running goes the way it goes on
//! a running job, as the quickstart shows it, on both deployments (a
//! server without workers, separate `stepd worker` processes):
//! - given a 5-step job whose steps write, rewrite and delete files, and
//!   whose third step fails its first attempt: when its worker is killed
//!   between that attempt and the next, and the job is back in the queue,
//!   and an operator asks to resume from `step-3`,
//! - then the job record and the heartbeat of whoever holds the job next
//!   show the request in `liveControl.recovery`; a new worker rebuilds the
//!   workspace from the baseline and the two checkpoints, says
//!   `task.resume.from_step`, acknowledges with
//!   `task.control.recovery.ack`, goes on at `step-3`, and the job ends
//!   with the same workspace as a run nobody interrupted; the request has
//!   its control-event row and no request is left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stepd_store::{ClaimedBy, Store};
use stepd_tests::cluster::{task, write_step, Cluster, Mode, WORKER_TOKEN};
use stepd_tests::files_under;

const LONG: Duration = Duration::from_secs(90);

/// Five steps: write, write, fail once then write, rewrite, delete.
fn five_steps() -> Value {
    let steps = vec![
        write_step("step-1", "a.txt", "one\n", 0),
        json!({"id": "step-2", "plugin": "write-file",
               "inputs": {"files": {"b.txt": "two\n", "gone.txt": "soon deleted\n"}}}),
        // Attempt 1 fails; attempt 2 works a while first, time for the
        // kill to land between the two.
        json!({"id": "step-3", "plugin": "flaky",
               "inputs": {"failAttempts": 1, "sleepOnAttempt": 2, "sleepMs": 3000, "path": "c.txt"}}),
        write_step("step-4", "a.txt", "one, rewritten\n", 0),
        json!({"id": "step-5", "plugin": "write-file", "inputs": {"delete": ["gone.txt"]}}),
    ];
    task(3, steps, json!({"stepMaxAttempts": 3, "stepIdleTimeoutSeconds": 30}))
}

/// The names of events from `first` on, each with its step id when it has one.
fn named(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["payload"]["stepId"].as_str() {
            Some(step) => format!("{} {step}", e["event"].as_str().unwrap_or_default()),
            None => e["event"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// Claim the job as a stand-in worker once it is due, read its heartbeat
/// through the API, and hand it back: what the next worker is told.
async fn heartbeat_of_the_next_holder(cluster: &Cluster, id: &str) -> Value {
    let store = Store::open(&cluster.store_url())
        .await
        .expect("open the cluster's store");
    let by = ClaimedBy {
        owner: "probe-worker".into(),
        lease: Duration::from_secs(5),
    };
    let start = Instant::now();
    while store.claim_job(id, &by).await.expect("claim").is_none() {
        assert!(start.elapsed() < LONG, "job {id} never became claimable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = reqwest::Client::new()
        .post(format!("{}/api/queue/jobs/{id}/heartbeat", cluster.url))
        .bearer_auth(WORKER_TOKEN)
        .json(&json!({"workerId": "probe-worker"}))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("heartbeat json");
    assert!(store.release(id, "probe-worker").await.expect("release"), "handed back");
    store.close().await;
    body
}

fn workspace_files(job: &Value) -> std::collections::BTreeMap<String, Vec<u8>> {
    files_under(Path::new(job["workspace"].as_str().expect("workspace path")), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_step_on_a_requeued_job_is_acted_on_and_acknowledged_by_the_next_worker() {
    for mode in Mode::BOTH {
        let mut cluster = Cluster::start(mode, 0, 1).await;
        let id = cluster.submit(&five_steps()).await;
        cluster.wait_event(&id, "task.step.attempt.failed", 1, LONG).await;
        cluster.workers[0].kill();
        // The lease expires and the sweep puts the job back in the queue.
        cluster.wait_status(&id, "queued", LONG).await;

        let (status, body) = cluster
            .control(
                &id,
                json!({"action": "resume_from_step", "stepId": "step-3", "reason": "after the crash"}),
            )
            .await;
        assert_eq!(status, 200, "{mode:?}: {body}");
        let job = cluster.job(&id).await;
        let recovery = &job["payload"]["liveControl"]["recovery"];
        assert_eq!(
            (&recovery["action"], &recovery["stepId"], &job["resumeFromStep"]),
            (&json!("resume_from_step"), &json!("step-3"), &json!(2)),
            "{mode:?}: the job record shows the request: {job:#}"
        );
        let beat = heartbeat_of_the_next_holder(&cluster, &id).await;
        assert_eq!(
            beat["payload"]["liveControl"]["recovery"], *recovery,
            "{mode:?}: the heartbeat tells the next worker"
        );

        cluster.spawn_worker();
        let job = cluster.wait_status(&id, "succeeded", LONG).await;
        let events = cluster.events(&id).await;
        let names = named(&events);
        let control = names
            .iter()
            .position(|n| n == "task.control step-3")
            .unwrap_or_else(|| panic!("{mode:?}: no task.control event: {names:?}"));
        let after: Vec<&str> = names[control..].iter().map(String::as_str).collect();
        assert_eq!(
            after[..5],
            [
                "task.control step-3",
                "task.resume.from_step step-3",
                "task.control.recovery.ack step-3",
                "task.job.started",
                "task.step.attempt.started step-3",
            ],
            "{mode:?}: {names:?}"
        );
        assert!(
            names[..control].iter().any(|n| n == "task.job.lease_expired"),
            "{mode:?}: the kill showed as an expired lease first: {names:?}"
        );
        let ack = events
            .iter()
            .find(|e| e["event"] == "task.control.recovery.ack")
            .expect("ack");
        assert_eq!(ack["payload"]["action"], "resume_from_step");
        let resumed = events
            .iter()
            .find(|e| e["event"] == "task.resume.from_step")
            .expect("resume");
        assert_eq!(
            (&resumed["payload"]["stepIndex"], &resumed["payload"]["patchesReplayed"]),
            (&json!(2), &json!(2))
        );
        let starts: Vec<&str> = events
            .iter()
            .filter(|e| e["event"] == "task.step.attempt.started")
            .map(|e| e["payload"]["stepId"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            starts.iter().filter(|s| **s == "step-1" || **s == "step-2").count(),
            2,
            "{mode:?}: steps 1 and 2 ran once, their checkpoints replayed: {starts:?}"
        );
        let rows = job["controlEvents"].as_array().expect("control rows");
        assert_eq!(rows.len(), 1, "{mode:?}: {rows:?}");
        assert_eq!(
            (&rows[0]["action"], &rows[0]["stepId"], &rows[0]["reason"]),
            (&json!("resume_from_step"), &json!("step-3"), &json!("after the crash"))
        );
        assert!(
            job["payload"]["liveControl"]["recovery"].is_null() && job["resumeFromStep"].is_null(),
            "{mode:?}: nothing left pending: {job:#}"
        );

        // The same job, never interrupted, ends with the same files.
        let calm = cluster.submit(&five_steps()).await;
        let calm = cluster.wait_status(&calm, "succeeded", LONG).await;
        let (resumed_files, calm_files) = (workspace_files(&job), workspace_files(&calm));
        assert_eq!(
            (
                resumed_files.get("a.txt").map(Vec::as_slice),
                resumed_files.contains_key("c.txt"),
                resumed_files.contains_key("gone.txt"),
            ),
            (Some(&b"one, rewritten\n"[..]), true, false),
            "{mode:?}: every step's change is there: {:?}",
            resumed_files.keys()
        );
        assert_eq!(
            resumed_files, calm_files,
            "{mode:?}: same workspace as an uninterrupted run"
        );
        cluster.shutdown().await;
    }
}
