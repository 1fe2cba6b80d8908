//! Sandbox probes no Rust guest can express: components crafted in the
//! test (WebAssembly text, compiled by `wat`) that declare many memories,
//! a huge table or many core instances. Each exports the real `run` of
//! the `stepd:plugin` world, so it loads like any plugin; what it declares
//! beside it is the attack. Given such a component, when an attempt
//! instantiates it, then the attempt ends with the limit it crossed and the
//! same runtime runs an honest step right after.

use std::time::Duration;

use serde_json::json;
use stepd_runtime::{AttemptLimits, AttemptOutcome, AttemptReport, AttemptRequest, CancellationToken, Runtime};
use stepd_tests::crafted::{crafted_step, memories};
use stepd_tests::{attempt, context, load, runtime, Scratch};

const LONG: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// Run one attempt of the component `wat` under `memory` bytes.
async fn run_crafted(rt: &Runtime, scratch: &Scratch, name: &str, wat: &str, memory: usize) -> AttemptReport {
    let bytes = stepd_tests::crafted::compile(wat);
    let path = scratch.dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("write the component");
    let plugin = rt.load_plugin(&path).expect("the crafted component loads as a step");
    let request = AttemptRequest {
        workspace: scratch.workspace(),
        context: context(1, json!({})),
        limits: AttemptLimits {
            memory_limit_bytes: Some(memory),
            ..AttemptLimits::new(LONG, LONG)
        },
        cancel: CancellationToken::new(),
        grants: stepd_runtime::AttemptGrants::default(),
    };
    rt.run_attempt(&plugin, request).await.expect("attempt set up")
}

/// An honest step still runs on `rt`.
async fn honest_step_runs(rt: &Runtime, scratch: &Scratch, after: &str) {
    let write_file = load(rt, "write-file");
    let report = attempt(
        rt,
        &write_file,
        &scratch.workspace(),
        1,
        json!({"path": "after.txt", "text": after}),
        LONG,
        LONG,
    )
    .await;
    assert!(report.outcome.is_success(), "after {after}: {:?}", report.outcome);
}

#[tokio::test]
async fn given_a_component_of_many_memories_each_under_the_limit_when_it_instantiates_then_their_total_is_held_to_the_limit(
) {
    let rt = runtime();
    let scratch = Scratch::new();
    // One 32 MiB memory beside the main one fits in 64 MiB: the component
    // is a valid step, and it gets as far as its `run` (which traps).
    let one = run_crafted(&rt, &scratch, "one-memory", &crafted_step(&memories(1, 512)), 64 * MIB).await;
    match &one.outcome {
        AttemptOutcome::Trap { message } => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("one extra memory fits, then run traps; got {other}"),
    }
    // Eight of them, each well under the limit alone, do not.
    let eight = run_crafted(
        &rt,
        &scratch,
        "eight-memories",
        &crafted_step(&memories(8, 512)),
        64 * MIB,
    )
    .await;
    match eight.outcome {
        AttemptOutcome::MemoryLimit {
            requested_bytes,
            limit_bytes,
        } => {
            assert_eq!(limit_bytes, 64 * MIB as u64);
            assert!(requested_bytes > limit_bytes, "{requested_bytes}");
        }
        other => panic!("expected memory_limit, got {other}"),
    }
    honest_step_runs(&rt, &scratch, "memories").await;
}

#[tokio::test]
async fn given_a_component_declaring_a_huge_table_when_it_loads_then_it_is_refused_naming_the_table() {
    let rt = runtime();
    let scratch = Scratch::new();
    let extra = "(core module $table (table 10000000 funcref))\n(core instance (instantiate $table))";
    let path = scratch.dir.path().join("huge-table.wasm");
    std::fs::write(&path, stepd_tests::crafted::compile(&crafted_step(extra))).expect("write the component");
    // The pooling allocator sizes every slot up front: a declared table
    // past its slots is refused before any attempt.
    let err = rt.load_plugin(&path).expect_err("a table past the pool's slots");
    assert!(err.to_string().contains("table"), "{err}");
    honest_step_runs(&rt, &scratch, "declared table").await;
}

#[tokio::test]
async fn given_a_component_growing_a_table_past_the_limit_when_it_instantiates_then_the_outcome_is_table_limit() {
    let rt = runtime();
    let scratch = Scratch::new();
    // A start function grows a one-element table by ten million.
    let extra = "(core module $table (table 1 funcref)
        (func $grow (drop (table.grow 0 (ref.null func) (i32.const 10000000))))
        (start $grow))
      (core instance (instantiate $table))";
    let report = run_crafted(&rt, &scratch, "growing-table", &crafted_step(extra), 64 * MIB).await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::TableLimit {
            requested_elements: 10_000_001,
            limit_elements: rt.settings().table_elements_limit as u64,
        }
    );
    honest_step_runs(&rt, &scratch, "grown table").await;
}

#[tokio::test]
async fn given_a_component_of_hundreds_of_instances_when_it_instantiates_then_the_outcome_is_instance_limit() {
    let rt = runtime();
    let scratch = Scratch::new();
    let mut extra = String::from("(core module $tiny)\n");
    for _ in 0..300 {
        extra.push_str("(core instance (instantiate $tiny))\n");
    }
    let report = run_crafted(&rt, &scratch, "many-instances", &crafted_step(&extra), 64 * MIB).await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::InstanceLimit {
            limit: rt.store_counts().instances as u64,
        }
    );
    // With the pooling allocator, no attempt may take more than its slot's
    // share of the pool, so a full pool never fails an attempt.
    assert!(rt.store_counts().instances <= 20, "{:?}", rt.store_counts());
    honest_step_runs(&rt, &scratch, "instances").await;
}
