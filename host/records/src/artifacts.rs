//! The artifacts of a job (docs/OPERATIONS.md#artifacts), under
//! `<root>/agent_jobs/<job_id>/`: step patches, step states, one record per
//! failed attempt, step logs and the event log.
//!
//! Everything is written through a cap-std directory opened on the job's
//! directory, so no path (and no symlink planted there) can lead a write
//! outside it; files are written to a temporary name and renamed into
//! place, so a reader never sees half an artifact. Text and JSON are
//! redacted on the way in; patches are the workspace's own bytes and are
//! kept exact (their hash is what replay checks).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::phases::{self, Phase};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use crate::events::GrantsUsed;
use crate::redact::Redactor;

/// Version of the state files' shape.
pub const SCHEMA_VERSION: u32 = 1;

/// Why an artifact could not be written or read. Names the artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A job id that cannot be a directory name.
    #[error("job id {0:?} is invalid: use 1-128 letters, digits, '-' or '_'")]
    InvalidJobId(String),
    /// Reading or writing a file failed.
    #[error("artifact {path}: {source}")]
    Io {
        /// The artifact's path inside the job directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON artifact did not (de)serialize.
    #[error("artifact JSON: {0}")]
    Serialize(serde_json::Error),
    /// A JSON artifact on disk is not what it should be.
    #[error("artifact {path} is malformed: {source}")]
    Malformed {
        /// The artifact's path inside the job directory.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// `state/steps/step-XXXX.json`: what a finished step left behind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The step's id.
    pub step_id: String,
    /// 0-based index.
    pub step_index: u32,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// The step's summary (redacted).
    pub summary: String,
    /// sha256 of `patches/steps/step-XXXX.patch`; `None` when the step
    /// changed nothing (the patch file is then empty).
    pub diff_hash: Option<String>,
    /// Paths the step changed.
    pub changed_files: Vec<String>,
    /// RFC 3339 UTC.
    pub finished_at: String,
}

/// `state/self_heal/attempt-XXXX-YYYY.json`: one failed attempt and what
/// self-heal did about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// The step's id.
    pub step_id: String,
    /// 0-based index.
    pub step_index: u32,
    /// 1-based attempt that failed.
    pub attempt: u32,
    /// failure class.
    pub failure_class: String,
    /// One paragraph, redacted.
    pub failure_summary: String,
    /// The normalised signature text.
    pub failure_signature: String,
    /// Its sha256.
    pub failure_signature_hash: String,
    /// What self-heal chose.
    pub strategy: String,
    /// How long the attempt ran.
    pub wall_clock_seconds: f64,
    /// How long it had been silent when it ended.
    pub idle_seconds: f64,
    /// Fuel burned (`None`: metering off).
    pub fuel_consumed: Option<u64>,
    /// True when the idle deadline stopped it.
    pub idle_timeout_triggered: bool,
    /// sha256 of the attempt's diff; `None` when it changed nothing.
    pub diff_hash: Option<String>,
    /// Paths the attempt changed.
    pub changed_files: Vec<String>,
    /// What the next attempt is told (`None` when there is none).
    pub retry_context: Option<serde_json::Value>,
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// What the attempt was granted (names only).
    #[serde(default, skip_serializing_if = "GrantsUsed::is_empty")]
    pub granted: GrantsUsed,
}

/// Where a copy of each artifact write goes besides this host's disk: in
/// a deployment whose API processes may run on other hosts, the store.
/// Each call names the artifact by its path inside the job directory and
/// carries the bytes exactly as written to disk (already redacted). The
/// calls come from the attempt loop's threads, so an implementation hands
/// them on and returns at once.
pub trait ArtifactMirror: Send + Sync {
    /// `rel` now holds `bytes`.
    fn put(&self, rel: &str, bytes: &[u8]);
    /// `text` was appended to `rel` (a log, the event log).
    fn append(&self, rel: &str, text: &str);
    /// `rel` is gone.
    fn remove(&self, rel: &str);
}

/// The artifact directory of one job. Cheap to clone.
#[derive(Clone)]
pub struct JobArtifacts {
    dir: Arc<Dir>,
    path: PathBuf,
    redactor: Arc<Redactor>,
    mirror: Option<Arc<dyn ArtifactMirror>>,
    durability: Durability,
}

/// Whether an artifact write reaches the disk before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Each whole-file write is flushed (`stepd run`: the artifacts are the
    /// job's only record, and a resume reads its checkpoints back).
    #[default]
    Flushed,
    /// The artifacts are a copy of a record kept elsewhere (the service's
    /// store): a write is atomic (a rename) but not flushed, and a power
    /// loss may leave an older copy.
    Cache,
}

impl std::fmt::Debug for JobArtifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobArtifacts")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn is_valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn io_error(path: &str) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `step-XXXX` for a 0-based step index.
pub fn step_name(index: u32) -> String {
    format!("step-{index:04}")
}

impl JobArtifacts {
    /// Open (creating if needed) `<root>/agent_jobs/<job_id>/` and its
    /// sub-directories.
    pub fn open(root: &Path, job_id: &str, redactor: Arc<Redactor>) -> Result<Self, ArtifactError> {
        phases::timed(Phase::Artifacts, || Self::open_now(root, job_id, redactor))
    }

    fn open_now(root: &Path, job_id: &str, redactor: Arc<Redactor>) -> Result<Self, ArtifactError> {
        if !is_valid_job_id(job_id) {
            return Err(ArtifactError::InvalidJobId(job_id.to_owned()));
        }
        let root_display = root.display().to_string();
        std::fs::create_dir_all(root).map_err(io_error(&root_display))?;
        let root_dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(io_error(&root_display))?;
        let job_rel = format!("agent_jobs/{job_id}");
        root_dir.create_dir_all(&job_rel).map_err(io_error(&job_rel))?;
        let dir = root_dir.open_dir(&job_rel).map_err(io_error(&job_rel))?;
        // Sub-directories (`patches/steps`, `state/steps`,
        // `state/self_heal`, `logs/steps`) are made by their first write:
        // every directory is an inode a busy host creates per job.
        Ok(JobArtifacts {
            dir: Arc::new(dir),
            path: root.join(job_rel),
            redactor,
            mirror: None,
            durability: Durability::Flushed,
        })
    }

    /// The same directory, written with `durability`.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The same directory, with every write also handed to `mirror`.
    pub fn with_mirror(mut self, mirror: Arc<dyn ArtifactMirror>) -> Self {
        self.mirror = Some(mirror);
        self
    }

    /// The job's artifact directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `bytes` to `rel` atomically: a temporary file, then a rename.
    fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        phases::timed(Phase::Artifacts, || self.write_atomic_now(rel, bytes))
    }

    fn write_atomic_now(&self, rel: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        let tmp = format!("{rel}.tmp-{}", uuid::Uuid::new_v4().simple());
        let result = (|| {
            let mut file = self.in_parent(rel, || self.dir.create(&tmp))?;
            file.write_all(bytes)?;
            if self.durability == Durability::Flushed {
                file.sync_all()?;
            }
            self.dir.rename(&tmp, &self.dir, rel)
        })();
        if result.is_err() {
            let _ = self.dir.remove_file(&tmp);
        }
        result.map_err(io_error(rel))?;
        if let Some(mirror) = &self.mirror {
            mirror.put(rel, bytes);
        }
        Ok(())
    }

    /// Append `text` to `rel`, creating it when missing.
    fn append(&self, rel: &str, text: &str) -> Result<(), ArtifactError> {
        phases::timed(Phase::Artifacts, || self.append_now(rel, text))
    }

    fn append_now(&self, rel: &str, text: &str) -> Result<(), ArtifactError> {
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        let mut file = self
            .in_parent(rel, || self.dir.open_with(rel, &options))
            .map_err(io_error(rel))?;
        file.write_all(text.as_bytes()).map_err(io_error(rel))?;
        if let Some(mirror) = &self.mirror {
            mirror.append(rel, text);
        }
        Ok(())
    }

    /// Run `create`, making `rel`'s parent directory first when it is
    /// missing (the first write into it).
    fn in_parent<T>(&self, rel: &str, create: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
        match create() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some((parent, _)) = rel.rsplit_once('/') {
                    self.dir.create_dir_all(parent)?;
                }
                create()
            }
            other => other,
        }
    }

    fn write_json<T: serde::Serialize>(&self, rel: &str, value: &T) -> Result<(), ArtifactError> {
        let value = serde_json::to_value(value).map_err(ArtifactError::Serialize)?;
        let clean = self.redactor.redact_json(&value);
        let text = serde_json::to_string_pretty(&clean).map_err(ArtifactError::Serialize)?;
        self.write_atomic(rel, format!("{text}\n").as_bytes())
    }

    fn read_optional(&self, rel: &str) -> Result<Option<Vec<u8>>, ArtifactError> {
        match self.dir.read(rel) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(rel)(e)),
        }
    }

    /// Path (inside the job dir) of step `index`'s patch.
    pub fn patch_rel(index: u32) -> String {
        format!("patches/steps/{}.patch", step_name(index))
    }

    /// Path (inside the job dir) of step `index`'s state.
    pub fn state_rel(index: u32) -> String {
        format!("state/steps/{}.json", step_name(index))
    }

    /// Record a finished step: its patch first, then its state (the state is
    /// the commit point — a step counts as done once its state exists).
    pub fn write_step_checkpoint(&self, patch: &[u8], state: &StepState) -> Result<(), ArtifactError> {
        self.write_atomic(&Self::patch_rel(state.step_index), patch)?;
        self.write_json(&Self::state_rel(state.step_index), state)
    }

    /// Step `index`'s patch bytes, if written.
    pub fn read_step_patch(&self, index: u32) -> Result<Option<Vec<u8>>, ArtifactError> {
        self.read_optional(&Self::patch_rel(index))
    }

    /// Step `index`'s state, if written.
    pub fn read_step_state(&self, index: u32) -> Result<Option<StepState>, ArtifactError> {
        let rel = Self::state_rel(index);
        match self.read_optional(&rel)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ArtifactError::Malformed { path: rel, source }),
        }
    }

    /// Forget step `index`'s checkpoint (a resume before it redoes it). The
    /// state goes first, so a crash in between leaves "not done".
    pub fn remove_step_checkpoint(&self, index: u32) -> Result<(), ArtifactError> {
        for rel in [Self::state_rel(index), Self::patch_rel(index)] {
            match self.dir.remove_file(&rel) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&rel)(e)),
            }
            if let Some(mirror) = &self.mirror {
                mirror.remove(&rel);
            }
        }
        Ok(())
    }

    /// Record a failed attempt.
    pub fn write_attempt_record(&self, record: &AttemptRecord) -> Result<(), ArtifactError> {
        let rel = format!(
            "state/self_heal/attempt-{:04}-{:04}.json",
            record.step_index, record.attempt
        );
        self.write_json(&rel, record)
    }

    /// Append an attempt's output to step `index`'s log (redacted). An
    /// append, not a rewrite: a step's log grows with every attempt.
    pub fn append_step_log(&self, index: u32, text: &str) -> Result<(), ArtifactError> {
        let rel = format!("logs/steps/{}.log", step_name(index));
        self.append(&rel, &self.redactor.redact(text))
    }

    /// Append one already-serialized, already-redacted event line.
    pub(crate) fn append_event_line(&self, line: &str) -> Result<(), ArtifactError> {
        self.append("events.jsonl", &format!("{line}\n"))
    }

    /// Every event line recorded so far, in order, parsed as `T` (the
    /// event record type lives with the events, which write through here).
    /// A last line without its newline is a write still in flight or one
    /// a killed process never finished: it is not an event yet, and is
    /// left out. Any other line that does not parse is an error.
    pub fn read_events<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, ArtifactError> {
        let rel = "events.jsonl";
        let Some(bytes) = self.read_optional(rel)? else {
            return Ok(Vec::new());
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
        String::from_utf8_lossy(&bytes[..complete])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|source| ArtifactError::Malformed {
                    path: rel.to_owned(),
                    source,
                })
            })
            .collect()
    }

    /// Cut an unfinished last line off `events.jsonl` (the process was
    /// killed, or the disk filled, in the middle of an append), so the next
    /// event starts a line of its own. Returns the bytes cut.
    pub(crate) fn cut_torn_event_line(&self) -> Result<u64, ArtifactError> {
        let rel = "events.jsonl";
        let Some(bytes) = self.read_optional(rel)? else {
            return Ok(0);
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
        if complete == bytes.len() {
            return Ok(0);
        }
        let mut options = OpenOptions::new();
        options.write(true);
        let file = self.dir.open_with(rel, &options).map_err(io_error(rel))?;
        file.set_len(complete as u64).map_err(io_error(rel))?;
        Ok((bytes.len() - complete) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(index: u32) -> StepState {
        StepState {
            schema_version: SCHEMA_VERSION,
            step_id: format!("s{index}"),
            step_index: index,
            attempt: 1,
            summary: "wrote hunter2".into(),
            diff_hash: Some("abc".into()),
            changed_files: vec!["a.txt".into()],
            finished_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn checkpoints_land_at_the_design_paths_redacted_except_the_patch() {
        let root = tempfile::tempdir().expect("tempdir");
        let redactor = Arc::new(Redactor::new());
        redactor.register("hunter2");
        let artifacts = JobArtifacts::open(root.path(), "job-1", redactor).expect("open");
        artifacts
            .write_step_checkpoint(b"patch hunter2", &state(3))
            .expect("write");
        let job = root.path().join("agent_jobs/job-1");
        assert_eq!(
            std::fs::read(job.join("patches/steps/step-0003.patch")).expect("patch"),
            b"patch hunter2"
        );
        let text = std::fs::read_to_string(job.join("state/steps/step-0003.json")).expect("state");
        assert!(text.contains("\"summary\": \"wrote [REDACTED]\""), "{text}");
        assert_eq!(
            artifacts.read_step_state(3).expect("read").expect("exists").step_id,
            "s3"
        );
        assert!(artifacts.read_step_state(4).expect("read").is_none());
        artifacts.append_step_log(3, "one hunter2\n").expect("log");
        artifacts.append_step_log(3, "two\n").expect("log");
        assert_eq!(
            std::fs::read_to_string(job.join("logs/steps/step-0003.log")).expect("log"),
            "one [REDACTED]\ntwo\n"
        );
        // No temporary files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(job.join("state/steps"))
            .expect("dir")
            .flatten()
            .collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn a_job_id_that_could_escape_the_root_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        for id in ["../x", "a/b", "", ".."] {
            let err = JobArtifacts::open(root.path(), id, Arc::new(Redactor::new())).expect_err("invalid");
            assert!(matches!(err, ArtifactError::InvalidJobId(_)), "{id}: {err}");
        }
    }

    #[test]
    fn a_symlink_planted_in_the_job_dir_cannot_redirect_a_write_outside() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        let artifacts = JobArtifacts::open(root.path(), "job-2", Arc::new(Redactor::new())).expect("open");
        let job = root.path().join("agent_jobs/job-2");
        // Sub-directories are made by their first write: plant the link
        // where `logs/steps` would be made.
        std::fs::create_dir_all(job.join("logs")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), job.join("logs/steps")).expect("plant symlink");
        let err = artifacts
            .append_step_log(0, "x")
            .expect_err("write through symlink refused");
        assert!(err.to_string().contains("logs/steps/step-0000.log"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).expect("outside").count(), 0);
    }
}
