//! A payload can name any path as a plugin. Given a running `stepd serve`,
//! when payloads name a FIFO nobody writes to, `/dev/zero`, a directory, a
//! text file holding a secret and a core module, then each is refused at
//! once with a 422 that names the path and the problem — never a digest of
//! a file that is not a component — while an honest job running beside
//! them succeeds and `/healthz` answers within 2 s throughout.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use stepd_tests::cluster::{repo_dir, task, write_step, Cluster, Mode};

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
    let cluster = Cluster::start(Mode::Embedded, 1, 0).await;
    let honest = cluster
        .submit(&task(1, vec![write_step("one", "a.txt", "1\n", 3000)], json!({})))
        .await;
    let watch = HealthWatch::start(&cluster);
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
    cluster.wait_status(&honest, "succeeded", Duration::from_secs(90)).await;
    let (answers, slowest) = watch.stop().await;
    assert!(answers >= 3, "/healthz was asked {answers} times");
    assert!(slowest < Duration::from_secs(2), "/healthz once took {slowest:?}");
    cluster.shutdown().await;
}

/// Asks `/healthz` every 100 ms until stopped; counts the 200s and keeps
/// the slowest answer (a failed or late one counts as the time it took).
struct HealthWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u32, Duration)>,
}

impl HealthWatch {
    fn start(cluster: &Cluster) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let ask = cluster
            .request(reqwest::Method::GET, "/healthz")
            .timeout(Duration::from_secs(5));
        let task = tokio::spawn(async move {
            let (mut answers, mut slowest) = (0u32, Duration::ZERO);
            while !*stopped.borrow() {
                let asked = Instant::now();
                let ok = match ask.try_clone().map(|r| r.send()) {
                    Some(sent) => sent.await.is_ok_and(|r| r.status() == 200),
                    None => false,
                };
                slowest = slowest.max(asked.elapsed());
                if ok {
                    answers += 1;
                } else {
                    slowest = slowest.max(Duration::from_secs(5));
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
            }
            (answers, slowest)
        });
        HealthWatch { stop, task }
    }

    async fn stop(self) -> (u32, Duration) {
        let _ = self.stop.send(true);
        self.task.await.expect("the watch ran")
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
