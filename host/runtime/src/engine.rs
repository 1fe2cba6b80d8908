//! The one wasmtime [`Engine`] a process runs every attempt on, and the
//! epoch ticker that drives deadline checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use stepd_settings::RuntimeSettings;

/// Stack the guest may use, in bytes: deep enough for real code, small
/// enough that runaway recursion stops fast.
const MAX_WASM_STACK: usize = 1 << 20;

/// The pool's share per slot (per concurrent attempt). A Rust step needs a
/// handful of each; a componentize-py Python step instantiates 14 core
/// modules with 2 tables and 1 memory, and a componentize-js one fewer. Sized
/// so every slot can hold a Python step with room for larger components
/// (tests/tests/polyglot.rs fills a small pool with them). The pool only
/// reserves address space for these; what one attempt may really create is
/// bounded by `instances_limit` in the store's limiter (limits.rs).
const CORE_INSTANCES_PER_SLOT: u32 = 20;
const MEMORIES_PER_SLOT: u32 = 4;
const TABLES_PER_SLOT: u32 = 8;

/// Build the engine configuration every attempt depends on: component
/// model, epoch interruption (deadlines), fuel (CPU budget, when metering is
/// on), the compiled-code cache, and the pooling allocator.
pub fn engine_config(settings: &RuntimeSettings) -> wasmtime::Result<Config> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(settings.epoch_interruption);
    config.consume_fuel(settings.fuel_per_attempt.is_some());
    config.max_wasm_stack(MAX_WASM_STACK);
    // Steps are plain WASI 0.2 components; the component-model async
    // machinery only adds cost to every call.
    config.concurrency_support(false);
    if let Some(dir) = &settings.cache_dir {
        // wasmtime's cache keys compiled code by engine configuration and a
        // hash of the component bytes: a plugin is compiled once per host,
        // not once per process.
        let mut cache = CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(Cache::new(cache)?));
    }
    if settings.pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(settings.pool_slots)
            .total_core_instances(settings.pool_slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .total_memories(settings.pool_slots.saturating_mul(MEMORIES_PER_SLOT))
            .total_tables(settings.pool_slots.saturating_mul(TABLES_PER_SLOT))
            .total_stacks(settings.pool_slots)
            .max_memory_size(settings.memory_limit_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Ok(config)
}

/// A background thread that advances the engine's epoch every tick, so the
/// store's deadline callback runs that often. Each tick also wakes whoever
/// waits on [`EpochTicker::ticks`]: a watch close to its deadline uses it
/// for sub-millisecond precision (tokio's timer rounds up to whole
/// milliseconds). Stops when dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    ticks: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Start ticking `engine` every `tick`.
    pub fn start(engine: &Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(tokio::sync::Notify::new());
        let thread = {
            let engine = engine.clone();
            let stop = stop.clone();
            let ticks = ticks.clone();
            std::thread::Builder::new().name("stepd-epoch".into()).spawn(move || {
                // Tick on an absolute schedule: a sleep that overshoots
                // shortens the next one instead of drifting.
                let mut next = Instant::now() + tick;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    engine.increment_epoch();
                    ticks.notify_waiters();
                    next += tick;
                    let now = Instant::now();
                    if next < now {
                        // Fell behind (the machine was busy): start afresh
                        // rather than firing a burst of catch-up ticks.
                        next = now + tick;
                    }
                }
            })?
        };
        Ok(EpochTicker {
            stop,
            ticks,
            thread: Some(thread),
        })
    }

    /// Notified on every tick.
    pub fn ticks(&self) -> Arc<tokio::sync::Notify> {
        self.ticks.clone()
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
