//! Waking workers in other processes on the same host (the embedded
//! deployment: `serve --workers 0` and `stepd worker` processes sharing one
//! data directory and its SQLite file). Each process binds a Unix datagram
//! socket in `<data>/wake/`; announcing a job sends one byte to every
//! other socket there, and a process that receives one wakes one of its
//! workers as an in-process announcement would. A datagram is a hint like
//! any other: one that is lost costs at most a poll interval.
//!
//! Written here rather than taken from a crate: it is a directory listing
//! and a `send_to` per peer over tokio's `UnixDatagram`, and a file
//! watcher would wake every process on every write to the store instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixDatagram;
use tokio::sync::Notify;

/// This process's socket in the wake directory; removed on drop.
pub(crate) struct WakeSockets {
    dir: PathBuf,
    own: PathBuf,
    socket: Arc<UnixDatagram>,
    listening: tokio::task::JoinHandle<()>,
}

impl WakeSockets {
    /// Bind this process's socket in `dir` (created when missing) and wake
    /// `ready` once for every datagram it receives.
    pub(crate) fn bind(dir: &Path, ready: Arc<Notify>) -> std::io::Result<WakeSockets> {
        std::fs::create_dir_all(dir)?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let own = dir.join(format!("{}-{}.sock", std::process::id(), &tag[..8]));
        let socket = Arc::new(UnixDatagram::bind(&own)?);
        let receiver = socket.clone();
        let listening = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            while receiver.recv(&mut byte).await.is_ok() {
                ready.notify_one();
            }
        });
        Ok(WakeSockets {
            dir: dir.to_owned(),
            own,
            socket,
            listening,
        })
    }

    /// Tell every other process with a socket here that a job is ready. A
    /// socket nobody listens on any more (its process died) is removed.
    pub(crate) fn signal_others(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.own || path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            match self.socket.try_send_to(&[1], &path) {
                Ok(_) => {}
                // Its buffer is full: it has wake-ups enough pending.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => tracing::debug!(socket = %path.display(), error = %e, "wake-up not sent"),
            }
        }
    }
}

impl Drop for WakeSockets {
    fn drop(&mut self) {
        self.listening.abort();
        let _ = std::fs::remove_file(&self.own);
    }
}
