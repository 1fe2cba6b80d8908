//! The service worker: claims jobs from the store when the dispatcher says
//! there is work, holds each with a heartbeated lease, runs it through the
//! self-heal loop with the operator's live control honoured, and ends it or
//! queues it again. Knows no HTTP.

mod host;
mod live;
mod recorder;
mod service;

pub use live::JobLink;
pub use service::{worker_name, Worker, WorkerOptions};
