//! Runtime settings: the sandbox limits every attempt runs under.

use std::path::PathBuf;
use std::time::Duration;

use super::{invalid, is_off, mib_to_bytes, parse_positive, parse_switch, ConfigError};

/// Limits and knobs of the sandbox, shared by every attempt a host runs.
///
/// Defaults suit a production host: attempts get a generous CPU budget (fuel)
/// and 512 MiB of memory; deadlines are checked every millisecond.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeSettings {
    /// Fuel (roughly, wasm instructions) one attempt may burn; `None` turns
    /// metering off (faster guests, no CPU budget beyond the deadlines).
    pub fuel_per_attempt: Option<u64>,
    /// Linear memory one attempt may hold, all its memories together.
    pub memory_limit_bytes: usize,
    /// Most elements a table may hold.
    pub table_elements_limit: usize,
    /// Most core instances, tables and memories one attempt may create.
    pub instances_limit: usize,
    /// Most handles (open files and directories, streams, pollables) one
    /// attempt may hold at once: its share of the process's descriptors.
    pub handles_limit: usize,
    /// How often the epoch ticker fires; the deadline check runs this often.
    pub epoch_tick: Duration,
    /// Compile guests with epoch checks. Always on in a host: without them
    /// a CPU-bound guest ignores its deadlines and only stops when its fuel
    /// runs out. `stepd bench` turns it off to measure what the checks cost.
    pub epoch_interruption: bool,
    /// Most output bytes kept per attempt; the rest is counted and dropped.
    pub output_limit_bytes: usize,
    /// Where compiled components are cached between runs; `None` disables
    /// the disk cache (components are still compiled once per process).
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling allocator (pre-reserved instance slots: faster
    /// instantiation, fixed memory ceiling per slot).
    pub pooling: bool,
    /// Instance slots in the pool: the most attempts that can run at once.
    pub pool_slots: u32,
    /// `STEPD_HTTP_EXTRA_CA`: a PEM file of certificates trusted for
    /// outbound HTTPS besides the platform's roots (a private CA, or a
    /// test's).
    pub http_extra_ca: Option<PathBuf>,
    /// `STEPD_HTTP_BYTES_ARE_ACTIVITY` (`on` by default): response bytes
    /// arriving count as activity for the idle deadline — a model streaming
    /// tokens is working; a socket that sends nothing is idle.
    pub http_bytes_are_activity: bool,
}

/// Fuel one attempt may burn by default: about a minute of busy CPU on
/// these machines, far beyond any sane step, so the wall deadline usually
/// fires first.
pub const DEFAULT_FUEL_PER_ATTEMPT: u64 = 100_000_000_000;

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            fuel_per_attempt: Some(DEFAULT_FUEL_PER_ATTEMPT),
            memory_limit_bytes: 512 << 20,
            table_elements_limit: 100_000,
            instances_limit: 100,
            handles_limit: 1024,
            epoch_tick: Duration::from_millis(1),
            epoch_interruption: true,
            output_limit_bytes: 1 << 20,
            cache_dir: default_cache_dir(),
            pooling: true,
            pool_slots: 64,
            http_extra_ca: None,
            http_bytes_are_activity: true,
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|base| base.join("stepd").join("components"))
}

impl RuntimeSettings {
    /// The defaults, overridden by whichever of these variables `lookup`
    /// knows (see [`crate::Settings::load`]):
    /// `STEPD_FUEL_PER_ATTEMPT` (a count, or `off`), `STEPD_MEMORY_MB`,
    /// `STEPD_HANDLE_LIMIT`, `STEPD_EPOCH_TICK_MS`, `STEPD_OUTPUT_LIMIT_KB`, `STEPD_CACHE_DIR`
    /// (a path, or `off`), `STEPD_POOLING` (`on`/`off`), `STEPD_POOL_SLOTS`,
    /// `STEPD_HTTP_EXTRA_CA`, `STEPD_HTTP_BYTES_ARE_ACTIVITY` (`on`/`off`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut settings = RuntimeSettings::default();
        if let Some(value) = lookup("STEPD_FUEL_PER_ATTEMPT") {
            settings.fuel_per_attempt = if is_off(&value) {
                None
            } else {
                Some(parse_positive("STEPD_FUEL_PER_ATTEMPT", &value)?)
            };
        }
        if let Some(value) = lookup("STEPD_MEMORY_MB") {
            settings.memory_limit_bytes = mib_to_bytes("STEPD_MEMORY_MB", &value)?;
        }
        if let Some(value) = lookup("STEPD_HANDLE_LIMIT") {
            let handles = parse_positive("STEPD_HANDLE_LIMIT", &value)?;
            settings.handles_limit = usize::try_from(handles).unwrap_or(usize::MAX);
        }
        if let Some(value) = lookup("STEPD_EPOCH_TICK_MS") {
            settings.epoch_tick = Duration::from_millis(parse_positive("STEPD_EPOCH_TICK_MS", &value)?);
        }
        if let Some(value) = lookup("STEPD_OUTPUT_LIMIT_KB") {
            let kib = parse_positive("STEPD_OUTPUT_LIMIT_KB", &value)?;
            settings.output_limit_bytes = usize::try_from(kib.saturating_mul(1024)).unwrap_or(usize::MAX);
        }
        if let Some(value) = lookup("STEPD_CACHE_DIR") {
            settings.cache_dir = if is_off(&value) {
                None
            } else {
                Some(PathBuf::from(value))
            };
        }
        if let Some(value) = lookup("STEPD_POOLING") {
            settings.pooling = parse_switch("STEPD_POOLING", &value)?;
        }
        if let Some(value) = lookup("STEPD_POOL_SLOTS") {
            let slots = parse_positive("STEPD_POOL_SLOTS", &value)?;
            settings.pool_slots =
                u32::try_from(slots).map_err(|_| invalid("STEPD_POOL_SLOTS", &value, "must fit in 32 bits"))?;
        }
        if let Some(value) = lookup("STEPD_HTTP_EXTRA_CA").filter(|v| !v.trim().is_empty()) {
            let path = PathBuf::from(value.trim());
            if !path.is_absolute() {
                return Err(invalid("STEPD_HTTP_EXTRA_CA", &value, "must be an absolute path"));
            }
            settings.http_extra_ca = Some(path);
        }
        if let Some(value) = lookup("STEPD_HTTP_BYTES_ARE_ACTIVITY") {
            settings.http_bytes_are_activity = parse_switch("STEPD_HTTP_BYTES_ARE_ACTIVITY", &value)?;
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with(vars: &[(&str, &str)]) -> Result<RuntimeSettings, ConfigError> {
        RuntimeSettings::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn defaults_meter_fuel_and_cap_memory_at_512_mib() {
        let settings = settings_with(&[]).expect("defaults are valid");
        assert_eq!(settings.fuel_per_attempt, Some(DEFAULT_FUEL_PER_ATTEMPT));
        assert_eq!(settings.memory_limit_bytes, 512 << 20);
        assert_eq!(settings.epoch_tick, Duration::from_millis(1));
    }

    #[test]
    fn fuel_can_be_turned_off_and_memory_set_in_mib() {
        let settings = settings_with(&[("STEPD_FUEL_PER_ATTEMPT", "off"), ("STEPD_MEMORY_MB", "64")]).expect("valid");
        assert_eq!(settings.fuel_per_attempt, None);
        assert_eq!(settings.memory_limit_bytes, 64 << 20);
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_variable() {
        let err = settings_with(&[("STEPD_EPOCH_TICK_MS", "0")]).expect_err("0 is not >= 1");
        let text = err.to_string();
        assert!(text.contains("STEPD_EPOCH_TICK_MS"), "{text}");
        assert!(text.contains(">= 1"), "{text}");
        let err = settings_with(&[("STEPD_MEMORY_MB", "lots")]).expect_err("not a number");
        assert!(err.to_string().contains("STEPD_MEMORY_MB=\"lots\""), "{err}");
        let err = settings_with(&[("STEPD_POOLING", "maybe")]).expect_err("not a switch");
        assert!(err.to_string().contains("STEPD_POOLING"), "{err}");
    }
}
