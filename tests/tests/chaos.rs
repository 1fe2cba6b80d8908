//! The short, fixed-seed run of `stepd bench chaos` (README.md,
//! "Reliability and limits", has the long one). Given both deployments,
//! when a 5-step job's worker is SIGKILLed at three seeded points (one of
//! them again while the next worker rebuilds), then every job finishes
//! with the reference tree, no checkpoint is lost or duplicated and every
//! event log is gap-free; the command says so with its exit status and its
//! report.

use std::process::Command;

use stepd_tests::{plugin_dir, stepd_bin};

#[test]
fn killed_workers_cost_no_job_its_tree_its_checkpoints_or_its_event_order() {
    let out = Command::new(stepd_bin())
        .args(["bench", "chaos", "--kills", "3", "--seed", "7"])
        .arg("--plugins")
        .arg(plugin_dir())
        .env("STEPD_BENCH_PG_ADMIN_URL", stepd_tests::services::pg_admin_url())
        .env("STEPD_BENCH_AMQP_URL", stepd_tests::services::amqp_url())
        .output()
        .expect("stepd bench chaos");
    let report = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "report:\n{report}\nlog:\n{log}");
    assert!(report.contains("seed 7"), "{report}");
    for deployment in ["embedded (SQLite)", "PostgreSQL + RabbitMQ"] {
        let row = report
            .lines()
            .rev()
            .find(|l| l.starts_with(deployment))
            .unwrap_or_else(|| panic!("no row for {deployment}:\n{report}"));
        let cells: Vec<&str> = row[deployment.len()..].split_whitespace().collect();
        // kills, finished, same tree, lost, duplicated, gaps.
        assert_eq!(
            &cells[..6],
            ["3", "3", "3", "0", "0", "0"],
            "{deployment}: {row}\n{report}"
        );
    }
    assert_eq!(report.matches("NOT FINISHED").count(), 0, "{report}");
}
