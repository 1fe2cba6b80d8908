//! The `stepd` binary on its own (no plugins needed): its commands are
//! there, and settings are validated at start with errors naming the
//! variable. (Having an integration test here also makes `cargo test`
//! build the binary that the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn stepd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepd"));
    cmd.env_remove("STEPD_CONFIG");
    cmd
}

#[test]
fn help_lists_every_command() {
    let out = stepd().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "config", "plugin", "bench"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn config_prints_the_effective_settings_with_env_overrides() {
    let out = stepd()
        .args(["config", "--json"])
        .env("STEP_MAX_ATTEMPTS", "5")
        .env_remove("STEP_TIMEOUT_SECONDS")
        .env_remove("STEPD_RETRY_BACKOFF_SECONDS")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let find = |variable: &str| {
        all.iter()
            .find(|e| e["variable"] == variable)
            .cloned()
            .unwrap_or_else(|| panic!("{variable} not listed"))
    };
    assert_eq!(
        (
            find("STEP_MAX_ATTEMPTS")["value"].clone(),
            find("STEP_MAX_ATTEMPTS")["source"].clone()
        ),
        ("5".into(), "environment".into())
    );
    assert_eq!(find("STEP_TIMEOUT_SECONDS")["value"], "900");
    assert_eq!(find("STEPD_RETRY_BACKOFF_SECONDS")["source"], "default");
    // The human form says the same.
    let out = stepd()
        .arg("config")
        .env("STEP_MAX_ATTEMPTS", "5")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("self_heal.step_max_attempts"))
        .unwrap_or_else(|| panic!("no line for the setting:\n{text}"));
    assert!(
        line.contains("environment") && line.trim_end().ends_with(" 5"),
        "{line}"
    );
}

#[test]
fn an_invalid_setting_stops_stepd_with_the_variable_named() {
    let out = stepd()
        .arg("config")
        .env("STEP_IDLE_TIMEOUT_SECONDS", "soon")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("STEP_IDLE_TIMEOUT_SECONDS=\"soon\" is invalid"), "{text}");
}
