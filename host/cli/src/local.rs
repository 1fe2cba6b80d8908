//! The commands that run steps in this process: `stepd run` (a whole job,
//! with self-heal and a live view) and `stepd plugin run|check|build|new`.
//! They use the runtime and self-heal crates only — no store, queue,
//! worker or API — which tests/tests/architecture.rs checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use stepd_job::payload::{HostGrants, JobPayload};
use stepd_plugin_build::{NewPlugin, PluginLanguage};
use stepd_records::events::EventObserver;
use stepd_records::redact::Redactor;
use stepd_runtime::{
    resolve_plugin_path, AttemptLimits, AttemptRequest, CancellationToken, OutputStreamKind, Runtime, StepContext,
};
use stepd_selfheal::{run_local, JobStatus, LocalRun, LocalRunOptions};
use stepd_settings::{mib_to_bytes, Settings, DEFAULT_PLUGIN_DIR};

use crate::{EXIT_ATTEMPT_FAILED, EXIT_CANCELLED, EXIT_HOST_ERROR, EXIT_INVALID_INPUT, EXIT_RETRYABLE_EXHAUSTED};

#[derive(Debug, Args)]
pub struct RunArgs {
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
pub enum PluginCommand {
    /// Run one attempt of a plugin over a workspace and print its outcome.
    Run(PluginRunArgs),
    /// Say whether a file is a valid step component, and if not, why.
    Check {
        /// The `.wasm` file to check.
        file: PathBuf,
    },
    /// Build plugins (Rust, Python, JavaScript) into components in the
    /// plugin directory.
    Build(PluginBuildArgs),
    /// Scaffold a new step, ready to build, with a README and a test job.
    New(PluginNewArgs),
}

#[derive(Debug, Args)]
pub struct PluginNewArgs {
    /// The plugin's name (lowercase letters, digits, '-').
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// The directory the plugin's directory is created in.
    #[arg(long, default_value = "plugins")]
    dir: PathBuf,
    /// A Rust plugin's path to the `stepd-sdk` crate (default: `sdk/rust`
    /// of the stepd checkout around the current directory).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// The languages `stepd plugin new` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lang {
    /// A crate using stepd-sdk.
    Rust,
    /// `step.py` using the `stepd` module.
    #[value(alias = "py")]
    Python,
    /// `step.js` using the `stepd` module.
    #[value(alias = "javascript")]
    Js,
}

#[derive(Debug, Args)]
pub struct PluginBuildArgs {
    /// Plugin directories: Rust crates (of one cargo workspace), Python
    /// steps (`step.py`) or JavaScript steps (`step.js`); default: every
    /// plugin under `plugins/`.
    dirs: Vec<PathBuf>,
    /// Where the components go, as `<dir name>.wasm`.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = DEFAULT_PLUGIN_DIR)]
    out: PathBuf,
    /// The build's directory: cargo's target directory for the wasm build,
    /// the Python and JavaScript toolchains (`toolchains/`) and their cache.
    #[arg(long, default_value = "target/plugins")]
    target_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct PluginRunArgs {
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

pub async fn plugin_run(args: PluginRunArgs) -> anyhow::Result<ExitCode> {
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
        grants: stepd_runtime::AttemptGrants::default(),
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

pub async fn run_job(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref()).context("reading settings")?;
    let text = std::fs::read_to_string(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    let base_dir = args.job.parent().map(Path::to_owned).unwrap_or_default();
    let grants = HostGrants {
        ceiling: settings.grants.clone(),
        baselines: settings.grants.baselines_for_local_run(),
    };
    let job = match JobPayload::parse(&text).and_then(|p| p.validate(&base_dir, &args.plugins, &grants)) {
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
    if settings.runtime.http_extra_ca.is_some() {
        // A bad CA file is the operator's input: refused before any step.
        runtime.http_tls().context("STEPD_HTTP_EXTRA_CA")?;
    }
    let cancel = cancel_on_ctrl_c();
    let options = LocalRunOptions {
        artifact_root: args.artifacts,
        work_root: args.work_dir,
        job_id: job_id.clone(),
    };
    let view = Arc::new(crate::live::LiveView::new());
    let observer: EventObserver = Arc::new(move |record| view.show(record));
    let local = LocalRun {
        runtime: &runtime,
        settings: &settings,
        redactor,
        cancel,
        observer: Some(observer),
    };
    let status = match run_local(local, job, &options).await {
        Ok(status) => status,
        Err(e @ stepd_selfheal::LocalRunError::JobExists { .. }) => {
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
fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
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

/// `stepd plugin build`: build plugins in any of the three languages and
/// put the components where `--plugins` looks names up.
pub fn plugin_build(args: &PluginBuildArgs) -> anyhow::Result<ExitCode> {
    let plugins = if args.dirs.is_empty() {
        stepd_plugin_build::plugins_under(Path::new("plugins"))?
    } else {
        args.dirs
            .iter()
            .map(|dir| stepd_plugin_build::PluginSource::read(dir))
            .collect::<Result<Vec<_>, _>>()?
    };
    let options = stepd_plugin_build::BuildOptions {
        cargo: std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from),
        target_dir: args.target_dir.clone(),
        out_dir: args.out.clone(),
    };
    let built = stepd_plugin_build::build(&plugins, &options)?;
    for path in built {
        println!("built {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `stepd plugin new`: scaffold a step and say how to build and run it.
pub fn plugin_new(args: &PluginNewArgs) -> anyhow::Result<ExitCode> {
    let language = match args.lang {
        Lang::Rust => PluginLanguage::Rust,
        Lang::Python => PluginLanguage::Python,
        Lang::Js => PluginLanguage::JavaScript,
    };
    let rust_sdk = match (&args.sdk, language) {
        (Some(sdk), _) => Some(sdk.clone()),
        (None, PluginLanguage::Rust) => Some(find_rust_sdk().context(
            "no stepd checkout (sdk/rust/Cargo.toml) around the current directory; pass --sdk PATH/TO/sdk/rust",
        )?),
        (None, _) => None,
    };
    let new = NewPlugin {
        name: args.name.clone(),
        language,
        parent: args.dir.clone(),
        rust_sdk,
    };
    let dir = stepd_plugin_build::scaffold(&new)?;
    println!("created {} ({language})", dir.display());
    println!("build it:  stepd plugin build {}", dir.display());
    println!(
        "try it:    stepd plugin run {} --workspace /tmp/{}-ws --input '{{\"path\": \"hello.txt\", \"text\": \"hi\"}}'",
        args.name, args.name
    );
    println!("as a job:  stepd run {}", dir.join("job.json").display());
    Ok(ExitCode::SUCCESS)
}

/// The Rust SDK of the stepd checkout the current directory is in.
fn find_rust_sdk() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|dir| dir.join("sdk").join("rust"))
        .find(|sdk| sdk.join("Cargo.toml").is_file() && sdk.join("wit").join("step.wit").is_file())
}

pub fn plugin_check(file: &Path) -> anyhow::Result<ExitCode> {
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
    if value > stepd_settings::MAX_STEP_TIMEOUT_SECONDS as f64 {
        bail!("{flag} must be at most 604800 seconds (a week), got {value}");
    }
    Duration::try_from_secs_f64(value).with_context(|| format!("{flag} {value} is out of range"))
}
