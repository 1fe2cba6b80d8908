//! `stepd submit`, `stepd control` and `stepd events`: clients of a
//! running server, over its HTTP API, with an operator token from a flag,
//! `STEPD_TOKEN`, or the token file `stepd serve` generated.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::live::LiveView;
use super::{EXIT_ATTEMPT_FAILED, EXIT_CANCELLED, EXIT_RETRYABLE_EXHAUSTED};
use stepd_records::events::EventRecord;

/// How to reach the server.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "STEPD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Operator token (default: `STEPD_TOKEN`, else `<data-dir>/operator.token`).
    #[arg(long, env = "STEPD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where `stepd serve` keeps its generated token.
    #[arg(long, env = "STEPD_DATA_DIR", default_value = "var/stepd")]
    pub data_dir: PathBuf,
}

impl ClientArgs {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = stepd_api::token_file(&self.data_dir);
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no token: pass --token, set STEPD_TOKEN, or point --data-dir at the server's data directory ({} is unreadable)",
                path.display()
            )
        })?;
        Ok(token.trim().to_owned())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }
}

/// Turn an API error response into an error carrying its message.
async fn check(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or("no message").to_owned();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(ClientError::NotFound { message }.into());
    }
    if !status.is_success() {
        return Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        }
        .into());
    }
    Ok(body)
}

/// Why a client command failed at the server; each has its exit code
/// (host/cli/src/main.rs), apart from invalid input's.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, timed out, or the stream went silent.
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The server's URL.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the server refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server does not know the job.
    #[error("not found: {message}")]
    NotFound {
        /// The server's message.
        message: String,
    },
}

/// A failed request as [`ClientError::Unreachable`].
fn unreachable(server: &str) -> impl FnOnce(reqwest::Error) -> ClientError + '_ {
    move |e| ClientError::Unreachable {
        server: server.to_owned(),
        reason: format!("{e:#}"),
    }
}

/// Make the payload's local paths absolute, taken from the payload file's
/// directory, so the server finds them whatever its working directory.
pub fn absolutize(mut payload: Value, base: &Path) -> Value {
    let abs = |p: &str| -> String {
        if p.contains("://") || Path::new(p).is_absolute() {
            p.to_owned()
        } else {
            std::path::absolute(base.join(p))
                .unwrap_or_else(|_| base.join(p))
                .display()
                .to_string()
        }
    };
    if let Some(repo) = payload["task"]["repository"].as_str().map(abs) {
        payload["task"]["repository"] = json!(repo);
    }
    if let Some(steps) = payload["task"]["steps"].as_array_mut() {
        for step in steps {
            if let Some(path) = step["plugin"]["path"].as_str().map(abs) {
                step["plugin"]["path"] = json!(path);
            }
        }
    }
    payload
}

/// How long `stepd submit` keeps trying a server that answers 503 (its
/// store is briefly unreachable) or refuses connections (it is restarting).
const SUBMIT_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// The wait a 503 asks for (`Retry-After` in seconds), between 1 and 10 s.
fn retry_after(response: &reqwest::Response) -> Duration {
    let seconds = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(2);
    Duration::from_secs(seconds.clamp(1, 10))
}

/// Submit `job`, trying again for a while if the server is unavailable;
/// returns the job id.
pub async fn submit(args: &ClientArgs, job: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(job).with_context(|| format!("reading {}", job.display()))?;
    let payload: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", job.display()))?;
    let base = job.parent().map(Path::to_owned).unwrap_or_default();
    let payload = absolutize(payload, &base);
    let token = args.token()?;
    // One key for every try: a submission sent again after a lost answer
    // or a 503 is the same job on the server, never a second one.
    let key = uuid::Uuid::new_v4().to_string();
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let response = loop {
        let sent = http
            .post(args.url("/api/queue/jobs"))
            .bearer_auth(&token)
            .header("Idempotency-Key", &key)
            .json(&payload)
            .send()
            .await;
        let wait = match &sent {
            Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => retry_after(response),
            Err(e) if e.is_connect() || e.is_timeout() => Duration::from_secs(1),
            _ => break sent,
        };
        if started.elapsed() + wait > SUBMIT_RETRY_WINDOW {
            break sent;
        }
        tracing::warn!("the server is unavailable; submitting again in {}s", wait.as_secs());
        tokio::time::sleep(wait).await;
    }
    .map_err(unreachable(&args.server))?;
    let body = check(response)
        .await
        .with_context(|| format!("submitting {}", job.display()))?;
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}

/// How long `--follow` waits on a server that sends nothing: three of its
/// 10 s keep-alives.
pub const FOLLOW_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `stepd submit JOB.json [--follow]`.
pub async fn submit_command(args: &ClientArgs, job: &Path, follow: bool) -> anyhow::Result<ExitCode> {
    let id = submit(args, job).await?;
    println!("{id}");
    if follow {
        return follow_events(args, &id, 0, FOLLOW_READ_TIMEOUT).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Submit and follow to the end (`stepd serve --run`).
pub async fn submit_and_follow(args: &ClientArgs, job: &Path) -> anyhow::Result<ExitCode> {
    let id = submit(args, job).await?;
    println!("submitted job {id}");
    let code = follow_events(args, &id, 0, FOLLOW_READ_TIMEOUT).await?;
    // A job's last event is written just before its status: wait for the
    // status to catch up (briefly) before reporting it.
    let mut job: Value;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        job = check(
            reqwest::Client::new()
                .get(args.url(&format!("/api/queue/jobs/{id}")))
                .bearer_auth(args.token()?)
                .send()
                .await
                .map_err(unreachable(&args.server))?,
        )
        .await?;
        let ended = !matches!(job["status"].as_str(), Some("queued" | "running"));
        if ended || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("status: {}", job["status"].as_str().unwrap_or("?"));
    println!(
        "artifacts: {}",
        args.data_dir.join("artifacts").join("agent_jobs").join(&id).display()
    );
    if let Some(ws) = job["workspace"].as_str() {
        println!("workspace: {ws}");
    }
    Ok(code)
}

/// `stepd control JOB_ID ACTION [--step ID] [--reason TEXT]`.
pub async fn control(
    args: &ClientArgs,
    id: &str,
    action: &str,
    step: Option<&str>,
    reason: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "action": action });
    if let Some(step) = step {
        body["stepId"] = json!(step);
    }
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    let response = reqwest::Client::new()
        .post(args.url(&format!("/api/task-runs/{id}/control")))
        .bearer_auth(args.token()?)
        .json(&body)
        .send()
        .await
        .map_err(unreachable(&args.server))?;
    let result = check(response).await?;
    println!(
        "{} {}: job is {}{}",
        action,
        id,
        result["job"]["status"].as_str().unwrap_or("?"),
        result["note"].as_str().map(|n| format!(" ({n})")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(view: &LiveView, event: &Value) {
    match serde_json::from_value::<EventRecord>(event.clone()) {
        Ok(record) => view.show(&record),
        Err(_) => println!("{} {}", event["event"].as_str().unwrap_or("?"), event["payload"]),
    }
}

/// The exit code a job's last event calls for, if it ends the job.
fn ending(event: &Value) -> Option<ExitCode> {
    match event["event"].as_str()? {
        "task.job.succeeded" => Some(ExitCode::SUCCESS),
        "task.job.failed" => Some(ExitCode::from(EXIT_ATTEMPT_FAILED)),
        "task.job.dead_letter" => Some(ExitCode::from(EXIT_RETRYABLE_EXHAUSTED)),
        "task.job.cancelled" => Some(ExitCode::from(EXIT_CANCELLED)),
        "task.job.lease_expired" => match event["payload"]["status"].as_str()? {
            "dead_letter" => Some(ExitCode::from(EXIT_RETRYABLE_EXHAUSTED)),
            "cancelled" => Some(ExitCode::from(EXIT_CANCELLED)),
            _ => None,
        },
        _ => None,
    }
}

/// `stepd events JOB_ID [--follow]`: print events; with follow, stream
/// them until the job ends, reconnecting if the stream breaks, and failing
/// with a clear error when the server sends nothing (not even its 10 s
/// keep-alive) or cannot be reached for `read_timeout`.
pub async fn follow_events(
    args: &ClientArgs,
    id: &str,
    after: i64,
    read_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let view = LiveView::new();
    let token = args.token()?;
    let http = reqwest::Client::builder()
        .connect_timeout(read_timeout)
        .build()
        .context("building the HTTP client")?;
    let mut after = after;
    let mut heard = std::time::Instant::now();
    loop {
        let response = http
            .get(args.url(&format!("/api/queue/jobs/{id}/events?after={after}")))
            .bearer_auth(&token)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await;
        let response = match response {
            Ok(r) if r.status().is_success() => {
                heard = std::time::Instant::now();
                r
            }
            Ok(r) => {
                check(r).await?;
                bail!("unexpected response");
            }
            Err(e) if heard.elapsed() < read_timeout => {
                tracing::warn!("server unreachable ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => bail!("{} has not answered for {} s: {e}", args.server, read_timeout.as_secs()),
        };
        // Every chunk counts as life, keep-alive comments included; the
        // parser itself only yields whole events.
        let chunks = futures_util::stream::unfold(response.bytes_stream(), move |mut body| async move {
            match tokio::time::timeout(read_timeout, body.next()).await {
                Ok(Some(chunk)) => Some((chunk.map_err(ReadError::Transport), body)),
                Ok(None) => None,
                Err(_) => Some((Err(ReadError::Silent), body)),
            }
        });
        let mut events = Box::pin(chunks.eventsource());
        while let Some(item) = events.next().await {
            let event = match item {
                Ok(event) => event,
                Err(eventsource_stream::EventStreamError::Transport(ReadError::Silent)) => {
                    return Err(ClientError::Unreachable {
                        server: args.server.clone(),
                        reason: format!(
                            "it sent nothing (no event, no keep-alive) for {} s: the connection is dead",
                            read_timeout.as_secs()
                        ),
                    }
                    .into())
                }
                // A broken stream: connect again and go on after the last
                // event shown.
                Err(_) => break,
            };
            let Ok(event) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            after = event["seq"].as_i64().unwrap_or(after);
            show(&view, &event);
            if let Some(code) = ending(&event) {
                return Ok(code);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Why the event stream stopped.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Transport(reqwest::Error),
    #[error("no data within the read timeout")]
    Silent,
}

/// `stepd events JOB_ID` without follow: print what is there.
pub async fn print_events(args: &ClientArgs, id: &str, after: i64) -> anyhow::Result<ExitCode> {
    let view = LiveView::new();
    let body = check(
        reqwest::Client::new()
            .get(args.url(&format!("/api/queue/jobs/{id}/events?after={after}")))
            .bearer_auth(args.token()?)
            .send()
            .await
            .map_err(unreachable(&args.server))?,
    )
    .await?;
    for event in body["events"].as_array().into_iter().flatten() {
        show(&view, event);
    }
    Ok(ExitCode::SUCCESS)
}
