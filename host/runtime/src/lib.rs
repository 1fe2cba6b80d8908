//! The sandboxed runtime: runs one attempt of one step as a fresh instance
//! of a WASI 0.2 component, under fuel, memory and epoch deadlines, and
//! tears it down.
//!
//! One [`Runtime`] per process owns the wasmtime `Engine`, the linker (WASI
//! plus the `stepd:plugin/host` imports), the compiled-plugin cache and the
//! epoch ticker. [`Runtime::run_attempt`] builds a new `Store` for every
//! attempt and drops it at the end: nothing of a guest survives its attempt.
//! This crate knows nothing of tasks, retries, self-heal, git or servers
//! (tests/tests/architecture.rs holds it to that).

mod capture;
mod deadline;
mod descriptors;
mod engine;
mod limits;
mod outbound;
mod outcome;
mod plugin;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable, ResourceTableError};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use capture::{clip_text, ActivityClock, CapturedOutput, OutputCapture, OutputChunk, OutputStreamKind};
pub use deadline::{AttemptClock, StopReason};
pub use descriptors::{descriptor_limit, raise_descriptor_limit, DESCRIPTOR_RESERVE, MIN_HANDLES_PER_ATTEMPT};
pub use engine::{engine_config, EpochTicker};
pub use limits::{MemoryLimitExceeded, SandboxLimiter, StoreCounts, TableLimitExceeded, INSTANCE_LIMIT_MESSAGE};
pub use outbound::{is_public, HttpExchange, HttpGrant, HttpLog, MAX_LOGGED_REQUESTS};
pub use outcome::{AttemptOutcome, AttemptReport, GuestErrorKind};
pub use plugin::{resolve_plugin_path, Plugin, PluginError};
pub use tokio_util::sync::CancellationToken;

use stepd_settings::RuntimeSettings;

/// Host-side bindings of the `stepd:plugin` world (documented in the WIT).
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        // The contract lives with the SDK that plugin authors depend on.
        path: "../../sdk/rust/wit",
        world: "step",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        // The world names its WASI imports (so every guest language builds
        // against the same sandbox); their host side is wasmtime-wasi's and
        // wasmtime-wasi-http's, linked in `Runtime::new`.
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:cli": wasmtime_wasi::p2::bindings::cli,
            "wasi:filesystem": wasmtime_wasi::p2::bindings::filesystem,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

pub use bindings::stepd::plugin::types::{RetryContext, StepContext, StepError, StepOutput};
use bindings::stepd::plugin::{host, types};

/// Fuel burned between two yields of a metered guest (about a millisecond
/// of CPU): the precision of `fuel_consumed` for a stopped attempt.
const FUEL_YIELD_INTERVAL: u64 = 2_000_000;

/// Why the runtime itself could not start or run an attempt (as opposed to
/// the guest failing, which is an [`AttemptOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be configured or created.
    #[error("creating the wasmtime engine: {0}")]
    Engine(String),
    /// The linker could not be set up.
    #[error("setting up the linker: {0}")]
    Linker(String),
    /// The epoch ticker thread could not start.
    #[error("starting the epoch ticker: {0}")]
    Ticker(std::io::Error),
    /// The workspace directory cannot be preopened.
    #[error("workspace {} cannot be opened: {message}", path.display())]
    Workspace {
        /// The workspace path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A granted directory could not be opened for the guest.
    #[error("mount {}: {message}", path.display())]
    Mount {
        /// The host directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A per-attempt limit is outside what this engine supports.
    #[error("attempt limits are invalid: {0}")]
    Limits(String),
    /// The store could not be set up (fuel, limits).
    #[error("setting up the attempt's store: {0}")]
    Store(String),
    /// Outbound HTTP could not be set up (the extra CA file).
    #[error("outbound HTTP: {0}")]
    Http(String),
}

/// State of one attempt's `Store`: its WASI context, its resource table,
/// its limits and its output capture.
pub struct AttemptState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: SandboxLimiter,
    output: Arc<OutputCapture>,
    http_ctx: WasiHttpCtx,
    http: outbound::OutboundHttp,
}

impl WasiView for AttemptState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for AttemptState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl host::Host for AttemptState {
    fn emit(&mut self, stream: host::OutputStream, chunk: String) {
        let kind = match stream {
            host::OutputStream::Stdout => OutputStreamKind::Stdout,
            host::OutputStream::Stderr => OutputStreamKind::Stderr,
        };
        self.output.push(kind, chunk.as_bytes());
    }

    fn progress(&mut self, msg: String) {
        self.output.push(OutputStreamKind::Progress, msg.as_bytes());
    }
}

impl types::Host for AttemptState {}

/// Deadlines and limits for one attempt. Limits left `None` take the
/// runtime's settings.
#[derive(Debug, Clone)]
pub struct AttemptLimits {
    /// Stop the attempt this long after it started.
    pub wall_timeout: Duration,
    /// Stop the attempt after this long without output or progress.
    pub idle_timeout: Duration,
    /// Fuel budget override (only when metering is on).
    pub fuel: Option<u64>,
    /// Memory ceiling override, at most the runtime's setting.
    pub memory_limit_bytes: Option<usize>,
}

impl AttemptLimits {
    /// Wall and idle deadlines with the runtime's fuel and memory limits.
    pub fn new(wall_timeout: Duration, idle_timeout: Duration) -> Self {
        AttemptLimits {
            wall_timeout,
            idle_timeout,
            fuel: None,
            memory_limit_bytes: None,
        }
    }
}

/// Everything one attempt needs: where, what it is told, and its limits.
#[derive(Debug, Clone)]
pub struct AttemptRequest {
    /// The host directory preopened as `/workspace` (read-write).
    pub workspace: PathBuf,
    /// What the guest receives in `run`.
    pub context: StepContext,
    /// Deadlines and limits.
    pub limits: AttemptLimits,
    /// Lets an operator or the host stop the attempt.
    pub cancel: CancellationToken,
    /// What the guest sees beyond its workspace (nothing by default).
    pub grants: AttemptGrants,
}

/// What one attempt's guest is granted beyond its workspace, already
/// resolved by the host (values read, directories checked): the runtime
/// only hands them over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptGrants {
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may read (never write).
    pub mounts: Vec<ReadOnlyMount>,
    /// Outbound HTTP; `None`: every request is denied.
    pub http: Option<HttpGrant>,
}

/// A host directory preopened read-only at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyMount {
    /// The host directory.
    pub host: PathBuf,
    /// The guest path, such as `/specs`.
    pub guest: String,
}

/// The per-process runtime. See the module docs.
pub struct Runtime {
    engine: Engine,
    linker: Linker<AttemptState>,
    plugins: plugin::PluginCache,
    /// Plugin directories already warmed (`warm_plugins_in`).
    warmed: Mutex<std::collections::HashSet<PathBuf>>,
    settings: RuntimeSettings,
    descriptors: descriptors::DescriptorBudget,
    /// One permit per instance slot of the pooling allocator: an attempt
    /// waits for a slot instead of failing to instantiate (a host's
    /// capacity is never a step's failure). `None` without pooling.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    ticker: EpochTicker,
    /// Built on the first attempt that may call HTTPS (reading the
    /// platform's roots costs milliseconds most runtimes never need).
    tls: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Create the engine, the linker and the epoch ticker.
    pub fn new(settings: RuntimeSettings) -> Result<Self, RuntimeError> {
        let config = engine_config(&settings).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        // Linked for every plugin; the hooks deny each request an attempt
        // was not granted.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        // Only the world's own interface: its WASI imports are linked above.
        host::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .and_then(|()| types::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state))
            .map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        let process_limit = descriptor_limit();
        let descriptors = descriptors::DescriptorBudget::for_process(
            process_limit,
            settings.handles_limit,
            settings.pool_slots as usize,
        )
        .ok_or_else(|| {
            RuntimeError::Limits(format!(
                "the process may open only {} file descriptors: stepd keeps {DESCRIPTOR_RESERVE} for \
                     itself and needs {MIN_HANDLES_PER_ATTEMPT} more for an attempt (raise `ulimit -n`)",
                process_limit.unwrap_or(0)
            ))
        })?;
        let ticker = EpochTicker::start(&engine, settings.epoch_tick).map_err(RuntimeError::Ticker)?;
        let slots = settings
            .pooling
            .then(|| Arc::new(tokio::sync::Semaphore::new(settings.pool_slots.max(1) as usize)));
        Ok(Runtime {
            engine,
            linker,
            plugins: plugin::PluginCache::default(),
            warmed: Mutex::default(),
            settings,
            descriptors,
            slots,
            ticker,
            tls: std::sync::OnceLock::new(),
        })
    }

    /// The settings this runtime was built with.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.settings
    }

    /// The handles one attempt may hold: `handles_limit`, or less when the
    /// process's descriptor limit cannot spare that many.
    pub fn handles_per_attempt(&self) -> usize {
        self.descriptors.per_attempt()
    }

    /// The TLS client configuration for outbound HTTPS: the platform's
    /// roots plus `STEPD_HTTP_EXTRA_CA`. `stepd serve`, `worker` and `run`
    /// call it at start when an extra CA is set, so a bad file fails there,
    /// not in a step.
    pub fn http_tls(&self) -> Result<Arc<rustls::ClientConfig>, RuntimeError> {
        self.tls
            .get_or_init(|| outbound::tls_config(self.settings.http_extra_ca.as_deref()).map(Arc::new))
            .clone()
            .map_err(RuntimeError::Http)
    }

    /// Load (and compile, once) the plugin at `path`.
    pub fn load_plugin(&self, path: &Path) -> Result<Plugin, PluginError> {
        self.plugins.load(&self.engine, &self.linker, path)
    }

    /// Compile (or load from wasmtime's disk cache) every component in
    /// `dir`, so a job's first attempt does not wait for it: a Python or
    /// JavaScript step is 12–19 MB and compiles in seconds. Workers call it
    /// on a blocking thread when they start; a directory is warmed once per
    /// runtime however many workers share it, and `stop` ends the walk
    /// between files. Compiled plugins stay for the life of the process, as
    /// every loaded one does. Returns each file's result; a bad file is only
    /// reported, and reported again when a job uses it.
    pub fn warm_plugins_in(&self, dir: &Path, stop: &CancellationToken) -> Vec<(PathBuf, Result<(), PluginError>)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let first = self
            .warmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(dir.to_owned());
        if !first {
            return Vec::new();
        }
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm") && path.is_file())
            .collect();
        files.sort();
        files
            .into_iter()
            .take_while(|_| !stop.is_cancelled())
            .map(|path| {
                let loaded = self.load_plugin(&path).map(drop);
                (path, loaded)
            })
            .collect()
    }

    /// Run one attempt in a fresh instance and drop it. A guest failure of
    /// any kind is an `Ok` report; `Err` means the host could not even set
    /// the attempt up.
    pub async fn run_attempt(&self, plugin: &Plugin, request: AttemptRequest) -> Result<AttemptReport, RuntimeError> {
        let (memory_limit, fuel) = self.budget(&request.limits)?;
        // Held until the store is gone: an instance slot (waited for before
        // the attempt's clock starts; a cancel while waiting ends it) and
        // the guest's share of the descriptors.
        let slot = match &self.slots {
            Some(slots) => tokio::select! {
                permit = slots.clone().acquire_owned() => permit.ok(),
                () = request.cancel.cancelled() => return Ok(AttemptReport::cancelled_before_start()),
            },
            None => None,
        };
        let descriptors = self.descriptors.claim().await;
        let started = Instant::now();
        let activity = Arc::new(ActivityClock::new(started));
        let output = Arc::new(OutputCapture::new(activity.clone(), self.settings.output_limit_bytes));
        let clock = Arc::new(
            AttemptClock::new(
                request.limits.wall_timeout,
                request.limits.idle_timeout,
                activity.clone(),
                request.cancel.clone(),
            )
            .with_ticks(self.ticker.ticks()),
        );
        let wasi = sandbox_wasi(&request.workspace, &request.grants, &output)?;
        let http = self.outbound_http(request.grants.http.clone(), &activity)?;
        let http_log = http.shared_log();
        let mut store = self.attempt_store(wasi, http, &output, memory_limit, fuel, &clock)?;
        let board = Arc::downgrade(&clock) as std::sync::Weak<dyn engine::DeadlineCheck>;
        let deadlines = self.ticker.ticks().watch_deadlines(board, clock.next_deadline());

        let result = {
            let call = async {
                let step = plugin.pre().instantiate_async(&mut store).await?;
                step.call_run(&mut store, &request.context).await
            };
            tokio::select! {
                biased;
                reason = clock.watch() => Err(reason),
                result = call => Ok(result),
            }
        };
        let returned_at = Instant::now();
        drop(deadlines);
        let fuel_consumed = fuel.and_then(|budget| store.get_fuel().ok().map(|left| budget.saturating_sub(left)));
        // Teardown: nothing of the guest survives its store.
        drop(store);
        drop(descriptors);
        drop(slot);
        let torn_down_at = Instant::now();

        let outcome = match result {
            Err(reason) => stop_outcome(reason),
            Ok(Ok(Ok(out))) => AttemptOutcome::Succeeded {
                summary: out.summary,
                data: out.data,
            },
            Ok(Ok(Err(err))) => guest_error_outcome(err),
            Ok(Err(trap)) => trap_outcome(&trap, self.descriptors.per_attempt(), self.store_counts().instances),
        };
        let end = AttemptEnd::of(&outcome, &clock, returned_at, torn_down_at);
        let http = http_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok(AttemptReport {
            outcome,
            wall_clock_seconds: end.at.duration_since(started).as_secs_f64(),
            idle_seconds: end.at.saturating_duration_since(activity.last()).as_secs_f64(),
            fuel_consumed,
            deadline_overrun_seconds: end.deadline_overrun_seconds,
            teardown_after_stop_seconds: end.teardown_after_stop_seconds,
            output: output.snapshot(),
            http,
        })
    }

    /// The attempt's `wasi:http` hooks: deny everything without a grant.
    fn outbound_http(
        &self,
        grant: Option<HttpGrant>,
        activity: &Arc<ActivityClock>,
    ) -> Result<outbound::OutboundHttp, RuntimeError> {
        // No grant, no TLS setup: nothing will be sent.
        let grant = match grant {
            Some(grant) => Some((grant, self.http_tls()?)),
            None => None,
        };
        let activity = self.settings.http_bytes_are_activity.then(|| activity.clone());
        Ok(outbound::OutboundHttp::new(grant, activity))
    }

    /// The attempt's memory ceiling and fuel (`None`: unmetered), checked
    /// against this host's ceiling.
    fn budget(&self, limits: &AttemptLimits) -> Result<(usize, Option<u64>), RuntimeError> {
        let memory_limit = limits.memory_limit_bytes.unwrap_or(self.settings.memory_limit_bytes);
        if memory_limit > self.settings.memory_limit_bytes {
            return Err(RuntimeError::Limits(format!(
                "memory limit {memory_limit} bytes is above this host's ceiling of {} bytes",
                self.settings.memory_limit_bytes
            )));
        }
        let fuel = self
            .settings
            .fuel_per_attempt
            .map(|default| limits.fuel.unwrap_or(default));
        Ok((memory_limit, fuel))
    }

    /// What one attempt's store may create (instances, memories, tables):
    /// the settings' `instances_limit`, held to a pool slot's share when
    /// pooling.
    pub fn store_counts(&self) -> StoreCounts {
        engine::store_counts(&self.settings)
    }

    /// A fresh store for one attempt: the sandboxed WASI context, the
    /// limiter, the fuel and the epoch deadline that checks `clock`.
    fn attempt_store(
        &self,
        wasi: WasiCtx,
        http: outbound::OutboundHttp,
        output: &Arc<OutputCapture>,
        memory_limit: usize,
        fuel: Option<u64>,
        clock: &Arc<AttemptClock>,
    ) -> Result<Store<AttemptState>, RuntimeError> {
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.descriptors.per_attempt());
        let state = AttemptState {
            wasi,
            table,
            limiter: SandboxLimiter::new(memory_limit, self.settings.table_elements_limit, self.store_counts()),
            output: output.clone(),
            http_ctx: WasiHttpCtx::new(),
            http,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        if let Some(fuel) = fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| RuntimeError::Store(format!("{e:#}")))?;
            // Compiled code keeps its fuel count in a register and writes it
            // back only at calls and yields; a tight loop stopped by a
            // deadline would report almost nothing burned. Yielding every
            // slice writes it back, so `fuel_consumed` is exact to a slice.
            store
                .fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))
                .map_err(|e| RuntimeError::Store(format!("{e:#}")))?;
        }
        if self.settings.epoch_interruption {
            // Every tick: stop if a deadline passed, else yield to tokio so
            // the watch (and other tasks) get to run.
            let clock = clock.clone();
            store.epoch_deadline_callback(move |_| match clock.stop_if_due(Instant::now()) {
                Some(reason) => Err(wasmtime::Error::new(reason)),
                None => Ok(UpdateDeadline::Yield(1)),
            });
            store.set_epoch_deadline(1);
        }
        Ok(store)
    }
}

/// When an attempt ended, as its report counts it.
struct AttemptEnd {
    /// A stop's decision, else the call's return.
    at: Instant,
    /// How long after its deadline a wall or idle stop was decided.
    deadline_overrun_seconds: Option<f64>,
    /// How long after a stop's decision the instance was torn down.
    teardown_after_stop_seconds: Option<f64>,
}

impl AttemptEnd {
    /// A stop counts from when it was decided, perhaps by the epoch ticker
    /// while the attempt's task waited for a thread: the guest ran nothing
    /// after that.
    fn of(outcome: &AttemptOutcome, clock: &AttemptClock, returned_at: Instant, torn_down_at: Instant) -> Self {
        let decided_at = match outcome {
            AttemptOutcome::WallTimeout | AttemptOutcome::IdleTimeout | AttemptOutcome::Cancelled => {
                Some(clock.stopped().map_or(returned_at, |(_, at)| at))
            }
            _ => None,
        };
        let at = decided_at.unwrap_or(returned_at);
        let deadline = match outcome {
            AttemptOutcome::WallTimeout => Some(clock.wall_deadline()),
            AttemptOutcome::IdleTimeout => Some(clock.idle_deadline()),
            _ => None,
        };
        AttemptEnd {
            at,
            deadline_overrun_seconds: deadline.map(|deadline| at.saturating_duration_since(deadline).as_secs_f64()),
            teardown_after_stop_seconds: decided_at
                .map(|decided| torn_down_at.saturating_duration_since(decided).as_secs_f64()),
        }
    }
}

/// The WASI context of one attempt: the workspace at `/workspace` and
/// nothing else. No env, no args, no stdin, no sockets, no name lookup;
/// stdout and stderr go to the capture.
fn sandbox_wasi(
    workspace: &Path,
    grants: &AttemptGrants,
    output: &Arc<OutputCapture>,
) -> Result<WasiCtx, RuntimeError> {
    let meta = std::fs::symlink_metadata(workspace).map_err(|e| RuntimeError::Workspace {
        path: workspace.to_owned(),
        message: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(RuntimeError::Workspace {
            path: workspace.to_owned(),
            message: "not a directory (a symlink is refused too)".into(),
        });
    }
    let mut builder = WasiCtx::builder();
    builder
        .stdout(capture::CaptureStream::new(output.clone(), OutputStreamKind::Stdout))
        .stderr(capture::CaptureStream::new(output.clone(), OutputStreamKind::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    // The preopen is a cap-std directory: the guest cannot name anything
    // outside it, through `..`, an absolute path or a symlink.
    builder
        .preopened_dir(workspace, "/workspace", FsPerms::ReadWrite)
        .map_err(|e| RuntimeError::Workspace {
            path: workspace.to_owned(),
            message: format!("{e:#}"),
        })?;
    // Granted trees are cap-std directories too, opened read-only: no
    // write, `..`, absolute path or symlink leads out of them or into them
    // for writing.
    for mount in &grants.mounts {
        builder
            .preopened_dir(&mount.host, &mount.guest, FsPerms::ReadOnly)
            .map_err(|e| RuntimeError::Mount {
                path: mount.host.clone(),
                message: format!("{e:#}"),
            })?;
    }
    builder.envs(&grants.env);
    Ok(builder.build())
}

fn stop_outcome(reason: StopReason) -> AttemptOutcome {
    match reason {
        StopReason::WallTimeout => AttemptOutcome::WallTimeout,
        StopReason::IdleTimeout => AttemptOutcome::IdleTimeout,
        StopReason::Cancelled => AttemptOutcome::Cancelled,
    }
}

fn guest_error_outcome(err: StepError) -> AttemptOutcome {
    let (kind, message) = match err {
        StepError::Retry(m) => (GuestErrorKind::Retry, m),
        StepError::Contract(m) => (GuestErrorKind::Contract, m),
        StepError::Policy(m) => (GuestErrorKind::Policy, m),
        StepError::Repo(m) => (GuestErrorKind::Repo, m),
        StepError::Other(m) => (GuestErrorKind::Other, m),
    };
    AttemptOutcome::GuestError { kind, message }
}

/// Turn a wasmtime error into the typed outcome: our own stop signals and
/// limit errors first (they travel as the error's root cause), then
/// wasmtime's trap codes, then anything else as a plain trap.
fn trap_outcome(err: &wasmtime::Error, handles_limit: usize, instances_limit: usize) -> AttemptOutcome {
    for cause in err.chain() {
        if let Some(reason) = cause.downcast_ref::<StopReason>() {
            return stop_outcome(*reason);
        }
        // The pool full (which the slot semaphore should make impossible)
        // or the system out of memory for the instance's mappings: a
        // condition of the host, which a later attempt elsewhere survives.
        let out_of_memory = cause.is::<wasmtime::OutOfMemory>()
            || cause.downcast_ref::<rustix::io::Errno>() == Some(&rustix::io::Errno::NOMEM)
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::OutOfMemory);
        if out_of_memory || cause.is::<wasmtime::PoolConcurrencyLimitError>() {
            return AttemptOutcome::HostUnavailable {
                message: format!("{err:#}"),
            };
        }
        if let Some(ResourceTableError::Full) = cause.downcast_ref::<ResourceTableError>() {
            return AttemptOutcome::HandleLimit {
                limit: handles_limit as u64,
            };
        }
        if let Some(limit) = cause.downcast_ref::<MemoryLimitExceeded>() {
            return AttemptOutcome::MemoryLimit {
                requested_bytes: limit.requested_bytes,
                limit_bytes: limit.limit_bytes,
            };
        }
        if let Some(limit) = cause.downcast_ref::<TableLimitExceeded>() {
            return AttemptOutcome::TableLimit {
                requested_elements: limit.requested_elements,
                limit_elements: limit.limit_elements,
            };
        }
        if cause.to_string().starts_with(INSTANCE_LIMIT_MESSAGE) {
            return AttemptOutcome::InstanceLimit {
                limit: instances_limit as u64,
            };
        }
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => AttemptOutcome::OutOfFuel,
        Some(Trap::StackOverflow) => AttemptOutcome::StackOverflow,
        _ => AttemptOutcome::Trap {
            message: format!("{err:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_the_host_cannot_map_is_the_hosts_failure_not_the_steps() {
        let mapping = wasmtime::Error::from(rustix::io::Errno::NOMEM).context("allocating a memory for the instance");
        let outcome = trap_outcome(&mapping, 16, 20);
        assert!(
            matches!(&outcome, AttemptOutcome::HostUnavailable { message } if message.contains("allocating a memory")),
            "{outcome:?}"
        );
        let io = wasmtime::Error::from(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        assert_eq!(trap_outcome(&io, 16, 20).name(), "host_unavailable");
        let other = wasmtime::Error::msg("wasm trap: unreachable");
        assert_eq!(trap_outcome(&other, 16, 20).name(), "trap");
    }
}
