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
    Calibration, Candidate, EncoderStamp, HeadMetrics, LogisticHead, Selection, TrainingRecord, FORMAT_VERSION,
};
use super::metrics::Metrics;
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
}

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

/// One fit on `x` (standardised) in the given floating-point type (linfa's
/// solver is generic, but over a trait of its own that it does not export);
/// `warm` starts from an earlier solution of the same problem at another
/// alpha, which converges in far fewer iterations.
macro_rules! fit_in {
    ($name:ident, $f:ty) => {
        fn $name(
            x: &Array2<f64>,
            y: &[usize],
            classes: usize,
            alpha: f64,
            max_iterations: u64,
            warm: Option<&Fitted>,
        ) -> anyhow::Result<Fitted> {
            let targets = Array1::from(y.to_vec());
            let dataset = Dataset::new(x.mapv(<$f as linfa::Float>::cast), targets);
            let mut params = MultiLogisticRegression::<$f>::default()
                .alpha(<$f as linfa::Float>::cast(alpha))
                .max_iterations(max_iterations)
                .gradient_tolerance(<$f as linfa::Float>::cast(GRADIENT_TOLERANCE_PER_ROW * y.len().max(1) as f64));
            if let Some(w) = warm {
                // linfa's layout: one row per feature, then the intercept row.
                let mut init = Array2::<$f>::zeros((x.ncols() + 1, classes));
                init.slice_axis_mut(Axis(0), ndarray::Slice::from(..x.ncols()))
                    .assign(&w.weights.mapv(<$f as linfa::Float>::cast));
                init.row_mut(x.ncols()).assign(&w.intercept.mapv(<$f as linfa::Float>::cast));
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
                weights.column_mut(class).assign(&model.params().column(col).mapv(f64::from));
                intercept[class] = f64::from(model.intercept()[col]);
            }
            Ok(Fitted { weights, intercept })
        }
    };
}
// The search's many fits: single precision halves the memory traffic of every
// pass over the data, which is what a fit spends its time on (the default
// head's search took 112 s instead of 153 s, with the same choice and test
// accuracy).
fit_in!(fit_f32, f32);
// The final fit: in single precision it failed on all-mpnet-base-v2's features
// from a cold start (every prediction one class), in double it does not; it is one fit.
fit_in!(fit_f64, f64);

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

fn select_rows(x: &Array2<f64>, rows: &[usize]) -> Array2<f64> {
    x.select(Axis(0), rows)
}

/// One model fit of the search: a candidate on one fold.
struct Task {
    /// Index into the feature sets (layer option x pooling).
    set: usize,
    alpha: f64,
    fold: usize,
}

/// Runs `f` over `items` on every available core, keeping the order.
fn parallel_map<T: Sync, R: Send>(items: &[T], threads: Option<usize>, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = threads.unwrap_or(cores).min(items.len()).max(1);
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
/// options (README, "Choosing a head"): the best mean held-out accuracy wins,
/// except that every candidate within one standard error of it,
/// sqrt(acc (1 - acc) / n) over the `held_out` predictions, counts as tied,
/// and a tie goes to the simpler candidate: fewer features; among equally
/// wide ones the more accurate, then the lower log-loss. The test split plays
/// no part.
fn choose(candidates: &[Candidate], hidden: usize, held_out: usize) -> Candidate {
    let best = candidates.iter().map(|c| c.accuracy).fold(f64::NEG_INFINITY, f64::max);
    let standard_error = (best * (1.0 - best) / held_out.max(1) as f64).sqrt();
    candidates
        .iter()
        .filter(|c| c.accuracy >= best - standard_error)
        .min_by(|a, b| {
            a.width(hidden)
                .cmp(&b.width(hidden))
                .then(b.accuracy.total_cmp(&a.accuracy))
                .then(a.log_loss.total_cmp(&b.log_loss))
        })
        .expect("at least one candidate")
        .clone()
}

/// Trains a head: every (pooling, alpha) candidate is scored by `selection`,
/// one is chosen by [`choose`], and the final model is fitted (see
/// [`Selection`]). Deterministic for the same inputs.
pub fn train(
    name: &str,
    encoder: EncoderStamp,
    data: TrainingData<'_>,
    config: &TrainConfig,
) -> anyhow::Result<LogisticHead> {
    let TrainingData { labels, train, validation, data_dir, data_fingerprints } = data;
    if config.poolings.is_empty() || config.alphas.is_empty() {
        bail!("training needs at least one pooling and one alpha");
    }
    if let Some(bad) = config.alphas.iter().find(|a| !a.is_finite() || **a < 0.0) {
        bail!("alpha {bad} is not a finite non-negative number");
    }
    let started = Instant::now();
    let classes = labels.len();
    let hidden = encoder.hidden_size;
    if config.layer_options.is_empty() {
        bail!("training needs at least one layer option");
    }
    // Feature sets: every layer option with every pooling.
    let sets: Vec<(Option<LayerSelection>, FeaturePooling)> =
        config.layer_options.iter().flat_map(|l| config.poolings.iter().map(move |&p| (l.clone(), p))).collect();
    let features = |set: &LabelledFeatures<'_>, (layers, pooling): &(Option<LayerSelection>, FeaturePooling)| {
        to_f64(&set.features.get(*pooling, layers.as_ref()))
    };

    // What candidates are fitted on and scored against, per feature set.
    let (fit_sets, score_sets, folds): (Vec<Array2<f64>>, Vec<Option<Array2<f64>>>, usize) = match config.selection {
        Selection::Validation => {
            let Some(v) = validation.as_ref() else {
                bail!("selection on the validation split, but the data set has none")
            };
            (
                sets.iter().map(|set| features(&train, set)).collect(),
                sets.iter().map(|set| Some(features(v, set))).collect(),
                1,
            )
        }
        Selection::CrossValidation { folds } => {
            let pooled = sets
                .iter()
                .map(|set| match validation.as_ref() {
                    Some(v) => ndarray::concatenate(Axis(0), &[features(&train, set).view(), features(v, set).view()])
                        .expect("same width"),
                    None => features(&train, set),
                })
                .collect::<Vec<_>>();
            (pooled, vec![None; sets.len()], folds)
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

    let tasks: Vec<Task> = (0..sets.len())
        .flat_map(|set| {
            config.alphas.iter().flat_map(move |&alpha| (0..folds).map(move |fold| Task { set, alpha, fold }))
        })
        .collect();
    let fits_done = std::sync::atomic::AtomicUsize::new(0);
    // Per task: accuracy, log-loss, and the held-out rows' logits with their labels
    // (what the temperature is fitted on, for the chosen candidate).
    type Scored = (f64, f64, Array2<f64>, Vec<usize>);
    // One job per (feature set, fold): its alphas from the strongest penalty
    // down, each fit starting from the previous solution.
    let mut jobs: Vec<(usize, usize)> =
        (0..sets.len()).flat_map(|set| (0..folds).map(move |fold| (set, fold))).collect();
    // Widest first: the threads finish together instead of one waiting on the
    // last wide fit (a job's time grows with its width).
    jobs.sort_by_key(|&(set, _)| std::cmp::Reverse(fit_sets[set].ncols()));
    let mut alphas_down: Vec<f64> = config.alphas.clone();
    alphas_down.sort_by(|a, b| b.total_cmp(a));
    type AlphaPath = Vec<(f64, Scored)>;
    let per_job = parallel_map(&jobs, config.threads, |&(set, fold)| -> anyhow::Result<AlphaPath> {
        let x = &fit_sets[set];
        let (fit_x, fit_y, score_x, score_y) = match (&score_sets[set], validation.as_ref()) {
            (Some(vx), Some(v)) => (x.clone(), fit_labels.clone(), vx.clone(), v.labels.to_vec()),
            _ => {
                let (held, kept): (Vec<usize>, Vec<usize>) = (0..fit_labels.len()).partition(|i| i % folds == fold);
                (
                    select_rows(x, &kept),
                    kept.iter().map(|&i| fit_labels[i]).collect(),
                    select_rows(x, &held),
                    held.iter().map(|&i| fit_labels[i]).collect(),
                )
            }
        };
        let scaler = Scaler::fit(&fit_x);
        let (fit_x, scaled) = (scaler.apply(&fit_x), scaler.apply(&score_x));
        let mut previous: Option<Fitted> = None;
        let mut out = Vec::with_capacity(alphas_down.len());
        for &alpha in &alphas_down {
            let fitted = fit_f32(&fit_x, &fit_y, classes, alpha, config.max_iterations, previous.as_ref())?;
            let (accuracy, log_loss, _) = score(&fitted, &scaled, &score_y);
            if let Some(progress) = &config.progress {
                progress.call(fits_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, tasks.len());
            }
            out.push((alpha, (accuracy, log_loss, fitted.logits(&scaled), score_y.clone())));
            previous = Some(fitted);
        }
        Ok(out)
    });
    // Back in task order (set, alpha, fold).
    let mut by_task: BTreeMap<(usize, usize, u64), Scored> = BTreeMap::new();
    for (&(set, fold), result) in jobs.iter().zip(per_job) {
        for (alpha, scored) in result.map_err(|e| anyhow!("{e:#}"))? {
            by_task.insert((set, fold, alpha.to_bits()), scored);
        }
    }
    let scores: Vec<anyhow::Result<Scored>> = tasks
        .iter()
        .map(|t| Ok(by_task.remove(&(t.set, t.fold, t.alpha.to_bits())).expect("every task scored")))
        .collect();
    let mut candidates = Vec::new();
    for (chunk, task) in scores.chunks(folds).zip(tasks.iter().step_by(folds)) {
        let (mut accuracy, mut log_loss) = (0.0, 0.0);
        for result in chunk {
            let (a, l, _, _) = result.as_ref().map_err(|e| anyhow!("{e:#}"))?;
            accuracy += a / folds as f64;
            log_loss += l / folds as f64;
        }
        let (layers, pooling) = sets[task.set].clone();
        tracing::info!(
            head = name,
            pooling = %pooling,
            layers = layers.as_ref().map(|l| l.describe(encoder.last_layer())).unwrap_or_else(|| "-1".into()),
            alpha = task.alpha,
            accuracy,
            log_loss,
            "candidate scored"
        );
        candidates.push(Candidate { pooling, layers, alpha: task.alpha, accuracy, log_loss });
    }
    let held_out = match (config.selection, validation.as_ref()) {
        (Selection::Validation, Some(v)) => v.labels.len(),
        _ => fit_labels.len(),
    };
    let best = choose(&candidates, hidden, held_out);
    // The chosen candidate's held-out logits, every fold together: a temperature
    // fitted on them never sees the final fit's own training rows, nor test.
    let best_task = tasks
        .iter()
        .position(|t| sets[t.set] == (best.layers.clone(), best.pooling) && t.alpha == best.alpha)
        .expect("the chosen candidate was scored");
    let (held_logits, held_labels): (Vec<Array2<f64>>, Vec<usize>) = {
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for result in &scores[best_task..best_task + folds] {
            let (_, _, z, y) = result.as_ref().map_err(|e| anyhow!("{e:#}"))?;
            logits.push(z.clone());
            labels.extend(y);
        }
        (logits, labels)
    };
    let held_logits =
        ndarray::concatenate(Axis(0), &held_logits.iter().map(|a| a.view()).collect::<Vec<_>>()).expect("same width");
    let calibration = fit_temperature(&held_logits, &held_labels);

    let index = sets.iter().position(|set| *set == (best.layers.clone(), best.pooling)).expect("a searched set");
    let x = &fit_sets[index];
    let scaler = Scaler::fit(x);
    let fitted = fit_f64(&scaler.apply(x), &fit_labels, classes, best.alpha, config.max_iterations, None)?;
    let (fit_accuracy, _, fit_pred) = score(&fitted, &scaler.apply(x), &fit_labels);
    // A final fit far below what its candidate scored on held-out rows did not
    // converge: refuse it rather than publish a head that answers one class.
    if fit_accuracy + 0.05 < best.accuracy {
        bail!(
            "the final fit did not converge: accuracy {fit_accuracy:.4} on its own training rows, while the chosen \
             candidate scored {:.4} held out; try more training.max_iterations or another alpha",
            best.accuracy
        );
    }
    // Held-out validation metrics exist only when validation was not fitted on.
    let validation_metrics = match (config.selection, validation.as_ref()) {
        (Selection::Validation, Some(v)) => {
            let (_, _, pred) =
                score(&fitted, &scaler.apply(&features(v, &(best.layers.clone(), best.pooling))), v.labels);
            Some(Metrics::compute(labels, v.labels, &pred))
        }
        _ => None,
    };

    let head = LogisticHead {
        format_version: FORMAT_VERSION,
        kind: "logistic".into(),
        name: name.to_string(),
        labels: labels.to_vec(),
        pooling: best.pooling,
        layers: best.layers.clone(),
        encoder,
        training: TrainingRecord {
            data_dir,
            data_fingerprints,
            train_examples: fit_labels.len(),
            selection: config.selection,
            max_iterations: config.max_iterations,
            alpha: best.alpha,
            held_out_accuracy: best.accuracy,
            candidates,
            seconds: started.elapsed().as_secs_f64(),
            upload: None,
            calibration: Some(calibration.clone()),
        },
        metrics: HeadMetrics {
            train: Some(Metrics::compute(labels, &fit_labels, &fit_pred)),
            validation: validation_metrics,
            test: None,
            test_calibration: None,
        },
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        description: None,
        temperature: calibration.temperature,
        min_probability: None,
        scaler_mean: scaler.mean.iter().map(|&v| v as f32).collect(),
        scaler_scale: scaler.scale.iter().map(|&v| v as f32).collect(),
        weights: (0..classes).map(|c| fitted.weights.column(c).iter().map(|&v| v as f32).collect()).collect(),
        intercept: fitted.intercept.iter().map(|&v| v as f32).collect(),
        checksum: String::new(),
    };
    Ok(head.sealed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(pooling: FeaturePooling, layers: Option<LayerSelection>, alpha: f64, accuracy: f64) -> Candidate {
        Candidate { pooling, layers, alpha, accuracy, log_loss: 0.5 }
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
        let chosen = choose(&candidates, 8, 10_000);
        assert_eq!((chosen.pooling, chosen.layers.clone()), (FeaturePooling::Mean, mean4));
        // With fewer held-out predictions the standard error grows; with many
        // more it shrinks and the best alone is left.
        let chosen = choose(&candidates, 8, 10_000_000);
        assert_eq!((chosen.pooling, chosen.layers), (FeaturePooling::ClsMean, concat));
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
}
