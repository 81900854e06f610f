//! The one SVG writer: a confusion matrix drawn as a self-contained SVG (no
//! scripts, no remote assets) for `GET /heads/{name}/confusion.svg` and
//! `distilserve evaluate`'s report. Rows are true labels, columns predicted
//! ones, each cell shaded by its share of the row (blue on the diagonal, red
//! off it), with the count written in it and the share in its tooltip.

use std::fmt::Write;

/// Text made safe inside SVG/XML elements and attributes.
pub fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c if c.is_control() => " ".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn shorten(label: &str) -> String {
    const MAX: usize = 18;
    if label.chars().count() <= MAX {
        label.to_string()
    } else {
        format!("{}…", label.chars().take(MAX - 1).collect::<String>())
    }
}

/// Cell size, width and height of the matrix of `k` labels.
fn matrix_size(k: usize) -> (usize, usize, usize) {
    let cell = if k <= 6 {
        64
    } else if k <= 20 {
        32
    } else {
        16
    };
    (cell, MATRIX_LEFT + cell * k + 20, MATRIX_TOP + cell * k + 40)
}

const MATRIX_LEFT: usize = 140;
const MATRIX_TOP: usize = 130;

/// Several classifiers' matrices over the same labels, side by side (`POST /heads/{name}/evaluate?format=svg`).
pub fn confusion_matrices(labels: &[String], matrices: &[(String, &[Vec<usize>])]) -> String {
    let (_, width, height) = matrix_size(labels.len());
    let total = width * matrices.len().max(1);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height}" viewBox="0 0 {total} {height}" role="img">"#
    );
    for (i, (title, confusion)) in matrices.iter().enumerate() {
        let one = confusion_matrix(labels, confusion, title);
        // A nested <svg> placed at its column keeps each matrix's own coordinates.
        svg.push_str(&one.replacen("<svg ", &format!(r#"<svg x="{}" y="0" "#, i * width), 1));
    }
    svg.push_str("</svg>");
    svg
}

/// `confusion[true][predicted]` counts, labels in the same order.
pub fn confusion_matrix(labels: &[String], confusion: &[Vec<usize>], title: &str) -> String {
    let k = labels.len();
    let (cell, width, height) = matrix_size(k);
    let (left, top) = (MATRIX_LEFT, MATRIX_TOP);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">"#
    );
    let _ = write!(svg, r#"<title>{}</title><rect width="100%" height="100%" fill="white"/>"#, escape(title));
    let _ = write!(svg, r#"<text x="10" y="20" font-size="14">{}</text>"#, escape(title));
    let _ = write!(svg, r#"<text x="{}" y="44" text-anchor="middle">predicted label</text>"#, left + cell * k / 2);
    let _ = write!(svg, r#"<text x="10" y="{}" >true label</text>"#, top - 8);
    for (i, label) in labels.iter().enumerate() {
        let x = left + cell * i + cell / 2;
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{}" transform="rotate(-45 {x} {})" text-anchor="start">{}</text>"#,
            top - 6,
            top - 6,
            escape(&shorten(label))
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>"#,
            left - 6,
            top + cell * i + cell / 2,
            escape(&shorten(label))
        );
    }
    for (t, row) in confusion.iter().enumerate().take(k) {
        let total: usize = row.iter().sum();
        for (p, &count) in row.iter().enumerate().take(k) {
            let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            // Diagonal in blue, errors in red; darker is a larger share of the row.
            let (r, g, b) = if t == p { (33, 102, 172) } else { (178, 24, 43) };
            let mix = |c: u8| (255.0 - (255.0 - f64::from(c)) * share).round() as u8;
            let (x, y) = (left + cell * p, top + cell * t);
            let _ = write!(
                svg,
                r##"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="#{:02x}{:02x}{:02x}" stroke="#888"><title>true {} / predicted {}: {count} ({:.1}% of the row)</title></rect>"##,
                mix(r),
                mix(g),
                mix(b),
                escape(&labels[t]),
                escape(&labels[p]),
                share * 100.0
            );
            if cell >= 32 {
                let ink = if share > 0.5 { "white" } else { "black" };
                let _ = write!(
                    svg,
                    r#"<text x="{}" y="{}" text-anchor="middle" dominant-baseline="middle" fill="{ink}">{count}</text>"#,
                    x + cell / 2,
                    y + cell / 2
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_labels_and_escaping() {
        let labels = vec!["neg".to_string(), "<pos & co>".to_string()];
        let svg = confusion_matrix(&labels, &[vec![3, 1], vec![2, 4]], "t: test");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        for count in [">3<", ">1<", ">2<", ">4<"] {
            assert!(svg.contains(count), "{count} missing");
        }
        assert!(svg.contains("&lt;pos &amp; co&gt;") && !svg.contains("<pos"));
        assert!(svg.contains("75.0% of the row"));
        let both = confusion_matrices(
            &labels,
            &[("a".into(), &[vec![3, 1], vec![2, 4]]), ("b".into(), &[vec![4, 0], vec![0, 6]])],
        );
        assert_eq!(both.matches("<svg").count(), 3);
        let (_, width, _) = matrix_size(2);
        assert!(both.contains(&format!(r#"<svg x="{width}" y="0" "#)) && both.contains(">6<"));
    }
}
