//! The `stepd` command: subcommands parse their arguments here and call
//! into the host crates. `local` holds `stepd run` and `stepd plugin`,
//! which use only the runtime and self-heal crates; `service` (`serve`,
//! `worker`) and `client` (`submit`, `control`, `events`) add the store,
//! queue, worker and API; `bench` measures.

mod bench;
mod client;
mod live;
mod local;
mod logging;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use local::{plugin_build, plugin_check, plugin_new, plugin_run, run_job, PluginCommand, RunArgs};
use stepd_settings::Settings;

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
/// Exit code of a client command (`submit`, `control`, `events`) whose
/// server could not be reached, or went silent.
pub const EXIT_UNREACHABLE: u8 = 6;
/// Exit code of a client command the server refused (a bad token, an
/// action the job's state does not allow, a payload it would not take).
pub const EXIT_REFUSED: u8 = 7;
/// Exit code of a client command naming a job the server does not know.
pub const EXIT_NOT_FOUND: u8 = 8;

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
    /// Print every setting's effective value and where it came from
    /// (environment, config file, default); never a password or a token.
    Config {
        /// A TOML config file (default: `STEPD_CONFIG`, if set).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON (`[{setting, variable, value, source}]`).
        #[arg(long)]
        json: bool,
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
        /// The action (one of the closed set `stepd-job` defines).
        #[arg(value_parser = control_actions())]
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
        /// With `--follow`: give up when the server sends nothing (no
        /// event, no keep-alive) for this many seconds, or cannot be
        /// reached for as long. The server sends a keep-alive every 10 s.
        #[arg(long, default_value_t = 30)]
        read_timeout_seconds: u64,
        #[command(flatten)]
        client: client::ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Instantiate/teardown latency, soft-reset latency, deadline lateness,
    /// epoch and fuel overhead, against process spawns.
    Runtime(crate::bench::RuntimeBenchArgs),
    /// Checkpoint (snapshot + patch) and hard-reset (rebuild + replay) cost
    /// on generated 1k- and 10k-file repositories, against the git CLI.
    Replay(crate::bench::ReplayBenchArgs),
    /// Submit → succeeded latency and throughput of a burst of jobs, with
    /// workers inside `serve` and in 2 processes, embedded and on
    /// PostgreSQL + RabbitMQ; where each job's time goes; the cost of a
    /// crash recovery.
    Queue(crate::bench::QueueBenchArgs),
    /// Sleeping and spinning steps by the thousand at once on one host,
    /// fuel off and on: how many were stopped by their deadline, how
    /// late, and the peak resident memory.
    Scale(crate::bench::ScaleBenchArgs),
    /// Workers SIGKILLed at seeded points of a 5-step job on the embedded
    /// default and on PostgreSQL + RabbitMQ (jobs finished, final trees,
    /// checkpoints, event order, time to recover), the services restarted
    /// under a stream of jobs, and a full disk (`--small-fs`).
    Chaos(crate::bench::ChaosBenchArgs),
}

/// The control actions, for clap to check and for `--help` to list: the
/// one closed set is `stepd_job::control::ControlAction`.
fn control_actions() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(stepd_job::control::ControlAction::ALL.map(|a| a.as_str()))
}

/// Parse the command line, run the command, and turn the result into an
/// exit code (errors are printed with their context chain).
fn main() -> ExitCode {
    // The config file feeds the environment before anything reads it, so
    // flags' fallbacks, settings and logs share one precedence.
    let from_file = match config_file_from_args() {
        Some(path) => match stepd_settings::apply_file_to_env(&path) {
            Ok(applied) => applied,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_INVALID_INPUT);
            }
        },
        None => Vec::new(),
    };
    let cli = Cli::parse();
    let format = match logging::LogFormat::from_env() {
        Ok(format) => format,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let role = match &cli.command {
        // `serve --run` is a one-shot demo: its output is the job's events.
        Command::Serve(args) if args.run.is_some() => logging::Role::OneShotServer,
        Command::Serve(_) | Command::Worker(_) => logging::Role::Service,
        _ => logging::Role::Command,
    };
    logging::init(format, role);
    // Attempts share the process's descriptors with the API, the store and
    // the broker connection (host/runtime/src/descriptors.rs): make the
    // budget as large as the operator allows before anything opens files.
    if let Err(e) = stepd_runtime::raise_descriptor_limit() {
        tracing::warn!("could not raise the descriptor limit to its hard limit: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    match runtime.block_on(run(cli, from_file)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// A failed command's exit code: the client's own failures have theirs,
/// anything else is invalid input.
fn exit_code_of(error: &anyhow::Error) -> u8 {
    match error
        .chain()
        .find_map(|cause| cause.downcast_ref::<client::ClientError>())
    {
        Some(client::ClientError::Unreachable { .. }) => EXIT_UNREACHABLE,
        Some(client::ClientError::Refused { .. }) => EXIT_REFUSED,
        Some(client::ClientError::NotFound { .. }) => EXIT_NOT_FOUND,
        None => EXIT_INVALID_INPUT,
    }
}

/// `--config FILE` (or `--config=FILE`) anywhere on the command line, else
/// `STEPD_CONFIG`.
fn config_file_from_args() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("STEPD_CONFIG").map(PathBuf::from)
}

async fn run(cli: Cli, from_file: Vec<String>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_job(args).await,
        Command::Config { config, json } => {
            // Validates everything, as a start-up would.
            Settings::load(config.as_deref())?;
            let all = stepd_settings::effective(&from_file, |name| std::env::var(name).ok());
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("# precedence: flag > environment > file > default; passwords and tokens are never shown");
                println!("{:<40} {:<32} {:<12} value", "setting", "variable", "source");
                for e in &all {
                    let source = serde_json::to_value(e.source)?;
                    println!(
                        "{:<40} {:<32} {:<12} {}",
                        e.setting,
                        e.variable,
                        source.as_str().unwrap_or_default(),
                        e.value.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Run(args)) => plugin_run(args).await,
        Command::Plugin(PluginCommand::Check { file }) => plugin_check(&file),
        Command::Plugin(PluginCommand::Build(args)) => plugin_build(&args),
        Command::Plugin(PluginCommand::New(args)) => plugin_new(&args),
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
            read_timeout_seconds,
            client,
        } => {
            if follow {
                let read_timeout = std::time::Duration::from_secs(read_timeout_seconds.max(1));
                client::follow_events(&client, &job_id, after, read_timeout).await
            } else {
                client::print_events(&client, &job_id, after).await
            }
        }
        Command::Bench(BenchCommand::Queue(args)) => {
            crate::bench::run_queue_bench(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Scale(args)) => {
            crate::bench::run_scale_bench(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Replay(args)) => {
            crate::bench::run_replay_bench(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Chaos(args)) => crate::bench::run_chaos_bench(&args).await,
    }
}
