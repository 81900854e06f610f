//! What one request may cost, bounded before any model call: the token budget
//! (413 naming count and limit), a corpus whose model time exceeds its deadline,
//! and the cost model (`src/cost.rs`): the bound is found by searching the limit
//! a request is admitted under, then checked from both sides (admitted at it with
//! an answer no larger, 413 one byte below with no model call made); the 4 KB
//! request for a 1.4 GB answer refused on the real model. In process over
//! counting and slow fake encoders, and over a socket.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::fakes::{state_over, SlowPerToken};
use common::{default_model_dir, error_of, settings_for, tiny_distilbert, TestServer};
use distilserve::config::Settings;
use distilserve::forward::ForwardPass;
use distilserve::http::{router, AppState};
use distilserve::model::ModelInfo;
use distilserve::pooling::Rows;
use distilserve::tokenize::{TextTokenizer, Tokenized};
use serde_json::{json, Value};
use tower::ServiceExt;

const HIDDEN: usize = 8;

/// Token vectors of varied numbers (long and short decimal forms), counting
/// the sequences it computes.
struct Counting(Arc<AtomicUsize>);

impl ForwardPass for Counting {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        self.0.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(batch
            .iter()
            .map(|t| {
                let data = (0..t.len() * HIDDEN).map(|i| -1.0e-7 * (i as f32 + 1.0).powi(3) / 3.0).collect();
                Rows { rows: t.len(), cols: HIDDEN, data }
            })
            .collect())
    }
}

struct App {
    calls: Arc<AtomicUsize>,
    settings: Settings,
}

impl App {
    fn new() -> App {
        let settings = crate::common::settings_for(&crate::common::fixture("tiny-distilbert"));
        App { calls: Arc::default(), settings }
    }

    /// Status, error code (if any) and body length of `body` sent to `/embed`
    /// under the response limit `max_response_bytes`.
    async fn embed(&self, body: &Value, accept: &str, max_response_bytes: u64) -> (u16, Option<String>, usize) {
        let mut settings = self.settings.clone();
        settings.limits.max_response_bytes = max_response_bytes;
        settings.limits.max_request_memory_bytes = u64::MAX / 2;
        let dir = crate::common::fixture("tiny-distilbert");
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
        let info = ModelInfo::synthetic("counting", HIDDEN, 64);
        let app = router(AppState::with_forward_passes(info, tokenizer, vec![Counting(self.calls.clone())], settings));
        let request = Request::builder()
            .method("POST")
            .uri("/embed")
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let code =
            serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v["error"]["code"].as_str().map(String::from));
        (status, code, bytes.len())
    }

    /// The smallest `max_response_bytes` under which `body` is answered.
    async fn bound(&self, body: &Value, accept: &str) -> u64 {
        let (mut refused, mut admitted) = (0u64, 1u64 << 32);
        assert_eq!(self.embed(body, accept, admitted).await.0, 200);
        while admitted - refused > 1 {
            let mid = (refused + admitted) / 2;
            match self.embed(body, accept, mid).await {
                (200, _, _) => admitted = mid,
                (413, Some(code), _) if code == "response_too_large" => refused = mid,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        admitted
    }
}

fn requests() -> Vec<(&'static str, Value)> {
    let texts = json!(["a gripping, funny film", "dull", "\u{1}\"quoted\"\\ and é"]);
    vec![
        ("per token", json!({"inputs": texts, "pooling": "none"})),
        ("per token with tokens", json!({"inputs": texts, "pooling": "none", "return_tokens": true})),
        ("pooled", json!({"inputs": texts, "pooling": "mean"})),
        ("normalised per token", json!({"inputs": texts, "pooling": "none", "normalize": true})),
    ]
}

#[tokio::test]
async fn answers_stay_within_the_bound_they_were_admitted_under_and_one_byte_less_is_refused_before_the_model() {
    let app = App::new();
    for accept in ["application/json", "application/x-npy"] {
        for (what, body) in requests() {
            let bound = app.bound(&body, accept).await;
            let (status, _, answer) = app.embed(&body, accept, bound).await;
            assert_eq!(status, 200, "{what} as {accept}");
            assert!(answer as u64 <= bound, "{what} as {accept}: a {answer}-byte answer admitted under {bound}");
            // The bound is tight enough to mean something: a .npy is priced
            // to its header's padding, JSON at most 16 bytes a number.
            let slack = bound - answer as u64;
            if accept == "application/x-npy" {
                assert!(slack < 128, "{what}: .npy priced {slack} bytes over its size");
            } else {
                assert!(bound < 3 * answer as u64 + 1024, "{what}: JSON priced at {bound} for {answer} bytes");
            }
            let before = app.calls.load(Ordering::SeqCst);
            let (status, code, _) = app.embed(&body, accept, bound - 1).await;
            assert_eq!((status, code.as_deref()), (413, Some("response_too_large")), "{what} as {accept}");
            assert_eq!(app.calls.load(Ordering::SeqCst), before, "{what}: refused before any model call");
        }
    }
}

#[tokio::test]
async fn a_zero_padded_npy_is_priced_by_its_longest_text() {
    let app = App::new();
    let short = json!({"inputs": ["dull", "bad"], "pooling": "none"});
    let long = json!({"inputs": ["dull", "a long text of many many many many many many words"], "pooling": "none"});
    let npy = "application/x-npy";
    let (short_bound, long_bound) = (app.bound(&short, npy).await, app.bound(&long, npy).await);
    // Both texts padded to the longest: the long one's extra tokens count twice.
    let extra_tokens = (long_bound - short_bound) / (HIDDEN as u64 * 4);
    assert!(extra_tokens >= 2 * 8, "{short_bound} -> {long_bound}");
    assert_eq!((long_bound - short_bound) % (2 * HIDDEN as u64 * 4), 0);
}

#[tokio::test]
async fn working_memory_over_its_limit_is_refused_with_both_figures() {
    let app = App::new();
    let mut settings = app.settings.clone();
    settings.limits.max_request_memory_bytes = 1000;
    let dir = crate::common::fixture("tiny-distilbert");
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
    let info = ModelInfo::synthetic("counting", HIDDEN, 64);
    let router = router(AppState::with_forward_passes(info, tokenizer, vec![Counting(app.calls.clone())], settings));
    let body = json!({"inputs": vec!["a text of a few words"; 20], "pooling": "mean"});
    let request = Request::builder()
        .method("POST")
        .uri("/embed")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 413);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let error: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(error["error"]["code"], "request_too_costly", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.max_request_memory_bytes (1000)"), "{message}");
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
}

/// The request that every other limit admitted: 256 texts of 600 words, every token back.
fn attack_body() -> Value {
    json!({"inputs": vec!["a ".repeat(600); 256], "pooling": "none"})
}

#[tokio::test]
async fn a_request_over_the_token_budget_is_refused_with_413_naming_count_and_limit() {
    let server = TestServer::start(tiny_distilbert()).await;
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["limits"]["max_request_tokens"], 8192);
    for route in ["/embed", "/tokenize", "/classify"] {
        let started = Instant::now();
        let mut body = attack_body();
        if route != "/embed" {
            body.as_object_mut().unwrap().remove("pooling");
        }
        let response = server.post_json(route, body).await;
        if route == "/classify" {
            // No head is served here: the head lookup answers first.
            assert_eq!(response.status(), 404);
            continue;
        }
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (413, "too_many_tokens"), "{route}: {message}");
        // 256 texts truncated to the tiny model's 64 tokens.
        assert!(message.contains("16384") && message.contains("8192"), "{route}: {message}");
        assert!(started.elapsed() < Duration::from_secs(5), "{route}: refused after {:?}", started.elapsed());
    }
    // Within the budget: served, and the encoder computed nothing for the refusals.
    let ok = server.post_json("/embed", json!({"inputs": vec!["a ".repeat(600); 128], "pooling": "none"})).await;
    assert_eq!(ok.status(), 200);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("distilserve_sequences_total{runtime=\"encoder\"} 128\n"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_with_more_model_time_than_its_deadline_is_refused_before_any_work() {
    let state = state_over("slow", SlowPerToken, |s| s.server.request_timeout_ms = 1000);
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

/// The 4,371-byte request (seven layers concatenated, every token, as
/// a zero-padded `.npy`) once got a 1.4 GB answer and a 3 GB peak: on the
/// default settings it is refused before any model call, at once, and the
/// same texts pooled are answered.
#[tokio::test]
async fn a_small_request_for_a_huge_answer_is_refused_before_the_model_runs() {
    let dir = default_model_dir();
    let server = TestServer::start(settings_for(&dir)).await;
    let mut inputs = vec!["word ".repeat(600)];
    inputs.extend(std::iter::repeat_n("a".to_string(), 255));
    let mut body =
        json!({"inputs": inputs, "pooling": "none", "layers": [0, 1, 2, 3, 4, 5, 6], "layer_combine": "concat"});
    assert!(body.to_string().len() < 4500);
    let started = std::time::Instant::now();
    let response = server
        .client
        .post(server.url("/embed"))
        .header("accept", "application/x-npy")
        .json(&body)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let (status, code, message) = common::error_of(response).await;
    assert_eq!((status, code.as_str()), (413, "response_too_large"), "{message}");
    assert!(message.contains("1409286272") && message.contains("67108864"), "{message}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let sequences = metrics.lines().find(|l| l.starts_with("distilserve_sequences_total")).unwrap_or("");
    assert!(sequences.is_empty() || sequences.ends_with(" 0"), "no sequence computed: {sequences}");
    eprintln!("the 4 KB request refused in {elapsed:?}");
    body["pooling"] = json!("mean");
    assert_eq!(server.post_json("/embed", body).await.status(), 200);
    server.stop().await;
}
