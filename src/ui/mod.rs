//! The dashboard: hand-written HTML, CSS and JavaScript modules embedded in the binary and
//! served under `/ui/`. The page is a client of the public API like any other (a Bearer key,
//! kept in the tab's session storage), so it shows a tenant exactly what the API lets that
//! tenant see. Nothing is fetched from elsewhere, at build time or at run time.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// One embedded file.
pub struct Asset {
    /// Its path under `/ui/`.
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!("assets/", $path)),
        }
    };
}

/// Every file of the dashboard; `index.html` is also served at `/ui/`.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("jobs.js", "text/javascript; charset=utf-8"),
    asset!("job.js", "text/javascript; charset=utf-8"),
    asset!("deliveries.js", "text/javascript; charset=utf-8"),
    asset!("subscriptions.js", "text/javascript; charset=utf-8"),
];

/// Scripts and styles only from this origin (no inline code of any kind), data only from the
/// API, no framing, and Trusted Types enforced so that even a slip to `innerHTML` with a
/// string would throw instead of parsing HTML.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'; require-trusted-types-for 'script'; trusted-types 'none'";

/// A strong validator per asset: the start of its SHA-256, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// `/ui` (redirected to `/ui/`), `/ui/` and `/ui/{file}`, for GET and HEAD.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/ui")
            .route(web::get().to(|| async { redirect("/ui/") }))
            .route(web::head().to(|| async { redirect("/ui/") })),
    )
    .service(
        web::resource("/ui/{file:.*}")
            .route(web::get().to(serve))
            .route(web::head().to(serve)),
    );
}

fn redirect(to: &'static str) -> HttpResponse {
    let mut res = HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, to))
        .finish();
    harden(&mut res);
    res
}

async fn serve(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    let wanted = match file.as_str() {
        "" => "index.html",
        other => other,
    };
    let Some(index) = ASSETS.iter().position(|a| a.path == wanted) else {
        let mut res = actix_web::ResponseError::error_response(&ApiError::not_found("page"));
        harden(&mut res);
        return res;
    };
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut res = if fresh {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .content_type(asset.content_type)
            .body(asset.bytes)
    };
    let headers = res.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    // Revalidate every time: the files change with the binary and their names do not, and a
    // revalidation is one small request answered with 304.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    harden(&mut res);
    res
}

/// The headers every `/ui` answer carries.
fn harden(res: &mut HttpResponse) {
    let headers = res.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        ),
    ] {
        headers.insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_path_and_a_body() {
        let mut paths: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|a| !a.bytes.is_empty()));
    }

    #[test]
    fn every_module_the_page_imports_is_embedded_and_nothing_comes_from_elsewhere() {
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            let imports: Vec<&str> = text
                .split("from \"")
                .skip(1)
                .map(|rest| rest.split_once('"').unwrap().0)
                .collect();
            assert!(!imports.is_empty() || asset.path == "api.js" || asset.path == "dom.js");
            for target in imports {
                let local = target.strip_prefix("./").unwrap_or_else(|| {
                    panic!("{} imports {target}: only the embedded modules", asset.path)
                });
                assert!(
                    ASSETS.iter().any(|a| a.path == local),
                    "{} imports {target}, which is not embedded",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn no_script_writes_html_from_strings() {
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(
                    !text.contains(banned),
                    "{} uses {banned}: render outside data with textContent",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert_eq!(ASSETS[0].path, "index.html");
        assert!(!page.contains("<style"));
        assert!(!page.contains("style=\""));
        let handler = page.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline event handler: on{handler:?}");
        for script in page.split("<script").skip(1) {
            let tag = script.split_once('>').unwrap().0;
            assert!(tag.contains("src=\"/ui/"), "inline script: <script{tag}>");
        }
    }
}
