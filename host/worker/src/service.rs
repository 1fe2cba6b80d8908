//! The service worker: claims jobs from the store (told by the
//! dispatcher), holds each with a heartbeated lease, runs its steps through
//! `selfheal` with the operator's live control honoured between and during
//! attempts, keeps every checkpoint in the store, and ends the job — or
//! queues it again with backoff. A job another worker started continues at
//! its first unfinished step, rebuilt from the stored checkpoints.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::host::ServiceHost;
use super::live::JobLink;
use super::recorder::EventRecorder;
use super::retention::{self, RunningJobs};
use crate::on_store;
use stepd_job::payload::{HostGrants, JobPayload, ValidatedJob};
use stepd_queue::{Dispatcher, Hint};
use stepd_records::artifacts::Durability;
use stepd_records::metrics::Metrics;
use stepd_records::prometheus::Prometheus;
use stepd_records::redact::Redactor;
use stepd_runtime::{CancellationToken, Runtime};
use stepd_selfheal::{run_job, JobSpec, JobStatus, LifecycleError};
use stepd_settings::Settings;
use stepd_store::{Backend, ClaimedBy, JobRecord, Store};
use stepd_workspace::remote::{RemoteOptions, BASELINE_CACHE};

/// Where a worker keeps files and how much it runs at once.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Artifacts go to `<artifact_root>/agent_jobs/<job_id>/`.
    pub artifact_root: PathBuf,
    /// Workspaces go to `<work_root>/<job_id>/`.
    pub work_root: PathBuf,
    /// Named plugins are looked up here for a job the store holds no
    /// resolved form of (one queued before the store kept them).
    pub plugin_dir: PathBuf,
    /// Jobs run at once (and the RabbitMQ prefetch).
    pub concurrency: usize,
    /// This worker's id in leases (`host:pid:n`).
    pub name: String,
    /// The process's Prometheus registry, when it serves `/metrics`.
    pub prometheus: Option<Arc<Prometheus>>,
}

/// A worker: everything a claimed job needs. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    dispatcher: Dispatcher,
    runtime: Arc<Runtime>,
    settings: Arc<Settings>,
    options: Arc<WorkerOptions>,
    redactor: Arc<Redactor>,
}

/// A default worker name: host, process and a short random part.
pub fn worker_name(index: usize) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{index}:{}", std::process::id(), &tag[..6])
}

impl Worker {
    /// A worker on `store`, woken by `dispatcher`.
    pub fn new(
        store: Store,
        dispatcher: Dispatcher,
        runtime: Arc<Runtime>,
        settings: Arc<Settings>,
        options: WorkerOptions,
        redactor: Arc<Redactor>,
    ) -> Self {
        Worker {
            store,
            dispatcher,
            runtime,
            settings,
            options: Arc::new(options),
            redactor,
        }
    }

    /// Compile the plugin directory's components in the background, so the
    /// first job of a large (Python, JavaScript) step finds it ready.
    fn warm_plugins(&self, stop: &CancellationToken) {
        let runtime = self.runtime.clone();
        let dir = self.options.plugin_dir.clone();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let results = runtime.warm_plugins_in(&dir, &stop);
            for (path, result) in &results {
                if let Err(e) = result {
                    tracing::warn!(plugin = %path.display(), "plugin not usable: {e}");
                }
            }
            tracing::debug!(
                plugins = results.len(),
                seconds = started.elapsed().as_secs_f64(),
                "plugins compiled"
            );
        });
    }

    fn claimed_by(&self) -> ClaimedBy {
        ClaimedBy {
            owner: self.options.name.clone(),
            lease: self.settings.service.lease,
        }
    }

    /// Claim and run jobs until `stop`; then hand running jobs back to the
    /// queue and return.
    pub async fn run(&self, stop: CancellationToken) {
        self.warm_plugins(&stop);
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let running: RunningJobs = Arc::default();
        if !self.settings.service.work_retention.is_zero() {
            tokio::spawn(retention::prune_until(
                self.store.clone(),
                self.options.work_root.clone(),
                self.settings.service.work_retention,
                running.clone(),
                stop.clone(),
            ));
        }
        let prefetch = u16::try_from(self.options.concurrency).unwrap_or(u16::MAX);
        loop {
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
                () = stop.cancelled() => break,
            };
            // Every free slot is filled by the same claim.
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            let jobs = tokio::select! {
                jobs = self.next_jobs(prefetch, permits.len()) => jobs,
                () = stop.cancelled() => break,
            };
            for (job, permit) in jobs.into_iter().zip(permits) {
                let link = JobLink::new(&job);
                running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(job.id.clone(), link.clone());
                let worker = self.clone();
                let running = running.clone();
                tokio::spawn(async move {
                    let id = job.id.clone();
                    worker.run_claimed(job, link).await;
                    running
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                    drop(permit);
                });
            }
        }
        // Shutting down: stop every running job and wait until each was
        // handed back.
        for link in running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            link.stop();
        }
        let _ = slots
            .acquire_many(u32::try_from(self.options.concurrency.max(1)).unwrap_or(1))
            .await;
    }

    /// Claim up to `free` jobs: any claimable ones (embedded), or the one
    /// a message names (RabbitMQ; the message is acked once the claim was
    /// tried).
    async fn next_jobs(&self, prefetch: u16, free: usize) -> Vec<JobRecord> {
        let by = self.claimed_by();
        let free = u32::try_from(free).unwrap_or(u32::MAX);
        if let Dispatcher::Embedded(_) = self.dispatcher {
            match on_store(self.store.claim_many(&by, free)).await {
                Ok(jobs) if !jobs.is_empty() => return jobs,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claiming failed"),
            }
        }
        match self.dispatcher.next(prefetch).await {
            Ok(Hint::Any) => match on_store(self.store.claim_many(&by, free)).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming failed");
                    Vec::new()
                }
            },
            Ok(Hint::Job(delivery)) => {
                let claimed = on_store(self.store.claim_job(&delivery.job_id, &by)).await;
                match claimed {
                    Ok(job) => {
                        delivery.ack().await;
                        job.into_iter().collect()
                    }
                    // Handed back to the broker, which delivers it again.
                    Err(e) => {
                        tracing::warn!(job = %delivery.job_id, error = %e, "claiming failed");
                        delivery.nack().await;
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for work failed");
                Vec::new()
            }
        }
    }

    /// Run a claimed job with its heartbeat, then stop the heartbeat —
    /// also when the run panics (a guard cancels it), so a broken run's
    /// lease expires instead of being renewed for ever.
    pub async fn run_claimed(&self, job: JobRecord, link: Arc<JobLink>) {
        let done = CancellationToken::new();
        let _guard = done.clone().drop_guard();
        let heartbeat = tokio::spawn(link.clone().heartbeat(
            self.store.clone(),
            job.id.clone(),
            self.claimed_by(),
            self.settings.service.heartbeat,
            Some(self.dispatcher.control_wake()),
            done.clone(),
        ));
        let id = job.id.clone();
        match self.drive(job, &link).await {
            Ok(status) => {
                tracing::info!(job = %id, ?status, "job left this worker");
                // No retention: an ended job's directory goes with it.
                if status.is_some() && self.settings.service.work_retention.is_zero() {
                    let work_root = self.options.work_root.clone();
                    let _ = tokio::task::spawn_blocking(move || retention::remove_job_dir(&work_root, &id)).await;
                }
            }
            Err(e) => tracing::error!(job = %id, error = %e, "job stopped on a host error"),
        }
        done.cancel();
        let _ = heartbeat.await;
    }

    /// Everything between claim and the job leaving this worker: the one
    /// job lifecycle, with this worker's store, lease and live control as
    /// its host. `None` when the job left without ending (requeued, handed
    /// back, lost).
    async fn drive(&self, job: JobRecord, link: &Arc<JobLink>) -> Result<Option<JobStatus>, LifecycleError> {
        let owner = self.options.name.clone();
        let workspace_dir = self.options.work_root.join(&job.id).join("workspace");
        let recorder = EventRecorder::start(
            self.store.clone(),
            job.id.clone(),
            owner.clone(),
            workspace_dir.display().to_string(),
        );
        // The job was resolved once, at submit: run that form as it is.
        let context = on_store(
            self.store
                .run_context(&job.id, stepd_records::events::SELF_HEAL_ESCALATED),
        )
        .await
        .map_err(LifecycleError::host)?;
        let resolved = match context.resolved.clone() {
            Some(resolved) => serde_json::from_value::<ValidatedJob>(resolved)
                .map_err(|e| format!("the resolved job stored for {} is unreadable: {e}", job.id)),
            // Queued before the store kept resolved forms (migration 3), or
            // inserted by something other than the API: resolve it here,
            // once, against this worker's plugin directory.
            None => {
                tracing::warn!(job = %job.id, "no resolved form stored; resolving the payload on this worker");
                let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                JobPayload::parse(&job.payload.to_string())
                    .and_then(|p| {
                        let grants = HostGrants {
                            ceiling: self.settings.grants.clone(),
                            baselines: self.settings.grants.baselines_for_server(&base_dir),
                        };
                        p.validate(&base_dir, &self.options.plugin_dir, &grants)
                    })
                    .map_err(|e| format!("payload refused on worker {owner}: {e}"))
            }
        };
        let spec = JobSpec {
            runtime: &self.runtime,
            job_id: job.id.clone(),
            job: resolved,
            self_heal: self.settings.self_heal,
            retry: self.settings.retry,
            workspace_quota: self.settings.workspace,
            secrets_dir: self.settings.grants.secrets_dir.clone(),
            artifact_root: self.options.artifact_root.clone(),
            remote: RemoteOptions {
                cache_dir: self.options.work_root.join(BASELINE_CACHE),
                timeout: self.settings.grants.baseline_fetch_timeout(),
                extra_ca: self.settings.runtime.http_extra_ca.clone(),
            },
            work_root: self.options.work_root.clone(),
            redactor: self.redactor.clone(),
            metrics: Metrics::new(self.settings.statsd.as_ref(), self.redactor.clone())
                .with_prometheus(self.options.prometheus.clone()),
            observer: Some(recorder.observer()),
            // With PostgreSQL the API may run on another host: it serves
            // the store's copy. The embedded default reads this disk.
            artifact_mirror: (self.store.backend() == Backend::Postgres).then(|| recorder.artifact_mirror()),
            // The store is the job's record; the artifacts are its copy.
            artifact_durability: Durability::Cache,
        };
        let mut host = ServiceHost::new(
            self.store.clone(),
            self.claimed_by(),
            &job,
            context,
            link.clone(),
            recorder,
            self.redactor.clone(),
        );
        run_job(spec, &mut host).await
    }
}
