//! `stepd bench queue`: the control plane end to end, with real processes
//! — a `stepd serve` (API only) and 1 or 2 `stepd worker` processes of
//! this same binary — on the embedded default (SQLite, no broker) and on
//! PostgreSQL + RabbitMQ. Measures submit → succeeded latency and
//! throughput of 1-step trivial jobs, and what a crash costs: from the
//! moment a SIGKILLed worker's lease expires to the moment another worker
//! starts the interrupted step again, rebuilt from the checkpoints.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::deploy::{
    drop_database, scratch_database, seconds_between, time_of, DeployOptions, Deployment, ServicesArgs,
};
use super::Summary;

/// Arguments of `stepd bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 40)]
    pub jobs: usize,
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
    jobs_per_second: f64,
}

async fn wait_succeeded(d: &Deployment, id: &str) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let job = d.get(&format!("/api/queue/jobs/{id}")).await?;
        match job["status"].as_str() {
            Some("succeeded") => return Ok(job),
            Some("failed" | "dead_letter" | "cancelled") => bail!("a bench job did not succeed: {job}"),
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("job {id} did not finish in 2 minutes: {job}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn throughput(d: &Deployment, repo: &Path, jobs: usize) -> anyhow::Result<Throughput> {
    let mut alone = Vec::new();
    for i in 0..10 {
        let id = d.submit(&trivial_job(repo, 100_000 + i)).await?;
        let job = wait_succeeded(d, &id).await?;
        if let (Some(a), Some(b)) = (time_of(&job["createdAt"]), time_of(&job["finishedAt"])) {
            alone.push(seconds_between(a, b));
        }
    }
    let alone = Summary::of(alone).context("no single-job latencies")?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(jobs);
    for i in 0..jobs {
        ids.push(d.submit(&trivial_job(repo, i)).await?);
    }
    loop {
        let listed = d.get(&format!("/api/queue/jobs?limit={}", jobs + 20)).await?;
        let all = listed["jobs"].as_array().cloned().unwrap_or_default();
        let done = all
            .iter()
            .filter(|j| ids.iter().any(|id| j["id"] == *id) && j["status"] == "succeeded")
            .count();
        if let Some(bad) = all
            .iter()
            .find(|j| j["status"] == "failed" || j["status"] == "dead_letter")
        {
            bail!("a bench job did not succeed: {bad}");
        }
        if done == jobs {
            let elapsed = started.elapsed().as_secs_f64();
            let latencies: Vec<f64> = all
                .iter()
                .filter(|j| ids.iter().any(|id| j["id"] == *id))
                .filter_map(|j| Some(seconds_between(time_of(&j["createdAt"])?, time_of(&j["finishedAt"])?)))
                .collect();
            return Ok(Throughput {
                alone,
                latency: Summary::of(latencies).context("no latencies")?,
                jobs_per_second: jobs as f64 / elapsed,
            });
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{done}/{jobs} jobs finished after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

fn deploy_options<'a>(
    args: &'a QueueBenchArgs,
    scratch: Option<&'a (String, String)>,
    workers: usize,
) -> DeployOptions<'a> {
    DeployOptions {
        plugins: &args.services.plugins,
        database_url: scratch.map(|(url, _)| url.as_str()),
        amqp_url: &args.services.amqp_url,
        workers,
        data_dir: None,
    }
}

/// Run the queue benchmark and print its report.
pub async fn run_queue_bench(args: &QueueBenchArgs) -> anyhow::Result<()> {
    let repo = tempfile::tempdir()?;
    std::fs::write(repo.path().join("README.md"), "bench\n")?;
    let repo_path = repo.path().to_owned();
    println!(
        "stepd bench queue: per run, 10 one-step jobs one at a time, then a burst of {}; lease 2 s, heartbeat 200 ms, sweep 200 ms",
        args.jobs
    );
    println!(
        "{:<24} {:>7} {:>14} {:>14} {:>14} {:>8}",
        "deployment", "workers", "alone p50", "burst p50", "burst p99", "jobs/s"
    );
    let modes: &[&str] = if args.services.embedded_only {
        &["embedded (SQLite)"]
    } else {
        &["embedded (SQLite)", "PostgreSQL + RabbitMQ"]
    };
    let mut recoveries = Vec::new();
    for (m, mode) in modes.iter().enumerate() {
        for workers in [1usize, 2] {
            let scratch = if m == 1 {
                Some(scratch_database(&args.services.pg_admin_url).await?)
            } else {
                None
            };
            let d = Deployment::start(deploy_options(args, scratch.as_ref(), workers)).await?;
            let result = throughput(&d, &repo_path, args.jobs).await;
            drop(d);
            if let Some((_, name)) = &scratch {
                drop_database(&args.services.pg_admin_url, name).await;
            }
            let t = result?;
            println!(
                "{:<24} {:>7} {:>12.0}ms {:>12.0}ms {:>12.0}ms {:>8.1}",
                mode,
                workers,
                t.alone.p50 * 1000.0,
                t.latency.p50 * 1000.0,
                t.latency.p99 * 1000.0,
                t.jobs_per_second
            );
        }
        let scratch = if m == 1 {
            Some(scratch_database(&args.services.pg_admin_url).await?)
        } else {
            None
        };
        let d = Deployment::start(deploy_options(args, scratch.as_ref(), 1)).await?;
        let result = crash_recovery(d, &repo_path).await;
        if let Some((_, name)) = &scratch {
            drop_database(&args.services.pg_admin_url, name).await;
        }
        recoveries.push((mode, result?));
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
