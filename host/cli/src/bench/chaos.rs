//! `stepd bench chaos`: what a killed worker costs a job. On each
//! deployment (the embedded default, then PostgreSQL + RabbitMQ) a 5-step
//! job whose steps write, rewrite and delete files runs once undisturbed
//! for the reference tree, then once per kill point: its worker is
//! SIGKILLed at a seeded moment (inside an attempt, between attempts,
//! inside a checkpoint write) and, for one point in four, the worker that
//! takes over is killed again while it rebuilds the workspace. Another
//! worker finishes the job. The report: jobs finished, final trees
//! identical to the reference, checkpoints lost or duplicated, event logs
//! with gaps or out of order, and the time from the kill to the job
//! running again. Then (host/cli/src/bench/restarts.rs) PostgreSQL and RabbitMQ
//! restart under a stream of jobs, and (host/cli/src/bench/diskfull.rs,
//! with `--small-fs`) the data directory's disk fills in the middle of a
//! job. The command fails when any job did not
//! come back whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::deploy::{
    drop_database, scratch_database, seconds_between, time_of, DeployOptions, Deployment, ServicesArgs,
};
use super::diskfull;
use super::restarts::{self, Restarts};
use super::Summary;

/// Arguments of `stepd bench chaos`.
#[derive(Debug, Args)]
pub struct ChaosBenchArgs {
    /// Kill points per deployment.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Seed of the kill points (printed; a run is repeated with the same
    /// seed). Default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Jobs in the stream that PostgreSQL and RabbitMQ restart under (0:
    /// no restarts).
    #[arg(long, default_value_t = 200)]
    pub restart_jobs: usize,
    /// How PostgreSQL is restarted (a shell command).
    #[arg(
        long,
        default_value = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart"
    )]
    pub restart_postgres: String,
    /// How RabbitMQ is restarted (a shell command).
    #[arg(
        long,
        default_value = "rabbitmqctl stop_app && rabbitmqctl start_app && rabbitmqctl await_startup"
    )]
    pub restart_rabbitmq: String,
    /// A directory on a small filesystem (tens of MiB free): the embedded
    /// deployment keeps its data there while a job fills it. Not given: no
    /// disk-full run.
    #[arg(long)]
    pub small_fs: Option<PathBuf>,
    /// The services and plugins.
    #[command(flatten)]
    pub services: ServicesArgs,
}

/// How long each step works before it writes: long enough that a seeded
/// moment lands inside attempts as often as between them.
const STEP_MS: u64 = 300;

/// The job's step ids, in order.
const STEP_IDS: [&str; 5] = ["write", "rewrite", "delete", "mixed", "last"];

/// The job: five steps that write, rewrite and delete files.
fn five_step_job(repo: &Path) -> Value {
    let step = |id: &str, inputs: Value| {
        let mut inputs = inputs;
        inputs["sleepMs"] = json!(STEP_MS);
        json!({"id": id, "title": id, "plugin": "write-file", "inputs": inputs})
    };
    json!({"type": "task", "maxAttempts": 5, "task": {
    "objective": "chaos", "repository": repo.display().to_string(), "startingBranch": "main",
    "steps": [
        step(STEP_IDS[0], json!({"files": {"a.txt": "one\n", "b.txt": "two\n", "dir/c.txt": "three\n"}})),
        step(STEP_IDS[1], json!({"files": {"a.txt": "one, again\n", "d.txt": "four\n"}})),
        step(STEP_IDS[2], json!({"files": {"dir/c.txt": "three, again\n"}, "delete": ["b.txt"]})),
        step(STEP_IDS[3], json!({"files": {"e.txt": "five\n"}, "delete": ["d.txt"]})),
        step(STEP_IDS[4], json!({"files": {"a.txt": "one, last\n", "dir/f.txt": "six\n"}})),
    ]}})
}

/// A reproducible stream of numbers from the printed seed (SplitMix64):
/// ten lines, where a generator crate would bring a dependency for them.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[0, max)`.
    fn below(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.next() % (max.as_micros().max(1) as u64))
    }
}

/// Where one kill lands.
#[derive(Debug, Clone, Copy)]
struct KillPoint {
    /// Counted from the start of this step's first attempt (its work
    /// takes [`STEP_MS`], so just past it is the checkpoint write), or
    /// from submission when `None`.
    step: Option<usize>,
    /// When, from there.
    at: Duration,
    /// Kill the worker that takes over too, this long after its lease
    /// could be taken (while it rebuilds the workspace).
    again: Option<Duration>,
}

/// What one killed job came back as.
#[derive(Debug)]
struct KillResult {
    /// The last event before the kill: where the worker was.
    phase: String,
    finished: bool,
    identical_tree: bool,
    checkpoints_lost: usize,
    checkpoints_duplicated: usize,
    event_gaps: usize,
    /// From the kill to the job's next attempt start.
    recovery: Option<f64>,
}

/// The workspace as a digest of its files (path and bytes, in order).
fn tree_digest(root: &Path) -> anyhow::Result<String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
                files.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    let mut hash = Sha256::new();
    for (path, bytes) in files {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(&bytes);
        hash.update([0]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Wait for job `id` to end; the job.
async fn wait_terminal(d: &Deployment, id: &str) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let job = d.get(&format!("/api/queue/jobs/{id}")).await?;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "dead_letter" | "cancelled")
        ) {
            return Ok(job);
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("job {id} did not end in 3 minutes: {job}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn events(d: &Deployment, id: &str) -> anyhow::Result<Vec<Value>> {
    let events = d.get(&format!("/api/queue/jobs/{id}/events?limit=10000")).await?;
    Ok(events["events"].as_array().cloned().unwrap_or_default())
}

/// Wait until step `index` of job `id` has started an attempt.
async fn wait_for_attempt_start(d: &Deployment, id: &str, index: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let step_id = STEP_IDS[index];
    loop {
        let started = events(d, id)
            .await?
            .iter()
            .any(|e| e["event"] == "task.step.attempt.started" && e["payload"]["stepId"] == step_id);
        if started {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("step {index} of job {id} never started");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGKILL the deployment's newest worker.
fn kill_worker(d: &mut Deployment) {
    if let Some(mut victim) = d.workers.pop() {
        let _ = victim.child.kill();
        let _ = victim.child.wait();
    }
}

/// The undisturbed run: the reference tree digest and how long it took.
async fn reference(d: &Deployment, repo: &Path) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let id = d.submit(&five_step_job(repo)).await?;
    let job = wait_terminal(d, &id).await?;
    if job["status"] != "succeeded" {
        bail!("the undisturbed job did not succeed: {job}");
    }
    let workspace = job["workspace"].as_str().context("the job's workspace")?;
    Ok((tree_digest(Path::new(workspace))?, started.elapsed()))
}

async fn one_kill(d: &mut Deployment, repo: &Path, point: KillPoint, wanted: &str) -> anyhow::Result<KillResult> {
    let id = d.submit(&five_step_job(repo)).await?;
    if let Some(step) = point.step {
        wait_for_attempt_start(d, &id, step).await?;
    }
    tokio::time::sleep(point.at).await;
    let phase = events(d, &id)
        .await?
        .last()
        .and_then(|e| e["event"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "queued".into());
    let killed_at = SystemTime::now();
    kill_worker(d);
    d.add_worker()?;
    if let Some(again) = point.again {
        tokio::time::sleep(again).await;
        kill_worker(d);
        d.add_worker()?;
    }
    let job = wait_terminal(d, &id).await?;
    let events = events(d, &id).await?;
    let finished = job["status"] == "succeeded";
    let identical_tree = match job["workspace"].as_str() {
        Some(workspace) if finished => tree_digest(Path::new(workspace))? == wanted,
        _ => false,
    };
    // Each step's checkpoint is there (its state file among the job's
    // artifacts), and was written once (one successful attempt).
    let artifacts = d.get(&format!("/api/queue/jobs/{id}/artifacts")).await?;
    let checkpoints = artifacts["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().or_else(|| a["path"].as_str()))
        .filter(|path| path.starts_with("state/steps/step-") && path.ends_with(".json"))
        .count();
    let mut succeeded: BTreeMap<String, usize> = BTreeMap::new();
    for event in &events {
        if event["event"] == "task.step.attempt.finished" {
            let step = event["payload"]["stepId"].as_str().unwrap_or_default().to_owned();
            *succeeded.entry(step).or_default() += 1;
        }
    }
    let steps = job["steps"].as_array().map_or(0, Vec::len);
    let checkpoints_lost = steps.saturating_sub(checkpoints);
    let checkpoints_duplicated = succeeded.values().map(|n| n.saturating_sub(1)).sum();
    if checkpoints_lost > 0 || checkpoints_duplicated > 0 || succeeded.len() != steps {
        // What the report cannot show: the job's events as recorded.
        let names: Vec<String> = events
            .iter()
            .map(|e| format!("{} {} {}", e["seq"], e["event"], e["payload"]["stepId"]))
            .collect();
        eprintln!(
            "job {id}: steps finished {succeeded:?}; events:\n  {}",
            names.join("\n  ")
        );
    }
    let event_gaps = events
        .iter()
        .enumerate()
        .filter(|(i, e)| e["seq"].as_u64() != Some(*i as u64 + 1))
        .count();
    let recovery = events
        .iter()
        .filter(|e| e["event"] == "task.step.attempt.started")
        .filter_map(|e| time_of(&e["at"]))
        .find(|at| *at > killed_at)
        .map(|at| seconds_between(killed_at, at));
    Ok(KillResult {
        phase,
        finished,
        identical_tree,
        checkpoints_lost,
        checkpoints_duplicated,
        event_gaps,
        recovery,
    })
}

/// The kill points of one deployment, from the seeded stream: half
/// anywhere in the job's run, half in the last 20 ms of a step's work or
/// the 40 ms after it, where its checkpoint is written.
fn kill_points(rng: &mut SplitMix, kills: usize, job_time: Duration) -> Vec<KillPoint> {
    (0..kills)
        .map(|_| {
            let (step, at) = if rng.next().is_multiple_of(2) {
                (None, rng.below(job_time))
            } else {
                let step = (rng.next() % STEP_IDS.len() as u64) as usize;
                (
                    Some(step),
                    Duration::from_millis(STEP_MS - 20) + rng.below(Duration::from_millis(60)),
                )
            };
            // The lease is 2 s: the next worker rebuilds a little after.
            let again = rng
                .next()
                .is_multiple_of(4)
                .then(|| Duration::from_secs(2) + rng.below(Duration::from_millis(1500)));
            KillPoint { step, at, again }
        })
        .collect()
}

/// One deployment's campaign: its report row, and whether every job came
/// back whole.
async fn campaign(
    args: &ChaosBenchArgs,
    name: &str,
    database_url: Option<&str>,
    repo: &Path,
    rng: &mut SplitMix,
) -> anyhow::Result<(String, bool)> {
    let mut d = Deployment::start(DeployOptions {
        plugins: &args.services.plugins,
        database_url,
        amqp_url: &args.services.amqp_url,
        workers: 1,
        serve_workers: 0,
        data_dir: None,
        concurrency: None,
    })
    .await?;
    let (wanted, job_time) = reference(&d, repo).await?;
    let mut results = Vec::new();
    for (n, point) in kill_points(rng, args.kills, job_time).into_iter().enumerate() {
        let result = one_kill(&mut d, repo, point, &wanted)
            .await
            .with_context(|| format!("{name}: kill point {n} ({point:?})"))?;
        println!(
            "  {name:<22} #{n:<3} kill {:>5.0} ms after {}{} in {:<28} → {}{}{}",
            point.at.as_secs_f64() * 1000.0,
            point
                .step
                .map_or("submission".to_owned(), |s| format!("step {s} started")),
            point.again.map_or(String::new(), |a| format!(
                " + again at {:.0} ms",
                a.as_secs_f64() * 1000.0
            )),
            result.phase,
            if result.finished { "finished" } else { "NOT FINISHED" },
            if result.identical_tree {
                ", same tree"
            } else {
                ", DIFFERENT TREE"
            },
            result
                .recovery
                .map_or(String::new(), |r| format!(", running again after {:.0} ms", r * 1000.0)),
        );
        results.push(result);
    }
    // Where the kills landed, by the last event recorded before each: the
    // seeded moments are aimed, this says what they hit.
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for result in &results {
        *phases.entry(result.phase.as_str()).or_default() += 1;
    }
    let landed: Vec<String> = phases.iter().map(|(phase, n)| format!("{phase} ×{n}")).collect();
    println!("  {name:<22} kills landed after: {}", landed.join(", "));
    let count = |f: fn(&KillResult) -> bool| results.iter().filter(|r| f(r)).count();
    let lost: usize = results.iter().map(|r| r.checkpoints_lost).sum();
    let duplicated: usize = results.iter().map(|r| r.checkpoints_duplicated).sum();
    let gaps: usize = results.iter().map(|r| r.event_gaps).sum();
    let recovery = Summary::of(results.iter().filter_map(|r| r.recovery).collect());
    let row = format!(
        "{:<24} {:>5} {:>9} {:>9} {:>6} {:>6} {:>6} {:>11} {:>11}",
        name,
        results.len(),
        count(|r| r.finished),
        count(|r| r.identical_tree),
        lost,
        duplicated,
        gaps,
        recovery.map_or("-".into(), |s| format!("{:.0}ms", s.p50 * 1000.0)),
        recovery.map_or("-".into(), |s| format!("{:.0}ms", s.p99 * 1000.0)),
    );
    let whole = count(|r| r.finished && r.identical_tree) == results.len() && lost == 0 && duplicated == 0 && gaps == 0;
    Ok((row, whole))
}

/// PostgreSQL and RabbitMQ restarted under a stream of jobs.
async fn restart_campaign(args: &ChaosBenchArgs, url: &str, repo: &Path, seed: u64) -> anyhow::Result<(String, bool)> {
    let d = Deployment::start(DeployOptions {
        plugins: &args.services.plugins,
        database_url: Some(url),
        amqp_url: &args.services.amqp_url,
        workers: 2,
        serve_workers: 0,
        data_dir: None,
        concurrency: None,
    })
    .await?;
    let plan = Restarts {
        jobs: args.restart_jobs,
        postgres: &args.restart_postgres,
        rabbitmq: &args.restart_rabbitmq,
    };
    restarts::stream_through_restarts(&d, repo, &plan, seed).await
}

/// Run the chaos benchmark and print its report; fails when a job did not
/// come back whole.
pub async fn run_chaos_bench(args: &ChaosBenchArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let repo = tempfile::tempdir()?;
    std::fs::write(repo.path().join("README.md"), "chaos\n")?;
    println!(
        "stepd bench chaos: seed {seed}, {} kill points per deployment; a 5-step job ({STEP_MS} ms a step); lease 2 s",
        args.kills
    );
    let mut rng = SplitMix(seed);
    let mut rows = vec![campaign(args, "embedded (SQLite)", None, repo.path(), &mut rng).await?];
    if !args.services.embedded_only {
        let (url, name) = scratch_database(&args.services.pg_admin_url).await?;
        let result = campaign(args, "PostgreSQL + RabbitMQ", Some(&url), repo.path(), &mut rng).await;
        drop_database(&args.services.pg_admin_url, &name).await;
        rows.push(result?);
    }
    println!();
    println!(
        "{:<24} {:>5} {:>9} {:>9} {:>6} {:>6} {:>6} {:>11} {:>11}",
        "deployment", "kills", "finished", "same tree", "lost", "dup", "gaps", "recover p50", "recover p99"
    );
    for (row, _) in &rows {
        println!("{row}");
    }
    if !args.services.embedded_only && args.restart_jobs > 0 {
        let (url, name) = scratch_database(&args.services.pg_admin_url).await?;
        let result = restart_campaign(args, &url, repo.path(), seed).await;
        drop_database(&args.services.pg_admin_url, &name).await;
        let (row, whole) = result?;
        println!();
        println!("{}", restarts::header());
        println!("{row}");
        rows.push((row, whole));
    }
    if let Some(small_fs) = &args.small_fs {
        let (report, whole) = diskfull::disk_fills_mid_job(&args.services.plugins, small_fs, repo.path()).await?;
        println!();
        println!("{report}");
        rows.push((report, whole));
    }
    if rows.iter().all(|(_, whole)| *whole) {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("stepd bench chaos: a killed job did not come back whole (seed {seed})");
        Ok(ExitCode::FAILURE)
    }
}
