//! How much a step may leave in its workspace: apparent bytes (so a sparse
//! file counts at its full size) and entries. Self-heal checks them after
//! every attempt, before it reads a file of the workspace, so a step that
//! writes too much fails on its own and costs the host no more than a
//! directory listing.

use super::{invalid, parse_positive, ConfigError};

/// The workspace quota (`[workspace]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WorkspaceQuota {
    /// `STEPD_WORKSPACE_LIMIT_MB` (default 1024): apparent size of all files
    /// together, in bytes.
    pub max_bytes: u64,
    /// `STEPD_WORKSPACE_LIMIT_FILES` (default 100000): files, symlinks and
    /// directories together.
    pub max_entries: u64,
    /// `STEPD_WORKSPACE_LIMIT_CHANGE_MB` (default 128): bytes of the files
    /// one attempt changed, old and new sides together. Making the step's
    /// patch holds each changed file whole, so this bounds the host memory
    /// an attempt's changes cost (and the patch kept in the store).
    pub max_change_bytes: u64,
}

impl Default for WorkspaceQuota {
    fn default() -> Self {
        WorkspaceQuota {
            max_bytes: 1024 << 20,
            max_entries: 100_000,
            max_change_bytes: 128 << 20,
        }
    }
}

impl WorkspaceQuota {
    /// Defaults, overridden by the variables `lookup` knows.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut quota = WorkspaceQuota::default();
        if let Some(value) = lookup("STEPD_WORKSPACE_LIMIT_MB") {
            let mib = parse_positive("STEPD_WORKSPACE_LIMIT_MB", &value)?;
            quota.max_bytes = mib
                .checked_mul(1 << 20)
                .ok_or_else(|| invalid("STEPD_WORKSPACE_LIMIT_MB", &value, "is too large"))?;
        }
        if let Some(value) = lookup("STEPD_WORKSPACE_LIMIT_FILES") {
            quota.max_entries = parse_positive("STEPD_WORKSPACE_LIMIT_FILES", &value)?;
        }
        if let Some(value) = lookup("STEPD_WORKSPACE_LIMIT_CHANGE_MB") {
            let mib = parse_positive("STEPD_WORKSPACE_LIMIT_CHANGE_MB", &value)?;
            quota.max_change_bytes = mib
                .checked_mul(1 << 20)
                .ok_or_else(|| invalid("STEPD_WORKSPACE_LIMIT_CHANGE_MB", &value, "is too large"))?;
        }
        Ok(quota)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_reads_its_variables_and_names_a_bad_one() {
        let quota = WorkspaceQuota::from_lookup(&|name| match name {
            "STEPD_WORKSPACE_LIMIT_MB" => Some("2".into()),
            "STEPD_WORKSPACE_LIMIT_FILES" => Some("50".into()),
            "STEPD_WORKSPACE_LIMIT_CHANGE_MB" => Some("3".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(
            quota,
            WorkspaceQuota {
                max_bytes: 2 << 20,
                max_entries: 50,
                max_change_bytes: 3 << 20,
            }
        );
        let err = WorkspaceQuota::from_lookup(&|name| (name == "STEPD_WORKSPACE_LIMIT_FILES").then(|| "0".into()))
            .expect_err("zero files");
        assert!(err.to_string().contains("STEPD_WORKSPACE_LIMIT_FILES"), "{err}");
    }
}
