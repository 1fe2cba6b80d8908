//! The crate graph is the architecture (docs/ARCHITECTURE.md): given the
//! workspace's lock file, when `cargo tree` lists what each host crate
//! pulls in, then no crate reaches up a layer or into a stack it must not
//! know — the runtime knows no store, queue, HTTP server (its outbound
//! `wasi:http` client is a guest capability), self-heal or git; the
//! workspace no wasm; self-heal no database, broker or HTTP server; the
//! store no HTTP and no operator-control rules; settings nothing of stepd.

use std::collections::BTreeSet;
use std::process::Command;

/// The packages `package` depends on (normal dependencies, transitively).
fn dependencies(package: &str) -> BTreeSet<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-f",
            "{p}",
            "-p",
        ])
        .arg(package)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != package)
        .map(str::to_owned)
        .collect()
}

fn assert_never(package: &str, forbidden: &[&str]) {
    let deps = dependencies(package);
    assert!(
        deps.len() > 3,
        "cargo tree -p {package} listed almost nothing ({deps:?}): the check would prove nothing"
    );
    let found: Vec<&&str> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(found.is_empty(), "{package} must never depend on {found:?}");
}

const SERVER: [&str; 6] = ["sqlx", "lapin", "axum", "stepd-store", "stepd-queue", "stepd-api"];

#[test]
fn settings_depend_on_nothing_of_stepd() {
    let deps = dependencies("stepd-settings");
    let ours: Vec<&String> = deps.iter().filter(|d| d.starts_with("stepd")).collect();
    assert!(ours.is_empty(), "stepd-settings depends on {ours:?}");
    assert!(deps.contains("toml"), "the check sees the settings' own dependencies");
}

#[test]
fn the_runtime_knows_no_store_queue_http_self_heal_or_git() {
    let mut forbidden = SERVER.to_vec();
    forbidden.extend([
        "git2",
        "stepd-selfheal",
        "stepd-workspace",
        "stepd-worker",
        "stepd-records",
    ]);
    assert_never("stepd-runtime", &forbidden);
    assert!(dependencies("stepd-runtime").contains("wasmtime"));
}

#[test]
fn the_workspace_knows_no_wasm() {
    assert_never(
        "stepd-workspace",
        &[
            "wasmtime",
            "wasmtime-wasi",
            "stepd-runtime",
            "stepd-records",
            "sqlx",
            "axum",
        ],
    );
}

#[test]
fn self_heal_knows_no_database_broker_or_server() {
    let mut forbidden = SERVER.to_vec();
    forbidden.push("stepd-worker");
    assert_never("stepd-selfheal", &forbidden);
}

#[test]
fn records_and_job_shapes_know_no_wasm_database_or_server() {
    for package in ["stepd-records", "stepd-job"] {
        let mut forbidden = SERVER.to_vec();
        forbidden.extend(["wasmtime", "git2", "stepd-runtime", "stepd-workspace"]);
        assert_never(package, &forbidden);
    }
}

#[test]
fn the_store_knows_no_http_no_control_rules_and_no_wasm() {
    assert_never(
        "stepd-store",
        &[
            "axum",
            "stepd-api",
            "lapin",
            "stepd-queue",
            "wasmtime",
            "stepd-runtime",
            "stepd-selfheal",
        ],
    );
}

#[test]
fn the_queue_and_the_api_run_no_steps() {
    for package in ["stepd-queue", "stepd-api"] {
        assert_never(
            package,
            &["wasmtime", "stepd-runtime", "stepd-selfheal", "stepd-worker", "git2"],
        );
    }
    assert_never("stepd-queue", &["axum", "stepd-api"]);
}

#[test]
fn the_worker_serves_no_http() {
    assert_never("stepd-worker", &["axum", "stepd-api"]);
}

#[test]
fn stepd_run_and_plugin_commands_use_no_server_crate() {
    let source = include_str!("../../host/cli/src/local.rs");
    let crates: BTreeSet<&str> = source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("use "))
        .filter_map(|path| path.split("::").next())
        .filter(|name| name.starts_with("stepd_"))
        .collect();
    assert!(
        crates.contains("stepd_selfheal") && crates.contains("stepd_runtime"),
        "local.rs imports {crates:?}: the check reads the wrong file"
    );
    for server in ["stepd_store", "stepd_queue", "stepd_worker", "stepd_api"] {
        assert!(!crates.contains(server), "`stepd run` reaches {server}");
    }
    assert!(!source.contains("crate::service") && !source.contains("crate::client"));
}
