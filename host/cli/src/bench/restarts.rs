//! The service-restart part of `stepd bench chaos`: a stream of one-step
//! jobs goes into a PostgreSQL + RabbitMQ deployment with two worker
//! processes; a third of the way in PostgreSQL restarts, two thirds of the
//! way in RabbitMQ does (each with the operator's command). Every
//! submission carries an `Idempotency-Key` and is sent again while the
//! server answers 503 or cannot be reached, as `stepd submit` does. The
//! report: jobs accepted, succeeded, lost (accepted but never ended),
//! completed twice (more than one `task.job.succeeded`), and not
//! terminal.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::deploy::Deployment;

/// How the services are restarted (shell commands).
pub(crate) struct Restarts<'a> {
    /// Jobs in the stream.
    pub jobs: usize,
    /// Restarts PostgreSQL.
    pub postgres: &'a str,
    /// Restarts RabbitMQ.
    pub rabbitmq: &'a str,
}

fn one_step_job(repo: &Path, i: usize) -> Value {
    json!({"type": "task", "maxAttempts": 5, "task": {
        "objective": "restarts", "repository": repo.display().to_string(), "startingBranch": "main",
        "steps": [{"id": "write", "title": "write", "plugin": "write-file",
                   "inputs": {"path": format!("f{i}.txt"), "text": "x\n", "sleepMs": 100}}]}})
}

/// Run `command` with `sh -c`, failing when it fails.
fn run_shell(command: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", command])
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(started.elapsed())
}

/// Restart each service when the stream has got that far; the time each
/// restart took.
async fn restart_at(accepted: Arc<AtomicUsize>, plan: Vec<(usize, String)>) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::new();
    for (at, command) in plan {
        while accepted.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.push(tokio::task::spawn_blocking(move || run_shell(&command)).await??);
    }
    Ok(took)
}

/// What the stream came to.
struct Tally {
    accepted: usize,
    succeeded: usize,
    twice: usize,
    not_terminal: usize,
}

/// Wait for every job to end (up to five minutes), then count.
async fn tally(d: &Deployment, ids: &[String]) -> anyhow::Result<Tally> {
    let start = Instant::now();
    let mut statuses = Vec::new();
    while start.elapsed() < Duration::from_secs(300) {
        statuses.clear();
        for id in ids {
            let job = d.get_patiently(&format!("/api/queue/jobs/{id}")).await?;
            statuses.push(job["status"].as_str().unwrap_or_default().to_owned());
        }
        if statuses.iter().all(|s| !matches!(s.as_str(), "queued" | "running")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut twice = 0;
    for id in ids {
        let events = d
            .get_patiently(&format!("/api/queue/jobs/{id}/events?limit=10000"))
            .await?;
        let finishes = events["events"]
            .as_array()
            .map_or(0, |e| e.iter().filter(|e| e["event"] == "task.job.succeeded").count());
        twice += usize::from(finishes > 1);
    }
    Ok(Tally {
        accepted: ids.len(),
        succeeded: statuses.iter().filter(|s| *s == "succeeded").count(),
        twice,
        not_terminal: statuses
            .iter()
            .filter(|s| matches!(s.as_str(), "queued" | "running"))
            .count(),
    })
}

/// Run the stream with the restarts; the report row and whether every job
/// succeeded exactly once.
pub(crate) async fn stream_through_restarts(
    d: &Deployment,
    repo: &Path,
    restarts: &Restarts<'_>,
    seed: u64,
) -> anyhow::Result<(String, bool)> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let plan = vec![
        (restarts.jobs / 3, restarts.postgres.to_owned()),
        (2 * restarts.jobs / 3, restarts.rabbitmq.to_owned()),
    ];
    let restarter = tokio::spawn(restart_at(accepted.clone(), plan));
    let mut ids = Vec::with_capacity(restarts.jobs);
    for i in 0..restarts.jobs {
        let key = format!("chaos-{seed}-{i}");
        ids.push(
            d.submit_until_accepted(&one_step_job(repo, i), &key, Duration::from_secs(120))
                .await?,
        );
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = restarter.await.context("the restarter")??;
    let t = tally(d, &ids).await?;
    let lost = restarts.jobs - t.accepted + t.not_terminal;
    let row = format!(
        "{:<24} {:>5} {:>9} {:>9} {:>6} {:>6} {:>12} {:>12}",
        "PostgreSQL + RabbitMQ",
        restarts.jobs,
        t.accepted,
        t.succeeded,
        lost,
        t.twice,
        took.first().map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
        took.get(1).map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
    );
    let whole = t.succeeded == restarts.jobs && lost == 0 && t.twice == 0;
    Ok((row, whole))
}

/// The header of the restart report.
pub(crate) fn header() -> String {
    format!(
        "{:<24} {:>5} {:>9} {:>9} {:>6} {:>6} {:>12} {:>12}",
        "deployment", "jobs", "accepted", "succeeded", "lost", "twice", "PG restart", "MQ restart"
    )
}
