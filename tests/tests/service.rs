//! The control plane end to end: real `stepd serve` and `stepd worker`
//! processes, real plugins, on the embedded default (SQLite) and on
//! PostgreSQL + RabbitMQ. Every scenario runs in both modes.

use std::time::Duration;

use serde_json::{json, Value};
use stepd_tests::cluster::{task, write_step, Cluster, Mode, WORKER_TOKEN};
use stepd_tests::files_under;

const LONG: Duration = Duration::from_secs(120);

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

fn events_named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_on_two_workers_each_run_exactly_once() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 0, 2).await;
        let mut ids = Vec::new();
        for i in 0..20 {
            let payload = task(
                1,
                vec![write_step("write", &format!("out-{i}.txt"), "hello\n", 0)],
                json!({}),
            );
            ids.push(cluster.submit(&payload).await);
        }
        for id in &ids {
            let job = cluster.wait_status(id, "succeeded", LONG).await;
            let names = cluster.event_names(id).await;
            assert_eq!(count(&names, "task.job.started"), 1, "{mode:?} {id}: {names:?}");
            assert_eq!(
                count(&names, "task.step.attempt.started"),
                1,
                "{mode:?} {id}: {names:?}"
            );
            let attempts = job["attempts"].as_array().expect("attempts");
            assert_eq!(attempts.len(), 1, "{mode:?}: {job:#}");
        }
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_in_step_two_is_replaced_and_the_workspace_matches_an_uninterrupted_run() {
    for mode in Mode::BOTH {
        let mut cluster = Cluster::start(mode, 0, 1).await;
        let steps = vec![
            write_step("one", "a.txt", "first\n", 0),
            write_step("two", "b.txt", "second\n", 4000),
            write_step("three", "c.txt", "third\n", 0),
            write_step("four", "README.md", "rewritten by step four\n", 0),
        ];
        let payload = task(3, steps, json!({"stepIdleTimeoutSeconds": 30}));
        let id = cluster.submit(&payload).await;
        cluster
            .wait_job(&id, "step two running", LONG, |j| j["currentStep"]["id"] == "two")
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.workers[0].kill();
        cluster.spawn_worker();
        let job = cluster.wait_status(&id, "succeeded", LONG).await;

        let events = cluster.events(&id).await;
        let names: Vec<String> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(count(&names, "task.job.lease_expired"), 1, "{mode:?}: {names:?}");
        let resumed = events_named(&events, "task.resume.from_step");
        assert_eq!(resumed.len(), 1, "{mode:?}: {names:?}");
        assert_eq!(resumed[0]["payload"]["stepIndex"], 1, "{mode:?}: continues at step two");
        let step_one_starts = events_named(&events, "task.step.attempt.started")
            .iter()
            .filter(|e| e["payload"]["stepId"] == "one")
            .count();
        assert_eq!(step_one_starts, 1, "{mode:?}: step one must not run again");
        assert_eq!(job["firstUnfinishedStep"], 4, "{mode:?}: four checkpoints");
        assert_eq!(job["attempt"], 2, "{mode:?}: the lost lease cost one job attempt");

        // The same job, uninterrupted, leaves the same workspace.
        let again = cluster.submit(&payload).await;
        let clean = cluster.wait_status(&again, "succeeded", LONG).await;
        let recovered_files = files_under(std::path::Path::new(job["workspace"].as_str().expect("workspace")), &[]);
        let clean_files = files_under(
            std::path::Path::new(clean["workspace"].as_str().expect("workspace")),
            &[],
        );
        assert_eq!(recovered_files, clean_files, "{mode:?}");
        assert!(recovered_files.contains_key("b.txt") && recovered_files.contains_key("c.txt"));
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_exhaustion_is_queued_with_backoff_then_dead_lettered_and_cancel_wins_over_a_pending_retry() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start_with(mode, 1, 0, &[("STEPD_RETRY_BACKOFF_SECONDS", "2")]).await;
        let flaky = json!({"id": "flaky", "title": "flaky", "plugin": "flaky", "inputs": {"failAttempts": 10}});
        let id = cluster
            .submit(&task(2, vec![flaky.clone()], json!({"stepMaxAttempts": 1})))
            .await;
        cluster.wait_event(&id, "task.job.requeued", 1, LONG).await;
        let job = cluster
            .wait_job(&id, "queued for attempt 2", LONG, |j| {
                j["status"] == "queued" && j["attempt"] == 2
            })
            .await;
        let next = humantime::parse_rfc3339(job["nextAttemptAt"].as_str().expect("nextAttemptAt")).expect("time");
        assert!(
            next > std::time::SystemTime::now(),
            "{mode:?}: the retry waits for its backoff"
        );
        let job = cluster.wait_status(&id, "dead_letter", LONG).await;
        assert_eq!(job["attempt"], 2);
        let names = cluster.event_names(&id).await;
        assert_eq!(count(&names, "task.job.started"), 2, "{mode:?}: {names:?}");
        assert_eq!(names.last().map(String::as_str), Some("task.job.dead_letter"));

        // A cancel while the retry is pending ends it at once.
        let id = cluster
            .submit(&task(3, vec![flaky.clone()], json!({"stepMaxAttempts": 1})))
            .await;
        cluster
            .wait_job(&id, "queued for its retry", LONG, |j| {
                j["status"] == "queued" && j["attempt"] == 2
            })
            .await;
        let (status, body) = cluster
            .control(&id, json!({"action": "cancel", "reason": "no more"}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["job"]["status"], "cancelled");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let job = cluster.job(&id).await;
        assert_eq!(job["status"], "cancelled", "{mode:?}: it never ran again");
        let names = cluster.event_names(&id).await;
        assert_eq!(count(&names, "task.job.started"), 1, "{mode:?}: {names:?}");
        assert!(names.contains(&"task.job.cancelled".to_owned()));

        // A cancel while the retry runs tears it down: the first job
        // attempt goes silent and is retried; the retry works slowly.
        let silent = json!({"id": "silent", "title": "silent", "plugin": "hang",
                            "inputs": {"attempts": [1], "mode": "sleep"}});
        let slow = write_step("slow", "slow.txt", "x", 60_000);
        let id = cluster
            .submit(&task(
                3,
                vec![silent, slow],
                json!({"stepMaxAttempts": 1, "stepIdleTimeoutSeconds": 1}),
            ))
            .await;
        cluster.wait_event(&id, "task.job.requeued", 1, LONG).await;
        cluster
            .wait_job(&id, "the retry running the slow step", LONG, |j| {
                j["attempt"] == 2 && j["currentStep"]["id"] == "slow"
            })
            .await;
        let (status, body) = cluster.control(&id, json!({"action": "cancel"})).await;
        assert_eq!(status, 200, "{body}");
        let job = cluster.wait_status(&id, "cancelled", Duration::from_secs(20)).await;
        assert_eq!(job["controlEvents"].as_array().map(Vec::len), Some(1));
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_before_the_next_step_and_resume_and_takeover_release_it() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 1, 0).await;
        let steps = vec![
            write_step("one", "a.txt", "1\n", 1500),
            write_step("two", "b.txt", "2\n", 0),
            write_step("three", "c.txt", "3\n", 0),
        ];
        let id = cluster.submit(&task(1, steps, json!({}))).await;
        cluster
            .wait_job(&id, "step one running", LONG, |j| j["currentStep"]["id"] == "one")
            .await;
        let (status, body) = cluster
            .control(&id, json!({"action": "pause", "reason": "look first"}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["job"]["payload"]["liveControl"]["paused"], true);
        cluster.wait_event(&id, "task.control.pause.active", 1, LONG).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let job = cluster.job(&id).await;
        assert_eq!(job["status"], "running", "{mode:?}");
        assert_eq!(
            job["firstUnfinishedStep"], 1,
            "{mode:?}: step one finished, step two held"
        );
        let starts = events_named(&cluster.events(&id).await, "task.step.attempt.started").len();
        assert_eq!(starts, 1, "{mode:?}: nothing started while paused");
        // A worker's heartbeat sees the pause in payload.liveControl.
        let owner = job["leaseOwner"].as_str().expect("a lease owner").to_owned();
        let beat: Value = reqwest::Client::new()
            .post(format!("{}/api/queue/jobs/{id}/heartbeat", cluster.url))
            .bearer_auth(WORKER_TOKEN)
            .json(&json!({"workerId": owner}))
            .send()
            .await
            .expect("heartbeat")
            .json()
            .await
            .expect("json");
        assert_eq!(beat["payload"]["liveControl"]["paused"], true, "{beat}");

        let (status, _) = cluster.control(&id, json!({"action": "resume"})).await;
        assert_eq!(status, 200);
        cluster.wait_event(&id, "task.control.pause.cleared", 1, LONG).await;
        let job = cluster.wait_status(&id, "succeeded", LONG).await;
        let actions: Vec<&str> = job["controlEvents"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["action"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(actions, vec!["pause", "resume"], "{mode:?}");
        let names = cluster.event_names(&id).await;
        assert_eq!(count(&names, "task.control"), 2, "{mode:?}: {names:?}");

        // Takeover holds too, and leaves the workspace to the human.
        let steps = vec![
            write_step("one", "a.txt", "1\n", 1500),
            write_step("two", "b.txt", "2\n", 0),
        ];
        let id = cluster.submit(&task(1, steps, json!({}))).await;
        cluster
            .wait_job(&id, "step one running", LONG, |j| j["currentStep"]["id"] == "one")
            .await;
        let (status, _) = cluster.control(&id, json!({"action": "takeover"})).await;
        assert_eq!(status, 200);
        let names = cluster.wait_event(&id, "task.control.pause.active", 1, LONG).await;
        let active = events_named(&cluster.events(&id).await, "task.control.pause.active")[0].clone();
        assert_eq!(active["payload"]["mode"], "takeover", "{names:?}");
        let job = cluster.job(&id).await;
        let workspace = std::path::PathBuf::from(job["workspace"].as_str().expect("workspace"));
        std::fs::write(workspace.join("human.txt"), "edited during takeover\n").expect("human edit");
        let (status, _) = cluster.control(&id, json!({"action": "resume"})).await;
        assert_eq!(status, 200);
        cluster.wait_status(&id, "succeeded", LONG).await;
        assert_eq!(
            std::fs::read_to_string(workspace.join("human.txt")).expect("kept"),
            "edited during takeover\n"
        );
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_step_and_hard_reset_step_tear_the_attempt_down_and_are_acknowledged() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 1, 0).await;
        let steps = vec![
            write_step("one", "a.txt", "1\n", 0),
            json!({"id": "two", "title": "hangs on attempts 1 and 2", "plugin": "hang",
                   "inputs": {"attempts": [1, 2], "mode": "sleep"}}),
        ];
        let id = cluster
            .submit(&task(
                1,
                steps,
                json!({"stepIdleTimeoutSeconds": 300, "stepTimeoutSeconds": 600}),
            ))
            .await;
        cluster
            .wait_job(&id, "step two running", LONG, |j| j["currentStep"]["id"] == "two")
            .await;
        // Not the running step: refused.
        let (status, body) = cluster
            .control(&id, json!({"action": "retry_step", "stepId": "one"}))
            .await;
        assert_eq!(status, 409, "{body}");
        let (status, body) = cluster
            .control(&id, json!({"action": "retry_step", "stepId": "two", "reason": "stuck"}))
            .await;
        assert_eq!(status, 200, "{body}");
        cluster.wait_event(&id, "task.control.recovery.ack", 1, LONG).await;
        cluster
            .wait_job(&id, "the recovery cleared", LONG, |j| {
                j["payload"]["liveControl"]["recovery"].is_null()
            })
            .await;
        // Step two's attempt 2 is running (and hanging) before the next action.
        let start = std::time::Instant::now();
        while events_named(&cluster.events(&id).await, "task.step.attempt.started").len() < 3 {
            assert!(start.elapsed() < LONG, "attempt 2 of step two never started");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, body) = cluster
            .control(&id, json!({"action": "hard_reset_step", "stepId": "two"}))
            .await;
        assert_eq!(status, 200, "{body}");
        let job = cluster.wait_status(&id, "succeeded", LONG).await;
        let events = cluster.events(&id).await;
        let acks: Vec<&str> = events_named(&events, "task.control.recovery.ack")
            .iter()
            .map(|e| e["payload"]["action"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(acks, vec!["retry_step", "hard_reset_step"], "{mode:?}");
        let two_starts: Vec<u64> = events_named(&events, "task.step.attempt.started")
            .iter()
            .filter(|e| e["payload"]["stepId"] == "two")
            .map(|e| e["payload"]["attempt"].as_u64().unwrap_or_default())
            .collect();
        assert_eq!(
            two_starts,
            vec![1, 2, 3],
            "{mode:?}: each action started a fresh attempt"
        );
        assert!(job["payload"]["liveControl"]["recovery"].is_null());
        let workspace = std::path::PathBuf::from(job["workspace"].as_str().expect("workspace"));
        assert_eq!(
            std::fs::read_to_string(workspace.join("a.txt")).expect("step one's file"),
            "1\n"
        );
        assert_eq!(
            job["controlEvents"].as_array().map(Vec::len),
            Some(2),
            "the refused call left no row"
        );
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_step_reopens_failed_and_succeeded_jobs_with_earlier_files_in_place() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 1, 0).await;
        let steps = vec![
            write_step("one", "a.txt", "1\n", 0),
            write_step("two", "b.txt", "2\n", 0),
            write_step("three", "c.txt", "3\n", 0),
        ];
        let id = cluster.submit(&task(1, steps, json!({}))).await;
        cluster.wait_status(&id, "succeeded", LONG).await;
        // Only at or before the first unfinished step — all are finished.
        let (status, body) = cluster
            .control(
                &id,
                json!({"action": "resume_from_step", "stepId": "two", "reason": "redo"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["job"]["status"], "queued");
        cluster.wait_event(&id, "task.job.succeeded", 2, LONG).await;
        let job = cluster.wait_status(&id, "succeeded", LONG).await;
        let events = cluster.events(&id).await;
        let resumed = events_named(&events, "task.resume.from_step");
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0]["payload"]["stepId"], "two");
        let starts: Vec<&str> = events_named(&events, "task.step.attempt.started")
            .iter()
            .map(|e| e["payload"]["stepId"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(starts, vec!["one", "two", "three", "two", "three"], "{mode:?}");
        let files = files_under(std::path::Path::new(job["workspace"].as_str().expect("ws")), &[]);
        assert!(
            files.contains_key("a.txt") && files.contains_key("c.txt"),
            "{mode:?}: {:?}",
            files.keys()
        );

        // A failed job: step two breaks its contract (no text).
        let steps = vec![
            write_step("one", "a.txt", "1\n", 0),
            json!({"id": "two", "title": "bad", "plugin": "write-file", "inputs": {"path": "b.txt"}}),
        ];
        let id = cluster.submit(&task(1, steps, json!({}))).await;
        cluster.wait_status(&id, "failed", LONG).await;
        let (status, body) = cluster
            .control(&id, json!({"action": "resume_from_step", "stepId": "two"}))
            .await;
        assert_eq!(status, 200, "{body}");
        cluster.wait_event(&id, "task.job.failed", 2, LONG).await;
        let job = cluster.wait_status(&id, "failed", LONG).await;
        let events = cluster.events(&id).await;
        assert_eq!(events_named(&events, "task.resume.from_step").len(), 1);
        let one_starts = events_named(&events, "task.step.attempt.started")
            .iter()
            .filter(|e| e["payload"]["stepId"] == "one")
            .count();
        assert_eq!(one_starts, 1, "{mode:?}: step one's checkpoint was reused");
        let ws = std::path::PathBuf::from(job["workspace"].as_str().expect("ws"));
        assert_eq!(std::fs::read_to_string(ws.join("a.txt")).expect("a.txt"), "1\n");
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_message_and_change_nothing() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 1, 0).await;
        let id = cluster
            .submit(&task(1, vec![write_step("one", "a.txt", "1\n", 0)], json!({})))
            .await;
        let before = cluster.wait_status(&id, "succeeded", LONG).await;
        let events_before = cluster.events(&id).await.len();
        let control = format!("/api/task-runs/{id}/control");
        let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
            (
                "unknown action",
                cluster
                    .request(reqwest::Method::POST, &control)
                    .json(&json!({"action": "explode"})),
                400,
                "unknown action",
            ),
            (
                "missing stepId",
                cluster
                    .request(reqwest::Method::POST, &control)
                    .json(&json!({"action": "resume_from_step"})),
                400,
                "needs a stepId",
            ),
            (
                "unknown stepId",
                cluster
                    .request(reqwest::Method::POST, &control)
                    .json(&json!({"action": "resume_from_step", "stepId": "nine"})),
                409,
                "unknown stepId",
            ),
            (
                "malformed JSON",
                cluster
                    .request(reqwest::Method::POST, &control)
                    .header("content-type", "application/json")
                    .body("{\"action\": "),
                400,
                "malformed JSON",
            ),
            (
                "unknown field",
                cluster
                    .request(reqwest::Method::POST, &control)
                    .json(&json!({"action": "pause", "step": "one"})),
                400,
                "unknown field",
            ),
            (
                "oversized body",
                cluster
                    .request(reqwest::Method::POST, &control)
                    .body(vec![b' '; 2 << 20]),
                413,
                "larger than",
            ),
            (
                "unknown job",
                cluster
                    .request(reqwest::Method::POST, "/api/task-runs/nope/control")
                    .json(&json!({"action": "pause"})),
                404,
                "unknown job",
            ),
            (
                "missing token",
                reqwest::Client::new()
                    .post(format!("{}{control}", cluster.url))
                    .json(&json!({"action": "pause"})),
                401,
                "missing bearer token",
            ),
            (
                "wrong token",
                reqwest::Client::new()
                    .post(format!("{}{control}", cluster.url))
                    .bearer_auth("guess")
                    .json(&json!({"action": "pause"})),
                401,
                "unknown bearer token",
            ),
            (
                "worker token",
                reqwest::Client::new()
                    .post(format!("{}{control}", cluster.url))
                    .bearer_auth(WORKER_TOKEN)
                    .json(&json!({"action": "pause"})),
                403,
                "operator scope",
            ),
            (
                "artifact ..",
                cluster.request(
                    reqwest::Method::GET,
                    &format!("/api/queue/jobs/{id}/artifacts/..%2F..%2Fstepd.db"),
                ),
                404,
                "without '..'",
            ),
            (
                "pause an ended job",
                cluster
                    .request(reqwest::Method::POST, &control)
                    .json(&json!({"action": "pause"})),
                409,
                "has ended",
            ),
            (
                "heartbeat by a stranger",
                reqwest::Client::new()
                    .post(format!("{}/api/queue/jobs/{id}/heartbeat", cluster.url))
                    .bearer_auth(WORKER_TOKEN)
                    .json(&json!({"workerId": "me"})),
                409,
                "does not hold",
            ),
            (
                "bad query",
                cluster.request(reqwest::Method::GET, "/api/queue/jobs?limit=abc"),
                400,
                "bad query",
            ),
            (
                "bad query, no token",
                reqwest::Client::new().get(format!("{}/api/queue/jobs?limit=abc", cluster.url)),
                401,
                "missing bearer token",
            ),
            (
                "bad payload",
                cluster
                    .request(reqwest::Method::POST, "/api/queue/jobs")
                    .json(&json!({"type": "task", "maxAttempts": 0})),
                400,
                "",
            ),
        ];
        for (what, request, status, message) in cases {
            let response = request.send().await.expect(what);
            let got = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(got, status, "{mode:?} {what}: {body}");
            assert!(body["code"].is_string(), "{mode:?} {what}: {body}");
            let text = body["message"].as_str().unwrap_or_default();
            assert!(
                text.contains(message),
                "{mode:?} {what}: {text:?} should mention {message:?}"
            );
        }
        let after = cluster.job(&id).await;
        assert_eq!(after["updatedAt"], before["updatedAt"], "{mode:?}: nothing changed");
        assert_eq!(after["controlEvents"], json!([]));
        assert_eq!(cluster.events(&id).await.len(), events_before);
        assert_eq!(cluster.jobs().await.len(), 1, "the bad payload was not stored");

        // The artifacts are listed and downloadable.
        let listed: Value = cluster
            .request(reqwest::Method::GET, &format!("/api/queue/jobs/{id}/artifacts"))
            .send()
            .await
            .expect("artifacts")
            .json()
            .await
            .expect("json");
        let paths: Vec<&str> = listed["artifacts"]
            .as_array()
            .expect("list")
            .iter()
            .map(|a| a["path"].as_str().unwrap_or_default())
            .collect();
        assert!(paths.contains(&"patches/steps/step-0000.patch"), "{paths:?}");
        let log = cluster.artifact_text(&id, "logs/steps/step-0000.log").await;
        assert!(log.contains("wrote a.txt"), "{log}");

        // The OpenAPI document covers every route.
        let doc: Value = reqwest::get(format!("{}/api/openapi.json", cluster.url))
            .await
            .expect("openapi")
            .json()
            .await
            .expect("json");
        for path in [
            "/healthz",
            "/api/queue/jobs",
            "/api/queue/jobs/{id}",
            "/api/queue/jobs/{id}/events",
            "/api/queue/jobs/{id}/heartbeat",
            "/api/queue/jobs/{id}/artifacts",
            "/api/queue/jobs/{id}/artifacts/{path}",
            "/api/task-runs/{id}/control",
        ] {
            assert!(
                doc["paths"][path].is_object(),
                "{path} missing from the OpenAPI document"
            );
        }
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_step_on_a_running_job_rebuilds_from_the_checkpoints_and_goes_on_there() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 1, 0).await;
        let steps = vec![
            write_step("one", "a.txt", "1\n", 0),
            write_step("two", "b.txt", "2\n", 0),
            write_step("three", "c.txt", "3\n", 60_000),
        ];
        let id = cluster
            .submit(&task(1, steps, json!({"stepIdleTimeoutSeconds": 30})))
            .await;
        let running = cluster
            .wait_job(&id, "step three running", LONG, |j| j["currentStep"]["id"] == "three")
            .await;
        assert_eq!(running["firstUnfinishedStep"], 2);
        // The first unfinished step itself is allowed (it restarts it).
        let (status, body) = cluster
            .control(&id, json!({"action": "resume_from_step", "stepId": "three"}))
            .await;
        assert_eq!(status, 200, "three is the first unfinished step: {body}");
        cluster.wait_event(&id, "task.control.recovery.ack", 1, LONG).await;
        let (status, body) = cluster
            .control(
                &id,
                json!({"action": "resume_from_step", "stepId": "two", "reason": "redo two"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        cluster.wait_event(&id, "task.control.recovery.ack", 2, LONG).await;
        cluster
            .wait_job(&id, "step three running again", LONG, |j| {
                j["currentStep"]["id"] == "three" && j["payload"]["liveControl"]["recovery"].is_null()
            })
            .await;
        let events = cluster.events(&id).await;
        let resumed: Vec<&str> = events_named(&events, "task.resume.from_step")
            .iter()
            .map(|e| e["payload"]["stepId"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(resumed, vec!["three", "two"], "{mode:?}");
        let starts: Vec<&str> = events_named(&events, "task.step.attempt.started")
            .iter()
            .map(|e| e["payload"]["stepId"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            starts,
            vec!["one", "two", "three", "three", "two", "three"],
            "{mode:?}: each request tore step three down and went on from its step"
        );
        let job = cluster.job(&id).await;
        let ws = std::path::PathBuf::from(job["workspace"].as_str().expect("workspace"));
        assert_eq!(
            std::fs::read_to_string(ws.join("a.txt")).expect("step one's file"),
            "1\n"
        );
        let rows = job["controlEvents"].as_array().expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["reason"], "redo two");
        let (status, _) = cluster.control(&id, json!({"action": "cancel"})).await;
        assert_eq!(status, 200);
        cluster.wait_status(&id, "cancelled", LONG).await;
        cluster.shutdown().await;
    }
}
