//! A job's wire shapes: the payload a client submits (parsed, validated
//! and resolved before anything runs) and the operator's live control a
//! running job carries, and a step's declared capabilities. Plain data with serde; no I/O beyond reading the
//! plugin files a payload names.

pub mod capabilities;
pub mod control;
pub mod http;
pub mod payload;
