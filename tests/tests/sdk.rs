//! The Rust SDK's promise, held by a real plugin built in this test run:
//! `plugins/typed-write` writes a file from a typed input in at most 15
//! lines of code; it runs, and an input of the wrong type comes back as a
//! contract error naming the field.

use std::time::Duration;

use serde_json::json;
use stepd_runtime::{AttemptOutcome, GuestErrorKind};
use stepd_tests::{attempt, load, runtime, Scratch};

#[test]
fn a_step_that_writes_a_file_from_a_typed_input_is_at_most_15_lines() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/typed-write/src/lib.rs"
    ))
    .expect("the plugin's source");
    let code: Vec<&str> = source
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .collect();
    assert!(code.len() <= 15, "{} lines:\n{}", code.len(), code.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_inputs_write_the_file_and_a_bad_field_is_a_contract_error_naming_it() {
    let rt = runtime();
    let plugin = load(&rt, "typed-write");
    let scratch = Scratch::new();
    let minute = Duration::from_secs(60);
    let report = attempt(
        &rt,
        &plugin,
        &scratch.workspace(),
        1,
        json!({"path": "hello.txt", "text": "hi\n"}),
        minute,
        minute,
    )
    .await;
    assert!(report.outcome.is_success(), "{}", report.outcome);
    assert_eq!(
        std::fs::read_to_string(scratch.workspace().join("hello.txt")).expect("written"),
        "hi\n"
    );
    assert!(
        report.output.text().contains("wrote hello.txt (3 bytes)"),
        "{:?}",
        report.output
    );

    let report = attempt(
        &rt,
        &plugin,
        &scratch.workspace(),
        1,
        json!({"path": "x.txt", "text": 42}),
        minute,
        minute,
    )
    .await;
    match report.outcome {
        AttemptOutcome::GuestError {
            kind: GuestErrorKind::Contract,
            message,
        } => assert!(
            message.starts_with("inputs.text: invalid type: integer `42`"),
            "{message}"
        ),
        other => panic!("expected a contract error, got {other}"),
    }
}
