//! The short, fixed-seed run of `stepd bench chaos` (README.md,
//! "Reliability and limits", has the long one). Given both deployments,
//! when a 5-step job's worker is SIGKILLed at three seeded points (one of
//! them again while the next worker rebuilds), then every job finishes
//! with the reference tree, no checkpoint is lost or duplicated and every
//! event log is gap-free; when PostgreSQL and RabbitMQ restart under a
//! stream of 30 jobs, every job succeeds exactly once; when the data
//! directory's disk (a 48 MiB tmpfs the test mounts) fills in the middle
//! of a job, that job fails saying so, the store answers and the next job
//! succeeds. The command says so with its exit status and its report. A
//! test binary of its own: it restarts the shared services.

use std::process::Command;

/// A small filesystem, unmounted when dropped.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount() -> SmallFs {
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a 48 MiB tmpfs (the test needs root)");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

use stepd_tests::{plugin_dir, stepd_bin};

#[test]
fn killed_workers_cost_no_job_its_tree_its_checkpoints_or_its_event_order() {
    let small = SmallFs::mount();
    let out = Command::new(stepd_bin())
        .args(["bench", "chaos", "--kills", "3", "--seed", "7", "--restart-jobs", "30"])
        .arg("--small-fs")
        .arg(small.0.path())
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
            // The kill table's row: the first line that starts with the
            // name (the per-kill lines are indented).
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
    // Where the kills landed, per deployment: every kill is accounted for.
    let tallies: Vec<usize> = report
        .lines()
        .filter(|l| l.contains("kills landed after:"))
        .map(|l| {
            l.split('×')
                .skip(1)
                .filter_map(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok())
                .sum()
        })
        .collect();
    assert_eq!(tallies, vec![3, 3], "{report}");
    let restarts = report
        .lines()
        .find(|l| l.starts_with("PostgreSQL + RabbitMQ") && l.split_whitespace().count() == 10)
        .unwrap_or_else(|| panic!("no restart row:\n{report}"));
    let cells: Vec<&str> = restarts.split_whitespace().skip(3).collect();
    // jobs, accepted, succeeded, lost, twice.
    assert_eq!(&cells[..5], ["30", "30", "30", "0", "0"], "{restarts}\n{report}");
    let disk = report
        .lines()
        .find(|l| l.starts_with("disk full"))
        .unwrap_or_else(|| panic!("no disk-full line:\n{report}"));
    assert!(disk.contains("No space left on device"), "{disk}");
    assert!(disk.contains("store answers: yes; next job: succeeded"), "{disk}");
}
