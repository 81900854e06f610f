//! Text to token ids with the model's `tokenizer.json`: truncation at the model's
//! maximum (or an error naming the token count), no padding (batches are padded
//! to their longest member by the model runtime).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One tokenized text: what the model needs, plus what a user may ask to see.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// Word pieces, special tokens included, one per id.
    pub tokens: Vec<String>,
    /// Character offsets (start, end) into the text, one per id; (0, 0) for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// True for tokens the tokenizer added ([CLS], [SEP]).
    pub special: Vec<bool>,
    /// Hidden states the model must return for it (default: the last only).
    pub layers: crate::layers::LayerMask,
}

impl Tokenized {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Byte offsets into `text` (as the tokenizer gives them) as offsets in
/// characters (Unicode scalar values), which is what clients slice by.
pub fn char_offsets(text: &str, offsets: &[(usize, usize)]) -> Vec<(usize, usize)> {
    // chars_before[b]: characters that start before byte b.
    let mut chars_before = vec![0usize; text.len() + 1];
    let mut count = 0;
    let mut starts = text.char_indices().map(|(b, _)| b).peekable();
    for (b, slot) in chars_before.iter_mut().enumerate() {
        while starts.peek().is_some_and(|&s| s < b) {
            starts.next();
            count += 1;
        }
        *slot = count;
    }
    let to_chars = |b: usize| chars_before[b.min(text.len())];
    offsets.iter().map(|&(start, end)| (to_chars(start), to_chars(end))).collect()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenizeError {
    #[error("input {index} has {tokens} tokens, more than the model's maximum of {max}; send shorter text or set \"truncate\": true")]
    TooLong { index: usize, tokens: usize, max: usize },
    #[error("input {index} could not be tokenized: {message}")]
    Failed { index: usize, message: String },
}

pub struct TextTokenizer {
    truncating: Tokenizer,
    /// Keeps a long text's end (TEI's `truncation_direction: "left"`).
    truncating_left: Tokenizer,
    untruncated: Tokenizer,
    max_tokens: usize,
    /// Ids of the special tokens ([CLS], [SEP], ...) and the vocabulary's size:
    /// what token-id inputs are checked against.
    special_ids: Vec<u32>,
    vocab_size: usize,
}

/// What to do with a text over the model's maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Refuse it, naming its length.
    Refuse,
    /// Keep its first tokens.
    Right,
    /// Keep its last tokens.
    Left,
}

impl Truncation {
    pub fn of(truncate: bool) -> Truncation {
        if truncate {
            Truncation::Right
        } else {
            Truncation::Refuse
        }
    }
}

impl TextTokenizer {
    pub fn from_file(path: &Path, max_tokens: usize) -> anyhow::Result<Self> {
        let load =
            || Tokenizer::from_file(path).map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()));
        let truncated = |direction: Option<TruncationDirection>| -> anyhow::Result<Tokenizer> {
            let mut tokenizer = load()?;
            // A baked-in padding (e.g. Fixed(128)) would make every text pay for the longest.
            tokenizer.with_padding(None);
            let params = direction.map(|direction| TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction,
            });
            tokenizer.with_truncation(params).map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", path.display()))?;
            Ok(tokenizer)
        };
        let untruncated = truncated(None)?;
        let special_ids =
            untruncated.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        let vocab_size = untruncated.get_vocab_size(true);
        Ok(Self {
            truncating: truncated(Some(TruncationDirection::Right))?,
            truncating_left: truncated(Some(TruncationDirection::Left))?,
            untruncated,
            max_tokens,
            special_ids,
            vocab_size,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenizes `text` (input number `index` of a request, for error messages).
    /// With `truncate` false, a text over the maximum is an error naming its length.
    pub fn encode(&self, index: usize, text: &str, truncate: bool) -> Result<Tokenized, TokenizeError> {
        self.encode_with(index, text, Truncation::of(truncate))
    }

    /// [`TextTokenizer::encode`], truncating from either end.
    pub fn encode_with(&self, index: usize, text: &str, truncation: Truncation) -> Result<Tokenized, TokenizeError> {
        let failed = |e: tokenizers::Error| TokenizeError::Failed { index, message: e.to_string() };
        let tokenizer = if truncation == Truncation::Left { &self.truncating_left } else { &self.truncating };
        let encoding = tokenizer.encode(text, true).map_err(failed)?;
        if truncation == Truncation::Refuse && !encoding.get_overflowing().is_empty() {
            let full = self.untruncated.encode(text, true).map_err(failed)?;
            return Err(TokenizeError::TooLong { index, tokens: full.len(), max: self.max_tokens });
        }
        Ok(Tokenized {
            ids: encoding.get_ids().iter().map(|&i| i64::from(i)).collect(),
            type_ids: encoding.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
            tokens: encoding.get_tokens().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
            special: encoding.get_special_tokens_mask().iter().map(|&m| m == 1).collect(),
            layers: Default::default(),
        })
    }

    /// Tokenizes `text` into overlapping windows of at most the model's maximum:
    /// the word pieces between the leading and trailing special tokens are cut
    /// into runs of (maximum - specials) pieces, each starting `stride` pieces
    /// after the previous one (the last run ends at the text's end), and each
    /// run gets the specials again. A text within the maximum is one window.
    pub fn encode_windows(&self, index: usize, text: &str, stride: usize) -> Result<Vec<Tokenized>, TokenizeError> {
        let failed = |e: tokenizers::Error| TokenizeError::Failed { index, message: e.to_string() };
        let full = self.untruncated.encode(text, true).map_err(failed)?;
        let whole = Tokenized {
            ids: full.get_ids().iter().map(|&i| i64::from(i)).collect(),
            type_ids: full.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
            tokens: full.get_tokens().to_vec(),
            offsets: full.get_offsets().to_vec(),
            special: full.get_special_tokens_mask().iter().map(|&m| m == 1).collect(),
            layers: Default::default(),
        };
        if whole.len() <= self.max_tokens {
            return Ok(vec![whole]);
        }
        let lead = whole.special.iter().take_while(|&&s| s).count();
        let tail = whole.special.iter().rev().take_while(|&&s| s).count();
        let content = lead..whole.len() - tail;
        let width = self.max_tokens.saturating_sub(lead + tail).max(1);
        let stride = stride.clamp(1, width);
        let mut starts: Vec<usize> = (content.start..content.end.saturating_sub(width)).step_by(stride).collect();
        starts.push(content.end.saturating_sub(width).max(content.start));
        starts.dedup();
        let pick = |range: &mut dyn Iterator<Item = usize>| -> Tokenized {
            let indices: Vec<usize> = range.collect();
            Tokenized {
                ids: indices.iter().map(|&i| whole.ids[i]).collect(),
                type_ids: indices.iter().map(|&i| whole.type_ids[i]).collect(),
                tokens: indices.iter().map(|&i| whole.tokens[i].clone()).collect(),
                offsets: indices.iter().map(|&i| whole.offsets[i]).collect(),
                special: indices.iter().map(|&i| whole.special[i]).collect(),
                layers: whole.layers,
            }
        };
        Ok(starts
            .into_iter()
            .map(|start| {
                let end = (start + width).min(content.end);
                pick(&mut (0..lead).chain(start..end).chain(content.end..whole.len()))
            })
            .collect())
    }

    /// Tokenizes several texts; the first failure wins.
    pub fn encode_all<S: AsRef<str>>(&self, texts: &[S], truncate: bool) -> Result<Vec<Tokenized>, TokenizeError> {
        texts.iter().enumerate().map(|(i, t)| self.encode(i, t.as_ref(), truncate)).collect()
    }

    /// Refuses ids outside the vocabulary, and no ids at all (input number `index`).
    fn check_ids(&self, index: usize, ids: &[u32]) -> Result<(), TokenizeError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizeError::Failed {
                index,
                message: format!("token id {bad} is outside the model's vocabulary (0 to {})", self.vocab_size - 1),
            });
        }
        if ids.is_empty() {
            return Err(TokenizeError::Failed { index, message: "no token ids".into() });
        }
        Ok(())
    }

    /// A sequence given as the model's own token ids (OpenAI's and TEI's
    /// pre-tokenized inputs), used as they are: no special tokens added.
    /// Ids outside the vocabulary are refused; over the maximum, cut as asked.
    pub fn from_ids(&self, index: usize, ids: &[u32], truncation: Truncation) -> Result<Tokenized, TokenizeError> {
        self.check_ids(index, ids)?;
        let kept = match truncation {
            _ if ids.len() <= self.max_tokens => ids,
            Truncation::Refuse => {
                return Err(TokenizeError::TooLong { index, tokens: ids.len(), max: self.max_tokens });
            }
            Truncation::Right => &ids[..self.max_tokens],
            Truncation::Left => &ids[ids.len() - self.max_tokens..],
        };
        Ok(Tokenized {
            ids: kept.iter().map(|&i| i64::from(i)).collect(),
            type_ids: vec![0; kept.len()],
            tokens: kept.iter().map(|&i| self.untruncated.id_to_token(i).unwrap_or_default()).collect(),
            offsets: vec![(0, 0); kept.len()],
            special: kept.iter().map(|i| self.special_ids.contains(i)).collect(),
            layers: Default::default(),
        })
    }

    /// Token ids back to text (TEI's `/decode`; sequence number `index`):
    /// ids outside the vocabulary are refused, not skipped as the tokenizer would.
    pub fn decode(&self, index: usize, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizeError> {
        self.check_ids(index, ids)?;
        self.untruncated
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizeError::Failed { index, message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::char_offsets;

    #[test]
    fn byte_offsets_become_character_offsets() {
        let text = "Ça été café 東京 🍕";
        // "Ça" is bytes 0..3, "été" 4..9, "café" 10..15, "東京" 16..22, "🍕" 23..27.
        let bytes = [(0, 3), (4, 9), (10, 15), (16, 22), (23, 27), (0, 0)];
        assert_eq!(char_offsets(text, &bytes), vec![(0, 2), (3, 6), (7, 11), (12, 14), (15, 16), (0, 0)]);
    }
}
