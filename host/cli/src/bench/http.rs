//! The outbound-HTTP row of `stepd bench runtime`: a round trip to a
//! loopback server made by a guest through `wasi:http` (the host's policy,
//! address check and sender included) against the same request made by
//! the host directly, interleaved so both see the same noise. Each request
//! opens its own connection, as a guest's does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Summary;
use stepd_runtime::{AttemptGrants, AttemptOutcome, AttemptRequest, HttpGrant, Plugin, Runtime};
use stepd_settings::HttpOrigin;

/// Requests per guest attempt.
const PER_ATTEMPT: usize = 20;

/// A loopback server answering every request `200 ok`, one per connection.
async fn serve_ok() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                    .await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// One request made by the host: connect, send, read to the end.
async fn host_round_trip(addr: SocketAddr) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(format!("GET /ping HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    if !answer.ends_with(b"ok") {
        bail!("the loopback server answered {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The grant the guest's requests use.
pub(super) fn loopback_grant(addr: SocketAddr) -> anyhow::Result<HttpGrant> {
    let origin = HttpOrigin::parse(&format!("http://{addr}")).map_err(anyhow::Error::msg)?;
    Ok(HttpGrant {
        origins: vec![origin],
        methods: Vec::new(),
        path_prefixes: Vec::new(),
        max_requests: 10_000,
        max_request_bytes: 1 << 20,
        max_response_bytes: 1 << 20,
    })
}

/// Round-trip samples (seconds), guest and host, `rounds` attempts of
/// [`PER_ATTEMPT`] requests each.
pub(super) async fn round_trips(
    runtime: &Runtime,
    hostile: &Plugin,
    request: impl Fn() -> AttemptRequest,
    rounds: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let addr = serve_ok().await?;
    let url = format!("http://{addr}/ping");
    let requests: Vec<serde_json::Value> = (0..PER_ATTEMPT).map(|_| serde_json::json!({"url": url})).collect();
    let inputs = serde_json::json!({"probe": "http", "requests": requests}).to_string();
    let (mut guest, mut host) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut attempt = request();
        attempt.context.inputs = inputs.clone();
        attempt.grants = AttemptGrants {
            http: Some(loopback_grant(addr)?),
            ..AttemptGrants::default()
        };
        let report = runtime.run_attempt(hostile, attempt).await?;
        let AttemptOutcome::Succeeded { data: Some(data), .. } = report.outcome else {
            bail!("the HTTP probe ended {}", report.outcome);
        };
        let answers: Vec<serde_json::Value> = serde_json::from_str(&data).context("the HTTP probe's report")?;
        for answer in answers {
            match answer["ms"].as_f64() {
                Some(ms) if answer["status"] == 200 => guest.push(ms / 1e3),
                _ => bail!("a guest request failed: {answer}"),
            }
        }
        for _ in 0..PER_ATTEMPT {
            host.push(host_round_trip(addr).await?);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((guest, host))
}

/// The row's target: the guest's p50 within 0.5 ms of the host's.
pub(super) fn verdict_line(guest: Option<Summary>, host: Option<Summary>) -> Option<String> {
    let (guest, host) = (guest?, host?);
    let extra = guest.p50 - host.p50;
    Some(format!(
        "- HTTP round trip through the guest p50 within 0.5 ms of the host's: +{:.3} ms ({})\n",
        extra * 1e3,
        if extra <= 0.0005 { "met" } else { "MISSED" }
    ))
}
