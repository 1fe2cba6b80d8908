//! Real HTTP and HTTPS servers on loopback for the outbound-HTTP scenarios:
//! a chat-completion endpoint that records what it was sent, a server that
//! accepts and never answers, a redirect and an oversized answer. HTTP/1.1
//! by hand over tokio (one request per connection, `Connection: close`):
//! the scenarios need exact control of what goes on the wire and when,
//! which a framework would hide. TLS through tokio-rustls with a test CA
//! made by rcgen, trusted by the host through `STEPD_HTTP_EXTRA_CA`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does with a connection.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answer like a chat completion endpoint: `{"choices": [{"message":
    /// {"content": <answer>}}]}`.
    Chat {
        /// The model's answer.
        answer: String,
    },
    /// Read the request and never answer the first `silent` connections;
    /// answer later ones as [`Behaviour::Chat`].
    SilentFirst {
        /// Connections left unanswered.
        silent: usize,
        /// The answer after them.
        answer: String,
    },
    /// `302 Found` to `location`.
    Redirect {
        /// Where to.
        location: String,
    },
    /// `200` with a body of this many bytes.
    Big {
        /// Body bytes.
        bytes: usize,
    },
    /// `200` with a body of `bytes` bytes sent one at a time, `every_ms`
    /// apart: a model streaming tokens slowly.
    Trickle {
        /// Body bytes.
        bytes: usize,
        /// Milliseconds between two bytes.
        every_ms: u64,
    },
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Received {
    /// The first header of this name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A running server; stops when the test's runtime does.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
}

impl TestServer {
    /// Serve plain HTTP on 127.0.0.1.
    pub async fn http(behaviour: Behaviour) -> Self {
        Self::start(behaviour, None).await
    }

    /// Serve HTTPS on 127.0.0.1 with a certificate from `ca` for
    /// `127.0.0.1` and `localhost`.
    pub async fn https(behaviour: Behaviour, ca: &TestCa) -> Self {
        Self::start(behaviour, Some(ca.server_config())).await
    }

    async fn start(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (rec, conns) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let (behaviour, rec, tls) = (behaviour.clone(), rec.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, n, &behaviour, &rec).await,
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, n, &behaviour, &rec).await;
                            }
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            received,
            connections,
        }
    }

    /// `http://127.0.0.1:<port>` (or `https://`).
    pub fn origin(&self, https: bool) -> String {
        format!("{}://{}", if https { "https" } else { "http" }, self.addr)
    }

    /// Every request read so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    connection: usize,
    behaviour: &Behaviour,
    received: &Mutex<Vec<Received>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    received.lock().unwrap_or_else(PoisonError::into_inner).push(request);
    let (status, headers, body): (&str, Vec<(&str, String)>, Vec<u8>) = match behaviour {
        Behaviour::Chat { answer } => (
            "200 OK",
            vec![("content-type", "application/json".into())],
            chat(answer),
        ),
        Behaviour::SilentFirst { silent, answer } => {
            if connection < *silent {
                // Hold the connection open, say nothing.
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                return;
            }
            (
                "200 OK",
                vec![("content-type", "application/json".into())],
                chat(answer),
            )
        }
        Behaviour::Redirect { location } => ("302 Found", vec![("location", location.clone())], Vec::new()),
        Behaviour::Big { bytes } => ("200 OK", Vec::new(), vec![b'y'; *bytes]),
        Behaviour::Trickle { bytes, every_ms } => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {bytes}\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            for _ in 0..*bytes {
                tokio::time::sleep(std::time::Duration::from_millis(*every_ms)).await;
                if stream.write_all(b"t").await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
            let _ = stream.shutdown().await;
            return;
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

fn chat(answer: &str) -> Vec<u8> {
    serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})
    .to_string()
    .into_bytes()
}

/// Read one request: the head up to the blank line, then `content-length`
/// bytes of body (chunked bodies are read until the terminating chunk).
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = buf[head_end..].to_vec();
    if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || body.len() > 256 << 20 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    }
    Some(Received {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(rest.len());
        out.extend_from_slice(&rest[start..end]);
        rest = &rest[(end + 2).min(rest.len())..];
    }
    out
}

/// A certificate authority for one test, its certificate written as PEM
/// for `STEPD_HTTP_EXTRA_CA`, and a server certificate it signed for
/// `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA certificate's PEM file.
    pub pem_file: PathBuf,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stepd test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let pem_file = dir.path().join("ca.pem");
        std::fs::write(&pem_file, ca_cert.pem()).expect("write the CA");
        TestCa {
            pem_file,
            server_chain: vec![server_cert.der().clone()],
            server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            _dir: dir,
        }
    }

    /// The CA file's path.
    pub fn pem(&self) -> &Path {
        &self.pem_file
    }

    /// The server side: the certificate for `127.0.0.1` and `localhost`.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .expect("server certificate");
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
