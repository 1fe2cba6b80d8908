//! write-file: writes the files named in its inputs into the workspace.
//!
//! Inputs: `{"path": "a.txt", "text": "..."}` for one file, or
//! `{"files": {"a.txt": "...", "docs/b.md": "..."}}` for several.
//! `"delete": ["a.txt", ...]` removes files afterwards (a missing one is
//! an error). `"sleepMs": N` first works for N milliseconds (a line of output every
//! 100 ms, so it never looks idle): a slow step for the service tests.

use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct WriteFile;

impl Step for WriteFile {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        stepd_sdk::work_for(inputs.get("sleepMs").and_then(|v| v.as_u64()).unwrap_or(0));
        let mut files: Vec<(String, String)> = Vec::new();
        if let Some(map) = inputs.get("files").and_then(|f| f.as_object()) {
            for (path, text) in map {
                let text = text
                    .as_str()
                    .ok_or_else(|| StepError::Contract(format!("inputs.files.{path} must be a string")))?;
                files.push((path.clone(), text.to_owned()));
            }
        } else if inputs.get("path").is_some() || inputs.get("delete").is_none() {
            files.push((ctx.required_str("path")?, ctx.required_str("text")?));
        }
        let deletes: Vec<String> = match inputs.get("delete") {
            None => Vec::new(),
            Some(list) => serde_json::from_value(list.clone())
                .map_err(|_| StepError::Contract("inputs.delete must be a list of paths".into()))?,
        };
        for path in files.iter().map(|(path, _)| path).chain(&deletes) {
            check_relative(path)?;
        }
        for (path, text) in &files {
            let target = stepd_sdk::workspace_path(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StepError::Retry(format!("creating {}: {e}", parent.display())))?;
            }
            std::fs::write(&target, text).map_err(|e| StepError::Retry(format!("writing {path}: {e}")))?;
            stepd_sdk::log(&format!("wrote {path} ({} bytes)", text.len()));
        }
        for path in &deletes {
            std::fs::remove_file(stepd_sdk::workspace_path(path))
                .map_err(|e| StepError::Contract(format!("deleting {path}: {e}")))?;
            stepd_sdk::log(&format!("deleted {path}"));
        }
        let mut summary = format!("wrote {} file(s)", files.len());
        if !deletes.is_empty() {
            summary.push_str(&format!(", deleted {}", deletes.len()));
        }
        Ok(StepOutput::summary(summary))
    }
}

/// Paths stay inside the workspace (the sandbox would refuse them anyway;
/// this names the mistake).
fn check_relative(path: &str) -> Result<(), StepError> {
    if path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(StepError::Contract(format!(
            "path {path:?} must be relative to the workspace and must not contain .."
        )));
    }
    Ok(())
}

stepd_sdk::export_step!(WriteFile);
