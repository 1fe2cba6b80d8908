//! The process's logs: every message goes through `tracing` to stderr, as
//! text or as one JSON object per line (`STEPD_LOG_FORMAT=json`, with the
//! job and step spans of each line as fields), filtered by `STEPD_LOG`.
//! A server logs its lifecycle, its requests and every job event at
//! `info` by default; the one-shot commands only warnings, since their
//! output is their own.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The default filter of `stepd serve` and `stepd worker`: `info` for
/// every stepd crate (a target prefix: `stepd` covers `stepd_api`, …).
const SERVICE_FILTER: &str = "warn,stepd=info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl LogFormat {
    /// `STEPD_LOG_FORMAT`: `text` (default) or `json`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("STEPD_LOG_FORMAT").ok().as_deref().map(str::trim) {
            None | Some("" | "text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(format!("STEPD_LOG_FORMAT={other:?} is invalid: use text or json")),
        }
    }
}

/// What the process is, for its default filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `stepd serve` or `stepd worker`: lifecycle, requests and events.
    Service,
    /// `stepd serve --run`: its lifecycle lines only; the job's events are
    /// its output.
    OneShotServer,
    /// Any other command: warnings only.
    Command,
}

/// Install the subscriber; `role` picks the default filter.
pub fn init(format: LogFormat, role: Role) {
    let default = match role {
        Role::Service => SERVICE_FILTER,
        Role::OneShotServer => "warn,stepd::service=info",
        Role::Command => "warn",
    };
    let filter = EnvFilter::try_from_env("STEPD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal who has not asked for none.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
    }
}
