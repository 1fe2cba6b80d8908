//! Workspace-relative paths as the scan, the snapshot, the rebuild and the
//! patch checks see them: raw bytes, `/`-separated, with `.git` (any case)
//! never part of a workspace.

/// `.git` in any letter case: on a case-insensitive filesystem `.GIT` is
/// the same directory.
pub(crate) fn is_dot_git(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b".git")
}

/// `prefix/name`, or `name` at the root.
pub(crate) fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        path.extend_from_slice(prefix);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}
