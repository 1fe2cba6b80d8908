//! Builds Rust step plugins into WASI 0.2 components. One nested `cargo
//! build --release --target wasm32-wasip2` builds every crate asked for
//! (into a target directory of its own: a caller that is itself a cargo
//! build holds the lock on the main one), then each component is copied
//! to `<out>/<directory name>.wasm`, the plugin directory stepd looks
//! names up in. `stepd plugin build` and the end-to-end tests' build script
//! (tests/build.rs) both use it, so the demo and the tests run components
//! built the same way from the current sources.
//!
//! Knows nothing of stepd beyond that layout; no dependencies, because a
//! build script compiles it too.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why plugins could not be built. Names the crate or file at fault.
#[derive(Debug)]
pub enum PluginBuildError {
    /// A directory holds no readable `Cargo.toml` with a package name.
    NotACrate {
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
    /// A built component could not be copied into the output directory.
    Copy {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl fmt::Display for PluginBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginBuildError::NotACrate { dir, reason } => {
                write!(f, "{} is not a plugin crate: {reason}", dir.display())
            }
            PluginBuildError::Cargo { reason } => write!(
                f,
                "building the plugins for wasm32-wasip2 failed ({reason}); \
                 is the target installed? `rustup target add wasm32-wasip2`"
            ),
            PluginBuildError::Copy { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for PluginBuildError {}

/// One plugin crate to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCrate {
    /// The crate's directory.
    pub dir: PathBuf,
    /// Its package name (`plugin-hang`).
    pub package: String,
    /// The plugin's name: the directory's name (`hang`), so the component
    /// lands at `<out>/hang.wasm`.
    pub name: String,
}

impl PluginCrate {
    /// Read the crate in `dir`.
    pub fn read(dir: &Path) -> Result<Self, PluginBuildError> {
        let not_a_crate = |reason: String| PluginBuildError::NotACrate {
            dir: dir.to_owned(),
            reason,
        };
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
            .map_err(|e| not_a_crate(format!("reading Cargo.toml: {e}")))?;
        let package = package_name(&manifest).ok_or_else(|| not_a_crate("Cargo.toml names no [package]".into()))?;
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| not_a_crate("the directory has no usable name".into()))?;
        Ok(PluginCrate {
            dir: dir.to_owned(),
            package,
            name,
        })
    }
}

/// The `name` of the `[package]` table, read line by line (the manifests
/// are the project's own; no TOML parser is needed for one key).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some(value) = line.strip_prefix("name") else {
            continue;
        };
        let value = value.trim_start().strip_prefix('=')?.trim();
        return Some(value.trim_matches('"').to_owned());
    }
    None
}

/// Every crate directly under `plugins_dir`, sorted by name.
pub fn crates_under(plugins_dir: &Path) -> Result<Vec<PluginCrate>, PluginBuildError> {
    let entries = std::fs::read_dir(plugins_dir).map_err(|e| PluginBuildError::NotACrate {
        dir: plugins_dir.to_owned(),
        reason: format!("reading the directory: {e}"),
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs.iter().map(|dir| PluginCrate::read(dir)).collect()
}

/// The target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Add the wasm target with rustup when the toolchain `dir` builds with
/// lacks it (rust-toolchain.toml names it, but rustup adds listed targets
/// only when it installs a toolchain, not to one already there). Without
/// rustup, cargo's own error says what is missing.
fn ensure_wasm_target(dir: &Path) -> Result<(), PluginBuildError> {
    let Ok(listed) = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    let installed = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|line| line.trim() == WASM_TARGET);
    if !listed.status.success() || installed {
        return Ok(());
    }
    eprintln!("adding the {WASM_TARGET} target with rustup");
    let added = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "add", WASM_TARGET])
        .status()
        .map_err(|e| PluginBuildError::Cargo {
            reason: format!("starting rustup: {e}"),
        })?;
    if !added.success() {
        return Err(PluginBuildError::Cargo {
            reason: format!("`rustup target add {WASM_TARGET}` failed ({added})"),
        });
    }
    Ok(())
}

/// Build `crates` (members of one cargo workspace) with `cargo` into
/// `target_dir`, and copy each component to `<out_dir>/<name>.wasm`
/// (rewritten only when it changed, so readers of an unchanged plugin
/// never see it half-written). Returns the components' paths.
pub fn build(
    cargo: &Path,
    crates: &[PluginCrate],
    target_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, PluginBuildError> {
    let Some(first) = crates.first() else {
        return Ok(Vec::new());
    };
    ensure_wasm_target(&first.dir)?;
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", WASM_TARGET, "--manifest-path"])
        .arg(first.dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for plugin in crates {
        command.args(["-p", &plugin.package]);
    }
    // A caller's flags are for the host target, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(var);
    }
    let status = command.status().map_err(|e| PluginBuildError::Cargo {
        reason: format!("starting {}: {e}", cargo.display()),
    })?;
    if !status.success() {
        return Err(PluginBuildError::Cargo {
            reason: status.to_string(),
        });
    }
    std::fs::create_dir_all(out_dir).map_err(|source| PluginBuildError::Copy {
        path: out_dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    for plugin in crates {
        let built = target_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", plugin.package.replace('-', "_")));
        let bytes = std::fs::read(&built).map_err(|source| PluginBuildError::Copy {
            path: built.clone(),
            source,
        })?;
        let dest = out_dir.join(format!("{}.wasm", plugin.name));
        if std::fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
            let tmp = out_dir.join(format!(".{}.wasm.tmp", plugin.name));
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &dest))
                .map_err(|source| PluginBuildError::Copy {
                    path: dest.clone(),
                    source,
                })?;
        }
        written.push(dest);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_name_comes_from_the_package_table_only() {
        let manifest = "[workspace]\nname = \"no\"\n\n[package]\nversion = \"1\"\nname = \"plugin-hang\"\n[dependencies]\nname = \"x\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("plugin-hang"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }
}
