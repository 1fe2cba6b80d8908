//! Change tracking for large workspaces: which directories changed since
//! the last snapshot, so the next one lists only those (and their
//! ancestors) and reuses the cached tree of every other directory.
//!
//! A snapshot of a large tree otherwise costs one `lstat` per file, however
//! little a step changed. The kernel already knows what changed: an inotify
//! watch on every directory reports each entry created, deleted, renamed,
//! written or re-stamped in it. Watches are added as a snapshot lists a
//! directory (before its entries are read, so nothing changed after the
//! listing goes unreported) and after a reset writes its directories.
//!
//! The tracker only ever makes a snapshot list *more*: whenever what it
//! saw is not enough to name every changed directory, it answers
//! [`Changes::Unknown`] and the snapshot lists the whole tree, as without
//! it. That is the case after the kernel's event queue overflowed, after a
//! directory was renamed (its watches would name the old path), and after
//! a watch could not be added (the user's watch limit, or more directories
//! than [`MAX_WATCHED_DIRS`]). A directory created during the attempt has
//! no watch yet: it is listed whole, with everything beneath it.
//!
//! Hard links are the one change a directory watch cannot see: a write
//! through one name reports only in that name's directory. The snapshot
//! therefore always lists a directory holding a file with more than one
//! link, and answers a newly linked file by listing the whole tree
//! (`snapshot.rs`).
//!
//! Trackers are kept for large trees only (`StatCache::is_large`): a small
//! tree is listed faster than its watches are set up, and inotify
//! instances are a per-user resource (128 by default) that a thousand
//! small jobs would exhaust.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::relpath::join;

/// Most directories one workspace watches: past this the tree is listed
/// whole at each snapshot. Watches come out of a per-user budget (the
/// kernel's `max_user_watches`) that every job on the host shares.
pub(crate) const MAX_WATCHED_DIRS: usize = 4096;

/// Most changed directories a snapshot takes from the tracker before it
/// lists the whole tree instead: past this, a full listing costs about the
/// same and the sets stay small.
const MAX_CHANGED_DIRS: usize = 1024;

/// What a directory watch reports: every change to an entry's name, content
/// or metadata, and the directory itself moving or going away.
fn watch_flags() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
        | WatchFlags::EXCL_UNLINK
}

/// What changed since the tracker was armed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Changes {
    /// The tracker cannot say: list the whole tree.
    Unknown(&'static str),
    /// Only these directories changed.
    Known {
        /// Workspace-relative paths of watched directories with an entry
        /// created, deleted, renamed, written or re-stamped.
        dirty: HashSet<Vec<u8>>,
        /// Directories created (or moved in) since: no watch covers them
        /// yet, so each is listed with everything beneath it.
        fresh: HashSet<Vec<u8>>,
    },
}

/// An inotify instance watching every directory of one workspace.
pub(crate) struct ChangeTracker {
    fd: OwnedFd,
    root: PathBuf,
    /// Watch descriptor → workspace-relative directory path.
    dirs: HashMap<i32, Vec<u8>>,
    /// Watches held, counting those added and not yet recorded in `dirs`
    /// (adding a watch a directory already has returns the same one).
    added: AtomicUsize,
}

impl std::fmt::Debug for ChangeTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeTracker")
            .field("root", &self.root)
            .field("watched_dirs", &self.dirs.len())
            .finish()
    }
}

impl ChangeTracker {
    /// A tracker for the workspace at `root`, watching nothing yet.
    pub fn new(root: &Path) -> io::Result<ChangeTracker> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(ChangeTracker {
            fd,
            root: root.to_owned(),
            dirs: HashMap::new(),
            added: AtomicUsize::new(0),
        })
    }

    /// Watch the directory at workspace-relative `rel`; returns its watch
    /// descriptor, to [`record`](Self::record) once the caller holds the
    /// tracker mutably. Safe to call from several threads at once. Fails
    /// past [`MAX_WATCHED_DIRS`], or when the kernel refuses the watch.
    pub fn watch(&self, rel: &[u8]) -> io::Result<i32> {
        if self.added.fetch_add(1, Ordering::Relaxed) >= MAX_WATCHED_DIRS {
            return Err(io::Error::other(format!(
                "more than {MAX_WATCHED_DIRS} directories to watch"
            )));
        }
        let path = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        };
        Ok(inotify::add_watch(&self.fd, path.as_path(), watch_flags())?)
    }

    /// Remember that watch `wd` is on directory `rel`.
    pub fn record(&mut self, wd: i32, rel: Vec<u8>) {
        if self.dirs.insert(wd, rel).is_some() {
            // A directory watched again: still one watch.
            self.added.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Watch `rel` and remember it.
    pub fn watch_and_record(&mut self, rel: &[u8]) -> io::Result<()> {
        let wd = self.watch(rel)?;
        self.record(wd, rel.to_vec());
        Ok(())
    }

    /// Everything reported since the last call, emptying the queue.
    /// `Unknown` leaves the tracker useless: drop it.
    pub fn take_changes(&mut self) -> Changes {
        let mut dirty = HashSet::new();
        let mut fresh = HashSet::new();
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 << 10];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return Changes::Unknown("the change queue could not be read"),
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                return Changes::Unknown("the change queue overflowed");
            }
            if flags.intersects(ReadFlags::UNMOUNT | ReadFlags::MOVE_SELF) {
                return Changes::Unknown("a watched directory was moved");
            }
            if flags.contains(ReadFlags::IGNORED) {
                // The directory is gone (its parent reported the deletion).
                if self.dirs.remove(&event.wd()).is_some() {
                    self.added.fetch_sub(1, Ordering::Relaxed);
                }
                continue;
            }
            let Some(dir) = self.dirs.get(&event.wd()) else {
                return Changes::Unknown("a change came from an unknown watch");
            };
            if let Some(name) = event.file_name() {
                let name = name.to_bytes();
                if flags.contains(ReadFlags::ISDIR) {
                    if flags.contains(ReadFlags::MOVED_FROM) {
                        return Changes::Unknown("a directory was renamed");
                    }
                    if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                        fresh.insert(join(dir, name));
                    }
                }
            }
            if !dirty.contains(dir.as_slice()) {
                dirty.insert(dir.clone());
            }
            if dirty.len() + fresh.len() > MAX_CHANGED_DIRS {
                return Changes::Unknown("too many directories changed");
            }
        }
        Changes::Known { dirty, fresh }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(root: &Path, dirs: &[&str]) -> ChangeTracker {
        let mut tracker = ChangeTracker::new(root).expect("inotify");
        for dir in dirs {
            tracker.watch_and_record(dir.as_bytes()).expect("watch");
        }
        tracker
    }

    fn set(paths: &[&str]) -> HashSet<Vec<u8>> {
        paths.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn writes_creations_and_deletions_name_their_directories() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path();
        for dir in ["a", "b", "c"] {
            std::fs::create_dir(root.join(dir)).expect("mkdir");
            std::fs::write(root.join(dir).join("f"), "x").expect("write");
        }
        let mut tracker = tracker(root, &["", "a", "b", "c"]);
        assert_eq!(
            tracker.take_changes(),
            Changes::Known {
                dirty: set(&[]),
                fresh: set(&[])
            }
        );
        std::fs::write(root.join("a/f"), "y").expect("rewrite");
        std::fs::remove_file(root.join("b/f")).expect("delete");
        std::fs::create_dir_all(root.join("c/new/deeper")).expect("mkdir");
        assert_eq!(
            tracker.take_changes(),
            Changes::Known {
                dirty: set(&["a", "b", "c"]),
                fresh: set(&["c/new"])
            }
        );
    }

    #[test]
    fn a_renamed_directory_or_an_overfull_queue_is_unknown() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path();
        std::fs::create_dir(root.join("a")).expect("mkdir");
        let mut moved = tracker(root, &["", "a"]);
        std::fs::rename(root.join("a"), root.join("b")).expect("rename");
        assert!(matches!(moved.take_changes(), Changes::Unknown(_)));

        let mut busy = tracker(root, &[""]);
        for i in 0..=MAX_CHANGED_DIRS {
            std::fs::create_dir(root.join(format!("d{i}"))).expect("mkdir");
        }
        assert_eq!(busy.take_changes(), Changes::Unknown("too many directories changed"));
    }

    #[test]
    fn watching_the_same_directories_at_every_snapshot_spends_no_budget() {
        let area = tempfile::tempdir().expect("tempdir");
        let mut tracker = tracker(area.path(), &[""]);
        for _ in 0..=MAX_WATCHED_DIRS {
            tracker.watch_and_record(b"").expect("the same watch again");
        }
        assert_eq!(tracker.added.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_deleted_directory_drops_its_watch() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path();
        std::fs::create_dir(root.join("a")).expect("mkdir");
        let mut tracker = tracker(root, &["", "a"]);
        std::fs::remove_dir(root.join("a")).expect("rmdir");
        assert_eq!(
            tracker.take_changes(),
            Changes::Known {
                dirty: set(&["", "a"]),
                fresh: set(&[])
            }
        );
        assert_eq!(tracker.dirs.len(), 1, "only the root is still watched");
        assert_eq!(tracker.added.load(Ordering::Relaxed), 1);
    }
}
