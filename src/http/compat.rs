//! Routes users of other embedding servers expect: `POST /tokenize` and the
//! OpenAI-style `POST /v1/embeddings`.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine as _;

use super::embed::{fingerprint_header, validate_inputs};
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::types::{
    EncodingFormat, OpenAiEmbedding, OpenAiEmbeddingRequest, OpenAiEmbeddingResponse, OpenAiUsage, OpenAiVector, Token,
    TokenizeRequest, TokenizeResponse,
};
use super::{timing_headers, AppState};
use crate::config::SentencePooling;
use crate::cost::{AnswerFormat, CostLimits};
use crate::inference::{EmbedOptions, Vectors};
use crate::pooling::{normalize, Pooling};
use crate::tokenize::char_offsets;

#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "inference",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "Ids, word pieces and character offsets per input", body = TokenizeResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 413, description = "Body, input count or tokens (`too_many_tokens`, limits.max_request_tokens) over the limit", body = ErrorResponse),
        (status = 415, description = "Content-Type is not application/json", body = ErrorResponse),
        (status = 422, description = "Invalid field, empty input, or input too long with truncate=false", body = ErrorResponse),
    )
)]
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let texts = validate_inputs(request.inputs.into_vec(), state.settings.limits.max_inputs)?;
    let seqs = state.encoder().tokenize(texts.clone(), request.truncate).await?;
    state.encoder().check_request_tokens(&seqs)?;
    let tokens = seqs
        .into_iter()
        .zip(&texts)
        .map(|(s, text)| {
            let offsets = char_offsets(text, &s.offsets);
            (0..s.ids.len())
                .map(|i| Token {
                    id: s.ids[i],
                    text: s.tokens[i].clone(),
                    special: s.special[i],
                    start: offsets[i].0,
                    end: offsets[i].1,
                })
                .collect()
        })
        .collect();
    Ok(Json(TokenizeResponse { tokens }))
}

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "inference",
    request_body = OpenAiEmbeddingRequest,
    responses(
        (status = 200, description = "One pooled vector per input (openai.pooling, unit length when openai.normalize)", body = OpenAiEmbeddingResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 413, description = "Body, input count or tokens (`too_many_tokens`, limits.max_request_tokens) over the limit", body = ErrorResponse),
        (status = 415, description = "Content-Type is not application/json", body = ErrorResponse),
        (status = 422, description = "Invalid or unknown field, dimensions 0 (`invalid_dimensions`), or empty input", body = ErrorResponse),
        (status = 503, description = "Queue full or its queued work longer than the request can wait (`overloaded`), or shutting down", body = ErrorResponse),
        (status = 504, description = "Deadline passed", body = ErrorResponse),
    )
)]
pub async fn openai_embeddings(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<OpenAiEmbeddingRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let texts = validate_inputs(request.input.into_vec(), state.settings.limits.max_inputs)?;
    let openai = &state.settings.openai;
    let pooling = match openai.pooling {
        SentencePooling::Cls => Pooling::Cls,
        SentencePooling::Mean => Pooling::Mean,
    };
    let hidden = state.encoder().info.hidden_size;
    // The schema cannot know the model's width: more than it gives the whole vector.
    let dimensions = match request.dimensions {
        None => hidden,
        Some(0) => return Err(ApiError::invalid("invalid_dimensions", "dimensions must be at least 1")),
        Some(d) => d.min(hidden),
    };
    // Normalised after truncation (as OpenAI and TEI do), so not by `embed`.
    let options = EmbedOptions {
        pooling,
        normalize: false,
        windows: None,
        layers: None,
        format: AnswerFormat::Json,
        return_tokens: false,
    };
    // OpenAI's endpoint truncates long inputs rather than refusing them.
    let limits = CostLimits::of(&state.settings.limits);
    let embedded = state.encoder().embed(texts, true, state.deadline(), options, limits).await?;
    let prompt_tokens = embedded.token_counts.iter().sum();
    let Vectors::Pooled(vectors) = embedded.vectors else { unreachable!("pooling is cls or mean") };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, mut v)| {
            v.truncate(dimensions);
            if openai.normalize {
                normalize(&mut v);
            }
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
        model: request.model.clone().unwrap_or_else(|| state.encoder().info.name.clone()),
        usage: OpenAiUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    Ok((timing_headers(&embedded.timing), fingerprint_header(&state), Json(body)))
}
