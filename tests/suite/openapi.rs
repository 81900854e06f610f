//! The API's description: openapi.yaml is what the code generates (regenerate
//! with `make openapi`) and valid OpenAPI 3, the server serves the same document
//! and its /docs page with Swagger UI's assets from vendor/swagger-ui (no
//! internet), and schemathesis (PyPI, in the set-up venv) finds no contract
//! violation against the real server (every check, stateful sequences; seeded
//! and time-bounded for CI, `make contract` runs a longer one).

use crate::common;

use std::process::Command;

use common::{error_of, fixture, python, repo_path, settings_for, TestServer};
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

#[tokio::test]
async fn docs_page_and_assets_are_served_locally() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.server.docs_dir = repo_path("vendor/swagger-ui");
    assert!(
        settings.server.docs_dir.join("swagger-ui-bundle.js").is_file(),
        "Swagger UI assets missing: run scripts/setup.sh"
    );
    let server = TestServer::start(settings).await;
    let page = server.get("/docs").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/docs/assets/swagger-ui-bundle.js") && html.contains("/openapi.json"));
    assert!(!html.contains("http://") && !html.contains("https://"), "the page must not load anything remote");

    for (asset, kind) in [("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")] {
        let response = server.get(&format!("/docs/assets/{asset}")).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.headers()["content-type"].to_str().unwrap().contains(kind), "{asset}");
        assert!(response.bytes().await.unwrap().len() > 10_000);
    }
    let (status, code, _) = error_of(server.get("/docs/assets/nothing.js").await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    // Paths cannot leave the assets folder: a plain 404, never the file, never a 5xx.
    for path in ["..%2F..%2FCargo.toml", "%2e%2e/%2e%2e/Cargo.toml", "..%5C..%5CCargo.toml", "/etc/passwd"] {
        let response = server.get(&format!("/docs/assets/{path}")).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("[package]") && !body.contains("root:"), "{path} leaked a file");
    }
    server.stop().await;
}

#[tokio::test]
async fn docs_without_assets_say_how_to_install_them() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.server.docs_dir = "/nonexistent/swagger-ui".into();
    let server = TestServer::start(settings).await;
    let (status, code, message) = error_of(server.get("/docs").await).await;
    assert_eq!((status, code.as_str()), (503, "docs_unavailable"));
    assert!(message.contains("scripts/setup.sh"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violation() {
    // With an admin key, which schemathesis sends, so that the routes that
    // change heads are exercised too (and checked to refuse a missing key with 401).
    let mut settings = common::settings_with_onnx_head();
    settings.security.admin_key = "contract-admin".into();
    let server = TestServer::start(settings).await;
    let url = format!("http://{}", server.addr);
    let seconds = std::env::var("CONTRACT_SECONDS").unwrap_or_else(|_| "60".into());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-m", "schemathesis.cli", "--config-file"])
            .arg(repo_path("tests/contract-schemathesis.toml"))
            .arg("run")
            .arg(repo_path("openapi.yaml"))
            .args(["--url", &url, "--max-examples", "10", "--seed", "1"])
            .args(["--header", "Authorization: Bearer contract-admin"])
            .args(["--max-time", &seconds])
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs (pip: scripts/requirements-export.txt)")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report.lines().filter(|l| l.contains("generated")).collect::<Vec<_>>().join(" ");
    eprintln!("schemathesis: {summary}");
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary.contains("passed") && !summary.contains("found"), "{report}");
    server.stop().await;
}
