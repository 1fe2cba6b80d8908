//! Builds step plugins from source into WASI 0.2 components, in any of the
//! three languages a step is written in. A plugin is a directory; what it
//! holds says its language:
//!
//! - `Cargo.toml`: a Rust crate. One nested `cargo build --release
//!   --target wasm32-wasip2` builds every Rust plugin asked for (into a
//!   target directory of its own: a caller that is itself a cargo build
//!   holds the lock on the main one). See `rust.rs`.
//! - `step.py`: a Python step, built with componentize-py (`python.rs`).
//! - `step.js`: a JavaScript step, bundled and built with componentize-js
//!   (`js.rs`).
//!
//! Each component lands at `<out>/<directory name>.wasm`, the plugin
//! directory stepd looks names up in. The Python and JavaScript toolchains
//! are pinned by the project's files (`sdk/python/requirements.txt`,
//! `sdk/js/package.json` and its lock) and installed on first use under
//! `<target>/toolchains` (`toolchain.rs`), so a fresh machine needs only
//! `python3` and `node`/`npm`. `stepd plugin build` and the end-to-end
//! tests' build script (tests/build.rs) both use this crate, so the demo
//! and the tests run components built the same way from the current
//! sources.
//!
//! Knows nothing of stepd beyond that layout; no dependencies, because a
//! build script compiles it too.

use std::fmt;
use std::path::{Path, PathBuf};

mod js;
mod python;
mod rust;
mod scaffold;
mod toolchain;

pub use rust::WASM_TARGET;
pub use scaffold::{check_plugin_name, scaffold, NewPlugin};

/// Why plugins could not be built. Names the plugin or file at fault.
#[derive(Debug)]
pub enum PluginBuildError {
    /// A directory is not a plugin of any language, or its manifest is
    /// unreadable.
    NotAPlugin {
        /// The directory.
        dir: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// cargo could not be started, or failed.
    Cargo {
        /// The exit status or the error starting it.
        reason: String,
    },
    /// A language's toolchain could not be installed.
    Toolchain {
        /// `python` or `javascript`.
        language: PluginLanguage,
        /// What failed, and how to fix it.
        reason: String,
    },
    /// A Python or JavaScript plugin failed to build.
    Componentize {
        /// The plugin's directory.
        dir: PathBuf,
        /// The builder's exit status or the error starting it.
        reason: String,
    },
    /// `stepd plugin new` cannot create this plugin.
    Scaffold {
        /// The plugin directory it would create.
        dir: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl fmt::Display for PluginBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginBuildError::NotAPlugin { dir, reason } => {
                write!(f, "{} is not a plugin: {reason}", dir.display())
            }
            PluginBuildError::Cargo { reason } => write!(
                f,
                "building the plugins for wasm32-wasip2 failed ({reason}); \
                 is the target installed? `rustup target add wasm32-wasip2`"
            ),
            PluginBuildError::Toolchain { language, reason } => {
                write!(f, "installing the {language} step toolchain failed: {reason}")
            }
            PluginBuildError::Componentize { dir, reason } => {
                write!(f, "building the plugin in {} failed: {reason}", dir.display())
            }
            PluginBuildError::Scaffold { dir, reason } => {
                write!(f, "cannot create the plugin {}: {reason}", dir.display())
            }
            PluginBuildError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for PluginBuildError {}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PluginBuildError + '_ {
    move |source| PluginBuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The language a plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginLanguage {
    /// A crate using `stepd-sdk` (sdk/rust).
    Rust,
    /// `step.py` using the `stepd` module (sdk/python).
    Python,
    /// `step.js` using the `stepd` module (sdk/js).
    JavaScript,
}

impl fmt::Display for PluginLanguage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginLanguage::Rust => "rust",
            PluginLanguage::Python => "python",
            PluginLanguage::JavaScript => "javascript",
        })
    }
}

/// One plugin to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSource {
    /// The plugin's directory.
    pub dir: PathBuf,
    /// The plugin's name: the directory's name (`hang`), so the component
    /// lands at `<out>/hang.wasm`.
    pub name: String,
    /// What it is written in.
    pub language: PluginLanguage,
    /// A Rust plugin's package name (`plugin-hang`).
    pub package: Option<String>,
}

impl PluginSource {
    /// Read the plugin in `dir`: a Rust crate, a Python or a JavaScript step.
    pub fn read(dir: &Path) -> Result<Self, PluginBuildError> {
        // Absolute, for builders that resolve paths from elsewhere.
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let dir = absolute.as_path();
        let not_a_plugin = |reason: String| PluginBuildError::NotAPlugin {
            dir: dir.to_owned(),
            reason,
        };
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| not_a_plugin("the directory has no usable name".into()))?;
        let (language, package) = if dir.join("Cargo.toml").is_file() {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
                .map_err(|e| not_a_plugin(format!("reading Cargo.toml: {e}")))?;
            let package =
                rust::package_name(&manifest).ok_or_else(|| not_a_plugin("Cargo.toml names no [package]".into()))?;
            (PluginLanguage::Rust, Some(package))
        } else if dir.join(python::ENTRY).is_file() {
            (PluginLanguage::Python, None)
        } else if dir.join(js::ENTRY).is_file() {
            (PluginLanguage::JavaScript, None)
        } else {
            return Err(not_a_plugin(format!(
                "it holds no Cargo.toml (Rust), {} (Python) or {} (JavaScript)",
                python::ENTRY,
                js::ENTRY
            )));
        };
        Ok(PluginSource {
            dir: dir.to_owned(),
            name,
            language,
            package,
        })
    }
}

/// Every plugin directly under `plugins_dir`, sorted by name.
pub fn plugins_under(plugins_dir: &Path) -> Result<Vec<PluginSource>, PluginBuildError> {
    let entries = std::fs::read_dir(plugins_dir).map_err(|e| PluginBuildError::NotAPlugin {
        dir: plugins_dir.to_owned(),
        reason: format!("reading the directory: {e}"),
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            ["Cargo.toml", python::ENTRY, js::ENTRY]
                .iter()
                .any(|marker| path.join(marker).is_file())
        })
        .collect();
    dirs.sort();
    dirs.iter().map(|dir| PluginSource::read(dir)).collect()
}

/// Where and with what to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The cargo to run for Rust plugins.
    pub cargo: PathBuf,
    /// The build's own directory: cargo's target directory for the wasm
    /// build, the installed toolchains (`toolchains/`) and the Python and
    /// JavaScript build cache.
    pub target_dir: PathBuf,
    /// Where the components go, as `<name>.wasm`.
    pub out_dir: PathBuf,
}

/// Build `plugins` (Rust ones with one cargo build per workspace) and copy
/// each component to `<out_dir>/<name>.wasm`, rewritten only when it
/// changed, so readers of an unchanged plugin never see it half-written.
/// Returns the components' paths, in the order given.
pub fn build(plugins: &[PluginSource], options: &BuildOptions) -> Result<Vec<PathBuf>, PluginBuildError> {
    refuse_duplicates(plugins)?;
    std::fs::create_dir_all(&options.out_dir).map_err(io_error(&options.out_dir))?;
    let rust: Vec<&PluginSource> = plugins.iter().filter(|p| p.language == PluginLanguage::Rust).collect();
    let mut built = Vec::new();
    for workspace in rust::by_workspace(&rust) {
        built.extend(rust::build(&options.cargo, &workspace, &options.target_dir)?);
    }
    let toolchains = toolchain::Toolchains::new(&options.target_dir);
    let needs_toolchains = plugins.iter().any(|p| p.language != PluginLanguage::Rust);
    let _held = needs_toolchains.then(|| toolchains.lock()).transpose()?;
    for plugin in plugins {
        let component = match plugin.language {
            PluginLanguage::Rust => continue,
            PluginLanguage::Python => python::build(&toolchains, plugin)?,
            PluginLanguage::JavaScript => js::build(&toolchains, plugin)?,
        };
        built.push((plugin.name.clone(), component));
    }
    let mut written = Vec::new();
    for plugin in plugins {
        let Some((_, component)) = built.iter().find(|(name, _)| *name == plugin.name) else {
            continue;
        };
        written.push(install(component, &options.out_dir, &plugin.name)?);
    }
    Ok(written)
}

/// Two plugins of one name would land on one `<name>.wasm`, and two Rust
/// packages of one name on one file in the shared target directory: either
/// way one would silently replace the other.
fn refuse_duplicates(plugins: &[PluginSource]) -> Result<(), PluginBuildError> {
    for (i, plugin) in plugins.iter().enumerate() {
        let clash = plugins[..i].iter().find(|earlier| {
            earlier.name == plugin.name || (earlier.package.is_some() && earlier.package == plugin.package)
        });
        if let Some(earlier) = clash {
            return Err(PluginBuildError::NotAPlugin {
                dir: plugin.dir.clone(),
                reason: format!(
                    "its name or package clashes with {} (each plugin needs its own)",
                    earlier.dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// Build a Python module (`app.py`) or a JavaScript module against any
/// world, not only stepd's, with the toolchains under `target_dir`. Not a
/// step build: it is how the tests make a component of another world that
/// `stepd plugin check` must refuse, with the same builders a step uses.
pub fn componentize_with_world(
    language: PluginLanguage,
    target_dir: &Path,
    wit_dir: &Path,
    world: &str,
    source: &Path,
    out: &Path,
) -> Result<(), PluginBuildError> {
    let toolchains = toolchain::Toolchains::new(target_dir);
    let _held = toolchains.lock()?;
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let (wit_dir, source, out) = (&absolute(wit_dir), &absolute(source), &absolute(out));
    let failed = |reason: String| PluginBuildError::Componentize {
        dir: source.to_owned(),
        reason,
    };
    match language {
        PluginLanguage::Python => {
            let (Some(dir), Some(module)) = (source.parent(), source.file_stem().and_then(|m| m.to_str())) else {
                return Err(failed("a Python source must be a file with a UTF-8 name".into()));
            };
            python::componentize(toolchains.python()?, wit_dir, world, &[dir], module, out).map_err(failed)
        }
        PluginLanguage::JavaScript => {
            js::componentize(toolchains.javascript()?, wit_dir, world, source, out).map_err(failed)
        }
        PluginLanguage::Rust => Err(failed("Rust components are built by cargo; see rust.rs".into())),
    }
}

/// Copy a built component into the plugin directory, replacing the old one
/// by a rename and only when the bytes differ.
fn install(component: &Path, out_dir: &Path, name: &str) -> Result<PathBuf, PluginBuildError> {
    let bytes = std::fs::read(component).map_err(io_error(component))?;
    let dest = out_dir.join(format!("{name}.wasm"));
    if std::fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
        let tmp = out_dir.join(format!(".{name}.wasm.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .map_err(io_error(&dest))?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_read_as_the_language_its_entry_file_names() {
        let root = std::env::temp_dir().join(format!("stepd-pluginbuild-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, file) in [("py-step", "step.py"), ("js-step", "step.js"), ("empty", "README")] {
            std::fs::create_dir_all(root.join(dir)).expect("test setup");
            std::fs::write(root.join(dir).join(file), "").expect("test setup");
        }
        assert_eq!(
            PluginSource::read(&root.join("py-step")).expect("test setup").language,
            PluginLanguage::Python
        );
        assert_eq!(
            PluginSource::read(&root.join("js-step")).expect("test setup").language,
            PluginLanguage::JavaScript
        );
        let refused = PluginSource::read(&root.join("empty"))
            .expect_err("refused")
            .to_string();
        assert!(
            refused.contains("holds no Cargo.toml (Rust), step.py (Python) or step.js (JavaScript)"),
            "{refused}"
        );
        let found: Vec<String> = plugins_under(&root)
            .expect("test setup")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(found, ["js-step", "py-step"]);
        std::fs::remove_dir_all(&root).expect("test setup");
    }
}
