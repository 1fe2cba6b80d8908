//! A host's capacity is never a step's failure. Given a runtime with two
//! instance slots, when six attempts of a step that sleeps start at once,
//! then every one of them runs in its turn and ends by its own idle
//! deadline — none fails to instantiate (`maximum concurrent limit`), none
//! is charged for waiting; and an attempt cancelled while it waits for a
//! slot ends `cancelled` without starting. Given a worker process that
//! cannot map an instance (its address space capped below one instance's
//! memory reservation), when it claims a job allowed one attempt, then the
//! job goes back to the queue at that same attempt, never dead-lettered,
//! and a healthy worker runs it to success.

use std::time::{Duration, Instant};

use serde_json::json;
use stepd_runtime::{AttemptLimits, AttemptOutcome, AttemptRequest, CancellationToken, Runtime};
use stepd_settings::RuntimeSettings;
use stepd_tests::cluster::{repo_dir, Cluster, Mode};
use stepd_tests::{context, load, test_settings, Scratch};

fn sleeping(scratch: &Scratch, cancel: CancellationToken) -> AttemptRequest {
    AttemptRequest {
        workspace: scratch.workspace(),
        context: context(1, json!({"attempts": [1], "mode": "sleep"})),
        limits: AttemptLimits::new(Duration::from_secs(30), Duration::from_millis(300)),
        cancel,
        grants: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_attempts_on_two_slots_each_run_in_turn_and_end_by_their_own_deadline() {
    let rt = std::sync::Arc::new(
        Runtime::new(RuntimeSettings {
            pool_slots: 2,
            ..test_settings()
        })
        .expect("runtime"),
    );
    let hang = load(&rt, "hang");
    let scratches: Vec<Scratch> = (0..6).map(|_| Scratch::new()).collect();
    let started = Instant::now();
    let mut runs = Vec::new();
    for scratch in &scratches {
        let (rt, hang, request) = (rt.clone(), hang.clone(), sleeping(scratch, CancellationToken::new()));
        runs.push(tokio::spawn(async move { rt.run_attempt(&hang, request).await }));
    }
    for run in runs {
        let report = run.await.expect("join").expect("the attempt runs");
        assert_eq!(report.outcome, AttemptOutcome::IdleTimeout, "{}", report.outcome);
        // Waiting for a slot is not charged to the attempt.
        assert!(report.wall_clock_seconds < 1.0, "{}", report.wall_clock_seconds);
    }
    // Three turns of two 300 ms attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );

    // Both slots busy: a third attempt waits, and a cancel ends it unstarted.
    let busy: Vec<_> = scratches[..2]
        .iter()
        .map(|s| {
            let (rt, hang, request) = (rt.clone(), hang.clone(), sleeping(s, CancellationToken::new()));
            tokio::spawn(async move { rt.run_attempt(&hang, request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cancel = CancellationToken::new();
    let waiting = {
        let (rt, hang, request) = (rt.clone(), hang.clone(), sleeping(&scratches[2], cancel.clone()));
        tokio::spawn(async move { rt.run_attempt(&hang, request).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel.cancel();
    let report = waiting.await.expect("join").expect("the attempt ends");
    assert_eq!(report.outcome, AttemptOutcome::Cancelled);
    assert_eq!(report.wall_clock_seconds, 0.0, "it never started");
    for run in busy {
        let report = run.await.expect("join").expect("runs");
        assert_eq!(report.outcome, AttemptOutcome::IdleTimeout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_map_an_instance_hands_the_job_back_without_spending_its_attempt() {
    let mut cluster = Cluster::start(Mode::Embedded, 0, 0).await;
    // Without the pool, each instance reserves its memory's address space
    // (4 GiB and guards) when it is created: under a 3 GiB cap that
    // reservation fails, as it would on a host out of memory, while the
    // process itself runs.
    let capped = cluster.spawn_worker_capped(3 << 30, &[("STEPD_POOLING", "off")]);
    let job = json!({"type": "task", "maxAttempts": 1, "task": {"repository": repo_dir(), "steps": [
        {"id": "write", "plugin": "write-file", "inputs": {"path": "out.txt", "text": "x\n"}}
    ]}});
    let id = cluster.submit(&job).await;
    let started = Instant::now();
    let requeued = loop {
        let events = cluster.events(&id).await;
        if let Some(event) = events.iter().find(|e| e["event"] == "task.job.requeued") {
            break event.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never requeued: {events:?}\nworker log:\n{}",
            cluster.workers[capped].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let payload = &requeued["payload"];
    assert_eq!(payload["nextJobAttempt"], 1, "{requeued}");
    let reason = payload["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("could not start step 0"), "{requeued}");
    let names = cluster.event_names(&id).await;
    assert!(
        !names
            .iter()
            .any(|n| n == "task.step.attempt.failed" || n == "task.job.dead_letter"),
        "the host's failure was charged to the step: {names:?}"
    );

    cluster.workers[capped].kill();
    cluster.spawn_worker();
    let started = Instant::now();
    loop {
        let view = cluster.job(&id).await;
        if view["status"] == "succeeded" {
            break;
        }
        assert!(view["status"] == "queued" || view["status"] == "running", "{view}");
        assert!(started.elapsed() < Duration::from_secs(60), "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
