//! `POST /embed`: last hidden states, per token or pooled, as JSON or `.npy`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::refusals::{DeadlinePassed, MalformedJson, NotJson, OverLimits, Overloaded};
use super::error::{ApiError, ApiJson, ErrorResponse};
use super::types::{EmbedRequest, EmbedResponse};
use super::{timing_headers, AppState};
use crate::cost::CostLimits;
use crate::error_code::ErrorCode;
use crate::inference::{EmbedOptions, Embedded, Vectors};
use crate::layers::LayerSelection;
use crate::npy;

pub const NPY_MEDIA_TYPE: &str = crate::npy::MEDIA_TYPE;
/// Header carrying the per-text token counts of a `.npy` answer (comma-separated).
pub const TOKEN_COUNTS_HEADER: &str = "x-token-counts";

/// The answer's format, as the cost model prices it.
pub use crate::cost::AnswerFormat as Format;

/// Serialises exactly as the documented [`EmbedResponse`], from the rows as
/// they are: the largest admitted answer is tens of MB of JSON, and copying
/// the rows into nested vectors first, then growing the buffer by doubling,
/// had doubled its peak memory (RELIABILITY.md, "Bounded cost").
#[derive(serde::Serialize)]
struct EmbedResponseView<'a> {
    model: &'a str,
    pooling: crate::pooling::Pooling,
    normalized: bool,
    dimensions: usize,
    layers: &'a [usize],
    token_counts: &'a [usize],
    embeddings: EmbeddingsView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<&'a [Vec<String>]>,
}

struct EmbeddingsView<'a> {
    vectors: &'a Vectors,
    hidden: usize,
}

impl serde::Serialize for EmbeddingsView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct TokenVectors<'a>(&'a [f32], usize);
        impl serde::Serialize for TokenVectors<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.chunks_exact(self.1))
            }
        }
        match self.vectors {
            Vectors::Pooled(vectors) => serializer.collect_seq(vectors),
            Vectors::PerToken(rows) => serializer.collect_seq(rows.iter().map(|r| TokenVectors(&r.data, self.hidden))),
        }
    }
}

/// `x-encoder-fingerprint`: which encoder computed an answer.
pub fn fingerprint_header(state: &AppState) -> [(axum::http::HeaderName, HeaderValue); 1] {
    let fingerprint = HeaderValue::from_str(&state.encoder_runtime().info.fingerprint).expect("hex digits");
    [(super::ENCODER_FINGERPRINT, fingerprint)]
}

/// Picks the response format from `Accept`: `.npy` when asked for, JSON for
/// JSON, wildcards or no header, 406 otherwise.
pub fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(Format::Json);
    };
    let accept = accept.to_str().unwrap_or("").to_ascii_lowercase();
    let types: Vec<&str> = accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim()).collect();
    if types.contains(&NPY_MEDIA_TYPE) {
        return Ok(Format::Npy);
    }
    if types.iter().any(|t| matches!(*t, "" | "*/*" | "application/*" | "application/json")) {
        return Ok(Format::Json);
    }
    Err(ApiError::new(
        ErrorCode::NotAcceptable,
        format!("cannot answer with {accept:?}: accept application/json or {NPY_MEDIA_TYPE}"),
    ))
}

/// Checks a request's texts: at least one, none empty, at most `max_inputs`.
pub fn validate_inputs(texts: Vec<String>, max_inputs: usize) -> Result<Vec<String>, ApiError> {
    check_inputs("inputs", texts.len(), texts.iter().position(|t| t.is_empty()), max_inputs)?;
    Ok(texts)
}

/// The checks of [`validate_inputs`] on a request's list `field` of `count`
/// inputs whose first empty text (if any) is at `first_empty`.
pub fn check_inputs(field: &str, count: usize, first_empty: Option<usize>, max_inputs: usize) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::new(ErrorCode::EmptyInput, format!("{field} is an empty list: send at least one text")));
    }
    if count > max_inputs {
        return Err(ApiError::new(
            ErrorCode::TooManyInputs,
            format!("{count} inputs in one request; the limit is {max_inputs}"),
        ));
    }
    // Only "" is refused (as the schema's minLength says); whitespace is text like any other.
    if let Some(i) = first_empty {
        return Err(ApiError::new(ErrorCode::EmptyInput, format!("input {i} is empty")));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/embed",
    tag = "inference",
    request_body = EmbedRequest,
    responses(
        (status = 200, description = "Hidden states as JSON; with `Accept: application/x-npy`, a NumPy array \
            (`[n, hidden]` pooled, `[n, max_tokens, hidden]` zero-padded for `none`, token counts in `x-token-counts`)",
            content((EmbedResponse = "application/json"), (Vec<u8> = "application/x-npy"))),
        MalformedJson,
        (status = 406, description = "Unsupported Accept", body = ErrorResponse),
        OverLimits,
        NotJson,
        (status = 422, description = "Invalid field, empty input, layers the model does not have (`invalid_layers`), or input too long with truncate=false", body = ErrorResponse),
        Overloaded,
        DeadlinePassed,
    )
)]
pub async fn embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<EmbedRequest>,
) -> Result<Response, ApiError> {
    let format = negotiate(&headers)?;
    let texts = validate_inputs(request.inputs.into_vec(), state.settings.limits.max_inputs)?;
    if request.windows && (request.pooling.features().is_none() || request.return_tokens) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "windows pools a long text's windows together: use pooling cls or mean, without return_tokens",
        ));
    }
    let windows = request.windows.then(|| state.settings.limits.window_stride(state.encoder_runtime().info.max_tokens));
    let info = &state.encoder_runtime().info;
    let requested = request.layers.as_deref().unwrap_or(&[-1]);
    let layers = LayerSelection::resolve(requested, request.layer_combine, info.layers)
        .map_err(|e| ApiError::new(ErrorCode::InvalidLayers, e.to_string()))?;
    let used = layers.indices.clone();
    let options = EmbedOptions {
        pooling: request.pooling,
        normalize: request.normalize,
        windows,
        layers: Some(layers),
        format,
        return_tokens: request.return_tokens,
    };
    let limits = CostLimits::of(&state.settings.limits);
    let embedded = state.encoder_runtime().embed(texts, request.truncate, state.deadline(), options, limits).await?;
    let timing = timing_headers(&embedded.timing);
    let Embedded { tokens, token_counts, hidden, vectors, .. } = embedded;

    match format {
        Format::Npy => {
            // Written in place: the header, then each text's rows (zero-padded
            // per token), each dropped once copied: one copy of the answer.
            let body = match vectors {
                Vectors::Pooled(vectors) => {
                    let mut out = npy::Writer::<f32>::new(&[vectors.len(), hidden]);
                    vectors.iter().for_each(|v| out.extend(v));
                    out.finish()
                }
                Vectors::PerToken(rows) => {
                    let longest = token_counts.iter().copied().max().unwrap_or(0);
                    let mut out = npy::Writer::<f32>::new(&[rows.len(), longest, hidden]);
                    for r in rows {
                        out.extend(&r.data);
                        out.zeros((longest - r.rows) * hidden);
                    }
                    out.finish()
                }
            };
            let counts = token_counts.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NPY_MEDIA_TYPE));
            headers.insert(TOKEN_COUNTS_HEADER, HeaderValue::from_str(&counts).expect("digits and commas"));
            Ok((timing, fingerprint_header(&state), response).into_response())
        }
        Format::Json => {
            let floats = match &vectors {
                Vectors::Pooled(v) => v.len() * hidden,
                Vectors::PerToken(rows) => rows.iter().map(|r| r.data.len()).sum(),
            };
            let body = EmbedResponseView {
                model: &state.encoder_runtime().info.name,
                pooling: request.pooling,
                normalized: request.normalize,
                dimensions: hidden,
                layers: &used,
                token_counts: &token_counts,
                embeddings: EmbeddingsView { vectors: &vectors, hidden },
                tokens: request.return_tokens.then_some(&tokens[..]),
            };
            // About 12 bytes per number ("-0.12345678,"): sized once instead of doubling.
            let mut json = Vec::with_capacity(floats * 12 + 1024);
            serde_json::to_writer(&mut json, &body)
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot write the answer: {e}")))?;
            let headers = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
            Ok((timing, fingerprint_header(&state), headers, json).into_response())
        }
    }
}
