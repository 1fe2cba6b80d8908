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

/// A guest declared or grew a table past the attempt's element limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("table limit exceeded: growing a table to {requested_elements} elements, limit is {limit_elements}")]
pub struct TableLimitExceeded {
    /// The size the guest asked for.
    pub requested_elements: u64,
    /// The ceiling.
    pub limit_elements: u64,
}

/// What wasmtime 48 says when a store would pass `instances()`,
/// `tables()` or `memories()`: it reports these counts with a plain
/// message (host/runtime/src/limits.rs has no hook to count instances
/// itself), so this prefix is the only sign of them.
pub const INSTANCE_LIMIT_MESSAGE: &str = "resource limit exceeded:";

/// Most core instances, memories and tables one attempt's store may
/// create. With the pooling allocator these are never more than one pool
/// slot's share (host/runtime/src/engine.rs), so attempts holding every
/// slot still fit in the pool: a full host makes an attempt wait for a
/// slot, it never fails one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounts {
    /// Core module instances.
    pub instances: usize,
    /// Linear memories.
    pub memories: usize,
    /// Tables.
    pub tables: usize,
}

impl StoreCounts {
    /// The same ceiling for all three.
    pub fn uniform(limit: usize) -> Self {
        StoreCounts {
            instances: limit,
            memories: limit,
            tables: limit,
        }
    }
}

/// Ceilings for one attempt's store.
#[derive(Debug, Clone)]
pub struct SandboxLimiter {
    /// Most bytes of linear memory, all memories of all instances together.
    memory_bytes: usize,
    /// Most elements of any one table.
    table_elements: usize,
    /// Most instances, memories and tables in the store.
    counts: StoreCounts,
    /// Bytes of linear memory granted so far (memories never shrink).
    memory_in_use: usize,
}

impl SandboxLimiter {
    /// A limiter with nothing granted yet.
    pub fn new(memory_bytes: usize, table_elements: usize, counts: StoreCounts) -> Self {
        SandboxLimiter {
            memory_bytes,
            table_elements,
            counts,
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

    /// Called for a new table too (from 0 to its declared minimum): an
    /// error, not `Ok(false)`, so the attempt ends with a typed outcome.
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(wasmtime::Error::new(TableLimitExceeded {
                requested_elements: desired as u64,
                limit_elements: self.table_elements as u64,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.counts.instances
    }

    fn tables(&self) -> usize {
        self.counts.tables
    }

    fn memories(&self) -> usize {
        self.counts.memories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_ceiling_counts_every_memory_of_the_attempt_together() {
        let mut limiter = SandboxLimiter::new(512 * MIB, 1000, StoreCounts::uniform(10));
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

    #[test]
    fn a_table_past_the_element_limit_is_a_typed_error_not_a_refusal() {
        let mut limiter = SandboxLimiter::new(MIB, 1000, StoreCounts::uniform(10));
        assert!(limiter.table_growing(0, 1000, None).expect("at the limit"));
        let err = limiter.table_growing(0, 1001, None).expect_err("past the limit");
        let exceeded = err.downcast_ref::<TableLimitExceeded>().expect("a typed limit error");
        assert_eq!((exceeded.requested_elements, exceeded.limit_elements), (1001, 1000));
    }
}
