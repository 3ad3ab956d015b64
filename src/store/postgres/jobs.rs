//! Jobs, their claims and idempotency keys.

use sqlx::{Postgres, Row, Transaction};

use super::{
    decode, encode, from_millis, lock, millis, name_of, notify, token, PgStore, Release, Wakeup,
    KEY_HOLD,
};
use crate::clock::Timestamp;
use crate::domain::{Delivery, Job, JobId, JobStatus, Tenant};
use crate::store::{
    Admission, Cancellation, IdempotencyKey, IdempotentResponse, JobPage, KeyHold, Result, WorkKind,
};

pub(super) fn work_code(kind: WorkKind) -> i16 {
    match kind {
        WorkKind::Submit => 0,
        WorkKind::Poll => 1,
    }
}

/// The columns of a job row beside its record.
struct JobRow {
    id: String,
    tenant: String,
    status: String,
    pending: bool,
    agent_id: Option<String>,
    work: Option<i16>,
    due_at: Option<i64>,
    record: String,
}

impl JobRow {
    fn of(job: &Job) -> JobRow {
        JobRow {
            id: job.id.as_str().to_owned(),
            tenant: job.tenant.as_str().to_owned(),
            status: name_of(&job.status),
            pending: job.is_pending(),
            agent_id: job.agent_id.clone(),
            work: WorkKind::of(job).map(work_code),
            due_at: WorkKind::of(job).and(job.next_poll_at).map(millis),
            record: encode(job),
        }
    }
}

/// Insert `job`, or overwrite the stored one: unconditionally, or only while it is pending
/// (`only_pending`). Returns whether a row was written.
async fn put_job(
    tx: &mut Transaction<'_, Postgres>,
    job: &Job,
    only_pending: bool,
) -> Result<bool> {
    let row = JobRow::of(job);
    let sql = if only_pending {
        "INSERT INTO jobs (id, tenant, status, pending, agent_id, work, due_at, record) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) \
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, pending = EXCLUDED.pending, \
         agent_id = EXCLUDED.agent_id, work = EXCLUDED.work, due_at = EXCLUDED.due_at, \
         claim_token = NULL, record = EXCLUDED.record WHERE jobs.pending"
    } else {
        "INSERT INTO jobs (id, tenant, status, pending, agent_id, work, due_at, record) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) \
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, pending = EXCLUDED.pending, \
         agent_id = EXCLUDED.agent_id, work = EXCLUDED.work, due_at = EXCLUDED.due_at, \
         claim_token = NULL, record = EXCLUDED.record"
    };
    let done = sqlx::query(sql)
        .bind(row.id)
        .bind(row.tenant)
        .bind(row.status)
        .bind(row.pending)
        .bind(row.agent_id)
        .bind(row.work)
        .bind(row.due_at)
        .bind(row.record)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Insert `job` or overwrite the stored one, whatever it is (a copy from another store).
pub(super) async fn put_job_tx(tx: &mut Transaction<'_, Postgres>, job: &Job) -> Result<()> {
    put_job(tx, job, false).await?;
    Ok(())
}

/// Overwrite a stored pending job; with `claim`, only while that claim is still the job's.
async fn update_pending<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    job: &Job,
    claim: Option<i64>,
) -> Result<bool> {
    let row = JobRow::of(job);
    let done = sqlx::query(
        "UPDATE jobs SET status = $2, pending = $3, agent_id = $4, work = $5, due_at = $6, \
         claim_token = NULL, record = $7::jsonb \
         WHERE id = $1 AND pending AND ($8::bigint IS NULL OR claim_token = $8)",
    )
    .bind(row.id)
    .bind(row.status)
    .bind(row.pending)
    .bind(row.agent_id)
    .bind(row.work)
    .bind(row.due_at)
    .bind(row.record)
    .bind(claim)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Write an idempotency key's record (its answer, or `None`: in flight), ending any hold.
async fn put_key(
    tx: &mut Transaction<'_, Postgres>,
    job: &Job,
    key: &IdempotencyKey,
    response: Option<&IdempotentResponse>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO idempotency (tenant, key, fingerprint, job_id, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, key) DO UPDATE SET \
         fingerprint = EXCLUDED.fingerprint, job_id = EXCLUDED.job_id, \
         response = EXCLUDED.response, created_at = EXCLUDED.created_at, \
         hold_token = NULL, held_until = NULL",
    )
    .bind(job.tenant.as_str())
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(job.id.as_str())
    .bind(response.map(encode))
    .bind(millis(job.created_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What a [`KeyHold`] holds on this backend: the key's row, deleted when dropped unless the
/// request stored a record for it meanwhile (which ends the hold).
struct HeldKey {
    store: PgStore,
    tenant: String,
    key: String,
    token: i64,
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        self.store.release(Release::Key {
            tenant: std::mem::take(&mut self.tenant),
            key: std::mem::take(&mut self.key),
            token: self.token,
        });
    }
}

impl PgStore {
    /// The claim this instance holds on a job, taken out (the write that uses it ends it).
    fn take_job_claim(&self, id: &JobId) -> Option<i64> {
        lock(&self.shared.job_claims).remove(id)
    }

    pub(super) async fn begin_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        key_ttl: std::time::Duration,
    ) -> Result<Admission> {
        let Some(request) = idempotency else {
            return Ok(Admission::Created(KeyHold::none()));
        };
        let tenant = job.tenant.as_str();
        let now = millis(job.created_at);
        let hold = token();
        let held_until = millis(crate::clock::after(job.created_at, KEY_HOLD));
        for _ in 0..8 {
            let inserted = sqlx::query(
                "INSERT INTO idempotency \
                 (tenant, key, fingerprint, job_id, created_at, hold_token, held_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, key) DO NOTHING",
            )
            .bind(tenant)
            .bind(&request.key)
            .bind(&request.fingerprint)
            .bind(job.id.as_str())
            .bind(now)
            .bind(hold)
            .bind(held_until)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 0 {
                let Some(row) = sqlx::query(
                    "SELECT fingerprint, job_id, response, created_at, hold_token, held_until \
                     FROM idempotency WHERE tenant = $1 AND key = $2",
                )
                .bind(tenant)
                .bind(&request.key)
                .fetch_optional(&self.pool)
                .await?
                else {
                    continue; // purged meanwhile: insert again
                };
                let fingerprint: String = row.try_get(0)?;
                let job_id: String = row.try_get(1)?;
                let response: Option<String> = row.try_get(2)?;
                let created_at: i64 = row.try_get(3)?;
                let old_hold: Option<i64> = row.try_get(4)?;
                let old_until: Option<i64> = row.try_get(5)?;
                let live = crate::clock::after(from_millis(created_at), key_ttl) > job.created_at;
                let abandoned = old_hold.is_some() && old_until.is_some_and(|u| u <= now);
                if live && !abandoned {
                    return Ok(if fingerprint != request.fingerprint {
                        Admission::Mismatch
                    } else if let Some(response) = response {
                        Admission::Replay(decode(&response)?)
                    } else {
                        Admission::InFlight {
                            job_id: JobId::from_stored(job_id),
                            since: from_millis(created_at),
                        }
                    });
                }
                // Expired, or held by a request that died: take it over, unless someone
                // changed it meanwhile (then look again).
                let taken = sqlx::query(
                    "UPDATE idempotency SET fingerprint = $3, job_id = $4, response = NULL, \
                     created_at = $5, hold_token = $6, held_until = $7 \
                     WHERE tenant = $1 AND key = $2 AND created_at = $8 \
                     AND hold_token IS NOT DISTINCT FROM $9",
                )
                .bind(tenant)
                .bind(&request.key)
                .bind(&request.fingerprint)
                .bind(job.id.as_str())
                .bind(now)
                .bind(hold)
                .bind(held_until)
                .bind(created_at)
                .bind(old_hold)
                .execute(&self.pool)
                .await?;
                if taken.rows_affected() == 0 {
                    continue;
                }
            }
            return Ok(Admission::Created(KeyHold::new(HeldKey {
                store: self.clone(),
                tenant: tenant.to_owned(),
                key: request.key.clone(),
                token: hold,
            })));
        }
        Err(crate::store::StoreError::Unavailable(
            "an idempotency key kept changing under concurrent requests".into(),
        ))
    }

    pub(super) async fn hold_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = idempotency {
            put_key(&mut tx, job, key, None).await?;
        }
        put_job(&mut tx, job, false).await?;
        notify(&mut *tx, Wakeup::Jobs).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn accept_job(
        &self,
        job: Job,
        _held: bool,
        idempotency: Option<(IdempotencyKey, IdempotentResponse)>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if !put_job(&mut tx, &job, true).await? {
            return Ok(false); // held, and ended meanwhile (dropping tx rolls back)
        }
        if let Some((key, response)) = &idempotency {
            put_key(&mut tx, &job, key, Some(response)).await?;
        }
        if WorkKind::of(&job).is_some() {
            notify(&mut *tx, Wakeup::Jobs).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn refuse_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        response: Option<&IdempotentResponse>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(job.id.as_str())
            .execute(&mut *tx)
            .await?;
        match (idempotency, response) {
            (Some(key), Some(response)) => put_key(&mut tx, job, key, Some(response)).await?,
            (Some(key), None) => {
                // Only this job's own record: a held key is ours alone.
                sqlx::query(
                    "DELETE FROM idempotency WHERE tenant = $1 AND key = $2 AND job_id = $3",
                )
                .bind(job.tenant.as_str())
                .bind(&key.key)
                .bind(job.id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            (None, _) => {}
        }
        tx.commit().await?;
        self.take_job_claim(&job.id);
        Ok(())
    }

    pub(super) async fn save_job(&self, job: &Job) -> Result<bool> {
        let claim = self.take_job_claim(&job.id);
        let saved = update_pending(&self.pool, job, claim).await?;
        Ok(saved)
    }

    pub(super) async fn complete_job(&self, job: &Job, deliveries: Vec<Delivery>) -> Result<bool> {
        debug_assert!(job.status.is_terminal());
        let claim = self.take_job_claim(&job.id);
        let mut tx = self.pool.begin().await?;
        if !update_pending(&mut *tx, job, claim).await? {
            return Ok(false);
        }
        if !deliveries.is_empty() {
            super::deliveries::insert_deliveries_tx(&mut tx, &deliveries).await?;
            notify(&mut *tx, Wakeup::Deliveries).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn cancel_job(
        &self,
        tenant: &Tenant,
        id: &JobId,
        now: Timestamp,
    ) -> Result<Cancellation> {
        let mut tx = self.pool.begin().await?;
        let Some(record) = sqlx::query_scalar::<_, String>(
            "SELECT record::text FROM jobs WHERE id = $1 AND tenant = $2 FOR UPDATE",
        )
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Cancellation::NotFound);
        };
        let stored: Job = decode(&record)?;
        if stored.status.is_terminal() {
            return Ok(Cancellation::AlreadyFinished(stored));
        }
        let mut job = stored;
        job.finish(JobStatus::Cancelled, None, now);
        update_pending(&mut *tx, &job, None).await?;
        tx.commit().await?;
        Ok(Cancellation::Cancelled(job))
    }

    pub(super) async fn job_by_id(&self, id: &JobId) -> Result<Option<Job>> {
        sqlx::query_scalar::<_, String>("SELECT record::text FROM jobs WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| decode(&r))
            .transpose()
    }

    pub(super) async fn job_by_agent(&self, agent_id: &str) -> Result<Option<Job>> {
        sqlx::query_scalar::<_, String>("SELECT record::text FROM jobs WHERE agent_id = $1 LIMIT 1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| decode(&r))
            .transpose()
    }

    pub(super) async fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<JobPage> {
        let rows = sqlx::query_scalar::<_, String>(
            "SELECT record::text FROM jobs WHERE tenant = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(status.map(|s| name_of(&s)))
        .bind(after.map(JobId::as_str))
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs = rows
            .iter()
            .map(|r| decode::<Job>(r))
            .collect::<Result<Vec<_>>>()?;
        let mut next = None;
        if jobs.len() > limit {
            jobs.truncate(limit);
            next = jobs.last().map(|j| j.id.clone());
        }
        Ok(JobPage { jobs, next })
    }

    pub(super) async fn purge_idempotency(
        &self,
        now: Timestamp,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<usize> {
        self.flush_releases().await?;
        let cutoff = millis(now) - ttl.as_millis() as i64;
        let done = sqlx::query(
            "DELETE FROM idempotency WHERE (tenant, key) IN (SELECT tenant, key FROM \
             idempotency WHERE created_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(limit as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() as usize)
    }

    pub(super) async fn claim_due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>> {
        let claim = token();
        let rows = sqlx::query_scalar::<_, String>(
            "UPDATE jobs j SET due_at = $3, claim_token = $4, \
             record = jsonb_set(j.record, '{next_poll_at}', $5::jsonb) \
             FROM (SELECT id FROM jobs WHERE work = $1 AND due_at <= $2 \
                   ORDER BY due_at LIMIT $6 FOR UPDATE SKIP LOCKED) c \
             WHERE j.id = c.id RETURNING j.record::text",
        )
        .bind(work_code(kind))
        .bind(millis(now))
        .bind(millis(lease_until))
        .bind(claim)
        .bind(encode(&lease_until))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let jobs = rows
            .iter()
            .map(|r| decode::<Job>(r))
            .collect::<Result<Vec<_>>>()?;
        let mut claims = lock(&self.shared.job_claims);
        for job in &jobs {
            claims.insert(job.id.clone(), claim);
        }
        Ok(jobs)
    }

    pub(super) async fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(due_at) FROM jobs WHERE work = $1 AND due_at IS NOT NULL",
        )
        .bind(work_code(kind))
        .fetch_one(&self.pool)
        .await?;
        Ok(at.map(from_millis))
    }

    pub(super) async fn count_due(
        &self,
        kind: WorkKind,
        now: Timestamp,
        cap: usize,
    ) -> Result<usize> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE work = $1 AND due_at <= $2 \
             LIMIT $3) due",
        )
        .bind(work_code(kind))
        .bind(millis(now))
        .bind(cap as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as usize)
    }
}
