//! Training a logistic head on pooled features: linfa's multinomial logistic
//! regression on standardised inputs, every (pooling, alpha) candidate scored
//! as [`Selection`] says, the best one refitted. Deterministic for the same inputs.
//! Here the protocol (choosing, calibrating, the final fit, suspects, the head
//! assembled); `folds`: the feature sets, folds, label weights and alpha paths;
//! `fitting`: the fits (the search's by `heads/solver.rs`, the final one by
//! linfa), scores, the temperature, parallel jobs.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use ndarray::{Array1, Array2, Axis};

mod fitting;
mod folds;

pub use fitting::plain_logistic;
pub(in crate::heads) use fitting::{
    fit_f32, fit_f64, parallel_map, penalised_loss, search_fit, select_rows, Fitted, Scaler,
};
use fitting::{fit_temperature, score};
pub(in crate::heads) use folds::SearchData;
use folds::{score_alpha_paths, weighed, weightings_of, PathScores, Scored};

use super::logistic::{
    Calibration, Candidate, ClassWeights, EncoderStamp, HeadMetrics, LogisticHead, SearchBudget, SelectBy, Selection,
    Suspect, TrainingRecord, WeightingEffect, FORMAT_VERSION,
};
use super::scores::{macro_f1, Scores};
use crate::config::{PoolingChoice, ResolvedOptions};
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

impl TrainConfig {
    /// The search that `options` ask for, over `layer_options` (resolved for
    /// the encoder): one conversion whatever the door. Progress and threads
    /// are the caller's.
    pub fn of(
        options: &ResolvedOptions,
        layer_options: Vec<Option<LayerSelection>>,
        class_weight: ClassWeight,
    ) -> Self {
        TrainConfig {
            poolings: match options.pooling {
                PoolingChoice::Auto => FeaturePooling::ALL.to_vec(),
                PoolingChoice::Cls => vec![FeaturePooling::Cls],
                PoolingChoice::Mean => vec![FeaturePooling::Mean],
                PoolingChoice::ClsMean => vec![FeaturePooling::ClsMean],
            },
            layer_options,
            alphas: options.alphas.clone(),
            max_iterations: options.max_iterations,
            selection: match options.cv_folds {
                0 => Selection::Validation,
                folds => Selection::CrossValidation { folds },
            },
            progress: None,
            threads: None,
            class_weight,
            time_budget: options.time_budget,
        }
    }
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

/// The selection protocol, fixed before any head was scored with layer
/// options (docs/heads.md, "Choosing a head"): the best mean held-out accuracy (or
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
    let start = search_fit(
        &crate::heads::solver::Rows::of(&scaled),
        &fit_y,
        classes,
        best.alpha,
        config.max_iterations,
        Some(warm),
    )?;
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
}
