//! What a head file records beside the weights: the encoder it was trained
//! on, how it was trained (the search's candidates, choice, label weights,
//! suspects, calibration), the graphs compared, and its held-out figures.
//! Stored inside `LogisticHead` (`logistic.rs`), which re-exports these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::scores::{MultiLabelScores, Scores};
use crate::layers::LayerSelection;
use crate::model::ModelInfo;
use crate::pooling::FeaturePooling;

use super::logistic::{LogisticHead, Selection};

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
