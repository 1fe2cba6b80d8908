//! no-progress: fails the same way on every attempt — the smoke test for the
//! no-progress rule and the hard reset. By default it changes nothing.
//!
//! Optional inputs, all for tests:
//! - `show`: paths whose content (or `MISSING`) it logs first, so a test can
//!   see the workspace each attempt starts from;
//! - `plant`: a path it writes junk to, `clobber`: a path it overwrites —
//!   the same bytes every time, so the failure stays identical;
//! - `echo`: a line it prints; `message`: its error text (default
//!   `lint failed: 3 problems in src/lib.rs`).

use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct NoProgress;

fn text_input(inputs: &serde_json::Value, field: &str) -> Option<String> {
    inputs.get(field).and_then(|v| v.as_str()).map(str::to_owned)
}

impl Step for NoProgress {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        for path in inputs.get("show").and_then(|v| v.as_array()).into_iter().flatten() {
            let path = path.as_str().unwrap_or_default();
            let seen = std::fs::read_to_string(stepd_sdk::workspace_path(path)).unwrap_or_else(|_| "MISSING".into());
            stepd_sdk::log(&format!("attempt {} sees {path}: {}", ctx.attempt, seen.trim_end()));
        }
        let write = |path: String, text: &str| {
            std::fs::write(stepd_sdk::workspace_path(&path), text).map_err(|e| StepError::Retry(format!("{path}: {e}")))
        };
        if let Some(path) = text_input(&inputs, "plant") {
            write(path, "planted by a failed attempt\n")?;
        }
        if let Some(path) = text_input(&inputs, "clobber") {
            write(path, "clobbered by a failed attempt\n")?;
        }
        if let Some(line) = text_input(&inputs, "echo") {
            stepd_sdk::log(&line);
        }
        stepd_sdk::log("running lint");
        let message = text_input(&inputs, "message").unwrap_or_else(|| "lint failed: 3 problems in src/lib.rs".into());
        Err(StepError::Retry(message))
    }
}

stepd_sdk::export_step!(NoProgress);
