//! OpenAI's embeddings API: `POST /v1/embeddings` and `POST /embeddings` (for
//! clients whose base URL has no `/v1`), corpus-sized requests included.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine as _;

use super::embed::{check_inputs, fingerprint_header};
use super::error::refusals::{DeadlinePassed, MalformedJson, NotJson, Overloaded};
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::types::{
    EmbeddingInputs, EncodingFormat, OpenAiEmbedding, OpenAiEmbeddingRequest, OpenAiEmbeddingResponse, OpenAiUsage,
    OpenAiVector,
};
use super::{timing_headers, AppState};
use crate::config::SentencePooling;
use crate::cost::CostLimits;
use crate::error_code::ErrorCode;
use crate::inference::{CorpusBounds, CorpusItem, Pooled};
use crate::pooling::{normalize, Pooling};
use crate::tokenize::Truncation;

/// The refusals of OpenAI's embeddings routes beyond the shared ones, declared once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its schema is used.
pub enum CorpusRefusals {
    #[response(
        status = 413,
        description = "Body, inputs (limits.max_pooled_inputs) or tokens (`too_many_tokens`, limits.max_pooled_tokens) over the limit, or more model time than the deadline leaves (`too_much_work`)"
    )]
    TooLarge(ErrorResponse),
    #[response(
        status = 422,
        description = "Invalid or unknown field, dimensions 0 (`invalid_dimensions`), empty input, or a token id outside the vocabulary"
    )]
    Invalid(ErrorResponse),
}

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "inference",
    operation_id = "openai_embeddings",
    request_body = OpenAiEmbeddingRequest,
    responses(
        (status = 200, description = "One pooled vector per input (openai.pooling, unit length when openai.normalize)", body = OpenAiEmbeddingResponse),
        CorpusRefusals,
        MalformedJson,
        NotJson,
        Overloaded,
        DeadlinePassed,
    )
)]
pub async fn embeddings(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<OpenAiEmbeddingRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let hidden = state.encoder_runtime().info.hidden_size;
    // The schema cannot know the model's width: more than it gives the whole vector.
    let dimensions = match request.dimensions {
        None => hidden,
        Some(0) => return Err(ApiError::new(ErrorCode::InvalidDimensions, "dimensions must be at least 1")),
        Some(d) => d.min(hidden),
    };
    // OpenAI's endpoint truncates long inputs rather than refusing them.
    let pooled = embed_corpus(&state, request.input, Truncation::Right).await?;
    let prompt_tokens = pooled.token_counts.iter().sum();
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let normalized = state.settings.openai.normalize;
    let data = pooled
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = cut(v, dimensions, normalized);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                OpenAiVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                OpenAiVector::Float(v)
            };
            OpenAiEmbedding { object: "embedding".into(), index, embedding }
        })
        .collect();
    let body = OpenAiEmbeddingResponse {
        object: "list".into(),
        data,
        model: request.model.clone().unwrap_or_else(|| state.encoder_runtime().info.name.clone()),
        usage: OpenAiUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    Ok((timing_headers(&pooled.timing), fingerprint_header(&state), Json(body)))
}

/// `POST /embeddings`: the same, for clients whose base URL has no `/v1`.
#[utoipa::path(
    post,
    path = "/embeddings",
    tag = "inference",
    operation_id = "openai_embeddings_alias",
    request_body = OpenAiEmbeddingRequest,
    responses(
        (status = 200, description = "As POST /v1/embeddings", body = OpenAiEmbeddingResponse),
        CorpusRefusals,
        MalformedJson,
        NotJson,
        Overloaded,
        DeadlinePassed,
    )
)]
pub async fn embeddings_alias(
    state: State<AppState>,
    request: ApiJson<OpenAiEmbeddingRequest>,
) -> Result<impl IntoResponse, ApiError> {
    embeddings(state, request).await
}

/// `POST /tei/embeddings`: the same, where TEI serves OpenAI's format.
#[utoipa::path(
    post,
    path = "/tei/embeddings",
    tag = "tei",
    operation_id = "tei_openai_embeddings",
    request_body = OpenAiEmbeddingRequest,
    responses(
        (status = 200, description = "As POST /v1/embeddings", body = OpenAiEmbeddingResponse),
        CorpusRefusals,
        MalformedJson,
        NotJson,
        Overloaded,
        DeadlinePassed,
    )
)]
pub async fn tei_embeddings(
    state: State<AppState>,
    request: ApiJson<OpenAiEmbeddingRequest>,
) -> Result<impl IntoResponse, ApiError> {
    embeddings(state, request).await
}

/// `POST /tei/v1/embeddings`: the same, for clients whose TEI base URL ends in `/v1`.
#[utoipa::path(
    post,
    path = "/tei/v1/embeddings",
    tag = "tei",
    operation_id = "tei_openai_v1_embeddings",
    request_body = OpenAiEmbeddingRequest,
    responses(
        (status = 200, description = "As POST /v1/embeddings", body = OpenAiEmbeddingResponse),
        CorpusRefusals,
        MalformedJson,
        NotJson,
        Overloaded,
        DeadlinePassed,
    )
)]
pub async fn tei_v1_embeddings(
    state: State<AppState>,
    request: ApiJson<OpenAiEmbeddingRequest>,
) -> Result<impl IntoResponse, ApiError> {
    embeddings(state, request).await
}

/// Keeps a vector's first `dimensions` values, then scales it to unit length
/// when asked (after the cut, as OpenAI and TEI do).
pub fn cut(mut v: Vec<f32>, dimensions: usize, normalized: bool) -> Vec<f32> {
    v.truncate(dimensions);
    if normalized {
        normalize(&mut v);
    }
    v
}

/// The pooled vectors (`openai.pooling`) of a corpus route's inputs: checked
/// (at least one, none empty, at most limits.max_pooled_inputs), then
/// computed in parts (`Inference::embed_corpus`).
pub async fn embed_corpus(
    state: &AppState,
    inputs: EmbeddingInputs,
    truncation: Truncation,
) -> Result<Pooled, ApiError> {
    let limits = &state.settings.limits;
    let items = inputs.0;
    let first_empty = items.iter().position(|item| matches!(item, CorpusItem::Text(t) if t.is_empty()));
    check_inputs("input", items.len(), first_empty, limits.max_pooled_inputs)?;
    let pooling = match state.settings.openai.pooling {
        SentencePooling::Cls => Pooling::Cls,
        SentencePooling::Mean => Pooling::Mean,
    };
    let bounds = CorpusBounds {
        max_tokens: limits.max_pooled_tokens,
        part_inputs: limits.max_inputs,
        part_tokens: limits.max_request_tokens,
        limits: CostLimits::of(limits),
    };
    Ok(state.encoder_runtime().embed_corpus(items, truncation, state.deadline(), pooling, bounds).await?)
}
