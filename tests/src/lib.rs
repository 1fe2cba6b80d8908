//! Shared helpers of the end-to-end tests: where the freshly built plugins
//! are, where the `stepd` binary is, and how to set up a runtime and a
//! workspace for a scenario.

pub mod cluster;
pub mod crafted;
pub mod git_server;
pub mod http_server;
pub mod inproc;
pub mod services;

use std::path::{Path, PathBuf};
use std::time::Duration;

use stepd_runtime::{AttemptLimits, AttemptReport, AttemptRequest, CancellationToken, Plugin, Runtime, StepContext};
use stepd_settings::RuntimeSettings;

/// The directory `build.rs` put this build's plugins in.
pub fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("STEPD_TEST_PLUGIN_DIR"))
}

/// The path of a built plugin by name (`hang`, `write-file`, ...).
pub fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("{name}.wasm"))
}

/// The `stepd` binary of this build: `target/<profile>/stepd`, next to the
/// `deps/` directory this test executable runs from. `cargo test
/// --workspace` (the README's test command) builds it with the tests.
pub fn stepd_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("stepd{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// Runtime settings for tests: defaults, with a cache directory private to
/// the test run and a small pool.
pub fn test_settings() -> RuntimeSettings {
    RuntimeSettings {
        cache_dir: Some(std::env::temp_dir().join("stepd-test-component-cache")),
        pool_slots: 16,
        ..RuntimeSettings::default()
    }
}

/// A runtime with [`test_settings`].
pub fn runtime() -> Runtime {
    Runtime::new(test_settings()).expect("runtime starts")
}

/// Load a built plugin by name.
pub fn load(runtime: &Runtime, name: &str) -> Plugin {
    runtime
        .load_plugin(&plugin_path(name))
        .unwrap_or_else(|e| panic!("loading plugin {name}: {e}"))
}

/// A scratch directory holding `workspace/` (what the step sees) and a
/// sibling file `outside.txt` the step must never reach.
pub struct Scratch {
    /// Keeps the directory alive for the test's duration.
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// Create the scratch layout.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("workspace")).expect("workspace dir");
        std::fs::write(dir.path().join("outside.txt"), "host secret\n").expect("outside file");
        Scratch { dir }
    }

    /// The workspace directory.
    pub fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// The step context a scenario hands its plugin.
pub fn context(attempt: u32, inputs: serde_json::Value) -> StepContext {
    StepContext {
        job_id: "test-job".into(),
        step_id: "step-0".into(),
        step_index: 0,
        attempt,
        objective: "exercise the runtime".into(),
        title: "test step".into(),
        instructions: String::new(),
        inputs: inputs.to_string(),
        retry_context: None,
    }
}

/// Run one attempt with the given deadlines (and default limits).
pub async fn attempt(
    runtime: &Runtime,
    plugin: &Plugin,
    workspace: &Path,
    attempt: u32,
    inputs: serde_json::Value,
    wall: Duration,
    idle: Duration,
) -> AttemptReport {
    let request = AttemptRequest {
        workspace: workspace.to_owned(),
        context: context(attempt, inputs),
        limits: AttemptLimits::new(wall, idle),
        cancel: CancellationToken::new(),
        grants: stepd_runtime::AttemptGrants::default(),
    };
    runtime
        .run_attempt(plugin, request)
        .await
        .expect("attempt could be set up")
}

/// Run attempt 1 of `plugin` with `grants` and a minute for each deadline.
pub async fn attempt_with(
    runtime: &Runtime,
    plugin: &Plugin,
    workspace: &Path,
    inputs: serde_json::Value,
    grants: stepd_runtime::AttemptGrants,
) -> AttemptReport {
    let minute = Duration::from_secs(60);
    let request = AttemptRequest {
        workspace: workspace.to_owned(),
        context: context(1, inputs),
        limits: AttemptLimits::new(minute, minute),
        cancel: CancellationToken::new(),
        grants,
    };
    runtime
        .run_attempt(plugin, request)
        .await
        .expect("attempt could be set up")
}

/// A UDP socket standing in for a StatsD server: the metrics a scenario
/// sends arrive here as DogStatsD lines.
pub struct StatsdListener {
    socket: std::net::UdpSocket,
}

impl StatsdListener {
    /// Bind a loopback port.
    pub fn bind() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("read timeout");
        StatsdListener { socket }
    }

    /// Where to point `STATSD_HOST`/`STATSD_PORT`.
    pub fn target(&self) -> stepd_settings::StatsdTarget {
        let port = self.socket.local_addr().expect("local addr").port();
        stepd_settings::StatsdTarget {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// Every line received until the socket stays quiet for 300 ms.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = self.socket.recv(&mut buf) {
            lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned));
        }
        lines
    }
}

/// Run `git` in `dir`, failing the test on error.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=stepd-test",
            "-c",
            "user.email=test@stepd.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real git repository with `files` committed on `main`.
pub fn git_repo(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("repo dir");
    git(dir, &["init", "-q", "-b", "main"]);
    for (path, text) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(file, text).expect("write");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "baseline"]);
}

/// Every regular file under `dir` (relative path → bytes), skipping `skip`.
pub fn files_under(dir: &Path, skip: &[&str]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .replace('\\', "/");
            if skip.contains(&rel.as_str()) {
                continue;
            }
            // Sockets (the data directory's wake-up sockets) are not files.
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                files.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    files
}

/// Every file under `dir` that holds `needle` (a secret that must be
/// nowhere), by relative path.
pub fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    files_under(dir, &[])
        .into_iter()
        .filter(|(_, bytes)| String::from_utf8_lossy(bytes).contains(needle))
        .map(|(path, _)| path)
        .collect()
}

/// `stepd run JOB` with its data under `data`, this build's plugins, none
/// of the test process's grant, HTTP or metrics settings, and `env` on
/// top: the exit code and everything it printed.
pub fn stepd_run(job: &Path, data: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(stepd_bin());
    command
        .arg("run")
        .arg(job)
        .arg("--plugins")
        .arg(plugin_dir())
        .arg("--artifacts")
        .arg(data.join("artifacts"))
        .arg("--work-dir")
        .arg(data.join("work"))
        .env(
            "STEPD_CACHE_DIR",
            std::env::temp_dir().join("stepd-test-component-cache"),
        )
        .env_remove("STEPD_CONFIG");
    for variable in [
        "STEPD_GRANT_ENV",
        "STEPD_GRANT_SECRETS",
        "STEPD_MOUNT_ROOTS",
        "STEPD_GRANT_HTTP_ORIGINS",
        "STEPD_HTTP_EXTRA_CA",
        "STATSD_HOST",
        "STATSD_PORT",
    ] {
        command.env_remove(variable);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("stepd run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
