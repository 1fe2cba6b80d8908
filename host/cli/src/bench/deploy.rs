//! The processes a benchmark drives: a `stepd serve` (with or without
//! workers of its own) and `stepd worker`s
//! of this same binary on the embedded default or on PostgreSQL and
//! RabbitMQ, each in a scratch directory, with a scratch database when
//! one is needed. Shared by `stepd bench queue` and `stepd bench chaos`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use sqlx::{Connection, Executor};

/// Where a benchmark finds its services and plugins (flattened into the
/// arguments of `bench queue` and `bench chaos`).
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// PostgreSQL server for the scale-out runs; a scratch database is
    /// created on it and dropped afterwards.
    #[arg(
        long,
        env = "STEPD_BENCH_PG_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_admin_url: String,
    /// RabbitMQ for the scale-out runs.
    #[arg(
        long,
        env = "STEPD_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Only the embedded default (no PostgreSQL, no RabbitMQ).
    #[arg(long)]
    pub embedded_only: bool,
    /// Directory of named plugins.
    #[arg(long, env = "STEPD_PLUGIN_DIR", default_value = stepd_settings::DEFAULT_PLUGIN_DIR)]
    pub plugins: std::path::PathBuf,
}

pub(crate) const TOKEN: &str = "bench-operator-token";

/// A `stepd` process of this same binary, its stderr collected.
pub(crate) struct Proc {
    pub(crate) child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    pub(crate) fn spawn(args: &[&str], env: &[(String, String)], cwd: &Path) -> anyhow::Result<Proc> {
        let mut command = Command::new(std::env::current_exe().context("this binary's path")?);
        command
            .args(args)
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().context("starting a stepd process")?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Ok(Proc { child, log })
    }

    /// The first log line holding `needle` (waiting up to a minute).
    pub(crate) fn wait_for(&self, needle: &str) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("stepd never logged {needle:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a deployment's processes find their services and plugins.
pub(crate) struct DeployOptions<'a> {
    /// Directory of named plugins.
    pub plugins: &'a Path,
    /// PostgreSQL database URL for a scale-out deployment; `None`: the
    /// embedded default (SQLite, no broker).
    pub database_url: Option<&'a str>,
    /// RabbitMQ, for a scale-out deployment.
    pub amqp_url: &'a str,
    /// `stepd worker` processes beside the server.
    pub workers: usize,
    /// Workers inside the `stepd serve` process (`--workers`).
    pub serve_workers: usize,
    /// Where the processes keep their data (the SQLite store, workspaces,
    /// artifacts); default: the deployment's scratch directory.
    pub data_dir: Option<&'a Path>,
    /// Jobs each worker process (and the server's workers) runs at once
    /// (`--concurrency`); `None`: their default, the cores.
    pub concurrency: Option<usize>,
}

/// A `stepd serve` (API only) and its `stepd worker` processes, in a
/// scratch directory.
pub(crate) struct Deployment {
    pub(crate) url: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    _server: Proc,
    pub(crate) workers: Vec<Proc>,
    /// `--concurrency N` for every process that runs workers, or nothing.
    concurrency: Vec<String>,
    /// The `/metrics` of every process that runs workers.
    metrics: Vec<String>,
    http: reqwest::Client,
}

impl Deployment {
    pub(crate) async fn start(options: DeployOptions<'_>) -> anyhow::Result<Deployment> {
        let dir = tempfile::tempdir()?;
        let plugins = std::path::absolute(options.plugins)?;
        let mut env: Vec<(String, String)> = vec![
            ("STEPD_OPERATOR_TOKENS".into(), TOKEN.into()),
            ("STEPD_LEASE_SECONDS".into(), "2".into()),
            ("STEPD_HEARTBEAT_MS".into(), "200".into()),
            ("STEPD_SWEEP_MS".into(), "200".into()),
            // The recovery rows time how fast the control plane notices a
            // dead worker and resumes its job; the retry backoff a lease
            // expiry waits out is policy, not latency.
            ("STEPD_RETRY_BACKOFF_SECONDS".into(), "0".into()),
            ("STEPD_PLUGIN_DIR".into(), plugins.display().to_string()),
            // The benchmarks' repositories are scratch directories.
            (
                "STEPD_BASELINE_ROOTS".into(),
                std::env::temp_dir().display().to_string(),
            ),
            (
                "STEPD_DATA_DIR".into(),
                options
                    .data_dir
                    .map_or_else(|| dir.path().join("data"), Path::to_owned)
                    .display()
                    .to_string(),
            ),
        ];
        if let Some(db_url) = options.database_url {
            env.push(("DATABASE_URL".into(), db_url.to_owned()));
            env.push(("AMQP_URL".into(), options.amqp_url.to_owned()));
            env.push((
                "STEPD_AMQP_QUEUE".into(),
                format!("stepd.bench.{}", uuid::Uuid::new_v4().simple()),
            ));
        }
        let serve_workers = options.serve_workers.to_string();
        let concurrency: Vec<String> = options
            .concurrency
            .map(|n| vec!["--concurrency".to_owned(), n.to_string()])
            .unwrap_or_default();
        let mut serve_args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", &serve_workers];
        serve_args.extend(concurrency.iter().map(String::as_str));
        let server = Proc::spawn(&serve_args, &env, dir.path())?;
        let line = server.wait_for("stepd serving http://")?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("address in the serving line")?
            .to_owned();
        let metrics = if options.serve_workers > 0 {
            vec![format!("{url}/metrics")]
        } else {
            Vec::new()
        };
        let mut deployment = Deployment {
            metrics,
            url,
            env,
            dir,
            _server: server,
            workers: Vec::new(),
            concurrency,
            http: reqwest::Client::new(),
        };
        for _ in 0..options.workers {
            deployment.add_worker()?;
        }
        Ok(deployment)
    }

    /// Stop every process and hand back the scratch directory, for the
    /// caller to remove later: removing a deployment's tens of thousands
    /// of files right before the next run would slow that run's file
    /// creation (ext4 skips recently freed inodes when it allocates).
    pub(crate) fn stop(self) -> tempfile::TempDir {
        let Deployment {
            dir, _server, workers, ..
        } = self;
        drop(workers);
        drop(_server);
        dir
    }

    /// The store the processes share (its URL).
    pub(crate) fn store_url(&self) -> String {
        let value = |name: &str| self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match value("DATABASE_URL") {
            Some(url) => url,
            None => stepd_store::Store::sqlite_url(Path::new(&value("STEPD_DATA_DIR").unwrap_or_default())),
        }
    }

    /// Start one more `stepd worker`.
    pub(crate) fn add_worker(&mut self) -> anyhow::Result<()> {
        let mut args = vec!["worker", "--metrics-listen", "127.0.0.1:0"];
        args.extend(self.concurrency.iter().map(String::as_str));
        let worker = Proc::spawn(&args, &self.env, self.dir.path())?;
        let line = worker.wait_for("stepd worker metrics on http://")?;
        let metrics = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("address in the metrics line")?;
        self.metrics.push(format!("{metrics}/metrics"));
        worker.wait_for("stepd worker (")?;
        self.workers.push(worker);
        Ok(())
    }

    /// Each phase's seconds (`stepd_phase_seconds_total`) summed over the
    /// processes that run workers.
    pub(crate) async fn phase_seconds(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let mut totals: Vec<(String, f64)> = Vec::new();
        for url in &self.metrics {
            let text = self.http.get(url).send().await?.text().await?;
            for line in text.lines().filter(|l| l.starts_with("stepd_phase_seconds_total{")) {
                let (Some(phase), Some(value)) = (
                    line.split('"').nth(1),
                    line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
                ) else {
                    continue;
                };
                match totals.iter_mut().find(|(p, _)| p == phase) {
                    Some((_, total)) => *total += value,
                    None => totals.push((phase.to_owned(), value)),
                }
            }
        }
        Ok(totals)
    }

    /// Submit a payload; its job id.
    pub(crate) async fn submit(&self, payload: &Value) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/queue/jobs", self.url))
            .bearer_auth(TOKEN)
            .json(payload)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status != 201 {
            bail!("submit refused ({status}): {body}");
        }
        Ok(body["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Submit a payload under an `Idempotency-Key`, trying again while the
    /// server answers 503 or cannot be reached, for up to `patience`; the
    /// job id (the key).
    pub(crate) async fn submit_until_accepted(
        &self,
        payload: &Value,
        key: &str,
        patience: Duration,
    ) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let sent = self
                .http
                .post(format!("{}/api/queue/jobs", self.url))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key)
                .json(payload)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let last = match sent {
                Ok(response) if response.status().is_success() => return Ok(key.to_owned()),
                Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => "503".to_owned(),
                Ok(response) => {
                    let status = response.status();
                    bail!(
                        "submit refused ({status}): {}",
                        response.text().await.unwrap_or_default()
                    )
                }
                Err(e) => e.to_string(),
            };
            if start.elapsed() > patience {
                bail!("job {key} not accepted in {patience:?}: last answer {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GET an API path as the operator, trying again for up to a minute
    /// while the server cannot answer (its database restarting).
    pub(crate) async fn get_patiently(&self, path: &str) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            match self.get(path).await {
                Ok(value) if value.get("code").is_none() => return Ok(value),
                Ok(error) if start.elapsed() > Duration::from_secs(60) => bail!("GET {path}: {error}"),
                Err(e) if start.elapsed() > Duration::from_secs(60) => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// GET an API path as the operator.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?)
    }
}

/// A JSON RFC 3339 time.
pub(crate) fn time_of(value: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(value.as_str()?).ok()
}

/// Seconds from `a` to `b` (negative when `b` is earlier).
pub(crate) fn seconds_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a)
        .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
}

/// A fresh database on the server at `admin`: its URL and name.
pub(crate) async fn scratch_database(admin: &str) -> anyhow::Result<(String, String)> {
    let name = format!("stepd_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .with_context(|| format!("PostgreSQL at {}", stepd_settings::strip_password(admin)))?;
    conn.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok((format!("{base}/{name}"), name))
}

/// Drop a scratch database (best effort).
pub(crate) async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}
