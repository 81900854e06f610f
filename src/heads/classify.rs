//! The classification pipeline: one validated request ([`ClassifyInput`]) and
//! the heads it names in, each head's probabilities (and explanations) out.
//! The encoder runs once for every logistic head (heads reading the same
//! layers and pooling share the pooled features); ONNX heads run their own
//! models. The request is priced (`cost.rs`) once tokenized, before anything
//! is queued.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::logistic::{self, LogisticHead};
use super::onnx::OnnxHead;
use super::Head;
use crate::cost::{ClassifyShape, Cost, CostLimits};
use crate::inference::{Cut, Encoded, Inference, InferenceError, Prepared, Timing};
use crate::layers::{LayerCombine, LayerMask, LayerSelection};
use crate::model::ModelInfo;
use crate::pooling::{cls, mean, pair_features, FeaturePooling, Rows};
use crate::runtimes::Runtimes;

/// What a head answers when its top probability is below `min_probability`.
pub const ABSTAIN: &str = "abstain";

/// A head's decision on one text's probabilities: the one rule every route
/// that classifies applies (`/classify`, TEI's predict routes), and what the
/// predictions metric counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The most probable label.
    pub best: usize,
    /// Its probability was below `min_probability`: the answer is [`ABSTAIN`].
    pub abstained: bool,
    /// A multi-label head's labels at or over their thresholds, most probable first.
    pub label_set: Option<Vec<usize>>,
}

impl Decision {
    /// `min_probability`: the request's, else the head's own.
    pub fn of(head: &Head, probabilities: &[f32], min_probability: Option<f32>) -> Decision {
        let best = crate::pooling::argmax(probabilities.iter().copied());
        let abstained = min_probability.or(head.min_probability()).is_some_and(|min| probabilities[best] < min);
        let label_set = match head {
            Head::Logistic(h) if h.multi_label.is_some() => {
                let mut set = h.label_set(probabilities);
                set.sort_by(|a, b| probabilities[*b].total_cmp(&probabilities[*a]));
                Some(set)
            }
            _ => None,
        };
        Decision { best, abstained, label_set }
    }

    /// The label answered and counted: the most probable, or [`ABSTAIN`].
    pub fn label<'a>(&self, labels: &'a [String]) -> &'a str {
        if self.abstained {
            ABSTAIN
        } else {
            &labels[self.best]
        }
    }
}

/// One `/classify` request, every option already checked.
#[derive(Debug, Clone)]
pub struct ClassifyInput {
    pub texts: Vec<String>,
    /// Truncate texts over the model's maximum (else refuse them); ignored with `windows`.
    pub truncate: bool,
    pub deadline: Instant,
    /// Each token's part of each label's score.
    pub explain: bool,
    /// Cut long texts into windows this many word pieces apart, pooled together.
    pub windows: Option<usize>,
    pub limits: CostLimits,
    /// Each text's second text, for pair heads (every head then is one;
    /// neither windows nor explanations).
    pub pairs: Option<Vec<String>>,
}

/// One head's answer.
pub struct Classified {
    pub probabilities: Vec<Vec<f32>>,
    /// Per text when asked for.
    pub explanations: Option<Vec<Explained>>,
    pub timing: Timing,
}

/// One text's word pieces, their character offsets, each label's score
/// (logit), and for a logistic head the parts of the scores.
pub struct Explained {
    pub tokens: Vec<String>,
    pub offsets: Vec<(usize, usize)>,
    pub attribution: Option<logistic::Attribution>,
    pub scores: Vec<f32>,
}

/// Every head's answer for the input's texts, in the order of `heads`, each
/// logistic head on the graph it was trained on, found by that graph's
/// fingerprint (the heads' graph, `classify.model_file`, or the exact one where
/// its comparison of the two chose it). One encoder pass per graph in use, the
/// graphs' passes concurrent.
pub async fn classify_served(
    runtimes: &Runtimes,
    heads: &[Arc<Head>],
    input: ClassifyInput,
) -> Result<Vec<Classified>, InferenceError> {
    // ONNX heads need no encoder pass: they go with the training graph's group.
    let mut groups: Vec<(&Inference, Vec<usize>)> = Vec::new();
    for (i, head) in heads.iter().enumerate() {
        let graph = match &**head {
            Head::Logistic(l) => runtimes.graph_for(&l.encoder.fingerprint),
            Head::Onnx(_) => runtimes.training_graph(),
        };
        match groups.iter_mut().find(|(g, _)| std::ptr::eq(*g, graph)) {
            Some((_, members)) => members.push(i),
            None => groups.push((graph, vec![i])),
        }
    }
    if let [(graph, _)] = groups.as_slice() {
        return classify(heads, graph, input).await;
    }
    let answers = futures_util::future::try_join_all(groups.iter().map(|(graph, members)| {
        let group: Vec<Arc<Head>> = members.iter().map(|&i| heads[i].clone()).collect();
        let input = input.clone();
        async move { classify(&group, graph, input).await }
    }))
    .await?;
    let mut ordered: Vec<Option<Classified>> = (0..heads.len()).map(|_| None).collect();
    for ((_, members), answers) in groups.iter().zip(answers) {
        for (&i, answer) in members.iter().zip(answers) {
            ordered[i] = Some(answer);
        }
    }
    Ok(ordered.into_iter().map(|a| a.expect("one answer per head")).collect())
}

/// Every head's answer for the input's texts, in the order of `heads`.
pub async fn classify(
    heads: &[Arc<Head>],
    encoder: &Inference,
    input: ClassifyInput,
) -> Result<Vec<Classified>, InferenceError> {
    let mask = layers_for(heads, &encoder.info);
    // Explanations need every token's rows; otherwise each sequence is reduced
    // to the heads' features as soon as it is computed.
    let summary = (!input.explain).then(|| Arc::new(Summary::of(heads, &encoder.info)));
    let needs_encoder = heads.iter().any(|h| matches!(**h, Head::Logistic(_)));
    let cut = input.windows.map_or(Cut::Truncate(input.truncate), Cut::Windows);
    let encoding = async {
        if !needs_encoder {
            return Ok(None);
        }
        // A pair's second texts go through the encoder with the first ones, after them.
        let texts = match &input.pairs {
            Some(pairs) => input.texts.iter().chain(pairs).cloned().collect(),
            None => input.texts.clone(),
        };
        let prepared = encoder.prepare(texts, cut, mask).await?;
        price(heads, &prepared, mask, &encoder.info, input.explain).check(input.limits)?;
        let prepared = match &summary {
            Some(summary) => prepared.reduced(summary.reducer(mask, &encoder.info)),
            None => prepared,
        };
        encoder.run(prepared, input.deadline).await.map(Some)
    };
    let onnx = async {
        let mut results = Vec::new();
        for head in heads.iter().filter_map(|h| match &**h {
            Head::Onnx(o) => Some(o),
            Head::Logistic(_) => None,
        }) {
            results.push(onnx_classify(head, &input, cut).await);
        }
        results
    };
    let (computed, onnx) = tokio::join!(encoding, onnx);
    let computed = computed?;
    let mut onnx = onnx.into_iter();
    let answers = match (computed, input.windows) {
        (Some(computed), Some(_)) => {
            let windowed = computed.into_windowed();
            let summary = summary.as_ref().expect("windows are never explained");
            let mut answers = Vec::with_capacity(heads.len());
            for head in heads {
                answers.push(match &**head {
                    Head::Logistic(h) => Ok(Classified {
                        probabilities: windowed
                            .windows
                            .iter()
                            .zip(&windowed.window_lengths)
                            .map(|(windows, lengths)| h.probabilities(&summary.features(h, windows, lengths)))
                            .collect(),
                        explanations: None,
                        timing: windowed.timing,
                    }),
                    Head::Onnx(_) => onnx.next().expect("one result per ONNX head"),
                });
            }
            answers
        }
        (computed, _) => {
            let encoded = computed.map(|c| c.into_encoded());
            let mut pooled = BTreeMap::new();
            heads
                .iter()
                .map(|h| match &**h {
                    Head::Logistic(head) => Ok(classify_encoded(
                        head,
                        encoded.as_ref().expect("encoded for logistic heads"),
                        mask,
                        &encoder.info,
                        summary.as_deref(),
                        &mut pooled,
                    )),
                    Head::Onnx(_) => onnx.next().expect("one result per ONNX head"),
                })
                .collect()
        }
    };
    answers.into_iter().collect()
}

/// The request's cost on the encoder: its hidden states, and its answer for
/// every head (with explanations, a part per token and label). Every layer's
/// rows are priced as held: an upper bound without explanations, where each
/// sequence is reduced as it is computed ([`Summary`]) and only a model
/// call's batch holds them (measured: `bench/classify_memory.py`).
fn price(heads: &[Arc<Head>], prepared: &Prepared, mask: LayerMask, info: &ModelInfo, explain: bool) -> Cost {
    let shape = ClassifyShape {
        hidden: info.hidden_size,
        layers_held: mask.indices(info.last_layer()).len(),
        labels: heads.iter().map(|h| h.labels().len()).sum(),
        label_bytes: heads.iter().flat_map(|h| h.labels()).map(String::len).sum(),
        heads: heads.len(),
        explain,
    };
    let token_text_bytes = if explain { prepared.token_text_bytes() } else { 0 };
    Cost::classify(&prepared.token_counts(), token_text_bytes, shape)
}

/// A logistic head's answer from the encoder's rows: reduced by `summary`
/// as they were computed, or (to explain) the hidden states of `mask` side by
/// side; `pooled` keeps each (layers, pooling)'s features, so that heads
/// reading alike share them.
fn classify_encoded(
    head: &LogisticHead,
    encoded: &Encoded,
    mask: LayerMask,
    info: &ModelInfo,
    summary: Option<&Summary>,
    pooled: &mut BTreeMap<(Option<LayerSelection>, FeaturePooling), Vec<Vec<f32>>>,
) -> Classified {
    let own_rows = || head_rows(head, &encoded.rows, mask, info);
    let mut rows = None;
    let features = pooled.entry((head.layers.clone(), head.pooling)).or_insert_with(|| match summary {
        Some(summary) => encoded
            .rows
            .iter()
            .zip(&encoded.lengths)
            .map(|(r, &n)| summary.features(head, std::slice::from_ref(r), &[n]))
            .collect(),
        None => rows.get_or_insert_with(own_rows).iter().map(|r| head.pooling.features(r)).collect(),
    });
    let probabilities = if head.pair {
        // Rows are the first texts, then their second texts in the same order.
        let (first, second) = features.split_at(features.len() / 2);
        first.iter().zip(second).map(|(u, v)| head.probabilities(&pair_features(u, v))).collect()
    } else {
        features.iter().map(|f| head.probabilities(f)).collect()
    };
    let explanations = summary.is_none().then(|| {
        rows.get_or_insert_with(own_rows)
            .iter()
            .zip(encoded.tokens.iter().cloned())
            .zip(encoded.offsets.iter().cloned())
            .map(|((rows, tokens), offsets)| {
                let attribution = head.explain(rows);
                let scores = attribution.scores();
                Explained { tokens, offsets, attribution: Some(attribution), scores }
            })
            .collect()
    });
    Classified { probabilities, explanations, timing: encoded.timing }
}

/// What a sequence is reduced to for the logistic heads (see
/// [`Prepared::reduced`](crate::inference::Prepared::reduced)): for each
/// distinct layer selection among them, its combined first ([CLS]) row and
/// the mean of its combined rows; row 0 holds every selection's first row side
/// by side, row 1 every mean. A few kilobytes a sequence, where its rows are
/// tokens x hidden x layers.
pub struct Summary {
    /// Distinct selections (`None`: the last hidden state), each with its
    /// offset and width in a reduced row.
    parts: Vec<(Option<LayerSelection>, usize, usize)>,
    width: usize,
}

impl Summary {
    fn of(heads: &[Arc<Head>], info: &ModelInfo) -> Summary {
        let mut parts: Vec<(Option<LayerSelection>, usize, usize)> = Vec::new();
        let mut width = 0;
        for head in heads {
            let Head::Logistic(h) = &**head else { continue };
            if parts.iter().all(|(s, ..)| *s != h.layers) {
                let w = h.layers.as_ref().map_or(info.hidden_size, |s| s.width(info.hidden_size));
                parts.push((h.layers.clone(), width, w));
                width += w;
            }
        }
        Summary { parts, width }
    }

    /// The reduction, run on the worker for each computed sequence.
    fn reducer(self: &Arc<Self>, mask: LayerMask, info: &ModelInfo) -> crate::batching::Reduce {
        let (summary, last, hidden) = (self.clone(), info.last_layer(), info.hidden_size);
        Arc::new(move |rows: Rows| {
            let width = summary.width;
            let mut data = vec![0f32; 2 * width];
            for (selection, offset, w) in &summary.parts {
                let combined = selected(selection.as_ref(), &rows, mask, last, hidden);
                data[*offset..offset + w].copy_from_slice(&cls(&combined));
                data[width + offset..width + offset + w].copy_from_slice(&mean(&combined));
            }
            Rows { rows: 2, cols: width, data }
        })
    }

    /// One text's features for `head` from its sequences' reduced rows (one,
    /// or a window each) and their real tokens: the first rows averaged over
    /// windows, the means weighted by tokens (as `pool_windows` pools).
    fn features(&self, head: &LogisticHead, reduced: &[Rows], lengths: &[usize]) -> Vec<f32> {
        let &(_, offset, width) = self.parts.iter().find(|(s, ..)| *s == head.layers).expect("a summarised selection");
        let weighted = |row: usize, weights: &dyn Fn(usize) -> f64| -> Vec<f32> {
            let mut sum = vec![0f64; width];
            let total: f64 = (0..reduced.len()).map(weights).sum();
            for (i, r) in reduced.iter().enumerate() {
                for (acc, v) in sum.iter_mut().zip(&r.row(row)[offset..offset + width]) {
                    *acc += f64::from(*v) * weights(i);
                }
            }
            sum.into_iter().map(|s| (s / total.max(f64::MIN_POSITIVE)) as f32).collect()
        };
        let cls = || weighted(0, &|_| 1.0);
        let mean = || weighted(1, &|i| lengths[i] as f64);
        match head.pooling {
            FeaturePooling::Cls => cls(),
            FeaturePooling::Mean => mean(),
            FeaturePooling::ClsMean => [cls(), mean()].concat(),
        }
    }
}

/// What the encoder must return for `heads`: every logistic head's layers.
fn layers_for(heads: &[Arc<Head>], info: &ModelInfo) -> LayerMask {
    let last = info.last_layer();
    heads
        .iter()
        .filter_map(|h| match &**h {
            Head::Logistic(l) => Some(l.layers.as_ref().map_or(LayerMask::LAST, |s| s.mask(last))),
            Head::Onnx(_) => None,
        })
        .fold(LayerMask::LAST, |m, h| m.union(h, last))
}

/// A logistic head's rows, one per sequence, from rows holding the hidden states of `mask`.
fn head_rows<'a>(head: &LogisticHead, rows: &'a [Rows], mask: LayerMask, info: &ModelInfo) -> Vec<Cow<'a, Rows>> {
    rows.iter().map(|r| selected(head.layers.as_ref(), r, mask, info.last_layer(), info.hidden_size)).collect()
}

/// `selection`'s rows (`None`: the last hidden state) from a sequence's rows
/// holding the hidden states of `mask` side by side. Borrowed as they are when
/// both hold the last hidden state alone (the default path copies nothing).
fn selected<'a>(
    selection: Option<&LayerSelection>,
    rows: &'a Rows,
    mask: LayerMask,
    last: usize,
    hidden: usize,
) -> Cow<'a, Rows> {
    match selection {
        None if mask.is_last_only() => Cow::Borrowed(rows),
        None => Cow::Owned(
            LayerSelection { indices: vec![last], combine: LayerCombine::Mean }.combine(rows, mask, last, hidden),
        ),
        Some(selection) => Cow::Owned(selection.combine(rows, mask, last, hidden)),
    }
}

/// An ONNX classifier's answer from its own model: the mean of the windows'
/// probabilities with windows; its scores and no split of them with `explain`.
async fn onnx_classify(head: &OnnxHead, input: &ClassifyInput, cut: Cut) -> Result<Classified, InferenceError> {
    let prepared = head.inference.prepare(input.texts.clone(), cut, LayerMask::LAST).await?;
    let computed = head.inference.run(prepared, input.deadline).await?;
    if input.windows.is_some() {
        let w = computed.into_windowed();
        let probabilities = w
            .windows
            .iter()
            .map(|windows| {
                let mut mean = vec![0f32; head.labels.len()];
                for window in windows {
                    for (m, p) in mean.iter_mut().zip(head.probabilities(window.row(0))) {
                        *m += p / windows.len() as f32;
                    }
                }
                mean
            })
            .collect();
        return Ok(Classified { probabilities, explanations: None, timing: w.timing });
    }
    let encoded = computed.into_encoded();
    let probabilities = encoded.rows.iter().map(|r| head.probabilities(r.row(0))).collect();
    let explanations = input.explain.then(|| {
        encoded
            .rows
            .iter()
            .zip(encoded.tokens)
            .zip(encoded.offsets)
            .map(|((rows, tokens), offsets)| Explained {
                tokens,
                offsets,
                attribution: None,
                scores: head.scores(rows.row(0)),
            })
            .collect()
    });
    Ok(Classified { probabilities, explanations, timing: encoded.timing })
}
