//! spin: a CPU-bound workload that finishes (a sieve of Eratosthenes up to
//! `inputs.n`, default 1,000,000, repeated `inputs.rounds` times, default 1).
//! The benchmark runs it to measure what fuel and epoch checks cost.

use stepd_sdk::{Step, StepContext, StepError, StepOutput};

struct Spin;

fn sieve(n: usize) -> usize {
    let mut composite = vec![false; n + 1];
    let mut count = 0;
    for i in 2..=n {
        if !composite[i] {
            count += 1;
            let mut j = i * i;
            while j <= n {
                composite[j] = true;
                j += i;
            }
        }
    }
    count
}

impl Step for Spin {
    fn run(ctx: StepContext) -> Result<StepOutput, StepError> {
        let inputs = ctx.inputs_json()?;
        let n = inputs.get("n").and_then(|v| v.as_u64()).unwrap_or(1_000_000) as usize;
        let rounds = inputs.get("rounds").and_then(|v| v.as_u64()).unwrap_or(1);
        let mut primes = 0;
        for _ in 0..rounds {
            primes = std::hint::black_box(sieve(std::hint::black_box(n)));
        }
        Ok(StepOutput::summary(format!("{primes} primes up to {n}")))
    }
}

stepd_sdk::export_step!(Spin);
