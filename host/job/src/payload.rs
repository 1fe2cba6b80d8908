//! The job payload (docs/OPERATIONS.md#job-payload): parsed with serde, then validated as a
//! whole before anything runs. A payload that does not validate is refused
//! with an error naming the field (`task.steps[1].id`, ...); it is never
//! queued or run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use stepd_plugin_file::{plugin_digest, PluginDigest, PluginFileError, WasmKind};

use stepd_settings::{is_env_name, BaselineRoots, GrantCeiling, HttpOrigin, HttpScheme, SelfHealOverrides};

use crate::capabilities::Capabilities;

/// A payload error: the field (a JSON path) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid job payload: {field}: {message}")]
pub struct PayloadError {
    /// Where, as a path into the payload (`task.steps[0].plugin`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

pub(crate) fn payload_error(field: impl Into<String>, message: impl Into<String>) -> PayloadError {
    PayloadError {
        field: field.into(),
        message: message.into(),
    }
}

/// The payload as submitted. Unknown fields are refused: a typo such as
/// `maxAttempt` must not silently leave a default in place.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPayload {
    /// Must be `"task"`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^task$"))]
    pub kind: String,
    /// Job attempts (queue retries included), default 3.
    #[serde(default = "default_max_attempts")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_attempts: u32,
    /// The task.
    pub task: TaskSpec,
}

fn default_max_attempts() -> u32 {
    3
}

/// What to do, where.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskSpec {
    /// What the task is for; every step is told.
    #[serde(default)]
    pub objective: String,
    /// The baseline: a git repository (a local path, or an `https://` URL
    /// of an origin the host fetches from) or a plain directory.
    #[serde(default)]
    pub repository: String,
    /// The branch of `repository` to start from.
    #[serde(default = "default_branch")]
    pub starting_branch: String,
    /// The secret (by name, one the host may grant) whose value
    /// authenticates the fetch of a remote `repository`: sent as HTTP basic
    /// authentication (`x-access-token`), as git hosts take a token. Never
    /// given in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_token_secret: Option<String>,
    /// The steps, in order.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Budget overrides for this job.
    #[serde(default)]
    pub self_heal: SelfHealOverrides,
}

fn default_branch() -> String {
    "main".to_owned()
}

/// One step as submitted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepSpec {
    /// Unique within the task; `step-<index>` when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// A human title.
    #[serde(default)]
    pub title: String,
    /// Which plugin runs it.
    pub plugin: PluginSpec,
    /// Free text for the step.
    #[serde(default)]
    pub instructions: String,
    /// The step's inputs (a JSON object).
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inputs: serde_json::Value,
    /// What the step is granted beyond its workspace (nothing by default).
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A plugin reference: a name in the plugin directory, or a name or path
/// with an optional sha256 pin.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PluginSpec {
    /// `"write-file"`.
    Name(String),
    /// `{"name": "lint", "sha256": "..."}` or `{"path": "x.wasm", ...}`.
    Detailed(PluginDetail),
}

/// The object form of a plugin reference. Unknown keys are refused, so a
/// misspelt `sha256` cannot silently drop the pin.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginDetail {
    /// A name in the plugin directory.
    #[serde(default)]
    pub name: Option<String>,
    /// A `.wasm` path.
    #[serde(default)]
    pub path: Option<String>,
    /// The expected sha256 (hex) of the file.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// A step ready to run: id settled, plugin file found and pinned.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolvedStep {
    /// Its id.
    pub id: String,
    /// 0-based index.
    pub index: u32,
    /// Title.
    pub title: String,
    /// Instructions.
    pub instructions: String,
    /// Inputs as JSON text.
    pub inputs: String,
    /// The plugin's name (for signatures and logs).
    pub plugin_name: String,
    /// The plugin file.
    pub plugin_path: PathBuf,
    /// The file's sha256, as checked at validation.
    pub plugin_sha256: String,
    /// Its grants, checked against the host's ceiling (mounts canonical).
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
}

/// What validation may grant a job: the host's ceiling for capabilities,
/// and where local baselines may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrants {
    /// The most the host will grant a step.
    pub ceiling: GrantCeiling,
    /// Directories whose trees may serve as a local baseline.
    pub baselines: BaselineRoots,
}

impl HostGrants {
    /// No capabilities, baselines from anywhere: `stepd run` on one's own
    /// machine with nothing configured, and tests.
    pub fn local_default() -> Self {
        HostGrants {
            ceiling: GrantCeiling::default(),
            baselines: BaselineRoots::Any,
        }
    }
}

/// A payload that passed validation, resolved: the form the API stores at
/// submit and a worker runs as it is, without resolving anything again
/// (the plugin's hash is still checked when the file is loaded).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidatedJob {
    /// The payload as submitted.
    pub payload: JobPayload,
    /// The repository, with a relative local path made absolute.
    pub repository: String,
    /// The steps, resolved.
    pub steps: Vec<ResolvedStep>,
}

impl JobPayload {
    /// Parse JSON text; a type error names the field it is in.
    pub fn parse(text: &str) -> Result<Self, PayloadError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            payload_error(
                if field == "." { "payload".to_owned() } else { field },
                e.into_inner().to_string(),
            )
        })
    }

    /// Check everything that can be checked before running: the type, the
    /// budgets, the repository, every step's id and plugin. Relative local
    /// paths (repository, plugin paths) are taken from `base_dir` (the
    /// payload file's directory); named plugins from `plugin_dir`.
    /// Capabilities and local baselines are held to `grants`.
    pub fn validate(
        &self,
        base_dir: &Path,
        plugin_dir: &Path,
        grants: &HostGrants,
    ) -> Result<ValidatedJob, PayloadError> {
        if self.kind != "task" {
            return Err(payload_error("type", format!("must be \"task\", got {:?}", self.kind)));
        }
        if self.max_attempts == 0 {
            return Err(payload_error("maxAttempts", "must be an integer >= 1"));
        }
        self.task.self_heal.validate().map_err(|e| match e {
            stepd_settings::ConfigError::Invalid { variable, reason, .. } => payload_error(variable, reason),
            other => payload_error("task.selfHeal", other.to_string()),
        })?;
        let repository = resolve_repository(&self.task.repository, base_dir, grants)?;
        if self.task.starting_branch.trim().is_empty() {
            return Err(payload_error("task.startingBranch", "must not be empty"));
        }
        if !is_valid_branch_name(&self.task.starting_branch) {
            return Err(payload_error(
                "task.startingBranch",
                format!("{:?} is not a valid git branch name", self.task.starting_branch),
            ));
        }
        self.check_token_secret(&repository, &grants.ceiling)?;
        if self.task.steps.is_empty() {
            return Err(payload_error("task.steps", "a task needs at least one step"));
        }
        let mut seen = HashSet::new();
        let mut steps = Vec::with_capacity(self.task.steps.len());
        for (index, step) in self.task.steps.iter().enumerate() {
            let field = format!("task.steps[{index}]");
            let id = step.id.clone().unwrap_or_else(|| format!("step-{index}"));
            if !is_valid_step_id(&id) {
                return Err(payload_error(
                    format!("{field}.id"),
                    format!("{id:?} is not a valid step id (1-64 letters, digits, '.', '-', '_')"),
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(payload_error(
                    format!("{field}.id"),
                    format!("duplicate step id {id:?}"),
                ));
            }
            if !step.inputs.is_object() {
                return Err(payload_error(format!("{field}.inputs"), "must be a JSON object"));
            }
            let (plugin_name, plugin_path, plugin_sha256) =
                resolve_plugin(&step.plugin, &format!("{field}.plugin"), base_dir, plugin_dir)?;
            let capabilities =
                step.capabilities
                    .validate(&format!("{field}.capabilities"), base_dir, &grants.ceiling)?;
            steps.push(ResolvedStep {
                id,
                index: u32::try_from(index).map_err(|_| payload_error("task.steps", "too many steps"))?,
                title: step.title.clone(),
                instructions: step.instructions.clone(),
                inputs: step.inputs.to_string(),
                plugin_name,
                plugin_path,
                plugin_sha256,
                capabilities,
            });
        }
        Ok(ValidatedJob {
            payload: self.clone(),
            repository,
            steps,
        })
    }
}

impl JobPayload {
    /// A token secret goes with a remote repository, and only one the host
    /// may grant.
    fn check_token_secret(&self, repository: &str, ceiling: &GrantCeiling) -> Result<(), PayloadError> {
        let Some(name) = &self.task.repository_token_secret else {
            return Ok(());
        };
        let field = "task.repositoryTokenSecret";
        if !is_remote_url(repository) {
            return Err(payload_error(
                field,
                "only a remote (https://) repository is fetched with a token",
            ));
        }
        if !is_env_name(name) {
            return Err(payload_error(field, format!("{name:?} is not a secret name")));
        }
        if !ceiling.secrets.contains(name) {
            return Err(payload_error(
                field,
                format!(
                    "secret {name} may not be granted on this host (the operator lists secrets in STEPD_GRANT_SECRETS)"
                ),
            ));
        }
        Ok(())
    }
}

/// A branch name git takes as `refs/heads/<name>` and no program can read
/// as an option: the rules of `git check-ref-format`, kept to printable
/// ASCII.
fn is_valid_branch_name(name: &str) -> bool {
    let bad_char = |c: char| !c.is_ascii_graphic() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\');
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && !name.contains(bad_char)
        && !name.contains("..")
        && !name.contains("@{")
        && name != "@"
        && !name.ends_with(".lock")
        && !name.ends_with('.')
        && name.split('/').all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// True for an `http://` or `https://` URL (any case).
pub fn is_remote_url(repository: &str) -> bool {
    let head = repository.get(..8).unwrap_or(repository).to_ascii_lowercase();
    head.starts_with("https://") || head.starts_with("http://")
}

fn is_valid_step_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id != "."
        && id != ".."
}

fn resolve_repository(repository: &str, base_dir: &Path, grants: &HostGrants) -> Result<String, PayloadError> {
    let field = "task.repository";
    let baselines = &grants.baselines;
    let repository = repository.trim();
    if repository.is_empty() {
        return Err(payload_error(
            field,
            "is required (a git repository path or URL, or a directory)",
        ));
    }
    if is_remote_url(repository) {
        return remote_repository(repository, grants);
    }
    let local = match repository.strip_prefix("file://") {
        Some(path) => PathBuf::from(path),
        None if repository.contains("://") => {
            return Err(payload_error(
                field,
                format!("{repository:?}: a remote repository is an https:// URL (or a local path, or file://)"),
            ))
        }
        None => base_dir.join(repository),
    };
    if !local.is_dir() {
        return Err(payload_error(field, format!("{} is not a directory", local.display())));
    }
    let canonical = std::fs::canonicalize(&local).unwrap_or(local);
    // A local baseline is a grant too: its files are copied into the
    // workspace, where any step can read them back out.
    if !baselines.allows(&canonical) {
        return Err(payload_error(
            field,
            format!(
                "{} may not serve as a baseline on this host (the operator lists the directories that may in {})",
                canonical.display(),
                BaselineRoots::SETTING
            ),
        ));
    }
    if repository.starts_with("file://") {
        return Ok(repository.to_owned());
    }
    Ok(canonical.to_string_lossy().into_owned())
}

/// A remote repository is fetched from an origin the host allows: any
/// `https://` one for `stepd run` on one's own machine, those in
/// `STEPD_BASELINE_ORIGINS` for a server (a plain `http://` origin only when
/// listed, anywhere).
fn remote_repository(url: &str, grants: &HostGrants) -> Result<String, PayloadError> {
    let field = "task.repository";
    let (origin, url) = HttpOrigin::repository_url(url).map_err(|m| payload_error(field, m))?;
    let listed = grants.ceiling.baseline_origins.contains(&origin);
    let anywhere = matches!(grants.baselines, BaselineRoots::Any) && origin.scheme == HttpScheme::Https;
    if !(listed || anywhere) {
        return Err(payload_error(
            field,
            format!("{origin} is not an origin this host fetches baselines from (the operator lists them in STEPD_BASELINE_ORIGINS)"),
        ));
    }
    Ok(url)
}

fn resolve_plugin(
    spec: &PluginSpec,
    field: &str,
    base_dir: &Path,
    plugin_dir: &Path,
) -> Result<(String, PathBuf, String), PayloadError> {
    let (name, path, pin) = match spec {
        PluginSpec::Name(name) => (Some(name.clone()), None, None),
        PluginSpec::Detailed(PluginDetail { name, path, sha256 }) => (name.clone(), path.clone(), sha256.clone()),
    };
    let (label, file) = match (name, path) {
        (Some(name), None) => {
            if name.is_empty() || name.contains('/') || name.contains("..") {
                return Err(payload_error(field, format!("{name:?} is not a plugin name")));
            }
            let file = plugin_dir.join(format!("{name}.wasm"));
            (name, file)
        }
        (None, Some(path)) => {
            let file = base_dir.join(&path);
            let label = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(path);
            (label, file)
        }
        (Some(_), Some(_)) => return Err(payload_error(field, "give a name or a path, not both")),
        (None, None) => return Err(payload_error(field, "needs a name or a path")),
    };
    let digest = plugin_digest(&file).map_err(|e| match e {
        PluginFileError::Open { .. } => payload_error(field, format!("unknown plugin {label:?}: {e}")),
        other => payload_error(field, other.to_string()),
    })?;
    // Nothing derived from the bytes of a file that is not a component is
    // ever reported: a payload can name any path.
    let sha256 = match digest {
        Some(PluginDigest {
            kind: WasmKind::Component,
            sha256,
        }) => sha256,
        Some(PluginDigest {
            kind: WasmKind::CoreModule,
            ..
        }) => {
            return Err(payload_error(
                field,
                format!(
                    "plugin {} is a core WebAssembly module, not a component",
                    file.display()
                ),
            ))
        }
        None => {
            return Err(payload_error(
                field,
                format!("plugin {} is not a WebAssembly component", file.display()),
            ))
        }
    };
    // Absolute, so the resolved job means the same file to every process
    // that runs it, whatever its working directory.
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    if let Some(pin) = pin {
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(payload_error(format!("{field}.sha256"), "must be 64 hex digits"));
        }
        if !pin.eq_ignore_ascii_case(&sha256) {
            return Err(payload_error(
                format!("{field}.sha256"),
                format!("plugin {label:?} has sha256 {sha256}, not the pinned {pin}"),
            ));
        }
    }
    Ok((label, file, sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins");
            std::fs::create_dir_all(dir.path().join("repo")).expect("repo");
            // A component header: resolution reads and hashes plugins, it does
            // not compile them.
            std::fs::write(dir.path().join("plugins/write-file.wasm"), b"\0asm\x0d\0\x01\0").expect("plugin");
            Fixture { dir }
        }

        fn validate(&self, json: serde_json::Value) -> Result<ValidatedJob, PayloadError> {
            JobPayload::parse(&json.to_string())?.validate(
                self.dir.path(),
                &self.dir.path().join("plugins"),
                &HostGrants::local_default(),
            )
        }
    }

    fn job(steps: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"type": "task", "task": {"objective": "o", "repository": "repo", "steps": steps}})
    }

    #[test]
    fn a_valid_payload_gets_default_ids_and_resolved_plugins() {
        let fx = Fixture::new();
        let job = fx
            .validate(job(
                serde_json::json!([{"plugin": "write-file"}, {"id": "b", "plugin": "write-file"}]),
            ))
            .expect("valid");
        assert_eq!(job.steps[0].id, "step-0");
        assert_eq!(job.steps[1].id, "b");
        assert_eq!(job.payload.max_attempts, 3);
        assert_eq!(job.payload.task.starting_branch, "main");
        assert!(job.steps[0].plugin_path.ends_with("plugins/write-file.wasm"));
        assert!(job.repository.ends_with("repo"));
    }

    #[test]
    fn each_kind_of_bad_payload_is_refused_naming_its_field() {
        let fx = Fixture::new();
        let cases = [
            (
                job(serde_json::json!([{"id": "a", "plugin": "write-file"}, {"id": "a", "plugin": "write-file"}])),
                "task.steps[1].id: duplicate step id \"a\"",
            ),
            (
                job(serde_json::json!([{"plugin": "nope"}])),
                "task.steps[0].plugin: unknown plugin \"nope\"",
            ),
            (
                job(serde_json::json!([{"plugin": {"name": "write-file", "sha256": "00"}}])),
                "task.steps[0].plugin.sha256",
            ),
            (
                serde_json::json!({"type": "task", "task": {"steps": [{"plugin": "write-file"}]}}),
                "task.repository: is required",
            ),
            (
                serde_json::json!({"type": "task", "task": {"repository": "repo", "steps": [{"plugin": "write-file"}], "selfHeal": {"stepTimeoutSeconds": 0}}}),
                "task.selfHeal.stepTimeoutSeconds",
            ),
            (
                serde_json::json!({"type": "task", "task": {"repository": "repo", "steps": [{"plugin": "write-file"}], "selfHeal": {"stepTimeoutSeconds": "x"}}}),
                "task.selfHeal.stepTimeoutSeconds",
            ),
            (
                serde_json::json!({"type": "task", "task": {"repository": "repo", "steps": [{"plugin": "write-file"}], "selfHeal": {"stepTimeout": 3}}}),
                "task.selfHeal",
            ),
            (
                serde_json::json!({"type": "job", "task": {"repository": "repo", "steps": []}}),
                "type: must be \"task\"",
            ),
            (job(serde_json::json!([])), "task.steps: a task needs at least one step"),
            (
                job(serde_json::json!([{"plugin": "write-file", "inputs": [1]}])),
                "task.steps[0].inputs: must be a JSON object",
            ),
            (
                job(serde_json::json!([{"id": "../x", "plugin": "write-file"}])),
                "task.steps[0].id",
            ),
        ];
        for (payload, expected) in cases {
            let err = fx.validate(payload.clone()).expect_err("invalid");
            assert!(
                err.to_string().contains(expected),
                "{payload}: got {err}, wanted {expected}"
            );
        }
    }
}
