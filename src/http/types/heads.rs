//! The heads' bodies: summaries and details, creation (examples and
//! training options), evaluation, suspects.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::fields::*;

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
// Read into `config::TrainingOptions`, as every door is.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TrainingOptions)]
pub struct TrainingOptionsInput {
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
    /// At most `training.max_examples` (413 past it, counted before any is kept).
    pub examples: Vec<ExampleInput>,
    /// Train a new version of an existing head (it keeps serving until the new one is ready).
    #[serde(default)]
    pub replace: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub options: TrainingOptionsInput,
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
