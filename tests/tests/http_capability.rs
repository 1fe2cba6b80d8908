//! Outbound HTTP, declared and enforced, against real servers on loopback:
//! - a step granted no HTTP is denied every request — a loopback server,
//!   `localhost`, `[::1]`, the cloud metadata address, a public API — and
//!   the server never sees a connection;
//! - a grant lets its origin through and nothing else: a granted name that
//!   resolves to loopback, a redirect to an origin not granted, a method
//!   not granted, a body over either limit and a request past the count
//!   are each refused, and the attempt's log records every one;
//! - `model-call`, through `stepd run`, over HTTP and over HTTPS with a
//!   test CA: the answer lands in the workspace, the bearer secret reached
//!   the server and no artifact, log line or metric, and the attempt's
//!   event and metrics record the request; an origin beyond the host's
//!   ceiling is exit 2 naming the setting;
//! - a server that accepts and never answers: the idle deadline stops the
//!   step, self-heal soft-resets it, and the retry succeeds;
//! - a server that trickles its answer slower than the idle deadline keeps
//!   the step alive (response bytes are activity), unless
//!   `STEPD_HTTP_BYTES_ARE_ACTIVITY` is off.

use std::path::Path;

use serde_json::{json, Value};
use stepd_runtime::{AttemptGrants, AttemptOutcome, HttpGrant};
use stepd_settings::HttpOrigin;
use stepd_tests::cluster::repo_dir;
use stepd_tests::http_server::{Behaviour, TestCa, TestServer};
use stepd_tests::{attempt_with, files_holding, load, runtime, stepd_run, Scratch, StatsdListener};

/// The hostile plugin's `http` probe of `requests` under `grants`: its
/// report and the attempt's HTTP log.
async fn probe(grants: AttemptGrants, requests: Value) -> (Vec<Value>, stepd_runtime::HttpLog) {
    let rt = runtime();
    let scratch = Scratch::new();
    let hostile = load(&rt, "hostile");
    let inputs = json!({"probe": "http", "requests": requests});
    let report = attempt_with(&rt, &hostile, &scratch.workspace(), inputs, grants).await;
    match report.outcome {
        AttemptOutcome::Succeeded { data: Some(data), .. } => {
            let answers: Vec<Value> = serde_json::from_str(&data).expect("a JSON report");
            (answers, report.http)
        }
        other => panic!("the probe reports and succeeds, got {other}"),
    }
}

fn origin(text: &str) -> HttpOrigin {
    HttpOrigin::parse(text).expect("an origin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_granted_no_http_is_denied_every_request_and_no_server_sees_one() {
    let server = TestServer::http(Behaviour::Chat { answer: "hi".into() }).await;
    let port = server.addr.port();
    let urls = [
        format!("http://127.0.0.1:{port}/v1/chat"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "https://api.openai.com/v1/models".to_owned(),
    ];
    let requests: Vec<Value> = urls.iter().map(|u| json!({"url": u})).collect();
    let (answers, log) = probe(AttemptGrants::default(), json!(requests)).await;
    for (url, answer) in urls.iter().zip(&answers) {
        assert_eq!(answer["ok"], false, "{url}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap_or_default().contains("denied"),
            "{url}: {answer}"
        );
    }
    assert_eq!(server.connections(), 0, "the server saw a connection");
    assert_eq!(log.exchanges.len(), urls.len(), "{log:?}");
    assert!(
        log.exchanges
            .iter()
            .all(|e| e.denied.as_deref() == Some("this step is granted no HTTP")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lets_its_origin_through_and_refuses_rebinding_redirects_methods_and_limits() {
    let chat = TestServer::http(Behaviour::Chat { answer: "fine".into() }).await;
    let elsewhere = TestServer::http(Behaviour::Chat { answer: "leak".into() }).await;
    let redirect = TestServer::http(Behaviour::Redirect {
        location: format!("{}/steal", elsewhere.origin(false)),
    })
    .await;
    let big = TestServer::http(Behaviour::Big { bytes: 64 << 10 }).await;
    let granted = [
        chat.origin(false),
        redirect.origin(false),
        big.origin(false),
        // Granted by name, but the name resolves to loopback.
        format!("http://localhost:{}", chat.addr.port()),
    ];
    let grants = AttemptGrants {
        http: Some(HttpGrant {
            origins: granted.iter().map(|o| origin(o)).collect(),
            methods: vec!["GET".into(), "POST".into()],
            path_prefixes: Vec::new(),
            max_requests: 8,
            max_request_bytes: 1024,
            max_response_bytes: 4096,
        }),
        ..AttemptGrants::default()
    };
    let c = chat.origin(false);
    let requests = json!([
        {"url": format!("{c}/v1/chat?key=never-logged"), "method": "POST", "bodyBytes": 100},
        {"url": format!("http://localhost:{}/v1/chat", chat.addr.port())},
        {"url": format!("{}/start", redirect.origin(false)), "follow": true},
        {"url": format!("{}/big", big.origin(false))},
        {"url": format!("{c}/upload"), "method": "POST", "bodyBytes": 5000},
        {"url": format!("{c}/v1/chat"), "method": "DELETE"},
        {"url": format!("{c}/seventh")},
        {"url": format!("{c}/ninth")},
    ]);
    let (answers, log) = probe(grants, requests).await;
    assert_eq!(answers[0]["ok"], true, "{answers:?}");
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    for (i, why) in [
        (1, "denied"),
        (2, "denied"),
        (3, "HTTP request failed"),
        (4, "HTTP request failed"),
        (5, "denied"),
        (7, "denied"),
    ] {
        assert_eq!(answers[i]["ok"], false, "request {i}: {answers:?}");
        assert!(
            answers[i]["detail"].as_str().unwrap_or_default().contains(why),
            "request {i}: {answers:?}"
        );
    }
    assert_eq!(
        answers[6]["status"], 200,
        "the eighth request is within the count: {answers:?}"
    );
    assert_eq!(elsewhere.connections(), 0, "the redirect reached an origin not granted");
    // The log: every request in order, no query, each refusal with its reason.
    let e = &log.exchanges;
    assert_eq!(e.len(), 9, "{e:?}");
    assert_eq!(
        (
            e[0].method.as_str(),
            e[0].path.as_str(),
            e[0].status,
            e[0].request_bytes
        ),
        ("POST", "/v1/chat", Some(200), 100),
        "{e:?}"
    );
    assert!(e[0].response_bytes > 0 && e[0].denied.is_none(), "{e:?}");
    let reasons: Vec<String> = e.iter().map(|x| x.denied.clone().unwrap_or_default()).collect();
    assert!(reasons[1].contains("private address"), "{reasons:?}");
    assert_eq!(e[2].status, Some(302), "{e:?}");
    assert!(reasons[3].contains("not a granted origin"), "{reasons:?}");
    assert!(
        e[4].error.as_deref().unwrap_or_default().contains("4096"),
        "the big answer is cut at the limit: {e:?}"
    );
    assert!(e[4].response_bytes <= 64 << 10, "{e:?}");
    assert!(
        e[5].error.as_deref().unwrap_or_default().contains("1024"),
        "the big upload is cut at the limit: {e:?}"
    );
    assert!(reasons[6].contains("not a granted method"), "{reasons:?}");
    assert!(reasons[8].contains("limit of 8 requests"), "{reasons:?}");
    let log_text = format!("{e:?}");
    assert!(
        !log_text.contains("never-logged"),
        "a query reached the log: {log_text}"
    );
}

/// A payload of one `model-call` step asking `origin`.
fn model_call_job(dir: &Path, origin: &str) -> std::path::PathBuf {
    let payload = json!({"type": "task", "maxAttempts": 1, "task": {
        "repository": repo_dir(),
        "steps": [{"id": "ask", "plugin": "model-call",
            "inputs": {"url": format!("{origin}/v1/chat/completions"), "model": "test-model",
                       "prompt": "Say fine.", "output": "answers/fine.md", "keySecret": "STEPD_TEST_MODEL_KEY"},
            "capabilities": {"secrets": ["STEPD_TEST_MODEL_KEY"],
                             "http": {"origins": [origin], "methods": ["POST"], "pathPrefixes": ["/v1/"]}}}]}});
    let file = dir.join("job.json");
    std::fs::write(&file, payload.to_string()).expect("job file");
    file
}

/// The step logs `stepd run` wrote under `data`, for failure messages.
fn step_logs(data: &Path) -> String {
    stepd_tests::files_under(data, &[])
        .into_iter()
        .filter(|(path, _)| path.contains("logs/steps/"))
        .map(|(path, bytes)| format!("{path}:\n{}", String::from_utf8_lossy(&bytes)))
        .collect()
}

/// The events of the one job `stepd run` wrote under `data`.
fn events(data: &Path) -> Vec<Value> {
    let path = stepd_tests::files_under(data, &[])
        .into_keys()
        .find(|p| p.ends_with("events.jsonl"))
        .expect("events.jsonl");
    std::fs::read_to_string(data.join(path))
        .expect("events")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_call_over_http_and_https_answers_into_the_workspace_and_keeps_its_key_secret() {
    let ca = TestCa::new();
    let secret = "sk-model-0f1e2d3c4b5a69788796";
    for https in [false, true] {
        let answer = format!("fine over {}", if https { "https" } else { "http" });
        let behaviour = Behaviour::Chat { answer: answer.clone() };
        let server = if https {
            TestServer::https(behaviour, &ca).await
        } else {
            TestServer::http(behaviour).await
        };
        let origin = server.origin(https);
        let dir = tempfile::tempdir().expect("tempdir");
        let job = model_call_job(dir.path(), &origin);

        // The origin is beyond this host's ceiling: refused before anything runs.
        let (code, text) = stepd_run(
            &job,
            &dir.path().join("refused"),
            &[("STEPD_GRANT_SECRETS", "STEPD_TEST_MODEL_KEY")],
        );
        assert_eq!(code, Some(2), "{text}");
        assert!(
            text.contains("http.origins[0]") && text.contains("STEPD_GRANT_HTTP_ORIGINS"),
            "{text}"
        );
        assert_eq!(server.connections(), 0);

        let statsd = StatsdListener::bind();
        let target = statsd.target();
        let port = target.port.to_string();
        let ca_path = ca.pem().display().to_string();
        let mut env = vec![
            ("STEPD_GRANT_SECRETS", "STEPD_TEST_MODEL_KEY"),
            ("STEPD_GRANT_HTTP_ORIGINS", origin.as_str()),
            ("STEPD_TEST_MODEL_KEY", secret),
            ("STATSD_HOST", "127.0.0.1"),
            ("STATSD_PORT", port.as_str()),
        ];
        if https {
            env.push(("STEPD_HTTP_EXTRA_CA", ca_path.as_str()));
        }
        let data = dir.path().join("data");
        let (code, text) = stepd_run(&job, &data, &env);
        assert_eq!(code, Some(0), "https={https}: {text}\n{}", step_logs(&data));

        // The server got the question with the bearer key.
        let received = server.received();
        assert_eq!(received.len(), 1, "{received:?}");
        let auth = format!("Bearer {secret}");
        assert_eq!(received[0].header("authorization"), Some(auth.as_str()));
        assert_eq!(
            (received[0].method.as_str(), received[0].target.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert!(received[0].body.contains("Say fine."), "{:?}", received[0]);

        // The answer is in the step's patch; the key is nowhere on disk,
        // in no output and in no metric.
        assert!(
            !files_holding(&data, &answer).is_empty(),
            "the answer reached the workspace"
        );
        assert!(files_holding(&data, secret).is_empty(), "the key is on disk");
        assert!(!text.contains(secret), "the key was printed");
        let metrics = statsd.lines();
        assert!(metrics.iter().all(|l| !l.contains(secret)), "{metrics:?}");
        let request_metric = metrics
            .iter()
            .find(|l| l.starts_with("task.step.http.requests_total"))
            .unwrap_or_else(|| panic!("no request metric in {metrics:?}"));
        assert!(
            request_metric.contains("status:200") && request_metric.contains(&format!("origin:{origin}")),
            "{request_metric}"
        );

        // The attempt's event records the grant and the request.
        let finished = events(&data)
            .into_iter()
            .find(|e| e["event"] == "task.step.attempt.finished")
            .expect("an attempt.finished event");
        let granted = &finished["payload"]["granted"];
        assert_eq!(granted["httpOrigins"], json!([origin]), "{granted}");
        assert_eq!(granted["secrets"], json!(["STEPD_TEST_MODEL_KEY"]), "{granted}");
        let request = &granted["http"][0];
        assert_eq!(
            (
                &request["method"],
                &request["origin"],
                &request["path"],
                &request["status"]
            ),
            (
                &json!("POST"),
                &json!(origin),
                &json!("/v1/chat/completions"),
                &json!(200)
            ),
            "{granted}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_stopped_by_the_idle_deadline_and_the_soft_reset_succeeds() {
    let server = TestServer::http(Behaviour::SilentFirst {
        silent: 1,
        answer: "second time lucky".into(),
    })
    .await;
    let origin = server.origin(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let job = model_call_job(dir.path(), &origin);
    let data = dir.path().join("data");
    let (code, text) = stepd_run(
        &job,
        &data,
        &[
            ("STEPD_GRANT_SECRETS", "STEPD_TEST_MODEL_KEY"),
            ("STEPD_GRANT_HTTP_ORIGINS", origin.as_str()),
            ("STEPD_TEST_MODEL_KEY", "sk-idle-test"),
            ("STEP_IDLE_TIMEOUT_SECONDS", "1"),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(server.connections(), 2, "one silent connection, one answered");
    let events = events(&data);
    let failed = events
        .iter()
        .find(|e| e["event"] == "task.step.attempt.failed")
        .expect("the silent attempt failed");
    assert_eq!(failed["payload"]["outcome"], "idle_timeout", "{failed}");
    assert_eq!(failed["payload"]["strategy"], "soft_reset", "{failed}");
    let ran = failed["payload"]["wallClockSeconds"].as_f64().unwrap_or_default();
    assert!((1.0..2.5).contains(&ran), "stopped {ran} s in, for a 1 s idle deadline");
    // The stopped request is in the failed attempt's record, with no status.
    let stopped = &failed["payload"]["granted"]["http"][0];
    assert_eq!(stopped["status"], Value::Null, "{failed}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "task.step.attempt.finished" && e["payload"]["attempt"] == 2),
        "the second attempt succeeded"
    );
    assert!(!files_holding(&data, "second time lucky").is_empty());
}

#[test]
fn the_model_call_sample_without_its_grants_is_refused_naming_them() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/model-call.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, text) = stepd_run(&sample, dir.path(), &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("STEPD_GRANT_SECRETS"), "{text}");
    let (code, text) = stepd_run(&sample, dir.path(), &[("STEPD_GRANT_SECRETS", "OPENAI_API_KEY")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("https://api.openai.com") && text.contains("STEPD_GRANT_HTTP_ORIGINS"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bytes_keep_a_step_alive_unless_the_setting_says_they_are_not_activity() {
    // Eight bytes 250 ms apart: two seconds of answer, never silent for
    // the 700 ms idle deadline.
    let server = TestServer::http(Behaviour::Trickle {
        bytes: 8,
        every_ms: 250,
    })
    .await;
    for bytes_are_activity in [true, false] {
        let rt = stepd_runtime::Runtime::new(stepd_runtime_settings(bytes_are_activity)).expect("runtime");
        let hostile = load(&rt, "hostile");
        let scratch = Scratch::new();
        let request = stepd_runtime::AttemptRequest {
            workspace: scratch.workspace(),
            context: stepd_tests::context(
                1,
                json!({"probe": "http", "requests": [{"url": format!("{}/stream", server.origin(false))}]}),
            ),
            limits: stepd_runtime::AttemptLimits::new(
                std::time::Duration::from_secs(30),
                std::time::Duration::from_millis(700),
            ),
            cancel: stepd_runtime::CancellationToken::new(),
            grants: AttemptGrants {
                http: Some(HttpGrant {
                    origins: vec![origin(&server.origin(false))],
                    methods: Vec::new(),
                    path_prefixes: Vec::new(),
                    max_requests: 1,
                    max_request_bytes: 1024,
                    max_response_bytes: 1024,
                }),
                ..AttemptGrants::default()
            },
        };
        let report = rt.run_attempt(&hostile, request).await.expect("the attempt runs");
        if bytes_are_activity {
            assert!(
                report.outcome.is_success(),
                "a streaming answer is work: {}",
                report.outcome
            );
            assert_eq!(report.http.exchanges[0].response_bytes, 8, "{:?}", report.http);
        } else {
            assert_eq!(report.outcome, AttemptOutcome::IdleTimeout, "bytes are not activity");
        }
    }
}

fn stepd_runtime_settings(http_bytes_are_activity: bool) -> stepd_settings::RuntimeSettings {
    stepd_settings::RuntimeSettings {
        http_bytes_are_activity,
        ..stepd_tests::test_settings()
    }
}

#[test]
fn a_bad_extra_ca_file_is_refused_before_any_step_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let job = model_call_job(dir.path(), "http://127.0.0.1:9");
    let ca = not_pem.display().to_string();
    let (code, text) = stepd_run(
        &job,
        &dir.path().join("data"),
        &[
            ("STEPD_GRANT_SECRETS", "STEPD_TEST_MODEL_KEY"),
            ("STEPD_GRANT_HTTP_ORIGINS", "http://127.0.0.1:9"),
            ("STEPD_TEST_MODEL_KEY", "sk-unused"),
            ("STEPD_HTTP_EXTRA_CA", ca.as_str()),
        ],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("STEPD_HTTP_EXTRA_CA") && text.contains("no certificate"),
        "{text}"
    );
    assert!(!text.contains("attempt 1 started"), "a step ran: {text}");
}
