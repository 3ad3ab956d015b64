//! `GET /metrics`: Prometheus text. Counters and histograms are recorded where things happen;
//! queue depths and budget tokens are read at scrape time.

use actix_web::{get, web, HttpResponse};

use super::AppState;
use crate::store::{DeliveryQueue, WorkKind};

/// Prometheus metrics
///
/// Jobs by status, upstream requests by endpoint and outcome, budget tokens, 429s, deliveries
/// by outcome and error class, queue depths, and latency histograms, all prefixed `agenthook_`.
#[utoipa::path(
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")),
)]
#[get("/metrics")]
pub async fn render(state: web::Data<AppState>) -> HttpResponse {
    let now = state.clock.now();
    for (kind, status) in [
        (WorkKind::Submit, "submitting"),
        (WorkKind::Poll, "processing"),
    ] {
        if let Ok((total, due)) = state.store.count_queued(kind, now) {
            metrics::gauge!("agenthook_jobs", "status" => status).set(total as f64);
            let queue = if kind == WorkKind::Submit {
                "submit_due"
            } else {
                "poll_due"
            };
            metrics::gauge!("agenthook_queue_depth", "queue" => queue).set(due as f64);
        }
    }
    for (queue, name) in [
        (DeliveryQueue::Fresh, "deliveries_fresh"),
        (DeliveryQueue::Retry, "deliveries_retry"),
    ] {
        metrics::gauge!("agenthook_queue_depth", "queue" => name)
            .set(state.store.queued_deliveries(queue) as f64);
    }
    let budgets = state.lifecycle.upstream.budgets();
    for budget in [&budgets.generate, &budgets.read] {
        metrics::gauge!("agenthook_upstream_budget_tokens", "bucket" => budget.name())
            .set(budget.available(now, usize::MAX) as f64);
        metrics::gauge!("agenthook_upstream_budget_per_minute", "bucket" => budget.name())
            .set(f64::from(budget.limit_per_minute()));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics_handle().render())
}
