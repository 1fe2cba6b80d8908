//! Patches: the diff of two trees in `git diff --binary` format (so `git
//! apply` accepts it anywhere), and the application of such a patch to a
//! tree, after every path it names has been proved safe.
//!
//! A patch is input from outside the process (an artifact on disk, a row in
//! a database), so it is validated before use: no absolute path, no `.`,
//! `..` or empty component, no `.git` component, and no path that runs
//! through a symlink of the base tree (or one the patch itself creates).
//! Applying is pure object-store work; only `reset_to` touches the
//! directory, through the capability.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use git2::{Diff, DiffFormat, DiffOptions, FileMode, Oid, Repository, Tree};
use sha2::{Digest, Sha256};

use super::headers;
use super::relpath::is_dot_git;
use super::{git_err, ChangeLimit, Patch, TreeId, WorkspaceError, MAX_DEPTH};

/// Lowercase hex sha256: how patches are named in errors and artifacts.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn find_tree<'r>(repo: &'r Repository, tree: TreeId, git_dir: &Path) -> Result<Tree<'r>, WorkspaceError> {
    repo.find_tree(tree.0).map_err(|_| WorkspaceError::TreeNotFound {
        tree,
        git_dir: git_dir.to_owned(),
    })
}

/// The patch from `from` to `to`, or None when the trees are equal. With
/// a `limit`, the changed blobs' sizes are read from their headers first,
/// and a change too large to hold fails before any blob is read.
pub(crate) fn diff(
    repo: &Repository,
    git_dir: &Path,
    from: TreeId,
    to: TreeId,
    limit: Option<ChangeLimit<'_>>,
) -> Result<Option<Patch>, WorkspaceError> {
    if from == to {
        return Ok(None);
    }
    let old = find_tree(repo, from, git_dir)?;
    let new = find_tree(repo, to, git_dir)?;
    let mut options = DiffOptions::new();
    // Binary files get `GIT binary patch` hunks instead of "Binary files
    // differ". Prefixes and id length are fixed rather than taken from git
    // config (a `diff.noprefix` in ~/.gitconfig would otherwise change the
    // bytes, hence the hash): full ids, as `git apply` needs for binary
    // hunks and `--3way` can use for any.
    options
        .show_binary(true)
        .old_prefix("a/")
        .new_prefix("b/")
        .id_abbrev(40);
    let context = || format!("diffing tree {from} to tree {to}");
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), Some(&mut options))
        .map_err(git_err(context()))?;
    if diff.deltas().len() == 0 {
        return Ok(None);
    }
    if let Some(limit) = limit {
        hold_to(repo, &diff, &limit)?;
    }
    let mut changed = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path_bytes() {
                changed.insert(String::from_utf8_lossy(path).into_owned());
            }
        }
    }
    let mut bytes = Vec::new();
    diff.print(DiffFormat::Patch, |_delta, _hunk, line| {
        // Content lines come without their origin marker; file headers,
        // hunk headers, binary data and "\ No newline" lines carry their own
        // text.
        if matches!(line.origin(), '+' | '-' | ' ') {
            bytes.push(line.origin() as u8);
        }
        bytes.extend_from_slice(line.content());
        true
    })
    .map_err(git_err(context()))?;
    let sha256 = sha256_hex(&bytes);
    Ok(Some(Patch {
        bytes,
        sha256,
        changed_files: changed.into_iter().collect(),
    }))
}

/// Fail when the blobs `diff` would print add up to more than `limit`
/// allows; reads object headers only.
fn hold_to(repo: &Repository, diff: &Diff<'_>, limit: &ChangeLimit<'_>) -> Result<(), WorkspaceError> {
    let odb = repo.odb().map_err(git_err("opening the object store".into()))?;
    let mut total: u64 = 0;
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            // Blobs only: a submodule's commit is not in this store, and a
            // symlink's target is a few bytes.
            if file.id().is_zero() || !matches!(file.mode(), git2::FileMode::Blob | git2::FileMode::BlobExecutable) {
                continue;
            }
            let (size, _) = odb
                .read_header(file.id())
                .map_err(git_err(format!("reading the size of blob {}", file.id())))?;
            total = total.saturating_add(size as u64);
            if total > limit.max_bytes {
                return Err(WorkspaceError::OverQuota {
                    path: limit.workspace.to_owned(),
                    what: "bytes of changed files (old and new sides)",
                    found: total,
                    limit: limit.max_bytes,
                });
            }
        }
    }
    Ok(())
}

/// Why `path` (as named by a patch) is unsafe, if it is.
fn unsafe_path(path: &[u8]) -> Option<&'static str> {
    if path.is_empty() {
        return Some("empty path");
    }
    if path.starts_with(b"/") {
        return Some("absolute path");
    }
    if path.contains(&0) {
        return Some("NUL in path");
    }
    let mut depth = 0;
    for component in path.split(|&b| b == b'/') {
        depth += 1;
        match component {
            b"" => return Some("empty path component"),
            b"." => return Some("'.' path component"),
            b".." => return Some("'..' path component"),
            c if is_dot_git(c) => return Some("'.git' path component"),
            _ => {}
        }
    }
    (depth > MAX_DEPTH).then_some("path nests too deep")
}

/// The proper prefixes of a path: `a`, `a/b` for `a/b/c`.
fn parents(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(move |(i, _)| &path[..i])
}

/// Check every path of `diff` against the rules and against `base`.
fn validate(diff: &Diff<'_>, base: &Tree<'_>, patch_sha256: &str) -> Result<(), WorkspaceError> {
    let refuse = |path: &[u8], reason: &'static str| WorkspaceError::UnsafePatchPath {
        path: String::from_utf8_lossy(path).into_owned(),
        reason,
        patch_sha256: patch_sha256.to_owned(),
    };
    let mut paths: Vec<&[u8]> = Vec::new();
    let mut new_links: HashSet<&[u8]> = HashSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path_bytes() {
                paths.push(path);
            }
        }
        if let (FileMode::Link, Some(path)) = (delta.new_file().mode(), delta.new_file().path_bytes()) {
            new_links.insert(path);
        }
    }
    for &path in &paths {
        if let Some(reason) = unsafe_path(path) {
            return Err(refuse(path, reason));
        }
    }
    for &path in &paths {
        for parent in parents(path) {
            if new_links.contains(parent) {
                return Err(refuse(path, "path runs through a symlink the patch creates"));
            }
            match base.get_path(Path::new(OsStr::from_bytes(parent))) {
                Ok(entry) if entry.filemode_raw() == i32::from(FileMode::Link) => {
                    return Err(refuse(path, "path runs through a symlink of the base tree"));
                }
                // Only a directory can hold more path: anything else makes the
                // patch fail to apply, which git reports itself.
                Ok(entry) if entry.filemode_raw() != i32::from(FileMode::Tree) => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// Apply `patch` to `base`, writing the result's objects; returns its tree.
pub(crate) fn apply(repo: &Repository, git_dir: &Path, base: TreeId, patch: &[u8]) -> Result<TreeId, WorkspaceError> {
    let patch_sha256 = sha256_hex(patch);
    let does_not_apply = |e: git2::Error| WorkspaceError::PatchDoesNotApply {
        patch_sha256: patch_sha256.clone(),
        reason: e.message().to_owned(),
    };
    // What the text names first (before a parser can normalise it), then
    // what libgit2 understood.
    for name in headers::header_names(patch) {
        let reason = if name.raw_absolute {
            Some("absolute path")
        } else {
            unsafe_path(&name.path)
        };
        if let Some(reason) = reason {
            let path = String::from_utf8_lossy(&name.path).into_owned();
            return Err(WorkspaceError::UnsafePatchPath {
                path,
                reason,
                patch_sha256,
            });
        }
    }
    let diff = Diff::from_buffer(patch).map_err(does_not_apply)?;
    let tree = find_tree(repo, base, git_dir)?;
    validate(&diff, &tree, &patch_sha256)?;
    let mut index = repo.apply_to_tree(&tree, &diff, None).map_err(does_not_apply)?;
    let oid: Oid = index.write_tree_to(repo).map_err(does_not_apply)?;
    Ok(TreeId(oid))
}
