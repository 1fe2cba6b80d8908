//! Copies a running job's events into the store, in order, off the
//! attempt loop's path: the loop's event sink is synchronous, so it hands
//! each record to a channel and this task writes it (numbered by the
//! store), noting the running step and each finished attempt as it goes.
//! `flush` waits until everything handed over so far is written, so a job's
//! status never changes before its events are readable.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use stepd_records::events::{Event, EventObserver, EventRecord};
use stepd_store::{AttemptRow, Store};

enum Message {
    Record(Box<EventRecord>),
    Flush(oneshot::Sender<()>),
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

    /// Wait until every record handed over so far is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write(store: &Store, job_id: &str, worker: &str, workspace: &str, record: &EventRecord) {
    let value = serde_json::to_value(record).unwrap_or_default();
    // A store that is briefly unreachable must not drop events: retry, then
    // give up loudly (the artifact copy in events.jsonl stays complete).
    for delay in [0u64, 100, 300, 1000, 3000] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
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
