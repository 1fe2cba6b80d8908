//! hang: on the attempts listed in `inputs.attempts`, never returns, either
//! spinning on the CPU (`"mode": "spin"`, the default) or sleeping in WASI
//! (`"mode": "sleep"`); on any other attempt it succeeds.
//!
//! The summary reports how many times `run` has been called in this
//! instance, so a test can prove every attempt gets a fresh instance.

use std::sync::atomic::{AtomicU32, Ordering};
use stepd_sdk::{Step, StepContext, StepError, StepOutput};

static RUNS_IN_THIS_INSTANCE: AtomicU32 = AtomicU32::new(0);

struct Hang;

impl Step for Hang {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let runs = RUNS_IN_THIS_INSTANCE.fetch_add(1, Ordering::SeqCst) + 1;
        if ctx.attempt_listed_in("attempts")? {
            let mode = ctx
                .inputs_json()?
                .get("mode")
                .and_then(|m| m.as_str())
                .unwrap_or("spin")
                .to_owned();
            stepd_sdk::log(&format!("attempt {}: hanging ({mode})", ctx.attempt));
            match mode.as_str() {
                "sleep" => loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                },
                "spin" => {
                    let mut x: u64 = 1;
                    loop {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
                other => {
                    return Err(StepError::Contract(format!(
                        "inputs.mode {other:?} is not spin or sleep"
                    )))
                }
            }
        }
        Ok(StepOutput::summary(format!(
            "attempt {} done; runs in this instance: {runs}",
            ctx.attempt
        )))
    }
}

stepd_sdk::export_step!(Hang);
