//! What a request will cost, computed from what it asks for once its texts are
//! tokenized and before anything is queued: the bytes of its answer and the
//! memory its work holds at the peak. `limits.max_request_tokens` bounds the
//! model's time, but an answer grows with rows x padded length x width x
//! layers x format: a 4 KB `/embed` request for seven concatenated layers per
//! token as `.npy` once asked for a 1.4 GB answer (RELIABILITY.md, "Bounded
//! cost"). Both figures are upper bounds, so that an admitted answer never
//! exceeds the limit it was admitted under (tests/suite/limits.rs).

use serde::{Deserialize, Serialize};

/// The answer's encoding: what its size per number depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerFormat {
    Json,
    Npy,
}

/// Most bytes one `f32` takes in a JSON answer with its separator: serde_json
/// writes the shortest representation that reads back exactly (at most 9
/// significant digits, sign, point and exponent: "-1.17549435e-38") plus ','.
pub const JSON_BYTES_PER_FLOAT: u64 = 16;
/// A `.npy` header (the format pads it to a multiple of 64 bytes; ours fit 128).
const NPY_HEADER_BYTES: u64 = 128;
/// Fixed part of a JSON answer (field names, model name, pooling...).
const JSON_ENVELOPE_BYTES: u64 = 1024;

/// What an `/embed`-style answer holds.
#[derive(Debug, Clone, Copy)]
pub struct EmbedShape {
    /// Width of a token row as the model returns it (hidden size).
    pub hidden: usize,
    /// Hidden states the model returns per token for this request (1: the last only).
    pub layers_held: usize,
    /// Width of one answered vector (hidden, or hidden x layers for `concat`).
    pub width: usize,
    /// Every real token's vector (`pooling: none`), or one per text.
    pub per_token: bool,
    pub format: AnswerFormat,
}

/// What a `/classify` answer holds.
#[derive(Debug, Clone, Copy)]
pub struct ClassifyShape {
    pub hidden: usize,
    pub layers_held: usize,
    /// Sum over the heads of their label count.
    pub labels: usize,
    /// Sum over the heads of their label names' bytes.
    pub label_bytes: usize,
    pub heads: usize,
    pub explain: bool,
}

/// A request's answer size and peak working memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub answer_bytes: u64,
    pub memory_bytes: u64,
}

/// `limits.max_response_bytes` and `limits.max_request_memory_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostLimits {
    pub max_response_bytes: u64,
    pub max_request_memory_bytes: u64,
}

impl CostLimits {
    pub fn of(limits: &crate::config::LimitSettings) -> CostLimits {
        CostLimits {
            max_response_bytes: limits.max_response_bytes,
            max_request_memory_bytes: limits.max_request_memory_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error(
        "the answer would take up to {bytes} bytes, more than limits.max_response_bytes ({limit}); \
         send fewer texts, fewer layers, pooled vectors, or JSON instead of a zero-padded .npy"
    )]
    Answer { bytes: u64, limit: u64 },
    #[error(
        "the request would hold up to {bytes} bytes of hidden states and answer, more than \
         limits.max_request_memory_bytes ({limit}); send fewer or shorter texts, or fewer layers"
    )]
    Memory { bytes: u64, limit: u64 },
}

/// Bytes of the hidden states the model hands back for `tokens` tokens.
fn rows_bytes(tokens: u64, hidden: usize, layers_held: usize) -> u64 {
    tokens * hidden as u64 * layers_held.max(1) as u64 * 4
}

/// Most bytes a list of word pieces takes in JSON: each character escaped as
/// `\u00XX` at worst, two quotes and a comma.
pub fn json_strings_bytes<'a>(strings: impl IntoIterator<Item = &'a String>) -> u64 {
    strings.into_iter().map(|s| 6 * s.len() as u64 + 3).sum()
}

impl Cost {
    /// `token_counts`: real tokens per text (all windows of a text together);
    /// `longest`: the longest sequence's tokens (a padded `.npy` row);
    /// `token_text_bytes`: the JSON bound of the word pieces when returned.
    pub fn embed(token_counts: &[usize], longest: usize, token_text_bytes: u64, shape: EmbedShape) -> Cost {
        let texts = token_counts.len() as u64;
        let tokens: u64 = token_counts.iter().map(|&c| c as u64).sum();
        let width = shape.width as u64;
        let answered_vectors = if shape.per_token { tokens } else { texts };
        let answer_bytes = match shape.format {
            AnswerFormat::Npy if shape.per_token => NPY_HEADER_BYTES + texts * longest as u64 * width * 4,
            AnswerFormat::Npy => NPY_HEADER_BYTES + texts * width * 4,
            AnswerFormat::Json => {
                // Each vector's brackets, each text's list and token count.
                JSON_ENVELOPE_BYTES
                    + answered_vectors * (width * JSON_BYTES_PER_FLOAT + 2)
                    + texts * 32
                    + token_text_bytes
            }
        };
        // The model's rows are held until the request's last sequence is
        // computed; the answer is written while they are (combined layers
        // replace the rows they come from one text at a time).
        let memory_bytes = rows_bytes(tokens, shape.hidden, shape.layers_held) + answer_bytes;
        Cost { answer_bytes, memory_bytes }
    }

    /// A corpus-sized pooled request computed in parts (`Inference::embed_corpus`):
    /// one vector per text in the answer (as JSON: base64 is smaller), and the
    /// hidden states of at most `held_tokens` tokens (the parts queued at once).
    pub fn corpus(texts: usize, held_tokens: usize, shape: EmbedShape) -> Cost {
        let texts = texts as u64;
        let answer_bytes = JSON_ENVELOPE_BYTES + texts * (shape.width as u64 * JSON_BYTES_PER_FLOAT + 2 + 96);
        let memory_bytes = rows_bytes(held_tokens as u64, shape.hidden, shape.layers_held) + answer_bytes;
        Cost { answer_bytes, memory_bytes }
    }

    /// `token_counts` as for [`Cost::embed`]; `token_text_bytes` counts the
    /// word pieces once (each head's explanation repeats them).
    pub fn classify(token_counts: &[usize], token_text_bytes: u64, shape: ClassifyShape) -> Cost {
        let texts = token_counts.len() as u64;
        let tokens: u64 = token_counts.iter().map(|&c| c as u64).sum();
        let (heads, labels) = (shape.heads as u64, shape.labels as u64);
        // A label's probability in JSON: its name quoted, a colon, a number, a comma.
        let per_label = |names: u64| names + labels * (4 + JSON_BYTES_PER_FLOAT);
        let per_prediction = 128 + per_label(shape.label_bytes as u64);
        let mut answer_bytes = JSON_ENVELOPE_BYTES + heads * 256 + texts * (per_prediction + 64 * heads);
        if shape.explain {
            // Per head and token: its text, offsets and every label's part; per
            // head and text: scores, bias and the [CLS] part.
            let per_token = 96 + per_label(shape.label_bytes as u64);
            answer_bytes += tokens * per_token + heads * token_text_bytes + texts * 3 * per_prediction;
            // The parts as numbers before they are written.
            answer_bytes += tokens * labels * 4;
        }
        let memory_bytes = rows_bytes(tokens, shape.hidden, shape.layers_held) + answer_bytes;
        Cost { answer_bytes, memory_bytes }
    }

    /// Refuses a cost over either limit (the answer's first: it is the one a
    /// client can change by asking differently).
    pub fn check(&self, limits: CostLimits) -> Result<(), CostError> {
        if self.answer_bytes > limits.max_response_bytes {
            return Err(CostError::Answer { bytes: self.answer_bytes, limit: limits.max_response_bytes });
        }
        if self.memory_bytes > limits.max_request_memory_bytes {
            return Err(CostError::Memory { bytes: self.memory_bytes, limit: limits.max_request_memory_bytes });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(per_token: bool, format: AnswerFormat, layers: usize, concat: bool) -> EmbedShape {
        EmbedShape {
            hidden: 384,
            layers_held: layers,
            width: if concat { 384 * layers } else { 384 },
            per_token,
            format,
        }
    }

    #[test]
    fn the_four_kilobyte_request_is_priced_at_its_real_size() {
        // 256 texts: one truncated at 512 tokens, 255 of 3; seven layers
        // concatenated, per token, as .npy: the answer that peaked at 3 GB.
        let mut counts = vec![3usize; 256];
        counts[0] = 512;
        let cost = Cost::embed(&counts, 512, 0, shape(true, AnswerFormat::Npy, 7, true));
        assert_eq!(cost.answer_bytes, 128 + 256 * 512 * 384 * 7 * 4); // 1,409,286,144 + header
        let limits = CostLimits { max_response_bytes: 64 << 20, max_request_memory_bytes: 192 << 20 };
        assert!(matches!(cost.check(limits), Err(CostError::Answer { .. })));
        // The same texts pooled are small.
        let pooled = Cost::embed(&counts, 512, 0, shape(false, AnswerFormat::Npy, 7, true));
        assert_eq!(pooled.answer_bytes, 128 + 256 * 384 * 7 * 4);
        assert_eq!(pooled.check(limits), Ok(()));
    }

    #[test]
    fn json_is_priced_per_real_token_and_npy_per_padded_one() {
        let counts = [10usize, 2];
        let json = Cost::embed(&counts, 10, 0, shape(true, AnswerFormat::Json, 1, false));
        let npy = Cost::embed(&counts, 10, 0, shape(true, AnswerFormat::Npy, 1, false));
        assert_eq!(json.answer_bytes, 1024 + 12 * (384 * 16 + 2) + 2 * 32);
        assert_eq!(npy.answer_bytes, 128 + 2 * 10 * 384 * 4);
        // Held rows: every real token's hidden state, once per layer held.
        assert_eq!(npy.memory_bytes - npy.answer_bytes, 12 * 384 * 4);
        let three = Cost::embed(&counts, 10, 0, shape(false, AnswerFormat::Json, 3, false));
        assert_eq!(three.memory_bytes - three.answer_bytes, 12 * 384 * 4 * 3);
    }

    #[test]
    fn memory_over_its_limit_is_refused_with_both_figures() {
        let cost = Cost { answer_bytes: 10, memory_bytes: 2_000 };
        let limits = CostLimits { max_response_bytes: 100, max_request_memory_bytes: 1_000 };
        let err = cost.check(limits).unwrap_err();
        assert_eq!(err, CostError::Memory { bytes: 2_000, limit: 1_000 });
        assert!(err.to_string().contains("2000") && err.to_string().contains("1000"), "{err}");
    }

    #[test]
    fn explanations_grow_with_tokens_labels_and_heads() {
        let plain = ClassifyShape { hidden: 384, layers_held: 1, labels: 2, label_bytes: 6, heads: 1, explain: false };
        let explained = ClassifyShape { explain: true, ..plain };
        let few = Cost::classify(&[10], 100, explained);
        let many = Cost::classify(&[1000], 100, explained);
        assert!(many.answer_bytes > 50 * few.answer_bytes / 2);
        assert!(Cost::classify(&[1000], 100, plain).answer_bytes < few.answer_bytes);
    }
}
