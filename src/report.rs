//! Evaluation reports: a text table for the terminal, a JSON report, and the
//! normalised confusion matrix as an SVG picture.

use std::fmt::Write as _;

use serde::Serialize;

use crate::heads::metrics::Metrics;

/// One classifier's result on the evaluated split.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub description: String,
    pub metrics: Metrics,
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

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The confusion matrix normalised by true label (each row sums to 1), as SVG.
pub fn confusion_svg(title: &str, labels: &[String], confusion: &[Vec<usize>]) -> String {
    let k = labels.len();
    let cell = 90.0;
    let (left, top) = (130.0, 80.0);
    let size = cell * k as f64;
    // Wide enough for the title at about 8 px a character.
    let w = (left + size + 30.0).max(title.chars().count() as f64 * 8.0 + 40.0);
    let h = top + size + 70.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ =
        writeln!(svg, r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#, w / 2.0, escape(title));
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">predicted label</text>"#,
        left + size / 2.0,
        top + size + 55.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{}" font-size="13" text-anchor="middle" transform="rotate(-90 20 {})">true label</text>"#,
        top + size / 2.0,
        top + size / 2.0
    );
    for (i, row) in confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            // White to dark blue; text flips to white on dark cells.
            let shade = |c: f64| (255.0 - share * (255.0 - c)).round() as u8;
            let (x, y) = (left + j as f64 * cell, top + i as f64 * cell);
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({},{},{})" stroke="gray"/>"#,
                shade(8.0),
                shade(48.0),
                shade(107.0)
            );
            let colour = if share > 0.5 { "white" } else { "black" };
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" font-size="15" text-anchor="middle" fill="{colour}">{share:.2}</text>"#,
                x + cell / 2.0,
                y + cell / 2.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="{colour}">({count})</text>"#,
                x + cell / 2.0,
                y + cell / 2.0 + 18.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="13" text-anchor="end">{}</text>"#,
            left - 8.0,
            top + i as f64 * cell + cell / 2.0 + 4.0,
            escape(&labels[i])
        );
    }
    for (j, l) in labels.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">{}</text>"#,
            left + j as f64 * cell + cell / 2.0,
            top + size + 20.0,
            escape(l)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_holds_normalised_shares_and_escaped_labels() {
        let svg = confusion_svg("t <1>", &["a&b".into(), "c".into()], &[vec![3, 1], vec![0, 4]]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">0.75<") && svg.contains(">0.25<") && svg.contains(">1.00<"));
        assert!(svg.contains("a&amp;b") && svg.contains("t &lt;1&gt;"));
    }
}
