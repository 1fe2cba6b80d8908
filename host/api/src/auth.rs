//! Bearer tokens and their scopes. Tokens are compared in constant time
//! (through their SHA-256, so neither the length nor a prefix leaks), and
//! only a label of the token ever reaches a record (`operator-1`).

use std::path::{Path, PathBuf};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::ApiState;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Submit, read, control: people and their tools.
    Operator,
    /// Heartbeat: worker processes.
    Worker,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Operator => "operator",
            Scope::Worker => "worker",
        }
    }
}

/// The tokens a server accepts.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], Scope, String)>,
}

/// Why a named token cannot be added (never the token itself).
#[derive(Debug, thiserror::Error)]
pub enum TokenConflict {
    /// The token is already accepted under another label.
    #[error("the token of {label:?} is already accepted as {other:?} (one token, one scope)")]
    Token {
        /// The new entry's label.
        label: String,
        /// The label it already has.
        other: String,
    },
    /// The label names another token already.
    #[error("the name {0:?} is already used (names are unique among all tokens, operator-1 and worker-1 included)")]
    Label(String),
}

/// Who called: the scope and a label safe to record.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's scope.
    pub scope: Scope,
    /// `operator-1`, `worker-2`: the token's place in its list.
    pub label: String,
}

impl Tokens {
    /// The given operator and worker tokens.
    pub fn new(operator: &[String], worker: &[String]) -> Self {
        let mut entries = Vec::new();
        for (scope, list) in [(Scope::Operator, operator), (Scope::Worker, worker)] {
            for (i, token) in list.iter().enumerate() {
                entries.push((digest(token), scope, format!("{}-{}", scope.as_str(), i + 1)));
            }
        }
        Tokens { entries }
    }

    /// Accept `token` in `scope` too, recorded as `label` (a tokens file's
    /// names: `alice`, `worker-host-b`). A token already accepted (in any
    /// scope) or a label already used is refused: one token has one scope,
    /// and a label names one token.
    pub fn add(&mut self, scope: Scope, label: &str, token: &str) -> Result<(), TokenConflict> {
        let presented = digest(token);
        if let Some((_, _, other)) = self.entries.iter().find(|(stored, _, _)| stored == &presented) {
            return Err(TokenConflict::Token {
                label: label.to_owned(),
                other: other.clone(),
            });
        }
        if self.entries.iter().any(|(_, _, other)| other == label) {
            return Err(TokenConflict::Label(label.to_owned()));
        }
        self.entries.push((presented, scope, label.to_owned()));
        Ok(())
    }

    /// Check the request's bearer token against `scope`.
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing bearer token (Authorization: Bearer <token>)"))?;
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be \"Bearer <token>\""))?;
        let presented = digest(token);
        // Look at every entry, always, so timing says nothing of which matched.
        let mut found: Option<(Scope, String)> = None;
        for (stored, s, label) in &self.entries {
            if constant_time_eq(stored, &presented) {
                found = Some((*s, label.clone()));
            }
        }
        match found {
            None => Err(ApiError::unauthorized("unknown bearer token")),
            Some((s, label)) if s == scope => Ok(Caller { scope: s, label }),
            Some((s, _)) => Err(ApiError::forbidden(format!(
                "a {} token cannot call this endpoint; it needs the {} scope",
                s.as_str(),
                scope.as_str()
            ))),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The generated operator token's file in a data directory.
pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("operator.token")
}

/// Read the data directory's operator token, generating it (mode 0600)
/// on first start. Returns the token and whether it was just made.
pub fn load_or_generate_token(data_dir: &Path) -> std::io::Result<(String, bool)> {
    let path = token_file(data_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if !token.is_empty() {
            return Ok((token, false));
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let tmp = data_dir.join(".operator.token.tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok((token, true))
}

/// An operator's request: extracting it checks the bearer token, before
/// the handler reads its path, query or body, so a caller without the right
/// token learns nothing else (401 or 403 first).
pub struct Operator(pub Caller);

impl FromRequestParts<ApiState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = state.tokens.check(&parts.headers, Scope::Operator)?;
        tracing::Span::current().record("caller", caller.label.as_str());
        Ok(Operator(caller))
    }
}

/// A worker process's request (the heartbeat), checked like [`Operator`].
pub struct WorkerCaller(pub Caller);

impl FromRequestParts<ApiState> for WorkerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = state.tokens.check(&parts.headers, Scope::Worker)?;
        tracing::Span::current().record("caller", caller.label.as_str());
        Ok(WorkerCaller(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_named_token_may_not_repeat_a_token_or_a_name_and_the_error_never_shows_the_token() {
        let mut tokens = Tokens::new(&["env-operator-token".into()], &["env-worker-token".into()]);
        let twice = tokens
            .add(Scope::Operator, "alice", "env-worker-token")
            .expect_err("a worker token as an operator's");
        assert!(twice.to_string().contains("worker-1"), "{twice}");
        assert!(!twice.to_string().contains("env-worker-token"), "{twice}");
        let name = tokens
            .add(Scope::Worker, "operator-1", "another-token-000000")
            .expect_err("a label in use");
        assert!(name.to_string().contains("operator-1"), "{name}");
        tokens
            .add(Scope::Operator, "alice", "alice-token-0000000")
            .expect("a new name and token");
        let caller = tokens
            .check(&bearer("alice-token-0000000"), Scope::Operator)
            .expect("alice is an operator");
        assert_eq!(caller.label, "alice");
        assert!(tokens.check(&bearer("env-worker-token"), Scope::Operator).is_err());
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        h
    }

    #[test]
    fn scopes_are_enforced_and_labels_hide_the_token() {
        let tokens = Tokens::new(&["op-secret".into()], &["wk-secret".into()]);
        let caller = tokens.check(&bearer("op-secret"), Scope::Operator).expect("operator");
        assert_eq!(caller.label, "operator-1");
        assert_eq!(
            tokens
                .check(&bearer("wk-secret"), Scope::Operator)
                .expect_err("scope")
                .status,
            axum::http::StatusCode::FORBIDDEN
        );
        assert_eq!(
            tokens
                .check(&bearer("nope"), Scope::Operator)
                .expect_err("unknown")
                .status,
            axum::http::StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            tokens
                .check(&HeaderMap::new(), Scope::Worker)
                .expect_err("missing")
                .status,
            axum::http::StatusCode::UNAUTHORIZED
        );
    }
}
