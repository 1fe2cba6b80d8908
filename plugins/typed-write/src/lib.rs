//! typed-write: the shortest useful step, and the SDK's measure — it writes
//! `inputs.text` to `inputs.path` in the workspace from a typed input.
//! Everything below this header is the whole plugin (docs/PLUGINS.md).
use stepd_sdk::{log, serde::Deserialize, StepContext, StepError, StepOutput};

#[derive(Deserialize)]
#[serde(crate = "stepd_sdk::serde")]
struct Inputs {
    path: String,
    text: String,
}

fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
    let Inputs { path, text } = ctx.inputs()?;
    std::fs::write(stepd_sdk::workspace_path(&path), &text)?;
    log!("wrote {path} ({} bytes)", text.len());
    Ok(StepOutput::summary(format!("wrote {path}")))
}
stepd_sdk::export_fn!(run);
