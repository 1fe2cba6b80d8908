//! A service worker in this test process, on its own SQLite store: for
//! scenarios that watch the worker's store and runtime directly (lease
//! renewals, jobs inserted without going through the API).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use stepd_job::payload::JobPayload;
use stepd_queue::Dispatcher;
use stepd_records::redact::Redactor;
use stepd_runtime::CancellationToken;
use stepd_settings::Settings;
use stepd_store::{JobRecord, NewJob, Store};
use stepd_worker::{Worker, WorkerOptions};

use crate::services::TestDb;
use crate::{plugin_dir, runtime};

/// One worker (concurrency 1) and its store.
pub struct InProcessWorker {
    /// The worker's store.
    pub store: Store,
    /// When the worker started.
    pub started: Instant,
    stop: CancellationToken,
    running: tokio::task::JoinHandle<()>,
    scratch: tempfile::TempDir,
    _db: TestDb,
}

impl InProcessWorker {
    /// Start a worker renewing its lease every `heartbeat`.
    pub async fn start(heartbeat: Duration) -> Self {
        let scratch = tempfile::tempdir().expect("scratch");
        let db = TestDb::sqlite();
        let store = db.open().await;
        let mut settings = Settings::from_lookup(|_| None).expect("default settings");
        settings.service.heartbeat = heartbeat;
        settings.service.lease = Duration::from_secs(30);
        // The sample repositories and the scenarios' scratch ones.
        settings.grants.baseline_roots = Some(vec![crate::cluster::repo_dir(), std::env::temp_dir()]);
        let worker = Worker::new(
            store.clone(),
            Dispatcher::embedded(Duration::from_millis(20)),
            Arc::new(runtime()),
            Arc::new(settings),
            WorkerOptions {
                artifact_root: scratch.path().join("artifacts"),
                work_root: scratch.path().join("work"),
                plugin_dir: plugin_dir(),
                concurrency: 1,
                name: "worker-1".into(),
                prometheus: None,
            },
            Arc::new(Redactor::new()),
        );
        let stop = CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { worker.run(stop).await }
        });
        InProcessWorker {
            store,
            started,
            stop,
            running,
            scratch,
            _db: db,
        }
    }

    /// A directory for the scenario's files.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The job's workspace on this worker.
    pub fn workspace(&self, id: &str) -> PathBuf {
        self.scratch.path().join("work").join(id).join("workspace")
    }

    /// The resolved form the API would store for `payload` (relative paths
    /// taken from [`Self::dir`]).
    pub fn resolve(&self, payload: &Value) -> Value {
        let job = JobPayload::parse(&payload.to_string())
            .and_then(|p| {
                p.validate(
                    self.dir(),
                    &plugin_dir(),
                    &stepd_job::payload::HostGrants::local_default(),
                )
            })
            .expect("a valid payload");
        serde_json::to_value(&job).expect("the resolved job as JSON")
    }

    /// Queue `payload` as job `id` with its `resolved` form, or none.
    pub async fn insert(&self, id: &str, payload: Value, resolved: Option<Value>) {
        self.store
            .insert_job(&NewJob {
                id: id.into(),
                payload,
                resolved,
                max_attempts: 1,
            })
            .await
            .expect("insert the job");
    }

    /// Poll job `id` until it ends, showing each read to `watch`.
    pub async fn wait_end(&self, id: &str, timeout: Duration, mut watch: impl FnMut(&JobRecord)) -> JobRecord {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(Instant::now() < deadline, "job {id} did not end within {timeout:?}");
            let job = self.store.get_job(id).await.expect("read the job").expect("the job");
            watch(&job);
            if job.status.is_terminal() {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop the worker and wait for it.
    pub async fn stop(self) {
        self.stop.cancel();
        self.running.await.expect("the worker stops");
    }
}
