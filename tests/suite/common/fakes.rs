//! Fake encoders and the HTTP application over them, in process
//! (`tower::ServiceExt::oneshot`): routing, extractors, error mapping and the
//! queue need neither a socket nor ONNX Runtime.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use distilserve::forward::ForwardPass;
use distilserve::http::{router, AppState};
use distilserve::model::ModelInfo;
use distilserve::pooling::Rows;
use distilserve::tokenize::{TextTokenizer, Tokenized};
use serde_json::Value;
use tower::ServiceExt;

/// Every token's vector is [1, 2, 3, 4].
pub struct Constant;

impl ForwardPass for Constant {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        Ok(batch.iter().map(|t| Rows { rows: t.len(), cols: 4, data: [1.0, 2.0, 3.0, 4.0].repeat(t.len()) }).collect())
    }
}

/// Takes 5 ms per token: a model whose pace the queue can measure.
pub struct SlowPerToken;

impl ForwardPass for SlowPerToken {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        let tokens: usize = batch.iter().map(|t| t.len()).sum();
        std::thread::sleep(std::time::Duration::from_millis(5 * tokens as u64));
        Constant.encode(batch)
    }
}

/// The application state over `encoder` (width 4, 64 tokens, the tiny fixture's
/// tokenizer) with the tiny fixture's settings changed by `configure`.
pub fn state_over<E: ForwardPass + 'static>(
    name: &str,
    encoder: E,
    configure: impl FnOnce(&mut distilserve::config::Settings),
) -> AppState {
    let dir = super::fixture("tiny-distilbert");
    let mut settings = super::settings_for(&dir);
    configure(&mut settings);
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
    AppState::with_forward_passes(ModelInfo::synthetic(name, 4, 64), tokenizer, vec![encoder], settings)
}

/// One request to the application over `Constant`: status and JSON body
/// (null when the body is not JSON).
pub async fn send(method: &str, uri: &str, content_type: Option<&str>, body: &str) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let app = router(state_over("constant", Constant, |_| {}));
    let response = app.oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}
