//! Subscriptions and the tenants' callback signing secrets.

use super::{decode, encode, keys, Result, Store};
use crate::domain::{EventType, SecretSet, Subscription, SubscriptionId, Tenant};

impl Store {
    pub fn save_subscription(&self, sub: &Subscription) -> Result<()> {
        self.subscriptions.insert(sub.id.as_str(), encode(sub))?;
        self.subscription_cache.forget(sub.id.as_str());
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
        let found = self.subscription_cache.get_or_read(id.as_str(), || {
            self.subscriptions
                .get(id.as_str())?
                .map(|raw| decode(&raw))
                .transpose()
        })?;
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
        self.subscription_cache.forget(id.as_str());
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
        let found = self.secret_cache.get_or_read(tenant.as_str(), || loop {
            if let Some(raw) = self.secrets.get(tenant.as_str())? {
                return decode(&raw).map(Some);
            }
            let fresh = SecretSet::new(generate());
            let created = self.secrets.compare_and_swap(
                tenant.as_str(),
                None::<&[u8]>,
                Some(encode(&fresh)),
            )?;
            if created.is_ok() {
                return Ok(Some(fresh));
            }
        })?;
        Ok(found.expect("the secrets are read or created"))
    }

    /// Change the tenant's callback secrets atomically against concurrent changes (two
    /// rotations at once must not lose a secret one of them handed out). Creates them with
    /// `generate` first when the tenant has none yet.
    pub fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        generate: impl Fn() -> String,
        change: impl Fn(&mut SecretSet),
    ) -> Result<SecretSet> {
        loop {
            let stored = self.secrets.get(tenant.as_str())?;
            let mut secrets = match &stored {
                Some(raw) => decode(raw)?,
                None => SecretSet::new(generate()),
            };
            change(&mut secrets);
            let swapped =
                self.secrets
                    .compare_and_swap(tenant.as_str(), stored, Some(encode(&secrets)))?;
            self.secret_cache.forget(tenant.as_str());
            if swapped.is_ok() {
                return Ok(secrets);
            }
        }
    }

    pub fn save_callback_secrets(&self, tenant: &Tenant, secrets: &SecretSet) -> Result<()> {
        self.secrets.insert(tenant.as_str(), encode(secrets))?;
        self.secret_cache.forget(tenant.as_str());
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
            self.subscription_cache.forget(id.as_str());
            if swapped.is_ok() {
                return Ok(Some(sub));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::Tenant;
    use crate::store::test_support::temp_store;

    #[test]
    fn callback_secrets_are_created_once_and_updated_in_place() {
        let (store, _dir) = temp_store();
        let tenant = Tenant::parse("acme").unwrap();
        let first = store
            .callback_secrets(&tenant, || "whsec_first".into())
            .unwrap();
        assert_eq!(first.current, "whsec_first");
        let until = chrono::Utc::now();
        let rotated = store
            .update_callback_secrets(
                &tenant,
                || "whsec_never".into(),
                |s| s.rotate("whsec_second".into(), until),
            )
            .unwrap();
        assert_eq!(rotated.current, "whsec_second");
        assert_eq!(rotated.previous.as_ref().unwrap().secret, "whsec_first");
        let read = store
            .callback_secrets(&tenant, || "whsec_never".into())
            .unwrap();
        assert_eq!(read.current, "whsec_second");

        let other = Tenant::parse("globex").unwrap();
        let created = store
            .update_callback_secrets(
                &other,
                || "whsec_a".into(),
                |s| s.rotate("whsec_b".into(), until),
            )
            .unwrap();
        assert_eq!(created.current, "whsec_b");
        assert_eq!(created.previous.unwrap().secret, "whsec_a");
    }
}
