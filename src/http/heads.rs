//! The heads as a resource, read side: list and inspect them (`GET /heads`,
//! `GET /heads/{name}` with versions and training status, the confusion matrix
//! as SVG), and `lookup`, which every route that serves a head goes through.
//! Creating, rolling back, deleting and reloading: `heads_admin.rs`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::refusals::{AdminOff, NoAdminKey};
use super::error::{ApiError, ErrorResponse};
use super::types::{HeadDetail, HeadSummary, HeadsResponse, SuspectsResponse, VersionDescription};
use super::AppState;
use crate::config::HeadName;
use crate::error_code::ErrorCode;
use crate::heads::jobs::JobState;
use crate::heads::{GraphPhase, GraphState, Head, Lookup};

/// The served head `name` (the default when None), or the error that says why not.
pub fn lookup(state: &AppState, name: Option<&str>) -> Result<Arc<Head>, ApiError> {
    state.heads.get(name).map_err(|e| {
        let name = name.unwrap_or(state.heads.default_name());
        match e {
            Lookup::NotFound => match state.jobs.status(name).map(|s| s.state) {
                Some(JobState::Queued | JobState::Training) => ApiError::new(
                    ErrorCode::NotReady,
                    format!("head {name:?} is still training; see GET /heads/{name}"),
                ),
                // Trained by another replica and not picked up here yet (within
                // classify.watch_interval_ms): 503, which a load balancer retries elsewhere.
                Some(JobState::Ready) if HeadName::parse(name).is_ok_and(|n| state.store.has_head(&n)) => {
                    ApiError::new(
                        ErrorCode::NotReady,
                        format!("head {name:?} is ready in the heads folder and is being loaded here; retry shortly"),
                    )
                }
                _ => ApiError::not_found(format!("no head named {name:?}; see GET /heads")),
            },
            Lookup::NotReady => {
                ApiError::new(ErrorCode::NotReady, format!("head {name:?} is still training; retry shortly"))
            }
            Lookup::Failed(_) => ApiError::new(
                ErrorCode::HeadFailed,
                format!("head {name:?} failed to train at startup and is not served; see GET /heads and the log"),
            ),
        }
    })
}

pub(super) fn summary(state: &AppState, head: &Head) -> HeadSummary {
    let mut s = HeadSummary {
        name: head.name().to_string(),
        version: head.version(),
        kind: head.kind().as_str().to_string(),
        labels: head.labels().to_vec(),
        default: head.name() == state.heads.default_name(),
        pooling: None,
        layers: None,
        encoder: Some(match head {
            Head::Logistic(h) => h.encoder.name.clone(),
            Head::Onnx(h) => h.inference.info.name.clone(),
        }),
        graph: Some(match head {
            Head::Logistic(h) => state.runtimes.graph_for(&h.encoder.fingerprint).info.file.clone(),
            Head::Onnx(h) => h.inference.info.file.clone(),
        }),
        graph_reason: match head {
            Head::Logistic(h) => h.training.graph_choice.as_ref().map(|c| c.reason()),
            Head::Onnx(_) => None,
        },
        validation_accuracy: None,
        test_accuracy: None,
        multi_label: false,
        test_micro_f1: None,
        pair: false,
        created_unix: None,
    };
    if let Head::Logistic(h) = head {
        s.multi_label = h.multi_label.is_some();
        s.pair = h.pair;
        s.test_micro_f1 = h.metrics.multi_label_test.as_ref().map(|m| m.micro_f1);
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
    pending.extend(
        state
            .jobs
            .in_progress()
            .into_iter()
            .filter(|n| !heads.iter().any(|h| h.name == n.as_str()))
            .map(|n| n.to_string()),
    );
    Json(HeadsResponse {
        default_head: state.heads.default_name().to_string(),
        heads,
        pending,
        failed,
        folder_error: state.heads.folder_error(),
    })
}

/// Where each graph stands for `head` (the heads' graph first): as recorded
/// while its graphs are compared on this replica (or after that failed), else
/// from its file's comparison, else the graph it is served on.
fn graphs_of(state: &AppState, head: &Head) -> Vec<GraphPhase> {
    if let Some(phases) = state.heads.graph_phases(head.name()) {
        return phases;
    }
    match head {
        Head::Logistic(h) => match &h.training.graph_choice {
            Some(choice) => {
                let (heads_graph, exact) = if choice.on_heads_graph() {
                    (GraphState::Served, GraphState::Kept)
                } else {
                    (GraphState::Kept, GraphState::Served)
                };
                vec![
                    GraphPhase { graph: choice.heads_graph.clone(), phase: heads_graph },
                    GraphPhase { graph: choice.exact_graph.clone(), phase: exact },
                ]
            }
            None => vec![GraphPhase {
                graph: state.runtimes.graph_for(&h.encoder.fingerprint).info.file.clone(),
                phase: GraphState::Served,
            }],
        },
        Head::Onnx(h) => vec![GraphPhase { graph: h.inference.info.file.clone(), phase: GraphState::Served }],
    }
}

fn versions_of(state: &AppState, name: &str, active: &str) -> Vec<VersionDescription> {
    HeadName::parse(name)
        .ok()
        .and_then(|name| state.store.versions(&name).ok())
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
                encoder_stamp: None,
                training: None,
                metrics: None,
                status: "ready".into(),
                versions: Vec::new(),
                description: None,
                job,
                graphs: graphs_of(&state, &head),
            };
            if let Head::Logistic(h) = &*head {
                detail.encoder_stamp = serde_json::to_value(&h.encoder).ok();
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
                    encoder: Some(state.training_graph().info.name.clone()),
                    graph: Some(state.training_graph().info.file.clone()),
                    graph_reason: None,
                    validation_accuracy: None,
                    test_accuracy: None,
                    multi_label: false,
                    test_micro_f1: None,
                    pair: false,
                    created_unix: None,
                },
                encoder_stamp: None,
                training: None,
                metrics: None,
                status: serde_json::to_value(job.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                versions: versions_of(&state, &name, ""),
                description: None,
                graphs: state.heads.graph_phases(&name).unwrap_or_default(),
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

#[utoipa::path(
    get,
    path = "/heads/{name}/suspects",
    tag = "heads",
    params(("name" = String, Path, description = "Head name")),
    responses(
        (status = 200, description = "Training examples whose labels look wrong: the lowest cross-validated probabilities of their own label (below 0.5), lowest first, at most 50", body = SuspectsResponse),
        (status = 404, description = "Unknown head, or an ONNX classifier (it was not trained here)", body = ErrorResponse),
        NoAdminKey,
        AdminOff,
    ),
    security(("admin_key" = []))
)]
pub async fn suspects(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SuspectsResponse>, ApiError> {
    let head = lookup(&state, Some(&name))?;
    let Head::Logistic(h) = &*head else {
        return Err(ApiError::not_found(format!("head {name:?} is an ONNX classifier: it was not trained here")));
    };
    Ok(Json(SuspectsResponse {
        name: h.name.clone(),
        version: head.version(),
        selection: h.training.selection.to_string(),
        suspects: h.suspects.clone(),
    }))
}

/// Pair heads take a second text per text, the others none: every head of a
/// request agrees with `pairs`, which has one per text, and both texts of a
/// pair count toward `limits.max_inputs` (`max_inputs`), as the encoder runs both.
pub fn check_pairs(
    heads: &[Arc<Head>],
    pairs: Option<&[String]>,
    texts: usize,
    max_inputs: usize,
) -> Result<(), ApiError> {
    let is_pair = |h: &Head| matches!(h, Head::Logistic(l) if l.pair);
    match pairs {
        None => match heads.iter().find(|h| is_pair(h)) {
            Some(h) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("head {:?} classifies text pairs: send text_pair, one second text per input", h.name()),
            )),
            None => Ok(()),
        },
        Some(pairs) => {
            if let Some(h) = heads.iter().find(|h| !is_pair(h)) {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("text_pair is for pair heads; head {:?} classifies single texts", h.name()),
                ));
            }
            if pairs.len() != texts {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("{} inputs and {} text_pair texts: one second text per input", texts, pairs.len()),
                ));
            }
            if 2 * texts > max_inputs {
                return Err(ApiError::new(
                    ErrorCode::TooManyInputs,
                    format!("{texts} pairs are {} texts, more than limits.max_inputs ({max_inputs})", 2 * texts),
                ));
            }
            Ok(())
        }
    }
}
