//! The OpenAPI document describes the API, as a third party reads it:
//! given a running `stepd serve` with one finished job, when schemathesis
//! (installed by scripts/test, pinned there) runs every check and every
//! phase against the served `/api/openapi.json` with the settings in
//! tests/schemathesis.toml, then it tests every operation and finds
//! nothing: no server error, no refused schema-valid request, no accepted
//! schema-invalid one, no answer outside the document.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use stepd_tests::cluster::{task, write_step, Cluster, Mode, OPERATOR_TOKEN, WORKER_TOKEN};

/// The `st` command of the venv scripts/test creates.
fn schemathesis() -> PathBuf {
    let st = std::env::var_os("STEPD_TEST_SCHEMATHESIS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis/bin/st"),
        PathBuf::from,
    );
    assert!(
        st.is_file(),
        "schemathesis is missing at {}: run scripts/test (it installs the pinned version), \
         or set STEPD_TEST_SCHEMATHESIS",
        st.display()
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_served_document() {
    let st = schemathesis();
    let cluster = Cluster::start(Mode::Embedded, 1, 0).await;
    let id = cluster
        .submit(&task(1, vec![write_step("one", "ONE.md", "one", 0)], json!({})))
        .await;
    cluster.wait_status(&id, "succeeded", Duration::from_secs(60)).await;

    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let reports = tempfile::tempdir().expect("report dir");
    // `timeout` bounds the run: a hung request must fail the test, not
    // stall the suite.
    let mut command = std::process::Command::new("timeout");
    command
        .arg("600")
        .arg(&st)
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(format!("{}/api/openapi.json", cluster.url))
        .args([
            "--workers",
            "1",
            "--output-truncate",
            "false",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(reports.path())
        .env("STEPD_TEST_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("STEPD_TEST_WORKER_TOKEN", WORKER_TOKEN)
        .env("STEPD_TEST_JOB_ID", &id)
        .env("NO_COLOR", "1");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}\n--- server log ---\n{}",
        output.status,
        cluster.server.log()
    );
    // It tested every operation the document names (one per method and
    // path), not a subset; schemathesis leaves out the document's own URL.
    let operations: usize = stepd_api::openapi_document()["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter(|(path, _)| path.as_str() != "/api/openapi.json")
        .map(|(_, item)| item.as_object().map_or(0, serde_json::Map::len))
        .sum();
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "schemathesis should test all {operations} operations:\n{stdout}"
    );
    assert!(stdout.contains(" passed"), "{stdout}");
    cluster.shutdown().await;
}
