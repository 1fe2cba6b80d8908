//! RabbitMQ stopped and started while jobs run: no job is lost. A test
//! binary of its own, because it takes the shared broker down (cargo runs
//! test binaries one after another).

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use stepd_tests::cluster::{task, write_step, Cluster, Mode};

/// Starts the broker's app again even if the test fails half-way.
struct BrokerGuard;

impl BrokerGuard {
    fn stop() -> BrokerGuard {
        let status = Command::new("rabbitmqctl")
            .arg("stop_app")
            .status()
            .expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl stop_app failed");
        BrokerGuard
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_and_started_while_jobs_run_loses_no_job() {
    let cluster = Cluster::start(Mode::Scale, 0, 2).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let payload = task(
            2,
            vec![write_step("write", &format!("f{i}.txt"), "x\n", 800)],
            json!({}),
        );
        ids.push(cluster.submit(&payload).await);
    }
    cluster
        .wait_job(&ids[0], "a job running", Duration::from_secs(60), |j| {
            j["status"] != "queued"
        })
        .await;
    {
        let _down = BrokerGuard::stop();
        // Jobs submitted while the broker is away are stored; the sweep
        // announces them once it is back.
        for i in 6..10 {
            let payload = task(
                2,
                vec![write_step("write", &format!("g{i}.txt"), "y\n", 200)],
                json!({}),
            );
            ids.push(cluster.submit(&payload).await);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    for id in &ids {
        let job = cluster.wait_status(id, "succeeded", Duration::from_secs(180)).await;
        assert_eq!(job["firstUnfinishedStep"], 1);
    }
    let log = cluster.workers.iter().map(|w| w.log()).collect::<Vec<_>>().join("\n");
    assert!(
        log.contains("RabbitMQ unavailable"),
        "the workers saw the broker go: {log}"
    );
    cluster.shutdown().await;
}
