//! `stepd bench runtime`: what an attempt costs, measured side by side in
//! one run so the ratios hold on a noisy shared machine.
//!
//! Rows: instantiate+call+teardown latency; soft-reset latency (deadline hit
//! → a fresh instance's call returned); deadline lateness for a CPU-bound
//! and a sleeping guest, wall and idle; epoch-only and fuel+epoch overhead on
//! a tight loop, as ratios to neither; an HTTP round trip to loopback from
//! a guest and from the host; and the process spawns a process-based
//! worker pays instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::Summary;
use stepd_runtime::{
    AttemptGrants, AttemptLimits, AttemptOutcome, AttemptRequest, CancellationToken, Plugin, ReadOnlyMount, Runtime,
    StepContext,
};
use stepd_settings::{RuntimeSettings, Settings};

/// Arguments of `stepd bench runtime`.
#[derive(Debug, clap::Args)]
pub struct RuntimeBenchArgs {
    /// Directory holding the `spin` and `hang` plugins.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = stepd_settings::DEFAULT_PLUGIN_DIR)]
    pub plugins: PathBuf,
    /// Samples per latency row (lateness rows take a quarter each).
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// Deadline used for the lateness and soft-reset rows, in ms.
    #[arg(long, default_value_t = 10)]
    pub deadline_ms: u64,
    /// Sieve size for the overhead rows (bigger: longer, steadier).
    #[arg(long, default_value_t = 2_000_000)]
    pub sieve_n: u64,
}

fn context(attempt: u32, inputs: serde_json::Value) -> StepContext {
    StepContext {
        job_id: "bench".into(),
        step_id: "bench".into(),
        step_index: 0,
        attempt,
        objective: String::new(),
        title: String::new(),
        instructions: String::new(),
        inputs: inputs.to_string(),
        retry_context: None,
    }
}

struct Bench<'a> {
    workspace: &'a Path,
}

impl Bench<'_> {
    fn request(&self, attempt: u32, inputs: serde_json::Value, wall: Duration, idle: Duration) -> AttemptRequest {
        AttemptRequest {
            workspace: self.workspace.to_owned(),
            context: context(attempt, inputs),
            limits: AttemptLimits::new(wall, idle),
            cancel: CancellationToken::new(),
            grants: AttemptGrants::default(),
        }
    }
}

const LONG: Duration = Duration::from_secs(600);

/// Run the benchmark and print its report to stdout.
pub async fn run_runtime_bench(args: &RuntimeBenchArgs) -> anyhow::Result<()> {
    if args.iterations < 4 {
        bail!("--iterations must be at least 4");
    }
    let workspace = std::env::temp_dir().join(format!("stepd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workspace).with_context(|| format!("creating {}", workspace.display()))?;
    let result = measure(args, &workspace).await;
    let _ = std::fs::remove_dir_all(&workspace);
    let rows = result?;
    print!("{}", rows);
    Ok(())
}

async fn measure(args: &RuntimeBenchArgs, workspace: &Path) -> anyhow::Result<String> {
    let bench = Bench { workspace };
    let base = Settings::load(None).context("reading settings")?.runtime;
    let runtime = Runtime::new(base.clone())?;
    let load = |rt: &Runtime, name: &str| load_plugin(rt, &args.plugins, name);
    let spin = load(&runtime, "spin")?;
    let hang = load(&runtime, "hang")?;
    let deadline = Duration::from_millis(args.deadline_ms);

    // 1. instantiate + call + teardown of a trivial step.
    let trivial = serde_json::json!({"n": 10});
    for _ in 0..10 {
        runtime
            .run_attempt(&spin, bench.request(1, trivial.clone(), LONG, LONG))
            .await?;
    }
    // The same cycle with capabilities (four variables and a read-only
    // mount), interleaved with the plain one so both see the same noise.
    let mounted = tempfile::tempdir()?;
    std::fs::write(mounted.path().join("spec.md"), "# spec\n")?;
    let grants = AttemptGrants {
        env: (0..4).map(|i| (format!("VAR_{i}"), format!("value {i}"))).collect(),
        mounts: vec![ReadOnlyMount {
            host: mounted.path().to_owned(),
            guest: "/specs".into(),
        }],
        // Linked and granted, never called: what having HTTP costs.
        http: Some(super::http::loopback_grant(([127, 0, 0, 1], 9).into())?),
    };
    let mut cycle = Vec::with_capacity(args.iterations);
    let mut cycle_granted = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let t = Instant::now();
        let report = runtime
            .run_attempt(&spin, bench.request(1, trivial.clone(), LONG, LONG))
            .await?;
        cycle.push(t.elapsed().as_secs_f64());
        expect_success(&report.outcome)?;
        let mut request = bench.request(1, trivial.clone(), LONG, LONG);
        request.grants = grants.clone();
        let t = Instant::now();
        let report = runtime.run_attempt(&spin, request).await?;
        cycle_granted.push(t.elapsed().as_secs_f64());
        expect_success(&report.outcome)?;
    }

    // 2. soft reset: attempt 1 spins into its wall deadline; attempt 2 is a
    //    fresh instance that returns. Measured from the moment the host
    //    stopped attempt 1 (teardown + new instance + call), and from the
    //    deadline itself (which adds the deadline's lateness).
    let hang_spin = serde_json::json!({"attempts": [1], "mode": "spin"});
    let mut soft_reset = Vec::new();
    let mut soft_reset_from_deadline = Vec::new();
    for _ in 0..(args.iterations / 4).max(1) {
        let reset = soft_reset_once(
            &runtime,
            (&hang, bench.request(1, hang_spin.clone(), deadline, LONG)),
            (&hang, bench.request(2, hang_spin.clone(), LONG, LONG)),
        )
        .await
        .context("soft-reset row")?;
        soft_reset.push(reset.from_stop);
        soft_reset_from_deadline.push(reset.from_deadline);
    }

    // 3. deadline lateness, CPU-bound and sleeping guests, wall and idle.
    let mut lateness = Vec::new();
    for (label, mode, wall, idle, expected) in [
        (
            "cpu-bound guest, wall deadline",
            "spin",
            deadline,
            LONG,
            AttemptOutcome::WallTimeout,
        ),
        (
            "sleeping guest, wall deadline",
            "sleep",
            deadline,
            LONG,
            AttemptOutcome::WallTimeout,
        ),
        (
            "cpu-bound guest, idle deadline",
            "spin",
            LONG,
            deadline,
            AttemptOutcome::IdleTimeout,
        ),
        (
            "sleeping guest, idle deadline",
            "sleep",
            LONG,
            deadline,
            AttemptOutcome::IdleTimeout,
        ),
    ] {
        let inputs = serde_json::json!({"attempts": [1], "mode": mode});
        let mut samples = Vec::new();
        for _ in 0..(args.iterations / 4).max(1) {
            let report = runtime
                .run_attempt(&hang, bench.request(1, inputs.clone(), wall, idle))
                .await?;
            if report.outcome != expected {
                bail!("{label}: ended {} instead of {}", report.outcome, expected.name());
            }
            samples.push(report.deadline_overrun_seconds.unwrap_or_default());
        }
        lateness.push((label, Summary::of(samples)));
    }

    // 4. overhead of epoch checks and fuel metering on a tight loop, the
    //    three engines interleaved so machine noise hits them alike.
    let variants = [
        (
            "neither",
            RuntimeSettings {
                epoch_interruption: false,
                fuel_per_attempt: None,
                ..base.clone()
            },
        ),
        (
            "epoch only",
            RuntimeSettings {
                fuel_per_attempt: None,
                ..base.clone()
            },
        ),
        (
            "fuel + epoch",
            RuntimeSettings {
                fuel_per_attempt: Some(base.fuel_per_attempt.unwrap_or(u64::MAX / 2)),
                ..base.clone()
            },
        ),
    ];
    let mut engines = Vec::new();
    for (label, settings) in variants {
        let rt = Runtime::new(RuntimeSettings {
            pool_slots: 4,
            ..settings
        })?;
        let plugin = load(&rt, "spin")?;
        engines.push((label, rt, plugin, Vec::new()));
    }
    let sieve = serde_json::json!({"n": args.sieve_n, "rounds": 3});
    let rounds = (args.iterations / 40).clamp(3, 9);
    for _ in 0..rounds {
        for (_, rt, plugin, samples) in engines.iter_mut() {
            let t = Instant::now();
            let report = rt
                .run_attempt(plugin, bench.request(1, sieve.clone(), LONG, LONG))
                .await?;
            samples.push(t.elapsed().as_secs_f64());
            expect_success(&report.outcome)?;
        }
    }
    let medians: Vec<(&str, f64)> = engines
        .into_iter()
        .map(|(label, _, _, samples)| (label, Summary::of(samples).map_or(f64::NAN, |s| s.p50)))
        .collect();

    // 5. an HTTP round trip to loopback, through a guest and by the host.
    let hostile = load(&runtime, "hostile")?;
    let (guest_http, host_http) = super::http::round_trips(
        &runtime,
        &hostile,
        || bench.request(1, serde_json::Value::Null, LONG, LONG),
        (args.iterations / 20).clamp(2, 20),
    )
    .await?;

    // 6. the same step in Rust, Python and JavaScript.
    let languages = super::languages::measure(
        &runtime,
        &args.plugins,
        |attempt, inputs, wall, idle| bench.request(attempt, inputs, wall, idle),
        (args.iterations / 10).clamp(4, 40),
        deadline,
    )
    .await?;

    // 7. what a process-based worker pays per restart.
    let true_spawn = spawn_samples("/bin/true", &[], args.iterations.min(100))?;
    let python_spawn = spawn_samples("python3", &["-c", "pass"], (args.iterations / 10).clamp(3, 20)).ok();

    Ok(render(RenderInput {
        cycle: Summary::of(cycle),
        cycle_granted: Summary::of(cycle_granted),
        guest_http: Summary::of(guest_http),
        host_http: Summary::of(host_http),
        soft_reset: Summary::of(soft_reset),
        soft_reset_from_deadline: Summary::of(soft_reset_from_deadline),
        lateness,
        medians,
        true_spawn: Summary::of(true_spawn),
        python_spawn: python_spawn.and_then(Summary::of),
        languages,
        settings: base,
    }))
}

/// A plugin of the plugin directory, or an error saying how to build it.
pub(super) fn load_plugin(rt: &Runtime, plugins: &Path, name: &str) -> anyhow::Result<Plugin> {
    let path = plugins.join(format!("{name}.wasm"));
    rt.load_plugin(&path).with_context(|| {
        format!(
            "loading {} (build the plugins first: `stepd plugin build`)",
            path.display()
        )
    })
}

/// One soft reset's cost, in seconds.
pub(super) struct SoftReset {
    /// From the host stopping attempt 1 to attempt 2's call returning.
    pub from_stop: f64,
    /// From attempt 1's deadline to attempt 2's call returning (adds the
    /// deadline's lateness).
    pub from_deadline: f64,
}

/// Run `stuck` into its wall deadline, then `fresh` in a new instance, as
/// self-heal's soft reset does.
pub(super) async fn soft_reset_once(
    runtime: &Runtime,
    (stuck, stuck_request): (&Plugin, AttemptRequest),
    (fresh, fresh_request): (&Plugin, AttemptRequest),
) -> anyhow::Result<SoftReset> {
    let deadline = stuck_request.limits.wall_timeout;
    let t = Instant::now();
    let first = runtime.run_attempt(stuck, stuck_request).await?;
    if first.outcome != AttemptOutcome::WallTimeout {
        bail!("attempt 1 ended {} instead of wall_timeout", first.outcome);
    }
    let stopped = t + Duration::from_secs_f64(first.wall_clock_seconds);
    let second = runtime.run_attempt(fresh, fresh_request).await?;
    expect_success(&second.outcome)?;
    Ok(SoftReset {
        from_stop: stopped.elapsed().as_secs_f64(),
        from_deadline: t.elapsed().saturating_sub(deadline).as_secs_f64(),
    })
}

fn expect_success(outcome: &AttemptOutcome) -> anyhow::Result<()> {
    if !outcome.is_success() {
        bail!("benchmark step did not succeed: {outcome}");
    }
    Ok(())
}

pub(super) fn spawn_samples(program: &str, args: &[&str], n: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("spawning {program}"))?;
        samples.push(t.elapsed().as_secs_f64());
        if !status.success() {
            bail!("{program} exited with {status}");
        }
    }
    Ok(samples)
}

struct RenderInput {
    cycle: Option<Summary>,
    cycle_granted: Option<Summary>,
    guest_http: Option<Summary>,
    host_http: Option<Summary>,
    soft_reset: Option<Summary>,
    soft_reset_from_deadline: Option<Summary>,
    lateness: Vec<(&'static str, Option<Summary>)>,
    medians: Vec<(&'static str, f64)>,
    true_spawn: Option<Summary>,
    python_spawn: Option<Summary>,
    languages: Vec<super::languages::LanguageRow>,
    settings: RuntimeSettings,
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

fn row(out: &mut String, label: &str, summary: Option<Summary>) {
    match summary {
        Some(s) => out.push_str(&format!(
            "| {label:<44} | {:>11} | {:>11} | {:>4} |\n",
            ms(s.p50),
            ms(s.p99),
            s.n
        )),
        None => out.push_str(&format!("| {label:<44} | {:>11} | {:>11} | {:>4} |\n", "n/a", "n/a", 0)),
    }
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn render(input: RenderInput) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "stepd bench runtime (pooling {}, epoch tick {:?}, fuel {})\n\n",
        if input.settings.pooling { "on" } else { "off" },
        input.settings.epoch_tick,
        input
            .settings
            .fuel_per_attempt
            .map_or("off".to_owned(), |f| f.to_string()),
    ));
    out.push_str(&format!(
        "| {:<44} | {:>11} | {:>11} | {:>4} |\n",
        "latency", "p50", "p99", "n"
    ));
    out.push_str(&format!("|{:-<46}|{:->13}|{:->13}|{:->6}|\n", "", "", "", ""));
    row(&mut out, "instantiate + call + teardown", input.cycle);
    row(
        &mut out,
        "  the same with 4 variables, a mount and HTTP",
        input.cycle_granted,
    );
    row(&mut out, "HTTP round trip to loopback, from a guest", input.guest_http);
    row(&mut out, "HTTP round trip to loopback, from the host", input.host_http);
    row(
        &mut out,
        "soft reset (deadline hit -> fresh call done)",
        input.soft_reset_from_deadline,
    );
    row(&mut out, "soft reset (stop -> fresh call done)", input.soft_reset);
    for (label, summary) in &input.lateness {
        row(&mut out, &format!("lateness: {label}"), *summary);
    }
    row(&mut out, "spawn + wait /bin/true", input.true_spawn);
    row(&mut out, "spawn + wait python3 -c pass", input.python_spawn);

    out.push_str("\n| tight loop (sieve), median            | time        | ratio |\n");
    out.push_str("|---------------------------------------|-------------|-------|\n");
    let neither = input.medians.first().map_or(f64::NAN, |(_, t)| *t);
    for (label, t) in &input.medians {
        out.push_str(&format!("| {label:<37} | {:>11} | {:>4.2}x |\n", ms(*t), t / neither));
    }
    out.push_str(&super::languages::render(&input.languages));

    out.push_str("\ntargets:\n");
    if let (Some(plain), Some(granted)) = (input.cycle, input.cycle_granted) {
        let ratio = granted.p50 / plain.p50;
        out.push_str(&format!(
            "- capabilities (4 variables + a read-only mount + HTTP) <= 1.2x instantiate + call: {ratio:.2}x ({})\n",
            verdict(ratio <= 1.2)
        ));
    }
    if let Some(line) = super::http::verdict_line(input.guest_http, input.host_http) {
        out.push_str(&line);
    }
    if let Some(soft) = input.soft_reset_from_deadline {
        out.push_str(&format!(
            "- soft reset (deadline hit -> fresh call done) p50 <= 0.5 ms: {} ({})\n",
            ms(soft.p50),
            verdict(soft.p50 <= 0.0005)
        ));
        if let Some(py) = input.python_spawn {
            let ratio = py.p50 / soft.p50;
            out.push_str(&format!(
                "- soft reset >= 30x faster than python3 -c pass: {ratio:.0}x ({})\n",
                verdict(ratio >= 30.0)
            ));
        }
    }
    out.push_str(&super::languages::verdicts(&input.languages));
    let worst = input
        .lateness
        .iter()
        .filter_map(|(_, s)| s.map(|s| s.p99))
        .fold(0.0_f64, f64::max);
    out.push_str(&format!(
        "- deadline lateness p99 <= 2 ms (worst row): {} ({})\n",
        ms(worst),
        verdict(worst <= 0.002)
    ));
    if let Some((_, epoch)) = input.medians.get(1) {
        let ratio = epoch / neither;
        out.push_str(&format!(
            "- epoch-only overhead <= 1.6x: {ratio:.2}x ({})\n",
            verdict(ratio <= 1.6)
        ));
    }
    out
}
