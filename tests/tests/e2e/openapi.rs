//! `GET /openapi.json`: served without a key, OpenAPI 3.x, listing exactly the routes the router
//! answers, with the catalog's own `data` schemas.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_router_answers() {
    let sys = System::start().await;
    let resp = sys
        .http
        .get(sys.url("/openapi.json"))
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let doc: Value = resp.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().expect("openapi").starts_with("3."),
        "{}",
        doc["openapi"]
    );

    // The document lists exactly the hard list of routes…
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            listed.insert((method.clone(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = ingest::openapi::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, expected);

    // …and the router answers each of them: without a key a `/v1` route says 401 (an unknown
    // path would be 404, a wrong method 405), the others answer.
    for (method, path) in ingest::openapi::ROUTES {
        let concrete = path.replace("{tenant_id}", "acme").replace("{id}", "x1");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let status = sys
            .http
            .request(method.clone(), sys.url(&concrete))
            .send()
            .await
            .expect("request sent")
            .status();
        if path.starts_with("/v1") {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        } else {
            assert!(
                status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path}: {status}"
            );
        }
    }
    let (status, _) = sys.call(Method::GET, "/v1/nope", "k", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sys.call(Method::PUT, "/v1/events", "k", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Every type's `data` schema is the catalog's, verbatim.
    for spec in proto::catalog::all() {
        let name = ingest::openapi::data_schema_name(spec.name);
        assert_eq!(
            doc["components"]["schemas"][&name],
            proto::catalog::schema(spec),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_path_segment_that_is_not_utf8_is_a_problem_not_plain_text() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let resp = sys
        .http
        .get(sys.url("/v1/subscriptions/%FF%FE"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = resp.json().await.expect("problem");
    assert_eq!(body["status"], 400);
}
