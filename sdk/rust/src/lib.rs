//! stepd-sdk: everything a step plugin author needs, without touching
//! wit-bindgen.
//!
//! A plugin is a `cdylib` crate built with
//! `cargo build --release --target wasm32-wasip2`. It implements [`Step`] for
//! one type and names that type in [`export_step!`]:
//!
//! ```ignore
//! use stepd_sdk::{Step, StepContext, StepError, StepOutput};
//!
//! struct Hello;
//!
//! impl Step for Hello {
//!     fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
//!         stepd_sdk::log(&format!("hello from {}", ctx.step_id));
//!         std::fs::write(stepd_sdk::workspace_path("hello.txt"), "hi\n")
//!             .map_err(|e| StepError::Retry(e.to_string()))?;
//!         Ok(StepOutput::summary("wrote hello.txt"))
//!     }
//! }
//!
//! stepd_sdk::export_step!(Hello);
//! ```
//!
//! The step sees only its workspace, preopened at [`WORKSPACE`], and what
//! its job declares and the host grants (variables through [`env`],
//! secrets through [`secret`], read-only mounts at their guest paths).
//! Everything it prints (with [`log`], [`log_error`] or plain `println!`)
//! is captured by the host and keeps the step's idle timer from firing.

use std::path::{Path, PathBuf};

/// The generated bindings of the `stepd:plugin` world. Public only so that
/// [`export_step!`] can reach them from a plugin crate; plugin code should
/// use the re-exports at the crate root instead.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "step",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_step_world",
        default_bindings_module: "stepd_sdk::bindings",
        // The world's WASI imports get bindings here too; a plugin reaches
        // WASI through std (and `http`), so the unused ones cost nothing.
        generate_all,
    });
}

pub use bindings::stepd::plugin::types::{RetryContext, StepContext, StepError, StepOutput};
/// serde, for typed inputs: `#[derive(stepd_sdk::serde::Deserialize)]`
/// with `#[serde(crate = "stepd_sdk::serde")]`, or a plugin's own serde.
pub use serde;
/// serde_json, for inputs and output data.
pub use serde_json;

/// Where the host mounts the step's workspace inside the sandbox.
pub const WORKSPACE: &str = "/workspace";

/// The one thing a plugin implements: run this step once.
///
/// Returning `Err(StepError::Retry(..))` tells the host another attempt may
/// succeed; `Contract`, `Policy` and `Repo` say no attempt will; `Other` lets
/// the host classify the message. A panic or a trap counts as a transient
/// runtime failure.
pub trait Step {
    /// Run one attempt of the step described by `ctx`.
    fn run(ctx: StepContext) -> Result<StepOutput, StepError>;
}

impl StepContext {
    /// The step's `inputs` as `T` (any `serde::Deserialize` type). A field
    /// that is missing or of the wrong type is the job's fault: a
    /// `Contract` error naming it (`inputs.files.a.txt: invalid type …`).
    pub fn inputs<T: serde::de::DeserializeOwned>(&self) -> Result<T, StepError> {
        let text = if self.inputs.trim().is_empty() {
            "{}"
        } else {
            &self.inputs
        };
        let mut json = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                "inputs".to_owned()
            } else {
                format!("inputs.{path}")
            };
            StepError::Contract(format!("{at}: {}", e.inner()))
        })
    }

    /// The step's `inputs` object, parsed. Malformed inputs are the job's
    /// fault, so they come back as a `Contract` error the step can return.
    pub fn inputs_json(&self) -> Result<serde_json::Value, StepError> {
        if self.inputs.trim().is_empty() {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        serde_json::from_str(&self.inputs)
            .map_err(|e| StepError::Contract(format!("step inputs are not valid JSON: {e}")))
    }

    /// A string input, or a `Contract` error naming the missing field.
    pub fn required_str(&self, field: &str) -> Result<String, StepError> {
        self.inputs_json()?
            .get(field)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| StepError::Contract(format!("inputs.{field} is required (a string)")))
    }

    /// True when this attempt's number appears in the integer list
    /// `inputs.<field>` (how test plugins pick the attempts they misbehave on).
    pub fn attempt_listed_in(&self, field: &str) -> Result<bool, StepError> {
        let inputs = self.inputs_json()?;
        let Some(list) = inputs.get(field) else {
            return Ok(false);
        };
        let list = list
            .as_array()
            .ok_or_else(|| StepError::Contract(format!("inputs.{field} must be a list of attempt numbers")))?;
        Ok(list.iter().any(|v| v.as_u64() == Some(u64::from(self.attempt))))
    }
}

impl StepOutput {
    /// A successful result with only a summary line.
    pub fn summary(text: impl Into<String>) -> Self {
        StepOutput {
            summary: text.into(),
            data: None,
        }
    }

    /// A successful result with a summary and structured JSON data.
    pub fn with_data(text: impl Into<String>, data: &serde_json::Value) -> Self {
        StepOutput {
            summary: text.into(),
            data: Some(data.to_string()),
        }
    }
}

/// Write a line to the step log (stdout stream). Resets the idle timer.
pub fn log(line: &str) {
    bindings::stepd::plugin::host::emit(
        bindings::stepd::plugin::host::OutputStream::Stdout,
        &format!("{line}\n"),
    );
}

/// Write a line to the step log's stderr stream. Resets the idle timer.
pub fn log_error(line: &str) {
    bindings::stepd::plugin::host::emit(
        bindings::stepd::plugin::host::OutputStream::Stderr,
        &format!("{line}\n"),
    );
}

/// Tell the host the step is alive without writing output: long silent work
/// (a big computation, a slow write) should call this to keep the idle timer
/// from firing.
pub fn progress(msg: &str) {
    bindings::stepd::plugin::host::progress(msg);
}

/// Spend `ms` milliseconds as a slow step would, logging a line every
/// 100 ms (`working (300/2000 ms)`), so the host never finds it idle while
/// its deadline and the operator's controls still apply.
pub fn work_for(ms: u64) {
    let mut spent = 0;
    while spent < ms {
        let chunk = (ms - spent).min(100);
        std::thread::sleep(std::time::Duration::from_millis(chunk));
        spent += chunk;
        log(&format!("working ({spent}/{ms} ms)"));
    }
}

/// The workspace root as a path.
pub fn workspace() -> PathBuf {
    PathBuf::from(WORKSPACE)
}

/// A path inside the workspace, from a path relative to its root.
pub fn workspace_path(relative: impl AsRef<Path>) -> PathBuf {
    workspace().join(relative)
}

/// A variable the step was granted (`capabilities.env` in the job), or
/// `None`: a step sees no variable it did not declare.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A secret the step was granted (`capabilities.secrets`), or a contract
/// error naming it. The host redacts the value from everything it records,
/// but a step should still never print it.
pub fn secret(name: &str) -> Result<String, StepError> {
    std::env::var(name).map_err(|_| {
        StepError::Contract(format!(
            "secret {name} was not granted: declare it in the step's capabilities.secrets"
        ))
    })
}

pub mod http;

/// An I/O error of the step's own work (a file it reads or writes): the
/// host classifies the message (`Other`), so `?` works on `std::fs` calls.
impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> Self {
        StepError::Other(e.to_string())
    }
}

/// Malformed JSON the step itself handles (its inputs, an answer it
/// parsed) is a contract error.
impl From<serde_json::Error> for StepError {
    fn from(e: serde_json::Error) -> Self {
        StepError::Contract(e.to_string())
    }
}

/// `log!("wrote {path}")`: a formatted line to the step log (stdout).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log(&::std::format!($($arg)*))
    };
}

/// `progress!("{done}/{total}")`: a formatted liveness signal.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::progress(&::std::format!($($arg)*))
    };
}

/// Export a type implementing [`Step`] as the plugin's `run` function.
/// Invoke it once per plugin crate.
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        #[allow(unsafe_code)]
        const _: () = {
            struct __StepdExport;

            impl $crate::bindings::Guest for __StepdExport {
                fn run(ctx: $crate::StepContext) -> ::core::result::Result<$crate::StepOutput, $crate::StepError> {
                    <$step as $crate::Step>::run(ctx)
                }
            }

    $crate::bindings::__export_step_world!(__StepdExport with_types_in $crate::bindings);
        };
    };
}

/// Export a plain function `fn(StepContext) -> Result<StepOutput,
/// StepError>` as the plugin's `run`: [`export_step!`] without a type.
///
/// ```ignore
/// fn run(ctx: stepd_sdk::StepContext) -> Result<stepd_sdk::StepOutput, stepd_sdk::StepError> {
///     Ok(stepd_sdk::StepOutput::summary(format!("hello from {}", ctx.step_id)))
/// }
/// stepd_sdk::export_fn!(run);
/// ```
#[macro_export]
macro_rules! export_fn {
    ($run:path) => {
        const _: () = {
            struct __StepdFn;

            impl $crate::Step for __StepdFn {
                fn run(ctx: $crate::StepContext) -> ::core::result::Result<$crate::StepOutput, $crate::StepError> {
                    $run(ctx)
                }
            }

            $crate::export_step!(__StepdFn);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(inputs: &str) -> StepContext {
        StepContext {
            job_id: "j".into(),
            step_id: "s".into(),
            step_index: 0,
            attempt: 1,
            objective: String::new(),
            title: String::new(),
            instructions: String::new(),
            inputs: inputs.into(),
            retry_context: None,
        }
    }

    #[derive(serde::Deserialize, Debug)]
    struct Files {
        files: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        sleep_ms: u64,
    }

    #[test]
    fn typed_inputs_name_the_field_that_is_wrong() {
        let ok: Files = ctx(r#"{"files": {"a.txt": "x"}}"#).inputs().expect("valid");
        assert_eq!((ok.files.len(), ok.sleep_ms), (1, 0));
        match ctx(r#"{"files": {"a.txt": 3}}"#).inputs::<Files>() {
            Err(StepError::Contract(m)) => assert!(m.starts_with("inputs.files.a.txt: invalid type"), "{m}"),
            other => panic!("expected a contract error, got {other:?}"),
        }
        match ctx("").inputs::<Files>() {
            Err(StepError::Contract(m)) => assert!(m.contains("missing field `files`"), "{m}"),
            other => panic!("expected a contract error, got {other:?}"),
        }
        let io: StepError = std::io::Error::other("disk on fire").into();
        assert!(matches!(io, StepError::Other(m) if m == "disk on fire"));
    }

    #[test]
    fn a_secret_not_granted_is_a_contract_error_naming_it() {
        match secret("STEPD_SDK_TEST_NEVER_SET") {
            Err(StepError::Contract(message)) => assert!(message.contains("STEPD_SDK_TEST_NEVER_SET"), "{message}"),
            other => panic!("expected a contract error, got {other:?}"),
        }
        assert_eq!(env("STEPD_SDK_TEST_NEVER_SET"), None);
    }
}
