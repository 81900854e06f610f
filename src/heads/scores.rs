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
}
