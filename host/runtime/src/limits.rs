//! The per-store resource limiter: memory, table and instance ceilings for
//! one attempt. Hitting the memory ceiling traps with a typed error, so the
//! attempt ends as `MemoryLimit` instead of a guest allocator abort that
//! would look like any other trap.

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
    /// Largest size of any one linear memory.
    pub memory_bytes: usize,
    /// Most elements of any one table.
    pub table_elements: usize,
    /// Most instances, memories and tables in the store.
    pub instances: usize,
}

impl ResourceLimiter for SandboxLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                requested_bytes: desired as u64,
                limit_bytes: self.memory_bytes as u64,
            }));
        }
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
