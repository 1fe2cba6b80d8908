//! `stepd bench queue`: the control plane end to end, with real processes
//! — a `stepd serve` (API only) and 1 or 2 `stepd worker` processes of
//! this same binary — on the embedded default (SQLite, no broker) and on
//! PostgreSQL + RabbitMQ. Measures submit → succeeded latency and
//! throughput of 1-step trivial jobs, and what a crash costs: from the
//! moment a SIGKILLed worker's lease expires to the moment another worker
//! starts the interrupted step again, rebuilt from the checkpoints.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};

use super::Summary;

/// Arguments of `stepd bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 40)]
    pub jobs: usize,
    /// PostgreSQL server for the scale-out runs; a scratch database is
    /// created on it and dropped afterwards.
    #[arg(
        long,
        env = "STEPD_BENCH_PG_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_admin_url: String,
    /// RabbitMQ for the scale-out runs.
    #[arg(
        long,
        env = "STEPD_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Only the embedded default (no PostgreSQL, no RabbitMQ).
    #[arg(long)]
    pub embedded_only: bool,
    /// Directory of named plugins.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = stepd_settings::DEFAULT_PLUGIN_DIR)]
    pub plugins: PathBuf,
}

const TOKEN: &str = "bench-operator-token";

struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(String, String)], cwd: &Path) -> anyhow::Result<Proc> {
        let mut command = Command::new(std::env::current_exe().context("this binary's path")?);
        command
            .args(args)
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().context("starting a stepd process")?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Ok(Proc { child, log })
    }

    fn wait_for(&self, needle: &str) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("stepd never logged {needle:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Deployment {
    url: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    _server: Proc,
    workers: Vec<Proc>,
    http: reqwest::Client,
}

impl Deployment {
    async fn start(args: &QueueBenchArgs, scale: Option<&str>, workers: usize) -> anyhow::Result<Deployment> {
        let dir = tempfile::tempdir()?;
        let plugins = std::path::absolute(&args.plugins)?;
        let mut env: Vec<(String, String)> = vec![
            ("STEPD_OPERATOR_TOKENS".into(), TOKEN.into()),
            ("STEPD_LEASE_SECONDS".into(), "2".into()),
            ("STEPD_HEARTBEAT_MS".into(), "200".into()),
            ("STEPD_SWEEP_MS".into(), "200".into()),
            ("STEPD_PLUGIN_DIR".into(), plugins.display().to_string()),
            ("STEPD_DATA_DIR".into(), dir.path().join("data").display().to_string()),
        ];
        if let Some(db_url) = scale {
            env.push(("DATABASE_URL".into(), db_url.to_owned()));
            env.push(("AMQP_URL".into(), args.amqp_url.clone()));
            env.push((
                "STEPD_AMQP_QUEUE".into(),
                format!("stepd.bench.{}", uuid::Uuid::new_v4().simple()),
            ));
        }
        let server = Proc::spawn(
            &["serve", "--listen", "127.0.0.1:0", "--workers", "0"],
            &env,
            dir.path(),
        )?;
        let line = server.wait_for("stepd serving http://")?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("address in the serving line")?
            .to_owned();
        let mut deployment = Deployment {
            url,
            env,
            dir,
            _server: server,
            workers: Vec::new(),
            http: reqwest::Client::new(),
        };
        for _ in 0..workers {
            deployment.add_worker()?;
        }
        Ok(deployment)
    }

    fn add_worker(&mut self) -> anyhow::Result<()> {
        let worker = Proc::spawn(&["worker"], &self.env, self.dir.path())?;
        worker.wait_for("stepd worker")?;
        self.workers.push(worker);
        Ok(())
    }

    async fn submit(&self, payload: &Value) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/queue/jobs", self.url))
            .bearer_auth(TOKEN)
            .json(payload)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status != 201 {
            bail!("submit refused ({status}): {body}");
        }
        Ok(body["id"].as_str().unwrap_or_default().to_owned())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?)
    }
}

fn trivial_job(repo: &Path, i: usize) -> Value {
    json!({"type": "task", "maxAttempts": 1, "task": {
        "objective": "bench", "repository": repo.display().to_string(), "startingBranch": "main",
        "steps": [{"id": "write", "title": "write", "plugin": "write-file",
                   "inputs": {"path": format!("f{i}.txt"), "text": "x\n"}}]}})
}

fn time_of(value: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(value.as_str()?).ok()
}

fn seconds_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a)
        .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
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

async fn scratch_database(admin: &str) -> anyhow::Result<(String, String)> {
    let name = format!("stepd_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .with_context(|| format!("PostgreSQL at {}", stepd_settings::strip_password(admin)))?;
    conn.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok((format!("{base}/{name}"), name))
}

async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
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
    let modes: &[&str] = if args.embedded_only {
        &["embedded (SQLite)"]
    } else {
        &["embedded (SQLite)", "PostgreSQL + RabbitMQ"]
    };
    let mut recoveries = Vec::new();
    for (m, mode) in modes.iter().enumerate() {
        for workers in [1usize, 2] {
            let scratch = if m == 1 {
                Some(scratch_database(&args.pg_admin_url).await?)
            } else {
                None
            };
            let d = Deployment::start(args, scratch.as_ref().map(|(url, _)| url.as_str()), workers).await?;
            let result = throughput(&d, &repo_path, args.jobs).await;
            drop(d);
            if let Some((_, name)) = &scratch {
                drop_database(&args.pg_admin_url, name).await;
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
            Some(scratch_database(&args.pg_admin_url).await?)
        } else {
            None
        };
        let d = Deployment::start(args, scratch.as_ref().map(|(url, _)| url.as_str()), 1).await?;
        let result = crash_recovery(d, &repo_path).await;
        if let Some((_, name)) = &scratch {
            drop_database(&args.pg_admin_url, name).await;
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
