//! The batching queue behind a real server on the tiny DistilBERT graph: 503
//! with Retry-After when full, 504 past the deadline, a client that hangs up
//! is not computed. Queue behaviour (grouping, budgets, deadlines...) with
//! fake encoders: batching_queue.rs.

use crate::common;

use std::time::Duration;

use common::{error_of, fixture, settings_for, TestServer};
use serde_json::json;

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.batching.queue_capacity = 2;
    let server = TestServer::start(settings).await;
    let response = server.post_json("/embed", json!({"inputs": ["a", "b", "c"]})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "overloaded"));
    // Work that fits is still served.
    assert_eq!(server.post_json("/embed", json!({"inputs": ["a", "b"]})).await.status(), 200);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "distilserve_refused_requests_total{runtime=\"encoder\"} 1"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_passed_deadline_answers_504() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.server.request_timeout_ms = 20;
    settings.batching.max_wait_ms = 300;
    let server = TestServer::start(settings).await;
    let (status, code, _) = error_of(server.post_json("/embed", json!({"inputs": "a"})).await).await;
    assert_eq!((status, code.as_str()), (504, "deadline_exceeded"));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_is_not_computed() {
    use tokio::io::AsyncWriteExt;
    // The worker waits 400 ms to fill a batch; the client hangs up after 50 ms.
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.batching.max_wait_ms = 400;
    let server = TestServer::start(settings).await;
    let body = json!({"inputs": ["one", "two", "three"]}).to_string();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let value = |name: &str| -> u64 {
        let series = format!("{name}{{runtime=\"encoder\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("distilserve_skipped_sequences_total"), 3, "{metrics}");
    assert_eq!(value("distilserve_sequences_total"), 0);
    server.stop().await;
}
