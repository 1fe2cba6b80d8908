//! The disk-full part of `stepd bench chaos`: the embedded deployment keeps
//! its data (the SQLite store, workspaces, git objects, artifacts) on a
//! small filesystem the operator names (`--small-fs`; the tests mount a
//! tmpfs). A step writes incompressible bytes worth three quarters of the
//! free space, so the host's own copy of them (the checkpoint's git
//! objects) fills the disk in the middle of the job. That job must end (or
//! wait in the queue) with a message that says the disk is full; the store
//! must still answer for every job; and once the big job's workspace is
//! gone, the same worker must run the next job to success.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::deploy::{DeployOptions, Deployment};

/// Free bytes on the filesystem holding `dir` (`df`, which every host has).
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("running df")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df printed no free space for {}", dir.display()))
}

fn job(repo: &Path, step: Value) -> Value {
    json!({"type": "task", "maxAttempts": 1, "task": {
        "objective": "disk full", "repository": repo.display().to_string(), "startingBranch": "main",
        "selfHeal": {"stepMaxAttempts": 1},
        "steps": [step]}})
}

/// Wait for job `id` to end, or to wait in the queue for a later attempt
/// after a failure; the job.
async fn wait_settled(d: &Deployment, id: &str) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let job = d.get_patiently(&format!("/api/queue/jobs/{id}")).await?;
        let settled = match job["status"].as_str() {
            Some("succeeded" | "failed" | "dead_letter" | "cancelled") => true,
            Some("queued") => job["lastError"].is_string(),
            _ => false,
        };
        if settled {
            return Ok(job);
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("job {id} did not settle in 2 minutes: {job}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run the scenario on `small_fs`; the report lines and whether it held.
pub(crate) async fn disk_fills_mid_job(plugins: &Path, small_fs: &Path, repo: &Path) -> anyhow::Result<(String, bool)> {
    let data = small_fs.join(format!("stepd-chaos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let d = Deployment::start(DeployOptions {
        plugins,
        database_url: None,
        amqp_url: "",
        workers: 1,
        serve_workers: 0,
        data_dir: Some(&data),
        concurrency: None,
    })
    .await?;
    let free = free_bytes(&data)?;
    let mb = (free * 3 / 4) >> 20;
    let big = d
        .submit(&job(
            repo,
            json!({"id": "fill", "title": "fill", "plugin": "hostile", "inputs": {"probe": "fill", "mb": mb}}),
        ))
        .await?;
    let filled = wait_settled(&d, &big).await?;
    let message = filled["lastError"].as_str().unwrap_or_default().to_owned();
    let says_full = message.contains("No space left") || message.contains("disk is full");
    // The big job's workspace goes; the disk has room again.
    if let Some(workspace) = filled["workspace"].as_str() {
        let _ = std::fs::remove_dir_all(workspace);
    }
    let small = d
        .submit(&job(
            repo,
            json!({"id": "small", "title": "small", "plugin": "write-file", "inputs": {"path": "a.txt", "text": "a\n"}}),
        ))
        .await?;
    let after = wait_settled(&d, &small).await?;
    let listed = d.get_patiently("/api/queue/jobs?limit=10").await?;
    let store_answers = listed["jobs"].as_array().is_some_and(|jobs| jobs.len() >= 2);
    let next_succeeds = after["status"] == "succeeded";
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
    let report = format!(
        "disk full ({mb} MiB written into {} MiB free): the job ended {} with {:?}; store answers: {}; next job: {}",
        free >> 20,
        filled["status"].as_str().unwrap_or("?"),
        message,
        if store_answers { "yes" } else { "NO" },
        after["status"].as_str().unwrap_or("?"),
    );
    Ok((
        report,
        says_full && store_answers && next_succeeds && filled["status"] != "succeeded",
    ))
}
