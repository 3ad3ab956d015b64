//! `POST /v1/upstream/webhooks`: bitHuman's own webhooks. No API key: the signature is the
//! authentication. The handler verifies, records and answers in a few milliseconds; the status
//! read the push asks for is the poller's.

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorBody};
use crate::push::{rejection_label, PushOutcome};
use crate::upstream::push::{
    parse_event, Rejection, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

/// What became of a push.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushAnswer {
    pub received: bool,
    /// `accepted` (the job is due for a status read now), `duplicate`, `unknown_agent`,
    /// `job_ended` or `ignored` (`ping`, other events).
    #[schema(example = "accepted")]
    pub outcome: &'static str,
}

/// Receive a bitHuman webhook
///
/// `agent.ready` / `agent.failed` from bitHuman, signed with `X-BitHuman-Signature`
/// (`sha256=` + hex HMAC-SHA256 over `"{X-BitHuman-Timestamp}.{body}"`). A push for a tracked
/// agent makes its job due for a status read at once; the read decides the outcome. Repeated
/// `X-BitHuman-Delivery` ids, unknown agents and `ping` are answered 200 and change nothing.
#[utoipa::path(
    tag = "upstream",
    operation_id = "receive_upstream_webhook",
    params(
        ("X-BitHuman-Signature" = String, Header, description = "`sha256=` + hex HMAC-SHA256"),
        ("X-BitHuman-Timestamp" = String, Header, description = "Unix seconds; within 5 minutes"),
        ("X-BitHuman-Delivery" = Option<String>, Header, description = "Delivery id; repeats are ignored"),
        ("X-BitHuman-Event" = Option<String>, Header, description = "`agent.ready`, `agent.failed`, `ping`, ..."),
    ),
    request_body(content = String, content_type = "application/json", description = "bitHuman's event body"),
    responses(
        (status = 200, description = "Received", body = PushAnswer),
        (status = 400, description = "Signed, but not an event body (`BAD_REQUEST`)", body = ErrorBody),
        (status = 401, description = "Missing, wrong or stale signature (`UNAUTHORIZED`)", body = ErrorBody),
        (status = 404, description = "No webhook secret is configured (`NOT_FOUND`)", body = ErrorBody),
    ),
)]
#[post("/upstream/webhooks")]
pub async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let push = &state.lifecycle.push;
    if !push.is_enabled() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "upstream webhooks are not enabled",
        )
        .with_details("set upstream.webhooks.secret or upstream.webhooks.public_url"));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let now = state.clock.now();
    if let Err(rejection) = push.verify(
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now,
    ) {
        count(rejection_label(rejection));
        let details = match rejection {
            Rejection::BadSignature => "X-BitHuman-Signature is missing or does not match the body",
            Rejection::Stale => "X-BitHuman-Timestamp is more than 5 minutes from now",
        };
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid upstream webhook signature",
        )
        .with_details(details));
    }
    let Some(event) = parse_event(header(EVENT_HEADER), &body) else {
        count("malformed");
        return Err(ApiError::bad_request("the body is not a bitHuman event")
            .with_details("expected JSON with `event` and, for agent events, `data.agent_id`"));
    };
    let store = &state.store;
    let outcome = push
        .receive(
            header(DELIVERY_HEADER),
            &event,
            now,
            |agent_id| async move {
                match store.job_by_agent(&agent_id).await {
                    Ok(Some(job)) => Some(job.is_pending().then_some(job.id)),
                    Ok(None) => None,
                    Err(error) => {
                        // Kept as an early push; the routine poll is the safety net.
                        tracing::warn!(%error, agent_id, "could not look up the agent of a push");
                        None
                    }
                }
            },
        )
        .await;
    count(outcome.label());
    if let PushOutcome::Accepted(job_id) = &outcome {
        state.signals.pushed.mark(job_id);
        state.signals.poller_wake.notify_one();
    }
    tracing::debug!(
        delivery = header(DELIVERY_HEADER).unwrap_or(""),
        outcome = outcome.label(),
        "upstream push"
    );
    Ok(HttpResponse::Ok().json(PushAnswer {
        received: true,
        outcome: outcome.label(),
    }))
}

fn count(outcome: &'static str) {
    metrics::counter!("agenthook_upstream_pushes_total", "outcome" => outcome).increment(1);
}
