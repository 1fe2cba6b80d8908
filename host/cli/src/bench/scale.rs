//! `stepd bench scale`: many hung steps on one host at once. Starts
//! `--steps` attempts that sleep and as many that spin, all together, in
//! one runtime whose pool has a slot for each (as `serve` and `worker` size
//! it from their concurrency), with fuel metering off and then on. Every
//! attempt should be stopped by its wall deadline; the report says how many
//! were, how late (p50/p99 past the deadline, and how many within 10 ms),
//! and the process's peak resident memory while they ran.
//!
//! Lateness is the stop's: from the deadline to the instant the host
//! decided it, after which the guest ran no more code (the epoch ticker
//! decides it at the deadline; host/runtime/src/deadline.rs). The
//! attempt's teardown follows when its task next gets an async thread,
//! behind the spinners: the report gives that wait too ("torn down").

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::runtime::load_plugin;
use super::Summary;
use stepd_runtime::{
    AttemptGrants, AttemptLimits, AttemptOutcome, AttemptRequest, CancellationToken, Runtime, StepContext,
};
use stepd_settings::{RuntimeSettings, Settings};

/// Arguments of `stepd bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleBenchArgs {
    /// Directory holding the `hang` plugin.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = stepd_settings::DEFAULT_PLUGIN_DIR)]
    pub plugins: PathBuf,
    /// Steps of each kind (sleeping, spinning) started at once.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Their wall deadline, in ms.
    #[arg(long, default_value_t = 3000)]
    pub deadline_ms: u64,
}

/// "On time": stopped at most this long after the deadline.
const ON_TIME: Duration = Duration::from_millis(10);

/// The process's resident memory now, in bytes (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Samples resident memory every few milliseconds until stopped; keeps the
/// peak.
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PeakRss {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// One kind of step in one round.
struct KindResult {
    kind: &'static str,
    started: usize,
    stopped: usize,
    on_time: usize,
    lateness: Option<Summary>,
    torn_down: Option<Summary>,
}

struct Round {
    fuel: &'static str,
    kinds: Vec<KindResult>,
    peak_rss: u64,
    rss_before: u64,
}

fn request(workspace: &std::path::Path, mode: &str, deadline: Duration) -> AttemptRequest {
    AttemptRequest {
        workspace: workspace.to_owned(),
        context: StepContext {
            job_id: "bench-scale".into(),
            step_id: "hung".into(),
            step_index: 0,
            attempt: 1,
            objective: String::new(),
            title: String::new(),
            instructions: String::new(),
            inputs: serde_json::json!({"attempts": [1], "mode": mode}).to_string(),
            retry_context: None,
        },
        limits: AttemptLimits::new(deadline, Duration::from_secs(3600)),
        cancel: CancellationToken::new(),
        grants: AttemptGrants::default(),
    }
}

async fn round(
    args: &ScaleBenchArgs,
    base: &RuntimeSettings,
    fuel: &'static str,
    workspace: &std::path::Path,
) -> anyhow::Result<Round> {
    let slots = u32::try_from(args.steps * 2).unwrap_or(u32::MAX);
    let runtime = Arc::new(Runtime::new(RuntimeSettings {
        pool_slots: slots,
        fuel_per_attempt: (fuel == "on").then_some(u64::MAX / 2),
        ..base.clone()
    })?);
    let hang = load_plugin(&runtime, &args.plugins, "hang")?;
    let deadline = Duration::from_millis(args.deadline_ms);
    let rss_before = rss_bytes();
    let peak = PeakRss::start();
    let mut tasks = Vec::with_capacity(args.steps * 2);
    for i in 0..args.steps * 2 {
        let mode = if i % 2 == 0 { "sleep" } else { "spin" };
        let (runtime, hang) = (runtime.clone(), hang.clone());
        let request = request(workspace, mode, deadline);
        tasks.push(tokio::spawn(async move {
            (mode, runtime.run_attempt(&hang, request).await)
        }));
    }
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await.context("an attempt task")?);
    }
    let peak_rss = peak.finish();
    let mut kinds = Vec::new();
    for kind in ["sleep", "spin"] {
        let mut started = 0;
        let mut stopped = 0;
        let mut late = Vec::new();
        let mut torn_down = Vec::new();
        for (_, report) in reports.iter().filter(|(m, _)| *m == kind) {
            started += 1;
            let report = report.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            if report.outcome == AttemptOutcome::WallTimeout {
                stopped += 1;
                let overrun = report.deadline_overrun_seconds.unwrap_or_default();
                late.push(overrun);
                torn_down.push(overrun + report.teardown_after_stop_seconds.unwrap_or_default());
            }
        }
        kinds.push(KindResult {
            kind: if kind == "sleep" { "sleeping" } else { "spinning" },
            started,
            stopped,
            on_time: late.iter().filter(|s| **s <= ON_TIME.as_secs_f64()).count(),
            lateness: Summary::of(late),
            torn_down: Summary::of(torn_down),
        });
    }
    Ok(Round {
        fuel,
        kinds,
        peak_rss,
        rss_before,
    })
}

/// A summary's p50 and p99 in milliseconds (NaN when nothing was measured).
fn p50_p99_ms(summary: Option<&Summary>) -> (f64, f64) {
    summary.map_or((f64::NAN, f64::NAN), |s| (s.p50 * 1e3, s.p99 * 1e3))
}

/// Run the benchmark and print its report.
pub async fn run_scale_bench(args: &ScaleBenchArgs) -> anyhow::Result<()> {
    let base = Settings::load(None).context("reading settings")?.runtime;
    let workspace = tempfile::tempdir()?;
    println!(
        "stepd bench scale: {} sleeping and {} spinning steps started at once in one process, wall deadline {} ms",
        args.steps, args.steps, args.deadline_ms
    );
    println!(
        "{:<9} {:<9} {:>7} {:>8} {:>9} {:>9} {:>12} {:>20} {:>14}",
        "fuel", "steps", "started", "stopped", "late p50", "late p99", "within 10ms", "torn down p50/p99", "peak RSS"
    );
    for fuel in ["off", "on"] {
        let r = round(args, &base, fuel, workspace.path()).await?;
        for k in &r.kinds {
            let (p50, p99) = p50_p99_ms(k.lateness.as_ref());
            let (down50, down99) = p50_p99_ms(k.torn_down.as_ref());
            println!(
                "{:<9} {:<9} {:>7} {:>8} {:>7.2}ms {:>7.2}ms {:>12} {:>8.0} / {:>5.0} ms {:>10} MiB",
                r.fuel,
                k.kind,
                k.started,
                k.stopped,
                p50,
                p99,
                k.on_time,
                down50,
                down99,
                r.peak_rss >> 20
            );
        }
        println!(
            "{:<9} resident before the round: {} MiB; peak while it ran: {} MiB",
            "",
            r.rss_before >> 20,
            r.peak_rss >> 20
        );
    }
    Ok(())
}
