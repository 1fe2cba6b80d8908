//! no-progress: fails the same way on every attempt and changes nothing,
//! the smoke test for the no-progress rule and the hard reset.

use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct NoProgress;

impl Step for NoProgress {
    fn run(_ctx: StepContext) -> Result<StepOutput, StepError> {
        stepd_sdk::log("running lint");
        Err(StepError::Retry("lint failed: 3 problems in src/lib.rs".into()))
    }
}

stepd_sdk::export_step!(NoProgress);
