//! Workspace limits are the step's failure, never the host's. Given a job
//! whose step leaves its workspace over a limit — directories nested too
//! deep, a sparse file whose apparent size is over the byte quota, more
//! entries than the quota, a change too large to hold while its patch is
//! made — when the step ends and stepd snapshots the
//! workspace, then the attempt fails with its own outcome
//! (`workspace_limit`, naming the limit) as `deterministic_policy` without
//! reading the workspace's files, the job fails, and `stepd run` exits 1 —
//! not 5, the host-error code.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stepd_tests::cluster::repo_dir;
use stepd_tests::{plugin_dir, stepd_bin};

/// Run a one-step job with `step` through `stepd run` under `env`; returns
/// the exit code, the output and the job's events.
fn run_one_step(step: Value, env: &[(&str, &str)]) -> (Option<i32>, String, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("job.json");
    let payload = json!({"type": "task", "maxAttempts": 1, "task": {"repository": repo_dir(), "steps": [step]}});
    std::fs::write(&job, payload.to_string()).expect("payload");
    let mut command = Command::new(stepd_bin());
    command
        .args(["run", job.to_str().expect("utf-8"), "--job-id", "limited"])
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .env("STEPD_PLUGIN_DIR", plugin_dir())
        .env(
            "STEPD_CACHE_DIR",
            std::env::temp_dir().join("stepd-test-component-cache"),
        )
        .env_remove("STATSD_HOST");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("running stepd");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = std::fs::read_to_string(dir.path().join("artifacts/agent_jobs/limited/events.jsonl"))
        .expect("events")
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event"))
        .collect();
    (out.status.code(), printed, events)
}

/// The job ended as a `workspace_limit` policy failure whose reason holds
/// `expected`.
fn assert_limit_failure(code: Option<i32>, printed: &str, events: &[Value], expected: &str) {
    assert_eq!(code, Some(1), "{printed}");
    let named = |name: &str| events.iter().find(|e| e["event"] == name).cloned();
    let failed = named("task.step.attempt.failed").expect("the attempt failed");
    assert_eq!(failed["payload"]["outcome"], "workspace_limit");
    assert_eq!(failed["payload"]["failureClass"], "deterministic_policy");
    let ended = named("task.job.failed").expect("the job failed");
    assert_eq!(ended["payload"]["failureClass"], "deterministic_policy");
    let reason = ended["payload"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(expected), "{reason}");
    assert!(named("task.step.attempt.finished").is_none());
}

#[test]
fn a_step_that_nests_too_deep_fails_as_its_own_policy_failure() {
    let step = json!({"id": "dig", "plugin": "hostile", "inputs": {"probe": "deep", "depth": 300}});
    let (code, printed, events) = run_one_step(step, &[]);
    assert_limit_failure(code, &printed, &events, "nests deeper than 256 directories");
}

#[test]
fn a_sparse_file_over_the_byte_quota_fails_the_step_without_being_read() {
    let step = json!({"id": "inflate", "plugin": "hostile", "inputs": {"probe": "sparse", "gib": 2}});
    let started = Instant::now();
    let (code, printed, events) = run_one_step(step, &[("STEPD_WORKSPACE_LIMIT_MB", "1024")]);
    // Reading and hashing 2 GiB took the host most of a minute before.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_limit_failure(
        code,
        &printed,
        &events,
        "bytes (apparent size), over its limit of 1073741824",
    );
}

#[test]
fn more_entries_than_the_quota_fail_the_step() {
    let files: serde_json::Map<String, Value> = (0..30).map(|i| (format!("many/f{i:02}.txt"), json!("x\n"))).collect();
    let step = json!({"id": "spray", "plugin": "write-file", "inputs": {"files": files}});
    let (code, printed, events) = run_one_step(step, &[("STEPD_WORKSPACE_LIMIT_FILES", "20")]);
    assert_limit_failure(code, &printed, &events, "entries, over its limit of 20");
}

#[test]
fn a_change_too_large_to_diff_fails_the_step_before_its_patch_is_made() {
    // 80 MiB of incompressible bytes, under the workspace quota but over
    // the change limit: the patch would hold all of it at once.
    let step = json!({"id": "blob", "plugin": "hostile", "inputs": {"probe": "fill", "mb": 80}});
    let (code, printed, events) = run_one_step(step, &[("STEPD_WORKSPACE_LIMIT_CHANGE_MB", "64")]);
    assert_limit_failure(
        code,
        &printed,
        &events,
        "bytes of changed files (old and new sides), over its limit of 67108864",
    );
}
