//! Failure classification (docs/ARCHITECTURE.md#failure-classes) and the failure
//! signature (docs/ARCHITECTURE.md#failure-signature-and-no-progress-rule): pure functions of an attempt's outcome.

use sha2::{Digest, Sha256};

use stepd_records::redact::Redactor;
use stepd_runtime::{AttemptOutcome, GuestErrorKind};

/// The closed set of failure classes. Transient classes may be retried in
/// the step; deterministic ones never are, and never get a queue retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A flaky environment, a timeout, a crash: another attempt may work.
    TransientRuntime,
    /// The same failure over and over: retrying as-is is pointless.
    StuckNoProgress,
    /// The input or the step's contract is wrong.
    DeterministicContract,
    /// Forbidden: by policy, or by the sandbox's limits.
    DeterministicPolicy,
    /// The repository is in a state the step cannot handle (or a
    /// checkpoint is missing or altered).
    DeterministicRepo,
}

impl FailureClass {
    /// The class's name as events, artifacts and metric tags spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::TransientRuntime => "transient_runtime",
            FailureClass::StuckNoProgress => "stuck_no_progress",
            FailureClass::DeterministicContract => "deterministic_contract",
            FailureClass::DeterministicPolicy => "deterministic_policy",
            FailureClass::DeterministicRepo => "deterministic_repo",
        }
    }

    /// True for the classes that are never retried.
    pub fn is_deterministic(self) -> bool {
        matches!(
            self,
            FailureClass::DeterministicContract | FailureClass::DeterministicPolicy | FailureClass::DeterministicRepo
        )
    }
}

/// The class of a failed attempt's outcome (docs/ARCHITECTURE.md#failure-classes). `None` for a
/// success, a cancel, or an attempt the host could not start, which are
/// not the step's failures to classify.
pub fn classify(outcome: &AttemptOutcome) -> Option<FailureClass> {
    Some(match outcome {
        AttemptOutcome::Succeeded { .. } | AttemptOutcome::Cancelled | AttemptOutcome::HostUnavailable { .. } => {
            return None
        }
        AttemptOutcome::GuestError { kind, message } => match kind {
            GuestErrorKind::Retry => FailureClass::TransientRuntime,
            GuestErrorKind::Contract => FailureClass::DeterministicContract,
            GuestErrorKind::Policy => FailureClass::DeterministicPolicy,
            GuestErrorKind::Repo => FailureClass::DeterministicRepo,
            GuestErrorKind::Other => classify_message(message),
        },
        AttemptOutcome::WallTimeout | AttemptOutcome::IdleTimeout | AttemptOutcome::Trap { .. } => {
            FailureClass::TransientRuntime
        }
        AttemptOutcome::OutOfFuel
        | AttemptOutcome::MemoryLimit { .. }
        | AttemptOutcome::StackOverflow
        | AttemptOutcome::HandleLimit { .. }
        | AttemptOutcome::TableLimit { .. }
        | AttemptOutcome::InstanceLimit { .. }
        | AttemptOutcome::WorkspaceLimit { .. } => FailureClass::DeterministicPolicy,
    })
}

/// Classify an `other(msg)` text by the ordered keyword rules of the failure classes;
/// the first rule that matches wins.
pub fn classify_message(message: &str) -> FailureClass {
    let text = message.to_lowercase();
    if text.trim().is_empty() {
        return FailureClass::DeterministicContract;
    }
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has_word = |w: &str| words.contains(&w);
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["schema", "validation", "invalid", "required", "must be", "payload"]) {
        FailureClass::DeterministicContract
    } else if has(&["not authorized", "not allowlisted", "policy", "permission", "forbidden"])
        || ["auth", "token", "credential"].iter().any(|w| has_word(w))
    {
        FailureClass::DeterministicPolicy
    } else if has(&[
        "temporary",
        "timeout",
        "timed out",
        "connection reset",
        "connection aborted",
        "connection refused",
        "service unavailable",
        "upstream",
        "transport",
        "rate limit",
    ]) || ["429", "502", "503", "504"].iter().any(|w| has_word(w))
    {
        FailureClass::TransientRuntime
    } else if has(&[
        "repository",
        "merge conflict",
        "checkout",
        "branch",
        "rebase",
        "cannot apply",
    ]) {
        FailureClass::DeterministicRepo
    } else {
        FailureClass::DeterministicContract
    }
}

/// A failed attempt's signature: the normalised text and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSignature {
    /// `step:<id> | plugin:<name> | kind:<kind> | <message>`, redacted,
    /// lowercased, whitespace collapsed.
    pub text: String,
    /// sha256 hex of `text`: the fingerprint the no-progress rule compares.
    pub hash: String,
}

/// The kind and message a signature is made of, for an outcome.
pub fn kind_and_message(outcome: &AttemptOutcome) -> (String, String) {
    match outcome {
        AttemptOutcome::GuestError { kind, message } => (kind.as_str().to_owned(), message.clone()),
        AttemptOutcome::Trap { message } => ("trap".to_owned(), message.clone()),
        other => (other.name().to_owned(), other.to_string()),
    }
}

/// The signature of a failed attempt of `step_id` run by `plugin`.
pub fn failure_signature(
    step_id: &str,
    plugin: &str,
    outcome: &AttemptOutcome,
    redactor: &Redactor,
) -> FailureSignature {
    let (kind, message) = kind_and_message(outcome);
    let raw = format!("step:{step_id} | plugin:{plugin} | kind:{kind} | {message}");
    let text = redactor
        .redact(&raw)
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    FailureSignature { text, hash }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_messages_follow_the_ordered_keyword_rules() {
        use FailureClass::*;
        let cases = [
            ("", DeterministicContract),
            ("   ", DeterministicContract),
            ("schema mismatch in config", DeterministicContract),
            ("field is required", DeterministicContract),
            ("value must be positive", DeterministicContract),
            ("invalid token", DeterministicContract), // contract rule comes first
            ("permission denied", DeterministicPolicy),
            ("host not allowlisted", DeterministicPolicy),
            ("missing auth header", DeterministicPolicy),
            ("bad credential", DeterministicPolicy),
            ("the author field", DeterministicContract), // "auth" only as a whole word
            ("request timed out", TransientRuntime),
            ("Connection reset by peer", TransientRuntime),
            ("got HTTP 503 from upstream", TransientRuntime),
            ("rate limit hit", TransientRuntime),
            ("status 429", TransientRuntime),
            ("port 4290 closed", DeterministicContract),
            ("merge conflict in src/lib.rs", DeterministicRepo),
            ("cannot apply patch", DeterministicRepo),
            ("branch main not found", DeterministicRepo),
            ("something odd happened", DeterministicContract),
        ];
        for (message, expected) in cases {
            assert_eq!(classify_message(message), expected, "{message:?}");
        }
    }

    #[test]
    fn outcomes_map_to_classes_as_the_design_says() {
        use FailureClass::*;
        let guest = |kind| AttemptOutcome::GuestError {
            kind,
            message: "x".into(),
        };
        assert_eq!(classify(&guest(GuestErrorKind::Retry)), Some(TransientRuntime));
        assert_eq!(classify(&guest(GuestErrorKind::Contract)), Some(DeterministicContract));
        assert_eq!(classify(&guest(GuestErrorKind::Policy)), Some(DeterministicPolicy));
        assert_eq!(classify(&guest(GuestErrorKind::Repo)), Some(DeterministicRepo));
        assert_eq!(classify(&AttemptOutcome::IdleTimeout), Some(TransientRuntime));
        assert_eq!(classify(&AttemptOutcome::WallTimeout), Some(TransientRuntime));
        assert_eq!(
            classify(&AttemptOutcome::Trap {
                message: "panic".into()
            }),
            Some(TransientRuntime)
        );
        assert_eq!(classify(&AttemptOutcome::OutOfFuel), Some(DeterministicPolicy));
        assert_eq!(classify(&AttemptOutcome::StackOverflow), Some(DeterministicPolicy));
        assert_eq!(
            classify(&AttemptOutcome::HandleLimit { limit: 1024 }),
            Some(DeterministicPolicy)
        );
        assert_eq!(
            classify(&AttemptOutcome::InstanceLimit { limit: 100 }),
            Some(DeterministicPolicy)
        );
        assert_eq!(
            classify(&AttemptOutcome::TableLimit {
                requested_elements: 2,
                limit_elements: 1
            }),
            Some(DeterministicPolicy)
        );
        assert_eq!(
            classify(&AttemptOutcome::MemoryLimit {
                requested_bytes: 2,
                limit_bytes: 1
            }),
            Some(DeterministicPolicy)
        );
        assert_eq!(classify(&AttemptOutcome::Cancelled), None);
        let host = AttemptOutcome::HostUnavailable {
            message: "maximum concurrent limit of 64 for component instances reached".into(),
        };
        assert_eq!(
            classify(&host),
            None,
            "the host's condition is never the step's failure"
        );
    }

    #[test]
    fn signatures_are_redacted_normalised_and_stable() {
        let redactor = Redactor::new();
        redactor.register("s3cr3t-value");
        let outcome = AttemptOutcome::GuestError {
            kind: GuestErrorKind::Retry,
            message: "Lint   FAILED:\n token s3cr3t-value".into(),
        };
        let sig = failure_signature("check", "lint", &outcome, &redactor);
        assert_eq!(
            sig.text,
            "step:check | plugin:lint | kind:retry | lint failed: token [redacted]"
        );
        assert_eq!(sig, failure_signature("check", "lint", &outcome, &redactor));
        assert_eq!(sig.hash.len(), 64);
    }
}
