//! Reading a plugin file that a payload or a command names — any path a
//! user typed — without letting the path hurt the host. Only a regular
//! file is read: it is opened non-blocking, so a FIFO cannot hang the
//! reader, and checked on the open handle, so swapping the path after a
//! check changes nothing. At most [`MAX_PLUGIN_BYTES`] are read, so
//! `/dev/zero` or a huge file cannot exhaust memory. And [`wasm_kind`] says
//! whether the bytes are WebAssembly at all, so callers report a digest
//! only of a file that is one (a digest of `/etc/shadow` would help an
//! attacker guess it).
//!
//! [`plugin_digest`] remembers each file's digest by its identity, so an
//! unchanged file is not read again on every submit.
//!
//! Both the payload's resolution (`stepd-job`) and the runtime's plugin
//! loading (`stepd-runtime`, `stepd plugin check`) read plugins through
//! here; neither depends on the other.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// The largest plugin file read: far above any real component (a Python
/// step is about 20 MB), far below what would hurt the host.
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;

/// Why a plugin file could not be read. Names the path and the problem,
/// never anything derived from the file's content.
#[derive(Debug, thiserror::Error)]
pub enum PluginFileError {
    /// The path could not be opened.
    #[error("cannot read plugin {}: {source}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("plugin {} is a {kind}, not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is larger than [`MAX_PLUGIN_BYTES`].
    #[error("plugin {} is {size} bytes, over the {max}-byte limit", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size (as stated, or as read so far).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Reading failed midway.
    #[error("cannot read plugin {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A WebAssembly component (the binary's layer field is 1).
    Component,
    /// A core WebAssembly module.
    CoreModule,
}

/// The kind of WebAssembly `bytes` hold, or `None` when they are not
/// WebAssembly at all.
pub fn wasm_kind(bytes: &[u8]) -> Option<WasmKind> {
    let header = bytes.get(..8)?;
    if &header[..4] != b"\0asm" {
        return None;
    }
    // Bytes 4..8: a 16-bit version, then a 16-bit layer (0 core, 1 component).
    Some(if header[6..8] == [1, 0] {
        WasmKind::Component
    } else {
        WasmKind::CoreModule
    })
}

/// Read the plugin file at `path`: a regular file of at most
/// [`MAX_PLUGIN_BYTES`].
pub fn read_plugin_file(path: &Path) -> Result<Vec<u8>, PluginFileError> {
    let (file, meta) = open_plugin_file(path)?;
    read_opened(path, file, &meta)
}

/// Open `path` without blocking and check, on the open handle, that it is
/// a regular file within the size cap.
fn open_plugin_file(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), PluginFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| PluginFileError::Open {
            path: path.to_owned(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| PluginFileError::Open {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PluginFileError::NotAFile {
            path: path.to_owned(),
            kind: kind_of(&meta.file_type()),
        });
    }
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(PluginFileError::TooLarge {
            path: path.to_owned(),
            size: meta.len(),
            max: MAX_PLUGIN_BYTES,
        });
    }
    Ok((file, meta))
}

fn read_opened(path: &Path, file: std::fs::File, meta: &std::fs::Metadata) -> Result<Vec<u8>, PluginFileError> {
    // The stated size can change while reading: read one byte past the cap
    // at most, so a growing file is caught too.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_PLUGIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PluginFileError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(PluginFileError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            max: MAX_PLUGIN_BYTES,
        });
    }
    Ok(bytes)
}

/// A file as `stat` sees it: while every field is unchanged, so are its
/// bytes (a rewrite moves the change time, which nothing can set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    /// The identity `meta` gives, and whether it is settled: changed over
    /// a second ago, so a rewrite now would move its change time
    /// (timestamps are coarser than the clock). Only a settled identity
    /// may stand for the bytes.
    pub fn of(meta: &std::fs::Metadata) -> (FileIdentity, bool) {
        use std::os::unix::fs::MetadataExt;
        let ns = |sec: i64, nsec: i64| i128::from(sec) * 1_000_000_000 + i128::from(nsec);
        let identity = FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        (identity, identity.ctime_ns < now - 1_000_000_000)
    }
}

/// A WebAssembly file's kind and the sha256 (hex) of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDigest {
    /// Component or core module.
    pub kind: WasmKind,
    /// The sha256 of the whole file, hex.
    pub sha256: String,
}

/// Most paths whose digest is remembered; past it the memory starts over.
const MAX_KNOWN_DIGESTS: usize = 1024;

/// Digests by path, each with the identity of the file it was taken of.
type Known = HashMap<PathBuf, (FileIdentity, PluginDigest)>;
static KNOWN: Mutex<Option<Known>> = Mutex::new(None);

fn known_as(path: &Path, identity: FileIdentity) -> Option<PluginDigest> {
    let known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    match known.as_ref()?.get(path) {
        Some((seen, digest)) if *seen == identity => Some(digest.clone()),
        _ => None,
    }
}

/// The kind and digest of `bytes`, or `None` when they are not
/// WebAssembly (no digest of them is taken); remembered for `path` when
/// its `identity`, taken before the read, is settled.
fn digest_read(path: &Path, (identity, settled): (FileIdentity, bool), bytes: &[u8]) -> Option<PluginDigest> {
    let digest = PluginDigest {
        kind: wasm_kind(bytes)?,
        sha256: hex::encode(Sha256::digest(bytes)),
    };
    if settled {
        let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        let known = known.get_or_insert_with(HashMap::new);
        if known.len() >= MAX_KNOWN_DIGESTS {
            known.clear();
        }
        known.insert(path.to_owned(), (identity, digest.clone()));
    }
    Some(digest)
}

/// The kind and digest of the plugin file at `path`, or `None` when it is
/// not WebAssembly (no digest of it is taken). Checked as
/// [`read_plugin_file`] checks; read and hashed only when the file's
/// identity changed since it was last hashed in this process: every submit
/// names its plugin, and a Python or JavaScript step is 12–20 MB, tens of
/// milliseconds to read and hash, paid on every submit before this.
pub fn plugin_digest(path: &Path) -> Result<Option<PluginDigest>, PluginFileError> {
    let (file, meta) = open_plugin_file(path)?;
    let identity = FileIdentity::of(&meta);
    if let Some(digest) = known_as(path, identity.0) {
        return Ok(Some(digest));
    }
    let bytes = read_opened(path, file, &meta)?;
    Ok(digest_read(path, identity, &bytes))
}

/// The digest remembered for the file at `path`, if the file is still the
/// one it was taken of; nothing is read.
pub fn remembered_digest(path: &Path) -> Option<PluginDigest> {
    let (_, meta) = open_plugin_file(path).ok()?;
    known_as(path, FileIdentity::of(&meta).0)
}

/// [`read_plugin_file`], with the bytes' kind and digest, which are
/// remembered as [`plugin_digest`] remembers them.
pub fn read_plugin_digested(path: &Path) -> Result<(Vec<u8>, Option<PluginDigest>), PluginFileError> {
    let (file, meta) = open_plugin_file(path)?;
    let identity = FileIdentity::of(&meta);
    let bytes = read_opened(path, file, &meta)?;
    let digest = digest_read(path, identity, &bytes);
    Ok((bytes, digest))
}

fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking_or_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("pipe.wasm");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // Nobody writes to the FIFO: a blocking open would hang this test.
        let err = read_plugin_file(&fifo).expect_err("a FIFO");
        assert!(err.to_string().contains("is a FIFO, not a regular file"), "{err}");
        let err = read_plugin_file(Path::new("/dev/zero")).expect_err("a device");
        assert!(err.to_string().contains("is a character device"), "{err}");
        let err = read_plugin_file(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = read_plugin_file(&dir.path().join("missing.wasm")).expect_err("missing");
        assert!(err.to_string().starts_with("cannot read plugin"), "{err}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_from_its_stated_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.wasm");
        let file = std::fs::File::create(&big).expect("create");
        // Sparse: costs no disk, and nothing of it is read.
        file.set_len(MAX_PLUGIN_BYTES + 1).expect("set_len");
        let err = read_plugin_file(&big).expect_err("too large");
        assert!(err.to_string().contains("over the 268435456-byte limit"), "{err}");
    }

    #[test]
    fn a_digest_is_remembered_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("step.wasm");
        std::fs::write(&path, b"\0asm\x0d\0\x01\0first").expect("write");
        // Settled: changed over a second ago, so its digest is remembered.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let first = plugin_digest(&path).expect("read").expect("wasm");
        assert_eq!(first.kind, WasmKind::Component);
        assert_eq!(plugin_digest(&path).expect("again"), Some(first.clone()));
        // Rewritten in place at the same size: the change time moves, so
        // the remembered digest no longer stands for it.
        std::fs::write(&path, b"\0asm\x0d\0\x01\0secnd").expect("rewrite");
        let second = plugin_digest(&path).expect("read").expect("wasm");
        assert_ne!(second.sha256, first.sha256);
        assert_eq!(second.sha256, hex::encode(Sha256::digest(b"\0asm\x0d\0\x01\0secnd")));
        // Not WebAssembly: no digest at all.
        std::fs::write(&path, b"root:x:0:0").expect("rewrite");
        assert_eq!(plugin_digest(&path).expect("read"), None);
    }

    #[test]
    fn the_header_tells_components_from_core_modules_from_anything_else() {
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0rest"), Some(WasmKind::Component));
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), Some(WasmKind::CoreModule));
        assert_eq!(wasm_kind(b"root:$6$salt$hash:19000:0:99999:7:::"), None);
        assert_eq!(wasm_kind(b"\0asm"), None);
    }
}
