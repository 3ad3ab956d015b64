//! Jobs after admission: cancellation.

use crate::api::ApiError;
use crate::clock::Timestamp;
use crate::domain::{Job, JobId, JobStatus, Tenant};
use crate::store::{Cancellation, Store};

/// Cancel the tenant's job `id`: no more polls, no events. Cancelling a cancelled job answers
/// it again; a job that already ended as ready or failed is a conflict.
pub async fn cancel(
    store: &Store,
    tenant: &Tenant,
    id: &JobId,
    now: Timestamp,
) -> Result<Job, ApiError> {
    match store.cancel_job(tenant, id, now).await? {
        Cancellation::Cancelled(job) => Ok(job),
        Cancellation::AlreadyFinished(job) if job.status == JobStatus::Cancelled => Ok(job),
        Cancellation::AlreadyFinished(job) => Err(ApiError::conflict(format!(
            "job already ended as {}",
            job.status.as_str()
        ))),
        Cancellation::NotFound => Err(ApiError::not_found("job")),
    }
}
