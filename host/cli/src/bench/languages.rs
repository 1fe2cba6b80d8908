//! The language column of `stepd bench runtime`: the same write-file step
//! in Rust, Python and JavaScript (`write-file`, `py-write-file`,
//! `js-write-file`), each instantiated, called and torn down, and each
//! soft-reset after a spin into its wall deadline — beside starting the
//! language's interpreter as a process (`python3 -c pass`, `node -e 0`),
//! which is what a process-per-step runner pays instead.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stepd_runtime::{AttemptRequest, Runtime};

use super::Summary;

/// One language's measurements.
pub(super) struct LanguageRow {
    /// `rust`, `python` or `javascript`.
    pub language: &'static str,
    /// Instantiate + call + teardown of the write-file step.
    pub cycle: Option<Summary>,
    /// From the host stopping a spinning attempt to a fresh instance's call
    /// returning.
    pub soft_reset: Option<Summary>,
    /// The interpreter's process start, when the language has one.
    pub process: Option<(&'static str, Option<Summary>)>,
}

/// One language's plugins: the write-file step, the plugin that spins (the
/// step itself, or Rust's `hang`), and the interpreter's process start.
struct Language {
    name: &'static str,
    write: &'static str,
    spin: &'static str,
    process: Option<(&'static str, &'static [&'static str])>,
}

const LANGUAGES: [Language; 3] = [
    Language {
        name: "rust",
        write: "write-file",
        spin: "hang",
        process: None,
    },
    Language {
        name: "python",
        write: "py-write-file",
        spin: "py-write-file",
        process: Some(("python3", &["-c", "pass"])),
    },
    Language {
        name: "javascript",
        write: "js-write-file",
        spin: "js-write-file",
        process: Some(("node", &["-e", "0"])),
    },
];

/// Measure every language, `samples` cycles and `samples / 2` soft resets
/// each, the languages interleaved so machine noise hits them alike.
pub(super) async fn measure(
    runtime: &Runtime,
    plugins: &Path,
    request: impl Fn(u32, serde_json::Value, Duration, Duration) -> AttemptRequest,
    samples: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<LanguageRow>> {
    const LONG: Duration = Duration::from_secs(600);
    let load = |name: &str| super::runtime::load_plugin(runtime, plugins, name);
    let mut loaded = Vec::new();
    for language in &LANGUAGES {
        loaded.push((language.name, load(language.write)?, load(language.spin)?));
    }
    // A new file each time: rewriting one file costs its truncation, which
    // ext4 answers by flushing the old data (about 0.2 ms here), and that
    // would be measured instead of the runtime.
    let written = std::cell::Cell::new(0u64);
    let write_inputs = || {
        written.set(written.get() + 1);
        serde_json::json!({"path": format!("bench-language-{}.txt", written.get()), "text": "x"})
    };
    let spin_inputs = |language: &str| {
        if language == "rust" {
            serde_json::json!({"attempts": [1], "mode": "spin"})
        } else {
            serde_json::json!({"hang": "spin"})
        }
    };
    let mut cycles = vec![Vec::new(); loaded.len()];
    let mut resets = vec![Vec::new(); loaded.len()];
    for (_, write, _) in &loaded {
        // Warm each once (first instantiation touches fresh pool memory).
        runtime
            .run_attempt(write, request(1, write_inputs(), LONG, LONG))
            .await?;
    }
    for round in 0..samples {
        for (i, (language, write, spin)) in loaded.iter().enumerate() {
            let t = Instant::now();
            let report = runtime
                .run_attempt(write, request(1, write_inputs(), LONG, LONG))
                .await?;
            cycles[i].push(t.elapsed().as_secs_f64());
            if !report.outcome.is_success() {
                bail!("{language} write-file did not succeed: {}", report.outcome);
            }
            if round % 2 == 1 {
                continue;
            }
            let reset = super::runtime::soft_reset_once(
                runtime,
                (spin, request(1, spin_inputs(language), deadline, LONG)),
                (write, request(2, write_inputs(), LONG, LONG)),
            )
            .await
            .with_context(|| format!("{language} soft reset"))?;
            resets[i].push(reset.from_stop);
        }
    }
    let mut rows = Vec::new();
    for ((language, cycle), reset) in LANGUAGES.iter().zip(cycles).zip(resets) {
        let process = language.process.map(|(program, args)| {
            let started = super::runtime::spawn_samples(program, args, (samples / 2).clamp(3, 20)).ok();
            (program, started.and_then(Summary::of))
        });
        rows.push(LanguageRow {
            language: language.name,
            cycle: Summary::of(cycle),
            soft_reset: Summary::of(reset),
            process,
        });
    }
    Ok(rows)
}

/// The language table and its targets.
pub(super) fn render(rows: &[LanguageRow]) -> String {
    let ms = |s: Option<Summary>| s.map_or_else(|| "n/a".to_owned(), |s| format!("{:.3} ms", s.p50 * 1e3));
    let mut out = String::from(
        "\n| language   | instantiate + call + teardown p50 | soft reset (stop -> fresh call) p50 | process start p50       |\n\
         |------------|-----------------------------------|-------------------------------------|-------------------------|\n",
    );
    for row in rows {
        let process = row.process.map_or_else(
            || "-".to_owned(),
            |(program, summary)| format!("{} ({program})", ms(summary)),
        );
        out.push_str(&format!(
            "| {:<10} | {:>33} | {:>35} | {:>23} |\n",
            row.language,
            ms(row.cycle),
            ms(row.soft_reset),
            process
        ));
    }
    out
}

/// The targets: a soft reset against starting the interpreter.
pub(super) fn verdicts(rows: &[LanguageRow]) -> String {
    let mut out = String::new();
    for (language, program, goal) in [("python", "python3 -c pass", 20.0), ("javascript", "node -e 0", 30.0)] {
        let Some(row) = rows.iter().find(|r| r.language == language) else {
            continue;
        };
        let line = match (row.soft_reset, row.process.and_then(|(_, s)| s)) {
            (Some(reset), Some(process)) => {
                let ratio = process.p50 / reset.p50;
                format!(
                    "- {language} step soft reset >= {goal:.0}x faster than {program}: {ratio:.0}x ({})\n",
                    super::runtime::verdict(ratio >= goal)
                )
            }
            _ => format!(
                "- {language} step soft reset >= {goal:.0}x faster than {program}: n/a ({program} did not run)\n"
            ),
        };
        out.push_str(&line);
    }
    out
}
