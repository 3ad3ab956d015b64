//! Read everything stored, for `agenthook store copy` (see `store::copy`).

use serde::Deserialize;

use super::record::decode_delivery;
use super::{decode, keys, Result, SledStore, StoreError};
use crate::clock::Timestamp;
use crate::domain::{JobId, Payload, Tenant};
use crate::store::copy::{Export, ExportedKey};
use crate::store::IdempotentResponse;

/// An idempotency record as `jobs` stores it (the fields read here).
#[derive(Deserialize)]
struct KeyRecord {
    fingerprint: String,
    job_id: JobId,
    response: Option<IdempotentResponse>,
    created_at: Timestamp,
}

impl SledStore {
    /// Everything stored, in memory (a one-off copy of a database that fits one process).
    pub fn export(&self) -> Result<Export> {
        let mut export = Export::default();
        for entry in self.jobs.iter() {
            let (_, raw) = entry?;
            export.jobs.push(decode(&raw)?);
        }
        for entry in self.deliveries.iter() {
            let (_, raw) = entry?;
            let mut delivery = decode_delivery(&raw)?;
            if delivery.payload.is_absent() {
                let event = delivery.event_id.as_str();
                let body = self.events.get(event)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("the body of event {event} is missing"))
                })?;
                delivery.payload = Payload::from_stored(&body)
                    .map_err(|e| StoreError::Corrupt(format!("the body of event {event}: {e}")))?;
            }
            export.deliveries.push(delivery);
        }
        for entry in self.subscriptions.iter() {
            let (_, raw) = entry?;
            export.subscriptions.push(decode(&raw)?);
        }
        for entry in self.secrets.iter() {
            let (tenant, raw) = entry?;
            let tenant = String::from_utf8(tenant.to_vec())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            export
                .secrets
                .push((Tenant::from_stored(tenant), decode(&raw)?));
        }
        for entry in self.idempotency.iter() {
            let (key, raw) = entry?;
            let Some(split) = key.iter().position(|b| *b == keys::SEP) else {
                continue;
            };
            let (tenant, name) = (&key[..split], &key[split + 1..]);
            let (Ok(tenant), Ok(name)) = (std::str::from_utf8(tenant), std::str::from_utf8(name))
            else {
                continue;
            };
            let record: KeyRecord = decode(&raw)?;
            export.keys.push(ExportedKey {
                tenant: Tenant::from_stored(tenant.to_owned()),
                key: name.to_owned(),
                fingerprint: record.fingerprint,
                job_id: record.job_id,
                response: record.response,
                created_at: record.created_at,
            });
        }
        Ok(export)
    }
}
