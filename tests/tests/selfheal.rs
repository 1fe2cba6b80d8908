//! Scenarios of the attempt loop over real git repositories and real
//! plugins: soft resets on idle and wall timeouts, a no-progress step
//! escalating to a hard reset, deterministic failures, replay of
//! checkpoints (and a tampered one), budgets, and secrets kept out of
//! every artifact, event and log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use stepd_job::payload::JobPayload;
use stepd_records::events::{EventObserver, EventRecord};
use stepd_records::redact::Redactor;
use stepd_runtime::{CancellationToken, Runtime};
use stepd_selfheal::{run_local, JobStatus, LocalRun, LocalRunOptions};
use stepd_settings::Settings;
use stepd_tests::{files_under, git, git_repo, plugin_dir, test_settings, StatsdListener};

struct Harness {
    dir: tempfile::TempDir,
    statsd: StatsdListener,
}

struct Finished {
    status: JobStatus,
    job_dir: PathBuf,
    workspace: PathBuf,
    events: Vec<Value>,
    metrics: Vec<String>,
}

const BASELINE: &[(&str, &str)] = &[
    ("README.md", "# project\n"),
    ("src/lib.rs", "pub fn answer() -> u32 { 42 }\n"),
];

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        git_repo(&dir.path().join("repo"), BASELINE);
        Harness {
            dir,
            statsd: StatsdListener::bind(),
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn payload(&self, steps: Value, self_heal: Value, max_attempts: u32) -> Value {
        json!({
            "type": "task",
            "maxAttempts": max_attempts,
            "task": {
                "objective": "exercise self-heal",
                "repository": self.repo().to_str().expect("utf-8"),
                "startingBranch": "main",
                "steps": steps,
                "selfHeal": self_heal,
            }
        })
    }

    async fn run(&self, payload: Value) -> Finished {
        self.run_with(payload, Arc::new(Redactor::from_env()), None).await
    }

    async fn run_with(&self, payload: Value, redactor: Arc<Redactor>, observer: Option<EventObserver>) -> Finished {
        let job = JobPayload::parse(&payload.to_string())
            .and_then(|p| {
                p.validate(
                    self.dir.path(),
                    &plugin_dir(),
                    &stepd_job::payload::HostGrants::local_default(),
                )
            })
            .expect("valid payload");
        let mut settings = Settings::from_lookup(|_| None).expect("default settings");
        settings.runtime = test_settings();
        settings.statsd = Some(self.statsd.target());
        settings.retry.base_seconds = 0;
        let runtime = Runtime::new(settings.runtime.clone()).expect("runtime");
        let options = LocalRunOptions {
            artifact_root: self.dir.path().join("artifacts"),
            work_root: self.dir.path().join("work"),
            job_id: "job-under-test".into(),
        };
        let local = LocalRun {
            runtime: &runtime,
            settings: &settings,
            redactor,
            cancel: CancellationToken::new(),
            observer,
        };
        let status = run_local(local, job, &options).await.expect("the job runs to an end");
        let job_dir = options.artifact_root.join("agent_jobs/job-under-test");
        let events = std::fs::read_to_string(job_dir.join("events.jsonl"))
            .expect("event log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("event JSON"))
            .collect();
        Finished {
            status,
            job_dir,
            workspace: options.work_root.join("job-under-test/workspace"),
            events,
            metrics: self.statsd.lines(),
        }
    }
}

impl Finished {
    fn names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e["event"].as_str().expect("name").to_owned())
            .collect()
    }

    fn events_named(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }

    fn attempts_started(&self, step_id: &str) -> usize {
        self.events_named("task.step.attempt.started")
            .iter()
            .filter(|e| e["payload"]["stepId"] == step_id)
            .count()
    }

    fn json(&self, rel: &str) -> Value {
        let text = std::fs::read_to_string(self.job_dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        serde_json::from_str(&text).expect("artifact JSON")
    }

    fn log(&self, step_index: u32) -> String {
        std::fs::read_to_string(self.job_dir.join(format!("logs/steps/step-{step_index:04}.log"))).expect("step log")
    }

    fn has_metric(&self, name: &str, tags: &[&str]) -> bool {
        self.metrics
            .iter()
            .any(|line| line.starts_with(&format!("{name}:")) && tags.iter().all(|t| line.contains(t)))
    }

    /// Each event's name is in `expected` order (other events may be between).
    fn assert_in_order(&self, expected: &[&str]) {
        let names = self.names();
        let mut at = 0;
        for want in expected {
            match names[at..].iter().position(|n| n == want) {
                Some(i) => at += i + 1,
                None => panic!("{want} not found in order in {names:?}"),
            }
        }
    }
}

#[tokio::test]
async fn given_a_step_that_goes_idle_on_attempt_1_when_it_runs_then_a_soft_reset_recovers_it() {
    let h = Harness::new();
    let done = h
        .run(h.payload(
            json!([{"id": "warm-up", "plugin": "idle", "inputs": {"attempts": [1]}}]),
            json!({"stepIdleTimeoutSeconds": 1, "stepTimeoutSeconds": 30}),
            1,
        ))
        .await;
    assert_eq!(done.status, JobStatus::Succeeded);
    done.assert_in_order(&[
        "task.job.started",
        "task.step.attempt.started",
        "task.step.attempt.failed",
        "task.self_heal.triggered",
        "task.step.attempt.started",
        "task.step.attempt.finished",
        "task.job.succeeded",
    ]);
    let triggered = done.events_named("task.self_heal.triggered")[0];
    assert_eq!(triggered["payload"]["strategy"], "soft_reset");
    assert_eq!(triggered["payload"]["failureClass"], "transient_runtime");
    assert_eq!(
        done.events_named("task.step.attempt.started")[1]["payload"]["attempt"],
        2
    );

    let record = done.json("state/self_heal/attempt-0000-0001.json");
    for field in [
        "stepId",
        "stepIndex",
        "attempt",
        "failureClass",
        "failureSummary",
        "failureSignature",
        "failureSignatureHash",
        "strategy",
        "wallClockSeconds",
        "idleSeconds",
        "fuelConsumed",
        "idleTimeoutTriggered",
        "diffHash",
        "changedFiles",
        "retryContext",
        "timestamp",
    ] {
        assert!(record.get(field).is_some(), "attempt record lacks {field}: {record}");
    }
    assert_eq!(record["idleTimeoutTriggered"], true);
    assert_eq!(record["strategy"], "soft_reset");
    assert_eq!(
        record["retryContext"]["constraints"][0],
        "do not re-run unchanged remediation"
    );
    let state = done.json("state/steps/step-0000.json");
    for field in [
        "schemaVersion",
        "stepId",
        "stepIndex",
        "attempt",
        "summary",
        "diffHash",
        "changedFiles",
        "finishedAt",
    ] {
        assert!(state.get(field).is_some(), "step state lacks {field}: {state}");
    }
    assert_eq!(state["attempt"], 2);
    assert!(
        done.log(0).contains("=== attempt 1: stopped: idle deadline passed"),
        "{}",
        done.log(0)
    );

    assert!(
        done.has_metric(
            "task.self_heal.attempts_total",
            &["class:transient_runtime", "strategy:soft_reset"]
        ),
        "{:?}",
        done.metrics
    );
    assert!(
        done.has_metric("task.step.idle_timeout_total", &["step:warm-up", "attempt:1"]),
        "{:?}",
        done.metrics
    );
    assert!(
        done.has_metric("task.self_heal.recovered_total", &["strategy:soft_reset"]),
        "{:?}",
        done.metrics
    );
}

#[tokio::test]
async fn given_a_step_that_spins_past_its_wall_deadline_when_it_runs_then_a_soft_reset_recovers_it() {
    let h = Harness::new();
    let done = h
        .run(h.payload(
            json!([{"id": "spinner", "plugin": "hang", "inputs": {"attempts": [1], "mode": "spin"}}]),
            json!({"stepIdleTimeoutSeconds": 30, "stepTimeoutSeconds": 1}),
            1,
        ))
        .await;
    assert_eq!(done.status, JobStatus::Succeeded);
    let failed = done.events_named("task.step.attempt.failed")[0];
    assert_eq!(failed["payload"]["outcome"], "wall_timeout");
    assert_eq!(
        done.events_named("task.self_heal.triggered")[0]["payload"]["strategy"],
        "soft_reset"
    );
    assert!(
        done.has_metric("task.step.wall_timeout_total", &["step:spinner", "attempt:1"]),
        "{:?}",
        done.metrics
    );
    assert!(
        !done.has_metric("task.step.idle_timeout_total", &[]),
        "{:?}",
        done.metrics
    );
    assert_eq!(
        done.json("state/self_heal/attempt-0000-0001.json")["idleTimeoutTriggered"],
        false
    );
}

#[tokio::test]
async fn given_identical_failures_when_the_no_progress_limit_is_reached_then_a_hard_reset_rebuilds_the_workspace() {
    let h = Harness::new();
    let done = h
        .run(h.payload(
            json!([
                {"id": "notes", "plugin": "write-file", "inputs": {"path": "NOTES.md", "text": "# Notes\n"}},
                {"id": "lint", "plugin": "no-progress", "inputs": {
                    "show": ["junk.txt", "NOTES.md"], "plant": "junk.txt", "clobber": "NOTES.md"}}
            ]),
            json!({"stepIdleTimeoutSeconds": 10, "stepTimeoutSeconds": 30, "stepMaxAttempts": 3,
                   "stepNoProgressLimit": 2, "jobSelfHealMaxResets": 1}),
            1,
        ))
        .await;
    assert_eq!(done.status, JobStatus::DeadLetter);
    done.assert_in_order(&[
        "task.self_heal.triggered",
        "task.self_heal.escalated",
        "task.step.attempt.started",
        "task.self_heal.exhausted",
        "task.job.dead_letter",
    ]);
    let escalated = done.events_named("task.self_heal.escalated");
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0]["payload"]["attempt"], 2, "attempt 2 trips the rule");
    assert_eq!(escalated[0]["payload"]["strategy"], "hard_reset");
    assert_eq!(escalated[0]["payload"]["failureClass"], "stuck_no_progress");
    let exhausted = done.events_named("task.self_heal.exhausted")[0];
    assert_eq!(exhausted["payload"]["retryable"], true);
    assert_eq!(exhausted["payload"]["attempt"], 3);
    assert_eq!(done.attempts_started("lint"), 3);

    // Attempt 2 started from attempt 1's leftovers; attempt 3 from a
    // workspace rebuilt from the baseline and the `notes` patch.
    let log = done.log(1);
    assert!(
        log.contains("attempt 2 sees junk.txt: planted by a failed attempt"),
        "{log}"
    );
    assert!(
        log.contains("attempt 2 sees NOTES.md: clobbered by a failed attempt"),
        "{log}"
    );
    assert!(log.contains("attempt 3 sees junk.txt: MISSING"), "{log}");
    assert!(log.contains("attempt 3 sees NOTES.md: # Notes"), "{log}");
    assert!(
        done.has_metric("task.step.no_progress_total", &["step:lint"]),
        "{:?}",
        done.metrics
    );
    assert!(
        done.has_metric("task.self_heal.exhausted_total", &["strategy:queue_retry"]),
        "{:?}",
        done.metrics
    );
    let record = done.json("state/self_heal/attempt-0001-0002.json");
    assert_eq!(record["failureClass"], "stuck_no_progress");
    assert_eq!(record["strategy"], "hard_reset");
}

#[tokio::test]
async fn given_a_deterministic_failure_when_it_happens_then_the_step_runs_once_and_the_job_fails() {
    let h = Harness::new();
    let done = h
        .run(h.payload(
            json!([{"id": "bad-input", "plugin": "write-file", "inputs": {"text": "no path given"}}]),
            json!({"stepIdleTimeoutSeconds": 10, "stepTimeoutSeconds": 30}),
            3,
        ))
        .await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.attempts_started("bad-input"), 1, "never retried");
    let exhausted = done.events_named("task.self_heal.exhausted");
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0]["payload"]["retryable"], false);
    assert_eq!(exhausted[0]["payload"]["failureClass"], "deterministic_contract");
    assert!(done.events_named("task.self_heal.triggered").is_empty());
    assert!(done.events_named("task.job.requeued").is_empty(), "no queue retry");
    let failed = done.events_named("task.job.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["payload"]["stepId"], "bad-input");
    assert_eq!(failed[0]["payload"]["stepIndex"], 0);
    assert_eq!(
        done.events_named("task.step.attempt.failed")[0]["payload"]["strategy"],
        "fail"
    );
}

fn three_writes_then_stuck() -> Value {
    json!([
        {"id": "one", "plugin": "write-file", "inputs": {"path": "one.txt", "text": "1\n"}},
        {"id": "two", "plugin": "write-file", "inputs": {"files": {"two.txt": "2\n", "README.md": "# project, edited\n"}}},
        {"id": "three", "plugin": "write-file", "inputs": {"path": "dir/three.txt", "text": "3\n"}},
        {"id": "stuck", "plugin": "no-progress", "inputs": {"plant": "junk.txt", "show": ["junk.txt"]}}
    ])
}

#[tokio::test]
async fn given_three_finished_steps_when_step_3_is_hard_reset_then_the_workspace_is_baseline_plus_patches_0_to_2() {
    let h = Harness::new();
    let done = h
        .run(h.payload(
            three_writes_then_stuck(),
            json!({"stepIdleTimeoutSeconds": 10, "stepMaxAttempts": 3}),
            1,
        ))
        .await;
    assert_eq!(done.status, JobStatus::DeadLetter);
    assert_eq!(done.events_named("task.self_heal.escalated").len(), 1);
    assert!(
        done.log(3).contains("attempt 3 sees junk.txt: MISSING"),
        "{}",
        done.log(3)
    );

    // The git CLI applies the three patch artifacts onto the baseline; the
    // result is the workspace, but for what attempt 3 planted afterwards.
    let replay = h.dir.path().join("replay");
    git(
        h.dir.path(),
        &[
            "clone",
            "-q",
            h.repo().to_str().expect("utf-8"),
            replay.to_str().expect("utf-8"),
        ],
    );
    for index in 0..3 {
        let patch = done.job_dir.join(format!("patches/steps/step-{index:04}.patch"));
        git(&replay, &["apply", patch.to_str().expect("utf-8")]);
    }
    let expected = files_under(&replay, &[".git"]);
    let actual = files_under(&done.workspace, &["junk.txt"]);
    assert_eq!(actual, expected, "workspace = baseline + patches 0..2, byte for byte");
    assert_eq!(
        actual.get("README.md").map(Vec::as_slice),
        Some(&b"# project, edited\n"[..])
    );
}

#[tokio::test]
async fn given_a_tampered_patch_when_a_hard_reset_replays_it_then_the_job_fails_as_deterministic_repo_keeping_artifacts(
) {
    let h = Harness::new();
    let job_dir = h.dir.path().join("artifacts/agent_jobs/job-under-test");
    let tampered = Arc::new(Mutex::new(false));
    let observer: EventObserver = {
        let job_dir = job_dir.clone();
        let tampered = tampered.clone();
        Arc::new(move |record: &EventRecord| {
            // After the stuck step's first failure, before any hard reset.
            if record.event.name() == "task.step.attempt.failed" {
                let mut done = tampered.lock().expect("lock");
                if !*done {
                    let patch = job_dir.join("patches/steps/step-0001.patch");
                    let mut bytes = std::fs::read(&patch).expect("patch exists");
                    bytes.extend_from_slice(b"\n# tampered\n");
                    std::fs::write(&patch, bytes).expect("tamper");
                    *done = true;
                }
            }
        })
    };
    let done = h
        .run_with(
            h.payload(
                three_writes_then_stuck(),
                json!({"stepIdleTimeoutSeconds": 10, "stepMaxAttempts": 3}),
                1,
            ),
            Arc::new(Redactor::new()),
            Some(observer),
        )
        .await;
    assert!(*tampered.lock().expect("lock"));
    assert_eq!(done.status, JobStatus::Failed);
    let failed = done.events_named("task.job.failed")[0];
    assert_eq!(failed["payload"]["failureClass"], "deterministic_repo");
    let reason = failed["payload"]["reason"].as_str().expect("reason");
    assert!(reason.contains("patch of step 1 was altered"), "{reason}");
    for kept in [
        "state/steps/step-0000.json",
        "state/steps/step-0001.json",
        "state/steps/step-0002.json",
        "patches/steps/step-0000.patch",
        "patches/steps/step-0002.patch",
        "state/self_heal/attempt-0003-0001.json",
        "state/self_heal/attempt-0003-0002.json",
        "logs/steps/step-0003.log",
    ] {
        assert!(done.job_dir.join(kept).is_file(), "{kept} was kept");
    }
}

#[tokio::test]
async fn given_a_secret_in_the_env_in_inputs_output_and_errors_when_the_job_runs_then_no_artifact_or_event_holds_it() {
    let secret = "sk-live-4f9a8b7c6d5e";
    std::env::set_var("STEPD_E2E_API_TOKEN", secret);
    let h = Harness::new();
    let done = h
        .run(h.payload(
            json!([{"id": "leaky", "plugin": "no-progress", "inputs": {
                "echo": format!("using token {secret}"),
                "message": format!("upstream rejected token {secret} (503)")
            }}]),
            json!({"stepIdleTimeoutSeconds": 10, "stepMaxAttempts": 2, "stepNoProgressLimit": 5}),
            1,
        ))
        .await;
    assert_eq!(done.status, JobStatus::DeadLetter);
    assert!(done.log(0).contains("using token [REDACTED]"), "{}", done.log(0));
    let encoded = [secret.to_owned(), base64_standard(secret)];
    for (path, bytes) in files_under(&done.job_dir, &[]) {
        let text = String::from_utf8_lossy(&bytes);
        for form in &encoded {
            assert!(!text.contains(form.as_str()), "{path} holds the secret");
        }
    }
    for line in &done.metrics {
        assert!(!line.contains(secret), "metric {line}");
    }
}

#[tokio::test]
async fn given_a_step_that_writes_a_secret_into_the_workspace_when_it_succeeds_then_the_patch_is_refused() {
    let secret = "pw-9c8b7a6f5e4d3c2b";
    std::env::set_var("STEPD_E2E_DB_PASSWORD", secret);
    let h = Harness::new();
    let done = h
        .run(h.payload(
            json!([{"id": "leak", "plugin": "write-file", "inputs": {"path": "config.env", "text": format!("DB_PASSWORD={secret}\n")}}]),
            json!({"stepIdleTimeoutSeconds": 10}),
            1,
        ))
        .await;
    assert_eq!(done.status, JobStatus::Failed);
    let failed = done.events_named("task.job.failed")[0];
    assert_eq!(failed["payload"]["failureClass"], "deterministic_policy");
    assert!(failed["payload"]["reason"]
        .as_str()
        .expect("reason")
        .contains("wrote a secret into the workspace"));
    assert!(
        !done.job_dir.join("state/steps/step-0000.json").exists(),
        "no checkpoint of the leaking step"
    );
    for (path, bytes) in files_under(&done.job_dir, &[]) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{path} holds the secret"
        );
    }
}

fn base64_standard(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn given_a_step_that_keeps_failing_when_the_queue_retries_then_budgets_bound_attempts_and_hard_resets() {
    let h = Harness::new();
    let done = h
        .run(h.payload(
            json!([
                {"id": "write", "plugin": "write-file", "inputs": {"path": "a.txt", "text": "a\n"}},
                {"id": "stuck", "plugin": "no-progress"}
            ]),
            json!({"stepIdleTimeoutSeconds": 10, "stepMaxAttempts": 3, "stepNoProgressLimit": 2, "jobSelfHealMaxResets": 1}),
            2,
        ))
        .await;
    assert_eq!(done.status, JobStatus::DeadLetter);
    // Two job attempts, each at most STEP_MAX_ATTEMPTS attempts of the step.
    let starts: Vec<u64> = done
        .events_named("task.step.attempt.started")
        .iter()
        .filter(|e| e["payload"]["stepId"] == "stuck")
        .map(|e| e["payload"]["attempt"].as_u64().expect("attempt"))
        .collect();
    // Numbers run on across job attempts, so no attempt record is overwritten.
    assert_eq!(starts, vec![1, 2, 3, 4, 5, 6]);
    for attempt in 1..=6 {
        assert!(
            done.job_dir
                .join(format!("state/self_heal/attempt-0001-{attempt:04}.json"))
                .is_file(),
            "record {attempt}"
        );
    }
    assert_eq!(done.events_named("task.job.requeued").len(), 1);
    assert_eq!(done.events_named("task.resume.from_step")[0]["payload"]["stepIndex"], 1);
    assert_eq!(
        done.attempts_started("write"),
        1,
        "the finished step is not rerun after the queue retry"
    );
    // One hard reset per job, however many job attempts.
    assert_eq!(done.events_named("task.self_heal.escalated").len(), 1);
    assert_eq!(done.events_named("task.job.started").len(), 2);
    assert_eq!(
        std::fs::read_to_string(done.workspace.join("a.txt")).expect("a.txt"),
        "a\n"
    );
}
