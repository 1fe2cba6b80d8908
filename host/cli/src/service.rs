//! `stepd serve` (API + embedded workers + sweep) and `stepd worker`
//! (workers + sweep only, for scale-out).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::client::{self, ClientArgs};
use stepd_api::{ApiState, Scope, Tokens};
use stepd_queue::{run_sweeper, Dispatcher};
use stepd_records::prometheus::Prometheus;
use stepd_records::redact::Redactor;
use stepd_runtime::{CancellationToken, Runtime};
use stepd_settings::Settings;
use stepd_settings::DEFAULT_PLUGIN_DIR;
use stepd_store::Store;
use stepd_worker::{worker_name, Worker, WorkerOptions};

/// Where a process keeps its files.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// Holds the SQLite file (`stepd.db`), artifacts, workspaces and the
    /// generated operator token.
    #[arg(long, env = "STEPD_DATA_DIR", default_value = "var/stepd")]
    pub data_dir: PathBuf,
    /// Directory of named plugins.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = DEFAULT_PLUGIN_DIR)]
    pub plugins: PathBuf,
    /// A TOML config file (default: `STEPD_CONFIG`, if set).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `stepd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STEPD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Workers in this process (0: API only).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Jobs each embedded worker runs at once (default: the cores).
    #[arg(long, default_value_t = default_concurrency())]
    pub concurrency: usize,
    #[command(flatten)]
    pub data: DataArgs,
    /// Submit this job payload once the server is up, follow its events,
    /// and exit with the job's status (the README's main job).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// A file of named bearer tokens (mode 0600; `[[operator]]` and
    /// `[[worker]]` tables of `name` and `token`), besides
    /// STEPD_OPERATOR_TOKENS and STEPD_WORKER_TOKENS.
    #[arg(long, env = "STEPD_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
}

/// `stepd worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Jobs this process runs at once (default: the cores).
    #[arg(long, default_value_t = default_concurrency())]
    pub concurrency: usize,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (`host:port`; port
    /// 0 picks one, which the start-up line names). Unset: no listener.
    #[arg(long, env = "STEPD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
}

/// A worker runs as many jobs at once as the host has cores: a job's
/// control-plane work (store, workspace) waits on the disk, and one per
/// core keeps both busy.
fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

struct Process {
    settings: Arc<Settings>,
    store: Store,
    dispatcher: Dispatcher,
    stop: CancellationToken,
    prometheus: Arc<Prometheus>,
    redactor: Arc<Redactor>,
}

async fn start(data: &DataArgs) -> anyhow::Result<Process> {
    let settings = Settings::load(data.config.as_deref()).context("reading settings")?;
    std::fs::create_dir_all(&data.data_dir)
        .with_context(|| format!("creating data directory {}", data.data_dir.display()))?;
    let url = settings
        .service
        .database_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&data.data_dir));
    let store = Store::open(&url).await.context("opening the store")?;
    let mut dispatcher = Dispatcher::connect(
        settings.service.amqp_url.as_deref(),
        &settings.service.amqp_queue,
        settings.service.sweep,
    )
    .await
    .context("connecting to RabbitMQ")?;
    dispatcher.wake_across_processes(&data.data_dir.join("wake"));
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
        }
        tracing::info!("stopping: handing running jobs back to the queue");
        on_signal.cancel();
    });
    let prometheus = Prometheus::new();
    if settings.runtime.pooling {
        prometheus.set_pool_slots(settings.runtime.pool_slots);
    }
    let redactor = Arc::new(process_redactor(&settings));
    Ok(Process {
        redactor,
        settings: Arc::new(settings),
        store,
        dispatcher,
        stop,
        prometheus,
    })
}

/// The process's redactor: every secret-looking variable of its
/// environment, and the value of every secret it may grant that the
/// environment holds (whatever its name looks like).
fn process_redactor(settings: &Settings) -> Redactor {
    let redactor = Redactor::from_env();
    for name in &settings.grants.secrets {
        if let Ok(value) = std::env::var(name) {
            redactor.register(&value);
        }
    }
    redactor
}

fn spawn_workers(
    p: &Process,
    data: &DataArgs,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    // Every job this process may run at once gets an instance slot and its
    // share of the descriptors; no more slots than that, since no more
    // attempts run here at once.
    let mut runtime_settings = p.settings.runtime.clone();
    let wanted = u32::try_from(count.saturating_mul(concurrency)).unwrap_or(u32::MAX);
    if wanted != runtime_settings.pool_slots {
        tracing::info!(
            "sizing the instance pool to {wanted} slots (STEPD_POOL_SLOTS {}) to match the workers' concurrency",
            runtime_settings.pool_slots
        );
        runtime_settings.pool_slots = wanted;
        if runtime_settings.pooling {
            p.prometheus.set_pool_slots(wanted);
        }
    }
    let runtime = Arc::new(Runtime::new(runtime_settings).context("starting the wasm runtime")?);
    if runtime.handles_per_attempt() < p.settings.runtime.handles_limit {
        tracing::warn!(
            "each attempt may hold {} handles, not the {} configured, so that {wanted} attempts fit in this \
             process's descriptor limit at once (raise `ulimit -n` for more)",
            runtime.handles_per_attempt(),
            p.settings.runtime.handles_limit
        );
    }
    if p.settings.runtime.http_extra_ca.is_some() {
        // A bad CA file stops the process here, not a step later.
        runtime.http_tls().context("STEPD_HTTP_EXTRA_CA")?;
    }
    let redactor = p.redactor.clone();
    let mut handles = Vec::new();
    for i in 0..count {
        let worker = Worker::new(
            p.store.clone(),
            p.dispatcher.clone(),
            runtime.clone(),
            p.settings.clone(),
            WorkerOptions {
                artifact_root: data.data_dir.join("artifacts"),
                work_root: data.data_dir.join("work"),
                plugin_dir: data.plugins.clone(),
                concurrency,
                name: worker_name(i),
                prometheus: Some(p.prometheus.clone()),
            },
            redactor.clone(),
        );
        let stop = p.stop.clone();
        handles.push(tokio::spawn(async move { worker.run(stop).await }));
    }
    Ok(handles)
}

/// The tokens `serve` accepts: the environment's (or the settings
/// file's), the tokens file's, and — when neither names an operator — the
/// data directory's generated one. A token or a name given twice stops the
/// server, naming the entry, never the token.
/// Also returns an operator token for `--run`'s own client.
fn api_tokens(args: &ServeArgs, settings: &Settings) -> anyhow::Result<(Tokens, String)> {
    let named = match &args.tokens_file {
        Some(path) => {
            stepd_settings::TokensFile::read(path).context("the tokens file (--tokens-file, STEPD_TOKENS_FILE)")?
        }
        None => stepd_settings::TokensFile::default(),
    };
    let mut operator = settings.service.operator_tokens.clone();
    if operator.is_empty() && named.operator.is_empty() {
        let (token, made) = stepd_api::load_or_generate_token(&args.data.data_dir).context("operator token")?;
        let path = stepd_api::token_file(&args.data.data_dir);
        if made {
            tracing::info!("generated an operator token in {}", path.display());
        } else {
            tracing::info!("operator token: {}", path.display());
        }
        operator.push(token);
    }
    let mut tokens = Tokens::new(&operator, &settings.service.worker_tokens);
    for (scope, list) in [(Scope::Operator, &named.operator), (Scope::Worker, &named.worker)] {
        for entry in list {
            tokens
                .add(scope, &entry.name, &entry.token)
                .context("the tokens file (--tokens-file, STEPD_TOKENS_FILE)")?;
        }
    }
    let own = operator
        .first()
        .or_else(|| named.operator.first().map(|t| &t.token))
        .cloned()
        .unwrap_or_default();
    Ok((tokens, own))
}

/// Run `stepd serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let p = start(&args.data).await?;
    let (tokens, own_token) = api_tokens(&args, &p.settings)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        "stepd serving http://{address} (store: {:?}, dispatch: {}, workers: {})",
        p.store.backend(),
        p.dispatcher.kind(),
        args.workers
    );
    let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let grants = stepd_job::payload::HostGrants {
        ceiling: p.settings.grants.clone(),
        // Unless the operator lists them, local baselines come from the
        // directory the server was started in, nowhere else.
        baselines: p.settings.grants.baselines_for_server(&base_dir),
    };
    let state = ApiState {
        store: p.store.clone(),
        dispatcher: p.dispatcher.clone(),
        tokens: Arc::new(tokens),
        artifact_root: args.data.data_dir.join("artifacts"),
        plugin_dir: args.data.plugins.clone(),
        base_dir,
        lease: p.settings.service.lease,
        grants: Arc::new(grants),
        prometheus: p.prometheus.clone(),
        redactor: p.redactor.clone(),
    };
    let sweeper = tokio::spawn(run_sweeper(
        p.store.clone(),
        p.dispatcher.clone(),
        p.settings.service.sweep,
        p.settings.retry,
        p.stop.clone(),
    ));
    let workers = spawn_workers(&p, &args.data, args.workers, args.concurrency.max(1))?;
    let server = tokio::spawn(stepd_api::serve(listener, state, p.stop.clone()));

    let mut code = ExitCode::SUCCESS;
    if let Some(job) = &args.run {
        let client_args = ClientArgs {
            server: format!("http://{address}"),
            token: Some(own_token),
            data_dir: args.data.data_dir.clone(),
        };
        code = client::submit_and_follow(&client_args, job).await.unwrap_or_else(|e| {
            tracing::error!("{e:#}");
            ExitCode::from(super::EXIT_INVALID_INPUT)
        });
        p.stop.cancel();
    }
    p.stop.cancelled().await;
    for w in workers {
        let _ = w.await;
    }
    let _ = sweeper.await;
    if let Ok(Err(e)) = server.await {
        tracing::error!("serving: {e}");
    }
    p.store.close().await;
    Ok(code)
}

/// Run `stepd worker`.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let p = start(&args.data).await?;
    tracing::info!(
        "stepd worker (store: {:?}, dispatch: {}, concurrency: {})",
        p.store.backend(),
        p.dispatcher.kind(),
        args.concurrency
    );
    let sweeper = tokio::spawn(run_sweeper(
        p.store.clone(),
        p.dispatcher.clone(),
        p.settings.service.sweep,
        p.settings.retry,
        p.stop.clone(),
    ));
    let probes = match &args.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("listening on {address} (--metrics-listen)"))?;
            tracing::info!("stepd worker metrics on http://{}", listener.local_addr()?);
            let router = stepd_api::probe_router(
                p.store.clone(),
                p.dispatcher.clone(),
                p.settings.service.lease,
                p.prometheus.clone(),
            );
            Some(tokio::spawn(stepd_api::serve_probes(listener, router, p.stop.clone())))
        }
        None => None,
    };
    let workers = spawn_workers(&p, &args.data, 1, args.concurrency.max(1))?;
    for w in workers {
        let _ = w.await;
    }
    let _ = sweeper.await;
    if let Some(probes) = probes {
        if let Ok(Err(e)) = probes.await {
            tracing::error!("serving probes: {e}");
        }
    }
    p.store.close().await;
    Ok(ExitCode::SUCCESS)
}
