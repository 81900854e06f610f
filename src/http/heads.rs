//! The heads as a resource: list and inspect them (`GET /heads`,
//! `GET /heads/{name}`, the confusion matrix as SVG), and with the admin key
//! create one from labelled examples (`POST /heads`), roll it back, delete
//! it, or re-read a configured one from disk.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, ErrorResponse};
use super::types::{
    CreateHeadQuery, CreateHeadRequest, ExampleInput, HeadAccepted, HeadDetail, HeadSummary, HeadsResponse, LabelValue,
    TrainingOptions, VersionDescription,
};
use super::AppState;
use crate::config::HeadKind;
use crate::config::PoolingChoice;
use crate::data::{parse_rows, RowFormat, RowsError};
use crate::heads::jobs::{Job, JobState, SubmitError};
use crate::heads::store::{HeadLock, LockError, RollbackError};
use crate::heads::upload::{prepare, Example, Options};
use crate::heads::{Head, Lookup};

/// The served head `name` (the default when None), or the error that says why not.
pub fn lookup(state: &AppState, name: Option<&str>) -> Result<Arc<Head>, ApiError> {
    state.heads.get(name).map_err(|e| {
        let name = name.unwrap_or(state.heads.default_name());
        match e {
            Lookup::NotFound => match state.jobs.status(name).map(|s| s.state) {
                Some(JobState::Queued | JobState::Training) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    format!("head {name:?} is still training; see GET /heads/{name}"),
                ),
                // Trained by another replica and not picked up here yet (within
                // classify.watch_interval_ms): 503, which a load balancer retries elsewhere.
                Some(JobState::Ready) if state.store.has_head(name) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    format!("head {name:?} is ready in the heads folder and is being loaded here; retry shortly"),
                ),
                _ => ApiError::not_found(format!("no head named {name:?}; see GET /heads")),
            },
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

fn summary(state: &AppState, head: &Head) -> HeadSummary {
    let mut s = HeadSummary {
        name: head.name().to_string(),
        version: head.version(),
        kind: format!("{:?}", head.kind()).to_lowercase(),
        labels: head.labels().to_vec(),
        default: head.name() == state.heads.default_name(),
        pooling: None,
        layers: None,
        encoder: Some(match head {
            Head::Logistic(h) => h.encoder.name.clone(),
            Head::Onnx(h) => h.inference.info.name.clone(),
        }),
        validation_accuracy: None,
        test_accuracy: None,
        created_unix: None,
    };
    if let Head::Logistic(h) = head {
        s.pooling = Some(h.pooling.to_string());
        s.layers = Some(h.layers_label());
        s.validation_accuracy = h.metrics.validation.as_ref().map(|m| m.accuracy);
        s.test_accuracy = h.metrics.test.as_ref().map(|m| m.accuracy);
        s.created_unix = Some(h.created_unix);
    }
    s
}

#[utoipa::path(
    get,
    path = "/heads",
    tag = "heads",
    responses((status = 200, description = "Heads served, with their metrics", body = HeadsResponse))
)]
pub async fn list_heads(State(state): State<AppState>) -> Json<HeadsResponse> {
    let heads: Vec<HeadSummary> = state.heads.all().iter().map(|h| summary(&state, h)).collect();
    let failed = state.heads.failed();
    let mut pending: Vec<String> = state
        .heads
        .configured()
        .iter()
        .filter(|c| !heads.iter().any(|h| &h.name == *c) && !failed.contains_key(*c))
        .cloned()
        .collect();
    pending.extend(state.jobs.in_progress().into_iter().filter(|n| !heads.iter().any(|h| &h.name == n)));
    Json(HeadsResponse {
        default_head: state.heads.default_name().to_string(),
        heads,
        pending,
        failed,
        folder_error: state.heads.folder_error(),
    })
}

fn versions_of(state: &AppState, name: &str, active: &str) -> Vec<VersionDescription> {
    state
        .store
        .versions(name)
        .unwrap_or_default()
        .into_iter()
        .map(|v| VersionDescription { active: v.version == active, version: v.version, created_unix: v.created_unix })
        .collect()
}

#[utoipa::path(
    get,
    path = "/heads/{name}",
    tag = "heads",
    params(("name" = String, Path, description = "Head name")),
    responses(
        (status = 200, description = "One head: status (a head created over the API may be `queued`, `training` with phase and progress, or `failed` with the reason), training record, held-out metrics with per-label precision, recall and F1, versions", body = HeadDetail),
        (status = 404, description = "Unknown head", body = ErrorResponse),
        (status = 503, description = "A configured head still training at startup", body = ErrorResponse),
    )
)]
pub async fn get_head(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<HeadDetail>, ApiError> {
    let job = state.jobs.status(&name);
    let served = match lookup(&state, Some(&name)) {
        Ok(head) => Some(head),
        // A head being created (or whose creation failed) is described by its job.
        Err(_) if job.is_some() => None,
        Err(e) => return Err(e),
    };
    let detail = match served {
        Some(head) => {
            let mut detail = HeadDetail {
                summary: summary(&state, &head),
                encoder: None,
                training: None,
                metrics: None,
                status: "ready".into(),
                versions: Vec::new(),
                description: None,
                job,
            };
            if let Head::Logistic(h) = &*head {
                detail.encoder = serde_json::to_value(&h.encoder).ok();
                detail.training = serde_json::to_value(&h.training).ok();
                detail.metrics = serde_json::to_value(&h.metrics).ok();
                detail.description = h.description.clone();
                detail.versions = versions_of(&state, &name, &detail.summary.version);
            }
            detail
        }
        None => {
            let job = job.expect("checked above");
            HeadDetail {
                summary: HeadSummary {
                    name: name.clone(),
                    version: String::new(),
                    kind: "logistic".into(),
                    labels: job.label_counts.iter().map(|c| c.label.clone()).collect(),
                    default: false,
                    pooling: None,
                    layers: None,
                    encoder: Some(state.encoder().info.name.clone()),
                    validation_accuracy: None,
                    test_accuracy: None,
                    created_unix: None,
                },
                encoder: None,
                training: None,
                metrics: None,
                status: serde_json::to_value(job.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                versions: versions_of(&state, &name, ""),
                description: None,
                job: Some(job),
            }
        }
    };
    Ok(Json(detail))
}

#[utoipa::path(
    get,
    path = "/heads/{name}/confusion.svg",
    tag = "heads",
    params(("name" = String, Path, description = "Head name")),
    responses(
        (status = 200, description = "Confusion matrix on the held-out part (test; else validation): rows are true labels, columns predicted", content_type = "image/svg+xml"),
        (status = 404, description = "Unknown head, or one without held-out metrics (ONNX heads)", body = ErrorResponse),
    )
)]
pub async fn confusion_svg(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let head = lookup(&state, Some(&name))?;
    let Head::Logistic(h) = &*head else {
        return Err(ApiError::not_found(format!("head {name:?} is an ONNX classifier: it has no held-out metrics")));
    };
    let (part, metrics) = match (&h.metrics.test, &h.metrics.validation) {
        (Some(m), _) => ("test", m),
        (None, Some(m)) => ("validation", m),
        _ => return Err(ApiError::not_found(format!("head {name:?} has no held-out metrics"))),
    };
    let svg = crate::svg::confusion_matrix(
        &h.labels,
        &metrics.confusion,
        &format!("{name}: {part}, accuracy {:.3}", metrics.accuracy),
    );
    Ok(([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-cache")], svg).into_response())
}

fn parse_pooling(value: Option<&str>) -> Result<Option<PoolingChoice>, ApiError> {
    value
        .map(|p| match p {
            "auto" => Ok(PoolingChoice::Auto),
            "cls" => Ok(PoolingChoice::Cls),
            "mean" => Ok(PoolingChoice::Mean),
            "cls_mean" => Ok(PoolingChoice::ClsMean),
            other => Err(ApiError::invalid(
                "invalid_option",
                format!("pooling {other:?} is not one of auto, cls, mean, cls_mean"),
            )),
        })
        .transpose()
}

/// The request, whatever the body's format: name, examples, options.
struct Creation {
    name: String,
    examples: Vec<Example>,
    replace: bool,
    description: Option<String>,
    options: Options,
}

fn too_many_examples(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_examples",
        format!("more than training.max_examples ({max}) examples; reading stopped there"),
    )
}

fn from_json(body: &[u8], max_examples: usize) -> Result<Creation, ApiError> {
    super::types::MAX_EXAMPLES.with(|m| m.set(max_examples));
    let parsed = serde_json::from_slice::<CreateHeadRequest>(body);
    super::types::MAX_EXAMPLES.with(|m| m.set(usize::MAX));
    let request: CreateHeadRequest = parsed.map_err(|e| {
        if e.to_string().starts_with(super::types::TOO_MANY_EXAMPLES) {
            too_many_examples(max_examples)
        } else if e.is_syntax() || e.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}"))
        } else {
            ApiError::invalid("invalid_request", format!("the body is not a head to create: {e}"))
        }
    })?;
    let TrainingOptions { pooling, alphas, cv_folds, test_fraction, min_probability } = request.options;
    Ok(Creation {
        name: request.name,
        examples: request
            .examples
            .into_iter()
            .map(|ExampleInput { text, label, split }| Example {
                text,
                label: match label {
                    LabelValue::Name(n) => n,
                    LabelValue::Index(i) => i.to_string(),
                },
                split,
            })
            .collect(),
        replace: request.replace,
        description: request.description,
        options: Options {
            pooling: parse_pooling(pooling.as_deref())?,
            alphas,
            cv_folds,
            test_fraction,
            min_probability,
        },
    })
}

fn from_rows(
    body: &[u8],
    format: RowFormat,
    query: CreateHeadQuery,
    max_examples: usize,
) -> Result<Creation, ApiError> {
    let name = query.name.ok_or_else(|| {
        ApiError::invalid("invalid_request", "with a CSV or JSONL body the head's name goes in the query: ?name=...")
    })?;
    let text = std::str::from_utf8(body).map_err(|_| ApiError::invalid("invalid_request", "the body is not UTF-8"))?;
    let rows = parse_rows(text, format, max_examples).map_err(|e| match e {
        RowsError::TooMany(max) => too_many_examples(max),
        RowsError::Invalid(e) => ApiError::invalid("invalid_request", format!("{e:#}")),
    })?;
    let alphas = query
        .alphas
        .map(|a| a.split(',').map(|v| v.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|_| ApiError::invalid("invalid_option", "alphas must be comma-separated numbers"))?;
    Ok(Creation {
        name,
        examples: rows.into_iter().map(|r| Example { text: r.text, label: r.label, split: r.split }).collect(),
        replace: query.replace.unwrap_or(false),
        description: query.description,
        options: Options {
            pooling: parse_pooling(query.pooling.as_deref())?,
            alphas,
            cv_folds: query.cv_folds,
            test_fraction: query.test_fraction,
            min_probability: query.min_probability,
        },
    })
}

const MAX_DESCRIPTION_BYTES: usize = 2000;

#[utoipa::path(
    post,
    path = "/heads",
    tag = "heads",
    params(CreateHeadQuery),
    request_body(
        content(
            (CreateHeadRequest = "application/json"),
            (String = "text/csv", example = "text,label\nthe battery died in a day,hardware\n"),
        ),
        description = "Labelled examples as JSON, CSV (columns text, label, optional split) or JSONL (`Content-Type: application/jsonl` or `application/x-ndjson`; one `{\"text\", \"label\", \"split\"}` object per line); with CSV or JSONL the name and options go in the query"
    ),
    responses(
        (status = 202, description = "Accepted: training runs in the background; follow `Location` (GET /heads/{name})", body = HeadAccepted,
            headers(("location" = String, description = "/heads/{name}"))),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "The admin key is missing or wrong", body = ErrorResponse),
        (status = 403, description = "Admin routes are off: no security.admin_key is configured", body = ErrorResponse),
        (status = 409, description = "The name is taken (`head_exists`; send `replace`), or that head is being trained, rolled back or deleted on any replica sharing the heads folder (`training_in_progress`), or is an ONNX head (`not_stored`)", body = ErrorResponse),
        (status = 413, description = "Body over training.max_upload_bytes, or more examples (`too_many_examples`) or labels (`too_many_labels`) than the settings allow", body = ErrorResponse),
        (status = 415, description = "Content-Type is not JSON, CSV or JSONL", body = ErrorResponse),
        (status = 422, description = "Bad name, fewer than 2 labels, a label with too few examples, an empty text, a bad split or option", body = ErrorResponse),
        (status = 429, description = "training.max_queued trainings are already waiting", body = ErrorResponse),
    ),
    security(("admin_key" = []))
)]
/// Creates (or with `replace`, retrains) a logistic head from labelled examples.
pub async fn create_head(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<CreateHeadQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid("invalid_request", format!("bad query string: {}", e.body_text())))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let format = match mime.as_str() {
        "application/json" => {
            if query.name.is_some() || query.alphas.is_some() || query.pooling.is_some() {
                return Err(ApiError::invalid("invalid_request", "with a JSON body, name and options go in the body"));
            }
            None
        }
        "text/csv" => Some(RowFormat::Csv),
        "application/jsonl" | "application/x-ndjson" | "application/jsonlines" => Some(RowFormat::Jsonl),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the examples as application/json, text/csv or application/jsonl",
            ))
        }
    };
    // One upload is decoded at a time, on a blocking thread: a body of many
    // tiny rows costs the rows kept (at most training.max_examples), once.
    let _one_upload = state.uploads.acquire().await.map_err(internal)?;
    let max_examples = state.settings.training.max_examples;
    let creation = tokio::task::spawn_blocking(move || match format {
        None => from_json(&body, max_examples),
        Some(format) => from_rows(&body, format, query, max_examples),
    })
    .await
    .map_err(internal)??;
    let name = creation.name;
    crate::config::HeadName::parse(&name).map_err(|e| ApiError::invalid("invalid_head_name", e.to_string()))?;
    if creation.description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES) {
        return Err(ApiError::invalid("invalid_request", format!("description is over {MAX_DESCRIPTION_BYTES} bytes")));
    }
    let existing = state.heads.get(Some(&name));
    if let Ok(head) = &existing {
        if head.kind() == HeadKind::Onnx {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_stored",
                format!("head {name:?} is an ONNX classifier configured in the settings; choose another name"),
            ));
        }
    }
    let on_disk =
        crate::heads::logistic::head_path(&state.settings.classify.heads_dir, &name).is_ok_and(|p| p.exists());
    let taken = existing.is_ok() || on_disk || state.heads.configured().contains(&name);
    if taken && !creation.replace {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "head_exists",
            format!("head {name:?} exists; send \"replace\": true (or ?replace=true) to train a new version of it"),
        ));
    }
    let (examples, options, limits) = (creation.examples, creation.options, state.settings.training.clone());
    let prepared = tokio::task::spawn_blocking(move || prepare(examples, &options, &limits)).await.map_err(internal)?;
    let prepared = prepared.map_err(|e| {
        let status = if e.too_large { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::UNPROCESSABLE_ENTITY };
        ApiError::new(status, e.code, e.message)
    })?;
    let lock = lock_head(&state, &name).await?;
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let job =
        Job { name: name.clone(), lock, prepared, description: creation.description, request_id: request_id.clone() };
    let status = state.jobs.submit(job, &state.metrics).map_err(|e| match e {
        SubmitError::InProgress(_) => ApiError::new(StatusCode::CONFLICT, "training_in_progress", e.to_string()),
        SubmitError::QueueFull(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "training_queue_full", e.to_string()),
        SubmitError::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", e.to_string()),
    })?;
    tracing::info!(head = %name, request_id = %request_id, examples = status.examples, labels = status.label_counts.len(), replace = taken, "head training queued");
    let location = format!("/heads/{name}");
    let mut response =
        (StatusCode::ACCEPTED, Json(HeadAccepted { name, location: location.clone(), job: status })).into_response();
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("a valid head name"));
    Ok(response)
}

/// A head that rollback and delete can act on: a valid name (else 404, as no
/// such head can exist), not an ONNX head from the settings (409).
fn stored_only(state: &AppState, name: &str) -> Result<(), ApiError> {
    if crate::config::HeadName::parse(name).is_err() {
        return Err(ApiError::not_found(format!("no head named {name:?}")));
    }
    if let Ok(head) = state.heads.get(Some(name)) {
        if head.kind() == HeadKind::Onnx {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_stored",
                format!("head {name:?} is an ONNX classifier configured in the settings, not a stored head"),
            ));
        }
    }
    Ok(())
}

/// Holds `name` in the heads folder against every replica sharing it (and
/// this one's own training of it), or answers 409. Where the folder cannot
/// hold a lock file (read-only), nothing can be published or deleted there
/// either: the operation goes on and fails or not on its own.
async fn lock_head(state: &AppState, name: &str) -> Result<Option<HeadLock>, ApiError> {
    let (store, wanted) = (state.store.clone(), name.to_string());
    match tokio::task::spawn_blocking(move || store.try_lock(&wanted)).await.map_err(internal)? {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "training_in_progress",
            format!(
                "head {name:?} is being trained, rolled back or deleted (here or by another replica sharing \
                 the heads folder); see GET /heads/{name} and retry when it is done"
            ),
        )),
        Err(LockError::Io(e)) => {
            tracing::warn!(head = %name, error = %e, "cannot lock the head in the heads folder; going on without");
            Ok(None)
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e}"))
}

#[utoipa::path(
    post,
    path = "/heads/{name}/rollback",
    tag = "heads",
    params(("name" = String, Path, description = "Head name")),
    responses(
        (status = 200, description = "The version published before the active one is active again (on every replica sharing the heads folder within classify.watch_interval_ms)", body = HeadSummary),
        (status = 401, description = "The admin key is missing or wrong", body = ErrorResponse),
        (status = 403, description = "Admin routes are off", body = ErrorResponse),
        (status = 404, description = "No such head in the heads folder", body = ErrorResponse),
        (status = 409, description = "No earlier version (`no_previous_version`), the active version missing from the history (`history_mismatch`), the earlier version damaged (`version_damaged`) or made for another encoder (`encoder_mismatch`), a training, rollback or delete of it in progress on any replica (`training_in_progress`), or an ONNX head (`not_stored`); nothing was switched", body = ErrorResponse),
        (status = 503, description = "The heads folder cannot be read or written (`heads_folder_unavailable`); nothing was switched", body = ErrorResponse),
    ),
    security(("admin_key" = []))
)]
pub async fn rollback_head(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HeadSummary>, ApiError> {
    stored_only(&state, &name)?;
    let _one_at_a_time = state.admin_lock.lock().await;
    if state.store.active_version(&name).is_none() {
        return Err(ApiError::not_found(format!("no head named {name:?} in the heads folder")));
    }
    let _held = lock_head(&state, &name).await?;
    let (store, info, wanted) = (state.store.clone(), state.encoder().info.clone(), name.clone());
    let rolled = tokio::task::spawn_blocking(move || store.rollback(&wanted, &info)).await.map_err(internal)?;
    let (version, head) = rolled.map_err(|e| {
        let (status, code) = match &e {
            RollbackError::NoActive => (StatusCode::NOT_FOUND, "not_found"),
            RollbackError::NoPrevious { .. } => (StatusCode::CONFLICT, "no_previous_version"),
            RollbackError::NotInHistory { .. } => (StatusCode::CONFLICT, "history_mismatch"),
            RollbackError::Damaged { .. } => (StatusCode::CONFLICT, "version_damaged"),
            RollbackError::OtherEncoder(_) => (StatusCode::CONFLICT, "encoder_mismatch"),
            RollbackError::Folder(_) => (StatusCode::SERVICE_UNAVAILABLE, "heads_folder_unavailable"),
        };
        let heads_dir = state.settings.classify.heads_dir.display().to_string();
        ApiError::new(status, code, format!("head {name:?}: {e}").replace(&heads_dir, "<heads_dir>"))
    })?;
    let head = Head::Logistic(head);
    let summary = summary(&state, &head);
    state.heads.insert(head);
    tracing::info!(head = %name, version = %version, "head rolled back");
    Ok(Json(summary))
}

#[utoipa::path(
    delete,
    path = "/heads/{name}",
    tag = "heads",
    params(("name" = String, Path, description = "Head name")),
    responses(
        (status = 204, description = "Deleted with every version; no longer served (by other replicas sharing the folder within classify.watch_interval_ms)"),
        (status = 401, description = "The admin key is missing or wrong", body = ErrorResponse),
        (status = 403, description = "Admin routes are off", body = ErrorResponse),
        (status = 404, description = "No such head", body = ErrorResponse),
        (status = 409, description = "The default head (`default_head`), a head the settings name (`head_in_settings`), an ONNX head (`not_stored`), or one being trained, rolled back or deleted on any replica (`training_in_progress`)", body = ErrorResponse),
    ),
    security(("admin_key" = []))
)]
pub async fn delete_head(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    stored_only(&state, &name)?;
    if name == state.heads.default_name() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "default_head",
            format!("head {name:?} is the default head (classify.default_head); make another the default first"),
        ));
    }
    if state.heads.is_configured(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "head_in_settings",
            format!(
                "head {name:?} is named in the settings (classify.serve): every start needs it; \
                 remove it there first"
            ),
        ));
    }
    if state.jobs.in_progress().contains(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "training_in_progress",
            format!("head {name:?} is training; delete it when it is done"),
        ));
    }
    let _one_at_a_time = state.admin_lock.lock().await;
    if !state.store.has_head(&name) && state.heads.get(Some(&name)).is_err() {
        return Err(ApiError::not_found(format!("no head named {name:?}")));
    }
    let _held = lock_head(&state, &name).await?;
    let (store, wanted) = (state.store.clone(), name.clone());
    let had_file =
        tokio::task::spawn_blocking(move || store.delete(&wanted)).await.map_err(internal)?.map_err(internal)?;
    let served = state.heads.remove(&name);
    state.jobs.forget(&name);
    if !had_file && !served {
        return Err(ApiError::not_found(format!("no head named {name:?}")));
    }
    tracing::info!(head = %name, "head deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/heads/{name}/reload",
    tag = "heads",
    params(("name" = String, Path, description = "Head name (one of classify.serve)")),
    responses(
        (status = 200, description = "The head was read again from disk and now serves", body = HeadSummary),
        (status = 401, description = "The admin key is missing or wrong (`Authorization: Bearer <security.admin_key>`)", body = ErrorResponse),
        (status = 403, description = "Admin routes are off: no security.admin_key is configured", body = ErrorResponse),
        (status = 404, description = "Not a served head", body = ErrorResponse),
        (status = 409, description = "Head still training at startup", body = ErrorResponse),
        (status = 422, description = "The file is missing, damaged, or for another encoder: the previous head keeps serving", body = ErrorResponse),
    ),
    security(("admin_key" = []))
)]
/// Re-reads a configured head (after `distilserve train` wrote a new file,
/// say) and swaps it in only when it loads and checks out; otherwise nothing
/// changes. Heads in the folder are also picked up on their own (classify.watch_interval_ms).
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
    let loaded = tokio::task::spawn_blocking(move || crate::heads::load_one(&settings, &wanted, &runtimes, false))
        .await
        .map_err(internal)?;
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
