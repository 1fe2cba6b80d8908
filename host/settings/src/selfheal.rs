//! Self-heal budgets (docs/ARCHITECTURE.md#budgets) and the queue-retry backoff
//! (docs/OPERATIONS.md#queue-retry-and-backoff).

use std::time::Duration;

use super::{invalid, parse_positive, ConfigError};

/// The longest a step deadline may be: a week. Longer values are refused,
/// which also keeps every deadline instant representable.
pub const MAX_STEP_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// How hard stepd tries before giving up on a step or a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SelfHealConfig {
    /// Attempts of one step within one job attempt (`STEP_MAX_ATTEMPTS`).
    pub step_max_attempts: u32,
    /// Wall-clock deadline of one attempt (`STEP_TIMEOUT_SECONDS`).
    pub step_timeout_seconds: u64,
    /// Idle deadline of one attempt (`STEP_IDLE_TIMEOUT_SECONDS`).
    pub step_idle_timeout_seconds: u64,
    /// Consecutive identical failures that make a step stuck
    /// (`STEP_NO_PROGRESS_LIMIT`).
    pub step_no_progress_limit: u32,
    /// Hard resets one job may spend (`JOB_SELF_HEAL_MAX_RESETS`).
    pub job_self_heal_max_resets: u32,
}

impl Default for SelfHealConfig {
    fn default() -> Self {
        SelfHealConfig {
            step_max_attempts: 3,
            step_timeout_seconds: 900,
            step_idle_timeout_seconds: 300,
            step_no_progress_limit: 2,
            job_self_heal_max_resets: 1,
        }
    }
}

/// A job's `selfHeal` object: any budget it names replaces the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SelfHealOverrides {
    /// Overrides `step_max_attempts`.
    pub step_max_attempts: Option<u32>,
    /// Overrides `step_timeout_seconds`.
    pub step_timeout_seconds: Option<u64>,
    /// Overrides `step_idle_timeout_seconds`.
    pub step_idle_timeout_seconds: Option<u64>,
    /// Overrides `step_no_progress_limit`.
    pub step_no_progress_limit: Option<u32>,
    /// Overrides `job_self_heal_max_resets`.
    pub job_self_heal_max_resets: Option<u32>,
}

impl SelfHealOverrides {
    /// Every value must be ≥ 1; the error names the payload field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields: [(&str, Option<u64>); 5] = [
            ("task.selfHeal.stepMaxAttempts", self.step_max_attempts.map(u64::from)),
            ("task.selfHeal.stepTimeoutSeconds", self.step_timeout_seconds),
            ("task.selfHeal.stepIdleTimeoutSeconds", self.step_idle_timeout_seconds),
            (
                "task.selfHeal.stepNoProgressLimit",
                self.step_no_progress_limit.map(u64::from),
            ),
            (
                "task.selfHeal.jobSelfHealMaxResets",
                self.job_self_heal_max_resets.map(u64::from),
            ),
        ];
        for (field, value) in fields {
            if value == Some(0) {
                return Err(invalid(field, "0", "must be an integer >= 1"));
            }
        }
        for (field, value) in [
            ("task.selfHeal.stepTimeoutSeconds", self.step_timeout_seconds),
            ("task.selfHeal.stepIdleTimeoutSeconds", self.step_idle_timeout_seconds),
        ] {
            if let Some(v) = value.filter(|v| *v > MAX_STEP_TIMEOUT_SECONDS) {
                return Err(invalid(field, &v.to_string(), "must be at most 604800 (a week)"));
            }
        }
        Ok(())
    }
}

impl SelfHealConfig {
    /// Defaults overridden by whichever of the five variables `lookup` knows.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = SelfHealConfig::default();
        let small = |name: &str, value: &str| -> Result<u32, ConfigError> {
            let n = parse_positive(name, value)?;
            u32::try_from(n).map_err(|_| invalid(name, value, "is too large"))
        };
        if let Some(v) = lookup("STEP_MAX_ATTEMPTS") {
            config.step_max_attempts = small("STEP_MAX_ATTEMPTS", &v)?;
        }
        let timeout = |name: &str, value: &str| -> Result<u64, ConfigError> {
            let n = parse_positive(name, value)?;
            if n > MAX_STEP_TIMEOUT_SECONDS {
                return Err(invalid(name, value, "must be at most 604800 (a week)"));
            }
            Ok(n)
        };
        if let Some(v) = lookup("STEP_TIMEOUT_SECONDS") {
            config.step_timeout_seconds = timeout("STEP_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = lookup("STEP_IDLE_TIMEOUT_SECONDS") {
            config.step_idle_timeout_seconds = timeout("STEP_IDLE_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = lookup("STEP_NO_PROGRESS_LIMIT") {
            config.step_no_progress_limit = small("STEP_NO_PROGRESS_LIMIT", &v)?;
        }
        if let Some(v) = lookup("JOB_SELF_HEAL_MAX_RESETS") {
            config.job_self_heal_max_resets = small("JOB_SELF_HEAL_MAX_RESETS", &v)?;
        }
        Ok(config)
    }

    /// These budgets with a job's overrides applied.
    pub fn with_overrides(self, overrides: &SelfHealOverrides) -> Self {
        SelfHealConfig {
            step_max_attempts: overrides.step_max_attempts.unwrap_or(self.step_max_attempts),
            step_timeout_seconds: overrides.step_timeout_seconds.unwrap_or(self.step_timeout_seconds),
            step_idle_timeout_seconds: overrides
                .step_idle_timeout_seconds
                .unwrap_or(self.step_idle_timeout_seconds),
            step_no_progress_limit: overrides.step_no_progress_limit.unwrap_or(self.step_no_progress_limit),
            job_self_heal_max_resets: overrides
                .job_self_heal_max_resets
                .unwrap_or(self.job_self_heal_max_resets),
        }
    }

    /// The wall deadline of one attempt.
    pub fn step_timeout(&self) -> Duration {
        Duration::from_secs(self.step_timeout_seconds)
    }

    /// The idle deadline of one attempt.
    pub fn step_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.step_idle_timeout_seconds)
    }
}

/// Queue-retry backoff: `min(max, base · 2^(attempt-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryBackoff {
    /// The first retry's delay (`STEPD_RETRY_BACKOFF_SECONDS`, default 15;
    /// 0 retries at once).
    pub base_seconds: u64,
    /// The ceiling (`STEPD_RETRY_BACKOFF_MAX_SECONDS`, default 600).
    pub max_seconds: u64,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff {
            base_seconds: 15,
            max_seconds: 600,
        }
    }
}

impl RetryBackoff {
    /// Defaults overridden by the two variables, when `lookup` knows them.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut backoff = RetryBackoff::default();
        if let Some(v) = lookup("STEPD_RETRY_BACKOFF_SECONDS") {
            backoff.base_seconds = v
                .trim()
                .parse()
                .map_err(|_| invalid("STEPD_RETRY_BACKOFF_SECONDS", &v, "must be an integer >= 0"))?;
        }
        if let Some(v) = lookup("STEPD_RETRY_BACKOFF_MAX_SECONDS") {
            backoff.max_seconds = parse_positive("STEPD_RETRY_BACKOFF_MAX_SECONDS", &v)?;
        }
        Ok(backoff)
    }

    /// The delay before job attempt `attempt + 1`, after job attempt
    /// `attempt` (1-based) failed retryably.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
        Duration::from_secs(self.base_seconds.saturating_mul(factor).min(self.max_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_those_of_the_design() {
        let c = SelfHealConfig::from_lookup(&|_| None).expect("defaults");
        assert_eq!(
            (c.step_max_attempts, c.step_timeout_seconds, c.step_idle_timeout_seconds),
            (3, 900, 300)
        );
        assert_eq!((c.step_no_progress_limit, c.job_self_heal_max_resets), (2, 1));
    }

    #[test]
    fn an_invalid_budget_names_the_variable() {
        for (name, value) in [
            ("STEP_MAX_ATTEMPTS", "0"),
            ("STEP_NO_PROGRESS_LIMIT", "-1"),
            ("JOB_SELF_HEAL_MAX_RESETS", "x"),
        ] {
            let err = SelfHealConfig::from_lookup(&|n| (n == name).then(|| value.to_owned())).expect_err("invalid");
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }

    #[test]
    fn job_overrides_replace_only_what_they_name() {
        let overrides = SelfHealOverrides {
            step_idle_timeout_seconds: Some(2),
            ..Default::default()
        };
        let c = SelfHealConfig::default().with_overrides(&overrides);
        assert_eq!(c.step_idle_timeout_seconds, 2);
        assert_eq!(c.step_timeout_seconds, 900);
        let bad = SelfHealOverrides {
            step_max_attempts: Some(0),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .expect_err("0")
            .to_string()
            .contains("task.selfHeal.stepMaxAttempts"));
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let b = RetryBackoff::default();
        assert_eq!(b.delay_after(1), Duration::from_secs(15));
        assert_eq!(b.delay_after(2), Duration::from_secs(30));
        assert_eq!(b.delay_after(6), Duration::from_secs(480));
        assert_eq!(b.delay_after(7), Duration::from_secs(600));
        assert_eq!(b.delay_after(200), Duration::from_secs(600));
    }
}
