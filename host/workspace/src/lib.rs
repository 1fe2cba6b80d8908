//! The workspace: the one directory a step's guest sees as `/workspace`,
//! and the git object store, kept outside it, that records its states
//! (docs/ARCHITECTURE.md#workspace-model).
//!
//! This crate owns baseline materialisation, incremental snapshots (a
//! directory state becomes a git tree), diffs between states (a step's patch
//! in `git diff --binary` format), patch replay onto trees, and hard resets
//! of the directory. It knows nothing of steps, retries or artifacts: the
//! self-heal loop decides when to snapshot, diff and rebuild.
//!
//! Every host read and write of the workspace directory goes through one
//! `cap_std::fs::Dir` opened on it: cap-std resolves every path beneath that
//! root or fails, entries are classified with `lstat`, symlinks are recorded
//! and recreated as symlinks and never followed by a read or a write, and
//! patch paths are checked before they are used. So a symlink or `..`
//! planted by a guest or carried by a patch cannot make the host touch
//! anything outside. Git metadata (the bare object store and the stat
//! cache) lives in a separate directory that may not overlap the workspace:
//! the guest never sees a `.git`.
//!
//! The host snapshots and resets only while no guest instance runs in the
//! workspace (the attempt's instance has been dropped). These calls block
//! (file system and libgit2 work); async callers run them on a blocking
//! thread.

mod baseline;
mod cache;
mod changes;
mod error;
mod headers;
mod materialize;
mod patch;
mod relpath;
pub mod remote;
mod scan;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt};
use git2::{ErrorCode, Oid, Repository};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use cache::{RootId, StatCache, RACY_MARGIN};
use changes::{ChangeTracker, Changes};
pub use error::WorkspaceError;
use scan::Plan;

/// Deepest directory nesting the host will walk, write or accept in a
/// patch. Writing a tree holds one directory handle per level, so this
/// bounds the descriptors and stack a hostile tree, patch or guest can make
/// the host use (git itself caps tree depth too).
pub const MAX_DEPTH: usize = 256;

/// How many bytes of changed blobs a diff may hold, and the workspace it
/// names when it refuses.
pub(crate) struct ChangeLimit<'a> {
    max_bytes: u64,
    workspace: &'a Path,
}

/// Map a libgit2 error to [`WorkspaceError::Git`] with its context.
fn git_err(context: String) -> impl FnOnce(git2::Error) -> WorkspaceError {
    move |source| WorkspaceError::Git { context, source }
}

/// `root/rel` for error messages (`rel` is workspace-relative bytes).
fn display_path(root: &Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

/// The git tree id of a workspace state: what checkpoints record and what
/// diffs and rebuilds take. Serialised as its 40-digit hex string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeId(Oid);

impl TreeId {
    /// The git object id, for callers that work with git2 directly.
    pub fn oid(self) -> Oid {
        self.0
    }
}

impl fmt::Debug for TreeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TreeId({})", self.0)
    }
}

impl fmt::Display for TreeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for TreeId {
    type Err = git2::Error;

    /// Parses the full 40-digit hex form only: an abbreviation could be
    /// ambiguous.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 40 {
            return Err(git2::Error::from_str("a tree id has 40 hex digits"));
        }
        Oid::from_str(s).map(TreeId)
    }
}

impl Serialize for TreeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TreeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A step's patch, as stored in `patches/steps/step-XXXX.patch` and checked
/// before replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// `git diff --binary` text: `git apply` accepts it in any checkout.
    pub bytes: Vec<u8>,
    /// Lowercase hex sha256 of `bytes`: the step's diff hash.
    pub sha256: String,
    /// Every path the patch touches, '/'-separated, sorted, for the retry
    /// context and the step state.
    pub changed_files: Vec<String>,
}

/// What the last snapshot cost: proof that a step costs what it changed,
/// not what the repository holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotStats {
    /// Files (and symlinks) whose content was read and hashed.
    pub files_hashed: usize,
    /// Files whose blob id came from the stat cache without reading them.
    pub files_reused: usize,
    /// Directories whose tree came from the cache without rebuilding it.
    pub trees_reused: usize,
    /// Tree objects written (directories that changed).
    pub trees_written: usize,
    /// Entries not recorded: `.git`, sockets, FIFOs, devices.
    pub entries_skipped: usize,
}

/// A job's workspace: a host directory the guest sees as `/workspace`, plus
/// git metadata kept outside it. One `Workspace` per directory; it is not
/// shared between threads (libgit2 handles are not `Sync`).
pub struct Workspace {
    root_path: PathBuf,
    root: Dir,
    root_id: RootId,
    git_dir: PathBuf,
    repo: Repository,
    cache: StatCache,
    last_stats: SnapshotStats,
    /// Watches every directory of a large tree (`changes.rs`); None for a
    /// small tree, or when the tree could not be watched.
    tracker: Option<ChangeTracker>,
    /// Whether watching this tree failed since its last reset (so the
    /// next snapshots do not try again).
    untrackable: bool,
    /// Directories holding a file with more than one link: always listed.
    linked: HashSet<Vec<u8>>,
}

/// What a snapshot accepts before reading any file: apparent bytes of all
/// files together (a sparse file counts at its full size) and entries;
/// and what a diff accepts before reading any blob: the bytes it would
/// have to hold to make the patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most bytes, all files together.
    pub max_bytes: u64,
    /// Most files, symlinks and directories together.
    pub max_entries: u64,
    /// Most bytes of changed files, old and new sides together: making a
    /// `--binary` patch holds each changed blob whole in memory.
    pub max_change_bytes: u64,
}

impl fmt::Debug for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workspace")
            .field("root", &self.root_path)
            .field("git_dir", &self.git_dir)
            .field("cached_files", &self.cache.files.len())
            .finish()
    }
}

/// `path` made absolute with symlinks resolved as far as it exists, so two
/// paths can be compared for nesting before either is created.
fn normalize(path: &Path) -> Result<PathBuf, WorkspaceError> {
    let io = |source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    };
    let absolute = std::path::absolute(path).map_err(io)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(mut resolved) => {
                for component in rest.iter().rev() {
                    match component {
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        Component::Normal(name) => resolved.push(name),
                        _ => {}
                    }
                }
                return Ok(resolved);
            }
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => return Err(io(source)),
            Err(_) => {}
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

/// Refuse a git directory and workspace directory that overlap.
fn check_separate(workspace_dir: &Path, git_dir: &Path) -> Result<(), WorkspaceError> {
    let (ws, git) = (normalize(workspace_dir)?, normalize(git_dir)?);
    if git.starts_with(&ws) {
        return Err(WorkspaceError::GitDirInsideWorkspace {
            git_dir: git_dir.to_owned(),
            workspace_dir: workspace_dir.to_owned(),
        });
    }
    if ws.starts_with(&git) {
        return Err(WorkspaceError::WorkspaceInsideGitDir {
            workspace_dir: workspace_dir.to_owned(),
            git_dir: git_dir.to_owned(),
        });
    }
    Ok(())
}

/// Open the bare repository at `git_dir`, creating it if needed.
fn open_or_init_store(git_dir: &Path) -> Result<Repository, WorkspaceError> {
    let git_error = |source| WorkspaceError::GitDir {
        path: git_dir.to_owned(),
        source,
    };
    match Repository::open_bare(git_dir) {
        Ok(repo) => Ok(repo),
        Err(e) if e.code() == ErrorCode::NotFound => {
            create_store_layout(git_dir)?;
            Repository::open_bare(git_dir).map_err(git_error)
        }
        Err(e) => Err(git_error(e)),
    }
}

/// Lay out an empty bare repository at `git_dir`: `HEAD`, `objects/`
/// (with `pack/`, where a fetch writes) and `refs/`, what git and libgit2
/// require of a repository; the rest is created when first written, and a
/// missing `config` reads as the defaults.
///
/// Written by hand rather than by `git init`: libgit2's init writes its
/// config three times through a lock file and a rename, and adds a
/// description, an exclude file and a hook sample — a dozen files per job,
/// and three freed inodes, which on ext4 without a journal every later
/// file creation pays for while the kernel skips recently freed inodes.
fn create_store_layout(git_dir: &Path) -> Result<(), WorkspaceError> {
    let io = |path: PathBuf| move |source| WorkspaceError::Io { path, source };
    let pack = git_dir.join("objects").join("pack");
    std::fs::create_dir_all(&pack).map_err(io(pack))?;
    let refs = git_dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(io(refs))?;
    let head = git_dir.join("HEAD");
    std::fs::write(&head, "ref: refs/heads/main\n").map_err(io(head))
}

/// A change tracker for the workspace at `root`, or None when the host has
/// no inotify instance to spare.
fn new_tracker(root: &Path) -> Option<ChangeTracker> {
    match ChangeTracker::new(root) {
        Ok(tracker) => Some(tracker),
        Err(error) => {
            tracing::debug!(workspace = %root.display(), %error, "cannot watch the workspace; snapshots list it whole");
            None
        }
    }
}

/// Open the workspace directory as the capability every host access uses.
fn open_root(workspace_dir: &Path) -> Result<(Dir, RootId), WorkspaceError> {
    let io = |source| WorkspaceError::Io {
        path: workspace_dir.to_owned(),
        source,
    };
    let root = Dir::open_ambient_dir(workspace_dir, ambient_authority()).map_err(io)?;
    let md = root.dir_metadata().map_err(io)?;
    Ok((root, (md.dev(), md.ino())))
}

impl Workspace {
    /// Create (or reuse) the object store at `git_dir` (a bare repository,
    /// never inside `workspace_dir`), read the baseline from `repository` at
    /// `branch`, and materialise it into `workspace_dir`, which must not
    /// exist or must be empty. `repository` is a local path to a git
    /// repository (bare or not), a `file://` URL, or a plain directory that
    /// is not a repository (its files are the baseline and `branch` is
    /// ignored). An empty `branch` means the repository's default branch.
    /// Returns the workspace and the baseline tree.
    pub fn create_from_baseline(
        repository: &str,
        branch: &str,
        workspace_dir: &Path,
        git_dir: &Path,
    ) -> Result<(Workspace, TreeId), WorkspaceError> {
        check_separate(workspace_dir, git_dir)?;
        Self::create_with(workspace_dir, git_dir, |repo| baseline::load(repo, repository, branch))
    }

    /// [`Workspace::create_from_baseline`] from `commit` of a repository
    /// fetched into the host's cache ([`remote::fetch_remote`]): its tree
    /// is copied from the cache's objects (a shallow fetch has no history
    /// to walk).
    pub fn create_from_commit(
        cache_repo: &Path,
        commit: &str,
        workspace_dir: &Path,
        git_dir: &Path,
    ) -> Result<(Workspace, TreeId), WorkspaceError> {
        check_separate(workspace_dir, git_dir)?;
        Self::create_with(workspace_dir, git_dir, |repo| {
            baseline::copy_commit_tree(repo, cache_repo, commit)
        })
    }

    fn create_with(
        workspace_dir: &Path,
        git_dir: &Path,
        load: impl FnOnce(&Repository) -> Result<TreeId, WorkspaceError>,
    ) -> Result<(Workspace, TreeId), WorkspaceError> {
        match std::fs::read_dir(workspace_dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(WorkspaceError::WorkspaceNotEmpty {
                        path: workspace_dir.to_owned(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WorkspaceError::Io {
                    path: workspace_dir.to_owned(),
                    source,
                })
            }
        }
        let repo = open_or_init_store(git_dir)?;
        // Read the baseline before creating anything, so a bad payload
        // leaves no directory behind.
        let baseline = load(&repo)?;
        std::fs::create_dir_all(workspace_dir).map_err(|source| WorkspaceError::Io {
            path: workspace_dir.to_owned(),
            source,
        })?;
        let (root, root_id) = open_root(workspace_dir)?;
        let mut workspace = Workspace {
            root_path: workspace_dir.to_owned(),
            root,
            root_id,
            git_dir: git_dir.to_owned(),
            repo,
            cache: StatCache::default(),
            last_stats: SnapshotStats::default(),
            tracker: None,
            untrackable: false,
            linked: HashSet::new(),
        };
        workspace.reset_to(baseline)?;
        Ok((workspace, baseline))
    }

    /// Open an existing workspace directory and git directory (after a
    /// process restart); the persisted stat cache is loaded once, here.
    pub fn open(workspace_dir: &Path, git_dir: &Path) -> Result<Workspace, WorkspaceError> {
        check_separate(workspace_dir, git_dir)?;
        let repo = Repository::open_bare(git_dir).map_err(|source| WorkspaceError::GitDir {
            path: git_dir.to_owned(),
            source,
        })?;
        let (root, root_id) = open_root(workspace_dir)?;
        let cache = StatCache::load(git_dir, root_id);
        Ok(Workspace {
            root_path: workspace_dir.to_owned(),
            root,
            root_id,
            git_dir: git_dir.to_owned(),
            repo,
            cache,
            last_stats: SnapshotStats::default(),
            tracker: None,
            untrackable: false,
            linked: HashSet::new(),
        })
    }

    /// The workspace directory: what the runtime preopens as `/workspace`.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// The git directory holding the object store and the stat cache.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// What the last [`snapshot`](Self::snapshot) read and reused.
    pub fn last_snapshot_stats(&self) -> SnapshotStats {
        self.last_stats
    }

    fn odb(&self) -> Result<git2::Odb<'_>, WorkspaceError> {
        self.repo
            .odb()
            .map_err(git_err(format!("opening the object store {}", self.git_dir.display())))
    }

    /// [`Workspace::snapshot`], held to `quota`: a workspace over it fails
    /// with [`WorkspaceError::OverQuota`] after the directory is listed and
    /// before any file is read. What a step left is held to the quota; the
    /// baseline, the operator's, is not.
    pub fn snapshot_within(&mut self, quota: Quota) -> Result<TreeId, WorkspaceError> {
        self.snapshot_held(Some(quota))
    }

    /// Record the directory as a tree. Incremental: a file whose size,
    /// mtime, ctime and inode match the stat cache keeps its blob id unread,
    /// and an unchanged directory keeps its tree. Symlinks are recorded as
    /// symlinks (never followed), empty directories are not recorded (git
    /// semantics), and a `.git` entry a guest wrote is skipped.
    pub fn snapshot(&mut self) -> Result<TreeId, WorkspaceError> {
        self.snapshot_held(None)
    }

    fn snapshot_held(&mut self, quota: Option<Quota>) -> Result<TreeId, WorkspaceError> {
        let plan = self.plan();
        let odb = self
            .repo
            .odb()
            .map_err(git_err(format!("opening the object store {}", self.git_dir.display())))?;
        let source = snapshot::Source {
            odb: &odb,
            root: &self.root,
            root_path: &self.root_path,
            quota,
            tracker: self.tracker.as_ref(),
        };
        let snap = match snapshot::snapshot(&source, &mut self.cache, &plan) {
            Ok(snap) => snap,
            Err(e) => {
                // A half-updated cache could vouch for a tree it no longer
                // describes: drop it, and the tracker whose changes are
                // relative to it (the next snapshot re-hashes, slow but
                // never wrong).
                self.cache = StatCache::default();
                self.tracker = None;
                self.linked.clear();
                return Err(e);
            }
        };
        drop(odb);
        self.last_stats = snap.stats;
        self.linked = snap.linked;
        if let Some(tracker) = &mut self.tracker {
            for (wd, path) in snap.watched {
                tracker.record(wd, path);
            }
            if snap.unwatched || !self.cache.is_large() {
                self.untrackable |= snap.unwatched;
                self.tracker = None;
            }
        }
        if snap.changed {
            self.persist_cache()?;
        }
        Ok(TreeId(snap.tree))
    }

    /// Which directories the next snapshot lists: those the tracker saw
    /// change, or every one (arming a tracker first when the tree is large
    /// enough to be worth watching).
    fn plan(&mut self) -> Plan {
        if let Some(tracker) = &mut self.tracker {
            match tracker.take_changes() {
                Changes::Known { dirty, fresh } => {
                    // A directory holding a hard-linked file is listed
                    // every time, whether or not it reported a change.
                    let mut must_list = HashSet::new();
                    for dir in dirty.into_iter().chain(self.linked.iter().cloned()) {
                        for ancestor in relpath::ancestors(&dir) {
                            // Its own ancestors are already in.
                            if !must_list.insert(ancestor.to_vec()) {
                                break;
                            }
                        }
                        must_list.insert(dir);
                    }
                    return Plan::Changed {
                        must_list,
                        fresh,
                        linked: std::mem::take(&mut self.linked),
                    };
                }
                Changes::Unknown(reason) => {
                    tracing::debug!(workspace = %self.root_path.display(), reason, "listing the whole workspace");
                }
            }
        }
        self.tracker = None;
        // An empty cache (after a failed snapshot, or a reopened workspace
        // without one) says nothing of the tree's size: watch it this
        // once, and the snapshot drops the tracker if the tree is small.
        let unknown_size = self.cache.files.is_empty() && self.cache.dirs.is_empty();
        if (unknown_size || self.cache.is_large()) && !self.untrackable {
            self.tracker = new_tracker(&self.root_path);
            self.untrackable = self.tracker.is_none();
        }
        Plan::Everything
    }

    /// The patch from `from` to `to` in `git diff --binary` format, or None
    /// when nothing changed.
    pub fn diff(&self, from: TreeId, to: TreeId) -> Result<Option<Patch>, WorkspaceError> {
        patch::diff(&self.repo, &self.git_dir, from, to, None)
    }

    /// [`Workspace::diff`], held to `quota`: when the changed files'
    /// blobs (both sides) add up to more than `max_change_bytes`, it fails
    /// with [`WorkspaceError::OverQuota`] having read only their sizes.
    pub fn diff_within(&self, from: TreeId, to: TreeId, quota: Quota) -> Result<Option<Patch>, WorkspaceError> {
        let limit = ChangeLimit {
            max_bytes: quota.max_change_bytes,
            workspace: &self.root_path,
        };
        patch::diff(&self.repo, &self.git_dir, from, to, Some(limit))
    }

    /// Apply patch bytes to `base` and return the resulting tree, after
    /// proving every path the patch names safe. Object-store work only: the
    /// directory is not touched.
    pub fn apply_patch(&self, base: TreeId, patch: &[u8]) -> Result<TreeId, WorkspaceError> {
        patch::apply(&self.repo, &self.git_dir, base, patch)
    }

    /// Hard reset: delete everything in the workspace directory, write
    /// `tree` into it and rebuild the stat cache from what was written. The
    /// directory itself stays, so the guest's preopen path is stable.
    pub fn reset_to(&mut self, tree: TreeId) -> Result<(), WorkspaceError> {
        let git_tree = self.repo.find_tree(tree.0).map_err(|_| WorkspaceError::TreeNotFound {
            tree,
            git_dir: self.git_dir.clone(),
        })?;
        self.cache = StatCache::default();
        self.tracker = None;
        self.untrackable = false;
        self.linked.clear();
        StatCache::remove(&self.git_dir)?;
        materialize::clear(&self.root, &self.root_path)?;
        let odb = self.odb()?;
        let materialize::Written { cache, dirs } =
            materialize::write_tree(&self.repo, &odb, &self.root, &self.root_path, &git_tree)?;
        drop(odb);
        self.cache = cache;
        if self.cache.is_large() {
            // Nothing has touched what was just written: watching its
            // directories now misses no change.
            self.tracker = new_tracker(&self.root_path);
            self.untrackable = self.tracker.is_none();
            if let Some(tracker) = &mut self.tracker {
                if dirs.iter().any(|dir| tracker.watch_and_record(dir).is_err()) {
                    self.tracker = None;
                    self.untrackable = true;
                }
            }
        }
        let cache = &mut self.cache;
        // Every file just written is racy: the next snapshot that lists
        // its directory re-reads it. For a tree too large to re-read
        // cheaply and not watched (so listed whole), wait out the racy
        // window instead (at most RACY_MARGIN), so it is trusted at once;
        // a small tree, the usual baseline, is faster to re-read than to
        // wait for. A watched tree lists only the directories a step
        // changed, whose racy files are few.
        if cache.is_large() && self.tracker.is_none() {
            if let Some(latest) = cache.latest_precise_ctime() {
                let wait = latest + RACY_MARGIN.as_nanos() as i128 + 1_000_000 - cache::now_ns();
                if wait > 0 {
                    std::thread::sleep(Duration::from_nanos(wait.min(2 * RACY_MARGIN.as_nanos() as i128) as u64));
                }
            }
        }
        cache.mark_racy(cache::now_ns());
        self.persist_cache()
    }

    /// Save the stat cache for a process that opens this workspace again
    /// ([`Workspace::open`]) — when it is worth a file: a small tree is
    /// re-read faster than its cache is written on every snapshot, and a
    /// watched tree's snapshot costs less than writing its cache (a
    /// megabyte at 10,000 files). The host itself never reopens a
    /// workspace: a new worker rebuilds it from the store.
    fn persist_cache(&self) -> Result<(), WorkspaceError> {
        if self.cache.is_large() && self.tracker.is_none() {
            self.cache.save(&self.git_dir, self.root_id)?;
        }
        Ok(())
    }

    /// Rebuild: apply `patches` in order onto `baseline` (each checked as by
    /// [`apply_patch`](Self::apply_patch)), then reset the directory to the
    /// result. If any patch fails, the directory is left untouched. Returns
    /// the final tree.
    pub fn rebuild_from_baseline(&mut self, baseline: TreeId, patches: &[&[u8]]) -> Result<TreeId, WorkspaceError> {
        let mut tree = baseline;
        for patch in patches {
            tree = self.apply_patch(tree, patch)?;
        }
        self.reset_to(tree)?;
        Ok(tree)
    }
}
