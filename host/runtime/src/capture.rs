//! Output capture: every byte a guest writes (WASI stdout/stderr or the
//! `emit` import) and every `progress` call becomes a timestamped chunk, and
//! stamps the attempt's activity clock that the idle deadline reads.
//!
//! Capture is bounded: past `limit_bytes` chunks are counted and dropped, so
//! a guest flooding its output costs the host a counter, not memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// `text` cut to at most `max_bytes` (on a character boundary, marked with
/// `…`): for guest-controlled text that goes into records — an event, a
/// database row — where a whole megabyte would cost every reader.
pub fn clip_text(text: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max_bytes {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

/// Where a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStreamKind {
    /// WASI stdout, or `emit(stdout, ..)`.
    Stdout,
    /// WASI stderr, or `emit(stderr, ..)`.
    Stderr,
    /// A `progress(msg)` liveness signal.
    Progress,
}

/// One piece of guest output, stamped with when it arrived.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutputChunk {
    /// Seconds since the attempt started.
    pub at_seconds: f64,
    /// Which stream it was written to.
    pub stream: OutputStreamKind,
    /// The text (invalid UTF-8 is replaced, never rejected).
    pub text: String,
}

/// All output kept from one attempt, and what was dropped past the limit.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CapturedOutput {
    /// Chunks in arrival order, up to the output limit.
    pub chunks: Vec<OutputChunk>,
    /// Bytes kept in `chunks`.
    pub kept_bytes: u64,
    /// Bytes the guest wrote past the limit (counted, not kept; an empty
    /// progress call dropped counts as one).
    pub dropped_bytes: u64,
    /// Bookkeeping charged against the limit: a fixed amount per chunk.
    #[serde(default)]
    pub overhead_bytes: u64,
}

impl CapturedOutput {
    /// True when the guest wrote more than the host kept.
    pub fn truncated(&self) -> bool {
        self.dropped_bytes > 0
    }

    /// The stdout and stderr text, concatenated in arrival order.
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .filter(|c| c.stream != OutputStreamKind::Progress)
            .map(|c| c.text.as_str())
            .collect()
    }
}

/// The time of the attempt's last sign of life, shared between the capture
/// (which stamps it) and the deadline checks (which read it).
#[derive(Debug)]
pub struct ActivityClock {
    started: Instant,
    last_nanos: AtomicU64,
}

impl ActivityClock {
    /// A clock whose last activity is `started`.
    pub fn new(started: Instant) -> Self {
        ActivityClock {
            started,
            last_nanos: AtomicU64::new(0),
        }
    }

    /// Record activity now.
    pub fn touch(&self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// When the attempt last showed a sign of life.
    pub fn last(&self) -> Instant {
        self.started + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed))
    }

    /// When the attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }
}

/// What one kept chunk is charged against the output limit besides its
/// bytes (its timestamp, stream and allocation).
pub const CHUNK_OVERHEAD: u64 = 64;

/// The bounded sink every output path of one attempt writes into.
#[derive(Debug)]
pub struct OutputCapture {
    activity: Arc<ActivityClock>,
    limit_bytes: u64,
    inner: Mutex<CapturedOutput>,
}

impl OutputCapture {
    /// A capture keeping at most `limit_bytes` bytes (text plus
    /// [`CHUNK_OVERHEAD`] per chunk), stamping `activity`.
    pub fn new(activity: Arc<ActivityClock>, limit_bytes: usize) -> Self {
        OutputCapture {
            activity,
            limit_bytes: u64::try_from(limit_bytes).unwrap_or(u64::MAX),
            inner: Mutex::new(CapturedOutput::default()),
        }
    }

    /// Record a chunk. Empty stdout/stderr chunks are ignored (they are not a
    /// sign of life); a progress call always counts.
    pub fn push(&self, stream: OutputStreamKind, bytes: &[u8]) {
        if bytes.is_empty() && stream != OutputStreamKind::Progress {
            return;
        }
        self.activity.touch();
        let at_seconds = self.activity.started().elapsed().as_secs_f64();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Every chunk costs its bytes plus a fixed overhead, so a guest
        // cannot grow host memory with a storm of tiny or empty chunks.
        let len = bytes.len() as u64;
        let used = inner.kept_bytes + inner.overhead_bytes + CHUNK_OVERHEAD;
        if used > self.limit_bytes || (used == self.limit_bytes && len > 0) {
            inner.dropped_bytes += len.max(1);
            return;
        }
        let room = self.limit_bytes - used;
        let kept = if len <= room {
            bytes
        } else {
            &bytes[..usize::try_from(room).unwrap_or(0)]
        };
        inner.dropped_bytes += len - kept.len() as u64;
        inner.kept_bytes += kept.len() as u64;
        inner.overhead_bytes += CHUNK_OVERHEAD;
        let text = String::from_utf8_lossy(kept).into_owned();
        inner.chunks.push(OutputChunk {
            at_seconds,
            stream,
            text,
        });
    }

    /// Everything captured so far.
    pub fn snapshot(&self) -> CapturedOutput {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// WASI stdout or stderr of one attempt, writing into its [`OutputCapture`].
#[derive(Debug, Clone)]
pub struct CaptureStream {
    capture: Arc<OutputCapture>,
    stream: OutputStreamKind,
}

impl CaptureStream {
    /// The `stream` side of `capture`.
    pub fn new(capture: Arc<OutputCapture>, stream: OutputStreamKind) -> Self {
        CaptureStream { capture, stream }
    }
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes complete at once: the capture is memory with a cap, so a guest is
/// never blocked on its own output.
const WRITE_PERMIT: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.push(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.capture.push(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_text_keeps_whole_characters_and_says_it_was_cut() {
        assert_eq!(clip_text("short", 10), "short");
        let clipped = clip_text("ééééé", 7);
        assert!(clipped.len() <= 7 && clipped.ends_with('…'), "{clipped}");
        assert_eq!(clipped, "éé…");
    }

    #[test]
    fn output_past_the_limit_is_counted_not_kept() {
        let activity = Arc::new(ActivityClock::new(Instant::now()));
        let capture = OutputCapture::new(activity, (2 * CHUNK_OVERHEAD + 10) as usize);
        capture.push(OutputStreamKind::Stdout, b"hello ");
        capture.push(OutputStreamKind::Stderr, b"world and more");
        capture.push(OutputStreamKind::Stdout, b"gone");
        capture.push(OutputStreamKind::Progress, b"");
        let out = capture.snapshot();
        assert_eq!(out.kept_bytes, 10);
        assert_eq!(out.overhead_bytes, 2 * CHUNK_OVERHEAD);
        assert_eq!(out.dropped_bytes, 10 + 4 + 1);
        assert_eq!(out.chunks.len(), 2, "nothing past the limit is kept, not even progress");
        assert!(out.truncated());
        assert_eq!(out.text(), "hello worl");
    }

    #[test]
    fn empty_chunks_are_not_activity_but_progress_is() {
        let started = Instant::now();
        let activity = Arc::new(ActivityClock::new(started));
        let capture = OutputCapture::new(activity.clone(), 100);
        std::thread::sleep(Duration::from_millis(5));
        capture.push(OutputStreamKind::Stdout, b"");
        assert_eq!(activity.last(), started);
        capture.push(OutputStreamKind::Progress, b"");
        assert!(activity.last() > started);
        assert_eq!(capture.snapshot().chunks.len(), 1);
    }
}
