//! The heads as a resource, admin side (the admin key, the private port when
//! there is one): create one from labelled examples (`POST /heads`), roll it
//! back, delete it, or re-read a configured one from disk. Each holds the
//! head's lock in the shared folder while it acts.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::refusals::{AdminOff, MalformedJson, NoAdminKey};
use super::error::{ApiError, ErrorResponse};
use super::heads::summary;
use super::types::{CreateHeadQuery, CreateHeadRequest, HeadAccepted, HeadSummary};
use super::upload::{Creation, Upload};
use super::AppState;
use crate::config::HeadKind;
use crate::config::HeadName;
use crate::error_code::ErrorCode;
use crate::heads::jobs::{Job, SubmitError};
use crate::heads::store::{HeadLock, LockError, RollbackError};
use crate::heads::upload::prepare;
use crate::heads::{Head, Lookup};

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
        MalformedJson,
        NoAdminKey,
        AdminOff,
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
    Upload(creation): Upload<Creation>,
) -> Result<Response, ApiError> {
    let name = creation.name;
    if creation.description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("description is over {MAX_DESCRIPTION_BYTES} bytes"),
        ));
    }
    let existing = state.heads.get(Some(name.as_str()));
    if let Ok(head) = &existing {
        if head.kind() == HeadKind::Onnx {
            return Err(ApiError::new(
                ErrorCode::NotStored,
                format!("head {name:?} is an ONNX classifier configured in the settings; choose another name"),
            ));
        }
    }
    let taken =
        existing.is_ok() || state.store.has_head(&name) || state.heads.configured().iter().any(|c| c == name.as_str());
    if taken && !creation.replace {
        return Err(ApiError::new(
            ErrorCode::HeadExists,
            format!("head {name:?} exists; send \"replace\": true (or ?replace=true) to train a new version of it"),
        ));
    }
    let (examples, options, limits) = (creation.examples, creation.options, state.settings.training.clone());
    let prepared = tokio::task::spawn_blocking(move || prepare(examples, &options, &limits)).await.map_err(internal)?;
    let prepared = prepared?;
    let warnings = prepared.warnings.clone();
    // Every option checked before anything is queued: hidden states the encoder can give.
    let info = &state.training_graph().info;
    crate::heads::training::layer_options_of(&name, &prepared.options.layers, info).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidOption,
            format!("layers: no option fits the encoder {} (hidden states 0 to {})", info.name, info.last_layer()),
        )
    })?;
    let lock = lock_head(&state, &name).await?;
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let job =
        Job { name: name.clone(), lock, prepared, description: creation.description, request_id: request_id.clone() };
    let status = state.jobs.submit(job, &state.metrics).map_err(|e| match e {
        SubmitError::InProgress(_) => ApiError::new(ErrorCode::TrainingInProgress, e.to_string()),
        SubmitError::QueueFull(_) => ApiError::new(ErrorCode::TrainingQueueFull, e.to_string()),
        SubmitError::Closed => ApiError::new(ErrorCode::ShuttingDown, e.to_string()),
    })?;
    tracing::info!(head = %name, request_id = %request_id, examples = status.examples, labels = status.label_counts.len(), replace = taken, "head training queued");
    let location = format!("/heads/{name}");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(HeadAccepted { name: name.to_string(), location: location.clone(), job: status, warnings }),
    )
        .into_response();
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("a valid head name"));
    Ok(response)
}

/// A head that rollback and delete can act on: a valid name (else 404, as no
/// such head can exist), not an ONNX head from the settings (409).
fn stored_only(state: &AppState, name: &str) -> Result<HeadName, ApiError> {
    let Ok(parsed) = HeadName::parse(name) else {
        return Err(ApiError::not_found(format!("no head named {name:?}")));
    };
    if let Ok(head) = state.heads.get(Some(name)) {
        if head.kind() == HeadKind::Onnx {
            return Err(ApiError::new(
                ErrorCode::NotStored,
                format!("head {name:?} is an ONNX classifier configured in the settings, not a stored head"),
            ));
        }
    }
    Ok(parsed)
}

/// Holds `name` in the heads folder against every replica sharing it (and
/// this one's own training of it), or answers 409. Where the folder cannot
/// hold a lock file (read-only), nothing can be published or deleted there
/// either: the operation goes on and fails or not on its own.
async fn lock_head(state: &AppState, name: &HeadName) -> Result<Option<HeadLock>, ApiError> {
    let (store, wanted) = (state.store.clone(), name.clone());
    match tokio::task::spawn_blocking(move || store.try_lock(&wanted)).await.map_err(internal)? {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held) => Err(ApiError::new(
            ErrorCode::TrainingInProgress,
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
    ApiError::new(ErrorCode::Internal, format!("{e}"))
}

#[utoipa::path(
    post,
    path = "/heads/{name}/rollback",
    tag = "heads",
    params(("name" = String, Path, description = "Head name")),
    responses(
        (status = 200, description = "The version published before the active one is active again (on every replica sharing the heads folder within classify.watch_interval_ms)", body = HeadSummary),
        NoAdminKey,
        AdminOff,
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
    let name = stored_only(&state, &name)?;
    let _one_at_a_time = state.admin_lock.lock().await;
    if state.store.active_version(&name).is_none() {
        return Err(ApiError::not_found(format!("no head named {name:?} in the heads folder")));
    }
    let _held = lock_head(&state, &name).await?;
    let (store, info, wanted) = (state.store.clone(), state.training_graph().info.clone(), name.clone());
    let rolled = tokio::task::spawn_blocking(move || store.rollback(&wanted, &info)).await.map_err(internal)?;
    let (version, head) = rolled.map_err(|e| {
        let code = match &e {
            RollbackError::NoActive => ErrorCode::NotFound,
            RollbackError::NoPrevious { .. } => ErrorCode::NoPreviousVersion,
            RollbackError::NotInHistory { .. } => ErrorCode::HistoryMismatch,
            RollbackError::Damaged { .. } => ErrorCode::VersionDamaged,
            RollbackError::OtherEncoder(_) => ErrorCode::EncoderMismatch,
            RollbackError::Folder(_) => ErrorCode::HeadsFolderUnavailable,
        };
        let heads_dir = state.settings.classify.heads_dir.display().to_string();
        ApiError::new(code, format!("head {name:?}: {e}").replace(&heads_dir, "<heads_dir>"))
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
        NoAdminKey,
        AdminOff,
        (status = 404, description = "No such head", body = ErrorResponse),
        (status = 409, description = "The default head (`default_head`), a head the settings name (`head_in_settings`), an ONNX head (`not_stored`), or one being trained, rolled back or deleted on any replica (`training_in_progress`)", body = ErrorResponse),
    ),
    security(("admin_key" = []))
)]
pub async fn delete_head(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let name = stored_only(&state, &name)?;
    if name.as_str() == state.heads.default_name() {
        return Err(ApiError::new(
            ErrorCode::DefaultHead,
            format!("head {name:?} is the default head (classify.default_head); make another the default first"),
        ));
    }
    if state.heads.is_configured(&name) {
        return Err(ApiError::new(
            ErrorCode::HeadInSettings,
            format!(
                "head {name:?} is named in the settings (classify.serve): every start needs it; \
                 remove it there first"
            ),
        ));
    }
    if state.jobs.in_progress().contains(&name) {
        return Err(ApiError::new(
            ErrorCode::TrainingInProgress,
            format!("head {name:?} is training; delete it when it is done"),
        ));
    }
    let _one_at_a_time = state.admin_lock.lock().await;
    if !state.store.has_head(&name) && state.heads.get(Some(name.as_str())).is_err() {
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
        NoAdminKey,
        AdminOff,
        (status = 404, description = "Not a served head", body = ErrorResponse),
        (status = 409, description = "Head still training at startup (`training_in_progress`)", body = ErrorResponse),
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
        return Err(ApiError::new(ErrorCode::TrainingInProgress, format!("head {name:?} is still training")));
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
        ApiError::new(ErrorCode::InvalidHeadFile, format!("{message}; the previous head keeps serving"))
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
