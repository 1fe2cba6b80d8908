//! The one wasmtime [`Engine`] a process runs every attempt on, and the
//! epoch ticker that drives deadline checks and decides deadlines on time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::limits::StoreCounts;
use stepd_settings::RuntimeSettings;

/// Stack the guest may use, in bytes: deep enough for real code, small
/// enough that runaway recursion stops fast.
const MAX_WASM_STACK: usize = 1 << 20;

/// The pool's share per slot (per concurrent attempt). A Rust step needs a
/// handful of each; a componentize-py Python step instantiates 14 core
/// modules with 2 tables and 1 memory, and a componentize-js one fewer. Sized
/// so every slot can hold a Python step with room for larger components
/// (tests/tests/polyglot.rs fills a small pool with them). The pool only
/// reserves address space for these. The store's limiter holds each attempt
/// to its slot's share ([`store_counts`]), so busy slots never exhaust it.
const CORE_INSTANCES_PER_SLOT: u32 = 20;
const MEMORIES_PER_SLOT: u32 = 4;
const TABLES_PER_SLOT: u32 = 8;

/// What one attempt's store may create: `instances_limit` of each, held
/// to one pool slot's share when the pooling allocator is on.
pub fn store_counts(settings: &RuntimeSettings) -> StoreCounts {
    let limit = settings.instances_limit;
    if !settings.pooling {
        return StoreCounts::uniform(limit);
    }
    let share = |per_slot: u32| limit.min(per_slot as usize);
    StoreCounts {
        instances: share(CORE_INSTANCES_PER_SLOT),
        memories: share(MEMORIES_PER_SLOT),
        tables: share(TABLES_PER_SLOT),
    }
}

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

/// What the epoch ticker shares with the attempts: its period, a signal on
/// every tick, and the board of the attempts' deadlines.
///
/// Every attempt puts its nearer deadline on the board
/// ([`Ticks::watch_deadlines`]), and the ticker thread fires at that
/// instant too, between its regular ticks: it decides the stop itself and
/// advances the epoch, so a CPU-bound guest is interrupted at its deadline
/// rather than at the next whole tick, and a watch waiting on a blocked
/// guest wakes. The decision does not wait for the attempt's task to get an
/// async thread (behind a thousand spinning guests on two cores, that wait
/// is hundreds of milliseconds). A guest stopped that way runs no more
/// code: its task's watch and its epoch callback both answer the decided
/// stop first.
pub struct Ticks {
    period: Duration,
    signal: tokio::sync::Notify,
    schedule: Mutex<Schedule>,
    changed: Condvar,
}

impl std::fmt::Debug for Ticks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticks")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// An attempt's deadlines as the ticker thread checks them
/// (`AttemptClock` in host/runtime/src/deadline.rs). Called with the
/// ticker's schedule locked: it must not call back into [`Ticks`].
pub trait DeadlineCheck: Send + Sync {
    /// Decide the stop if a deadline passed at `now`, and return `None`
    /// (nothing left to watch); else the instant to check again (output
    /// may have moved the idle deadline).
    fn check_at(&self, now: Instant) -> Option<Instant>;
}

/// The attempts' deadlines, each attempt's under one id so its
/// [`DeadlineWatch`] can take it off. Bounded by the attempts running.
#[derive(Default)]
struct Schedule {
    deadlines: BTreeMap<(Instant, u64), Weak<dyn DeadlineCheck>>,
    deadline_of: HashMap<u64, Instant>,
    next_id: u64,
}

impl Schedule {
    /// The earliest deadline on the board.
    fn first(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }

    /// Check the deadlines due at `now`, putting back those whose attempt
    /// goes on.
    fn fire_due(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), check) = entry.remove_entry();
            match check.upgrade().and_then(|check| check.check_at(now)) {
                Some(next) => {
                    self.deadlines.insert((next, id), check);
                    self.deadline_of.insert(id, next);
                }
                None => {
                    self.deadline_of.remove(&id);
                }
            }
        }
    }
}

/// An attempt's place on the ticker's deadline board; dropping it (at the
/// attempt's teardown) takes the attempt off.
pub struct DeadlineWatch {
    ticks: Arc<Ticks>,
    id: u64,
}

impl Drop for DeadlineWatch {
    fn drop(&mut self) {
        let mut schedule = self.ticks.lock_schedule();
        if let Some(at) = schedule.deadline_of.remove(&self.id) {
            schedule.deadlines.remove(&(at, self.id));
        }
    }
}

impl Ticks {
    /// The ticker's regular period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Resolves on the next tick (a regular one or a registered wake).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.signal.notified()
    }

    fn lock_schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Have the ticker thread check `check` at `first` (its nearer
    /// deadline) and at each instant it answers after, until it is
    /// stopped or the returned watch is dropped. One entry per attempt,
    /// taken off at its teardown: the board holds only running attempts.
    pub fn watch_deadlines(self: &Arc<Self>, check: Weak<dyn DeadlineCheck>, first: Instant) -> DeadlineWatch {
        let mut schedule = self.lock_schedule();
        let id = schedule.next_id;
        schedule.next_id += 1;
        let earlier = schedule.first().is_none_or(|earliest| first < earliest);
        schedule.deadlines.insert((first, id), check);
        schedule.deadline_of.insert(id, first);
        if earlier {
            self.changed.notify_one();
        }
        DeadlineWatch {
            ticks: self.clone(),
            id,
        }
    }
}

/// A background thread that advances the engine's epoch every tick, and at
/// every instant registered with its [`Ticks`], so the store's deadline
/// callback runs then. Each tick also signals [`Ticks::notified`]: a watch
/// close to its deadline uses it for sub-millisecond precision (tokio's
/// timer rounds up to whole milliseconds). Stops when dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    ticks: Arc<Ticks>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Start ticking `engine` every `tick`.
    pub fn start(engine: &Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(Ticks {
            period: tick,
            signal: tokio::sync::Notify::new(),
            schedule: Mutex::default(),
            changed: Condvar::new(),
        });
        let thread = {
            let engine = engine.clone();
            let stop = stop.clone();
            let ticks = ticks.clone();
            std::thread::Builder::new()
                .name("stepd-epoch".into())
                .spawn(move || tick_until_stopped(&engine, &stop, &ticks))?
        };
        Ok(EpochTicker {
            stop,
            ticks,
            thread: Some(thread),
        })
    }

    /// What attempts wait on and register their deadlines with.
    pub fn ticks(&self) -> Arc<Ticks> {
        self.ticks.clone()
    }
}

/// The ticker thread: tick on an absolute schedule (a wait that overshoots
/// shortens the next one instead of drifting), and also at each attempt
/// deadline on the board, deciding those first.
fn tick_until_stopped(engine: &Engine, stop: &AtomicBool, ticks: &Ticks) {
    let mut next_tick = Instant::now() + ticks.period;
    let mut schedule = ticks.lock_schedule();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = schedule.first().map_or(next_tick, |first| next_tick.min(first));
        if due > now {
            schedule = ticks
                .changed
                .wait_timeout(schedule, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        schedule.fire_due(now);
        drop(schedule);
        // A guest on a thread now meets its decided stop at its next epoch
        // check; a watch waiting on a blocked guest wakes.
        engine.increment_epoch();
        ticks.signal.notify_waiters();
        if now >= next_tick {
            next_tick += ticks.period;
            if next_tick < now {
                // Fell behind (the machine was busy): start afresh rather
                // than firing a burst of catch-up ticks.
                next_tick = now + ticks.period;
            }
        }
        schedule = ticks.lock_schedule();
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Taking the lock orders the store before the thread's next check.
        drop(self.ticks.lock_schedule());
        self.ticks.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline that decides at once.
    struct Due;

    impl DeadlineCheck for Due {
        fn check_at(&self, _now: Instant) -> Option<Instant> {
            None
        }
    }

    #[tokio::test]
    async fn a_deadline_on_the_board_fires_between_two_regular_ticks() {
        let engine = Engine::new(&engine_config(&RuntimeSettings::default()).expect("config")).expect("engine");
        // A tick far longer than the deadline's distance: only the board
        // can be what fires in time.
        let ticker = EpochTicker::start(&engine, Duration::from_millis(500)).expect("ticker");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ticks = ticker.ticks();
        let notified = ticks.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let due = Arc::new(Due);
        let started = Instant::now();
        let board = Arc::downgrade(&due) as Weak<dyn DeadlineCheck>;
        let _watch = ticks.watch_deadlines(board, started + Duration::from_millis(5));
        tokio::time::timeout(Duration::from_millis(200), notified)
            .await
            .expect("the deadline fired well before the next regular tick");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(5), "fired early: {waited:?}");
        assert!(waited < Duration::from_millis(100), "fired late: {waited:?}");
    }
}
