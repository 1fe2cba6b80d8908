//! The first half of a snapshot: list every directory of the workspace and
//! `lstat` every entry, on a few threads at once.
//!
//! On a large workspace a snapshot's cost is one `lstat` per file (the stat
//! cache spares the reads), and system calls are what a host core spends
//! its time on; spreading directories over the available cores divides that
//! wall time. The scan only observes: it records names and stat fields, and
//! the sequential second half (`snapshot.rs`) decides what to read.
//!
//! Everything goes through the workspace capability: a directory is opened
//! by its workspace-relative path beneath the root (cap-std refuses any
//! resolution that would leave it), and entries are classified by `lstat`,
//! so a symlink is reported as a symlink and never descended into.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::{Condvar, Mutex, PoisonError};

use cap_std::fs::Dir;

use super::cache::{git_mode, FileStat};
use super::relpath::is_dot_git;
use super::{display_path, Quota, WorkspaceError, MAX_DEPTH};

/// A tree of fewer entries than this is listed on one thread.
const SMALL_TREE: usize = 256;

/// Most threads a scan uses: past a few, the filesystem is the bottleneck.
const MAX_THREADS: usize = 4;

/// What an entry turned out to be.
pub(crate) enum Kind {
    /// A directory, scanned as `Scan::dirs[index]`.
    Dir(usize),
    /// A regular file or symlink (mode says which), with its stat fields.
    File { stat: FileStat, mode: u32 },
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
}

/// A directory waiting to be listed.
struct Job {
    index: usize,
    depth: usize,
}

/// Shared between the scanning threads.
struct State {
    queue: Vec<Job>,
    in_flight: usize,
    dirs: Vec<Option<Vec<Entry>>>,
    paths: Vec<Vec<u8>>,
    error: Option<WorkspaceError>,
    /// Entries and apparent bytes listed so far.
    entries: u64,
    bytes: u64,
}

/// What a scan stops at: the workspace's [`Quota`], or nothing.
#[derive(Clone, Copy)]
struct Bounds<'a> {
    quota: Option<Quota>,
    root_path: &'a Path,
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
/// more than they save.
pub(crate) fn scan(
    root: &Dir,
    root_path: &Path,
    quota: Option<Quota>,
    expected_entries: usize,
) -> Result<Scan, WorkspaceError> {
    let bounds = Bounds { quota, root_path };
    let state = Mutex::new(State {
        queue: vec![Job { index: 0, depth: 0 }],
        in_flight: 0,
        dirs: vec![None],
        paths: vec![Vec::new()],
        error: None,
        entries: 0,
        bytes: 0,
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
        let listed = list(root, bounds, &path);
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        let listed = listed.and_then(|entries| {
            st.entries = st.entries.saturating_add(entries.len() as u64);
            st.bytes = entries.iter().fold(st.bytes, |total, entry| match &entry.kind {
                Kind::File { stat, .. } => total.saturating_add(stat.size),
                _ => total,
            });
            bounds.check(st.entries, st.bytes).map(|()| entries)
        });
        match listed {
            Ok(mut entries) => {
                for entry in &mut entries {
                    if let Kind::Dir(index) = &mut entry.kind {
                        let mut sub = path.clone();
                        if !sub.is_empty() {
                            sub.push(b'/');
                        }
                        sub.extend_from_slice(&entry.name);
                        if job.depth + 1 > MAX_DEPTH {
                            st.error = Some(WorkspaceError::TooDeep {
                                path: display_path(root_path, &sub),
                                max: MAX_DEPTH,
                            });
                            break;
                        }
                        *index = st.dirs.len();
                        st.dirs.push(None);
                        st.paths.push(sub);
                        st.queue.push(Job {
                            index: *index,
                            depth: job.depth + 1,
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
            }
        } else {
            Kind::Skipped
        };
        entries.push(Entry { name, kind });
    }
    Ok(entries)
}
