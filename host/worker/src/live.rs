//! A claimed job's live link to the store: the heartbeat task that renews
//! the lease and reads `liveControl`, and the state it shares with the
//! attempt loop — the hold (pause/takeover), a cancel, a pending recovery
//! request, and a lost lease. Acting "at once" means cancelling the
//! running pass's token, which tears the running attempt down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, watch};

use stepd_job::control::{LiveControl, RecoveryRequest};
use stepd_records::artifacts::StepState;
use stepd_records::events::{Event, EventSink, StepAttemptRef};
use stepd_runtime::CancellationToken;
use stepd_selfheal::RunHooks;
use stepd_store::{CheckpointRow, ClaimedBy, JobRecord, Store};

use crate::on_store;
use crate::recorder::EventRecorder;

/// What the heartbeat has learnt about a claimed job.
pub struct JobLink {
    live: watch::Sender<LiveControl>,
    pass: Mutex<CancellationToken>,
    cancel_requested: AtomicBool,
    lease_lost: AtomicBool,
    stopping: AtomicBool,
    pending: Mutex<Option<RecoveryRequest>>,
    handled: Mutex<Option<RecoveryRequest>>,
}

impl JobLink {
    /// A link for a job as claimed.
    pub fn new(job: &JobRecord) -> Arc<Self> {
        let link = Arc::new(JobLink {
            live: watch::Sender::new(LiveControl::default()),
            pass: Mutex::new(CancellationToken::new()),
            cancel_requested: AtomicBool::new(false),
            lease_lost: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            pending: Mutex::new(None),
            handled: Mutex::new(None),
        });
        link.observe(job);
        link
    }

    /// Take in the job as the store has it now.
    pub fn observe(&self, job: &JobRecord) {
        self.live.send_replace(job.live_control.clone());
        if job.cancel_requested {
            self.cancel_requested.store(true, Ordering::SeqCst);
            self.pass().cancel();
        }
        if let Some(request) = &job.live_control.recovery {
            let handled = self.handled.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.is_none() && handled.as_ref() != Some(request) {
                *pending = Some(request.clone());
                drop(pending);
                self.pass().cancel();
            }
        }
    }

    /// The token of the pass running now.
    pub fn pass(&self) -> CancellationToken {
        self.pass.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Start a new pass: a fresh token, cancelled at once if the job must
    /// stop anyway.
    pub fn new_pass(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let recovery_waiting = self.pending.lock().unwrap_or_else(PoisonError::into_inner).is_some();
        if self.must_stop() || recovery_waiting {
            token.cancel();
        }
        *self.pass.lock().unwrap_or_else(PoisonError::into_inner) = token.clone();
        token
    }

    fn must_stop(&self) -> bool {
        self.cancel_requested() || self.lease_lost() || self.stopping()
    }

    /// An operator asked to cancel.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::SeqCst)
    }

    /// Another process requeued the job: stop without touching it.
    pub fn lease_lost(&self) -> bool {
        self.lease_lost.load(Ordering::SeqCst)
    }

    /// The worker is shutting down: stop and hand the job back.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Tear the pass down because the worker shuts down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.pass().cancel();
    }

    fn lose_lease(&self) {
        self.lease_lost.store(true, Ordering::SeqCst);
        self.pass().cancel();
    }

    /// True while a recovery request waits to be acted on.
    pub fn has_pending(&self) -> bool {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// The recovery request to act on, if one arrived. From now on it
    /// counts as handled, so a heartbeat that still sees it in the store
    /// (before the worker clears it) does not queue it a second time.
    pub fn take_pending(&self) -> Option<RecoveryRequest> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let request = pending.take();
        if let Some(request) = &request {
            *self.handled.lock().unwrap_or_else(PoisonError::into_inner) = Some(request.clone());
        }
        request
    }

    /// Renew the lease every `interval` (or when `wake` names this job)
    /// until `done` is cancelled.
    pub async fn heartbeat(
        self: Arc<Self>,
        store: Store,
        job_id: String,
        by: ClaimedBy,
        interval: std::time::Duration,
        mut wake: Option<broadcast::Receiver<String>>,
        done: CancellationToken,
    ) {
        let mut last_renewed = std::time::Instant::now();
        loop {
            let woken = async {
                match wake.as_mut() {
                    Some(rx) => loop {
                        match rx.recv().await {
                            Ok(id) if id == job_id => return,
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                        }
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = woken => {}
                () = done.cancelled() => return,
            }
            let sent = std::time::Instant::now();
            let renewed = on_store(store.heartbeat(&job_id, &by)).await;
            if sent.elapsed() * 3 > by.lease {
                tracing::warn!(job = %job_id, took = ?sent.elapsed(), "a heartbeat took over a third of the lease");
            }
            match renewed {
                Ok(Some(job)) => self.observe(&job),
                Ok(None) => {
                    tracing::warn!(job = %job_id, "lease no longer held: the job ended or another process requeued it");
                    self.lose_lease();
                    return;
                }
                Err(e) => {
                    // Past two thirds of the lease without a renewal, another
                    // process may requeue the job any moment: stop working on
                    // it rather than run it twice.
                    if last_renewed.elapsed() * 3 > by.lease * 2 {
                        tracing::error!(job = %job_id, error = %e, "heartbeats failing for most of the lease; giving the job up");
                        self.lose_lease();
                        return;
                    }
                    tracing::warn!(job = %job_id, error = %e, "heartbeat failed; retrying");
                    continue;
                }
            }
            last_renewed = std::time::Instant::now();
        }
    }
}

/// The hooks the service worker gives the attempt loop.
pub struct ServiceHooks {
    /// The job's link.
    pub link: Arc<JobLink>,
    /// Where hold events go.
    pub events: EventSink,
    /// Where checkpoints go (with the events before them).
    pub recorder: EventRecorder,
}

impl RunHooks for ServiceHooks {
    fn before_attempt<'a>(&'a self, _at: &'a StepAttemptRef) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut rx = self.link.live.subscribe();
            let mode = {
                let live = rx.borrow_and_update();
                if !live.holds() {
                    return;
                }
                live.hold_mode()
            };
            let _ = self.events.emit(Event::PauseActive { mode: mode.to_owned() });
            let pass = self.link.pass();
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() || !rx.borrow_and_update().holds() {
                            break;
                        }
                    }
                    () = pass.cancelled() => break,
                }
            }
            let _ = self.events.emit(Event::PauseCleared { mode: mode.to_owned() });
        })
    }

    fn checkpointed<'a>(
        &'a self,
        patch: &'a [u8],
        state: &'a StepState,
        last_step: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let row = CheckpointRow {
                step_index: state.step_index,
                step_id: state.step_id.clone(),
                patch: patch.to_vec(),
                state: serde_json::to_string(state).map_err(|e| e.to_string())?,
            };
            // The job's ending (or whatever comes instead) writes it; a
            // lease lost meanwhile shows there.
            if last_step {
                self.recorder.hold_checkpoint(row);
                return Ok(());
            }
            match self.recorder.checkpoint(row).await? {
                true => Ok(()),
                false => Err("this worker no longer holds the job's lease".into()),
            }
        })
    }
}
