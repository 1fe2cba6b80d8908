//! The git server's own scenarios: clones with and without the token, a
//! missing repository, ref listings, big want lists, and its parsers.

use super::*;

const TOKEN: &str = "s3cret-token";

/// A `git` client as a scenario runs it: trusting only the test CA,
/// never prompting, with a home and config of its own.
struct Client {
    home: tempfile::TempDir,
    pem: PathBuf,
}

impl Client {
    fn new(ca: &TestCa) -> Self {
        Client {
            home: tempfile::tempdir().expect("client home"),
            pem: ca.pem().to_owned(),
        }
    }

    /// A directory under the client's home.
    fn dir(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// Run `git <config...> <args...>` in the client's home, off the
    /// async threads (the server answers on them).
    async fn git(&self, token: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut command = Command::new("git");
        if let Some(token) = token {
            command.arg("-c").arg(format!(
                "http.extraHeader=Authorization: {}",
                basic_authorization(token)
            ));
        }
        command
            .args(args)
            .current_dir(self.home.path())
            .env("GIT_SSL_CAINFO", &self.pem)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS");
        tokio::task::spawn_blocking(move || command.output().expect("running git"))
            .await
            .expect("git task")
    }
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_with_the_token_gets_the_files_and_fetches_once() {
    let ca = TestCa::new();
    let server = GitServer::start(&ca, Some(TOKEN.to_owned())).await;
    server.add_repo("app", "main", &[("README.md", "hello from the server\n")]);
    let client = Client::new(&ca);

    let out = client
        .git(Some(TOKEN), &["clone", "-q", &server.url("app"), "app"])
        .await;

    assert!(out.status.success(), "clone failed: {}", stderr(&out));
    let readme = std::fs::read_to_string(client.dir("app").join("README.md")).expect("cloned README");
    assert_eq!(readme, "hello from the server\n");
    assert_eq!(server.fetches(), 1, "{:#?}", server.requests());
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r.authorized && r.status == 200),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.git_protocol.as_deref() == Some("version=2")),
        "a current git speaks protocol v2: {requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_without_the_token_is_refused_before_git_runs() {
    let ca = TestCa::new();
    let server = GitServer::start(&ca, Some(TOKEN.to_owned())).await;
    server.add_repo("app", "main", &[("README.md", "hello\n")]);
    let client = Client::new(&ca);

    let bare = client.git(None, &["clone", "-q", &server.url("app"), "bare"]).await;
    let wrong = client
        .git(Some("not-the-token"), &["clone", "-q", &server.url("app"), "wrong"])
        .await;

    assert!(!bare.status.success(), "clone without a token succeeded");
    assert!(!wrong.status.success(), "clone with a wrong token succeeded");
    assert!(!client.dir("bare").join("README.md").exists());
    let requests = server.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.status == 401 && !r.authorized),
        "{requests:#?}"
    );
    assert!(requests.iter().any(|r| !r.authorization), "{requests:#?}");
    assert!(requests.iter().any(|r| r.authorization), "{requests:#?}");
    assert_eq!(server.fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_repository_is_a_404() {
    let ca = TestCa::new();
    let server = GitServer::start(&ca, Some(TOKEN.to_owned())).await;
    server.add_repo("app", "main", &[("README.md", "hello\n")]);
    let client = Client::new(&ca);

    let out = client
        .git(Some(TOKEN), &["clone", "-q", &server.url("nope"), "nope"])
        .await;

    assert!(!out.status.success(), "clone of a missing repository succeeded");
    let requests = server.requests();
    assert!(requests.iter().any(|r| r.status == 404), "{requests:#?}");
    assert_eq!(server.fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_refs_is_no_fetch_and_follows_a_moved_branch() {
    let ca = TestCa::new();
    let server = GitServer::start(&ca, Some(TOKEN.to_owned())).await;
    let first = server.add_repo("app", "trunk", &[("a.txt", "one\n")]);
    let client = Client::new(&ca);

    let listed = client.git(Some(TOKEN), &["ls-remote", &server.url("app")]).await;
    assert!(listed.status.success(), "ls-remote failed: {}", stderr(&listed));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&format!("{first}\tHEAD")), "{listed}");
    assert!(listed.contains(&format!("{first}\trefs/heads/trunk")), "{listed}");
    assert!(
        server.requests().iter().any(|r| r.method == "POST"),
        "v2 lists refs with an ls-refs POST: {:#?}",
        server.requests()
    );
    assert_eq!(server.fetches(), 0, "{:#?}", server.requests());

    let clone = client
        .git(Some(TOKEN), &["clone", "-q", &server.url("app"), "app"])
        .await;
    assert!(clone.status.success(), "clone failed: {}", stderr(&clone));
    let second = server.commit("app", "trunk", &[("b/c.txt", "two\n")]);
    assert_ne!(first, second);
    let dir = client.dir("app");
    let dir = dir.to_str().expect("UTF-8 path");
    let pull = client.git(Some(TOKEN), &["-C", dir, "pull", "-q", "--ff-only"]).await;

    assert!(pull.status.success(), "pull failed: {}", stderr(&pull));
    let text = std::fs::read_to_string(client.dir("app").join("b/c.txt")).expect("pulled file");
    assert_eq!(text, "two\n");
    assert_eq!(server.fetches(), 2, "{:#?}", server.requests());
}

/// Git gzips upload-pack POSTs over 1 KiB and streams those bigger
/// than `http.postBuffer` chunked; a clone wanting many commits makes
/// both happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_want_lists_arrive_gzipped_or_chunked_and_still_clone() {
    let ca = TestCa::new();
    let server = GitServer::start(&ca, None).await;
    server.add_repo("many", "main", &[("README.md", "many branches\n")]);
    // 2,000 distinct commits on their own branches: 100 KB of wants.
    let mut stream = String::new();
    for i in 0..2000 {
        let message = format!("commit {i}\n");
        stream.push_str(&format!(
            "commit refs/heads/b{i}\ncommitter t <t@stepd.invalid> 0 +0000\ndata {}\n{message}\n",
            message.len()
        ));
    }
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(server.repo_dir("many"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    import
        .stdin
        .take()
        .expect("stdin")
        .write_all(stream.as_bytes())
        .expect("feed fast-import");
    assert!(import.wait().expect("fast-import").success());
    let client = Client::new(&ca);

    let gzipped = client.git(None, &["clone", "-q", &server.url("many"), "gzipped"]).await;
    assert!(gzipped.status.success(), "clone failed: {}", stderr(&gzipped));
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.content_encoding.as_deref() == Some("gzip") && r.packfile),
        "{requests:#?}"
    );

    // Not 65520 (git's floor): a v2 client aborts on a buffer no larger
    // than one pkt-line ("BUG: remote-curl.c: The entire rpc->buf
    // should be larger than LARGE_PACKET_MAX").
    let before = requests.len();
    let chunked = client
        .git(
            None,
            &[
                "-c",
                "http.postBuffer=65536",
                "clone",
                "-q",
                &server.url("many"),
                "chunked",
            ],
        )
        .await;
    assert!(chunked.status.success(), "clone failed: {}", stderr(&chunked));
    let requests = server.requests();
    assert!(
        requests[before..].iter().any(|r| r.chunked && r.packfile),
        "{requests:#?}"
    );
    assert_eq!(server.fetches(), 2);
    assert!(client.dir("chunked").join("README.md").is_file());
}

#[test]
fn the_authorization_carries_the_token_as_git_hosts_take_it() {
    assert_eq!(basic_authorization("abc"), "Basic eC1hY2Nlc3MtdG9rZW46YWJj");
}

#[test]
fn cgi_output_sets_the_status_and_keeps_the_server_framing() {
    let response = parse_cgi(b"Status: 404 Not Found\nContent-Length: 3\nX-A: b\n\nnot").expect("headers");
    assert_eq!((response.status, response.reason.as_str()), (404, "Not Found"));
    assert_eq!(response.headers, vec![("X-A".to_owned(), "b".to_owned())]);
    assert_eq!(response.body, b"not");
    let response = parse_cgi(b"Content-Type: x\r\n\r\n\n\nbody").expect("headers");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"\n\nbody");
    assert!(parse_cgi(b"no header block").is_none());
}
