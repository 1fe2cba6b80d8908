//! RabbitMQ through lapin: a durable queue of "job ready" messages (the
//! job id as the body), persistent messages, publisher confirms, a
//! consumer with a prefetch equal to the worker's concurrency. A message is
//! acknowledged once its job was claimed in the store (or found
//! unclaimable), never after the job ran, so a long step never meets the
//! broker's consumer timeout. When the broker goes away the dispatcher
//! reconnects with a growing delay; running jobs are unaffected (they
//! heartbeat through the store), and the sweep re-announces what was lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::Mutex;

use super::QueueError;
use stepd_settings::strip_password;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Link {
    connection: Connection,
    publish: Channel,
    consume: Option<(Channel, Consumer)>,
}

/// A RabbitMQ dispatcher. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct AmqpDispatcher {
    url: String,
    queue: String,
    link: Arc<Mutex<Option<Link>>>,
    consumer_tag: String,
}

/// A message naming a job; ack it once the claim was tried.
pub struct Delivery {
    /// The job it names.
    pub job_id: String,
    inner: lapin::message::Delivery,
}

impl Delivery {
    /// Acknowledge it. A failure is only logged: the broker then delivers
    /// it again, and a duplicate is harmless.
    pub async fn ack(self) {
        if let Err(e) = self.inner.ack(BasicAckOptions::default()).await {
            tracing::debug!(job = %self.job_id, error = %e, "ack failed; the message will come again");
        }
    }
}

impl Delivery {
    /// Hand it back to the broker (a claim that failed on a store error),
    /// so it is delivered again instead of holding a prefetch slot.
    pub async fn nack(self) {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if let Err(e) = self.inner.nack(options).await {
            tracing::debug!(job = %self.job_id, error = %e, "nack failed; the message comes again when the channel closes");
        }
    }
}

impl AmqpDispatcher {
    /// Connect to `url` and declare the queue; fails when the broker does
    /// not answer (a deployment error worth seeing at start).
    pub async fn connect(url: &str, queue: &str) -> Result<Self, QueueError> {
        let dispatcher = AmqpDispatcher {
            url: url.to_owned(),
            queue: queue.to_owned(),
            link: Arc::new(Mutex::new(None)),
            consumer_tag: format!("stepd-{}", uuid::Uuid::new_v4().simple()),
        };
        let link = dispatcher.open().await?;
        *dispatcher.link.lock().await = Some(link);
        Ok(dispatcher)
    }

    fn error(&self, operation: &'static str, e: impl std::fmt::Display) -> QueueError {
        QueueError::Broker {
            url: strip_password(&self.url),
            operation,
            message: e.to_string(),
        }
    }

    async fn open(&self) -> Result<Link, QueueError> {
        // A broker host that does not answer at all must not hold the
        // dispatcher (and every submit) for a TCP timeout.
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| self.error("connect", format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| self.error("connect", e))?;
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| self.error("open channel", e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.error("enable publisher confirms", e))?;
        publish
            .queue_declare(
                &self.queue,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error("declare queue", e))?;
        Ok(Link {
            connection,
            publish,
            consume: None,
        })
    }

    /// Whether the broker is reachable: the open connection is up, or a
    /// new one opens (readiness probes).
    pub async fn check(&self) -> Result<(), QueueError> {
        let mut guard = self.link.lock().await;
        if guard.as_ref().is_some_and(|link| link.connection.status().connected()) {
            return Ok(());
        }
        *guard = Some(self.open().await?);
        Ok(())
    }

    /// Publish "job `id` is ready" and wait for the broker's confirm.
    /// Reconnects once if the connection was lost.
    pub async fn publish(&self, id: &str) -> Result<(), QueueError> {
        let mut last = None;
        for _ in 0..2 {
            let mut guard = self.link.lock().await;
            if guard.is_none() {
                match self.open().await {
                    Ok(link) => *guard = Some(link),
                    Err(e) => return Err(e),
                }
            }
            let Some(link) = guard.as_ref() else { continue };
            let sent = async {
                let confirm = link
                    .publish
                    .basic_publish(
                        "",
                        &self.queue,
                        BasicPublishOptions::default(),
                        id.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .map_err(|e| self.error("publish", e))?
                    .await
                    .map_err(|e| self.error("publisher confirm", e))?;
                if confirm.is_nack() {
                    return Err(self.error("publisher confirm", "the broker refused the message (nack)"));
                }
                Ok(())
            }
            .await;
            match sent {
                Ok(()) => return Ok(()),
                Err(e) => {
                    *guard = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| self.error("publish", "no connection")))
    }

    /// The next message, consuming with `prefetch` unacknowledged at most.
    /// Waits (reconnecting) while the broker is away.
    pub async fn next(&self, prefetch: u16) -> Result<Delivery, QueueError> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.try_next(prefetch).await {
                Ok(Some(delivery)) => return Ok(delivery),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "RabbitMQ unavailable; reconnecting in {:?}", delay);
                    *self.link.lock().await = None;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_next(&self, prefetch: u16) -> Result<Option<Delivery>, QueueError> {
        let mut consumer = {
            let mut guard = self.link.lock().await;
            if guard.is_none() {
                *guard = Some(self.open().await?);
            }
            let Some(link) = guard.as_mut() else { return Ok(None) };
            if link.consume.is_none() {
                let channel = link
                    .connection
                    .create_channel()
                    .await
                    .map_err(|e| self.error("open channel", e))?;
                channel
                    .basic_qos(prefetch.max(1), BasicQosOptions::default())
                    .await
                    .map_err(|e| self.error("set prefetch", e))?;
                let consumer = channel
                    .basic_consume(
                        &self.queue,
                        &self.consumer_tag,
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| self.error("consume", e))?;
                link.consume = Some((channel, consumer));
            }
            match &link.consume {
                Some((_, consumer)) => consumer.clone(),
                None => return Ok(None),
            }
        };
        match consumer.next().await {
            Some(Ok(inner)) => {
                let job_id = String::from_utf8_lossy(&inner.data).into_owned();
                Ok(Some(Delivery { job_id, inner }))
            }
            Some(Err(e)) => Err(self.error("receive", e)),
            None => Err(self.error("receive", "the consumer was closed")),
        }
    }
}
