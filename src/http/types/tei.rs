//! Text Embeddings Inference (TEI)'s wire format, served under /tei (http/tei.rs).

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::fields::*;

/// Which end of a long input TEI's `truncate` keeps (`right` cuts the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
pub enum TeiTruncationDirection {
    #[serde(alias = "left")]
    Left,
    #[default]
    #[serde(alias = "right")]
    Right,
}

/// `POST /tei/embed` (and `/tei/`): TEI's request. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiEmbedRequest {
    /// Texts or token-id sequences: up to limits.max_pooled_inputs.
    #[schema(example = json!(["a gripping, funny film"]))]
    pub inputs: EmbeddingInputs,
    /// Cut inputs over the model's maximum (else 413, as TEI without `--auto-truncate`).
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: TeiTruncationDirection,
    /// Scale each vector to unit length (TEI's default).
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub normalize: bool,
    /// Keep each vector's first `dimensions` values (before normalising).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1)]
    pub dimensions: Option<usize>,
    /// No prompts are configured for the served model: any name is a 422.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// `POST /tei/embed_all`: every token's last hidden state.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiEmbedAllRequest {
    #[schema(example = json!(["a gripping, funny film"]))]
    pub inputs: Inputs,
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Only `right` here (422 for `left`).
    #[serde(default)]
    pub truncation_direction: TeiTruncationDirection,
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// TEI's `/predict` input: a text, a pair `[a, b]`, or a batch `[[a], [a, b], ...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TeiPredictInput {
    pub batch: bool,
    /// Each a text (one string) or a pair (two).
    pub sequences: Vec<Vec<String>>,
}

impl utoipa::PartialSchema for TeiPredictInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
        let seq = || ArrayBuilder::new().items(text()).min_items(Some(1)).max_items(Some(2));
        OneOfBuilder::new()
            .item(text().description(Some("One text")))
            .item(seq().description(Some("One text, or a pair of texts (refused: no pair head is served)")))
            .item(ArrayBuilder::new().items(seq()).min_items(Some(1)).description(Some("A batch")))
            .into()
    }
}

impl ToSchema for TeiPredictInput {}

impl<'de> Deserialize<'de> for TeiPredictInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let sequence = |v: Value, at: String| -> Result<Vec<String>, D::Error> {
            match v {
                Value::Array(items) if (1..=2).contains(&items.len()) => items
                    .into_iter()
                    .map(|t| match t {
                        Value::String(s) => Ok(s),
                        other => Err(D::Error::custom(format!("{at} holds {}, not a string", json_type(&other)))),
                    })
                    .collect(),
                _ => Err(D::Error::custom(format!("{at} must be a text [a] or a pair [a, b]"))),
            }
        };
        match Value::deserialize(d)? {
            Value::String(s) => Ok(TeiPredictInput { batch: false, sequences: vec![vec![s]] }),
            Value::Array(items) if items.first().is_some_and(Value::is_string) => {
                Ok(TeiPredictInput { batch: false, sequences: vec![sequence(Value::Array(items), "inputs".into())?] })
            }
            Value::Array(items) => Ok(TeiPredictInput {
                batch: true,
                sequences: items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| sequence(v, format!("inputs[{i}]")))
                    .collect::<Result<_, _>>()?,
            }),
            other => {
                Err(D::Error::custom(format!("inputs must be a text, a pair or a batch, found {}", json_type(&other))))
            }
        }
    }
}

/// `POST /tei/predict`: the default head (or the head of `/tei/heads/{name}`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiPredictRequest {
    pub inputs: TeiPredictInput,
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Only `right` here (422 for `left`).
    #[serde(default)]
    pub truncation_direction: TeiTruncationDirection,
    /// Heads answer calibrated probabilities; `true` is a 422.
    #[serde(default)]
    pub raw_scores: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TeiPrediction {
    pub score: f32,
    pub label: String,
}

/// One input's labels, most probable first (a batch answers one list per input).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TeiPredictResponse {
    Single(Vec<TeiPrediction>),
    Batch(Vec<Vec<TeiPrediction>>),
}

/// `POST /tei/heads/{name}`: the Hugging Face Inference API's text
/// classification (what `huggingface_hub`'s `text_classification` sends).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HfClassifyRequest {
    #[schema(example = json!("a gripping, funny film"))]
    pub inputs: Inputs,
    #[serde(default, deserialize_with = "object")]
    pub parameters: Option<HfClassifyParameters>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HfClassifyParameters {
    /// `softmax` only (heads answer probabilities); others are a 422.
    #[serde(default)]
    pub function_to_apply: Option<String>,
    /// The `top_k` most probable labels (all when absent).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
}

/// `POST /tei/tokenize`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiTokenizeRequest {
    #[schema(example = json!("a gripping, funny film"))]
    pub inputs: Inputs,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub add_special_tokens: bool,
    #[serde(default)]
    pub prompt_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TeiToken {
    pub id: u32,
    pub text: String,
    pub special: bool,
    /// Character offsets into the input (null for special tokens).
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// `POST /tei/decode`: one sequence of ids, or several.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiDecodeRequest {
    pub ids: TeiIds,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub skip_special_tokens: bool,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TeiIds {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

/// `GET /tei/info`: TEI's description of the served model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TeiInfo {
    pub model_id: String,
    pub model_sha: Option<String>,
    pub model_dtype: String,
    /// `{"embedding": {"pooling": ...}}`, or `{"classifier": {"id2label", "label2id"}}` for a head.
    #[schema(value_type = Object)]
    pub model_type: serde_json::Value,
    pub max_concurrent_requests: usize,
    pub max_input_length: usize,
    pub max_batch_tokens: usize,
    pub max_batch_requests: Option<usize>,
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
    pub tokenization_workers: usize,
    pub version: String,
    pub sha: Option<String>,
    pub docker_label: Option<String>,
}

/// TEI's error body: the message, TEI's error type, and our stable code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TeiErrorResponse {
    pub error: String,
    /// `Validation`, `Tokenizer`, `Overloaded`, `Unhealthy`, `Backend` or `Empty`.
    pub error_type: String,
    /// This service's code for the error (as in `{"error": {"code"}}` elsewhere).
    pub code: String,
}
