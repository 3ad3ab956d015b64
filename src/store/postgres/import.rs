//! Write a whole [`Export`] into the database, for `agenthook store copy`.

use super::jobs::put_job_tx;
use super::{encode, millis, notify, PgStore};
use crate::store::copy::Export;
use crate::store::{Result, StoreError, Wakeup};

/// Rows written per statement.
const BATCH: usize = 1000;

impl PgStore {
    /// Whether nothing is stored yet.
    pub async fn is_empty(&self) -> Result<bool> {
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs) OR EXISTS (SELECT 1 FROM deliveries) \
             OR EXISTS (SELECT 1 FROM subscriptions) OR EXISTS (SELECT 1 FROM secrets) \
             OR EXISTS (SELECT 1 FROM idempotency)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(!any)
    }

    /// Write everything in `export`, in one transaction: all of it or nothing. Records with
    /// the ids of stored ones replace them (`force` only: otherwise a database that is not
    /// empty is refused).
    pub async fn import(&self, export: &Export, force: bool) -> Result<()> {
        self.migrate().await?;
        if !force && !self.is_empty().await? {
            return Err(StoreError::Unavailable(
                "the target database is not empty (use --force to copy into it anyway)".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        for job in &export.jobs {
            put_job_tx(&mut tx, job).await?;
        }
        for chunk in export.deliveries.chunks(BATCH) {
            let ids: Vec<&str> = chunk.iter().map(|d| d.id.as_str()).collect();
            sqlx::query("DELETE FROM deliveries WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            super::deliveries::insert_deliveries_tx(&mut tx, chunk).await?;
        }
        for sub in &export.subscriptions {
            sqlx::query(
                "INSERT INTO subscriptions (id, tenant, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET tenant = EXCLUDED.tenant, record = EXCLUDED.record",
            )
            .bind(sub.id.as_str())
            .bind(sub.tenant.as_str())
            .bind(encode(sub))
            .execute(&mut *tx)
            .await?;
        }
        for (tenant, secrets) in &export.secrets {
            sqlx::query(
                "INSERT INTO secrets (tenant, record) VALUES ($1, $2) \
                 ON CONFLICT (tenant) DO UPDATE SET record = EXCLUDED.record",
            )
            .bind(tenant.as_str())
            .bind(encode(secrets))
            .execute(&mut *tx)
            .await?;
        }
        for key in &export.keys {
            sqlx::query(
                "INSERT INTO idempotency (tenant, key, fingerprint, job_id, response, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, key) DO UPDATE SET \
                 fingerprint = EXCLUDED.fingerprint, job_id = EXCLUDED.job_id, \
                 response = EXCLUDED.response, created_at = EXCLUDED.created_at, \
                 hold_token = NULL, held_until = NULL",
            )
            .bind(key.tenant.as_str())
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(key.job_id.as_str())
            .bind(key.response.as_ref().map(encode))
            .bind(millis(key.created_at))
            .execute(&mut *tx)
            .await?;
        }
        notify(&mut *tx, Wakeup::Jobs).await?;
        notify(&mut *tx, Wakeup::Deliveries).await?;
        tx.commit().await?;
        Ok(())
    }
}
