//! `POST /classify`.

use axum::extract::State;
use axum::Json;

use super::embed::validate_inputs;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::heads::lookup;
use std::collections::BTreeMap;

use super::types::{ClassifyRequest, ClassifyResponse, Explanation, Prediction, TokenPart};
use super::{timing_headers, AppState, ENCODER_FINGERPRINT, HEAD_VERSION};
use crate::heads::{Explained, Head};
use crate::pooling::argmax;
use axum::http::HeaderValue;
use axum::response::IntoResponse;

#[utoipa::path(
    post,
    path = "/classify",
    tag = "inference",
    request_body = ClassifyRequest,
    responses(
        (status = 200, description = "Per input: top label, its probability, every label's probability", body = ClassifyResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 404, description = "Unknown head", body = ErrorResponse),
        (status = 413, description = "Body, input count or tokens (`too_many_tokens`, limits.max_request_tokens) over the limit", body = ErrorResponse),
        (status = 415, description = "Content-Type is not application/json", body = ErrorResponse),
        (status = 422, description = "Invalid field, empty input, or input too long with truncate=false", body = ErrorResponse),
        (status = 503, description = "Queue full, head still training (`not_ready`) or failed at startup (`head_failed`), or shutting down", body = ErrorResponse),
        (status = 504, description = "Deadline passed", body = ErrorResponse),
    )
)]
pub async fn classify(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ClassifyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let head = lookup(&state, request.head.as_deref())?;
    let texts = validate_inputs(request.inputs.into_vec(), state.settings.limits.max_inputs)?;
    let classified = head.classify(state.encoder(), texts, request.truncate, state.deadline(), request.explain).await?;
    let labels = head.labels();
    let mut explanations = classified.explanations.map(|e| e.into_iter());
    let predictions = classified
        .probabilities
        .into_iter()
        .map(|p| {
            let best = argmax(p.iter().copied());
            state.metrics.record_prediction(head.name(), &labels[best]);
            let explanation = explanations.as_mut().and_then(Iterator::next).map(|e| explanation(&head, labels, e));
            Prediction {
                label: labels[best].clone(),
                probability: p[best],
                probabilities: labels.iter().cloned().zip(p).collect(),
                explanation,
            }
        })
        .collect();
    let timing = classified.timing;
    let head_version = head.version();
    let encoder_fingerprint = head.encoder_fingerprint(&state.encoder().info).to_string();
    let headers = [
        (HEAD_VERSION, HeaderValue::from_str(&head_version).expect("hex digits")),
        (ENCODER_FINGERPRINT, HeaderValue::from_str(&encoder_fingerprint).expect("hex digits")),
    ];
    let body = ClassifyResponse { head: head.name().to_string(), head_version, encoder_fingerprint, predictions };
    Ok((timing_headers(&timing), headers, Json(body)))
}

/// The answer's form of a text's [`Explained`]: parts by label name.
fn explanation(head: &Head, labels: &[String], explained: Explained) -> Explanation {
    let by_label =
        |values: &[f32]| -> BTreeMap<String, f32> { labels.iter().cloned().zip(values.iter().copied()).collect() };
    let Explained { tokens, offsets, attribution, scores } = explained;
    let pooling = match head {
        Head::Logistic(h) => h.pooling.to_string(),
        Head::Onnx(_) => "onnx".to_string(),
    };
    let parts = attribution.as_ref().and_then(|a| a.tokens.as_ref());
    Explanation {
        exact: parts.is_some(),
        pooling,
        scores: by_label(&scores),
        bias: attribution.as_ref().map(|a| by_label(&a.bias)),
        cls: attribution.as_ref().and_then(|a| a.cls.as_deref()).map(by_label),
        tokens: tokens
            .into_iter()
            .zip(offsets)
            .enumerate()
            .map(|(t, (text, (start, end)))| TokenPart { text, start, end, parts: parts.map(|p| by_label(&p[t])) })
            .collect(),
    }
}
