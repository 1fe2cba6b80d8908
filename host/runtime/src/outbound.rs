//! Outbound HTTP for one attempt (`wasi:http`, `capabilities.http`): the
//! policy every request passes, the sender that carries an allowed one, and
//! the log of what the guest asked for.
//!
//! Deny by default: an attempt without a grant gets `HttpRequestDenied` for
//! every request. With one, a request must name a granted origin (scheme,
//! host, port), a granted method and path prefix, and fit the request
//! count; its bodies are held to the grant's byte limits as they stream.
//!
//! wasmtime-wasi-http's own sender connects to whatever the name resolves
//! to, so a granted name that resolves to 127.0.0.1 or 169.254.169.254
//! would reach the host's private services. This sender resolves the name
//! itself, refuses the request unless every address is public (an origin
//! that names an address literally is exempt: the operator granted that
//! address), and connects to the checked address, with TLS verified against
//! the origin's name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use stepd_settings::{HttpOrigin, HttpScheme};

use super::capture::{clip_text, ActivityClock};

/// How long a connection (TCP and TLS) may take; the attempt's deadlines
/// stop anything slower sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most requests one attempt's log keeps (denied ones included); the rest
/// are counted in [`HttpLog::unlogged`].
pub const MAX_LOGGED_REQUESTS: usize = 1024;

/// Longest method, origin, path or reason a log entry keeps: the guest
/// writes them (a URI may be 64 KiB), and 1024 entries of that would be
/// the host's memory. Records keep less (`stepd-selfheal` shortens each
/// again after redacting it).
pub const MAX_LOGGED_TEXT: usize = 8192;

/// What one attempt may call, resolved by the host from the step's
/// `capabilities.http`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// Origins it may call.
    pub origins: Vec<HttpOrigin>,
    /// Methods it may use (upper case); empty: any.
    pub methods: Vec<String>,
    /// Path prefixes its paths must start with; empty: any.
    pub path_prefixes: Vec<String>,
    /// Requests per attempt, denied ones included.
    pub max_requests: u32,
    /// Bytes one request body may carry.
    pub max_request_bytes: u64,
    /// Bytes one response body may carry.
    pub max_response_bytes: u64,
}

/// One request the guest made, as its records show it: never a query
/// string, a header or a body.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpExchange {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The origin it named (`https://api.example.com`).
    pub origin: String,
    /// The path, without the query.
    pub path: String,
    /// The response status, once one arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Request body bytes sent.
    pub request_bytes: u64,
    /// Response body bytes received.
    pub response_bytes: u64,
    /// Milliseconds from the request to its last response byte (or to
    /// where it stopped).
    pub ms: f64,
    /// Why the policy refused it, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
    /// Why it failed on the way, when it did (connect, TLS, a body limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An attempt's requests, shared between the policy and the bodies that
/// stream after it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpLog {
    /// The requests, in order (at most [`MAX_LOGGED_REQUESTS`]).
    pub exchanges: Vec<HttpExchange>,
    /// Requests made beyond what the log keeps.
    pub unlogged: u64,
}

pub(crate) type SharedLog = Arc<Mutex<HttpLog>>;

fn with_entry(log: &SharedLog, index: Option<usize>, update: impl FnOnce(&mut HttpExchange)) {
    if let Some(index) = index {
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = log.exchanges.get_mut(index) {
            update(entry);
        }
    }
}

/// The `wasi:http` hooks of one attempt: the policy and the sender.
pub struct OutboundHttp {
    /// The grant and the TLS configuration its HTTPS origins use.
    grant: Option<(Arc<HttpGrant>, Arc<rustls::ClientConfig>)>,
    activity: Option<Arc<ActivityClock>>,
    log: SharedLog,
    requests: u32,
}

impl OutboundHttp {
    /// Hooks for an attempt granted `grant`, whose HTTPS uses its TLS
    /// configuration (`None`: every request is denied). Response bytes touch `activity` when it is given.
    pub fn new(grant: Option<(HttpGrant, Arc<rustls::ClientConfig>)>, activity: Option<Arc<ActivityClock>>) -> Self {
        OutboundHttp {
            grant: grant.map(|(grant, tls)| (Arc::new(grant), tls)),
            activity,
            log: SharedLog::default(),
            requests: 0,
        }
    }

    /// A handle on the log that outlives the hooks.
    pub(crate) fn shared_log(&self) -> SharedLog {
        self.log.clone()
    }

    fn record(&self, exchange: HttpExchange) -> Option<usize> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.exchanges.len() < MAX_LOGGED_REQUESTS {
            log.exchanges.push(exchange);
            Some(log.exchanges.len() - 1)
        } else {
            log.unlogged += 1;
            None
        }
    }

    /// The granted origin `request` goes to, or why it may not go.
    fn check(
        &mut self,
        request: &http::Request<WasiBody>,
        origin: Result<HttpOrigin, String>,
    ) -> Result<(Arc<HttpGrant>, Arc<rustls::ClientConfig>, HttpOrigin), String> {
        let Some((grant, tls)) = self.grant.clone() else {
            return Err("this step is granted no HTTP".into());
        };
        self.requests = self.requests.saturating_add(1);
        if self.requests > grant.max_requests {
            return Err(format!(
                "the step's limit of {} requests is used up",
                grant.max_requests
            ));
        }
        let origin = origin?;
        if !grant.origins.contains(&origin) {
            return Err(format!("{origin} is not a granted origin"));
        }
        let method = request.method().as_str();
        if !grant.methods.is_empty() && !grant.methods.iter().any(|m| m == method) {
            return Err(format!("{method} is not a granted method"));
        }
        let path = request.uri().path();
        if !grant.path_prefixes.is_empty() {
            if !path_is_plain(path) {
                return Err("the path holds a dot segment or an escaped dot or slash".into());
            }
            if !grant.path_prefixes.iter().any(|p| path.starts_with(p.as_str())) {
                return Err("the path is under no granted prefix".into());
            }
        }
        Ok((grant, tls, origin))
    }
}

/// A path a server cannot turn into another: no `.`/`..` segment and no
/// escaped dot, slash or backslash.
fn path_is_plain(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !path.split('/').any(|part| part == "." || part == "..")
        && !["%2e", "%2f", "%5c", "\\"].iter().any(|bad| lower.contains(bad))
}

/// The origin a request names, canonical.
fn request_origin(request: &http::Request<WasiBody>) -> Result<HttpOrigin, String> {
    let uri = request.uri();
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.is_empty() {
        return Err("the request names no host".into());
    }
    HttpOrigin::parse(&format!("{scheme}://{authority}"))
}

/// What drives a response's connection after the response arrived.
type IoFuture = Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>;

/// A response and its connection's driver, or why there is none.
type Exchanged = Result<(http::Response<WasiBody>, IoFuture), HttpError>;

type SendFuture = Box<dyn std::future::Future<Output = Exchanged> + Send>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let origin = request_origin(&request);
        let named = match &origin {
            Ok(origin) => origin.to_string(),
            Err(_) => request.uri().authority().map(|a| a.to_string()).unwrap_or_default(),
        };
        let mut exchange = HttpExchange {
            method: clip_text(request.method().as_str(), MAX_LOGGED_TEXT).into_owned(),
            origin: clip_text(&named, MAX_LOGGED_TEXT).into_owned(),
            path: clip_text(request.uri().path(), MAX_LOGGED_TEXT).into_owned(),
            ..HttpExchange::default()
        };
        match self.check(&request, origin) {
            Err(reason) => {
                let reason = clip_text(&reason, MAX_LOGGED_TEXT).into_owned();
                tracing::debug!(method = %exchange.method, origin = %exchange.origin, %reason, "HTTP request denied");
                exchange.denied = Some(reason);
                self.record(exchange);
                Box::new(async { Err(HttpError::HttpRequestDenied) })
            }
            Ok((grant, tls, origin)) => {
                let index = self.record(exchange);
                let trip = Trip {
                    grant,
                    origin,
                    tls,
                    activity: self.activity.clone(),
                    log: self.log.clone(),
                    index,
                    started: Instant::now(),
                };
                Box::new(trip.send(request))
            }
        }
    }
}

/// One allowed request on its way.
struct Trip {
    grant: Arc<HttpGrant>,
    origin: HttpOrigin,
    tls: Arc<rustls::ClientConfig>,
    activity: Option<Arc<ActivityClock>>,
    log: SharedLog,
    index: Option<usize>,
    started: Instant,
}

impl Trip {
    fn fail(&self, error: HttpError) -> HttpError {
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        let denied = matches!(error, HttpError::DestinationIpProhibited);
        with_entry(&self.log, self.index, |e| {
            e.ms = ms;
            if denied {
                e.denied = Some("the name resolves to a private address".into());
            } else if e.error.is_none() {
                // A body over its limit said so first; hyper's report of
                // the aborted exchange would only hide it.
                e.error = Some(error.to_string());
            }
        });
        error
    }

    async fn send(self, request: http::Request<WasiBody>) -> Exchanged {
        match self.exchange(request).await {
            Ok(done) => Ok(done),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// A connection to the checked address, over TLS for `https`.
    async fn connect(&self) -> Result<Box<dyn Stream>, HttpError> {
        let address = checked_address(&self.origin).await?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if self.origin.scheme == HttpScheme::Http {
            return Ok(Box::new(tcp));
        }
        // Verified against the origin's name (or its literal address).
        let name = match self.origin.literal_ip() {
            Some(ip) => rustls::pki_types::ServerName::from(ip),
            None => {
                rustls::pki_types::ServerName::try_from(self.origin.host.clone()).map_err(|_| HttpError::DnsError {
                    rcode: Some("invalid dns name".into()),
                    info_code: None,
                })?
            }
        };
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Tls)?;
        Ok(Box::new(tls))
    }

    /// `body` held to `limit` bytes, counted in this request's log entry.
    fn limited(&self, body: WasiBody, limit: u64, direction: Direction) -> WasiBody {
        LimitedBody {
            inner: body,
            limit,
            seen: 0,
            direction,
            log: self.log.clone(),
            index: self.index,
            started: self.started,
            // Response bytes are the guest's work arriving; its own
            // upload is not.
            activity: match direction {
                Direction::Response => self.activity.clone(),
                Direction::Request => None,
            },
        }
        .boxed_unsync()
    }

    async fn exchange(&self, mut request: http::Request<WasiBody>) -> Exchanged {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // On the wire the request line carries the path only.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<http::Uri>()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        *request.uri_mut() = path;
        let request = request.map(|body| self.limited(body, self.grant.max_request_bytes, Direction::Request));
        // Drive the connection while waiting for the response; a server
        // that answers and closes may finish the connection first, and the
        // response is then already there.
        let mut connection = Some(Box::pin(connection));
        let send = sender.send_request(request);
        tokio::pin!(send);
        let response = match connection.as_mut() {
            Some(running) => tokio::select! {
                response = &mut send => response?,
                ended = running => {
                    ended?;
                    connection = None;
                    send.await?
                }
            },
            None => send.await?,
        };
        let status = response.status().as_u16();
        with_entry(&self.log, self.index, |e| e.status = Some(status));
        let response = response.map(|body: Incoming| {
            self.limited(
                body.map_err(HttpError::from).boxed_unsync(),
                self.grant.max_response_bytes,
                Direction::Response,
            )
        });
        let io: IoFuture = Box::new(async move {
            match connection {
                Some(running) => running.await.map_err(HttpError::from),
                None => Ok(()),
            }
        });
        Ok((response, io))
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// The address to connect to for `origin`: its literal address, or the
/// first address its name resolves to when every one of them is public.
async fn checked_address(origin: &HttpOrigin) -> Result<SocketAddr, HttpError> {
    if let Some(ip) = origin.literal_ip() {
        return Ok(SocketAddr::new(ip, origin.port));
    }
    let resolved: Vec<SocketAddr> = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((origin.host.as_str(), origin.port)),
    )
    .await
    .map_err(|_| HttpError::DnsTimeout)?
    .map_err(|e| HttpError::DnsError {
        rcode: Some(e.to_string()),
        info_code: None,
    })?
    .collect();
    if resolved.iter().any(|a| !is_public(a.ip())) {
        return Err(HttpError::DestinationIpProhibited);
    }
    resolved.first().copied().ok_or(HttpError::DestinationNotFound)
}

/// True for an address on the public internet: not loopback, private,
/// link-local (cloud metadata lives there), shared, documentation,
/// multicast, reserved or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared (carrier-grade NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64: an IPv4 address in disguise
        || ip.to_ipv4().is_some()) // IPv4-compatible
}

#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

/// A body held to a byte limit as it streams, its bytes counted in the
/// log; a response body's bytes are activity for the idle deadline.
struct LimitedBody {
    inner: WasiBody,
    limit: u64,
    seen: u64,
    direction: Direction,
    log: SharedLog,
    index: Option<usize>,
    started: Instant,
    activity: Option<Arc<ActivityClock>>,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            if let Poll::Ready(Some(Err(error))) = &polled {
                let message = error.to_string();
                with_entry(&self.log, self.index, |e| e.error = Some(message));
            }
            return polled;
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.seen = self.seen.saturating_add(len);
        if let Some(activity) = &self.activity {
            activity.touch();
        }
        let (seen, limit, direction) = (self.seen, self.limit, self.direction);
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        with_entry(&self.log, self.index, |e| {
            e.ms = ms;
            match direction {
                Direction::Request => e.request_bytes = seen,
                Direction::Response => e.response_bytes = seen,
            }
            if seen > limit {
                e.error = Some(format!("the body passed the step's limit of {limit} bytes"));
            }
        });
        if seen > limit {
            return Poll::Ready(Some(Err(match direction {
                Direction::Request => HttpError::HttpRequestBodySize(Some(limit)),
                Direction::Response => HttpError::HttpResponseBodySize(Some(limit)),
            })));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TLS client configuration every attempt shares: the platform's root
/// certificates plus those in `extra_ca` (a PEM file).
pub fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A platform certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("STEPD_HTTP_EXTRA_CA {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("STEPD_HTTP_EXTRA_CA {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "STEPD_HTTP_EXTRA_CA {}: no certificate in the file",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("STEPD_HTTP_EXTRA_CA {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_disguised_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn paths_that_a_server_would_rewrite_are_not_plain() {
        for bad in [
            "/v1/../admin",
            "/v1/./x",
            "/v1/%2e%2e/admin",
            "/v1%2Fadmin",
            "/v1\\admin",
        ] {
            assert!(!path_is_plain(bad), "{bad}");
        }
        assert!(path_is_plain("/v1/chat/completions"));
    }
}
