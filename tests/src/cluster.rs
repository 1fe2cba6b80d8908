//! A stepd deployment for one test: a `stepd serve` process (API, and
//! optionally workers) plus separate `stepd worker` processes, on either
//! the embedded default (a SQLite file, no broker) or PostgreSQL and
//! RabbitMQ. Helpers talk to it over its real HTTP API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::services::{amqp_url, TestDb};
use crate::{plugin_dir, stepd_bin};

/// The operator token every cluster accepts.
pub const OPERATOR_TOKEN: &str = "test-operator-token";
/// The worker token every cluster accepts.
pub const WORKER_TOKEN: &str = "test-worker-token";

/// Which deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SQLite file + embedded dispatcher.
    Embedded,
    /// PostgreSQL + RabbitMQ.
    Scale,
}

impl Mode {
    /// Both, embedded first.
    pub const BOTH: [Mode; 2] = [Mode::Embedded, Mode::Scale];
}

/// One stepd process with its stderr collected.
pub struct StepdProcess {
    child: Child,
    /// Everything it wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl StepdProcess {
    fn spawn(args: &[&str], env: &[(String, String)], cwd: &Path) -> StepdProcess {
        Self::spawn_under(&[], args, env, cwd)
    }

    /// Start stepd as the last argument of `wrapper` (`prlimit --as=N --`,
    /// say), or directly when `wrapper` is empty.
    fn spawn_under(wrapper: &[&str], args: &[&str], env: &[(String, String)], cwd: &Path) -> StepdProcess {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(stepd_bin());
                command
            }
            None => Command::new(stepd_bin()),
        };
        command
            .args(args)
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start stepd");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                log.push_str(&line);
                log.push('\n');
            }
        });
        StepdProcess { child, log }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Wait until its log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(start.elapsed() < timeout, "stepd never logged {needle:?}; log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no clean-up, no hand-back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for StepdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A deployment for one test.
pub struct Cluster {
    /// Which deployment.
    pub mode: Mode,
    /// The server's base URL.
    pub url: String,
    /// The data directory the server (and local workers) use.
    pub data_dir: PathBuf,
    /// The environment every process gets.
    pub env: Vec<(String, String)>,
    /// The server.
    pub server: StepdProcess,
    /// Separate worker processes.
    pub workers: Vec<StepdProcess>,
    db: Option<TestDb>,
    queue: String,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Cluster {
    /// Start a server with `server_workers` embedded workers, plus
    /// `worker_processes` separate `stepd worker` processes.
    pub async fn start(mode: Mode, server_workers: usize, worker_processes: usize) -> Cluster {
        Self::start_with(mode, server_workers, worker_processes, &[]).await
    }

    /// [`Cluster::start`] with extra environment.
    pub async fn start_with(
        mode: Mode,
        server_workers: usize,
        worker_processes: usize,
        extra_env: &[(&str, &str)],
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let queue = format!("stepd.test.{}", uuid_like());
        let mut env: Vec<(String, String)> = vec![
            ("STEPD_OPERATOR_TOKENS".into(), OPERATOR_TOKEN.into()),
            ("STEPD_WORKER_TOKENS".into(), WORKER_TOKEN.into()),
            // Short enough that a killed worker's job moves on within
            // seconds, long enough that a worker starved for CPU by a dozen
            // test processes on two cores does not lose its lease.
            ("STEPD_LEASE_SECONDS".into(), "5".into()),
            ("STEPD_HEARTBEAT_MS".into(), "250".into()),
            ("STEPD_SWEEP_MS".into(), "200".into()),
            ("STEPD_RETRY_BACKOFF_SECONDS".into(), "1".into()),
            ("STEPD_PLUGIN_DIR".into(), plugin_dir().display().to_string()),
            ("STEPD_DATA_DIR".into(), data_dir.display().to_string()),
            // The sample repositories and the scenarios' scratch
            // repositories; anything else is refused as a baseline.
            (
                "STEPD_BASELINE_ROOTS".into(),
                format!("{},{}", repo_dir().display(), std::env::temp_dir().display()),
            ),
            (
                "STEPD_CACHE_DIR".into(),
                std::env::temp_dir()
                    .join("stepd-test-component-cache")
                    .display()
                    .to_string(),
            ),
            ("STEPD_POOL_SLOTS".into(), "16".into()),
            ("STEPD_LOG".into(), "stepd=info,warn".into()),
        ];
        let db = match mode {
            Mode::Embedded => None,
            Mode::Scale => {
                let db = TestDb::postgres().await;
                env.push(("DATABASE_URL".into(), db.url.clone()));
                env.push(("AMQP_URL".into(), amqp_url()));
                env.push(("STEPD_AMQP_QUEUE".into(), queue.clone()));
                Some(db)
            }
        };
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let workers_arg = server_workers.to_string();
        let server = StepdProcess::spawn(
            &["serve", "--listen", "127.0.0.1:0", "--workers", &workers_arg],
            &env,
            dir.path(),
        );
        let line = server.wait_for_log("stepd serving http://", Duration::from_secs(60));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("address in the serving line")
            .to_owned();
        let mut cluster = Cluster {
            mode,
            url,
            data_dir,
            env,
            server,
            workers: Vec::new(),
            db,
            queue,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        for _ in 0..worker_processes {
            cluster.spawn_worker();
        }
        cluster
    }

    /// Start one more `stepd worker` process; returns its index.
    pub fn spawn_worker(&mut self) -> usize {
        self.spawn_worker_with(&[])
    }

    /// [`Cluster::spawn_worker`] with some of the environment replaced
    /// (another data directory: a worker on another host).
    pub fn spawn_worker_with(&mut self, extra_env: &[(&str, &str)]) -> usize {
        let mut env = self.env.clone();
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let worker = StepdProcess::spawn(&["worker"], &env, self._dir.path());
        worker.wait_for_log("stepd worker", Duration::from_secs(60));
        self.workers.push(worker);
        self.workers.len() - 1
    }

    /// Start one more `stepd worker` whose address space is capped at
    /// `bytes` (through util-linux's `prlimit`), with `extra_env`; returns
    /// its index. A cap below one instance's memory reservation makes
    /// every instantiation fail for want of memory, as on a host out of it.
    pub fn spawn_worker_capped(&mut self, bytes: u64, extra_env: &[(&str, &str)]) -> usize {
        let mut env = self.env.clone();
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let cap = format!("--as={bytes}");
        let worker = StepdProcess::spawn_under(&["prlimit", &cap, "--"], &["worker"], &env, self._dir.path());
        worker.wait_for_log("stepd worker", Duration::from_secs(60));
        self.workers.push(worker);
        self.workers.len() - 1
    }

    /// The test's own directory (the processes' working directory).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The RabbitMQ queue of this cluster.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// A request with the operator token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(OPERATOR_TOKEN)
    }

    /// Submit a payload; returns the job id.
    pub async fn submit(&self, payload: &Value) -> String {
        let response = self
            .request(reqwest::Method::POST, "/api/queue/jobs")
            .json(payload)
            .send()
            .await
            .expect("submit");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "submit refused: {body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// A job's view.
    pub async fn job(&self, id: &str) -> Value {
        self.request(reqwest::Method::GET, &format!("/api/queue/jobs/{id}"))
            .send()
            .await
            .expect("get job")
            .json()
            .await
            .expect("json")
    }

    /// The PostgreSQL URL of a scale-out cluster's database.
    pub fn database_url(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .map(|(_, v)| v.clone())
            .expect("a scale-out cluster has a PostgreSQL URL")
    }

    /// The store every process of the cluster uses: the PostgreSQL
    /// database, or the SQLite file in the data directory.
    pub fn store_url(&self) -> String {
        match self.mode {
            Mode::Scale => self.database_url(),
            Mode::Embedded => stepd_store::Store::sqlite_url(&self.data_dir),
        }
    }

    /// The tables of a scale-out cluster's database with a row holding
    /// `needle`, and how many tables were read (an embedded cluster's
    /// SQLite file is a file under [`Cluster::dir`]: none read here).
    pub async fn tables_holding(&self, needle: &str) -> (Vec<String>, usize) {
        if self.mode != Mode::Scale {
            return (Vec::new(), 0);
        }
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&self.database_url())
            .await
            .expect("connect");
        let tables: Vec<(String,)> =
            sqlx::query_as("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
                .fetch_all(&mut db)
                .await
                .expect("the tables");
        let mut holding = Vec::new();
        for (table,) in &tables {
            let rows: Vec<(String,)> = sqlx::query_as(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
                .fetch_all(&mut db)
                .await
                .expect("dump a table");
            if rows.iter().any(|(row,)| row.contains(needle)) {
                holding.push(table.clone());
            }
        }
        (holding, tables.len())
    }

    /// The text of one of a job's artifacts (`logs/steps/step-0000.log`).
    pub async fn artifact_text(&self, id: &str, path: &str) -> String {
        self.request(reqwest::Method::GET, &format!("/api/queue/jobs/{id}/artifacts/{path}"))
            .send()
            .await
            .expect("download an artifact")
            .text()
            .await
            .expect("text")
    }

    /// The jobs the store lists (newest first, up to 1000).
    pub async fn jobs(&self) -> Vec<Value> {
        let listed: Value = self
            .request(reqwest::Method::GET, "/api/queue/jobs?limit=1000")
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        listed["jobs"].as_array().cloned().unwrap_or_default()
    }

    /// A job's events (names and payloads).
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let body: Value = self
            .request(reqwest::Method::GET, &format!("/api/queue/jobs/{id}/events"))
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("json");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// The names of a job's events, in order.
    pub async fn event_names(&self, id: &str) -> Vec<String> {
        self.events(id)
            .await
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// POST a control action; returns status and body.
    pub async fn control(&self, id: &str, body: Value) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::POST, &format!("/api/task-runs/{id}/control"))
            .json(&body)
            .send()
            .await
            .expect("control");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Wait until `check` holds for the job view (or fail with the view,
    /// its events and the logs).
    pub async fn wait_job(&self, id: &str, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if check(&job) {
                return job;
            }
            if start.elapsed() > timeout {
                panic!(
                    "job {id} never got {what} ({:?} mode); job: {job:#}\nevents: {:?}\nserver log:\n{}\nworker logs:\n{}",
                    self.mode,
                    self.event_names(id).await,
                    self.server.log(),
                    self.workers.iter().map(StepdProcess::log).collect::<Vec<_>>().join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the job has status `status`.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_job(id, &format!("status {status}"), timeout, |j| j["status"] == status)
            .await
    }

    /// Wait until the job has an event named `name` (after `after` of them).
    pub async fn wait_event(&self, id: &str, name: &str, count: usize, timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let names = self.event_names(id).await;
            if names.iter().filter(|n| *n == name).count() >= count {
                return names;
            }
            if start.elapsed() > timeout {
                panic!(
                    "job {id} never had {count} {name} events ({:?} mode); events: {names:?}\nserver log:\n{}\nworker logs:\n{}",
                    self.mode,
                    self.server.log(),
                    self.workers.iter().map(StepdProcess::log).collect::<Vec<_>>().join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop every process and drop the test database and queue.
    pub async fn shutdown(mut self) {
        for w in &mut self.workers {
            w.kill();
        }
        self.server.kill();
        if let Some(db) = self.db.take() {
            db.drop_now().await;
        }
        if self.mode == Mode::Scale {
            delete_queue(&self.queue).await;
        }
    }
}

async fn delete_queue(queue: &str) {
    use lapin::options::QueueDeleteOptions;
    if let Ok(conn) = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await {
        if let Ok(channel) = conn.create_channel().await {
            let _ = channel.queue_delete(queue, QueueDeleteOptions::default()).await;
        }
        let _ = conn.close(200, "bye").await;
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}.{}.{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A task payload over the sample repository with these steps.
pub fn task(max_attempts: u32, steps: Vec<Value>, self_heal: Value) -> Value {
    json!({
        "type": "task",
        "maxAttempts": max_attempts,
        "task": {
            "objective": "service test",
            "repository": repo_dir().display().to_string(),
            "startingBranch": "main",
            "steps": steps,
            "selfHeal": self_heal,
        }
    })
}

/// A `write-file` step.
pub fn write_step(id: &str, path: &str, text: &str, sleep_ms: u64) -> Value {
    json!({"id": id, "title": id, "plugin": "write-file",
           "inputs": {"path": path, "text": text, "sleepMs": sleep_ms}})
}

/// The sample baseline repository (`samples/repos/hello`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/repos/hello")
}
