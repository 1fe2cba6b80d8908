//! Settings of the control plane: where the store and the broker are, how
//! long a lease lasts and how often it is renewed, how often the sweep
//! runs, and the API's bearer tokens.

use std::time::Duration;

use super::{invalid, parse_positive, ConfigError};

/// The RabbitMQ queue of "job ready" messages unless `STEPD_AMQP_QUEUE`
/// names another.
pub const DEFAULT_AMQP_QUEUE: &str = "stepd.jobs.ready";

/// The control plane's settings (`[service]` in the config file).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceSettings {
    /// `DATABASE_URL`: `postgres://…` or `sqlite://…`; `None` means the
    /// SQLite file in the data directory.
    #[serde(serialize_with = "serialize_url_without_password")]
    pub database_url: Option<String>,
    /// `AMQP_URL`: RabbitMQ carries "job ready" messages when set; without
    /// it, workers are woken in-process and by polling the store.
    #[serde(serialize_with = "serialize_url_without_password")]
    pub amqp_url: Option<String>,
    /// `STEPD_AMQP_QUEUE` (default `stepd.jobs.ready`): the durable queue
    /// of "job ready" messages; deployments sharing a broker pick their own.
    pub amqp_queue: String,
    /// `STEPD_LEASE_SECONDS` (default 30): how long a claim holds without
    /// a heartbeat before any process may requeue the job.
    pub lease: Duration,
    /// `STEPD_HEARTBEAT_MS` (default 1000, at most a third of the lease):
    /// how often a worker renews its lease and reads `liveControl`.
    pub heartbeat: Duration,
    /// `STEPD_SWEEP_MS` (default 1000): how often a process looks for
    /// expired leases and for queued jobs nobody was told about.
    pub sweep: Duration,
    /// `STEPD_WORK_RETENTION_SECONDS` (default 86400; 0: at once): how long
    /// an ended job's work directory (workspace and object store) stays on
    /// its worker's host for inspection before the worker removes it. The
    /// store keeps everything needed to run the job again.
    pub work_retention: Duration,
    /// `STEPD_OPERATOR_TOKENS`: comma-separated bearer tokens of the
    /// operator scope. Never printed.
    #[serde(serialize_with = "serialize_token_count")]
    pub operator_tokens: Vec<String>,
    /// `STEPD_WORKER_TOKENS`: comma-separated bearer tokens of the worker
    /// scope. Never printed.
    #[serde(serialize_with = "serialize_token_count")]
    pub worker_tokens: Vec<String>,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            database_url: None,
            amqp_url: None,
            amqp_queue: DEFAULT_AMQP_QUEUE.to_owned(),
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_millis(1000),
            sweep: Duration::from_millis(1000),
            work_retention: Duration::from_secs(86_400),
            operator_tokens: Vec::new(),
            worker_tokens: Vec::new(),
        }
    }
}

impl ServiceSettings {
    /// Defaults overridden by whatever `lookup` knows.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut s = ServiceSettings::default();
        let non_empty = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        s.database_url = non_empty("DATABASE_URL");
        if let Some(url) = &s.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
                return Err(invalid(
                    "DATABASE_URL",
                    url,
                    "must start with postgres://, postgresql:// or sqlite:",
                ));
            }
        }
        s.amqp_url = non_empty("AMQP_URL");
        if let Some(url) = &s.amqp_url {
            if !url.starts_with("amqp://") {
                return Err(invalid("AMQP_URL", &strip_password(url), "must start with amqp://"));
            }
        }
        if let Some(queue) = non_empty("STEPD_AMQP_QUEUE") {
            s.amqp_queue = queue;
        }
        if let Some(v) = lookup("STEPD_LEASE_SECONDS") {
            s.lease = Duration::from_secs(parse_positive("STEPD_LEASE_SECONDS", &v)?);
        }
        if let Some(v) = lookup("STEPD_HEARTBEAT_MS") {
            s.heartbeat = Duration::from_millis(parse_positive("STEPD_HEARTBEAT_MS", &v)?);
        }
        if s.heartbeat * 3 > s.lease {
            return Err(invalid(
                "STEPD_HEARTBEAT_MS",
                &s.heartbeat.as_millis().to_string(),
                &format!(
                    "must be at most a third of the lease ({} s), so one lost heartbeat never loses the job",
                    s.lease.as_secs()
                ),
            ));
        }
        if let Some(v) = lookup("STEPD_SWEEP_MS") {
            s.sweep = Duration::from_millis(parse_positive("STEPD_SWEEP_MS", &v)?);
        }
        if let Some(v) = lookup("STEPD_WORK_RETENTION_SECONDS") {
            let seconds = v
                .trim()
                .parse::<u64>()
                .map_err(|_| invalid("STEPD_WORK_RETENTION_SECONDS", &v, "must be an integer >= 0"))?;
            s.work_retention = Duration::from_secs(seconds);
        }
        s.operator_tokens = tokens(lookup("STEPD_OPERATOR_TOKENS"));
        s.worker_tokens = tokens(lookup("STEPD_WORKER_TOKENS"));
        Ok(s)
    }
}

fn tokens(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A URL fit for a message or `stepd config`: the password of its user
/// info and every query parameter that looks like one (`password`,
/// `sslpassword`, `token`, `secret`, …) become `***`, through the `url`
/// crate's own parsing (`postgres://u:p@h/db?password=q` →
/// `postgres://u:***@h/db?password=***`). A text that does not parse as a
/// URL is not echoed at all: it might be a password in the wrong place.
pub fn strip_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url.trim()) else {
        return "<not a URL>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let secret_key = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.contains("pass") || k.contains("secret") || k.contains("token") || k == "pwd" || k == "key"
    };
    if parsed.query_pairs().any(|(k, _)| secret_key(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_key(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

fn serialize_url_without_password<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_some(&strip_password(url)),
        None => s.serialize_none(),
    }
}

fn serialize_token_count<S: serde::Serializer>(tokens: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} token(s)", tokens.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_urls_from_the_user_info_and_the_query() {
        let shown = strip_password("postgres://u:hunter2@db.internal:5432/stepd?password=hunter3&sslmode=require");
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
        assert!(
            shown.contains("sslmode=require") && shown.starts_with("postgres://u:"),
            "{shown}"
        );
        assert_eq!(
            strip_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            strip_password("sqlite://var/stepd/stepd.db?mode=rwc"),
            "sqlite://var/stepd/stepd.db?mode=rwc"
        );
        assert_eq!(strip_password("hunter2"), "<not a URL>");
    }

    #[test]
    fn a_heartbeat_longer_than_a_third_of_the_lease_is_refused() {
        let err = ServiceSettings::from_lookup(&|n| match n {
            "STEPD_LEASE_SECONDS" => Some("3".into()),
            "STEPD_HEARTBEAT_MS" => Some("1500".into()),
            _ => None,
        })
        .expect_err("too slow");
        assert!(err.to_string().contains("STEPD_HEARTBEAT_MS"), "{err}");
    }

    #[test]
    fn tokens_are_split_on_commas_and_never_printed() {
        let s = ServiceSettings::from_lookup(&|n| match n {
            "STEPD_OPERATOR_TOKENS" => Some(" a1, b2 ,,".into()),
            "AMQP_URL" => Some("amqp://guest:hunter2@127.0.0.1:5672".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(s.operator_tokens, vec!["a1".to_owned(), "b2".to_owned()]);
        let shown = serde_json::to_string(&s).expect("json");
        assert!(!shown.contains("a1") && !shown.contains("hunter2"), "{shown}");
    }
}
