//! Job events (docs/OPERATIONS.md#events): one enum naming every event, with serde
//! payloads, and the sink that writes them in order — to the job's
//! `events.jsonl` artifact (redacted, one line per event) and to tracing.

use std::sync::{Arc, Mutex, PoisonError};

use crate::artifacts::{ArtifactError, JobArtifacts};
use crate::redact::Redactor;

/// Where a step attempt stands; carried by most step events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepAttemptRef {
    /// The step's id.
    pub step_id: String,
    /// 0-based index of the step.
    pub step_index: u32,
    /// 1-based attempt of the step.
    pub attempt: u32,
}

/// What an attempt was granted beyond its workspace: names only, never a
/// value.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantsUsed {
    /// Variables it saw (literal or copied from the worker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Secrets it saw, as variables of these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Guest paths of its read-only mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// Origins it was allowed to call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_origins: Vec<String>,
    /// The HTTP requests it made, allowed and denied, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRequestRecord>,
    /// Requests beyond the ones `http` keeps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub http_unlogged: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl GrantsUsed {
    /// True when the attempt had nothing beyond its workspace and made no
    /// HTTP request.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.secrets.is_empty()
            && self.mounts.is_empty()
            && self.http_origins.is_empty()
            && self.http.is_empty()
            && self.http_unlogged == 0
    }
}

/// One HTTP request of an attempt: never a query, a header or a body.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HttpRequestRecord {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The origin it named.
    pub origin: String,
    /// The path, without the query.
    pub path: String,
    /// The response status, when one arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Request body bytes sent.
    pub request_bytes: u64,
    /// Response body bytes received.
    pub response_bytes: u64,
    /// Milliseconds until its last byte (or until it stopped).
    pub ms: f64,
    /// Why the policy refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
    /// Why it failed on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A failed attempt, as events report it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptFailure {
    /// Which attempt.
    #[serde(flatten)]
    pub step: StepAttemptRef,
    /// The runtime outcome (`idle_timeout`, `guest_error`, ...).
    pub outcome: String,
    /// What self-heal does about it (`soft_reset`, `hard_reset`, ...).
    pub strategy: String,
    /// The failure class.
    pub failure_class: String,
    /// The failure signature's sha256.
    pub failure_signature: String,
    /// sha256 of the attempt's diff, `None` when it changed nothing.
    pub diff_hash: Option<String>,
    /// Wall-clock seconds the attempt ran.
    pub wall_clock_seconds: f64,
    /// Fuel it burned (`None` with metering off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
    /// What it was granted.
    #[serde(default, skip_serializing_if = "GrantsUsed::is_empty")]
    pub granted: GrantsUsed,
    /// What the step's next attempt is told (none when there is no next
    /// attempt): kept with the failure so another worker can tell it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_context: Option<serde_json::Value>,
}

/// What self-heal decided after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfHealDecision {
    /// The attempt that failed.
    #[serde(flatten)]
    pub step: StepAttemptRef,
    /// Its failure class.
    pub failure_class: String,
    /// Its failure signature's sha256.
    pub failure_signature: String,
    /// Its diff hash.
    pub diff_hash: Option<String>,
    /// The strategy chosen (`soft_reset`, `hard_reset`, `queue_retry`, `fail`).
    pub strategy: String,
    /// For `task.self_heal.exhausted`: whether the job may be retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// Every event stepd emits. The serde tag is the event's name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", content = "payload")]
pub enum Event {
    /// A job attempt began (also after a queue retry or a resume).
    #[serde(rename = "task.job.started", rename_all = "camelCase")]
    JobStarted {
        /// 1-based job attempt.
        job_attempt: u32,
        /// The job's attempt budget.
        max_attempts: u32,
        /// The first step this job attempt runs.
        first_step_index: u32,
    },
    /// Every step succeeded.
    #[serde(rename = "task.job.succeeded", rename_all = "camelCase")]
    JobSucceeded {
        /// The job attempt that finished it.
        job_attempt: u32,
    },
    /// The job failed for good (a deterministic failure).
    #[serde(rename = "task.job.failed", rename_all = "camelCase")]
    JobFailed {
        /// The step that failed (`None` when the host itself failed).
        step_id: Option<String>,
        /// Its index.
        step_index: Option<u32>,
        /// The class that ended it.
        failure_class: String,
        /// Why, redacted.
        reason: String,
    },
    /// A retryable failure: the job is queued again after a delay.
    #[serde(rename = "task.job.requeued", rename_all = "camelCase")]
    JobRequeued {
        /// The job attempt that will run next.
        next_job_attempt: u32,
        /// How long the queue waits first.
        delay_seconds: u64,
        /// Why, when it was not a step's retryable failures (a remote
        /// baseline that could not be fetched).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A retryable failure with no job attempts left.
    #[serde(rename = "task.job.dead_letter", rename_all = "camelCase")]
    JobDeadLetter {
        /// Job attempts used.
        job_attempts: u32,
    },
    /// The job was cancelled.
    #[serde(rename = "task.job.cancelled", rename_all = "camelCase")]
    JobCancelled {
        /// Who or what asked.
        reason: String,
    },
    /// An attempt of a step starts (fresh instance).
    #[serde(rename = "task.step.attempt.started")]
    AttemptStarted(StepAttemptRef),
    /// An attempt of a step succeeded.
    #[serde(rename = "task.step.attempt.finished", rename_all = "camelCase")]
    AttemptFinished {
        /// Which attempt.
        #[serde(flatten)]
        step: StepAttemptRef,
        /// The step's summary, redacted.
        summary: String,
        /// sha256 of the step's patch, `None` when it changed nothing.
        diff_hash: Option<String>,
        /// Wall-clock seconds the attempt ran.
        wall_clock_seconds: f64,
        /// Fuel it burned (`None` with metering off).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fuel_consumed: Option<u64>,
        /// What it was granted.
        #[serde(default, skip_serializing_if = "GrantsUsed::is_empty")]
        granted: GrantsUsed,
    },
    /// An attempt of a step failed.
    #[serde(rename = "task.step.attempt.failed")]
    AttemptFailed(AttemptFailure),
    /// Self-heal retries in place (soft reset).
    #[serde(rename = "task.self_heal.triggered")]
    SelfHealTriggered(SelfHealDecision),
    /// Self-heal escalates to a hard reset.
    #[serde(rename = "task.self_heal.escalated")]
    SelfHealEscalated(SelfHealDecision),
    /// Self-heal gives up on the step for this job attempt.
    #[serde(rename = "task.self_heal.exhausted")]
    SelfHealExhausted(SelfHealDecision),
    /// A remote baseline is in this host's cache at the commit the job
    /// runs on (fetched now, or found there).
    #[serde(rename = "task.baseline.fetched", rename_all = "camelCase")]
    BaselineFetched {
        /// The repository's URL.
        repository: String,
        /// The commit (pinned for the job on its first fetch).
        commit: String,
        /// True when the cache held it and nothing was fetched.
        cached: bool,
    },
    /// The workspace was rebuilt to continue at a step.
    #[serde(rename = "task.resume.from_step", rename_all = "camelCase")]
    ResumeFromStep {
        /// The step the job continues at.
        step_id: String,
        /// Its index.
        step_index: u32,
        /// Patches replayed onto the baseline.
        patches_replayed: u32,
    },
    /// An operator action was recorded.
    #[serde(rename = "task.control", rename_all = "camelCase")]
    Control {
        /// The action.
        action: String,
        /// The step it names, if any.
        step_id: Option<String>,
        /// The operator's reason.
        reason: Option<String>,
    },
    /// The worker honoured an operator's recovery request.
    #[serde(rename = "task.control.recovery.ack", rename_all = "camelCase")]
    RecoveryAck {
        /// The action honoured.
        action: String,
        /// The step it named.
        step_id: Option<String>,
    },
    /// A worker stopped renewing its lease (it died or lost the store):
    /// the job was queued again, or ended when it had no attempts left or
    /// a cancel was pending.
    #[serde(rename = "task.job.lease_expired", rename_all = "camelCase")]
    LeaseExpired {
        /// The worker that held it.
        lost_owner: String,
        /// The job's status now (`queued`, `dead_letter`, `cancelled`).
        status: String,
        /// The job attempt that runs next.
        next_job_attempt: u32,
        /// How long the queue waits before that attempt (the same backoff
        /// as after a retryable failure; 0 when the job ended).
        #[serde(default)]
        delay_seconds: u64,
    },
    /// The job is holding for a pause or takeover.
    #[serde(rename = "task.control.pause.active", rename_all = "camelCase")]
    PauseActive {
        /// `pause` or `takeover`.
        mode: String,
    },
    /// The hold is released.
    #[serde(rename = "task.control.pause.cleared", rename_all = "camelCase")]
    PauseCleared {
        /// `pause` or `takeover`.
        mode: String,
    },
}

impl Event {
    /// The event's name, as docs/OPERATIONS.md#events lists it (`task.self_heal.triggered`, ...).
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("event").and_then(|n| n.as_str()).map(str::to_owned))
            .unwrap_or_default()
    }
}

/// The wire name of [`Event::SelfHealEscalated`]: a store counts a job's
/// hard resets by it.
pub const SELF_HEAL_ESCALATED: &str = "task.self_heal.escalated";

/// One event as persisted: its place in the job's order, when, and what.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// 1-based position in the job's event order.
    pub seq: u64,
    /// The job.
    pub job_id: String,
    /// RFC 3339 UTC time.
    pub at: String,
    /// The event, flattened: `event` is its name, `payload` its fields.
    #[serde(flatten)]
    pub event: Event,
}

/// Something that wants to see each event as it is recorded (a live view).
pub type EventObserver = Arc<dyn Fn(&EventRecord) + Send + Sync>;

/// Writes one job's events in order. Cheap to clone; clones share the
/// sequence.
#[derive(Clone)]
pub struct EventSink {
    job_id: String,
    artifacts: JobArtifacts,
    redactor: Arc<Redactor>,
    seq: Arc<Mutex<u64>>,
    observer: Option<EventObserver>,
}

impl EventSink {
    /// A sink appending to `artifacts`' `events.jsonl`, continuing after
    /// the events already there (a resumed job keeps one ordered log).
    pub fn new(job_id: &str, artifacts: JobArtifacts, redactor: Arc<Redactor>) -> Result<Self, ArtifactError> {
        let torn = artifacts.cut_torn_event_line()?;
        if torn > 0 {
            tracing::warn!(
                job = job_id,
                bytes = torn,
                "cut an unfinished last line off events.jsonl"
            );
        }
        let seq = artifacts.read_events::<EventRecord>()?.last().map_or(0, |r| r.seq);
        Ok(EventSink {
            job_id: job_id.to_owned(),
            artifacts,
            redactor,
            seq: Arc::new(Mutex::new(seq)),
            observer: None,
        })
    }

    /// The same sink, also showing each recorded event to `observer`.
    pub fn with_observer(self, observer: EventObserver) -> Self {
        EventSink {
            observer: Some(observer),
            ..self
        }
    }

    /// Record `event`: redacted, numbered, appended, traced and shown to
    /// the observer.
    pub fn emit(&self, event: Event) -> Result<EventRecord, ArtifactError> {
        let record = self.emit_unobserved(event)?;
        if let Some(observer) = &self.observer {
            observer(&record);
        }
        Ok(record)
    }

    /// Record `event` like [`EventSink::emit`] but keep it from the
    /// observer: for a job's last event, which a store host writes itself
    /// in the same transaction as the job's status.
    pub fn emit_unobserved(&self, event: Event) -> Result<EventRecord, ArtifactError> {
        let mut seq = self.seq.lock().unwrap_or_else(PoisonError::into_inner);
        *seq += 1;
        let record = EventRecord {
            seq: *seq,
            job_id: self.job_id.clone(),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            event,
        };
        let value = serde_json::to_value(&record).map_err(ArtifactError::Serialize)?;
        let value = self.redactor.redact_json(&value);
        let record: EventRecord = serde_json::from_value(value.clone()).map_err(ArtifactError::Serialize)?;
        self.artifacts.append_event_line(&value.to_string())?;
        tracing::info!(job = %record.job_id, seq = record.seq, event = value["event"].as_str().unwrap_or_default(), payload = %value["payload"], "event");
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_design_names_and_camel_case_payloads() {
        let event = Event::SelfHealTriggered(SelfHealDecision {
            step: StepAttemptRef {
                step_id: "write".into(),
                step_index: 0,
                attempt: 1,
            },
            failure_class: "transient_runtime".into(),
            failure_signature: "abc".into(),
            diff_hash: None,
            strategy: "soft_reset".into(),
            retryable: None,
        });
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["event"], "task.self_heal.triggered");
        assert_eq!(json["payload"]["stepId"], "write");
        assert_eq!(json["payload"]["stepIndex"], 0);
        assert_eq!(json["payload"]["failureClass"], "transient_runtime");
        assert_eq!(json["payload"]["strategy"], "soft_reset");
        assert_eq!(event.name(), "task.self_heal.triggered");
        let back: Event = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, event);
    }
}
