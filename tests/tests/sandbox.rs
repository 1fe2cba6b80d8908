//! Scenarios: a step that exhausts or attacks the sandbox ends in its own
//! typed outcome, escapes nothing, and leaves the host running.

use std::time::Duration;

use serde_json::{json, Value};
use stepd_runtime::{AttemptLimits, AttemptOutcome, AttemptRequest, CancellationToken};
use stepd_tests::{attempt, context, load, runtime, Scratch};

const LONG: Duration = Duration::from_secs(60);

async fn hostile_with(
    rt: &stepd_runtime::Runtime,
    scratch: &Scratch,
    inputs: Value,
    fuel: Option<u64>,
    memory: Option<usize>,
) -> stepd_runtime::AttemptReport {
    let hostile = load(rt, "hostile");
    let request = AttemptRequest {
        workspace: scratch.workspace(),
        context: context(1, inputs),
        limits: AttemptLimits {
            fuel,
            memory_limit_bytes: memory,
            ..AttemptLimits::new(LONG, LONG)
        },
        cancel: CancellationToken::new(),
        grants: stepd_runtime::AttemptGrants::default(),
    };
    rt.run_attempt(&hostile, request).await.expect("attempt set up")
}

#[tokio::test]
async fn given_a_step_burning_cpu_when_its_fuel_runs_out_then_the_outcome_is_out_of_fuel() {
    let rt = runtime();
    let scratch = Scratch::new();
    let report = hostile_with(&rt, &scratch, json!({"probe": "fuel"}), Some(50_000_000), None).await;
    assert_eq!(report.outcome, AttemptOutcome::OutOfFuel, "report: {report:?}");
    assert_eq!(report.fuel_consumed, Some(50_000_000));
}

#[tokio::test]
async fn given_a_step_hoarding_memory_when_it_passes_the_limit_then_the_outcome_is_memory_limit() {
    let rt = runtime();
    let scratch = Scratch::new();
    let report = hostile_with(&rt, &scratch, json!({"probe": "memory"}), None, Some(64 << 20)).await;
    match report.outcome {
        AttemptOutcome::MemoryLimit {
            requested_bytes,
            limit_bytes,
        } => {
            assert_eq!(limit_bytes, 64 << 20);
            assert!(requested_bytes > limit_bytes);
        }
        other => panic!("expected memory_limit, got {other}"),
    }
    assert!(
        report.output.text().contains("holding 16 MiB"),
        "it got going before the limit: {:?}",
        report.output.text()
    );
}

#[tokio::test]
async fn given_a_step_recursing_forever_when_the_stack_overflows_then_the_outcome_is_stack_overflow() {
    let rt = runtime();
    let scratch = Scratch::new();
    let report = hostile_with(&rt, &scratch, json!({"probe": "stack"}), None, None).await;
    assert_eq!(report.outcome, AttemptOutcome::StackOverflow, "report: {report:?}");
}

#[tokio::test]
async fn given_a_step_holding_thousands_of_files_when_it_passes_its_handle_share_then_the_outcome_is_handle_limit() {
    let rt = runtime();
    let scratch = Scratch::new();
    let report = hostile_with(
        &rt,
        &scratch,
        json!({"probe": "descriptors", "count": 20_000}),
        None,
        None,
    )
    .await;
    let limit = rt.handles_per_attempt() as u64;
    assert_eq!(
        report.outcome,
        AttemptOutcome::HandleLimit { limit },
        "report: {report:?}"
    );
    // It got as far as its share allowed, no further.
    let opened = std::fs::read_dir(scratch.workspace()).expect("workspace").count() as u64;
    assert!(opened > limit - 32 && opened <= limit, "opened {opened} of {limit}");
    // Every descriptor went with the store: the host can open as many as before.
    let held: Vec<std::fs::File> = (0..limit)
        .map(|_| std::fs::File::open(scratch.workspace()).expect("a descriptor"))
        .collect();
    assert_eq!(held.len() as u64, limit);
}

#[tokio::test]
async fn given_a_step_flooding_output_when_it_passes_the_output_limit_then_the_rest_is_counted_not_kept() {
    let rt = runtime();
    let scratch = Scratch::new();
    let report = hostile_with(&rt, &scratch, json!({"probe": "flood", "mb": 8}), None, None).await;
    assert!(report.outcome.is_success(), "report: {:?}", report.outcome);
    let limit = rt.settings().output_limit_bytes as u64;
    let charged = report.output.kept_bytes + report.output.overhead_bytes;
    assert!(
        charged <= limit && charged > limit - 2048,
        "kept {charged} of a {limit}-byte limit"
    );
    assert_eq!(report.output.kept_bytes + report.output.dropped_bytes, 8 * 1024 * 1024);
    assert!(report.output.truncated());
}

#[tokio::test]
async fn given_a_hostile_step_when_it_tries_every_escape_then_none_succeeds_and_the_host_is_untouched() {
    // A secret-looking variable in the host's environment must not reach the guest.
    std::env::set_var("STEPD_TEST_SECRET_TOKEN", "hunter2");
    let rt = runtime();
    let scratch = Scratch::new();
    let _ = std::fs::remove_file("/tmp/stepd-hostile-was-here");
    // As if the baseline held a symlink out of the workspace.
    std::os::unix::fs::symlink("/etc", scratch.workspace().join("planted-by-baseline")).expect("plant a symlink");
    let report = hostile_with(&rt, &scratch, json!({"probe": "escape"}), None, None).await;
    let data = match &report.outcome {
        AttemptOutcome::Succeeded { data: Some(data), .. } => data.clone(),
        other => panic!("the escape probe reports and returns, got {other}"),
    };
    let probes: Value = serde_json::from_str(&data).expect("probe report is JSON");
    let probes = probes.as_object().expect("probe report is an object");
    let expected = [
        "read_etc_passwd",
        "read_dotdot_relative",
        "read_dotdot_from_workspace",
        "read_outside_sibling",
        "write_outside",
        "write_dotdot",
        "symlink_to_root",
        "symlink_dotdot",
        "baseline_symlink_read",
        "baseline_symlink_write",
        "hard_link_outside",
        "rename_outside",
        "read_proc_environ",
        "read_proc_mounts",
        "env_vars",
        "args",
        "stdin",
        "udp_send",
        "dns_lookup",
        "tcp_connect",
        "tcp_listen",
    ];
    // Each probe is its own verdict: every one that got out (or never
    // reported) is named, not just the first.
    let escaped: Vec<String> = expected
        .iter()
        .filter_map(|name| match probes.get(*name) {
            Some(probe) if probe["escaped"] == json!(false) => None,
            Some(probe) => Some(format!("{name} escaped: {probe}")),
            None => Some(format!("{name} was not reported")),
        })
        .collect();
    assert_eq!(expected.len(), 21);
    assert!(escaped.is_empty(), "{escaped:#?}\nreport: {probes:?}");
    assert!(!report.output.text().contains("hunter2"));
    // Host side: nothing written outside the workspace, nothing read.
    assert!(!std::path::Path::new("/tmp/stepd-hostile-was-here").exists());
    assert!(!scratch.dir.path().join("stepd-hostile-was-here").exists());
    assert!(!std::path::Path::new("/etc/stepd-hostile-was-here").exists());
    assert!(!scratch.dir.path().join("left.txt").exists());
    assert!(!scratch.workspace().join("outside-hard-link").exists());
    assert_eq!(
        std::fs::read_to_string(scratch.dir.path().join("outside.txt")).expect("sibling"),
        "host secret\n"
    );
}

#[tokio::test]
async fn given_every_hostile_probe_when_they_run_in_turn_then_each_is_reported_and_the_host_keeps_serving() {
    let rt = runtime();
    let scratch = Scratch::new();
    let write_file = load(&rt, "write-file");
    let mut seen = Vec::new();
    for (probe, fuel, memory) in [
        ("escape", None, None),
        ("memory", None, Some(32 << 20)),
        ("stack", None, None),
        ("fuel", Some(10_000_000), None),
        ("flood", None, None),
    ] {
        let report = hostile_with(&rt, &scratch, json!({"probe": probe, "mb": 2}), fuel, memory).await;
        seen.push((probe, report.outcome.name()));
        // After each attack, an honest step on the same runtime still works.
        let ok = attempt(
            &rt,
            &write_file,
            &scratch.workspace(),
            1,
            json!({"path": "after.txt", "text": probe}),
            LONG,
            LONG,
        )
        .await;
        assert!(ok.outcome.is_success(), "after {probe}: {:?}", ok.outcome);
        assert_eq!(
            std::fs::read_to_string(scratch.workspace().join("after.txt")).expect("written"),
            probe
        );
    }
    assert_eq!(
        seen,
        vec![
            ("escape", "succeeded"),
            ("memory", "memory_limit"),
            ("stack", "stack_overflow"),
            ("fuel", "out_of_fuel"),
            ("flood", "succeeded"),
        ]
    );
}
