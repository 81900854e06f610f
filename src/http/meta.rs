//! Routes about the service itself: `/health`, `/info`, the OpenAPI document.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::types::{HealthResponse, InfoResponse, LimitsDescription, ModelDescription};
use super::AppState;

#[utoipa::path(
    get,
    path = "/health",
    tag = "service",
    responses(
        (status = 200, description = "Model and heads loaded, serving", body = HealthResponse),
        (status = 503, description = "Heads still training at startup (`starting`), or shutting down (`draining`)", body = HealthResponse),
    )
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    // Never runs the model: a probe must stay cheap when the encoder is saturated.
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, Json(HealthResponse { status: "draining".into() }))
    } else if !state.heads.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(HealthResponse { status: "starting".into() }))
    } else {
        (StatusCode::OK, Json(HealthResponse { status: "ok".into() }))
    }
}

#[utoipa::path(
    get,
    path = "/info",
    tag = "service",
    responses((status = 200, description = "Model and service description", body = InfoResponse))
)]
pub async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    let model = &state.inference.info;
    let s = &state.settings;
    Json(InfoResponse {
        service: "distilserve".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: ModelDescription {
            name: model.name.clone(),
            architecture: model.architecture.clone(),
            task: model.task.clone(),
            hidden_size: model.hidden_size,
            max_tokens: model.max_tokens,
            inputs: model.inputs.clone(),
            output: model.output.clone(),
            file: model.file.clone(),
            fingerprint: model.fingerprint.clone(),
        },
        execution_provider: model.execution_provider.clone(),
        onnxruntime_library: model.onnxruntime_library.display().to_string(),
        onnxruntime_api: "1.31".into(),
        limits: LimitsDescription {
            max_inputs: s.limits.max_inputs,
            max_body_bytes: s.server.max_body_bytes,
            max_batch_size: s.batching.max_batch_size,
            max_batch_tokens: s.batching.max_batch_tokens,
            request_timeout_ms: s.server.request_timeout_ms,
        },
    })
}
