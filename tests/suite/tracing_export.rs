//! Distributed tracing for real: the binary exports its request spans over
//! OTLP/HTTP (protobuf) to a small receiver on a loopback port; a request that
//! carries a W3C `traceparent` shows up as a span of the caller's trace, with
//! the caller's span as its parent, and the spans still buffered are sent at
//! shutdown.

use crate::common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_receiver_under_the_callers_trace() {
    // The receiver: keeps every export's content type and body.
    let received: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let store = received.clone();
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                store.lock().unwrap().push((kind, body));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[classify]\nserve = []\ndefault_head = \"\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_distilserve"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--log-format", "json"])
        .arg("--config")
        .arg(config.path())
        .arg("--model-dir")
        .arg(common::fixture("tiny-distilbert"))
        .args(["--otlp-endpoint", &format!("http://{collector}/v1/traces")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client.get(format!("{base}/health")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (trace_id, parent_id) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let response = client
        .post(format!("{base}/embed"))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .json(&serde_json::json!({"inputs": "a traced request", "pooling": "mean"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // SIGTERM: the spans still buffered are sent before the process exits.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exited.success());

    let exports = received.lock().unwrap().clone();
    assert!(!exports.is_empty(), "no span reached the receiver");
    assert!(
        exports.iter().all(|(kind, _)| kind == "application/x-protobuf"),
        "{:?}",
        exports.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    // Protobuf keeps ids as raw bytes and names as UTF-8.
    let traced = exports.iter().find(|(_, body)| contains(body, &hex(trace_id))).expect("a span of the caller's trace");
    assert!(contains(&traced.1, &hex(parent_id)), "the caller's span is not the parent");
    for text in [&b"request"[..], b"/embed", b"distilserve"] {
        assert!(contains(&traced.1, text), "{} missing from the export", String::from_utf8_lossy(text));
    }
}
