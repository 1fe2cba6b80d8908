//! Builds every plugin under `plugins/` (Rust crates for wasm32-wasip2,
//! Python and JavaScript steps with their pinned toolchains) before the
//! end-to-end tests compile, so they always run components built from the
//! current sources (never a `.wasm` someone built by hand). The build is
//! `stepd plugin build`'s own (host/pluginbuild), into `<target>/plugins`,
//! with the components at `<target>/plugins/dist/<name>.wasm`.

use std::path::PathBuf;

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

    for watched in ["plugins", "sdk", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let cargo = PathBuf::from(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let options = stepd_plugin_build::BuildOptions {
        cargo,
        target_dir: plugin_target,
        out_dir: dist.clone(),
    };
    let build = stepd_plugin_build::plugins_under(&root.join("plugins"))
        .and_then(|plugins| stepd_plugin_build::build(&plugins, &options));
    if let Err(e) = build {
        panic!("{e}");
    }
    println!("cargo:rustc-env=STEPD_TEST_PLUGIN_DIR={}", dist.display());
}
