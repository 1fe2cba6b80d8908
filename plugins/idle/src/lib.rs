//! idle: on the attempts listed in `inputs.attempts`, prints a few lines and
//! then goes silent, sleeping far longer than any idle timeout; on any other
//! attempt it prints the same lines and succeeds.

use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct Idle;

impl Step for Idle {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        for i in 1..=3 {
            println!("attempt {}: working, line {i}", ctx.attempt);
        }
        if ctx.attempt_listed_in("attempts")? {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(24 * 3600));
            }
        }
        Ok(StepOutput::summary(format!(
            "attempt {} finished without going idle",
            ctx.attempt
        )))
    }
}

stepd_sdk::export_step!(Idle);
