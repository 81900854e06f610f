//! The search's logistic regression: the objective linfa-logistic's
//! `MultiLogisticRegression` minimises (cross-entropy summed over the rows,
//! plus alpha/2 times the squared weights; intercepts not penalised), by
//! L-BFGS, in single precision, with the loss and its gradient computed in one
//! pass over the rows.
//!
//! Why not linfa's own fit for the search's ~190 fits: its line search asks
//! for the loss and the gradient separately, each a product of the whole
//! matrix through `matrixmultiply` (which packs a copy of it first), so one
//! evaluation reads the rows three to five times; here it is once. The objective and the stopping rule are linfa's, so
//! the solution is the same within the gradient tolerance (tested against
//! linfa below); the head a user gets is still fitted by linfa (`final_fit`).

use std::collections::VecDeque;

use ndarray::{Array1, Array2};

use super::search::Fitted;

/// Standardised rows in single precision, row-major: what every fit of one
/// (feature set, fold) reads, made once for all its alphas.
pub(super) struct Rows {
    data: Vec<f32>,
    n: usize,
    d: usize,
}

impl Rows {
    pub(super) fn of(x: &Array2<f64>) -> Rows {
        Rows { data: x.iter().map(|&v| v as f32).collect(), n: x.nrows(), d: x.ncols() }
    }
}

/// History kept by L-BFGS (linfa's is 10 as well).
const MEMORY: usize = 10;
/// Sufficient decrease of the backtracking line search (Armijo).
const ARMIJO: f64 = 1e-4;
/// Step halvings tried before the line search gives up: by then the loss no
/// longer moves in single precision, and the fit is as good as it gets.
const MAX_BACKTRACKS: usize = 40;

/// One multinomial fit of `rows` (standardised) to labels `y` in
/// `0..classes`, stopping when the gradient's L2 norm is below `tolerance` (as
/// linfa's L-BFGS does), after `max_iterations`, or when no step lowers the
/// loss any more. `warm` starts from an earlier solution of the same problem.
pub(super) fn fit(
    rows: &Rows,
    y: &[usize],
    classes: usize,
    alpha: f64,
    max_iterations: u64,
    tolerance: f64,
    warm: Option<&Fitted>,
) -> anyhow::Result<Fitted> {
    anyhow::ensure!(rows.n == y.len(), "{} rows but {} labels", rows.n, y.len());
    if let Some(missing) = (0..classes).find(|c| !y.contains(c)) {
        anyhow::bail!("labels [{missing}] have no training examples");
    }
    let objective = Objective { rows, y, blocks: if classes == 2 { 1 } else { classes }, alpha };
    let (d, blocks) = (rows.d, objective.blocks);
    // Parameters: block b's weights at b*d.., then the intercepts. Two labels
    // are one block: the difference v = w1 - w0 (and c = b1 - b0), since the
    // multinomial loss depends on nothing else and its penalty is least with
    // w0 = -w1: the same minimiser at half the work of each pass.
    let mut p = vec![0.0f64; blocks * d + blocks];
    if let Some(w) = warm {
        let pick = |v: ndarray::ArrayView1<f64>, b: usize| if blocks == 1 { v[1] - v[0] } else { v[b] };
        for b in 0..blocks {
            for j in 0..d {
                p[b * d + j] = pick(w.weights.row(j), b);
            }
            p[blocks * d + b] = pick(w.intercept.view(), b);
        }
    }
    // linfa's norm is over both classes' gradients: sqrt(2) times the difference's.
    let tolerance = if blocks == 1 { tolerance / std::f64::consts::SQRT_2 } else { tolerance };
    let mut g = vec![0.0; p.len()];
    let mut f = objective.evaluate(&p, &mut g);
    let mut history: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::with_capacity(MEMORY);
    let (mut trial, mut trial_g) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    for _ in 0..max_iterations {
        if norm(&g) < tolerance {
            break;
        }
        let mut direction = two_loop(&g, &history);
        let mut slope = dot(&g, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): start the history over.
            history.clear();
            direction = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
        }
        // The first step has no curvature to scale it: a unit move along -g/|g|.
        let mut step = if history.is_empty() { 1.0 / norm(&g).max(1e-12) } else { 1.0 };
        let mut accepted = None;
        for _ in 0..MAX_BACKTRACKS {
            for ((t, &pi), &di) in trial.iter_mut().zip(&p).zip(&direction) {
                *t = pi + step * di;
            }
            let f_trial = objective.evaluate(&trial, &mut trial_g);
            if f_trial.is_finite() && f_trial <= f + ARMIJO * step * slope {
                accepted = Some(f_trial);
                break;
            }
            // The minimiser of the quadratic through f, the slope and f_trial, kept within [0.1, 0.5] of the step.
            let quadratic = -slope * step * step / (2.0 * (f_trial - f - slope * step));
            step = if quadratic.is_finite() { quadratic.clamp(0.1 * step, 0.5 * step) } else { 0.5 * step };
        }
        let Some(f_new) = accepted else { break };
        let s: Vec<f64> = trial.iter().zip(&p).map(|(a, b)| a - b).collect();
        let change: Vec<f64> = trial_g.iter().zip(&g).map(|(a, b)| a - b).collect();
        let curvature = dot(&s, &change);
        if curvature > 1e-10 * dot(&change, &change).sqrt() * norm(&s) {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, change, 1.0 / curvature));
        }
        std::mem::swap(&mut p, &mut trial);
        std::mem::swap(&mut g, &mut trial_g);
        let settled = (f - f_new).abs() <= f64::from(f32::EPSILON) * f.abs().max(1.0);
        f = f_new;
        if settled {
            break;
        }
    }
    let mut weights = Array2::zeros((d, classes));
    let mut intercept = Array1::zeros(classes);
    for j in 0..d {
        if blocks == 1 {
            weights[[j, 0]] = -p[j] / 2.0;
            weights[[j, 1]] = p[j] / 2.0;
        } else {
            for c in 0..classes {
                weights[[j, c]] = p[c * d + j];
            }
        }
    }
    if blocks == 1 {
        intercept[0] = -p[d] / 2.0;
        intercept[1] = p[d] / 2.0;
    } else {
        for c in 0..classes {
            intercept[c] = p[classes * d + c];
        }
    }
    Ok(Fitted { weights, intercept })
}

/// L-BFGS's two-loop recursion: the direction -H g from the kept (s, y, 1/s.y).
fn two_loop(g: &[f64], history: &VecDeque<(Vec<f64>, Vec<f64>, f64)>) -> Vec<f64> {
    let mut q: Vec<f64> = g.to_vec();
    let mut a = vec![0.0; history.len()];
    for (i, (s, y, rho)) in history.iter().enumerate().rev() {
        a[i] = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(q, y)| *q -= a[i] * y);
    }
    if let Some((s, y, _)) = history.back() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for (i, (s, y, rho)) in history.iter().enumerate() {
        let b = rho * dot(y, &q);
        q.iter_mut().zip(s).for_each(|(q, s)| *q += (a[i] - b) * s);
    }
    q.iter_mut().for_each(|v| *v = -*v);
    q
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

struct Objective<'a> {
    rows: &'a Rows,
    y: &'a [usize],
    /// Weight vectors: one for two labels (their difference), else one per label.
    blocks: usize,
    alpha: f64,
}

impl Objective<'_> {
    /// The loss at `p`, its gradient written to `g`.
    fn evaluate(&self, p: &[f64], g: &mut [f64]) -> f64 {
        let (k, d) = (self.blocks, self.rows.d);
        let weights: Vec<f32> = p[..k * d].iter().map(|&v| v as f32).collect();
        let bias: Vec<f32> = p[k * d..].iter().map(|&v| v as f32).collect();
        let mut grad_w = vec![0.0f32; k * d];
        let mut grad_b = vec![0.0f64; k];
        let x = &self.rows.data;
        let (loss, penalty_scale) = if k == 1 {
            // alpha/2 (|w0|^2 + |w1|^2) with w1 = -w0 = v/2 is alpha/4 |v|^2.
            (logistic(x, d, self.y, &weights, bias[0], &mut grad_w, &mut grad_b[0]), 0.5)
        } else {
            (cross_entropy(x, d, self.y, &weights, &bias, &mut grad_w, &mut grad_b), 1.0)
        };
        let mut penalty = 0.0;
        for (i, &w) in p[..k * d].iter().enumerate() {
            penalty += w * w;
            g[i] = f64::from(grad_w[i]) + penalty_scale * self.alpha * w;
        }
        g[k * d..].copy_from_slice(&grad_b);
        loss + 0.5 * penalty_scale * self.alpha * penalty
    }
}

/// Summed log-loss of sigmoid(x v + c) against labels 0/1 and its gradient,
/// in one pass over the rows: the two-label multinomial loss with v = w1 - w0.
fn logistic(x: &[f32], d: usize, y: &[usize], v: &[f32], c: f32, grad_v: &mut [f32], grad_c: &mut f64) -> f64 {
    let mut loss = 0.0f64;
    for (row, &label) in x.chunks_exact(d).zip(y) {
        let z = c + dot_f32(row, v);
        // -log p(label) = softplus(-z) for label 1, softplus(z) for label 0, computed stably.
        let m = if label == 1 { -z } else { z };
        loss += f64::from(m.max(0.0) + (-m.abs()).exp().ln_1p());
        let p1 = 1.0 / (1.0 + (-z).exp());
        let diff = p1 - if label == 1 { 1.0 } else { 0.0 };
        *grad_c += f64::from(diff);
        axpy_f32(grad_v, diff, row);
    }
    loss
}

/// Summed cross-entropy of softmax(x W + b) and its gradient, in one pass over
/// the rows (each row is read once, while it is in the L1 cache, for the
/// logits and for its share of the gradient).
fn cross_entropy(
    x: &[f32],
    d: usize,
    y: &[usize],
    weights: &[f32],
    bias: &[f32],
    grad_w: &mut [f32],
    grad_b: &mut [f64],
) -> f64 {
    let k = bias.len();
    let mut z = vec![0.0f32; k];
    let mut loss = 0.0f64;
    for (row, &label) in x.chunks_exact(d).zip(y) {
        for (c, z) in z.iter_mut().enumerate() {
            *z = bias[c] + dot_f32(row, &weights[c * d..(c + 1) * d]);
        }
        let top = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = top + z.iter().map(|v| (v - top).exp()).sum::<f32>().ln();
        loss += f64::from(log_sum - z[label]);
        for (c, &zc) in z.iter().enumerate() {
            let diff = (zc - log_sum).exp() - if c == label { 1.0 } else { 0.0 };
            grad_b[c] += f64::from(diff);
            axpy_f32(&mut grad_w[c * d..(c + 1) * d], diff, row);
        }
    }
    loss
}

/// Eight independent sums, so that the compiler keeps them in one vector register.
#[inline(always)]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, w) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * w[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_f32(out: &mut [f32], scale: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += scale * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::search::{fit_f64, penalised_loss, Scaler};

    /// Two or three noisy classes in 40 dimensions, standardised.
    fn problem(n: usize, classes: usize) -> (Array2<f64>, Vec<usize>) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let x = Array2::from_shape_fn((n, 40), |(i, j)| {
            let centre = if j % classes == y[i] { 0.6 } else { 0.0 };
            centre + noise() * 2.0
        });
        (Scaler::fit(&x).apply(&x), y)
    }

    #[test]
    fn reaches_linfas_optimum_from_cold_and_warm_starts() {
        for classes in [2, 3] {
            let (x, y) = problem(600, classes);
            let rows = Rows::of(&x);
            let tolerance = 1e-4 * y.len() as f64;
            let mut previous: Option<Fitted> = None;
            for alpha in [1000.0, 10.0, 1.0] {
                let ours = fit(&rows, &y, classes, alpha, 300, tolerance, previous.as_ref()).unwrap();
                let linfa = fit_f64(&x, &y, classes, alpha, 300, None).unwrap();
                let (a, b) = (penalised_loss(&ours, &x, &y, alpha), penalised_loss(&linfa, &x, &y, alpha));
                // Both stop at the same gradient norm, so the losses agree to
                // about what that tolerance leaves (here 0.1%).
                assert!(
                    (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                    "classes {classes}, alpha {alpha}: {a} vs linfa's {b}"
                );
                let predict = |f: &Fitted| -> Vec<usize> {
                    (x.dot(&f.weights) + &f.intercept)
                        .rows()
                        .into_iter()
                        .map(|r| crate::pooling::argmax(r.iter().copied()))
                        .collect()
                };
                let differ = predict(&ours).iter().zip(predict(&linfa)).filter(|(a, b)| **a != *b).count();
                assert!(differ <= 3, "classes {classes}, alpha {alpha}: {differ} of 600 predictions differ");
                previous = Some(ours);
            }
        }
    }

    #[test]
    fn refuses_a_label_without_examples() {
        let (x, _) = problem(30, 2);
        let error = fit(&Rows::of(&x), &[0; 30], 2, 1.0, 10, 1e-3, None).unwrap_err();
        assert!(error.to_string().contains("no training examples"), "{error}");
    }
}
