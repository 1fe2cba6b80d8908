//! Scenarios of `stepd run` on the shipped samples and on bad payloads: the
//! exit code says how the job ended, artifacts land where the flags say,
//! and a payload that does not validate runs nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stepd_tests::{plugin_dir, stepd_bin};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

fn run(job: &Path, dir: &Path, job_id: &str) -> Output {
    Command::new(stepd_bin())
        .args(["run", job.to_str().expect("utf-8"), "--job-id", job_id])
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .arg("--work-dir")
        .arg(dir.join("work"))
        .env("STEPD_PLUGIN_DIR", plugin_dir())
        .env(
            "STEPD_CACHE_DIR",
            std::env::temp_dir().join("stepd-test-component-cache"),
        )
        .env("STEPD_RETRY_BACKOFF_SECONDS", "0")
        .env_remove("STATSD_HOST")
        .output()
        .expect("running stepd")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_hang_sample_heals_and_exits_zero_with_its_artifacts_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&samples().join("self-heal-hang.json"), dir.path(), "hang");
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("step warm-up attempt 1 failed: idle_timeout (transient_runtime)"),
        "{printed}"
    );
    assert!(printed.contains("self-heal: soft_reset for step warm-up"), "{printed}");
    assert!(printed.contains("job succeeded"), "{printed}");
    assert!(!printed.contains("\x1b["), "no colour when stdout is not a terminal");
    let job = dir.path().join("artifacts/agent_jobs/hang");
    for artifact in [
        "state/self_heal/attempt-0000-0001.json",
        "state/steps/step-0000.json",
        "state/steps/step-0001.json",
        "patches/steps/step-0001.patch",
        "logs/steps/step-0000.log",
        "events.jsonl",
    ] {
        assert!(job.join(artifact).is_file(), "{artifact} missing");
    }
    let guide = std::fs::read_to_string(dir.path().join("work/hang/workspace/CONTRIBUTING.md")).expect("guide");
    assert!(guide.starts_with("# Contributing"));
    // The baseline's files are there too, and no git metadata.
    assert!(dir.path().join("work/hang/workspace/README.md").is_file());
    assert!(!dir.path().join("work/hang/workspace/.git").exists());
}

#[test]
fn a_job_id_that_already_ran_is_refused_rather_than_mixed_into_its_audit_trail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&samples().join("speckit.json"), dir.path(), "twice");
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&samples().join("speckit.json"), dir.path(), "twice");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("job twice already has artifacts"), "{}", text(&out));
}

#[test]
fn the_speckit_and_flaky_samples_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&samples().join("speckit.json"), dir.path(), "speckit");
    assert!(out.status.success(), "{}", text(&out));
    let ws = dir.path().join("work/speckit/workspace");
    for doc in [
        "specs/greeting/spec.md",
        "specs/greeting/plan.md",
        "specs/greeting/tasks.md",
        "src/greet.txt",
    ] {
        assert!(ws.join(doc).is_file(), "{doc} missing");
    }
    let out = run(&samples().join("flaky.json"), dir.path(), "flaky");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("self-heal: soft_reset").count(), 2, "{}", text(&out));
}

#[test]
fn the_no_progress_sample_is_dead_lettered_with_exit_code_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&samples().join("self-heal-no-progress.json"), dir.path(), "stuck");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("self-heal: hard_reset for step lint (stuck_no_progress)"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_deterministic_failure_exits_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("repo")).expect("repo");
    let job = dir.path().join("job.json");
    std::fs::write(
        &job,
        r#"{"type": "task", "task": {"repository": "repo", "steps": [{"plugin": "write-file", "inputs": {}}]}}"#,
    )
    .expect("write job");
    let out = run(&job, dir.path(), "bad-step");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("job failed (deterministic_contract)"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_invalid_payload_exits_two_naming_the_field_and_runs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("repo")).expect("repo");
    for (payload, expected) in [
        (
            r#"{"type": "task", "task": {"repository": "repo", "steps": [{"plugin": "no-such-plugin"}]}}"#,
            "task.steps[0].plugin: unknown plugin \"no-such-plugin\"",
        ),
        (
            r#"{"type": "task", "task": {"repository": "repo", "steps": [{"id": "a", "plugin": "write-file"}, {"id": "a", "plugin": "write-file"}]}}"#,
            "task.steps[1].id: duplicate step id",
        ),
        (
            r#"{"type": "task", "task": {"steps": [{"plugin": "write-file"}]}}"#,
            "task.repository: is required",
        ),
        (
            r#"{"type": "task", "task": {"repository": "repo", "steps": [{"plugin": "write-file"}], "selfHeal": {"stepMaxAttempts": 0}}}"#,
            "task.selfHeal.stepMaxAttempts",
        ),
        (r#"{"type": "task", "task": "#, "invalid job payload"),
    ] {
        let job = dir.path().join("job.json");
        std::fs::write(&job, payload).expect("write job");
        let out = run(&job, dir.path(), "invalid");
        assert_eq!(out.status.code(), Some(2), "{payload}: {}", text(&out));
        assert!(text(&out).contains(expected), "{payload}: {}", text(&out));
        assert!(
            !dir.path().join("artifacts/agent_jobs/invalid").exists(),
            "nothing ran for {payload}"
        );
    }
}

/// The README's main job: `stepd serve --run` submits the sample through the
/// HTTP API to the embedded worker, follows its events, and exits with the
/// job's status; everything lands in the data directory.
#[test]
fn serve_run_heals_the_hang_sample_through_the_api_on_the_embedded_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Started in the project's root, as the README runs it: the sample's
    // repository is inside the directory the server serves baselines from.
    let out = Command::new(stepd_bin())
        .current_dir(samples().join(".."))
        .args(["serve", "--listen", "127.0.0.1:0", "--run"])
        .arg(samples().join("self-heal-hang.json"))
        .arg("--data-dir")
        .arg(&data)
        .env("STEPD_PLUGIN_DIR", plugin_dir())
        .env(
            "STEPD_CACHE_DIR",
            std::env::temp_dir().join("stepd-test-component-cache"),
        )
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("STEPD_OPERATOR_TOKENS")
        .env_remove("STATSD_HOST")
        .output()
        .expect("running stepd serve");
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("generated an operator token in"), "{printed}");
    assert!(printed.contains("self-heal: soft_reset for step warm-up"), "{printed}");
    assert!(printed.contains("status: succeeded"), "{printed}");
    assert!(
        data.join("stepd.db").is_file(),
        "the SQLite store is in the data directory"
    );
    let token = std::fs::read_to_string(data.join("operator.token")).expect("token file");
    assert!(token.trim().len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("operator.token"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the token file is private");
    }
    let workspace = printed
        .lines()
        .find_map(|l| l.strip_prefix("workspace: "))
        .expect("workspace line");
    let guide = std::fs::read_to_string(Path::new(workspace).join("CONTRIBUTING.md")).expect("guide");
    assert!(guide.starts_with("# Contributing"));
}
