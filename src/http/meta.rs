//! Routes about the service itself: `/health`, `/info`, the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::types::{HealthResponse, InfoResponse, LimitsDescription, ModelDescription};
use super::{AppState, Readiness};
use crate::error_code::ErrorCode;
use crate::metrics::{HeadLabels, CONTENT_TYPE};

#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "service",
    responses(
        (status = 200, description = "Model and heads loaded, not draining: send traffic (also at `/health`)", body = HealthResponse),
        (status = 503, description = "Heads still training or the model warming up at startup (`starting`), shutting down (`draining`), or an inference worker dead (`worker_dead`; `/health/live` fails too)", body = HealthResponse),
    )
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let readiness = state.readiness();
    let code = if readiness == Readiness::Ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(HealthResponse { status: readiness.status().into() }))
}

#[utoipa::path(
    get,
    path = "/health/live",
    tag = "service",
    responses(
        (status = 200, description = "The process is up and answering (also while heads train and while draining)", body = HealthResponse),
        (status = 503, description = "An inference worker died (`worker_dead`) or is stuck in one model call (`worker_stuck`, longer than server.worker_stuck_ms): restart the process", body = HealthResponse),
    )
)]
pub async fn live(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let health = state.runtimes.health();
    let stuck = Duration::from_millis(state.settings.server.worker_stuck_ms);
    let status = if health.dead > 0 {
        "worker_dead"
    } else if health.longest_call > stuck {
        "worker_stuck"
    } else {
        return (StatusCode::OK, Json(HealthResponse { status: "alive".into() }));
    };
    tracing::error!(
        status,
        dead = health.dead,
        longest_call_ms = health.longest_call.as_millis() as u64,
        "liveness failed"
    );
    (StatusCode::SERVICE_UNAVAILABLE, Json(HealthResponse { status: status.into() }))
}

/// `GET /health`: readiness, as `/health/ready` (the path TEI and many load
/// balancers probe).
#[utoipa::path(
    get,
    path = "/health",
    tag = "service",
    operation_id = "health",
    responses(
        (status = 200, description = "As GET /health/ready", body = HealthResponse),
        (status = 503, description = "As GET /health/ready", body = HealthResponse),
    )
)]
pub async fn health(state: State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    ready(state).await
}

/// `GET /tei/metrics`: `/metrics`, where TEI serves it.
#[utoipa::path(
    get,
    path = "/tei/metrics",
    tag = "tei",
    operation_id = "tei_metrics",
    responses((status = 200, description = "As GET /metrics", content_type = "application/openmetrics-text"))
)]
pub async fn tei_metrics(state: State<AppState>) -> impl IntoResponse {
    metrics(state).await
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((status = 200, description = "OpenMetrics text format: HTTP requests and latency; per model runtime (encoder, ONNX heads) queue, batches and model info; heads", content_type = "application/openmetrics-text"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = &state.metrics;
    // Heads come and go (reloads): their series are set afresh at each scrape.
    metrics.head_info.clear();
    for head in state.heads.all() {
        let labels = HeadLabels {
            name: head.name().to_string(),
            kind: head.kind().as_str().to_string(),
            labels: head.labels().join(","),
            version: head.version(),
        };
        metrics.head_info.get_or_create(&labels).set(1);
    }
    metrics.ready.set(i64::from(state.readiness() == Readiness::Ready));
    let workers = state.runtimes.health();
    metrics.observe_process(workers.dead, workers.longest_call);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}

#[utoipa::path(
    get,
    path = "/info",
    tag = "service",
    responses((status = 200, description = "Model and service description", body = InfoResponse))
)]
pub async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    let model = &state.encoder_runtime().info;
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
            layers: model.layers,
            file: model.file.clone(),
            fingerprint: model.fingerprint.clone(),
            one_sequence_per_call: model.quantises_per_call,
        },
        execution_provider: model.execution_provider.clone(),
        onnxruntime_library: model.onnxruntime_library.display().to_string(),
        onnxruntime_api: "1.31".into(),
        limits: LimitsDescription {
            max_inputs: s.limits.max_inputs,
            max_request_tokens: s.limits.max_request_tokens,
            max_pooled_inputs: s.limits.max_pooled_inputs,
            max_pooled_tokens: s.limits.max_pooled_tokens,
            max_response_bytes: s.limits.max_response_bytes,
            max_request_memory_bytes: s.limits.max_request_memory_bytes,
            max_body_bytes: s.server.max_body_bytes,
            max_batch_size: s.batching.max_batch_size,
            max_batch_tokens: s.batching.max_batch_tokens,
            request_timeout_ms: s.server.request_timeout_ms,
        },
    })
}

/// `GET /`: the playground page (type text; every head's label and
/// probabilities, per-token vector norms). Self-contained: no remote assets.
pub async fn playground() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("assets/playground.html"))
}

/// `GET /docs`: Swagger UI on our own spec, with assets served by us (no CDN).
pub async fn docs(State(state): State<AppState>) -> axum::response::Response {
    if !state.settings.server.docs_dir.join("swagger-ui-bundle.js").is_file() {
        return crate::http::error::ApiError::new(
            ErrorCode::DocsUnavailable,
            format!(
                "Swagger UI assets are not installed in {}: run scripts/setup.sh (the spec is at /openapi.json)",
                state.settings.server.docs_dir.display()
            ),
        )
        .into_response();
    }
    axum::response::Html(include_str!("assets/docs.html")).into_response()
}
