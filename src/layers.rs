//! Hidden states of layers other than the last: which ones a request or a head
//! asks for, and how several are combined. Hidden state 0 is the embeddings'
//! output, `N` (an `N`-layer encoder's last) is `last_hidden_state`; negative
//! indices count from the end, as in Python (`-1` is the last).
//!
//! The model runtime returns a sequence's requested hidden states side by side
//! in each token row (ascending index); [`LayerSelection::combine`] turns that
//! into the rows a request wanted, so pooling and windows work unchanged.

use serde::{Deserialize, Serialize};

use crate::pooling::Rows;

/// Which hidden states a sequence needs: bit `i` for hidden state `i`. Empty
/// means "the last only", the default path, which asks the model for nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LayerMask(pub u64);

impl LayerMask {
    pub const LAST: LayerMask = LayerMask(0);

    pub fn is_last_only(self) -> bool {
        self.0 == 0
    }

    /// Hidden-state indices in ascending order; the last only as `[last]`.
    pub fn indices(self, last: usize) -> Vec<usize> {
        if self.0 == 0 {
            return vec![last];
        }
        (0..64).filter(|i| self.0 & (1 << i) != 0).collect()
    }

    /// Both masks' hidden states (what one model call over both must return).
    pub fn union(self, other: LayerMask, last: usize) -> LayerMask {
        if self == other {
            return self;
        }
        let bits = |m: LayerMask| if m.0 == 0 { 1u64 << last } else { m.0 };
        LayerMask(bits(self) | bits(other))
    }
}

pub use crate::config::LayerCombine;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayerError {
    #[error(
        "this model export has no hidden states of layers other than the last (its graph has no \
         hidden_state_* outputs): re-export it with scripts/export-model.sh to use \"layers\""
    )]
    Unavailable,
    #[error("layer {index} does not exist: the model has hidden states 0 (embeddings) to {last}, or -1 to -{count}")]
    OutOfRange { index: i64, last: usize, count: usize },
    #[error("layer {0} is listed twice")]
    Repeated(i64),
    #[error("\"layers\" must list at least one layer")]
    Empty,
}

/// Hidden states (absolute indices, in the order asked) and how to combine them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LayerSelection {
    pub indices: Vec<usize>,
    pub combine: LayerCombine,
}

impl LayerSelection {
    /// Resolves `requested` (negative from the end) for a model whose last
    /// hidden state is `last` (`None`: the export has only the last).
    pub fn resolve(requested: &[i64], combine: LayerCombine, last: Option<usize>) -> Result<Self, LayerError> {
        if requested.is_empty() {
            return Err(LayerError::Empty);
        }
        let count = last.map(|l| l + 1).unwrap_or(1);
        let mut indices = Vec::with_capacity(requested.len());
        for &r in requested {
            let absolute = if r < 0 { count as i64 + r } else { r };
            let is_last = absolute == count as i64 - 1;
            let index = match last {
                _ if absolute < 0 || absolute >= count as i64 => {
                    return Err(match last {
                        Some(last) => LayerError::OutOfRange { index: r, last, count },
                        None => LayerError::Unavailable,
                    })
                }
                None if !is_last => return Err(LayerError::Unavailable),
                _ => absolute as usize,
            };
            if indices.contains(&index) {
                return Err(LayerError::Repeated(r));
            }
            indices.push(index);
        }
        Ok(LayerSelection { indices, combine })
    }

    /// The last hidden state alone: what every request gets by default.
    pub fn is_default(&self, last: usize) -> bool {
        self.indices == [last]
    }

    /// What the model must return for this selection.
    pub fn mask(&self, last: usize) -> LayerMask {
        if self.is_default(last) {
            return LayerMask::LAST;
        }
        LayerMask(self.indices.iter().fold(0u64, |m, &i| m | (1 << i)))
    }

    /// Width of a combined token row for an encoder of `hidden` dimensions.
    pub fn width(&self, hidden: usize) -> usize {
        match self.combine {
            LayerCombine::Mean => hidden,
            LayerCombine::Concat => hidden * self.indices.len(),
        }
    }

    /// Short name, e.g. `-1`, `mean(-4..-1)`, `concat(-2,-1)`, relative to `last`.
    pub fn describe(&self, last: usize) -> String {
        let rel: Vec<String> = self.indices.iter().map(|&i| format!("{}", i as i64 - last as i64 - 1)).collect();
        if rel.len() == 1 {
            return rel[0].clone();
        }
        format!("{}({})", self.combine.as_str(), rel.join(","))
    }

    /// This selection's rows from `rows`, whose token rows hold the hidden
    /// states of `mask` side by side (ascending index), `hidden` values each.
    pub fn combine(&self, rows: &Rows, mask: LayerMask, last: usize, hidden: usize) -> Rows {
        let present = mask.indices(last);
        debug_assert_eq!(rows.cols, hidden * present.len());
        let offsets: Vec<usize> = self
            .indices
            .iter()
            .map(|i| present.iter().position(|p| p == i).expect("the mask holds every selected layer") * hidden)
            .collect();
        if offsets.len() == 1 && present.len() == 1 {
            return rows.clone();
        }
        let width = self.width(hidden);
        let mut data = Vec::with_capacity(rows.rows * width);
        for r in 0..rows.rows {
            let row = rows.row(r);
            match self.combine {
                LayerCombine::Concat => {
                    for &o in &offsets {
                        data.extend_from_slice(&row[o..o + hidden]);
                    }
                }
                LayerCombine::Mean => {
                    let n = offsets.len() as f32;
                    data.extend((0..hidden).map(|j| offsets.iter().map(|&o| row[o + j]).sum::<f32>() / n));
                }
            }
        }
        Rows { rows: rows.rows, cols: width, data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_negative_indices_and_refuses_bad_ones() {
        let s = LayerSelection::resolve(&[-1], LayerCombine::Mean, Some(6)).unwrap();
        assert_eq!(s.indices, vec![6]);
        assert!(s.mask(6).is_last_only());
        let s = LayerSelection::resolve(&[-2, 0], LayerCombine::Concat, Some(6)).unwrap();
        assert_eq!(s.indices, vec![5, 0]);
        assert_eq!(s.mask(6), LayerMask(0b100001));
        assert_eq!(
            LayerSelection::resolve(&[7], LayerCombine::Mean, Some(6)),
            Err(LayerError::OutOfRange { index: 7, last: 6, count: 7 })
        );
        assert_eq!(
            LayerSelection::resolve(&[-8], LayerCombine::Mean, Some(6)),
            Err(LayerError::OutOfRange { index: -8, last: 6, count: 7 })
        );
        assert_eq!(LayerSelection::resolve(&[6, -1], LayerCombine::Mean, Some(6)), Err(LayerError::Repeated(-1)));
        assert_eq!(LayerSelection::resolve(&[], LayerCombine::Mean, Some(6)), Err(LayerError::Empty));
        // An export without layer outputs: the last alone still works.
        assert_eq!(LayerSelection::resolve(&[-1], LayerCombine::Mean, None).unwrap().indices, vec![0]);
        assert_eq!(LayerSelection::resolve(&[-2], LayerCombine::Mean, None), Err(LayerError::Unavailable));
    }

    #[test]
    fn combines_blocks_by_mean_and_concat_in_the_order_asked() {
        // Two tokens; hidden states 1 and 3 (hidden 2) side by side.
        let rows = Rows { rows: 2, cols: 4, data: vec![1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0] };
        let mask = LayerMask(0b1010);
        let concat = LayerSelection { indices: vec![3, 1], combine: LayerCombine::Concat };
        assert_eq!(concat.combine(&rows, mask, 3, 2).data, vec![10.0, 20.0, 1.0, 2.0, 30.0, 40.0, 3.0, 4.0]);
        let mean = LayerSelection { indices: vec![1, 3], combine: LayerCombine::Mean };
        let m = mean.combine(&rows, mask, 3, 2);
        assert_eq!((m.rows, m.cols), (2, 2));
        assert_eq!(m.data, vec![5.5, 11.0, 16.5, 22.0]);
        // One layer out of a wider mask.
        let one = LayerSelection { indices: vec![1], combine: LayerCombine::Mean };
        assert_eq!(one.combine(&rows, mask, 3, 2).data, vec![1.0, 2.0, 3.0, 4.0]);
        // The default path: the last alone, given as the last-only mask.
        let last = LayerSelection { indices: vec![3], combine: LayerCombine::Mean };
        let plain = Rows { rows: 1, cols: 2, data: vec![7.0, 8.0] };
        assert_eq!(last.combine(&plain, LayerMask::LAST, 3, 2), plain);
    }

    #[test]
    fn union_of_masks_includes_the_last_for_default_sequences() {
        assert_eq!(LayerMask::LAST.union(LayerMask::LAST, 6), LayerMask::LAST);
        assert_eq!(LayerMask::LAST.union(LayerMask(0b1), 6), LayerMask(0b1000001));
        assert_eq!(LayerMask(0b10).indices(6), vec![1]);
        assert_eq!(LayerMask::LAST.indices(6), vec![6]);
    }
}
