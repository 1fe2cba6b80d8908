//! Submits to an SQLite store commit in groups. A submit's commit flushes
//! the write-ahead log (`synchronous = FULL`, docs/OPERATIONS.md#store-durability),
//! about a millisecond on a real disk, and holds SQLite's one write lock
//! meanwhile: a burst of one-commit submits queues every writer of the
//! host behind a flush each. Here one task takes every submit waiting when
//! it starts a transaction (up to [`MAX_GROUP`]), inserts them all, commits
//! once, and only then answers each: the promise of a `201` is unchanged,
//! and its flush is shared.
//!
//! PostgreSQL already shares one log flush among the commits waiting for
//! it, so its submits go alone.

use tokio::sync::{mpsc, oneshot};

use super::jobs::NewJob;
use super::{db, JobRecord, Store, StoreError};

/// At most this many submits share a transaction.
const MAX_GROUP: usize = 64;

/// At most this many submits wait for the writer; a submit past them waits
/// to be queued, as it would wait for a connection without the writer.
const MAX_QUEUED: usize = 4 * MAX_GROUP;

/// One submit waiting for its group's commit.
struct Pending {
    job: NewJob,
    announced: bool,
    answer: oneshot::Sender<Result<JobRecord, StoreError>>,
}

/// The way to the group writer of one store.
#[derive(Debug, Clone)]
pub(crate) struct SubmitGroups {
    queue: mpsc::Sender<Pending>,
}

impl SubmitGroups {
    /// Start the group writer on the current tokio runtime, writing through
    /// `store` (a handle without groups of its own: the writer must not
    /// hold its own queue open). `None` outside a runtime.
    pub(crate) fn start(store: Store) -> Option<SubmitGroups> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (queue, waiting) = mpsc::channel(MAX_QUEUED);
        runtime.spawn(write_groups(store, waiting));
        Some(SubmitGroups { queue })
    }

    /// Submit `job` with the next group; `None` when the writer is gone
    /// (its runtime shut down), for the caller to insert it alone.
    pub(crate) async fn submit(&self, job: NewJob, announced: bool) -> Option<Result<JobRecord, StoreError>> {
        let (answer, answered) = oneshot::channel();
        self.queue.send(Pending { job, announced, answer }).await.ok()?;
        answered.await.ok()
    }
}

/// The group writer: until every handle is dropped, take what is waiting,
/// write it in one transaction, answer each.
async fn write_groups(store: Store, mut waiting: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        // A submit whose caller went away before its group began is not
        // written, as a request dropped before its insert never was.
        group.retain(|pending| !pending.answer.is_closed());
        if group.is_empty() {
            continue;
        }
        match store.insert_group(&group).await {
            Ok(answers) => {
                for (pending, answer) in group.drain(..).zip(answers) {
                    let _ = pending.answer.send(answer);
                }
            }
            // Nothing of the group was committed (SQLite runs in this
            // process: no commit is left in doubt). Each goes alone, for
            // an answer of its own: one bad submit fails only itself.
            Err(_) => {
                for pending in group.drain(..) {
                    let answer = store.insert_alone(&pending.job, pending.announced).await;
                    let _ = pending.answer.send(answer);
                }
            }
        }
    }
}

impl Store {
    /// Insert `group` in one transaction: each its record, or
    /// [`StoreError::DuplicateJob`] when its id was taken (by an earlier
    /// job or one before it in the group).
    async fn insert_group(&self, group: &[Pending]) -> Result<Vec<Result<JobRecord, StoreError>>, StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.durable.begin().await.map_err(db("insert jobs"))?;
        let mut answers = Vec::with_capacity(group.len());
        for pending in group {
            answers.push(
                self.insert_in(&mut tx, &pending.job, pending.announced)
                    .await?
                    .ok_or_else(|| StoreError::DuplicateJob(pending.job.id.clone())),
            );
        }
        tx.commit().await.map_err(db("insert jobs"))?;
        Ok(answers)
    }
}
