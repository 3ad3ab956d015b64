//! `GET /metrics`: Prometheus text. Counters and histograms are recorded where things happen;
//! queue depths and budget tokens are read at scrape time: stored counts that the store keeps
//! up to date as it writes, and the due entries counted up to [`DUE_COUNT_CAP`], so a scrape
//! costs the same however much is stored.

use actix_web::{get, web, HttpResponse};

use super::AppState;
use crate::store::WorkKind;

/// Due jobs counted per scrape at most: past it the gauge shows this many (the scheduler is
/// that far behind, which is what the gauge is for).
const DUE_COUNT_CAP: usize = 10_000;

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
    if let Ok(counts) = state.store.counts().await {
        for (status, count) in [
            ("submitting", counts.jobs_submitting),
            ("processing", counts.jobs_processing),
        ] {
            metrics::gauge!("agenthook_jobs", "status" => status).set(count as f64);
        }
        for (queue, count) in [
            ("deliveries_fresh", counts.deliveries_fresh),
            ("deliveries_retry", counts.deliveries_retry),
        ] {
            metrics::gauge!("agenthook_queue_depth", "queue" => queue).set(count as f64);
        }
    }
    for (kind, queue) in [
        (WorkKind::Submit, "submit_due"),
        (WorkKind::Poll, "poll_due"),
    ] {
        if let Ok(due) = state.store.count_due(kind, now, DUE_COUNT_CAP).await {
            metrics::gauge!("agenthook_queue_depth", "queue" => queue).set(due as f64);
        }
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
