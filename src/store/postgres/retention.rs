//! Retention (finished jobs past `storage.retention` leave with all they caused), what is
//! stored, and the write probe of the storage health tracker.

use super::{millis, PgStore};
use crate::clock::Timestamp;
use crate::domain::JobId;
use crate::store::{PurgeReport, Result, StoredTotals, Writable};

impl PgStore {
    pub(super) async fn purge_finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<PurgeReport> {
        let mut tx = self.pool.begin().await?;
        // Finished before the cutoff, with no delivery still queued; in id order from the cursor.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j WHERE NOT j.pending AND j.id > $1 \
             AND (j.record->>'completed_at')::timestamptz < to_timestamp($2::double precision / 1000) \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id AND d.queue IS NOT NULL) \
             ORDER BY j.id LIMIT $3 FOR UPDATE SKIP LOCKED",
        )
        .bind(after.map_or("", |id| id.as_str()))
        .bind(millis(cutoff))
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let events: Vec<String> =
            sqlx::query_scalar("DELETE FROM deliveries WHERE job_id = ANY($1) RETURNING event_id")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        let deliveries = events.len();
        sqlx::query(
            "DELETE FROM events e WHERE e.id = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)",
        )
        .bind(&events)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let next = if ids.len() == limit {
            ids.last().and_then(|id| JobId::parse(id))
        } else {
            None
        };
        Ok(PurgeReport {
            jobs: ids.len(),
            deliveries,
            next,
        })
    }

    pub(super) async fn stored_totals(&self) -> Result<StoredTotals> {
        let (jobs, deliveries, events, bytes): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM deliveries), \
             (SELECT count(*) FROM events), pg_database_size(current_database())",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(StoredTotals {
            jobs: jobs as u64,
            deliveries: deliveries as u64,
            events: events as u64,
            bytes: bytes as u64,
        })
    }

    pub(super) async fn check_writable(&self) -> Result<Writable> {
        sqlx::query(
            "INSERT INTO probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = $1",
        )
        .bind(millis(chrono::Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(Writable::Yes)
    }
}
