//! The first half of a snapshot: list every directory of the workspace and
//! `lstat` every entry, on a few threads at once.
//!
//! On a large workspace a snapshot's cost is one `lstat` per file (the stat
//! cache spares the reads), and system calls are what a host core spends
//! its time on; spreading directories over the available cores divides that
//! wall time. The scan only observes: it records names and stat fields, and
//! the sequential second half (`snapshot.rs`) decides what to read.
//!
//! A scan with a [`Plan::Changed`] lists only the directories a change
//! tracker named (`changes.rs`), their ancestors, and everything beneath
//! a directory created since; every other directory keeps the tree the
//! stat cache has for it, unlisted, and counts toward the quota with the
//! totals that cache recorded for it.
//!
//! Everything goes through the workspace capability: a directory is opened
//! by its workspace-relative path beneath the root (cap-std refuses any
//! resolution that would leave it), and entries are classified by `lstat`,
//! so a symlink is reported as a symlink and never descended into.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::{Condvar, Mutex, PoisonError};

use std::collections::HashSet;

use cap_std::fs::{Dir, MetadataExt};

use super::cache::{git_mode, CachedDir, FileStat, StatCache};
use super::changes::ChangeTracker;
use super::relpath::{is_dot_git, join};
use super::{display_path, Quota, WorkspaceError, MAX_DEPTH};

/// A tree of fewer entries than this is listed on one thread.
const SMALL_TREE: usize = 256;

/// Most threads a scan uses: past a few, the filesystem is the bottleneck.
const MAX_THREADS: usize = 4;

/// What an entry turned out to be.
pub(crate) enum Kind {
    /// A directory, scanned as `Scan::dirs[index]`.
    Dir(usize),
    /// A directory left unlisted: nothing changed in it since the cache
    /// recorded its tree.
    Reused(CachedDir),
    /// A regular file or symlink (mode says which), with its stat fields
    /// and its number of hard links.
    File { stat: FileStat, mode: u32, links: u64 },
    /// Not recorded: `.git`, a socket, FIFO or device.
    Skipped,
}

/// One directory entry.
pub(crate) struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
}

/// Every directory of the workspace, listed. `dirs[0]` is the root;
/// `paths[i]` is the workspace-relative path of `dirs[i]`.
pub(crate) struct Scan {
    pub dirs: Vec<Vec<Entry>>,
    pub paths: Vec<Vec<u8>>,
    /// Watches added on the listed directories: descriptor and path.
    pub watched: Vec<(i32, Vec<u8>)>,
    /// Whether a listed directory could not be watched (the tracker no
    /// longer covers the tree).
    pub unwatched: bool,
}

/// Which directories a scan lists.
pub(crate) enum Plan {
    /// Every directory.
    Everything,
    /// Only what may have changed: the directories in `must_list` (changed
    /// ones and their ancestors) and `linked` (holding a hard-linked file),
    /// every directory in or beneath `fresh` (created since the last
    /// snapshot), and any directory the stat cache has no tree for. The
    /// rest are [`Kind::Reused`].
    Changed {
        must_list: HashSet<Vec<u8>>,
        fresh: HashSet<Vec<u8>>,
        linked: HashSet<Vec<u8>>,
    },
}

impl Plan {
    /// What to do with the subdirectory at `path` of a directory listed
    /// `whole` (beneath a fresh directory): `Ok(whole)` to list it, or the
    /// cached directory to reuse.
    fn decide(&self, cache: &StatCache, path: &[u8], whole: bool) -> Result<bool, CachedDir> {
        let Plan::Changed {
            must_list,
            fresh,
            linked,
        } = self
        else {
            return Ok(true);
        };
        if whole || fresh.contains(path) {
            return Ok(true);
        }
        if must_list.contains(path) || linked.contains(path) {
            return Ok(false);
        }
        match cache.dirs.get(path) {
            Some(cached) => Err(*cached),
            None => Ok(false),
        }
    }
}

/// A directory waiting to be listed.
struct Job {
    index: usize,
    depth: usize,
    /// Beneath a fresh directory: list everything under it.
    whole: bool,
}

/// Shared between the scanning threads.
struct State {
    queue: Vec<Job>,
    in_flight: usize,
    dirs: Vec<Option<Vec<Entry>>>,
    paths: Vec<Vec<u8>>,
    error: Option<WorkspaceError>,
    /// Entries and apparent bytes listed (or reused) so far.
    entries: u64,
    bytes: u64,
    watched: Vec<(i32, Vec<u8>)>,
    unwatched: bool,
}

/// What a scan stops at: the workspace's [`Quota`], or nothing.
#[derive(Clone, Copy)]
struct Bounds<'a> {
    quota: Option<Quota>,
    root_path: &'a Path,
    plan: &'a Plan,
    cache: &'a StatCache,
    tracker: Option<&'a ChangeTracker>,
}

impl Bounds<'_> {
    fn over(&self, what: &'static str, found: u64, limit: u64) -> WorkspaceError {
        WorkspaceError::OverQuota {
            path: self.root_path.to_owned(),
            what,
            found,
            limit,
        }
    }

    /// The quota error for these totals, if they are over it.
    fn check(&self, entries: u64, bytes: u64) -> Result<(), WorkspaceError> {
        let Some(quota) = self.quota else { return Ok(()) };
        if entries > quota.max_entries {
            return Err(self.over("entries", entries, quota.max_entries));
        }
        if bytes > quota.max_bytes {
            return Err(self.over("bytes (apparent size)", bytes, quota.max_bytes));
        }
        Ok(())
    }
}

/// List the whole tree under `root` (shown in errors as `root_path`),
/// stopping as soon as what was listed is over `quota`: a workspace of a
/// million files costs the host no more than the quota's worth of listing.
/// `expected_entries` is what the last snapshot saw: a tree that small is
/// listed on the calling thread alone, since starting helpers would cost
/// more than they save. `plan` says which directories to list (reusing
/// the trees `cache` has for the others); each one listed is first watched
/// by `tracker`, if there is one.
pub(crate) fn scan(
    root: &Dir,
    root_path: &Path,
    quota: Option<Quota>,
    expected_entries: usize,
    plan: &Plan,
    cache: &StatCache,
    tracker: Option<&ChangeTracker>,
) -> Result<Scan, WorkspaceError> {
    let bounds = Bounds {
        quota,
        root_path,
        plan,
        cache,
        tracker,
    };
    let state = Mutex::new(State {
        queue: vec![Job {
            index: 0,
            depth: 0,
            whole: matches!(plan, Plan::Everything),
        }],
        in_flight: 0,
        dirs: vec![None],
        paths: vec![Vec::new()],
        error: None,
        entries: 0,
        bytes: 0,
        watched: Vec::new(),
        unwatched: false,
    });
    let wake = Condvar::new();
    let threads = if expected_entries < SMALL_TREE {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.min(MAX_THREADS) {
            // A helper that cannot be started only makes the scan slower:
            // this thread works through the queue too.
            let _ = std::thread::Builder::new()
                .name("stepd-scan".into())
                .spawn_scoped(scope, || work(root, bounds, &state, &wake));
        }
        work(root, bounds, &state, &wake);
    });
    let state = state.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(error) = state.error {
        return Err(error);
    }
    let dirs = state.dirs.into_iter().map(Option::unwrap_or_default).collect();
    Ok(Scan {
        dirs,
        paths: state.paths,
        watched: state.watched,
        unwatched: state.unwatched,
    })
}

/// One scanning thread: take a directory, list it, queue its
/// subdirectories, until nothing is queued or in flight.
fn work(root: &Dir, bounds: Bounds<'_>, state: &Mutex<State>, wake: &Condvar) {
    let root_path = bounds.root_path;
    loop {
        let (job, path) = {
            let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if st.error.is_some() {
                    return;
                }
                if let Some(job) = st.queue.pop() {
                    st.in_flight += 1;
                    let path = st.paths[job.index].clone();
                    break (job, path);
                }
                if st.in_flight == 0 {
                    return;
                }
                st = wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // Watched before it is listed: a change after the listing is
        // reported, one before it is in the listing.
        let watch = bounds.tracker.map(|tracker| tracker.watch(&path));
        let listed = list(root, bounds, &path).map(|mut entries| {
            let mut totals = (entries.len() as u64, 0u64);
            for entry in &mut entries {
                match &entry.kind {
                    Kind::File { stat, .. } => totals.1 = totals.1.saturating_add(stat.size),
                    Kind::Dir(_) => {
                        if let Err(cached) = bounds.plan.decide(bounds.cache, &join(&path, &entry.name), job.whole) {
                            totals.0 = totals.0.saturating_add(cached.subtree_entries);
                            totals.1 = totals.1.saturating_add(cached.subtree_bytes);
                            entry.kind = Kind::Reused(cached);
                        }
                    }
                    _ => {}
                }
            }
            (entries, totals)
        });
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        match watch {
            Some(Ok(wd)) => st.watched.push((wd, path.clone())),
            Some(Err(_)) => st.unwatched = true,
            None => {}
        }
        let listed = listed.and_then(|(entries, (count, bytes))| {
            st.entries = st.entries.saturating_add(count);
            st.bytes = st.bytes.saturating_add(bytes);
            bounds.check(st.entries, st.bytes).map(|()| entries)
        });
        match listed {
            Ok(mut entries) => {
                for entry in &mut entries {
                    if let Kind::Dir(index) = &mut entry.kind {
                        let sub = join(&path, &entry.name);
                        if job.depth + 1 > MAX_DEPTH {
                            st.error = Some(WorkspaceError::TooDeep {
                                path: display_path(root_path, &sub),
                                max: MAX_DEPTH,
                            });
                            break;
                        }
                        let whole = job.whole || bounds.plan.decide(bounds.cache, &sub, false) == Ok(true);
                        *index = st.dirs.len();
                        st.dirs.push(None);
                        st.paths.push(sub);
                        st.queue.push(Job {
                            index: *index,
                            depth: job.depth + 1,
                            whole,
                        });
                    }
                }
                st.dirs[job.index] = Some(entries);
            }
            Err(error) => {
                st.error.get_or_insert(error);
            }
        }
        st.in_flight -= 1;
        wake.notify_all();
    }
}

/// List one directory (the root when `rel` is empty) and lstat its entries;
/// subdirectories come back as `Kind::Dir` with an index still to assign.
/// A directory with more entries than the whole quota allows is not listed
/// to its end.
fn list(root: &Dir, bounds: Bounds<'_>, rel: &[u8]) -> Result<Vec<Entry>, WorkspaceError> {
    let root_path = bounds.root_path;
    let max_entries = bounds.quota.map_or(u64::MAX, |q| q.max_entries);
    let io_at = |path: &[u8], source| WorkspaceError::Io {
        path: display_path(root_path, path),
        source,
    };
    let opened;
    let dir = if rel.is_empty() {
        root
    } else {
        opened = root.open_dir(OsStr::from_bytes(rel)).map_err(|e| io_at(rel, e))?;
        &opened
    };
    let mut entries = Vec::new();
    for entry in dir.entries().map_err(|e| io_at(rel, e))? {
        if entries.len() as u64 >= max_entries {
            return Err(bounds.over("entries", max_entries.saturating_add(1), max_entries));
        }
        let entry = entry.map_err(|e| io_at(rel, e))?;
        let name = entry.file_name().into_vec();
        if is_dot_git(&name) {
            entries.push(Entry {
                name,
                kind: Kind::Skipped,
            });
            continue;
        }
        let md = entry
            .metadata()
            .map_err(|e| io_at(&super::relpath::join(rel, &name), e))?;
        let file_type = md.file_type();
        let kind = if file_type.is_dir() {
            Kind::Dir(usize::MAX)
        } else if file_type.is_file() || file_type.is_symlink() {
            Kind::File {
                stat: FileStat::of(&md),
                mode: git_mode(&md),
                links: md.nlink(),
            }
        } else {
            Kind::Skipped
        };
        entries.push(Entry { name, kind });
    }
    Ok(entries)
}
