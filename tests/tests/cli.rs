//! Scenarios against the real `stepd` binary: `plugin run` prints the typed
//! outcome with a meaningful exit code, and `plugin check` tells a plugin
//! author exactly what is wrong with a file — never a panic; `events
//! --follow` prints a character split across network chunks intact and
//! gives up on a silent server with a clear error.

use std::process::{Command, Output};

use stepd_tests::{plugin_dir, plugin_path, stepd_bin, Scratch};

fn stepd(args: &[&str]) -> Output {
    Command::new(stepd_bin())
        .args(args)
        .env("STEPD_PLUGIN_DIR", plugin_dir())
        .env(
            "STEPD_CACHE_DIR",
            std::env::temp_dir().join("stepd-test-component-cache"),
        )
        .output()
        .expect("running stepd")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_panic(output: &Output) {
    let all = text(output);
    assert!(!all.contains("panicked"), "stepd panicked: {all}");
}

#[test]
fn plugin_run_writes_into_the_workspace_and_exits_zero() {
    let scratch = Scratch::new();
    let ws = scratch.workspace();
    let out = stepd(&[
        "plugin",
        "run",
        "write-file",
        "--workspace",
        ws.to_str().expect("utf-8 path"),
        "--input",
        r#"{"path": "docs/hello.md", "text": "hello\n"}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("outcome: succeeded: wrote 1 file(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("docs/hello.md")).expect("file written"),
        "hello\n"
    );
}

#[test]
fn plugin_run_of_a_hanging_step_reports_the_idle_timeout_and_exits_one() {
    let scratch = Scratch::new();
    let out = stepd(&[
        "plugin",
        "run",
        "idle",
        "--workspace",
        scratch.workspace().to_str().expect("utf-8 path"),
        "--input",
        r#"{"attempts": [1]}"#,
        "--idle-timeout",
        "0.3",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints the report");
    assert_eq!(report["outcome"]["outcome"], "idle_timeout");
    assert!(report["idle_seconds"].as_f64().expect("idle seconds") >= 0.3);
}

#[test]
fn plugin_run_with_a_small_fuel_budget_reports_out_of_fuel() {
    let scratch = Scratch::new();
    let out = stepd(&[
        "plugin",
        "run",
        "hostile",
        "--workspace",
        scratch.workspace().to_str().expect("utf-8 path"),
        "--input",
        r#"{"probe": "fuel"}"#,
        "--fuel",
        "1000000",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("outcome: stopped: fuel budget exhausted"),
        "{}",
        text(&out)
    );
}

#[test]
fn plugin_check_accepts_every_step_plugin_the_project_builds() {
    for name in [
        "write-file",
        "hang",
        "idle",
        "flaky",
        "no-progress",
        "hostile",
        "chatty",
        "spin",
    ] {
        let out = stepd(&["plugin", "check", plugin_path(name).to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).starts_with("ok: "), "{name}: {}", text(&out));
    }
}

#[test]
fn plugin_check_and_run_refuse_a_component_of_the_wrong_world() {
    let wrong = plugin_path("wrong-world");
    let out = stepd(&["plugin", "check", wrong.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("is not a stepd:plugin/step component"), "{msg}");
    assert!(msg.contains("run"), "names the missing export: {msg}");
    assert_no_panic(&out);

    let scratch = Scratch::new();
    let out = stepd(&[
        "plugin",
        "run",
        wrong.to_str().expect("utf-8 path"),
        "--workspace",
        scratch.workspace().to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is not a stepd:plugin/step component"),
        "{}",
        text(&out)
    );
    assert_no_panic(&out);
}

#[test]
fn plugin_check_and_run_refuse_files_that_are_not_components() {
    let scratch = Scratch::new();
    let cases = [
        (
            "notes.wasm",
            b"this is text, not wasm".to_vec(),
            "is not a WebAssembly file",
        ),
        // The smallest core module: magic + version 1, layer 0.
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "is a core WebAssembly module, not a component",
        ),
        // A component preamble followed by garbage.
        (
            "broken.wasm",
            b"\0asm\x0d\0\x01\0\xff\xff\xff".to_vec(),
            "is not a valid component",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = scratch.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write test file");
        let p = path.to_str().expect("utf-8 path");
        let out = stepd(&["plugin", "check", p]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        assert!(text(&out).contains(expected), "{name}: {}", text(&out));
        assert_no_panic(&out);
        let out = stepd(&[
            "plugin",
            "run",
            p,
            "--workspace",
            scratch.workspace().to_str().expect("utf-8 path"),
        ]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        assert!(text(&out).contains(expected), "{name}: {}", text(&out));
        assert_no_panic(&out);
    }
    let out = stepd(&["plugin", "check", "/nonexistent/plugin.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("cannot read plugin /nonexistent/plugin.wasm"),
        "{}",
        text(&out)
    );
    let out = stepd(&[
        "plugin",
        "run",
        "no-such-plugin",
        "--workspace",
        scratch.workspace().to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("plugin \"no-such-plugin\" not found"),
        "{}",
        text(&out)
    );
}

#[test]
fn plugin_check_refuses_a_fifo_a_device_and_a_directory_at_once_naming_each() {
    let scratch = Scratch::new();
    let fifo = scratch.dir.path().join("pipe.wasm");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let dir = scratch.dir.path().join("dir.wasm");
    std::fs::create_dir(&dir).expect("mkdir");
    let cases = [
        (fifo.display().to_string(), "is a FIFO, not a regular file"),
        ("/dev/zero".to_owned(), "is a character device, not a regular file"),
        (dir.display().to_string(), "is a directory, not a regular file"),
    ];
    for (path, expected) in cases {
        let asked = std::time::Instant::now();
        // Nobody ever writes to the FIFO: a reader that opened it blocking
        // would wait for ever, and /dev/zero never ends.
        let out = stepd(&["plugin", "check", &path]);
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(5),
            "{path} took {:?}",
            asked.elapsed()
        );
        assert_eq!(out.status.code(), Some(2), "{path}: {}", text(&out));
        assert!(
            text(&out).contains(&path) && text(&out).contains(expected),
            "{path}: {}",
            text(&out)
        );
        assert_no_panic(&out);
    }
}

#[test]
fn plugin_run_refuses_bad_flags_with_a_message_naming_them() {
    let scratch = Scratch::new();
    let ws = scratch.workspace();
    let ws = ws.to_str().expect("utf-8 path");
    for (args, expected) in [
        (vec!["--input", "[1, 2]"], "--input must be a JSON object"),
        (vec!["--input", "{not json"], "--input is not valid JSON"),
        (vec!["--timeout", "0"], "--timeout must be a positive number"),
        (vec!["--memory-mb", "0"], "--memory-mb=\"0\" is invalid"),
        (vec!["--memory-mb", "99999"], "must be at most 4096"),
    ] {
        let mut full = vec!["plugin", "run", "write-file", "--workspace", ws];
        full.extend(args.iter().copied());
        let out = stepd(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{args:?}: {}", text(&out));
        assert_no_panic(&out);
    }
}

#[test]
fn bench_runtime_prints_every_row_of_its_report() {
    let out = stepd(&["bench", "runtime", "--iterations", "8", "--sieve-n", "20000"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for row in [
        "instantiate + call + teardown",
        "soft reset (deadline hit -> fresh call done)",
        "soft reset (stop -> fresh call done)",
        "lateness: cpu-bound guest, wall deadline",
        "lateness: sleeping guest, wall deadline",
        "lateness: cpu-bound guest, idle deadline",
        "lateness: sleeping guest, idle deadline",
        "spawn + wait /bin/true",
        "spawn + wait python3 -c pass",
        "| neither",
        "| epoch only",
        "| fuel + epoch",
        "- soft reset (deadline hit -> fresh call done) p50 <= 0.5 ms",
        "- deadline lateness p99 <= 2 ms",
        "- epoch-only overhead <= 1.6x",
        "| rust ",
        "| python ",
        "| javascript ",
        "(node)",
        "- python step soft reset >= 20x faster than python3 -c pass",
        "- javascript step soft reset >= 30x faster than node -e 0",
    ] {
        assert!(report.contains(row), "missing row {row:?} in:\n{report}");
    }
}

#[test]
fn bench_scale_stops_every_hung_step_and_reports_memory() {
    let out = stepd(&["bench", "scale", "--steps", "40", "--deadline-ms", "300"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    // Every row: 40 started, 40 stopped by the wall deadline.
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("off ") || l.starts_with("on "))
        .collect();
    assert_eq!(rows.len(), 4, "fuel off and on, two kinds each:\n{report}");
    for row in rows {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&fields[2..4], ["40", "40"], "{row}\n{report}");
    }
    assert!(report.contains("peak while it ran"), "{report}");
}

#[test]
fn bench_queue_measures_a_burst_by_the_stores_clock_and_breaks_a_job_down() {
    let out = stepd(&["bench", "queue", "--embedded-only", "--jobs", "30", "--alone", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for row in [
        "embedded (SQLite)            in serve",
        "embedded (SQLite)         2 processes",
        "per burst job, wall time in each phase",
        "crash recovery",
    ] {
        assert!(report.contains(row), "missing {row:?} in:\n{report}");
    }
    // The breakdown saw wasm attempts and store writes on the workers.
    let breakdown = report
        .lines()
        .skip_while(|l| !l.starts_with("per burst job"))
        .find(|l| l.contains("in serve"))
        .unwrap_or_default()
        .to_owned();
    let numbers: Vec<f64> = breakdown.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 4, "{breakdown}");
    assert!(
        numbers[0] > 0.0 && numbers[3] > 0.0,
        "store and wasm time per job: {breakdown}"
    );
}

#[test]
fn bench_replay_prints_its_table_and_targets() {
    let out = stepd(&["bench", "replay", "--files", "120", "--steps", "3", "--rounds", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for row in [
        "| files | checkpoint p50",
        "|   120 |",
        "- checkpoint p50 <= 20 ms",
        "- rebuild + replay <= 2 s",
        "- rebuild + replay no slower than git clone + apply",
    ] {
        assert!(report.contains(row), "missing {row:?} in:\n{report}");
    }
}

/// A server that streams one event whose text is split inside a
/// multi-byte character across two writes, then goes silent, holding the
/// connection open.
fn split_then_silent_server() -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && socket.read(&mut byte).is_ok_and(|n| n == 1) {
            request.push(byte[0]);
        }
        let event = "data: {\"seq\":1,\"event\":\"test.unicode\",\"payload\":{\"text\":\"grüße ✓ 日本\"}}\n\n";
        let bytes = event.as_bytes();
        let split = event.find('✓').expect("the check mark") + 1; // inside its three bytes
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";
        socket.write_all(head.as_bytes()).expect("head");
        socket.write_all(&bytes[..split]).expect("first half");
        socket.flush().expect("flush");
        std::thread::sleep(std::time::Duration::from_millis(300));
        socket.write_all(&bytes[split..]).expect("second half");
        socket.flush().expect("flush");
        // Silent from here on, connection open.
        std::thread::sleep(std::time::Duration::from_secs(20));
    });
    (url, server)
}

#[test]
fn events_follow_keeps_a_split_character_whole_and_gives_up_on_a_silent_server() {
    let (url, _server) = split_then_silent_server();
    let started = std::time::Instant::now();
    let out = Command::new(stepd_bin())
        .args(["events", "some-job", "--follow", "--read-timeout-seconds", "2"])
        .args(["--server", &url, "--token", "t"])
        .output()
        .expect("stepd events");
    let elapsed = started.elapsed();
    let printed = text(&out);
    assert!(printed.contains("grüße ✓ 日本"), "{printed}");
    assert!(!printed.contains('\u{FFFD}'), "a replacement character: {printed}");
    assert_eq!(out.status.code(), Some(6), "unreachable: {printed}");
    assert!(
        printed.contains("sent nothing (no event, no keep-alive) for 2 s"),
        "{printed}"
    );
    assert!(elapsed < std::time::Duration::from_secs(15), "took {elapsed:?}");
}

#[test]
fn control_lists_its_closed_set_of_actions_and_refuses_others_as_invalid_input() {
    let help = text(
        &Command::new(stepd_bin())
            .args(["control", "--help"])
            .output()
            .expect("help"),
    );
    for action in stepd_job::control::ControlAction::ALL {
        assert!(help.contains(action.as_str()), "{action:?} missing from:\n{help}");
    }
    let out = Command::new(stepd_bin())
        .args(["control", "some-job", "explode"])
        .output()
        .expect("stepd control");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("invalid value 'explode'"), "{}", text(&out));
}

/// A server that answers every request with `status` and a JSON error.
fn answering(status: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { break };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && socket.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let body = r#"{"code":"x","message":"as the test wants"}"#;
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes());
        }
    });
    url
}

#[test]
fn client_commands_exit_with_their_own_codes_for_unreachable_refused_and_not_found() {
    let run = |url: &str, args: &[&str]| -> Output {
        Command::new(stepd_bin())
            .args(args)
            .args(["--server", url, "--token", "t"])
            .output()
            .expect("stepd")
    };
    // Nothing listens on port 1.
    let out = run("http://127.0.0.1:1", &["control", "j", "pause"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(text(&out).contains("cannot reach http://127.0.0.1:1"), "{}", text(&out));
    let out = run(&answering("409 Conflict"), &["control", "j", "pause"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        text(&out).contains("refused (409): as the test wants"),
        "{}",
        text(&out)
    );
    let out = run(&answering("404 Not Found"), &["events", "j"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(text(&out).contains("not found: as the test wants"), "{}", text(&out));
}
