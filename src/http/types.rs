//! Request and response bodies of every route, with their OpenAPI schemas.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::layers::LayerCombine;
use crate::pooling::Pooling;

/// One text or a list of texts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

// Written by hand: the derived schema would not say that texts and the list
// must be non-empty, which the service enforces (422 `empty_input`).
impl utoipa::PartialSchema for Inputs {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
        OneOfBuilder::new()
            .item(text().description(Some("One text")))
            .item(ArrayBuilder::new().items(text()).min_items(Some(1)).description(Some("Texts, in order")))
            .into()
    }
}

impl ToSchema for Inputs {}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written message: serde's untagged-enum error names no types.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Inputs::One(s)),
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(serde::de::Error::custom(format!(
                        "inputs[{i}] must be a string, found {}",
                        json_type(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Inputs::Many),
            other => Err(serde::de::Error::custom(format!(
                "inputs must be a string or a list of strings, found {}",
                json_type(&other)
            ))),
        }
    }
}

/// Inputs of the corpus routes (OpenAI's `input`, TEI's `inputs`): a text, a
/// list of texts, one sequence of the model's own token ids, or a list of such
/// sequences (texts and id lists may be mixed, as TEI allows).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingInputs(pub Vec<crate::inference::CorpusItem>);

impl utoipa::PartialSchema for EmbeddingInputs {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
        let id = || ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
        let ids = || ArrayBuilder::new().items(id()).min_items(Some(1));
        OneOfBuilder::new()
            .item(text().description(Some("One text")))
            .item(
                ArrayBuilder::new()
                    .items(OneOfBuilder::new().item(text()).item(ids()))
                    .min_items(Some(1))
                    .description(Some("Texts, or token-id sequences, in order")),
            )
            .item(ids().description(Some("One sequence of the model's token ids (as /tokenize gives them)")))
            .into()
    }
}

impl ToSchema for EmbeddingInputs {}

impl<'de> Deserialize<'de> for EmbeddingInputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::inference::CorpusItem;
        use serde::de::Error;
        use serde_json::Value;
        let id = |v: &Value, at: &str| -> Result<u32, D::Error> {
            v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                D::Error::custom(format!("{at} must be a token id (a whole number of at least 0), found {v}"))
            })
        };
        match Value::deserialize(d)? {
            Value::String(s) => Ok(EmbeddingInputs(vec![CorpusItem::Text(s)])),
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
                let ids: Result<Vec<u32>, D::Error> =
                    items.iter().enumerate().map(|(i, v)| id(v, &format!("input[{i}]"))).collect();
                Ok(EmbeddingInputs(vec![CorpusItem::Ids(ids?)]))
            }
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(CorpusItem::Text(s)),
                    Value::Array(ids) => ids
                        .iter()
                        .enumerate()
                        .map(|(j, v)| id(v, &format!("input[{i}][{j}]")))
                        .collect::<Result<Vec<_>, _>>()
                        .map(CorpusItem::Ids),
                    other => Err(D::Error::custom(format!(
                        "input[{i}] must be a string or a list of token ids, found {}",
                        json_type(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(EmbeddingInputs),
            other => Err(D::Error::custom(format!(
                "input must be a string, a list of strings, or token ids, found {}",
                json_type(&other)
            ))),
        }
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Inputs {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::One(s) => vec![s],
            Inputs::Many(v) => v,
        }
    }
}

fn yes() -> bool {
    true
}

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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeadSummary {
    pub name: String,
    /// Changes with every new head file or model: the first 16 hex digits of
    /// the head file's checksum (logistic) or of the model's fingerprint (ONNX).
    pub version: String,
    /// `logistic` or `onnx`.
    pub kind: String,
    pub labels: Vec<String>,
    pub default: bool,
    /// Pooling of the encoder's hidden states (logistic heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<String>,
    /// Hidden states pooled (logistic heads): `-1` (the last), or e.g.
    /// `mean(-4,-3,-2,-1)`, `concat(-2,-1)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<String>,
    /// The encoder the head serves on: the service's model for a logistic
    /// head, its own model for an ONNX classifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    /// The ONNX graph of that encoder the head runs on, e.g. `model.int8.onnx`
    /// (logistic heads: `classify.model_file`, else `model.file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
    /// Why a logistic head serves on that graph where the service has two:
    /// the held-out accuracy of the head trained on each (the heads' graph
    /// serves unless it loses more than 0.5 points).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// Several labels per text (one-vs-rest); its held-out micro-F1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multi_label: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_micro_f1: Option<f64>,
    /// Classifies text pairs (`text_pair` on `/classify`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pair: bool,
    /// Unix time the head was trained (logistic heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_unix: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeadsResponse {
    pub default_head: String,
    pub heads: Vec<HeadSummary>,
    /// Configured heads still training at startup.
    pub pending: Vec<String>,
    /// Configured heads whose startup training failed, with the reason; not served.
    #[serde(default)]
    pub failed: std::collections::BTreeMap<String, String>,
    /// Why the last look at the heads folder failed (the heads loaded keep
    /// serving; counted in `distilserve_heads_folder_errors_total`); absent when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeadDetail {
    #[serde(flatten)]
    pub summary: HeadSummary,
    /// The encoder the head was trained on (logistic heads): name,
    /// fingerprint, hidden size, maximum tokens. (`encoder`, from the summary,
    /// names the encoder it serves on.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder_stamp: Option<serde_json::Value>,
    /// Training record: data, selection, search candidates, chosen alpha.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// Metrics on train, validation and test, with confusion matrices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    /// `ready` (served), or for a head trained over the API and not served
    /// yet: `queued`, `training`, `failed` (`job` says why).
    pub status: String,
    /// The latest training of this head over the API on the replica that
    /// answers: phase and progress, label counts, the reason of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::heads::jobs::JobStatus>,
    /// Versions kept in the heads folder, oldest first; `version` is the active one.
    pub versions: Vec<VersionDescription>,
    /// Where each graph of the model stands for this head: `served` on one;
    /// where the heads have a graph of their own (`classify.model_file`), the
    /// other is `training` (the head is served on the first graph meanwhile),
    /// then `kept` (compared, not served) or `failed`.
    #[serde(default)]
    pub graphs: Vec<crate::heads::GraphPhase>,
    /// Given when the head was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionDescription {
    pub version: String,
    pub created_unix: u64,
    pub active: bool,
}

/// A label as uploaded: a name, or an index (written as digits in the head).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LabelValue {
    Name(String),
    Index(u64),
    /// Several labels (a multi-label upload).
    Names(Vec<String>),
}

impl LabelValue {
    /// The labels as written: a list as it is; one name split on `separator`
    /// when given (a multi-label upload's string); an index as digits.
    pub fn written(self, separator: Option<&str>) -> Vec<String> {
        match self {
            LabelValue::Names(names) => names,
            LabelValue::Name(n) => match separator {
                Some(sep) => n.split(sep).map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect(),
                None => vec![n],
            },
            LabelValue::Index(i) => vec![i.to_string()],
        }
    }
}

/// One labelled example of `POST /heads`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExampleInput {
    pub text: String,
    /// The second text of a pair: a pair head (duplicates, entailment,
    /// query/document relevance) is trained when every example has one.
    #[serde(default)]
    pub text_pair: Option<String>,
    pub label: LabelValue,
    /// `train` or `test`. When any example says `test`, those are the held-out
    /// part; otherwise the service holds out `test_fraction` of each label.
    #[serde(default)]
    pub split: Option<String>,
}

/// Training options of `POST /heads`; each defaults to its `[training]` setting.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingOptions {
    /// `auto` (chosen by cross-validation, the default), `cls`, `mean` or `cls_mean`.
    #[serde(default)]
    pub pooling: Option<String>,
    /// Hidden states tried, each with every pooling (default: `[training] layers`):
    /// `"-1"` the last layer's, `"mean(-4,-3,-2,-1)"` the element-wise mean of the
    /// last four, `"concat(-2,-1)"` the last two side by side; 1 to 8 options.
    /// Options the encoder cannot give are left out (all of them: 422).
    #[serde(default)]
    #[schema(example = json!(["-1", "concat(-2,-1)"]), min_items = 1, max_items = 8)]
    pub layers: Option<Vec<String>>,
    /// L2 penalties tried.
    #[serde(default)]
    pub alphas: Option<Vec<f64>>,
    /// Folds of the cross-validation that chooses pooling and alpha (2-20).
    #[serde(default)]
    pub cv_folds: Option<usize>,
    /// Part of each label held out for the report when no example is marked `test` (0-0.5].
    #[serde(default)]
    pub test_fraction: Option<f64>,
    /// The head's default `min_probability` on `/classify` (0-1).
    #[serde(default, deserialize_with = "probability")]
    pub min_probability: Option<f32>,
    /// Label weights of the training rows: `"none"` (the default), `"balanced"`
    /// (label c weighs n / (labels x n_c)), `"auto"` (both tried, the better by
    /// held-out macro-F1), or a weight per label (`{"spam": 5}`; labels left
    /// out weigh 1; within 100x of each other). Any weighting chooses
    /// candidates by held-out macro-F1 instead of accuracy.
    #[serde(default)]
    #[schema(example = json!("balanced"))]
    pub class_weight: Option<ClassWeightInput>,
    /// Several labels per example (a list, or one string split on
    /// `label_separator`), one logistic regression per label: `/classify`
    /// answers the set of labels over their thresholds.
    #[serde(default)]
    pub multi_label: Option<bool>,
    /// What separates labels in one string of a multi-label upload (default `|`).
    #[serde(default)]
    pub label_separator: Option<String>,
    /// Instead of `alphas`: this many (2-20), log-spaced over the range of `[training] alphas`.
    #[serde(default)]
    pub alpha_grid: Option<usize>,
    /// Seconds the search may take (at most 3600): feature sets are then searched narrowest
    /// first, and those not finished in time are left out (`training.budget` says how many).
    #[serde(default)]
    pub time_budget_s: Option<f64>,
}

/// `options.class_weight`: a name or a weight per label.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ClassWeightInput {
    /// `none`, `balanced` or `auto`.
    Name(String),
    PerLabel(std::collections::BTreeMap<String, f64>),
}

/// `POST /heads` with a JSON body. CSV or JSONL bodies carry the same examples
/// (columns/fields `text`, `label`, optional `split`) with the rest in the query.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHeadRequest {
    /// 1-64 letters, digits, `_` or `-`.
    #[schema(example = "topic")]
    pub name: String,
    /// Read one at a time, stopped at the first past `training.max_examples` (413).
    #[serde(deserialize_with = "bounded_examples")]
    pub examples: Vec<ExampleInput>,
    /// Train a new version of an existing head (it keeps serving until the new one is ready).
    #[serde(default)]
    pub replace: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub options: TrainingOptions,
}

thread_local! {
    /// Most examples [`bounded_examples`] reads on this thread: set by the
    /// upload's parser for the one call it makes (serde has no other way to
    /// hand a runtime limit to a field's deserializer).
    pub static MAX_EXAMPLES: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Error message of an examples list over [`MAX_EXAMPLES`].
pub const TOO_MANY_EXAMPLES: &str = "too many examples";

/// The examples of a JSON upload, one at a time: a body of many tiny examples
/// never becomes more than `training.max_examples` of them in memory.
fn bounded_examples<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of examples")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let max = MAX_EXAMPLES.with(std::cell::Cell::get);
            let mut examples = Vec::new();
            while let Some(example) = seq.next_element::<T>()? {
                if examples.len() == max {
                    return Err(serde::de::Error::custom(TOO_MANY_EXAMPLES));
                }
                examples.push(example);
            }
            Ok(examples)
        }
    }
    d.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// Query of `POST /heads` when the body is CSV or JSONL.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateHeadQuery {
    /// Head name (required with a CSV or JSONL body).
    pub name: Option<String>,
    pub replace: Option<bool>,
    pub description: Option<String>,
    pub pooling: Option<String>,
    /// Semicolon-separated hidden-state options, e.g. `-1;concat(-2,-1)`.
    pub layers: Option<String>,
    /// Comma-separated, e.g. `1,10,100`.
    pub alphas: Option<String>,
    pub cv_folds: Option<usize>,
    pub test_fraction: Option<f64>,
    #[serde(default, deserialize_with = "probability")]
    pub min_probability: Option<f32>,
    /// `none`, `balanced`, `auto`, or `label:weight` pairs separated by `;`.
    pub class_weight: Option<String>,
    /// Several labels per row, separated in the label cell by `label_separator` (`|`).
    pub multi_label: Option<bool>,
    pub label_separator: Option<String>,
    pub alpha_grid: Option<usize>,
    pub time_budget_s: Option<f64>,
}

/// `POST /heads/{name}/evaluate` with a JSON body. A CSV body has columns
/// `text`, `label` and one per existing classifier (its predicted label for
/// the row); a JSONL row is `{"text", "label", "predictions": {...}}`; `compare` goes in the query.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// Labelled texts, at most `training.max_examples`.
    #[serde(deserialize_with = "bounded_examples")]
    pub examples: Vec<EvaluationExample>,
    /// Other served heads with the same labels, evaluated on the same texts (at most 8).
    #[serde(default)]
    #[schema(example = json!(["sst2"]))]
    pub compare: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationExample {
    pub text: String,
    /// A label of the head, by name or by index.
    pub label: LabelValue,
    /// What other classifiers answered for this text, by classifier name (a
    /// label, by name or index): every example names the same classifiers.
    #[serde(default)]
    #[schema(example = json!({"vader": "pos"}))]
    pub predictions: std::collections::BTreeMap<String, LabelValue>,
}

/// Query of `POST /heads/{name}/evaluate`: `compare` for a CSV or JSONL body.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EvaluateQuery {
    /// Comma-separated served heads to compare with (CSV or JSONL bodies).
    pub compare: Option<String>,
    /// `json` (the default) or `svg`: every classifier's confusion matrix, side by side.
    pub format: Option<String>,
}

/// One classifier's figures on the evaluated texts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SystemEvaluation {
    pub name: String,
    /// `head` (the one evaluated), `compared` (another served head) or
    /// `predictions` (a column of the file).
    pub role: String,
    /// The head's version (heads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Accuracy, macro-F1, per-label precision/recall/F1, confusion matrix.
    pub scores: crate::heads::scores::Scores,
    /// Expected calibration error of its probabilities (heads only; 10 bins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_error: Option<f64>,
}

/// Two classifiers on the same texts, with McNemar's test.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PairComparison {
    pub a: String,
    pub b: String,
    /// Accuracy of b minus accuracy of a.
    pub accuracy_difference: f64,
    #[serde(flatten)]
    pub test: crate::heads::scores::McNemar,
}

/// `POST /heads/{name}/evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EvaluateResponse {
    pub head: String,
    pub examples: usize,
    /// The head's labels: the order of every confusion matrix.
    pub labels: Vec<String>,
    /// The head first, then the compared heads, then the prediction columns.
    pub systems: Vec<SystemEvaluation>,
    /// Every pair of classifiers, in the order of `systems`.
    pub comparisons: Vec<PairComparison>,
    pub seconds: f64,
}

/// `GET /heads/{name}/suspects`: what to check before training again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SuspectsResponse {
    pub name: String,
    pub version: String,
    /// How the held-out probabilities were made (suspects need cross-validation;
    /// a head chosen on a validation split lists that split's rows).
    pub selection: String,
    pub suspects: Vec<crate::heads::logistic::Suspect>,
}

/// `202 Accepted` of `POST /heads`: follow `Location` (`GET /heads/{name}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HeadAccepted {
    pub name: String,
    pub location: String,
    pub job: crate::heads::jobs::JobStatus,
    /// What the examples leave uncertain (a label with too few held-out
    /// examples to evaluate); training goes on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// An optional probability, checked as the number sent: as an `f32` a value
/// just past 1 (1.0000000000000002) would round into range.
fn probability<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f32>, D::Error> {
    use serde::de::Error;
    match Option::<f64>::deserialize(deserializer)? {
        Some(p) if (0.0..=1.0).contains(&p) => Ok(Some(p as f32)),
        Some(p) => Err(D::Error::custom(format!("min_probability must be between 0 and 1, got {p}"))),
        None => Ok(None),
    }
}

/// An optional nested object, refused in serde's other form of a struct (a list).
fn object<'de, D: serde::Deserializer<'de>, T: serde::de::DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => serde_json::from_value(v).map(Some).map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!("expected an object, found {}", json_type(&other)))),
    }
}

/// An optional whole number written as JSON allows (`8` or `8.0`, as JSON
/// Schema's `integer` does); values past `usize` saturate.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else { return Ok(None) };
    if let Some(n) = number.as_u64() {
        return Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)));
    }
    match number.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 => {
            Ok(Some(if f >= usize::MAX as f64 { usize::MAX } else { f as usize }))
        }
        _ => Err(D::Error::custom(format!("expected a whole number of at least 0, got {number}"))),
    }
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

// Text Embeddings Inference (TEI)'s wire format, served under /tei (http/tei.rs).

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
