//! `POST /classify`.

use axum::extract::State;
use axum::Json;

use super::embed::validate_inputs;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::heads::lookup;
use super::types::{ClassifyRequest, ClassifyResponse, Prediction};
use super::{timing_headers, AppState, ENCODER_FINGERPRINT, HEAD_VERSION};
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
    let (probabilities, timing) = head.classify(state.encoder(), texts, request.truncate, state.deadline()).await?;
    let labels = head.labels();
    let predictions = probabilities
        .into_iter()
        .map(|p| {
            let best = argmax(p.iter().copied());
            state.metrics.record_prediction(head.name(), &labels[best]);
            Prediction {
                label: labels[best].clone(),
                probability: p[best],
                probabilities: labels.iter().cloned().zip(p).collect(),
            }
        })
        .collect();
    let head_version = head.version();
    let encoder_fingerprint = head.encoder_fingerprint(&state.encoder().info).to_string();
    let headers = [
        (HEAD_VERSION, HeaderValue::from_str(&head_version).expect("hex digits")),
        (ENCODER_FINGERPRINT, HeaderValue::from_str(&encoder_fingerprint).expect("hex digits")),
    ];
    let body = ClassifyResponse { head: head.name().to_string(), head_version, encoder_fingerprint, predictions };
    Ok((timing_headers(&timing), headers, Json(body)))
}
