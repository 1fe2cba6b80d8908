//! Baselines from remote git repositories (`https://…`): fetched with the
//! `git` program into a cache per host, one bare repository per URL, so a
//! commit already fetched costs no network and a job that moves between
//! hosts or restarts replays its patches on the very commit it began on
//! (the caller pins it).
//!
//! Why the `git` program rather than libgit2: this build of libgit2 has no
//! HTTPS transport (no OpenSSL in the graph), and git's own client speaks
//! every protocol version and authentication scheme a git host asks for.
//! What reaches git is held tight:
//! - the URL and branch are checked first and come after `--`, so a name
//!   like `--upload-pack=…` is never an option;
//! - the environment is cleared: no user or system configuration, no
//!   credential helper, no prompt, only the https (or an explicitly
//!   allowed http) transport, and no redirects (they could lead to an
//!   origin the operator never listed);
//! - a token travels as an `http.extraHeader` in the child's environment
//!   (`GIT_CONFIG_*`), never in its arguments or the URL;
//! - each run has a deadline and its error output is cut to 16 KiB.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Where a host keeps fetched baselines, inside its work directory (a
/// job's directory there is named by its id, which never starts with '.').
pub const BASELINE_CACHE: &str = ".cache/git";

/// The most of git's error output kept for a message.
const MAX_STDERR: u64 = 16 << 10;

/// What a fetch needs besides the URL and branch.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The host's cache of fetched repositories (one bare repository per URL).
    pub cache_dir: PathBuf,
    /// How long one git run may take.
    pub timeout: Duration,
    /// Certificates to trust besides the system's (`STEPD_HTTP_EXTRA_CA`).
    pub extra_ca: Option<PathBuf>,
}

/// A baseline fetched into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBaseline {
    /// The cache's bare repository holding `commit`.
    pub cache_repo: PathBuf,
    /// The commit (40 hex digits).
    pub commit: String,
    /// True when the commit was in the cache already (no fetch ran).
    pub cached: bool,
}

/// Why a remote baseline could not be fetched; says whether trying again
/// later can help ([`RemoteError::is_transient`]).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL or branch can never be fetched (a payload error).
    #[error("baseline {url}: {reason}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered: no such repository or branch, or not for
    /// these credentials.
    #[error("baseline {url}: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// What git said, shortened.
        reason: String,
    },
    /// The server could not be reached, failed, or took too long.
    #[error("baseline {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The cache on this host could not be used.
    #[error("baseline cache {}: {source}", path.display())]
    Cache {
        /// The cache path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl RemoteError {
    /// True when the failure may pass (network, a server error, a
    /// timeout, the host's cache); false when the job names something that
    /// cannot be fetched.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Unreachable { .. } | RemoteError::Cache { .. })
    }
}

/// True when `repository` names a remote baseline (an `https://` or
/// `http://` URL) rather than a local path.
pub fn is_remote(repository: &str) -> bool {
    let lower = repository.get(..8).unwrap_or(repository).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// True for a branch name git would take as `refs/heads/<name>` and that
/// cannot be read as an option.
pub fn is_valid_branch(branch: &str) -> bool {
    !branch.starts_with('-') && git2::Reference::is_valid_name(&format!("refs/heads/{branch}"))
}

/// One lock per cache repository: two jobs of one process fetching the
/// same URL take turns (git's own ref locks would fail one of them).
fn cache_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<PathBuf, Arc<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    locks
        .get_or_insert_with(HashMap::new)
        .entry(path.to_owned())
        .or_default()
        .clone()
}

/// Make `commit` (or, with none pinned, the tip of `branch`) of `url`
/// available in the host's cache. A pinned commit already in the cache
/// costs no network at all.
pub fn fetch_remote(
    url: &str,
    branch: &str,
    pinned: Option<&str>,
    token: Option<&str>,
    options: &RemoteOptions,
) -> Result<FetchedBaseline, RemoteError> {
    let invalid = |reason: &str| RemoteError::Invalid {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if !is_remote(url) || url.contains(char::is_whitespace) {
        return Err(invalid("is not an https:// URL"));
    }
    // Checked at submit; checked again here for a job stored by an older
    // version: nothing a parser could read two ways, no credentials.
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    if url.contains(['\\', '?', '#']) || url.chars().any(char::is_control) || authority.contains('@') {
        return Err(invalid(
            "a repository URL is scheme, host, port and path only (no credentials, query, fragment or backslash)",
        ));
    }
    if !is_valid_branch(branch) {
        return Err(invalid(&format!("{branch:?} is not a valid branch name")));
    }
    if let Some(commit) = pinned {
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(&format!("pinned commit {commit:?} is not a commit id")));
        }
    }
    let cache_repo = options
        .cache_dir
        .join(format!("{}.git", &hex::encode(Sha256::digest(url.as_bytes()))[..32]));
    let lock = cache_lock(&cache_repo);
    let _turn = lock.lock().unwrap_or_else(PoisonError::into_inner);
    let git = Git::new(url, token, options)?;
    if !cache_repo.join("HEAD").is_file() {
        git.run(&["init", "--bare", "--quiet", path_arg(&cache_repo)?], false)
            .map_err(|e| RemoteError::Cache {
                path: cache_repo.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
    }
    let in_cache = |commit: &str| {
        git.run(
            &[
                "-C",
                path_arg(&cache_repo)?,
                "cat-file",
                "-e",
                &format!("{commit}^{{commit}}"),
            ],
            false,
        )
        .map(|_| true)
        .or_else(|e| if e.is_transient() { Err(e) } else { Ok(false) })
    };
    let cache = path_arg(&cache_repo)?;
    let commit = match pinned {
        Some(commit) if in_cache(commit)? => {
            return Ok(FetchedBaseline {
                cache_repo,
                commit: commit.to_ascii_lowercase(),
                cached: true,
            })
        }
        Some(commit) => commit.to_ascii_lowercase(),
        None => {
            let refname = format!("refs/heads/{branch}");
            let listed = git.run(&["-C", cache, "ls-remote", "--", url, &refname], true)?;
            listed
                .lines()
                .find_map(|line| {
                    let (id, name) = line.split_once('\t')?;
                    (name == refname).then(|| id.to_owned())
                })
                .ok_or_else(|| RemoteError::Refused {
                    url: url.to_owned(),
                    reason: format!("branch {branch:?} not found"),
                })?
        }
    };
    if in_cache(&commit)? {
        return Ok(FetchedBaseline {
            cache_repo,
            commit,
            cached: true,
        });
    }
    // By commit id: the tip may have moved since it was listed, and a
    // pinned commit must be the one fetched.
    git.run(
        &[
            "-C",
            cache,
            "fetch",
            "--no-tags",
            "--depth",
            "1",
            "--quiet",
            "--",
            url,
            &commit,
        ],
        true,
    )?;
    if !in_cache(&commit)? {
        return Err(RemoteError::Refused {
            url: url.to_owned(),
            reason: format!("the server did not send commit {commit}"),
        });
    }
    Ok(FetchedBaseline {
        cache_repo,
        commit,
        cached: false,
    })
}

fn path_arg(path: &Path) -> Result<&str, RemoteError> {
    path.to_str().ok_or_else(|| RemoteError::Cache {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"),
    })
}

/// How git runs for one URL.
struct Git<'a> {
    url: &'a str,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl<'a> Git<'a> {
    fn new(url: &'a str, token: Option<&str>, options: &RemoteOptions) -> Result<Self, RemoteError> {
        let cache_error = |path: &Path| {
            let path = path.to_owned();
            move |source| RemoteError::Cache { path, source }
        };
        let home = options.cache_dir.join("home");
        std::fs::create_dir_all(&home).map_err(cache_error(&home))?;
        let mut config: Vec<(&str, String)> = vec![
            ("credential.helper", String::new()),
            ("core.askPass", String::new()),
            ("protocol.allow", "never".into()),
            ("protocol.https.allow", "always".into()),
            // An `http://` URL was allowed by the operator, by its origin;
            // for any other, plain http stays off.
            (
                "protocol.http.allow",
                if url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")) {
                    "always".into()
                } else {
                    "never".into()
                },
            ),
            ("protocol.file.allow", "never".into()),
            // A redirect could lead to an origin the operator never listed.
            ("http.followRedirects", "false".into()),
            // A stalled transfer fails instead of holding the deadline.
            ("http.lowSpeedLimit", "1".into()),
            ("http.lowSpeedTime", "30".into()),
        ];
        if let Some(token) = token {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            config.push(("http.extraHeader", format!("Authorization: Basic {basic}")));
        }
        if let Some(extra) = &options.extra_ca {
            config.push(("http.sslCAInfo", ca_bundle(&options.cache_dir, extra)?));
        }
        // A host behind a proxy reaches its git host through it.
        let proxies = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.to_owned(), value)));
        let mut env: Vec<(String, String)> = proxies.collect();
        env.extend([
            (
                "PATH".to_owned(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            ),
            ("HOME".to_owned(), home.display().to_string()),
            ("LANG".to_owned(), "C".into()),
            ("LC_ALL".to_owned(), "C".into()),
            ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".into()),
            ("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".into()),
            ("GIT_TERMINAL_PROMPT".to_owned(), "0".into()),
            ("GIT_CONFIG_COUNT".to_owned(), config.len().to_string()),
        ]);
        for (i, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), key.to_owned()));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
        }
        Ok(Git {
            url,
            env,
            timeout: options.timeout,
        })
    }

    /// Run git with `args`; its standard output. `network` marks a run
    /// that talks to the server, whose failures are classified; any other
    /// failure is the cache's.
    fn run(&self, args: &[&str], network: bool) -> Result<String, RemoteError> {
        let mut child = Command::new("git")
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RemoteError::Cache {
                path: PathBuf::from("git"),
                source,
            })?;
        let stdout = child.stdout.take().map(|out| read_capped(out, 1 << 20));
        let stderr = child.stderr.take().map(|err| read_capped(err, MAX_STDERR));
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RemoteError::Unreachable {
                        url: self.url.to_owned(),
                        reason: format!("git {} took longer than {:?}", args_named(args), self.timeout),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    return Err(RemoteError::Cache {
                        path: PathBuf::from("git"),
                        source,
                    })
                }
            }
        };
        let output = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
        let errors = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if status.success() {
            return Ok(output);
        }
        let said = errors.trim().lines().last().unwrap_or("").to_owned();
        let said = if said.is_empty() {
            format!("git {} failed ({status})", args_named(args))
        } else {
            said
        };
        if !network {
            return Err(RemoteError::Invalid {
                url: self.url.to_owned(),
                reason: said,
            });
        }
        Err(classify(self.url, &errors, said))
    }
}

/// The git subcommand, for messages (never the arguments after it).
fn args_named<'a>(args: &[&'a str]) -> &'a str {
    args.iter()
        .find(|a| ["init", "cat-file", "ls-remote", "fetch"].contains(a))
        .copied()
        .unwrap_or("")
}

/// Read a child's pipe on a thread, keeping at most `cap` bytes (the rest
/// is drained so the child never blocks on a full pipe).
fn read_capped(pipe: impl Read + Send + 'static, cap: u64) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut kept = Vec::new();
        let _ = (&mut pipe).take(cap).read_to_end(&mut kept);
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// A server's refusal (no such repository, no access) is the job's
/// failure; anything else about the network may pass.
fn classify(url: &str, errors: &str, said: String) -> RemoteError {
    let lower = errors.to_ascii_lowercase();
    let refused = [
        "repository not found",
        "not found",
        "error: 404",
        "error: 401",
        "error: 403",
        "authentication failed",
        "could not read username",
        "terminal prompts disabled",
        "couldn't find remote ref",
        "not our ref",
    ];
    if refused.iter().any(|needle| lower.contains(needle)) {
        RemoteError::Refused {
            url: url.to_owned(),
            reason: said,
        }
    } else {
        RemoteError::Unreachable {
            url: url.to_owned(),
            reason: said,
        }
    }
}

/// The system's roots and `extra` in one file: `http.sslCAInfo` replaces
/// git's bundle rather than adding to it.
fn ca_bundle(cache_dir: &Path, extra: &Path) -> Result<String, RemoteError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| RemoteError::Cache {
            path: path.to_owned(),
            source,
        })
    };
    let mut bundle = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    bundle.push(b'\n');
    bundle.extend(read(extra)?);
    let path = cache_dir.join(format!("ca-{}.pem", &hex::encode(Sha256::digest(&bundle))[..16]));
    if !path.is_file() {
        // Whole or not at all: a truncated bundle would be trusted as it is.
        let partial = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&partial, &bundle)
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|source| RemoteError::Cache {
                path: path.clone(),
                source,
            })?;
    }
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_branches_that_could_be_options_are_refused_before_git_runs() {
        assert!(is_remote("https://example.com/o/r.git") && is_remote("HTTP://h/r"));
        assert!(!is_remote("-uhoh") && !is_remote("--upload-pack=touch marker") && !is_remote("/srv/r"));
        assert!(is_valid_branch("main") && is_valid_branch("feature/x-1"));
        for bad in ["-uhoh", "--upload-pack=touch marker", "a..b", "", "x:y", "a b"] {
            assert!(!is_valid_branch(bad), "{bad:?}");
        }
        let options = RemoteOptions {
            cache_dir: std::env::temp_dir().join("stepd-remote-unit"),
            timeout: Duration::from_secs(5),
            extra_ca: None,
        };
        let err = fetch_remote("--upload-pack=touch marker", "main", None, None, &options).expect_err("not a URL");
        assert!(
            !err.is_transient() && err.to_string().contains("is not an https:// URL"),
            "{err}"
        );
        let err =
            fetch_remote("https://127.0.0.1:9/r.git", "--upload-pack=x", None, None, &options).expect_err("branch");
        assert!(err.to_string().contains("not a valid branch name"), "{err}");
        for url in [
            "https://allowed.example\\@127.0.0.1:9/r.git",
            "https://u:p@127.0.0.1:9/r.git",
            "https://h/r.git?x=1",
        ] {
            let err = fetch_remote(url, "main", None, None, &options).expect_err("refused");
            assert!(
                !err.is_transient() && err.to_string().contains("path only"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn a_server_that_is_not_there_is_a_transient_failure() {
        let dir = std::env::temp_dir().join(format!("stepd-remote-unit-{}", std::process::id()));
        let options = RemoteOptions {
            cache_dir: dir.clone(),
            timeout: Duration::from_secs(20),
            extra_ca: None,
        };
        // Port 9 (discard) on loopback: nothing listens.
        let err = fetch_remote("https://127.0.0.1:9/r.git", "main", None, Some("t0ken"), &options).expect_err("down");
        assert!(err.is_transient(), "{err}");
        assert!(!err.to_string().contains("t0ken"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
