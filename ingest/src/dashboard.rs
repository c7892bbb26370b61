//! The browser dashboard: static files compiled into the binary, served at `GET /dashboard`.
//!
//! The files hold no data and need no key. The page runs in the browser and talks to the same
//! public `/v1` API as any client, with the tenant API key the user pastes in (kept in the tab's
//! `sessionStorage` only, sent as `Authorization: Bearer`), so this module is no backdoor: just
//! files. They are plain HTML, CSS and ES modules under `ingest/dashboard/`, embedded with
//! `include_str!`: no JavaScript build step, no CDN, nothing to install.
//!
//! Every answer carries a strict Content-Security-Policy (same-origin scripts, styles and
//! `fetch` only; no inline script or style, no framing), `nosniff`, `no-referrer` and
//! `no-cache`; an unknown file under `/dashboard/` is the API's usual problem+json `404`.
//!
//! These routes are deliberately not in the OpenAPI document nor in `openapi::ROUTES`: that
//! document describes the JSON API (and is what schemathesis fuzzes); the dashboard is a client
//! of it, not a part of it.

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;

/// The policy of every dashboard answer: the page may load its own scripts, styles and images
/// and call its own origin's API, nothing else; inline scripts and `style=""` attributes are
/// refused, and no other site may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file, served at `/dashboard/<name>`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The HTML shell, also answered at `/dashboard` and `/dashboard/`.
const INDEX: &str = "index.html";

/// Every file of the dashboard. A new file under `ingest/dashboard/` is listed here, or it is
/// a `404` (the tests check that every reference in the shell and every module import is).
const ASSETS: &[Asset] = &[
    Asset {
        name: INDEX,
        content_type: "text/html; charset=utf-8",
        body: include_str!("../dashboard/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../dashboard/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../dashboard/icon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/api.js"),
    },
    Asset {
        name: "ui.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/ui.js"),
    },
    Asset {
        name: "subscriptions.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/subscriptions.js"),
    },
    Asset {
        name: "subscription_detail.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/subscription_detail.js"),
    },
    Asset {
        name: "events.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/events.js"),
    },
    Asset {
        name: "dead_letters.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/dead_letters.js"),
    },
    Asset {
        name: "event_types.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/event_types.js"),
    },
];

/// A strong validator per asset (in `ASSETS` order), so `no-cache` revalidation costs a `304`.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// The dashboard's routes, merged into the service's router. They need no state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/{*path}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// The file `name`, a `304` when the client's copy is current, or the usual `404`.
fn serve(name: &str, request_headers: &HeaderMap) -> Response {
    let Some((index, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return ApiError::NotFound.into_response();
    };
    let etag = ETAGS.get(index).map(String::as_str).unwrap_or_default();
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The headers of every dashboard answer, errors included.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A served answer: status, headers (lower-case names) and body.
    struct Answer {
        status: u16,
        headers: HashMap<String, String>,
        body: String,
    }

    /// One real HTTP/1.1 request to the dashboard router on a loopback port (the crate has no
    /// `tower::ServiceExt`, and this exercises the whole HTTP stack anyway).
    async fn fetch(method: &str, path: &str, extra: &str) -> Answer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: Router = router();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        server.abort();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn assert_security_headers(answer: &Answer) {
        assert_eq!(
            answer.headers["content-security-policy"],
            CONTENT_SECURITY_POLICY
        );
        let csp = &answer.headers["content-security-policy"];
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
        assert_eq!(answer.headers["referrer-policy"], "no-referrer");
        assert_eq!(answer.headers["cache-control"], "no-cache");
    }

    #[tokio::test]
    async fn the_dashboard_is_html_under_a_strict_content_security_policy() {
        for path in ["/dashboard", "/dashboard/", "/dashboard/index.html"] {
            let answer = fetch("GET", path, "").await;
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(
                answer.headers["content-type"], "text/html; charset=utf-8",
                "{path}"
            );
            assert_security_headers(&answer);
            assert!(answer.body.starts_with("<!doctype html>"), "{path}");
        }
    }

    #[tokio::test]
    async fn scripts_and_styles_have_their_content_types() {
        let js = fetch("GET", "/dashboard/app.js", "").await;
        assert_eq!(js.status, 200);
        assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
        assert_security_headers(&js);
        let css = fetch("GET", "/dashboard/style.css", "").await;
        assert_eq!(css.status, 200);
        assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
        let again = fetch(
            "GET",
            "/dashboard/app.js",
            &format!("if-none-match: {}\r\n", js.headers["etag"]),
        )
        .await;
        assert_eq!(again.status, 304);
        assert_security_headers(&again);
    }

    #[tokio::test]
    async fn an_unknown_file_is_a_problem_404() {
        for path in [
            "/dashboard/nope.js",
            "/dashboard/a/app.js",
            "/dashboard/../Cargo.toml",
        ] {
            let answer = fetch("GET", path, "").await;
            assert_eq!(answer.status, 404, "{path}");
            assert_eq!(
                answer.headers["content-type"], "application/problem+json",
                "{path}"
            );
            assert_security_headers(&answer);
            let problem: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(problem["status"], 404);
        }
    }

    /// Every `src`/`href` value of `html` and every module specifier `from '…'` of `js`.
    fn references(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for marker in ["src=\"", "href=\"", "from '", "import('"] {
            for piece in text.split(marker).skip(1) {
                let end = piece.find(['"', '\'']).unwrap();
                found.push(piece[..end].to_owned());
            }
        }
        found
    }

    #[test]
    fn the_shell_and_modules_reference_only_their_own_files() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS {
            let refs = references(asset.body);
            for reference in refs {
                let local = if let Some(name) = reference.strip_prefix("/dashboard/") {
                    name
                } else if let Some(name) = reference.strip_prefix("./") {
                    name
                } else if reference.starts_with('#') {
                    continue;
                } else {
                    panic!(
                        "{} references {reference:?}, not a same-origin asset",
                        asset.name
                    );
                };
                assert!(
                    names.contains(&local),
                    "{} references {reference}, which is not served",
                    asset.name
                );
            }
        }
        let html = ASSETS[0].body;
        assert!(references(html).contains(&"/dashboard/app.js".to_owned()));
        // The policy refuses inline code and inline styles; none may be written.
        assert!(!html.contains("style="), "inline style in the shell");
        assert!(!html.contains("<style"), "inline stylesheet in the shell");
        for script in html.split("<script").skip(1) {
            let tag = &script[..script.find('>').unwrap()];
            assert!(
                tag.contains("src=\"/dashboard/"),
                "inline script: <script{tag}>"
            );
            assert!(script[script.find('>').unwrap() + 1..].starts_with("</script>"));
        }
        for piece in html.split(" on").skip(1) {
            let name: String = piece
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !piece[name.len()..].starts_with('='),
                "inline event handler on{name} in the shell"
            );
        }
    }

    #[test]
    fn the_modules_never_write_html_from_strings() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(
                    !asset.body.contains(sink),
                    "{} uses {sink}: build nodes and set textContent instead",
                    asset.name
                );
            }
        }
    }
}
