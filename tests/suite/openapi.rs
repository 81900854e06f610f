//! The API contract: openapi.yaml at the top level is what the code generates
//! (regenerate with `make openapi`), and the server serves the same document.

use crate::common;

use common::{fixture, python, repo_path, settings_for, TestServer};
use distilserve::http::ApiDoc;
use utoipa::OpenApi;

#[test]
fn openapi_yaml_is_up_to_date() {
    let committed = std::fs::read_to_string(repo_path("openapi.yaml")).expect("openapi.yaml exists");
    let generated = ApiDoc::openapi().to_yaml().unwrap();
    assert!(committed == generated, "openapi.yaml is out of date with the code: run `make openapi` and commit it");
}

#[test]
fn the_spec_validates_as_openapi_3() {
    let out = std::process::Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(repo_path("openapi.yaml"))
        .output()
        .expect("python runs (set up by scripts/python-env.sh)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("OK"), "{report}");
}

#[test]
fn every_route_is_documented() {
    let spec = ApiDoc::openapi();
    let paths: Vec<&str> = spec.paths.paths.keys().map(String::as_str).collect();
    for route in
        ["/embed", "/classify", "/heads", "/heads/{name}", "/health/live", "/health/ready", "/metrics", "/info"]
    {
        assert!(paths.contains(&route), "{route} missing from the spec: {paths:?}");
    }
}

#[tokio::test]
async fn the_server_serves_the_same_document() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let served: serde_json::Value = server.get("/openapi.json").await.json().await.unwrap();
    let generated = serde_json::to_value(ApiDoc::openapi()).unwrap();
    assert_eq!(served, generated);
    server.stop().await;
}
