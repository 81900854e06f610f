//! What the search fits on: every (layers, pooling) feature set laid out for
//! the selection (folds or a validation split), label weights as repeated
//! rows, and every alpha path fitted and scored on every fold.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail};
use ndarray::{Array2, Axis};

use super::fitting::{parallel_map_until, score, search_fit, select_rows, to_f64, Fitted, Scaler};
use super::{ClassWeight, LabelledFeatures, TrainConfig, MAX_WEIGHT_RATIO};
use crate::heads::logistic::{Candidate, ClassWeights, Selection, Weighting};
use crate::heads::solver;
use crate::layers::LayerSelection;
use crate::pooling::FeaturePooling;

/// One (layers, pooling) pair the search tries.
pub(in crate::heads) type FeatureSet = (Option<LayerSelection>, FeaturePooling);

/// A fit's accuracy and log-loss on its held-out rows, those rows' logits
/// with their labels (what the temperature is fitted on, for the chosen one),
/// and the fit itself (where the final fit starts from, for the chosen one).
pub(super) type Scored = (f64, f64, Array2<f64>, Vec<usize>, Fitted);

/// Scores of each alpha path by (feature set, fold, weighting, alpha's bits).
pub(super) type PathScores = BTreeMap<(usize, usize, usize, u64), Scored>;

/// What every candidate is fitted and scored on, per feature set (every
/// layer option with every pooling): with [`Selection::Validation`], fitted
/// on train and scored on validation; with cross-validation, train and
/// validation pooled and cut into `folds` (row `i` held out in fold `i % folds`).
pub(in crate::heads) struct SearchData {
    pub(in crate::heads) sets: Vec<FeatureSet>,
    pub(in crate::heads) fit: Vec<Array2<f64>>,
    /// Validation's rows per set; None under cross-validation.
    pub(super) score: Vec<Option<Array2<f64>>>,
    pub(super) fit_labels: Vec<usize>,
    pub(super) score_labels: Option<Vec<usize>>,
    pub(in crate::heads) folds: usize,
    /// Predictions a candidate's accuracy is measured on (its standard error).
    pub(in crate::heads) held_out: usize,
    /// Label weights tried with every set (None: unweighted).
    pub(super) weightings: Vec<Option<ClassWeights>>,
}

impl SearchData {
    pub(in crate::heads) fn new(
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
    pub(super) fn split(&self, set: usize, fold: usize) -> (Array2<f64>, Vec<usize>, Array2<f64>, Vec<usize>) {
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
    pub(in crate::heads) fn held_rows(&self, fold: usize) -> Vec<usize> {
        match &self.score_labels {
            Some(vy) => (0..vy.len()).collect(),
            None => (0..self.fit_labels.len()).filter(|i| i % self.folds == fold).collect(),
        }
    }

    /// The candidate's feature set and weighting.
    pub(super) fn index_of(&self, candidate: &Candidate) -> (usize, usize) {
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
pub(super) fn weightings_of(
    choice: &ClassWeight,
    labels: &[usize],
    classes: usize,
) -> anyhow::Result<Vec<Option<ClassWeights>>> {
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
pub(super) fn repeats_of(weights: &[f64]) -> Vec<usize> {
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
pub(super) fn repeated(x: &Array2<f64>, y: &[usize], repeats: &[usize]) -> (Array2<f64>, Vec<usize>) {
    let rows: Vec<usize> = (0..y.len()).flat_map(|i| std::iter::repeat(i).take(repeats[y[i]])).collect();
    (select_rows(x, &rows), rows.iter().map(|&i| y[i]).collect())
}

/// The fitted part of `x`, `y` as `weights` weigh it.
pub(super) fn weighed(x: Array2<f64>, y: Vec<usize>, weights: Option<&ClassWeights>) -> (Array2<f64>, Vec<usize>) {
    match weights {
        Some(w) => repeated(&x, &y, &w.repeats),
        None => (x, y),
    }
}

/// Every (feature set, fold) job fits its alphas from the strongest penalty
/// down, each fit starting from the previous solution; jobs run in parallel,
/// widest first, so that the threads finish together instead of one waiting on
/// the last wide fit (a job's time grows with its width).
pub(super) fn score_alpha_paths(
    search: &SearchData,
    config: &TrainConfig,
    classes: usize,
) -> anyhow::Result<PathScores> {
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
            let (fit_x, scaled) = (solver::Rows::of(&scaler.apply(&fit_x)), scaler.apply(&score_x));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::PooledFeatures;

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
}
