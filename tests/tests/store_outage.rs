//! A store that is briefly unreachable is a 503 the caller can wait out,
//! never a 500. Given `stepd serve` on PostgreSQL, when every connection
//! of its database is cut again and again while jobs are submitted, then
//! each submission answers 201 or 503 with `Retry-After`, `stepd submit`
//! gets every job through, and the store holds each accepted job once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::{Connection, Executor};
use stepd_tests::cluster::{task, write_step, Cluster, Mode, OPERATOR_TOKEN};
use stepd_tests::services::pg_admin_url;
use stepd_tests::stepd_bin;

/// Cut every connection to database `name` ten times a second until
/// `stop`.
fn cut_connections(name: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut admin = sqlx::PgConnection::connect(&pg_admin_url())
            .await
            .expect("admin connection");
        let mut cut = 0;
        while !stop.load(Ordering::Relaxed) {
            let sql = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            );
            let rows = admin.fetch_all(sql.as_str()).await.expect("terminate backends");
            cut += rows.len() as u64;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cut
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_while_the_database_drops_every_connection_get_503_or_201_never_500() {
    let cluster = Cluster::start(Mode::Scale, 0, 0).await;
    let url = cluster.database_url();
    let name = url.rsplit('/').next().expect("a database name").to_owned();
    let payload = task(1, vec![write_step("one", "a.txt", "a", 0)], serde_json::json!({}));

    let stop = Arc::new(AtomicBool::new(false));
    let cutter = cut_connections(name, stop.clone());
    let (mut created, mut unavailable) = (0, 0);
    for _ in 0..40 {
        let response = cluster
            .request(reqwest::Method::POST, "/api/queue/jobs")
            .json(&payload)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.expect("a JSON body");
        match status {
            201 => created += 1,
            503 => {
                unavailable += 1;
                assert_eq!(body["code"], "unavailable", "{body}");
                assert_eq!(retry_after.expect("Retry-After on a 503"), "2");
            }
            other => panic!("submission answered {other}: {body}"),
        }
    }

    // The client waits a 503 out, and its Idempotency-Key keeps a
    // submission sent twice from becoming two jobs.
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("job.json");
    std::fs::write(&job, payload.to_string()).expect("payload");
    let mut submitted_by_cli = 0;
    for _ in 0..5 {
        let (url, job) = (cluster.url.clone(), job.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(stepd_bin())
                .args(["submit", "--server", &url, "--token", OPERATOR_TOKEN])
                .arg(&job)
                .output()
        })
        .await
        .expect("the submit thread")
        .expect("stepd submit");
        assert!(
            out.status.success(),
            "stepd submit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        submitted_by_cli += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let cut = cutter.await.expect("cutter");
    assert!(cut > 0, "no connection was ever cut");

    let jobs = cluster.jobs().await.len();
    // A 503 may come after the insert committed (the connection broke
    // before the answer), so the raw submissions are bounded on both
    // sides; the client's are each exactly one job.
    assert!(
        jobs >= created + submitted_by_cli && jobs <= created + unavailable + submitted_by_cli,
        "{jobs} jobs: {created} created, {unavailable} unavailable, {submitted_by_cli} by stepd submit"
    );
    assert!(!cluster.server.log().contains("panicked"), "{}", cluster.server.log());
    cluster.shutdown().await;
}
