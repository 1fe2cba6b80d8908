//! `stepd plugin new`: a ready-to-build step in any of the three languages,
//! with a README that gives its build and run commands and a test job
//! (`job.json`) that runs it over the plugin's own directory as baseline.
//!
//! Every scaffold is the same small step (write `inputs.text` to
//! `inputs.path`), so the three read side by side and each exercises typed
//! inputs, the workspace and the log.

use std::path::{Path, PathBuf};

use crate::{io_error, PluginBuildError, PluginLanguage};

/// What to scaffold.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The plugin's name: lowercase letters, digits and `-`, starting with a
    /// letter (it names the directory and the component).
    pub name: String,
    /// The language.
    pub language: PluginLanguage,
    /// The directory the plugin's directory is created in.
    pub parent: PathBuf,
    /// A Rust plugin's path to the `stepd-sdk` crate (sdk/rust).
    pub rust_sdk: Option<PathBuf>,
}

/// Check a plugin name; the error says what is wrong with it.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let starts_with_letter = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let allowed = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() || name.len() > 64 || !starts_with_letter || !allowed || name.ends_with('-') {
        return Err(format!(
            "plugin name {name:?} must be 1-64 lowercase letters, digits and '-', start with a letter and not end with '-'"
        ));
    }
    Ok(())
}

/// Create the plugin's directory and files. Refuses a directory that
/// exists, so nothing of the author's is overwritten. Returns the new
/// directory.
pub fn scaffold(new: &NewPlugin) -> Result<PathBuf, PluginBuildError> {
    let dir = new.parent.join(&new.name);
    let refused = |reason: String| PluginBuildError::Scaffold {
        dir: dir.clone(),
        reason,
    };
    check_plugin_name(&new.name).map_err(refused)?;
    if dir.exists() {
        return Err(refused("it already exists; choose another name or remove it".into()));
    }
    let name = &new.name;
    let mut files: Vec<(PathBuf, String)> = match new.language {
        PluginLanguage::Rust => {
            let sdk = new
                .rust_sdk
                .as_deref()
                .ok_or_else(|| refused("a Rust plugin needs the path of the stepd-sdk crate (sdk/rust)".into()))?;
            let sdk = std::fs::canonicalize(sdk).map_err(io_error(sdk))?;
            let mut files = vec![
                (PathBuf::from("Cargo.toml"), rust_manifest(name, &sdk)),
                (PathBuf::from("src/lib.rs"), rust_step(name)),
            ];
            // The project's lock pins the SDK's dependencies at the versions
            // already built, so the first build reuses them.
            let lock = sdk.join("../../Cargo.lock");
            if let Ok(text) = std::fs::read_to_string(&lock) {
                files.push((PathBuf::from("Cargo.lock"), text));
            }
            files
        }
        PluginLanguage::Python => vec![(PathBuf::from(crate::python::ENTRY), PYTHON_STEP.replace("{name}", name))],
        PluginLanguage::JavaScript => vec![(PathBuf::from(crate::js::ENTRY), JS_STEP.replace("{name}", name))],
    };
    files.push((PathBuf::from("README.md"), readme(name, new.language, &dir)));
    files.push((PathBuf::from("job.json"), test_job(name)));
    // Written into a sibling first and renamed, so a failure leaves no
    // half-made plugin behind.
    let staging = new.parent.join(format!(".{name}.new"));
    let _ = std::fs::remove_dir_all(&staging);
    let written = files.iter().try_for_each(|(path, text)| {
        let path = staging.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        std::fs::write(&path, text).map_err(io_error(&path))
    });
    let moved = written.and_then(|()| std::fs::rename(&staging, &dir).map_err(io_error(&dir)));
    if moved.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    moved.map(|()| dir)
}

/// The Rust crate's manifest: a workspace of its own, so it builds wherever
/// it lives (inside this repository too, where the root workspace lists
/// its members by name).
fn rust_manifest(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
stepd-sdk = {{ path = "{sdk}" }}

[workspace]
"#,
        sdk = sdk.display().to_string().replace('\\', "/")
    )
}

/// The Rust step is `plugins/typed-write`, the SDK's measure (its code is
/// held to 15 lines by tests/tests/sdk.rs), under a header of its own.
const RUST_STEP_BODY: &str = include_str!("../../../plugins/typed-write/src/lib.rs");

fn rust_step(name: &str) -> String {
    let body: String = RUST_STEP_BODY
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .map(|line| format!("{line}\n"))
        .collect();
    format!("//! {name}: a stepd step. It writes `inputs.text` to `inputs.path` in the\n//! workspace.\n{body}")
}

const PYTHON_STEP: &str = r#""""{name}: a stepd step. It writes ``inputs.text`` to ``inputs.path`` in the
workspace."""

import stepd


@stepd.step
def run(ctx: stepd.Context):
    path = ctx.input("path", str)
    text = ctx.input("text", str)
    stepd.workspace(path).write_text(text)
    stepd.log(f"wrote {path} ({len(text.encode())} bytes)")
    return f"wrote {path}"
"#;

const JS_STEP: &str = r#"// {name}: a stepd step. It writes inputs.text to inputs.path in the
// workspace.
import { step, log, workspace } from 'stepd';

export const run = step((ctx) => {
  const path = ctx.input('path', 'string');
  const text = ctx.input('text', 'string');
  workspace.writeText(path, text);
  log(`wrote ${path} (${new TextEncoder().encode(text).length} bytes)`);
  return `wrote ${path}`;
});
"#;

fn readme(name: &str, language: PluginLanguage, dir: &Path) -> String {
    let dir = dir.display();
    let (entry, guide) = match language {
        PluginLanguage::Rust => ("src/lib.rs", "docs/PLUGINS.md (the Rust SDK, sdk/rust)"),
        PluginLanguage::Python => ("step.py", "docs/PLUGINS.md (the Python SDK, sdk/python)"),
        PluginLanguage::JavaScript => ("step.js", "docs/PLUGINS.md (the JavaScript SDK, sdk/js)"),
    };
    format!(
        r#"# {name}

A stepd step in {language}: `{entry}` writes `inputs.text` to `inputs.path`
in the workspace. See {guide}.

Build it (the component lands in the plugin directory as `{name}.wasm`):

    stepd plugin build {dir}

Run one attempt over a scratch workspace:

    stepd plugin run {name} --workspace /tmp/{name}-ws --input '{{"path": "hello.txt", "text": "hi"}}'

Run it as a job (`job.json`; its baseline is this directory):

    stepd run {dir}/job.json
"#
    )
}

/// The test job, written by hand (this crate has no dependencies; see the
/// crate header) in the payload's JSON shape.
fn test_job(name: &str) -> String {
    format!(
        r#"{{
  "type": "task",
  "task": {{
    "objective": "Try the {name} step",
    "repository": ".",
    "steps": [
      {{
        "id": "write-hello",
        "title": "Write hello.txt",
        "plugin": "{name}",
        "inputs": {{"path": "hello.txt", "text": "Hello from {name}\n"}}
      }}
    ]
  }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_cannot_name_a_component_is_refused_with_the_rule() {
        for bad in ["", "Caps", "1st", "a_b", "a/b", "..", "trailing-"] {
            let refused = check_plugin_name(bad).expect_err("refused");
            assert!(refused.contains("lowercase letters"), "{bad}: {refused}");
        }
        check_plugin_name("my-step2").expect("test setup");
    }

    #[test]
    fn an_existing_directory_is_never_overwritten() {
        let parent = std::env::temp_dir().join(format!("stepd-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(parent.join("taken")).expect("test setup");
        std::fs::write(parent.join("taken/keep.txt"), "mine").expect("test setup");
        let new = |name: &str| NewPlugin {
            name: name.into(),
            language: PluginLanguage::Python,
            parent: parent.clone(),
            rust_sdk: None,
        };
        let refused = scaffold(&new("taken")).expect_err("refused").to_string();
        assert!(refused.contains("already exists"), "{refused}");
        assert_eq!(
            std::fs::read_to_string(parent.join("taken/keep.txt")).expect("test setup"),
            "mine"
        );
        let dir = scaffold(&new("fresh")).expect("test setup");
        for file in ["step.py", "README.md", "job.json"] {
            assert!(dir.join(file).is_file(), "{file}");
        }
        assert!(!parent.join(".fresh.new").exists());
        std::fs::remove_dir_all(&parent).expect("test setup");
    }
}
