//! Baselines: the tree a task starts from, read into the job's object store
//! from a git repository (a local path or a `file://` URL, fetched at a
//! branch) or from a plain directory (its files are the baseline; samples
//! ship theirs that way).
//!
//! A plain directory is read with the same capability-scoped walker as a
//! snapshot, so a symlink in it is recorded as a link and never followed.

use std::io::Write;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use git2::{Buf, Direction, ErrorCode, ObjectType, Reference, Repository, Signature, Time};

use super::cache::StatCache;
use super::scan::Plan;
use super::{git_err, snapshot, TreeId, WorkspaceError};

/// Where fetched baselines land in the job's object store.
const BASELINE_REF: &str = "refs/stepd/baseline";

/// The local path a `repository` string names: a path as is, or the path
/// of a `file://` URL (percent-escapes decoded).
fn local_path(repository: &str) -> Option<PathBuf> {
    let Some(rest) = repository.strip_prefix("file://") else {
        return Some(PathBuf::from(repository));
    };
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return None; // file://otherhost/... is not local
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Read the baseline named by `repository` and `branch` into `repo`'s
/// object store; returns its tree.
pub(crate) fn load(repo: &Repository, repository: &str, branch: &str) -> Result<TreeId, WorkspaceError> {
    let not_found = || WorkspaceError::BaselineNotFound {
        repository: repository.to_owned(),
    };
    let path = local_path(repository).ok_or_else(not_found)?;
    let path = path.canonicalize().map_err(|_| not_found())?;
    match Repository::open(&path) {
        Ok(_) => fetch(repo, repository, &path, branch),
        Err(e) if e.code() == ErrorCode::NotFound && path.is_dir() => plain_directory(repo, repository, &path),
        Err(e) if e.code() == ErrorCode::NotFound => Err(not_found()),
        Err(source) => Err(WorkspaceError::Baseline {
            repository: repository.to_owned(),
            source,
        }),
    }
}

/// Fetch `refs/heads/<branch>` (or the remote's default branch when
/// `branch` is empty) and take its commit's tree.
fn fetch(repo: &Repository, repository: &str, path: &Path, branch: &str) -> Result<TreeId, WorkspaceError> {
    let baseline_err = |source| WorkspaceError::Baseline {
        repository: repository.to_owned(),
        source,
    };
    let branch_not_found = || WorkspaceError::BranchNotFound {
        repository: repository.to_owned(),
        branch: branch.to_owned(),
    };
    let branch_name = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    let url = path.to_str().ok_or_else(|| WorkspaceError::BaselineNotFound {
        repository: repository.to_owned(),
    })?;
    let mut remote = repo.remote_anonymous(url).map_err(baseline_err)?;
    remote.connect(Direction::Fetch).map_err(baseline_err)?;
    let refname = if branch_name.is_empty() {
        let head = remote.default_branch().map_err(|_| branch_not_found())?;
        head.as_str().ok_or_else(branch_not_found)?.to_owned()
    } else {
        let refname = format!("refs/heads/{branch_name}");
        // A valid ref name cannot hold ':', '*' or a leading '+', so it cannot
        // bend the refspec below.
        if !Reference::is_valid_name(&refname) {
            return Err(WorkspaceError::InvalidBranch {
                repository: repository.to_owned(),
                branch: branch.to_owned(),
            });
        }
        refname
    };
    let advertised = remote
        .list()
        .map_err(baseline_err)?
        .iter()
        .any(|head| head.name() == refname);
    remote.disconnect().map_err(baseline_err)?;
    if !advertised {
        return Err(branch_not_found());
    }
    // A stale baseline ref from an earlier job must not stand in for a
    // fetch that brought nothing.
    match repo.find_reference(BASELINE_REF) {
        Ok(mut stale) => stale.delete().map_err(git_err(format!("deleting {BASELINE_REF}")))?,
        Err(e) if e.code() == ErrorCode::NotFound => {}
        Err(e) => return Err(git_err(format!("reading {BASELINE_REF}"))(e)),
    }
    remote
        .fetch(&[format!("+{refname}:{BASELINE_REF}")], None, None)
        .map_err(baseline_err)?;
    let oid = repo.refname_to_id(BASELINE_REF).map_err(|_| branch_not_found())?;
    let object = repo.find_object(oid, None).map_err(baseline_err)?;
    let tree = object.peel(ObjectType::Tree).map_err(baseline_err)?;
    Ok(TreeId(tree.id()))
}

/// The most distinct trees and blobs a remote baseline may hold.
const MAX_BASELINE_OBJECTS: usize = 1_000_000;

/// Copy the tree of `commit` in the fetched repository `cache_repo` (and
/// every tree and blob under it) into `repo`'s object store; returns the
/// tree. Object by object: the cache's fetch is shallow, so there is no
/// history a fetch from it could walk, and a baseline needs none.
pub(crate) fn copy_commit_tree(repo: &Repository, cache_repo: &Path, commit: &str) -> Result<TreeId, WorkspaceError> {
    let repository = cache_repo.display().to_string();
    let baseline_err = |source| WorkspaceError::Baseline {
        repository: repository.clone(),
        source,
    };
    let cache = Repository::open_bare(cache_repo).map_err(baseline_err)?;
    let oid = git2::Oid::from_str(commit).map_err(baseline_err)?;
    let tree = cache.find_commit(oid).and_then(|c| c.tree()).map_err(baseline_err)?;
    let from = cache.odb().map_err(baseline_err)?;
    let to = repo
        .odb()
        .map_err(git_err(format!("opening the object store for {repository}")))?;
    let mut pending = vec![tree.id()];
    // Each tree is walked once per copy (a tree named a million times, as
    // in a "git bomb", costs one visit), and every tree of this copy is
    // walked (so a copy cut short by a crash is completed by the next); a
    // blob already present is skipped.
    let mut visited = std::collections::HashSet::new();
    while let Some(id) = pending.pop() {
        if !visited.insert(id) {
            continue;
        }
        if visited.len() > MAX_BASELINE_OBJECTS {
            return Err(WorkspaceError::OverQuota {
                path: cache_repo.to_owned(),
                what: "distinct objects in the baseline",
                found: visited.len() as u64,
                limit: MAX_BASELINE_OBJECTS as u64,
            });
        }
        let (_, kind) = from.read_header(id).map_err(baseline_err)?;
        if kind == ObjectType::Tree {
            let tree = cache.find_tree(id).map_err(baseline_err)?;
            // Submodules (commits) are not part of a baseline's files.
            pending.extend(
                tree.iter()
                    .filter(|e| matches!(e.kind(), Some(ObjectType::Tree | ObjectType::Blob)))
                    .map(|e| e.id()),
            );
        }
        if !to.exists(id) {
            let object = from.read(id).map_err(baseline_err)?;
            to.write(object.kind(), object.data())
                .map_err(git_err(format!("copying object {id} of {repository}")))?;
        }
    }
    Ok(TreeId(tree.id()))
}

/// Snapshot a plain directory into the object store. Objects are gathered
/// in memory and reach the store as one pack: a baseline of thousands of
/// files would otherwise become thousands of loose object files.
fn plain_directory(repo: &Repository, repository: &str, path: &Path) -> Result<TreeId, WorkspaceError> {
    let dir = Dir::open_ambient_dir(path, ambient_authority()).map_err(|source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let context = |what: &str| format!("{what} for baseline {repository}");
    // The files are read into an object store of their own, in memory:
    // nothing of it stays attached to the workspace's store, and no second
    // handle on that store is opened (opening one reads git's config files
    // and lists the object directories, on every job).
    let empty = git2::Odb::new().map_err(git_err(context("preparing an in-memory store")))?;
    let import = Repository::from_odb(empty).map_err(git_err(context("preparing an in-memory store")))?;
    let odb = import.odb().map_err(git_err(context("preparing an in-memory store")))?;
    let mempack = odb
        .add_new_mempack_backend(1000)
        .map_err(git_err(context("preparing an in-memory pack")))?;
    let source = snapshot::Source {
        odb: &odb,
        root: &dir,
        root_path: path,
        quota: None,
        tracker: None,
    };
    let snap = snapshot::snapshot(&source, &mut StatCache::default(), &Plan::Everything)?;
    let tree = import
        .find_tree(snap.tree)
        .map_err(git_err(context("reading the tree")))?;
    // A small baseline (the usual one-file task) is written as loose
    // objects: a pack, its index, a commit and a ref cost more files than
    // the objects themselves.
    if let Some(objects) = few_objects(&import, &tree, LOOSE_BASELINE_OBJECTS) {
        let store = repo.odb().map_err(git_err(context("opening the object store")))?;
        for oid in objects {
            let object = odb.read(oid).map_err(git_err(context("reading an object")))?;
            store
                .write(object.kind(), object.data())
                .map_err(git_err(context("writing an object")))?;
        }
        return Ok(TreeId(snap.tree));
    }
    // The in-memory pack holds what commits reach: record the tree in a
    // commit (fixed author and time, so the same files give the same commit).
    let signature =
        Signature::new("stepd", "stepd@localhost", &Time::new(0, 0)).map_err(git_err(context("signing")))?;
    let commit = import
        .commit(None, &signature, &signature, "stepd baseline", &tree, &[])
        .map_err(git_err(context("recording the baseline commit")))?;
    let mut pack = Buf::new();
    mempack
        .dump(&import, &mut pack)
        .map_err(git_err(context("packing the objects")))?;
    // A pack with no objects is a 12-byte header and a 20-byte checksum:
    // everything was in the store already.
    if pack.len() > 32 {
        let store = repo.odb().map_err(git_err(context("opening the object store")))?;
        let mut writer = store.packwriter().map_err(git_err(context("writing the pack")))?;
        writer.write_all(&pack).map_err(|source| WorkspaceError::Io {
            path: repo.path().join("objects/pack"),
            source,
        })?;
        writer.commit().map_err(git_err(context("indexing the pack")))?;
    }
    repo.reference(BASELINE_REF, commit, true, "stepd: plain-directory baseline")
        .map_err(git_err(context(&format!("updating {BASELINE_REF}"))))?;
    Ok(TreeId(snap.tree))
}

/// Most objects (trees and blobs) a plain-directory baseline is written
/// loose with.
const LOOSE_BASELINE_OBJECTS: usize = 64;

/// The ids of `tree` and everything under it, when there are at most
/// `limit`; `None` past it.
fn few_objects(repo: &Repository, tree: &git2::Tree<'_>, limit: usize) -> Option<Vec<git2::Oid>> {
    let mut objects = vec![tree.id()];
    let mut pending = vec![tree.id()];
    while let Some(id) = pending.pop() {
        let tree = repo.find_tree(id).ok()?;
        for entry in tree.iter() {
            if objects.len() >= limit {
                return None;
            }
            // Submodule entries (commits) are not in the store.
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    objects.push(entry.id());
                    pending.push(entry.id());
                }
                Some(ObjectType::Blob) => objects.push(entry.id()),
                _ => {}
            }
        }
    }
    Some(objects)
}

#[cfg(test)]
mod tests {
    use super::local_path;
    use std::path::PathBuf;

    #[test]
    fn file_urls_name_local_paths() {
        assert_eq!(local_path("/srv/repo"), Some(PathBuf::from("/srv/repo")));
        assert_eq!(local_path("file:///srv/my%20repo"), Some(PathBuf::from("/srv/my repo")));
        assert_eq!(local_path("file://localhost/srv/r"), Some(PathBuf::from("/srv/r")));
        assert_eq!(local_path("file://elsewhere/srv/r"), None);
    }
}
