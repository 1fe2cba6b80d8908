//! stepd: a worker host that runs each step of a task as a sandboxed WASI
//! 0.2 component and heals itself when a step gets stuck.
//!
//! Modules follow the boundaries of `DESIGN.md`; data flows one way, from
//! the CLI down to the runtime.

pub mod api;
pub mod artifacts;
pub mod bench;
pub mod cli;
pub mod config;
pub mod control;
pub mod events;
pub mod metrics;
pub mod payload;
pub mod queue;
pub mod redact;
pub mod runtime;
pub mod selfheal;
pub mod store;
pub mod worker;
pub mod workspace;
