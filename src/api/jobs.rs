//! `/v1/jobs`: create (submitting upstream at once), read, list, cancel.

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::body::{self, kind_of};
use super::deliveries::{DeliveryList, DeliveryView};
use super::{ApiError, AppState, ErrorBody};
use crate::clock::after;
use crate::delivery::policy;
use crate::domain::{Job, JobId, JobStatus, JobView, Tenant};
use crate::lifecycle::Submission;
use crate::store::{Admission, Cancellation, IdempotencyKey, IdempotentResponse};

/// Idempotency keys and their answers are kept this long.
pub const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const METADATA_LIMIT: usize = 16 * 1024;

/// Upstream generate fields whose type we know; everything else is forwarded untouched.
const STRING_FIELDS: [&str; 9] = [
    "prompt",
    "image",
    "video",
    "audio",
    "aspect_ratio",
    "framing",
    "agent_id",
    "model",
    "version",
];
const BOOL_FIELDS: [&str; 1] = ["transparency"];

/// A generate request: the upstream's fields, forwarded as they came (any other field is
/// forwarded too), and agenthook's own `callback_url` and `metadata`, never forwarded.
// Only describes the body for the OpenAPI document; `JobSpec::parse` reads it.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct GenerateRequest {
    /// The agent's system prompt.
    prompt: Option<String>,
    /// Image URL or base64 data.
    image: Option<String>,
    /// Video URL or base64 data.
    video: Option<String>,
    /// Audio URL or base64 data.
    audio: Option<String>,
    aspect_ratio: Option<String>,
    framing: Option<String>,
    agent_id: Option<String>,
    model: Option<String>,
    version: Option<String>,
    transparency: Option<bool>,
    /// Where the signed completion event is POSTed: an absolute http/https URL that passes the
    /// network policy. Not forwarded.
    #[schema(format = "uri", example = "https://example.com/hooks/agenthook")]
    callback_url: Option<String>,
    /// At most 16 KiB of JSON, echoed in every event of the job. Not forwarded.
    metadata: Option<Map<String, Value>>,
}

/// The `Idempotency-Key` request header, as documented on the routes that take it.
pub const IDEMPOTENCY_KEY_DOC: &str = "1-255 printable ASCII characters. The same key with the same body returns the first response and calls upstream once; with a different body, 422; while the first request is still in flight, 409. Kept 24 h.";

/// A generate request, parsed at the edge: agenthook's own fields split from the upstream's.
#[derive(Debug)]
pub struct JobSpec {
    pub upstream: Map<String, Value>,
    pub callback_url: Option<String>,
    pub metadata: Map<String, Value>,
}

impl JobSpec {
    pub fn parse(mut body: Map<String, Value>, allow_private: bool) -> Result<JobSpec, ApiError> {
        let callback_url = match body.remove("callback_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(raw)) => {
                let url = policy::check_url(&raw, allow_private).map_err(|e| {
                    ApiError::bad_request(format!("callback_url is not acceptable: {e}"))
                        .with_details("callback_url")
                })?;
                Some(url.to_string())
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "callback_url must be a string, not {}",
                    kind_of(&other)
                ))
                .with_details("callback_url"))
            }
        };
        let metadata = match body.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => {
                let size = serde_json::to_vec(&map)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                if size > METADATA_LIMIT {
                    return Err(ApiError::bad_request(format!(
                        "metadata is {size} bytes; at most {METADATA_LIMIT} are allowed"
                    ))
                    .with_details("metadata"));
                }
                map
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "metadata must be a JSON object, not {}",
                    kind_of(&other)
                ))
                .with_details("metadata"))
            }
        };
        for (field, value) in &body {
            let wrong = (STRING_FIELDS.contains(&field.as_str())
                && !matches!(value, Value::String(_) | Value::Null))
                || (BOOL_FIELDS.contains(&field.as_str())
                    && !matches!(value, Value::Bool(_) | Value::Null));
            if wrong {
                let expected = if BOOL_FIELDS.contains(&field.as_str()) {
                    "a boolean"
                } else {
                    "a string"
                };
                return Err(ApiError::bad_request(format!(
                    "{field} must be {expected}, not {}",
                    kind_of(value)
                ))
                .with_details(field.clone()));
            }
        }
        Ok(JobSpec {
            upstream: body,
            callback_url,
            metadata,
        })
    }
}

/// The `Idempotency-Key` header with the fingerprint of the body it came with.
pub fn idempotency_key(
    req: &HttpRequest,
    body: &Map<String, Value>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(raw) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| {
            (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .ok_or_else(|| {
            ApiError::bad_request("Idempotency-Key must be 1-255 printable ASCII characters")
                .with_details("Idempotency-Key")
        })?;
    let canonical = canonical_json(&Value::Object(body.clone()));
    let fingerprint = hex(&Sha256::digest(canonical.as_bytes()));
    Ok(Some(IdempotencyKey {
        key: key.to_owned(),
        fingerprint,
    }))
}

/// JSON with object keys sorted at every level, so key order does not change a fingerprint.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the caller wants an unreachable upstream handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer `202 submitting` and keep trying in the background (`/v1/jobs`).
    Deferrable,
    /// Answer with the failure; keep nothing (the drop-in generate route).
    Synchronous,
}

/// Render the answer for a job that upstream accepted (or that will be retried).
pub type Render = fn(&Job) -> IdempotentResponse;

/// How long a request may wait for upstream's answer before its job is stored as pending
/// (durably), so that a crash while upstream takes its time cannot leave an agent that no
/// job tracks. Upstream usually answers sooner: then the job is written once, accepted.
pub const HOLD_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Settle the idempotency key, submit the job upstream, store the outcome with the answer
/// its key replays, durably, and answer.
pub async fn admit(
    state: &web::Data<AppState>,
    tenant: Tenant,
    spec: JobSpec,
    key: Option<IdempotencyKey>,
    mode: Mode,
    render: Render,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mut job = Job::new(tenant, spec.upstream, spec.callback_url, spec.metadata, now);
    // If the job has to be held: the poller takes it over then, should we die meanwhile.
    job.next_poll_at = Some(after(now, state.settings.poller.lease));
    let hold = match state.store.begin_job(&job, key.as_ref(), IDEMPOTENCY_TTL)? {
        Admission::Created(hold) => hold,
        Admission::Replay(response) => return Ok(replay(&response)),
        Admission::Mismatch => {
            return Err(ApiError::unprocessable(
                "this Idempotency-Key was already used with a different request body",
            ))
        }
        Admission::InFlight { job_id, since } => {
            let abandoned = after(since, state.settings.poller.lease) <= now;
            match state.store.job(&job.tenant, &job_id)? {
                Some(first) if abandoned => return Ok(replay(&render(&first))),
                _ => {
                    return Err(ApiError::conflict(
                        "a request with this Idempotency-Key is still in progress",
                    ))
                }
            }
        }
    };
    // From here on the job is upstream's business too: finish even if the client goes away.
    let state = state.clone();
    let finished = actix_web::rt::spawn(async move {
        let answer = submit_and_store(&state, job, key, mode, render).await;
        drop(hold);
        answer
    });
    match finished.await {
        Ok(answer) => answer.map(|response| respond(&response)),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

async fn submit_and_store(
    state: &AppState,
    mut job: Job,
    key: Option<IdempotencyKey>,
    mode: Mode,
    render: Render,
) -> Result<IdempotentResponse, ApiError> {
    let now = job.created_at;
    let pending = job.clone();
    let mut held = false;
    let submission = {
        let submit = state.lifecycle.submit(&mut job);
        tokio::pin!(submit);
        tokio::select! {
            submission = &mut submit => submission,
            _ = tokio::time::sleep(HOLD_AFTER) => {
                state.store.hold_job(&pending, key.as_ref()).await?;
                held = true;
                submit.await
            }
        }
    };
    drop(pending);
    let outcome = match &submission {
        Submission::Accepted => "accepted",
        Submission::Deferred(_) => "deferred",
        Submission::Refused(_) => "refused",
    };
    metrics::counter!("agenthook_jobs_submitted_total", "outcome" => outcome).increment(1);
    match submission {
        Submission::Accepted => {}
        Submission::Deferred(_) if mode == Mode::Deferrable => {}
        Submission::Deferred(error) => {
            state.store.refuse_job(&job, key.as_ref(), None).await?;
            return Err(match error {
                Some(error) => ApiError::upstream(&error),
                None => {
                    let wait = crate::clock::until(
                        now,
                        state
                            .lifecycle
                            .upstream
                            .budgets()
                            .generate
                            .next_available_at(now),
                    );
                    let mut e = ApiError::rate_limited(wait.as_secs() + 1);
                    e.message = "the upstream generate budget is used up; try again later".into();
                    e
                }
            });
        }
        Submission::Refused(error) => {
            let api_error = ApiError::upstream(&error);
            let response = IdempotentResponse {
                status: api_error.status.as_u16(),
                body: serde_json::to_value(api_error.body()).expect("error body serialises"),
            };
            state
                .store
                .refuse_job(&job, key.as_ref(), Some(&response))
                .await?;
            return Err(api_error);
        }
    }
    let response = render(&job);
    let id = job.id.clone();
    let stored = job.clone();
    let saved = state
        .store
        .accept_job(job, held, key.map(|k| (k, response.clone())))
        .await?;
    if saved {
        if state.lifecycle.after_accepted(&stored) {
            state.signals.pushed.mark(&stored.id);
        }
        state.signals.poller_wake.notify_one();
    } else {
        tracing::info!(job_id = %id, "job was cancelled during submission");
    }
    Ok(response)
}

fn respond(response: &IdempotentResponse) -> HttpResponse {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    HttpResponse::build(status).json(&response.body)
}

fn replay(response: &IdempotentResponse) -> HttpResponse {
    let mut answer = respond(response);
    answer.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
        actix_web::http::header::HeaderValue::from_static("true"),
    );
    answer
}

fn job_answer(job: &Job) -> IdempotentResponse {
    IdempotentResponse {
        status: 202,
        body: serde_json::to_value(JobView::from(job)).expect("job view serialises"),
    }
}

/// Submit a generation job
///
/// Submits upstream right away. `202` means the job is stored durably: `processing` once
/// upstream has accepted it, `submitting` while upstream is unreachable (it is retried in the
/// background). A refusal by upstream keeps upstream's status, with `code: UPSTREAM_ERROR` and
/// upstream's code in `details`, and no job is kept.
#[utoipa::path(
    tag = "jobs",
    operation_id = "create_job",
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DOC)),
    request_body = GenerateRequest,
    responses(
        (status = 202, description = "Stored; submitting or processing", body = JobView),
        (status = 400, description = "Malformed body, bad `callback_url` or `metadata`, or refused by upstream", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key, or upstream refused the account", body = ErrorBody),
        (status = 402, description = "Upstream refused: insufficient balance (`UPSTREAM_ERROR`)", body = ErrorBody),
        (status = 404, description = "Upstream refused (`UPSTREAM_ERROR`)", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still in flight", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "`Idempotency-Key` reused with a different body", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/jobs")]
pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body::json_object(&req, payload, state.settings.server.max_body_bytes).await?;
    let key = idempotency_key(&req, &body)?;
    let spec = JobSpec::parse(body, state.settings.delivery.allow_private_networks)?;
    admit(&state, tenant, spec, key, Mode::Deferrable, job_answer).await
}

pub fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(|| ApiError::not_found("job"))
}

/// One job
#[utoipa::path(
    tag = "jobs",
    operation_id = "get_job",
    params(("id" = String, Path, description = "Job id (`job_...`)")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/jobs/{id}")]
pub async fn get(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    let job = state
        .store
        .job(&tenant, &id)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(HttpResponse::Ok().json(JobView::from(&job)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    #[param(value_type = Option<JobId>)]
    after: Option<String>,
}

/// One page of jobs, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub data: Vec<JobView>,
    /// Pass as `after` for the next page; null on the last one.
    pub next: Option<JobId>,
}

pub const MAX_PAGE: usize = 100;

/// An optional query parameter parsed with `parse`; a value that does not parse is a 400
/// naming the parameter and what it must be.
pub fn query_param<T>(
    raw: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
    name: &'static str,
    must_be: &str,
) -> Result<Option<T>, ApiError> {
    raw.map(|value| {
        parse(value).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be {must_be}")).with_details(name)
        })
    })
    .transpose()
}

pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(20),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(
            ApiError::bad_request(format!("limit must be between 1 and {MAX_PAGE}"))
                .with_details("limit"),
        ),
    }
}

/// The tenant's jobs
#[utoipa::path(
    tag = "jobs",
    operation_id = "list_jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of jobs", body = JobPage),
        (status = 400, description = "Bad query string", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/jobs")]
pub async fn list(
    query: web::Query<ListQuery>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let status = query_param(
        query.status.as_deref(),
        JobStatus::parse,
        "status",
        "one of submitting, processing, ready, failed, cancelled",
    )?;
    let limit = page_limit(query.limit)?;
    let after = query_param(query.after.as_deref(), JobId::parse, "after", "a job id")?;
    let page = state
        .store
        .list_jobs(&tenant, status, after.as_ref(), limit)?;
    Ok(HttpResponse::Ok().json(JobPage {
        data: page.jobs.iter().map(JobView::from).collect(),
        next: page.next,
    }))
}

/// Cancel a job
///
/// No more polls, no events. Cancelling a cancelled job answers it again.
#[utoipa::path(
    tag = "jobs",
    operation_id = "cancel_job",
    params(("id" = String, Path, description = "Job id (`job_...`)")),
    responses(
        (status = 200, description = "The cancelled job", body = JobView),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "The job already ended as ready or failed", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[delete("/jobs/{id}")]
pub async fn cancel(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    match state.store.cancel_job(&tenant, &id, state.clock.now())? {
        Cancellation::Cancelled(job) => {
            state.store.durable().await?;
            Ok(HttpResponse::Ok().json(JobView::from(&job)))
        }
        Cancellation::AlreadyFinished(job) if job.status == JobStatus::Cancelled => {
            Ok(HttpResponse::Ok().json(JobView::from(&job)))
        }
        Cancellation::AlreadyFinished(job) => Err(ApiError::conflict(format!(
            "job already ended as {}",
            job.status.as_str()
        ))),
        Cancellation::NotFound => Err(ApiError::not_found("job")),
    }
}

/// The deliveries of a job's events
#[utoipa::path(
    tag = "jobs",
    operation_id = "list_job_deliveries",
    params(("id" = String, Path, description = "Job id (`job_...`)")),
    responses(
        (status = 200, description = "Every delivery of this job's events", body = DeliveryList),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/jobs/{id}/deliveries")]
pub async fn deliveries(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    if state.store.job(&tenant, &id)?.is_none() {
        return Err(ApiError::not_found("job"));
    }
    let deliveries = state.store.deliveries_of_job(&id)?;
    Ok(HttpResponse::Ok().json(DeliveryList {
        data: deliveries.iter().map(DeliveryView::of).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_body_names_every_field_the_parser_knows() {
        let mut known: Vec<String> = STRING_FIELDS
            .iter()
            .chain(&BOOL_FIELDS)
            .chain(&["callback_url", "metadata"])
            .map(|f| f.to_string())
            .collect();
        known.sort();
        assert_eq!(
            crate::api::openapi::property_names::<GenerateRequest>(),
            known
        );
    }

    fn parse(v: Value) -> Result<JobSpec, ApiError> {
        JobSpec::parse(v.as_object().unwrap().clone(), true)
    }

    #[test]
    fn own_fields_are_split_from_the_forwarded_ones() {
        let spec = parse(json!({
            "prompt": "hi", "aspect_ratio": "16:9", "brand_new_field": [1, 2],
            "callback_url": "http://127.0.0.1:9/cb", "metadata": {"order": 7}
        }))
        .unwrap();
        assert_eq!(spec.callback_url.as_deref(), Some("http://127.0.0.1:9/cb"));
        assert_eq!(spec.metadata["order"], 7);
        assert!(!spec.upstream.contains_key("callback_url"));
        assert!(!spec.upstream.contains_key("metadata"));
        assert_eq!(spec.upstream["brand_new_field"], json!([1, 2]));
        assert_eq!(spec.upstream["aspect_ratio"], "16:9");
    }

    #[test]
    fn wrong_types_are_refused_naming_the_field() {
        for (body, field) in [
            (json!({"prompt": 5}), "prompt"),
            (json!({"transparency": "yes"}), "transparency"),
            (json!({"metadata": [1]}), "metadata"),
            (json!({"callback_url": 3}), "callback_url"),
            (json!({"callback_url": "not a url"}), "callback_url"),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.details, field);
        }
    }

    #[test]
    fn metadata_over_16_kib_is_refused() {
        let big = "x".repeat(METADATA_LIMIT);
        let err = parse(json!({"metadata": {"blob": big}})).unwrap_err();
        assert_eq!(err.details, "metadata");
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": null}});
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [1, {"p": 2, "q": 1}]}, "b": 1}"#)
                .unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_ne!(canonical_json(&a), canonical_json(&json!({"b": 2})));
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
            prop_oneof![
                Just("http://127.0.0.1:1/x"),
                Just("ftp://x"),
                Just("http://[::1]/"),
                Just("javascript:alert(1)")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            let keys = prop_oneof![
                Just("prompt".to_owned()),
                Just("image".to_owned()),
                Just("transparency".to_owned()),
                Just("callback_url".to_owned()),
                Just("metadata".to_owned()),
                "[a-z_]{1,8}"
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_json_object_parses_or_is_a_400_never_a_panic(body in arbitrary_json()) {
            if let Value::Object(map) = body {
                for allow_private in [false, true] {
                    match JobSpec::parse(map.clone(), allow_private) {
                        Ok(spec) => {
                            proptest::prop_assert!(!spec.upstream.contains_key("callback_url"));
                            proptest::prop_assert!(!spec.upstream.contains_key("metadata"));
                        }
                        Err(e) => proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
                    }
                }
            }
        }

        #[test]
        fn any_bytes_are_parsed_or_refused_with_a_400(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Err(e) = body::parse_json(&bytes) {
                proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn canonical_json_is_a_fixed_point_of_reparsing(value in arbitrary_json()) {
            let once = canonical_json(&value);
            let reparsed: Value = serde_json::from_str(&once).unwrap();
            proptest::prop_assert_eq!(canonical_json(&reparsed), once);
        }
    }
}
