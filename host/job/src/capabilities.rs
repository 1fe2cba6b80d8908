//! A step's declared capabilities (docs/OPERATIONS.md#capabilities): the
//! environment variables, secrets, read-only mounts and outbound HTTP it is granted
//! beyond its workspace. Deny by default: a step without a `capabilities`
//! object gets nothing. Each grant is checked at validation against the
//! host's [`GrantCeiling`]; a job asking for more than the host will ever
//! grant is refused whole, naming the grant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use stepd_settings::{is_env_name, GrantCeiling};

use crate::http::HttpCapability;
use crate::payload::{payload_error, PayloadError};

/// Most mounts a step may declare: each is an open directory for every
/// attempt, outside the attempt's handle quota.
pub const MAX_MOUNTS: usize = 16;

/// Most variables and secrets a step may declare, together.
pub const MAX_VARIABLES: usize = 256;

/// The `capabilities` object of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// Variables the guest sees, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvGrant>,
    /// Secrets the guest sees as variables of the same name; their values
    /// are registered with the redactor before the first attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Host directories the guest may read at a path of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountGrant>,
    /// Outbound HTTP through `wasi:http`; without it every request is
    /// denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCapability>,
}

/// One variable's value: a literal, or the worker's own variable, read
/// when the step starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EnvGrant {
    /// This value.
    Value(String),
    /// The worker's variable of this name.
    FromHost(FromHost),
}

/// `{"fromHost": "NAME"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FromHost {
    /// The worker's variable.
    pub from_host: String,
}

/// A host directory the guest may read (never write) at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MountGrant {
    /// The host directory (absolute after validation).
    pub host: String,
    /// Where the guest sees it: an absolute path such as `/specs`.
    pub guest: String,
}

impl Capabilities {
    /// True when the step asks for nothing beyond its workspace.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.secrets.is_empty() && self.mounts.is_empty() && self.http.is_none()
    }

    /// Check every grant against `ceiling`; the capabilities with each
    /// mount's host directory made canonical. `field` names the step's
    /// `capabilities` in errors.
    pub fn validate(&self, field: &str, base_dir: &Path, ceiling: &GrantCeiling) -> Result<Self, PayloadError> {
        if self.mounts.len() > MAX_MOUNTS {
            return Err(payload_error(
                format!("{field}.mounts"),
                format!("{} mounts; a step may declare at most {MAX_MOUNTS}", self.mounts.len()),
            ));
        }
        if self.env.len() + self.secrets.len() > MAX_VARIABLES {
            return Err(payload_error(
                field,
                format!("a step may declare at most {MAX_VARIABLES} variables and secrets together"),
            ));
        }
        for (name, grant) in &self.env {
            let at = format!("{field}.env.{name}");
            if !is_env_name(name) {
                return Err(payload_error(at, format!("{name:?} is not a variable name")));
            }
            if !ceiling.env.contains(name) {
                return Err(payload_error(at, not_granted("variable", name, "STEPD_GRANT_ENV")));
            }
            if let EnvGrant::FromHost(FromHost { from_host }) = grant {
                if !is_env_name(from_host) {
                    return Err(payload_error(
                        format!("{at}.fromHost"),
                        format!("{from_host:?} is not a variable name"),
                    ));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (i, name) in self.secrets.iter().enumerate() {
            let at = format!("{field}.secrets[{i}]");
            if !is_env_name(name) {
                return Err(payload_error(at, format!("{name:?} is not a secret name")));
            }
            if !ceiling.secrets.contains(name) {
                return Err(payload_error(at, not_granted("secret", name, "STEPD_GRANT_SECRETS")));
            }
            if self.env.contains_key(name) || !seen.insert(name) {
                return Err(payload_error(at, format!("{name} is given to the step twice")));
            }
        }
        let mut mounts = Vec::with_capacity(self.mounts.len());
        let mut guests = BTreeSet::new();
        for (i, mount) in self.mounts.iter().enumerate() {
            let at = format!("{field}.mounts[{i}]");
            let guest = guest_path(&mount.guest).map_err(|m| payload_error(format!("{at}.guest"), m))?;
            if !guests.insert(guest.clone()) {
                return Err(payload_error(
                    format!("{at}.guest"),
                    format!("{guest} is mounted twice"),
                ));
            }
            let host =
                mount_host(&mount.host, base_dir, ceiling).map_err(|m| payload_error(format!("{at}.host"), m))?;
            mounts.push(MountGrant {
                host: host.to_string_lossy().into_owned(),
                guest,
            });
        }
        let http = self
            .http
            .as_ref()
            .map(|http| http.validate(&format!("{field}.http"), ceiling))
            .transpose()?;
        Ok(Capabilities {
            env: self.env.clone(),
            secrets: self.secrets.clone(),
            mounts,
            http,
        })
    }
}

fn not_granted(what: &str, name: &str, setting: &str) -> String {
    format!("this host does not grant the {what} {name} (the operator lists what it may grant in {setting})")
}

/// A guest mount point: absolute, normal (no `.`, `..` or empty parts),
/// not the root and not the workspace or inside it.
fn guest_path(path: &str) -> Result<String, String> {
    // By its text: `Path::components` would quietly drop a `.`.
    let normal = path.len() > 1
        && path.starts_with('/')
        && path[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !normal {
        return Err(format!(
            "{path:?} must be an absolute guest path such as \"/specs\" (no \".\", \"..\" or empty parts, not \"/\")"
        ));
    }
    if Path::new(path).starts_with("/workspace") {
        return Err(format!("{path:?} would hide the workspace"));
    }
    Ok(path.to_owned())
}

/// The canonical host directory of a mount, if it lies under one of the
/// ceiling's mount roots.
fn mount_host(host: &str, base_dir: &Path, ceiling: &GrantCeiling) -> Result<PathBuf, String> {
    let path = base_dir.join(host);
    let canonical = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !canonical.is_dir() {
        return Err(format!("{} is not a directory", canonical.display()));
    }
    let granted = ceiling.mount_roots.iter().any(|root| {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        canonical.starts_with(root)
    });
    if !granted {
        return Err(format!(
            "this host does not grant a mount of {} (the operator lists the directories it may mount in STEPD_MOUNT_ROOTS)",
            canonical.display()
        ));
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(json: serde_json::Value) -> Capabilities {
        serde_json::from_value(json).expect("capabilities")
    }

    #[test]
    fn nothing_is_granted_beyond_the_ceiling_and_each_refusal_names_the_grant() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("specs")).expect("mkdir");
        let mut ceiling = GrantCeiling::default();
        let asked = caps(serde_json::json!({
            "env": {"LANG": "C", "TOKEN_FROM": {"fromHost": "HOME"}},
            "secrets": ["API_KEY"],
            "mounts": [{"host": "specs", "guest": "/specs"}]
        }));
        let err = asked.validate("s", root.path(), &ceiling).expect_err("no env granted");
        assert!(
            err.to_string().contains("s.env.LANG") && err.to_string().contains("STEPD_GRANT_ENV"),
            "{err}"
        );
        ceiling.env = ["LANG".to_owned(), "TOKEN_FROM".to_owned()].into();
        let err = asked
            .validate("s", root.path(), &ceiling)
            .expect_err("no secret granted");
        assert!(
            err.to_string().contains("s.secrets[0]") && err.to_string().contains("API_KEY"),
            "{err}"
        );
        ceiling.secrets = ["API_KEY".to_owned()].into();
        let err = asked.validate("s", root.path(), &ceiling).expect_err("no mount root");
        assert!(err.to_string().contains("STEPD_MOUNT_ROOTS"), "{err}");
        ceiling.mount_roots = vec![root.path().to_owned()];
        let granted = asked.validate("s", root.path(), &ceiling).expect("within the ceiling");
        assert!(Path::new(&granted.mounts[0].host).is_absolute());
    }

    #[test]
    fn a_step_declaring_too_many_mounts_is_refused_before_any_is_opened() {
        let mounts: Vec<serde_json::Value> = (0..=MAX_MOUNTS)
            .map(|i| serde_json::json!({"host": "/nowhere", "guest": format!("/m{i}")}))
            .collect();
        let err = caps(serde_json::json!({"mounts": mounts}))
            .validate("s", Path::new("/"), &GrantCeiling::default())
            .expect_err("too many");
        assert!(err.to_string().contains("at most 16"), "{err}");
    }

    #[test]
    fn guest_paths_and_unknown_keys_are_refused() {
        for bad in [
            "specs",
            "/",
            "/workspace",
            "/workspace/x",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/",
        ] {
            assert!(guest_path(bad).is_err(), "{bad}");
        }
        assert_eq!(guest_path("/opt/specs").as_deref(), Ok("/opt/specs"));
        let err = serde_json::from_value::<Capabilities>(serde_json::json!({"network": true})).expect_err("unknown");
        assert!(err.to_string().contains("network"), "{err}");
    }
}
