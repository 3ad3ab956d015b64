//! `/v1/jobs`: create (submitting upstream at once), read, list, cancel.

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::body;
use super::deliveries::{DeliveryList, DeliveryView};
use super::request;
use super::request::field::Checked;
use super::{ApiError, AppState, ErrorBody};
use crate::domain::{Job, JobId, JobStatus, JobView, Tenant};
use crate::service;
use crate::service::admission::{admit, Answer, JobSpec, Mode};
use crate::store::{IdempotencyKey, IdempotentResponse};

const METADATA_LIMIT: usize = 16 * 1024;

/// Field deserializers of a generate request; the upstream's fields are only type-checked.
mod de {
    use serde::de::Deserializer;

    use super::*;
    use crate::api::request::field;
    use crate::api::request::FieldError;

    macro_rules! checked_strings {
        ($($name:ident),*) => {$(
            pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
                field::checked_string(stringify!($name), d)
            }
        )*};
    }

    checked_strings!(
        agent_id,
        aspect_ratio,
        audio,
        framing,
        image,
        model,
        prompt,
        version,
        video
    );

    pub fn transparency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        field::boolean("transparency", field::value(d)?)
    }

    pub fn callback_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        field::string("callback_url", field::value(d)?)
    }

    pub fn metadata<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Map<String, Value>>, D::Error> {
        let map = field::object("metadata", field::value(d)?)?;
        if let Some(map) = &map {
            let size = serde_json::to_vec(map)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > METADATA_LIMIT {
                return Err(FieldError::new(
                    "metadata",
                    format!("metadata is {size} bytes; at most {METADATA_LIMIT} are allowed"),
                )
                .into_serde());
            }
        }
        Ok(map)
    }
}

/// A generate request: the upstream's fields, forwarded as they came (any other field is
/// forwarded too), and agenthook's own `callback_url` and `metadata`, never forwarded.
// Fields are checked in this order: agenthook's own first, then the upstream's. The upstream's
// are only checked (`Checked`): they are forwarded from the body as they came.
#[allow(dead_code)]
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct GenerateRequest {
    /// Where the signed completion event is POSTed: an absolute http/https URL that passes the
    /// network policy. Not forwarded.
    #[serde(default, deserialize_with = "de::callback_url")]
    #[schema(format = "uri", example = "https://example.com/hooks/agenthook")]
    pub callback_url: Option<String>,
    /// At most 16 KiB of JSON, echoed in every event of the job. Not forwarded.
    #[serde(default, deserialize_with = "de::metadata")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "de::agent_id")]
    #[schema(value_type = Option<String>)]
    pub agent_id: Checked,
    #[serde(default, deserialize_with = "de::aspect_ratio")]
    #[schema(value_type = Option<String>)]
    pub aspect_ratio: Checked,
    /// Audio URL or base64 data.
    #[serde(default, deserialize_with = "de::audio")]
    #[schema(value_type = Option<String>)]
    pub audio: Checked,
    #[serde(default, deserialize_with = "de::framing")]
    #[schema(value_type = Option<String>)]
    pub framing: Checked,
    /// Image URL or base64 data.
    #[serde(default, deserialize_with = "de::image")]
    #[schema(value_type = Option<String>)]
    pub image: Checked,
    #[serde(default, deserialize_with = "de::model")]
    #[schema(value_type = Option<String>)]
    pub model: Checked,
    /// The agent's system prompt.
    #[serde(default, deserialize_with = "de::prompt")]
    #[schema(value_type = Option<String>)]
    pub prompt: Checked,
    #[serde(default, deserialize_with = "de::transparency")]
    pub transparency: Option<bool>,
    #[serde(default, deserialize_with = "de::version")]
    #[schema(value_type = Option<String>)]
    pub version: Checked,
    /// Video URL or base64 data.
    #[serde(default, deserialize_with = "de::video")]
    #[schema(value_type = Option<String>)]
    pub video: Checked,
}

impl GenerateRequest {
    /// Check a generate body and split agenthook's own fields from the upstream's, which are
    /// forwarded as they came.
    pub fn parse(mut body: Map<String, Value>, allow_private: bool) -> Result<JobSpec, ApiError> {
        request::url_first(&body, "callback_url", usize::MAX, allow_private)?;
        let request: GenerateRequest = request::from_object(&body)?;
        let callback_url = request
            .callback_url
            .map(|raw| request::check_url("callback_url", &raw, allow_private))
            .transpose()?;
        body.remove("callback_url");
        body.remove("metadata");
        Ok(JobSpec {
            upstream: body,
            callback_url,
            metadata: request.metadata.unwrap_or_default(),
        })
    }
}

/// The `Idempotency-Key` request header, as documented on the routes that take it.
pub const IDEMPOTENCY_KEY_DOC: &str = "1-255 printable ASCII characters. The same key with the same body returns the first response and calls upstream once; with a different body, 422; while the first request is still in flight, 409. Kept 24 h.";

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

/// The HTTP answer of an admission: a replay says so in `Idempotent-Replayed: true`.
pub fn answer_to_http(answer: &Answer) -> HttpResponse {
    match answer {
        Answer::Fresh(response) => respond(response),
        Answer::Replayed(response) => replay(response),
    }
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
    let spec = GenerateRequest::parse(body, state.settings.delivery.allow_private_networks)?;
    let answer = admit(
        state.into_inner(),
        tenant,
        spec,
        key,
        Mode::Deferrable,
        job_answer,
    )
    .await?;
    Ok(answer_to_http(&answer))
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
        .job(&tenant, &id)
        .await?
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
    /// Only the job of this upstream agent id: a page of at most one job, `next` null.
    #[param(example = "A91XMB7113")]
    agent_id: Option<String>,
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
    if let Some(agent_id) = query.agent_id.as_deref() {
        let job = state
            .store
            .job_by_agent(agent_id)
            .await?
            .filter(|job| job.tenant == tenant && status.is_none_or(|s| job.status == s));
        return Ok(HttpResponse::Ok().json(JobPage {
            data: job.iter().map(JobView::from).collect(),
            next: None,
        }));
    }
    let page = state
        .store
        .list_jobs(&tenant, status, after.as_ref(), limit)
        .await?;
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
    let job = service::jobs::cancel(&state.store, &tenant, &id, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(JobView::from(&job)))
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
    if state.store.job(&tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("job"));
    }
    let deliveries = state.store.deliveries_of_job(&id).await?;
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
        let mut known: Vec<String> = [
            "prompt",
            "image",
            "video",
            "audio",
            "aspect_ratio",
            "framing",
            "agent_id",
            "model",
            "version",
            "transparency",
            "callback_url",
            "metadata",
        ]
        .iter()
        .map(|f| f.to_string())
        .collect();
        known.sort();
        assert_eq!(
            crate::api::openapi::property_names::<GenerateRequest>(),
            known
        );
        let mut parsed: Vec<String> = request::fields_of::<GenerateRequest>()
            .iter()
            .map(|f| f.to_string())
            .collect();
        parsed.sort();
        assert_eq!(parsed, known);
    }

    fn parse(v: Value) -> Result<JobSpec, ApiError> {
        GenerateRequest::parse(v.as_object().unwrap().clone(), true)
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
    fn own_fields_are_judged_before_the_upstream_ones() {
        let err = GenerateRequest::parse(
            json!({"callback_url": "", "prompt": []})
                .as_object()
                .unwrap()
                .clone(),
            false,
        )
        .unwrap_err();
        assert_eq!(err.details, "callback_url");
        assert_eq!(
            err.message,
            "callback_url is not acceptable: the URL must be absolute, e.g. https://example.com/webhooks"
        );
        let err = parse(json!({"aspect_ratio": 1, "metadata": 2})).unwrap_err();
        assert_eq!(err.details, "metadata");
        assert_eq!(err.message, "metadata must be a JSON object, not a number");
        let err = parse(json!({"version": 1, "agent_id": true})).unwrap_err();
        assert_eq!(err.details, "agent_id");
        assert_eq!(err.message, "agent_id must be a string, not a boolean");
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
                    match GenerateRequest::parse(map.clone(), allow_private) {
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
