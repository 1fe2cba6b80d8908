//! The service worker: claims jobs from the store when the dispatcher says
//! there is work, holds each with a heartbeated lease, runs it through the
//! self-heal loop with the operator's live control honoured, and ends it or
//! queues it again. Knows no HTTP.

mod host;
mod live;
mod recorder;
mod retention;
mod service;

pub use live::JobLink;

/// Await a store call, counting its time to the store's phase
/// (`stepd_records::phases`).
pub(crate) async fn on_store<F: std::future::Future>(call: F) -> F::Output {
    stepd_records::phases::timed_async(stepd_records::phases::Phase::Store, call).await
}
pub use service::{worker_name, Worker, WorkerOptions};
