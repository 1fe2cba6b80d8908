//! The resource attacks of a hostile step, on a running server. Given
//! `stepd serve` with two embedded workers, when jobs whose steps hold
//! thousands of open files, declare many memories each under the memory
//! limit, leave a 2 GiB sparse file or nest directories 300 deep run beside
//! honest jobs, then each attack ends as its own step's typed policy
//! failure, every honest job running at the same time succeeds, and
//! `/healthz` answers throughout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use stepd_tests::cluster::{task, write_step, Cluster, Mode};
use stepd_tests::crafted::{compile, crafted_step, memories};

/// Poll `/healthz` until `stop`; returns the slowest answer, or fails on
/// the first request that does not answer within two seconds.
fn watch_health(url: String, stop: Arc<AtomicBool>, slowest_ms: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let response = http
                .get(format!("{url}/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .expect("/healthz answers within two seconds");
            assert!(response.status().is_success(), "/healthz: {}", response.status());
            slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The outcome of the job's failed attempt and the job's failure class.
async fn failed_attempt(cluster: &Cluster, id: &str) -> (String, String, String) {
    let job = cluster.wait_status(id, "failed", Duration::from_secs(120)).await;
    let events = cluster.events(id).await;
    let failed: &Value = events
        .iter()
        .find(|e| e["event"] == "task.step.attempt.failed")
        .unwrap_or_else(|| panic!("job {id} had a failed attempt: {events:?}"));
    (
        failed["payload"]["outcome"].as_str().unwrap_or_default().to_owned(),
        failed["payload"]["failureClass"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        job.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_attack_fails_its_own_step_while_honest_jobs_beside_it_succeed() {
    let cluster = Cluster::start_with(Mode::Embedded, 2, 0, &[("STEPD_MEMORY_MB", "64")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let health = watch_health(cluster.url.clone(), stop.clone(), slowest_ms.clone());

    // Eight memories of 32 MiB, under a 64 MiB limit for the attempt.
    let scratch = tempfile::tempdir().expect("scratch");
    let memories_path = scratch.path().join("memories.wasm");
    let bytes = compile(&crafted_step(&memories(8, 512)));
    let digest = hex(&Sha256::digest(&bytes));
    std::fs::write(&memories_path, bytes).expect("write the crafted component");

    let hostile = |probe: Value| json!({"id": "attack", "plugin": "hostile", "inputs": probe});
    let attacks = [
        (
            "descriptors",
            hostile(json!({"probe": "descriptors", "count": 20_000})),
            "handle_limit",
        ),
        (
            "memories",
            json!({"id": "attack", "plugin": {"path": memories_path, "sha256": digest}}),
            "memory_limit",
        ),
        (
            "sparse",
            hostile(json!({"probe": "sparse", "gib": 2})),
            "workspace_limit",
        ),
        (
            "deep",
            hostile(json!({"probe": "deep", "depth": 300})),
            "workspace_limit",
        ),
    ];
    let mut submitted = Vec::new();
    for (name, step, expected) in attacks {
        let attack = cluster.submit(&task(1, vec![step], json!({}))).await;
        let honest = cluster
            .submit(&task(1, vec![write_step("honest", "honest.txt", name, 300)], json!({})))
            .await;
        submitted.push((name, attack, honest, expected));
    }
    for (name, attack, honest, expected) in &submitted {
        let (outcome, class, job) = failed_attempt(&cluster, attack).await;
        assert_eq!(&outcome, expected, "{name}: {job}");
        assert_eq!(class, "deterministic_policy", "{name}: {job}");
        cluster.wait_status(honest, "succeeded", Duration::from_secs(120)).await;
    }
    stop.store(true, Ordering::Relaxed);
    health.await.expect("/healthz answered throughout");
    assert!(
        slowest_ms.load(Ordering::Relaxed) < 2000,
        "slowest /healthz {} ms",
        slowest_ms.load(Ordering::Relaxed)
    );
    // No attack turned into a host error.
    assert!(!cluster.server.log().contains("host_error"), "{}", cluster.server.log());
    cluster.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
