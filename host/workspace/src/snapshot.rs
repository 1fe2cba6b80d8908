//! Snapshot: turn the workspace directory into a git tree in the object
//! store, reading only files the stat cache cannot vouch for and rebuilding
//! only directories that changed. `scan.rs` lists and stats the tree; this
//! file decides, reads and writes objects.
//!
//! Nothing is followed: entries are classified by `lstat`, a symlink is
//! recorded as a symlink (mode 120000, its target as the blob) and its
//! target is never read. A `.git` entry (any case, at any depth) is
//! skipped: git metadata is kept outside the workspace, so a `.git` there
//! was written by a guest and is not part of the workspace's state (git
//! could not record it in a tree anyway). Empty directories are not
//! recorded, and neither are sockets, FIFOs or devices.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cap_std::fs::{Dir, MetadataExt};
use git2::{ObjectType, Odb, Oid};

use super::cache::{now_ns, CachedDir, CachedFile, FileStat, StatCache, MODE_LINK, MODE_TREE};
use super::changes::ChangeTracker;
use super::relpath::ancestors;
use super::scan::{self, Entry, Kind, Plan, Scan};
use super::{display_path, Quota, SnapshotStats, WorkspaceError};

/// Files larger than this are streamed into the object store instead of
/// being read into memory whole.
const STREAM_THRESHOLD: u64 = 8 << 20;

/// One entry of a tree being built.
struct TreeItem {
    name: Vec<u8>,
    mode: u32,
    oid: Oid,
}

/// The result of a snapshot.
pub(crate) struct Snapshot {
    pub tree: Oid,
    pub stats: SnapshotStats,
    /// Whether the cache changed (worth saving).
    pub changed: bool,
    /// Watches the scan added (see [`Scan::watched`]).
    pub watched: Vec<(i32, Vec<u8>)>,
    /// Whether a listed directory could not be watched.
    pub unwatched: bool,
    /// Listed directories holding a file with more than one link.
    pub linked: HashSet<Vec<u8>>,
}

/// Why a snapshot of part of the tree could not stand.
enum Partial {
    /// The workspace could not be read, or is over its quota.
    Failed(WorkspaceError),
    /// A file gained a second link since the last snapshot, where the
    /// change tracker cannot see writes through its other name: list the
    /// whole tree.
    NewlyLinked,
}

impl From<WorkspaceError> for Partial {
    fn from(error: WorkspaceError) -> Self {
        Partial::Failed(error)
    }
}

/// What a snapshot reads and writes, besides the stat cache: the directory
/// `root` (shown in errors as `root_path`), the object store, the quota it
/// holds the directory to, and the tracker that watches each directory it
/// lists.
pub(crate) struct Source<'a, 'r> {
    pub odb: &'a Odb<'r>,
    pub root: &'a Dir,
    pub root_path: &'a Path,
    pub quota: Option<Quota>,
    pub tracker: Option<&'a ChangeTracker>,
}

/// Snapshot `source`'s directory, trusting the entries of `cache` whose
/// stat is unchanged and updating it in place, listing what `plan` says
/// (or everything, if a file gained a link). If this fails, `cache` must
/// be discarded: it may be half updated.
pub(crate) fn snapshot(
    source: &Source<'_, '_>,
    cache: &mut StatCache,
    plan: &Plan,
) -> Result<Snapshot, WorkspaceError> {
    match snapshot_as(source, cache, plan) {
        Ok(snapshot) => Ok(snapshot),
        Err(Partial::Failed(error)) => Err(error),
        // What the partial walk put in the cache is true of the files: a
        // full walk over it is as right as over a fresh one.
        Err(Partial::NewlyLinked) => snapshot_as(source, cache, &Plan::Everything).map_err(|partial| match partial {
            Partial::Failed(error) => error,
            Partial::NewlyLinked => unreachable!("a full listing never checks for new links"),
        }),
    }
}

fn snapshot_as(source: &Source<'_, '_>, cache: &mut StatCache, plan: &Plan) -> Result<Snapshot, Partial> {
    let Source {
        odb,
        root,
        root_path,
        quota,
        tracker,
    } = *source;
    // An empty cache knows nothing of the tree's size: assume it large.
    let known = cache.files.len() + cache.dirs.len();
    let expected = match plan {
        Plan::Everything if known == 0 => usize::MAX,
        Plan::Everything => known,
        Plan::Changed { .. } => 0,
    };
    let Scan {
        dirs,
        paths,
        watched,
        unwatched,
    } = scan::scan(root, root_path, quota, expected, plan, cache, tracker)?;
    cache.generation = cache.generation.wrapping_add(1);
    let mut walk = Walk {
        odb,
        root,
        root_path,
        cache,
        dirs,
        paths,
        path: Vec::new(),
        stats: SnapshotStats::default(),
        changed: false,
        reused: HashSet::new(),
        linked: HashSet::new(),
    };
    let tree = match walk.dir(0)?.tree {
        Some((oid, _)) => oid,
        None => odb
            .write(ObjectType::Tree, &[])
            .map_err(|e| git_error(format!("writing the empty tree of {}", root_path.display()), e))?,
    };
    if let Plan::Changed { linked: before, .. } = plan {
        if !walk.linked.is_subset(before) {
            return Err(Partial::NewlyLinked);
        }
    }
    let Walk {
        stats,
        mut changed,
        reused,
        linked,
        paths,
        ..
    } = walk;
    // Drop what this walk did not see: deleted files and directories. A
    // path beneath a directory left unlisted was not seen either: it stays.
    let generation = cache.generation;
    let before = (cache.files.len(), cache.dirs.len());
    if reused.is_empty() {
        cache.files.retain(|_, f| f.seen == generation);
        cache.dirs.retain(|_, d| d.seen == generation);
    } else {
        let listed: HashSet<&[u8]> = paths.iter().map(Vec::as_slice).collect();
        let still_there = |path: &[u8]| beneath_unlisted(path, &listed, &reused);
        cache.files.retain(|path, f| f.seen == generation || still_there(path));
        cache.dirs.retain(|path, d| d.seen == generation || still_there(path));
    }
    changed |= before != (cache.files.len(), cache.dirs.len());
    if stats.files_hashed > 0 {
        // Racy entries were all re-hashed just now; judge them and the newly
        // hashed ones against the end of this walk.
        cache.mark_racy(now_ns());
    }
    Ok(Snapshot {
        tree,
        stats,
        changed,
        watched,
        unwatched,
        linked,
    })
}

/// Whether `path`, which this walk did not see, lies beneath a directory
/// it left unlisted (and is still there) rather than in a listed directory
/// that no longer holds it: the nearest ancestor that is either decides.
fn beneath_unlisted(path: &[u8], listed: &HashSet<&[u8]>, reused: &HashSet<Vec<u8>>) -> bool {
    for ancestor in ancestors(path) {
        if reused.contains(ancestor) {
            return true;
        }
        if listed.contains(ancestor) {
            return false;
        }
    }
    false
}

/// What a directory holds in all, and its tree.
struct Built {
    /// The tree and whether the cache had this very tree for the path;
    /// None when nothing in it is recorded.
    tree: Option<(Oid, bool)>,
    /// Directory entries in and beneath it.
    entries: u64,
    /// Apparent bytes of its files.
    bytes: u64,
}

struct Walk<'a, 'r> {
    odb: &'a Odb<'r>,
    root: &'a Dir,
    root_path: &'a Path,
    cache: &'a mut StatCache,
    /// The scan's listings, taken as each directory is built.
    dirs: Vec<Vec<Entry>>,
    paths: Vec<Vec<u8>>,
    /// Workspace-relative path of the entry being looked at ('/'-separated),
    /// reused so that a file the cache knows costs no allocation here.
    path: Vec<u8>,
    stats: SnapshotStats,
    changed: bool,
    /// Paths of directories left unlisted (trees reused from the cache).
    reused: HashSet<Vec<u8>>,
    /// Listed directories holding a file with more than one link.
    linked: HashSet<Vec<u8>>,
}

fn git_error(context: String, source: git2::Error) -> WorkspaceError {
    WorkspaceError::Git { context, source }
}

impl Walk<'_, '_> {
    /// An I/O error at the current path (built only when there is an error).
    fn io(&self, source: std::io::Error) -> WorkspaceError {
        WorkspaceError::Io {
            path: display_path(self.root_path, &self.path),
            source,
        }
    }

    fn shown(&self) -> String {
        display_path(self.root_path, &self.path).display().to_string()
    }

    /// Build the tree of scanned directory `index` (at `self.path`).
    fn dir(&mut self, index: usize) -> Result<Built, WorkspaceError> {
        let base = self.path.len();
        let mut items = Vec::new();
        let mut unchanged = true;
        let listing = std::mem::take(&mut self.dirs[index]);
        let (mut total_entries, mut total_bytes) = (listing.len() as u64, 0u64);
        // Opened only if a file here must be read.
        let mut handle: Option<Dir> = None;
        for Entry { name, kind } in listing {
            self.path.truncate(base);
            if base > 0 {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(&name);
            match kind {
                Kind::Skipped => self.stats.entries_skipped += 1,
                Kind::Dir(sub) => {
                    let built = self.dir(sub)?;
                    total_entries += built.entries;
                    total_bytes += built.bytes;
                    if let Some((oid, same)) = built.tree {
                        unchanged &= same;
                        items.push(TreeItem {
                            name,
                            mode: MODE_TREE,
                            oid,
                        });
                    }
                }
                Kind::Reused(cached) => {
                    total_entries += cached.subtree_entries;
                    total_bytes += cached.subtree_bytes;
                    if let Some(old) = self.cache.dirs.get_mut(self.path.as_slice()) {
                        old.seen = self.cache.generation;
                    }
                    self.reused.insert(self.path.clone());
                    self.stats.trees_reused += 1;
                    items.push(TreeItem {
                        name,
                        mode: MODE_TREE,
                        oid: cached.oid,
                    });
                }
                Kind::File { stat, mode, links } => {
                    if links > 1 {
                        self.linked.insert(self.path[..base].to_vec());
                    }
                    total_bytes += stat.size;
                    let (oid, same) = self.file(index, &mut handle, &name, stat, mode)?;
                    unchanged &= same;
                    items.push(TreeItem { name, mode, oid });
                }
            }
        }
        self.path.truncate(base);
        let mut built = Built {
            tree: None,
            entries: total_entries,
            bytes: total_bytes,
        };
        if items.is_empty() {
            return Ok(built);
        }
        let generation = self.cache.generation;
        let entries = items.len() as u32;
        if let Some(old) = self.cache.dirs.get_mut(self.path.as_slice()) {
            if unchanged && old.entries == entries {
                // Every entry is one the old tree had, and there are as
                // many: the very same tree.
                old.seen = generation;
                old.subtree_entries = total_entries;
                old.subtree_bytes = total_bytes;
                self.stats.trees_reused += 1;
                built.tree = Some((old.oid, true));
                return Ok(built);
            }
        }
        let bytes = tree_bytes(&mut items);
        let oid = Oid::hash_object(ObjectType::Tree, &bytes)
            .map_err(|e| git_error(format!("hashing the tree of {}", self.shown()), e))?;
        let entry = CachedDir {
            oid,
            entries,
            subtree_entries: total_entries,
            subtree_bytes: total_bytes,
            seen: generation,
        };
        let same = match self.cache.dirs.get_mut(self.path.as_slice()) {
            Some(old) => std::mem::replace(old, entry).oid == oid,
            None => {
                self.cache.dirs.insert(self.path.clone(), entry);
                false
            }
        };
        if !same {
            self.odb
                .write(ObjectType::Tree, &bytes)
                .map_err(|e| git_error(format!("writing the tree of {}", self.shown()), e))?;
            self.stats.trees_written += 1;
        }
        self.changed = true;
        built.tree = Some((oid, same));
        Ok(built)
    }

    /// Record the regular file or symlink at `self.path` (in scanned
    /// directory `index`, opened into `handle` if it must be read); returns
    /// its blob and whether blob and mode equal what the cache had.
    fn file(
        &mut self,
        index: usize,
        handle: &mut Option<Dir>,
        name: &[u8],
        stat: FileStat,
        mode: u32,
    ) -> Result<(Oid, bool), WorkspaceError> {
        let generation = self.cache.generation;
        let old = match self.cache.files.get_mut(self.path.as_slice()) {
            Some(old) if !old.racy && old.stat == stat && old.mode == mode => {
                old.seen = generation;
                self.stats.files_reused += 1;
                return Ok((old.oid, true));
            }
            Some(old) => Some(*old),
            None => None,
        };
        if index != 0 && handle.is_none() {
            let rel = OsStr::from_bytes(&self.paths[index]);
            *handle = Some(self.root.open_dir(rel).map_err(|e| self.io(e))?);
        }
        let dir = handle.as_ref().unwrap_or(self.root);
        let oid = if mode == MODE_LINK {
            let target = dir
                .read_link_contents(OsStr::from_bytes(name))
                .map_err(|e| self.io(e))?;
            self.odb
                .write(ObjectType::Blob, target.as_os_str().as_bytes())
                .map_err(|e| git_error(format!("writing the symlink {}", self.shown()), e))?
        } else {
            self.hash_file(dir, name, &stat)?
        };
        self.stats.files_hashed += 1;
        self.changed = true;
        let entry = CachedFile {
            stat,
            mode,
            oid,
            racy: false,
            seen: generation,
        };
        match self.cache.files.get_mut(self.path.as_slice()) {
            Some(slot) => *slot = entry,
            None => {
                self.cache.files.insert(self.path.clone(), entry);
            }
        }
        Ok((oid, old.is_some_and(|o| o.oid == oid && o.mode == mode)))
    }

    /// Write a regular file's content as a blob. The opened file must be
    /// the one that was stat'ed (same inode), so the content matches the
    /// recorded stat.
    fn hash_file(&self, dir: &Dir, name: &[u8], stat: &FileStat) -> Result<Oid, WorkspaceError> {
        let file = dir.open(OsStr::from_bytes(name)).map_err(|e| self.io(e))?;
        let opened = file.metadata().map_err(|e| self.io(e))?;
        if !opened.is_file() || opened.ino() != stat.ino {
            return Err(self.io(std::io::Error::other(
                "the file was replaced while the workspace was being read",
            )));
        }
        let size = opened.len();
        // Never more than the size that was listed (and held to the quota):
        // the guest is gone, but the file is still outside our control.
        let mut file = file.take(size);
        if size <= STREAM_THRESHOLD {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(|e| self.io(e))?;
            return self
                .odb
                .write(ObjectType::Blob, &bytes)
                .map_err(|e| git_error(format!("writing the blob of {}", self.shown()), e));
        }
        let context = || format!("streaming the blob of {}", self.shown());
        let mut writer = self
            .odb
            .writer(size as usize, ObjectType::Blob)
            .map_err(|e| git_error(context(), e))?;
        // Copied by hand so a failed read (the file) and a failed write (the
        // object store: a full disk, say) are told apart. git2 reports a
        // failed stream write as a bare "Write error" and libgit2 sets no
        // message for it: the system's error of the failed write is the
        // only cause there is, read before anything else can change it.
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut chunk).map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            if std::io::Write::write_all(&mut writer, &chunk[..n]).is_err() {
                let cause = std::io::Error::last_os_error();
                return Err(WorkspaceError::ObjectWrite {
                    path: display_path(self.root_path, &self.path),
                    source: cause,
                });
            }
        }
        writer.finalize().map_err(|e| git_error(context(), e))
    }
}

/// Serialise a tree object: entries in git's order (a directory sorts as if
/// its name ended in '/'), each `<octal mode> <name>\0<20-byte id>`.
fn tree_bytes(items: &mut [TreeItem]) -> Vec<u8> {
    fn key(item: &TreeItem) -> impl Iterator<Item = &u8> {
        let slash: &[u8] = if item.mode == MODE_TREE { b"/" } else { b"" };
        item.name.iter().chain(slash)
    }
    items.sort_by(|a, b| key(a).cmp(key(b)));
    let mut out = Vec::with_capacity(items.iter().map(|i| i.name.len() + 28).sum());
    for item in items.iter() {
        out.extend_from_slice(format!("{:o} ", item.mode).as_bytes());
        out.extend_from_slice(&item.name);
        out.push(0);
        out.extend_from_slice(item.oid.as_bytes());
    }
    out
}
