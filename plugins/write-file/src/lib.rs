//! write-file: writes the files named in its inputs into the workspace.
//!
//! Inputs: `{"path": "a.txt", "text": "..."}` for one file, or
//! `{"files": {"a.txt": "...", "docs/b.md": "..."}}` for several.

use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct WriteFile;

impl Step for WriteFile {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        let mut files: Vec<(String, String)> = Vec::new();
        if let Some(map) = inputs.get("files").and_then(|f| f.as_object()) {
            for (path, text) in map {
                let text = text
                    .as_str()
                    .ok_or_else(|| StepError::Contract(format!("inputs.files.{path} must be a string")))?;
                files.push((path.clone(), text.to_owned()));
            }
        } else {
            files.push((ctx.required_str("path")?, ctx.required_str("text")?));
        }
        for (path, text) in &files {
            if path.starts_with('/') || path.split('/').any(|part| part == "..") {
                return Err(StepError::Contract(format!(
                    "path {path:?} must be relative to the workspace and must not contain .."
                )));
            }
            let target = stepd_sdk::workspace_path(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StepError::Retry(format!("creating {}: {e}", parent.display())))?;
            }
            std::fs::write(&target, text).map_err(|e| StepError::Retry(format!("writing {path}: {e}")))?;
            stepd_sdk::log(&format!("wrote {path} ({} bytes)", text.len()));
        }
        Ok(StepOutput::summary(format!("wrote {} file(s)", files.len())))
    }
}

stepd_sdk::export_step!(WriteFile);
