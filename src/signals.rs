//! What the parts of a running service tell each other: wake-ups, liveness, shutdown.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Signals {
    /// New work for the poller (a job created or deferred).
    pub poller_wake: Notify,
    /// New deliveries queued.
    pub delivery_wake: Notify,
    /// Only shutdown: housekeeping sleeps between sweeps.
    pub maintenance_wake: Notify,
    /// Whoever waits in [`Signals::shutdown_started`].
    shutdown_wake: Notify,
    /// When upstream pushes made jobs due, for the push-to-callback latency.
    pub pushed: crate::push::PushTimes,
    shutting_down: AtomicBool,
    poller_running: AtomicBool,
    delivery_running: AtomicBool,
}

impl Signals {
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.poller_wake.notify_waiters();
        self.delivery_wake.notify_waiters();
        self.maintenance_wake.notify_waiters();
        self.shutdown_wake.notify_waiters();
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_started(&self) {
        let wake = self.shutdown_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if !self.is_shutting_down() {
            wake.await;
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn set_poller_running(&self, running: bool) {
        self.poller_running.store(running, Ordering::SeqCst);
    }

    pub fn set_delivery_running(&self, running: bool) {
        self.delivery_running.store(running, Ordering::SeqCst);
    }

    pub fn workers_running(&self) -> bool {
        self.poller_running.load(Ordering::SeqCst) && self.delivery_running.load(Ordering::SeqCst)
    }
}
