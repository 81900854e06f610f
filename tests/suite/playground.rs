//! The playground page at `/`, in a real browser: headless Chromium (Debian
//! package) loads `/?text=...`, which fills the box and submits it like a click;
//! the page must show the head's prediction (the same label the API gives) and
//! one norm per token. Needs chromium (scripts/install-test-deps.sh).

use crate::common;

use std::process::Command;

use common::TestServer;
use serde_json::{json, Value};

fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium runs (scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn server_with_a_head() -> TestServer {
    TestServer::start(common::settings_with_onnx_head()).await
}

#[tokio::test]
async fn the_page_is_served_self_contained() {
    let server = server_with_a_head().await;
    let response = server.get("/").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("distilserve playground"));
    for remote in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(remote), "the page loads something remote: {remote}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prediction_appears_in_headless_chromium() {
    let server = server_with_a_head().await;
    let text = "a gripping, funny film";
    let api: Value =
        server.post_json("/classify", json!({"inputs": [text], "head": "sst2"})).await.json().await.unwrap();
    let expected_label = api["predictions"][0]["label"].as_str().unwrap().to_string();
    let tokens: Value = server.post_json("/tokenize", json!({"inputs": [text]})).await.json().await.unwrap();
    let token_count = tokens["tokens"][0].as_array().unwrap().len();

    let url = format!("{}?text=a%20gripping%2C%20funny%20film", server.url("/"));
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&url)).await.unwrap();
    assert!(!dom.contains("id=\"error\""), "the page showed an error: {dom}");
    let card = format!("class=\"card prediction\" data-head=\"sst2\" data-label=\"{expected_label}\"");
    assert!(dom.contains(&card), "no prediction card {card:?} in the page: {dom}");
    assert_eq!(dom.matches("class=\"tok\"").count(), token_count, "one norm per token expected: {dom}");
    server.stop().await;
}
