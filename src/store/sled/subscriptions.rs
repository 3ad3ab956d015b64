//! Subscriptions and the tenants' callback signing secrets.

use super::{decode, decode_tx, encode, keys, Result, SledStore};
use crate::domain::{SecretSet, Subscription, SubscriptionId, Tenant};
use crate::store::SubscriptionChange;

impl SledStore {
    /// Store a subscription with its tenant's index, in one write.
    pub async fn save_subscription(&self, sub: &Subscription) -> Result<()> {
        let id = sub.id.clone();
        let sub = sub.clone();
        let bytes = encode(&sub);
        self.writer
            .write(move |tx| {
                tx.subscriptions.insert(sub.id.as_str(), bytes.as_slice())?;
                tx.index
                    .insert(subscription_index(&sub.tenant, &sub.id), &[])?;
                Ok(())
            })
            .await?;
        self.subscription_cache.forget(id.as_str());
        Ok(())
    }

    pub fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>> {
        let found = self.subscription_cache.get_or_read(id.as_str(), || {
            self.subscriptions
                .get(id.as_str())?
                .map(|raw| decode(&raw))
                .transpose()
        })?;
        Ok(found.filter(|s| &s.tenant == tenant))
    }

    /// The subscription `id` if it is in memory (see `cache`): no storage read.
    pub fn cached_subscription(&self, id: &SubscriptionId) -> Option<Subscription> {
        self.subscription_cache.get(id.as_str())
    }

    /// A tenant's subscriptions, oldest first.
    pub fn list_subscriptions(&self, tenant: &Tenant) -> Result<Vec<Subscription>> {
        let prefix = keys::owner_prefix(keys::TENANT_SUBSCRIPTIONS, tenant.as_str());
        let mut found = Vec::new();
        for entry in self.index.scan_prefix(prefix) {
            let (key, _) = entry?;
            let Some(id) = keys::last_part(&key) else {
                continue;
            };
            if let Some(raw) = self.subscriptions.get(id)? {
                found.push(decode(&raw)?);
            }
        }
        Ok(found)
    }

    /// Remove a tenant's subscription with its index, in one write.
    pub async fn delete_subscription(&self, tenant: &Tenant, id: &SubscriptionId) -> Result<bool> {
        let key = id.clone();
        let tenant = tenant.clone();
        let removed = self
            .writer
            .write(move |tx| {
                let Some(raw) = tx.subscriptions.get(key.as_str())? else {
                    return Ok(false);
                };
                let stored: Subscription = decode_tx(&raw)?;
                if stored.tenant != tenant {
                    return Ok(false);
                }
                tx.subscriptions.remove(key.as_str())?;
                tx.index.remove(subscription_index(&tenant, &key))?;
                Ok(true)
            })
            .await?;
        self.subscription_cache.forget(id.as_str());
        Ok(removed)
    }

    /// Change a subscription in place, atomically against concurrent changes. Returns the
    /// updated subscription, or `None` when it no longer exists.
    pub async fn update_subscription(
        &self,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>> {
        let key = id.clone();
        let updated = self
            .writer
            .write(move |tx| {
                let Some(raw) = tx.subscriptions.get(key.as_str())? else {
                    return Ok(None);
                };
                let mut sub: Subscription = decode_tx(&raw)?;
                change(&mut sub);
                tx.subscriptions.insert(key.as_str(), encode(&sub))?;
                Ok(Some(sub))
            })
            .await?;
        self.subscription_cache.forget(id.as_str());
        Ok(updated)
    }

    /// The tenant's callback secrets as stored, if it has any.
    pub fn stored_callback_secrets(&self, tenant: &Tenant) -> Result<Option<SecretSet>> {
        self.secret_cache.get_or_read(tenant.as_str(), || {
            self.secrets
                .get(tenant.as_str())?
                .map(|raw| decode(&raw))
                .transpose()
        })
    }

    /// The tenant's callback secrets if they are in memory (see `cache`): no storage read.
    pub fn cached_callback_secrets(&self, tenant: &Tenant) -> Option<SecretSet> {
        self.secret_cache.get(tenant.as_str())
    }

    /// Change the tenant's callback secrets in one write; `change` gets `None` when the tenant
    /// has none yet, and returns what to store (`None`: nothing).
    pub async fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        change: impl Fn(Option<&SecretSet>) -> Option<SecretSet> + Send + 'static,
    ) -> Result<Option<SecretSet>> {
        let key = tenant.clone();
        let secrets = self
            .writer
            .write(move |tx| {
                let stored: Option<SecretSet> = match tx.secrets.get(key.as_str())? {
                    Some(raw) => Some(decode_tx(&raw)?),
                    None => None,
                };
                let Some(secrets) = change(stored.as_ref()) else {
                    return Ok(None);
                };
                tx.secrets.insert(key.as_str(), encode(&secrets))?;
                Ok(Some(secrets))
            })
            .await?;
        self.secret_cache.forget(tenant.as_str());
        Ok(secrets)
    }
}

fn subscription_index(tenant: &Tenant, id: &SubscriptionId) -> Vec<u8> {
    keys::owned(keys::TENANT_SUBSCRIPTIONS, tenant.as_str(), id.as_str())
}
