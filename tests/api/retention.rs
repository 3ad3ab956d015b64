//! Housekeeping keeps finished jobs `storage.retention` long, then deletes them with everything
//! they caused; pending work stays whatever its age.

use std::time::Duration;

use agenthook::domain::{Delivery, Destination, Event, Job, JobStatus, Tenant};
use serde_json::Map;

use crate::helpers::*;

fn tenant() -> Tenant {
    Tenant::parse("tenant-a").unwrap()
}

#[tokio::test]
async fn housekeeping_deletes_finished_jobs_past_retention_and_keeps_pending_ones() {
    let h = harness(fast_sim_config(), |s| {
        s.storage.retention = Duration::from_secs(7 * 24 * 3600);
    });
    let store = &h.services.store;
    let now = agenthook::clock::Clock::now(&*h.clock);
    let mut finished = Job::new(tenant(), Map::new(), None, Map::new(), now);
    finished.accepted("agent-finished".into(), now, now);
    let mut pending = Job::new(tenant(), Map::new(), None, Map::new(), now);
    pending.accepted("agent-pending".into(), now, now);
    for job in [&finished, &pending] {
        assert!(store.accept_job(job.clone(), false, None).await.unwrap());
    }
    finished.finish(JobStatus::Ready, None, now);
    let event = Event::for_job(&finished, now).unwrap();
    let mut callback = Delivery::new(
        &event,
        Some(finished.id.clone()),
        Destination::Callback {
            url: "http://127.0.0.1:9/cb".into(),
        },
        now,
    );
    callback.state = agenthook::domain::DeliveryState::Succeeded;
    callback.next_attempt_at = None;
    assert!(store.complete_job(&finished, vec![callback]).await.unwrap());
    let housekeeping = h.services.maintenance();

    h.clock.advance(Duration::from_secs(6 * 24 * 3600));
    assert_eq!(
        housekeeping.step().await.unwrap().jobs,
        0,
        "within retention"
    );
    assert!(store.job_by_id(&finished.id).await.unwrap().is_some());

    h.clock.advance(Duration::from_secs(2 * 24 * 3600));
    let sweep = housekeeping.step().await.unwrap();
    assert_eq!((sweep.jobs, sweep.deliveries), (1, 1));
    assert!(store.job_by_id(&finished.id).await.unwrap().is_none());
    assert!(store
        .deliveries_of_job(&finished.id)
        .await
        .unwrap()
        .is_empty());
    assert!(
        store.job_by_id(&pending.id).await.unwrap().is_some(),
        "pending work stays whatever its age"
    );
    assert_eq!(housekeeping.step().await.unwrap().jobs, 0, "and only once");
}
