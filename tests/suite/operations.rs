//! Operating the service: liveness and readiness, Prometheus metrics that move
//! as requests are served, timing headers. Tiny DistilBERT fixture over a socket.

use crate::common;

use common::{fixture, settings_for, TestServer};
use serde_json::json;

/// The value of the sample `name{labels}` (labels exactly as rendered), or 0.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn liveness_and_readiness_are_distinct_probes() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    for path in ["/health/live", "/health/ready", "/health"] {
        let response = server.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(server.get("/health/live").await.json::<serde_json::Value>().await.unwrap()["status"], "alive");
    assert_eq!(server.get("/health/ready").await.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn metrics_move_as_requests_are_served() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let before = server.get("/metrics").await;
    assert!(before.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let before = before.text().await.unwrap();
    let embed_ok = r#"distilserve_http_requests_total{method="POST",route="/embed",status="200"}"#;
    let embed_422 = r#"distilserve_http_requests_total{method="POST",route="/embed",status="422"}"#;
    assert_eq!(sample(&before, embed_ok), 0.0);

    let response =
        server.post_json("/embed", json!({"inputs": ["a gripping, funny film", "dull"], "pooling": "cls"})).await;
    assert_eq!(response.status(), 200);
    for h in ["x-tokenize-time-ms", "x-queue-time-ms", "x-inference-time-ms"] {
        let v: f64 = response.headers()[h].to_str().unwrap().parse().unwrap();
        assert!(v >= 0.0, "{h}");
    }
    assert_eq!(server.post_json("/embed", json!({"inputs": []})).await.status(), 422);
    assert_eq!(server.get("/no/such/path").await.status(), 404);

    let after = server.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&after, embed_ok), 1.0, "{after}");
    assert_eq!(sample(&after, embed_422), 1.0);
    assert_eq!(sample(&after, r#"distilserve_http_requests_total{method="GET",route="unmatched",status="404"}"#), 1.0);
    assert_eq!(
        sample(&after, r#"distilserve_sequences_total{runtime="encoder"}"#)
            - sample(&before, r#"distilserve_sequences_total{runtime="encoder"}"#),
        2.0
    );
    assert!(sample(&after, r#"distilserve_batches_total{runtime="encoder"}"#) >= 1.0);
    assert!(sample(&after, r#"distilserve_batch_size_count{runtime="encoder"}"#) >= 1.0);
    assert!(sample(&after, r#"distilserve_inference_seconds_count{runtime="encoder"}"#) >= 1.0);
    assert_eq!(
        sample(&after, r#"distilserve_tokenize_seconds_count{runtime="encoder"}"#),
        1.0,
        "the 422 request failed before tokenizing"
    );
    assert_eq!(sample(&after, r#"distilserve_queue_wait_seconds_count{runtime="encoder"}"#), 2.0);
    assert!(sample(&after, r#"distilserve_http_request_duration_seconds_count{route="/embed"}"#) >= 2.0);
    assert_eq!(sample(&after, r#"distilserve_queue_depth{runtime="encoder"}"#), 0.0);
    assert_eq!(sample(&after, "distilserve_ready"), 1.0);
    assert!(after.contains(r#"distilserve_model_info{runtime="encoder",name="tiny-distilbert""#), "{after}");
    assert!(after.contains("# TYPE distilserve_inference_seconds histogram"));
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let given = server.client.get(server.url("/info")).header("x-request-id", "trace-abc-123").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-abc-123");
    let made = server.get("/info").await;
    let id = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let other = server.get("/info").await;
    assert_ne!(other.headers()["x-request-id"].to_str().unwrap(), id);
    server.stop().await;
}

#[tokio::test]
async fn with_warm_up_the_model_has_run_before_ready() {
    let mut settings = common::settings_for(&common::fixture("tiny-distilbert"));
    settings.model.warm_up = true;
    let server = common::TestServer::start(settings).await;
    common::wait_ready(&server).await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let batches = metrics
        .lines()
        .find(|l| l.starts_with("distilserve_batches_total{runtime=\"encoder\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap())
        .unwrap_or(0.0);
    // 3 lengths x 3 batch sizes, before any request.
    assert!(batches >= 9.0, "{batches} model calls before the first request");
    server.stop().await;
}
