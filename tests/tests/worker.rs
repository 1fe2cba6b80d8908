//! The service worker runs the job the API resolved at submit, as stored.
//! Given a job the store holds no resolved form of (queued by a stepd from
//! before the store kept them), the worker resolves it once itself; given a
//! resolved job whose plugin is not on this host, the job fails before any
//! step runs, naming the plugin.

use std::time::Duration;

use serde_json::json;
use stepd_store::JobState;
use stepd_tests::cluster::repo_dir;
use stepd_tests::inproc::InProcessWorker;

fn two_writes() -> serde_json::Value {
    json!([
        {"id": "one", "plugin": "write-file", "inputs": {"path": "one.txt", "text": "1\n"}},
        {"id": "two", "plugin": "write-file", "inputs": {"path": "two.txt", "text": "2\n"}}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_resolved_form_is_resolved_on_the_worker_and_runs() {
    let worker = InProcessWorker::start(Duration::from_millis(200)).await;
    let payload = json!({"type": "task", "task": {"repository": repo_dir(), "steps": two_writes()}});
    worker.insert("legacy", payload, None).await;
    let job = worker.wait_end("legacy", Duration::from_secs(60), |_| {}).await;
    let written = std::fs::read_to_string(worker.workspace("legacy").join("two.txt"));
    worker.stop().await;
    assert_eq!(job.status, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(written.expect("two.txt in the workspace"), "2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_plugin_missing_on_the_worker_fails_the_job_before_any_step() {
    let worker = InProcessWorker::start(Duration::from_millis(200)).await;
    // Resolved against a plugin copy that is gone by the time the job runs.
    let plugin = worker.dir().join("write-file.wasm");
    std::fs::copy(stepd_tests::plugin_path("write-file"), &plugin).expect("copy the plugin");
    let steps = json!([
        {"id": "one", "plugin": "write-file", "inputs": {"path": "one.txt", "text": "1\n"}},
        {"id": "two", "plugin": {"path": "write-file.wasm"}, "inputs": {"path": "two.txt", "text": "2\n"}}
    ]);
    let payload = json!({"type": "task", "task": {"repository": repo_dir(), "steps": steps}});
    let resolved = worker.resolve(&payload);
    std::fs::remove_file(&plugin).expect("remove the plugin");
    worker.insert("moved", payload, Some(resolved)).await;
    let job = worker.wait_end("moved", Duration::from_secs(60), |_| {}).await;
    let events = worker.store.events_after("moved", 0, 100).await.expect("events");
    let workspace = worker.workspace("moved");
    // The check comes before the workspace is even materialised.
    let nothing_written = worker.dir().is_dir() && !workspace.join("one.txt").exists();
    worker.stop().await;
    assert_eq!(job.status, JobState::Failed);
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.contains("plugin write-file of step two is not on this host"),
        "{error}"
    );
    assert!(
        !events.iter().any(|e| e.event == "task.step.attempt.started"),
        "no step ran: {:?}",
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>()
    );
    assert!(nothing_written, "step one wrote nothing");
}
