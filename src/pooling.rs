//! From per-token last hidden states to one vector per text.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::Rows;

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

/// One vector for the sequence; `None` for [`Pooling::None`].
pub fn pool(rows: &Rows, pooling: Pooling) -> Option<Vec<f32>> {
    match pooling {
        Pooling::None => None,
        Pooling::Cls => Some(rows.row(0).to_vec()),
        Pooling::Mean => {
            let mut sum = vec![0f64; rows.cols];
            for r in 0..rows.rows {
                for (acc, v) in sum.iter_mut().zip(rows.row(r)) {
                    *acc += f64::from(*v);
                }
            }
            let n = rows.rows.max(1) as f64;
            Some(sum.into_iter().map(|s| (s / n) as f32).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Rows {
        Rows { rows: 3, cols: 2, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 9.0] }
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
    fn normalize_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut z = vec![0.0, 0.0];
        normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }
}
