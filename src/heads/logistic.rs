//! The logistic-regression head: training on pooled features with linfa
//! (multinomial, so two classes or many alike), standardised inputs,
//! regularisation and pooling chosen on the validation split (or by 3-fold
//! cross-validation when there is none), and its file format.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2, Axis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::metrics::Metrics;
use crate::features::{write_atomic, FeaturePooling, PooledFeatures};
use crate::model::ModelInfo;

pub const FORMAT_VERSION: u32 = 1;

/// The encoder a head was trained on; a head is only served by the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderStamp {
    pub name: String,
    pub fingerprint: String,
    pub hidden_size: usize,
    pub max_tokens: usize,
}

impl EncoderStamp {
    pub fn of(info: &ModelInfo) -> Self {
        EncoderStamp {
            name: info.name.clone(),
            fingerprint: info.fingerprint.clone(),
            hidden_size: info.hidden_size,
            max_tokens: info.max_tokens,
        }
    }
}

/// One point of the hyper-parameter search and how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub pooling: FeaturePooling,
    pub alpha: f64,
    pub accuracy: f64,
    pub log_loss: f64,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HeadMetrics {
    pub train: Option<Metrics>,
    pub validation: Option<Metrics>,
    pub test: Option<Metrics>,
}

/// A trained head, exactly as stored in `<heads_dir>/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticHead {
    pub format_version: u32,
    pub kind: String,
    pub name: String,
    pub labels: Vec<String>,
    pub pooling: FeaturePooling,
    pub encoder: EncoderStamp,
    pub training: TrainingRecord,
    pub metrics: HeadMetrics,
    pub created_unix: u64,
    /// Standardisation: feature j becomes (x_j - mean_j) / scale_j.
    pub scaler_mean: Vec<f32>,
    pub scaler_scale: Vec<f32>,
    /// `weights[class][feature]` on standardised features.
    pub weights: Vec<Vec<f32>>,
    pub intercept: Vec<f32>,
    /// sha256 of this file's JSON with `checksum` empty.
    pub checksum: String,
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub poolings: Vec<FeaturePooling>,
    pub alphas: Vec<f64>,
    pub max_iterations: u64,
    pub selection: Selection,
}

/// Labelled features of one split.
pub struct LabelledFeatures<'a> {
    pub features: &'a PooledFeatures,
    pub labels: &'a [usize],
}

struct Scaler {
    mean: Array1<f64>,
    scale: Array1<f64>,
}

impl Scaler {
    fn fit(x: &Array2<f64>) -> Scaler {
        let mean = x.mean_axis(Axis(0)).expect("rows");
        let scale = x.std_axis(Axis(0), 0.0).mapv(|s| if s > 1e-12 { s } else { 1.0 });
        Scaler { mean, scale }
    }

    fn apply(&self, x: &Array2<f64>) -> Array2<f64> {
        (x - &self.mean) / &self.scale
    }
}

struct Fitted {
    weights: Array2<f64>, // [features, classes]
    intercept: Array1<f64>,
}

impl Fitted {
    fn probabilities(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = x.dot(&self.weights) + &self.intercept;
        for mut row in z.rows_mut() {
            let max = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        }
        z
    }
}

fn to_f64(x: &Array2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

fn fit(x: &Array2<f64>, y: &[usize], classes: usize, alpha: f64, max_iterations: u64) -> anyhow::Result<Fitted> {
    let targets = Array1::from(y.to_vec());
    let dataset = Dataset::new(x.clone(), targets);
    let model = MultiLogisticRegression::default()
        .alpha(alpha)
        .max_iterations(max_iterations)
        .fit(&dataset)
        .map_err(|e| anyhow!("logistic regression failed: {e}"))?;
    // linfa orders columns by the classes it saw; put them in label order.
    let seen: Vec<usize> = model.classes().to_vec();
    if seen.len() != classes {
        let missing: Vec<usize> = (0..classes).filter(|c| !seen.contains(c)).collect();
        bail!("labels {missing:?} have no training examples");
    }
    let mut weights = Array2::zeros((x.ncols(), classes));
    let mut intercept = Array1::zeros(classes);
    for (col, &class) in seen.iter().enumerate() {
        weights.column_mut(class).assign(&model.params().column(col));
        intercept[class] = model.intercept()[col];
    }
    Ok(Fitted { weights, intercept })
}

fn score(fitted: &Fitted, x: &Array2<f64>, y: &[usize]) -> (f64, f64, Vec<usize>) {
    let p = fitted.probabilities(x);
    let mut correct = 0;
    let mut loss = 0.0;
    let mut predicted = Vec::with_capacity(y.len());
    for (row, &truth) in p.rows().into_iter().zip(y) {
        let best = argmax(row.iter().copied());
        correct += usize::from(best == truth);
        loss -= row[truth].max(1e-15).ln();
        predicted.push(best);
    }
    (correct as f64 / y.len() as f64, loss / y.len() as f64, predicted)
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    values.enumerate().fold((0, f64::NEG_INFINITY), |best, (i, v)| if v > best.1 { (i, v) } else { best }).0
}

fn select_rows(x: &Array2<f64>, rows: &[usize]) -> Array2<f64> {
    x.select(Axis(0), rows)
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

/// One model fit of the search: a candidate on one fold.
struct Task {
    pooling: usize,
    alpha: f64,
    fold: usize,
}

/// Runs `f` over `items` on every available core, keeping the order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(items.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> = items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                *results[i].lock().expect("result slot") = Some(f(item));
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().expect("result slot").expect("every item ran")).collect()
}

/// Picks the candidate with the best held-out accuracy (the metric the head
/// is judged by); ties go to the lower log-loss, then to fewer features.
fn choose(candidates: &[Candidate], hidden: usize) -> Candidate {
    candidates
        .iter()
        .max_by(|a, b| {
            a.accuracy
                .total_cmp(&b.accuracy)
                .then(b.log_loss.total_cmp(&a.log_loss))
                .then(b.pooling.width(hidden).cmp(&a.pooling.width(hidden)))
        })
        .expect("at least one candidate")
        .clone()
}

/// Trains a head: every (pooling, alpha) candidate is scored by `selection`,
/// one is chosen by [`choose`], and the final model is fitted (see
/// [`Selection`]). Deterministic for the same inputs.
#[allow(clippy::too_many_arguments)]
pub fn train(
    name: &str,
    labels: &[String],
    encoder: EncoderStamp,
    train: LabelledFeatures<'_>,
    validation: Option<LabelledFeatures<'_>>,
    config: &TrainConfig,
    data_dir: &str,
    data_fingerprints: BTreeMap<String, String>,
) -> anyhow::Result<LogisticHead> {
    if config.poolings.is_empty() || config.alphas.is_empty() {
        bail!("training needs at least one pooling and one alpha");
    }
    if let Some(bad) = config.alphas.iter().find(|a| !a.is_finite() || **a < 0.0) {
        bail!("alpha {bad} is not a finite non-negative number");
    }
    let started = Instant::now();
    let classes = labels.len();
    let hidden = encoder.hidden_size;
    let features = |set: &LabelledFeatures<'_>, pooling: FeaturePooling| to_f64(&set.features.get(pooling));

    // What candidates are fitted on and scored against, per pooling.
    let (fit_sets, score_sets, folds): (Vec<Array2<f64>>, Vec<Option<Array2<f64>>>, usize) = match config.selection {
        Selection::Validation => {
            let Some(v) = validation.as_ref() else {
                bail!("selection on the validation split, but the data set has none")
            };
            (
                config.poolings.iter().map(|&p| features(&train, p)).collect(),
                config.poolings.iter().map(|&p| Some(features(v, p))).collect(),
                1,
            )
        }
        Selection::CrossValidation { folds } => {
            let pooled = config
                .poolings
                .iter()
                .map(|&p| match validation.as_ref() {
                    Some(v) => ndarray::concatenate(Axis(0), &[features(&train, p).view(), features(v, p).view()])
                        .expect("same width"),
                    None => features(&train, p),
                })
                .collect::<Vec<_>>();
            (pooled, vec![None; config.poolings.len()], folds)
        }
    };
    let fit_labels: Vec<usize> = match (config.selection, validation.as_ref()) {
        (Selection::CrossValidation { .. }, Some(v)) => train.labels.iter().chain(v.labels).copied().collect(),
        _ => train.labels.to_vec(),
    };
    if let Selection::CrossValidation { folds } = config.selection {
        if folds < 2 || folds > fit_labels.len() {
            bail!("cross-validation needs 2 to {} folds, got {folds}", fit_labels.len());
        }
    }

    let tasks: Vec<Task> = (0..config.poolings.len())
        .flat_map(|pooling| {
            config.alphas.iter().flat_map(move |&alpha| (0..folds).map(move |fold| Task { pooling, alpha, fold }))
        })
        .collect();
    let scores = parallel_map(&tasks, |task| -> anyhow::Result<(f64, f64)> {
        let x = &fit_sets[task.pooling];
        let (fit_x, fit_y, score_x, score_y) = match (&score_sets[task.pooling], validation.as_ref()) {
            (Some(vx), Some(v)) => (x.clone(), fit_labels.clone(), vx.clone(), v.labels.to_vec()),
            _ => {
                let (held, kept): (Vec<usize>, Vec<usize>) =
                    (0..fit_labels.len()).partition(|i| i % folds == task.fold);
                (
                    select_rows(x, &kept),
                    kept.iter().map(|&i| fit_labels[i]).collect(),
                    select_rows(x, &held),
                    held.iter().map(|&i| fit_labels[i]).collect(),
                )
            }
        };
        let scaler = Scaler::fit(&fit_x);
        let fitted = fit(&scaler.apply(&fit_x), &fit_y, classes, task.alpha, config.max_iterations)?;
        let (accuracy, log_loss, _) = score(&fitted, &scaler.apply(&score_x), &score_y);
        Ok((accuracy, log_loss))
    });
    let mut candidates = Vec::new();
    for (chunk, task) in scores.chunks(folds).zip(tasks.iter().step_by(folds)) {
        let (mut accuracy, mut log_loss) = (0.0, 0.0);
        for result in chunk {
            let (a, l) = result.as_ref().map_err(|e| anyhow!("{e:#}"))?;
            accuracy += a / folds as f64;
            log_loss += l / folds as f64;
        }
        let pooling = config.poolings[task.pooling];
        tracing::info!(head = name, pooling = %pooling, alpha = task.alpha, accuracy, log_loss, "candidate scored");
        candidates.push(Candidate { pooling, alpha: task.alpha, accuracy, log_loss });
    }
    let best = choose(&candidates, hidden);

    let index = config.poolings.iter().position(|&p| p == best.pooling).expect("a searched pooling");
    let x = &fit_sets[index];
    let scaler = Scaler::fit(x);
    let fitted = fit(&scaler.apply(x), &fit_labels, classes, best.alpha, config.max_iterations)?;
    let (_, _, fit_pred) = score(&fitted, &scaler.apply(x), &fit_labels);
    // Held-out validation metrics exist only when validation was not fitted on.
    let validation_metrics = match (config.selection, validation.as_ref()) {
        (Selection::Validation, Some(v)) => {
            let (_, _, pred) = score(&fitted, &scaler.apply(&features(v, best.pooling)), v.labels);
            Some(Metrics::compute(labels, v.labels, &pred))
        }
        _ => None,
    };

    let mut head = LogisticHead {
        format_version: FORMAT_VERSION,
        kind: "logistic".into(),
        name: name.to_string(),
        labels: labels.to_vec(),
        pooling: best.pooling,
        encoder,
        training: TrainingRecord {
            data_dir: data_dir.to_string(),
            data_fingerprints,
            train_examples: fit_labels.len(),
            selection: config.selection,
            max_iterations: config.max_iterations,
            alpha: best.alpha,
            held_out_accuracy: best.accuracy,
            candidates,
            seconds: started.elapsed().as_secs_f64(),
        },
        metrics: HeadMetrics {
            train: Some(Metrics::compute(labels, &fit_labels, &fit_pred)),
            validation: validation_metrics,
            test: None,
        },
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        scaler_mean: scaler.mean.iter().map(|&v| v as f32).collect(),
        scaler_scale: scaler.scale.iter().map(|&v| v as f32).collect(),
        weights: (0..classes).map(|c| fitted.weights.column(c).iter().map(|&v| v as f32).collect()).collect(),
        intercept: fitted.intercept.iter().map(|&v| v as f32).collect(),
        checksum: String::new(),
    };
    head.checksum = head.compute_checksum();
    Ok(head)
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
                acc
            })
            .collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        exp.iter().map(|v| (v / sum) as f32).collect()
    }

    /// Predicted label index for each row of `x`.
    pub fn predict(&self, x: &Array2<f32>) -> Vec<usize> {
        x.rows()
            .into_iter()
            .map(|row| {
                // Rows of a concatenated array need not be contiguous: copy.
                let x: Vec<f32> = row.iter().copied().collect();
                argmax(self.probabilities(&x).into_iter().map(f64::from))
            })
            .collect()
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
        let bytes = std::fs::read(path)
            .map_err(|e| HeadFileError::Unreadable { path: shown.clone(), message: e.to_string() })?;
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

    fn validate_shape(&self) -> anyhow::Result<()> {
        let k = self.labels.len();
        let width = self.pooling.width(self.encoder.hidden_size);
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
        Ok(())
    }

    /// Refuses a head trained on another encoder.
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
        Ok(())
    }
}

/// Path of a head's file; `name` is checked so that it cannot leave `dir`.
pub fn head_path(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    validate_head_name(name)?;
    Ok(dir.join(format!("{name}.json")))
}

pub fn validate_head_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(anyhow!("invalid head name {name:?}: use 1-64 letters, digits, '_' or '-'"))
    }
}
