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

/// The directories holding `path`, nearest first, ending with the root
/// (`""`); none for the root itself.
pub(crate) fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut end = path.len();
    std::iter::from_fn(move || {
        if end == 0 {
            return None;
        }
        end = path[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
        Some(&path[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::ancestors;

    #[test]
    fn ancestors_run_from_the_nearest_directory_to_the_root() {
        let of = |path: &'static [u8]| ancestors(path).collect::<Vec<_>>();
        assert_eq!(of(b"a/b/c"), [&b"a/b"[..], b"a", b""]);
        assert_eq!(of(b"a"), [&b""[..]]);
        assert!(of(b"").is_empty());
    }
}
