//! The logistic-regression head as served and stored: its file format
//! (`<heads_dir>/<name>.json`, checksummed, validated when read), the record
//! of how it was trained, and class probabilities for one feature vector.
//! How a head is trained is in `search/`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scores::{expected_calibration_error, MultiLabelScores, Scores, CALIBRATION_BINS};
use crate::atomic_file::write_atomic;
use crate::layers::LayerSelection;
use crate::model::ModelInfo;
use crate::pooling::{argmax, sigmoid, softmax, FeaturePooling, Rows};

pub const FORMAT_VERSION: u32 = 1;

/// Largest head file read: a head for 768-wide features, cls_mean pooling and
/// 1,000 labels is about 40 MB of JSON.
pub const MAX_HEAD_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderStamp {
    pub name: String,
    pub fingerprint: String,
    pub hidden_size: usize,
    pub max_tokens: usize,
    /// The encoder's transformer layers when its export returns every layer's
    /// hidden states (absent: the last only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
}

impl EncoderStamp {
    pub fn of(info: &ModelInfo) -> Self {
        EncoderStamp {
            name: info.name.clone(),
            fingerprint: info.fingerprint.clone(),
            hidden_size: info.hidden_size,
            max_tokens: info.max_tokens,
            layers: info.layers,
        }
    }

    /// Index of the last hidden state.
    pub fn last_layer(&self) -> usize {
        self.layers.unwrap_or(0)
    }
}

/// One point of the hyper-parameter search and how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub pooling: FeaturePooling,
    /// Hidden states pooled (absent: the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerSelection>,
    pub alpha: f64,
    pub accuracy: f64,
    pub log_loss: f64,
    /// Label weights of its training rows (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighting: Option<Weighting>,
    /// Macro-F1 of its held-out predictions, every fold's together (absent in
    /// heads trained before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// Multi-label heads: micro-F1 of its held-out decisions at 0.5 (`accuracy`
    /// is then the share of texts whose whole label set was right).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_f1: Option<f64>,
}

/// How a candidate's training rows were weighted by label (`options.class_weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// scikit-learn's `"balanced"`: label c weighs n / (labels x n_c).
    Balanced,
    /// The weights the request gave per label.
    Given,
}

/// The metric the search chooses a candidate by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectBy {
    Accuracy,
    /// When labels are weighted: accuracy rewards ignoring a rare label, which
    /// is what weighting is asked to undo.
    MacroF1,
    /// Multi-label heads: every (text, label) decision at a threshold of 0.5.
    MicroF1,
}

/// The label weights the chosen candidate was fitted with. The solver has no
/// per-row weights, so a weight is applied as whole repeats of its label's
/// rows in the fitted part (never the held-out part): `repeats` are those
/// counts, within 5% of the ratios of `weights` (scaled by up to 10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassWeights {
    pub weighting: Weighting,
    /// Per label, in label order.
    pub weights: Vec<f64>,
    pub repeats: Vec<usize>,
}

/// What makes a head multi-label: each label's decision threshold, chosen on
/// the cross-validation's held-out probabilities for that label's F1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabel {
    pub thresholds: Vec<f32>,
}

/// Held-out macro-F1 of the best candidate with and without label weights
/// (`class_weight: "auto"`): what weighting did on this data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightingEffect {
    pub unweighted_macro_f1: f64,
    pub weighted_macro_f1: f64,
}

/// A training example whose cross-validated probability for its own label is
/// among the lowest: its label may be wrong (`GET /heads/{name}/suspects`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suspect {
    /// `upload` (`row`: the example's position in the upload, from 0) or the
    /// data set's split (`row`: its position in that split's file).
    pub source: String,
    pub row: usize,
    pub text: String,
    pub label: String,
    /// The label the held-out fit gave it.
    pub predicted: String,
    /// The held-out probability of `label`, temperature applied.
    pub probability: f64,
}

impl Candidate {
    /// Features it reads, for an encoder of `hidden` dimensions.
    pub fn width(&self, hidden: usize) -> usize {
        self.pooling.width(self.layers.as_ref().map_or(hidden, |l| l.width(hidden)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub data_dir: String,
    /// sha256 of each split file used, by split name.
    pub data_fingerprints: BTreeMap<String, String>,
    /// Texts the final model was fitted on.
    pub train_examples: usize,
    /// How pooling and alpha were chosen.
    pub selection: Selection,
    pub max_iterations: u64,
    pub alpha: f64,
    /// Held-out accuracy of the chosen candidate during the search.
    pub held_out_accuracy: f64,
    pub candidates: Vec<Candidate>,
    pub seconds: f64,
    /// Heads created over the API (`POST /heads`): where the examples came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadRecord>,
    /// The temperature search on the chosen candidate's held-out predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// What candidates were chosen by (absent: accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_by: Option<SelectBy>,
    /// Label weights of the chosen candidate (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
    /// With `class_weight: "auto"`: held-out macro-F1 with and without weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighting_effect: Option<WeightingEffect>,
    /// With `time_budget_s`: how much of the search it allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<SearchBudget>,
    /// Where `classify.model_file` names a second graph of the encoder: the
    /// head trained on each graph, and which one serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_choice: Option<GraphChoice>,
}

/// Held-out accuracy a head may lose on the heads' own graph (e.g. int8)
/// against the exact one before it is served on the exact one instead.
pub const MAX_GRAPH_ACCURACY_DROP: f64 = 0.005;

/// The head trained on the heads' graph and on the exact one, compared on
/// held-out accuracy (each from its own search): the heads' graph serves
/// unless it loses more than [`MAX_GRAPH_ACCURACY_DROP`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphChoice {
    /// File of the graph the head is served on.
    pub served_on: String,
    /// The heads' graph (`classify.model_file`) and its head's held-out accuracy.
    pub heads_graph: String,
    pub heads_graph_accuracy: f64,
    /// The exact graph (`model.file`) and its head's held-out accuracy.
    pub exact_graph: String,
    pub exact_graph_accuracy: f64,
}

impl GraphChoice {
    pub fn between(heads_graph: &str, heads_graph_accuracy: f64, exact_graph: &str, exact_graph_accuracy: f64) -> Self {
        let keeps = heads_graph_accuracy >= exact_graph_accuracy - MAX_GRAPH_ACCURACY_DROP;
        GraphChoice {
            served_on: if keeps { heads_graph } else { exact_graph }.to_string(),
            heads_graph: heads_graph.to_string(),
            heads_graph_accuracy,
            exact_graph: exact_graph.to_string(),
            exact_graph_accuracy,
        }
    }

    pub fn on_heads_graph(&self) -> bool {
        self.served_on == self.heads_graph
    }

    /// The same head trained on the heads' graph (`heads_graph`) and on the
    /// exact one, compared: both stamped with the choice (and it logged),
    /// returned as (served, other).
    pub fn settle(
        heads_graph: &str,
        mut on_heads_graph: LogisticHead,
        exact_graph: &str,
        mut on_exact_graph: LogisticHead,
    ) -> (LogisticHead, LogisticHead) {
        let choice = GraphChoice::between(
            heads_graph,
            on_heads_graph.training.held_out_accuracy,
            exact_graph,
            on_exact_graph.training.held_out_accuracy,
        );
        tracing::info!(
            head = %on_heads_graph.name, served_on = %choice.served_on, reason = %choice.reason(),
            "graph chosen for the head"
        );
        on_heads_graph.training.graph_choice = Some(choice.clone());
        on_exact_graph.training.graph_choice = Some(choice.clone());
        if choice.on_heads_graph() {
            (on_heads_graph, on_exact_graph)
        } else {
            (on_exact_graph, on_heads_graph)
        }
    }

    /// Why it serves where it does, for `GET /heads`.
    pub fn reason(&self) -> String {
        let drop = 100.0 * (self.exact_graph_accuracy - self.heads_graph_accuracy);
        let change =
            if drop >= 0.0 { format!("{drop:.2} points lower") } else { format!("{:.2} points higher", -drop) };
        let verdict = if self.on_heads_graph() { "within" } else { "more than" };
        format!(
            "held-out accuracy {:.4} on {} and {:.4} on {}: {change}, {verdict} the {:.1} allowed",
            self.heads_graph_accuracy,
            self.heads_graph,
            self.exact_graph_accuracy,
            self.exact_graph,
            100.0 * MAX_GRAPH_ACCURACY_DROP
        )
    }
}

/// What a search's time budget left in and out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchBudget {
    pub seconds: f64,
    /// (Layers, pooling) sets whose every fold and alpha was scored.
    pub feature_sets_searched: usize,
    /// Sets not finished when the budget ended, left out of the choice.
    pub feature_sets_left_out: usize,
}

/// Temperature scaling fitted during the search (see `search::fit_temperature`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The temperature that minimises the held-out log-loss.
    pub fitted_temperature: f64,
    /// Mean log-loss of the cross-validation's held-out predictions, as fitted and scaled.
    pub held_out_log_loss: f64,
    pub held_out_log_loss_scaled: f64,
    /// The temperature the head uses: `fitted_temperature` when it lowered the
    /// log-loss by at least 1%, else none (1).
    pub temperature: Option<f64>,
}

/// How an uploaded head's examples were used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// `x-request-id` of the upload.
    pub request_id: String,
    /// Examples per label: all, fitted on (train), held out (test).
    pub label_counts: Vec<LabelCount>,
    /// Where the held-out part came from: `"upload"` (rows marked `test`), or
    /// `"stratified split of <fraction>"` made by the service.
    pub test_source: String,
    /// What the upload's label counts leave uncertain (a label too rare to evaluate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LabelCount {
    pub label: String,
    pub train: usize,
    pub test: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HeadMetrics {
    pub train: Option<Scores>,
    pub validation: Option<Scores>,
    pub test: Option<Scores>,
    /// How well the probabilities match the frequencies on the test (held-out) part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_calibration: Option<CalibrationError>,
    /// A multi-label head's figures on its training rows and its held-out part
    /// (`train` and `test` are then absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label_train: Option<MultiLabelScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label_test: Option<MultiLabelScores>,
}

/// Expected calibration error: texts binned by the top label's probability
/// (10 equal-width bins), the mean over bins, weighted by their share of
/// texts, of |accuracy - mean probability|. 0 is perfectly calibrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationError {
    pub ece: f64,
    /// The same without the head's temperature (equal when it has none).
    pub ece_without_temperature: f64,
    pub bins: usize,
}

/// A trained head, exactly as stored in `<heads_dir>/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticHead {
    pub format_version: u32,
    pub kind: String,
    pub name: String,
    pub labels: Vec<String>,
    pub pooling: FeaturePooling,
    /// Hidden states pooled, combined as said (absent: the last, as every head
    /// before layers existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerSelection>,
    pub encoder: EncoderStamp,
    pub training: TrainingRecord,
    pub metrics: HeadMetrics,
    pub created_unix: u64,
    /// Free text given when the head was created over the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Probabilities are softmax(logits / temperature); none: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// `/classify` answers `abstain` below this top probability unless the
    /// request says otherwise (set when the head was created over the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_probability: Option<f32>,
    /// Standardisation: feature j becomes (x_j - mean_j) / scale_j.
    pub scaler_mean: Vec<f32>,
    pub scaler_scale: Vec<f32>,
    /// `weights[class][feature]` on standardised features.
    pub weights: Vec<Vec<f32>>,
    pub intercept: Vec<f32>,
    /// Training examples whose labels look wrong, lowest probability first
    /// (cross-validated searches; absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspects: Vec<Suspect>,
    /// A multi-label head: one logistic regression per label (one-vs-rest),
    /// each label's probability its own sigmoid, not a softmax over labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabel>,
    /// A pair head: it reads [u, v, |u - v|, u * v] of a text pair's pooled
    /// vectors (`pooling::pair_features`), four times the pooled width.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pair: bool,
    /// sha256 of this file's JSON with `checksum` empty.
    pub checksum: String,
}

/// Per-label parts of a logistic head's scores for one text: see
/// [`LogisticHead::explain`]. Every part is in label order; the parts sum to
/// the scores (logits).
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    /// Per token (word pieces, [CLS] and [SEP] included), per label. None for
    /// `cls` pooling, where no exact per-token split exists.
    pub tokens: Option<Vec<Vec<f32>>>,
    /// The pooled-[CLS] part (`cls` and `cls_mean` pooling).
    pub cls: Option<Vec<f32>>,
    /// The constant part: intercept minus the scaler's mean, weighted.
    pub bias: Vec<f32>,
}

impl Attribution {
    /// Each label's score: the sum of every part.
    pub fn scores(&self) -> Vec<f32> {
        let mut scores = self.bias.clone();
        for (c, score) in scores.iter_mut().enumerate() {
            *score += self.cls.as_ref().map_or(0.0, |v| v[c]);
            *score += self.tokens.as_ref().map_or(0.0, |t| t.iter().map(|r| r[c]).sum());
        }
        scores
    }
}

/// How the pooling and regularisation are chosen, and on what the final model is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// k-fold cross-validation over train and validation together (folds by
    /// position modulo k, stratified for files sorted by label); the final
    /// model is fitted on both. Every labelled non-test text is used for
    /// choosing and for fitting, and 9,000 held-out predictions judge a
    /// candidate instead of 1,000.
    CrossValidation { folds: usize },
    /// Fit on train, score on the validation split; the final model is the train fit.
    Validation,
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::CrossValidation { folds } => write!(f, "{folds}-fold cross-validation on train+validation"),
            Selection::Validation => f.write_str("validation split"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeadFileError {
    #[error("head file {path} cannot be read: {message}")]
    Unreadable { path: String, message: String },
    #[error("head file {path} is corrupt or truncated: {message}")]
    Corrupt { path: String, message: String },
    #[error(
        "head file {path} was trained on encoder {trained_name} ({trained_fp}…), but the service runs {running_name} \
         ({running_fp}…): retrain it with `distilserve train --head {head}`"
    )]
    WrongEncoder {
        path: String,
        head: String,
        trained_name: String,
        trained_fp: String,
        running_name: String,
        running_fp: String,
    },
}

impl LogisticHead {
    /// Sets the checksum over everything else (done when a head is built or saved).
    pub fn sealed(mut self) -> Self {
        self.seal();
        self
    }

    pub fn seal(&mut self) {
        self.checksum = self.compute_checksum();
    }

    fn compute_checksum(&self) -> String {
        let mut unsigned = self.clone();
        unsigned.checksum = String::new();
        let bytes = serde_json::to_vec(&unsigned).expect("serializable head");
        format!("{:x}", Sha256::digest(&bytes))
    }

    pub fn features(&self) -> usize {
        self.scaler_mean.len()
    }

    /// Class probabilities for one feature vector, in label order.
    pub fn probabilities(&self, x: &[f32]) -> Vec<f32> {
        let z: Vec<f64> = self
            .weights
            .iter()
            .zip(&self.intercept)
            .map(|(w, b)| {
                let mut acc = f64::from(*b);
                for j in 0..x.len() {
                    let standard = (f64::from(x[j]) - f64::from(self.scaler_mean[j])) / f64::from(self.scaler_scale[j]);
                    acc += f64::from(w[j]) * standard;
                }
                acc / self.temperature.unwrap_or(1.0)
            })
            .collect();
        if self.multi_label.is_some() {
            return z.into_iter().map(|z| sigmoid(z) as f32).collect();
        }
        softmax(&z).into_iter().map(|p| p as f32).collect()
    }

    /// A multi-label head's labels for `probabilities`: those at or over their
    /// threshold (none is an answer too). For a single-label head, the most probable.
    pub fn label_set(&self, probabilities: &[f32]) -> Vec<usize> {
        match &self.multi_label {
            Some(m) => (0..probabilities.len()).filter(|&l| probabilities[l] >= m.thresholds[l]).collect(),
            None => vec![argmax(probabilities.iter().copied())],
        }
    }

    /// Predicted label index for each row of `x`.
    pub fn predict(&self, x: &Array2<f32>) -> Vec<usize> {
        x.rows()
            .into_iter()
            .map(|row| {
                // Rows of a concatenated array need not be contiguous: copy.
                let x: Vec<f32> = row.iter().copied().collect();
                argmax(self.probabilities(&x))
            })
            .collect()
    }

    /// Each token's share of each label's score (the logit before softmax).
    /// The score is linear in the pooled features: z_c = b_c + sum_j w_cj (f_j - mu_j) / s_j.
    /// With mean pooling f is the mean of the token vectors, so token t adds
    /// (1/n) sum_j (w_cj / s_j) h_tj, exactly; what no token carries is the
    /// constant `bias` (b_c - sum_j w_cj mu_j / s_j) and, for `cls_mean`, the
    /// pooled-[CLS] half (`cls`). With `cls` pooling the score depends on the
    /// [CLS] state alone, which attends to every token: there is no exact
    /// per-token split, and `tokens` is None.
    pub fn explain(&self, rows: &Rows) -> Attribution {
        // Width of one token row as the head reads it (several layers concatenated are wider).
        let hidden = rows.cols;
        let k = self.labels.len();
        // a_cj = w_cj / (s_j T): the weight of a raw feature, at the head's temperature.
        let t = self.temperature.unwrap_or(1.0);
        let a: Vec<Vec<f64>> = self
            .weights
            .iter()
            .map(|w| w.iter().zip(&self.scaler_scale).map(|(w, s)| f64::from(*w) / f64::from(*s) / t).collect())
            .collect();
        let bias: Vec<f64> = (0..k)
            .map(|c| {
                f64::from(self.intercept[c]) / t
                    - a[c].iter().zip(&self.scaler_mean).map(|(a, m)| a * f64::from(*m)).sum::<f64>()
            })
            .collect();
        let dot = |c: usize, offset: usize, v: &[f32]| -> f64 {
            v.iter().zip(&a[c][offset..offset + hidden]).map(|(x, a)| f64::from(*x) * a).sum()
        };
        let n = rows.rows.max(1) as f64;
        let per_token = |offset: usize| -> Vec<Vec<f32>> {
            (0..rows.rows).map(|t| (0..k).map(|c| (dot(c, offset, rows.row(t)) / n) as f32).collect()).collect()
        };
        let cls_part = || -> Vec<f32> { (0..k).map(|c| dot(c, 0, rows.row(0)) as f32).collect() };
        let (tokens, cls) = match self.pooling {
            FeaturePooling::Mean => (Some(per_token(0)), None),
            FeaturePooling::ClsMean => (Some(per_token(hidden)), Some(cls_part())),
            FeaturePooling::Cls => (None, Some(cls_part())),
        };
        Attribution { tokens, cls, bias: bias.into_iter().map(|b| b as f32).collect() }
    }

    /// [`CalibrationError`] of this head on rows `x` with true labels `truth`.
    pub fn calibration_error(&self, x: &Array2<f32>, truth: &[usize]) -> CalibrationError {
        let ece = |head: &LogisticHead| {
            let rows = x.rows().into_iter().map(|row| head.probabilities(&row.iter().copied().collect::<Vec<_>>()));
            expected_calibration_error(rows, truth)
        };
        let mut plain = self.clone();
        plain.temperature = None;
        CalibrationError { ece: ece(self), ece_without_temperature: ece(&plain), bins: CALIBRATION_BINS }
    }

    pub fn save(&mut self, path: &Path) -> anyhow::Result<()> {
        self.checksum = self.compute_checksum();
        let json = serde_json::to_vec_pretty(self)?;
        write_atomic(path, &json)
    }

    /// Reads and validates a head file: JSON, format version, checksum,
    /// consistent dimensions, finite numbers.
    pub fn load(path: &Path) -> Result<LogisticHead, HeadFileError> {
        let shown = path.display().to_string();
        let unreadable = |message: String| HeadFileError::Unreadable { path: shown.clone(), message };
        // Links are followed (Kubernetes mounts files through them); what they
        // lead to must be a plain file: a FIFO or a device would block or never end.
        let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
        if !meta.file_type().is_file() {
            return Err(unreadable("not a regular file (folders, FIFOs and devices are refused)".into()));
        }
        if meta.len() > MAX_HEAD_FILE_BYTES {
            return Err(unreadable(format!(
                "{} bytes, more than a head file may have ({MAX_HEAD_FILE_BYTES})",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        Self::parse(&bytes, &shown)
    }

    /// Validates the bytes of a head file; `shown` names it in errors.
    pub fn parse(bytes: &[u8], shown: &str) -> Result<LogisticHead, HeadFileError> {
        let corrupt = |message: String| HeadFileError::Corrupt { path: shown.to_string(), message };
        let head: LogisticHead =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a valid head file ({e})")))?;
        if head.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format_version {} is not supported (expected {FORMAT_VERSION})",
                head.format_version
            )));
        }
        if head.kind != "logistic" {
            return Err(corrupt(format!("kind {:?} is not a logistic head", head.kind)));
        }
        if head.checksum != head.compute_checksum() {
            return Err(corrupt("checksum mismatch: the file was altered or damaged".into()));
        }
        head.validate_shape().map_err(|e| corrupt(e.to_string()))?;
        Ok(head)
    }

    /// Width of a token row as the head reads it: the hidden size, or wider
    /// for several layers concatenated.
    pub fn row_width(&self, hidden: usize) -> usize {
        self.layers.as_ref().map_or(hidden, |l| l.width(hidden))
    }

    /// Label of the hidden states it reads, e.g. `-1` or `mean(-4,-3,-2,-1)`.
    pub fn layers_label(&self) -> String {
        self.layers.as_ref().map_or_else(|| "-1".to_string(), |l| l.describe(self.encoder.last_layer()))
    }

    fn validate_shape(&self) -> anyhow::Result<()> {
        let k = self.labels.len();
        let pooled = self.pooling.width(self.row_width(self.encoder.hidden_size));
        let width = if self.pair { 4 * pooled } else { pooled };
        if let Some(layers) = &self.layers {
            let last = self.encoder.last_layer();
            if layers.indices.is_empty() || layers.indices.iter().any(|&i| i > last) {
                bail!("layers {:?} do not exist in an encoder of {last} layers", layers.indices);
            }
        }
        if k < 2 {
            bail!("{k} labels; a head needs at least 2");
        }
        if self.weights.len() != k || self.intercept.len() != k {
            bail!("{} weight rows and {} intercepts for {k} labels", self.weights.len(), self.intercept.len());
        }
        if self.scaler_mean.len() != width || self.scaler_scale.len() != width {
            bail!(
                "scaler has {} values, {} pooling of {} needs {width}",
                self.scaler_mean.len(),
                self.pooling,
                self.encoder.hidden_size
            );
        }
        if self.weights.iter().any(|w| w.len() != width) {
            bail!("a weight row does not have {width} values");
        }
        let all =
            self.weights.iter().flatten().chain(&self.intercept).chain(&self.scaler_mean).chain(&self.scaler_scale);
        if all.clone().any(|v| !v.is_finite()) {
            bail!("non-finite numbers in the parameters");
        }
        if self.scaler_scale.iter().any(|&s| s <= 0.0) {
            bail!("non-positive scale in the scaler");
        }
        if let Some(m) = &self.multi_label {
            if m.thresholds.len() != k || m.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
                bail!("a multi-label head needs {k} thresholds between 0 and 1, has {:?}", m.thresholds);
            }
        }
        Ok(())
    }

    /// Refuses a head trained on another encoder, or whose widths do not fit
    /// the running one (a file whose checksum was recomputed after an edit).
    pub fn check_encoder(&self, path: &Path, info: &ModelInfo) -> Result<(), HeadFileError> {
        if self.encoder.fingerprint != info.fingerprint || self.encoder.max_tokens != info.max_tokens {
            return Err(HeadFileError::WrongEncoder {
                path: path.display().to_string(),
                head: self.name.clone(),
                trained_name: self.encoder.name.clone(),
                trained_fp: self.encoder.fingerprint.chars().take(12).collect(),
                running_name: info.name.clone(),
                running_fp: info.fingerprint.chars().take(12).collect(),
            });
        }
        let width = self.pooling.width(self.row_width(info.hidden_size));
        let layers_fit = self.layers.as_ref().is_none_or(|l| l.indices.iter().all(|&i| i <= info.last_layer()));
        if self.encoder.hidden_size != info.hidden_size || self.features() != width || !layers_fit {
            return Err(HeadFileError::Corrupt {
                path: path.display().to_string(),
                message: format!(
                    "the head takes {} features ({} pooling of hidden size {}), the encoder gives {width} \
                     (hidden size {})",
                    self.features(),
                    self.pooling,
                    self.encoder.hidden_size,
                    info.hidden_size
                ),
            });
        }
        Ok(())
    }
}

/// Path of a head's file (`<dir>/<name>.json`); a name that is no
/// [`HeadName`](crate::config::HeadName) is refused, so it cannot leave `dir`.
pub fn head_path(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(crate::config::HeadName::parse(name)?.file_in(dir, ".json"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_head_stays_on_the_heads_graph_unless_it_loses_more_than_half_a_point() {
        // MiniLM's default head, measured: int8 per channel (MatMul only) and the quantiser's defaults.
        let kept = GraphChoice::between("model.int8.onnx", 0.7818, "model.onnx", 0.7856);
        assert!(kept.on_heads_graph() && kept.served_on == "model.int8.onnx");
        assert!(kept.reason().contains("0.38 points lower, within the 0.5 allowed"), "{}", kept.reason());
        let back = GraphChoice::between("model.int8.onnx", 0.7779, "model.onnx", 0.7856);
        assert!(!back.on_heads_graph() && back.served_on == "model.onnx");
        assert!(back.reason().contains("0.77 points lower, more than the 0.5 allowed"), "{}", back.reason());
        let better = GraphChoice::between("model.int8.onnx", 0.80, "model.onnx", 0.79);
        assert!(better.on_heads_graph(), "a gain keeps it too");
        assert!(better.reason().contains("1.00 points higher"), "{}", better.reason());
    }

    /// A valid two-label head over 2-wide mean features (unsealed).
    pub(crate) fn tiny_head(name: &str) -> LogisticHead {
        LogisticHead {
            format_version: FORMAT_VERSION,
            kind: "logistic".into(),
            name: name.into(),
            labels: vec!["a".into(), "b".into()],
            pooling: FeaturePooling::Mean,
            encoder: EncoderStamp {
                name: "tiny".into(),
                fingerprint: "f".repeat(64),
                hidden_size: 2,
                max_tokens: 8,
                layers: None,
            },
            layers: None,
            training: TrainingRecord {
                data_dir: "test".into(),
                data_fingerprints: BTreeMap::new(),
                train_examples: 4,
                selection: Selection::CrossValidation { folds: 2 },
                max_iterations: 10,
                alpha: 1.0,
                held_out_accuracy: 1.0,
                candidates: Vec::new(),
                seconds: 0.0,
                upload: None,
                calibration: None,
                select_by: None,
                class_weights: None,
                weighting_effect: None,
                budget: None,
                graph_choice: None,
            },
            metrics: HeadMetrics::default(),
            created_unix: 1,
            description: None,
            temperature: None,
            min_probability: None,
            scaler_mean: vec![0.0, 0.0],
            scaler_scale: vec![1.0, 1.0],
            weights: vec![vec![1.0, -1.0], vec![-1.0, 1.0]],
            intercept: vec![0.0, 0.0],
            suspects: Vec::new(),
            multi_label: None,
            pair: false,
            checksum: String::new(),
        }
    }

    #[test]
    fn token_parts_plus_cls_and_bias_sum_to_the_logits() {
        let rows = Rows { rows: 3, cols: 2, data: vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5] };
        for pooling in FeaturePooling::ALL {
            let mut head = tiny_head("t");
            head.pooling = pooling;
            let width = pooling.width(2);
            head.scaler_mean = (0..width).map(|j| 0.1 * j as f32).collect();
            head.scaler_scale = (0..width).map(|j| 1.0 + j as f32).collect();
            head.weights =
                vec![(0..width).map(|j| j as f32 - 1.0).collect(), (0..width).map(|j| 0.5 - j as f32).collect()];
            head.intercept = vec![0.3, -0.2];
            let explained = head.explain(&rows);
            let p = head.probabilities(&pooling.features(&rows));
            let mut logits: Vec<f64> = explained.bias.iter().map(|&b| f64::from(b)).collect();
            for (c, l) in logits.iter_mut().enumerate() {
                *l += explained.cls.as_ref().map_or(0.0, |v| f64::from(v[c]));
                *l += explained.tokens.as_ref().map_or(0.0, |t| t.iter().map(|r| f64::from(r[c])).sum());
            }
            let from_parts = softmax(&logits);
            for (a, b) in p.iter().zip(&from_parts) {
                assert!((f64::from(*a) - b).abs() < 1e-5, "{pooling}: {p:?} vs {from_parts:?}");
            }
            assert_eq!(explained.tokens.is_some(), pooling != FeaturePooling::Cls);
        }
    }

    #[test]
    fn a_sealed_head_round_trips_and_an_edit_breaks_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let mut head = tiny_head("t");
        head.save(&path).unwrap();
        assert_eq!(LogisticHead::load(&path).unwrap(), head);
        let edited = std::fs::read_to_string(&path).unwrap().replace("\"created_unix\": 1", "\"created_unix\": 2");
        std::fs::write(&path, edited).unwrap();
        assert!(LogisticHead::load(&path).unwrap_err().to_string().contains("checksum"));
    }
}
