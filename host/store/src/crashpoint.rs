//! A hold point for the crash tests: with `STEPD_TEST_HOLD_BEFORE_COMMIT`
//! naming a transaction (`step_end`: a worker's batch that ends a step with
//! its checkpoint), the process logs that it holds, then waits forever with
//! that transaction written but not committed. A test kills the process
//! there with SIGKILL, which no timing-based kill can aim at, and checks
//! the job comes through intact (tests/tests/throughput.rs).
//!
//! Unset in every deployment; the variable is read once per process.

use std::sync::OnceLock;

/// The environment variable naming the transaction to hold.
pub const HOLD_VARIABLE: &str = "STEPD_TEST_HOLD_BEFORE_COMMIT";

/// The log line's text, which the test waits for.
pub const HOLDING_MESSAGE: &str = "holding a transaction before its commit";

fn held() -> Option<&'static str> {
    static HELD: OnceLock<Option<String>> = OnceLock::new();
    HELD.get_or_init(|| std::env::var(HOLD_VARIABLE).ok().filter(|name| !name.is_empty()))
        .as_deref()
}

/// Never returns when `transaction` is the one named by
/// [`HOLD_VARIABLE`]; otherwise returns at once.
pub(crate) async fn hold_before_commit(transaction: &str) {
    if held() != Some(transaction) {
        return;
    }
    tracing::warn!(transaction, "{HOLDING_MESSAGE} ({HOLD_VARIABLE})");
    std::future::pending::<()>().await;
}
