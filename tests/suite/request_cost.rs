//! Every request is priced before any model call (`src/cost.rs`): the bound
//! is found by searching the limit a request is admitted under, then checked
//! from both sides: admitted at it with an answer no larger, 413 one byte
//! below with no model call made. In process over a counting fake encoder;
//! the 4 KB request against the real model is in e2e_default_model.rs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use distilserve::config::Settings;
use distilserve::encoder::Encoder;
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

impl Encoder for Counting {
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
        let app = router(AppState::with_encoders(info, tokenizer, vec![Counting(self.calls.clone())], settings));
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
    let router = router(AppState::with_encoders(info, tokenizer, vec![Counting(app.calls.clone())], settings));
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
