//! `POST /classify`.

use axum::extract::State;
use axum::Json;

use super::embed::validate_inputs;
use super::error::refusals::{DeadlinePassed, MalformedJson, NotJson, OverLimits};
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::heads::lookup;
use crate::error_code::ErrorCode;
use std::collections::BTreeMap;

use super::types::{
    ClassifyAnswer, ClassifyManyResponse, ClassifyRequest, ClassifyResponse, Explanation, Prediction, TokenPart,
};
use super::{timing_headers, AppState, ENCODER_FINGERPRINT, HEAD_VERSION};
use crate::cost::CostLimits;
use crate::heads::{classify_served, Classified, ClassifyInput, Decision, Explained, Head};
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;

#[utoipa::path(
    post,
    path = "/classify",
    tag = "inference",
    request_body = ClassifyRequest,
    responses(
        (status = 200, description = "Per input: top label, its probability, every label's probability. With `heads`, one such answer per head (`results`), from one encoder pass", body = ClassifyAnswer),
        MalformedJson,
        (status = 404, description = "Unknown head", body = ErrorResponse),
        OverLimits,
        NotJson,
        (status = 422, description = "Invalid field, empty input, or input too long with truncate=false", body = ErrorResponse),
        (status = 503, description = "Queue full or too long (`overloaded`), head still training (`not_ready`) or failed at startup (`head_failed`), or shutting down", body = ErrorResponse),
        DeadlinePassed,
    )
)]
pub async fn classify(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ClassifyRequest>,
) -> Result<Response, ApiError> {
    // With `heads` (even one) the answer lists results; with `head`, one result.
    let several = request.heads.is_some();
    let names: Vec<Option<String>> = match (request.head, request.heads) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "send either `head` or `heads`, not both"));
        }
        (None, Some(heads)) => {
            if heads.is_empty() || heads.len() > MAX_HEADS_PER_REQUEST {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("`heads` lists 1 to {MAX_HEADS_PER_REQUEST} heads, got {}", heads.len()),
                ));
            }
            if let Some(twice) = heads.iter().enumerate().find(|(i, h)| heads[..*i].contains(h)).map(|(_, h)| h) {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("head {twice:?} is listed twice in `heads`"),
                ));
            }
            heads.into_iter().map(Some).collect()
        }
        (head, None) => vec![head],
    };
    let heads = names.iter().map(|n| lookup(&state, n.as_deref())).collect::<Result<Vec<_>, _>>()?;
    let texts = validate_inputs(request.inputs.into_vec(), state.settings.limits.max_inputs)?;
    let pairs =
        request.text_pair.map(|p| validate_inputs(p.into_vec(), state.settings.limits.max_inputs)).transpose()?;
    super::heads::check_pairs(&heads, pairs.as_deref(), texts.len(), state.settings.limits.max_inputs)?;
    if pairs.is_some() && (request.windows || request.explain) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "text pairs are classified without windows or explain"));
    }
    if request.windows && request.explain {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "explain works on one window: send windows or explain, not both",
        ));
    }
    // Every option is checked before the model runs.
    if let Some(p) = request.min_probability {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("min_probability must be between 0 and 1, got {p}"),
            ));
        }
    }
    let input = ClassifyInput {
        texts,
        truncate: request.truncate,
        deadline: state.deadline(),
        explain: request.explain,
        windows: request.windows.then(|| state.settings.limits.window_stride(state.training_graph().info.max_tokens)),
        limits: CostLimits::of(&state.settings.limits),
        pairs,
    };
    let all = classify_served(&state.runtimes, &heads, input).await?;
    let timing = all.first().map(|c| c.timing).unwrap_or_default();
    let results: Vec<ClassifyResponse> = heads
        .iter()
        .zip(all)
        .map(|(head, classified)| answer(&state, head, classified, request.min_probability))
        .collect();
    let versions = results.iter().map(|r| format!("{}={}", r.head, r.head_version)).collect::<Vec<_>>().join(",");
    let mut fingerprints_unique: Vec<&str> = Vec::new();
    for r in &results {
        if !fingerprints_unique.contains(&r.encoder_fingerprint.as_str()) {
            fingerprints_unique.push(&r.encoder_fingerprint);
        }
    }
    let header = |v: &str| HeaderValue::from_str(v).expect("names and hex digits");
    if several {
        let headers =
            [(HEAD_VERSION, header(&versions)), (ENCODER_FINGERPRINT, header(&fingerprints_unique.join(",")))];
        return Ok((timing_headers(&timing), headers, Json(ClassifyManyResponse { results })).into_response());
    }
    let body = results.into_iter().next().expect("one head");
    let headers =
        [(HEAD_VERSION, header(&body.head_version)), (ENCODER_FINGERPRINT, header(&body.encoder_fingerprint))];
    Ok((timing_headers(&timing), headers, Json(body)).into_response())
}

/// Most heads one `/classify` request may name in `heads`.
const MAX_HEADS_PER_REQUEST: usize = 16;

/// One head's part of an answer; `min_probability` is the request's (else the head's own applies).
fn answer(state: &AppState, head: &Head, classified: Classified, min_probability: Option<f32>) -> ClassifyResponse {
    let labels = head.labels();
    let mut explanations = classified.explanations.map(|e| e.into_iter());
    let predictions = classified
        .probabilities
        .into_iter()
        .map(|p| {
            let decision = Decision::of(head, &p, min_probability);
            let label = decision.label(labels).to_string();
            state.metrics.record_prediction(head.name(), &label);
            let explanation = explanations.as_mut().and_then(Iterator::next).map(|e| explanation(head, labels, e));
            let set = decision.label_set.as_ref().map(|set| set.iter().map(|&l| labels[l].clone()).collect());
            let (best, abstained) = (decision.best, decision.abstained);
            Prediction {
                label,
                probability: p[best],
                probabilities: labels.iter().cloned().zip(p).collect(),
                abstained,
                labels: set,
                explanation,
            }
        })
        .collect();
    ClassifyResponse {
        head: head.name().to_string(),
        head_version: head.version(),
        encoder_fingerprint: head.encoder_fingerprint().to_string(),
        predictions,
    }
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
