//! Given a service worker on a runtime with a single async thread and a
//! job whose baseline is a large directory, when the worker materialises
//! that workspace (tens of thousands of file writes and git objects), then
//! its heartbeat keeps renewing the lease at its cadence: blocking work runs
//! off the async threads, so one job's disk work never stalls the lease of
//! this or another job.

use std::time::{Duration, Instant};

use serde_json::json;
use stepd_store::JobState;
use stepd_tests::inproc::InProcessWorker;

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
    let worker = InProcessWorker::start(HEARTBEAT).await;
    let baseline = worker.dir().join("baseline");
    large_baseline(&baseline, 100, 100);
    let payload = json!({"type": "task", "maxAttempts": 1, "task": {
        "repository": baseline,
        "steps": [{"id": "mark", "plugin": "write-file", "inputs": {"path": "done.txt", "text": "ok\n"}}]
    }});
    let started = Instant::now();
    let resolved = worker.resolve(&payload);
    worker.insert("large", payload, Some(resolved)).await;

    // Watch the lease from the test: each heartbeat moves its expiry. A
    // stalled runtime stalls this watcher too, which shows as a gap as well.
    let mut renewals: Vec<Instant> = vec![started];
    let mut last_expiry = None;
    let job = worker
        .wait_end("large", Duration::from_secs(120), |job| {
            if job.status == JobState::Running && job.lease_expires_at.is_some() && job.lease_expires_at != last_expiry
            {
                last_expiry = job.lease_expires_at;
                renewals.push(Instant::now());
            }
        })
        .await;
    renewals.push(Instant::now());
    worker.stop().await;
    assert_eq!(job.status, JobState::Succeeded);

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
