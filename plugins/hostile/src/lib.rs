//! hostile: tries to escape or exhaust the sandbox and reports what happened.
//!
//! `inputs.probe` picks the attack:
//! - `"escape"` (default): every non-fatal escape attempt in one run (read
//!   host files and `/proc`, `..` and absolute paths, symlinks planted in
//!   the workspace by the guest or by the baseline and followed, hard links
//!   and renames out of the workspace, env vars, args, stdin, TCP, UDP and
//!   name lookups); returns a JSON report
//!   `{name: {"escaped": bool, "detail": text}}` as the output data;
//! - `"memory"`: allocate until the memory limit stops it;
//! - `"stack"`: recurse until the stack overflows;
//! - `"fuel"`: burn CPU forever (ends by fuel or a deadline);
//! - `"flood"`: print `inputs.mb` MiB (default 64) of output as fast as it can;
//! - `"deep"`: nest directories `inputs.depth` (default 300) deep in the
//!   workspace, then succeed;
//! - `"sparse"`: create a sparse file of `inputs.gib` GiB (default 2) in the
//!   workspace in a millisecond, then succeed;
//! - `"descriptors"`: open `inputs.count` files (default 20 000) in the
//!   workspace and hold them all, then succeed;
//! - `"grants"`: report the variables named in `inputs.env` (and the
//!   secrets in `inputs.secrets`, through the SDK), and read the
//!   files in `inputs.read` and write those in `inputs.write` (granted
//!   mounts), each `{"ok", "detail"}`; print the report and succeed;
//! - `"fill"`: write `inputs.mb` MiB (default 64) of incompressible bytes to
//!   one file, then succeed (a full disk fails it with the error's text).
//! - `"leak"`: fail with a contract error that quotes the value of the
//!   variable `inputs.env` (a secret it was granted, leaked into its error);
//! - `"http"`: send each of `inputs.requests` (`{"url", "method"?,
//!   "bodyBytes"?, "follow"?}`; `follow` sends one more request to a 3xx
//!   answer's `location`) through `wasi:http` and report each as `{"ok",
//!   "status", "bytes", "ms", "detail"}` (`ok`: a response arrived; `ms`:
//!   the first request's round trip, seen from the guest); print the
//!   report and succeed.

use std::io::Read;
use std::net::{ToSocketAddrs, UdpSocket};

use serde_json::{json, Map, Value};
use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct Hostile;

fn probe(report: &mut Map<String, Value>, name: &str, result: Result<String, String>) {
    let (escaped, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    stepd_sdk::log(&format!("{name}: escaped={escaped} ({detail})"));
    report.insert(name.to_owned(), json!({"escaped": escaped, "detail": detail}));
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| format!("read {} bytes from {path}", text.len()))
        .map_err(|e| format!("{path}: {e}"))
}

fn escape_probes() -> Map<String, Value> {
    let mut report = Map::new();
    probe(&mut report, "read_etc_passwd", read("/etc/passwd"));
    probe(&mut report, "read_dotdot_relative", read("../../../../etc/passwd"));
    probe(
        &mut report,
        "read_dotdot_from_workspace",
        read("/workspace/../etc/passwd"),
    );
    probe(&mut report, "read_outside_sibling", read("/workspace/../outside.txt"));
    probe(
        &mut report,
        "write_outside",
        std::fs::write("/tmp/stepd-hostile-was-here", "escaped")
            .map(|()| "wrote /tmp/stepd-hostile-was-here".to_owned())
            .map_err(|e| e.to_string()),
    );
    probe(
        &mut report,
        "write_dotdot",
        std::fs::write("/workspace/../stepd-hostile-was-here", "escaped")
            .map(|()| "wrote next to the workspace".to_owned())
            .map_err(|e| e.to_string()),
    );
    let planted = plant_symlink("/", "root-link");
    probe(
        &mut report,
        "symlink_to_root",
        planted
            .map_err(|e| format!("planting root-link: {e}"))
            .and_then(|()| read("/workspace/root-link/etc/passwd")),
    );
    let planted = plant_symlink("../../../..", "up-link");
    probe(
        &mut report,
        "symlink_dotdot",
        planted
            .map_err(|e| format!("planting up-link: {e}"))
            .and_then(|()| read("/workspace/up-link/etc/passwd")),
    );
    // A symlink the baseline (or the host) left in the workspace, pointing
    // at `/etc`, is as dead as one the guest planted.
    probe(
        &mut report,
        "baseline_symlink_read",
        read("/workspace/planted-by-baseline/passwd"),
    );
    probe(
        &mut report,
        "baseline_symlink_write",
        std::fs::write("/workspace/planted-by-baseline/stepd-hostile-was-here", "escaped")
            .map(|()| "wrote through the baseline's symlink".to_owned())
            .map_err(|e| e.to_string()),
    );
    probe(
        &mut report,
        "hard_link_outside",
        hard_link("../outside.txt", "outside-hard-link"),
    );
    probe(
        &mut report,
        "rename_outside",
        std::fs::write("/workspace/leaving.txt", "out")
            .map_err(|e| e.to_string())
            .and_then(|()| {
                std::fs::rename("/workspace/leaving.txt", "/workspace/../left.txt")
                    .map(|()| "renamed a file next to the workspace".to_owned())
                    .map_err(|e| e.to_string())
            }),
    );
    probe(&mut report, "read_proc_environ", read("/proc/self/environ"));
    probe(&mut report, "read_proc_mounts", read("/proc/self/mounts"));
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    probe(
        &mut report,
        "env_vars",
        if vars.is_empty() {
            Err("no environment variables".into())
        } else {
            Ok(format!("saw {vars:?}"))
        },
    );
    let args: Vec<String> = std::env::args().collect();
    probe(
        &mut report,
        "args",
        if args.is_empty() {
            Err("no arguments".into())
        } else {
            Ok(format!("saw {args:?}"))
        },
    );
    let mut stdin = String::new();
    probe(
        &mut report,
        "stdin",
        match std::io::stdin().read_to_string(&mut stdin) {
            Ok(0) => Err("stdin is empty".into()),
            Ok(n) => Ok(format!("read {n} bytes from stdin")),
            Err(e) => Err(e.to_string()),
        },
    );
    probe(
        &mut report,
        "udp_send",
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.send_to(b"stepd", "127.0.0.1:8125"))
            .map(|n| format!("sent {n} bytes over UDP"))
            .map_err(|e| e.to_string()),
    );
    probe(
        &mut report,
        "dns_lookup",
        ("localhost", 80)
            .to_socket_addrs()
            .map(|addrs| format!("resolved localhost to {:?}", addrs.collect::<Vec<_>>()))
            .map_err(|e| e.to_string()),
    );
    probe(
        &mut report,
        "tcp_connect",
        std::net::TcpStream::connect("127.0.0.1:5432")
            .map(|_| "connected to 127.0.0.1:5432".to_owned())
            .map_err(|e| e.to_string()),
    );
    probe(
        &mut report,
        "tcp_listen",
        std::net::TcpListener::bind("127.0.0.1:0")
            .map(|_| "bound a listening socket".to_owned())
            .map_err(|e| e.to_string()),
    );
    report
}

/// Plant a symlink in the workspace through raw WASI (std's wasi symlink
/// helper is unstable).
fn plant_symlink(target: &str, link: &str) -> Result<(), String> {
    let preopens = wasi::filesystem::preopens::get_directories();
    let (workspace, _) = preopens
        .iter()
        .find(|(_, path)| path == "/workspace")
        .ok_or_else(|| "no /workspace preopen".to_owned())?;
    workspace.symlink_at(target, link).map_err(|e| format!("{e:?}"))
}

/// Hard-link `target` (relative to the workspace) as `link` in it, through
/// raw WASI (std has no hard links on wasm).
fn hard_link(target: &str, link: &str) -> Result<String, String> {
    let preopens = wasi::filesystem::preopens::get_directories();
    let (workspace, _) = preopens
        .iter()
        .find(|(_, path)| path == "/workspace")
        .ok_or_else(|| "no /workspace preopen".to_owned())?;
    workspace
        .link_at(wasi::filesystem::types::PathFlags::empty(), target, workspace, link)
        .map_err(|e| format!("{e:?}"))?;
    read(&format!("/workspace/{link}"))
}

/// What the step can do with what it was granted: the variables it sees
/// (`inputs.env`: names), the files it can read (`inputs.read`) and write
/// (`inputs.write`), each `{"ok": bool, "detail": text}`.
fn grant_probes(inputs: &Value) -> Value {
    let list = |key: &str| -> Vec<String> {
        inputs
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let env: serde_json::Map<String, Value> = list("env")
        .into_iter()
        .map(|name| {
            let value = std::env::var(&name).map_or(Value::Null, Value::from);
            (name, value)
        })
        .collect();
    let tried = |result: Result<String, String>| match result {
        Ok(detail) => json!({"ok": true, "detail": detail}),
        Err(detail) => json!({"ok": false, "detail": detail}),
    };
    let read: serde_json::Map<String, Value> = list("read")
        .into_iter()
        .map(|path| {
            let result = std::fs::read_to_string(&path).map_err(|e| e.to_string());
            (path, tried(result))
        })
        .collect();
    let write: serde_json::Map<String, Value> = list("write")
        .into_iter()
        .map(|path| {
            let result = std::fs::write(&path, "written by a step\n")
                .map(|()| "written".to_owned())
                .map_err(|e| e.to_string());
            (path, tried(result))
        })
        .collect();
    // Through the SDK, as a plugin author would ask.
    let secrets: serde_json::Map<String, Value> = list("secrets")
        .into_iter()
        .map(|name| {
            let result = stepd_sdk::secret(&name).map_err(|e| format!("{e:?}"));
            (name, tried(result))
        })
        .collect();
    json!({"env": env, "read": read, "write": write, "secrets": secrets,
           "all_env": std::env::vars().map(|(k, _)| k).collect::<Vec<_>>()})
}

/// One request of the `http` probe, following one redirect when asked.
fn http_probe(request: &Value) -> Value {
    let url = request["url"].as_str().unwrap_or_default();
    let method = request["method"].as_str().unwrap_or("GET");
    let body = vec![b'x'; request["bodyBytes"].as_u64().unwrap_or(0) as usize];
    let started = std::time::Instant::now();
    let mut answer = stepd_sdk::http::send(method, url, &[], &body);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if request["follow"] == json!(true) {
        if let Ok(response) = &answer {
            let location = response
                .headers
                .iter()
                .find(|(name, _)| name == "location")
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
            if let (300..=399, Some(location)) = (response.status, location) {
                answer = stepd_sdk::http::send("GET", &location, &[], &[]);
            }
        }
    }
    match answer {
        Ok(response) => json!({"ok": true, "status": response.status, "bytes": response.body.len(), "ms": ms,
                               "detail": String::from_utf8_lossy(&response.body[..response.body.len().min(200)])}),
        Err(e) => json!({"ok": false, "detail": e.to_string()}),
    }
}

/// Recursion that lives on the wasm call stack, not in linear memory (no
/// arrays, nothing borrowed), and that LLVM cannot turn into a loop.
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1).rotate_left((n & 63) as u32) ^ n
}

impl Step for Hostile {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        let probe_name = inputs.get("probe").and_then(|p| p.as_str()).unwrap_or("escape");
        match probe_name {
            "escape" => {
                let report = escape_probes();
                let escaped = report.values().filter(|v| v["escaped"] == json!(true)).count();
                Ok(StepOutput::with_data(
                    format!("{escaped} of {} escapes succeeded", report.len()),
                    &Value::Object(report),
                ))
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    stepd_sdk::log(&format!("holding {} MiB", hoard.len() * 16));
                }
            }
            "stack" => {
                let depth = recurse(std::hint::black_box(0));
                Ok(StepOutput::summary(format!("recursion ended at {depth}?")))
            }
            "fuel" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            "flood" => {
                let mb = inputs.get("mb").and_then(|v| v.as_u64()).unwrap_or(64);
                let line = "x".repeat(1023);
                for _ in 0..mb * 1024 {
                    println!("{line}");
                }
                Ok(StepOutput::summary(format!("printed {mb} MiB")))
            }
            "deep" => {
                let depth = inputs.get("depth").and_then(|v| v.as_u64()).unwrap_or(300);
                let path: Vec<&str> = (0..depth).map(|_| "d").collect();
                let path = format!("/workspace/{}", path.join("/"));
                std::fs::create_dir_all(&path).map_err(|e| StepError::Other(e.to_string()))?;
                std::fs::write(format!("{path}/bottom.txt"), "deep\n").map_err(|e| StepError::Other(e.to_string()))?;
                Ok(StepOutput::summary(format!("nested {depth} directories")))
            }
            "sparse" => {
                let gib = inputs.get("gib").and_then(|v| v.as_u64()).unwrap_or(2);
                let file =
                    std::fs::File::create("/workspace/sparse.bin").map_err(|e| StepError::Other(e.to_string()))?;
                file.set_len(gib << 30).map_err(|e| StepError::Other(e.to_string()))?;
                Ok(StepOutput::summary(format!("made a {gib} GiB sparse file")))
            }
            "grants" => {
                // Printed too: whatever it saw must reach the step log
                // redacted.
                let report = grant_probes(&inputs);
                stepd_sdk::log(&report.to_string());
                Ok(StepOutput::with_data("tried its grants", &report))
            }
            "leak" => {
                let name = inputs.get("env").and_then(|v| v.as_str()).unwrap_or_default();
                let value = stepd_sdk::env(name).unwrap_or_default();
                Err(StepError::Contract(format!("gave up holding {value}")))
            }
            "http" => {
                let requests = inputs
                    .get("requests")
                    .and_then(|r| r.as_array())
                    .cloned()
                    .unwrap_or_default();
                let report: Vec<Value> = requests.iter().map(http_probe).collect();
                let report = Value::Array(report);
                stepd_sdk::log(&report.to_string());
                Ok(StepOutput::with_data("tried HTTP", &report))
            }
            "fill" => {
                // Incompressible bytes, so the host's copy of them (its git
                // objects) costs as much disk as the file itself.
                let mb = inputs.get("mb").and_then(|v| v.as_u64()).unwrap_or(64);
                let mut file =
                    std::fs::File::create("/workspace/fill.bin").map_err(|e| StepError::Other(e.to_string()))?;
                let mut state: u64 = 0x2545_F491_4F6C_DD1D;
                let mut chunk = vec![0u8; 1 << 20];
                for written in 0..mb {
                    for byte in chunk.iter_mut() {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        *byte = state as u8;
                    }
                    std::io::Write::write_all(&mut file, &chunk)
                        .map_err(|e| StepError::Other(format!("after {written} MiB: {e}")))?;
                }
                Ok(StepOutput::summary(format!("wrote {mb} MiB")))
            }
            "descriptors" => {
                let count = inputs.get("count").and_then(|v| v.as_u64()).unwrap_or(20_000);
                let mut held = Vec::new();
                for i in 0..count {
                    let file = std::fs::File::create(format!("/workspace/fd-{i}"))
                        .map_err(|e| StepError::Other(format!("opening file {i}: {e}")))?;
                    held.push(file);
                }
                Ok(StepOutput::summary(format!("held {} open files", held.len())))
            }
            other => Err(StepError::Contract(format!(
                "inputs.probe {other:?} is not a known probe"
            ))),
        }
    }
}

stepd_sdk::export_step!(Hostile);
