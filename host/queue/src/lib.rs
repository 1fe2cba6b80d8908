//! Dispatch (docs/OPERATIONS.md#dispatch): telling workers a job is ready. The store is
//! the source of truth — a message is only a hint, claiming is atomic, so
//! a duplicate or lost message is harmless — and the sweep makes up for
//! lost ones. Embedded by default (an in-process wake-up plus polling the
//! store); RabbitMQ through lapin when `AMQP_URL` is set.

mod amqp;
mod wake;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Notify};

pub use amqp::AmqpDispatcher;

use stepd_settings::RetryBackoff;
use stepd_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Why dispatch failed. Names the broker (without its password).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached or refused an operation.
    #[error("RabbitMQ at {url} ({operation}): {message}")]
    Broker {
        /// The broker URL, password hidden.
        url: String,
        /// What dispatch was doing.
        operation: &'static str,
        /// The client's error.
        message: String,
    },
    /// The store failed during a sweep.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a worker should try to claim next.
pub enum Hint {
    /// Any claimable job (embedded: something changed, or the poll tick).
    Any,
    /// The job a message named; `ack` it once the claim was tried.
    Job(Box<amqp::Delivery>),
}

/// Wakes in-process workers: one notification per announced job, and a
/// broadcast of job ids whose `liveControl` changed.
#[derive(Clone)]
pub struct Embedded {
    ready: Arc<Notify>,
    control: broadcast::Sender<String>,
    poll: Duration,
    /// Other processes' workers on this host (see `wake.rs`).
    others: Option<Arc<wake::WakeSockets>>,
}

impl Embedded {
    fn new(poll: Duration) -> Self {
        Embedded {
            ready: Arc::new(Notify::new()),
            control: broadcast::channel(256).0,
            poll,
            others: None,
        }
    }
}

/// The dispatcher a process uses. Cheap to clone.
#[derive(Clone)]
pub enum Dispatcher {
    /// In-process wake-ups and store polling.
    Embedded(Embedded),
    /// RabbitMQ (plus the in-process control broadcast for local workers).
    Amqp(AmqpDispatcher, Embedded),
}

impl Dispatcher {
    /// The embedded dispatcher; workers also poll the store every `poll`.
    pub fn embedded(poll: Duration) -> Dispatcher {
        Dispatcher::Embedded(Embedded::new(poll))
    }

    /// RabbitMQ at `url` when given, else embedded.
    pub async fn connect(amqp_url: Option<&str>, queue: &str, poll: Duration) -> Result<Dispatcher, QueueError> {
        let local = Embedded::new(poll);
        match amqp_url {
            Some(url) => Ok(Dispatcher::Amqp(AmqpDispatcher::connect(url, queue).await?, local)),
            None => Ok(Dispatcher::Embedded(local)),
        }
    }

    /// Embedded dispatch only: also wake, and be woken by, the other
    /// processes whose sockets are in `dir` (`<data>/wake`), so a worker in
    /// another process claims a job within milliseconds of its submit
    /// rather than at its next poll. A directory where no socket can be
    /// bound (a path too long for one) leaves polling alone, with a warning.
    pub fn wake_across_processes(&mut self, dir: &Path) {
        let Dispatcher::Embedded(local) = self else { return };
        match wake::WakeSockets::bind(dir, local.ready.clone()) {
            Ok(sockets) => local.others = Some(Arc::new(sockets)),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "no wake-up socket; other processes' workers find new jobs by polling"
            ),
        }
    }

    fn local(&self) -> &Embedded {
        match self {
            Dispatcher::Embedded(local) | Dispatcher::Amqp(_, local) => local,
        }
    }

    /// `embedded` or `rabbitmq`.
    pub fn kind(&self) -> &'static str {
        match self {
            Dispatcher::Embedded(_) => "embedded",
            Dispatcher::Amqp(..) => "rabbitmq",
        }
    }

    /// Whether [`Dispatcher::announce`] cannot fail (the embedded
    /// dispatcher: in-process and same-host wake-ups), so a job can be
    /// recorded as announced when it is stored.
    pub fn announcing_cannot_fail(&self) -> bool {
        matches!(self, Dispatcher::Embedded(_))
    }

    /// Whether the broker (if any) is reachable: `Ok` for the embedded
    /// dispatcher, which has none.
    pub async fn check_broker(&self) -> Result<(), QueueError> {
        match self {
            Dispatcher::Embedded(_) => Ok(()),
            Dispatcher::Amqp(amqp, _) => amqp.check().await,
        }
    }

    /// Tell workers job `id` is ready.
    pub async fn announce(&self, id: &str) -> Result<(), QueueError> {
        self.local().ready.notify_one();
        match self {
            Dispatcher::Amqp(amqp, _) => amqp.publish(id).await?,
            Dispatcher::Embedded(local) => {
                if let Some(others) = &local.others {
                    others.signal_others();
                }
            }
        }
        Ok(())
    }

    /// Tell this process's workers that job `id`'s `liveControl` changed,
    /// so they act before their next heartbeat.
    pub fn control_changed(&self, id: &str) {
        let _ = self.local().control.send(id.to_owned());
    }

    /// A receiver of [`Dispatcher::control_changed`] notices.
    pub fn control_wake(&self) -> broadcast::Receiver<String> {
        self.local().control.subscribe()
    }

    /// Wait for something worth claiming. Embedded: a wake-up or the poll
    /// tick. RabbitMQ: a message (consumed with `prefetch` unacknowledged).
    pub async fn next(&self, prefetch: u16) -> Result<Hint, QueueError> {
        match self {
            Dispatcher::Embedded(local) => {
                tokio::select! {
                    () = local.ready.notified() => {}
                    () = tokio::time::sleep(local.poll) => {}
                }
                Ok(Hint::Any)
            }
            Dispatcher::Amqp(amqp, _) => Ok(Hint::Job(Box::new(amqp.next(prefetch).await?))),
        }
    }
}

/// Every `interval` until `stop`: requeue jobs whose lease expired and
/// announce queued jobs nobody was told about (new, due after a backoff,
/// released by a pause, or whose message was lost).
pub async fn run_sweeper(
    store: Store,
    dispatcher: Dispatcher,
    interval: Duration,
    backoff: RetryBackoff,
    stop: CancellationToken,
) {
    // A message sent less than this long ago is not sent again.
    let stale = (interval * 10).max(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
        if let Err(e) = sweep_once(&store, &dispatcher, stale, &backoff).await {
            tracing::warn!(error = %e, "sweep failed; trying again next round");
        }
    }
}

/// One sweep (see [`run_sweeper`]).
/// A job whose lease expired waits out the same backoff as one whose
/// attempt failed retryably.
pub async fn sweep_once(
    store: &Store,
    dispatcher: &Dispatcher,
    stale: Duration,
    backoff: &RetryBackoff,
) -> Result<(), QueueError> {
    for id in store.expire_leases(|attempt| backoff.delay_after(attempt)).await? {
        tracing::info!(job = %id, "lease expired; job queued again after the retry backoff");
    }
    for id in store.take_unannounced(stale, 100).await? {
        dispatcher.announce(&id).await?;
        store.mark_announced(&id).await?;
    }
    Ok(())
}
