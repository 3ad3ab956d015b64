//! API keys. Each key is a tenant; keys are compared through their digests in constant time.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use std::collections::HashMap;

use crate::clock::Timestamp;
use crate::config::ApiKey;
use crate::domain::Tenant;
use crate::upstream::Budget;

pub struct KeyRing {
    keys: Vec<([u8; 32], Tenant)>,
    /// One request budget per key, when limited.
    limits: HashMap<Tenant, Budget>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("tenants", &self.keys.len())
            .finish()
    }
}

impl KeyRing {
    /// `requests_per_minute` of 0 means no limit.
    pub fn new(keys: &[ApiKey], requests_per_minute: u32) -> Result<KeyRing, String> {
        let keys: Vec<([u8; 32], Tenant)> = keys
            .iter()
            .map(|k| Ok((digest(k.key.expose()), Tenant::parse(&k.name)?)))
            .collect::<Result<_, String>>()?;
        let limits = if requests_per_minute == 0 {
            HashMap::new()
        } else {
            keys.iter()
                .map(|(_, tenant)| {
                    let burst = (requests_per_minute / 10).max(1);
                    (
                        tenant.clone(),
                        Budget::with_burst("api", requests_per_minute, burst),
                    )
                })
                .collect()
        };
        Ok(KeyRing { keys, limits })
    }

    /// Take one request from the tenant's budget; `Err` carries the seconds to wait.
    pub fn admit(&self, tenant: &Tenant, now: Timestamp) -> Result<(), u64> {
        let Some(budget) = self.limits.get(tenant) else {
            return Ok(());
        };
        if budget.try_acquire(now) {
            Ok(())
        } else {
            Err(crate::clock::until(now, budget.next_available_at(now)).as_secs() + 1)
        }
    }

    /// The tenant of `presented`. Every key is compared, so timing reveals nothing.
    pub fn tenant(&self, presented: &str) -> Option<Tenant> {
        let presented = digest(presented);
        let mut found = None;
        for (key, tenant) in &self.keys {
            if bool::from(key.ct_eq(&presented)) {
                found = Some(tenant.clone());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key presented: `Authorization: Bearer KEY`, or the upstream's `api-secret: KEY`.
fn presented_key(req: &HttpRequest) -> Option<&str> {
    let headers = req.headers();
    if let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, key) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers
        .get("api-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = Ready<Result<Tenant, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::internal(&"application state missing")));
        };
        let tenant = presented_key(req)
            .filter(|k| !k.is_empty())
            .and_then(|k| state.keys.tenant(k))
            .ok_or_else(ApiError::unauthorized);
        ready(tenant.and_then(|tenant| {
            state
                .keys
                .admit(&tenant, state.clock.now())
                .map(|()| tenant)
                .map_err(|wait| {
                    let mut e = ApiError::rate_limited(wait);
                    e.message = "this API key is over its request rate; slow down".into();
                    e
                })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn each_key_maps_to_its_own_tenant_and_nothing_else_matches() {
        let ring = KeyRing::new(
            &[
                ApiKey {
                    name: "acme".into(),
                    key: Secret::new("acme-key-0123456789"),
                },
                ApiKey {
                    name: "globex".into(),
                    key: Secret::new("globex-key-0123456789"),
                },
            ],
            0,
        )
        .unwrap();
        assert_eq!(ring.tenant("acme-key-0123456789").unwrap().as_str(), "acme");
        assert_eq!(
            ring.tenant("globex-key-0123456789").unwrap().as_str(),
            "globex"
        );
        assert!(ring.tenant("acme-key-012345678").is_none());
        assert!(ring.tenant("").is_none());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn each_key_has_its_own_budget_and_over_it_gets_a_wait() {
        let ring = KeyRing::new(
            &[
                ApiKey {
                    name: "noisy".into(),
                    key: Secret::new("noisy-key-0123456789"),
                },
                ApiKey {
                    name: "quiet".into(),
                    key: Secret::new("quiet-key-0123456789"),
                },
            ],
            60,
        )
        .unwrap();
        let now = chrono::Utc::now();
        let noisy = Tenant::parse("noisy").unwrap();
        let quiet = Tenant::parse("quiet").unwrap();
        let admitted = (0..100).filter(|_| ring.admit(&noisy, now).is_ok()).count();
        assert_eq!(admitted, 6, "a burst of a tenth of the minute");
        assert!(ring.admit(&noisy, now).unwrap_err() >= 1);
        assert!(
            ring.admit(&quiet, now).is_ok(),
            "the other tenant is unaffected"
        );
        let later = crate::clock::after(now, std::time::Duration::from_secs(1));
        assert!(
            ring.admit(&noisy, later).is_ok(),
            "one more per second at 60/min"
        );
    }
}
