//! The per-store resource limiter: memory, table and instance ceilings for
//! one attempt. The memory ceiling is the attempt's total across all its
//! linear memories (a component may declare many, each small enough on its
//! own). Hitting it traps with a typed error, so the attempt ends as
//! `MemoryLimit` instead of a guest allocator abort that would look like
//! any other trap.

use wasmtime::ResourceLimiter;

/// A guest tried to grow a linear memory past the attempt's limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory limit exceeded: growing to {requested_bytes} bytes, limit is {limit_bytes} bytes")]
pub struct MemoryLimitExceeded {
    /// The size the guest asked for.
    pub requested_bytes: u64,
    /// The ceiling.
    pub limit_bytes: u64,
}

/// Ceilings for one attempt's store.
#[derive(Debug, Clone)]
pub struct SandboxLimiter {
    /// Most bytes of linear memory, all memories of all instances together.
    memory_bytes: usize,
    /// Most elements of any one table.
    table_elements: usize,
    /// Most instances, memories and tables in the store.
    instances: usize,
    /// Bytes of linear memory granted so far (memories never shrink).
    memory_in_use: usize,
}

impl SandboxLimiter {
    /// A limiter with nothing granted yet.
    pub fn new(memory_bytes: usize, table_elements: usize, instances: usize) -> Self {
        SandboxLimiter {
            memory_bytes,
            table_elements,
            instances,
            memory_in_use: 0,
        }
    }

    /// Bytes of linear memory granted so far.
    pub fn memory_in_use(&self) -> usize {
        self.memory_in_use
    }
}

impl ResourceLimiter for SandboxLimiter {
    /// Called for a new memory (from 0 to its initial size) and for every
    /// growth, so the running total covers every memory of the attempt.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_in_use.saturating_sub(current).saturating_add(desired);
        if total > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                requested_bytes: total as u64,
                limit_bytes: self.memory_bytes as u64,
            }));
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_ceiling_counts_every_memory_of_the_attempt_together() {
        let mut limiter = SandboxLimiter::new(512 * MIB, 1000, 10);
        // Two memories of 200 MiB fit; a third one does not, although each
        // alone would be well under the ceiling.
        assert!(limiter.memory_growing(0, 200 * MIB, None).expect("first memory"));
        assert!(limiter.memory_growing(0, 200 * MIB, None).expect("second memory"));
        let err = limiter.memory_growing(0, 200 * MIB, None).expect_err("third memory");
        let exceeded = err.downcast_ref::<MemoryLimitExceeded>().expect("a typed limit error");
        assert_eq!(exceeded.requested_bytes, 600 * MIB as u64);
        assert_eq!(exceeded.limit_bytes, 512 * MIB as u64);
        // Growing one of the first two counts only the growth.
        assert!(limiter.memory_growing(200 * MIB, 300 * MIB, None).expect("growth"));
        assert_eq!(limiter.memory_in_use(), 500 * MIB);
        assert!(limiter.memory_growing(300 * MIB, 320 * MIB, None).is_err());
    }
}
