//! Scenario: a plugin is compiled once. The first load in a fresh cache
//! directory writes compiled code there, a second runtime (a new process's
//! view) finds it, and loading the same bytes twice in one runtime reuses
//! the compiled component.

use stepd_runtime::Runtime;
use stepd_tests::{plugin_path, test_settings};

/// Compiled entries under `dir`. What wasmtime's cache worker writes in the
/// background is not an entry: usage statistics (`*.stats`), cleanup locks
/// (`.cleanup*`) and files being written (`*wip*`).
fn files_in(dir: &std::path::Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_entry(&path) {
                count += 1;
            }
        }
    }
    count
}

fn is_entry(path: &std::path::Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    !name.starts_with('.') && !name.ends_with(".stats") && !name.contains("wip")
}

#[test]
fn given_a_fresh_cache_when_a_plugin_is_loaded_then_its_compiled_code_is_kept_on_disk_and_reused() {
    let cache = tempfile::tempdir().expect("cache dir");
    let settings = || stepd_settings::RuntimeSettings {
        cache_dir: Some(cache.path().to_owned()),
        ..test_settings()
    };

    let first = Runtime::new(settings()).expect("runtime");
    let plugin = first.load_plugin(&plugin_path("write-file")).expect("load");
    let cached = files_in(cache.path());
    assert!(cached >= 1, "compiled code written to the cache directory");

    // The same bytes again in the same runtime: same component, nothing new.
    let again = first.load_plugin(&plugin_path("write-file")).expect("load again");
    assert_eq!(again.sha256(), plugin.sha256());

    // A second runtime with the same engine settings reuses the disk entry.
    let second = Runtime::new(settings()).expect("second runtime");
    second
        .load_plugin(&plugin_path("write-file"))
        .expect("load from disk cache");
    assert_eq!(files_in(cache.path()), cached, "a cache hit writes no new entry");

    // A different plugin is a different entry.
    second.load_plugin(&plugin_path("hang")).expect("load hang");
    assert!(files_in(cache.path()) > cached);
}

#[test]
fn given_a_loaded_plugin_when_its_file_is_replaced_then_the_next_load_reads_the_new_bytes() {
    let dir = tempfile::tempdir().expect("plugin dir");
    let path = dir.path().join("step.wasm");
    std::fs::copy(plugin_path("write-file"), &path).expect("copy");
    // Settled: a file changed in the last second is hashed at every load.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let runtime = Runtime::new(test_settings()).expect("runtime");
    let first = runtime.load_plugin(&path).expect("load");
    let again = runtime.load_plugin(&path).expect("load again, by the file's identity");
    assert_eq!(again.sha256(), first.sha256());

    // Replaced in place: its change time moved, so it is read again.
    std::fs::write(&path, std::fs::read(plugin_path("hang")).expect("read hang")).expect("rewrite");
    let replaced = runtime.load_plugin(&path).expect("load the new bytes");
    assert_ne!(replaced.sha256(), first.sha256());
    let hang = runtime.load_plugin(&plugin_path("hang")).expect("load hang");
    assert_eq!(replaced.sha256(), hang.sha256());
}
