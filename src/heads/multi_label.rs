//! Training a multi-label head: one binary logistic regression per label on
//! the shared pooled features (one-vs-rest), the feature set and alpha chosen
//! by the cross-validation's held-out micro-F1 at a threshold of 0.5, then
//! each label's threshold chosen on the chosen candidate's held-out
//! probabilities for that label's F1. Reuses `search`'s fits, folds and
//! selection rule; deterministic for the same inputs.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail};
use ndarray::{Array1, Array2};

use super::logistic::{
    Candidate, EncoderStamp, HeadMetrics, LogisticHead, MultiLabel, SelectBy, Selection, TrainingRecord,
};
use super::scores::MultiLabelScores;
use super::search::{
    assemble, check_config, choose, fit_f32, fit_f64, parallel_map, select_rows, FinalFit, Fitted, LabelledFeatures,
    Scaler, SearchData, TrainConfig,
};
use crate::features::PooledFeatures;
use crate::pooling::sigmoid;

/// What a multi-label head is trained on.
pub struct MultiLabelData<'a> {
    pub labels: &'a [String],
    pub features: &'a PooledFeatures,
    /// Each row's label indices (possibly none).
    pub sets: &'a [Vec<usize>],
    pub data_dir: String,
    pub data_fingerprints: BTreeMap<String, String>,
}

/// One label's scores (w . x + b, standardised x): the difference of a
/// two-class fit's columns, so that sigmoid(score) is its probability.
struct Binary {
    weights: Array1<f64>,
    intercept: f64,
}

impl Binary {
    fn of(fitted: &Fitted) -> Binary {
        Binary {
            weights: &fitted.weights.column(1) - &fitted.weights.column(0),
            intercept: fitted.intercept[1] - fitted.intercept[0],
        }
    }

    /// A label every fitted row has (or none has): its rate, whatever the text.
    fn constant(width: usize, rate: f64) -> Binary {
        let p = rate.clamp(1e-4, 1.0 - 1e-4);
        Binary { weights: Array1::zeros(width), intercept: (p / (1.0 - p)).ln() }
    }

    fn probabilities(&self, x: &Array2<f64>) -> Vec<f64> {
        (x.dot(&self.weights) + self.intercept).iter().map(|&z| sigmoid(z)).collect()
    }
}

/// The 0/1 targets of `label` for `rows`.
fn targets(sets: &[Vec<usize>], rows: &[usize], label: usize) -> Vec<usize> {
    rows.iter().map(|&i| usize::from(sets[i].contains(&label))).collect()
}

/// One label's fit from `warm` (the path's previous alpha), in single or double precision.
fn fit_label(
    x: &Array2<f64>,
    y: &[usize],
    alpha: f64,
    config: &TrainConfig,
    warm: Option<&Fitted>,
    double: bool,
) -> anyhow::Result<(Binary, Option<Fitted>)> {
    let positives = y.iter().filter(|&&v| v == 1).count();
    if positives == 0 || positives == y.len() {
        return Ok((Binary::constant(x.ncols(), positives as f64 / y.len().max(1) as f64), None));
    }
    let fitted = if double {
        fit_f64(x, y, 2, alpha, config.max_iterations, warm)?
    } else {
        fit_f32(x, y, 2, alpha, config.max_iterations, warm)?
    };
    Ok((Binary::of(&fitted), Some(fitted)))
}

/// Held-out probabilities `[row][label]` per (feature set, fold, alpha's bits).
type HeldOut = BTreeMap<(usize, usize, u64), Array2<f64>>;

/// The decisions of `probabilities` at `thresholds`, as label sets.
fn decide(probabilities: &Array2<f64>, thresholds: &[f64]) -> Vec<Vec<usize>> {
    probabilities.rows().into_iter().map(|row| (0..row.len()).filter(|&l| row[l] >= thresholds[l]).collect()).collect()
}

/// The threshold, 0.05 to 0.95 in steps of 0.01, that gives one label's
/// held-out decisions the best F1; ties go to the one nearest 0.5.
fn best_threshold(probabilities: &[f64], truth: &[bool]) -> f64 {
    let mut best: (f64, f64) = (f64::NEG_INFINITY, 0.5);
    for step in 5..=95 {
        let t = f64::from(step) / 100.0;
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for (&p, &positive) in probabilities.iter().zip(truth) {
            match (positive, p >= t) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fn_ += 1,
                (false, false) => {}
            }
        }
        let f1 = if tp == 0 { 0.0 } else { 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64 };
        let better = f1 > best.0 + 1e-12 || ((f1 - best.0).abs() <= 1e-12 && (t - 0.5).abs() < (best.1 - 0.5).abs());
        if better {
            best = (f1, t);
        }
    }
    best.1
}

/// Trains a multi-label head (the caller records test metrics and saves it):
/// every label's held-out probabilities along each alpha path
/// ([`held_out_paths`]), candidates scored by micro-F1 at 0.5
/// ([`candidates`]), one chosen, each label's threshold on its held-out
/// probabilities ([`thresholds`]), the final fit on every row ([`final_fit`]).
pub fn train_multi_label(
    name: &str,
    encoder: EncoderStamp,
    data: MultiLabelData<'_>,
    config: &TrainConfig,
) -> anyhow::Result<LogisticHead> {
    let MultiLabelData { labels, features, sets, data_dir, data_fingerprints } = data;
    check_config(config)?;
    if !matches!(config.selection, Selection::CrossValidation { .. }) {
        bail!("a multi-label head is chosen by cross-validation (cv_folds >= 2)");
    }
    let started = Instant::now();
    let k = labels.len();
    // The search's layout with placeholder labels: rows, feature sets and folds are what is shared.
    let placeholder = vec![0usize; sets.len()];
    let search = SearchData::new(
        config,
        &LabelledFeatures { features, labels: &placeholder, texts: None, source: "upload", pair: None },
        None,
    )?;
    let held_out = held_out_paths(&search, sets, k, config)?;
    // Every fold's held-out rows together, in fold order, with their true sets.
    let held_truth: Vec<Vec<usize>> =
        (0..search.folds).flat_map(|fold| search.held_rows(fold)).map(|i| sets[i].clone()).collect();
    let candidates = candidates(name, &search, &held_out, labels, &held_truth, config);
    // One standard error of micro-F1 over every (text, label) decision.
    let best = choose(&candidates, encoder.hidden_size, held_truth.len() * k, SelectBy::MicroF1).expect("a candidate");
    let set = search.sets.iter().position(|s| *s == (best.layers.clone(), best.pooling)).expect("a searched set");
    let thresholds = thresholds(&pooled(&search, &held_out, set, best.alpha), &held_truth);
    let (fit, fitted_p) = final_fit(&search, set, sets, k, best.alpha, config)?;
    let thresholds_f32: Vec<f32> = thresholds.iter().map(|&t| t as f32).collect();
    let train_scores = MultiLabelScores::compute(labels, &thresholds_f32, sets, &decide(&fitted_p, &thresholds));

    let training = TrainingRecord {
        data_dir,
        data_fingerprints,
        train_examples: sets.len(),
        selection: config.selection,
        max_iterations: config.max_iterations,
        alpha: best.alpha,
        held_out_accuracy: best.accuracy,
        candidates,
        seconds: started.elapsed().as_secs_f64(),
        upload: None,
        calibration: None,
        select_by: Some(SelectBy::MicroF1),
        class_weights: None,
        weighting_effect: None,
        budget: None,
        graph_choice: None,
    };
    let metrics = HeadMetrics { multi_label_train: Some(train_scores), ..HeadMetrics::default() };
    let mut head = assemble(name, labels, &best, encoder, training, metrics, fit);
    head.multi_label = Some(MultiLabel { thresholds: thresholds_f32 });
    Ok(head.sealed())
}

/// Each (feature set, fold): every label's regularisation path, strongest
/// alpha first and warm-started, scored on the fold's held-out rows.
fn held_out_paths(search: &SearchData, sets: &[Vec<usize>], k: usize, config: &TrainConfig) -> anyhow::Result<HeldOut> {
    let n = sets.len();
    let mut alphas_down = config.alphas.clone();
    alphas_down.sort_by(|a, b| b.total_cmp(a));
    let jobs: Vec<(usize, usize)> =
        (0..search.sets.len()).flat_map(|set| (0..search.folds).map(move |fold| (set, fold))).collect();
    let fits = jobs.len() * k * alphas_down.len();
    let fits_done = std::sync::atomic::AtomicUsize::new(0);
    let per_job = parallel_map(&jobs, config.threads, |&(set, fold)| -> anyhow::Result<Vec<(u64, Array2<f64>)>> {
        let held = search.held_rows(fold);
        let mut is_held = vec![false; n];
        held.iter().for_each(|&i| is_held[i] = true);
        let kept: Vec<usize> = (0..n).filter(|&i| !is_held[i]).collect();
        let scaler = Scaler::fit(&select_rows(&search.fit[set], &kept));
        let (fit_x, held_x) =
            (scaler.apply(&select_rows(&search.fit[set], &kept)), scaler.apply(&select_rows(&search.fit[set], &held)));
        let mut by_alpha: Vec<Array2<f64>> = alphas_down.iter().map(|_| Array2::zeros((held.len(), k))).collect();
        for label in 0..k {
            let y = targets(sets, &kept, label);
            let mut previous: Option<Fitted> = None;
            for (a, &alpha) in alphas_down.iter().enumerate() {
                let (binary, fitted) = fit_label(&fit_x, &y, alpha, config, previous.as_ref(), false)?;
                by_alpha[a].column_mut(label).assign(&Array1::from(binary.probabilities(&held_x)));
                previous = fitted;
                if let Some(progress) = &config.progress {
                    progress.call(fits_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, fits);
                }
            }
        }
        Ok(alphas_down.iter().map(|a| a.to_bits()).zip(by_alpha).collect())
    });
    let mut held_out = HeldOut::new();
    for (&(set, fold), path) in jobs.iter().zip(per_job) {
        for (alpha, p) in path.map_err(|e| anyhow!("{e:#}"))? {
            held_out.insert((set, fold, alpha), p);
        }
    }
    Ok(held_out)
}

/// One feature set's held-out probabilities at `alpha`, every fold's rows in fold order.
fn pooled(search: &SearchData, held_out: &HeldOut, set: usize, alpha: f64) -> Array2<f64> {
    let parts: Vec<_> = (0..search.folds).map(|fold| held_out[&(set, fold, alpha.to_bits())].view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &parts).expect("same labels")
}

/// Every (feature set, alpha) scored on the held-out rows: micro- and
/// macro-F1 and subset accuracy at 0.5, and the mean binary log loss.
fn candidates(
    name: &str,
    search: &SearchData,
    held_out: &HeldOut,
    labels: &[String],
    held_truth: &[Vec<usize>],
    config: &TrainConfig,
) -> Vec<Candidate> {
    let k = labels.len();
    let half = vec![0.5; k];
    let mut candidates = Vec::new();
    for (set, (layers, pooling)) in search.sets.iter().enumerate() {
        for &alpha in &config.alphas {
            let p = pooled(search, held_out, set, alpha);
            let scores = MultiLabelScores::compute(labels, &vec![0.5; k], held_truth, &decide(&p, &half));
            let log_loss = binary_log_loss(&p, held_truth);
            tracing::info!(head = name, pooling = %pooling, alpha, micro_f1 = scores.micro_f1, "multi-label candidate scored");
            candidates.push(Candidate {
                pooling: *pooling,
                layers: layers.clone(),
                alpha,
                accuracy: scores.subset_accuracy,
                log_loss,
                weighting: None,
                macro_f1: Some(scores.macro_f1),
                micro_f1: Some(scores.micro_f1),
            });
        }
    }
    candidates
}

/// The mean log loss of every (text, label) decision.
fn binary_log_loss(probabilities: &Array2<f64>, truth: &[Vec<usize>]) -> f64 {
    let decisions = (probabilities.ncols() * truth.len()) as f64;
    let mut log_loss = 0.0;
    for (row, truth) in probabilities.rows().into_iter().zip(truth) {
        for (l, &q) in row.iter().enumerate() {
            let q = if truth.contains(&l) { q } else { 1.0 - q };
            log_loss -= q.max(1e-15).ln() / decisions;
        }
    }
    log_loss
}

/// Each label's threshold for its best held-out F1.
fn thresholds(probabilities: &Array2<f64>, truth: &[Vec<usize>]) -> Vec<f64> {
    (0..probabilities.ncols())
        .map(|l| {
            let positive: Vec<bool> = truth.iter().map(|t| t.contains(&l)).collect();
            best_threshold(&probabilities.column(l).to_vec(), &positive)
        })
        .collect()
}

/// The final fit: every row, each of `k` labels in double precision; with
/// the fitted rows' probabilities (for the training figures).
fn final_fit(
    search: &SearchData,
    set: usize,
    sets: &[Vec<usize>],
    k: usize,
    alpha: f64,
    config: &TrainConfig,
) -> anyhow::Result<(FinalFit, Array2<f64>)> {
    let all: Vec<usize> = (0..sets.len()).collect();
    let scaler = Scaler::fit(&search.fit[set]);
    let x = scaler.apply(&search.fit[set]);
    let mut weights = Vec::with_capacity(k);
    let mut intercept = Vec::with_capacity(k);
    let mut fitted_p = Array2::zeros((sets.len(), k));
    for label in 0..k {
        let (binary, _) = fit_label(&x, &targets(sets, &all, label), alpha, config, None, true)?;
        fitted_p.column_mut(label).assign(&Array1::from(binary.probabilities(&x)));
        weights.push(binary.weights.iter().map(|&v| v as f32).collect());
        intercept.push(binary.intercept as f32);
    }
    Ok((FinalFit { scaler, weights, intercept }, fitted_p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_maximise_each_labels_f1_and_prefer_one_half_on_ties() {
        // Positives at 0.3 and 0.35, negatives at 0.1 and 0.2: any threshold in (0.2, 0.3] is perfect.
        let t = best_threshold(&[0.3, 0.35, 0.1, 0.2], &[true, true, false, false]);
        assert!((t - 0.3).abs() < 1e-9, "{t}");
        // Perfectly separated around 0.5: 0.5 itself.
        assert_eq!(best_threshold(&[0.9, 0.1], &[true, false]), 0.5);
    }

    #[test]
    fn a_label_every_row_has_is_a_constant() {
        let x = Array2::from_shape_vec((3, 2), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let config = TrainConfig {
            poolings: vec![crate::pooling::FeaturePooling::Mean],
            layer_options: vec![None],
            alphas: vec![1.0],
            max_iterations: 10,
            selection: Selection::CrossValidation { folds: 2 },
            progress: None,
            threads: Some(1),
            class_weight: super::super::search::ClassWeight::None,
            time_budget: None,
        };
        let (binary, fitted) = fit_label(&x, &[1, 1, 1], 1.0, &config, None, false).unwrap();
        assert!(fitted.is_none());
        assert!(binary.probabilities(&x).iter().all(|&p| p > 0.99));
    }
}
