//! A payload can name any path as a plugin. Given a running `stepd serve`,
//! when payloads name a FIFO nobody writes to, `/dev/zero`, a directory, a
//! text file holding a secret and a core module, then each is refused at
//! once with a 422 that names the path and the problem — never a digest of
//! a file that is not a component — and the server keeps answering.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use stepd_tests::cluster::{repo_dir, Cluster, Mode};

async fn submit_plugin_path(cluster: &Cluster, path: &str) -> (u16, Value) {
    let payload = json!({"type": "task", "task": {
        "repository": repo_dir(),
        "steps": [{"id": "one", "plugin": {"path": path, "sha256": "0".repeat(64)}}]
    }});
    let response = cluster
        .request(reqwest::Method::POST, "/api/queue/jobs")
        .json(&payload)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON error"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_paths_that_are_not_component_files_are_refused_at_once_without_a_digest() {
    let cluster = Cluster::start(Mode::Embedded, 0, 0).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let fifo = scratch.path().join("pipe.wasm");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let secret_text = b"root:$6$salt$not-a-real-hash:19000:0:99999:7:::\n";
    let secret = scratch.path().join("shadow.wasm");
    std::fs::write(&secret, secret_text).expect("secret file");
    let secret_digest = hex_digest(secret_text);
    let core = scratch.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("core module");

    let cases = [
        (fifo.display().to_string(), "is a FIFO, not a regular file"),
        ("/dev/zero".to_owned(), "is a character device, not a regular file"),
        (
            scratch.path().display().to_string(),
            "is a directory, not a regular file",
        ),
        (secret.display().to_string(), "is not a WebAssembly component"),
        (
            core.display().to_string(),
            "is a core WebAssembly module, not a component",
        ),
    ];
    for (path, expected) in cases {
        let asked = Instant::now();
        let (status, body) = submit_plugin_path(&cluster, &path).await;
        let message = body["message"].as_str().unwrap_or_default();
        assert_eq!(status, 422, "{path}: {body}");
        assert!(
            message.contains(&path) && message.contains(expected),
            "{path}: {message}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            asked.elapsed()
        );
        assert!(!message.contains(&secret_digest), "{path}: a digest leaked: {message}");
    }
    let health = cluster
        .request(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    cluster.shutdown().await;
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
