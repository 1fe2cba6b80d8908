//! The `stepd` command line: subcommands parse their arguments here and call
//! into the library. `main.rs` only hands over to [`main`].

mod client;
mod live;
mod service;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::{mib_to_bytes, Settings};
use crate::events::EventObserver;
use crate::payload::JobPayload;
use crate::redact::Redactor;
use crate::runtime::{
    resolve_plugin_path, AttemptLimits, AttemptRequest, CancelToken, OutputStreamKind, Runtime, StepContext,
};
use crate::worker::{run_local, JobStatus, LocalRunOptions};

/// Where plugins are looked up by name when neither `--plugins` nor
/// `STEPD_PLUGIN_DIR` says otherwise: where the project's build puts them.
pub const DEFAULT_PLUGIN_DIR: &str = "target/plugins/dist";

/// Exit code of a command whose step ran and did not succeed.
pub const EXIT_ATTEMPT_FAILED: u8 = 1;
/// Exit code of a command given bad input (a bad plugin, workspace, flag,
/// payload or setting).
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit code of `stepd run` when retryable failures used up the job's
/// attempts (the job is dead-lettered).
pub const EXIT_RETRYABLE_EXHAUSTED: u8 = 3;
/// Exit code of `stepd run` when the job was cancelled (Ctrl-C).
pub const EXIT_CANCELLED: u8 = 4;
/// Exit code of `stepd run` when the host itself failed mid-job (an
/// artifact could not be written, the workspace could not be read).
pub const EXIT_HOST_ERROR: u8 = 5;

#[derive(Debug, Parser)]
#[command(
    name = "stepd",
    version,
    about = "Self-healing step runner: each step is a sandboxed WASI 0.2 component"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job (a JSON payload) in this process, with self-heal, and exit
    /// with its status: 0 succeeded, 1 failed, 2 invalid input, 3 retryable
    /// failures exhausted, 4 cancelled, 5 the host failed mid-job.
    Run(RunArgs),
    /// Print the effective settings (defaults, config file, environment).
    Config {
        /// A TOML config file (default: `STEPD_CONFIG`, if set).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run or check a single step plugin.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Measure the runtime and print a report.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve the HTTP API with embedded workers (SQLite and the embedded
    /// dispatcher unless DATABASE_URL / AMQP_URL say otherwise).
    Serve(service::ServeArgs),
    /// Run workers only (scale-out: DATABASE_URL and AMQP_URL).
    Worker(service::WorkerArgs),
    /// Submit a job payload to a server; prints the job id.
    Submit {
        /// The job payload (JSON).
        job: PathBuf,
        /// Follow the job's events until it ends (exit code as `stepd run`).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Ask a server to pause, resume, takeover, cancel, retry_step,
    /// hard_reset_step or resume_from_step a job.
    Control {
        /// The job.
        job_id: String,
        /// The action.
        action: String,
        /// The step (retry_step, hard_reset_step, resume_from_step).
        #[arg(long)]
        step: Option<String>,
        /// Why (recorded with the action).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Print a job's events; `--follow` streams them until the job ends.
    Events {
        /// The job.
        job_id: String,
        /// Keep streaming until the job ends.
        #[arg(long)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[command(flatten)]
        client: client::ClientArgs,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The job payload (JSON).
    job: PathBuf,
    /// Where artifacts go (`<dir>/agent_jobs/<job_id>/`).
    #[arg(long, env = "STEPD_ARTIFACT_DIR", default_value = "var/artifacts")]
    artifacts: PathBuf,
    /// Where workspaces live (`<dir>/<job_id>/workspace`).
    #[arg(long, env = "STEPD_WORK_DIR", default_value = "var/work")]
    work_dir: PathBuf,
    /// Directory of named plugins.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = DEFAULT_PLUGIN_DIR)]
    plugins: PathBuf,
    /// The job's id (default: a new one).
    #[arg(long)]
    job_id: Option<String>,
    /// A TOML config file (default: `STEPD_CONFIG`, if set).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Run one attempt of a plugin over a workspace and print its outcome.
    Run(PluginRunArgs),
    /// Say whether a file is a valid step component, and if not, why.
    Check {
        /// The `.wasm` file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct PluginRunArgs {
    /// A plugin name (looked up in the plugin directory) or a `.wasm` path.
    plugin: String,
    /// The directory the step sees as `/workspace` (created if missing).
    #[arg(long)]
    workspace: PathBuf,
    /// The step's inputs, a JSON object.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Wall-clock deadline in seconds.
    #[arg(long, default_value_t = 900.0)]
    timeout: f64,
    /// Idle deadline in seconds (no output, no progress).
    #[arg(long, default_value_t = 300.0)]
    idle_timeout: f64,
    /// Fuel budget for the attempt (default: STEPD_FUEL_PER_ATTEMPT or 1e11).
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory ceiling per instance, in MiB (default: STEPD_MEMORY_MB or 512).
    #[arg(long)]
    memory_mb: Option<String>,
    /// The attempt number the step is told (1-based).
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// Directory of named plugins.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = DEFAULT_PLUGIN_DIR)]
    plugins: PathBuf,
    /// Print the full report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Instantiate/teardown latency, soft-reset latency, deadline lateness,
    /// epoch and fuel overhead, against process spawns.
    Runtime(crate::bench::RuntimeBenchArgs),
    /// Checkpoint (snapshot + patch) and hard-reset (rebuild + replay) cost
    /// on generated 1k- and 10k-file repositories, against the git CLI.
    Replay(crate::bench::ReplayBenchArgs),
    /// Submit → succeeded latency and throughput with 1 and 2 worker
    /// processes, embedded and on PostgreSQL + RabbitMQ, and the cost of a
    /// crash recovery.
    Queue(crate::bench::QueueBenchArgs),
}

/// Parse the command line, run the command, and turn the result into an
/// exit code (errors are printed with their context chain).
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STEPD_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_INVALID_INPUT)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_job(args).await,
        Command::Config { config } => {
            let settings = Settings::load(config.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&settings)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Run(args)) => plugin_run(args).await,
        Command::Plugin(PluginCommand::Check { file }) => plugin_check(&file),
        Command::Bench(BenchCommand::Runtime(args)) => {
            crate::bench::run_runtime_bench(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => service::serve(args).await,
        Command::Worker(args) => service::worker(args).await,
        Command::Submit { job, follow, client } => client::submit_command(&client, &job, follow).await,
        Command::Control {
            job_id,
            action,
            step,
            reason,
            client,
        } => client::control(&client, &job_id, &action, step.as_deref(), reason.as_deref()).await,
        Command::Events {
            job_id,
            follow,
            after,
            client,
        } => {
            if follow {
                client::follow_events(&client, &job_id, after).await
            } else {
                client::print_events(&client, &job_id, after).await
            }
        }
        Command::Bench(BenchCommand::Queue(args)) => {
            crate::bench::run_queue_bench(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Replay(args)) => {
            crate::bench::run_replay_bench(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn plugin_run(args: PluginRunArgs) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(None).context("reading settings")?.runtime;
    if let Some(fuel) = args.fuel {
        if fuel == 0 {
            bail!("--fuel must be >= 1");
        }
        settings.fuel_per_attempt = Some(fuel);
    }
    if let Some(mb) = &args.memory_mb {
        settings.memory_limit_bytes = mib_to_bytes("--memory-mb", mb)?;
    }
    let wall_timeout = seconds("--timeout", args.timeout)?;
    let idle_timeout = seconds("--idle-timeout", args.idle_timeout)?;
    let inputs: serde_json::Value =
        serde_json::from_str(&args.input).with_context(|| format!("--input is not valid JSON: {}", args.input))?;
    if !inputs.is_object() {
        bail!("--input must be a JSON object, got {}", args.input);
    }
    if args.attempt == 0 {
        bail!("--attempt is 1-based and must be >= 1");
    }

    let path = resolve_plugin_path(&args.plugin, &args.plugins)?;
    std::fs::create_dir_all(&args.workspace)
        .with_context(|| format!("creating workspace {}", args.workspace.display()))?;
    let runtime = Runtime::new(settings)?;
    let plugin = runtime.load_plugin(&path)?;
    let context = StepContext {
        job_id: "cli".into(),
        step_id: plugin.name().to_owned(),
        step_index: 0,
        attempt: args.attempt,
        objective: String::new(),
        title: format!("stepd plugin run {}", plugin.name()),
        instructions: String::new(),
        inputs: inputs.to_string(),
        retry_context: None,
    };
    let cancel = cancel_on_ctrl_c();
    let request = AttemptRequest {
        workspace: args.workspace.clone(),
        context,
        limits: AttemptLimits::new(wall_timeout, idle_timeout),
        cancel,
    };
    let report = runtime.run_attempt(&plugin, request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for chunk in &report.output.chunks {
            match chunk.stream {
                OutputStreamKind::Progress => println!("[{:>8.3}s progress] {}", chunk.at_seconds, chunk.text),
                OutputStreamKind::Stdout | OutputStreamKind::Stderr => print!("{}", chunk.text),
            }
        }
        if report.output.truncated() {
            println!("[output truncated: {} more bytes dropped]", report.output.dropped_bytes);
        }
        println!("outcome: {}", report.outcome);
        println!(
            "wall {:.3}s, idle {:.3}s, fuel {}",
            report.wall_clock_seconds,
            report.idle_seconds,
            report
                .fuel_consumed
                .map_or_else(|| "unmetered".to_owned(), |f| f.to_string())
        );
    }
    Ok(if report.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ATTEMPT_FAILED)
    })
}

async fn run_job(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref()).context("reading settings")?;
    let text = std::fs::read_to_string(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    let base_dir = args.job.parent().map(Path::to_owned).unwrap_or_default();
    let job = match JobPayload::parse(&text).and_then(|p| p.validate(&base_dir, &args.plugins)) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {}: {e}", args.job.display());
            return Ok(ExitCode::from(EXIT_INVALID_INPUT));
        }
    };
    let job_id = args
        .job_id
        .unwrap_or_else(|| format!("job-{}", uuid::Uuid::new_v4().simple()));
    let redactor = Arc::new(Redactor::from_env());
    let runtime = Runtime::new(settings.runtime.clone())?;
    let cancel = cancel_on_ctrl_c();
    let options = LocalRunOptions {
        artifact_root: args.artifacts,
        work_root: args.work_dir,
        job_id: job_id.clone(),
    };
    let view = Arc::new(live::LiveView::new());
    let observer: EventObserver = Arc::new(move |record| view.show(record));
    let status = match run_local(&runtime, &settings, job, &options, redactor, cancel, Some(observer)).await {
        Ok(status) => status,
        Err(e @ crate::worker::WorkerError::JobExists { .. }) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_INVALID_INPUT));
        }
        Err(e) => {
            eprintln!("error: running job {job_id}: {e}");
            return Ok(ExitCode::from(EXIT_HOST_ERROR));
        }
    };
    println!(
        "artifacts: {}",
        options.artifact_root.join("agent_jobs").join(&job_id).display()
    );
    println!(
        "workspace: {}",
        options.work_root.join(&job_id).join("workspace").display()
    );
    Ok(match status {
        JobStatus::Succeeded => ExitCode::SUCCESS,
        JobStatus::Failed => ExitCode::from(EXIT_ATTEMPT_FAILED),
        JobStatus::DeadLetter => ExitCode::from(EXIT_RETRYABLE_EXHAUSTED),
        JobStatus::Cancelled => ExitCode::from(EXIT_CANCELLED),
    })
}

/// A cancel token that the first Ctrl-C cancels (a clean stop of the
/// running attempt); a second Ctrl-C, should the teardown hang, exits at
/// once.
fn cancel_on_ctrl_c() -> CancelToken {
    let cancel = CancelToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling (press Ctrl-C again to exit at once)");
            token.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    cancel
}

fn plugin_check(file: &Path) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(None).context("reading settings")?.runtime;
    // Checking compiles the component; it runs nothing, so no pool is needed.
    settings.pooling = false;
    let runtime = Runtime::new(settings)?;
    match runtime.load_plugin(file) {
        Ok(plugin) => {
            println!(
                "ok: {} is a stepd:plugin/step component (sha256 {})",
                file.display(),
                plugin.sha256()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            Ok(ExitCode::from(EXIT_INVALID_INPUT))
        }
    }
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{flag} must be a positive number of seconds, got {value}");
    }
    if value > crate::config::MAX_STEP_TIMEOUT_SECONDS as f64 {
        bail!("{flag} must be at most 604800 seconds (a week), got {value}");
    }
    Duration::try_from_secs_f64(value).with_context(|| format!("{flag} {value} is out of range"))
}
