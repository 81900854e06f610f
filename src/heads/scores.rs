//! How well a head classifies (`Scores`; not the service's Prometheus `crate::metrics`): accuracy, macro-F1, per-class precision and recall,
//! confusion matrix.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClassScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Texts whose true label is this one.
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub examples: usize,
    pub per_class: Vec<ClassScores>,
    /// `confusion[true][predicted]` counts, labels in head order.
    pub confusion: Vec<Vec<usize>>,
}

impl Scores {
    pub fn compute(labels: &[String], truth: &[usize], predicted: &[usize]) -> Scores {
        let k = labels.len();
        let confusion = confusion(k, truth, predicted);
        let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
        let per_class: Vec<ClassScores> = (0..k)
            .map(|c| {
                let (precision, recall, f1, support) = class_scores(&confusion, c);
                ClassScores { label: labels[c].clone(), precision, recall, f1, support }
            })
            .collect();
        Scores {
            accuracy: ratio(correct, truth.len()),
            macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / k as f64,
            examples: truth.len(),
            per_class,
            confusion,
        }
    }
}

/// How well a multi-label head classifies: every (text, label) decision
/// counted once (micro), each label on its own (macro, per label), and whole
/// label sets (subset accuracy: the texts whose predicted set is exactly right).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MultiLabelScores {
    pub micro_f1: f64,
    pub macro_f1: f64,
    pub subset_accuracy: f64,
    pub examples: usize,
    pub per_label: Vec<LabelScores>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Texts that carry this label.
    pub support: usize,
    /// The probability at or over which the head answers this label.
    pub threshold: f32,
}

impl MultiLabelScores {
    /// `truth[i]` and `predicted[i]`: text i's label indices.
    pub fn compute(labels: &[String], thresholds: &[f32], truth: &[Vec<usize>], predicted: &[Vec<usize>]) -> Self {
        assert_eq!(truth.len(), predicted.len());
        let f1 = |tp: usize, fp: usize, fn_: usize| {
            let (p, r) = (ratio(tp, tp + fp), ratio(tp, tp + fn_));
            (p, r, if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) })
        };
        let (mut all_tp, mut all_fp, mut all_fn) = (0, 0, 0);
        let per_label: Vec<LabelScores> = labels
            .iter()
            .enumerate()
            .map(|(l, label)| {
                let (mut tp, mut fp, mut fn_) = (0, 0, 0);
                for (t, p) in truth.iter().zip(predicted) {
                    match (t.contains(&l), p.contains(&l)) {
                        (true, true) => tp += 1,
                        (false, true) => fp += 1,
                        (true, false) => fn_ += 1,
                        (false, false) => {}
                    }
                }
                (all_tp, all_fp, all_fn) = (all_tp + tp, all_fp + fp, all_fn + fn_);
                let (precision, recall, f1) = f1(tp, fp, fn_);
                LabelScores { label: label.clone(), precision, recall, f1, support: tp + fn_, threshold: thresholds[l] }
            })
            .collect();
        let exact = truth
            .iter()
            .zip(predicted)
            .filter(|(t, p)| {
                let (mut t, mut p) = ((*t).clone(), (*p).clone());
                t.sort_unstable();
                p.sort_unstable();
                t == p
            })
            .count();
        MultiLabelScores {
            micro_f1: f1(all_tp, all_fp, all_fn).2,
            macro_f1: per_label.iter().map(|l| l.f1).sum::<f64>() / labels.len().max(1) as f64,
            subset_accuracy: ratio(exact, truth.len()),
            examples: truth.len(),
            per_label,
        }
    }
}

/// Macro-F1 of `predicted` against `truth` over `classes` labels (what the
/// search scores a candidate by when labels are weighted).
pub fn macro_f1(classes: usize, truth: &[usize], predicted: &[usize]) -> f64 {
    let confusion = confusion(classes, truth, predicted);
    (0..classes).map(|c| class_scores(&confusion, c).2).sum::<f64>() / classes.max(1) as f64
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// `confusion[true][predicted]` counts.
fn confusion(classes: usize, truth: &[usize], predicted: &[usize]) -> Vec<Vec<usize>> {
    assert_eq!(truth.len(), predicted.len());
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    confusion
}

/// Precision, recall, F1 and support of class `c`.
fn class_scores(confusion: &[Vec<usize>], c: usize) -> (f64, f64, f64, usize) {
    let tp = confusion[c][c];
    let predicted_c: usize = confusion.iter().map(|row| row[c]).sum();
    let support: usize = confusion[c].iter().sum();
    let precision = ratio(tp, predicted_c);
    let recall = ratio(tp, support);
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    (precision, recall, f1, support)
}

/// Bins of the expected calibration error.
pub const CALIBRATION_BINS: usize = 10;

/// Expected calibration error of `probabilities` (one row per text, labels in
/// order) against `truth`: texts binned by the top label's probability
/// ([`CALIBRATION_BINS`] equal-width bins), the mean over bins, weighted by
/// their share of texts, of |accuracy - mean probability|. 0 is perfectly calibrated.
pub fn expected_calibration_error<P: AsRef<[f32]>>(probabilities: impl IntoIterator<Item = P>, truth: &[usize]) -> f64 {
    let mut count = [0usize; CALIBRATION_BINS];
    let mut confidence = [0f64; CALIBRATION_BINS];
    let mut correct = [0f64; CALIBRATION_BINS];
    for (p, &t) in probabilities.into_iter().zip(truth) {
        let p = p.as_ref();
        let best = crate::pooling::argmax(p.iter().copied());
        let bin = ((f64::from(p[best]) * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        count[bin] += 1;
        confidence[bin] += f64::from(p[best]);
        correct[bin] += f64::from(u8::from(best == t));
    }
    let n = truth.len().max(1) as f64;
    (0..CALIBRATION_BINS).filter(|&b| count[b] > 0).map(|b| (correct[b] - confidence[b]).abs() / n).sum()
}

/// McNemar's test of two classifiers on the same texts: only the texts
/// exactly one of them got right count. `p_value` is the exact two-sided
/// binomial test of those counts against an even split (statsmodels'
/// `mcnemar(exact=True)`); `chi_square` the continuity-corrected statistic
/// (`exact=False`), for reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct McNemar {
    pub only_a_correct: usize,
    pub only_b_correct: usize,
    pub p_value: f64,
    pub chi_square: f64,
}

impl McNemar {
    pub fn of(a_correct: &[bool], b_correct: &[bool]) -> McNemar {
        assert_eq!(a_correct.len(), b_correct.len());
        let only_a = a_correct.iter().zip(b_correct).filter(|(a, b)| **a && !**b).count();
        let only_b = a_correct.iter().zip(b_correct).filter(|(a, b)| !**a && **b).count();
        let n = only_a + only_b;
        let chi_square =
            if n == 0 { 0.0 } else { ((only_a as f64 - only_b as f64).abs() - 1.0).max(0.0).powi(2) / n as f64 };
        McNemar {
            only_a_correct: only_a,
            only_b_correct: only_b,
            p_value: binomial_two_sided(only_a.min(only_b), n),
            chi_square,
        }
    }
}

/// P(X <= k) doubled (at most 1) for X ~ Binomial(n, 1/2), in log space so
/// that large n neither underflows nor overflows.
fn binomial_two_sided(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let mut log_term = -(n as f64) * std::f64::consts::LN_2; // log C(n, 0) / 2^n
    let mut logs = Vec::with_capacity(k + 1);
    for i in 0..=k {
        logs.push(log_term);
        log_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * logs.iter().map(|l| (l - top).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_known_confusion() {
        let labels = vec!["neg".to_string(), "pos".to_string()];
        // truth:     n n n n p p p p p p
        // predicted: n n n p p p p p n n
        let truth = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1];
        let pred = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0];
        let m = Scores::compute(&labels, &truth, &pred);
        assert_eq!(m.confusion, vec![vec![3, 1], vec![2, 4]]);
        assert!((m.accuracy - 0.7).abs() < 1e-12);
        assert!((m.per_class[0].precision - 0.6).abs() < 1e-12);
        assert!((m.per_class[0].recall - 0.75).abs() < 1e-12);
        assert!((m.per_class[1].precision - 0.8).abs() < 1e-12);
        let f1_neg = 2.0 * 0.6 * 0.75 / 1.35;
        let f1_pos = 2.0 * 0.8 * (4.0 / 6.0) / (0.8 + 4.0 / 6.0);
        assert!((m.macro_f1 - (f1_neg + f1_pos) / 2.0).abs() < 1e-12);
        assert_eq!(m.per_class[1].support, 6);
        assert_eq!(macro_f1(2, &truth, &pred), m.macro_f1);
    }

    #[test]
    fn mcnemar_matches_the_binomial_and_chi_square_by_hand() {
        // 10 texts only a got right, 2 only b: P(X <= 2) for Binomial(12, 1/2) = 79 / 4096.
        let a: Vec<bool> = (0..20).map(|i| i < 15).collect();
        let b: Vec<bool> = (0..20).map(|i| i < 5 || (15..17).contains(&i)).collect();
        let m = McNemar::of(&a, &b);
        assert_eq!((m.only_a_correct, m.only_b_correct), (10, 2));
        assert!((m.p_value - 2.0 * 79.0 / 4096.0).abs() < 1e-12, "{m:?}");
        assert!((m.chi_square - 49.0 / 12.0).abs() < 1e-12);
        // Even splits are p = 1; large counts stay finite: 600 vs 400 of 1,000 is p < 1e-9.
        assert_eq!(McNemar::of(&[true, false], &[false, true]).p_value, 1.0);
        let p = binomial_two_sided(400, 1000);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    #[test]
    fn multi_label_scores_of_known_sets() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // a: tp 2, fn 0, fp 1; b: tp 1, fn 1; c: fp 1. Micro: tp 3, fp 2, fn 1.
        let truth = vec![vec![0, 1], vec![0], vec![1], vec![]];
        let predicted = vec![vec![1, 0], vec![0, 2], vec![0], vec![]];
        let m = MultiLabelScores::compute(&labels, &[0.5, 0.4, 0.6], &truth, &predicted);
        let micro = 2.0 * 0.6 * 0.75 / (0.6 + 0.75);
        assert!((m.micro_f1 - micro).abs() < 1e-12, "{m:?}");
        assert_eq!((m.per_label[0].support, m.per_label[1].support, m.per_label[2].support), (2, 2, 0));
        assert!((m.per_label[0].precision - 2.0 / 3.0).abs() < 1e-12 && m.per_label[0].recall == 1.0);
        assert_eq!((m.per_label[1].precision, m.per_label[1].recall, m.per_label[2].f1), (1.0, 0.5, 0.0));
        // Texts 0 (same set, other order) and 3 (both empty) are exactly right.
        assert_eq!(m.subset_accuracy, 0.5);
        assert_eq!(m.per_label[1].threshold, 0.4);
    }

    #[test]
    fn calibration_error_of_known_bins() {
        // Two texts at 0.9 (one right), two at 0.6 (both right): |0.5 - 0.9| / 2 + |1 - 0.6| / 2.
        let p = [vec![0.1f32, 0.9], vec![0.1, 0.9], vec![0.4, 0.6], vec![0.4, 0.6]];
        let ece = expected_calibration_error(&p, &[1, 0, 1, 1]);
        assert!((ece - 0.4).abs() < 1e-6, "{ece}");
    }
}
