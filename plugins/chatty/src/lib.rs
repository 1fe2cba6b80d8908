//! chatty: keeps printing a line every `inputs.intervalMs` (default 50) for
//! `inputs.durationMs` (default 1000), then succeeds. A step that talks is
//! alive: the idle deadline must never stop it.

use std::time::{Duration, Instant};
use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct Chatty;

impl Step for Chatty {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        let interval = inputs.get("intervalMs").and_then(|v| v.as_u64()).unwrap_or(50);
        let duration = inputs.get("durationMs").and_then(|v| v.as_u64()).unwrap_or(1000);
        let start = Instant::now();
        let mut lines = 0u64;
        while start.elapsed() < Duration::from_millis(duration) {
            lines += 1;
            stepd_sdk::log(&format!("still working: line {lines}"));
            std::thread::sleep(Duration::from_millis(interval));
        }
        Ok(StepOutput::summary(format!("printed {lines} lines")))
    }
}

stepd_sdk::export_step!(Chatty);
