//! A real smart-HTTP git server on loopback for the scenarios that clone
//! and fetch over HTTPS. It owns a directory of bare repositories, the
//! work trees their commits are made in, and a log of every request.
//!
//! Git's side of the wire is `git http-backend` (the machine's `git`), run
//! as a CGI once per request, so clients talk to the same code a real git
//! host runs. The HTTP around it is written by hand over tokio and
//! tokio-rustls (one request per connection, `Content-Length` and
//! `Connection: close`), like [`crate::http_server`]: the scenarios assert
//! on exactly what arrived — which requests, with which credentials, how
//! many of them fetched a pack — and a framework would hide that. TLS uses
//! a [`TestCa`] certificate for `127.0.0.1` and `localhost`; clients trust
//! it through the CA's PEM (`GIT_SSL_CAINFO` or `-c http.sslCAInfo=<pem>`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::git;
use crate::http_server::TestCa;

/// Request heads larger than this are refused: git's are a few hundred
/// bytes, and an unbounded head is an unbounded allocation.
const HEAD_LIMIT: u64 = 64 * 1024;
/// Request bodies larger than this are refused. Git's biggest POSTs here
/// are want/have lists, far below it.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// The realm of the `401` challenge.
const REALM: &str = "stepd-test";

/// One request as the server answered it, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRequest {
    /// The method (`GET`, `POST`).
    pub method: String,
    /// The path without the query (`/app.git/info/refs`).
    pub path: String,
    /// The query without the `?` (`service=git-upload-pack`), or empty.
    pub query: String,
    /// The `Git-Protocol` header (`version=2` from a current client).
    pub git_protocol: Option<String>,
    /// The body's `Content-Encoding` (git gzips mid-sized POSTs).
    pub content_encoding: Option<String>,
    /// Whether the body came with `Transfer-Encoding: chunked` (git's
    /// choice for POSTs bigger than `http.postBuffer`).
    pub chunked: bool,
    /// Whether an `Authorization` header was present at all.
    pub authorization: bool,
    /// Whether it was the one the server's token asks for (never without
    /// a token).
    pub authorized: bool,
    /// The status answered.
    pub status: u16,
    /// Whether this was an upload-pack POST answered with a packfile: a
    /// fetch, as opposed to a ref listing or a negotiation round.
    pub packfile: bool,
}

/// A running git server. Dropping it (or [`GitServer::stop`]) stops
/// accepting connections; requests already read are still answered.
pub struct GitServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Work trees the repositories' commits are made in, one per
    /// repository, outside the served root so they are never served.
    work: tempfile::TempDir,
    accept: tokio::task::JoinHandle<()>,
}

/// What the connection tasks share; it keeps the served root alive as
/// long as a CGI may still run in it.
struct Shared {
    root: tempfile::TempDir,
    /// The whole `Authorization` value a request must carry, if any.
    expected: Option<String>,
    log: Mutex<Vec<GitRequest>>,
}

impl GitServer {
    /// Serve HTTPS on 127.0.0.1 with a certificate from `ca`. With a
    /// `token`, every request must carry `Authorization: Basic
    /// base64("x-access-token:" + token)` — the form git hosts take an
    /// access token in — or it is answered `401` without reaching git.
    pub async fn start(ca: &TestCa, token: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            root: tempfile::tempdir().expect("repository root"),
            expected: token.as_deref().map(basic_authorization),
            log: Mutex::default(),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let state = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    // A client that does not trust the CA just goes away.
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve(stream, &state).await;
                    }
                });
            }
        });
        GitServer {
            addr,
            shared,
            work: tempfile::tempdir().expect("work trees"),
            accept,
        }
    }

    /// `https://127.0.0.1:<port>/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!("https://{}/{name}.git", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bare repository behind [`GitServer::url`], for a scenario that
    /// needs to shape it beyond [`GitServer::add_repo`].
    pub fn repo_dir(&self, name: &str) -> PathBuf {
        self.shared.root.path().join(format!("{name}.git"))
    }

    /// Create the bare repository `<name>.git` whose `branch` (also its
    /// HEAD, so a plain clone checks it out) holds one commit with
    /// `files` (path, text). Returns the commit id.
    pub fn add_repo(&self, name: &str, branch: &str, files: &[(&str, &str)]) -> String {
        let work = self.work.path().join(name);
        std::fs::create_dir_all(&work).expect("work tree");
        git(&work, &["init", "-q", "-b", branch]);
        let bare = self.repo_dir(name);
        let bare = bare.to_str().expect("temp paths are UTF-8");
        git(self.work.path(), &["init", "-q", "--bare", "-b", branch, bare]);
        commit_and_push(&work, bare, branch, files, "first")
    }

    /// Add a commit with `files` on top of `branch` of `<name>.git`
    /// (created from the current tip if it does not exist yet), so a
    /// scenario can move a branch between two fetches. Returns the new
    /// commit id.
    pub fn commit(&self, name: &str, branch: &str, files: &[(&str, &str)]) -> String {
        let work = self.work.path().join(name);
        assert!(work.is_dir(), "add_repo({name:?}) before commit");
        let exists = !git(&work, &["branch", "--list", branch]).trim().is_empty();
        if exists {
            git(&work, &["checkout", "-q", branch]);
        } else {
            git(&work, &["checkout", "-q", "-b", branch]);
        }
        let bare = self.repo_dir(name);
        let bare = bare.to_str().expect("temp paths are UTF-8");
        commit_and_push(&work, bare, branch, files, "update")
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<GitRequest> {
        self.shared.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Upload-pack POSTs answered with a packfile: how many times a client
    /// actually fetched, whatever it listed or negotiated besides.
    pub fn fetches(&self) -> usize {
        self.requests().iter().filter(|r| r.packfile).count()
    }

    /// Stop accepting connections.
    pub fn stop(self) {}
}

/// Commit `files` in `work` and push the commit to `branch` of `bare`.
fn commit_and_push(work: &Path, bare: &str, branch: &str, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().expect("a file has a parent")).expect("dirs");
        std::fs::write(file, text).expect("write a file");
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", message]);
    git(work, &["push", "-q", bare, &format!("HEAD:refs/heads/{branch}")]);
    git(work, &["rev-parse", "HEAD"]).trim().to_owned()
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The `Authorization` value that carries `token` the way git hosts take
/// access tokens: `Basic base64("x-access-token:" + token)`. A client
/// passes it as `-c http.extraHeader=Authorization: <this>`.
pub fn basic_authorization(token: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    format!("Basic {encoded}")
}

/// Why a request is not served: the connection is dropped (it broke or
/// ended) or answered with an error status.
enum Reject {
    Drop,
    Answer(u16),
}

/// A request's first line and headers.
struct Head {
    method: String,
    target: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An answer, from the CGI or from the server itself.
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn plain(status: u16, text: &str) -> Self {
        Response {
            status,
            reason: reason(status).to_owned(),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: text.as_bytes().to_vec(),
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, shared: &Shared) {
    let mut stream = BufReader::new(stream);
    let head = match read_head(&mut stream).await {
        Ok(head) => head,
        Err(Reject::Drop) => return,
        Err(Reject::Answer(status)) => {
            respond(&mut stream, &Response::plain(status, "bad request head\n")).await;
            return;
        }
    };
    let (path, query) = match head.target.split_once('?') {
        Some((path, query)) => (path.to_owned(), query.to_owned()),
        None => (head.target.clone(), String::new()),
    };
    let authorization = head.header("authorization");
    let mut record = GitRequest {
        method: head.method.clone(),
        path,
        query,
        git_protocol: head.header("git-protocol").map(str::to_owned),
        content_encoding: head.header("content-encoding").map(str::to_owned),
        chunked: is_chunked(&head),
        authorization: authorization.is_some(),
        authorized: shared.expected.is_some() && authorization == shared.expected.as_deref(),
        status: 0,
        packfile: false,
    };
    let expects_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        let sent = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        if sent.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
    // The body is read even when the answer will be 401: closing on a
    // client still sending would reset the connection and lose the answer.
    let response = match read_body(&mut stream, &head).await {
        Err(Reject::Drop) => return,
        Err(Reject::Answer(status)) => Response::plain(status, "bad request body\n"),
        Ok(_) if shared.expected.is_some() && !record.authorized => {
            let mut response = Response::plain(401, "authentication required\n");
            response
                .headers
                .push(("WWW-Authenticate".into(), format!("Basic realm=\"{REALM}\"")));
            response
        }
        Ok(_) if !record.path.starts_with('/') => Response::plain(400, "bad request target\n"),
        Ok(body) => {
            let cgi = Cgi {
                root: shared.root.path().to_owned(),
                method: record.method.clone(),
                path: record.path.clone(),
                query: record.query.clone(),
                content_type: head.header("content-type").map(str::to_owned),
                content_encoding: record.content_encoding.clone(),
                git_protocol: record.git_protocol.clone(),
                body,
            };
            match tokio::task::spawn_blocking(move || run_cgi(cgi)).await {
                Ok(Ok(output)) => parse_cgi(&output.stdout).unwrap_or_else(|| {
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    eprintln!("git http-backend gave no CGI answer: {stderr}");
                    Response::plain(502, &format!("git http-backend gave no CGI answer: {stderr}\n"))
                }),
                Ok(Err(e)) => Response::plain(500, &format!("running git http-backend: {e}\n")),
                Err(e) => Response::plain(500, &format!("git http-backend task: {e}\n")),
            }
        }
    };
    record.status = response.status;
    record.packfile = record.method == "POST"
        && record.path.ends_with("/git-upload-pack")
        && response.status == 200
        && returns_packfile(&response.body);
    // Logged before answering, so a client that got its answer finds it
    // in the log.
    shared.log.lock().unwrap_or_else(PoisonError::into_inner).push(record);
    respond(&mut stream, &response).await;
}

/// A protocol v2 fetch answers with a `packfile` section (the pkt-line
/// `000dpackfile\n`), which `ls-refs` never does; a v0 negotiation round
/// only carries a pack (`PACK`, version 2) in its last answer.
fn returns_packfile(body: &[u8]) -> bool {
    contains(body, b"000dpackfile\n") || contains(body, b"PACK\0\0\0\x02")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn is_chunked(head: &Head) -> bool {
    head.header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> Result<Head, Reject> {
    let mut limited = (&mut *stream).take(HEAD_LIMIT);
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        limited.read_until(b'\n', &mut line).await.map_err(|_| Reject::Drop)?;
        if !line.ends_with(b"\n") {
            // Either the head outgrew the limit or the client went away.
            return Err(if limited.limit() == 0 {
                Reject::Answer(431)
            } else {
                Reject::Drop
            });
        }
        let line = String::from_utf8(line).map_err(|_| Reject::Answer(400))?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if lines.is_empty() {
                continue; // Tolerated before the request line (RFC 9112 §2.2).
            }
            break;
        }
        lines.push(line.to_owned());
    }
    let mut first = lines[0].split_whitespace();
    let (Some(method), Some(target), Some(version), None) = (first.next(), first.next(), first.next(), first.next())
    else {
        return Err(Reject::Answer(400));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Reject::Answer(400));
    }
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Reject::Answer(400));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    })
}

async fn read_body<S: AsyncRead + Unpin>(stream: &mut BufReader<S>, head: &Head) -> Result<Vec<u8>, Reject> {
    if is_chunked(head) {
        return read_chunked(stream).await;
    }
    let Some(length) = head.header("content-length") else {
        return Ok(Vec::new());
    };
    let length: usize = length.parse().map_err(|_| Reject::Answer(400))?;
    if length > BODY_LIMIT {
        return Err(Reject::Answer(413));
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.map_err(|_| Reject::Drop)?;
    Ok(body)
}

/// A `Transfer-Encoding: chunked` body: sized chunks up to the empty one,
/// then trailers (ignored) up to a blank line.
async fn read_chunked<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> Result<Vec<u8>, Reject> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, 1024).await?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| Reject::Answer(400))?;
        if size == 0 {
            break;
        }
        if size > BODY_LIMIT - body.len() {
            return Err(Reject::Answer(413));
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..]).await.map_err(|_| Reject::Drop)?;
        if !read_line(stream, 2).await?.is_empty() {
            return Err(Reject::Answer(400));
        }
    }
    for _ in 0..64 {
        if read_line(stream, 8 * 1024).await?.is_empty() {
            return Ok(body);
        }
    }
    Err(Reject::Answer(431))
}

/// One line of at most `limit` bytes, without its line end.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut BufReader<S>, limit: u64) -> Result<String, Reject> {
    let mut limited = (&mut *stream).take(limit + 2);
    let mut line = Vec::new();
    limited.read_until(b'\n', &mut line).await.map_err(|_| Reject::Drop)?;
    if !line.ends_with(b"\n") {
        return Err(if limited.limit() == 0 {
            Reject::Answer(400)
        } else {
            Reject::Drop
        });
    }
    Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned())
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, response: &Response) {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, response.reason);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&response.body).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// What `git http-backend` is told about one request.
struct Cgi {
    root: PathBuf,
    method: String,
    path: String,
    query: String,
    content_type: Option<String>,
    content_encoding: Option<String>,
    git_protocol: Option<String>,
    body: Vec<u8>,
}

/// Run `git http-backend` for one request (blocking: called off the async
/// threads). The body is fed from its own thread while stdout is read, so
/// neither pipe can fill up and stall the other.
fn run_cgi(cgi: Cgi) -> std::io::Result<std::process::Output> {
    let mut command = Command::new("git");
    command.arg("http-backend");
    // Nothing of the test process's own CGI or git state leaks in.
    for variable in [
        "GIT_DIR",
        "GIT_PROTOCOL",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "HTTP_CONTENT_ENCODING",
        "REMOTE_USER",
    ] {
        command.env_remove(variable);
    }
    command
        .env("GIT_PROJECT_ROOT", &cgi.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &cgi.method)
        .env("PATH_INFO", &cgi.path)
        .env("QUERY_STRING", &cgi.query)
        .env("REMOTE_ADDR", "127.0.0.1");
    if let Some(value) = &cgi.content_type {
        command.env("CONTENT_TYPE", value);
    }
    // http-backend inflates a gzipped body itself.
    if let Some(value) = &cgi.content_encoding {
        command.env("HTTP_CONTENT_ENCODING", value);
    }
    // Without it http-backend speaks protocol v0 whatever the client asked.
    if let Some(value) = &cgi.git_protocol {
        command.env("GIT_PROTOCOL", value);
    }
    if cgi.method == "POST" || !cgi.body.is_empty() {
        command.env("CONTENT_LENGTH", cgi.body.len().to_string());
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    let body = cgi.body;
    let feeder = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A backend that stops reading early (an error) closes the pipe.
            let _ = stdin.write_all(&body);
        }
    });
    let output = child.wait_with_output();
    let _ = feeder.join();
    output
}

/// Split CGI output into headers (up to the first blank line, `\r\n` or
/// `\n` line ends) and body; a `Status` header sets the status. `None`
/// when there is no header block at all.
fn parse_cgi(stdout: &[u8]) -> Option<Response> {
    let crlf = stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|at| (at, 4));
    let lf = stdout.windows(2).position(|w| w == b"\n\n").map(|at| (at, 2));
    let (at, separator) = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let mut response = Response {
        status: 200,
        reason: "OK".into(),
        headers: Vec::new(),
        body: stdout[at + separator..].to_vec(),
    };
    for line in String::from_utf8_lossy(&stdout[..at]).lines() {
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("status") {
            let (code, text) = value.split_once(' ').unwrap_or((value, ""));
            response.status = code.parse().ok()?;
            response.reason = if text.is_empty() {
                reason(response.status).to_owned()
            } else {
                text.to_owned()
            };
        } else if !["content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|framing| name.eq_ignore_ascii_case(framing))
        {
            // Framing is the server's: it answers with the whole body.
            response.headers.push((name.to_owned(), value.to_owned()));
        }
    }
    Some(response)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests;
