//! Jobs, their scheduler queue, the agent-id index and idempotency records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionalTree;

use super::writer::{Tx, TxResult};
use super::{decode, decode_tx, encode, keys, Result, SledStore, StoreError};
use crate::clock::Timestamp;
use crate::domain::{Delivery, Job, JobId, JobStatus, Tenant};
use crate::store::{
    Admission, Cancellation, IdempotencyKey, IdempotentResponse, JobPage, JobTime, KeyHold,
    WorkKind,
};

fn work_tag(kind: WorkKind) -> u8 {
    match kind {
        WorkKind::Submit => b's',
        WorkKind::Poll => b'p',
    }
}

/// The value of a job's entry in `due` while a claim holds it (a lease: the entry sits at the
/// lease's end); a scheduled entry's value is empty, and every other write of the job writes
/// its entry empty. Only one process opens a sled directory, so at the start of the next one a
/// marked entry is a lease whose holder is gone ([`SledStore::leased_between`]).
const LEASED: &[u8] = b"leased";

fn due_key(job: &Job) -> Option<Vec<u8>> {
    let kind = WorkKind::of(job)?;
    let at = job.next_poll_at?;
    Some(keys::timed(work_tag(kind), at, job.id.as_str()))
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

/// What a [`KeyHold`] holds: a key of [`InFlight`], released when dropped.
struct HeldKey {
    held: InFlight,
    key: Vec<u8>,
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        self.held.lock().remove(&self.key);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

impl SledStore {
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
            return Ok(Admission::Created(KeyHold::none()));
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
        Ok(Admission::Created(KeyHold::new(HeldKey {
            held: self.in_flight.clone(),
            key,
        })))
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
                        tx.remove_due(&key)?;
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
    pub async fn save_job(&self, job: &Job) -> Result<bool> {
        let job = job.clone();
        let bytes = encode(&job);
        self.writer
            .write(move |tx| {
                let Some(stored) = pending_stored(tx.jobs, &job.id)? else {
                    return Ok(false);
                };
                put_job(tx, Some(&stored), &job, &bytes)?;
                Ok(true)
            })
            .await
    }

    /// The outbox: a job's terminal state and the deliveries it causes, in one transaction.
    /// Returns `false`, writing nothing, when the job had already ended.
    pub async fn complete_job(&self, job: &Job, deliveries: Vec<Delivery>) -> Result<bool> {
        debug_assert!(job.status.is_terminal());
        let job = job.clone();
        let bytes = encode(&job);
        let encoded = super::record::encode_new(&deliveries);
        self.writer
            .write_rows(deliveries.len() + 1, move |tx| {
                let Some(stored) = pending_stored(tx.jobs, &job.id)? else {
                    return Ok(false);
                };
                put_job(tx, Some(&stored), &job, &bytes)?;
                super::deliveries::insert_deliveries_tx(tx, &deliveries, &encoded)?;
                Ok(true)
            })
            .await
    }

    /// Cancel a tenant's job: no more polls, no events.
    pub async fn cancel_job(
        &self,
        tenant: &Tenant,
        id: &JobId,
        now: Timestamp,
    ) -> Result<Cancellation> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.writer
            .write(move |tx| {
                let Some(stored) = stored_job(tx.jobs, &id)? else {
                    return Ok(Cancellation::NotFound);
                };
                if stored.tenant != tenant {
                    return Ok(Cancellation::NotFound);
                }
                if stored.status.is_terminal() {
                    return Ok(Cancellation::AlreadyFinished(stored));
                }
                let mut job = stored.clone();
                job.finish(JobStatus::Cancelled, None, now);
                put_job(tx, Some(&stored), &job, &encode(&job))?;
                Ok(Cancellation::Cancelled(job))
            })
            .await
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

    /// The ids of up to `limit` jobs of `kind` due at `now`, with their queue entries.
    pub fn due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String)>> {
        let mut found = Vec::new();
        for entry in super::due_entries(&self.due, work_tag(kind), now).take(limit) {
            let (key, _) = entry?;
            if let Some((_, id)) = keys::parse_timed(&key) {
                let id = id.to_owned();
                found.push((key.to_vec(), id));
            }
        }
        Ok(found)
    }

    /// Claim the jobs whose queue entries [`SledStore::due_jobs`] found, in one write. Each
    /// claimed job's queue entry moves to `lease_until`, so no one else takes it meanwhile,
    /// and it comes back by itself if the claimer never reports.
    pub async fn claim_jobs(
        &self,
        entries: Vec<(Vec<u8>, String)>,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>> {
        self.writer
            .write_rows(entries.len(), move |tx| {
                let mut claimed = Vec::with_capacity(entries.len());
                for (key, id) in &entries {
                    if tx.due.get(key)?.is_none() {
                        continue;
                    }
                    let Some(stored) = job_of_entry(tx, key, id)? else {
                        // A stray entry (its job gone, or moved on): drop it.
                        tx.remove_due(key)?;
                        continue;
                    };
                    let mut job = stored.clone();
                    job.next_poll_at = Some(lease_until);
                    put_leased(tx, &stored, &job)?;
                    claimed.push(job);
                }
                Ok(claimed)
            })
            .await
    }

    /// The polls leased by a claim that end after `now` and at or before `horizon`, with
    /// their job ids. Submissions are left to their leases: a generate call is not a read, and
    /// the one the stopped process made may still be under way upstream.
    pub fn leased_between(
        &self,
        now: Timestamp,
        horizon: Timestamp,
    ) -> Result<Vec<(Vec<u8>, String)>> {
        let tag = work_tag(WorkKind::Poll);
        let range = keys::timed_upper(tag, now)..keys::timed_upper(tag, horizon);
        let mut found = Vec::new();
        for entry in self.due.range(range) {
            let (key, value) = entry?;
            if &value[..] != LEASED {
                continue;
            }
            if let Some((_, id)) = keys::parse_timed(&key) {
                found.push((key.to_vec(), id.to_owned()));
            }
        }
        Ok(found)
    }

    /// Make the jobs of these leased entries ([`SledStore::leased_between`]) due at `now`:
    /// their claims were made by a process that has stopped. An entry no longer leased (its
    /// job has moved on) is left alone. How many were released.
    pub async fn release_leased(
        &self,
        leased: Vec<(Vec<u8>, String)>,
        now: Timestamp,
    ) -> Result<usize> {
        self.writer
            .write_rows(leased.len(), move |tx| {
                let mut released = 0;
                for (key, id) in &leased {
                    if tx.due.get(key)?.as_deref() != Some(LEASED) {
                        continue;
                    }
                    let Some(stored) = job_of_entry(tx, key, id)? else {
                        continue;
                    };
                    let mut job = stored.clone();
                    job.next_poll_at = Some(now);
                    put_job(tx, Some(&stored), &job, &encode(&job))?;
                    released += 1;
                }
                Ok(released)
            })
            .await
    }

    /// When the earliest job of `kind` is due, if any is pending.
    pub fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>> {
        let Some((key, _)) = self.due.scan_prefix([work_tag(kind)]).next().transpose()? else {
            return Ok(None);
        };
        Ok(keys::parse_timed(&key)
            .and_then(|(ms, _)| chrono::DateTime::from_timestamp_millis(ms as i64)))
    }

    /// How many jobs of `kind` are due at `now`, counting at most `cap`.
    pub fn count_due(&self, kind: WorkKind, now: Timestamp, cap: usize) -> Result<usize> {
        let mut due = 0;
        for entry in super::due_entries(&self.due, work_tag(kind), now).take(cap) {
            entry?;
            due += 1;
        }
        Ok(due)
    }

    /// The keys of up to `limit` idempotency records older than `ttl` at `now`.
    pub fn expired_idempotency(
        &self,
        now: Timestamp,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut expired = Vec::new();
        for entry in self.idempotency.iter() {
            if expired.len() >= limit {
                break;
            }
            let (key, raw) = entry?;
            let record: IdempotencyRecord = decode(&raw)?;
            if crate::clock::after(record.created_at, ttl) <= now {
                expired.push(key.to_vec());
            }
        }
        Ok(expired)
    }

    /// Remove the idempotency records `keys` that are still older than `ttl` at `now`, in one
    /// write; returns how many went.
    pub async fn remove_idempotency(
        &self,
        keys: Vec<Vec<u8>>,
        now: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<usize> {
        self.writer
            .write_rows(keys.len(), move |tx| {
                let mut removed = 0;
                for key in &keys {
                    let Some(raw) = tx.idempotency.get(key)? else {
                        continue;
                    };
                    let record: IdempotencyRecord = decode_tx(&raw)?;
                    if crate::clock::after(record.created_at, ttl) <= now {
                        tx.idempotency.remove(key.as_slice())?;
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .await
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
    put_job_as(tx, old, job, bytes, &[])
}

/// [`put_job`] with `due_value` as the value of its entry in `due`.
fn put_job_as(
    tx: &Tx<'_>,
    old: Option<&Job>,
    job: &Job,
    bytes: &[u8],
    due_value: &[u8],
) -> TxResult<()> {
    if old.is_none() {
        tx.index.insert(
            keys::owned(keys::TENANT_JOBS, job.tenant.as_str(), job.id.as_str()),
            &[],
        )?;
    }
    put_job_due(tx, old, job, due_value)?;
    if let Some(agent) = &job.agent_id {
        if old.and_then(|o| o.agent_id.as_ref()) != Some(agent) {
            tx.index.insert(keys::agent(agent), job.id.as_str())?;
        }
    }
    tx.jobs.insert(job.id.as_str(), bytes)?;
    Ok(())
}

/// [`put_job`] for a claim: `job` is `stored` leased, its entry marked [`LEASED`].
fn put_leased(tx: &Tx<'_>, stored: &Job, job: &Job) -> TxResult<()> {
    put_job_as(tx, Some(stored), job, &encode(job), LEASED)
}

/// Move the job's entry in `due` from where `old` had it to where `job` has it, with `value`
/// (written again when the place is the same: a lease's mark never outlives its lease).
fn put_job_due(tx: &Tx<'_>, old: Option<&Job>, job: &Job, value: &[u8]) -> TxResult<()> {
    let new_due = due_key(job);
    if let Some(key) = old
        .and_then(due_key)
        .filter(|old| Some(old) != new_due.as_ref())
    {
        tx.remove_due(&key)?;
    }
    match new_due {
        Some(key) => tx.put_due(&key, value),
        None => Ok(()),
    }
}

/// Job `id`, if its entry in `due` is `key`: `None` when the job is gone or its entry is now
/// elsewhere (`key` is a stray).
fn job_of_entry(tx: &Tx<'_>, key: &[u8], id: &str) -> TxResult<Option<Job>> {
    let stored = stored_job(tx.jobs, &JobId::from_stored(id.to_owned()))?;
    Ok(stored.filter(|job| due_key(job).as_deref() == Some(key)))
}

fn stored_job(jobs: &TransactionalTree, id: &JobId) -> TxResult<Option<Job>> {
    jobs.get(id.as_str())?
        .map(|raw| decode_tx(&raw))
        .transpose()
}

fn pending_stored(jobs: &TransactionalTree, id: &JobId) -> TxResult<Option<Job>> {
    Ok(stored_job(jobs, id)?.filter(Job::is_pending))
}

// Upstream push: a job made due by a push, and the cadence pulled back when pushes stop.
impl SledStore {
    /// Claim one pending `processing` job for a status read now, wherever its queue entry is
    /// (a push made it due): its entry moves to `lease_until`, as a claim of due jobs does.
    /// `None` when the job is unknown, ended, or not polled yet (still submitting).
    pub async fn claim_job_for_poll(
        &self,
        id: &JobId,
        lease_until: Timestamp,
    ) -> Result<Option<Job>> {
        let id = id.clone();
        self.writer
            .write(move |tx| {
                let Some(stored) = pending_stored(tx.jobs, &id)? else {
                    return Ok(None);
                };
                if WorkKind::of(&stored) != Some(WorkKind::Poll) {
                    return Ok(None);
                }
                let mut job = stored.clone();
                job.next_poll_at = Some(lease_until);
                put_leased(tx, &stored, &job)?;
                Ok(Some(job))
            })
            .await
    }

    /// The queue entries of up to `limit` polls due after `later_than`, with their job ids.
    pub fn polls_due_after(
        &self,
        later_than: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String)>> {
        let tag = work_tag(WorkKind::Poll);
        let start = keys::timed_upper(tag, later_than);
        let end = [tag + 1];
        let mut found = Vec::new();
        for entry in self.due.range(start.as_slice()..end.as_slice()).take(limit) {
            let (key, _) = entry?;
            if let Some((_, id)) = keys::parse_timed(&key) {
                let id = id.to_owned();
                found.push((key.to_vec(), id));
            }
        }
        Ok(found)
    }

    /// Move the polls [`SledStore::polls_due_after`] found to the time `to` gives each (at the
    /// latest `later_than`), in one write; a job that moved on meanwhile is left as it is.
    /// Returns how many moved.
    pub async fn pull_in(
        &self,
        entries: Vec<(Vec<u8>, String)>,
        later_than: Timestamp,
        to: JobTime,
    ) -> Result<usize> {
        self.writer
            .write_rows(entries.len(), move |tx| {
                let mut moved = 0;
                for (key, id) in &entries {
                    let Some(stored) = stored_job(tx.jobs, &JobId::from_stored(id.clone()))? else {
                        continue;
                    };
                    if due_key(&stored).as_deref() != Some(&key[..]) {
                        continue;
                    }
                    let mut job = stored.clone();
                    job.next_poll_at = Some(to(&stored).min(later_than));
                    put_job(tx, Some(&stored), &job, &encode(&job))?;
                    moved += 1;
                }
                Ok(moved)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::after;
    use crate::store::sled::test_support::{reopen, temp_store};
    use crate::store::Storage;

    /// A job accepted upstream, first polled at `first_poll`.
    async fn processing(store: &SledStore, agent: &str, first_poll: Timestamp) -> Job {
        let now = chrono::Utc::now();
        let mut job = Job::new(
            Tenant::parse("acme").unwrap(),
            Default::default(),
            None,
            Default::default(),
            now,
        );
        job.accepted(agent.into(), first_poll, now);
        assert!(Storage::accept_job(store, job.clone(), false, None)
            .await
            .unwrap());
        job
    }

    fn due_ids(store: &SledStore, at: Timestamp) -> Vec<String> {
        store
            .due_jobs(WorkKind::Poll, at, 10)
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    #[tokio::test]
    async fn leases_of_a_stopped_process_are_released_at_the_next_start_and_schedules_are_not() {
        let (store, dir) = temp_store();
        let now = chrono::Utc::now();
        let lease = Duration::from_secs(60);
        let leased = processing(&store, "A1", now).await;
        let scheduled = processing(&store, "A2", after(now, Duration::from_secs(30))).await;
        let polled = processing(&store, "A3", now).await;
        let on_time = processing(&store, "A4", now).await;
        let claimed = Storage::claim_due_jobs(&store, WorkKind::Poll, now, 10, after(now, lease))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3, "A1, A3 and A4 were due");
        let answer = |job: &Job, next: Timestamp| {
            let mut answered = claimed
                .iter()
                .find(|j| j.id == job.id)
                .expect("claimed")
                .clone();
            answered.next_poll_at = Some(next);
            answered
        };
        // A3's poll is answered: it is scheduled again, no longer leased. So is A4's, due
        // again exactly when its lease would have ended: the same entry, no longer leased.
        let a3 = answer(&polled, after(now, Duration::from_secs(45)));
        Storage::save_job(&store, &a3).await.unwrap();
        let a4 = answer(&on_time, after(now, lease));
        Storage::save_job(&store, &a4).await.unwrap();
        assert_eq!(
            due_ids(&store, after(now, Duration::from_secs(59))).len(),
            2,
            "A1 is leased past 59 s"
        );

        // The process stops with A1's claim open; the next one opens the directory.
        drop(store);
        let store = reopen(dir.path());
        let later = after(now, Duration::from_secs(1));
        let released = Storage::release_leases(&store, later, after(later, lease))
            .await
            .unwrap();
        assert_eq!(released, 1, "only A1 is still leased");
        assert_eq!(due_ids(&store, later), vec![leased.id.to_string()]);
        assert_eq!(
            Storage::next_due_at(&store, WorkKind::Poll)
                .await
                .unwrap()
                .map(|t| t.timestamp_millis()),
            Some(later.timestamp_millis()),
            "due now, not at the lease's end"
        );
        let by_45s = due_ids(&store, after(now, Duration::from_secs(45)));
        assert_eq!(
            by_45s.len(),
            3,
            "A2 at 30 s and A3 at 45 s keep their schedules"
        );
        assert!(by_45s.contains(&scheduled.id.to_string()));
        assert_eq!(
            Storage::release_leases(&store, later, after(later, lease))
                .await
                .unwrap(),
            0,
            "a released lease is a schedule like any other"
        );
    }
}
