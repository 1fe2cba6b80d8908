//! Python and JavaScript steps on the same contract as Rust ones: the
//! scenarios the Rust plugins pass, run with `py-*` and `js-*` plugins
//! built from source by tests/build.rs (componentize-py and componentize-js
//! from the project's pins). Same sandbox, same deadlines and limits, same
//! self-heal, same failure classes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use stepd_job::payload::JobPayload;
use stepd_records::redact::Redactor;
use stepd_runtime::{AttemptOutcome, AttemptReport, GuestErrorKind, Runtime};
use stepd_selfheal::{classify, run_local, FailureClass, JobStatus, LocalRun, LocalRunOptions};
use stepd_settings::Settings;
use stepd_tests::{attempt, attempt_with, git_repo, load, plugin_dir, stepd_bin, test_settings, Scratch};

/// The two guest languages besides Rust, by their plugins' name prefix.
const LANGUAGES: [&str; 2] = ["py", "js"];

/// Attempt 1 of `plugin` over the scratch workspace, a minute for each
/// deadline, nothing granted.
async fn within_a_minute(
    runtime: &Runtime,
    plugin: &stepd_runtime::Plugin,
    scratch: &Scratch,
    inputs: Value,
) -> AttemptReport {
    attempt_with(runtime, plugin, &scratch.workspace(), inputs, Default::default()).await
}

fn output_text(report: &AttemptReport) -> String {
    report.output.chunks.iter().map(|c| c.text.as_str()).collect()
}

#[tokio::test]
async fn given_python_and_js_write_file_steps_when_they_run_then_the_files_are_written_and_logged() {
    let runtime = Runtime::new(test_settings()).expect("runtime");
    for lang in LANGUAGES {
        let plugin = load(&runtime, &format!("{lang}-write-file"));
        let scratch = Scratch::new();
        let report = within_a_minute(
            &runtime,
            &plugin,
            &scratch,
            json!({"files": {"a.txt": "alpha\n", "docs/b.md": "# beta\n"}}),
        )
        .await;
        assert_eq!(
            report.outcome,
            AttemptOutcome::Succeeded {
                summary: "wrote 2 file(s)".into(),
                data: None
            },
            "{lang}: {}",
            output_text(&report)
        );
        assert_eq!(
            std::fs::read_to_string(scratch.workspace().join("a.txt")).expect("test file"),
            "alpha\n"
        );
        assert_eq!(
            std::fs::read_to_string(scratch.workspace().join("docs/b.md")).expect("test file"),
            "# beta\n"
        );
        assert!(
            output_text(&report).contains("wrote docs/b.md (7 bytes)"),
            "{lang}: {}",
            output_text(&report)
        );

        // UTF-8 both ways, and more files than an attempt may hold handles
        // at once (1024): each is closed when written.
        let mut files: serde_json::Map<String, Value> = (0..1500)
            .map(|i| (format!("many/f{i}.txt"), json!(format!("{i}\n"))))
            .collect();
        files.insert("ünï.txt".into(), json!("héllo ✓\n"));
        let report = attempt(
            &runtime,
            &plugin,
            &scratch.workspace(),
            1,
            json!({"files": files, "read": "docs/b.md"}),
            Duration::from_secs(120),
            Duration::from_secs(120),
        )
        .await;
        assert!(report.outcome.is_success(), "{lang}: {:?}", report.outcome);
        assert_eq!(
            std::fs::read(scratch.workspace().join("ünï.txt")).expect("written"),
            "héllo ✓\n".as_bytes(),
            "{lang}"
        );
        assert_eq!(
            std::fs::read_dir(scratch.workspace().join("many"))
                .expect("dir")
                .count(),
            1500,
            "{lang}"
        );
        assert!(
            output_text(&report).contains("read: # beta"),
            "{lang}: {}",
            output_text(&report)
        );

        // A path out of the workspace is the job's mistake, named.
        let refused = within_a_minute(
            &runtime,
            &plugin,
            &scratch,
            json!({"path": "../outside.txt", "text": "x"}),
        )
        .await;
        assert!(
            matches!(&refused.outcome, AttemptOutcome::GuestError { kind: GuestErrorKind::Contract, message } if message.contains("../outside.txt")),
            "{lang}: {:?}",
            refused.outcome
        );
        assert_eq!(
            std::fs::read_to_string(scratch.dir.path().join("outside.txt")).expect("test file"),
            "host secret\n"
        );
    }
}

#[tokio::test]
async fn given_a_step_error_of_each_kind_when_a_python_or_js_step_raises_it_then_it_maps_to_the_same_failure_class_as_in_rust(
) {
    let runtime = Runtime::new(test_settings()).expect("runtime");
    let kinds = [
        ("retry", GuestErrorKind::Retry, FailureClass::TransientRuntime),
        (
            "contract",
            GuestErrorKind::Contract,
            FailureClass::DeterministicContract,
        ),
        ("policy", GuestErrorKind::Policy, FailureClass::DeterministicPolicy),
        ("repo", GuestErrorKind::Repo, FailureClass::DeterministicRepo),
        // `other` is classified by its text, as a Rust step's is.
        ("other", GuestErrorKind::Other, FailureClass::TransientRuntime),
    ];
    for lang in LANGUAGES {
        let plugin = load(&runtime, &format!("{lang}-no-progress"));
        let scratch = Scratch::new();
        for (name, kind, class) in kinds {
            let message = format!("{name} from {lang}: connection reset by peer");
            let report = within_a_minute(&runtime, &plugin, &scratch, json!({"kind": name, "message": message})).await;
            assert_eq!(
                report.outcome,
                AttemptOutcome::GuestError {
                    kind,
                    message: message.clone()
                },
                "{lang} {name}: {}",
                output_text(&report)
            );
            assert_eq!(classify(&report.outcome), Some(class), "{lang} {name}");
        }
        // A mistyped input is a contract error naming the field.
        let report = within_a_minute(&runtime, &plugin, &scratch, json!({"kind": 7})).await;
        assert!(
            matches!(&report.outcome, AttemptOutcome::GuestError { kind: GuestErrorKind::Contract, message } if message.contains("inputs.kind must be a string")),
            "{lang}: {:?}",
            report.outcome
        );
    }
}

#[tokio::test]
async fn given_python_and_js_steps_when_one_crashes_fails_a_file_read_or_reads_a_grant_then_each_ends_as_a_rust_step_would(
) {
    let runtime = Runtime::new(test_settings()).expect("runtime");
    for lang in LANGUAGES {
        let plugin = load(&runtime, &format!("{lang}-write-file"));
        let scratch = Scratch::new();
        // A plain exception is a crash, as a panic is: logged, then a trap.
        let crashed = within_a_minute(&runtime, &plugin, &scratch, json!({"crash": true})).await;
        assert!(
            matches!(crashed.outcome, AttemptOutcome::Trap { .. }),
            "{lang}: {:?}",
            crashed.outcome
        );
        assert!(
            output_text(&crashed).contains("the step crashed on purpose"),
            "{lang}: {}",
            output_text(&crashed)
        );
        assert_eq!(
            classify(&crashed.outcome),
            Some(FailureClass::TransientRuntime),
            "{lang}"
        );

        // A file error that escapes is `other`, with the text a Rust
        // step's io::Error has, so it is classified alike.
        let missing = within_a_minute(
            &runtime,
            &plugin,
            &scratch,
            json!({"read": "missing.txt", "path": "x.txt", "text": "x"}),
        )
        .await;
        assert!(
            matches!(&missing.outcome, AttemptOutcome::GuestError { kind: GuestErrorKind::Other, message } if message.contains("No such file or directory")),
            "{lang}: {:?}",
            missing.outcome
        );
        assert_eq!(
            classify(&missing.outcome),
            Some(FailureClass::DeterministicContract),
            "{lang}"
        );

        // Granted variables are read from the host at run time.
        let grants = stepd_runtime::AttemptGrants {
            env: vec![("GREETING".into(), "hello from the host".into())],
            ..Default::default()
        };
        let granted = attempt_with(
            &runtime,
            &plugin,
            &scratch.workspace(),
            json!({"env": "GREETING", "path": "y.txt", "text": "y"}),
            grants,
        )
        .await;
        assert!(granted.outcome.is_success(), "{lang}: {:?}", granted.outcome);
        assert!(
            output_text(&granted).contains("GREETING=hello from the host"),
            "{lang}: {}",
            output_text(&granted)
        );
    }
}

#[tokio::test]
async fn given_a_python_step_sleeping_forever_and_a_js_step_spinning_when_deadlines_pass_then_the_wall_and_idle_deadlines_stop_them(
) {
    let runtime = Runtime::new(test_settings()).expect("runtime");
    for (lang, hang) in [("py", "sleep"), ("py", "spin"), ("js", "spin")] {
        let plugin = load(&runtime, &format!("{lang}-write-file"));
        let scratch = Scratch::new();
        let inputs = json!({"hang": hang});
        let wall = attempt(
            &runtime,
            &plugin,
            &scratch.workspace(),
            1,
            inputs.clone(),
            Duration::from_millis(800),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(wall.outcome, AttemptOutcome::WallTimeout, "{lang} {hang}");
        assert!(
            wall.wall_clock_seconds < 5.0,
            "{lang} {hang}: {}",
            wall.wall_clock_seconds
        );
        let idle = attempt(
            &runtime,
            &plugin,
            &scratch.workspace(),
            1,
            inputs,
            Duration::from_secs(60),
            Duration::from_millis(800),
        )
        .await;
        assert_eq!(idle.outcome, AttemptOutcome::IdleTimeout, "{lang} {hang}");
        assert!(
            idle.wall_clock_seconds < 5.0,
            "{lang} {hang}: {}",
            idle.wall_clock_seconds
        );
    }
}

#[tokio::test]
async fn given_fuel_and_memory_limits_when_python_and_js_steps_exceed_them_then_the_attempt_ends_typed() {
    let mut settings = test_settings();
    settings.fuel_per_attempt = Some(3_000_000_000);
    settings.memory_limit_bytes = 96 << 20;
    let runtime = Runtime::new(settings).expect("runtime");
    for lang in LANGUAGES {
        let plugin = load(&runtime, &format!("{lang}-write-file"));
        let scratch = Scratch::new();
        let spun = attempt(
            &runtime,
            &plugin,
            &scratch.workspace(),
            1,
            json!({"hang": "spin"}),
            Duration::from_secs(120),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(spun.outcome, AttemptOutcome::OutOfFuel, "{lang}");
        let grown = within_a_minute(
            &runtime,
            &plugin,
            &scratch,
            json!({"allocateMb": 200, "path": "never.txt", "text": "x"}),
        )
        .await;
        assert!(
            matches!(grown.outcome, AttemptOutcome::MemoryLimit { limit_bytes, .. } if limit_bytes == 96 << 20),
            "{lang}: {:?}",
            grown.outcome
        );
        assert!(!scratch.workspace().join("never.txt").exists(), "{lang}");
        // Within the limits, the same plugin still runs.
        let fine = within_a_minute(
            &runtime,
            &plugin,
            &scratch,
            json!({"allocateMb": 16, "path": "fine.txt", "text": "ok"}),
        )
        .await;
        assert!(fine.outcome.is_success(), "{lang}: {:?}", fine.outcome);
    }
}

/// A job run with self-heal over a small git baseline.
async fn run_job(steps: Value, self_heal: Value) -> (JobStatus, Vec<Value>, String, PathBuf, tempfile::TempDir) {
    run_job_with(steps, self_heal, test_settings()).await
}

/// [`run_job`] with these runtime settings.
async fn run_job_with(
    steps: Value,
    self_heal: Value,
    runtime_settings: stepd_settings::RuntimeSettings,
) -> (JobStatus, Vec<Value>, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    git_repo(&dir.path().join("repo"), &[("README.md", "# project\n")]);
    let payload = json!({
        "type": "task",
        "maxAttempts": 1,
        "task": {
            "objective": "exercise self-heal in another language",
            "repository": dir.path().join("repo").to_str().expect("utf-8"),
            "steps": steps,
            "selfHeal": self_heal,
        }
    });
    let job = JobPayload::parse(&payload.to_string())
        .and_then(|p| {
            p.validate(
                dir.path(),
                &plugin_dir(),
                &stepd_job::payload::HostGrants::local_default(),
            )
        })
        .expect("valid payload");
    let mut settings = Settings::from_lookup(|_| None).expect("default settings");
    settings.runtime = runtime_settings;
    settings.retry.base_seconds = 0;
    let runtime = Runtime::new(settings.runtime.clone()).expect("runtime");
    let options = LocalRunOptions {
        artifact_root: dir.path().join("artifacts"),
        work_root: dir.path().join("work"),
        job_id: "polyglot".into(),
    };
    let local = LocalRun {
        runtime: &runtime,
        settings: &settings,
        redactor: Arc::new(Redactor::from_env()),
        cancel: stepd_runtime::CancellationToken::new(),
        observer: None,
    };
    let status = run_local(local, job, &options).await.expect("the job runs to an end");
    let job_dir = options.artifact_root.join("agent_jobs/polyglot");
    let events = std::fs::read_to_string(job_dir.join("events.jsonl"))
        .expect("event log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect();
    let log = std::fs::read_dir(job_dir.join("logs/steps"))
        .expect("step logs")
        .map(|entry| std::fs::read_to_string(entry.expect("entry").path()).expect("log"))
        .collect();
    let workspace = options.work_root.join("polyglot/workspace");
    (status, events, log, workspace, dir)
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

#[tokio::test]
async fn given_flaky_python_and_js_steps_when_attempt_1_raises_retry_then_a_soft_reset_succeeds() {
    for lang in LANGUAGES {
        let (status, events, log, workspace, _dir) = run_job(
            json!([{"id": "flaky", "plugin": format!("{lang}-flaky"), "inputs": {"failAttempts": 1}}]),
            json!({"stepIdleTimeoutSeconds": 30, "stepTimeoutSeconds": 60}),
        )
        .await;
        assert_eq!(status, JobStatus::Succeeded, "{lang}: {log}");
        let triggered = named(&events, "task.self_heal.triggered");
        assert_eq!(triggered.len(), 1, "{lang}");
        assert_eq!(triggered[0]["payload"]["strategy"], "soft_reset", "{lang}");
        assert_eq!(triggered[0]["payload"]["failureClass"], "transient_runtime", "{lang}");
        assert_eq!(named(&events, "task.step.attempt.started").len(), 2, "{lang}");
        assert_eq!(
            std::fs::read_to_string(workspace.join("flaky.txt")).expect("written"),
            "succeeded on attempt 2\n",
            "{lang}"
        );
        // Attempt 2 was told why attempt 1 failed.
        let told = log
            .lines()
            .find(|line| line.starts_with("retry context: transient_runtime after"))
            .unwrap_or_else(|| panic!("{lang}: no retry context logged: {log}"));
        assert!(told.contains("temporary failure on attempt 1"), "{lang}: {told}");
        assert!(told.ends_with("(soft_reset)"), "{lang}: {told}");
    }
}

#[tokio::test]
async fn given_identical_python_and_js_failures_when_the_no_progress_limit_is_reached_then_a_hard_reset_rebuilds_the_workspace(
) {
    for lang in LANGUAGES {
        let (status, events, log, _workspace, _dir) = run_job(
            json!([
                {"id": "notes", "plugin": format!("{lang}-write-file"), "inputs": {"path": "NOTES.md", "text": "# Notes\n"}},
                {"id": "lint", "plugin": format!("{lang}-no-progress"), "inputs": {
                    "show": ["junk.txt", "NOTES.md"], "plant": "junk.txt", "clobber": "NOTES.md"}}
            ]),
            json!({"stepIdleTimeoutSeconds": 30, "stepTimeoutSeconds": 60, "stepMaxAttempts": 3,
                   "stepNoProgressLimit": 2, "jobSelfHealMaxResets": 1}),
        )
        .await;
        assert_eq!(status, JobStatus::DeadLetter, "{lang}: {log}");
        let escalated = named(&events, "task.self_heal.escalated");
        assert_eq!(escalated.len(), 1, "{lang}");
        assert_eq!(escalated[0]["payload"]["strategy"], "hard_reset", "{lang}");
        assert_eq!(escalated[0]["payload"]["failureClass"], "stuck_no_progress", "{lang}");
        // Attempt 2 saw attempt 1's leftovers; attempt 3 a workspace rebuilt
        // from the baseline and the `notes` step's patch.
        assert!(
            log.contains("attempt 2 sees junk.txt: planted by a failed attempt"),
            "{lang}: {log}"
        );
        assert!(log.contains("attempt 3 sees junk.txt: MISSING"), "{lang}: {log}");
        assert!(log.contains("attempt 3 sees NOTES.md: # Notes"), "{lang}: {log}");
    }
}

#[tokio::test]
async fn given_a_cold_compile_cache_when_a_python_step_with_a_short_deadline_runs_then_compiling_is_not_charged_to_it()
{
    // An 18 MB component compiles for seconds (longer in a debug build)
    // with no cache: that happens before the attempt's clock starts.
    let cold = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings();
    settings.cache_dir = Some(cold.path().to_owned());
    let started = std::time::Instant::now();
    let (status, events, log, workspace, _dir) = run_job_with(
        json!([{"id": "write", "plugin": "py-write-file", "inputs": {"path": "a.txt", "text": "a"}}]),
        json!({"stepTimeoutSeconds": 2, "stepIdleTimeoutSeconds": 2}),
        settings,
    )
    .await;
    assert_eq!(status, JobStatus::Succeeded, "{log}");
    assert_eq!(
        named(&events, "task.step.attempt.started").len(),
        1,
        "no second attempt"
    );
    assert_eq!(std::fs::read_to_string(workspace.join("a.txt")).expect("written"), "a");
    let finished = named(&events, "task.step.attempt.finished");
    let wall = finished[0]["payload"]["wallClockSeconds"]
        .as_f64()
        .expect("wall seconds");
    assert!(wall < 2.0, "the attempt itself took {wall}s");
    eprintln!(
        "job with a cold compile: {:.1}s, attempt {wall:.3}s",
        started.elapsed().as_secs_f64()
    );
}

/// `stepd plugin …` with this build's component cache; exit code and output.
fn stepd_plugin(args: &[&str]) -> (Option<i32>, String) {
    stepd_plugin_in(&std::env::current_dir().expect("cwd"), args)
}

/// [`stepd_plugin`] run from `cwd`.
fn stepd_plugin_in(cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(stepd_bin())
        .current_dir(cwd)
        .arg("plugin")
        .args(args)
        .env(
            "STEPD_CACHE_DIR",
            std::env::temp_dir().join("stepd-test-component-cache"),
        )
        .env_remove("STEPD_CONFIG")
        .output()
        .expect("stepd plugin");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn given_python_and_js_components_when_checked_then_the_step_world_passes_and_another_world_is_named() {
    for lang in LANGUAGES {
        let component = plugin_dir().join(format!("{lang}-write-file.wasm"));
        let (code, text) = stepd_plugin(&["check", path_str(&component)]);
        assert_eq!(code, Some(0), "{lang}: {text}");
        assert!(text.contains("is a stepd:plugin/step component"), "{lang}: {text}");
    }
    // Components of another world, built by the same toolchains.
    let dir = tempfile::tempdir().expect("tempdir");
    let target = plugin_dir()
        .parent()
        .expect("dist lives in the plugin target")
        .to_owned();
    let wit = dir.path().join("wit");
    std::fs::create_dir_all(&wit).expect("test file");
    std::fs::write(
        wit.join("greeter.wit"),
        "package other:sample;\n\nworld greeter {\n    export greet: func() -> string;\n}\n",
    )
    .expect("test file");
    let python = dir.path().join("app.py");
    std::fs::write(
        &python,
        "import wit_world\n\nclass WitWorld(wit_world.WitWorld):\n    def greet(self) -> str:\n        return 'hi'\n",
    )
    .expect("test file");
    let js = dir.path().join("app.js");
    std::fs::write(&js, "export function greet() { return 'hi'; }\n").expect("test file");
    for (language, source) in [
        (stepd_plugin_build::PluginLanguage::Python, &python),
        (stepd_plugin_build::PluginLanguage::JavaScript, &js),
    ] {
        let out = dir.path().join(format!("{language}-greeter.wasm"));
        stepd_plugin_build::componentize_with_world(language, &target, &wit, "greeter", source, &out)
            .unwrap_or_else(|e| panic!("{language}: {e}"));
        let (code, text) = stepd_plugin(&["check", path_str(&out)]);
        assert_eq!(code, Some(2), "{language}: {text}");
        assert!(text.contains("invalid:"), "{language}: {text}");
        assert!(
            text.contains("is not a stepd:plugin/step component: no export `run` found"),
            "{language}: the missing export is named: {text}"
        );
    }
}

#[test]
fn given_plugin_new_for_each_language_when_built_then_it_passes_plugin_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = plugin_dir()
        .parent()
        .expect("dist lives in the plugin target")
        .to_owned();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust");
    let dist = dir.path().join("dist");
    // The shared plugin target (its toolchains are installed), as a path
    // relative to the directory the build runs from.
    let up = "../".repeat(dir.path().components().count() - 1);
    let relative_target = format!("{up}{}", path_str(&target).trim_start_matches('/'));
    for lang in ["rust", "python", "js"] {
        // A name of this run's own: the toolchains' cache keys hash the
        // files (which hold the name), so this build really runs the builders.
        let name = format!("hello-{lang}-{}", std::process::id());
        let scaffold = || {
            stepd_plugin(&[
                "new",
                &name,
                "--lang",
                lang,
                "--dir",
                path_str(dir.path()),
                "--sdk",
                path_str(&sdk),
            ])
        };
        let (code, text) = scaffold();
        assert_eq!(code, Some(0), "{lang}: {text}");
        assert!(
            text.contains(&format!("stepd plugin build {}", dir.path().join(&name).display())),
            "{text}"
        );
        assert!(dir.path().join(&name).join("job.json").is_file(), "{lang}");
        // Scaffolding over an existing plugin is refused; nothing is lost.
        let (code, text) = scaffold();
        assert_ne!(code, Some(0), "{lang}: {text}");
        assert!(text.contains("already exists"), "{lang}: {text}");

        // Relative paths, as a user types them, from the plugins' parent.
        let (code, text) = stepd_plugin_in(
            dir.path(),
            &["build", &name, "--out", "dist", "--target-dir", &relative_target],
        );
        assert_eq!(code, Some(0), "{lang}: {text}");
        let workspace = dir.path().join(format!("ws-{lang}"));
        let (code, text) = stepd_plugin(&[
            "run",
            &name,
            "--plugins",
            path_str(&dist),
            "--workspace",
            path_str(&workspace),
            "--input",
            r#"{"path": "hello.txt", "text": "hi"}"#,
        ]);
        assert_eq!(code, Some(0), "{lang}: {text}");
        assert!(text.contains("outcome: succeeded"), "{lang}: {text}");
        assert_eq!(
            std::fs::read_to_string(workspace.join("hello.txt")).expect("written"),
            "hi"
        );

        // The scaffold's test job runs it over its own directory.
        let data = dir.path().join(format!("data-{lang}"));
        let out = std::process::Command::new(stepd_bin())
            .arg("run")
            .arg(dir.path().join(&name).join("job.json"))
            .arg("--plugins")
            .arg(&dist)
            .arg("--artifacts")
            .arg(data.join("artifacts"))
            .arg("--work-dir")
            .arg(data.join("work"))
            .arg("--job-id")
            .arg("scaffold")
            .env(
                "STEPD_CACHE_DIR",
                std::env::temp_dir().join("stepd-test-component-cache"),
            )
            .env_remove("STEPD_CONFIG")
            .output()
            .expect("stepd run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(data.join("work/scaffold/workspace/hello.txt")).expect("the job wrote it"),
            format!("Hello from {name}\n")
        );
        for built in ["python", "javascript"].map(|l| target.join("toolchains/built").join(l)) {
            for ext in ["wasm", "key"] {
                let _ = std::fs::remove_file(built.join(format!("{name}.{ext}")));
            }
        }
    }
}

#[tokio::test]
async fn given_a_pool_of_four_slots_when_four_python_and_four_js_steps_run_at_once_then_every_one_gets_an_instance() {
    // Python components hold 14 core modules and 12 MiB of initial memory:
    // the pool's per-slot shares must fit a whole one in every slot. Eight
    // attempts on four slots: four wait for a slot, none fails for want of
    // one.
    let mut settings = test_settings();
    settings.pool_slots = 4;
    let runtime = Arc::new(Runtime::new(settings).expect("runtime"));
    let scratch = Scratch::new();
    let mut runs = Vec::new();
    for lang in LANGUAGES {
        let plugin = load(&runtime, &format!("{lang}-write-file"));
        for i in 0..4 {
            let (runtime, plugin, workspace) = (runtime.clone(), plugin.clone(), scratch.workspace());
            runs.push(async move {
                let report = attempt(
                    &runtime,
                    &plugin,
                    &workspace,
                    1,
                    json!({"hang": "spin", "path": format!("{lang}-{i}.txt"), "text": "x"}),
                    Duration::from_millis(1500),
                    Duration::from_secs(60),
                )
                .await;
                (lang, report)
            });
        }
    }
    let reports = futures_util::future::join_all(runs).await;
    assert_eq!(reports.len(), 8);
    for (lang, report) in reports {
        assert_eq!(
            report.outcome,
            AttemptOutcome::WallTimeout,
            "{lang}: {}",
            output_text(&report)
        );
    }
}
