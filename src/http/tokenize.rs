//! `POST /tokenize`: what the model sees of each text.

use axum::extract::State;
use axum::Json;

use super::embed::validate_inputs;
use super::error::refusals::{MalformedJson, NotJson};
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::types::{Token, TokenizeRequest, TokenizeResponse};
use super::AppState;
use crate::tokenize::char_offsets;

#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "inference",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "Ids, word pieces and character offsets per input", body = TokenizeResponse),
        MalformedJson,
        (status = 413, description = "Body, input count or tokens (`too_many_tokens`, limits.max_request_tokens) over the limit", body = ErrorResponse),
        NotJson,
        (status = 422, description = "Invalid field, empty input, or input too long with truncate=false", body = ErrorResponse),
    )
)]
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let texts = validate_inputs(request.inputs.into_vec(), state.settings.limits.max_inputs)?;
    Ok(Json(TokenizeResponse { tokens: tokens_of(&state, texts, request.truncate).await? }))
}

/// Each text's tokens as the model sees them (character offsets), within the
/// per-request token bound: `/tokenize` and TEI's `/tei/tokenize`.
pub async fn tokens_of(state: &AppState, texts: Vec<String>, truncate: bool) -> Result<Vec<Vec<Token>>, ApiError> {
    let seqs = state.encoder_runtime().tokenize(texts.clone(), truncate).await?;
    state.encoder_runtime().check_request_tokens(&seqs)?;
    Ok(seqs
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
        .collect())
}
