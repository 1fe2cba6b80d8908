//! The secret scrubber. Every event, artifact, log line, failure summary and
//! signature passes through one [`Redactor`] before it is written, so no
//! secret reaches disk, the database, a metric tag or an operator's screen.
//!
//! Secrets come from two places: the values of secret-looking environment
//! variables (names containing token, secret, password, key, credential or
//! auth) and secrets registered at run time (a job's declared secrets). Each
//! is also matched in its base64 (standard and URL-safe, padded or not, and
//! at each of the three byte alignments inside a longer base64 text),
//! percent-encoded (upper- and lowercase hex, `+` or `%20` for a space) and
//! JSON-escaped forms, because a step that leaks a secret often encodes it.

use std::sync::{PoisonError, RwLock};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// What a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Environment values shorter than this are not treated as secrets: a
/// `KEY_REPEAT=1` must not blank out every `1` in a log.
pub const MIN_ENV_SECRET_LEN: usize = 6;

/// Name fragments that make an environment variable's value a secret.
const SECRET_NAME_FRAGMENTS: [&str; 6] = ["token", "secret", "password", "key", "credential", "auth"];

/// The scrubber. Cheap to share behind an `Arc`; registering a secret is
/// safe while other threads redact.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Every form of every secret, longest first (so a secret that contains
    /// another is replaced whole).
    patterns: RwLock<Vec<String>>,
}

/// stepd's own settings whose names look secret but whose values are not:
/// the names of the secrets a host grants, and where it reads them.
/// Redacting them would blank out secret *names* in every record.
const NOT_SECRET_SETTINGS: [&str; 2] = ["STEPD_GRANT_SECRETS", "STEPD_SECRETS_DIR"];

/// True when a variable with this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_NAME_FRAGMENTS.iter().any(|fragment| lower.contains(fragment))
        && !NOT_SECRET_SETTINGS.contains(&name.to_ascii_uppercase().as_str())
}

impl Redactor {
    /// A scrubber that knows no secrets yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A scrubber primed with this process's secret-looking environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// A scrubber primed with the secret-looking variables of `vars`.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let redactor = Redactor::new();
        for (name, value) in vars {
            if is_secret_name(&name) && value.len() >= MIN_ENV_SECRET_LEN {
                redactor.register(&value);
            }
        }
        redactor
    }

    /// Treat `secret` (and its encodings) as secret from now on. Empty
    /// strings are ignored.
    pub fn register(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let forms = encoded_forms(secret);
        let mut patterns = self.patterns.write().unwrap_or_else(PoisonError::into_inner);
        for form in forms {
            if !form.is_empty() && !patterns.contains(&form) {
                patterns.push(form);
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    }

    /// `text` with every known secret form replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = text.to_owned();
        for pattern in patterns.iter() {
            if out.contains(pattern.as_str()) {
                out = out.replace(pattern.as_str(), REDACTED);
            }
        }
        out
    }

    /// True when `text` holds any form of a known secret.
    pub fn contains_secret(&self, text: &str) -> bool {
        let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
        patterns.iter().any(|p| text.contains(p.as_str()))
    }

    /// A JSON value with every string (keys included) redacted.
    pub fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.redact_json(v)).collect()),
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (self.redact(k), self.redact_json(v))).collect())
            }
            other => other.clone(),
        }
    }
}

/// Shorter encoded fragments are not matched: a few base64 characters
/// occur by chance in any long log.
const MIN_FRAGMENT_LEN: usize = 8;

/// Every form of `secret` the redactor looks for.
fn encoded_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret.as_bytes()));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            forms.extend(base64_fragment(engine, secret.as_bytes(), offset));
        }
    }
    for plus_for_space in [false, true] {
        for upper in [false, true] {
            forms.push(url_encode(secret, plus_for_space, upper));
        }
    }
    forms.extend(json_escaped(secret, false));
    forms.extend(json_escaped(secret, true));
    forms.dedup();
    forms
}

/// The characters of a longer base64 text that depend only on `secret`
/// when it starts `offset` bytes (0 to 2) after a 3-byte boundary: the
/// characters shared with the bytes before and after it are left out, so
/// the fragment matches whatever surrounds the secret.
fn base64_fragment(engine: &impl base64::Engine, secret: &[u8], offset: usize) -> Option<String> {
    let mut shifted = vec![0u8; offset];
    shifted.extend_from_slice(secret);
    let encoded = engine.encode(&shifted);
    let lead = [0, 2, 3][offset];
    let tail = usize::from(!shifted.len().is_multiple_of(3));
    let fragment = encoded.get(lead..encoded.len().saturating_sub(tail))?;
    (fragment.len() >= MIN_FRAGMENT_LEN).then(|| fragment.to_owned())
}

/// Percent-encode everything but RFC 3986's unreserved characters; with
/// `plus_for_space`, encode spaces as `+` (form encoding); hex digits in
/// upper- or lowercase.
fn url_encode(text: &str, plus_for_space: bool, upper: bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(byte as char),
            b' ' if plus_for_space => out.push('+'),
            _ if upper => out.push_str(&format!("%{byte:02X}")),
            _ => out.push_str(&format!("%{byte:02x}")),
        }
    }
    out
}

/// `text` as it appears inside a JSON string (without the quotes), when
/// that differs from `text`: as serde_json and JavaScript write it, or with
/// every non-ASCII character as `\uXXXX` (`ascii_only`, as Python writes
/// it).
fn json_escaped(text: &str, ascii_only: bool) -> Option<String> {
    let quoted = serde_json::to_string(text).ok()?;
    let mut escaped = quoted.get(1..quoted.len() - 1)?.to_owned();
    if ascii_only {
        escaped = escaped
            .chars()
            .map(|c| match c {
                c if c.is_ascii() => c.to_string(),
                c => c
                    .encode_utf16(&mut [0u16; 2])
                    .iter()
                    .map(|unit| format!("\\u{unit:04x}"))
                    .collect(),
            })
            .collect();
    }
    (escaped != text).then_some(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_env_values_are_redacted_in_every_encoding() {
        let redactor = Redactor::from_vars([
            ("GITHUB_TOKEN".to_owned(), "ghp_s3cr3t/value+x y".to_owned()),
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("KEY_REPEAT".to_owned(), "1".to_owned()),
            ("STEPD_GRANT_SECRETS".to_owned(), "OPENAI_API_KEY".to_owned()),
        ]);
        let secret = "ghp_s3cr3t/value+x y";
        let b64 = STANDARD.encode(secret);
        let b64url = URL_SAFE_NO_PAD.encode(secret);
        let text = format!(
            "raw={secret} b64={b64} url={b64url} pct={} form={}",
            url_encode(secret, false, true),
            url_encode(secret, true, false)
        );
        let clean = redactor.redact(&text);
        assert_eq!(
            clean,
            "raw=[REDACTED] b64=[REDACTED] url=[REDACTED] pct=[REDACTED] form=[REDACTED]"
        );
        // Not secret: a PATH, a value too short to be one, and the names
        // of the secrets a host grants.
        assert_eq!(redactor.redact("/usr/bin:/bin 1"), "/usr/bin:/bin 1");
        assert_eq!(redactor.redact("OPENAI_API_KEY"), "OPENAI_API_KEY");
    }

    #[test]
    fn a_secret_is_found_lowercase_percent_encoded_json_escaped_and_inside_longer_base64() {
        let secret = "pa\"ss/wörd\n+42";
        let redactor = Redactor::new();
        redactor.register(secret);
        let json = serde_json::json!({ "leak": secret }).to_string();
        assert!(!redactor.redact(&json).contains("ss/w"), "{json}");
        let python = r#"{"leak": "pa\"ss/w\u00f6rd\n+42"}"#;
        assert_eq!(redactor.redact(python), r#"{"leak": "[REDACTED]"}"#);
        let lower = url_encode(secret, false, false);
        assert!(lower.contains("%c3%b6"), "{lower}");
        assert_eq!(redactor.redact(&format!("q={lower}")), "q=[REDACTED]");
        // The secret 1 and 2 bytes past a 3-byte boundary inside a longer
        // base64 text: its own characters are found whatever surrounds it.
        for prefix in ["x", "xy", "xyz"] {
            let encoded = STANDARD.encode(format!("{prefix}{secret}tail"));
            assert!(redactor.contains_secret(&encoded), "{prefix}: {encoded}");
        }
    }

    #[test]
    fn registered_secrets_are_redacted_inside_json_keys_and_values() {
        let redactor = Redactor::new();
        redactor.register("hunter2");
        let value = serde_json::json!({"password hunter2": ["x hunter2 y", 3, {"k": "hunter2"}]});
        let clean = redactor.redact_json(&value);
        assert_eq!(
            clean,
            serde_json::json!({"password [REDACTED]": ["x [REDACTED] y", 3, {"k": "[REDACTED]"}]})
        );
    }

    #[test]
    fn a_longer_secret_containing_a_shorter_one_is_replaced_whole() {
        let redactor = Redactor::new();
        redactor.register("abc123");
        redactor.register("abc123-extended");
        assert_eq!(
            redactor.redact("x abc123-extended y abc123"),
            "x [REDACTED] y [REDACTED]"
        );
    }

    #[test]
    fn secret_names_match_case_insensitively() {
        for name in [
            "API_KEY",
            "db_password",
            "AuthHeader",
            "MY_SECRET",
            "aws_credentials",
            "npm_token",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["PATH", "HOME", "LANG"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
