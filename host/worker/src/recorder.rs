//! Copies a running job's events into the store, in order, off the
//! attempt loop's path: the loop's event sink is synchronous, so it hands
//! each record to a channel and this task writes them. A record waits (up
//! to [`LINGER`]) for the next checkpoint or ending, and goes into its
//! transaction (`Store::record_progress`): the events, numbered once per
//! batch, the running step, each finished attempt, and a finished step's
//! checkpoint, so a step's end costs one commit. With PostgreSQL it copies
//! the job's artifacts too (see [`EventRecorder::artifact_mirror`]), in the same
//! batches, appends to one artifact folded into one statement. `flush` waits until
//! everything handed over so far is written, so a job's status never
//! changes before its events and artifacts are readable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use stepd_records::artifacts::ArtifactMirror;
use stepd_records::events::{Event, EventObserver, EventRecord, StepAttemptRef};
use stepd_store::{
    ArtifactChange, AttemptRow, CheckpointRow, CurrentStep, JobEnding, ProgressBatch, ProgressWritten, Store,
};

use crate::on_store;

/// Where the writer answers a checkpoint or an ending: kept or refused,
/// or why it could not be written.
type Answer = oneshot::Sender<Result<bool, String>>;

enum Message {
    Record(Box<EventRecord>),
    Artifact(ArtifactChange),
    Checkpoint(CheckpointRow, Answer),
    /// The job's last step's checkpoint: written with what comes next.
    HeldCheckpoint(CheckpointRow),
    Finish(JobEnding, Answer),
    Flush(oneshot::Sender<()>),
}

/// Most messages folded into one transaction.
const MAX_BATCH: usize = 512;

/// How long a record may wait for the step's end (its checkpoint) or the
/// job's end to share their transaction. Written one by one as they came,
/// a trivial job's events took four or five commits besides those two;
/// the store's readers (the dashboard, `--run`'s follower) see an event at
/// most this much later.
const LINGER: Duration = Duration::from_millis(50);

/// The sending side; the observer it makes goes on the job's event sink.
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::UnboundedSender<Message>,
}

/// The writer task's side: the job, and what it has not written yet.
struct Writer {
    store: Store,
    job_id: String,
    worker: String,
    workspace: String,
    pending: ProgressBatch,
    /// The pending checkpoint is the job's last step's, which nobody waits
    /// on: a write that fails keeps it for the next batch (the ending's)
    /// rather than drop it with the events.
    checkpoint_held: bool,
}

impl EventRecorder {
    /// Start the writer task for job `job_id`, run by `worker` whose
    /// workspace is `workspace`. Records wait for the next checkpoint,
    /// ending or flush, or at most [`LINGER`].
    pub fn start(store: Store, job_id: String, worker: String, workspace: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let mut writer = Writer {
            store,
            job_id,
            worker,
            workspace,
            pending: ProgressBatch::default(),
            checkpoint_held: false,
        };
        tokio::spawn(async move {
            // When the oldest record not yet written must be written by.
            let mut due: Option<tokio::time::Instant> = None;
            // Messages taken since the last write.
            let mut held = 0;
            loop {
                let received = match due {
                    None => rx.recv().await,
                    Some(at) => tokio::select! {
                        biased;
                        message = rx.recv() => message,
                        () = tokio::time::sleep_until(at) => {
                            (due, held) = (None, 0);
                            // A failure is logged where it happened; the
                            // events stay in events.jsonl.
                            let _ = writer.write().await;
                            continue;
                        }
                    },
                };
                let Some(first) = received else {
                    // Every sender is gone: write what is left, and stop.
                    let _ = writer.write().await;
                    break;
                };
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(message) = next.take() {
                    writer.take(message).await;
                    taken += 1;
                    if held + taken < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                held += taken;
                let overdue = due.is_some_and(|at| at <= tokio::time::Instant::now());
                if writer.pending.is_empty() {
                    (due, held) = (None, 0);
                } else if held >= MAX_BATCH || overdue {
                    // A step that floods its log keeps the channel busy:
                    // what is held is still bounded, by count and by age.
                    let _ = writer.write().await;
                    (due, held) = (None, 0);
                } else if due.is_none() {
                    due = Some(tokio::time::Instant::now() + LINGER);
                }
            }
        });
        EventRecorder { tx }
    }

    /// Keep a finished step's checkpoint in the store, in one transaction
    /// with the events recorded before it: `Ok(false)` when this worker no
    /// longer holds the job's lease.
    pub async fn checkpoint(&self, row: CheckpointRow) -> Result<bool, String> {
        self.ask(|done| Message::Checkpoint(row, done)).await
    }

    /// Keep the job's last step's checkpoint with the next batch — the
    /// job's ending, or the flush before an interruption or a requeue —
    /// so a one-step job's run costs one commit after its claim. Written
    /// under the lease like any checkpoint; a lease lost meanwhile shows
    /// when the ending is refused.
    pub fn hold_checkpoint(&self, row: CheckpointRow) {
        let _ = self.tx.send(Message::HeldCheckpoint(row));
    }

    /// End the job with `ending`, in one transaction with everything
    /// recorded before it: `Ok(false)` when the store refused the end (the
    /// lease lost, or the job changed since `ending.version`); the records
    /// before it are kept either way.
    pub async fn finish(&self, ending: JobEnding) -> Result<bool, String> {
        self.ask(|done| Message::Finish(ending, done)).await
    }

    /// Hand the writer `message` and wait for its answer.
    async fn ask(&self, message: impl FnOnce(Answer) -> Message) -> Result<bool, String> {
        let stopped = || "the job's recorder stopped".to_owned();
        let (done, wait) = oneshot::channel();
        self.tx.send(message(done)).map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// An observer for [`stepd_records::events::EventSink::with_observer`].
    pub fn observer(&self) -> EventObserver {
        let tx = self.tx.clone();
        std::sync::Arc::new(move |record: &EventRecord| {
            let _ = tx.send(Message::Record(Box::new(record.clone())));
        })
    }

    /// A mirror for [`stepd_records::artifacts::JobArtifacts::with_mirror`]
    /// that copies each artifact write into the store.
    pub fn artifact_mirror(&self) -> Arc<dyn ArtifactMirror> {
        Arc::new(StoreMirror { tx: self.tx.clone() })
    }

    /// Wait until every record handed over so far is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

struct StoreMirror {
    tx: mpsc::UnboundedSender<Message>,
}

impl ArtifactMirror for StoreMirror {
    fn put(&self, rel: &str, bytes: &[u8]) {
        let _ = self.tx.send(Message::Artifact(ArtifactChange::Put {
            path: rel.to_owned(),
            bytes: bytes.to_vec(),
        }));
    }

    fn append(&self, rel: &str, text: &str) {
        let _ = self.tx.send(Message::Artifact(ArtifactChange::Append {
            path: rel.to_owned(),
            text: text.to_owned(),
        }));
    }

    fn remove(&self, rel: &str) {
        let _ = self
            .tx
            .send(Message::Artifact(ArtifactChange::Remove { path: rel.to_owned() }));
    }
}

impl Writer {
    /// Fold `message` into the pending batch, or write the batch and
    /// answer it.
    async fn take(&mut self, message: Message) {
        match message {
            Message::Record(record) => self.add(&record),
            Message::Checkpoint(row, done) => {
                self.pending.checkpoint = Some(row);
                self.checkpoint_held = false;
                let _ = done.send(self.write().await.map(|w| w.checkpoint_kept));
            }
            Message::HeldCheckpoint(row) => {
                self.pending.checkpoint = Some(row);
                self.checkpoint_held = true;
            }
            Message::Finish(ending, done) => {
                self.pending.ending = Some(ending);
                let _ = done.send(self.write().await.map(|w| w.finished));
            }
            Message::Artifact(change) => {
                let folded = match self.pending.artifacts.last_mut() {
                    Some(last) => last.absorb(change),
                    None => Some(change),
                };
                self.pending.artifacts.extend(folded);
            }
            Message::Flush(done) => {
                let _ = self.write().await;
                let _ = done.send(());
            }
        }
    }

    fn add(&mut self, record: &EventRecord) {
        let value = serde_json::to_value(record).unwrap_or_default();
        self.pending.events.push((record.at.clone(), value));
        let worker = self.worker.clone();
        let row = |step: &StepAttemptRef, outcome: String, wall: f64, fuel: Option<u64>| AttemptRow {
            step_index: step.step_index,
            attempt: step.attempt,
            step_id: step.step_id.clone(),
            outcome,
            failure_class: None,
            strategy: None,
            wall_clock_seconds: wall,
            fuel_consumed: fuel.map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            worker,
            finished_at: record.at.clone(),
            http: Vec::new(),
            retry_context: None,
        };
        match &record.event {
            Event::AttemptStarted(at) => {
                self.pending.current_step = Some(CurrentStep {
                    step_id: at.step_id.clone(),
                    step_index: at.step_index,
                    workspace: self.workspace.clone(),
                });
            }
            Event::AttemptFinished {
                step,
                wall_clock_seconds,
                fuel_consumed,
                granted,
                ..
            } => {
                let mut attempt = row(step, "succeeded".into(), *wall_clock_seconds, *fuel_consumed);
                attempt.http = granted.http.clone();
                self.pending.attempts.push(attempt);
            }
            Event::AttemptFailed(failure) => {
                let mut attempt = row(
                    &failure.step,
                    failure.outcome.clone(),
                    failure.wall_clock_seconds,
                    failure.fuel_consumed,
                );
                attempt.failure_class = Some(failure.failure_class.clone());
                attempt.strategy = Some(failure.strategy.clone());
                attempt.http = failure.granted.http.clone();
                attempt.retry_context = failure.retry_context.clone();
                self.pending.attempts.push(attempt);
            }
            _ => {}
        }
    }

    /// Write the pending batch, retrying a store that is briefly
    /// unreachable; then give up loudly (the artifact copy in
    /// `events.jsonl` stays complete). Returns what became of its
    /// checkpoint and ending, or why it could not be written.
    async fn write(&mut self) -> Result<ProgressWritten, String> {
        if self.pending.is_empty() {
            return Ok(ProgressWritten {
                checkpoint_kept: true,
                finished: false,
            });
        }
        let batch = std::mem::take(&mut self.pending);
        let mut last = String::new();
        for delay in [0u64, 100, 300, 1000, 3000] {
            // No sleep before the first try: tokio rounds even a zero sleep
            // up to a millisecond, paid on every batch of every job.
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            match on_store(self.store.record_progress(&self.job_id, &self.worker, &batch)).await {
                Ok(kept) => {
                    if batch.checkpoint.is_some() {
                        self.checkpoint_held = false;
                    }
                    return Ok(kept);
                }
                Err(e) => {
                    tracing::warn!(job = %self.job_id, error = %e, "storing events failed; retrying");
                    last = e.to_string();
                }
            }
        }
        tracing::error!(
            job = %self.job_id,
            events = batch.events.len(),
            error = %last,
            "events lost from the store"
        );
        if self.checkpoint_held && self.pending.checkpoint.is_none() {
            self.pending.checkpoint = batch.checkpoint;
        }
        Err(last)
    }
}
