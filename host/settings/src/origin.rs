//! An HTTP origin (`https://api.example.com`, `http://127.0.0.1:8089`): the
//! unit in which outbound HTTP is granted, in the host's ceiling
//! (`STEPD_GRANT_HTTP_ORIGINS`) and in a step's `capabilities.http`. Parsed
//! with the `url` crate, then held to scheme, host and port: a path, a
//! query, a fragment or credentials in an origin are refused, not ignored.

use std::fmt;
use std::net::IpAddr;

/// The longest repository URL taken (git hosts' URLs are far shorter).
pub const MAX_REPOSITORY_URL: usize = 2048;

/// `http` or `https`: the only schemes outbound HTTP speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HttpScheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl HttpScheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }
}

/// Scheme, host (lower case; an IPv6 address without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpOrigin {
    /// The scheme.
    pub scheme: HttpScheme,
    /// The host name or IP address.
    pub host: String,
    /// The port (the scheme's default when the origin names none).
    pub port: u16,
}

impl HttpOrigin {
    /// Parse `text` as an origin; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not an origin: {e}"))?;
        let scheme = match url.scheme() {
            "http" => HttpScheme::Http,
            "https" => HttpScheme::Https,
            other => return Err(format!("{text:?}: the scheme {other:?} is not http or https")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{text:?}: an origin carries no credentials (grant a secret instead)"
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: an origin is scheme, host and port only (limit paths with pathPrefixes)"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("{text:?}: no host")),
        };
        let port = url.port().unwrap_or(scheme.default_port());
        Ok(HttpOrigin { scheme, host, port })
    }

    /// The origin of a remote repository's URL (`https://host/owner/repo`),
    /// after checking the URL can name nothing but a repository: no
    /// credentials (they come from a declared secret), no query or
    /// fragment, a path.
    pub fn of_repository_url(text: &str) -> Result<Self, String> {
        Self::repository_url(text).map(|(origin, _)| origin)
    }

    /// [`HttpOrigin::of_repository_url`], with the URL in its normal form
    /// (the one to hand on: what was checked is what is fetched). A
    /// backslash or a control character is refused outright: URL parsers
    /// and HTTP clients disagree on them, and a URL read one way here and
    /// another way by git could name an origin nobody listed.
    pub fn repository_url(text: &str) -> Result<(Self, String), String> {
        if text.len() > MAX_REPOSITORY_URL {
            return Err(format!("a repository URL is at most {MAX_REPOSITORY_URL} bytes"));
        }
        if text.contains('\\') || text.chars().any(char::is_control) {
            return Err(format!(
                "{text:?}: a backslash or a control character has no place in a repository URL"
            ));
        }
        let url = url::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{text:?}: a repository URL carries no credentials (name a secret in repositoryTokenSecret)"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || url.path().len() < 2 {
            return Err(format!(
                "{text:?}: a repository URL is scheme, host, port and the repository's path only"
            ));
        }
        let mut origin = url.clone();
        origin.set_path("/");
        Ok((Self::parse(origin.as_str())?, url.as_str().to_owned()))
    }

    /// The host as an IP address, when the origin names one literally.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port` as a request's authority (an IPv6 host in brackets).
    pub fn authority(&self) -> String {
        match self.literal_ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// The canonical form: `scheme://host`, plus `:port` when it is not the
/// scheme's default.
impl fmt::Display for HttpOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.literal_ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.clone(),
        };
        write!(f, "{}://{host}", self.scheme.as_str())?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl serde::Serialize for HttpOrigin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HttpOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HttpOrigin::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_canonical_and_anything_beyond_scheme_host_port_is_refused() {
        let o = HttpOrigin::parse("HTTPS://API.Example.com:443").expect("valid");
        assert_eq!(o.to_string(), "https://api.example.com");
        assert_eq!(o.authority(), "api.example.com:443");
        let o = HttpOrigin::parse("http://127.0.0.1:8089").expect("valid");
        assert_eq!(
            (o.to_string().as_str(), o.literal_ip().is_some()),
            ("http://127.0.0.1:8089", true)
        );
        let o = HttpOrigin::parse("http://[::1]:9000/").expect("valid");
        assert_eq!(
            (o.to_string(), o.authority()),
            ("http://[::1]:9000".into(), "[::1]:9000".into())
        );
        for bad in [
            "ftp://example.com",
            "https://example.com/v1",
            "https://u:p@example.com",
            "https://example.com?x=1",
            "example.com",
        ] {
            assert!(HttpOrigin::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
