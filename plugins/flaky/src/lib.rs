//! flaky: fails with `retry(...)` on the first `inputs.failAttempts` attempts
//! (default 1), then succeeds and writes `inputs.path` (default `flaky.txt`).
//! Every attempt told a retry context logs it (`retry context: <class>
//! after "<summary>" (<strategy>)`). With `sleepOnAttempt: N` and
//! `sleepMs: M`, attempt N first works for M ms (a line every 100 ms): time
//! for a test to stop it.

use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct Flaky;

impl Step for Flaky {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        let fail_attempts = inputs.get("failAttempts").and_then(|v| v.as_u64()).unwrap_or(1);
        // What the host told this attempt about the last failure.
        if let Some(told) = &ctx.retry_context {
            stepd_sdk::log!(
                "retry context: {} after {:?} ({})",
                told.failure_class,
                told.failure_summary,
                told.strategy
            );
        }
        let sleep_on = inputs.get("sleepOnAttempt").and_then(|v| v.as_u64());
        if sleep_on == Some(u64::from(ctx.attempt)) {
            stepd_sdk::work_for(inputs.get("sleepMs").and_then(|v| v.as_u64()).unwrap_or(0));
        }
        if u64::from(ctx.attempt) <= fail_attempts {
            return Err(StepError::Retry(format!(
                "temporary failure on attempt {} (connection reset by upstream)",
                ctx.attempt
            )));
        }
        let path = inputs.get("path").and_then(|v| v.as_str()).unwrap_or("flaky.txt");
        std::fs::write(
            stepd_sdk::workspace_path(path),
            format!("succeeded on attempt {}\n", ctx.attempt),
        )
        .map_err(|e| StepError::Retry(format!("writing {path}: {e}")))?;
        Ok(StepOutput::summary(format!("succeeded on attempt {}", ctx.attempt)))
    }
}

stepd_sdk::export_step!(Flaky);
