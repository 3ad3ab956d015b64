//! `GET /metrics`: Prometheus text. Counters and histograms are recorded where things happen;
//! queue depths, budget tokens and storage health are read at scrape time: stored counts that the store keeps
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
    let mut text = instance_gauges(&state).await;
    text.push_str(&crate::telemetry::metrics_handle().render());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// The gauges read at scrape time, written straight into the text rather than through the
/// process-wide recorder: they describe this instance's store and budgets, and a process that
/// runs several services (the tests do) must not show one service's value on another's page.
async fn instance_gauges(state: &AppState) -> String {
    let now = state.clock.now();
    let mut gauges = Gauges::default();
    if let Ok(counts) = state.store.counts().await {
        for (status, count) in [
            ("submitting", counts.jobs_submitting),
            ("processing", counts.jobs_processing),
        ] {
            gauges.add("agenthook_jobs", Some(("status", status)), count as f64);
        }
        for (queue, count) in [
            ("deliveries_fresh", counts.deliveries_fresh),
            ("deliveries_retry", counts.deliveries_retry),
        ] {
            gauges.add(
                "agenthook_queue_depth",
                Some(("queue", queue)),
                count as f64,
            );
        }
    }
    for (kind, queue) in [
        (WorkKind::Submit, "submit_due"),
        (WorkKind::Poll, "poll_due"),
    ] {
        if let Ok(due) = state.store.count_due(kind, now, DUE_COUNT_CAP).await {
            gauges.add("agenthook_queue_depth", Some(("queue", queue)), due as f64);
        }
    }
    let budgets = state.lifecycle.upstream.budgets();
    for budget in [&budgets.generate, &budgets.read] {
        let bucket = Some(("bucket", budget.name()));
        gauges.add(
            "agenthook_upstream_budget_tokens",
            bucket,
            budget.available(now, usize::MAX) as f64,
        );
        gauges.add(
            "agenthook_upstream_budget_per_minute",
            bucket,
            f64::from(budget.limit_per_minute()),
        );
    }
    let healthy = if state.store.current_fault().is_none() {
        1.0
    } else {
        0.0
    };
    gauges.add("agenthook_storage_healthy", None, healthy);
    gauges.text
}

/// Prometheus text for gauges, one `# TYPE` line per name (samples of a name come together).
#[derive(Default)]
struct Gauges {
    text: String,
    last: Option<&'static str>,
}

impl Gauges {
    fn add(&mut self, name: &'static str, label: Option<(&str, &str)>, value: f64) {
        use std::fmt::Write;
        if self.last != Some(name) {
            let _ = writeln!(self.text, "# TYPE {name} gauge");
            self.last = Some(name);
        }
        let _ = match label {
            Some((key, label)) => writeln!(self.text, "{name}{{{key}=\"{label}\"}} {value}"),
            None => writeln!(self.text, "{name} {value}"),
        };
    }
}
