//! Text Embeddings Inference (TEI)'s HTTP API under `/tei`, so that clients
//! written for TEI (huggingface_hub's `InferenceClient`, Haystack's and
//! LlamaIndex's TEI embedders) work by changing a URL: TEI's routes, request
//! fields, defaults (pooled, normalised), answer shapes, status codes and error
//! body. `/tei/heads/{name}` is a classification head's own base URL (what
//! `InferenceClient(url).text_classification` posts to). Our own routes keep
//! their shapes; both run on the same encoder, queue and heads.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::embed::validate_inputs;
use super::error::{log_failure, with_retry_after, ApiError, ApiJson};
use super::heads::lookup;
use super::openai::{cut, embed_corpus};
use super::tokenize::tokens_of;
use super::types::{
    HfClassifyRequest, TeiDecodeRequest, TeiEmbedAllRequest, TeiEmbedRequest, TeiErrorResponse, TeiIds, TeiInfo,
    TeiPredictInput, TeiPredictRequest, TeiPredictResponse, TeiPrediction, TeiToken, TeiTokenizeRequest,
    TeiTruncationDirection,
};
use super::{timing_headers, AppState};
use crate::cost::{AnswerFormat, CostLimits};
use crate::error_code::ErrorCode;
use crate::heads::{classify_served, ClassifyInput, Decision, Head};
use crate::inference::{EmbedOptions, Vectors};
use crate::pooling::Pooling;
use crate::tokenize::Truncation;

/// An error in TEI's form: `{"error", "error_type"}` (plus our `code`), with
/// TEI's status for its type: 413 for validation (limits, too-long inputs),
/// 422 tokenizer, 429 overloaded, 503 unhealthy, 424 backend, 400 empty.
#[derive(Debug)]
pub struct TeiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for TeiError {
    fn from(e: E) -> Self {
        TeiError(e.into())
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        let retry_after = self.0.retry_after();
        let ApiError { code, message, .. } = self.0;
        log_failure(code, &message);
        let (error_type, status) = code.tei();
        let body = TeiErrorResponse { error: message, error_type: error_type.into(), code: code.to_string() };
        with_retry_after(retry_after, (status, Json(body)).into_response())
    }
}

/// `ApiJson` whose rejections come back in TEI's form.
pub struct TeiJson<T>(pub T);

impl<T, S> FromRequest<S> for TeiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = TeiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        ApiJson::<T>::from_request(req, state).await.map(|ApiJson(v)| TeiJson(v)).map_err(TeiError)
    }
}

/// The refusals of the TEI routes that take a body, in TEI's form, declared once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its schema is used.
pub enum TeiRefusals {
    #[response(status = 400, description = "Malformed JSON, or an empty input (`Empty`)")]
    Malformed(TeiErrorResponse),
    #[response(status = 404, description = "No such head (`/tei/heads/{name}` routes)")]
    NotFound(TeiErrorResponse),
    #[response(
        status = 413,
        description = "Body, inputs, tokens, model time, answer size, or an input over the model's maximum without truncate (`Validation`)"
    )]
    TooLarge(TeiErrorResponse),
    #[response(status = 415, description = "Content-Type is not application/json")]
    MediaType(TeiErrorResponse),
    #[response(
        status = 422,
        description = "Invalid or unknown field; what is not served (`unsupported`: prompt_name, pairs, raw_scores, left truncation outside /tei/embed, function_to_apply other than softmax); a token id outside the vocabulary (`Tokenizer`)"
    )]
    Invalid(TeiErrorResponse),
    #[response(status = 424, description = "The model call failed (`Backend`)")]
    Backend(TeiErrorResponse),
    #[response(
        status = 429,
        description = "Queue full or its queued work longer than the request can wait (`Overloaded`)"
    )]
    Overloaded(TeiErrorResponse),
    #[response(status = 503, description = "Shutting down, or the head is training or failed (`Unhealthy`)")]
    Unhealthy(TeiErrorResponse),
    #[response(status = 504, description = "Deadline passed")]
    Deadline(TeiErrorResponse),
}

fn unsupported(message: impl Into<String>) -> TeiError {
    TeiError(ApiError::new(ErrorCode::Unsupported, message))
}

/// TEI's `prompt_name`: prompts are not configured for the served model.
fn no_prompt(prompt_name: &Option<String>) -> Result<(), TeiError> {
    match prompt_name {
        None => Ok(()),
        Some(name) => Err(unsupported(format!(
            "prompt_name {name:?}: no prompts are configured for this model; prepend the prompt to the text"
        ))),
    }
}

/// TEI's `truncate` (default false: over-long inputs refused) and `truncation_direction`.
fn truncation(truncate: Option<bool>, direction: TeiTruncationDirection) -> Truncation {
    match (truncate.unwrap_or(false), direction) {
        (false, _) => Truncation::Refuse,
        (true, TeiTruncationDirection::Right) => Truncation::Right,
        (true, TeiTruncationDirection::Left) => Truncation::Left,
    }
}

/// Only right truncation on the routes that return tokens' rows or labels.
fn right_only(direction: TeiTruncationDirection) -> Result<(), TeiError> {
    match direction {
        TeiTruncationDirection::Right => Ok(()),
        TeiTruncationDirection::Left => {
            Err(unsupported("truncation_direction \"left\" is served by /tei/embed only; use \"right\""))
        }
    }
}

#[utoipa::path(
    post,
    path = "/tei/embed",
    tag = "tei",
    operation_id = "tei_embed",
    request_body = TeiEmbedRequest,
    responses(
        (status = 200, description = "One pooled vector per input (openai.pooling), unit length unless normalize is false", body = Vec<Vec<f32>>),
        TeiRefusals,
    )
)]
pub async fn embed(
    State(state): State<AppState>,
    TeiJson(request): TeiJson<TeiEmbedRequest>,
) -> Result<Response, TeiError> {
    no_prompt(&request.prompt_name)?;
    let hidden = state.encoder_runtime().info.hidden_size;
    let dimensions = match request.dimensions {
        Some(0) => return Err(TeiError(ApiError::new(ErrorCode::InvalidDimensions, "dimensions must be at least 1"))),
        d => d.unwrap_or(hidden).min(hidden),
    };
    let pooled =
        embed_corpus(&state, request.inputs, truncation(request.truncate, request.truncation_direction)).await?;
    let vectors: Vec<Vec<f32>> = pooled.vectors.into_iter().map(|v| cut(v, dimensions, request.normalize)).collect();
    Ok((timing_headers(&pooled.timing), Json(vectors)).into_response())
}

/// `POST /tei/`: TEI's root route, which embeds on an embedding model.
#[utoipa::path(
    post,
    path = "/tei/",
    tag = "tei",
    operation_id = "tei_root",
    request_body = TeiEmbedRequest,
    responses(
        (status = 200, description = "As POST /tei/embed", body = Vec<Vec<f32>>),
        TeiRefusals,
    )
)]
pub async fn root(state: State<AppState>, request: TeiJson<TeiEmbedRequest>) -> Result<Response, TeiError> {
    embed(state, request).await
}

#[utoipa::path(
    post,
    path = "/tei/embed_all",
    tag = "tei",
    operation_id = "tei_embed_all",
    request_body = TeiEmbedAllRequest,
    responses(
        (status = 200, description = "Every token's last hidden state (special tokens included), per input", body = Vec<Vec<Vec<f32>>>),
        TeiRefusals,
    )
)]
pub async fn embed_all(
    State(state): State<AppState>,
    TeiJson(request): TeiJson<TeiEmbedAllRequest>,
) -> Result<Response, TeiError> {
    no_prompt(&request.prompt_name)?;
    right_only(request.truncation_direction)?;
    let texts = validate_inputs(request.inputs.into_vec(), state.settings.limits.max_inputs)?;
    let options = EmbedOptions {
        pooling: Pooling::None,
        normalize: false,
        windows: None,
        layers: None,
        format: AnswerFormat::Json,
        return_tokens: false,
    };
    let limits = CostLimits::of(&state.settings.limits);
    let truncate = request.truncate.unwrap_or(false);
    let embedded = state.encoder_runtime().embed(texts, truncate, state.deadline(), options, limits).await?;
    let Vectors::PerToken(rows) = embedded.vectors else { unreachable!("pooling none answers per token") };
    let hidden = embedded.hidden;
    let body: Vec<Vec<&[f32]>> = rows.iter().map(|r| r.data.chunks_exact(hidden).collect()).collect();
    Ok((timing_headers(&embedded.timing), Json(body)).into_response())
}

#[utoipa::path(
    post,
    path = "/tei/predict",
    tag = "tei",
    operation_id = "tei_predict",
    request_body = TeiPredictRequest,
    responses(
        (status = 200, description = "The default head's labels, most probable first: one list for one input, one per input for a batch", body = TeiPredictResponse),
        TeiRefusals,
    )
)]
pub async fn predict(
    State(state): State<AppState>,
    TeiJson(request): TeiJson<TeiPredictRequest>,
) -> Result<Json<TeiPredictResponse>, TeiError> {
    let head = lookup(&state, None)?;
    predict_with(&state, head, request).await
}

#[utoipa::path(
    post,
    path = "/tei/heads/{name}/predict",
    tag = "tei",
    operation_id = "tei_head_predict",
    params(("name" = String, Path, description = "A served head")),
    request_body = TeiPredictRequest,
    responses(
        (status = 200, description = "As /tei/predict, with this head", body = TeiPredictResponse),
        TeiRefusals,
    )
)]
pub async fn head_predict(
    State(state): State<AppState>,
    Path(name): Path<String>,
    TeiJson(request): TeiJson<TeiPredictRequest>,
) -> Result<Json<TeiPredictResponse>, TeiError> {
    let head = lookup(&state, Some(&name))?;
    predict_with(&state, head, request).await
}

async fn predict_with(
    state: &AppState,
    head: Arc<Head>,
    request: TeiPredictRequest,
) -> Result<Json<TeiPredictResponse>, TeiError> {
    right_only(request.truncation_direction)?;
    if request.raw_scores {
        return Err(unsupported("raw_scores: heads answer calibrated probabilities; leave raw_scores false"));
    }
    let TeiPredictInput { batch, sequences } = request.inputs;
    let is_pair_head = matches!(&*head, Head::Logistic(h) if h.pair);
    let (texts, pairs) = if is_pair_head {
        if sequences.iter().any(|s| s.len() != 2) {
            return Err(unsupported("this head classifies text pairs: send [[text, text_pair], ...]"));
        }
        let (first, second): (Vec<String>, Vec<String>) =
            sequences.into_iter().map(|mut s| (s.remove(0), s.remove(0))).unzip();
        (first, Some(second))
    } else {
        if sequences.iter().any(|s| s.len() == 2) {
            return Err(unsupported("text pairs need a pair head (trained with text_pair): send single texts"));
        }
        (sequences.into_iter().flatten().collect(), None)
    };
    let mut predictions = labelled(state, &head, texts, pairs, request.truncate.unwrap_or(false)).await?;
    Ok(Json(if batch {
        TeiPredictResponse::Batch(predictions)
    } else {
        TeiPredictResponse::Single(predictions.remove(0))
    }))
}

/// Each text's labels with their probabilities, most probable first.
async fn labelled(
    state: &AppState,
    head: &Arc<Head>,
    texts: Vec<String>,
    pairs: Option<Vec<String>>,
    truncate: bool,
) -> Result<Vec<Vec<TeiPrediction>>, TeiError> {
    let texts = validate_inputs(texts, state.settings.limits.max_inputs)?;
    let pairs = pairs.map(|p| validate_inputs(p, state.settings.limits.max_inputs)).transpose()?;
    super::heads::check_pairs(
        std::slice::from_ref(head),
        pairs.as_deref(),
        texts.len(),
        state.settings.limits.max_inputs,
    )?;
    let input = ClassifyInput {
        texts,
        truncate,
        deadline: state.deadline(),
        explain: false,
        windows: None,
        limits: CostLimits::of(&state.settings.limits),
        pairs,
    };
    let classified = classify_served(&state.runtimes, std::slice::from_ref(head), input).await?;
    let labels = head.labels();
    let classified = classified.into_iter().next().expect("one head");
    Ok(classified
        .probabilities
        .into_iter()
        .map(|p| {
            // TEI's answer has no abstention nor label sets: every label's
            // score, most probable first; the metric counts the head's decision
            // as /classify's does.
            state.metrics.record_prediction(head.name(), Decision::of(head, &p, None).label(labels));
            let mut predictions: Vec<TeiPrediction> =
                labels.iter().zip(p).map(|(label, score)| TeiPrediction { score, label: label.clone() }).collect();
            predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
            predictions
        })
        .collect())
}

#[utoipa::path(
    post,
    path = "/tei/heads/{name}",
    tag = "tei",
    operation_id = "tei_head_classify",
    params(("name" = String, Path, description = "A served head")),
    request_body = HfClassifyRequest,
    responses(
        (status = 200, description = "The Hugging Face Inference API's text classification: per input, its labels most probable first (`top_k` of them)", body = Vec<Vec<TeiPrediction>>),
        TeiRefusals,
    )
)]
pub async fn head_classify(
    State(state): State<AppState>,
    Path(name): Path<String>,
    TeiJson(request): TeiJson<HfClassifyRequest>,
) -> Result<Json<Vec<Vec<TeiPrediction>>>, TeiError> {
    let head = lookup(&state, Some(&name))?;
    let parameters = request.parameters.unwrap_or_default();
    match parameters.function_to_apply.as_deref() {
        None | Some("softmax") => {}
        Some(other) => {
            return Err(unsupported(format!("function_to_apply {other:?}: heads answer probabilities (softmax)")))
        }
    }
    if parameters.top_k == Some(0) {
        return Err(TeiError(ApiError::new(ErrorCode::InvalidRequest, "top_k must be at least 1")));
    }
    // Truncated, as the Inference API's pipelines do.
    let mut predictions = labelled(&state, &head, request.inputs.into_vec(), None, true).await?;
    if let Some(k) = parameters.top_k {
        predictions.iter_mut().for_each(|p| p.truncate(k));
    }
    Ok(Json(predictions))
}

#[utoipa::path(
    post,
    path = "/tei/tokenize",
    tag = "tei",
    operation_id = "tei_tokenize",
    request_body = TeiTokenizeRequest,
    responses(
        (status = 200, description = "Per input, its tokens (ids, pieces, character offsets; null offsets for special tokens), truncated at the model's maximum", body = Vec<Vec<TeiToken>>),
        TeiRefusals,
    )
)]
pub async fn tokenize(
    State(state): State<AppState>,
    TeiJson(request): TeiJson<TeiTokenizeRequest>,
) -> Result<Json<Vec<Vec<TeiToken>>>, TeiError> {
    no_prompt(&request.prompt_name)?;
    let texts = validate_inputs(request.inputs.into_vec(), state.settings.limits.max_inputs)?;
    let tokens = tokens_of(&state, texts, true)
        .await?
        .into_iter()
        .map(|text| {
            text.into_iter()
                .filter(|t| request.add_special_tokens || !t.special)
                .map(|t| TeiToken {
                    id: u32::try_from(t.id).unwrap_or(u32::MAX),
                    text: t.text,
                    special: t.special,
                    start: (!t.special).then_some(t.start),
                    stop: (!t.special).then_some(t.end),
                })
                .collect()
        })
        .collect();
    Ok(Json(tokens))
}

#[utoipa::path(
    post,
    path = "/tei/decode",
    tag = "tei",
    operation_id = "tei_decode",
    request_body = TeiDecodeRequest,
    responses(
        (status = 200, description = "Per sequence of ids, its text", body = Vec<String>),
        TeiRefusals,
    )
)]
pub async fn decode(
    State(state): State<AppState>,
    TeiJson(request): TeiJson<TeiDecodeRequest>,
) -> Result<Json<Vec<String>>, TeiError> {
    let sequences = match request.ids {
        TeiIds::One(ids) => vec![ids],
        TeiIds::Many(many) => many,
    };
    let max = state.settings.limits.max_pooled_inputs;
    if sequences.len() > max {
        return Err(TeiError(ApiError::new(
            ErrorCode::TooManyInputs,
            format!("{} sequences in one request; the limit is {max}", sequences.len()),
        )));
    }
    let tokenizer = &state.encoder_runtime().tokenizer;
    let texts = sequences
        .iter()
        .enumerate()
        .map(|(i, ids)| tokenizer.decode(i, ids, request.skip_special_tokens))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::from)?;
    Ok(Json(texts))
}

fn info_of(state: &AppState, model_type: serde_json::Value) -> TeiInfo {
    let s = &state.settings;
    let model = &state.encoder_runtime().info;
    TeiInfo {
        model_id: model.name.clone(),
        model_sha: Some(model.fingerprint.clone()),
        model_dtype: if model.file.contains("int8") { "int8" } else { "float32" }.into(),
        model_type,
        max_concurrent_requests: s.server.max_connections,
        max_input_length: model.max_tokens,
        max_batch_tokens: s.batching.max_batch_tokens,
        max_batch_requests: Some(s.batching.max_batch_size),
        max_client_batch_size: s.limits.max_pooled_inputs,
        auto_truncate: false,
        tokenization_workers: crate::threads::cores(),
        version: env!("CARGO_PKG_VERSION").into(),
        sha: None,
        docker_label: None,
    }
}

#[utoipa::path(
    get,
    path = "/tei/info",
    tag = "tei",
    operation_id = "tei_info",
    responses((status = 200, description = "TEI's description of the served encoder", body = TeiInfo))
)]
pub async fn info(State(state): State<AppState>) -> Json<TeiInfo> {
    let pooling = serde_json::to_value(state.settings.openai.pooling).unwrap_or_default();
    Json(info_of(&state, serde_json::json!({ "embedding": { "pooling": pooling } })))
}

#[utoipa::path(
    get,
    path = "/tei/heads/{name}/info",
    tag = "tei",
    operation_id = "tei_head_info",
    params(("name" = String, Path, description = "A served head")),
    responses(
        (status = 200, description = "TEI's description of a classifier: the head's labels", body = TeiInfo),
        (status = 404, description = "No such head", body = TeiErrorResponse),
        (status = 503, description = "The head is training or failed (`Unhealthy`)", body = TeiErrorResponse),
    )
)]
pub async fn head_info(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<TeiInfo>, TeiError> {
    let head = lookup(&state, Some(&name))?;
    let id2label: BTreeMap<String, &String> =
        head.labels().iter().enumerate().map(|(i, l)| (i.to_string(), l)).collect();
    let label2id: BTreeMap<&String, usize> = head.labels().iter().enumerate().map(|(i, l)| (l, i)).collect();
    let model_type = serde_json::json!({ "classifier": { "id2label": id2label, "label2id": label2id } });
    let mut info = info_of(&state, model_type);
    info.model_id = format!("{}/{}", info.model_id, head.name());
    Ok(Json(info))
}

#[utoipa::path(
    get,
    path = "/tei/health",
    tag = "tei",
    operation_id = "tei_health",
    responses(
        (status = 200, description = "Ready (empty body, as TEI)"),
        (status = 503, description = "Starting, draining, or a worker dead (`Unhealthy`)", body = TeiErrorResponse),
    )
)]
pub async fn health(State(state): State<AppState>) -> Result<StatusCode, TeiError> {
    if state.readiness() == super::Readiness::Ready {
        Ok(StatusCode::OK)
    } else {
        Err(TeiError(ApiError::new(ErrorCode::NotReady, "unhealthy")))
    }
}
