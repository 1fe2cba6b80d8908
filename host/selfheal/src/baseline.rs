//! A job's workspace, materialised from its baseline in an empty
//! `<work_root>/<job_id>/`: a local repository or plain directory as it
//! is; a remote repository (`https://…`) fetched into the host's cache
//! first, at the commit the job is pinned to — or, on its first run, at
//! the branch's tip, which is then pinned through the host, so a job that
//! moves to another worker or restarts replays its patches on the very
//! tree it began on. A baseline that cannot be read is the job's failure
//! (`deterministic_repo`); a remote that cannot be reached now is worth a
//! queue retry (`transient_runtime`).

use std::path::Path;

use stepd_job::payload::ValidatedJob;
use stepd_records::events::{Event, EventSink};
use stepd_records::redact::Redactor;
use stepd_workspace::remote::{fetch_remote, is_remote, RemoteOptions};
use stepd_workspace::{TreeId, Workspace, WorkspaceError};

use crate::grants::{secret_value, SecretSource};
use crate::lifecycle::{Ending, JobHost, LifecycleError};
use crate::{blocking, FailureClass};

/// What materialising came to.
pub(crate) enum Prepared {
    /// The workspace, holding the baseline tree.
    Ready(Box<Workspace>, TreeId),
    /// The job cannot start: end it so.
    Failed(Box<Ending>),
    /// The baseline cannot be fetched now; it may be later.
    Transient(String),
}

/// Where the job's baseline comes from on this host.
pub(crate) struct BaselineSource<'a> {
    /// Jobs' directories go under it.
    pub work_root: &'a Path,
    /// The job.
    pub job_id: &'a str,
    /// How remote baselines are fetched.
    pub remote: &'a RemoteOptions,
    /// Where secrets not in the environment are read.
    pub secrets_dir: Option<&'a Path>,
    /// The commit an earlier run of the job fetched (remote baselines).
    pub pinned: Option<&'a str>,
}

/// Materialise `job`'s baseline into its empty work directory.
pub(crate) async fn prepare<H: JobHost>(
    source: &BaselineSource<'_>,
    job: &ValidatedJob,
    host: &mut H,
    events: &EventSink,
    redactor: &Redactor,
) -> Result<Prepared, LifecycleError> {
    let repo_failure = |reason: String| {
        Prepared::Failed(Box::new(Ending::failed(
            (None, None),
            FailureClass::DeterministicRepo.as_str(),
            reason,
        )))
    };
    let job_dir = source.work_root.join(source.job_id);
    if !is_remote(&job.repository) {
        return Ok(
            match blocking(|| {
                prepare_dir(&job_dir, |ws, git| {
                    Workspace::create_from_baseline(&job.repository, &job.payload.task.starting_branch, ws, git)
                })
            })? {
                Ok((workspace, tree)) => Prepared::Ready(Box::new(workspace), tree),
                Err(e) => repo_failure(format!("materialising the baseline: {e}")),
            },
        );
    }
    let token = match &job.payload.task.repository_token_secret {
        None => None,
        Some(name) => {
            let secrets = SecretSource {
                env: |name| std::env::var(name).ok(),
                dir: source.secrets_dir,
            };
            match secret_value("task.repositoryTokenSecret", name, &secrets) {
                Ok(value) => {
                    redactor.register(&value);
                    Some(value)
                }
                Err(reason) => {
                    return Ok(Prepared::Failed(Box::new(Ending::failed(
                        (None, None),
                        FailureClass::DeterministicPolicy.as_str(),
                        reason,
                    ))))
                }
            }
        }
    };
    let branch = &job.payload.task.starting_branch;
    let fetched = blocking(|| fetch_remote(&job.repository, branch, source.pinned, token.as_deref(), source.remote));
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(e) if e.is_transient() => return Ok(Prepared::Transient(format!("fetching the baseline: {e}"))),
        Err(e) => return Ok(repo_failure(format!("fetching the baseline: {e}"))),
    };
    events.emit(Event::BaselineFetched {
        repository: job.repository.clone(),
        commit: fetched.commit.clone(),
        cached: fetched.cached,
    })?;
    if source.pinned.is_none() {
        host.pin_baseline(&fetched.commit).await?;
    }
    Ok(
        match blocking(|| {
            prepare_dir(&job_dir, |ws, git| {
                Workspace::create_from_commit(&fetched.cache_repo, &fetched.commit, ws, git)
            })
        })? {
            Ok((workspace, tree)) => Prepared::Ready(Box::new(workspace), tree),
            Err(e) => repo_failure(format!("materialising the baseline at {}: {e}", fetched.commit)),
        },
    )
}

/// An empty `job_dir` holding the workspace `create` materialises and the
/// git store beside it. The outer error is the host's (the directory);
/// the inner one the baseline's, a job failure.
fn prepare_dir(
    job_dir: &Path,
    create: impl FnOnce(&Path, &Path) -> Result<(Workspace, TreeId), WorkspaceError>,
) -> Result<Result<(Workspace, TreeId), WorkspaceError>, LifecycleError> {
    let work_dir = |source| LifecycleError::WorkDir {
        path: job_dir.to_owned(),
        source,
    };
    if job_dir.exists() {
        std::fs::remove_dir_all(job_dir).map_err(work_dir)?;
    }
    std::fs::create_dir_all(job_dir).map_err(work_dir)?;
    Ok(create(&job_dir.join("workspace"), &job_dir.join("git")))
}
