//! The HTTP application in process, with `tower::ServiceExt::oneshot` and a
//! fake encoder: routing, extractor rejections and error mapping need neither
//! a socket nor ONNX Runtime (the fuzz target `request_json` drives the same);
//! a slow fake encoder for the queue-time refusal.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use distilserve::encoder::Encoder;
use distilserve::http::{router, AppState};
use distilserve::model::ModelInfo;
use distilserve::pooling::Rows;
use distilserve::tokenize::{TextTokenizer, Tokenized};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Every token's vector is [1, 2, 3, 4].
struct Constant;

impl Encoder for Constant {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        Ok(batch.iter().map(|t| Rows { rows: t.len(), cols: 4, data: [1.0, 2.0, 3.0, 4.0].repeat(t.len()) }).collect())
    }
}

fn app() -> axum::Router {
    let dir = crate::common::fixture("tiny-distilbert");
    let settings = crate::common::settings_for(&dir);
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
    router(AppState::with_encoders(ModelInfo::synthetic("constant", 4, 64), tokenizer, vec![Constant], settings))
}

async fn send(method: &str, uri: &str, content_type: Option<&str>, body: &str) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = app().oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn embeddings_pass_through_pooling_and_normalisation_below_the_handler() {
    let body = json!({"inputs": ["good", "a long one"], "pooling": "mean", "normalize": true}).to_string();
    let (status, answer) = send("POST", "/embed", Some("application/json"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dimensions"], 4);
    let v: Vec<f64> = answer["embeddings"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let norm = 30f64.sqrt();
    for (got, want) in v.iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!((got - want / norm).abs() < 1e-6, "{v:?}");
    }
    let body = json!({"inputs": "good", "pooling": "none"}).to_string();
    let (_, answer) = send("POST", "/embed", Some("application/json"), &body).await;
    let tokens = answer["token_counts"][0].as_u64().unwrap() as usize;
    assert_eq!(answer["embeddings"][0].as_array().unwrap().len(), tokens);
    assert_eq!(answer["embeddings"][0][0], json!([1.0, 2.0, 3.0, 4.0]));
}

#[tokio::test]
async fn every_rejection_is_our_json_error_with_its_status() {
    let cases: [(&str, &str, Option<&str>, &str, u16, &str); 7] = [
        ("POST", "/embed", Some("application/json"), "{not json", 400, "invalid_json"),
        ("POST", "/embed", Some("text/plain"), "{}", 415, "unsupported_media_type"),
        ("POST", "/embed", Some("application/json"), r#"{"inputs": "x", "pooling": "max"}"#, 422, "invalid_request"),
        ("POST", "/embed", Some("application/json"), r#"{"inputs": []}"#, 422, "empty_input"),
        ("GET", "/embed", None, "", 405, "method_not_allowed"),
        ("GET", "/no/such/route", None, "", 404, "not_found"),
        ("POST", "/heads/x/reload", None, "", 403, "admin_disabled"),
    ];
    for (method, uri, ct, body, status, code) in cases {
        let (got, answer) = send(method, uri, ct, body).await;
        assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (status, Some(code)), "{method} {uri} {body}");
    }
    let too_many = json!({"inputs": vec!["a ".repeat(100); 200]}).to_string();
    let (status, answer) = send("POST", "/tokenize", Some("application/json"), &too_many).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (413, Some("too_many_tokens")));
}

/// Takes 5 ms per token: a model whose pace the queue can measure.
struct SlowPerToken;

impl Encoder for SlowPerToken {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        let tokens: usize = batch.iter().map(|t| t.len()).sum();
        std::thread::sleep(std::time::Duration::from_millis(5 * tokens as u64));
        Constant.encode(batch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_queued_work_than_a_request_may_wait_for_is_a_json_503_with_retry_after() {
    let dir = crate::common::fixture("tiny-distilbert");
    let mut settings = crate::common::settings_for(&dir);
    settings.batching.max_queue_wait_ms = 300;
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
    let app =
        router(AppState::with_encoders(ModelInfo::synthetic("slow", 4, 64), tokenizer, vec![SlowPerToken], settings));
    let embed = |texts: Vec<&str>| {
        let body = json!({"inputs": texts, "pooling": "mean"}).to_string();
        let request = Request::builder().method("POST").uri("/embed").header("content-type", "application/json");
        app.clone().oneshot(request.body(Body::from(body)).unwrap())
    };
    // The queue learns the pace (its first call is left out of the estimate).
    for _ in 0..3 {
        assert_eq!(embed(vec!["good"]).await.unwrap().status(), 200);
    }
    // One request keeps the worker busy (64 texts: over a second), a second one
    // queues behind it: over a second of work at 5 ms per token. (Each sleep is
    // far inside the busy call's 1.6 s.)
    let busy = tokio::spawn(embed(vec!["a fine film"; 64]));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let queued = tokio::spawn(embed(vec!["a fine film"; 64]));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let response = embed(vec!["good"]).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "refused at once");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["error"]["code"], "overloaded", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("300 ms"), "{answer}");
    // What was admitted is answered.
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
    assert_eq!(queued.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_with_more_model_time_than_its_deadline_is_refused_before_any_work() {
    let dir = crate::common::fixture("tiny-distilbert");
    let mut settings = crate::common::settings_for(&dir);
    settings.server.request_timeout_ms = 1000;
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
    let state = AppState::with_encoders(ModelInfo::synthetic("slow", 4, 64), tokenizer, vec![SlowPerToken], settings);
    let app = router(state.clone());
    let post = |path: &'static str, body: Value| {
        let request = Request::builder().method("POST").uri(path).header("content-type", "application/json");
        app.clone().oneshot(request.body(Body::from(body.to_string())).unwrap())
    };
    // The queue learns the pace (its first call is left out of the estimate).
    for _ in 0..3 {
        assert_eq!(post("/embed", json!({"inputs": ["good"]})).await.unwrap().status(), 200);
    }
    let computed = state.encoder_runtime().batch_stats().sequences;
    // 100 texts of 3 tokens at 5 ms per token: about 1.5 s of model time, 1 s left.
    let started = std::time::Instant::now();
    let response = post("/v1/embeddings", json!({"input": vec!["good"; 100]})).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "refused at once");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["error"]["code"], "too_much_work", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("request_timeout_ms"), "{answer}");
    assert_eq!(state.encoder_runtime().batch_stats().sequences, computed, "nothing was computed for it");
    // A corpus that fits its deadline is answered.
    let response = post("/v1/embeddings", json!({"input": vec!["good"; 20]})).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
