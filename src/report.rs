//! Evaluation reports: a text table for the terminal and a JSON report (the
//! confusion matrix's picture is `svg`'s).

use std::fmt::Write as _;

use serde::Serialize;

use crate::heads::scores::Scores;

/// One classifier's result on the evaluated split.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub description: String,
    pub metrics: Scores,
}

/// One feature set of the head's search with its best alpha.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateRow {
    pub layers: String,
    pub pooling: String,
    pub features: usize,
    pub alpha: f64,
    /// Mean held-out accuracy of the selection (cross-validation or validation).
    pub accuracy: f64,
    pub log_loss: f64,
    pub chosen: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub head: String,
    pub encoder: String,
    /// How the head's candidates were scored.
    pub selection: String,
    pub training_seconds: f64,
    pub candidates: Vec<CandidateRow>,
    pub data: String,
    pub split: String,
    pub examples: usize,
    pub labels: Vec<String>,
    /// The head first, then the baselines.
    pub rows: Vec<Row>,
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} (encoder {}, trained in {:.1} s) on {} / {} ({} texts)\n",
            self.head, self.encoder, self.training_seconds, self.data, self.split, self.examples
        );
        if !self.candidates.is_empty() {
            let _ = writeln!(out, "search ({}), best alpha per feature set:", self.selection);
            let _ = writeln!(
                out,
                "  {:<22} {:<9} {:>8} {:>8} {:>9} {:>9}",
                "layers", "pooling", "features", "alpha", "accuracy", "log-loss"
            );
            for c in &self.candidates {
                let _ = writeln!(
                    out,
                    "{} {:<22} {:<9} {:>8} {:>8} {:>9.4} {:>9.4}",
                    if c.chosen { "*" } else { " " },
                    c.layers,
                    c.pooling,
                    c.features,
                    c.alpha,
                    c.accuracy,
                    c.log_loss
                );
            }
            let _ = writeln!(out, "  (* chosen; the test split below played no part in the choice)\n");
        }
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(10).max(10);
        let _ = writeln!(out, "{:<width$}  {:>8}  {:>8}  {}", "classifier", "accuracy", "macro-F1", "details");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<width$}  {:>8.4}  {:>8.4}  {}",
                r.name, r.metrics.accuracy, r.metrics.macro_f1, r.description
            );
        }
        if let Some(head) = self.rows.first() {
            let _ = writeln!(out, "\n{}: per class", head.name);
            let _ = writeln!(out, "{:<12} {:>9} {:>9} {:>9} {:>8}", "label", "precision", "recall", "f1", "support");
            for c in &head.metrics.per_class {
                let _ = writeln!(
                    out,
                    "{:<12} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                    c.label, c.precision, c.recall, c.f1, c.support
                );
            }
            let _ = writeln!(out, "\nconfusion matrix (rows: true label, columns: predicted)");
            let _ = write!(out, "{:<12}", "");
            for l in &self.labels {
                let _ = write!(out, " {l:>8}");
            }
            let _ = writeln!(out);
            for (l, row) in self.labels.iter().zip(&head.metrics.confusion) {
                let _ = write!(out, "{l:<12}");
                for v in row {
                    let _ = write!(out, " {v:>8}");
                }
                let _ = writeln!(out);
            }
        }
        out
    }
}
