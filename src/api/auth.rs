//! API keys. Each key is a tenant; keys are compared through their digests in constant time.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::ApiKey;
use crate::domain::Tenant;

#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<([u8; 32], Tenant)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("tenants", &self.keys.len())
            .finish()
    }
}

impl KeyRing {
    pub fn new(keys: &[ApiKey]) -> Result<KeyRing, String> {
        let keys = keys
            .iter()
            .map(|k| Ok((digest(k.key.expose()), Tenant::parse(&k.name)?)))
            .collect::<Result<_, String>>()?;
        Ok(KeyRing { keys })
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
        ready(
            presented_key(req)
                .filter(|k| !k.is_empty())
                .and_then(|k| state.keys.tenant(k))
                .ok_or_else(ApiError::unauthorized),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn each_key_maps_to_its_own_tenant_and_nothing_else_matches() {
        let ring = KeyRing::new(&[
            ApiKey {
                name: "acme".into(),
                key: Secret::new("acme-key-0123456789"),
            },
            ApiKey {
                name: "globex".into(),
                key: Secret::new("globex-key-0123456789"),
            },
        ])
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
