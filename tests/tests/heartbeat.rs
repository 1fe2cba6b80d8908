//! Given a service worker on a runtime with a single async thread and a
//! job whose baseline is a large directory, when the worker materialises
//! that workspace (tens of thousands of file writes and git objects), then
//! its heartbeat keeps renewing the lease at its cadence: blocking work runs
//! off the async threads, so one job's disk work never stalls the lease of
//! this or another job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stepd_job::payload::JobPayload;
use stepd_queue::Dispatcher;
use stepd_records::redact::Redactor;
use stepd_runtime::CancellationToken;
use stepd_settings::Settings;
use stepd_store::{JobState, NewJob};
use stepd_tests::services::TestDb;
use stepd_tests::{plugin_dir, runtime};
use stepd_worker::{Worker, WorkerOptions};

const HEARTBEAT: Duration = Duration::from_millis(25);

/// A plain directory of `dirs` × `files` small files.
fn large_baseline(root: &std::path::Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("pkg-{d:03}"));
        std::fs::create_dir_all(&dir).expect("baseline dir");
        for f in 0..files {
            std::fs::write(dir.join(format!("file-{f:03}.txt")), format!("{d}/{f}\n")).expect("baseline file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn heartbeats_keep_their_cadence_while_a_large_workspace_is_materialised() {
    let scratch = tempfile::tempdir().expect("scratch");
    let baseline = scratch.path().join("baseline");
    large_baseline(&baseline, 100, 100);

    let db = TestDb::sqlite();
    let store = db.open().await;
    let payload = json!({"type": "task", "maxAttempts": 1, "task": {
        "repository": baseline,
        "steps": [{"id": "mark", "plugin": "write-file", "inputs": {"path": "done.txt", "text": "ok\n"}}]
    }});
    let resolved = JobPayload::parse(&payload.to_string())
        .and_then(|p| p.validate(scratch.path(), &plugin_dir()))
        .expect("a valid payload");
    store
        .insert_job(&NewJob {
            id: "large".into(),
            payload,
            resolved: Some(serde_json::to_value(&resolved).expect("resolved job as JSON")),
            max_attempts: 1,
        })
        .await
        .expect("insert the job");

    let mut settings = Settings::from_lookup(|_| None).expect("default settings");
    settings.service.heartbeat = HEARTBEAT;
    settings.service.lease = Duration::from_secs(30);
    let worker = Worker::new(
        store.clone(),
        Dispatcher::embedded(Duration::from_millis(20)),
        Arc::new(runtime()),
        Arc::new(settings),
        WorkerOptions {
            artifact_root: scratch.path().join("artifacts"),
            work_root: scratch.path().join("work"),
            concurrency: 1,
            name: "worker-1".into(),
        },
        Arc::new(Redactor::new()),
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });

    // Watch the lease from the test: each heartbeat moves its expiry. A
    // stalled runtime stalls this watcher too, which shows as a gap as well.
    let mut renewals: Vec<Instant> = vec![started];
    let mut last_expiry = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        assert!(Instant::now() < deadline, "the job did not end within two minutes");
        let job = store.get_job("large").await.expect("read the job").expect("the job");
        if job.status == JobState::Running && job.lease_expires_at.is_some() && job.lease_expires_at != last_expiry {
            last_expiry = job.lease_expires_at;
            renewals.push(Instant::now());
        }
        if job.status.is_terminal() {
            renewals.push(Instant::now());
            break job.status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.cancel();
    running.await.expect("the worker stops");
    assert_eq!(status, JobState::Succeeded);

    let held = started.elapsed();
    let worst = renewals
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .expect("the start and the end at least");
    // The check proves something only if the job ran for many heartbeats:
    // a stalled heartbeat would show as one long gap.
    assert!(
        held > HEARTBEAT * 20,
        "the job ran only {held:?}: the baseline is too small to tell"
    );
    // Scheduling on a loaded two-core machine may delay one renewal a
    // little; a stall holds it up for most of the materialisation.
    assert!(
        worst < (HEARTBEAT * 10).max(held / 5),
        "the heartbeat stalled for {worst:?} (every {HEARTBEAT:?} expected) over {} renewals in {held:?}",
        renewals.len() - 2
    );
}
