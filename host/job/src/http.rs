//! A step's outbound HTTP grant (`capabilities.http`): the origins it may
//! call through `wasi:http`, optionally narrowed to methods and path
//! prefixes, with a request count and body byte limits. Every origin must
//! be in the host's ceiling (`STEPD_GRANT_HTTP_ORIGINS`); the limits have
//! defaults and hard maxima so a payload cannot ask for unbounded traffic.

use std::collections::BTreeSet;

use stepd_settings::{GrantCeiling, HttpOrigin};

use crate::payload::{payload_error, PayloadError};

/// Most origins one step may name.
pub const MAX_ORIGINS: usize = 32;
/// Most path prefixes one step may name.
pub const MAX_PATH_PREFIXES: usize = 32;
/// Requests per attempt when the step names no `maxRequests`.
pub const DEFAULT_MAX_REQUESTS: u32 = 16;
/// The most requests per attempt a step may ask for.
pub const MAX_REQUESTS: u32 = 10_000;
/// Request body bytes when the step names no `maxRequestBytes` (1 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;
/// The largest request body a step may ask for (64 MiB).
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;
/// Response body bytes when the step names no `maxResponseBytes` (16 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 << 20;
/// The largest response body a step may ask for (256 MiB).
pub const MAX_RESPONSE_BYTES: u64 = 256 << 20;

/// `capabilities.http`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HttpCapability {
    /// Origins the step may call (`https://api.example.com`), checked and
    /// made canonical when the job is validated.
    // Text here, parsed in `validate`: a string that is no origin is
    // refused there, naming it, like any other value the host cannot grant.
    #[cfg_attr(
        feature = "openapi",
        schema(min_items = 1, max_items = 32, pattern = r"^https?://[^/?#@\s]+$")
    )]
    pub origins: Vec<String>,
    /// Methods it may use; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths it may request must start with one of these; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Requests per attempt (denied ones included).
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// Bytes one request body may carry.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    /// Bytes one response body may carry.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

fn default_max_requests() -> u32 {
    DEFAULT_MAX_REQUESTS
}

fn default_max_request_bytes() -> u64 {
    DEFAULT_MAX_REQUEST_BYTES
}

fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}

impl HttpCapability {
    /// Check the grant against `ceiling`; the grant with methods in upper
    /// case. `field` names it in errors.
    pub fn validate(&self, field: &str, ceiling: &GrantCeiling) -> Result<Self, PayloadError> {
        if self.origins.is_empty() || self.origins.len() > MAX_ORIGINS {
            return Err(payload_error(
                format!("{field}.origins"),
                format!("name between 1 and {MAX_ORIGINS} origins"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut origins = Vec::with_capacity(self.origins.len());
        for (i, text) in self.origins.iter().enumerate() {
            let at = format!("{field}.origins[{i}]");
            let origin = HttpOrigin::parse(text).map_err(|e| payload_error(&at, e))?;
            if !ceiling.http_origins.contains(&origin) {
                return Err(payload_error(
                    at,
                    format!(
                        "this host does not grant HTTP to {origin} (the operator lists the origins it may grant in STEPD_GRANT_HTTP_ORIGINS)"
                    ),
                ));
            }
            if !seen.insert(origin.clone()) {
                return Err(payload_error(at, format!("{origin} is named twice")));
            }
            origins.push(origin.to_string());
        }
        let mut methods = Vec::with_capacity(self.methods.len());
        for (i, method) in self.methods.iter().enumerate() {
            let upper = method.to_ascii_uppercase();
            if !matches!(
                upper.as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
            ) {
                return Err(payload_error(
                    format!("{field}.methods[{i}]"),
                    format!("{method:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                ));
            }
            if methods.contains(&upper) {
                // Each name once: at most seven, however long the list.
                return Err(payload_error(
                    format!("{field}.methods[{i}]"),
                    format!("{upper} is named twice"),
                ));
            }
            methods.push(upper);
        }
        if self.path_prefixes.len() > MAX_PATH_PREFIXES {
            return Err(payload_error(
                format!("{field}.pathPrefixes"),
                format!("at most {MAX_PATH_PREFIXES} prefixes"),
            ));
        }
        for (i, prefix) in self.path_prefixes.iter().enumerate() {
            let normal = prefix.starts_with('/')
                && prefix.len() <= 1024
                && !prefix.split('/').any(|part| part == ".." || part == ".")
                && !prefix.contains(['?', '#', '%', '\\']);
            if !normal {
                return Err(payload_error(
                    format!("{field}.pathPrefixes[{i}]"),
                    format!("{prefix:?} must start with \"/\" and hold no \".\" or \"..\" part, \"?\", \"#\", \"%\" or \"\\\""),
                ));
            }
        }
        let bounded = |name: &str, value: u64, max: u64| {
            if value == 0 || value > max {
                Err(payload_error(
                    format!("{field}.{name}"),
                    format!("{value} is outside 1..={max}"),
                ))
            } else {
                Ok(())
            }
        };
        bounded("maxRequests", u64::from(self.max_requests), u64::from(MAX_REQUESTS))?;
        bounded("maxRequestBytes", self.max_request_bytes, MAX_REQUEST_BYTES)?;
        bounded("maxResponseBytes", self.max_response_bytes, MAX_RESPONSE_BYTES)?;
        Ok(HttpCapability {
            origins,
            methods,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(json: serde_json::Value) -> Result<HttpCapability, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn an_origin_beyond_the_ceiling_is_refused_naming_it_and_the_setting() {
        let asked =
            grant(serde_json::json!({"origins": ["http://127.0.0.1:8089"], "methods": ["post"]})).expect("shape");
        assert_eq!(asked.max_requests, DEFAULT_MAX_REQUESTS);
        let err = asked
            .validate("s.http", &GrantCeiling::default())
            .expect_err("nothing granted");
        let text = err.to_string();
        assert!(
            text.contains("s.http.origins[0]") && text.contains("http://127.0.0.1:8089"),
            "{text}"
        );
        assert!(text.contains("STEPD_GRANT_HTTP_ORIGINS"), "{text}");
        let mut ceiling = GrantCeiling::default();
        ceiling
            .http_origins
            .insert(HttpOrigin::parse("http://127.0.0.1:8089").expect("origin"));
        let granted = asked.validate("s.http", &ceiling).expect("granted");
        assert_eq!(granted.methods, ["POST"]);
    }

    #[test]
    fn limits_paths_methods_and_origins_are_checked() {
        let mut ceiling = GrantCeiling::default();
        ceiling
            .http_origins
            .insert(HttpOrigin::parse("https://api.example.com").expect("origin"));
        for (bad, named) in [
            (serde_json::json!({"origins": []}), "origins"),
            (
                serde_json::json!({"origins": ["https://api.example.com"], "maxRequests": 0}),
                "maxRequests",
            ),
            (
                serde_json::json!({"origins": ["https://api.example.com"], "maxResponseBytes": 1u64 << 40}),
                "maxResponseBytes",
            ),
            (
                serde_json::json!({"origins": ["https://api.example.com"], "methods": ["CONNECT"]}),
                "methods[0]",
            ),
            (
                serde_json::json!({"origins": ["https://api.example.com"], "methods": ["get", "GET"]}),
                "methods[1]",
            ),
            (
                serde_json::json!({"origins": ["https://api.example.com"], "pathPrefixes": ["/v1/../admin"]}),
                "pathPrefixes[0]",
            ),
        ] {
            let err = grant(bad.clone())
                .expect("shape")
                .validate("h", &ceiling)
                .expect_err("refused");
            assert!(err.to_string().contains(named), "{bad}: {err}");
        }
        // An origin with a path is refused when the grant is checked,
        // naming it.
        let err = grant(serde_json::json!({"origins": ["https://api.example.com/v1"]}))
            .expect("shape")
            .validate("h", &ceiling)
            .expect_err("a path is no origin");
        assert!(err.to_string().contains("h.origins[0]"), "{err}");
        assert!(grant(serde_json::json!({"origins": ["https://api.example.com"], "proxy": "x"})).is_err());
    }
}
