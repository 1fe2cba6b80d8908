//! stepd: a worker host that runs each step of a task as a sandboxed WASI
//! 0.2 component and heals itself when a step gets stuck.
//!
//! Modules follow the boundaries of `DESIGN.md`; data flows one way, from
//! the CLI down to the runtime.

pub mod bench;
pub mod cli;
pub mod config;
pub mod runtime;
