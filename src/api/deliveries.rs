//! `/v1/deliveries`: every event sent to every destination, its attempts, and manual retries.

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::jobs::{page_limit, query_param};
use super::{ApiError, AppState, ErrorBody};
use crate::domain::{
    Attempt, Delivery, DeliveryId, DeliveryState, Destination, EventId, EventType, JobId,
    MessageId, Payload, Tenant,
};
use crate::service;

/// A delivery as the API lists it: one event to one destination, and its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub event_type: EventType,
    /// The job whose event this is; null for `webhook.test`.
    pub job_id: Option<JobId>,
    /// The Standard Webhooks `webhook-id`, the same on every attempt.
    pub webhook_id: MessageId,
    pub destination: Destination,
    pub state: DeliveryState,
    pub attempts: Vec<Attempt>,
    /// When the next attempt is due; null once succeeded or failed.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeliveryView {
    pub fn of(d: &Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type,
            job_id: d.job_id.clone(),
            webhook_id: d.message_id.clone(),
            destination: d.destination.clone(),
            state: d.state,
            attempts: d.attempts.clone(),
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// One delivery as the API shows it alone: the list view and the event body it carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub view: DeliveryView,
    /// The standard event body (`type`, `timestamp`, `data`); other formats are rendered from
    /// it at send time. Written as the text it is stored as.
    #[schema(value_type = Value)]
    pub payload: Payload,
}

impl DeliveryDetail {
    pub fn of(d: &Delivery) -> DeliveryDetail {
        DeliveryDetail {
            view: DeliveryView::of(d),
            payload: d.payload.clone(),
        }
    }
}

/// Deliveries, all at once.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
}

/// One page of deliveries, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub data: Vec<DeliveryView>,
    /// Pass as `after` for the next page; null on the last one.
    pub next: Option<DeliveryId>,
}

fn parse_id(raw: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(raw).ok_or_else(|| ApiError::not_found("delivery"))
}

async fn find(state: &AppState, tenant: &Tenant, raw: &str) -> Result<Delivery, ApiError> {
    let id = parse_id(raw)?;
    state
        .store
        .delivery(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only deliveries in this state (`failed`: the dead letters).
    #[param(value_type = Option<DeliveryState>)]
    state: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    #[param(value_type = Option<DeliveryId>)]
    after: Option<String>,
}

/// The tenant's deliveries
#[utoipa::path(
    tag = "deliveries",
    operation_id = "list_deliveries",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveryPage),
        (status = 400, description = "Bad query string", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/deliveries")]
pub async fn list(
    query: web::Query<ListQuery>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let wanted = query_param(
        query.state.as_deref(),
        DeliveryState::parse,
        "state",
        "one of pending, succeeded, failed",
    )?;
    let limit = page_limit(query.limit)?;
    let after = query_param(
        query.after.as_deref(),
        DeliveryId::parse,
        "after",
        "a delivery id",
    )?;
    let page = state
        .store
        .list_deliveries(&tenant, wanted, after.as_ref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(DeliveryPage {
        data: page.deliveries.iter().map(DeliveryView::of).collect(),
        next: page.next,
    }))
}

/// One delivery, with its attempts and payload
#[utoipa::path(
    tag = "deliveries",
    operation_id = "get_delivery",
    params(("id" = String, Path, description = "Delivery id (`dlv_...`)")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryDetail),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such delivery for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/deliveries/{id}")]
pub async fn get(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let delivery = find(&state, &tenant, &path).await?;
    Ok(HttpResponse::Ok().json(DeliveryDetail::of(&delivery)))
}

/// Send a delivery again now
///
/// Whatever its state (a succeeded delivery is sent again too), with the same `webhook-id`;
/// a subscription's delivery goes where the subscription points now.
#[utoipa::path(
    tag = "deliveries",
    operation_id = "retry_delivery",
    params(("id" = String, Path, description = "Delivery id (`dlv_...`)")),
    responses(
        (status = 202, description = "Queued to be sent now", body = DeliveryDetail),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such delivery for this tenant", body = ErrorBody),
        (status = 409, description = "Its subscription is deleted or disabled", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/deliveries/{id}/retry")]
pub async fn retry(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let updated = service::resend::retry_delivery(
        &state.store,
        &state.signals,
        &tenant,
        &id,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Accepted().json(DeliveryDetail::of(&updated)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::resend::tests::failed_to;

    #[test]
    fn the_detail_view_adds_the_payload_to_the_list_view() {
        let d = failed_to(Destination::Callback {
            url: "https://example.com/cb".into(),
        });
        let listed = serde_json::to_value(DeliveryView::of(&d)).unwrap();
        let detail = serde_json::to_value(DeliveryDetail::of(&d)).unwrap();
        assert!(listed.get("payload").is_none());
        assert_eq!(detail["payload"]["type"], "webhook.test");
        assert_eq!(detail["webhook_id"], d.message_id.as_str());
        assert_eq!(detail["attempts"][0]["error"], "http");
        assert_eq!(detail["attempts"][0]["response_body"], "boom");
        assert!(detail.get("tenant").is_none());
    }
}
