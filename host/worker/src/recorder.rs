//! Copies a running job's events into the store, in order, off the
//! attempt loop's path: the loop's event sink is synchronous, so it hands
//! each record to a channel and this task writes it (numbered by the
//! store), noting the running step and each finished attempt as it goes.
//! With PostgreSQL it copies the job's artifacts too (see
//! [`EventRecorder::artifact_mirror`]), on the same channel, so they keep
//! their order with the events. `flush` waits until everything handed over
//! so far is written, so a job's status never changes before its events
//! and artifacts are readable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use stepd_records::artifacts::ArtifactMirror;
use stepd_records::events::{Event, EventObserver, EventRecord};
use stepd_store::{AttemptRow, Store};

enum Message {
    Record(Box<EventRecord>),
    Artifact(ArtifactWrite),
    Flush(oneshot::Sender<()>),
}

/// One artifact write to copy.
enum ArtifactWrite {
    Put(String, Vec<u8>),
    Append(String, String),
    Remove(String),
}

/// The sending side; the observer it makes goes on the job's event sink.
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::UnboundedSender<Message>,
}

impl EventRecorder {
    /// Start the writer task for job `job_id`, run by `worker` whose
    /// workspace is `workspace`.
    pub fn start(store: Store, job_id: String, worker: String, workspace: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                match message {
                    Message::Record(record) => write(&store, &job_id, &worker, &workspace, &record).await,
                    Message::Artifact(artifact) => copy(&store, &job_id, &artifact).await,
                    Message::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        EventRecorder { tx }
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
        let _ = self
            .tx
            .send(Message::Artifact(ArtifactWrite::Put(rel.to_owned(), bytes.to_vec())));
    }

    fn append(&self, rel: &str, text: &str) {
        let _ = self.tx.send(Message::Artifact(ArtifactWrite::Append(
            rel.to_owned(),
            text.to_owned(),
        )));
    }

    fn remove(&self, rel: &str) {
        let _ = self.tx.send(Message::Artifact(ArtifactWrite::Remove(rel.to_owned())));
    }
}

/// Copy one artifact write, retrying a store that is briefly unreachable;
/// the worker's own disk keeps the artifact whatever happens here.
async fn copy(store: &Store, job_id: &str, artifact: &ArtifactWrite) {
    for delay in [0u64, 100, 300, 1000, 3000] {
        // No sleep before the first try: tokio rounds even a zero sleep
        // up to a millisecond, paid on every event of every job.
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let (rel, done) = match artifact {
            ArtifactWrite::Put(rel, bytes) => (rel, store.put_artifact(job_id, rel, bytes).await),
            ArtifactWrite::Append(rel, text) => (rel, store.append_artifact(job_id, rel, text).await),
            ArtifactWrite::Remove(rel) => (rel, store.remove_artifact(job_id, rel).await),
        };
        match done {
            Ok(()) => return,
            Err(e) if delay == 3000 => {
                tracing::error!(job = job_id, artifact = %rel, error = %e, "artifact copy lost from the store");
            }
            Err(e) => tracing::warn!(job = job_id, artifact = %rel, error = %e, "copying an artifact failed; retrying"),
        }
    }
}

async fn write(store: &Store, job_id: &str, worker: &str, workspace: &str, record: &EventRecord) {
    let value = serde_json::to_value(record).unwrap_or_default();
    // A store that is briefly unreachable must not drop events: retry, then
    // give up loudly (the artifact copy in events.jsonl stays complete).
    for delay in [0u64, 100, 300, 1000, 3000] {
        // No sleep before the first try: tokio rounds even a zero sleep
        // up to a millisecond, paid on every event of every job.
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        match store.append_event(job_id, &record.at, &value).await {
            Ok(_) => break,
            Err(e) if delay == 3000 => tracing::error!(job = job_id, error = %e, "event lost from the store"),
            Err(e) => tracing::warn!(job = job_id, error = %e, "storing an event failed; retrying"),
        }
    }
    let attempt = match &record.event {
        Event::AttemptStarted(at) => {
            if let Err(e) = store
                .set_current_step(job_id, worker, &at.step_id, at.step_index, workspace)
                .await
            {
                tracing::warn!(job = job_id, error = %e, "noting the current step failed");
            }
            None
        }
        Event::AttemptFinished {
            step,
            wall_clock_seconds,
            fuel_consumed,
            granted,
            ..
        } => Some(AttemptRow {
            step_index: step.step_index,
            attempt: step.attempt,
            step_id: step.step_id.clone(),
            outcome: "succeeded".into(),
            failure_class: None,
            strategy: None,
            wall_clock_seconds: *wall_clock_seconds,
            fuel_consumed: fuel_consumed.map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            worker: worker.to_owned(),
            finished_at: record.at.clone(),
            http: granted.http.clone(),
            retry_context: None,
        }),
        Event::AttemptFailed(failure) => Some(AttemptRow {
            step_index: failure.step.step_index,
            attempt: failure.step.attempt,
            step_id: failure.step.step_id.clone(),
            outcome: failure.outcome.clone(),
            failure_class: Some(failure.failure_class.clone()),
            strategy: Some(failure.strategy.clone()),
            wall_clock_seconds: failure.wall_clock_seconds,
            fuel_consumed: failure.fuel_consumed.map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            worker: worker.to_owned(),
            finished_at: record.at.clone(),
            http: failure.granted.http.clone(),
            retry_context: failure.retry_context.clone(),
        }),
        _ => None,
    };
    if let Some(row) = attempt {
        if let Err(e) = store.record_attempt(job_id, &row).await {
            tracing::warn!(job = job_id, error = %e, "recording an attempt failed");
        }
    }
}
