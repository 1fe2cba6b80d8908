//! The store against real databases: every scenario runs on a SQLite file
//! and on a fresh PostgreSQL database.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use stepd_api::control::{plan, ControlRequest};
use stepd_records::events::{Event, EventRecord};
use stepd_store::{
    AttemptRow, CheckpointRow, ClaimedBy, CurrentStep, JobEnding, JobState, NewJob, ProgressBatch, Store,
};
use stepd_tests::services::TestDb;

fn payload(steps: &[&str]) -> serde_json::Value {
    json!({
        "type": "task",
        "maxAttempts": 2,
        "task": {
            "objective": "test",
            "repository": "/tmp",
            "startingBranch": "main",
            "steps": steps.iter().map(|id| json!({"id": id, "title": id, "plugin": "write-file"})).collect::<Vec<_>>()
        }
    })
}

async fn submit(store: &Store, id: &str, max_attempts: u32) {
    store
        .insert_job(&NewJob {
            id: id.into(),
            payload: payload(&["one", "two"]),
            resolved: None,
            max_attempts,
        })
        .await
        .expect("insert job");
}

fn worker(name: &str, lease: Duration) -> ClaimedBy {
    ClaimedBy {
        owner: name.into(),
        lease,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_jobs_claimed_by_four_racing_workers_are_each_claimed_once() {
    for db in TestDb::both().await {
        let store = db.open().await;
        // Opening again is a no-op migration.
        let again = db.open().await;
        assert_eq!(
            again.schema_versions().await.expect("versions"),
            vec![1, 2, 3, 4, 5, 6, 7, 8]
        );
        for i in 0..20 {
            submit(&store, &format!("job-{i:02}"), 1).await;
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let by = worker(&format!("w{w}"), Duration::from_secs(30));
                let mut got = Vec::new();
                while let Some(job) = store.claim_next(&by).await.expect("claim") {
                    assert_eq!(job.status, JobState::Running);
                    assert_eq!(job.lease_owner.as_deref(), Some(by.owner.as_str()));
                    got.push(job.id);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let unique: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), 20, "{}: {all:?}", db.kind());
        assert_eq!(unique.len(), 20, "{}: a job was claimed twice: {all:?}", db.kind());
        // A claim by id of a running job is refused: duplicates are harmless.
        let late = store
            .claim_job("job-00", &worker("late", Duration::from_secs(30)))
            .await
            .expect("claim");
        assert!(late.is_none(), "{}", db.kind());
        store.close().await;
        again.close().await;
        db.drop_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_submits_at_once_each_get_their_own_answer_and_a_taken_id_only_fails_itself() {
    for db in TestDb::both().await {
        let store = db.open().await;
        submit(&store, "taken", 1).await;
        // Submits waiting together share a commit on SQLite: among them,
        // a taken id and an id submitted twice at once.
        let ids: Vec<String> = (0..100)
            .map(|i| match i {
                10 => "taken".to_owned(),
                20 | 21 => "twice".to_owned(),
                _ => format!("burst-{i:03}"),
            })
            .collect();
        let answers = futures_util::future::join_all(ids.iter().map(|id| {
            let store = store.clone();
            let job = NewJob {
                id: id.clone(),
                payload: payload(&["one"]),
                resolved: None,
                max_attempts: 1,
            };
            async move { store.insert_announced_job(&job).await }
        }))
        .await;
        let mut created = 0;
        let mut duplicates = Vec::new();
        for (id, answer) in ids.iter().zip(answers) {
            match answer {
                Ok(record) => {
                    assert_eq!(&record.id, id, "{}", db.kind());
                    assert_eq!(record.status, JobState::Queued, "{}", db.kind());
                    created += 1;
                }
                Err(stepd_store::StoreError::DuplicateJob(taken)) => duplicates.push(taken),
                Err(e) => panic!("{}: submit {id}: {e}", db.kind()),
            }
        }
        duplicates.sort();
        assert_eq!(duplicates, ["taken", "twice"], "{}", db.kind());
        assert_eq!(created, 98, "{}", db.kind());
        // Every 201 is a row, and no refused submit left one.
        for id in ids.iter().filter(|id| id.starts_with("burst-")) {
            assert!(store.get_job(id).await.expect("get").is_some(), "{}: {id}", db.kind());
        }
        // The refused submit changed nothing of the job that had the id.
        let taken = store.get_job("taken").await.expect("get").expect("the first");
        let steps = taken.payload["task"]["steps"].as_array().map_or(0, Vec::len);
        assert_eq!(steps, 2, "{}: {}", db.kind(), taken.payload);
        // Announced as inserted (the embedded dispatcher's submit).
        let burst = store.get_job("burst-000").await.expect("get").expect("a burst job");
        assert!(burst.published_at.is_some(), "{}", db.kind());
        store.close().await;
        db.drop_now().await;
    }
}

/// The job's last event as a worker records it.
fn succeeded(job_id: &str) -> EventRecord {
    EventRecord {
        seq: 9,
        job_id: job_id.into(),
        at: "2026-12-02T00:00:00.000Z".into(),
        event: Event::JobSucceeded { job_attempt: 1 },
    }
}

#[tokio::test]
async fn a_job_ends_with_its_last_event_in_one_write_and_a_refused_ending_writes_neither() {
    for db in TestDb::both().await {
        let store = db.open().await;
        submit(&store, "a", 2).await;
        let by = worker("w1", Duration::from_secs(30));
        let job = store.claim_next(&by).await.expect("claim").expect("a job");
        // A stale version (an operator's request arrived) is refused whole.
        assert!(!store
            .finish("a", "w1", JobState::Succeeded, None, job.version - 1, &succeeded("a"))
            .await
            .expect("finish"));
        assert!(store.events_after("a", 0, 10).await.expect("events").is_empty());
        assert!(store
            .finish("a", "w1", JobState::Succeeded, None, job.version, &succeeded("a"))
            .await
            .expect("finish"));
        let events = store.events_after("a", 0, 10).await.expect("events");
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["task.job.succeeded"], "{}", db.kind());
        let job = store.get_job("a").await.expect("get").expect("exists");
        assert_eq!(job.status, JobState::Succeeded, "{}", db.kind());
        store.close().await;
        db.drop_now().await;
    }
}

#[tokio::test]
async fn a_one_step_jobs_start_checkpoint_and_ending_are_one_batch_decided_at_the_version_before_it() {
    for db in TestDb::both().await {
        let store = db.open().await;
        submit(&store, "a", 2).await;
        assert_eq!(store.job_counts().await.expect("counts"), (1, 1), "{}", db.kind());
        let by = worker("w1", Duration::from_secs(30));
        let job = store.claim_next(&by).await.expect("claim").expect("a job");
        let started = json!({"event": "task.step.attempt.started", "payload": {"stepId": "one"}});
        let batch = ProgressBatch {
            events: vec![("2026-12-02T00:00:00.000Z".into(), started)],
            current_step: Some(CurrentStep {
                step_id: "one".into(),
                step_index: 0,
                workspace: "/work/a".into(),
            }),
            checkpoint: Some(CheckpointRow {
                step_index: 0,
                step_id: "one".into(),
                patch: b"patch".to_vec(),
                state: "{}".into(),
            }),
            // Decided at the version the worker read before the batch:
            // the running step written with it does not move it first.
            ending: Some(JobEnding::of(JobState::Succeeded, None, job.version, &succeeded("a"))),
            ..ProgressBatch::default()
        };
        let written = store.record_progress("a", "w1", &batch).await.expect("record");
        assert!(
            written.checkpoint_kept && written.finished,
            "{}: {written:?}",
            db.kind()
        );
        let job = store.get_job("a").await.expect("get").expect("exists");
        assert_eq!(job.status, JobState::Succeeded, "{}", db.kind());
        assert_eq!(job.current_step_id.as_deref(), Some("one"), "{}", db.kind());
        let steps: Vec<u32> = store
            .checkpoints("a")
            .await
            .expect("checkpoints")
            .iter()
            .map(|c| c.step_index)
            .collect();
        assert_eq!(steps, [0], "{}", db.kind());
        let events = store.events_after("a", 0, 10).await.expect("events");
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            names,
            ["task.step.attempt.started", "task.job.succeeded"],
            "{}",
            db.kind()
        );
        assert_eq!(store.job_counts().await.expect("counts"), (1, 0), "{}", db.kind());
        store.close().await;
        db.drop_now().await;
    }
}

#[tokio::test]
async fn a_job_whose_lease_expired_waits_out_the_retry_backoff_before_anyone_claims_it() {
    for db in TestDb::both().await {
        // Given a running job whose worker stops renewing its lease,
        let store = db.open().await;
        submit(&store, "c", 3).await;
        let short = worker("w1", Duration::from_millis(200));
        store.claim_next(&short).await.expect("claim").expect("a job");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // when the sweep requeues it with the queue-retry backoff,
        let before = stepd_store::now_ms();
        let requeued = store
            .expire_leases(|attempt| Duration::from_secs(30 * u64::from(attempt)))
            .await
            .expect("sweep");
        assert_eq!(requeued, vec!["c".to_owned()]);
        // then it is queued for attempt 2 but not due for the backoff of
        // attempt 1, nobody can claim it yet, and the event says so.
        let job = store.get_job("c").await.expect("get").expect("exists");
        assert_eq!((job.status, job.attempt), (JobState::Queued, 2));
        assert!(
            job.next_attempt_at >= before + 29_000,
            "{}: due at {} but the backoff is 30 s from {before}",
            db.kind(),
            job.next_attempt_at
        );
        assert!(
            store.claim_next(&short).await.expect("claim").is_none(),
            "{}",
            db.kind()
        );
        let events = store.events_after("c", 0, 10).await.expect("events");
        assert_eq!(events[0].event, "task.job.lease_expired");
        assert_eq!(events[0].payload["delaySeconds"], 30, "{}", db.kind());
        store.close().await;
        db.drop_now().await;
    }
}

#[tokio::test]
async fn leases_expire_into_a_retry_then_dead_letter_and_a_pending_cancel_wins() {
    for db in TestDb::both().await {
        let store = db.open().await;
        submit(&store, "a", 2).await;
        let short = worker("w1", Duration::from_millis(200));
        let job = store.claim_next(&short).await.expect("claim").expect("a job");
        assert_eq!((job.id.as_str(), job.attempt), ("a", 1));
        // A heartbeat by someone else does not renew it.
        assert!(store
            .heartbeat("a", &worker("w2", Duration::from_secs(5)))
            .await
            .expect("hb")
            .is_none());
        assert!(
            store.expire_leases(|_| Duration::ZERO).await.expect("sweep").is_empty(),
            "not expired yet"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store.expire_leases(|_| Duration::ZERO).await.expect("sweep"),
            vec!["a".to_owned()]
        );
        let job = store.get_job("a").await.expect("get").expect("exists");
        assert_eq!(
            (job.status, job.attempt, job.lease_owner.clone()),
            (JobState::Queued, 2, None)
        );
        // The old owner can no longer finish it.
        assert!(!store
            .finish("a", "w1", JobState::Succeeded, None, job.version, &succeeded("a"))
            .await
            .expect("finish"));

        store.claim_next(&short).await.expect("claim").expect("claimed again");
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.expire_leases(|_| Duration::ZERO).await.expect("sweep");
        let job = store.get_job("a").await.expect("get").expect("exists");
        assert_eq!(job.status, JobState::DeadLetter, "{}: attempts used up", db.kind());
        let names: Vec<String> = store
            .events_after("a", 0, 100)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(names, vec!["task.job.lease_expired", "task.job.lease_expired"]);

        // A cancel asked of a running job wins over the retry.
        submit(&store, "b", 3).await;
        let job = store.claim_next(&short).await.expect("claim").expect("b");
        let cancel = ControlRequest {
            action: "cancel".into(),
            step_id: None,
            reason: Some("enough".into()),
        };
        let p = plan(&job, &cancel, "ops", "now", 0).expect("cancel is allowed");
        store
            .apply_control(&p.to_write(), job.version, "ops", Some("enough"), &[])
            .await
            .expect("apply");
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.expire_leases(|_| Duration::ZERO).await.expect("sweep");
        let job = store.get_job("b").await.expect("get").expect("exists");
        assert_eq!(job.status, JobState::Cancelled, "{}", db.kind());
        let rows = store.control_events("b").await.expect("control rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].action.as_str(), rows[0].reason.as_deref()),
            ("cancel", Some("enough"))
        );
        store.close().await;
        db.drop_now().await;
    }
}

#[tokio::test]
async fn a_requeued_job_is_not_claimable_before_its_retry_time() {
    for db in TestDb::both().await {
        let store = db.open().await;
        submit(&store, "r", 2).await;
        let by = worker("w1", Duration::from_secs(30));
        store.claim_next(&by).await.expect("claim").expect("r");
        assert_eq!(
            store
                .requeue("r", "w1", 2, Duration::from_millis(400))
                .await
                .expect("requeue"),
            Some(JobState::Queued)
        );
        let job = store.get_job("r").await.expect("get").expect("r");
        assert_eq!((job.status, job.attempt), (JobState::Queued, 2));
        assert!(job.next_attempt_at > stepd_store::now_ms());
        assert!(
            store.claim_next(&by).await.expect("claim").is_none(),
            "{}: not due yet",
            db.kind()
        );
        assert!(store.claim_job("r", &by).await.expect("claim").is_none());
        assert!(store
            .take_unannounced(Duration::ZERO, 10)
            .await
            .expect("sweep")
            .is_empty());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            store
                .take_unannounced(Duration::from_secs(60), 10)
                .await
                .expect("sweep"),
            vec!["r".to_owned()]
        );
        store.mark_announced("r").await.expect("mark");
        assert!(
            store
                .take_unannounced(Duration::from_secs(60), 10)
                .await
                .expect("sweep")
                .is_empty(),
            "announced once"
        );
        let job = store.claim_job("r", &by).await.expect("claim").expect("due now");
        assert_eq!(job.attempt, 2);
        store.close().await;
        db.drop_now().await;
    }
}

#[tokio::test]
async fn events_checkpoints_and_attempts_round_trip() {
    for db in TestDb::both().await {
        let store = db.open().await;
        submit(&store, "c", 1).await;
        store
            .claim_next(&worker("w1", Duration::from_secs(30)))
            .await
            .expect("claim")
            .expect("c");
        let ev = json!({"event": "task.step.attempt.started", "payload": {"stepId": "one"}});
        assert_eq!(
            store
                .append_event("c", "2026-01-01T00:00:00Z", &ev)
                .await
                .expect("append"),
            1
        );
        assert_eq!(
            store
                .append_event("c", "2026-01-01T00:00:01Z", &ev)
                .await
                .expect("append"),
            2
        );
        let after = store.events_after("c", 1, 10).await.expect("events");
        assert_eq!(after.len(), 1);
        assert_eq!((after[0].seq, after[0].payload["stepId"].as_str()), (2, Some("one")));
        assert!(store.append_event("nope", "x", &ev).await.is_err(), "unknown job");

        let patch = b"diff --git a/x b/x\n\0binary\xff".to_vec();
        for i in [0u32, 1, 3] {
            let written = store
                .put_checkpoint(
                    "c",
                    "w1",
                    &CheckpointRow {
                        step_index: i,
                        step_id: format!("s{i}"),
                        patch: patch.clone(),
                        state: "{}".into(),
                    },
                )
                .await
                .expect("checkpoint");
            assert!(written);
        }
        // Only the lease holder writes checkpoints.
        let stranger = CheckpointRow {
            step_index: 2,
            step_id: "s2".into(),
            patch: patch.clone(),
            state: "{}".into(),
        };
        assert!(!store
            .put_checkpoint("c", "w2", &stranger)
            .await
            .expect("refused quietly"));
        // Writing the same step again replaces it: no duplicates.
        store
            .put_checkpoint(
                "c",
                "w1",
                &CheckpointRow {
                    step_index: 1,
                    step_id: "s1".into(),
                    patch: patch.clone(),
                    state: "{\"again\":true}".into(),
                },
            )
            .await
            .expect("checkpoint");
        let cps = store.checkpoints("c").await.expect("read");
        assert_eq!(cps.iter().map(|c| c.step_index).collect::<Vec<_>>(), vec![0, 1, 3]);
        assert_eq!(cps[0].patch, patch, "{}: patches are byte-exact", db.kind());
        assert_eq!(cps[1].state, "{\"again\":true}");
        assert_eq!(store.first_unfinished_step("c").await.expect("first"), 2);
        let many = store
            .first_unfinished_steps(&["c".to_owned(), "nope".to_owned()])
            .await
            .expect("first of several");
        assert_eq!((many["c"], many["nope"]), (2, 0));
        store.delete_checkpoints_from("c", 1).await.expect("delete");
        assert_eq!(store.first_unfinished_step("c").await.expect("first"), 1);

        let row = AttemptRow {
            step_index: 0,
            attempt: 1,
            step_id: "one".into(),
            outcome: "idle_timeout".into(),
            failure_class: Some("transient_runtime".into()),
            strategy: Some("soft_reset".into()),
            wall_clock_seconds: 1.5,
            fuel_consumed: Some(123_456),
            worker: "w1".into(),
            finished_at: "2026-01-01T00:00:00Z".into(),
            http: vec![stepd_records::events::HttpRequestRecord {
                method: "POST".into(),
                origin: "https://api.example.com".into(),
                path: "/v1/chat/completions".into(),
                status: Some(200),
                request_bytes: 120,
                response_bytes: 2048,
                ms: 41.5,
                denied: None,
                error: None,
            }],
            retry_context: Some(serde_json::json!({"failureClass": "transient_runtime", "failureSummary": "idle"})),
        };
        store.record_attempt("c", &row).await.expect("attempt");
        store.record_attempt("c", &row).await.expect("same attempt again");
        assert_eq!(store.attempts("c").await.expect("attempts"), vec![row]);
        store.close().await;
        db.drop_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_kept_in_the_store_are_replaced_appended_to_and_removed_byte_for_byte() {
    for db in TestDb::both().await {
        let store = db.open().await;
        submit(&store, "arts", 1).await;
        let patch: Vec<u8> = (0..=255u8).chain([0, 0, 0xff]).collect();
        store
            .put_artifact("arts", "patches/steps/step-0000.patch", b"old")
            .await
            .expect("put");
        store
            .put_artifact("arts", "patches/steps/step-0000.patch", &patch)
            .await
            .expect("replace");
        for line in ["{\"event\":\"one\"}\n", "{\"event\":\"two ünï\"}\n"] {
            store
                .append_artifact("arts", "events.jsonl", line)
                .await
                .expect("append");
        }
        store
            .put_artifact("arts", "state/steps/step-0001.json", b"{}")
            .await
            .expect("put");
        store
            .remove_artifact("arts", "state/steps/step-0001.json")
            .await
            .expect("remove");
        let listed: Vec<(String, u64)> = store
            .artifacts("arts")
            .await
            .expect("list")
            .into_iter()
            .map(|a| (a.path, a.size))
            .collect();
        let events = "{\"event\":\"one\"}\n{\"event\":\"two ünï\"}\n";
        assert_eq!(
            listed,
            vec![
                ("events.jsonl".to_owned(), events.len() as u64),
                ("patches/steps/step-0000.patch".to_owned(), patch.len() as u64),
            ],
            "{}",
            db.kind()
        );
        assert_eq!(
            store
                .artifact("arts", "patches/steps/step-0000.patch")
                .await
                .expect("read"),
            Some(patch.clone())
        );
        assert_eq!(
            store.artifact("arts", "events.jsonl").await.expect("read"),
            Some(events.as_bytes().to_vec()),
            "{}",
            db.kind()
        );
        assert_eq!(
            store
                .artifact("arts", "state/steps/step-0001.json")
                .await
                .expect("read"),
            None
        );
        assert!(store.artifacts("another").await.expect("list").is_empty());
        store.close().await;
        db.drop_now().await;
    }
}
