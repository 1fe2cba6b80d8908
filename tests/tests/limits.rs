//! Workspace limits are the step's failure, never the host's. Given a job
//! whose step nests directories deeper than the workspace allows, when the
//! step ends and stepd snapshots the workspace, then the attempt fails with
//! its own outcome (`workspace_limit`, naming the limit) as
//! `deterministic_policy`, the job fails, and `stepd run` exits 1 — not 5,
//! the host-error code.

use std::process::Command;

use serde_json::{json, Value};
use stepd_tests::cluster::repo_dir;
use stepd_tests::{plugin_dir, stepd_bin};

#[test]
fn a_step_that_nests_too_deep_fails_as_its_own_policy_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("deep.json");
    let payload = json!({"type": "task", "maxAttempts": 1, "task": {
        "repository": repo_dir(),
        "steps": [{"id": "dig", "plugin": "hostile", "inputs": {"probe": "deep", "depth": 300}}]
    }});
    std::fs::write(&job, payload.to_string()).expect("payload");
    let out = Command::new(stepd_bin())
        .args(["run", job.to_str().expect("utf-8"), "--job-id", "deep"])
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .env("STEPD_PLUGIN_DIR", plugin_dir())
        .env(
            "STEPD_CACHE_DIR",
            std::env::temp_dir().join("stepd-test-component-cache"),
        )
        .env_remove("STATSD_HOST")
        .output()
        .expect("running stepd");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{printed}");

    let events: Vec<Value> = std::fs::read_to_string(dir.path().join("artifacts/agent_jobs/deep/events.jsonl"))
        .expect("events")
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event"))
        .collect();
    let named = |name: &str| events.iter().find(|e| e["event"] == name).cloned();
    let failed = named("task.step.attempt.failed").expect("the attempt failed");
    assert_eq!(failed["payload"]["outcome"], "workspace_limit");
    assert_eq!(failed["payload"]["failureClass"], "deterministic_policy");
    let ended = named("task.job.failed").expect("the job failed");
    assert_eq!(ended["payload"]["failureClass"], "deterministic_policy");
    let reason = ended["payload"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("nests deeper than 256 directories"), "{reason}");
    assert!(named("task.step.attempt.finished").is_none());
}
