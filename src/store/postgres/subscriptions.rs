//! Subscriptions and the tenants' callback signing secrets. Nothing is cached: every instance
//! reads what is stored, so a change is seen everywhere at once.

use super::{decode, encode, PgStore};
use crate::domain::{SecretSet, Subscription, SubscriptionId, Tenant};
use crate::store::{Result, SecretsChange, StoreError, SubscriptionChange};

impl PgStore {
    pub(super) async fn save_subscription(&self, sub: &Subscription) -> Result<()> {
        sqlx::query(
            "INSERT INTO subscriptions (id, tenant, record) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET tenant = EXCLUDED.tenant, record = EXCLUDED.record",
        )
        .bind(sub.id.as_str())
        .bind(sub.tenant.as_str())
        .bind(encode(sub))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>> {
        sqlx::query_scalar::<_, String>(
            "SELECT record FROM subscriptions WHERE id = $1 AND tenant = $2",
        )
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| decode(&r))
        .transpose()
    }

    pub(super) async fn list_subscriptions(&self, tenant: &Tenant) -> Result<Vec<Subscription>> {
        sqlx::query_scalar::<_, String>(
            "SELECT record FROM subscriptions WHERE tenant = $1 ORDER BY id",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| decode(r))
        .collect()
    }

    pub(super) async fn delete_subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<bool> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1 AND tenant = $2")
            .bind(id.as_str())
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn update_subscription(
        &self,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>> {
        let mut tx = self.pool.begin().await?;
        let Some(record) = sqlx::query_scalar::<_, String>(
            "SELECT record FROM subscriptions WHERE id = $1 FOR UPDATE",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let mut sub: Subscription = decode(&record)?;
        change(&mut sub);
        sqlx::query("UPDATE subscriptions SET record = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(encode(&sub))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(sub))
    }

    pub(super) async fn stored_callback_secrets(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<SecretSet>> {
        sqlx::query_scalar::<_, String>("SELECT record FROM secrets WHERE tenant = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| decode(&r))
            .transpose()
    }

    pub(super) async fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        change: SecretsChange,
    ) -> Result<Option<SecretSet>> {
        // Under the row's lock when it exists; a first write races other first writes through
        // the primary key, and the loser looks again.
        for _ in 0..8 {
            let mut tx = self.pool.begin().await?;
            let stored = sqlx::query_scalar::<_, String>(
                "SELECT record FROM secrets WHERE tenant = $1 FOR UPDATE",
            )
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| decode::<SecretSet>(&r))
            .transpose()?;
            let Some(secrets) = change(stored.as_ref()) else {
                return Ok(None);
            };
            let written = if stored.is_some() {
                sqlx::query("UPDATE secrets SET record = $2 WHERE tenant = $1")
            } else {
                sqlx::query(
                    "INSERT INTO secrets (tenant, record) VALUES ($1, $2) \
                     ON CONFLICT (tenant) DO NOTHING",
                )
            }
            .bind(tenant.as_str())
            .bind(encode(&secrets))
            .execute(&mut *tx)
            .await?;
            if written.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(Some(secrets));
            }
        }
        Err(StoreError::Unavailable(
            "a tenant's secrets kept changing under concurrent writers".into(),
        ))
    }
}
