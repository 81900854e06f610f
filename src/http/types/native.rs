//! The native routes' bodies: /embed, /classify, /tokenize, /health, /info.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::layers::LayerCombine;
use crate::pooling::Pooling;

use super::fields::*;

/// `POST /embed`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// Text or texts to encode (each non-empty).
    #[schema(example = json!(["a gripping, funny film", "dull"]))]
    pub inputs: Inputs,
    /// `none`: every real token's last hidden state; `cls`: the first token's; `mean`: average over real tokens.
    #[serde(default)]
    pub pooling: Pooling,
    /// Scale each returned vector to unit L2 norm.
    #[serde(default)]
    pub normalize: bool,
    /// Cut texts longer than the model's maximum (true) or answer 422 (false).
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub truncate: bool,
    /// Also return the word pieces, to line vectors up with tokens.
    #[serde(default)]
    pub return_tokens: bool,
    /// Process a text longer than the model's maximum in overlapping windows
    /// (stride `limits.window_stride_tokens`) and pool them together instead
    /// of truncating: [CLS] is the mean of the windows' [CLS] vectors, mean the
    /// mean of all their token vectors. Pooled only (`cls` or `mean`); every
    /// window's tokens count against `limits.max_request_tokens`.
    #[serde(default)]
    #[schema(default = false)]
    pub windows: bool,
    /// Hidden states to return: 0 is the embeddings' output, 1 to N the
    /// layers' (N = `/info` `model.layers`), negative indices count from the
    /// end; default `[-1]`, the last hidden state. Several are combined as
    /// `layer_combine` says, before pooling.
    #[serde(default)]
    #[schema(example = json!([-4, -3, -2, -1]))]
    pub layers: Option<Vec<i64>>,
    /// How several `layers` become one vector per token: `mean` (element-wise,
    /// `dimensions` = hidden size) or `concat` (side by side in the order
    /// given, `dimensions` = hidden size x layers).
    #[serde(default)]
    pub layer_combine: LayerCombine,
}

/// Vectors: one per text when pooled, one per real token of each text for `pooling: none`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Embeddings {
    Pooled(Vec<Vec<f32>>),
    PerToken(Vec<Vec<Vec<f32>>>),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbedResponse {
    pub model: String,
    pub pooling: Pooling,
    pub normalized: bool,
    /// Length of every vector: the hidden size, times the number of layers for `concat`.
    pub dimensions: usize,
    /// Hidden states the vectors come from (absolute indices, in the order asked).
    pub layers: Vec<usize>,
    /// Real tokens per text, special tokens included, after truncation.
    pub token_counts: Vec<usize>,
    pub embeddings: Embeddings,
    /// Word pieces per text, when `return_tokens` was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<Vec<String>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`; `starting` while heads train at startup; `draining` during shutdown.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelDescription {
    pub name: String,
    pub architecture: String,
    pub task: String,
    pub hidden_size: usize,
    pub max_tokens: usize,
    pub inputs: Vec<String>,
    pub output: String,
    /// Transformer layers whose hidden states `/embed` `layers` can ask for
    /// (0 to this; null: the export returns the last only).
    pub layers: Option<usize>,
    pub file: String,
    /// Identifies graph and tokenizer; heads record it.
    pub fingerprint: String,
    /// The graph quantises activations with one scale per model call (dynamic
    /// int8), so it runs one sequence per call: each text's answer is its own,
    /// whatever is batched beside it.
    pub one_sequence_per_call: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimitsDescription {
    pub max_inputs: usize,
    /// Inputs and tokens of one request to the OpenAI and TEI embedding routes (computed in parts).
    pub max_pooled_inputs: usize,
    pub max_pooled_tokens: usize,
    /// Most tokens per request, after tokenization with truncation (413 `too_many_tokens` above).
    pub max_request_tokens: usize,
    /// Most bytes of one answer, priced before any work (413 `response_too_large` above).
    pub max_response_bytes: u64,
    /// Most bytes of hidden states and answer one request may hold (413 `request_too_costly` above).
    pub max_request_memory_bytes: u64,
    pub max_body_bytes: usize,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InfoResponse {
    pub service: String,
    pub version: String,
    pub model: ModelDescription,
    /// `cpu` or `cuda`: the provider actually in use.
    pub execution_provider: String,
    pub onnxruntime_library: String,
    pub onnxruntime_api: String,
    pub limits: LimitsDescription,
}

/// `POST /classify`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    /// For a pair head: each input's second text (duplicates, entailment,
    /// query/document relevance), as many as `inputs`.
    #[serde(default)]
    #[schema(example = json!(["a film that never finds its footing"]))]
    pub text_pair: Option<Inputs>,
    /// Text or texts to classify (each non-empty).
    #[schema(example = json!(["a gripping, funny film"]))]
    pub inputs: Inputs,
    /// Head to use; the default head when omitted (see `GET /heads`).
    #[serde(default)]
    pub head: Option<String>,
    /// Several heads at once (instead of `head`): the encoder runs once per
    /// text for all of them, and the answer has one result per head, in this order.
    #[serde(default)]
    #[schema(max_items = 16, min_items = 1)]
    pub heads: Option<Vec<String>>,
    /// Cut texts longer than the model's maximum (true) or answer 422 (false).
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub truncate: bool,
    /// Add each token's part of each label's score (logistic heads; see `Explanation`).
    #[serde(default)]
    #[schema(default = false)]
    pub explain: bool,
    /// Answer `abstain` (with `abstained: true`) for a text whose top
    /// probability is below this (0-1); overrides the head's own
    /// `min_probability` (set when it was created). None: always answer.
    #[serde(default, deserialize_with = "probability")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub min_probability: Option<f32>,
    /// Classify a text longer than the model's maximum from overlapping windows
    /// pooled together (as `/embed`'s `windows`; ONNX heads: the mean of the
    /// windows' probabilities) instead of truncating. Not with `explain`.
    #[serde(default)]
    #[schema(default = false)]
    pub windows: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// The most probable label.
    pub label: String,
    /// Its probability.
    pub probability: f32,
    /// Every label's probability.
    pub probabilities: BTreeMap<String, f32>,
    /// True when the top probability was below `min_probability`: `label` is
    /// then `abstain` (the top label is still in `probabilities`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abstained: bool,
    /// A multi-label head's answer: every label at or over its threshold (none
    /// is an answer too), most probable first. Each label's probability is its
    /// own (they need not sum to 1); `label` is then the most probable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// With `explain`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
}

/// Where a head's scores come from. A logistic head's score for a label
/// (`scores`, the logit: probabilities are its softmax) is linear in the pooled
/// hidden states, so with `mean` pooling each token's part is exact: `bias` +
/// `cls` (for `cls_mean` pooling, the pooled-[CLS] half) + the tokens' parts =
/// `scores`, to rounding. With `cls` pooling the score depends on the [CLS]
/// state alone, which attends to every token: no exact per-token split exists,
/// `exact` is false and `tokens` carry no parts. An ONNX classifier (`pooling`
/// `onnx`) is a model of its own: `scores` are log-probabilities, no parts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Explanation {
    /// The head's pooling: `mean`, `cls_mean`, `cls`, or `onnx` for an ONNX classifier.
    pub pooling: String,
    /// True when the tokens' parts, `cls` and `bias` sum to `scores`.
    pub exact: bool,
    /// Each label's score (logit; log-probability for an ONNX classifier).
    pub scores: BTreeMap<String, f32>,
    /// The part no token carries: intercept minus the standardisation's mean,
    /// weighted (logistic heads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<BTreeMap<String, f32>>,
    /// The pooled-[CLS] part (`cls` and `cls_mean` pooling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls: Option<BTreeMap<String, f32>>,
    /// Every word piece, [CLS] and [SEP] included, with its character offsets.
    pub tokens: Vec<TokenPart>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPart {
    pub text: String,
    /// Character offsets in the input (0, 0 for special tokens).
    pub start: usize,
    pub end: usize,
    /// This token's part of each label's score; absent when not exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<BTreeMap<String, f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClassifyResponse {
    pub head: String,
    /// The version of the head that answered (as `GET /heads/{name}` reports
    /// it; also in the `x-head-version` header): behind a load balancer during
    /// a rollout, which one a client got.
    pub head_version: String,
    /// The model that computed the features (sha256 over graph and tokenizer;
    /// also in `x-encoder-fingerprint`): the service's encoder for a logistic
    /// head, the classifier's own model for an ONNX head.
    pub encoder_fingerprint: String,
    /// One per input, in input order.
    pub predictions: Vec<Prediction>,
}

/// `POST /classify` with `heads`: one answer per head, in the order asked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClassifyManyResponse {
    pub results: Vec<ClassifyResponse>,
}

/// The body of a `/classify` answer: one head's, or with `heads` every head's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ClassifyAnswer {
    One(ClassifyResponse),
    Many(ClassifyManyResponse),
}

/// `POST /tokenize`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    #[schema(example = json!("a gripping, funny film"))]
    pub inputs: Inputs,
    /// Cut at the model's maximum (true) or answer 422 (false).
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub truncate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: i64,
    /// The word piece.
    pub text: String,
    /// Added by the tokenizer ([CLS], [SEP]).
    pub special: bool,
    /// Offsets into the input in characters (Unicode scalar values, end
    /// exclusive), not bytes; 0, 0 for special tokens.
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    /// Per input, its tokens as the model sees them.
    pub tokens: Vec<Vec<Token>>,
}
