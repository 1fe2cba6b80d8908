//! StatsD metrics (docs/OPERATIONS.md#metrics) through cadence, with DogStatsD tags. The
//! metric names live here and nowhere else.
//!
//! Sending is a non-blocking UDP datagram: an unreachable or missing StatsD
//! host costs a failed `send` that is ignored, never a failed or slowed
//! step. No host configured, no metrics.

use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use cadence::prelude::*;
use cadence::{NopMetricSink, StatsdClient, UdpMetricSink};

use crate::prometheus::Prometheus;
use crate::redact::Redactor;
use stepd_settings::StatsdTarget;

/// Counter: every failed attempt, tagged class, strategy and outcome.
pub const ATTEMPTS_TOTAL: &str = "task.self_heal.attempts_total";
/// Counter: a step that succeeded after at least one self-heal action.
pub const RECOVERED_TOTAL: &str = "task.self_heal.recovered_total";
/// Counter: self-heal gave up on a step.
pub const EXHAUSTED_TOTAL: &str = "task.self_heal.exhausted_total";
/// Counter: an attempt stopped by its wall deadline.
pub const WALL_TIMEOUT_TOTAL: &str = "task.step.wall_timeout_total";
/// Counter: an attempt stopped by its idle deadline.
pub const IDLE_TIMEOUT_TOTAL: &str = "task.step.idle_timeout_total";
/// Counter: the no-progress rule tripped.
pub const NO_PROGRESS_TOTAL: &str = "task.step.no_progress_total";
/// Counter: an HTTP request a step made that got a response, tagged
/// origin and status.
pub const HTTP_REQUESTS_TOTAL: &str = "task.step.http.requests_total";
/// Counter: an HTTP request the step's grant refused, tagged origin.
pub const HTTP_DENIED_TOTAL: &str = "task.step.http.denied_total";
/// Histogram: how long an attempt ran, in seconds (a float, as the name
/// says; a StatsD timer would be whole milliseconds).
pub const STEP_DURATION_SECONDS: &str = "task.step.duration_seconds";

/// Where a metric happened: the step and attempt every metric is tagged
/// with.
#[derive(Debug, Clone, Copy)]
pub struct MetricScope<'a> {
    /// The step's id.
    pub step: &'a str,
    /// The 1-based attempt.
    pub attempt: u32,
}

/// The metrics client of a host process. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    client: Arc<StatsdClient>,
    redactor: Arc<Redactor>,
    prometheus: Option<Arc<Prometheus>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics sent to `target`; with no target, or one that cannot be
    /// resolved, metrics are dropped (with a warning) and nothing fails.
    pub fn new(target: Option<&StatsdTarget>, redactor: Arc<Redactor>) -> Self {
        let client = match target.map(udp_client) {
            Some(Ok(client)) => client,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "StatsD target unusable; metrics are off");
                StatsdClient::from_sink("", NopMetricSink)
            }
            None => StatsdClient::from_sink("", NopMetricSink),
        };
        Metrics {
            client: Arc::new(client),
            redactor,
            prometheus: None,
        }
    }

    /// The same metrics, also counted in the process's Prometheus registry.
    pub fn with_prometheus(self, prometheus: Option<Arc<Prometheus>>) -> Self {
        Metrics { prometheus, ..self }
    }

    /// Note an attempt running until the guard is dropped (the running
    /// attempts gauge).
    pub fn attempt_running(&self) -> RunningAttempt {
        if let Some(p) = &self.prometheus {
            p.running_attempts(1);
        }
        RunningAttempt(self.prometheus.clone())
    }

    fn count(&self, name: &str, scope: MetricScope<'_>, tags: &[(&str, &str)]) {
        let step = self.redactor.redact(scope.step);
        let attempt = scope.attempt.to_string();
        let mut builder = self
            .client
            .incr_with_tags(name)
            .with_tag("step", &step)
            .with_tag("attempt", &attempt);
        for (key, value) in tags {
            builder = builder.with_tag(key, value);
        }
        // Errors (an unreachable host) are the error handler's, never ours.
        builder.send();
        if let Some(p) = &self.prometheus {
            let mut labels = vec![("step".to_owned(), step.clone())];
            labels.extend(tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            p.count(name, labels);
        }
    }

    /// A failed attempt and what self-heal did about it.
    pub fn attempt_failed(&self, scope: MetricScope<'_>, class: &str, strategy: &str, outcome: &str) {
        self.count(
            ATTEMPTS_TOTAL,
            scope,
            &[("class", class), ("strategy", strategy), ("outcome", outcome)],
        );
    }

    /// A step succeeded after self-heal acted on it.
    pub fn recovered(&self, scope: MetricScope<'_>, class: &str, strategy: &str) {
        self.count(RECOVERED_TOTAL, scope, &[("class", class), ("strategy", strategy)]);
    }

    /// Self-heal gave up on a step.
    pub fn exhausted(&self, scope: MetricScope<'_>, class: &str, strategy: &str) {
        self.count(EXHAUSTED_TOTAL, scope, &[("class", class), ("strategy", strategy)]);
    }

    /// An attempt hit its wall deadline.
    pub fn wall_timeout(&self, scope: MetricScope<'_>) {
        self.count(WALL_TIMEOUT_TOTAL, scope, &[]);
    }

    /// An attempt hit its idle deadline.
    pub fn idle_timeout(&self, scope: MetricScope<'_>) {
        self.count(IDLE_TIMEOUT_TOTAL, scope, &[]);
    }

    /// The no-progress rule tripped.
    pub fn no_progress(&self, scope: MetricScope<'_>) {
        self.count(NO_PROGRESS_TOTAL, scope, &[]);
    }

    /// An HTTP request that got a response with `status`.
    pub fn http_request(&self, scope: MetricScope<'_>, origin: &str, status: u16) {
        let origin = self.redactor.redact(origin);
        self.count(
            HTTP_REQUESTS_TOTAL,
            scope,
            &[("origin", &origin), ("status", &status.to_string())],
        );
    }

    /// An HTTP request the step's grant refused.
    pub fn http_denied(&self, scope: MetricScope<'_>, origin: &str) {
        let origin = self.redactor.redact(origin);
        self.count(HTTP_DENIED_TOTAL, scope, &[("origin", &origin)]);
    }

    /// How long an attempt ran.
    pub fn step_duration(&self, scope: MetricScope<'_>, duration: Duration) {
        let step = self.redactor.redact(scope.step);
        let attempt = scope.attempt.to_string();
        self.client
            .histogram_with_tags(STEP_DURATION_SECONDS, duration.as_secs_f64())
            .with_tag("step", &step)
            .with_tag("attempt", &attempt)
            .send();
        if let Some(p) = &self.prometheus {
            p.observe_duration(vec![("step".to_owned(), step)], duration.as_secs_f64());
        }
    }
}

/// Held while an attempt runs; counts it out of the gauge when dropped.
#[derive(Debug)]
pub struct RunningAttempt(Option<Arc<Prometheus>>);

impl Drop for RunningAttempt {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.running_attempts(-1);
        }
    }
}

fn udp_client(target: &StatsdTarget) -> std::io::Result<StatsdClient> {
    // Resolve once, and bind a socket of the address's family (`localhost`
    // may well resolve to ::1 first).
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{} resolves to no address", target.host)))?;
    let socket = UdpSocket::bind(if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
    socket.set_nonblocking(true)?;
    let sink = UdpMetricSink::from(addr, socket).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(StatsdClient::builder("", sink)
        .with_error_handler(|e| tracing::debug!(error = %e, "StatsD send failed"))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_arrive_as_dogstatsd_lines_with_their_tags() {
        let listener = UdpSocket::bind("127.0.0.1:0").expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let port = listener.local_addr().expect("addr").port();
        let metrics = Metrics::new(
            Some(&StatsdTarget {
                host: "127.0.0.1".into(),
                port,
            }),
            Arc::new(Redactor::new()),
        );
        metrics.attempt_failed(
            MetricScope {
                step: "build",
                attempt: 1,
            },
            "transient_runtime",
            "soft_reset",
            "failed",
        );
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).expect("datagram");
        let line = String::from_utf8_lossy(&buf[..n]);
        assert_eq!(
            line,
            "task.self_heal.attempts_total:1|c|#step:build,attempt:1,class:transient_runtime,strategy:soft_reset,outcome:failed"
        );
    }

    #[test]
    fn an_unreachable_or_unresolvable_host_never_fails() {
        let redactor = Arc::new(Redactor::new());
        for host in ["127.0.0.1", "no-such-host.invalid"] {
            let metrics = Metrics::new(
                Some(&StatsdTarget {
                    host: host.into(),
                    port: 9,
                }),
                redactor.clone(),
            );
            for _ in 0..100 {
                metrics.wall_timeout(MetricScope { step: "s", attempt: 1 });
            }
        }
    }
}
