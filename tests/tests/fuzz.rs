//! Fuzzing of everything a payload, a patch, a step's output or a file on
//! disk can put in front of stepd, with proptest and fixed seeds: the job
//! payload parser and validator, patch headers and application, the
//! redactor, `events.jsonl` reading and the settings file. Each answers
//! every input with a result or an error naming the problem: never a
//! panic, a hang, a write outside the workspace or a leaked secret.
//!
//! The tests run a short fixed-seed campaign; `STEPD_FUZZ_CASES=20000
//! cargo test --test fuzz` runs a long one, and `STEPD_FUZZ_SEED` moves it
//! elsewhere (README.md, "Reliability and limits").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Value};
use stepd_job::payload::{HostGrants, JobPayload};
use stepd_records::artifacts::JobArtifacts;
use stepd_records::events::{Event, EventRecord, EventSink};
use stepd_records::redact::Redactor;
use stepd_settings::{BaselineRoots, GrantCeiling, Settings};
use stepd_workspace::Workspace;

/// `cases` cases from a fixed seed, unless the environment asks for more.
fn config(cases: u32) -> Config {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    Config {
        cases: var("STEPD_FUZZ_CASES").map_or(cases, |n| n as u32),
        rng_seed: RngSeed::Fixed(var("STEPD_FUZZ_SEED").unwrap_or(10)),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any JSON value, its object keys mostly from the payload's vocabulary.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "type",
            "maxAttempts",
            "task",
            "objective",
            "repository",
            "startingBranch",
            "steps",
            "selfHeal",
            "id",
            "title",
            "plugin",
            "instructions",
            "inputs",
            "name",
            "path",
            "sha256",
            "stepTimeoutSeconds",
            "maxSoftResets",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Paths a payload may name: real plugins and repositories, and every kind
/// of file a plugin or repository must not be.
struct PayloadFiles {
    _dir: tempfile::TempDir,
    paths: Vec<String>,
}

impl PayloadFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo.wasm");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo");
        std::fs::write(dir.path().join("not-wasm.wasm"), b"#!/bin/sh\necho hi\n").expect("write");
        stepd_tests::git_repo(&dir.path().join("repo"), &[("a.txt", "a\n")]);
        let mut paths: Vec<String> = [
            fifo,
            dir.path().join("not-wasm.wasm"),
            dir.path().join("repo"),
            dir.path().join("missing.wasm"),
            stepd_tests::plugin_path("write-file"),
            PathBuf::from("/dev/zero"),
            PathBuf::from("/etc/shadow"),
            PathBuf::from("/proc/self/mem"),
            PathBuf::from("/"),
        ]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
        paths.extend(["../../etc/passwd", "repo", "", "x".repeat(5000).as_str()].map(str::to_owned));
        PayloadFiles { _dir: dir, paths }
    }
}

/// A payload shaped like a real one, every field drawn from good and bad
/// values.
fn any_payload(paths: Vec<String>) -> impl Strategy<Value = Value> {
    let path = prop::sample::select(paths);
    let digest = prop_oneof!["[0-9a-f]{64}", "\\PC{0,70}"];
    let plugin = prop_oneof![
        prop::sample::select(vec![
            "write-file",
            "hostile",
            "../write-file",
            "",
            "nope",
            "a/b",
            "WRITE-FILE"
        ])
        .prop_map(Value::from),
        (path.clone(), prop::option::of(digest)).prop_map(|(path, sha256)| json!({"path": path, "sha256": sha256})),
        any_json(),
    ];
    let name = prop_oneof![
        prop::sample::select(vec!["LANG", "API_KEY", "HOME", "A-B", ""]).prop_map(str::to_owned),
        "\\PC{0,8}",
    ];
    let capabilities = prop_oneof![
        Just(Value::Null),
        (
            name.clone(),
            prop_oneof![any_json(), name.clone().prop_map(|n| json!({"fromHost": n}))]
        )
            .prop_map(|(name, value)| json!({"env": {name: value}})),
        name.clone().prop_map(|name| json!({"secrets": [name]})),
        (
            prop::sample::select(vec!["repo", "/etc", "../..", "/", "missing", "fifo.wasm"]),
            prop::sample::select(vec!["/specs", "/", "/workspace", "/a/../b", "specs", "/workspace/x"]),
        )
            .prop_map(|(host, guest)| json!({"mounts": [{"host": host, "guest": guest}]})),
        any_json(),
    ];
    let step = (
        prop::option::of(prop_oneof!["[a-z]{1,6}", "\\PC{0,10}"]),
        plugin,
        any_json(),
        capabilities,
    )
        .prop_map(|(id, plugin, inputs, capabilities)| {
            let mut step = json!({"id": id, "plugin": plugin, "inputs": inputs});
            if !capabilities.is_null() {
                step["capabilities"] = capabilities;
            }
            step
        });
    (
        prop_oneof![Just(Value::from("task")), any_json()],
        prop_oneof![(0u32..5).prop_map(Value::from), any_json()],
        path,
        prop::collection::vec(step, 0..4),
        prop_oneof![Just(json!({})), any_json()],
    )
        .prop_map(|(kind, max_attempts, repository, steps, self_heal)| {
            json!({"type": kind, "maxAttempts": max_attempts,
                   "task": {"repository": repository, "steps": steps, "selfHeal": self_heal}})
        })
}

/// Every run of 64 hex digits in `text`.
fn digests(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut run = String::new();
    for c in text.chars().chain([' ']) {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            if run.len() == 64 {
                found.push(run.to_lowercase());
            }
            run.clear();
        }
    }
    found
}

/// Validate `payload` on a thread of its own, failing if it takes longer
/// than `limit` (a FIFO or a device read without bound would hang here).
fn validate_within(payload: JobPayload, base: PathBuf, limit: Duration) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Grants a little: one variable, one secret, mounts and baselines
        // under the payload's own directory.
        let root = base.parent().map(Path::to_owned).unwrap_or_default();
        let grants = HostGrants {
            ceiling: GrantCeiling {
                env: ["LANG".to_owned()].into(),
                secrets: ["API_KEY".to_owned()].into(),
                mount_roots: vec![root.clone()],
                ..GrantCeiling::default()
            },
            baselines: BaselineRoots::Only(vec![root]),
        };
        let result = payload
            .validate(&base, &stepd_tests::plugin_dir(), &grants)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let _ = tx.send(result);
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("validation took longer than {limit:?}"))
}

#[test]
fn a_known_good_payload_validates() {
    let files = PayloadFiles::new();
    let repo = &files.paths[2];
    let text = json!({"type": "task", "task": {"repository": repo,
        "steps": [{"id": "one", "plugin": "write-file", "inputs": {"path": "a", "text": "b"}}]}})
    .to_string();
    let payload = JobPayload::parse(&text).expect("parses");
    validate_within(payload, "/".into(), Duration::from_secs(30)).expect("validates");
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn any_payload_text_parses_to_a_job_or_an_error_naming_its_field(text in "\\PC{0,200}") {
        if let Err(e) = JobPayload::parse(&text) {
            prop_assert!(e.to_string().starts_with("invalid job payload: "), "{e}");
        }
    }
}

#[test]
fn any_payload_validates_or_fails_naming_the_problem_without_hanging_or_echoing_a_digest() {
    let files = PayloadFiles::new();
    let base: PathBuf = files.paths[2].clone().into();
    let mut runner = proptest::test_runner::TestRunner::new(config(150));
    runner
        .run(&any_payload(files.paths.clone()), |value| {
            let text = value.to_string();
            let payload = match JobPayload::parse(&text) {
                Ok(payload) => payload,
                Err(e) => {
                    prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{e}");
                    return Ok(());
                }
            };
            if let Err(message) = validate_within(payload, PathBuf::from(&base), Duration::from_secs(30)) {
                prop_assert!(message.starts_with("invalid job payload: "), "{message}");
                // A digest in the error is one the payload gave, never one
                // stepd computed of a file that is not a valid component.
                for digest in digests(&message) {
                    prop_assert!(text.to_lowercase().contains(&digest), "{message}");
                }
            }
            Ok(())
        })
        .expect("every payload answered");
}

/// A file tree: path → bytes.
type Tree = BTreeMap<String, Vec<u8>>;

fn any_tree() -> impl Strategy<Value = Tree> {
    let name = prop::sample::select(vec!["a.txt", "b.bin", "dir/c.txt", "dir/sub/d", "e", "dir2/f.md"]);
    let content = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "([a-z ]{0,12}\n){0,6}".prop_map(String::into_bytes),
    ];
    prop::collection::btree_map(name.prop_map(str::to_owned), content, 0..6).prop_map(|mut tree: Tree| {
        // A path cannot be both a file and a directory.
        let dirs: Vec<String> = tree
            .keys()
            .flat_map(|k| k.match_indices('/').map(|(i, _)| k[..i].to_owned()).collect::<Vec<_>>())
            .collect();
        tree.retain(|k, _| !dirs.contains(k));
        tree
    })
}

fn write_tree(root: &Path, tree: &Tree) {
    for (path, bytes) in tree {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(file, bytes).expect("write");
    }
}

/// Header and line rewrites a hostile patch might carry.
fn any_mutation() -> impl Strategy<Value = (usize, String)> {
    let evil = prop::sample::select(vec![
        "diff --git a/../escape.txt b/../escape.txt",
        "diff --git a/a.txt b/../../escape.txt",
        "+++ b/../escape.txt",
        "--- a/../escape.txt",
        "+++ /tmp/stepd-fuzz-absolute",
        "diff --git a/.git/config b/.git/config",
        "diff --git a/dir/.GIT/hooks/x b/dir/.GIT/hooks/x",
        "diff --git \"a/\\056\\056/escape\" \"b/\\056\\056/escape\"",
        "rename from a.txt",
        "rename to ../escape.txt",
        "copy to dir/../../escape.txt",
        "new file mode 120000",
        "new file mode 160000",
        "old mode 100644",
        "new mode 100755",
        "deleted file mode 100644",
        "similarity index 100%",
        "GIT binary patch",
        "literal 999999999",
        "delta 12",
        "@@ -1,1 +1,999999 @@",
        "@@ -0,0 +1 @@",
        "+../../etc/passwd",
        "\\ No newline at end of file",
        "",
    ]);
    (any::<usize>(), prop_oneof![evil.prop_map(str::to_owned), "\\PC{0,40}"])
}

/// Apply `mutations` (line index, new text) to `patch`'s lines.
fn mutate(patch: &[u8], mutations: &[(usize, String)], cut: Option<usize>) -> Vec<u8> {
    let text = String::from_utf8_lossy(patch);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (at, line) in mutations {
        if lines.is_empty() {
            lines.push(line.clone());
        } else if at % 3 == 0 {
            lines.insert(at % (lines.len() + 1), line.clone());
        } else {
            let index = at % lines.len();
            lines[index] = line.clone();
        }
    }
    let mut bytes = lines.join("\n").into_bytes();
    bytes.push(b'\n');
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

/// Every path under `root`, '/'-separated.
fn paths_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            found.push(
                path.strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn a_patch_applies_to_its_exact_tree_and_a_mangled_one_never_writes_outside_the_workspace() {
    let mut runner = proptest::test_runner::TestRunner::new(config(64));
    let strategy = (
        any_tree(),
        any_tree(),
        prop::collection::vec(any_mutation(), 0..4),
        prop::option::of(any::<usize>()),
    );
    runner
        .run(&strategy, |(base, target, mutations, cut)| {
            let area = tempfile::tempdir().expect("tempdir");
            let (plain, outside) = (area.path().join("plain"), area.path().join("outside"));
            std::fs::create_dir_all(&plain).expect("plain");
            std::fs::create_dir_all(&outside).expect("outside");
            write_tree(&plain, &base);
            let (ws_dir, git_dir) = (outside.join("ws"), area.path().join("git"));
            let (mut ws, baseline) =
                Workspace::create_from_baseline(&plain.display().to_string(), "", &ws_dir, &git_dir)
                    .expect("workspace from a plain directory");
            // The step's work: the target tree.
            for path in base.keys() {
                std::fs::remove_file(ws_dir.join(path)).expect("remove");
            }
            write_tree(&ws_dir, &target);
            let wanted = ws.snapshot().expect("snapshot");
            let Some(patch) = ws.diff(baseline, wanted).expect("diff") else {
                prop_assert_eq!(baseline, wanted);
                return Ok(());
            };
            // Its own patch rebuilds the exact tree.
            prop_assert_eq!(ws.apply_patch(baseline, &patch.bytes).expect("own patch"), wanted);

            let mangled = mutate(&patch.bytes, &mutations, cut);
            match ws.apply_patch(baseline, &mangled) {
                Ok(tree) => {
                    ws.reset_to(tree).expect("a tree that applied is written back");
                    for path in paths_under(&ws_dir) {
                        let lower = path.to_ascii_lowercase();
                        prop_assert!(!lower.split('/').any(|c| c == ".git" || c == ".."), "patch made {path}");
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            // Nothing beside the workspace, nothing absolute.
            let beside: Vec<String> = paths_under(&outside)
                .into_iter()
                .filter(|p| !p.starts_with("ws"))
                .collect();
            prop_assert!(beside.is_empty(), "written beside the workspace: {beside:?}");
            prop_assert!(!Path::new("/tmp/stepd-fuzz-absolute").exists());
            prop_assert!(!area.path().join("escape.txt").exists());
            Ok(())
        })
        .expect("every patch answered");
}

/// `text` percent-encoded (everything but unreserved characters), with
/// hex digits in upper- or lowercase.
fn percent(text: &str, upper: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ if upper => format!("%{b:02X}"),
            _ => format!("%{b:02x}"),
        })
        .collect()
}

/// The ways a step leaks a secret into its output.
#[derive(Debug, Clone, Copy)]
enum Leak {
    Raw,
    PercentUpper,
    PercentLower,
    Json,
    Base64Inside,
    Base64UrlInside,
}

fn any_leak() -> impl Strategy<Value = Leak> {
    prop::sample::select(vec![
        Leak::Raw,
        Leak::PercentUpper,
        Leak::PercentLower,
        Leak::Json,
        Leak::Base64Inside,
        Leak::Base64UrlInside,
    ])
}

/// The output a step writes when it leaks `secret` as `leak` between
/// `before` and `after`.
fn leaked(secret: &str, leak: Leak, before: &str, after: &str) -> String {
    match leak {
        Leak::Raw => format!("{before}{secret}{after}"),
        Leak::PercentUpper => format!("{before}{}{after}", percent(secret, true)),
        Leak::PercentLower => format!("{before}{}{after}", percent(secret, false)),
        Leak::Json => json!({"before": before, "secret": secret, "after": after}).to_string(),
        Leak::Base64Inside => STANDARD.encode(format!("{before}{secret}{after}")),
        Leak::Base64UrlInside => URL_SAFE_NO_PAD.encode(format!("{before}{secret}{after}")),
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn a_secret_leaked_in_any_encoding_and_split_across_chunks_never_survives_redaction(
        secret in prop_oneof!["[ -~]{8,32}", "\\PC{8,16}"],
        leak in any_leak(),
        before in "\\PC{0,12}",
        after in "\\PC{0,12}",
        splits in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let redactor = Arc::new(Redactor::new());
        redactor.register(&secret);
        let output = leaked(&secret, leak, &before, &after);
        prop_assert!(redactor.contains_secret(&output), "{leak:?} not found in {output:?}");
        // The step emits its output in chunks; the log is redacted whole.
        let mut chunks = Vec::new();
        let mut rest = output.as_str();
        for split in splits {
            let mut at = split % (rest.len() + 1);
            while !rest.is_char_boundary(at) {
                at -= 1;
            }
            let (chunk, tail) = rest.split_at(at);
            chunks.push(chunk.to_owned());
            rest = tail;
        }
        chunks.push(rest.to_owned());
        let clean = redactor.redact(&chunks.concat());
        prop_assert!(!redactor.contains_secret(&clean), "{leak:?} left in {clean:?}");
        if matches!(leak, Leak::Raw | Leak::PercentUpper | Leak::PercentLower) {
            prop_assert!(!clean.contains(secret.as_str()));
        }
        // And in a JSON document (an event, a summary), keys included.
        let doc = json!({ output.clone(): [output.clone(), {"nested": output}] });
        let clean = redactor.redact_json(&doc).to_string();
        prop_assert!(!redactor.contains_secret(&clean), "{clean}");
    }
}

fn started(attempt: u32) -> Event {
    Event::JobStarted {
        job_attempt: attempt,
        max_attempts: 3,
        first_step_index: 0,
    }
}

proptest! {
    #![proptest_config(config(100))]

    #[test]
    fn events_jsonl_with_a_torn_or_corrupt_tail_reads_as_its_events_or_a_named_error(
        events in 0u32..5,
        garbage in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let root = tempfile::tempdir().expect("tempdir");
        let redactor = Arc::new(Redactor::new());
        let artifacts = JobArtifacts::open(root.path(), "job-1", redactor.clone()).expect("artifacts");
        let sink = EventSink::new("job-1", artifacts.clone(), redactor.clone()).expect("sink");
        for attempt in 1..=events {
            sink.emit(started(attempt)).expect("emit");
        }
        let log = root.path().join("agent_jobs/job-1/events.jsonl");
        let mut bytes = std::fs::read(&log).unwrap_or_default();
        bytes.extend_from_slice(&garbage);
        std::fs::write(&log, &bytes).expect("corrupt the log");
        let torn_only = !garbage.contains(&b'\n');
        match artifacts.read_events::<EventRecord>() {
            Ok(read) => prop_assert_eq!(read.len() as u32, events + u32::from(!torn_only && garbage_is_an_event(&garbage))),
            Err(e) => {
                prop_assert!(!torn_only, "a torn last line is not an error: {e}");
                prop_assert!(e.to_string().contains("events.jsonl"), "{e}");
            }
        }
        if torn_only {
            // A resumed job cuts the torn line and goes on numbering.
            let sink = EventSink::new("job-1", artifacts.clone(), redactor).expect("resumed sink");
            let next = sink.emit(started(99)).expect("emit after a torn line");
            prop_assert_eq!(next.seq, u64::from(events) + 1);
            let read = artifacts.read_events::<EventRecord>().expect("read back");
            prop_assert_eq!(read.len() as u32, events + 1);
        }
    }
}

/// Random bytes that happen to be an event line (never, in practice).
fn garbage_is_an_event(garbage: &[u8]) -> bool {
    let text = String::from_utf8_lossy(garbage);
    let complete = text.rfind('\n').map_or("", |at| &text[..at]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| serde_json::from_str::<EventRecord>(l).is_ok())
        && !complete.trim().is_empty()
}

/// A settings file line: a known or unknown key with any TOML value, a
/// section header, or junk.
fn any_settings_line() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec!["runtime", "self_heal", "retry", "service", "workspace", "nope"]);
    let key = prop::sample::select(vec![
        "memory_mb",
        "handle_limit",
        "fuel_per_attempt",
        "epoch_tick_ms",
        "output_limit_kb",
        "pooling",
        "limit_mb",
        "limit_files",
        "limit_change_mb",
        "step_timeout_seconds",
        "max_attempts",
        "bind",
        "typo",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        (0u32..10_000).prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "\\PC{0,10}".prop_map(|s| format!("{s:?}")),
        Just("[1, 2]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("1.5e300".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("\"off\"".to_owned()),
    ];
    prop_oneof![
        section.prop_map(|s| format!("[{s}]")),
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        "\\PC{0,20}",
    ]
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn any_settings_file_loads_or_fails_naming_the_file_or_the_setting(
        lines in prop::collection::vec(any_settings_line(), 0..8),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("stepd.toml");
        std::fs::write(&file, lines.join("\n")).expect("write");
        if let Err(e) = Settings::load(Some(&file)) {
            let message = e.to_string();
            prop_assert!(
                message.contains("stepd.toml") || message.contains("STEPD_") || message.contains('='),
                "{message}"
            );
        }
    }
}
