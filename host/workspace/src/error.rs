//! Why a workspace operation failed: one variant per cause, each naming
//! the input (path, tree, patch, repository) it failed on.

use std::path::PathBuf;

use super::TreeId;

/// Why a workspace operation failed; every variant names its input.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The baseline repository path or URL names nothing that exists here,
    /// so the job cannot start (a job payload error, not a host fault).
    #[error("baseline repository {repository:?} not found")]
    BaselineNotFound {
        /// The repository as given.
        repository: String,
    },
    /// The baseline repository exists but has no such branch.
    #[error("branch {branch:?} not found in baseline repository {repository:?}")]
    BranchNotFound {
        /// The repository as given.
        repository: String,
        /// The branch as given.
        branch: String,
    },
    /// The branch name is not a valid git ref name (it could otherwise bend
    /// the fetch refspec).
    #[error("{branch:?} is not a valid branch name (baseline repository {repository:?})")]
    InvalidBranch {
        /// The repository as given.
        repository: String,
        /// The branch as given.
        branch: String,
    },
    /// The baseline repository could not be read or fetched.
    #[error("cannot read baseline repository {repository:?}: {source}")]
    Baseline {
        /// The repository as given.
        repository: String,
        /// What libgit2 said.
        source: git2::Error,
    },
    /// The git directory would be visible (and writable) to the guest.
    #[error("git directory {} is inside the workspace directory {}", git_dir.display(), workspace_dir.display())]
    GitDirInsideWorkspace {
        /// The git directory.
        git_dir: PathBuf,
        /// The workspace directory.
        workspace_dir: PathBuf,
    },
    /// The workspace directory lies inside the git directory, where a guest
    /// could write objects or the stat cache.
    #[error("workspace directory {} is inside the git directory {}", workspace_dir.display(), git_dir.display())]
    WorkspaceInsideGitDir {
        /// The workspace directory.
        workspace_dir: PathBuf,
        /// The git directory.
        git_dir: PathBuf,
    },
    /// A baseline is only materialised into a fresh directory, never over
    /// someone's files.
    #[error("workspace directory {} exists and is not empty", path.display())]
    WorkspaceNotEmpty {
        /// The workspace directory.
        path: PathBuf,
    },
    /// The git directory could not be created or opened as a bare repository.
    #[error("git directory {}: {source}", path.display())]
    GitDir {
        /// The git directory.
        path: PathBuf,
        /// What libgit2 said.
        source: git2::Error,
    },
    /// A tree id that is not in this workspace's object store (a checkpoint
    /// from another store, or a store that was wiped).
    #[error("tree {tree} is not in the object store {}", git_dir.display())]
    TreeNotFound {
        /// The tree asked for.
        tree: TreeId,
        /// The git directory searched.
        git_dir: PathBuf,
    },
    /// A patch names a path that could write outside the workspace, into
    /// git metadata, or through a symlink; nothing was applied.
    #[error("patch {patch_sha256} names unsafe path {path:?}: {reason}")]
    UnsafePatchPath {
        /// The path as the patch names it.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
        /// sha256 of the patch bytes.
        patch_sha256: String,
    },
    /// A patch that does not parse, or whose hunks do not match the tree it
    /// is applied to (altered, or replayed onto the wrong base).
    #[error("patch {patch_sha256} does not apply: {reason}")]
    PatchDoesNotApply {
        /// sha256 of the patch bytes.
        patch_sha256: String,
        /// What libgit2 said.
        reason: String,
    },
    /// A tree holds an entry that cannot be written safely (a name such as
    /// `..` or `.git`, an unknown mode): only a hostile baseline has these.
    #[error("tree {tree} has entry {path:?} that cannot be written: {reason}")]
    UnsafeTreeEntry {
        /// The tree being written.
        tree: TreeId,
        /// Workspace-relative path of the entry.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file's copy could not be written to the object store (its disk
    /// is full, say).
    #[error("storing {} in the workspace's object store: {source}", path.display())]
    ObjectWrite {
        /// The workspace file being stored.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The workspace holds more than its [`Quota`] allows.
    #[error("workspace {} holds at least {found} {what}, over its limit of {limit}", path.display())]
    OverQuota {
        /// The workspace directory.
        path: PathBuf,
        /// `bytes (apparent size)` or `entries`.
        what: &'static str,
        /// How many it holds, at least: listing stops as soon as the
        /// count is over the limit.
        found: u64,
        /// The limit.
        limit: u64,
    },
    /// Directories nest deeper than [`MAX_DEPTH`].
    #[error("{} nests deeper than {max} directories", path.display())]
    TooDeep {
        /// The first path too deep.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// An object-store operation failed.
    #[error("{context}: {source}")]
    Git {
        /// What was being done, naming the path or tree.
        context: String,
        /// What libgit2 said.
        source: git2::Error,
    },
    /// A filesystem operation failed (in the workspace or the git directory).
    #[error("{}: {source}", path.display())]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl WorkspaceError {
    /// True when the error is a workspace limit a step's changes crossed
    /// (the step's failure, not the host's).
    pub fn is_limit(&self) -> bool {
        matches!(self, WorkspaceError::TooDeep { .. } | WorkspaceError::OverQuota { .. })
    }
}
