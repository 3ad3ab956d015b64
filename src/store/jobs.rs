//! Jobs, their scheduler queue, the agent-id index and idempotency records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::writer::{Tx, TxResult};
use super::{decode, decode_tx, encode, keys, tx_result, Result, Store, StoreError};
use crate::clock::Timestamp;
use crate::domain::{Delivery, Job, JobId, JobStatus, Tenant};

/// What the scheduler does next with a pending job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkKind {
    /// Hand the job to upstream (it has no agent id yet).
    Submit,
    /// Ask upstream how the agent is doing.
    Poll,
}

impl WorkKind {
    fn tag(self) -> u8 {
        match self {
            WorkKind::Submit => b's',
            WorkKind::Poll => b'p',
        }
    }

    fn of(job: &Job) -> Option<WorkKind> {
        match job.status {
            JobStatus::Submitting => Some(WorkKind::Submit),
            JobStatus::Processing => Some(WorkKind::Poll),
            _ => None,
        }
    }
}

fn due_key(job: &Job) -> Option<Vec<u8>> {
    let kind = WorkKind::of(job)?;
    let at = job.next_poll_at?;
    Some(keys::timed(kind.tag(), at, job.id.as_str()))
}

/// An `Idempotency-Key` with the fingerprint of the request that carried it.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// The first answer given for an idempotency key, replayed as it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    pub status: u16,
    pub body: Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IdempotencyRecord {
    fingerprint: String,
    job_id: JobId,
    response: Option<IdempotentResponse>,
    created_at: Timestamp,
}

/// Idempotency keys whose first request is still being answered, with its job and start.
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<HeldKeys>>);

/// Idempotency tree key → the job admitted with it and when.
type HeldKeys = HashMap<Vec<u8>, (JobId, Timestamp)>;

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeldKeys> {
        // The map is only ever left consistent: a panic elsewhere does not poison its use.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An idempotency key held for the request that is admitting a job; released when dropped,
/// which the request does once the key's record is stored (or the request has failed).
#[derive(Debug)]
pub struct KeyHold {
    slot: Option<(InFlight, Vec<u8>)>,
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        if let Some((held, key)) = self.slot.take() {
            held.lock().remove(&key);
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

/// The outcome of asking to create a job.
#[derive(Debug)]
pub enum Admission {
    /// Go on and submit it; the key (if any) is held until the hold is dropped.
    Created(KeyHold),
    /// The key was used before with the same body: answer this.
    Replay(IdempotentResponse),
    /// The key's first request has not been answered yet.
    InFlight { job_id: JobId, since: Timestamp },
    /// The key was used before with another body.
    Mismatch,
}

#[derive(Clone, Debug)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// The cursor for the next page, when there is one.
    pub next: Option<JobId>,
}

/// How a `DELETE` ended.
#[derive(Clone, Debug)]
pub enum Cancellation {
    Cancelled(Job),
    AlreadyFinished(Job),
    NotFound,
}

impl Store {
    /// Start admitting a new job: settle its idempotency key without writing anything. A live
    /// key (younger than `key_ttl`) short-circuits; otherwise the key is held in memory until
    /// the returned [`KeyHold`] is dropped, and a second request with it meanwhile is told
    /// [`Admission::InFlight`]. Nothing is stored until [`Store::accept_job`] (or
    /// [`Store::hold_job`], when upstream is slow to answer).
    ///
    /// Holding keys in memory is sound because one process at a time opens a sled database.
    pub fn begin_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        key_ttl: std::time::Duration,
    ) -> Result<Admission> {
        let Some(request) = idempotency else {
            return Ok(Admission::Created(KeyHold { slot: None }));
        };
        let key = keys::idempotency(job.tenant.as_str(), &request.key);
        let mut held = self.in_flight.lock();
        if let Some((job_id, since)) = held.get(&key) {
            return Ok(Admission::InFlight {
                job_id: job_id.clone(),
                since: *since,
            });
        }
        if let Some(raw) = self.idempotency.get(&key)? {
            let record: IdempotencyRecord = decode(&raw)?;
            if crate::clock::after(record.created_at, key_ttl) > job.created_at {
                return Ok(if record.fingerprint != request.fingerprint {
                    Admission::Mismatch
                } else if let Some(response) = record.response {
                    Admission::Replay(response)
                } else {
                    Admission::InFlight {
                        job_id: record.job_id,
                        since: record.created_at,
                    }
                });
            }
        }
        held.insert(key.clone(), (job.id.clone(), job.created_at));
        drop(held);
        Ok(Admission::Created(KeyHold {
            slot: Some((self.in_flight.clone(), key)),
        }))
    }

    /// Store a pending job durably, with the idempotency record of its key marked in flight:
    /// the poller takes the job over at its `next_poll_at` if no one saves it before.
    pub async fn hold_job(&self, job: &Job, idempotency: Option<&IdempotencyKey>) -> Result<()> {
        let job = job.clone();
        let bytes = encode(&job);
        let record = idempotency.map(|k| idempotency_entry(&job, k, None));
        self.writer
            .write(move |tx| {
                if let Some((key, record)) = &record {
                    tx.idempotency.insert(key.as_slice(), record.as_slice())?;
                }
                let old = stored_job(tx.jobs, &job.id)?;
                put_job(tx, old.as_ref(), &job, &bytes)
            })
            .await
    }

    /// Store a job that upstream accepted (or that will be submitted in the background), with
    /// the answer its idempotency key replays, durably. Returns `false`, writing nothing, when
    /// the job was held and has meanwhile ended (cancelled): the cancellation stands.
    ///
    /// `held` says whether [`Store::hold_job`] stored it before; a job never held is new to
    /// storage, and nobody else knows its id yet.
    pub async fn accept_job(
        &self,
        job: Job,
        held: bool,
        idempotency: Option<(IdempotencyKey, IdempotentResponse)>,
    ) -> Result<bool> {
        let bytes = encode(&job);
        let record = idempotency.map(|(k, response)| idempotency_entry(&job, &k, Some(response)));
        self.writer
            .write(move |tx| {
                let old = if held {
                    stored_job(tx.jobs, &job.id)?
                } else {
                    None
                };
                if old.as_ref().is_some_and(|old| !old.is_pending()) {
                    return Ok(false);
                }
                put_job(tx, old.as_ref(), &job, &bytes)?;
                if let Some((key, record)) = &record {
                    tx.idempotency.insert(key.as_slice(), record.as_slice())?;
                }
                Ok(true)
            })
            .await
    }

    /// Keep nothing of a job that will not run (upstream refused it, or a synchronous caller
    /// could not be answered), durably. With `response`, that answer is what the key replays;
    /// without, the key is released so the client may try again.
    pub async fn refuse_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        response: Option<&IdempotentResponse>,
    ) -> Result<()> {
        let (id, tenant) = (job.id.clone(), job.tenant.clone());
        // With an answer to replay, the key's record; without, only its key (to release it).
        let record = idempotency.map(|k| match response {
            Some(response) => {
                let (key, record) = idempotency_entry(job, k, Some(response.clone()));
                (key, Some(record))
            }
            None => (keys::idempotency(tenant.as_str(), &k.key), None),
        });
        self.writer
            .write(move |tx| {
                if let Some(stored) = stored_job(tx.jobs, &id)? {
                    tx.jobs.remove(id.as_str())?;
                    if let Some(key) = due_key(&stored) {
                        tx.due.remove(key)?;
                    }
                    if let Some(agent) = &stored.agent_id {
                        tx.index.remove(keys::agent(agent))?;
                    }
                    tx.index.remove(keys::owned(
                        keys::TENANT_JOBS,
                        tenant.as_str(),
                        id.as_str(),
                    ))?;
                }
                match &record {
                    Some((key, Some(record))) => {
                        tx.idempotency.insert(key.as_slice(), record.as_slice())?;
                    }
                    Some((key, None)) => {
                        // Only this job's own record: a held key is ours alone.
                        if let Some(raw) = tx.idempotency.get(key)? {
                            let stored: IdempotencyRecord = decode_tx(&raw)?;
                            if stored.job_id == id {
                                tx.idempotency.remove(key.as_slice())?;
                            }
                        }
                    }
                    None => {}
                }
                Ok(())
            })
            .await
    }

    /// Save a pending job's progress, moving its queue entry. Returns `false`, writing nothing,
    /// when the stored job has meanwhile ended (cancelled, say): the caller's news is stale.
    pub fn save_job(&self, job: &Job) -> Result<bool> {
        let job_bytes = encode(job);
        let result = (&self.jobs, &self.index, &self.due).transaction(|(jobs, index, due)| {
            let Some(stored) = pending_stored(jobs, &job.id)? else {
                return Ok(false);
            };
            write_indexes(index, due, Some(&stored), job)?;
            jobs.insert(job.id.as_str(), job_bytes.as_slice())?;
            Ok(true)
        });
        tx_result(result)
    }

    /// The outbox: a job's terminal state and the deliveries it causes, in one transaction.
    /// Returns `false`, writing nothing, when the job had already ended.
    pub fn complete_job(&self, job: &Job, deliveries: &[Delivery]) -> Result<bool> {
        debug_assert!(job.status.is_terminal());
        let job_bytes = encode(job);
        let encoded: Vec<Vec<u8>> = deliveries
            .iter()
            .map(super::record::encode_delivery)
            .collect();
        let result = (
            &self.jobs,
            &self.index,
            &self.due,
            &self.deliveries,
            &self.events,
            &self.queue,
        )
            .transaction(|(jobs, index, due, delivery_tree, events, queue)| {
                let Some(stored) = pending_stored(jobs, &job.id)? else {
                    return Ok(false);
                };
                write_indexes(index, due, Some(&stored), job)?;
                jobs.insert(job.id.as_str(), job_bytes.as_slice())?;
                let trees = super::deliveries::DeliveryTrees {
                    deliveries: delivery_tree,
                    events,
                    index,
                    queue,
                };
                super::deliveries::insert_deliveries_tx(&trees, deliveries, &encoded)?;
                Ok(true)
            });
        tx_result(result)
    }

    /// Cancel a tenant's job: no more polls, no events.
    pub fn cancel_job(&self, tenant: &Tenant, id: &JobId, now: Timestamp) -> Result<Cancellation> {
        let result = (&self.jobs, &self.index, &self.due).transaction(|(jobs, index, due)| {
            let Some(raw) = jobs.get(id.as_str())? else {
                return Ok(Cancellation::NotFound);
            };
            let stored: Job = decode_tx(&raw)?;
            if &stored.tenant != tenant {
                return Ok(Cancellation::NotFound);
            }
            if stored.status.is_terminal() {
                return Ok(Cancellation::AlreadyFinished(stored));
            }
            let mut job = stored.clone();
            job.finish(JobStatus::Cancelled, None, now);
            write_indexes(index, due, Some(&stored), &job)?;
            jobs.insert(id.as_str(), encode(&job))?;
            Ok(Cancellation::Cancelled(job))
        });
        tx_result(result)
    }

    /// A job of this tenant; another tenant's job is as good as absent.
    pub fn job(&self, tenant: &Tenant, id: &JobId) -> Result<Option<Job>> {
        Ok(self.job_by_id(id)?.filter(|job| &job.tenant == tenant))
    }

    pub fn job_by_id(&self, id: &JobId) -> Result<Option<Job>> {
        self.jobs
            .get(id.as_str())?
            .map(|raw| decode(&raw))
            .transpose()
    }

    /// The job that tracks an upstream agent, whichever tenant owns it.
    pub fn job_by_agent(&self, agent_id: &str) -> Result<Option<Job>> {
        let Some(id) = self.index.get(keys::agent(agent_id))? else {
            return Ok(None);
        };
        let id = std::str::from_utf8(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.jobs.get(id)?.map(|raw| decode(&raw)).transpose()
    }

    /// A tenant's jobs, newest first, optionally of one status, after the cursor `after`.
    pub fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<JobPage> {
        let prefix = keys::owner_prefix(keys::TENANT_JOBS, tenant.as_str());
        let upper = match after {
            Some(id) => keys::owned(keys::TENANT_JOBS, tenant.as_str(), id.as_str()),
            None => {
                let mut end = prefix.clone();
                *end.last_mut().expect("prefix ends with a separator") += 1;
                end
            }
        };
        let mut jobs = Vec::with_capacity(limit.min(256));
        let mut next = None;
        for entry in self.index.range(prefix.as_slice()..upper.as_slice()).rev() {
            let (key, _) = entry?;
            let Some(id) = keys::last_part(&key) else {
                continue;
            };
            let Some(raw) = self.jobs.get(id)? else {
                continue;
            };
            let job: Job = decode(&raw)?;
            if status.is_some_and(|s| s != job.status) {
                continue;
            }
            if jobs.len() == limit {
                next = jobs.last().map(|j: &Job| j.id.clone());
                break;
            }
            jobs.push(job);
        }
        Ok(JobPage { jobs, next })
    }

    /// Claim up to `limit` jobs of `kind` due at `now`. Each claimed job's queue entry moves
    /// to `lease_until`, so no one else takes it meanwhile, and it comes back by itself if the
    /// claimer never reports.
    pub fn claim_due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>> {
        let mut claimed = Vec::new();
        for entry in super::due_entries(&self.due, kind.tag(), now) {
            if claimed.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            let Some((_, id)) = keys::parse_timed(&key) else {
                continue;
            };
            let id = id.to_owned();
            let result = (&self.jobs, &self.due).transaction(|(jobs, due)| {
                if due.get(&key)?.is_none() {
                    return Ok(None);
                }
                let Some(raw) = jobs.get(id.as_str())? else {
                    due.remove(&key)?;
                    return Ok(None);
                };
                let mut job: Job = decode_tx(&raw)?;
                due.remove(&key)?;
                if due_key(&job).as_deref() != Some(&key[..]) {
                    // A stray entry (its job moved on): drop it, the job has its own.
                    return Ok(None);
                }
                job.next_poll_at = Some(lease_until);
                if let Some(new_key) = due_key(&job) {
                    due.insert(new_key, &[])?;
                }
                jobs.insert(id.as_str(), encode(&job))?;
                Ok(Some(job))
            });
            if let Some(job) = tx_result(result)? {
                claimed.push(job);
            }
        }
        Ok(claimed)
    }

    /// When the earliest job of `kind` is due, if any is pending.
    pub fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>> {
        let Some((key, _)) = self.due.scan_prefix([kind.tag()]).next().transpose()? else {
            return Ok(None);
        };
        Ok(keys::parse_timed(&key)
            .and_then(|(ms, _)| chrono::DateTime::from_timestamp_millis(ms as i64)))
    }

    /// How many jobs of `kind` are queued, and how many of those are due at `now`.
    pub fn count_queued(&self, kind: WorkKind, now: Timestamp) -> Result<(usize, usize)> {
        let end = keys::timed_upper(kind.tag(), now);
        let mut total = 0;
        let mut due = 0;
        for entry in self.due.scan_prefix([kind.tag()]) {
            let (key, _) = entry?;
            total += 1;
            if key.as_ref() < end.as_slice() {
                due += 1;
            }
        }
        Ok((total, due))
    }

    /// Drop idempotency records older than `ttl`.
    pub fn purge_idempotency(&self, now: Timestamp, ttl: std::time::Duration) -> Result<usize> {
        let mut purged = 0;
        for entry in self.idempotency.iter() {
            let (key, raw) = entry?;
            let record: IdempotencyRecord = decode(&raw)?;
            if crate::clock::after(record.created_at, ttl) <= now {
                self.idempotency
                    .compare_and_swap(&key, Some(raw), None::<&[u8]>)?
                    .ok();
                purged += 1;
            }
        }
        Ok(purged)
    }
}

/// The idempotency record of `key` for `job`: its tree key and encoded value.
fn idempotency_entry(
    job: &Job,
    key: &IdempotencyKey,
    response: Option<IdempotentResponse>,
) -> (Vec<u8>, Vec<u8>) {
    let record = IdempotencyRecord {
        fingerprint: key.fingerprint.clone(),
        job_id: job.id.clone(),
        response,
        created_at: job.created_at,
    };
    (
        keys::idempotency(job.tenant.as_str(), &key.key),
        encode(&record),
    )
}

/// Write `job` (encoded as `bytes`) over `old`, the version storage had, if any: the record,
/// its queue entry, its agent index and, for a new job, its tenant's listing.
fn put_job(tx: &Tx<'_>, old: Option<&Job>, job: &Job, bytes: &[u8]) -> TxResult<()> {
    if old.is_none() {
        tx.index.insert(
            keys::owned(keys::TENANT_JOBS, job.tenant.as_str(), job.id.as_str()),
            &[],
        )?;
    }
    write_indexes(tx.index, tx.due, old, job)?;
    tx.jobs.insert(job.id.as_str(), bytes)?;
    Ok(())
}

fn stored_job(jobs: &TransactionalTree, id: &JobId) -> TxResult<Option<Job>> {
    jobs.get(id.as_str())?
        .map(|raw| decode_tx(&raw))
        .transpose()
}

fn pending_stored(jobs: &TransactionalTree, id: &JobId) -> TxResult<Option<Job>> {
    Ok(stored_job(jobs, id)?.filter(Job::is_pending))
}

/// Move the job's queue entry and agent index from what `old` had to what `job` has.
fn write_indexes(
    index: &TransactionalTree,
    due: &TransactionalTree,
    old: Option<&Job>,
    job: &Job,
) -> TxResult<()> {
    let old_due = old.and_then(due_key);
    let new_due = due_key(job);
    if old_due != new_due {
        if let Some(key) = old_due {
            due.remove(key)?;
        }
        if let Some(key) = &new_due {
            due.insert(key.as_slice(), &[])?;
        }
    }
    if let Some(agent) = &job.agent_id {
        if old.and_then(|o| o.agent_id.as_ref()) != Some(agent) {
            index.insert(keys::agent(agent), job.id.as_str())?;
        }
    }
    Ok(())
}

// Upstream push (issue 14): additive, used by the poller for push-triggered reads.
impl Store {
    /// Claim one pending `processing` job for a status read now, wherever its queue entry is
    /// (a push made it due): its entry moves to `lease_until`, as [`Store::claim_due_jobs`]
    /// does. `None` when the job is unknown, ended, or not polled yet (still submitting).
    pub fn claim_job_for_poll(&self, id: &JobId, lease_until: Timestamp) -> Result<Option<Job>> {
        let result = (&self.jobs, &self.index, &self.due).transaction(|(jobs, index, due)| {
            let Some(stored) = pending_stored(jobs, id)? else {
                return Ok(None);
            };
            if WorkKind::of(&stored) != Some(WorkKind::Poll) {
                return Ok(None);
            }
            let mut job = stored.clone();
            job.next_poll_at = Some(lease_until);
            write_indexes(index, due, Some(&stored), &job)?;
            jobs.insert(id.as_str(), encode(&job))?;
            Ok(Some(job))
        });
        tx_result(result)
    }

    /// Move up to `limit` queued polls due after `later_than` to the time `to` gives each
    /// (which must be at or before `later_than`, or the same jobs come back). Returns how many
    /// moved. Used when upstream pushes stop arriving, to undo the slowed cadence.
    pub fn pull_in_polls(
        &self,
        later_than: Timestamp,
        limit: usize,
        to: impl Fn(&Job) -> Timestamp,
    ) -> Result<usize> {
        let start = keys::timed_upper(WorkKind::Poll.tag(), later_than);
        let end = [WorkKind::Poll.tag() + 1];
        let mut moved = 0;
        for entry in self.due.range(start.as_slice()..end.as_slice()) {
            if moved >= limit {
                break;
            }
            let (key, _) = entry?;
            let Some((_, id)) = keys::parse_timed(&key) else {
                continue;
            };
            let id = id.to_owned();
            let result = (&self.jobs, &self.index, &self.due).transaction(|(jobs, index, due)| {
                let Some(raw) = jobs.get(id.as_str())? else {
                    return Ok(false);
                };
                let stored: Job = decode_tx(&raw)?;
                if due_key(&stored).as_deref() != Some(&key[..]) {
                    return Ok(false);
                }
                let mut job = stored.clone();
                job.next_poll_at = Some(to(&stored).min(later_than));
                write_indexes(index, due, Some(&stored), &job)?;
                jobs.insert(id.as_str(), encode(&job))?;
                Ok(true)
            });
            moved += usize::from(tx_result(result)?);
        }
        Ok(moved)
    }
}
