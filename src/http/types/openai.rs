//! OpenAI's embeddings format, served at /v1/embeddings (http/openai.rs).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::fields::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// `POST /v1/embeddings`, OpenAI's request format. Unknown fields are refused
/// (422), as on every other route.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiEmbeddingRequest {
    /// Text or texts to embed, or the model's own token ids (as `/tokenize`
    /// gives them, used as they are): up to limits.max_pooled_inputs.
    #[schema(example = json!(["a gripping, funny film"]))]
    pub input: EmbeddingInputs,
    /// Echoed in the answer; the served model answers whatever is named.
    #[serde(default)]
    pub model: Option<String>,
    /// Keep the first `dimensions` values of each vector, then normalise
    /// (when openai.normalize): OpenAI's and TEI's meaning. At least 1; more
    /// than the hidden size gives the whole vector.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1)]
    pub dimensions: Option<usize>,
    /// `float` (default) or `base64` (little-endian float32).
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    /// Accepted for compatibility and ignored.
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    pub object: String,
    pub index: usize,
    pub embedding: OpenAiVector,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenAiEmbeddingResponse {
    /// Always `list`.
    pub object: String,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}
