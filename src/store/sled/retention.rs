//! Retention and the storage probes: finished jobs leave with everything they caused, and the
//! service can ask whether a write would land.
//!
//! Jobs are keyed by a time-ordered id, so the `jobs` tree is walked from the oldest: a job
//! created after the cutoff cannot have ended before it, and the walk stops there. Candidates are
//! found on the blocking pool; the writer then checks each again inside its transaction (a dead
//! letter retried by hand meanwhile is pending again and keeps its job) and deletes the rest.

use std::io::Write as _;

use super::record::decode_delivery;
use super::writer::{Tx, TxResult};
use super::{decode, decode_tx, keys, Result, SledStore, StoreError};
use crate::clock::Timestamp;
use crate::domain::{DeliveryState, Job, JobId};
use crate::store::{PurgeReport, StoredTotals, Writable};

/// Jobs looked at per call at most (kept or not), so one call is always short.
const SCAN_PER_CALL: usize = 1024;

/// A finished job to delete, with the deliveries found for it and its job index entries.
struct Doomed {
    job: JobId,
    /// Its deliveries' keys (`deliveries::key_of`).
    deliveries: Vec<String>,
    index_keys: Vec<Vec<u8>>,
}

impl SledStore {
    /// Up to `limit` finished jobs that ended before `cutoff`, after `after`, with their
    /// deliveries; and the cursor to go on from.
    fn purge_candidates(
        &self,
        cutoff: Timestamp,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<(Vec<Doomed>, Option<JobId>)> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(id.as_str().as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut doomed = Vec::new();
        let mut last: Option<JobId> = None;
        for (scanned, entry) in self
            .jobs
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .enumerate()
        {
            if doomed.len() >= limit.max(1) || scanned >= SCAN_PER_CALL {
                return Ok((doomed, last));
            }
            let (key, raw) = entry?;
            let id = JobId::from_stored(String::from_utf8_lossy(&key).into_owned());
            last = Some(id.clone());
            let job: Job = match decode(&raw) {
                Ok(job) => job,
                // Unreadable: left for an operator, never deleted on a guess.
                Err(_) => continue,
            };
            if job.created_at >= cutoff {
                return Ok((doomed, None));
            }
            if !ended_before(&job, cutoff) {
                continue;
            }
            let mut deliveries = Vec::new();
            let mut index_keys = Vec::new();
            let mut kept = false;
            'entries: for entry in self
                .index
                .scan_prefix(keys::owner_prefix(keys::JOB_DELIVERIES, id.as_str()))
            {
                let (key, value) = entry?;
                for delivery_id in keys::delivery_ids(&key, &value) {
                    let delivery_key = keys::delivery(job.tenant.as_str(), delivery_id);
                    if let Some(raw) = self.deliveries.get(delivery_key.as_str())? {
                        // Unreadable: kept with its job for an operator (never deleted on a
                        // guess), and the walk goes on.
                        if decode_delivery(&raw).map_or(true, |d| d.state == DeliveryState::Pending)
                        {
                            kept = true;
                            break 'entries;
                        }
                    }
                    deliveries.push(delivery_key);
                }
                index_keys.push(key.to_vec());
            }
            if !kept {
                doomed.push(Doomed {
                    job: id,
                    deliveries,
                    index_keys,
                });
            }
        }
        Ok((doomed, None))
    }

    pub async fn purge_finished(
        &self,
        cutoff: Timestamp,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<PurgeReport> {
        let (doomed, next) = {
            let store = self.clone();
            tokio::task::spawn_blocking(move || {
                store.purge_candidates(cutoff, after.as_ref(), limit)
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??
        };
        if doomed.is_empty() {
            return Ok(PurgeReport {
                next,
                ..PurgeReport::default()
            });
        }
        let rows = doomed.iter().map(|d| 1 + d.deliveries.len()).sum();
        let (jobs, deliveries) = self
            .writer
            .write_rows(rows, move |tx| {
                let (mut jobs, mut deliveries) = (0, 0);
                for d in &doomed {
                    if let Some(n) = delete_job_tx(tx, d, cutoff)? {
                        jobs += 1;
                        deliveries += n;
                    }
                }
                Ok((jobs, deliveries))
            })
            .await?;
        Ok(PurgeReport {
            jobs,
            deliveries,
            next,
        })
    }

    pub fn totals(&self) -> Result<StoredTotals> {
        Ok(StoredTotals {
            jobs: self.jobs.len() as u64,
            deliveries: self.deliveries.len() as u64,
            events: self.events.len() as u64,
            bytes: self.db.size_on_disk()?,
        })
    }

    /// A small write through the writer; if sled refuses it, whether the directory takes a
    /// write of its own (sled keeps an I/O error once it has met one, until it is reopened).
    pub async fn probe_writable(&self) -> Result<Writable> {
        let at = crate::clock::millis(chrono::Utc::now()).to_be_bytes();
        let written = self
            .writer
            .write(move |tx| {
                tx.index.insert(PROBE_KEY, &at)?;
                Ok(())
            })
            .await;
        match written {
            Ok(()) => Ok(Writable::Yes),
            Err(error) => {
                let path = self.path.clone();
                let fs = tokio::task::spawn_blocking(move || probe_directory(&path))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                match fs {
                    Ok(()) => Ok(Writable::AfterRestart),
                    // The directory's own answer says best what is wrong (a full disk, say).
                    Err(fs_error) => {
                        tracing::debug!(%error, "sled refused the probe write");
                        Err(StoreError::Unavailable(super::describe_io(&fs_error)))
                    }
                }
            }
        }
    }
}

/// Where the probe writes: no index prefix starts with this byte, so no listing sees it.
const PROBE_KEY: &[u8] = b"\xffwrite-probe";

/// Write, sync and remove a small file in the data directory.
fn probe_directory(dir: &std::path::Path) -> std::io::Result<()> {
    let path = dir.join(".write-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; 64 * 1024])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

fn ended_before(job: &Job, cutoff: Timestamp) -> bool {
    job.status.is_terminal() && job.completed_at.unwrap_or(job.updated_at) < cutoff
}

/// Delete one job with its deliveries, their event bodies and every index entry, if it is still
/// finished before `cutoff` and none of its deliveries is pending. Answers how many deliveries
/// went, or `None` when the job stays.
fn delete_job_tx(tx: &Tx<'_>, doomed: &Doomed, cutoff: Timestamp) -> TxResult<Option<usize>> {
    let Some(raw) = tx.jobs.get(doomed.job.as_str())? else {
        return Ok(None);
    };
    let job: Job = decode_tx(&raw)?;
    if !ended_before(&job, cutoff) {
        return Ok(None);
    }
    let mut deliveries = Vec::with_capacity(doomed.deliveries.len());
    for key in &doomed.deliveries {
        if let Some(raw) = tx.deliveries.get(key.as_str())? {
            // Unreadable (damaged since the candidates were found): the job stays.
            let Ok(delivery) = decode_delivery(&raw) else {
                return Ok(None);
            };
            if delivery.state == DeliveryState::Pending {
                return Ok(None);
            }
            deliveries.push((key, delivery));
        }
    }
    for (key, delivery) in &deliveries {
        tx.deliveries.remove(key.as_str())?;
        tx.events.remove(delivery.event_id.as_str())?;
        if let Some(key) = super::deliveries::failed_key(delivery) {
            tx.index.remove(key)?;
        }
    }
    // The job's index entries (one per delivery, or one per group stored together).
    for key in &doomed.index_keys {
        tx.index.remove(key.as_slice())?;
    }
    tx.jobs.remove(job.id.as_str())?;
    tx.index.remove(keys::owned(
        keys::TENANT_JOBS,
        job.tenant.as_str(),
        job.id.as_str(),
    ))?;
    if let Some(agent) = &job.agent_id {
        let key = keys::agent(agent);
        if tx.index.get(&key)?.as_deref() == Some(job.id.as_str().as_bytes()) {
            tx.index.remove(key)?;
        }
    }
    Ok(Some(deliveries.len()))
}
