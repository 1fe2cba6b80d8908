//! Host settings: the sandbox limits ([`RuntimeSettings`]), the self-heal
//! budgets ([`SelfHealConfig`]), the queue-retry backoff and the StatsD
//! target, the grant ceiling ([`GrantCeiling`]). Read from defaults, then an optional TOML file, then the
//! environment (which wins); every invalid value is an error naming the
//! variable, so a bad deployment fails at start, not mid-job.

mod grants;
mod origin;
mod runtime;
mod selfheal;
mod service;
mod sources;
mod tokens;
mod workspace;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use grants::{is_env_name, BaselineRoots, GrantCeiling};
pub use origin::{HttpOrigin, HttpScheme};
pub use runtime::{RuntimeSettings, DEFAULT_FUEL_PER_ATTEMPT};

/// Where plugins are looked up by name when neither `--plugins` nor
/// `STEPD_PLUGIN_DIR` says otherwise: where `stepd plugin build` (and the
/// test build) put the components built from `plugins/`.
pub const DEFAULT_PLUGIN_DIR: &str = "target/plugins/dist";
pub use selfheal::{RetryBackoff, SelfHealConfig, SelfHealOverrides, MAX_STEP_TIMEOUT_SECONDS};
pub use service::{strip_password, ServiceSettings, DEFAULT_AMQP_QUEUE};
pub use sources::{apply_file_to_env, effective, Effective, Source};
pub use tokens::{NamedToken, TokensFile, MAX_TOKENS_FILE_BYTES, MIN_TOKEN_CHARS};
pub use workspace::WorkspaceQuota;

/// Why a setting could not be used. Always names the variable and the value,
/// so an operator can fix a deployment from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable is set but its value is not what it must be.
    #[error("{variable}={value:?} is invalid: {reason}")]
    Invalid {
        /// The environment variable (or flag, or file key) that holds it.
        variable: String,
        /// The value as given.
        value: String,
        /// What the value must be.
        reason: String,
    },
    /// The config file could not be read or parsed.
    #[error("config file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong, naming the key where there is one.
        message: String,
    },
}

/// Where StatsD metrics go; `None` in [`Settings`] means no metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatsdTarget {
    /// Host name or address.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

/// Everything a host process is configured with.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    /// Sandbox limits.
    pub runtime: RuntimeSettings,
    /// Self-heal budgets (a job may override them).
    pub self_heal: SelfHealConfig,
    /// Queue-retry backoff.
    pub retry: RetryBackoff,
    /// StatsD target, when one is configured.
    pub statsd: Option<StatsdTarget>,
    /// Store, broker, leases and API tokens.
    pub service: ServiceSettings,
    /// What a step may leave in its workspace.
    pub workspace: WorkspaceQuota,
    /// What this host will ever grant a step.
    pub grants: GrantCeiling,
}

/// How a setting's value may be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// As it is.
    Plain,
    /// A URL: with any password (user info or query) replaced by `***`.
    Url,
    /// A list of tokens: only how many.
    Tokens,
}

/// One setting: its place in the config file, the variable that stands
/// for it, its default as text (`None`: unset) and how it may be shown.
#[derive(Debug, Clone, Copy)]
pub struct SettingKey {
    /// The file's section.
    pub section: &'static str,
    /// The key in the section.
    pub key: &'static str,
    /// The environment variable.
    pub variable: &'static str,
    /// The default, as the variable would hold it.
    pub default: Option<&'static str>,
    /// How `stepd config` may print it.
    pub shown: Shown,
}

const fn key(
    section: &'static str,
    key: &'static str,
    variable: &'static str,
    default: Option<&'static str>,
    shown: Shown,
) -> SettingKey {
    SettingKey {
        section,
        key,
        variable,
        default,
        shown,
    }
}

/// Every setting a config file may hold, by section, and the variable each
/// stands for. Precedence: a command-line flag (where there is one), then
/// the environment, then the file, then the default. The defaults here are
/// held to the code's by a test (`defaults_listed_are_the_defaults`).
pub const SETTING_KEYS: &[SettingKey] = &[
    key(
        "self_heal",
        "step_max_attempts",
        "STEP_MAX_ATTEMPTS",
        Some("3"),
        Shown::Plain,
    ),
    key(
        "self_heal",
        "step_timeout_seconds",
        "STEP_TIMEOUT_SECONDS",
        Some("900"),
        Shown::Plain,
    ),
    key(
        "self_heal",
        "step_idle_timeout_seconds",
        "STEP_IDLE_TIMEOUT_SECONDS",
        Some("300"),
        Shown::Plain,
    ),
    key(
        "self_heal",
        "step_no_progress_limit",
        "STEP_NO_PROGRESS_LIMIT",
        Some("2"),
        Shown::Plain,
    ),
    key(
        "self_heal",
        "job_self_heal_max_resets",
        "JOB_SELF_HEAL_MAX_RESETS",
        Some("1"),
        Shown::Plain,
    ),
    key(
        "retry",
        "backoff_seconds",
        "STEPD_RETRY_BACKOFF_SECONDS",
        Some("15"),
        Shown::Plain,
    ),
    key(
        "retry",
        "backoff_max_seconds",
        "STEPD_RETRY_BACKOFF_MAX_SECONDS",
        Some("600"),
        Shown::Plain,
    ),
    key(
        "runtime",
        "fuel_per_attempt",
        "STEPD_FUEL_PER_ATTEMPT",
        Some("100000000000"),
        Shown::Plain,
    ),
    key("runtime", "memory_mb", "STEPD_MEMORY_MB", Some("512"), Shown::Plain),
    key(
        "runtime",
        "handle_limit",
        "STEPD_HANDLE_LIMIT",
        Some("1024"),
        Shown::Plain,
    ),
    key(
        "runtime",
        "epoch_tick_ms",
        "STEPD_EPOCH_TICK_MS",
        Some("1"),
        Shown::Plain,
    ),
    key(
        "runtime",
        "output_limit_kb",
        "STEPD_OUTPUT_LIMIT_KB",
        Some("1024"),
        Shown::Plain,
    ),
    key("runtime", "cache_dir", "STEPD_CACHE_DIR", None, Shown::Plain),
    key("runtime", "pooling", "STEPD_POOLING", Some("on"), Shown::Plain),
    key("runtime", "pool_slots", "STEPD_POOL_SLOTS", Some("64"), Shown::Plain),
    key("runtime", "http_extra_ca", "STEPD_HTTP_EXTRA_CA", None, Shown::Plain),
    key(
        "runtime",
        "http_bytes_are_activity",
        "STEPD_HTTP_BYTES_ARE_ACTIVITY",
        Some("on"),
        Shown::Plain,
    ),
    key("metrics", "statsd_host", "STATSD_HOST", None, Shown::Plain),
    key("metrics", "statsd_port", "STATSD_PORT", Some("8125"), Shown::Plain),
    key("service", "database_url", "DATABASE_URL", None, Shown::Url),
    key("service", "amqp_url", "AMQP_URL", None, Shown::Url),
    key(
        "service",
        "amqp_queue",
        "STEPD_AMQP_QUEUE",
        Some(DEFAULT_AMQP_QUEUE),
        Shown::Plain,
    ),
    key(
        "service",
        "lease_seconds",
        "STEPD_LEASE_SECONDS",
        Some("30"),
        Shown::Plain,
    ),
    key(
        "service",
        "heartbeat_ms",
        "STEPD_HEARTBEAT_MS",
        Some("1000"),
        Shown::Plain,
    ),
    key("service", "sweep_ms", "STEPD_SWEEP_MS", Some("1000"), Shown::Plain),
    key(
        "service",
        "work_retention_seconds",
        "STEPD_WORK_RETENTION_SECONDS",
        Some("86400"),
        Shown::Plain,
    ),
    key(
        "service",
        "operator_tokens",
        "STEPD_OPERATOR_TOKENS",
        None,
        Shown::Tokens,
    ),
    key("service", "worker_tokens", "STEPD_WORKER_TOKENS", None, Shown::Tokens),
    key("service", "tokens_file", "STEPD_TOKENS_FILE", None, Shown::Plain),
    key(
        "service",
        "listen",
        "STEPD_LISTEN",
        Some("127.0.0.1:8080"),
        Shown::Plain,
    ),
    key("service", "metrics_listen", "STEPD_METRICS_LISTEN", None, Shown::Plain),
    key(
        "service",
        "server",
        "STEPD_SERVER",
        Some("http://127.0.0.1:8080"),
        Shown::Url,
    ),
    key("paths", "data_dir", "STEPD_DATA_DIR", Some("var/stepd"), Shown::Plain),
    key(
        "paths",
        "plugin_dir",
        "STEPD_PLUGIN_DIR",
        Some(DEFAULT_PLUGIN_DIR),
        Shown::Plain,
    ),
    key(
        "paths",
        "artifact_dir",
        "STEPD_ARTIFACT_DIR",
        Some("var/artifacts"),
        Shown::Plain,
    ),
    key("paths", "work_dir", "STEPD_WORK_DIR", Some("var/work"), Shown::Plain),
    key("logging", "filter", "STEPD_LOG", None, Shown::Plain),
    key("logging", "format", "STEPD_LOG_FORMAT", Some("text"), Shown::Plain),
    key(
        "workspace",
        "limit_mb",
        "STEPD_WORKSPACE_LIMIT_MB",
        Some("1024"),
        Shown::Plain,
    ),
    key(
        "workspace",
        "limit_files",
        "STEPD_WORKSPACE_LIMIT_FILES",
        Some("100000"),
        Shown::Plain,
    ),
    key(
        "workspace",
        "limit_change_mb",
        "STEPD_WORKSPACE_LIMIT_CHANGE_MB",
        Some("128"),
        Shown::Plain,
    ),
    key("grants", "env", "STEPD_GRANT_ENV", None, Shown::Plain),
    key("grants", "secrets", "STEPD_GRANT_SECRETS", None, Shown::Plain),
    key("grants", "secrets_dir", "STEPD_SECRETS_DIR", None, Shown::Plain),
    key("grants", "mount_roots", "STEPD_MOUNT_ROOTS", None, Shown::Plain),
    key("grants", "baseline_roots", "STEPD_BASELINE_ROOTS", None, Shown::Plain),
    key("grants", "http_origins", "STEPD_GRANT_HTTP_ORIGINS", None, Shown::Plain),
    key(
        "grants",
        "baseline_origins",
        "STEPD_BASELINE_ORIGINS",
        None,
        Shown::Plain,
    ),
    key(
        "grants",
        "baseline_fetch_timeout_seconds",
        "STEPD_BASELINE_FETCH_TIMEOUT_SECONDS",
        Some("300"),
        Shown::Plain,
    ),
];

impl Settings {
    /// Defaults, then `file` (when given, or named by `STEPD_CONFIG`), then
    /// the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let file = file
            .map(Path::to_owned)
            .or_else(|| std::env::var_os("STEPD_CONFIG").map(PathBuf::from));
        let from_file = match &file {
            Some(path) => read_config_file(path)?,
            None => HashMap::new(),
        };
        Self::from_lookup(|name| std::env::var(name).ok().or_else(|| from_file.get(name).cloned()))
    }

    /// Settings from `lookup` (variable name → value) over the defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Settings {
            runtime: RuntimeSettings::from_lookup(&lookup)?,
            self_heal: SelfHealConfig::from_lookup(&lookup)?,
            retry: RetryBackoff::from_lookup(&lookup)?,
            statsd: statsd_from_lookup(&lookup)?,
            service: ServiceSettings::from_lookup(&lookup)?,
            workspace: WorkspaceQuota::from_lookup(&lookup)?,
            grants: GrantCeiling::from_lookup(&lookup)?,
        })
    }
}

/// `STATSD_HOST`/`STATSD_PORT`, or the older `SPEC_WORKFLOW_METRICS_HOST`/
/// `SPEC_WORKFLOW_METRICS_PORT`; no host, no metrics.
fn statsd_from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<StatsdTarget>, ConfigError> {
    let (host_var, port_var) = if lookup("STATSD_HOST").is_some() {
        ("STATSD_HOST", "STATSD_PORT")
    } else {
        ("SPEC_WORKFLOW_METRICS_HOST", "SPEC_WORKFLOW_METRICS_PORT")
    };
    let Some(host) = lookup(host_var).filter(|h| !h.trim().is_empty()) else {
        return Ok(None);
    };
    let port = match lookup(port_var) {
        Some(value) => value
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(port_var, &value, "must be a UDP port (1-65535)"))?,
        None => 8125,
    };
    Ok(Some(StatsdTarget {
        host: host.trim().to_owned(),
        port,
    }))
}

/// Read a TOML config file into variable name → value. Unknown sections
/// and keys are errors: a typo must not silently leave a default in place.
fn read_config_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.to_string()))?;
    let mut vars = HashMap::new();
    for (section, value) in &table {
        let entries = value
            .as_table()
            .ok_or_else(|| file_error(format!("[{section}] must be a table of settings")))?;
        for (key, value) in entries {
            let var = SETTING_KEYS
                .iter()
                .find(|k| k.section == section && k.key == key)
                .map(|k| k.variable)
                .ok_or_else(|| file_error(format!("unknown setting {section}.{key}")))?;
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => if *b { "on" } else { "off" }.to_owned(),
                other => {
                    return Err(file_error(format!(
                        "{section}.{key} = {other} is not a string, integer or boolean"
                    )))
                }
            };
            vars.insert((*var).to_owned(), text);
        }
    }
    Ok(vars)
}

/// Parse a memory size given in MiB (a flag or variable named `variable`).
pub fn mib_to_bytes(variable: &str, value: &str) -> Result<usize, ConfigError> {
    let mib = parse_positive(variable, value)?;
    if mib > 4096 {
        return Err(invalid(
            variable,
            value,
            "must be at most 4096 (a 32-bit wasm memory holds 4 GiB)",
        ));
    }
    Ok(usize::try_from(mib << 20).unwrap_or(usize::MAX))
}

/// Parse an integer ≥ 1, or say which variable is wrong and why.
pub fn parse_positive(variable: &str, value: &str) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(invalid(variable, value, "must be an integer >= 1")),
    }
}

fn parse_switch(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(invalid(variable, value, "must be on or off")),
    }
}

fn is_off(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "off" | "none" | "0")
}

fn invalid(variable: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        variable: variable.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listed_are_the_defaults() {
        let listed = |name: &str| {
            SETTING_KEYS
                .iter()
                .find(|k| k.variable == name)
                .and_then(|k| k.default)
                .map(str::to_owned)
        };
        let mut from_list = Settings::from_lookup(listed).expect("the listed defaults are valid");
        let mut defaults = Settings::from_lookup(|_| None).expect("defaults");
        // The cache directory's default depends on $HOME; it is listed unset.
        from_list.runtime.cache_dir = None;
        defaults.runtime.cache_dir = None;
        assert_eq!(from_list, defaults);
    }

    #[test]
    fn a_config_file_sets_values_and_the_environment_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stepd.toml");
        std::fs::write(
            &path,
            "[self_heal]\nstep_max_attempts = 5\nstep_timeout_seconds = 60\n[runtime]\npooling = false\n",
        )
        .expect("write");
        let file = read_config_file(&path).expect("valid file");
        let env = HashMap::from([("STEP_TIMEOUT_SECONDS".to_owned(), "30".to_owned())]);
        let settings = Settings::from_lookup(|name| env.get(name).or_else(|| file.get(name)).cloned()).expect("valid");
        assert_eq!(settings.self_heal.step_max_attempts, 5);
        assert_eq!(settings.self_heal.step_timeout_seconds, 30);
        assert!(!settings.runtime.pooling);
        assert_eq!(settings.statsd, None);
    }

    #[test]
    fn an_unknown_key_in_the_config_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stepd.toml");
        std::fs::write(&path, "[self_heal]\nstep_max_attempt = 5\n").expect("write");
        let err = read_config_file(&path).expect_err("typo");
        assert!(
            err.to_string().contains("unknown setting self_heal.step_max_attempt"),
            "{err}"
        );
    }

    #[test]
    fn statsd_comes_from_either_pair_of_variables() {
        let vars = HashMap::from([("SPEC_WORKFLOW_METRICS_HOST".to_owned(), "127.0.0.1".to_owned())]);
        let settings = Settings::from_lookup(|n| vars.get(n).cloned()).expect("valid");
        assert_eq!(
            settings.statsd,
            Some(StatsdTarget {
                host: "127.0.0.1".into(),
                port: 8125
            })
        );
        let vars = HashMap::from([
            ("STATSD_HOST".to_owned(), "localhost".to_owned()),
            ("STATSD_PORT".to_owned(), "99999".to_owned()),
        ]);
        let err = Settings::from_lookup(|n| vars.get(n).cloned()).expect_err("bad port");
        assert!(err.to_string().contains("STATSD_PORT"), "{err}");
    }
}
