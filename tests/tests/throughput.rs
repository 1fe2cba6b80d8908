//! Many jobs through real processes at once. Given four worker processes
//! sharing one store and 500 one-step jobs submitted together, every job
//! succeeds and its events are numbered 1..n with no gap or repeat, ending
//! with its terminal event (events are written in batches, numbered once
//! per batch). Given a worker SIGKILLed while it writes its jobs' step ends,
//! every job still ends intact on the worker that takes over; so does a
//! job whose worker is killed inside the transaction that ends its step
//! (held there by the store's crash-test hold point). Given a
//! worker in another process on the embedded store, it starts a new job
//! within milliseconds of its submit, not at its next poll.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use stepd_store::{crashpoint, JobState, Store};
use stepd_tests::cluster::{repo_dir, Cluster, Mode};

fn one_write(i: usize) -> Value {
    json!({"type": "task", "maxAttempts": 3, "task": {"repository": repo_dir(), "steps": [
        {"id": "write", "plugin": "write-file", "inputs": {"path": format!("f{i}.txt"), "text": "x\n"}}
    ]}})
}

async fn submit_all(cluster: &Cluster, jobs: usize) -> Vec<String> {
    futures_util::stream::iter(0..jobs)
        .map(|i| async move { cluster.submit(&one_write(i)).await })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Wait until none of `ids` is queued or running.
async fn wait_all_ended(store: &Store, ids: &[String], timeout: Duration) {
    let start = Instant::now();
    loop {
        let timings = store.job_timings().await.expect("job timings");
        let open = timings.iter().filter(|t| !t.status.is_terminal()).count();
        if timings.len() >= ids.len() && open == 0 {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{open} of {} jobs still open after {timeout:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Job `id` succeeded, and its events are 1..n, ending with its one
/// success.
async fn assert_succeeded_with_gap_free_events(store: &Store, id: &str) {
    let job = store.get_job(id).await.expect("get job").expect("the job");
    assert_eq!(job.status, JobState::Succeeded, "job {id}: {:?}", job.last_error);
    let events = store.events_after(id, 0, 10_000).await.expect("events");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).expect("count")).collect();
    assert_eq!(seqs, expected, "job {id}: events numbered with a gap or twice");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.last(), Some(&"task.job.succeeded"), "job {id}: {names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "task.job.succeeded").count(),
        1,
        "job {id}: {names:?}"
    );
}

/// Every one-step job succeeded with gap-free events and one checkpoint.
async fn assert_intact(store: &Store, ids: &[String]) {
    for id in ids {
        assert_succeeded_with_gap_free_events(store, id).await;
        let checkpoints = store.checkpoints(id).await.expect("checkpoints");
        assert_eq!(checkpoints.len(), 1, "job {id}: one step, one checkpoint");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_run_500_jobs_and_every_job_has_gap_free_events_ending_in_success() {
    for mode in Mode::BOTH {
        let cluster = Cluster::start(mode, 0, 4).await;
        let store = Store::open(&cluster.store_url()).await.expect("open the store");
        let ids = submit_all(&cluster, 500).await;
        wait_all_ended(&store, &ids, Duration::from_secs(600)).await;
        assert_intact(&store, &ids).await;
        // Four processes shared the work (each ran jobs of its own).
        let workers: std::collections::BTreeSet<String> = {
            let mut names = std::collections::BTreeSet::new();
            for id in &ids {
                for attempt in store.attempts(id).await.expect("attempts") {
                    names.insert(attempt.worker);
                }
            }
            names
        };
        assert!(workers.len() >= 2, "{mode:?}: only {workers:?} ran jobs");
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_while_writing_step_ends_leaves_every_job_intact() {
    for mode in Mode::BOTH {
        let mut cluster = Cluster::start(mode, 0, 1).await;
        let store = Store::open(&cluster.store_url()).await.expect("open the store");
        let ids = submit_all(&cluster, 150).await;
        // SIGKILL the worker while it is busy ending steps: some jobs done,
        // most not.
        let start = Instant::now();
        loop {
            let timings = store.job_timings().await.expect("job timings");
            if timings.iter().filter(|t| t.status.is_terminal()).count() >= 20 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no progress before the kill"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cluster.workers[0].kill();
        cluster.spawn_worker();
        wait_all_ended(&store, &ids, Duration::from_secs(600)).await;
        assert_intact(&store, &ids).await;
        store.close().await;
    }
}

/// Given a worker that holds its first step-end transaction open, when it
/// is SIGKILLed inside it, then nothing of that transaction is visible and
/// a worker that takes over runs the held step again and ends the job with
/// one checkpoint a step and gap-free events.
async fn killed_inside_the_first_step_end(steps: serde_json::Value) {
    let step_count = steps.as_array().map_or(0, Vec::len);
    for mode in Mode::BOTH {
        let mut cluster = Cluster::start(mode, 0, 0).await;
        let held = cluster.spawn_worker_with(&[(crashpoint::HOLD_VARIABLE, "step_end")]);
        let store = Store::open(&cluster.store_url()).await.expect("open the store");
        let job = json!({"type": "task", "maxAttempts": 3, "task": {"repository": repo_dir(), "steps": steps}});
        let id = cluster.submit(&job).await;
        cluster.workers[held].wait_for_log(crashpoint::HOLDING_MESSAGE, Duration::from_secs(120));
        cluster.workers[held].kill();
        let held_checkpoints = store.checkpoints(&id).await.expect("checkpoints");
        assert!(
            held_checkpoints.is_empty(),
            "{mode:?}: an uncommitted checkpoint is visible"
        );
        let held_job = store.get_job(&id).await.expect("get").expect("job");
        assert_eq!(
            held_job.status,
            JobState::Running,
            "{mode:?}: an uncommitted ending is visible"
        );

        cluster.spawn_worker();
        wait_all_ended(&store, std::slice::from_ref(&id), Duration::from_secs(120)).await;
        assert_succeeded_with_gap_free_events(&store, &id).await;
        // The held batch's checkpoint went with it: the worker that took
        // over ran step one again, and each step has one checkpoint.
        let checkpoints = store.checkpoints(&id).await.expect("checkpoints");
        let steps: Vec<u32> = checkpoints.iter().map(|c| c.step_index).collect();
        let expected: Vec<u32> = (0..u32::try_from(step_count).expect("steps")).collect();
        assert_eq!(steps, expected, "{mode:?}");
        // Step one ran again on the worker that took over, and no attempt
        // row of the killed worker outlived its transaction.
        let attempts = store.attempts(&id).await.expect("attempts");
        let takeover = attempts
            .iter()
            .find(|a| a.step_id == "one")
            .map(|a| a.worker.clone())
            .expect("step one's attempt");
        assert!(
            attempts.iter().all(|a| a.worker == takeover),
            "{mode:?}: every kept attempt is the takeover's: {attempts:?}"
        );
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_inside_its_step_end_transaction_leaves_the_job_intact() {
    // Step one's end (events, attempt, checkpoint) is its own transaction.
    killed_inside_the_first_step_end(json!([
        {"id": "one", "plugin": "write-file", "inputs": {"path": "one.txt", "text": "1\n"}},
        {"id": "two", "plugin": "write-file", "inputs": {"path": "two.txt", "text": "2\n"}}
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_inside_a_one_step_jobs_only_commit_leaves_the_job_intact() {
    // The last step's checkpoint waits for the job's ending: the step's
    // end and the job's end are one transaction.
    killed_inside_the_first_step_end(json!([
        {"id": "one", "plugin": "write-file", "inputs": {"path": "one.txt", "text": "1\n"}}
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_another_process_starts_a_new_job_without_waiting_for_its_poll() {
    // Polling every 10 s: only a wake-up can start a job sooner.
    let cluster = Cluster::start_with(Mode::Embedded, 0, 1, &[("STEPD_SWEEP_MS", "10000")]).await;
    let store = Store::open(&cluster.store_url()).await.expect("open the store");
    // The first job may meet a worker still compiling its plugins.
    let first = cluster.submit(&one_write(0)).await;
    wait_all_ended(&store, &[first], Duration::from_secs(60)).await;
    let mut latencies = Vec::new();
    for i in 1..=5 {
        let id = cluster.submit(&one_write(i)).await;
        wait_all_ended(&store, std::slice::from_ref(&id), Duration::from_secs(60)).await;
        let job = store.get_job(&id).await.expect("get").expect("job");
        assert_eq!(job.status, JobState::Succeeded);
        latencies.push(job.finished_at.unwrap_or(i64::MAX) - job.created_at);
    }
    latencies.sort_unstable();
    store.close().await;
    assert!(
        latencies[2] < 2_000,
        "submit → succeeded took {latencies:?} ms: the worker waited for its 10 s poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_jobs_work_directory_is_removed_once_its_retention_passed() {
    let cluster = Cluster::start_with(Mode::Embedded, 1, 0, &[("STEPD_WORK_RETENTION_SECONDS", "2")]).await;
    let store = Store::open(&cluster.store_url()).await.expect("open the store");
    let id = cluster.submit(&one_write(0)).await;
    wait_all_ended(&store, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let dir = cluster.data_dir.join("work").join(&id);
    let artifacts = cluster.data_dir.join("artifacts").join("agent_jobs").join(&id);
    let kept_at_first = dir.join("workspace").join("f0.txt").is_file();
    let start = Instant::now();
    while dir.exists() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = start.elapsed();
    store.close().await;
    assert!(
        kept_at_first,
        "the workspace is there for inspection right after the job ended"
    );
    assert!(!dir.exists(), "{} still there after {waited:?}", dir.display());
    assert!(artifacts.join("events.jsonl").is_file(), "the artifacts are kept");

    // With no retention, the directory goes as the job ends.
    let cluster = Cluster::start_with(Mode::Embedded, 1, 0, &[("STEPD_WORK_RETENTION_SECONDS", "0")]).await;
    let store = Store::open(&cluster.store_url()).await.expect("open the store");
    let id = cluster.submit(&one_write(1)).await;
    wait_all_ended(&store, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let dir = cluster.data_dir.join("work").join(&id);
    let start = Instant::now();
    while dir.exists() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await;
    assert!(!dir.exists(), "{} kept with no retention", dir.display());
}
