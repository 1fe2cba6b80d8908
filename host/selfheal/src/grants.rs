//! A step's declared capabilities turned into what its attempts get:
//! literal variables as given, `fromHost` variables copied from the
//! worker's environment, secrets read from the worker's environment or its
//! secrets directory, mounts as validation checked them. Every secret value
//! is registered with the redactor here, before the step's first attempt,
//! so nothing recorded afterwards can carry it. A grant this worker cannot
//! honour fails the step (`deterministic_policy`) before any instance
//! starts, naming the grant, never its value.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use stepd_job::capabilities::{Capabilities, EnvGrant, FromHost};
use stepd_records::events::{GrantsUsed, HttpRequestRecord};
use stepd_records::redact::Redactor;
use stepd_runtime::{clip_text, AttemptGrants, HttpGrant, HttpLog, ReadOnlyMount};

/// The largest secret file read: a key or a token, not a document.
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// Where a worker finds secret values.
pub(crate) struct SecretSource<'a> {
    /// The worker's environment.
    pub env: fn(&str) -> Option<String>,
    /// `STEPD_SECRETS_DIR`: a file per secret, readable by its owner only.
    pub dir: Option<&'a Path>,
}

/// The grants of one step's attempts, or why the worker cannot give them.
pub(crate) fn resolve(
    capabilities: &Capabilities,
    secrets: &SecretSource<'_>,
    redactor: &Redactor,
) -> Result<AttemptGrants, String> {
    let mut env = Vec::with_capacity(capabilities.env.len() + capabilities.secrets.len());
    for (name, grant) in &capabilities.env {
        let value = match grant {
            EnvGrant::Value(value) => value.clone(),
            EnvGrant::FromHost(FromHost { from_host }) => (secrets.env)(from_host)
                .ok_or_else(|| format!("capabilities.env.{name}: this worker has no variable {from_host} to copy"))?,
        };
        env.push((name.clone(), value));
    }
    for name in &capabilities.secrets {
        let value = secret_value("capabilities.secrets", name, secrets)?;
        redactor.register(&value);
        env.push((name.clone(), value));
    }
    let mounts = capabilities
        .mounts
        .iter()
        .map(|m| ReadOnlyMount {
            host: PathBuf::from(&m.host),
            guest: m.guest.clone(),
        })
        .collect();
    let http = match &capabilities.http {
        Some(http) => Some(HttpGrant {
            // Validated at submit: a text that no longer parses is this
            // step's failure, naming it.
            origins: http
                .origins
                .iter()
                .map(|text| stepd_settings::HttpOrigin::parse(text))
                .collect::<Result<_, _>>()?,
            methods: http.methods.clone(),
            path_prefixes: http.path_prefixes.clone(),
            max_requests: http.max_requests,
            max_request_bytes: http.max_request_bytes,
            max_response_bytes: http.max_response_bytes,
        }),
        None => None,
    };
    Ok(AttemptGrants { env, mounts, http })
}

/// Longest path, origin or reason of an HTTP request its records keep.
const MAX_RECORDED_HTTP_TEXT: usize = 512;

/// What an attempt was granted, by name, and the HTTP requests it made,
/// for its records. The guest chose each request's text: it is redacted
/// whole, then shortened (a cut through a secret would leave a prefix the
/// redactor no longer knows).
pub(crate) fn used(capabilities: &Capabilities, http: &HttpLog, redactor: &Redactor) -> GrantsUsed {
    let recorded = |text: &str| clip_text(&redactor.redact(text), MAX_RECORDED_HTTP_TEXT).into_owned();
    GrantsUsed {
        env: capabilities.env.keys().cloned().collect(),
        secrets: capabilities.secrets.clone(),
        mounts: capabilities.mounts.iter().map(|m| m.guest.clone()).collect(),
        http_origins: capabilities
            .http
            .iter()
            .flat_map(|h| h.origins.iter().cloned())
            .collect(),
        http: http
            .exchanges
            .iter()
            .map(|e| HttpRequestRecord {
                method: recorded(&e.method),
                origin: recorded(&e.origin),
                path: recorded(&e.path),
                status: e.status,
                request_bytes: e.request_bytes,
                response_bytes: e.response_bytes,
                ms: e.ms,
                denied: e.denied.as_deref().map(recorded),
                error: e.error.as_deref().map(recorded),
            })
            .collect(),
        http_unlogged: http.unlogged,
    }
}

/// A secret's value: the worker's variable of that name, else the file of
/// that name in the secrets directory. Errors name `field` (what asked
/// for the secret) and the secret, never its value.
pub(crate) fn secret_value(field: &str, name: &str, source: &SecretSource<'_>) -> Result<String, String> {
    if let Some(value) = (source.env)(name).filter(|v| !v.is_empty()) {
        return Ok(value);
    }
    let Some(dir) = source.dir else {
        return Err(format!(
            "{field}: this worker holds no secret {name} (not in its environment, and no STEPD_SECRETS_DIR)"
        ));
    };
    let path = dir.join(name);
    let file = std::fs::File::open(&path).map_err(|e| format!("{field}: secret {name} ({}): {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{field}: secret {name} ({}): {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{field}: {} is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{field}: {} may be read by others (mode {:o}); make it readable by its owner only",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let mut value = String::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut value)
        .map_err(|e| format!("{field}: secret {name} ({}): {e}", path.display()))?;
    if value.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "{field}: {} is larger than {MAX_SECRET_BYTES} bytes",
            path.display()
        ));
    }
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        return Err(format!("{field}: {} is empty", path.display()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(json: serde_json::Value) -> Capabilities {
        serde_json::from_value(json).expect("capabilities")
    }

    #[test]
    fn a_requests_recorded_text_is_redacted_whole_then_shortened() {
        let redactor = Redactor::new();
        let secret = "tok-0123456789abcdef0123456789";
        redactor.register(secret);
        // The secret straddles the recorded length: cut first, its prefix
        // would be left behind.
        let path = format!("/{}{secret}/send", "a".repeat(MAX_RECORDED_HTTP_TEXT - 10));
        let log = HttpLog {
            exchanges: vec![stepd_runtime::HttpExchange {
                method: "GET".into(),
                origin: "https://api.example.com".into(),
                path,
                ..Default::default()
            }],
            unlogged: 0,
        };
        let used = used(&Capabilities::default(), &log, &redactor);
        let recorded = &used.http[0].path;
        assert!(recorded.len() <= MAX_RECORDED_HTTP_TEXT, "{}", recorded.len());
        assert!(!recorded.contains("tok-0123"), "{recorded}");
        assert_eq!(used.http[0].origin, "https://api.example.com");
    }

    #[test]
    fn values_come_from_the_payload_the_worker_and_its_secrets_directory_and_secrets_are_registered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("FILE_KEY");
        std::fs::write(&file, "from-a-file-123\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let env = |name: &str| (name == "HOST_VAR" || name == "ENV_KEY").then(|| format!("value-of-{name}"));
        let source = SecretSource {
            env,
            dir: Some(dir.path()),
        };
        let redactor = Redactor::new();
        let grants = resolve(
            &caps(
                serde_json::json!({"env": {"LANG": "C", "COPY": {"fromHost": "HOST_VAR"}},
                                     "secrets": ["ENV_KEY", "FILE_KEY"]}),
            ),
            &source,
            &redactor,
        )
        .expect("resolved");
        assert_eq!(
            grants.env,
            [
                ("COPY", "value-of-HOST_VAR"),
                ("LANG", "C"),
                ("ENV_KEY", "value-of-ENV_KEY"),
                ("FILE_KEY", "from-a-file-123")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(redactor.contains_secret("x from-a-file-123 y") && redactor.contains_secret("value-of-ENV_KEY"));
        assert!(
            !redactor.contains_secret("value-of-HOST_VAR"),
            "a copied variable is not a secret"
        );
    }

    #[test]
    fn a_grant_the_worker_cannot_honour_is_named_without_its_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("OPEN_KEY");
        std::fs::write(&open, "readable-by-all").expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let env = |_: &str| None;
        let source = SecretSource {
            env,
            dir: Some(dir.path()),
        };
        let redactor = Redactor::new();
        let missing = resolve(
            &caps(serde_json::json!({"env": {"A": {"fromHost": "NOPE"}}})),
            &source,
            &redactor,
        );
        assert!(
            missing.as_ref().expect_err("no such variable").contains("NOPE"),
            "{missing:?}"
        );
        let open = resolve(&caps(serde_json::json!({"secrets": ["OPEN_KEY"]})), &source, &redactor);
        let message = open.expect_err("mode checked");
        assert!(
            message.contains("mode 644") && !message.contains("readable-by-all"),
            "{message}"
        );
        let absent = resolve(&caps(serde_json::json!({"secrets": ["ABSENT"]})), &source, &redactor);
        assert!(absent.expect_err("absent").contains("ABSENT"));
    }
}
