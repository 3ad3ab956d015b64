//! Subscriptions and the tenants' callback signing secrets.

use super::{decode, encode, keys, Result, Store};
use crate::domain::{EventType, SecretSet, Subscription, SubscriptionId, Tenant};

impl Store {
    pub fn save_subscription(&self, sub: &Subscription) -> Result<()> {
        self.subscriptions.insert(sub.id.as_str(), encode(sub))?;
        self.index.insert(
            keys::owned(
                keys::TENANT_SUBSCRIPTIONS,
                sub.tenant.as_str(),
                sub.id.as_str(),
            ),
            &[],
        )?;
        Ok(())
    }

    pub fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>> {
        let found: Option<Subscription> = self
            .subscriptions
            .get(id.as_str())?
            .map(|raw| decode(&raw))
            .transpose()?;
        Ok(found.filter(|s| &s.tenant == tenant))
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

    /// The enabled subscriptions of a tenant that want this event type.
    pub fn subscriptions_for(
        &self,
        tenant: &Tenant,
        event_type: EventType,
    ) -> Result<Vec<Subscription>> {
        Ok(self
            .list_subscriptions(tenant)?
            .into_iter()
            .filter(|s| s.wants(event_type))
            .collect())
    }

    pub fn delete_subscription(&self, tenant: &Tenant, id: &SubscriptionId) -> Result<bool> {
        if self.subscription(tenant, id)?.is_none() {
            return Ok(false);
        }
        self.subscriptions.remove(id.as_str())?;
        self.index.remove(keys::owned(
            keys::TENANT_SUBSCRIPTIONS,
            tenant.as_str(),
            id.as_str(),
        ))?;
        Ok(true)
    }

    /// The tenant's callback secrets, created with `generate` on first use.
    pub fn callback_secrets(
        &self,
        tenant: &Tenant,
        generate: impl Fn() -> String,
    ) -> Result<SecretSet> {
        loop {
            if let Some(raw) = self.secrets.get(tenant.as_str())? {
                return decode(&raw);
            }
            let fresh = SecretSet::new(generate());
            let created = self.secrets.compare_and_swap(
                tenant.as_str(),
                None::<&[u8]>,
                Some(encode(&fresh)),
            )?;
            if created.is_ok() {
                return Ok(fresh);
            }
        }
    }

    pub fn save_callback_secrets(&self, tenant: &Tenant, secrets: &SecretSet) -> Result<()> {
        self.secrets.insert(tenant.as_str(), encode(secrets))?;
        Ok(())
    }
}

impl Store {
    /// Change a subscription in place, atomically against concurrent changes. Returns the
    /// updated subscription, or `None` when it no longer exists.
    pub fn update_subscription(
        &self,
        id: &crate::domain::SubscriptionId,
        change: impl Fn(&mut Subscription),
    ) -> Result<Option<Subscription>> {
        loop {
            let Some(raw) = self.subscriptions.get(id.as_str())? else {
                return Ok(None);
            };
            let mut sub: Subscription = decode(&raw)?;
            change(&mut sub);
            let swapped =
                self.subscriptions
                    .compare_and_swap(id.as_str(), Some(raw), Some(encode(&sub)))?;
            if swapped.is_ok() {
                return Ok(Some(sub));
            }
        }
    }
}
