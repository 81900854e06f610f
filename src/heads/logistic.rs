//! The logistic-regression head as served and stored: its file format
//! (`<heads_dir>/<name>.json`, checksummed, validated when read) and class
//! probabilities for one feature vector. The record of how it was trained is
//! in `record.rs` (re-exported here); how a head is trained, in `search/`.

use std::path::Path;

use anyhow::bail;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scores::{expected_calibration_error, CALIBRATION_BINS};
use crate::atomic_file::write_atomic;
use crate::layers::LayerSelection;
use crate::model::ModelInfo;
use crate::pooling::{argmax, sigmoid, softmax, FeaturePooling, Rows};

pub use super::record::*;

pub const FORMAT_VERSION: u32 = 1;

/// Largest head file read: a head for 768-wide features, cls_mean pooling and
/// 1,000 labels is about 40 MB of JSON.
pub const MAX_HEAD_FILE_BYTES: u64 = 64 << 20;

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

    /// Features the head reads from an encoder of `hidden` width: the pooled
    /// vector, or for a pair head four of them ([`crate::pooling::pair_features`]).
    pub fn feature_width(&self, hidden: usize) -> usize {
        let pooled = self.pooling.width(self.row_width(hidden));
        if self.pair {
            4 * pooled
        } else {
            pooled
        }
    }

    fn validate_shape(&self) -> anyhow::Result<()> {
        let k = self.labels.len();
        let width = self.feature_width(self.encoder.hidden_size);
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
        let width = self.feature_width(info.hidden_size);
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
    use std::collections::BTreeMap;

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
