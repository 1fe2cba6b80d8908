//! The dashboard in a real headless browser: Debian's Chromium driven by
//! playwright-core (`tests/dashboard/e2e.mjs`) against a real `stepd
//! serve`. `.ci/run` installs both; a missing browser or Node is a failure
//! here, never a skip. Screenshots land in `target/test-artifacts/dashboard/`.
//!
//! Given the hang sample and a second job with one long step, on a server
//! with two workers, the page: refuses a wrong token; opens the jobs by
//! keyboard; pauses the hang sample across its soft reset and resumes it;
//! shows grants and HTTP requests; shows a refusal; opens the step log by
//! keyboard; re-runs the sample from a step; then on the second job presses
//! Takeover, Resume, Retry Step, Hard Reset Step and Cancel, each with its
//! effect (live control, acknowledged recoveries, new attempts, the job
//! cancelled); reports an unreachable server and recovers — with no page
//! error and no console error throughout.

use std::path::Path;
use std::process::Command;

use stepd_tests::cluster::{Cluster, Mode, OPERATOR_TOKEN};
use stepd_tests::http_server::{Behaviour, TestServer};

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_pauses_resumes_and_reruns_the_hang_sample_in_the_browser() {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    assert!(
        script_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/dashboard` (.ci/run does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: install Debian's chromium package (.ci/run does)"
    );

    // A loopback server the last step calls, granted as an origin.
    let server = TestServer::http(Behaviour::Chat { answer: "pong".into() }).await;
    let origin = server.origin(false);
    let cluster = Cluster::start_with(
        Mode::Embedded,
        2,
        0,
        &[
            ("STEPD_GRANT_ENV", "LANG"),
            ("STEPD_GRANT_HTTP_ORIGINS", origin.as_str()),
        ],
    )
    .await;
    // The hang sample, with a longer idle deadline: the page has time to
    // press Pause while the first step is silent. A cold Chromium on a
    // fresh machine took 8 s to ask for its first page (the job had ended
    // by then), so the deadline leaves room for that and more.
    let text = std::fs::read_to_string(samples().join("self-heal-hang.json")).expect("sample");
    let mut payload: serde_json::Value = serde_json::from_str(&text).expect("json");
    payload["task"]["repository"] = samples().join("repos/hello").display().to_string().into();
    payload["task"]["selfHeal"]["stepIdleTimeoutSeconds"] = 20.into();
    // A declared capability, which the timeline shows by name.
    payload["task"]["steps"][0]["capabilities"] = serde_json::json!({"env": {"LANG": "C.UTF-8"}});
    // A last step that calls the server once and an origin it was not
    // granted once: its attempt's HTTP log shows both.
    let call = serde_json::json!({"id": "call", "title": "Call the service", "plugin": "hostile",
        "inputs": {"probe": "http", "requests": [{"url": format!("{origin}/ping")},
                                                  {"url": "http://169.254.169.254/latest/meta-data/"}]},
        "capabilities": {"http": {"origins": [origin]}}});
    payload["task"]["steps"]
        .as_array_mut()
        .expect("the sample's steps")
        .push(call);
    let id = cluster.submit(&payload).await;
    // The second job's step works (and logs) for ten minutes unless a
    // button stops it.
    let long = stepd_tests::cluster::task(
        1,
        vec![
            serde_json::json!({"id": "long", "title": "A long step", "plugin": "write-file",
                                 "inputs": {"path": "long.txt", "text": "done", "sleepMs": 600_000}}),
        ],
        serde_json::json!({"stepTimeoutSeconds": 900}),
    );
    let job2 = cluster.submit(&long).await;

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/dashboard");
    let url = cluster.url.clone();
    let origin = origin.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("e2e.mjs")
            .current_dir(&script_dir)
            .env("STEPD_URL", &url)
            .env("STEPD_TOKEN", OPERATOR_TOKEN)
            .env("JOB_ID", &id)
            .env("JOB2_ID", &job2)
            .env("HTTP_ORIGIN", &origin)
            .env("SCREENSHOT_DIR", &shots)
            .env("CHROMIUM", &chromium)
            .output()
            .expect("node must be installed to run the dashboard test")
    })
    .await
    .expect("join");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{printed}\nserver log:\n{}",
        cluster.server.log()
    );
    assert!(printed.contains("all expectations held"), "{printed}");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/dashboard");
    for name in [
        "02-paused-after-soft-reset.png",
        "04-resumed-from-step.png",
        "05-every-button.png",
    ] {
        assert!(shots.join(name).is_file(), "{name} missing");
    }
    cluster.shutdown().await;
}
