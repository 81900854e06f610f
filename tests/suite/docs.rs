//! Interactive API docs at /docs, served with no internet: our page, Swagger UI
//! assets from vendor/swagger-ui (scripts/setup.sh), the spec from /openapi.json.

use crate::common;

use common::{error_of, fixture, repo_path, settings_for, TestServer};

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
