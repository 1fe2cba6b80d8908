//! Artifacts are shared in a multi-host deployment. Given `stepd serve`
//! with its own data directory and a `stepd worker` with another (two
//! hosts, as far as the files go) on PostgreSQL + RabbitMQ, when a job
//! whose steps write files, fail once and retry runs on that worker, then
//! every artifact the worker wrote — patches, states, attempt records, step
//! logs, the event log up to the job's last event — is listed by the API
//! and downloads with exactly the bytes the worker wrote, though the
//! server's disk holds none of them.

use std::time::Duration;

use serde_json::{json, Value};
use stepd_tests::cluster::{task, write_step, Cluster, Mode};
use stepd_tests::files_under;

const LONG: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_artifact_a_worker_on_another_host_wrote_downloads_through_the_api() {
    let mut cluster = Cluster::start(Mode::Scale, 0, 0).await;
    let worker_data = cluster.dir().join("worker-host");
    cluster.spawn_worker_with(&[("STEPD_DATA_DIR", worker_data.to_str().expect("utf-8"))]);
    let steps = vec![
        write_step("one", "a.txt", "1\n", 0),
        json!({"id": "two", "plugin": "flaky", "inputs": {"failAttempts": 1, "path": "b.txt"}}),
        json!({"id": "three", "plugin": "write-file", "inputs": {"files": {"a.txt": "one, again\n"}}}),
    ];
    let id = cluster.submit(&task(1, steps, json!({"stepMaxAttempts": 3}))).await;
    cluster.wait_status(&id, "succeeded", LONG).await;

    let written = files_under(&worker_data.join("artifacts/agent_jobs").join(&id), &[]);
    let listed: Value = cluster
        .request(reqwest::Method::GET, &format!("/api/queue/jobs/{id}/artifacts"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let listed: Vec<(String, u64)> = listed["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap_or_default().to_owned(),
                a["size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = written.iter().map(|(p, b)| (p.clone(), b.len() as u64)).collect();
    assert_eq!(listed, expected, "the API lists what the worker wrote");
    for wanted in [
        "events.jsonl",
        "logs/steps/step-0001.log",
        "patches/steps/step-0002.patch",
        "state/steps/step-0000.json",
        "state/self_heal/attempt-0001-0001.json",
    ] {
        assert!(
            written.contains_key(wanted),
            "the worker wrote {wanted}: {:?}",
            written.keys()
        );
    }
    for (path, bytes) in &written {
        let response = cluster
            .request(reqwest::Method::GET, &format!("/api/queue/jobs/{id}/artifacts/{path}"))
            .send()
            .await
            .expect("download");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let served = response.bytes().await.expect("bytes");
        assert_eq!(
            served.as_ref(),
            bytes.as_slice(),
            "{path} as served differs from what the worker wrote"
        );
    }
    let events = String::from_utf8_lossy(&written["events.jsonl"]).into_owned();
    assert!(
        events.lines().last().is_some_and(|l| l.contains("task.job.succeeded")),
        "the event log ends with the job's last event:\n{events}"
    );
    assert!(
        !cluster.data_dir.join("artifacts/agent_jobs").join(&id).exists(),
        "the server's own disk holds none of the job's artifacts"
    );
    cluster.shutdown().await;
}
