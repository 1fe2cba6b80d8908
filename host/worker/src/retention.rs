//! Ended jobs' work directories (`<work_root>/<job_id>/`: the workspace and
//! its object store) are removed once `STEPD_WORK_RETENTION_SECONDS` have
//! passed since the job ended, so a busy host's disk does not fill with
//! finished workspaces. The store keeps everything a rerun needs (a rerun
//! materialises its workspace afresh), and the artifacts are left alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stepd_runtime::CancellationToken;
use stepd_store::Store;
use stepd_workspace::remote::BASELINE_CACHE;

use crate::live::JobLink;
use crate::on_store;

/// The jobs a worker runs now, by id.
pub(crate) type RunningJobs = Arc<Mutex<HashMap<String, Arc<JobLink>>>>;

/// Remove ended jobs' directories under `work_root` every so often until
/// `stop`.
pub(crate) async fn prune_until(
    store: Store,
    work_root: PathBuf,
    retention: Duration,
    running: RunningJobs,
    stop: CancellationToken,
) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        match prune_once(&store, &work_root, retention, &running).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "ended jobs' work directories removed"),
            Err(e) => tracing::warn!(error = %e, "removing ended jobs' work directories failed"),
        }
    }
}

/// One round: the directories of jobs the store says ended at least
/// `retention` ago, and that this worker is not running, are removed.
/// Returns how many.
pub(crate) async fn prune_once(
    store: &Store,
    work_root: &Path,
    retention: Duration,
    running: &RunningJobs,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let root = work_root.to_owned();
    let names = tokio::task::spawn_blocking(move || job_dirs(&root)).await??;
    if names.is_empty() {
        return Ok(0);
    }
    let ended = on_store(store.ended_before(&names, retention)).await?;
    let root = work_root.to_owned();
    let running = running.clone();
    let removed = tokio::task::spawn_blocking(move || {
        // Held while removing: a job this worker claims meanwhile (an
        // ended job an operator reopened) waits to be registered, then
        // materialises its workspace afresh.
        let running = running.lock().unwrap_or_else(PoisonError::into_inner);
        ended
            .iter()
            .filter(|id| !running.contains_key(*id))
            .filter(|id| remove_job_dir(&root, id))
            .count()
    })
    .await?;
    Ok(removed)
}

/// Remove job `id`'s work directory; true when it was removed.
pub(crate) fn remove_job_dir(work_root: &Path, id: &str) -> bool {
    let dir = work_root.join(id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "an ended job's work directory could not be removed");
            false
        }
    }
}

/// The names of the job directories under `work_root` (not the baseline
/// cache).
fn job_dirs(work_root: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(work_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            if name != BASELINE_CACHE {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}
