//! Builds every crate under `plugins/` for wasm32-wasip2, so the end-to-end
//! tests always run components built from the current sources (never a
//! `.wasm` someone built by hand).
//!
//! The plugins are built by a nested `cargo build --release --target
//! wasm32-wasip2` into `<target>/plugins` (a target dir of its own: the outer
//! cargo holds the lock on the main one), then copied to
//! `<target>/plugins/dist/<name>.wasm`, the plugin directory the tests and the
//! README's demo use.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| if dir.is_absolute() { dir } else { root.join(dir) })
        .unwrap_or_else(|| root.join("target"));
    let plugin_target = target_dir.join("plugins");
    let dist = plugin_target.join("dist");

    for watched in ["plugins", "guest-sdk", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let plugins = plugin_crates(&root.join("plugins"));
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&plugin_target);
    for name in &plugins {
        cargo.args(["-p", &format!("plugin-{name}")]);
    }
    // The outer build's flags are for the host target, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("running cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed ({status}); \
             is the target installed? `rustup target add wasm32-wasip2`"
        );
    }

    std::fs::create_dir_all(&dist).expect("creating the plugin dist directory");
    for name in &plugins {
        let built = plugin_target
            .join("wasm32-wasip2/release")
            .join(format!("plugin_{}.wasm", name.replace('-', "_")));
        let bytes = std::fs::read(&built).unwrap_or_else(|e| panic!("reading {}: {e}", built.display()));
        let dest = dist.join(format!("{name}.wasm"));
        if std::fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
            std::fs::write(&dest, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
        }
    }
    println!("cargo:rustc-env=STEPD_TEST_PLUGIN_DIR={}", dist.display());
}

/// The directory names under `plugins/` that hold a crate.
fn plugin_crates(plugins_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(plugins_dir)
        .expect("reading plugins/")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
