//! Requests from arbitrary bytes: decoded as every request type (never a
//! panic), then sent as the body of every POST route through the whole HTTP
//! application (`router` over a constant fake encoder and the tiny fixture's
//! tokenizer, with tower's `oneshot`): never a 5xx, always our JSON error
//! shape or a JSON answer.
#![no_main]
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use distilserve::config::Settings;
use distilserve::forward::ForwardPass;
use distilserve::http::types::{ClassifyRequest, EmbedRequest, OpenAiEmbeddingRequest, TokenizeRequest};
use distilserve::http::{router, AppState};
use distilserve::model::ModelInfo;
use distilserve::pooling::Rows;
use distilserve::tokenize::{TextTokenizer, Tokenized};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Constant;

impl ForwardPass for Constant {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        Ok(batch.iter().map(|t| Rows { rows: t.len(), cols: 4, data: vec![0.5; 4 * t.len()] }).collect())
    }
}

struct App {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-distilbert"));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut settings = Settings::defaults();
        settings.classify.serve.clear();
        settings.classify.default_head.clear();
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).expect("fixture tokenizer");
        let info = ModelInfo::synthetic("constant", 4, 64);
        let router = router(AppState::with_forward_passes(info, tokenizer, vec![Constant], settings));
        App { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<EmbedRequest>(data);
    let _ = serde_json::from_slice::<ClassifyRequest>(data);
    let _ = serde_json::from_slice::<TokenizeRequest>(data);
    let _ = serde_json::from_slice::<OpenAiEmbeddingRequest>(data);
    let app = app();
    for route in ["/embed", "/classify", "/tokenize", "/v1/embeddings"] {
        let request = Request::post(route)
            .header("content-type", "application/json")
            .body(Body::from(data.to_vec()))
            .unwrap();
        let (status, body) = app.runtime.block_on(async {
            let response = app.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            (status, axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap())
        });
        assert!(!status.is_server_error(), "{route}: {status} {}", String::from_utf8_lossy(&body));
        let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON answer");
        assert!(status.is_success() || json["error"]["code"].is_string(), "{route}: {status} {json}");
    }
});
