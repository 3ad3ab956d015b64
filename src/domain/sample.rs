//! Sample events, for receivers that want one before the first real event (Zapier's
//! `performList`). Built from a sample job by [`Event::for_job`], the code that builds live
//! events, so a sample has the live shape by construction.

use serde_json::{json, Map, Value};

use super::{Event, EventType, Job, JobError, JobStatus, Tenant};
use crate::clock::Timestamp;

/// A sample event of `event_type` for `tenant` at `now`: an agent that became ready, one that
/// failed, or the test event.
pub fn sample_event(tenant: Tenant, event_type: EventType, now: Timestamp) -> Event {
    let status = match event_type {
        EventType::AgentReady => JobStatus::Ready,
        EventType::AgentFailed => JobStatus::Failed,
        EventType::WebhookTest => return Event::test(tenant, now),
    };
    let created = now - chrono::Duration::minutes(4);
    let mut metadata = Map::new();
    metadata.insert("sample".into(), Value::Bool(true));
    let mut job = Job::new(tenant, Map::new(), None, metadata, created);
    let agent_id = "A00SAMPLE01";
    job.accepted(agent_id.into(), created, created);
    let ready = status == JobStatus::Ready;
    job.agent = Some(json!({
        "agent_id": agent_id,
        "status": if ready { "ready" } else { "failed" },
        "name": "Sample agent",
        "system_prompt": "You are a friendly guide to our product.",
        "image_url": "https://example.com/sample/portrait.jpg",
        "video_url": null,
        "model_url": if ready { json!("https://example.com/sample/A00SAMPLE01.imx") } else { Value::Null },
        "error_message": if ready { Value::Null } else { json!("The image has no detectable face.") },
    }));
    let error = (!ready).then(|| JobError {
        code: "GENERATION_FAILED".into(),
        message: "The image has no detectable face.".into(),
    });
    job.finish(status, error, now);
    Event::for_job(&job, now).expect("a finished job has an event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_have_the_live_shape_of_their_type() {
        let tenant = Tenant::parse("acme").unwrap();
        let now = chrono::Utc::now();
        for (event_type, status) in [
            (EventType::AgentReady, "ready"),
            (EventType::AgentFailed, "failed"),
        ] {
            let payload = sample_event(tenant.clone(), event_type, now).payload();
            assert_eq!(payload["type"], event_type.as_str());
            assert_eq!(payload["data"]["status"], status);
            let keys: Vec<&str> = payload["data"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for key in [
                "job_id",
                "agent_id",
                "status",
                "model_url",
                "name",
                "image_url",
                "video_url",
                "system_prompt",
                "error_code",
                "error_message",
                "metadata",
                "created_at",
                "completed_at",
            ] {
                assert!(keys.contains(&key), "{key} missing from {payload}");
            }
        }
        let test = sample_event(tenant, EventType::WebhookTest, now).payload();
        assert_eq!(test["type"], "webhook.test");
    }
}
