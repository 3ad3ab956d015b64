//! Upstream push: a job made due by a push, the cadence pulled back when pushes stop, and
//! agenthook's own webhook registration with bitHuman.

use super::jobs::work_code;
use super::{decode, encode, lock, millis, token, PgStore};
use crate::clock::Timestamp;
use crate::domain::{Job, JobId};
use crate::store::{JobTime, Result, UpstreamWebhook, WorkKind};

/// The registration's row in `upstream_webhook`.
const REGISTRATION: &str = "webhook";

impl PgStore {
    pub(super) async fn claim_job_for_poll(
        &self,
        id: &JobId,
        lease_until: Timestamp,
    ) -> Result<Option<Job>> {
        let claim = token();
        let row = sqlx::query_scalar::<_, String>(
            "UPDATE jobs SET due_at = $3, claim_token = $4, \
             record = jsonb_set(record, '{next_poll_at}', $5::jsonb) \
             WHERE id = $1 AND pending AND work = $2 RETURNING record::text",
        )
        .bind(id.as_str())
        .bind(work_code(WorkKind::Poll))
        .bind(millis(lease_until))
        .bind(claim)
        .bind(encode(&lease_until))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job: Job = decode(&row)?;
        lock(&self.shared.job_claims).insert(job.id.clone(), claim);
        Ok(Some(job))
    }

    pub(super) async fn pull_in_polls(
        &self,
        later_than: Timestamp,
        limit: usize,
        to: JobTime,
    ) -> Result<usize> {
        let rows = sqlx::query_as::<_, (String, i64)>(
            "SELECT record::text, due_at FROM jobs WHERE work = $1 AND due_at > $2 \
             ORDER BY due_at LIMIT $3",
        )
        .bind(work_code(WorkKind::Poll))
        .bind(millis(later_than))
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut moved = 0;
        for (record, due_at) in rows {
            let job: Job = decode(&record)?;
            let at = to(&job).min(later_than);
            // Only while the job is still where it was read: a claim or a save meanwhile wins.
            let done = sqlx::query(
                "UPDATE jobs SET due_at = $3, \
                 record = jsonb_set(record, '{next_poll_at}', $4::jsonb) \
                 WHERE id = $1 AND pending AND due_at = $2",
            )
            .bind(job.id.as_str())
            .bind(due_at)
            .bind(millis(at))
            .bind(encode(&at))
            .execute(&self.pool)
            .await?;
            moved += done.rows_affected() as usize;
        }
        Ok(moved)
    }

    pub(super) async fn upstream_webhook(&self) -> Result<Option<UpstreamWebhook>> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT record FROM upstream_webhook WHERE name = $1")
                .bind(REGISTRATION)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| decode(&r)).transpose()
    }

    pub(super) async fn save_upstream_webhook(&self, webhook: &UpstreamWebhook) -> Result<()> {
        sqlx::query(
            "INSERT INTO upstream_webhook (name, record) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
        )
        .bind(REGISTRATION)
        .bind(encode(webhook))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
