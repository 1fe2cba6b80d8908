//! model-call: asks an OpenAI-compatible chat completion endpoint one
//! question and writes the answer into the workspace.
//!
//! Inputs: `{"url": "https://api.openai.com/v1/chat/completions",
//! "model": "gpt-4o-mini", "prompt": "...", "output": "answer.md",
//! "keySecret": "OPENAI_API_KEY"}`. The key is a secret the step declares
//! (`capabilities.secrets`), sent as a bearer token; the endpoint's origin
//! must be granted (`capabilities.http`). `keySecret` defaults to
//! `OPENAI_API_KEY`, `output` to `answer.md`.
//!
//! A 429 or 5xx answer, or a failed connection, is a retryable error (the
//! host's self-heal tries again); a 4xx or an answer without a message is
//! a contract error.

use stepd_sdk::http::{post_json, HttpError};
use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct ModelCall;

impl Step for ModelCall {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        let text = |field: &str, default: Option<&str>| -> Result<String, StepError> {
            match (inputs.get(field).and_then(|v| v.as_str()), default) {
                (Some(value), _) => Ok(value.to_owned()),
                (None, Some(default)) => Ok(default.to_owned()),
                (None, None) => Err(StepError::Contract(format!("inputs.{field} is required"))),
            }
        };
        let url = text("url", None)?;
        let model = text("model", None)?;
        let prompt = text("prompt", None)?;
        let output = text("output", Some("answer.md"))?;
        if output.starts_with('/') || output.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(StepError::Contract(format!(
                "inputs.output {output:?} must be a relative path inside the workspace"
            )));
        }
        let key = stepd_sdk::secret(&text("keySecret", Some("OPENAI_API_KEY"))?)?;
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
        });
        stepd_sdk::progress(&format!("asking {model}"));
        let bearer = format!("Bearer {key}");
        let response = post_json(&url, &[("authorization", &bearer)], &body).map_err(|e| match e {
            HttpError::Denied(_) | HttpError::Url(_) => StepError::Policy(e.to_string()),
            HttpError::Transport(_) | HttpError::Body(_) => StepError::Retry(e.to_string()),
        })?;
        if response.status == 429 || response.status >= 500 {
            return Err(StepError::Retry(format!("the endpoint answered {}", response.status)));
        }
        if response.status >= 400 {
            return Err(StepError::Contract(format!(
                "the endpoint answered {}",
                response.status
            )));
        }
        let answer = response.json().map_err(|e| StepError::Contract(e.to_string()))?;
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| StepError::Contract("the answer holds no choices[0].message.content".into()))?;
        let target = stepd_sdk::workspace_path(&output);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StepError::Retry(format!("creating {}: {e}", parent.display())))?;
        }
        std::fs::write(&target, format!("{content}\n"))
            .map_err(|e| StepError::Retry(format!("writing {output}: {e}")))?;
        stepd_sdk::log(&format!("wrote {output} ({} bytes)", content.len()));
        Ok(StepOutput::summary(format!("{model} answered into {output}")))
    }
}

stepd_sdk::export_step!(ModelCall);
