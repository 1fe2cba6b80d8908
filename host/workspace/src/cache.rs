//! The stat cache: what the last snapshot (or reset) learned about every
//! file in the workspace, so the next snapshot reads only what changed.
//!
//! Like git's index, an entry is trusted when the file's size, mtime, ctime
//! and inode are exactly what was recorded. A guest can set a file's mtime
//! through WASI but never its ctime, so a rewrite with the size and mtime
//! put back is still caught. The cache lives in the git directory (never in
//! the workspace, where a guest could forge it) in a small binary format,
//! and a cache that is missing, foreign or malformed is simply dropped: it
//! costs one full re-hash, never a wrong tree.
//!
//! "Racy" entries: file timestamps come from a coarse kernel clock, so a
//! file changed in the same clock tick as the snapshot that recorded it
//! could change again without its ctime moving. An entry whose ctime is
//! that close to the snapshot's end is marked racy and re-hashed next time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::fs::{Metadata, MetadataExt};
use git2::Oid;

use super::WorkspaceError;

/// How close to a snapshot's end a ctime must be for the entry to be racy.
/// Linux file timestamps lag the real clock by at most one tick (10 ms at
/// HZ=100); the rest is slack.
pub(crate) const RACY_MARGIN: Duration = Duration::from_millis(25);

/// File name of the cache inside the git directory.
const CACHE_FILE: &str = "stepd-stat-cache";
/// Format tag; bump it when the layout changes so old caches are dropped.
const MAGIC: &[u8; 8] = b"STEPDSC2";

/// Git file modes the snapshot records.
pub(crate) const MODE_FILE: u32 = 0o100644;
pub(crate) const MODE_EXEC: u32 = 0o100755;
pub(crate) const MODE_LINK: u32 = 0o120000;
pub(crate) const MODE_TREE: u32 = 0o040000;

/// The stat fields that decide whether a file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    pub ctime_sec: i64,
    pub ctime_nsec: i64,
    pub ino: u64,
}

impl FileStat {
    /// The fields of an lstat/fstat result.
    pub fn of(md: &Metadata) -> Self {
        FileStat {
            size: md.len(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            ctime_sec: md.ctime(),
            ctime_nsec: md.ctime_nsec(),
            ino: md.ino(),
        }
    }

    /// Whether the file could still change without its ctime moving, judged
    /// against `stamp` (nanoseconds since the epoch, taken after the stat).
    /// A ctime with no nanoseconds suggests a filesystem with one-second
    /// granularity, where the whole second is unsafe.
    pub fn is_racy(&self, stamp_ns: i128) -> bool {
        let granularity: i128 = if self.ctime_nsec == 0 { 1_000_000_000 } else { 0 };
        let ctime = i128::from(self.ctime_sec) * 1_000_000_000 + i128::from(self.ctime_nsec);
        ctime + granularity > stamp_ns - RACY_MARGIN.as_nanos() as i128
    }
}

/// The git mode a file with this (lstat) metadata is recorded with: only
/// the executable bit of a regular file matters, as in git.
pub(crate) fn git_mode(md: &Metadata) -> u32 {
    if md.file_type().is_symlink() {
        MODE_LINK
    } else if md.mode() & 0o111 != 0 {
        MODE_EXEC
    } else {
        MODE_FILE
    }
}

/// Now, in nanoseconds since the epoch (0 if the clock is before 1970).
pub(crate) fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// What is known about one file (or symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CachedFile {
    pub stat: FileStat,
    pub mode: u32,
    pub oid: Oid,
    pub racy: bool,
    /// The snapshot generation that last saw this path (not persisted).
    pub seen: u32,
}

/// What is known about one directory: its tree and how many entries that
/// tree has, so an unchanged directory reuses its tree without rebuilding;
/// and what the directory holds in all (as a scan counts it), so a scan
/// that leaves it unlisted still holds the workspace to its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CachedDir {
    pub oid: Oid,
    pub entries: u32,
    /// Directory entries in and beneath it, recorded or not.
    pub subtree_entries: u64,
    /// Apparent bytes of the files in and beneath it.
    pub subtree_bytes: u64,
    /// The snapshot generation that last saw this path (not persisted).
    pub seen: u32,
}

/// Identity of the workspace root directory (device, inode): a cache built
/// for another directory is never trusted.
pub(crate) type RootId = (u64, u64);

/// Paths are workspace-relative bytes with '/' separators; the root
/// directory is the empty path.
///
/// A snapshot updates the cache in place: it bumps `generation`, stamps
/// every path it sees, then drops what it did not see (deleted paths).
#[derive(Debug, Default)]
pub(crate) struct StatCache {
    pub files: HashMap<Vec<u8>, CachedFile>,
    pub dirs: HashMap<Vec<u8>, CachedDir>,
    pub generation: u32,
}

impl StatCache {
    /// Path of the cache file in `git_dir`.
    pub fn path(git_dir: &Path) -> PathBuf {
        git_dir.join(CACHE_FILE)
    }

    /// Mark every entry whose ctime is too close to `stamp_ns`.
    pub fn mark_racy(&mut self, stamp_ns: i128) {
        for entry in self.files.values_mut() {
            entry.racy = entry.stat.is_racy(stamp_ns);
        }
    }

    /// Whether re-reading every cached file would cost more than waiting
    /// out [`RACY_MARGIN`] (a reset waits then), or than writing the cache
    /// to disk (a snapshot saves it then, for a process that opens the
    /// workspace again): past about a thousand files or 16 MiB, which take
    /// this machine's class of disk some 25 ms to open and hash.
    pub fn is_large(&self) -> bool {
        const FILES: usize = 1024;
        const BYTES: u64 = 16 << 20;
        self.files.len() > FILES || self.files.values().map(|f| f.stat.size).sum::<u64>() > BYTES
    }

    /// The latest sub-second-precision ctime (ns since the epoch), if any:
    /// what a reset waits out so the files it wrote are trusted at once.
    pub fn latest_precise_ctime(&self) -> Option<i128> {
        self.files
            .values()
            .filter(|f| f.stat.ctime_nsec != 0)
            .map(|f| i128::from(f.stat.ctime_sec) * 1_000_000_000 + i128::from(f.stat.ctime_nsec))
            .max()
    }

    /// Load the cache for the root `root`; anything unusable yields an empty
    /// cache (it only costs re-hashing).
    pub fn load(git_dir: &Path, root: RootId) -> StatCache {
        let path = Self::path(git_dir);
        let Ok(bytes) = std::fs::read(&path) else {
            return StatCache::default();
        };
        match decode(&bytes, root) {
            Some(cache) => cache,
            None => {
                tracing::warn!(path = %path.display(), "stat cache unusable; the next snapshot re-hashes every file");
                StatCache::default()
            }
        }
    }

    /// Persist atomically (temp file, then rename) for a later `open`.
    pub fn save(&self, git_dir: &Path, root: RootId) -> Result<(), WorkspaceError> {
        let path = Self::path(git_dir);
        let tmp = git_dir.join(format!("{CACHE_FILE}.tmp"));
        let bytes = encode(self, root);
        std::fs::write(&tmp, bytes).map_err(|source| WorkspaceError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| WorkspaceError::Io { path, source })
    }

    /// Remove the persisted cache, so a crash halfway through a reset cannot
    /// leave a cache describing files that are gone.
    pub fn remove(git_dir: &Path) -> Result<(), WorkspaceError> {
        let path = Self::path(git_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(WorkspaceError::Io { path, source }),
        }
    }
}

fn encode(cache: &StatCache, root: RootId) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + cache.files.len() * 96 + cache.dirs.len() * 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&root.0.to_le_bytes());
    out.extend_from_slice(&root.1.to_le_bytes());
    out.extend_from_slice(&(cache.files.len() as u64).to_le_bytes());
    for (path, f) in &cache.files {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        for v in [f.stat.mtime_sec, f.stat.mtime_nsec, f.stat.ctime_sec, f.stat.ctime_nsec] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&f.stat.size.to_le_bytes());
        out.extend_from_slice(&f.stat.ino.to_le_bytes());
        out.extend_from_slice(&f.mode.to_le_bytes());
        out.push(u8::from(f.racy));
        out.extend_from_slice(f.oid.as_bytes());
    }
    out.extend_from_slice(&(cache.dirs.len() as u64).to_le_bytes());
    for (path, d) in &cache.dirs {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&d.entries.to_le_bytes());
        out.extend_from_slice(&d.subtree_entries.to_le_bytes());
        out.extend_from_slice(&d.subtree_bytes.to_le_bytes());
        out.extend_from_slice(d.oid.as_bytes());
    }
    out
}

/// A bounds-checked reader over the cache bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn oid(&mut self) -> Option<Oid> {
        Oid::from_bytes(self.take(20)?).ok()
    }
    fn path(&mut self) -> Option<Vec<u8>> {
        let len = self.u32()? as usize;
        Some(self.take(len)?.to_vec())
    }
}

fn decode(bytes: &[u8], root: RootId) -> Option<StatCache> {
    let mut r = Reader { bytes };
    if r.take(MAGIC.len())? != MAGIC || (r.u64()?, r.u64()?) != root {
        return None;
    }
    let mut cache = StatCache::default();
    let files = r.u64()?;
    // Every entry takes at least 81 bytes: refuse a count the file cannot hold.
    if files > (r.bytes.len() / 81) as u64 {
        return None;
    }
    cache.files.reserve(files as usize);
    for _ in 0..files {
        let path = r.path()?;
        let (mtime_sec, mtime_nsec, ctime_sec, ctime_nsec) = (r.i64()?, r.i64()?, r.i64()?, r.i64()?);
        let (size, ino) = (r.u64()?, r.u64()?);
        let mode = r.u32()?;
        let racy = r.take(1)?[0] != 0;
        let oid = r.oid()?;
        let stat = FileStat {
            size,
            mtime_sec,
            mtime_nsec,
            ctime_sec,
            ctime_nsec,
            ino,
        };
        cache.files.insert(
            path,
            CachedFile {
                stat,
                mode,
                oid,
                racy,
                seen: 0,
            },
        );
    }
    let dirs = r.u64()?;
    if dirs > (r.bytes.len() / 44) as u64 {
        return None;
    }
    for _ in 0..dirs {
        let path = r.path()?;
        let entries = r.u32()?;
        let (subtree_entries, subtree_bytes) = (r.u64()?, r.u64()?);
        let oid = r.oid()?;
        cache.dirs.insert(
            path,
            CachedDir {
                oid,
                entries,
                subtree_entries,
                subtree_bytes,
                seen: 0,
            },
        );
    }
    r.bytes.is_empty().then_some(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_rejects_foreign_roots() {
        let mut cache = StatCache::default();
        let oid = Oid::hash_object(git2::ObjectType::Blob, b"x").expect("hash");
        let stat = FileStat {
            size: 1,
            mtime_sec: 2,
            mtime_nsec: 3,
            ctime_sec: 4,
            ctime_nsec: 5,
            ino: 6,
        };
        cache.files.insert(
            b"a/b".to_vec(),
            CachedFile {
                stat,
                mode: MODE_EXEC,
                oid,
                racy: true,
                seen: 0,
            },
        );
        cache.dirs.insert(
            b"a".to_vec(),
            CachedDir {
                oid,
                entries: 1,
                subtree_entries: 2,
                subtree_bytes: 3,
                seen: 0,
            },
        );
        let bytes = encode(&cache, (7, 8));
        let back = decode(&bytes, (7, 8)).expect("decodes");
        assert_eq!(back.files, cache.files);
        assert_eq!(back.dirs, cache.dirs);
        assert!(decode(&bytes, (7, 9)).is_none(), "another root's cache is dropped");
        assert!(
            decode(&bytes[..bytes.len() - 1], (7, 8)).is_none(),
            "a torn cache is dropped"
        );
    }

    #[test]
    fn racy_entries_are_those_near_the_stamp() {
        let stat = |sec, nsec| FileStat {
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            ctime_sec: sec,
            ctime_nsec: nsec,
            ino: 0,
        };
        let stamp = 100 * 1_000_000_000i128;
        assert!(!stat(99, 500_000_000).is_racy(stamp));
        assert!(stat(99, 990_000_000).is_racy(stamp), "within the margin");
        assert!(
            stat(99, 0).is_racy(stamp),
            "second-granularity ctime covers its whole second"
        );
        assert!(!stat(98, 0).is_racy(stamp));
    }
}
