//! The delivery worker: claims due deliveries, signs and POSTs them, records every attempt.
//!
//! Two queues with separate capacity: first attempts (fresh) and retries. A receiver that is
//! down piles up retries, which can use only the retry slots, so fresh events to healthy
//! receivers never wait behind them. A per-destination limit keeps one receiver from taking
//! every slot; each claim is told the room of each destination (`store::Room`), so that storage
//! can pass over the deliveries of a destination at its limit. A claim is held in memory until
//! the attempt is recorded on disk (it writes nothing; only one process opens the store), so
//! the service never sends one attempt twice at once; a crash between sending and recording
//! sends it again on the next start, with the same `webhook-id` (at least once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::pacing::{self, Pacer};
use super::retry::{self, RetryPolicy, Verdict};
use super::{format, policy, signature};
use crate::clock::{after, SharedClock, Timestamp};
use crate::config::DeliverySettings;
use crate::domain::{Attempt, Delivery, DeliveryState, Destination, ErrorClass};
use crate::service::subscriptions::{Health, Outcome};
use crate::signals::Signals;
use crate::store::{Claimed, DeliveryQueue, Recorded, Room, Store, StoreError};

/// Response bodies are kept up to this size in the attempt log.
pub const RESPONSE_BODY_LIMIT: usize = 16 * 1024;
/// When a destination is at its limit, look again this soon.
const BUSY_DESTINATION_DELAY: Duration = Duration::from_millis(50);
/// Claims of one queue in one dispatch, at most, when paced deliveries leave room unused.
const MAX_CLAIM_ROUNDS: usize = 16;

#[derive(Clone)]
pub struct DeliveryWorker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: SharedClock,
    settings: DeliverySettings,
    /// When retries go (`settings.retry_schedule`), shared with the record closures.
    retry: RetryPolicy,
    /// Slack's one message per second per URL, subscriptions' rate limits, and pauses asked
    /// for with a 429.
    pacer: Pacer,
    /// When a failing subscription is disabled (`settings.disable_after`).
    health: Health,
    signals: Arc<Signals>,
    client: reqwest::Client,
    fresh_slots: Arc<Semaphore>,
    retry_slots: Arc<Semaphore>,
    /// Attempts begun and not yet recorded on disk. The slots above count requests in flight
    /// and are let go once the response is in; this bounds how many records may wait for the
    /// writer behind them, and shutdown waits for all of them.
    attempts: Arc<Semaphore>,
    attempt_capacity: usize,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Secrets as parsed for signing (base64 decoded, HMAC keyed), by their stored text. The
    /// secrets themselves are looked up for every attempt (the store keeps them in memory and
    /// forgets them when they are written), so a rotation applies at once.
    keys: Mutex<HashMap<String, signature::SigningSecret>>,
}

/// Parsed signing secrets kept at most; past that the cache starts over.
const KEY_CACHE_LIMIT: usize = 4096;

type AttemptTask = JoinHandle<Result<Option<AttemptReport>, StoreError>>;

/// How one attempt ended, for tests and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptReport {
    pub delivery_id: String,
    pub state: DeliveryState,
    pub status_code: Option<u16>,
    pub error: Option<ErrorClass>,
}

impl DeliveryWorker {
    pub fn new(
        store: Store,
        clock: SharedClock,
        settings: DeliverySettings,
        signals: Arc<Signals>,
    ) -> Result<Self, reqwest::Error> {
        let client = policy::delivery_client_for(
            settings.timeout,
            settings.allow_private_networks,
            settings.per_destination_concurrency,
        )?;
        let retry_capacity = (settings.concurrency / 2).max(1);
        let attempt_capacity = 2 * (settings.concurrency + retry_capacity);
        Ok(DeliveryWorker {
            inner: Arc::new(Inner {
                fresh_slots: Arc::new(Semaphore::new(settings.concurrency)),
                retry_slots: Arc::new(Semaphore::new(retry_capacity)),
                attempts: Arc::new(Semaphore::new(attempt_capacity)),
                attempt_capacity,
                store,
                clock,
                retry: RetryPolicy::new(&settings.retry_schedule),
                pacer: Pacer::default(),
                health: Health::new(settings.disable_after),
                settings,
                signals,
                client,
                destinations: Mutex::new(HashMap::new()),
                keys: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Claim everything due that there is room for and send it; wait for those attempts.
    pub async fn step(&self) -> Result<Vec<AttemptReport>, StoreError> {
        let handles = self.dispatch().await?;
        let mut reports = Vec::with_capacity(handles.len());
        for outcome in join_all(handles).await {
            match outcome {
                Ok(Ok(Some(report))) => reports.push(report),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e),
                Err(join) => tracing::error!(error = %join, "delivery task panicked"),
            }
        }
        Ok(reports)
    }

    /// Claim due deliveries while there are free slots, and start sending each. Claims are
    /// held in memory: this reads storage and writes nothing.
    async fn dispatch(&self) -> Result<Vec<AttemptTask>, StoreError> {
        let inner = &self.inner;
        let mut started = Vec::new();
        if inner.store.current_fault().is_some() {
            // An attempt whose record cannot be written would only be sent again: wait.
            return Ok(started);
        }
        for (queue, slots) in [
            (DeliveryQueue::Fresh, &inner.fresh_slots),
            (DeliveryQueue::Retry, &inner.retry_slots),
        ] {
            // Deliveries that must wait for their lane (see `pacing`) take no slot: claim
            // again, so a paced backlog never stands in front of other destinations.
            for _ in 0..MAX_CLAIM_ROUNDS {
                let free = self.room(slots);
                if free == 0 {
                    break;
                }
                let now = inner.clock.now();
                let room = self.destination_room();
                let batch = inner
                    .store
                    .claim_due_deliveries(queue, now, free, room)
                    .await?;
                let claimed_all_room = batch.len() >= free;
                let mut paced = 0;
                for claimed in batch {
                    // Room was counted above (only this loop takes these permits). A backend
                    // that leaves the destination's room to the worker may hand over one at
                    // its limit: it is looked at again a little later.
                    let permits = inner
                        .attempts
                        .clone()
                        .try_acquire_owned()
                        .ok()
                        .zip(slots.clone().try_acquire_owned().ok());
                    let Some((attempt, slot)) = permits else {
                        claimed.put_back(now);
                        continue;
                    };
                    let Some(destination_slot) = self.destination_slot(&claimed.delivery) else {
                        claimed.put_back(after(now, BUSY_DESTINATION_DELAY));
                        continue;
                    };
                    if let Err(not_before) = self.pace(&claimed.delivery, now).await {
                        claimed.put_back(not_before);
                        paced += 1;
                        continue;
                    }
                    let request_slots = (slot, destination_slot);
                    let worker = self.clone();
                    started.push(tokio::spawn(async move {
                        let report = worker.attempt(claimed, request_slots).await;
                        drop(attempt);
                        worker.inner.signals.delivery_wake.notify_one();
                        report
                    }));
                }
                if paced > 0 {
                    metrics::counter!("agenthook_delivery_paced_total").increment(paced);
                }
                if paced == 0 || !claimed_all_room {
                    break;
                }
            }
        }
        Ok(started)
    }

    /// Whether the delivery may go at `now` in its lanes (its subscription's Slack or Discord
    /// URL, its rate limit); else when. A delivery to a subscription that is gone or disabled
    /// is not paced: its attempt only records that. Nor is one whose subscription cannot be
    /// read: its attempt meets the same storage error and handles it.
    async fn pace(&self, delivery: &Delivery, now: Timestamp) -> Result<(), Timestamp> {
        let Destination::Subscription {
            subscription_id, ..
        } = &delivery.destination
        else {
            return Ok(());
        };
        let lanes = match self
            .inner
            .store
            .subscription(&delivery.tenant, subscription_id)
            .await
        {
            Ok(Some(sub)) if sub.enabled => pacing::lanes_of(&sub),
            _ => return Ok(()),
        };
        self.inner.pacer.admit(delivery.id.as_str(), &lanes, now)
    }

    /// How many attempts of the queue with these `slots` may begin now.
    fn room(&self, slots: &Semaphore) -> usize {
        slots
            .available_permits()
            .min(self.inner.attempts.available_permits())
    }

    /// The active secrets, parsed for signing; secrets that do not parse are left out.
    fn signing_keys(&self, active: &[&str]) -> Vec<signature::SigningSecret> {
        let mut cache = self.inner.keys.lock().expect("keys lock");
        if cache.len() >= KEY_CACHE_LIMIT && active.iter().any(|s| !cache.contains_key(*s)) {
            cache.clear();
        }
        active
            .iter()
            .filter_map(|raw| {
                if let Some(key) = cache.get(*raw) {
                    return Some(key.clone());
                }
                let key = signature::SigningSecret::parse(raw).ok()?;
                cache.insert((*raw).to_owned(), key.clone());
                Some(key)
            })
            .collect()
    }

    /// The room of each destination with requests in flight, for a claim.
    fn destination_room(&self) -> Room {
        let map = self.inner.destinations.lock().expect("destinations lock");
        Room::new(
            self.inner.settings.per_destination_concurrency,
            map.iter()
                .map(|(host, slots)| (host.as_str(), slots.available_permits())),
        )
    }

    /// A request slot of the delivery's destination (scheme, host and port), if one is free.
    fn destination_slot(&self, delivery: &Delivery) -> Option<OwnedSemaphorePermit> {
        let key = delivery.destination.host();
        let semaphore = {
            let mut map = self.inner.destinations.lock().expect("destinations lock");
            map.retain(|_, s| {
                s.available_permits() < self.inner.settings.per_destination_concurrency
            });
            match map.get(key) {
                Some(semaphore) => semaphore.clone(),
                None => {
                    let limit = self.inner.settings.per_destination_concurrency;
                    let semaphore = Arc::new(Semaphore::new(limit));
                    map.insert(key.to_owned(), semaphore.clone());
                    semaphore
                }
            }
        };
        semaphore.try_acquire_owned().ok()
    }

    /// Send one attempt and record it durably. `request_slots` (overall and per destination)
    /// are let go as soon as the response is in: the record's wait for the disk does not hold
    /// up the next request. The claim holds the delivery until the record is on disk.
    async fn attempt(
        &self,
        claimed: Claimed,
        request_slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Result<Option<AttemptReport>, StoreError> {
        let inner = &self.inner;
        // Kept here while the claim goes to the writer with the record.
        let delivery = claimed.delivery.clone();
        let now = inner.clock.now();
        // A subscription is looked up for every attempt (the store forgets its copy on every
        // write): its URL, format and secrets may have changed since the event, and a disabled
        // or deleted one gets nothing more.
        let subscription = match &delivery.destination {
            Destination::Subscription {
                subscription_id, ..
            } => match inner
                .store
                .subscription(&delivery.tenant, subscription_id)
                .await?
            {
                Some(sub) if sub.enabled => Some(sub),
                _ => {
                    self.record(claimed, move |d| {
                        d.state = DeliveryState::Failed;
                        d.next_attempt_at = None;
                        d.updated_at = now;
                    })
                    .await?;
                    return Ok(None);
                }
            },
            Destination::Callback { .. } => None,
        };
        let destination = match &subscription {
            Some(sub) => Destination::subscription(sub),
            None => delivery.destination.clone(),
        };
        let secrets = match &subscription {
            Some(sub) => sub.secrets.clone(),
            None => {
                inner
                    .store
                    .callback_secrets(&delivery.tenant, signature::SigningSecret::generate)
                    .await?
            }
        };
        let keys = self.signing_keys(&secrets.active(now));
        let body = format::render_payload(destination.format(), &delivery.payload);
        let timestamp = now.timestamp();
        let signature =
            signature::signature_header(&keys, delivery.message_id.as_str(), timestamp, &body);
        let sent = self
            .send(&destination, &delivery, timestamp, signature, body)
            .await;
        drop(request_slots);
        inner.signals.delivery_wake.notify_one();
        let finished = inner.clock.now();
        let attempt = sent.attempt(now);
        let status_code = attempt.status_code;
        let error = attempt.error;
        let receiver = match &subscription {
            Some(sub) => retry::Receiver::Subscription(sub.format),
            None => retry::Receiver::Callback,
        };
        let verdict = retry::judge(
            receiver,
            &retry::Answer {
                status: status_code,
                error,
                retry_after: sent.retry_after.as_deref(),
                body: sent.body.as_deref().unwrap_or(""),
            },
            finished,
        );
        if let Some(sub) = &subscription {
            if let Verdict::Retry {
                not_before: Some(pause),
            } = &verdict
            {
                // The receiver asked for a pause: every delivery of its lanes waits.
                inner
                    .pacer
                    .pause(&pacing::lanes_of(sub), after(finished, *pause));
            }
            let outcome = match &verdict {
                Verdict::Delivered => Outcome::Succeeded,
                Verdict::Disable { reason } => Outcome::Gone(reason.clone()),
                _ => Outcome::Failed,
            };
            inner
                .health
                .note(&inner.store, sub, outcome, finished)
                .await?;
        }
        if let Verdict::DeadLetter { reason } | Verdict::Disable { reason } = &verdict {
            tracing::warn!(delivery_id = %delivery.id, status = status_code, %reason, "delivery refused for good");
        }
        let policy = inner.retry.clone();
        // Appended to the stored record, so a manual retry made meanwhile is not lost; on disk
        // (with the subscription's health, just written) before it counts.
        let recorded = self
            .record(claimed, move |d| {
                d.destination = destination.clone();
                d.attempts.push(attempt.clone());
                d.updated_at = finished;
                let next_wait = match &verdict {
                    Verdict::Delivered => {
                        d.state = DeliveryState::Succeeded;
                        d.next_attempt_at = None;
                        return;
                    }
                    Verdict::DeadLetter { .. } | Verdict::Disable { .. } => None,
                    Verdict::Retry { not_before } => {
                        policy.next_wait(d.attempts.len(), *not_before)
                    }
                };
                match next_wait {
                    Some(wait) => {
                        d.state = DeliveryState::Pending;
                        d.next_attempt_at = Some(after(finished, wait));
                    }
                    None => {
                        d.state = DeliveryState::Failed;
                        d.next_attempt_at = None;
                    }
                }
            })
            .await?;
        let Some(recorded) = recorded else {
            return Ok(None);
        };
        let outcome = match recorded.state {
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Pending => "retrying",
            DeliveryState::Failed => "dead_lettered",
        };
        metrics::counter!(
            "agenthook_delivery_attempts_total",
            "outcome" => outcome,
            "error" => error.map_or("none", ErrorClass::as_str)
        )
        .increment(1);
        metrics::histogram!("agenthook_delivery_attempt_duration_seconds")
            .record(sent.duration.as_secs_f64());
        if recorded.state == DeliveryState::Succeeded {
            let lag = crate::clock::until(delivery.created_at, finished);
            metrics::histogram!("agenthook_event_to_delivery_seconds").record(lag.as_secs_f64());
            if let Some(since_push) = delivery
                .job_id
                .as_ref()
                .and_then(|job| self.inner.signals.pushed.take(job))
            {
                metrics::histogram!("agenthook_upstream_push_to_callback_seconds")
                    .record(since_push.as_secs_f64());
            }
        }
        tracing::info!(
            delivery_id = %delivery.id,
            webhook_id = %delivery.message_id,
            job_id = delivery.job_id.as_ref().map(|j| j.as_str()).unwrap_or(""),
            attempt = recorded.attempts,
            status = status_code,
            error = error.map(ErrorClass::as_str),
            state = recorded.state.as_str(),
            "delivery attempt"
        );
        Ok(Some(AttemptReport {
            delivery_id: delivery.id.to_string(),
            state: recorded.state,
            status_code,
            error,
        }))
    }

    /// Apply `change` to the stored delivery, atomically with its queue entry, and wait until
    /// it is on disk.
    async fn record(
        &self,
        claimed: Claimed,
        change: impl Fn(&mut Delivery) + Send + Sync + 'static,
    ) -> Result<Option<Recorded>, StoreError> {
        crate::memory::note_work(1);
        self.inner
            .store
            .update_claimed(
                claimed,
                Box::new(move |d| {
                    change(d);
                    true
                }),
            )
            .await
    }

    async fn send(
        &self,
        destination: &Destination,
        delivery: &Delivery,
        timestamp: i64,
        signature: String,
        body: Vec<u8>,
    ) -> Sent {
        let started = Instant::now();
        let url = match url::Url::parse(destination.url()) {
            Ok(url) => url,
            Err(_) => return Sent::failed(ErrorClass::Blocked, started),
        };
        if policy::check_literal_host(&url, self.inner.settings.allow_private_networks).is_err() {
            return Sent::failed(ErrorClass::Blocked, started);
        }
        let request = self
            .inner
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", delivery.message_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Sent::failed(policy::classify_error(&e), started),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut kept = Vec::new();
        let mut body_error = None;
        while kept.len() < RESPONSE_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(policy::classify_error(&e));
                    break;
                }
            }
        }
        kept.truncate(RESPONSE_BODY_LIMIT);
        let error = if !status.is_success() {
            Some(ErrorClass::Http)
        } else {
            body_error
        };
        Sent {
            status_code: Some(status.as_u16()),
            error,
            duration: started.elapsed(),
            body: Some(String::from_utf8_lossy(&kept).into_owned()),
            retry_after,
        }
    }

    /// Dispatch until shutdown; then let in-flight attempts finish within the grace period.
    pub async fn run(self, grace: Duration) {
        let signals = self.inner.signals.clone();
        signals.set_delivery_running(true);
        while !signals.is_shutting_down() {
            let dispatched = self.dispatch().await;
            let pause = match dispatched {
                // Storage is failing (its tracker logs that once): look again in a while.
                _ if self.inner.store.current_fault().is_some() => Duration::from_secs(1),
                // Every attempt started wakes the worker when it ends: no need to ask storage
                // when the next delivery is due (a read on the blocking pool) until one has.
                Ok(started) if !started.is_empty() => Duration::from_secs(1),
                Ok(_) => self.idle_for().await,
                Err(error) => {
                    tracing::error!(%error, "delivery dispatch failed");
                    Duration::from_secs(1)
                }
            };
            // Shutdown wakes only a worker already waiting: be one before looking.
            let wake = signals.delivery_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if signals.is_shutting_down() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = wake => {
                    // Attempts end in groups (their records share a round of the writer):
                    // let the others of the group end too, and claim once for all of them.
                    tokio::task::yield_now().await;
                }
            }
        }
        let drained = self
            .inner
            .attempts
            .acquire_many(self.inner.attempt_capacity as u32);
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("deliveries still in flight at the end of the grace period; they will be sent again on the next start");
        }
        signals.set_delivery_running(false);
    }

    /// How long to wait for work, if no attempt ends and nothing new comes meanwhile (both
    /// wake the worker). A queue with no room is not looked at: only an attempt that ends (or
    /// whose response is in) can make room in it, and that wakes the worker.
    async fn idle_for(&self) -> Duration {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut wake = after(now, Duration::from_secs(1));
        for (queue, slots) in [
            (DeliveryQueue::Fresh, &inner.fresh_slots),
            (DeliveryQueue::Retry, &inner.retry_slots),
        ] {
            if self.room(slots) == 0 {
                continue;
            }
            if let Ok(Some(due)) = inner.store.next_delivery_due_at(queue).await {
                wake = wake.min(due);
            }
        }
        crate::clock::until(now, wake).max(Duration::from_millis(2))
    }
}

struct Sent {
    status_code: Option<u16>,
    error: Option<ErrorClass>,
    duration: Duration,
    body: Option<String>,
    /// The `Retry-After` header as sent; [`retry::judge`] reads it.
    retry_after: Option<String>,
}

impl Sent {
    fn failed(error: ErrorClass, started: Instant) -> Sent {
        Sent {
            status_code: None,
            error: Some(error),
            duration: started.elapsed(),
            body: None,
            retry_after: None,
        }
    }

    fn attempt(&self, at: Timestamp) -> Attempt {
        Attempt {
            at,
            status_code: self.status_code,
            error: self.error,
            duration_ms: self.duration.as_millis() as u64,
            response_body: self.body.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;
    use crate::store::test_support::temp_store;

    /// A worker of `concurrency` request slots (so `concurrency / 2` for retries and
    /// `3 × concurrency` attempts not yet recorded).
    fn worker(store: Store, concurrency: usize) -> DeliveryWorker {
        let mut settings =
            crate::config::Settings::load_with_env(None, Vec::<(String, String)>::new())
                .expect("default settings")
                .delivery;
        settings.concurrency = concurrency;
        settings.allow_private_networks = true;
        let signals = Arc::new(Signals::default());
        DeliveryWorker::new(store, crate::clock::system(), settings, signals).unwrap()
    }

    /// `fresh` deliveries due now that were never tried, then `retries` that failed once; to a
    /// closed port on loopback.
    async fn insert_due(store: &Store, fresh: usize, retries: usize) -> Vec<Delivery> {
        let tenant = crate::domain::Tenant::parse("acme").unwrap();
        let now = chrono::Utc::now();
        let deliveries: Vec<Delivery> = (0..fresh + retries)
            .map(|i| {
                let mut delivery = Delivery::new(
                    &Event::test(tenant.clone(), now),
                    None,
                    Destination::Callback {
                        url: "http://127.0.0.1:9/cb".into(),
                    },
                    now,
                );
                if i >= fresh {
                    delivery.attempts.push(Attempt {
                        at: now,
                        status_code: Some(500),
                        error: Some(ErrorClass::Http),
                        duration_ms: 1,
                        response_body: None,
                    });
                }
                delivery
            })
            .collect();
        store.insert_deliveries(deliveries.clone()).await.unwrap();
        deliveries
    }

    #[tokio::test]
    async fn attempts_never_exceed_the_bound_and_first_attempts_go_first() {
        let (store, _dir) = temp_store();
        let deliveries = insert_due(&store, 3, 3).await;
        let worker = worker(store, 4);
        // Ten of the twelve attempts are waiting for the writer: room for two more in all.
        let held = worker
            .inner
            .attempts
            .clone()
            .try_acquire_many_owned(10)
            .unwrap();

        let started = worker.dispatch().await.unwrap();
        assert_eq!(started.len(), 2, "no more attempts than the bound leaves");
        assert_eq!(worker.inner.attempts.available_permits(), 0);
        let first: Vec<String> = deliveries[..3].iter().map(|d| d.id.to_string()).collect();
        for outcome in join_all(started).await {
            let report = outcome.unwrap().unwrap().expect("the attempt is recorded");
            assert!(first.contains(&report.delivery_id), "{report:?}");
        }
        assert_eq!(worker.inner.attempts.available_permits(), 2);
        drop(held);
    }
}
