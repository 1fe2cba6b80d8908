//! `stepd bench`: speed targets measured side by side in one run, so the
//! ratios hold on a noisy shared machine. `runtime` measures what an attempt
//! costs; `replay` what checkpoints and hard resets cost; `queue` what the
//! control plane adds, end to end; `scale` how a host holds a thousand
//! hung steps at once; `chaos` what a killed worker, a
//! restarted database or broker and a full disk cost a job (nothing, is
//! the target).

pub mod chaos;
mod deploy;
mod diskfull;
mod http;
mod languages;
pub mod queue;
pub mod replay;
mod restarts;
pub mod runtime;
pub mod scale;

pub use chaos::{run_chaos_bench, ChaosBenchArgs};
pub use queue::{run_queue_bench, QueueBenchArgs};
pub use replay::{run_replay_bench, ReplayBenchArgs};
pub use runtime::{run_runtime_bench, RuntimeBenchArgs};
pub use scale::{run_scale_bench, ScaleBenchArgs};

/// Distribution of a set of samples, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Samples taken.
    pub n: usize,
}

impl Summary {
    /// Summarise samples (seconds); `None` when there are none.
    pub fn of(mut samples: Vec<f64>) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(Summary {
            p50: rank(0.50),
            p99: rank(0.99),
            n: samples.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summary_takes_nearest_rank_percentiles() {
        let s = Summary::of((1..=100).map(f64::from).collect()).expect("samples");
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.n, 100);
        assert!(Summary::of(Vec::new()).is_none());
    }
}
