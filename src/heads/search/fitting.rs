//! The fits of the search and what they share: standardising, linfa's fit
//! (the final one), the solver's (the search's, `heads/solver.rs`), the
//! objective, scores, the temperature, and running jobs on every core.

use std::time::Instant;

use anyhow::{anyhow, bail};
use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2, Axis};

use crate::heads::logistic::Calibration;
use crate::heads::solver;
use crate::pooling::{argmax, softmax};

pub(in crate::heads) struct Scaler {
    pub(in crate::heads) mean: Array1<f64>,
    pub(in crate::heads) scale: Array1<f64>,
}

impl Scaler {
    pub(in crate::heads) fn fit(x: &Array2<f64>) -> Scaler {
        let mean = x.mean_axis(Axis(0)).expect("rows");
        let scale = x.std_axis(Axis(0), 0.0).mapv(|s| if s > 1e-12 { s } else { 1.0 });
        Scaler { mean, scale }
    }

    pub(in crate::heads) fn apply(&self, x: &Array2<f64>) -> Array2<f64> {
        (x - &self.mean) / &self.scale
    }
}

#[derive(Debug, Clone)]
pub(in crate::heads) struct Fitted {
    pub(in crate::heads) weights: Array2<f64>, // [features, classes]
    pub(in crate::heads) intercept: Array1<f64>,
}

impl Fitted {
    pub(super) fn logits(&self, x: &Array2<f64>) -> Array2<f64> {
        x.dot(&self.weights) + &self.intercept
    }

    pub(super) fn probabilities(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut z = x.dot(&self.weights) + &self.intercept;
        for mut row in z.rows_mut() {
            let p = softmax(&row.to_vec());
            row.assign(&Array1::from(p));
        }
        z
    }
}

pub(super) fn to_f64(x: &Array2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

/// Gradient tolerance per training row: linfa's loss is the sum over rows, so
/// a fixed tolerance would ask more of larger data sets; 1e-4 per row is
/// scikit-learn's `tol` on its averaged loss. Measured on the default head's
/// search (MiniLM, 45 candidates, 2 cores): 298 s when every fit ran its 300
/// iterations against linfa's fixed 1e-4, docs/performance.md has the figures.
pub(super) const GRADIENT_TOLERANCE_PER_ROW: f64 = 1e-4;

/// linfa's fit on `x` (standardised), in double precision (in single, the
/// final fit failed on all-mpnet-base-v2's features from a cold start: every
/// prediction one class): a head's final fit; `warm` starts from a nearby
/// solution of the same problem.
pub(in crate::heads) fn fit_f64(
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

/// A fit of the search (many per head): `heads/solver.rs`'s, in single
/// precision, the rows converted once per call (the search's alpha paths
/// convert them once per path with [`solver::Rows`] instead).
pub(in crate::heads) fn fit_f32(
    x: &Array2<f64>,
    y: &[usize],
    classes: usize,
    alpha: f64,
    max_iterations: u64,
    warm: Option<&Fitted>,
) -> anyhow::Result<Fitted> {
    search_fit(&solver::Rows::of(x), y, classes, alpha, max_iterations, warm)
}

/// One fit of the search on rows already converted, with linfa's stopping rule.
pub(in crate::heads) fn search_fit(
    rows: &solver::Rows,
    y: &[usize],
    classes: usize,
    alpha: f64,
    max_iterations: u64,
    warm: Option<&Fitted>,
) -> anyhow::Result<Fitted> {
    let tolerance = GRADIENT_TOLERANCE_PER_ROW * y.len().max(1) as f64;
    solver::fit(rows, y, classes, alpha, max_iterations, tolerance, warm)
}

/// The objective every fit minimises: cross-entropy summed over the rows plus
/// alpha/2 times the squared weights (linfa's).
pub(in crate::heads) fn penalised_loss(fitted: &Fitted, x: &Array2<f64>, y: &[usize], alpha: f64) -> f64 {
    let logits = fitted.logits(x);
    let mut total = 0.0;
    for (row, &label) in logits.rows().into_iter().zip(y) {
        let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        total += top + row.iter().map(|v| (v - top).exp()).sum::<f64>().ln() - row[label];
    }
    total + 0.5 * alpha * fitted.weights.iter().map(|w| w * w).sum::<f64>()
}

pub(super) fn score(fitted: &Fitted, x: &Array2<f64>, y: &[usize]) -> (f64, f64, Vec<usize>) {
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

pub(super) fn mean_log_loss(logits: &Array2<f64>, y: &[usize], temperature: f64) -> f64 {
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
pub(super) fn fit_temperature(logits: &Array2<f64>, y: &[usize]) -> Calibration {
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

pub(in crate::heads) fn select_rows(x: &Array2<f64>, rows: &[usize]) -> Array2<f64> {
    x.select(Axis(0), rows)
}

/// Runs `f` over `items` on every available core, keeping the order.
pub(in crate::heads) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: Option<usize>,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    parallel_map_until(items, threads, None, f).into_iter().map(|r| r.expect("no deadline")).collect()
}

/// As [`parallel_map`], but no item starts after `deadline`: those are None.
pub(in crate::heads) fn parallel_map_until<T: Sync, R: Send>(
    items: &[T],
    threads: Option<usize>,
    deadline: Option<Instant>,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = threads.unwrap_or_else(crate::threads::cores).min(items.len()).max(1);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn no_item_starts_after_the_deadline() {
        let items: Vec<usize> = (0..8).collect();
        let all = parallel_map_until(&items, Some(2), None, |i| i * 2);
        assert_eq!(all, (0..8).map(|i| Some(i * 2)).collect::<Vec<_>>());
        let passed = Instant::now() - std::time::Duration::from_millis(1);
        assert!(parallel_map_until(&items, Some(2), Some(passed), |i| i * 2).iter().all(Option::is_none));
    }
}
