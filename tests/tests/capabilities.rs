//! Declared capabilities, deny by default. Given the hostile plugin's
//! `grants` probe:
//! - with no grants, the step sees no variable and no mount;
//! - with a variable and a read-only mount, it sees the variable and reads
//!   the mount, while writes, `..` and a symlink planted in the host
//!   directory that points outside are all refused;
//! - through `stepd run`, a grant beyond the host's ceiling is exit 2
//!   naming the grant, a granted secret reaches the guest and no artifact,
//!   the attempt's event names what it was granted, and a `fromHost`
//!   variable the worker lacks fails the step naming it;
//! - through `stepd serve`, a repository of `/etc` or `file:///etc` and a
//!   grant beyond the ceiling (a mount, an HTTP origin) are 422s naming the
//!   setting, and a granted
//!   secret reaches the guest but no file, database row or log line, on
//!   both deployments.

use std::path::Path;

use serde_json::{json, Value};
use stepd_runtime::{AttemptGrants, AttemptOutcome, ReadOnlyMount};
use stepd_tests::cluster::{repo_dir, Cluster, Mode};
use stepd_tests::{attempt_with, files_holding, load, runtime, stepd_run, Scratch};

/// The probe's report for `inputs` under `grants`.
async fn probe(grants: AttemptGrants, inputs: Value) -> Value {
    let rt = runtime();
    let scratch = Scratch::new();
    let hostile = load(&rt, "hostile");
    let mut inputs = inputs;
    inputs["probe"] = json!("grants");
    let report = attempt_with(&rt, &hostile, &scratch.workspace(), inputs, grants).await;
    match report.outcome {
        AttemptOutcome::Succeeded { data: Some(data), .. } => serde_json::from_str(&data).expect("a JSON report"),
        other => panic!("the probe reports and succeeds, got {other}"),
    }
}

#[tokio::test]
async fn a_step_without_grants_sees_no_variable_and_no_mount() {
    std::env::set_var("STEPD_TEST_VISIBLE", "host-value");
    let report = probe(
        AttemptGrants::default(),
        json!({"env": ["STEPD_TEST_VISIBLE", "PATH"], "read": ["/specs/a.txt", "/etc/hostname"],
               "secrets": ["STEPD_TEST_VISIBLE"]}),
    )
    .await;
    let asked = &report["secrets"]["STEPD_TEST_VISIBLE"];
    assert_eq!(asked["ok"], false, "{report}");
    assert!(
        asked["detail"].as_str().unwrap_or_default().contains("was not granted"),
        "{report}"
    );
    assert_eq!(report["env"]["STEPD_TEST_VISIBLE"], Value::Null, "{report}");
    assert_eq!(report["all_env"], json!([]), "{report}");
    for path in ["/specs/a.txt", "/etc/hostname"] {
        assert_eq!(report["read"][path]["ok"], false, "{path}: {report}");
    }
}

#[tokio::test]
async fn a_read_only_mount_can_be_read_and_never_written_or_left() {
    let host = tempfile::tempdir().expect("tempdir");
    let specs = host.path().join("specs");
    std::fs::create_dir_all(specs.join("sub")).expect("mkdir");
    std::fs::write(specs.join("a.txt"), "spec a\n").expect("write");
    std::fs::write(host.path().join("beside.txt"), "not granted\n").expect("write");
    // Planted by whoever owns the directory: a way out, if it were followed.
    std::os::unix::fs::symlink("/etc", specs.join("out")).expect("symlink");
    std::os::unix::fs::symlink("../beside.txt", specs.join("up")).expect("symlink");
    let grants = AttemptGrants {
        env: vec![("LANG".into(), "C.UTF-8".into())],
        mounts: vec![ReadOnlyMount {
            host: specs.clone(),
            guest: "/specs".into(),
        }],
        ..AttemptGrants::default()
    };
    let report = probe(
        grants,
        json!({
            "env": ["LANG"],
            "read": ["/specs/a.txt", "/specs/../beside.txt", "/specs/out/hostname", "/specs/up"],
            "write": ["/specs/new.txt", "/specs/a.txt", "/specs/sub/x.txt"]
        }),
    )
    .await;
    assert_eq!(report["env"]["LANG"], "C.UTF-8", "{report}");
    assert_eq!(report["read"]["/specs/a.txt"]["detail"], "spec a\n", "{report}");
    for path in ["/specs/../beside.txt", "/specs/out/hostname", "/specs/up"] {
        assert_eq!(report["read"][path]["ok"], false, "{path} was read: {report}");
    }
    for path in ["/specs/new.txt", "/specs/a.txt", "/specs/sub/x.txt"] {
        assert_eq!(report["write"][path]["ok"], false, "{path} was written: {report}");
    }
    // The host directory is as it was.
    assert_eq!(std::fs::read_to_string(specs.join("a.txt")).expect("a"), "spec a\n");
    assert!(!specs.join("new.txt").exists() && !specs.join("sub/x.txt").exists());
}

/// A payload of one `grants` probe step with `capabilities`, written next
/// to a baseline directory.
fn job_file(dir: &Path, capabilities: Value, inputs: Value) -> std::path::PathBuf {
    let mut inputs = inputs;
    inputs["probe"] = json!("grants");
    let payload = json!({"type": "task", "maxAttempts": 1, "task": {
        "repository": repo_dir(),
        "steps": [{"id": "probe", "plugin": "hostile", "inputs": inputs, "capabilities": capabilities}]}});
    let file = dir.join("job.json");
    std::fs::write(&file, payload.to_string()).expect("job file");
    file
}

#[test]
fn stepd_run_holds_grants_to_the_ceiling_and_keeps_a_granted_secret_out_of_every_artifact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capabilities = json!({"env": {"GREETING": "hello", "COPIED": {"fromHost": "STEPD_TEST_HOST_VALUE"}},
                              "secrets": ["STEPD_TEST_API_KEY"]});
    let job = job_file(
        dir.path(),
        capabilities,
        json!({"env": ["GREETING", "COPIED", "STEPD_TEST_API_KEY"]}),
    );

    // Nothing granted: refused before anything runs, naming the grant.
    let (code, text) = stepd_run(&job, &dir.path().join("data0"), &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("capabilities.env.COPIED") && text.contains("STEPD_GRANT_ENV"),
        "{text}"
    );

    // Granted: the guest sees the values, and the secret is nowhere on disk.
    let secret = "sk-test-0123456789abcdef";
    let data = dir.path().join("data1");
    let granted = [
        ("STEPD_GRANT_ENV", "GREETING,COPIED"),
        ("STEPD_GRANT_SECRETS", "STEPD_TEST_API_KEY"),
        ("STEPD_TEST_HOST_VALUE", "copied-from-the-worker"),
        ("STEPD_TEST_API_KEY", secret),
    ];
    let (code, text) = stepd_run(&job, &data, &granted);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains(secret), "the secret was printed: {text}");
    let leaked = files_holding(&data, secret);
    assert!(leaked.is_empty(), "the secret is in {leaked:?}");
    // The guest printed every value it saw: the copied one is in its log,
    // the secret only as [REDACTED].
    let hits = files_holding(&data, "copied-from-the-worker");
    assert!(!hits.is_empty(), "the copied variable reached the guest and its log");
    assert!(
        !files_holding(&data, "[REDACTED]").is_empty(),
        "the secret was redacted in the log"
    );
    // The attempt's event records what it was granted, by name.
    let events = std::fs::read_to_string(
        stepd_tests::files_under(&data, &[])
            .keys()
            .find(|p| p.ends_with("events.jsonl"))
            .map(|p| data.join(p))
            .expect("events.jsonl"),
    )
    .expect("events");
    let finished: Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "task.step.attempt.finished")
        .expect("an attempt.finished event");
    assert_eq!(
        finished["payload"]["granted"],
        json!({"env": ["COPIED", "GREETING"], "secrets": ["STEPD_TEST_API_KEY"]}),
        "{finished}"
    );

    // A variable the worker does not have: the step fails naming it.
    let data = dir.path().join("data2");
    let (code, text) = stepd_run(&job, &data, &granted[..2]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("STEPD_TEST_HOST_VALUE"), "{text}");
    assert!(text.contains("deterministic_policy"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refuses_system_baselines_and_grants_beyond_its_ceiling() {
    let cluster = Cluster::start(Mode::Embedded, 0, 0).await;
    let submit = |payload: Value| {
        let request = cluster.request(reqwest::Method::POST, "/api/queue/jobs").json(&payload);
        async move {
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let step = json!({"id": "one", "plugin": "write-file", "inputs": {"path": "a", "text": "b"}});
    for repository in ["/etc", "file:///etc", "/root"] {
        let (status, body) = submit(json!({"type": "task", "task": {"repository": repository, "steps": [step]}})).await;
        assert_eq!(status, 422, "{repository}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("STEPD_BASELINE_ROOTS"),
            "{body}"
        );
    }
    let mut greedy = step.clone();
    greedy["capabilities"] = json!({"mounts": [{"host": "/etc", "guest": "/etc"}]});
    let (status, body) = submit(json!({"type": "task", "task": {"repository": repo_dir(), "steps": [greedy]}})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("STEPD_MOUNT_ROOTS"),
        "{body}"
    );
    let mut caller = step.clone();
    caller["capabilities"] = json!({"http": {"origins": ["https://api.example.com"]}});
    let (status, body) = submit(json!({"type": "task", "task": {"repository": repo_dir(), "steps": [caller]}})).await;
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("https://api.example.com") && message.contains("STEPD_GRANT_HTTP_ORIGINS"),
        "{body}"
    );
    let mut unknown = step.clone();
    unknown["capabilities"] = json!({"network": "all"});
    let (status, body) = submit(json!({"type": "task", "task": {"repository": repo_dir(), "steps": [unknown]}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains("network"),
        "{body}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_secret_reaches_the_guest_on_a_server_and_no_row_file_or_log_line() {
    let secret = "sk-served-9f8e7d6c5b4a3210";
    for mode in Mode::BOTH {
        let cluster = Cluster::start_with(
            mode,
            1,
            0,
            &[
                ("STEPD_GRANT_SECRETS", "STEPD_TEST_SERVED_KEY"),
                ("STEPD_TEST_SERVED_KEY", secret),
            ],
        )
        .await;
        let step = json!({"id": "probe", "plugin": "hostile",
            "inputs": {"probe": "grants", "env": ["STEPD_TEST_SERVED_KEY"]},
            "capabilities": {"secrets": ["STEPD_TEST_SERVED_KEY"]}});
        let id = cluster
            .submit(&json!({"type": "task", "task": {"repository": repo_dir(), "steps": [step]}}))
            .await;
        cluster
            .wait_status(&id, "succeeded", std::time::Duration::from_secs(60))
            .await;
        // The guest printed the value it saw: its log holds it redacted.
        let log = cluster.artifact_text(&id, "logs/steps/step-0000.log").await;
        assert!(log.contains("STEPD_TEST_SERVED_KEY\":\"[REDACTED]"), "{mode:?}: {log}");
        // Nowhere on disk (the SQLite store, artifacts, workspaces), in no
        // database row and in no log line.
        let leaked = files_holding(cluster.dir(), secret);
        assert!(leaked.is_empty(), "{mode:?}: the secret is in {leaked:?}");
        assert!(!cluster.server.log().contains(secret), "{mode:?}: the server logged it");
        let (holding, read) = cluster.tables_holding(secret).await;
        assert!(holding.is_empty(), "{mode:?}: rows of {holding:?} hold it");
        if mode == Mode::Scale {
            assert!(read >= 5, "{mode:?}: only {read} tables read");
        }
        cluster.shutdown().await;
    }
}
