//! Training a logistic head on pooled features: linfa's multinomial logistic
//! regression on standardised inputs, every (pooling, alpha) candidate scored
//! as [`Selection`] says, the best one refitted. Deterministic for the same inputs.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2, Axis};

use super::logistic::{
    Calibration, Candidate, ClassWeights, EncoderStamp, HeadMetrics, LogisticHead, SearchBudget, SelectBy, Selection,
    Suspect, TrainingRecord, Weighting, WeightingEffect, FORMAT_VERSION,
};
use super::scores::{macro_f1, Scores};
use crate::features::PooledFeatures;
use crate::layers::LayerSelection;
use crate::pooling::{argmax, softmax, FeaturePooling};

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub poolings: Vec<FeaturePooling>,
    /// Hidden states tried (`None`: the last), each with every pooling.
    pub layer_options: Vec<Option<LayerSelection>>,
    pub alphas: Vec<f64>,
    pub max_iterations: u64,
    pub selection: Selection,
    /// Told (model fits done, fits in all) during the search.
    pub progress: Option<crate::features::ProgressFn>,
    /// Threads fitting candidates at once; None: every core.
    pub threads: Option<usize>,
    /// Label weights tried; any but `None` chooses candidates by macro-F1.
    pub class_weight: ClassWeight,
    /// The search stops starting fits after this long: feature sets are then
    /// searched narrowest first, and those not finished are left out.
    pub time_budget: Option<std::time::Duration>,
}

/// `options.class_weight`: how the training rows' labels are weighted.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ClassWeight {
    #[default]
    None,
    Balanced,
    /// Both unweighted and balanced candidates, the better by held-out macro-F1.
    Auto,
    /// Per label, in label order.
    Given(Vec<f64>),
}

/// Largest ratio between two label weights (a weight is applied as repeated
/// rows: see [`ClassWeights`]).
pub const MAX_WEIGHT_RATIO: f64 = 100.0;

/// Examples listed as suspects (`GET /heads/{name}/suspects`).
const MAX_SUSPECTS: usize = 50;

/// What a head is trained on: its label names, the train split and the
/// validation split when there is one, and where they came from.
pub struct TrainingData<'a> {
    pub labels: &'a [String],
    pub train: LabelledFeatures<'a>,
    pub validation: Option<LabelledFeatures<'a>>,
    /// Data set folder, recorded in the head file.
    pub data_dir: String,
    /// sha256 of each split file used, by split name.
    pub data_fingerprints: BTreeMap<String, String>,
}

/// Labelled features of one split.
pub struct LabelledFeatures<'a> {
    pub features: &'a PooledFeatures,
    pub labels: &'a [usize],
    /// The split's texts (for the suspects), and what `Suspect::source` calls it.
    pub texts: Option<&'a [String]>,
    pub source: &'a str,
    /// The features of each row's second text (a pair head: rows are pairs).
    pub pair: Option<&'a PooledFeatures>,
}

impl LabelledFeatures<'_> {
    /// The rows' features for one (layers, pooling): pooled, or a pair's [u, v, |u - v|, u * v].
    pub fn get(&self, pooling: FeaturePooling, layers: Option<&LayerSelection>) -> Array2<f32> {
        let u = self.features.get(pooling, layers);
        match self.pair {
            Some(second) => crate::pooling::pair_rows(&u, &second.get(pooling, layers)),
            None => u,
        }
    }
}

pub(super) struct Scaler {
    pub(super) mean: Array1<f64>,
    pub(super) scale: Array1<f64>,
}

impl Scaler {
    pub(super) fn fit(x: &Array2<f64>) -> Scaler {
        let mean = x.mean_axis(Axis(0)).expect("rows");
        let scale = x.std_axis(Axis(0), 0.0).mapv(|s| if s > 1e-12 { s } else { 1.0 });
        Scaler { mean, scale }
    }

    pub(super) fn apply(&self, x: &Array2<f64>) -> Array2<f64> {
        (x - &self.mean) / &self.scale
    }
}

#[derive(Debug, Clone)]
pub(super) struct Fitted {
    pub(super) weights: Array2<f64>, // [features, classes]
    pub(super) intercept: Array1<f64>,
}

impl Fitted {
    fn logits(&self, x: &Array2<f64>) -> Array2<f64> {
        x.dot(&self.weights) + &self.intercept
    }

    fn probabilities(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = x.dot(&self.weights) + &self.intercept;
        for mut row in z.rows_mut() {
            let p = softmax(&row.to_vec());
            row.assign(&Array1::from(p));
        }
        z
    }
}

fn to_f64(x: &Array2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

/// Gradient tolerance per training row: linfa's loss is the sum over rows, so
/// a fixed tolerance would ask more of larger data sets; 1e-4 per row is
/// scikit-learn's `tol` on its averaged loss. Measured on the default head's
/// search (MiniLM, 45 candidates, 2 cores): 298 s when every fit ran its 300
/// iterations against linfa's fixed 1e-4, see README for the figure with this.
const GRADIENT_TOLERANCE_PER_ROW: f64 = 1e-4;

/// linfa's fit on `x` (standardised), in double precision (in single, the
/// final fit failed on all-mpnet-base-v2's features from a cold start: every
/// prediction one class): a head's final fit; `warm` starts from a nearby
/// solution of the same problem.
pub(super) fn fit_f64(
    x: &Array2<f64>,
    y: &[usize],
    classes: usize,
    alpha: f64,
    max_iterations: u64,
    warm: Option<&Fitted>,
) -> anyhow::Result<Fitted> {
    let dataset = Dataset::new(x.clone(), Array1::from(y.to_vec()));
    let mut params = MultiLogisticRegression::<f64>::default()
        .alpha(alpha)
        .max_iterations(max_iterations)
        .gradient_tolerance(GRADIENT_TOLERANCE_PER_ROW * y.len().max(1) as f64);
    if let Some(w) = warm {
        // linfa's layout: one row per feature, then the intercept row.
        let mut init = Array2::<f64>::zeros((x.ncols() + 1, classes));
        init.slice_axis_mut(Axis(0), ndarray::Slice::from(..x.ncols())).assign(&w.weights);
        init.row_mut(x.ncols()).assign(&w.intercept);
        params = params.initial_params(init);
    }
    let model = params.fit(&dataset).map_err(|e| anyhow!("logistic regression failed: {e}"))?;
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

/// A fit of the search (many per head): [`super::solver`]'s, in single
/// precision, the rows converted once per call (the search's alpha paths
/// convert them once per path with [`super::solver::Rows`] instead).
pub(super) fn fit_f32(
    x: &Array2<f64>,
    y: &[usize],
    classes: usize,
    alpha: f64,
    max_iterations: u64,
    warm: Option<&Fitted>,
) -> anyhow::Result<Fitted> {
    search_fit(&super::solver::Rows::of(x), y, classes, alpha, max_iterations, warm)
}

/// One fit of the search on rows already converted, with linfa's stopping rule.
pub(super) fn search_fit(
    rows: &super::solver::Rows,
    y: &[usize],
    classes: usize,
    alpha: f64,
    max_iterations: u64,
    warm: Option<&Fitted>,
) -> anyhow::Result<Fitted> {
    let tolerance = GRADIENT_TOLERANCE_PER_ROW * y.len().max(1) as f64;
    super::solver::fit(rows, y, classes, alpha, max_iterations, tolerance, warm)
}

/// The objective every fit minimises: cross-entropy summed over the rows plus
/// alpha/2 times the squared weights (linfa's).
pub(super) fn penalised_loss(fitted: &Fitted, x: &Array2<f64>, y: &[usize], alpha: f64) -> f64 {
    let logits = fitted.logits(x);
    let mut total = 0.0;
    for (row, &label) in logits.rows().into_iter().zip(y) {
        let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        total += top + row.iter().map(|v| (v - top).exp()).sum::<f64>().ln() - row[label];
    }
    total + 0.5 * alpha * fitted.weights.iter().map(|w| w * w).sum::<f64>()
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

fn mean_log_loss(logits: &Array2<f64>, y: &[usize], temperature: f64) -> f64 {
    let mut loss = 0.0;
    for (row, &truth) in logits.rows().into_iter().zip(y) {
        let p = softmax(&row.iter().map(|z| z / temperature).collect::<Vec<_>>());
        loss -= p[truth].max(1e-15).ln();
    }
    loss / y.len().max(1) as f64
}

/// Fits one temperature T (probabilities = softmax(logits / T)) on held-out
/// logits by minimising their log-loss (golden-section search over log T in
/// [1/20, 20]); kept only when it lowers that log-loss by at least 1%, since
/// a head whose probabilities are already calibrated gains nothing from it.
fn fit_temperature(logits: &Array2<f64>, y: &[usize]) -> Calibration {
    let loss = |log_t: f64| mean_log_loss(logits, y, log_t.exp());
    let (mut lo, mut hi) = ((1.0f64 / 20.0).ln(), 20f64.ln());
    let golden = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (hi - golden * (hi - lo), lo + golden * (hi - lo));
    let (mut fa, mut fb) = (loss(a), loss(b));
    for _ in 0..60 {
        if fa < fb {
            hi = b;
            (b, fb) = (a, fa);
            a = hi - golden * (hi - lo);
            fa = loss(a);
        } else {
            lo = a;
            (a, fa) = (b, fb);
            b = lo + golden * (hi - lo);
            fb = loss(b);
        }
    }
    let fitted = ((lo + hi) / 2.0).exp();
    let before = mean_log_loss(logits, y, 1.0);
    let after = mean_log_loss(logits, y, fitted);
    let helps = after < before * 0.99;
    Calibration {
        fitted_temperature: fitted,
        held_out_log_loss: before,
        held_out_log_loss_scaled: after,
        temperature: helps.then_some(fitted),
    }
}

pub(super) fn select_rows(x: &Array2<f64>, rows: &[usize]) -> Array2<f64> {
    x.select(Axis(0), rows)
}

/// Runs `f` over `items` on every available core, keeping the order.
pub(super) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: Option<usize>,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    parallel_map_until(items, threads, None, f).into_iter().map(|r| r.expect("no deadline")).collect()
}

/// As [`parallel_map`], but no item starts after `deadline`: those are None.
pub(super) fn parallel_map_until<T: Sync, R: Send>(
    items: &[T],
    threads: Option<usize>,
    deadline: Option<Instant>,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = threads.unwrap_or(cores).min(items.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> = items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                *results[i].lock().expect("result slot") = Some(f(item));
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().expect("result slot")).collect()
}

/// scikit-learn's `LogisticRegression()` with its defaults, as the lecture
/// fits it: L2 penalty with C = 1, at most 100 iterations, raw features
/// without standardising. linfa's multinomial loss penalises every class's
/// vector: for two classes that is alpha/4 |w|^2 on their difference, so C = 1
/// is alpha 2 (scikit-learn fits two classes as one binary vector); for more
/// classes both penalise every class vector, alpha 1. Predictions for
/// `test_x`; a reference row of `distilserve evaluate`.
pub fn plain_logistic(
    train_x: &Array2<f32>,
    train_y: &[usize],
    classes: usize,
    test_x: &Array2<f32>,
) -> anyhow::Result<Vec<usize>> {
    let alpha = if classes == 2 { 2.0 } else { 1.0 };
    let fitted = fit_f64(&to_f64(train_x), train_y, classes, alpha, 100, None)?;
    let p = fitted.probabilities(&to_f64(test_x));
    Ok(p.rows().into_iter().map(|row| argmax(row.iter().copied())).collect())
}

/// The selection protocol, fixed before any head was scored with layer
/// options (README, "Choosing a head"): the best mean held-out accuracy (or
/// macro-F1, when labels are weighted) wins, except that every candidate
/// within one standard error of it, sqrt(m (1 - m) / n) over the `held_out`
/// predictions, counts as tied, and a tie goes to the simpler candidate:
/// fewer features; among equally wide ones the better, then the lower
/// log-loss. The test split plays no part.
pub(super) fn choose<'c>(
    candidates: impl IntoIterator<Item = &'c Candidate>,
    hidden: usize,
    held_out: usize,
    by: SelectBy,
) -> Option<Candidate> {
    let candidates: Vec<&Candidate> = candidates.into_iter().collect();
    let metric = |c: &Candidate| match by {
        SelectBy::Accuracy => c.accuracy,
        SelectBy::MacroF1 => c.macro_f1.unwrap_or(0.0),
        SelectBy::MicroF1 => c.micro_f1.unwrap_or(0.0),
    };
    let best = candidates.iter().map(|c| metric(c)).fold(f64::NEG_INFINITY, f64::max);
    let standard_error = (best * (1.0 - best) / held_out.max(1) as f64).sqrt();
    candidates
        .into_iter()
        .filter(|c| metric(c) >= best - standard_error)
        .min_by(|a, b| {
            a.width(hidden)
                .cmp(&b.width(hidden))
                .then(metric(b).total_cmp(&metric(a)))
                .then(a.log_loss.total_cmp(&b.log_loss))
        })
        .cloned()
}

/// Trains a head in named steps: the configuration is checked, the feature
/// matrices of every (layers, pooling) set are laid out for the selection
/// ([`SearchData`]), every alpha path is fitted and scored
/// ([`score_alpha_paths`]), fold scores become candidates ([`candidates`]),
/// one is chosen ([`choose`]), its held-out logits give the temperature
/// ([`calibrate`]), the final model is fitted ([`final_fit`]) and the head
/// file assembled. Deterministic for the same inputs.
pub fn train(
    name: &str,
    encoder: EncoderStamp,
    data: TrainingData<'_>,
    config: &TrainConfig,
) -> anyhow::Result<LogisticHead> {
    let TrainingData { labels, train, validation, data_dir, data_fingerprints } = data;
    check_config(config)?;
    let started = Instant::now();
    let classes = labels.len();
    let mut search = SearchData::new(config, &train, validation.as_ref())?;
    search.weightings = weightings_of(&config.class_weight, &search.fit_labels, classes)?;
    let select_by = if config.class_weight == ClassWeight::None { SelectBy::Accuracy } else { SelectBy::MacroF1 };
    let scores = score_alpha_paths(&search, config, classes)?;
    let candidates = candidates(&search, config, &scores, classes, name, &encoder);
    let hidden = encoder.hidden_size;
    let budget = search_budget(&search, config, &scores);
    let Some(best) = choose(&candidates, hidden, search.held_out, select_by) else {
        bail!(
            "the time budget ({:.1} s) ended before one feature set was searched: give more time, or fewer layer options and poolings",
            config.time_budget.map_or(0.0, |b| b.as_secs_f64())
        );
    };
    let weighting_effect = weighting_effect(config, &candidates, hidden, search.held_out, select_by);
    let calibration = calibrate(&search, &scores, &best);
    let (set, weighting) = search.index_of(&best);
    let class_weights = search.weightings[weighting].clone();
    let searched = started.elapsed();
    let warm = folds_mean(&search, &scores, &best);
    let (fit, metrics) = fit_chosen(&search, set, labels, &best, class_weights.as_ref(), config, &warm)?;
    tracing::info!(
        head = name,
        feature_sets = search.sets.len(),
        search_seconds = searched.as_secs_f64(),
        final_fit_seconds = (started.elapsed() - searched).as_secs_f64(),
        "head searched and fitted"
    );
    let suspects = suspects(&search, &scores, &best, calibration.temperature, labels, &train, validation.as_ref());

    let training = TrainingRecord {
        data_dir,
        data_fingerprints,
        train_examples: search.fit_labels.len(),
        selection: config.selection,
        max_iterations: config.max_iterations,
        alpha: best.alpha,
        held_out_accuracy: best.accuracy,
        candidates,
        seconds: started.elapsed().as_secs_f64(),
        upload: None,
        calibration: Some(calibration.clone()),
        select_by: (select_by != SelectBy::Accuracy).then_some(select_by),
        class_weights,
        weighting_effect,
        budget,
        graph_choice: None,
    };
    let mut head = assemble(name, labels, &best, encoder, training, metrics, fit);
    head.temperature = calibration.temperature;
    head.suspects = suspects;
    head.pair = train.pair.is_some();
    Ok(head.sealed())
}

/// The chosen candidate fitted on every fitted row ([`final_fit`]), with its
/// training figures and, where validation was not fitted on, its validation figures.
fn fit_chosen(
    search: &SearchData,
    set: usize,
    labels: &[String],
    best: &Candidate,
    class_weights: Option<&ClassWeights>,
    config: &TrainConfig,
    warm: &Fitted,
) -> anyhow::Result<(FinalFit, HeadMetrics)> {
    let classes = labels.len();
    let (scaler, fitted, fit_pred) =
        final_fit(&search.fit[set], &search.fit_labels, classes, best, class_weights, config, warm)?;
    let validation = match (&search.score[set], &search.score_labels) {
        (Some(x), Some(y)) => Some(Scores::compute(labels, y, &score(&fitted, &scaler.apply(x), y).2)),
        _ => None,
    };
    let metrics = HeadMetrics {
        train: Some(Scores::compute(labels, &search.fit_labels, &fit_pred)),
        validation,
        ..HeadMetrics::default()
    };
    let fit = FinalFit {
        scaler,
        weights: (0..classes).map(|c| fitted.weights.column(c).iter().map(|&v| v as f32).collect()).collect(),
        intercept: fitted.intercept.iter().map(|&v| v as f32).collect(),
    };
    Ok((fit, metrics))
}

/// How much of the search a time budget let run (none without a budget).
fn search_budget(search: &SearchData, config: &TrainConfig, scores: &PathScores) -> Option<SearchBudget> {
    config.time_budget.map(|b| {
        let searched = (0..search.sets.len()).filter(|&set| complete(search, config, scores, set)).count();
        SearchBudget {
            seconds: b.as_secs_f64(),
            feature_sets_searched: searched,
            feature_sets_left_out: search.sets.len() - searched,
        }
    })
}

/// With `class_weight = "auto"`: the best unweighted and weighted candidates' macro-F1.
fn weighting_effect(
    config: &TrainConfig,
    candidates: &[Candidate],
    hidden: usize,
    held_out: usize,
    select_by: SelectBy,
) -> Option<WeightingEffect> {
    (config.class_weight == ClassWeight::Auto).then(|| {
        let best_of = |weighted: bool| {
            choose(candidates.iter().filter(|c| c.weighting.is_some() == weighted), hidden, held_out, select_by)
                .and_then(|c| c.macro_f1)
                .unwrap_or(0.0)
        };
        WeightingEffect { unweighted_macro_f1: best_of(false), weighted_macro_f1: best_of(true) }
    })
}

/// A head's parameters: standardisation, then one weight row and intercept per label.
pub(super) struct FinalFit {
    pub(super) scaler: Scaler,
    pub(super) weights: Vec<Vec<f32>>,
    pub(super) intercept: Vec<f32>,
}

/// What every trained head file holds, from the chosen candidate, the record
/// of its training, its metrics and the final fit; the caller adds what its
/// kind of head adds (temperature, suspects, thresholds, pairs) and seals it.
pub(super) fn assemble(
    name: &str,
    labels: &[String],
    best: &Candidate,
    encoder: EncoderStamp,
    training: TrainingRecord,
    metrics: HeadMetrics,
    fit: FinalFit,
) -> LogisticHead {
    LogisticHead {
        format_version: FORMAT_VERSION,
        kind: "logistic".into(),
        name: name.to_string(),
        labels: labels.to_vec(),
        pooling: best.pooling,
        layers: best.layers.clone(),
        encoder,
        training,
        metrics,
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        description: None,
        temperature: None,
        min_probability: None,
        scaler_mean: fit.scaler.mean.iter().map(|&v| v as f32).collect(),
        scaler_scale: fit.scaler.scale.iter().map(|&v| v as f32).collect(),
        weights: fit.weights,
        intercept: fit.intercept,
        suspects: Vec::new(),
        multi_label: None,
        pair: false,
        checksum: String::new(),
    }
}

pub(super) fn check_config(config: &TrainConfig) -> anyhow::Result<()> {
    if config.poolings.is_empty() || config.alphas.is_empty() {
        bail!("training needs at least one pooling and one alpha");
    }
    if let Some(bad) = config.alphas.iter().find(|a| !a.is_finite() || **a < 0.0) {
        bail!("alpha {bad} is not a finite non-negative number");
    }
    if config.layer_options.is_empty() {
        bail!("training needs at least one layer option");
    }
    Ok(())
}

/// One (layers, pooling) pair the search tries.
pub(super) type FeatureSet = (Option<LayerSelection>, FeaturePooling);

/// A fit's accuracy and log-loss on its held-out rows, those rows' logits
/// with their labels (what the temperature is fitted on, for the chosen one),
/// and the fit itself (where the final fit starts from, for the chosen one).
type Scored = (f64, f64, Array2<f64>, Vec<usize>, Fitted);

/// Scores of each alpha path by (feature set, fold, weighting, alpha's bits).
type PathScores = BTreeMap<(usize, usize, usize, u64), Scored>;

/// What every candidate is fitted and scored on, per feature set (every
/// layer option with every pooling): with [`Selection::Validation`], fitted
/// on train and scored on validation; with cross-validation, train and
/// validation pooled and cut into `folds` (row `i` held out in fold `i % folds`).
pub(super) struct SearchData {
    pub(super) sets: Vec<FeatureSet>,
    pub(super) fit: Vec<Array2<f64>>,
    /// Validation's rows per set; None under cross-validation.
    score: Vec<Option<Array2<f64>>>,
    fit_labels: Vec<usize>,
    score_labels: Option<Vec<usize>>,
    pub(super) folds: usize,
    /// Predictions a candidate's accuracy is measured on (its standard error).
    pub(super) held_out: usize,
    /// Label weights tried with every set (None: unweighted).
    weightings: Vec<Option<ClassWeights>>,
}

impl SearchData {
    pub(super) fn new(
        config: &TrainConfig,
        train: &LabelledFeatures<'_>,
        validation: Option<&LabelledFeatures<'_>>,
    ) -> anyhow::Result<SearchData> {
        let sets: Vec<FeatureSet> =
            config.layer_options.iter().flat_map(|l| config.poolings.iter().map(move |&p| (l.clone(), p))).collect();
        let features = |split: &LabelledFeatures<'_>, (layers, pooling): &FeatureSet| {
            to_f64(&split.get(*pooling, layers.as_ref()))
        };
        match config.selection {
            Selection::Validation => {
                let Some(v) = validation else { bail!("selection on the validation split, but the data set has none") };
                Ok(SearchData {
                    fit: sets.iter().map(|set| features(train, set)).collect(),
                    score: sets.iter().map(|set| Some(features(v, set))).collect(),
                    fit_labels: train.labels.to_vec(),
                    score_labels: Some(v.labels.to_vec()),
                    folds: 1,
                    held_out: v.labels.len(),
                    sets,
                    weightings: vec![None],
                })
            }
            Selection::CrossValidation { folds } => {
                let fit_labels: Vec<usize> = match validation {
                    Some(v) => train.labels.iter().chain(v.labels).copied().collect(),
                    None => train.labels.to_vec(),
                };
                if folds < 2 || folds > fit_labels.len() {
                    bail!("cross-validation needs 2 to {} folds, got {folds}", fit_labels.len());
                }
                let fit = sets
                    .iter()
                    .map(|set| match validation {
                        Some(v) => {
                            ndarray::concatenate(Axis(0), &[features(train, set).view(), features(v, set).view()])
                                .expect("same width")
                        }
                        None => features(train, set),
                    })
                    .collect();
                Ok(SearchData {
                    fit,
                    score: vec![None; sets.len()],
                    held_out: fit_labels.len(),
                    fit_labels,
                    score_labels: None,
                    folds,
                    sets,
                    weightings: vec![None],
                })
            }
        }
    }

    /// Rows fitted on and rows scored on, with their labels, for one fold of one set.
    fn split(&self, set: usize, fold: usize) -> (Array2<f64>, Vec<usize>, Array2<f64>, Vec<usize>) {
        let x = &self.fit[set];
        match (&self.score[set], &self.score_labels) {
            (Some(vx), Some(vy)) => (x.clone(), self.fit_labels.clone(), vx.clone(), vy.clone()),
            _ => {
                let (held, kept): (Vec<usize>, Vec<usize>) =
                    (0..self.fit_labels.len()).partition(|i| i % self.folds == fold);
                (
                    select_rows(x, &kept),
                    kept.iter().map(|&i| self.fit_labels[i]).collect(),
                    select_rows(x, &held),
                    held.iter().map(|&i| self.fit_labels[i]).collect(),
                )
            }
        }
    }

    /// Rows of `fit` (cross-validation) or of validation held out in `fold`, in
    /// the order [`SearchData::split`] gives them.
    pub(super) fn held_rows(&self, fold: usize) -> Vec<usize> {
        match &self.score_labels {
            Some(vy) => (0..vy.len()).collect(),
            None => (0..self.fit_labels.len()).filter(|i| i % self.folds == fold).collect(),
        }
    }

    /// The candidate's feature set and weighting.
    fn index_of(&self, candidate: &Candidate) -> (usize, usize) {
        let set = self
            .sets
            .iter()
            .position(|set| *set == (candidate.layers.clone(), candidate.pooling))
            .expect("a searched set");
        let weighting = self
            .weightings
            .iter()
            .position(|w| w.as_ref().map(|w| w.weighting) == candidate.weighting)
            .expect("a searched weighting");
        (set, weighting)
    }
}

/// The weightings `choice` asks to try, for rows labelled `labels`.
fn weightings_of(choice: &ClassWeight, labels: &[usize], classes: usize) -> anyhow::Result<Vec<Option<ClassWeights>>> {
    let weighted = |weighting, weights: Vec<f64>| ClassWeights { weighting, repeats: repeats_of(&weights), weights };
    let balanced = || {
        let mut counts = vec![0usize; classes];
        for &l in labels {
            counts[l] += 1;
        }
        let n = labels.len() as f64;
        weighted(Weighting::Balanced, counts.iter().map(|&c| n / (classes as f64 * c.max(1) as f64)).collect())
    };
    Ok(match choice {
        ClassWeight::None => vec![None],
        ClassWeight::Balanced => vec![Some(balanced())],
        ClassWeight::Auto => vec![None, Some(balanced())],
        ClassWeight::Given(weights) => {
            if weights.len() != classes || weights.iter().any(|w| !w.is_finite() || *w <= 0.0) {
                bail!("class weights must be {classes} finite positive numbers, got {weights:?}");
            }
            vec![Some(weighted(Weighting::Given, weights.clone()))]
        }
    })
}

/// Whole repeats per label whose ratios are within 5% of `weights`' (ratios
/// capped at [`MAX_WEIGHT_RATIO`]): the smallest scale, 1 to 10, that gets
/// there (else 10), so that the lightest label's rows appear once when it can.
fn repeats_of(weights: &[f64]) -> Vec<usize> {
    let lightest = weights.iter().copied().fold(f64::INFINITY, f64::min);
    let ratios: Vec<f64> = weights.iter().map(|w| (w / lightest).min(MAX_WEIGHT_RATIO)).collect();
    let at =
        |scale: usize| -> Vec<usize> { ratios.iter().map(|r| (r * scale as f64).round().max(1.0) as usize).collect() };
    let error = |repeats: &[usize], scale: usize| {
        ratios.iter().zip(repeats).map(|(r, &n)| (n as f64 / scale as f64 - r).abs() / r).fold(0.0, f64::max)
    };
    (1..=10)
        .map(|scale| (at(scale), scale))
        .find(|(r, scale)| error(r, *scale) <= 0.05)
        .map_or_else(|| at(10), |(r, _)| r)
}

/// `x` and `y` with each row repeated as often as its label says.
fn repeated(x: &Array2<f64>, y: &[usize], repeats: &[usize]) -> (Array2<f64>, Vec<usize>) {
    let rows: Vec<usize> = (0..y.len()).flat_map(|i| std::iter::repeat(i).take(repeats[y[i]])).collect();
    (select_rows(x, &rows), rows.iter().map(|&i| y[i]).collect())
}

/// The fitted part of `x`, `y` as `weights` weigh it.
fn weighed(x: Array2<f64>, y: Vec<usize>, weights: Option<&ClassWeights>) -> (Array2<f64>, Vec<usize>) {
    match weights {
        Some(w) => repeated(&x, &y, &w.repeats),
        None => (x, y),
    }
}

/// Every (feature set, fold) job fits its alphas from the strongest penalty
/// down, each fit starting from the previous solution; jobs run in parallel,
/// widest first, so that the threads finish together instead of one waiting on
/// the last wide fit (a job's time grows with its width).
fn score_alpha_paths(search: &SearchData, config: &TrainConfig, classes: usize) -> anyhow::Result<PathScores> {
    let mut jobs: Vec<(usize, usize, usize)> = (0..search.sets.len())
        .flat_map(|set| {
            (0..search.folds).flat_map(move |fold| (0..search.weightings.len()).map(move |w| (set, fold, w)))
        })
        .collect();
    match config.time_budget {
        // Widest first, so that the threads finish together.
        None => jobs.sort_by_key(|&(set, _, _)| std::cmp::Reverse(search.fit[set].ncols())),
        // Narrowest (cheapest, and the protocol's tie-break) first, one set's jobs together, so
        // that sets finish one after another and a budget leaves whole sets out.
        Some(_) => jobs.sort_by_key(|&(set, fold, w)| (search.fit[set].ncols(), set, fold, w)),
    }
    let deadline = config.time_budget.map(|b| Instant::now() + b);
    let mut alphas_down: Vec<f64> = config.alphas.clone();
    alphas_down.sort_by(|a, b| b.total_cmp(a));
    let fits = jobs.len() * alphas_down.len();
    let fits_done = std::sync::atomic::AtomicUsize::new(0);
    let per_job =
        parallel_map_until(&jobs, config.threads, deadline, |&(set, fold, w)| -> anyhow::Result<Vec<(f64, Scored)>> {
            let (fit_x, fit_y, score_x, score_y) = search.split(set, fold);
            let (fit_x, fit_y) = weighed(fit_x, fit_y, search.weightings[w].as_ref());
            let scaler = Scaler::fit(&fit_x);
            let (fit_x, scaled) = (super::solver::Rows::of(&scaler.apply(&fit_x)), scaler.apply(&score_x));
            let mut previous: Option<Fitted> = None;
            let mut path = Vec::with_capacity(alphas_down.len());
            for &alpha in &alphas_down {
                let fitted = search_fit(&fit_x, &fit_y, classes, alpha, config.max_iterations, previous.as_ref())?;
                let (accuracy, log_loss, _) = score(&fitted, &scaled, &score_y);
                if let Some(progress) = &config.progress {
                    progress.call(fits_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, fits);
                }
                path.push((alpha, (accuracy, log_loss, fitted.logits(&scaled), score_y.clone(), fitted.clone())));
                previous = Some(fitted);
            }
            Ok(path)
        });
    let mut scores = PathScores::new();
    for (&(set, fold, w), path) in jobs.iter().zip(per_job) {
        // Not started within the time budget: its set is left out (see `candidates`).
        let Some(path) = path else { continue };
        for (alpha, scored) in path.map_err(|e| anyhow!("{e:#}"))? {
            scores.insert((set, fold, w, alpha.to_bits()), scored);
        }
    }
    Ok(scores)
}

/// One candidate per (feature set, weighting, alpha), in that order: its
/// accuracy and log-loss averaged over the folds, its macro-F1 over every
/// fold's held-out predictions together.
fn candidates(
    search: &SearchData,
    config: &TrainConfig,
    scores: &PathScores,
    classes: usize,
    name: &str,
    encoder: &EncoderStamp,
) -> Vec<Candidate> {
    let mut candidates = Vec::with_capacity(search.sets.len() * search.weightings.len() * config.alphas.len());
    for (set, (layers, pooling)) in search.sets.iter().enumerate() {
        if !complete(search, config, scores, set) {
            continue;
        }
        for (w, weights) in search.weightings.iter().enumerate() {
            for &alpha in &config.alphas {
                let (mut accuracy, mut log_loss) = (0.0, 0.0);
                let (mut truth, mut predicted) = (Vec::new(), Vec::new());
                for fold in 0..search.folds {
                    let (a, l, logits, y, _) = &scores[&(set, fold, w, alpha.to_bits())];
                    accuracy += a / search.folds as f64;
                    log_loss += l / search.folds as f64;
                    truth.extend_from_slice(y);
                    predicted.extend(logits.rows().into_iter().map(|row| argmax(row.iter().copied())));
                }
                let macro_f1 = macro_f1(classes, &truth, &predicted);
                let weighting = weights.as_ref().map(|w| w.weighting);
                tracing::info!(
                    head = name,
                    pooling = %pooling,
                    layers = layers.as_ref().map(|l| l.describe(encoder.last_layer())).unwrap_or_else(|| "-1".into()),
                    weighting = ?weighting,
                    alpha,
                    accuracy,
                    macro_f1,
                    log_loss,
                    "candidate scored"
                );
                candidates.push(Candidate {
                    pooling: *pooling,
                    layers: layers.clone(),
                    alpha,
                    accuracy,
                    log_loss,
                    weighting,
                    macro_f1: Some(macro_f1),
                    micro_f1: None,
                });
            }
        }
    }
    candidates
}

/// Whether every fold, weighting and alpha of feature set `set` was scored
/// (a time budget may have stopped the search before).
fn complete(search: &SearchData, config: &TrainConfig, scores: &PathScores, set: usize) -> bool {
    (0..search.folds).all(|fold| {
        (0..search.weightings.len())
            .all(|w| config.alphas.iter().all(|a| scores.contains_key(&(set, fold, w, a.to_bits()))))
    })
}

/// The temperature, fitted on the chosen candidate's held-out logits of every
/// fold together: it never sees the final fit's own training rows, nor test.
fn calibrate(search: &SearchData, scores: &PathScores, best: &Candidate) -> Calibration {
    let (set, w) = search.index_of(best);
    let held: Vec<&Scored> = (0..search.folds).map(|fold| &scores[&(set, fold, w, best.alpha.to_bits())]).collect();
    let logits = ndarray::concatenate(Axis(0), &held.iter().map(|(_, _, z, _, _)| z.view()).collect::<Vec<_>>())
        .expect("same width");
    let labels: Vec<usize> = held.iter().flat_map(|(_, _, _, y, _)| y.iter().copied()).collect();
    fit_temperature(&logits, &labels)
}

/// The chosen candidate's fits of every fold averaged: close to the final
/// fit's solution (the same alpha on a superset of each fold's rows, scaled
/// nearly alike), so the final fit starts there.
fn folds_mean(search: &SearchData, scores: &PathScores, best: &Candidate) -> Fitted {
    let (set, w) = search.index_of(best);
    let fits: Vec<&Fitted> = (0..search.folds).map(|fold| &scores[&(set, fold, w, best.alpha.to_bits())].4).collect();
    let n = fits.len() as f64;
    Fitted {
        weights: fits.iter().fold(Array2::zeros(fits[0].weights.dim()), |sum, f| sum + &f.weights) / n,
        intercept: fits.iter().fold(Array1::zeros(fits[0].intercept.len()), |sum, f| sum + &f.intercept) / n,
    }
}

/// The chosen candidate fitted by linfa on every row it was searched on (in
/// double precision), from `warm` brought nearer by the search's solver (kept
/// where linfa ends above it on the objective), with its predictions on those rows. A fit
/// far below what the candidate scored held out did not converge: refused
/// rather than published as a head that answers one class.
fn final_fit(
    x: &Array2<f64>,
    y: &[usize],
    classes: usize,
    best: &Candidate,
    weights: Option<&ClassWeights>,
    config: &TrainConfig,
    warm: &Fitted,
) -> anyhow::Result<(Scaler, Fitted, Vec<usize>)> {
    let (fit_x, fit_y) = weighed(x.clone(), y.to_vec(), weights);
    let scaler = Scaler::fit(&fit_x);
    let scaled = scaler.apply(&fit_x);
    // The search's solver takes the folds' mean to the optimum on every row
    // (single precision, one pass an evaluation); linfa's fit, in double
    // precision, then starts next to its own optimum and needs few iterations.
    let start =
        search_fit(&super::solver::Rows::of(&scaled), &fit_y, classes, best.alpha, config.max_iterations, Some(warm))?;
    let mut fitted = fit_f64(&scaled, &fit_y, classes, best.alpha, config.max_iterations, Some(&start))?;
    // On nearly separable rows with a weak penalty linfa's line search can
    // leave its start for a worse point of the same objective (seen: training
    // accuracy 1.0 at the start, 0.83 after; 0.94 from zero): the start, the
    // lower point of the objective both minimise, is kept then.
    let (linfa, ours) =
        (penalised_loss(&fitted, &scaled, &fit_y, best.alpha), penalised_loss(&start, &scaled, &fit_y, best.alpha));
    if linfa > ours * (1.0 + 1e-6) {
        tracing::warn!(
            alpha = best.alpha,
            linfa,
            ours,
            "linfa's final fit ended above its start's loss: the start is kept"
        );
        fitted = start;
    }
    let (fit_accuracy, _, predictions) = score(&fitted, &scaler.apply(x), y);
    if fit_accuracy + 0.05 < best.accuracy {
        bail!(
            "the final fit did not converge: accuracy {fit_accuracy:.4} on its own training rows, while the chosen \
             candidate scored {:.4} held out; try more training.max_iterations or another alpha",
            best.accuracy
        );
    }
    Ok((scaler, fitted, predictions))
}

/// The searched rows whose held-out probability for their own label (the
/// chosen candidate's, temperature applied) is lowest and below one half, at
/// most [`MAX_SUSPECTS`], lowest first: each row was predicted by a fit that
/// never saw it. Rows of a split without texts are left out.
fn suspects(
    search: &SearchData,
    scores: &PathScores,
    best: &Candidate,
    temperature: Option<f64>,
    labels: &[String],
    train: &LabelledFeatures<'_>,
    validation: Option<&LabelledFeatures<'_>>,
) -> Vec<Suspect> {
    let (set, w) = search.index_of(best);
    // Under cross-validation the rows are train's then validation's; with a
    // validation split, validation's alone.
    let origin = |row: usize| -> Option<(&LabelledFeatures<'_>, usize)> {
        match (&search.score_labels, validation) {
            (Some(_), v) => v.map(|v| (v, row)),
            (None, Some(v)) if row >= train.labels.len() => Some((v, row - train.labels.len())),
            (None, _) => Some((train, row)),
        }
    };
    let t = temperature.unwrap_or(1.0);
    let mut doubtful = Vec::new();
    for fold in 0..search.folds {
        let (_, _, logits, y, _) = &scores[&(set, fold, w, best.alpha.to_bits())];
        for ((row, z), &label) in search.held_rows(fold).into_iter().zip(logits.rows()).zip(y) {
            let p = softmax(&z.iter().map(|v| v / t).collect::<Vec<_>>());
            if p[label] < 0.5 {
                doubtful.push((p[label], row, label, argmax(p.iter().copied())));
            }
        }
    }
    doubtful.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    doubtful
        .into_iter()
        .filter_map(|(probability, row, label, predicted)| {
            let (split, row) = origin(row)?;
            Some(Suspect {
                source: split.source.to_string(),
                row,
                text: split.texts?.get(row)?.clone(),
                label: labels[label].clone(),
                predicted: labels[predicted].clone(),
                probability,
            })
        })
        .take(MAX_SUSPECTS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(pooling: FeaturePooling, layers: Option<LayerSelection>, alpha: f64, accuracy: f64) -> Candidate {
        Candidate { pooling, layers, alpha, accuracy, log_loss: 0.5, weighting: None, macro_f1: None, micro_f1: None }
    }

    #[test]
    fn choose_breaks_ties_within_one_standard_error_by_fewer_features() {
        use crate::layers::LayerCombine;
        let concat = Some(LayerSelection { indices: vec![5, 6], combine: LayerCombine::Concat });
        let mean4 = Some(LayerSelection { indices: vec![3, 4, 5, 6], combine: LayerCombine::Mean });
        // n = 10,000: one standard error at 0.80 is 0.4 points.
        let candidates = vec![
            candidate(FeaturePooling::ClsMean, concat.clone(), 100.0, 0.800), // 4 x hidden, the best
            candidate(FeaturePooling::Mean, None, 10.0, 0.795),               // hidden, within 1 SE
            candidate(FeaturePooling::Mean, mean4.clone(), 100.0, 0.797),     // hidden, within, more accurate
            candidate(FeaturePooling::Cls, None, 10.0, 0.700),                // hidden, far below
        ];
        let chosen = choose(&candidates, 8, 10_000, SelectBy::Accuracy).unwrap();
        assert_eq!((chosen.pooling, chosen.layers.clone()), (FeaturePooling::Mean, mean4));
        // With fewer held-out predictions the standard error grows; with many
        // more it shrinks and the best alone is left.
        let chosen = choose(&candidates, 8, 10_000_000, SelectBy::Accuracy).unwrap();
        assert_eq!((chosen.pooling, chosen.layers), (FeaturePooling::ClsMean, concat));
    }

    /// `n` rows whose one feature is the row's index, under both poolings.
    fn indexed(n: usize, offset: usize) -> PooledFeatures {
        let column = Array2::from_shape_fn((n, 1), |(i, _)| (i + offset) as f32);
        PooledFeatures { layers: vec![1], hidden: 1, cls: column.clone(), mean: column }
    }

    fn config(selection: Selection) -> TrainConfig {
        TrainConfig {
            poolings: vec![FeaturePooling::Cls, FeaturePooling::Mean],
            layer_options: vec![None],
            alphas: vec![1.0],
            max_iterations: 10,
            selection,
            progress: None,
            threads: Some(1),
            class_weight: ClassWeight::None,
            time_budget: None,
        }
    }

    #[test]
    fn cross_validation_pools_both_splits_and_holds_each_row_out_once() {
        let (train, validation) = (indexed(7, 0), indexed(3, 7));
        let labels: Vec<usize> = (0..10).map(|i| i % 2).collect();
        let fit = LabelledFeatures { features: &train, labels: &labels[..7], texts: None, source: "t", pair: None };
        let held =
            LabelledFeatures { features: &validation, labels: &labels[7..], texts: None, source: "t", pair: None };
        let search = SearchData::new(&config(Selection::CrossValidation { folds: 3 }), &fit, Some(&held)).unwrap();
        assert_eq!((search.sets.len(), search.folds, search.held_out), (2, 3, 10));
        assert_eq!(search.fit_labels, labels);
        let mut held_out = Vec::new();
        for fold in 0..3 {
            let (fit_x, fit_y, held_x, held_y) = search.split(1, fold);
            assert_eq!(fit_x.nrows() + held_x.nrows(), 10);
            // Row i (feature value i) is held out in fold i % 3, labels follow their rows.
            for (row, &label) in held_x.column(0).iter().zip(&held_y) {
                assert_eq!(*row as usize % 3, fold);
                assert_eq!(label, *row as usize % 2);
                held_out.push(*row as usize);
            }
            assert!(fit_x.column(0).iter().zip(&fit_y).all(|(row, &label)| label == *row as usize % 2));
        }
        held_out.sort();
        assert_eq!(held_out, (0..10).collect::<Vec<_>>());
        // Folds out of range are refused before any fit.
        let too_many = SearchData::new(&config(Selection::CrossValidation { folds: 11 }), &fit, Some(&held));
        assert!(too_many.err().unwrap().to_string().contains("2 to 10 folds"));
    }

    #[test]
    fn validation_selection_fits_on_train_and_scores_on_validation_only() {
        let (train, validation) = (indexed(6, 0), indexed(4, 100));
        let labels = [0, 1, 0, 1, 0, 1];
        let search = SearchData::new(
            &config(Selection::Validation),
            &LabelledFeatures { features: &train, labels: &labels, texts: None, source: "t", pair: None },
            Some(&LabelledFeatures {
                features: &validation,
                labels: &[1, 0, 1, 0],
                texts: None,
                source: "t",
                pair: None,
            }),
        )
        .unwrap();
        assert_eq!((search.folds, search.held_out), (1, 4));
        let (fit_x, fit_y, held_x, held_y) = search.split(0, 0);
        assert_eq!(fit_x.column(0).to_vec(), (0..6).map(f64::from).collect::<Vec<_>>());
        assert_eq!(fit_y, labels);
        assert_eq!(held_x.column(0).to_vec(), (100..104).map(f64::from).collect::<Vec<_>>());
        assert_eq!(held_y, [1, 0, 1, 0]);
        let none = SearchData::new(
            &config(Selection::Validation),
            &LabelledFeatures { features: &train, labels: &labels, texts: None, source: "t", pair: None },
            None,
        );
        assert!(none.err().unwrap().to_string().contains("has none"));
    }

    /// Labels drawn from softmax(z) for two-class logits z, by a fixed generator.
    fn sampled(n: usize) -> (Array2<f64>, Vec<usize>) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut z = Array2::zeros((n, 2));
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let margin = 4.0 * next() - 2.0;
            z[[i, 1]] = margin;
            y.push(usize::from(next() < softmax(&[0.0, margin])[1]));
        }
        (z, y)
    }

    #[test]
    fn temperature_undoes_overconfidence_and_stays_off_when_calibrated() {
        let (z, y) = sampled(20_000);
        let calibrated = fit_temperature(&z, &y);
        assert!((calibrated.fitted_temperature - 1.0).abs() < 0.1, "{calibrated:?}");
        assert_eq!(calibrated.temperature, None, "no 1% gain on calibrated logits: {calibrated:?}");
        let overconfident = fit_temperature(&(&z * 4.0), &y);
        let t = overconfident.temperature.expect("worth using");
        assert!((t - 4.0).abs() < 0.4, "{overconfident:?}");
        assert!(overconfident.held_out_log_loss_scaled < overconfident.held_out_log_loss * 0.9);
    }

    #[test]
    fn label_weights_become_whole_repeats_within_five_percent_and_never_of_held_out_rows() {
        assert_eq!(repeats_of(&[1.0, 9.0]), vec![1, 9]);
        assert_eq!(repeats_of(&[0.5, 0.5]), vec![1, 1]);
        // 1 : 5.33 needs a scale of 2 (2 : 11 is 1 : 5.5, within 5%).
        assert_eq!(repeats_of(&[0.59375, 3.1666]), vec![2, 11]);
        // Ratios past the cap count as the cap.
        assert_eq!(repeats_of(&[1.0, 1000.0]), vec![1, 100]);
        let labels = [0, 0, 0, 0, 0, 0, 1, 1];
        let balanced = weightings_of(&ClassWeight::Balanced, &labels, 2).unwrap();
        let w = balanced[0].as_ref().unwrap();
        assert_eq!(
            (w.weighting, w.weights.clone(), w.repeats.clone()),
            (Weighting::Balanced, vec![8.0 / 12.0, 2.0], vec![1, 3])
        );
        assert_eq!(weightings_of(&ClassWeight::Auto, &labels, 2).unwrap().len(), 2);
        assert!(weightings_of(&ClassWeight::Given(vec![1.0]), &labels, 2).is_err());
        // Only the fitted part of a fold is repeated: the held-out rows are as they were.
        let features = indexed(8, 0);
        let search = SearchData::new(
            &config(Selection::CrossValidation { folds: 2 }),
            &LabelledFeatures { features: &features, labels: &labels, texts: None, source: "t", pair: None },
            None,
        )
        .unwrap();
        let (fit_x, fit_y, held_x, _) = search.split(0, 0);
        let (x, y) = repeated(&fit_x, &fit_y, &w.repeats);
        assert_eq!(held_x.nrows(), 4);
        assert_eq!(y, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(x.column(0).to_vec(), vec![1.0, 3.0, 5.0, 7.0, 7.0, 7.0]);
    }

    #[test]
    fn no_item_starts_after_the_deadline() {
        let items: Vec<usize> = (0..8).collect();
        let all = parallel_map_until(&items, Some(2), None, |i| i * 2);
        assert_eq!(all, (0..8).map(|i| Some(i * 2)).collect::<Vec<_>>());
        let passed = Instant::now() - std::time::Duration::from_millis(1);
        assert!(parallel_map_until(&items, Some(2), Some(passed), |i| i * 2).iter().all(Option::is_none));
    }
}
