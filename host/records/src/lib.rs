//! What a job leaves behind, and the scrubber everything passes through on
//! the way out: typed events (`events`), the artifact directory
//! (`artifacts`), StatsD metrics (`metrics`), Prometheus (`prometheus`),
//! where job time goes (`phases`) and the secret redactor (`redact`). Knows no wasm, no database and no HTTP.

pub mod artifacts;
pub mod events;
pub mod metrics;
pub mod phases;
pub mod prometheus;
pub mod redact;
