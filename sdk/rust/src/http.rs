//! A small blocking HTTP client over `wasi:http`, for steps granted
//! `capabilities.http`. The host decides what may be called: a request
//! outside the step's grant fails with [`HttpError::Denied`], as every
//! request does for a step granted nothing.

use std::fmt;

/// A response: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Body(format!("the response is not JSON: {e}")))
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused it: not granted (origin, method, path, count), or
    /// its name resolves to a private address.
    Denied(String),
    /// The URL cannot be sent.
    Url(String),
    /// It failed on the way (connection, TLS, a body over the grant's
    /// limit, the server).
    Transport(String),
    /// The body could not be read or parsed.
    Body(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "HTTP request denied: {m}"),
            HttpError::Url(m) => write!(f, "bad URL: {m}"),
            HttpError::Transport(m) => write!(f, "HTTP request failed: {m}"),
            HttpError::Body(m) => write!(f, "HTTP body: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A URL split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `true` for `https`.
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// `/path?query`.
    pub path_with_query: String,
}

/// Split `url` (`https://host[:port]/path?query`) for `wasi:http`.
pub fn split_url(url: &str) -> Result<Target, HttpError> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(HttpError::Url(format!("{url:?} is not an http:// or https:// URL")));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::Url(format!(
            "{url:?} names no host (or carries credentials)"
        )));
    }
    let mut path = rest[end..].split('#').next().unwrap_or_default().to_owned();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    Ok(Target {
        https,
        authority: authority.to_owned(),
        path_with_query: path,
    })
}

/// `GET url`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
    send("GET", url, headers, &[])
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Result<Response, HttpError> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send("POST", url, &all, body.to_string().as_bytes())
}

/// Send `method url` with `headers` and `body`; the whole response.
#[cfg(target_arch = "wasm32")]
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, HttpError> {
    wasi_send::send(method, &split_url(url)?, headers, body)
}

/// Outside a guest there is no `wasi:http`.
#[cfg(not(target_arch = "wasm32"))]
pub fn send(_method: &str, url: &str, _headers: &[(&str, &str)], _body: &[u8]) -> Result<Response, HttpError> {
    split_url(url)?;
    Err(HttpError::Transport("wasi:http exists only inside a step".into()))
}

#[cfg(target_arch = "wasm32")]
mod wasi_send {
    use super::{HttpError, Response, Target};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    use wasip2::io::streams::StreamError;

    fn code(e: ErrorCode) -> HttpError {
        match e {
            ErrorCode::HttpRequestDenied => HttpError::Denied("not granted to this step".into()),
            ErrorCode::DestinationIpProhibited => HttpError::Denied("the name resolves to a private address".into()),
            other => HttpError::Transport(format!("{other:?}")),
        }
    }

    fn method(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        }
    }

    pub(super) fn send(
        verb: &str,
        target: &Target,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let entries: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        let fields = Fields::from_list(&entries).map_err(|e| HttpError::Url(format!("headers: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let bad = |what: &str| HttpError::Url(format!("the {what} is not valid"));
        request.set_method(&method(verb)).map_err(|()| bad("method"))?;
        let scheme = if target.https { Scheme::Https } else { Scheme::Http };
        request.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
        request
            .set_authority(Some(&target.authority))
            .map_err(|()| bad("authority"))?;
        request
            .set_path_with_query(Some(&target.path_with_query))
            .map_err(|()| bad("path"))?;
        let outgoing = request
            .body()
            .map_err(|()| HttpError::Transport("no request body".into()))?;
        let pending = outgoing_handler::handle(request, None).map_err(code)?;
        {
            let stream = outgoing
                .write()
                .map_err(|()| HttpError::Transport("no request body stream".into()))?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::Transport(format!("writing the request body: {e:?}")))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(code)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(code(e)),
            Some(Err(())) | None => return Err(HttpError::Transport("no response".into())),
        };
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| HttpError::Body("the body was already taken".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| HttpError::Body("no body stream".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(bytes) => body.extend_from_slice(&bytes),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        // The host's text may carry a backtrace: its first line says it.
                        let text = e.to_debug_string();
                        let first = text.lines().next().unwrap_or_default().to_owned();
                        return Err(HttpError::Transport(format!("reading the response: {first}")));
                    }
                }
            }
        }
        Ok(Response { status, headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let t = split_url("https://api.example.com/v1/chat?x=1#frag").expect("valid");
        assert_eq!(
            (t.https, t.authority.as_str(), t.path_with_query.as_str()),
            (true, "api.example.com", "/v1/chat?x=1")
        );
        let t = split_url("http://127.0.0.1:8089").expect("valid");
        assert_eq!(
            (t.authority.as_str(), t.path_with_query.as_str()),
            ("127.0.0.1:8089", "/")
        );
        assert!(split_url("ftp://x").is_err());
        assert!(split_url("https://user:pw@x/").is_err());
    }
}
