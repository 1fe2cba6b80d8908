//! Operating stepd as a service: given a `stepd serve` with no workers of
//! its own and a separate `stepd worker` with a probe listener,
//! - when a job's first attempt goes idle and self-heal soft-resets it,
//!   then the worker's `/metrics` counts the failed attempt, the idle
//!   timeout, the recovery and two step durations, and both processes'
//!   `/metrics` show the job succeeded and nothing queued; `/readyz` and
//!   `/healthz` answer on both;
//! - with `STEPD_LOG_FORMAT=json`, every log line is one JSON object, the
//!   lines inside a job carry its job id and step id, a request line names
//!   the route, the status and the caller's label, and a granted secret
//!   the step printed appears in no line.

use std::time::Duration;

use serde_json::{json, Value};
use stepd_tests::cluster::{repo_dir, task, Cluster, Mode};

const LONG: Duration = Duration::from_secs(90);

async fn get_text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the listener answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The value of the sample line that starts with `series` (name and
/// labels, exactly as encoded).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_on_serve_and_on_a_separate_worker_count_a_soft_reset() {
    let mut cluster = Cluster::start_with(Mode::Embedded, 0, 0, &[("STEPD_METRICS_LISTEN", "127.0.0.1:0")]).await;
    let worker = cluster.spawn_worker();
    let line = cluster.workers[worker].wait_for_log("stepd worker metrics on http://", LONG);
    let probes = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the probe address")
        .to_owned();
    let step = json!({"id": "warm", "title": "silent once", "plugin": "idle", "inputs": {"attempts": [1]}});
    let id = cluster
        .submit(&task(
            1,
            vec![step],
            json!({"stepIdleTimeoutSeconds": 1, "stepMaxAttempts": 3}),
        ))
        .await;
    cluster.wait_status(&id, "succeeded", LONG).await;

    let (status, worker_metrics) = get_text(&format!("{probes}/metrics")).await;
    assert_eq!(status, 200, "{worker_metrics}");
    for (series, value) in [
        (
            r#"task_self_heal_attempts_total{step="warm",class="transient_runtime",strategy="soft_reset",outcome="idle_timeout"}"#,
            1.0,
        ),
        (r#"task_step_idle_timeout_total{step="warm"}"#, 1.0),
        (
            r#"task_self_heal_recovered_total{step="warm",class="transient_runtime",strategy="soft_reset"}"#,
            1.0,
        ),
        (r#"task_step_duration_seconds_count{step="warm"}"#, 2.0),
        (r#"stepd_jobs{status="succeeded"}"#, 1.0),
        ("stepd_queue_depth", 0.0),
        ("stepd_running_attempts", 0.0),
    ] {
        assert_eq!(
            sample(&worker_metrics, series),
            Some(value),
            "{series}:\n{worker_metrics}"
        );
    }
    let (status, served) = get_text(&format!("{}/metrics", cluster.url)).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(
        sample(&served, r#"stepd_jobs{status="succeeded"}"#),
        Some(1.0),
        "{served}"
    );
    assert_eq!(sample(&served, "stepd_queue_depth"), Some(0.0), "{served}");

    for url in [
        format!("{probes}/healthz"),
        format!("{probes}/readyz"),
        format!("{}/readyz", cluster.url),
    ] {
        let (status, body) = get_text(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_job_and_step_ids_and_never_a_secret() {
    let secret = "sk-logged-never-5e6f7a8b9c0d";
    let cluster = Cluster::start_with(
        Mode::Embedded,
        1,
        0,
        &[
            ("STEPD_LOG_FORMAT", "json"),
            ("STEPD_LOG", "info"),
            ("STEPD_GRANT_SECRETS", "STEPD_TEST_LOGGED_KEY"),
            ("STEPD_TEST_LOGGED_KEY", secret),
        ],
    )
    .await;
    let step = json!({"id": "probe", "plugin": "hostile",
        "inputs": {"probe": "grants", "env": ["STEPD_TEST_LOGGED_KEY"]},
        "capabilities": {"secrets": ["STEPD_TEST_LOGGED_KEY"]}});
    let id = cluster
        .submit(&json!({"type": "task", "task": {"repository": repo_dir(), "steps": [step]}}))
        .await;
    cluster.wait_status(&id, "succeeded", LONG).await;
    let log = cluster.server.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}")))
        .collect();
    assert!(!log.contains(secret), "a log line holds the secret");
    let in_step = lines
        .iter()
        .find(|l| {
            let spans = l["spans"].as_array().cloned().unwrap_or_default();
            spans.iter().any(|s| s["job"] == json!(id)) && spans.iter().any(|s| s["step"] == "probe")
        })
        .unwrap_or_else(|| panic!("no line inside the step carries the job and step ids:\n{log}"));
    assert_eq!(in_step["level"], "INFO", "{in_step}");
    let request = lines
        .iter()
        .find(|l| l["message"] == "answered" && l["span"]["route"] == "/api/queue/jobs")
        .unwrap_or_else(|| panic!("no request line for the submit:\n{log}"));
    assert_eq!(request["span"]["caller"], "operator-1", "{request}");
    assert!(
        request["status"].as_u64().is_some() && request["latency_ms"].as_f64().is_some(),
        "{request}"
    );
    cluster.shutdown().await;
}

#[test]
fn the_example_settings_file_loads_and_stepd_config_names_sources_without_passwords() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../stepd.example.toml");
    let text = std::fs::read_to_string(&example).expect("stepd.example.toml");
    // Every setting is in the example, set or commented out.
    for key in stepd_settings::SETTING_KEYS {
        assert!(
            text.contains(&format!("\n{} = ", key.key)) || text.contains(&format!("\n# {} = ", key.key)),
            "{}.{} is missing from the example",
            key.section,
            key.key
        );
    }
    let mut command = std::process::Command::new(stepd_tests::stepd_bin());
    command
        .args(["config", "--json", "--config"])
        .arg(&example)
        .env(
            "DATABASE_URL",
            "postgres://u:hunter2@db.internal/stepd?password=hunter3&sslmode=require",
        )
        .env("STEPD_OPERATOR_TOKENS", "op-secret-token")
        .env("STEPD_LEASE_SECONDS", "60");
    for (name, _) in std::env::vars() {
        if name.starts_with("STEP") && name != "STEPD_LEASE_SECONDS" && name != "STEPD_OPERATOR_TOKENS" {
            command.env_remove(name);
        }
    }
    let out = command.output().expect("stepd config");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in ["hunter2", "hunter3", "op-secret-token"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    let all: Vec<Value> = serde_json::from_str(&printed).expect("JSON");
    let find = |variable: &str| {
        all.iter()
            .find(|e| e["variable"] == variable)
            .unwrap_or_else(|| panic!("{variable} not listed"))
            .clone()
    };
    assert_eq!(find("STEPD_LEASE_SECONDS")["source"], "environment");
    assert_eq!(find("STEPD_LEASE_SECONDS")["value"], "60");
    assert_eq!(find("STEPD_MEMORY_MB")["source"], "file");
    assert_eq!(find("STEPD_LOG_FORMAT")["source"], "file");
    assert_eq!(find("STEPD_GRANT_ENV")["source"], "unset");
    let url = find("DATABASE_URL")["value"].as_str().unwrap_or_default().to_owned();
    assert!(url.contains("sslmode=require") && url.contains("db.internal"), "{url}");
    assert_eq!(find("STEPD_OPERATOR_TOKENS")["value"], "1 token(s)");
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.is_file(),
        "systemd-analyze is missing: install Debian's systemd package (scripts/test does)"
    );
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut units = Vec::new();
    for name in ["stepd-serve.service", "stepd-worker.service"] {
        let text = std::fs::read_to_string(deploy.join(name)).expect("a unit");
        for hardening in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=",
            "LimitNOFILE=",
        ] {
            assert!(text.contains(hardening), "{name} lacks {hardening}");
        }
        // The unit names the installed binary; verify checks that it
        // exists, so point it at this build's.
        let unit = dir.path().join(name);
        let bin = stepd_tests::stepd_bin();
        std::fs::write(&unit, text.replace("/usr/local/bin/stepd", &bin.display().to_string())).expect("write");
        units.push(unit);
    }
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && printed.trim().is_empty(), "{printed}");
}

/// A tokens file with `alice` (operator) and `host-b` (worker), mode `mode`.
fn tokens_file(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        "[[operator]]\nname = \"alice\"\ntoken = \"alice-token-0123456789\"\n\n\
         [[worker]]\nname = \"host-b\"\ntoken = \"host-b-token-0123456789\"\n",
    )
    .expect("write the tokens file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_file_names_who_acted_and_a_readable_one_stops_the_server() {
    // Given a private tokens file next to the environment's tokens,
    let dir = tempfile::tempdir().expect("dir");
    let file = tokens_file(dir.path(), 0o600);
    let file_text = file.display().to_string();
    let cluster = Cluster::start_with(Mode::Embedded, 1, 0, &[("STEPD_TOKENS_FILE", &file_text)]).await;
    let id = cluster
        .submit(&task(
            1,
            vec![json!({"id": "slow", "plugin": "write-file",
                        "inputs": {"path": "a.txt", "text": "a", "sleepMs": 1500}})],
            json!({}),
        ))
        .await;
    cluster.wait_status(&id, "running", LONG).await;
    // when alice pauses and resumes the job with her token,
    let http = reqwest::Client::new();
    for action in ["pause", "resume"] {
        let response = http
            .post(format!("{}/api/task-runs/{id}/control", cluster.url))
            .bearer_auth("alice-token-0123456789")
            .json(&json!({"action": action}))
            .send()
            .await
            .expect("control");
        assert_eq!(response.status().as_u16(), 200, "{action}");
    }
    // then the control events name her, not a token; the worker's token
    // of the file is a worker's (403 on an operator route).
    let job = cluster.job(&id).await;
    let by: Vec<&str> = job["controlEvents"]
        .as_array()
        .expect("control events")
        .iter()
        .map(|e| e["requestedBy"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(by, ["alice", "alice"], "{job}");
    let worker = http
        .get(format!("{}/api/queue/jobs", cluster.url))
        .bearer_auth("host-b-token-0123456789")
        .send()
        .await
        .expect("list");
    assert_eq!(worker.status().as_u16(), 403);
    cluster.wait_status(&id, "succeeded", LONG).await;
    cluster.shutdown().await;

    // Given the same file readable by others, `stepd serve` refuses to
    // start, naming the file and the fix, never a token.
    let readable = tokens_file(dir.path(), 0o644);
    let output = std::process::Command::new(stepd_tests::stepd_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tokens-file")
        .arg(&readable)
        .env_remove("STEPD_OPERATOR_TOKENS")
        .output()
        .expect("run stepd serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("chmod 600") && stderr.contains("tokens.toml"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("alice-token") && !stderr.contains("host-b-token"),
        "{stderr}"
    );
}
