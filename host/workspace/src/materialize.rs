//! Materialise: empty the workspace directory and write a tree into it,
//! every step through the cap-std capability, one path component at a
//! time, never following a symlink.
//!
//! Clearing removes symlinks as links (their targets are untouched) and
//! directories without following links inside them. Writing creates each
//! directory fresh (so an existing symlink of that name is an error, never
//! a path to somewhere else), creates files with `create_new` (which does
//! not follow a symlink either) and creates symlinks as symlinks. Tree
//! entry names are checked before use: a tree fetched from a hostile
//! baseline could hold `..`, `a/b` or `.git`.
//!
//! While writing, the stat cache is rebuilt from the files just written,
//! so the next snapshot reads nothing that a reset wrote.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use git2::{ObjectType, Odb, Oid, Repository, Tree};

use super::cache::{CachedDir, CachedFile, FileStat, StatCache, MODE_EXEC, MODE_LINK, MODE_TREE};
use super::relpath::{is_dot_git, join};
use super::{display_path, git_err, TreeId, WorkspaceError, MAX_DEPTH};

/// Legacy group-writable file mode some old trees carry; written as 0644.
const MODE_GROUP_WRITABLE: u32 = 0o100664;
/// A submodule (gitlink): git checks it out as an empty directory.
const MODE_GITLINK: u32 = 0o160000;

/// Delete everything inside `root`, keeping `root` itself.
pub(crate) fn clear(root: &Dir, root_path: &Path) -> Result<(), WorkspaceError> {
    let io = |rel: &[u8]| {
        let path = display_path(root_path, rel);
        move |source| WorkspaceError::Io { path, source }
    };
    for entry in root.entries().map_err(io(b""))? {
        let entry = entry.map_err(io(b""))?;
        let name = entry.file_name();
        let rel = name.as_bytes();
        // lstat: a symlink to a directory is removed as a link.
        let md = entry.metadata().map_err(io(rel))?;
        if md.is_dir() {
            root.remove_dir_all(&name).map_err(io(rel))?;
        } else {
            root.remove_file(&name).map_err(io(rel))?;
        }
    }
    Ok(())
}

/// What a reset wrote.
pub(crate) struct Written {
    /// The stat cache of every file and directory written.
    pub cache: StatCache,
    /// Every directory written, the root (`""`) and empty ones included.
    pub dirs: Vec<Vec<u8>>,
}

/// Write `tree` into the empty directory `root`.
pub(crate) fn write_tree(
    repo: &Repository,
    odb: &Odb<'_>,
    root: &Dir,
    root_path: &Path,
    tree: &Tree<'_>,
) -> Result<Written, WorkspaceError> {
    let mut writer = Writer {
        repo,
        odb,
        root_path,
        top: TreeId(tree.id()),
        cache: StatCache::default(),
        dirs: vec![Vec::new()],
    };
    writer.dir(root, tree, b"", 0)?;
    Ok(Written {
        cache: writer.cache,
        dirs: writer.dirs,
    })
}

/// What a directory holds in all, as a scan counts it: entries, and
/// apparent bytes of files and symlinks.
#[derive(Default)]
struct Totals {
    entries: u64,
    bytes: u64,
}

struct Writer<'a, 'r> {
    repo: &'r Repository,
    odb: &'a Odb<'r>,
    root_path: &'a Path,
    /// The tree being materialised, for errors.
    top: TreeId,
    cache: StatCache,
    dirs: Vec<Vec<u8>>,
}

/// Why a tree entry name cannot become a directory entry, if it cannot.
fn unsafe_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name == b"." || name == b".." {
        Some("'.' or '..' as a name")
    } else if name.contains(&b'/') || name.contains(&0) {
        Some("'/' or NUL in a name")
    } else if is_dot_git(name) {
        Some("'.git' in a workspace tree")
    } else {
        None
    }
}

impl Writer<'_, '_> {
    /// An I/O error at `rel` (the path is built only when there is one).
    fn io<'a>(&'a self, rel: &'a [u8]) -> impl FnOnce(std::io::Error) -> WorkspaceError + 'a {
        move |source| WorkspaceError::Io {
            path: display_path(self.root_path, rel),
            source,
        }
    }

    fn unsafe_entry(&self, rel: &[u8], reason: &'static str) -> WorkspaceError {
        WorkspaceError::UnsafeTreeEntry {
            tree: self.top,
            path: String::from_utf8_lossy(rel).into_owned(),
            reason,
        }
    }

    /// Record a file just written in the stat cache, so the next snapshot
    /// trusts it without reading it back.
    fn remember(&mut self, path: Vec<u8>, md: &cap_std::fs::Metadata, mode: u32, oid: Oid) {
        let cached = CachedFile {
            stat: FileStat::of(md),
            mode,
            oid,
            racy: false,
            seen: 0,
        };
        self.cache.files.insert(path, cached);
    }

    fn blob(&self, oid: Oid, rel: &[u8]) -> Result<git2::OdbObject<'_>, WorkspaceError> {
        let context = || format!("reading the blob of {}", display_path(self.root_path, rel).display());
        let object = self.odb.read(oid).map_err(git_err(context()))?;
        if object.kind() != ObjectType::Blob {
            return Err(self.unsafe_entry(rel, "a file entry that is not a blob"));
        }
        Ok(object)
    }

    /// Write `tree` into `dir` (at `rel`); returns what it holds in all.
    fn dir(&mut self, dir: &Dir, tree: &Tree<'_>, rel: &[u8], depth: usize) -> Result<Totals, WorkspaceError> {
        let mut totals = Totals {
            entries: tree.len() as u64,
            bytes: 0,
        };
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let path = join(rel, name);
            if let Some(reason) = unsafe_name(name) {
                return Err(self.unsafe_entry(&path, reason));
            }
            let os_name = OsStr::from_bytes(name);
            let mode = entry.filemode_raw() as u32;
            match mode {
                MODE_TREE | MODE_GITLINK => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(WorkspaceError::TooDeep {
                            path: display_path(self.root_path, &path),
                            max: MAX_DEPTH,
                        });
                    }
                    dir.create_dir(os_name).map_err(self.io(&path))?;
                    self.dirs.push(path.clone());
                    if mode == MODE_GITLINK {
                        continue;
                    }
                    let sub = dir.open_dir(os_name).map_err(self.io(&path))?;
                    let context = format!("reading the tree of {}", display_path(self.root_path, &path).display());
                    let subtree = self.repo.find_tree(entry.id()).map_err(git_err(context))?;
                    let below = self.dir(&sub, &subtree, &path, depth + 1)?;
                    totals.entries += below.entries;
                    totals.bytes += below.bytes;
                }
                MODE_LINK => {
                    let md = {
                        let blob = self.blob(entry.id(), &path)?;
                        let target = blob.data();
                        if target.is_empty() || target.contains(&0) {
                            return Err(self.unsafe_entry(&path, "a symlink target that is empty or holds NUL"));
                        }
                        dir.symlink_contents(OsStr::from_bytes(target), os_name)
                            .map_err(self.io(&path))?;
                        dir.symlink_metadata(os_name).map_err(self.io(&path))?
                    };
                    totals.bytes += md.len();
                    self.remember(path, &md, mode, entry.id());
                }
                super::cache::MODE_FILE | MODE_EXEC | MODE_GROUP_WRITABLE => {
                    let perm = if mode == MODE_EXEC { 0o755 } else { 0o644 };
                    let mut options = OpenOptions::new();
                    options.write(true).create_new(true).mode(perm);
                    let mut file = dir.open_with(os_name, &options).map_err(self.io(&path))?;
                    {
                        let blob = self.blob(entry.id(), &path)?;
                        file.write_all(blob.data()).map_err(self.io(&path))?;
                    }
                    let mut md = file.metadata().map_err(self.io(&path))?;
                    if mode == MODE_EXEC && md.mode() & 0o111 == 0 {
                        // A umask took every execute bit: put it back, or the
                        // next snapshot would record a mode change.
                        file.set_permissions(Permissions::from_mode(perm))
                            .map_err(self.io(&path))?;
                        md = file.metadata().map_err(self.io(&path))?;
                    }
                    // The tree's own mode is cached, so a legacy 100664 entry
                    // makes the next snapshot rebuild this directory's tree
                    // rather than reuse one that disagrees with the disk.
                    totals.bytes += md.len();
                    self.remember(path, &md, mode, entry.id());
                }
                _ => return Err(self.unsafe_entry(&path, "an unknown file mode")),
            }
        }
        self.cache.dirs.insert(
            rel.to_vec(),
            CachedDir {
                oid: tree.id(),
                entries: tree.len() as u32,
                subtree_entries: totals.entries,
                subtree_bytes: totals.bytes,
                seen: 0,
            },
        );
        Ok(totals)
    }
}
