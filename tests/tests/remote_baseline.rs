//! Baselines from remote git repositories, against real smart-HTTP git
//! servers on loopback (`git http-backend` over HTTPS, one public, one
//! that wants a token), on both deployments:
//! - given a job on a public repository: the worker fetches it once into
//!   its cache (`task.baseline.fetched`, `cached: false`), the step's file
//!   lands beside the repository's; a second job on it fetches nothing;
//! - given a private repository and `repositoryTokenSecret`: the token
//!   reaches the server as basic authentication, and no file, log or
//!   database row holds it; without the secret, the job fails
//!   `deterministic_repo`, as it does for a repository that does not exist;
//! - given an origin nobody answers on: the job goes back to the queue
//!   with the reason (`transient_runtime`), then dead-letters;
//! - given a job whose branch moved after its first fetch: resuming it
//!   rebuilds on the commit it was pinned to, not the new tip;
//! - names that could be read as options (`-uhoh`, `--upload-pack=touch
//!   marker`, as repository or branch), credentials in the URL, a URL two
//!   parsers read as two different hosts (a backslash), an origin
//!   the host does not list and a secret it does not grant are refused at
//!   submit with a 422 naming the field, and nothing is run.

use std::time::Duration;

use serde_json::{json, Value};
use stepd_tests::cluster::{write_step, Cluster, Mode};
use stepd_tests::files_holding;
use stepd_tests::git_server::GitServer;
use stepd_tests::http_server::TestCa;

const LONG: Duration = Duration::from_secs(90);
const TOKEN: &str = "ghp_stepdTestToken0123456789abcdef";

fn job(repository: &str, branch: &str, token_secret: Option<&str>, max_attempts: u32, steps: Vec<Value>) -> Value {
    let mut task = json!({"objective": "remote baseline", "repository": repository,
                          "startingBranch": branch, "steps": steps});
    if let Some(name) = token_secret {
        task["repositoryTokenSecret"] = json!(name);
    }
    json!({"type": "task", "maxAttempts": max_attempts, "task": task})
}

fn events_named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

async fn submit_status(cluster: &Cluster, payload: &Value) -> (u16, Value) {
    let response = cluster
        .request(reqwest::Method::POST, "/api/queue/jobs")
        .json(payload)
        .send()
        .await
        .expect("submit");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_baselines_are_fetched_once_authenticated_by_a_secret_and_pinned() {
    let ca = TestCa::new();
    let public = GitServer::start(&ca, None).await;
    let private = GitServer::start(&ca, Some(TOKEN.to_owned())).await;
    public.add_repo("hello", "main", &[("README.md", "hello from the remote\n")]);
    private.add_repo("secret-project", "trunk", &[("PLAN.md", "private plan\n")]);
    // Nothing listens there: a listed origin that cannot be reached.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let down = format!("https://127.0.0.1:{}", silent.local_addr().expect("addr").port());
    drop(silent);
    let origins = format!(
        "{},{},{down}",
        public.url("x").trim_end_matches("/x.git"),
        private.url("x").trim_end_matches("/x.git")
    );
    for mode in Mode::BOTH {
        let moving = format!("moving-{mode:?}").to_lowercase();
        public.add_repo(&moving, "main", &[("v.txt", "one\n")]);
        let cluster = Cluster::start_with(
            mode,
            1,
            0,
            &[
                ("STEPD_BASELINE_ORIGINS", &origins),
                ("STEPD_HTTP_EXTRA_CA", ca.pem().to_str().expect("utf-8")),
                ("STEPD_GRANT_SECRETS", "GITHUB_TOKEN"),
                ("GITHUB_TOKEN", TOKEN),
                ("STEPD_BASELINE_FETCH_TIMEOUT_SECONDS", "20"),
            ],
        )
        .await;
        let fetches_before = public.fetches();

        // A public repository, twice: fetched once.
        let hello = public.url("hello");
        let first = cluster
            .submit(&job(
                &hello,
                "main",
                None,
                1,
                vec![write_step("one", "a.txt", "1\n", 0)],
            ))
            .await;
        let done = cluster.wait_status(&first, "succeeded", LONG).await;
        let ws = std::path::PathBuf::from(done["workspace"].as_str().expect("workspace"));
        assert_eq!(
            std::fs::read_to_string(ws.join("README.md")).expect("the repository's file"),
            "hello from the remote\n"
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("a.txt")).expect("the step's file"),
            "1\n"
        );
        let second = cluster
            .submit(&job(
                &hello,
                "main",
                None,
                1,
                vec![write_step("one", "b.txt", "2\n", 0)],
            ))
            .await;
        cluster.wait_status(&second, "succeeded", LONG).await;
        let mut fetched = Vec::new();
        for id in [&first, &second] {
            let events = cluster.events(id).await;
            let event = events_named(&events, "task.baseline.fetched");
            fetched.push(event.first().map(|e| e["payload"]["cached"].clone()));
        }
        let fetched: Vec<bool> = fetched
            .iter()
            .map(|c| c.as_ref().and_then(Value::as_bool).unwrap_or_default())
            .collect();
        assert_eq!(fetched, vec![false, true], "{mode:?}: the second job found it cached");
        assert_eq!(public.fetches() - fetches_before, 1, "{mode:?}: one fetch for two jobs");

        // A private repository: with the token, and without.
        let private_url = private.url("secret-project");
        let with_token = cluster
            .submit(&job(
                &private_url,
                "trunk",
                Some("GITHUB_TOKEN"),
                1,
                vec![write_step("one", "a.txt", "1\n", 0)],
            ))
            .await;
        let done = cluster.wait_status(&with_token, "succeeded", LONG).await;
        let ws = std::path::PathBuf::from(done["workspace"].as_str().expect("workspace"));
        assert!(ws.join("PLAN.md").is_file(), "{mode:?}: the private repository's file");
        assert!(
            private.requests().iter().any(|r| r.authorized),
            "{mode:?}: the token reached the server"
        );
        let without = cluster
            .submit(&job(
                &private_url,
                "trunk",
                None,
                1,
                vec![write_step("one", "a.txt", "1\n", 0)],
            ))
            .await;
        let failed = cluster.wait_status(&without, "failed", LONG).await;
        let missing = cluster
            .submit(&job(
                &public.url("nope"),
                "main",
                None,
                1,
                vec![write_step("one", "a.txt", "1\n", 0)],
            ))
            .await;
        let missing = cluster.wait_status(&missing, "failed", LONG).await;
        for (what, job) in [("no token", &failed), ("no such repository", &missing)] {
            let events = cluster.events(job["id"].as_str().expect("id")).await;
            let ended = events_named(&events, "task.job.failed");
            assert_eq!(
                ended[0]["payload"]["failureClass"], "deterministic_repo",
                "{mode:?} {what}: {ended:?}"
            );
        }

        // An origin nobody answers on: a queue retry with the reason, then
        // the attempts are used up.
        let unreachable = cluster
            .submit(&job(
                &format!("{down}/gone.git"),
                "main",
                None,
                2,
                vec![write_step("one", "a.txt", "1\n", 0)],
            ))
            .await;
        cluster.wait_status(&unreachable, "dead_letter", LONG).await;
        let events = cluster.events(&unreachable).await;
        let requeued = events_named(&events, "task.job.requeued");
        assert_eq!(requeued.len(), 1, "{mode:?}: {events:?}");
        assert!(
            requeued[0]["payload"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("fetching the baseline")),
            "{mode:?}: {requeued:?}"
        );

        // Pinned: the branch moves after the first fetch; a resume
        // rebuilds on the first commit.
        let pinned = cluster
            .submit(&job(
                &public.url(&moving),
                "main",
                None,
                1,
                vec![
                    write_step("one", "a.txt", "1\n", 0),
                    write_step("two", "b.txt", "2\n", 0),
                ],
            ))
            .await;
        cluster.wait_status(&pinned, "succeeded", LONG).await;
        public.commit(&moving, "main", &[("v.txt", "two\n"), ("new.txt", "new\n")]);
        let (status, body) = cluster
            .control(&pinned, json!({"action": "resume_from_step", "stepId": "two"}))
            .await;
        assert_eq!(status, 200, "{body}");
        cluster.wait_event(&pinned, "task.job.succeeded", 2, LONG).await;
        let done = cluster.wait_status(&pinned, "succeeded", LONG).await;
        let events = cluster.events(&pinned).await;
        let commits: Vec<&Value> = events_named(&events, "task.baseline.fetched")
            .iter()
            .map(|e| &e["payload"]["commit"])
            .collect();
        assert_eq!(commits.len(), 2, "{mode:?}");
        assert_eq!(commits[0], commits[1], "{mode:?}: the resume used the pinned commit");
        let ws = std::path::PathBuf::from(done["workspace"].as_str().expect("workspace"));
        assert_eq!(std::fs::read_to_string(ws.join("v.txt")).expect("v.txt"), "one\n");
        assert!(!ws.join("new.txt").exists(), "{mode:?}: the new tip was not used");

        // The token is nowhere stepd writes.
        let holding = files_holding(cluster.dir(), TOKEN);
        assert!(holding.is_empty(), "{mode:?}: the token is in {holding:?}");
        let (tables, read) = cluster.tables_holding(TOKEN).await;
        assert!(
            tables.is_empty(),
            "{mode:?}: the token is in tables {tables:?} ({read} read)"
        );
        assert!(
            !cluster.server.log().contains(TOKEN),
            "{mode:?}: the token is in the log"
        );
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_could_be_options_credentials_and_ungranted_origins_are_refused_at_submit() {
    let ca = TestCa::new();
    let public = GitServer::start(&ca, None).await;
    public.add_repo("hello", "main", &[("README.md", "hi\n")]);
    let origin = public.url("x").trim_end_matches("/x.git").to_owned();
    let cluster = Cluster::start_with(
        Mode::Embedded,
        1,
        0,
        &[
            ("STEPD_BASELINE_ORIGINS", &origin),
            ("STEPD_HTTP_EXTRA_CA", ca.pem().to_str().expect("utf-8")),
        ],
    )
    .await;
    let hello = public.url("hello");
    let with_user = hello.replace("https://", "https://user:pass@");
    // A URL parser reads the listed origin as the host; curl would connect
    // to 127.0.0.1:1 with whatever credentials went along.
    let two_faced = format!("{origin}\\@127.0.0.1:1/hello.git");
    let step = || vec![write_step("one", "a.txt", "1\n", 0)];
    let cases = [
        (job("-uhoh", "main", None, 1, step()), "task.repository"),
        (
            job("--upload-pack=touch marker", "main", None, 1, step()),
            "task.repository",
        ),
        (
            job(&hello, "--upload-pack=touch marker", None, 1, step()),
            "task.startingBranch",
        ),
        (job(&hello, "-uhoh", None, 1, step()), "task.startingBranch"),
        (job(&with_user, "main", None, 1, step()), "task.repository"),
        (job(&two_faced, "main", None, 1, step()), "task.repository"),
        (
            job(&format!("{origin}/{}.git", "a".repeat(3000)), "main", None, 1, step()),
            "task.repository",
        ),
        (
            job("https://127.0.0.1:1/elsewhere.git", "main", None, 1, step()),
            "task.repository",
        ),
        (
            job("ssh://127.0.0.1/repo.git", "main", None, 1, step()),
            "task.repository",
        ),
        (
            job(&hello, "main", Some("NOT_GRANTED"), 1, step()),
            "task.repositoryTokenSecret",
        ),
    ];
    for (payload, field) in cases {
        let (status, body) = submit_status(&cluster, &payload).await;
        assert_eq!(status, 422, "{payload}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(field)),
            "{payload}: {body}"
        );
    }
    assert!(cluster.jobs().await.is_empty(), "nothing was queued");
    assert!(public.requests().is_empty(), "nothing reached the git server");
    assert!(!cluster.dir().join("marker").exists() && !std::path::Path::new("marker").exists());
    cluster.shutdown().await;
}
