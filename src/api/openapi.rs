//! `GET /openapi.json`: the OpenAPI 3 document of every route.
//!
//! The document is collected by utoipa-actix-web from the very `.service(...)` calls that
//! register the handlers (see [`super::routes`]), so a route cannot be served without being
//! documented, nor documented without being served. The same document tells a wrong method on a
//! known route (405, with `Allow`) from an unknown route (404).
//!
//! Types in bodies derive `utoipa::ToSchema`; they spell times `DateTime<Utc>`, which utoipa
//! knows as `date-time`, rather than the `Timestamp` alias, which it cannot see through.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{get, web, HttpRequest, HttpResponse, ResponseError};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ApiError, ErrorBody};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agenthook",
        version = env!("CARGO_PKG_VERSION"),
        description = "Webhook relay for bitHuman's Agent Generation API: submit a generation job once, \
            get a signed Standard Webhooks event when the agent is ready or has failed.\n\n\
            Every `/v1` route needs an API key, as `Authorization: Bearer KEY` or as \
            `api-secret: KEY` (the upstream's header); each key is a tenant and sees only its own \
            jobs, subscriptions and deliveries. Every error, on every route, has the body \
            `ErrorBody`. Every response carries `x-request-id` (echoed when the request had one).",
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
    tags(
        (name = "jobs", description = "Generation jobs: submitted upstream at once, polled until they end"),
        (name = "drop-in", description = "bitHuman's own routes and bodies: a client only changes its base URL"),
        (name = "subscriptions", description = "Standing destinations of a tenant's events"),
        (name = "callback secret", description = "The secret that signs a tenant's job callbacks"),
        (name = "deliveries", description = "Every event sent to every destination, with its attempts"),
        (name = "events", description = "Events in the shape receivers get them (samples for Zapier)"),
        (name = "operations", description = "Probes and this document; no API key"),
        (name = "upstream", description = "bitHuman's own webhooks; signed by bitHuman, no API key"),
    ),
)]
struct ApiDoc;

/// The two ways to present an API key; `/v1` operations list them as alternatives.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer KEY`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_secret",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "api-secret",
                "`api-secret: KEY`, the upstream's header, for drop-in use",
            ))),
        );
    }
}

/// The document's fixed parts; the paths and their schemas are added as routes are registered.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document as served, and the routes it names.
pub struct ApiDocument {
    json: web::Bytes,
    routes: Vec<Route>,
}

/// A documented path and its methods. The path is matched segment by segment: a
/// `{parameter}` segment matches any one non-empty segment, as actix's router does, without
/// a regular expression.
struct Route {
    path: String,
    /// Each segment: its literal text, or `None` for a parameter.
    segments: Vec<Option<String>>,
    literals: usize,
    methods: Vec<Method>,
}

impl Route {
    fn new(path: &str, methods: Vec<Method>) -> Route {
        let segments: Vec<Option<String>> = path
            .split('/')
            .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
            .collect();
        let literals = segments.iter().flatten().count();
        Route {
            path: path.to_owned(),
            segments,
            literals,
            methods,
        }
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/');
        for segment in &self.segments {
            match (parts.next(), segment) {
                (Some(part), Some(literal)) if part == literal => {}
                (Some(part), None) if !part.is_empty() => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

impl ApiDocument {
    pub fn new(doc: &utoipa::openapi::OpenApi) -> ApiDocument {
        let value = serde_json::to_value(doc).expect("the OpenAPI document serialises");
        let routes = value["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, item)| {
                let methods = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap())
                    .collect();
                Route::new(path, methods)
            })
            .collect();
        ApiDocument {
            json: serde_json::to_vec(&value).expect("JSON").into(),
            routes,
        }
    }

    /// The documented route `path` takes (the one with the most literal segments, should
    /// several match).
    fn route(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.matches(path))
            .max_by_key(|r| r.literals)
    }

    /// The template of the documented route `path` takes (`/v1/jobs/{id}`): the label of a
    /// request in metrics, where actix's own `match_pattern` would run the regular expression
    /// of every route again for each request.
    pub fn route_of(&self, path: &str) -> Option<&str> {
        self.route(path).map(|r| r.path.as_str())
    }

    /// The methods of the documented route that `path` matches, if any.
    pub fn allowed_methods(&self, path: &str) -> Option<&[Method]> {
        self.route(path).map(|r| r.methods.as_slice())
    }
}

/// This document
#[utoipa::path(
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3 document of every route", content_type = "application/json", body = Object)),
)]
#[get("/openapi.json")]
pub async fn openapi_json(doc: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.json.clone())
}

/// Requests no route took: 405 with `Allow` for a known path, 404 otherwise.
pub async fn no_route(req: HttpRequest) -> HttpResponse {
    let allowed = req
        .app_data::<web::Data<ApiDocument>>()
        .and_then(|doc| doc.allowed_methods(req.path()));
    let Some(methods) = allowed else {
        return ApiError::not_found("route").error_response();
    };
    let allow = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "BAD_REQUEST",
        "method not allowed on this route",
    )
    .with_details(format!("allowed: {allow}"))
    .error_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// The property names of `T`'s schema, sorted: tests hold a documented body to its parser.
#[cfg(test)]
pub(crate) fn property_names<T: utoipa::PartialSchema>() -> Vec<String> {
    let schema = serde_json::to_value(T::schema()).unwrap();
    let mut names: Vec<String> = schema["properties"]
        .as_object()
        .expect("an object schema")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use actix_web::dev::ResourceDef;
    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::to_value(crate::api::openapi_document()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    found.push((method.to_string(), path.clone(), op.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn a_path_is_labelled_with_the_documented_route_actix_matches() {
        let doc = ApiDocument::new(&crate::api::openapi_document());
        assert!(doc.routes.len() > 20);
        let actix: Vec<ResourceDef> = doc
            .routes
            .iter()
            .map(|r| ResourceDef::new(r.path.as_str()))
            .collect();
        for route in &doc.routes {
            let concrete = route.path.replace('{', "x_").replace('}', "");
            assert_eq!(doc.route_of(&concrete), Some(route.path.as_str()));
            let matched = actix.iter().find(|def| def.is_match(&concrete));
            assert_eq!(
                matched.and_then(|def| def.pattern()),
                Some(route.path.as_str())
            );
        }
        assert_eq!(
            doc.route_of("/v1/jobs/job_1/deliveries"),
            Some("/v1/jobs/{id}/deliveries")
        );
        for unknown in [
            "/v1/jobs/",
            "/v1/jobs//deliveries",
            "/v1/nothing",
            "/ui/",
            "",
        ] {
            assert_eq!(doc.route_of(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn the_document_names_agenthook_and_its_version() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(doc["info"]["title"], "agenthook");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc.get("servers").is_none());
    }

    #[test]
    fn v1_operations_take_either_key_and_the_others_none() {
        let doc = document();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["api_secret"]["in"], "header");
        assert_eq!(schemes["api_secret"]["name"], "api-secret");
        for (method, path, op) in operations(&doc) {
            if path == "/v1/upstream/webhooks" {
                // Signed by bitHuman instead of an API key.
                assert!(op.get("security").is_none(), "{method} {path}");
                assert!(op["responses"].get("401").is_some(), "{method} {path}");
            } else if path.starts_with("/v1/") {
                let expected = serde_json::json!([{ "bearer": [] }, { "api_secret": [] }]);
                assert_eq!(op["security"], expected, "{method} {path}");
                assert!(op["responses"].get("401").is_some(), "{method} {path}");
            } else {
                assert!(op.get("security").is_none(), "{method} {path}");
            }
        }
    }

    #[test]
    fn every_operation_has_a_unique_id_and_documents_its_errors_as_error_body() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "duplicate operationId {id}");
            assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()));
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn refs(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        found.push(r.clone());
                    }
                    map.values().for_each(|v| refs(v, found));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
                _ => {}
            }
        }
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} is not defined"
            );
        }
    }

    #[test]
    fn path_parameters_match_the_templates() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let mut in_template: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let mut documented: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            in_template.sort_unstable();
            documented.sort_unstable();
            assert_eq!(in_template, documented, "{method} {path}");
        }
    }

    #[test]
    fn a_wrong_method_is_told_from_an_unknown_route() {
        let doc = ApiDocument::new(&crate::api::openapi_document());
        let allowed = doc.allowed_methods("/v1/jobs/job_123").unwrap();
        assert!(allowed.contains(&Method::GET) && allowed.contains(&Method::DELETE));
        assert_eq!(doc.allowed_methods("/v1/jobs/job_123/nope"), None);
        assert_eq!(doc.allowed_methods("/v2/jobs"), None);
    }
}
