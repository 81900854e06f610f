//! `POST /heads/{name}/evaluate`: a head judged on labelled texts sent with
//! the request, beside other served heads with the same labels and the
//! predictions of classifiers the user already has (columns of the file),
//! with McNemar's test between every pair: the lecture's "compare with
//! pre-trained classifiers" over the API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::refusals::{AdminOff, DeadlinePassed, MalformedJson, NoAdminKey};
use super::error::{ApiError, ErrorResponse};
use super::heads::lookup;
use super::types::{
    EvaluateQuery, EvaluateRequest, EvaluateResponse, EvaluationExample, LabelValue, PairComparison, SystemEvaluation,
};
use super::upload::{Upload, UploadBody};
use super::AppState;
use crate::cost::CostLimits;
use crate::data::LabelledRow;
use crate::error_code::ErrorCode;
use crate::heads::scores::{expected_calibration_error, McNemar, Scores};
use crate::heads::{classify_served, ClassifyInput, Head};
use crate::pooling::argmax;

/// Most heads compared with the one evaluated, and most prediction columns.
const MAX_COMPARED: usize = 8;

/// The decoded request: labelled texts, what other classifiers answered for
/// them (labels as written), and the heads to compare.
pub struct Evaluation {
    rows: Vec<Row>,
    compare: Vec<String>,
    /// `format=svg`: the confusion matrices instead of JSON.
    svg: bool,
}

fn wants_svg(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("json") => Ok(false),
        Some("svg") => Ok(true),
        Some(other) => Err(ApiError::new(ErrorCode::InvalidOption, format!("format is json or svg, got {other:?}"))),
    }
}

struct Row {
    text: String,
    label: String,
    predictions: BTreeMap<String, String>,
}

/// One label as written; a list (several labels) is kept as `a|b`, which is
/// no label of the head and refused as such.
fn written(label: LabelValue) -> String {
    label.written(None).join("|")
}

impl UploadBody for Evaluation {
    type Query = EvaluateQuery;

    fn query_with_json(query: &EvaluateQuery) -> Option<&'static str> {
        query.compare.is_some().then_some("with a JSON body, `compare` goes in the body")
    }

    fn from_json(body: &[u8], query: EvaluateQuery, max_rows: usize) -> Result<Evaluation, ApiError> {
        let svg = wants_svg(query.format.as_deref())?;
        let request: EvaluateRequest = super::upload::parse_json(body, max_rows, "labelled texts to evaluate on")?;
        let rows = request
            .examples
            .into_iter()
            .map(|EvaluationExample { text, label, predictions }| Row {
                text,
                label: written(label),
                predictions: predictions.into_iter().map(|(name, label)| (name, written(label))).collect(),
            })
            .collect();
        Ok(Evaluation { rows, compare: request.compare, svg })
    }

    fn from_rows(rows: Vec<LabelledRow>, query: EvaluateQuery) -> Result<Evaluation, ApiError> {
        let svg = wants_svg(query.format.as_deref())?;
        let compare = query
            .compare
            .map(|c| c.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect())
            .unwrap_or_default();
        let rows = rows
            .into_iter()
            .map(|r| Row { text: r.text, label: r.labels.join("|"), predictions: r.predictions })
            .collect();
        Ok(Evaluation { rows, compare, svg })
    }
}

/// Label `written` (a name, or an index as digits) as an index of `labels`.
fn label_index(labels: &[String], written: &str) -> Option<usize> {
    labels.iter().position(|l| l == written).or_else(|| written.parse::<usize>().ok().filter(|&i| i < labels.len()))
}

#[utoipa::path(
    post,
    path = "/heads/{name}/evaluate",
    tag = "heads",
    params(("name" = String, Path, description = "Head name"), EvaluateQuery),
    request_body(
        content = EvaluateRequest,
        description = "Labelled texts as JSON, CSV (columns `text`, `label`, and one per existing classifier: its label for the row) or JSONL (`{\"text\", \"label\", \"predictions\": {name: label}}`); `compare` in the query for CSV/JSONL"
    ),
    responses(
        (status = 200, description = "Every classifier's accuracy, macro-F1, per-label figures, confusion matrix (and calibration error for heads) on the same texts, and McNemar's test between every pair; with `format=svg`, the confusion matrices side by side", body = EvaluateResponse),
        MalformedJson,
        NoAdminKey,
        AdminOff,
        (status = 404, description = "Unknown head (or compared head)", body = ErrorResponse),
        (status = 413, description = "More than training.max_examples texts, or a body over training.max_upload_bytes", body = ErrorResponse),
        (status = 415, description = "Not JSON, CSV or JSONL", body = ErrorResponse),
        (status = 422, description = "No texts, a label the head does not have (`unknown_label`), a compared head with other labels (`labels_differ`), uneven prediction columns, or an invalid option", body = ErrorResponse),
        (status = 503, description = "Queue full or too long (`overloaded`), a head still training (`not_ready`) or failed at startup (`head_failed`), or shutting down", body = ErrorResponse),
        DeadlinePassed,
    ),
    security(("admin_key" = []))
)]
pub async fn evaluate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Upload(evaluation): Upload<Evaluation>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Evaluation { rows, compare, svg } = evaluation;
    let head = lookup(&state, Some(&name))?;
    let labels = head.labels().to_vec();
    if rows.is_empty() {
        return Err(ApiError::new(ErrorCode::EmptyInput, "no labelled texts to evaluate on"));
    }
    let heads = heads_to_run(&state, head, &compare)?;
    super::heads::check_pairs(&heads, None, rows.len(), state.settings.limits.max_inputs)?;
    let truth = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            label_index(&labels, &r.label).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownLabel,
                    format!("example {i} has label {:?}; head {name:?} has {labels:?} (names or indices)", r.label),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let columns = prediction_columns(&rows, &labels, &heads)?;
    let texts: Vec<String> = rows.into_iter().map(|r| r.text).collect();

    // Each part is one /classify request of every head at once (one encoder
    // pass for the logistic ones), queued like any other.
    let mut probabilities: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(texts.len()); heads.len()];
    for part in texts.chunks(state.settings.limits.max_inputs) {
        let input = ClassifyInput {
            texts: part.to_vec(),
            truncate: true,
            deadline: state.deadline(),
            explain: false,
            windows: None,
            limits: CostLimits::of(&state.settings.limits),
            pairs: None,
        };
        for (all, answer) in probabilities.iter_mut().zip(classify_served(&state.runtimes, &heads, input).await?) {
            all.extend(answer.probabilities);
        }
    }

    let mut systems = Vec::new();
    let mut correct: Vec<Vec<bool>> = Vec::new();
    for (i, (h, p)) in heads.iter().zip(&probabilities).enumerate() {
        // In the evaluated head's label order (a compared head may order them otherwise).
        let order: Vec<usize> =
            labels.iter().map(|l| h.labels().iter().position(|m| m == l).expect("same labels")).collect();
        let p: Vec<Vec<f32>> = p.iter().map(|row| order.iter().map(|&j| row[j]).collect()).collect();
        let predicted: Vec<usize> = p.iter().map(|row| argmax(row.iter().copied())).collect();
        correct.push(predicted.iter().zip(&truth).map(|(a, b)| a == b).collect());
        systems.push(SystemEvaluation {
            name: h.name().to_string(),
            role: if i == 0 { "head" } else { "compared" }.into(),
            version: Some(h.version()),
            scores: Scores::compute(&labels, &truth, &predicted),
            calibration_error: Some(expected_calibration_error(&p, &truth)),
        });
    }
    for (column, predicted) in columns {
        correct.push(predicted.iter().zip(&truth).map(|(a, b)| a == b).collect());
        systems.push(SystemEvaluation {
            name: column,
            role: "predictions".into(),
            version: None,
            scores: Scores::compute(&labels, &truth, &predicted),
            calibration_error: None,
        });
    }
    let mut comparisons = Vec::new();
    for a in 0..systems.len() {
        for b in a + 1..systems.len() {
            comparisons.push(PairComparison {
                a: systems[a].name.clone(),
                b: systems[b].name.clone(),
                accuracy_difference: systems[b].scores.accuracy - systems[a].scores.accuracy,
                test: McNemar::of(&correct[a], &correct[b]),
            });
        }
    }
    if svg {
        let matrices: Vec<(String, &[Vec<usize>])> = systems
            .iter()
            .map(|s| (format!("{}: accuracy {:.3}", s.name, s.scores.accuracy), s.scores.confusion.as_slice()))
            .collect();
        let picture = crate::svg::confusion_matrices(&labels, &matrices);
        return Ok(([(header::CONTENT_TYPE, "image/svg+xml")], picture).into_response());
    }
    Ok(Json(EvaluateResponse {
        head: name,
        examples: truth.len(),
        labels,
        systems,
        comparisons,
        seconds: started.elapsed().as_secs_f64(),
    })
    .into_response())
}

/// The evaluated head, then each compared one: served, distinct, and with
/// the same set of labels.
fn heads_to_run(state: &AppState, head: Arc<Head>, compare: &[String]) -> Result<Vec<Arc<Head>>, ApiError> {
    if compare.len() > MAX_COMPARED {
        return Err(ApiError::new(
            ErrorCode::InvalidOption,
            format!("compare lists at most {MAX_COMPARED} heads, got {}", compare.len()),
        ));
    }
    let mut heads = vec![head];
    let mut wanted: Vec<String> = heads[0].labels().to_vec();
    wanted.sort();
    for other in compare {
        if heads.iter().any(|h| h.name() == other) {
            return Err(ApiError::new(ErrorCode::InvalidOption, format!("head {other:?} is listed twice")));
        }
        let h = lookup(state, Some(other))?;
        let mut theirs: Vec<String> = h.labels().to_vec();
        theirs.sort();
        if theirs != wanted {
            return Err(ApiError::new(
                ErrorCode::LabelsDiffer,
                format!("head {other:?} has labels {:?}, not {:?}", h.labels(), heads[0].labels()),
            ));
        }
        heads.push(h);
    }
    if let Some(h) = heads.iter().find(|h| matches!(&***h, Head::Logistic(l) if l.multi_label.is_some())) {
        return Err(ApiError::new(ErrorCode::InvalidRequest,
            format!(
                "head {:?} is multi-label: evaluate compares single-label heads (its held-out figures are in GET /heads/{})",
                h.name(),
                h.name()
            ),
        ));
    }
    Ok(heads)
}

/// The prediction columns, each as label indices: every row names the same
/// classifiers, none named like a head being run, every label one of the head's.
fn prediction_columns(
    rows: &[Row],
    labels: &[String],
    heads: &[Arc<Head>],
) -> Result<Vec<(String, Vec<usize>)>, ApiError> {
    let names: Vec<String> = rows[0].predictions.keys().cloned().collect();
    if names.len() > MAX_COMPARED {
        return Err(ApiError::new(
            ErrorCode::InvalidOption,
            format!("at most {MAX_COMPARED} prediction columns, got {}: {names:?}", names.len()),
        ));
    }
    if let Some(clash) = names.iter().find(|n| heads.iter().any(|h| h.name() == n.as_str())) {
        return Err(ApiError::new(
            ErrorCode::InvalidOption,
            format!("prediction column {clash:?} has the name of a head being evaluated; rename it"),
        ));
    }
    let mut columns: Vec<(String, Vec<usize>)> =
        names.iter().map(|n| (n.clone(), Vec::with_capacity(rows.len()))).collect();
    for (i, row) in rows.iter().enumerate() {
        if row.predictions.len() != names.len() || !names.iter().all(|n| row.predictions.contains_key(n)) {
            return Err(ApiError::new(ErrorCode::InvalidRequest,
                format!(
                    "example {i} has predictions of {:?}; the first has {names:?} (every example names the same classifiers)",
                    row.predictions.keys().collect::<Vec<_>>()
                ),
            ));
        }
        for (name, column) in &mut columns {
            let written = &row.predictions[name.as_str()];
            column.push(label_index(labels, written).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownLabel,
                    format!("example {i}: {name} predicted {written:?}, not one of {labels:?} (names or indices)"),
                )
            })?);
        }
    }
    Ok(columns)
}
