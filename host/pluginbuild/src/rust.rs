//! Rust plugins: one nested `cargo build --release --target wasm32-wasip2`
//! for every Rust plugin asked for, into a target directory of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{PluginBuildError, PluginSource};

/// The target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The `name` of the `[package]` table, read line by line (the manifests
/// are the project's own; no TOML parser is needed for one key).
pub(crate) fn package_name(manifest: &str) -> Option<String> {
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

/// The directory of the cargo workspace `dir`'s crate belongs to: the
/// nearest directory, from `dir` up, whose Cargo.toml has a `[workspace]`
/// table (a crate without one anywhere is a workspace of its own).
fn workspace_root(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|candidate| {
            std::fs::read_to_string(candidate.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.lines().any(|line| line.trim() == "[workspace]"))
        })
        .unwrap_or(dir)
        .to_owned()
}

/// The Rust plugins grouped by cargo workspace, one build each: the
/// project's plugins share the root workspace, a scaffolded one
/// (`stepd plugin new`) is a workspace of its own.
pub(crate) fn by_workspace<'a>(crates: &[&'a PluginSource]) -> Vec<Vec<&'a PluginSource>> {
    let mut groups: Vec<(PathBuf, Vec<&'a PluginSource>)> = Vec::new();
    for plugin in crates {
        // `PluginSource::read` made the directory absolute.
        let root = workspace_root(&plugin.dir);
        match groups.iter_mut().find(|(r, _)| *r == root) {
            Some((_, group)) => group.push(plugin),
            None => groups.push((root, vec![plugin])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

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
/// `target_dir`. Returns each plugin's name and built component.
pub(crate) fn build(
    cargo: &Path,
    crates: &[&PluginSource],
    target_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, PluginBuildError> {
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
    let packages: Vec<&str> = crates.iter().filter_map(|p| p.package.as_deref()).collect();
    for package in &packages {
        command.args(["-p", package]);
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
    Ok(crates
        .iter()
        .zip(&packages)
        .map(|(plugin, package)| {
            let built = target_dir
                .join(WASM_TARGET)
                .join("release")
                .join(format!("{}.wasm", package.replace('-', "_")));
            (plugin.name.clone(), built)
        })
        .collect())
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
