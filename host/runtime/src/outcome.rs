//! The one typed value an attempt ends in, and the measurements that go with
//! it. Self-heal classifies failures from these variants; nothing downstream
//! parses trap messages.

use super::capture::CapturedOutput;

/// Which `step-error` variant a guest returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestErrorKind {
    /// `retry(msg)`: another attempt may succeed.
    Retry,
    /// `contract(msg)`: the input or contract is wrong.
    Contract,
    /// `policy(msg)`: not allowed.
    Policy,
    /// `repo(msg)`: the repository is in a state the step cannot handle.
    Repo,
    /// `other(msg)`: unclassified, the host classifies the text.
    Other,
}

impl GuestErrorKind {
    /// The variant's name as it appears in the WIT and in signatures.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestErrorKind::Retry => "retry",
            GuestErrorKind::Contract => "contract",
            GuestErrorKind::Policy => "policy",
            GuestErrorKind::Repo => "repo",
            GuestErrorKind::Other => "other",
        }
    }
}

/// How one attempt of one step ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// `run` returned `ok`.
    Succeeded {
        /// The step's one-line summary.
        summary: String,
        /// Optional structured result (JSON text).
        data: Option<String>,
    },
    /// `run` returned `err(step-error)`.
    GuestError {
        /// Which variant.
        kind: GuestErrorKind,
        /// The guest's message.
        message: String,
    },
    /// Stopped at the wall-clock deadline.
    WallTimeout,
    /// Stopped at the idle deadline (no output, no progress).
    IdleTimeout,
    /// Ran out of its fuel budget.
    OutOfFuel,
    /// Tried to grow its memories past the attempt's limit (all memories
    /// together).
    MemoryLimit {
        /// The size the guest asked for.
        requested_bytes: u64,
        /// The limit it hit.
        limit_bytes: u64,
    },
    /// Tried to hold more handles (open files and directories, streams)
    /// at once than the attempt's share of the process's descriptors.
    HandleLimit {
        /// The most handles the attempt could hold.
        limit: u64,
    },
    /// Declared or grew a table past the attempt's element limit.
    TableLimit {
        /// The size the guest asked for.
        requested_elements: u64,
        /// The limit it hit.
        limit_elements: u64,
    },
    /// Declared more core instances, tables or memories than an attempt
    /// may create.
    InstanceLimit {
        /// The most of each an attempt may create.
        limit: u64,
    },
    /// Overflowed the wasm stack.
    StackOverflow,
    /// Any other trap (a guest panic, `unreachable`, a failed instantiation).
    Trap {
        /// The trap as wasmtime reported it.
        message: String,
    },
    /// The attempt left its workspace over one of the host's workspace
    /// limits (judged by the host after the attempt, when it snapshots the
    /// workspace): the step's failure, never the host's.
    WorkspaceLimit {
        /// Which limit, and where it was crossed.
        message: String,
    },
    /// The host could not allocate the attempt's instance (its instance
    /// pool, or the system's memory): the step never ran, and the failure
    /// is the host's, never the step's.
    HostUnavailable {
        /// What the allocator said.
        message: String,
    },
    /// Cancelled by an operator or the host.
    Cancelled,
}

impl AttemptOutcome {
    /// True only for [`AttemptOutcome::Succeeded`].
    pub fn is_success(&self) -> bool {
        matches!(self, AttemptOutcome::Succeeded { .. })
    }

    /// A stable short name of the variant (`wall_timeout`, `out_of_fuel`, ...)
    /// for logs, signatures and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded { .. } => "succeeded",
            AttemptOutcome::GuestError { .. } => "guest_error",
            AttemptOutcome::WallTimeout => "wall_timeout",
            AttemptOutcome::IdleTimeout => "idle_timeout",
            AttemptOutcome::OutOfFuel => "out_of_fuel",
            AttemptOutcome::MemoryLimit { .. } => "memory_limit",
            AttemptOutcome::HandleLimit { .. } => "handle_limit",
            AttemptOutcome::TableLimit { .. } => "table_limit",
            AttemptOutcome::InstanceLimit { .. } => "instance_limit",
            AttemptOutcome::StackOverflow => "stack_overflow",
            AttemptOutcome::Trap { .. } => "trap",
            AttemptOutcome::WorkspaceLimit { .. } => "workspace_limit",
            AttemptOutcome::HostUnavailable { .. } => "host_unavailable",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptOutcome::Succeeded { summary, .. } => write!(f, "succeeded: {summary}"),
            AttemptOutcome::GuestError { kind, message } => write!(f, "step error ({}): {message}", kind.as_str()),
            AttemptOutcome::WallTimeout => f.write_str("stopped: wall-clock deadline passed"),
            AttemptOutcome::IdleTimeout => f.write_str("stopped: idle deadline passed (no output or progress)"),
            AttemptOutcome::OutOfFuel => f.write_str("stopped: fuel budget exhausted"),
            AttemptOutcome::MemoryLimit {
                requested_bytes,
                limit_bytes,
            } => write!(
                f,
                "stopped: memory limit ({} MiB) hit growing to {} MiB",
                limit_bytes >> 20,
                requested_bytes >> 20
            ),
            AttemptOutcome::HandleLimit { limit } => {
                write!(f, "stopped: handle limit hit (at most {limit} open files, directories and streams at once)")
            }
            AttemptOutcome::TableLimit {
                requested_elements,
                limit_elements,
            } => write!(
                f,
                "stopped: table limit hit (a table of at most {limit_elements} elements, asked for {requested_elements})"
            ),
            AttemptOutcome::InstanceLimit { limit } => write!(
                f,
                "stopped: instance limit hit (at most {limit} core instances, tables and memories each)"
            ),
            AttemptOutcome::StackOverflow => f.write_str("stopped: wasm stack overflow"),
            AttemptOutcome::Trap { message } => write!(f, "trap: {message}"),
            AttemptOutcome::WorkspaceLimit { message } => write!(f, "over a workspace limit: {message}"),
            AttemptOutcome::HostUnavailable { message } => {
                write!(f, "not started: the host could not allocate an instance ({message})")
            }
            AttemptOutcome::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// The outcome of one attempt and what it cost.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttemptReport {
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// From the start of instantiation until the guest returned or was
    /// stopped (the stop's decision, for a stopped attempt).
    pub wall_clock_seconds: f64,
    /// Time since the last output or progress when the attempt ended.
    pub idle_seconds: f64,
    /// Fuel burned; `None` when metering is off.
    pub fuel_consumed: Option<u64>,
    /// For a wall or idle stop: how long after the deadline the guest was
    /// stopped (the precision of the deadline machinery).
    pub deadline_overrun_seconds: Option<f64>,
    /// For a stopped attempt: from the stop's decision to the instance's
    /// teardown. The stop may be decided by the epoch ticker while the
    /// attempt's task waits for an async thread; the guest runs nothing in
    /// between, but its memory is held until then.
    #[serde(default)]
    pub teardown_after_stop_seconds: Option<f64>,
    /// What the guest wrote.
    pub output: CapturedOutput,
    /// The HTTP requests it made, allowed and denied.
    pub http: crate::HttpLog,
}

impl AttemptReport {
    /// An attempt cancelled while it waited for an instance slot: it never
    /// started.
    pub fn cancelled_before_start() -> Self {
        AttemptReport {
            outcome: AttemptOutcome::Cancelled,
            wall_clock_seconds: 0.0,
            idle_seconds: 0.0,
            fuel_consumed: None,
            deadline_overrun_seconds: None,
            teardown_after_stop_seconds: None,
            output: crate::CapturedOutput::default(),
            http: crate::HttpLog::default(),
        }
    }
}
