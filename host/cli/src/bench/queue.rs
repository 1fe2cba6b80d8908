//! `stepd bench queue`: the control plane end to end, with real processes
//! — a `stepd serve` with its own worker, or an API-only `stepd serve` and
//! two `stepd worker` processes of this same binary — on the embedded
//! default (SQLite, no broker) and on PostgreSQL + RabbitMQ. Measures
//! submit → succeeded latency and throughput of 1-step trivial jobs by the
//! store's own timestamps, and what a crash costs: from the moment a
//! SIGKILLed worker's lease expires to the moment another worker starts
//! the interrupted step again, rebuilt from the checkpoints.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::deploy::{
    drop_database, scratch_database, seconds_between, time_of, DeployOptions, Deployment, ServicesArgs,
};
use super::Summary;
use futures_util::StreamExt;
use stepd_store::{JobState, JobTiming, Store};

/// Arguments of `stepd bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Jobs per throughput run, all submitted at once.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Jobs run one at a time first, for the single-job latency.
    #[arg(long, default_value_t = 20)]
    pub alone: usize,
    /// Jobs each process's workers run at once; default: the cores.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The services and plugins.
    #[command(flatten)]
    pub services: ServicesArgs,
}

fn trivial_job(repo: &Path, i: usize) -> Value {
    json!({"type": "task", "maxAttempts": 1, "task": {
        "objective": "bench", "repository": repo.display().to_string(), "startingBranch": "main",
        "steps": [{"id": "write", "title": "write", "plugin": "write-file",
                   "inputs": {"path": format!("f{i}.txt"), "text": "x\n"}}]}})
}

struct Throughput {
    /// One job at a time: submit → succeeded with nothing queued.
    alone: Summary,
    /// A burst of jobs: submit → succeeded, queueing included.
    latency: Summary,
    /// Jobs over the span from the first submit to the last end, both by
    /// the store's clock.
    jobs_per_second: f64,
    /// Per burst job: each phase's seconds (summed over concurrent jobs,
    /// divided by the burst's jobs).
    phases: Vec<(String, f64)>,
}

/// Submits in flight at once during a burst.
const SUBMITTERS: usize = 32;

/// Wait until the store holds `expected` jobs and none queued or running;
/// fail on a job that did not succeed. Polls a count (reading every row
/// ten times a second took CPU from the workers being measured) and reads
/// the timings once, at the end.
async fn wait_all_ended(store: &Store, expected: usize) -> anyhow::Result<Vec<JobTiming>> {
    let start = Instant::now();
    let expected = u64::try_from(expected).unwrap_or(u64::MAX);
    loop {
        let (total, open) = store.job_counts().await?;
        if total >= expected && open == 0 {
            let timings = store.job_timings().await?;
            if let Some(bad) = timings.iter().find(|t| t.status != JobState::Succeeded) {
                bail!("a bench job ended {}, not succeeded", bad.status.as_str());
            }
            return Ok(timings);
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("{}/{expected} jobs ended after 15 minutes", total.saturating_sub(open));
        }
        tokio::time::sleep(Duration::from_millis(if expected == 1 { 1 } else { 100 })).await;
    }
}

fn seconds_of(timings: &[JobTiming]) -> Vec<f64> {
    timings
        .iter()
        .filter_map(|t| Some((t.finished_at? - t.created_at) as f64 / 1e3))
        .collect()
}

async fn throughput(d: &Deployment, repo: &Path, args: &QueueBenchArgs) -> anyhow::Result<Throughput> {
    let store = Store::open(&d.store_url())
        .await
        .context("opening the deployment's store")?;
    let mut alone = Vec::new();
    for i in 0..args.alone {
        d.submit(&trivial_job(repo, 100_000 + i)).await?;
        let timings = wait_all_ended(&store, i + 1).await?;
        alone.extend(
            timings
                .iter()
                .max_by_key(|t| t.created_at)
                .map(|t| seconds_of(&[*t]))
                .unwrap_or_default(),
        );
    }
    let alone = Summary::of(alone).context("no single-job latencies")?;
    let before = store.job_timings().await?.len();
    let phases_before = d.phase_seconds().await?;
    let submitted: Vec<anyhow::Result<String>> = futures_util::stream::iter(0..args.jobs)
        .map(|i| async move { d.submit(&trivial_job(repo, i)).await })
        .buffer_unordered(SUBMITTERS)
        .collect()
        .await;
    for result in submitted {
        result?;
    }
    let timings = wait_all_ended(&store, before + args.jobs).await?;
    store.close().await;
    let phases = d
        .phase_seconds()
        .await?
        .into_iter()
        .map(|(phase, total)| {
            let earlier = phases_before.iter().find(|(p, _)| *p == phase).map_or(0.0, |(_, t)| *t);
            (phase, (total - earlier) / args.jobs as f64)
        })
        .collect();
    let burst: Vec<JobTiming> = timings.into_iter().skip(before).collect();
    let first = burst.iter().map(|t| t.created_at).min().context("no burst jobs")?;
    let last = burst
        .iter()
        .filter_map(|t| t.finished_at)
        .max()
        .context("no burst ends")?;
    Ok(Throughput {
        alone,
        latency: Summary::of(seconds_of(&burst)).context("no latencies")?,
        jobs_per_second: burst.len() as f64 / ((last - first).max(1) as f64 / 1e3),
        phases,
    })
}

/// Lease expiry → the interrupted step started again on another worker.
struct Recovery {
    expiry_to_requeue: f64,
    expiry_to_resumed_step: f64,
}

async fn crash_recovery(mut d: Deployment, repo: &Path) -> anyhow::Result<Recovery> {
    let payload = json!({"type": "task", "maxAttempts": 3, "task": {
    "objective": "bench", "repository": repo.display().to_string(), "startingBranch": "main",
    "steps": [
        {"id": "one", "title": "one", "plugin": "write-file", "inputs": {"path": "a.txt", "text": "a\n"}},
        {"id": "two", "title": "two", "plugin": "write-file", "inputs": {"path": "b.txt", "text": "b\n", "sleepMs": 3000}}
    ]}});
    let id = d.submit(&payload).await?;
    let start = Instant::now();
    loop {
        let job = d.get(&format!("/api/queue/jobs/{id}")).await?;
        if job["currentStep"]["id"] == "two" {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("step two never started: {job}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(mut victim) = d.workers.pop() {
        let _ = victim.child.kill();
        let _ = victim.child.wait();
    }
    let expiry = time_of(&d.get(&format!("/api/queue/jobs/{id}")).await?["leaseExpiresAt"]).context("lease expiry")?;
    d.add_worker()?;
    loop {
        let events = d.get(&format!("/api/queue/jobs/{id}/events")).await?;
        let events = events["events"].as_array().cloned().unwrap_or_default();
        let requeued = events.iter().find(|e| e["event"] == "task.job.lease_expired");
        let resumed = events
            .iter()
            .filter(|e| e["event"] == "task.step.attempt.started" && e["payload"]["stepId"] == "two")
            .nth(1);
        if let (Some(requeued), Some(resumed)) = (requeued, resumed) {
            return Ok(Recovery {
                expiry_to_requeue: seconds_between(expiry, time_of(&requeued["at"]).context("time")?),
                expiry_to_resumed_step: seconds_between(expiry, time_of(&resumed["at"]).context("time")?),
            });
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the job never resumed: {events:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a run's workers live.
#[derive(Debug, Clone, Copy)]
enum Topology {
    /// One worker inside `stepd serve`.
    InServe,
    /// `stepd serve --workers 0` and this many `stepd worker` processes.
    Processes(usize),
}

impl Topology {
    fn label(self) -> String {
        match self {
            Topology::InServe => "in serve".into(),
            Topology::Processes(n) => format!("{n} processes"),
        }
    }
}

fn deploy_options<'a>(
    args: &'a QueueBenchArgs,
    plugins: &'a Path,
    scratch: Option<&'a (String, String)>,
    topology: Topology,
) -> DeployOptions<'a> {
    let (serve_workers, workers) = match topology {
        Topology::InServe => (1, 0),
        Topology::Processes(n) => (0, n),
    };
    DeployOptions {
        plugins,
        database_url: scratch.map(|(url, _)| url.as_str()),
        amqp_url: &args.services.amqp_url,
        workers,
        serve_workers,
        data_dir: None,
        concurrency: args.concurrency,
    }
}

/// Run the queue benchmark and print its report.
pub async fn run_queue_bench(args: &QueueBenchArgs) -> anyhow::Result<()> {
    let repo = tempfile::tempdir()?;
    std::fs::write(repo.path().join("README.md"), "bench\n")?;
    let repo_path = repo.path().to_owned();
    // Only the plugin the jobs run: workers compile their whole plugin
    // directory when they start, and the Python and JavaScript samples
    // would take the burst's CPU for it.
    let plugins = tempfile::tempdir()?;
    let plugin = args.services.plugins.join("write-file.wasm");
    std::fs::copy(&plugin, plugins.path().join("write-file.wasm")).with_context(|| {
        format!(
            "copying {} (build the plugins first: `stepd plugin build`)",
            plugin.display()
        )
    })?;
    let at_once = args.concurrency.map_or_else(
        || "as many jobs at once as there are cores".to_owned(),
        |n| format!("{n} jobs at once"),
    );
    println!(
        "stepd bench queue: per run, {} one-step jobs one at a time, then {} submitted at once ({SUBMITTERS} in flight); \
         times from the store's clock; workers run {at_once}; lease 2 s, heartbeat 200 ms, sweep 200 ms",
        args.alone, args.jobs
    );
    println!(
        "{:<24} {:>12} {:>11} {:>11} {:>11} {:>11} {:>8}",
        "deployment", "workers", "alone p50", "alone p99", "burst p50", "burst p99", "jobs/s"
    );
    let modes: &[&str] = if args.services.embedded_only {
        &["embedded (SQLite)"]
    } else {
        &["embedded (SQLite)", "PostgreSQL + RabbitMQ"]
    };
    let mut recoveries = Vec::new();
    let mut breakdowns = Vec::new();
    // Removed once every run is done (see `Deployment::stop`).
    let mut spent = Vec::new();
    for (m, mode) in modes.iter().enumerate() {
        for topology in [Topology::InServe, Topology::Processes(2)] {
            let scratch = if m == 1 {
                Some(scratch_database(&args.services.pg_admin_url).await?)
            } else {
                None
            };
            let d = Deployment::start(deploy_options(args, plugins.path(), scratch.as_ref(), topology)).await?;
            let result = throughput(&d, &repo_path, args).await;
            spent.push(d.stop());
            if let Some((_, name)) = &scratch {
                drop_database(&args.services.pg_admin_url, name).await;
            }
            let t = result?;
            println!(
                "{:<24} {:>12} {:>9.1}ms {:>9.1}ms {:>9.0}ms {:>9.0}ms {:>8.0}",
                mode,
                topology.label(),
                t.alone.p50 * 1000.0,
                t.alone.p99 * 1000.0,
                t.latency.p50 * 1000.0,
                t.latency.p99 * 1000.0,
                t.jobs_per_second
            );
            breakdowns.push((*mode, topology.label(), t.phases));
        }
        let scratch = if m == 1 {
            Some(scratch_database(&args.services.pg_admin_url).await?)
        } else {
            None
        };
        let d = Deployment::start(deploy_options(
            args,
            plugins.path(),
            scratch.as_ref(),
            Topology::Processes(1),
        ))
        .await?;
        let result = crash_recovery(d, &repo_path).await;
        if let Some((_, name)) = &scratch {
            drop_database(&args.services.pg_admin_url, name).await;
        }
        recoveries.push((mode, result?));
    }
    println!();
    println!("per burst job, wall time in each phase on the workers (ms; concurrent jobs add up)");
    println!(
        "{:<24} {:>12} {:>9} {:>10} {:>10} {:>9}",
        "deployment", "workers", "store", "workspace", "artifacts", "wasm"
    );
    for (mode, label, phases) in breakdowns {
        let ms = |name: &str| phases.iter().find(|(p, _)| p == name).map_or(0.0, |(_, s)| s * 1000.0);
        println!(
            "{:<24} {:>12} {:>9.2} {:>10.2} {:>10.2} {:>9.2}",
            mode,
            label,
            ms("store"),
            ms("workspace"),
            ms("artifacts"),
            ms("wasm")
        );
    }
    println!();
    println!("crash recovery (worker SIGKILLed in step two of two; a new worker takes over)");
    println!(
        "{:<28} {:>22} {:>26}",
        "deployment", "lease expiry → requeue", "lease expiry → step two again"
    );
    for (mode, r) in recoveries {
        println!(
            "{:<28} {:>20.0}ms {:>24.0}ms",
            mode,
            r.expiry_to_requeue * 1000.0,
            r.expiry_to_resumed_step * 1000.0
        );
    }
    Ok(())
}
