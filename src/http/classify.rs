//! `POST /classify`, `GET /heads`, `GET /heads/{name}`, `POST /heads/{name}/reload`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::embed::validate_inputs;
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::types::{ClassifyRequest, ClassifyResponse, HeadDetail, HeadSummary, HeadsResponse, Prediction};
use super::{timing_headers, AppState, ENCODER_FINGERPRINT, HEAD_VERSION};
use crate::heads::{Head, Lookup};
use crate::pooling::argmax;
use axum::http::HeaderValue;
use axum::response::IntoResponse;

fn lookup(state: &AppState, name: Option<&str>) -> Result<std::sync::Arc<Head>, ApiError> {
    state.heads.get(name).map_err(|e| {
        let name = name.unwrap_or(state.heads.default_name());
        match e {
            Lookup::NotFound => ApiError::not_found(format!("no head named {name:?}; see GET /heads")),
            Lookup::NotReady => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("head {name:?} is still training; retry shortly"),
            ),
            Lookup::Failed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "head_failed",
                format!("head {name:?} failed to train at startup and is not served; see GET /heads and the log"),
            ),
        }
    })
}

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

fn summary(state: &AppState, head: &Head) -> HeadSummary {
    let mut s = HeadSummary {
        name: head.name().to_string(),
        version: head.version(),
        kind: format!("{:?}", head.kind()).to_lowercase(),
        labels: head.labels().to_vec(),
        default: head.name() == state.heads.default_name(),
        pooling: None,
        validation_accuracy: None,
        test_accuracy: None,
        created_unix: None,
    };
    if let Head::Logistic(h) = head {
        s.pooling = Some(h.pooling.to_string());
        s.validation_accuracy = h.metrics.validation.as_ref().map(|m| m.accuracy);
        s.test_accuracy = h.metrics.test.as_ref().map(|m| m.accuracy);
        s.created_unix = Some(h.created_unix);
    }
    s
}

#[utoipa::path(
    get,
    path = "/heads",
    tag = "inference",
    responses((status = 200, description = "Heads served, with their metrics", body = HeadsResponse))
)]
pub async fn list_heads(State(state): State<AppState>) -> Json<HeadsResponse> {
    let heads: Vec<HeadSummary> = state.heads.all().iter().map(|h| summary(&state, h)).collect();
    let failed = state.heads.failed();
    let pending = state
        .heads
        .configured()
        .iter()
        .filter(|c| !heads.iter().any(|h| &h.name == *c) && !failed.contains_key(*c))
        .cloned()
        .collect();
    Json(HeadsResponse { default_head: state.heads.default_name().to_string(), heads, pending, failed })
}

#[utoipa::path(
    get,
    path = "/heads/{name}",
    tag = "inference",
    params(("name" = String, Path, description = "Head name")),
    responses(
        (status = 200, description = "One head: training record and metrics with confusion matrices", body = HeadDetail),
        (status = 404, description = "Unknown head", body = ErrorResponse),
        (status = 503, description = "Head still training", body = ErrorResponse),
    )
)]
pub async fn get_head(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<HeadDetail>, ApiError> {
    let head = lookup(&state, Some(&name))?;
    let mut detail = HeadDetail { summary: summary(&state, &head), encoder: None, training: None, metrics: None };
    if let Head::Logistic(h) = &*head {
        detail.encoder = serde_json::to_value(&h.encoder).ok();
        detail.training = serde_json::to_value(&h.training).ok();
        detail.metrics = serde_json::to_value(&h.metrics).ok();
    }
    Ok(Json(detail))
}

#[utoipa::path(
    post,
    path = "/heads/{name}/reload",
    tag = "inference",
    params(("name" = String, Path, description = "Head name (one of classify.serve)")),
    responses(
        (status = 200, description = "The head was read again from disk and now serves", body = HeadSummary),
        (status = 401, description = "The admin key is missing or wrong (`Authorization: Bearer <security.admin_key>`)", body = ErrorResponse),
        (status = 403, description = "Admin routes are off: no security.admin_key is configured", body = ErrorResponse),
        (status = 404, description = "Not a served head", body = ErrorResponse),
        (status = 409, description = "Head still training at startup", body = ErrorResponse),
        (status = 422, description = "The file is missing, damaged, or for another encoder: the previous head keeps serving", body = ErrorResponse),
    )
)]
/// Re-reads a head (after `distilserve train` wrote a new file, say) and swaps
/// it in only when it loads and checks out; otherwise nothing changes.
pub async fn reload_head(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HeadSummary>, ApiError> {
    if !state.heads.configured().iter().any(|c| *c == name) {
        return Err(ApiError::not_found(format!("no head named {name:?} is served; see GET /heads")));
    }
    let _one_at_a_time = state.admin_lock.lock().await;
    if matches!(state.heads.get(Some(&name)), Err(Lookup::NotReady)) {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_ready", format!("head {name:?} is still training")));
    }
    let (settings, runtimes, wanted) = (state.settings.clone(), state.runtimes.clone(), name.clone());
    let loaded =
        tokio::task::spawn_blocking(move || crate::heads::load_one(&settings, &wanted, &runtimes)).await.map_err(
            |e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("reload task failed: {e}")),
        )?;
    let unusable = |message: String| {
        tracing::warn!(head = %name, error = %message, "head reload refused; the previous head keeps serving");
        // The log has the paths; the answer names the folder by its setting.
        let heads_dir = state.settings.classify.heads_dir.display().to_string();
        let message = if heads_dir.is_empty() { message } else { message.replace(&heads_dir, "<heads_dir>") };
        ApiError::invalid("invalid_head_file", format!("{message}; the previous head keeps serving"))
    };
    match loaded {
        Ok(Some(head)) => {
            let summary = summary(&state, &head);
            state.heads.insert(head);
            tracing::info!(head = %name, "head reloaded");
            Ok(Json(summary))
        }
        Ok(None) => Err(unusable(format!("the file of head {name:?} is missing"))),
        Err(e) => Err(unusable(format!("{e:#}"))),
    }
}
