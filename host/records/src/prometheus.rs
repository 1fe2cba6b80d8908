//! The process's Prometheus registry (docs/OPERATIONS.md#metrics), through
//! the maintained `prometheus-client` crate: the same counters and
//! histogram StatsD gets (dots become underscores), plus gauges a scrape
//! fills in (jobs by status, queue depth, the oldest lease's age) and
//! gauges the process keeps (running attempts, pool slots).
//!
//! Counters carry the StatsD tags as labels except `attempt`, whose values
//! grow without bound (a Prometheus series per attempt number would too).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label pairs, in order.
pub type Labels = Vec<(String, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Step-duration buckets in seconds: a trivial step to a long model call.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The registry and every family in it. Shared by the process (`Arc`).
pub struct Prometheus {
    registry: Registry,
    counters: Vec<(&'static str, Family<Labels, Counter>)>,
    duration: HistogramFamily,
    jobs: Family<Labels, Gauge>,
    queue_depth: Gauge,
    oldest_lease_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    running_attempts: Gauge,
    pool_slots: Gauge,
    phases: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// What `phases` showed at the last scrape (counters only go up by
    /// the difference).
    phases_shown: std::sync::Mutex<[f64; 4]>,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus").finish_non_exhaustive()
    }
}

/// The Prometheus name of a StatsD metric, without the `_total` a counter
/// gets when encoded.
fn prometheus_name(statsd: &str) -> String {
    statsd.trim_end_matches("_total").replace('.', "_")
}

impl Prometheus {
    /// A registry with every stepd metric, each at zero.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let counters: Vec<(&'static str, Family<Labels, Counter>)> = [
            (
                super::metrics::ATTEMPTS_TOTAL,
                "failed step attempts, by class, strategy and outcome",
            ),
            (
                super::metrics::RECOVERED_TOTAL,
                "steps that succeeded after self-heal acted",
            ),
            (super::metrics::EXHAUSTED_TOTAL, "steps self-heal gave up on"),
            (
                super::metrics::WALL_TIMEOUT_TOTAL,
                "attempts stopped by their wall deadline",
            ),
            (
                super::metrics::IDLE_TIMEOUT_TOTAL,
                "attempts stopped by their idle deadline",
            ),
            (super::metrics::NO_PROGRESS_TOTAL, "times the no-progress rule tripped"),
            (
                super::metrics::HTTP_REQUESTS_TOTAL,
                "HTTP requests of steps that got a response",
            ),
            (
                super::metrics::HTTP_DENIED_TOTAL,
                "HTTP requests of steps their grant refused",
            ),
        ]
        .into_iter()
        .map(|(name, help)| {
            let family = Family::<Labels, Counter>::default();
            registry.register(prometheus_name(name), help, family.clone());
            (name, family)
        })
        .collect();
        let duration = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register(
            prometheus_name(super::metrics::STEP_DURATION_SECONDS),
            "how long step attempts ran, in seconds",
            duration.clone(),
        );
        let jobs = Family::<Labels, Gauge>::default();
        registry.register("stepd_jobs", "jobs in the store, by status", jobs.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "stepd_queue_depth",
            "queued jobs that are due (not held, not waiting out a backoff)",
            queue_depth.clone(),
        );
        let oldest_lease_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "stepd_oldest_lease_age_seconds",
            "seconds since the least recently renewed lease of a running job was renewed",
            oldest_lease_age.clone(),
        );
        let running_attempts = Gauge::default();
        registry.register(
            "stepd_running_attempts",
            "step attempts running in this process",
            running_attempts.clone(),
        );
        let pool_slots = Gauge::default();
        registry.register(
            "stepd_pool_slots",
            "instance slots of this process's runtime (running attempts over slots is the pool's usage)",
            pool_slots.clone(),
        );
        let phases = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "stepd_phase_seconds",
            "wall time this process's jobs spent, by phase (store, workspace, artifacts, wasm), summed over concurrent jobs",
            phases.clone(),
        );
        Arc::new(Prometheus {
            phases,
            phases_shown: std::sync::Mutex::new([0.0; 4]),
            registry,
            counters,
            duration,
            jobs,
            queue_depth,
            oldest_lease_age,
            running_attempts,
            pool_slots,
        })
    }

    /// Count one of the StatsD counter `name` with `labels`.
    pub fn count(&self, name: &str, labels: Labels) {
        if let Some((_, family)) = self.counters.iter().find(|(n, _)| *n == name) {
            family.get_or_create(&labels).inc();
        }
    }

    /// Observe a step duration.
    pub fn observe_duration(&self, labels: Labels, seconds: f64) {
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// One more (`+1`) or one fewer (`-1`) attempt running.
    pub fn running_attempts(&self, delta: i64) {
        self.running_attempts.inc_by(delta);
    }

    /// The runtime's instance slots.
    pub fn set_pool_slots(&self, slots: u32) {
        self.pool_slots.set(i64::from(slots));
    }

    /// The store's view, taken at scrape time: jobs by status, due queued
    /// jobs, the oldest lease's age.
    pub fn set_store_view(&self, by_status: &[(String, i64)], queue_depth: i64, oldest_lease_age: f64) {
        self.jobs.clear();
        for (status, count) in by_status {
            self.jobs
                .get_or_create(&vec![("status".to_owned(), status.clone())])
                .set(*count);
        }
        self.queue_depth.set(queue_depth);
        self.oldest_lease_age.set(oldest_lease_age);
    }

    /// Everything in the text exposition format.
    pub fn encode(&self) -> String {
        {
            let mut shown = self
                .phases_shown
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((phase, total), shown) in super::phases::totals().into_iter().zip(shown.iter_mut()) {
                let total = total.as_secs_f64();
                self.phases
                    .get_or_create(&vec![("phase".to_owned(), phase.as_str().to_owned())])
                    .inc_by(total - *shown);
                *shown = total;
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// The content type of [`Prometheus::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statsd_names_become_prometheus_names_and_counts_show_up_once_encoded() {
        assert_eq!(
            prometheus_name("task.self_heal.attempts_total"),
            "task_self_heal_attempts"
        );
        let p = Prometheus::new();
        p.count(
            super::super::metrics::IDLE_TIMEOUT_TOTAL,
            vec![("step".into(), "warm-up".into())],
        );
        p.observe_duration(vec![("step".into(), "warm-up".into())], 0.2);
        p.set_store_view(&[("succeeded".into(), 3)], 1, 0.5);
        let text = p.encode();
        assert!(
            text.contains("task_step_idle_timeout_total{step=\"warm-up\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("task_step_duration_seconds_count{step=\"warm-up\"} 1"),
            "{text}"
        );
        assert!(text.contains("stepd_jobs{status=\"succeeded\"} 3"), "{text}");
        assert!(text.contains("stepd_queue_depth 1"), "{text}");
        assert!(text.contains("stepd_phase_seconds_total{phase=\"wasm\"}"), "{text}");
    }
}
