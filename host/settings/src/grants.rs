//! What this host will ever grant a step (`[grants]` in the config file):
//! the environment variable names and secret names it will hand a guest,
//! the directories under which a step may mount a read-only tree, the
//! directories whose trees may serve as a job's local baseline, and the
//! origins remote baselines may be fetched from (and how long a fetch may
//! take). A job that
//! asks for more is refused whole, naming the grant (never silently
//! trimmed); with nothing set, a step gets nothing beyond its workspace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{invalid, parse_positive, ConfigError, HttpOrigin};

/// How long fetching a remote baseline may take when nothing is set.
pub const DEFAULT_BASELINE_FETCH_TIMEOUT_SECONDS: u64 = 300;

/// The grant ceiling.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GrantCeiling {
    /// `STEPD_GRANT_ENV` (comma-separated names, default none): variables a
    /// step may be given, as a literal value or copied from the worker.
    pub env: BTreeSet<String>,
    /// `STEPD_GRANT_SECRETS` (comma-separated names, default none): secrets
    /// a step may be given; a secret's value comes from the worker's
    /// environment or from the file of that name in `secrets_dir`.
    pub secrets: BTreeSet<String>,
    /// `STEPD_SECRETS_DIR`: a directory of secret files (one file per
    /// secret, readable by its owner only).
    pub secrets_dir: Option<PathBuf>,
    /// `STEPD_MOUNT_ROOTS` (comma-separated absolute directories, default
    /// none): a step may mount (read-only) these directories or any inside
    /// them.
    pub mount_roots: Vec<PathBuf>,
    /// `STEPD_BASELINE_ROOTS` (comma-separated absolute directories): local
    /// repositories and directories a job may name as its baseline. Unset,
    /// a server allows the directory it was started in and `stepd run`
    /// allows any ([`GrantCeiling::baselines_for_server`]).
    pub baseline_roots: Option<Vec<PathBuf>>,
    /// `STEPD_GRANT_HTTP_ORIGINS` (comma-separated origins such as
    /// `https://api.example.com`, default none): the origins a step may be
    /// allowed to call through `wasi:http`.
    pub http_origins: BTreeSet<HttpOrigin>,
    /// `STEPD_BASELINE_ORIGINS` (comma-separated origins such as
    /// `https://github.com`, default none): where a server fetches remote
    /// baselines from (`stepd run` fetches from any `https://` origin). A
    /// plain `http://` origin is allowed only when listed.
    pub baseline_origins: BTreeSet<HttpOrigin>,
    /// `STEPD_BASELINE_FETCH_TIMEOUT_SECONDS` (default 300): the longest
    /// one git run of a remote baseline's fetch may take (`None` in a
    /// ceiling built by hand: the default).
    pub baseline_fetch_timeout_seconds: Option<u64>,
}

/// Where local baselines may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaselineRoots {
    /// Any directory the process can read (`stepd run` on one's own
    /// machine).
    Any,
    /// These directories and the trees inside them.
    Only(Vec<PathBuf>),
}

impl GrantCeiling {
    /// Nothing set, overridden by the variables `lookup` knows.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let names = |variable: &str| -> Result<BTreeSet<String>, ConfigError> {
            let Some(value) = lookup(variable) else {
                return Ok(BTreeSet::new());
            };
            list(&value)
                .map(|name| {
                    if is_env_name(name) {
                        Ok(name.to_owned())
                    } else {
                        Err(invalid(variable, &value, &format!("{name:?} is not a variable name")))
                    }
                })
                .collect()
        };
        let origins = |variable: &str| -> Result<BTreeSet<HttpOrigin>, ConfigError> {
            let Some(value) = lookup(variable) else {
                return Ok(BTreeSet::new());
            };
            list(&value)
                .map(|origin| HttpOrigin::parse(origin).map_err(|m| invalid(variable, &value, &m)))
                .collect()
        };
        let dirs = |variable: &str| -> Result<Option<Vec<PathBuf>>, ConfigError> {
            let Some(value) = lookup(variable) else {
                return Ok(None);
            };
            list(&value)
                .map(|dir| absolute_dir(variable, &value, dir))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        Ok(GrantCeiling {
            env: names("STEPD_GRANT_ENV")?,
            secrets: names("STEPD_GRANT_SECRETS")?,
            secrets_dir: lookup("STEPD_SECRETS_DIR")
                .filter(|v| !v.trim().is_empty())
                .map(|v| absolute_dir("STEPD_SECRETS_DIR", &v, v.trim()))
                .transpose()?,
            mount_roots: dirs("STEPD_MOUNT_ROOTS")?.unwrap_or_default(),
            baseline_roots: dirs("STEPD_BASELINE_ROOTS")?,
            http_origins: origins("STEPD_GRANT_HTTP_ORIGINS")?,
            baseline_origins: origins("STEPD_BASELINE_ORIGINS")?,
            baseline_fetch_timeout_seconds: Some(
                lookup("STEPD_BASELINE_FETCH_TIMEOUT_SECONDS")
                    .map(|v| parse_positive("STEPD_BASELINE_FETCH_TIMEOUT_SECONDS", &v))
                    .transpose()?
                    .unwrap_or(DEFAULT_BASELINE_FETCH_TIMEOUT_SECONDS),
            ),
        })
    }

    /// How long one git run of a remote baseline's fetch may take.
    pub fn baseline_fetch_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.baseline_fetch_timeout_seconds
                .unwrap_or(DEFAULT_BASELINE_FETCH_TIMEOUT_SECONDS),
        )
    }

    /// Where a server (`stepd serve`, `stepd worker`) takes local
    /// baselines from: `STEPD_BASELINE_ROOTS`, or the directory it was
    /// started in.
    pub fn baselines_for_server(&self, started_in: &Path) -> BaselineRoots {
        BaselineRoots::Only(
            self.baseline_roots
                .clone()
                .unwrap_or_else(|| vec![started_in.to_owned()]),
        )
    }

    /// Where `stepd run` takes local baselines from: `STEPD_BASELINE_ROOTS`,
    /// or anywhere.
    pub fn baselines_for_local_run(&self) -> BaselineRoots {
        self.baseline_roots
            .clone()
            .map_or(BaselineRoots::Any, BaselineRoots::Only)
    }
}

impl BaselineRoots {
    /// The setting a refused baseline should be granted by.
    pub const SETTING: &'static str = "STEPD_BASELINE_ROOTS";

    /// True when `path` (canonical) may serve as a baseline.
    pub fn allows(&self, path: &Path) -> bool {
        match self {
            BaselineRoots::Any => true,
            BaselineRoots::Only(roots) => roots.iter().any(|root| {
                let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
                path.starts_with(root)
            }),
        }
    }
}

/// True for a POSIX-style variable name: a letter or `_`, then letters,
/// digits and `_`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn absolute_dir(variable: &str, value: &str, dir: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(dir);
    if !path.is_absolute() {
        return Err(invalid(variable, value, &format!("{dir:?} is not an absolute path")));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling(vars: &[(&str, &str)]) -> Result<GrantCeiling, ConfigError> {
        GrantCeiling::from_lookup(&|name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn nothing_set_grants_nothing_and_a_server_takes_baselines_from_where_it_started() {
        let none = ceiling(&[]).expect("defaults");
        assert!(none.env.is_empty() && none.secrets.is_empty() && none.mount_roots.is_empty());
        let server = none.baselines_for_server(Path::new("/srv/stepd"));
        assert!(server.allows(Path::new("/srv/stepd/repos/a")));
        assert!(!server.allows(Path::new("/etc")));
        assert_eq!(none.baselines_for_local_run(), BaselineRoots::Any);
    }

    #[test]
    fn lists_are_parsed_and_bad_entries_named() {
        let set = ceiling(&[
            ("STEPD_GRANT_ENV", "LANG, TZ"),
            ("STEPD_GRANT_SECRETS", "OPENAI_API_KEY"),
            ("STEPD_MOUNT_ROOTS", "/srv/specs,/opt/tools"),
            ("STEPD_BASELINE_ROOTS", "/srv/repos"),
            (
                "STEPD_GRANT_HTTP_ORIGINS",
                "https://api.example.com, http://127.0.0.1:8089",
            ),
        ])
        .expect("valid");
        assert!(set
            .http_origins
            .contains(&HttpOrigin::parse("http://127.0.0.1:8089").expect("origin")));
        let err = ceiling(&[("STEPD_GRANT_HTTP_ORIGINS", "https://x.example/v1")]).expect_err("a path");
        assert!(err.to_string().contains("STEPD_GRANT_HTTP_ORIGINS"), "{err}");
        assert!(set.env.contains("TZ") && set.secrets.contains("OPENAI_API_KEY"));
        assert_eq!(set.mount_roots.len(), 2);
        assert!(!set.baselines_for_server(Path::new("/")).allows(Path::new("/etc")));
        let err = ceiling(&[("STEPD_MOUNT_ROOTS", "specs")]).expect_err("relative");
        assert!(err.to_string().contains("STEPD_MOUNT_ROOTS"), "{err}");
        let err = ceiling(&[("STEPD_GRANT_ENV", "A-B")]).expect_err("not a name");
        assert!(err.to_string().contains("\"A-B\""), "{err}");
    }
}
