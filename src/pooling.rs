//! From per-token hidden states to one vector per text. A leaf module: the
//! request path (`/embed`, `/classify`) and batch extraction both pool here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One sequence's output rows: the real tokens' hidden states (`rows` =
/// tokens, `cols` = hidden size), or one row of logits. Padding never appears.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Rows {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// How token vectors become the answer: `none` keeps every real token's
/// vector, `cls` takes the first token's ([CLS]), `mean` averages the real tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    None,
    Cls,
    Mean,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

/// Which vector represents a text for a classifier head: it differs from
/// [`Pooling`] in having `cls_mean` and no per-token choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FeaturePooling {
    /// The first token's last hidden state.
    Cls,
    /// Mean over real tokens.
    Mean,
    /// Both, concatenated.
    #[value(name = "cls_mean")]
    ClsMean,
}

impl Pooling {
    /// The same choice as a [`FeaturePooling`]; None for `none`.
    pub fn features(self) -> Option<FeaturePooling> {
        match self {
            Pooling::None => None,
            Pooling::Cls => Some(FeaturePooling::Cls),
            Pooling::Mean => Some(FeaturePooling::Mean),
        }
    }
}

impl FeaturePooling {
    pub const ALL: [FeaturePooling; 3] = [FeaturePooling::Cls, FeaturePooling::Mean, FeaturePooling::ClsMean];

    pub fn as_str(self) -> &'static str {
        match self {
            FeaturePooling::Cls => "cls",
            FeaturePooling::Mean => "mean",
            FeaturePooling::ClsMean => "cls_mean",
        }
    }

    /// Feature width for an encoder of `hidden` dimensions.
    pub fn width(self, hidden: usize) -> usize {
        if self == FeaturePooling::ClsMean {
            2 * hidden
        } else {
            hidden
        }
    }

    /// One text's feature vector.
    pub fn features(self, rows: &Rows) -> Vec<f32> {
        match self {
            FeaturePooling::Cls => cls(rows),
            FeaturePooling::Mean => mean(rows),
            FeaturePooling::ClsMean => {
                let mut v = cls(rows);
                v.extend(mean(rows));
                v
            }
        }
    }
}

impl std::fmt::Display for FeaturePooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first token's vector ([CLS]).
pub fn cls(rows: &Rows) -> Vec<f32> {
    rows.row(0).to_vec()
}

/// The mean of every row, accumulated in f64.
pub fn mean(rows: &Rows) -> Vec<f32> {
    let mut sum = vec![0f64; rows.cols];
    for r in 0..rows.rows {
        for (acc, v) in sum.iter_mut().zip(rows.row(r)) {
            *acc += f64::from(*v);
        }
    }
    let n = rows.rows.max(1) as f64;
    sum.into_iter().map(|s| (s / n) as f32).collect()
}

/// One vector for the sequence; `None` for [`Pooling::None`].
pub fn pool(rows: &Rows, pooling: Pooling) -> Option<Vec<f32>> {
    match pooling {
        Pooling::None => None,
        Pooling::Cls => Some(cls(rows)),
        Pooling::Mean => Some(mean(rows)),
    }
}

/// One text's features when it was cut into windows (`"windows": true`):
/// [CLS] is the mean of the windows' [CLS] vectors; mean is the mean of every
/// window's token vectors together (each window weighs by its length, and a
/// token in two overlapping windows counts twice); `cls_mean` joins the two.
pub fn pool_windows(windows: &[Rows], pooling: FeaturePooling) -> Vec<f32> {
    let cols = windows.first().map_or(0, |w| w.cols);
    let average = |vectors: &mut dyn Iterator<Item = &[f32]>| -> Vec<f32> {
        let mut sum = vec![0f64; cols];
        let mut n = 0usize;
        for v in vectors {
            for (acc, x) in sum.iter_mut().zip(v) {
                *acc += f64::from(*x);
            }
            n += 1;
        }
        sum.into_iter().map(|s| (s / n.max(1) as f64) as f32).collect()
    };
    let cls = || average(&mut windows.iter().map(|w| w.row(0)));
    let mean = || average(&mut windows.iter().flat_map(|w| (0..w.rows).map(move |r| w.row(r))));
    match pooling {
        FeaturePooling::Cls => cls(),
        FeaturePooling::Mean => mean(),
        FeaturePooling::ClsMean => {
            let mut v = cls();
            v.extend(mean());
            v
        }
    }
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// Class probabilities from scores (logits), computed stably in f64.
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The features of a text pair from its two pooled vectors u and v:
/// [u, v, |u - v|, u * v], Sentence-BERT's classification objective.
pub fn pair_features(u: &[f32], v: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(4 * u.len());
    out.extend_from_slice(u);
    out.extend_from_slice(v);
    out.extend(u.iter().zip(v).map(|(a, b)| (a - b).abs()));
    out.extend(u.iter().zip(v).map(|(a, b)| a * b));
    out
}

/// [`pair_features`] of every row of `u` with the same row of `v`.
pub fn pair_rows(u: &ndarray::Array2<f32>, v: &ndarray::Array2<f32>) -> ndarray::Array2<f32> {
    let width = 4 * u.ncols();
    let mut out = ndarray::Array2::zeros((u.nrows(), width));
    for ((mut row, a), b) in out.rows_mut().into_iter().zip(u.rows()).zip(v.rows()) {
        let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().copied().collect(), b.iter().copied().collect());
        row.assign(&ndarray::Array1::from(pair_features(&a, &b)));
    }
    out
}

/// A label's own probability from its score (multi-label heads), stable for large |z|.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Index of the largest value; the first one on ties, 0 for an empty input.
pub fn argmax<T: PartialOrd + Copy>(values: impl IntoIterator<Item = T>) -> usize {
    let mut best: Option<(usize, T)> = None;
    for (i, v) in values.into_iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Rows {
        Rows { rows: 3, cols: 2, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 9.0] }
    }

    #[test]
    fn windows_pool_to_the_mean_of_their_cls_and_of_all_their_tokens() {
        let a = Rows { rows: 2, cols: 2, data: vec![1.0, 0.0, 3.0, 2.0] };
        let b = Rows { rows: 1, cols: 2, data: vec![5.0, 4.0] };
        assert_eq!(pool_windows(&[a.clone(), b.clone()], FeaturePooling::Cls), vec![3.0, 2.0]);
        assert_eq!(pool_windows(&[a.clone(), b.clone()], FeaturePooling::Mean), vec![3.0, 2.0]);
        assert_eq!(pool_windows(&[a.clone()], FeaturePooling::ClsMean), [cls(&a), mean(&a)].concat());
        assert_eq!(pool_windows(&[a.clone()], FeaturePooling::Mean), mean(&a));
    }

    #[test]
    fn cls_is_the_first_row() {
        assert_eq!(pool(&rows(), Pooling::Cls), Some(vec![1.0, 2.0]));
    }

    #[test]
    fn mean_averages_every_row() {
        assert_eq!(pool(&rows(), Pooling::Mean), Some(vec![3.0, 5.0]));
    }

    #[test]
    fn none_pools_nothing() {
        assert_eq!(pool(&rows(), Pooling::None), None);
    }

    #[test]
    fn cls_mean_concatenates() {
        assert_eq!(FeaturePooling::ClsMean.features(&rows()), vec![1.0, 2.0, 3.0, 5.0]);
        assert_eq!(FeaturePooling::ClsMean.width(2), 4);
    }

    #[test]
    fn normalize_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut z = vec![0.0, 0.0];
        normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }

    #[test]
    fn softmax_and_argmax() {
        let p = softmax(&[1000.0, 1000.0 + 2f64.ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(argmax([0.1f32, 0.7, 0.2]), 1);
        assert_eq!(argmax([0.5f64, 0.5]), 0, "first on ties");
        assert_eq!(argmax(Vec::<f32>::new()), 0);
    }
}
