//! Text in, vectors out: tokenization off the async threads, the batching
//! queue, then pooling and normalisation. Every route that runs a model goes
//! through an [`Inference`]; handlers only parse requests and format answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batching::{BatchError, Batcher, BatcherConfig, BatcherStats};
use crate::encoder::Encoder;
use crate::layers::{LayerMask, LayerSelection};
use crate::metrics::RuntimeMetrics;
use crate::model::{Model, ModelInfo};
use crate::pooling::{normalize, pool, pool_windows, Pooling, Rows};
use crate::tokenize::{TextTokenizer, TokenizeError, Tokenized};

/// Requests with at most this much text are tokenized on the async thread.
const INLINE_TOKENIZE_BYTES: usize = 2048;

/// One model runtime: its description, tokenizer and batching queue.
pub struct Inference {
    pub info: Arc<ModelInfo>,
    pub tokenizer: Arc<TextTokenizer>,
    batcher: Batcher,
    metrics: RuntimeMetrics,
}

/// One request's results: per input, its word pieces, character offsets and
/// model rows, and where the time went.
pub struct Encoded {
    pub tokens: Vec<Vec<String>>,
    pub offsets: Vec<Vec<(usize, usize)>>,
    pub rows: Vec<Rows>,
    pub timing: Timing,
}

impl Encoded {
    pub fn token_counts(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.rows).collect()
    }
}

/// What `/embed` asks for: how to pool, and whether to scale to unit length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedOptions {
    pub pooling: Pooling,
    /// Per text when pooled; per token for [`Pooling::None`].
    pub normalize: bool,
    /// Cut long texts into windows with this stride (pooled only) instead of truncating.
    pub windows: Option<usize>,
    /// Hidden states returned (resolved against the model); `None`: the last.
    pub layers: Option<LayerSelection>,
}

/// Embeddings of a request's texts.
pub enum Vectors {
    /// One vector per text.
    Pooled(Vec<Vec<f32>>),
    /// Every real token's vector, per text.
    PerToken(Vec<Rows>),
}

pub struct Embedded {
    pub tokens: Vec<Vec<String>>,
    pub token_counts: Vec<usize>,
    pub hidden: usize,
    pub vectors: Vectors,
    pub timing: Timing,
}

/// Texts cut into windows: each text's windows' rows, in order.
pub struct Windowed {
    pub windows: Vec<Vec<Rows>>,
    /// Tokens computed per text, all windows together.
    pub token_counts: Vec<usize>,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub tokenize: Duration,
    pub queue: Duration,
    pub inference: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl Inference {
    /// Starts the model's workers (one per session) behind one queue;
    /// `metrics` labels what `/metrics` shows of it.
    pub fn start(model: Model, config: BatcherConfig, metrics: RuntimeMetrics) -> Inference {
        Self::with_encoders(model.info, model.tokenizer, model.encoders, config, metrics)
    }

    /// A runtime over any encoders that `info` describes: what tests and the
    /// fuzz targets use to drive the whole HTTP stack without ONNX Runtime.
    pub fn with_encoders<E: Encoder + 'static>(
        info: Arc<ModelInfo>,
        tokenizer: Arc<TextTokenizer>,
        encoders: Vec<E>,
        config: BatcherConfig,
        metrics: RuntimeMetrics,
    ) -> Inference {
        let name = if info.task == "feature-extraction" { "encoder" } else { "classifier" };
        let batcher = Batcher::start(encoders, config, metrics.clone(), name);
        Inference { info, tokenizer, batcher, metrics }
    }

    pub fn queue_depth(&self) -> usize {
        self.batcher.queue_depth()
    }

    pub fn batch_stats(&self) -> BatcherStats {
        self.batcher.stats()
    }

    /// Stops taking new work and waits for queued work to finish.
    pub fn shutdown(&self) {
        self.batcher.join();
    }

    /// Tokenizes short inputs in place (tens of microseconds, less than a thread
    /// hand-off) and longer ones on the blocking pool, where milliseconds of
    /// tokenizing cannot stall other requests.
    pub async fn tokenize(&self, texts: Vec<String>, truncate: bool) -> Result<Vec<Tokenized>, TokenizeError> {
        if texts.iter().map(String::len).sum::<usize>() <= INLINE_TOKENIZE_BYTES {
            return self.tokenizer.encode_all(&texts, truncate);
        }
        let tokenizer = self.tokenizer.clone();
        tokio::task::spawn_blocking(move || tokenizer.encode_all(&texts, truncate)).await.unwrap_or_else(|join_error| {
            Err(TokenizeError::Failed { index: 0, message: format!("tokenizer task failed: {join_error}") })
        })
    }

    /// Refuses sequences over the per-request token budget (`limits.max_request_tokens`).
    pub fn check_request_tokens(&self, seqs: &[Tokenized]) -> Result<(), BatchError> {
        self.batcher.check_request_tokens(seqs)
    }

    /// Whether the workers are alive and not stuck in a call.
    pub fn health(&self) -> crate::batching::WorkerHealth {
        self.batcher.health()
    }

    /// Tokenizes `texts` and runs them through the queue: each text's rows
    /// (last hidden states).
    pub async fn encode(
        &self,
        texts: Vec<String>,
        truncate: bool,
        deadline: Instant,
    ) -> Result<Encoded, InferenceError> {
        self.encode_layers(texts, truncate, deadline, LayerMask::LAST).await
    }

    /// As [`Inference::encode`], with the hidden states of `layers` side by
    /// side in each token row (see [`LayerSelection::combine`]).
    pub async fn encode_layers(
        &self,
        texts: Vec<String>,
        truncate: bool,
        deadline: Instant,
        layers: LayerMask,
    ) -> Result<Encoded, InferenceError> {
        // Refuse before tokenizing: under overload refusals must cost next to nothing.
        self.batcher.check_capacity(texts.len())?;
        let started = Instant::now();
        let mut seqs = self.tokenize(texts, truncate).await?;
        let tokenize = started.elapsed();
        self.metrics.tokenize.observe(tokenize.as_secs_f64());
        seqs.iter_mut().for_each(|s| s.layers = layers);
        let tokens = seqs.iter_mut().map(|s| std::mem::take(&mut s.tokens)).collect();
        let offsets = seqs.iter_mut().map(|s| std::mem::take(&mut s.offsets)).collect();
        let batched = self.batcher.run(seqs, deadline).await?;
        let timing = Timing { tokenize, queue: batched.queue_time, inference: batched.inference_time };
        Ok(Encoded { tokens, offsets, rows: batched.rows, timing })
    }

    /// Each text cut into overlapping windows of the model's maximum (see
    /// [`TextTokenizer::encode_windows`]) and run through the queue as one
    /// request: every window's tokens count against `limits.max_request_tokens`.
    pub async fn encode_windows(
        &self,
        texts: Vec<String>,
        stride: usize,
        deadline: Instant,
        layers: LayerMask,
    ) -> Result<Windowed, InferenceError> {
        self.batcher.check_capacity(texts.len())?;
        let started = Instant::now();
        let tokenizer = self.tokenizer.clone();
        let windows = tokio::task::spawn_blocking(move || {
            texts.iter().enumerate().map(|(i, t)| tokenizer.encode_windows(i, t, stride)).collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap_or_else(|join_error| {
            Err(TokenizeError::Failed { index: 0, message: format!("tokenizer task failed: {join_error}") })
        })?;
        let tokenize = started.elapsed();
        self.metrics.tokenize.observe(tokenize.as_secs_f64());
        let counts: Vec<usize> = windows.iter().map(Vec::len).collect();
        let token_counts = windows.iter().map(|w| w.iter().map(Tokenized::len).sum()).collect();
        let seqs = windows.into_iter().flatten().map(|s| Tokenized { layers, ..s }).collect();
        let batched = self.batcher.run(seqs, deadline).await?;
        let mut rows = batched.rows.into_iter();
        let windows = counts.iter().map(|&n| rows.by_ref().take(n).collect()).collect();
        let timing = Timing { tokenize, queue: batched.queue_time, inference: batched.inference_time };
        Ok(Windowed { windows, token_counts, timing })
    }

    /// Hidden states of `texts`, pooled and normalised as asked.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        truncate: bool,
        deadline: Instant,
        options: EmbedOptions,
    ) -> Result<Embedded, InferenceError> {
        let last = self.info.last_layer();
        let layers = options.layers.clone().filter(|l| !l.is_default(last));
        let mask = layers.as_ref().map(|l| l.mask(last)).unwrap_or(LayerMask::LAST);
        let hidden = layers.as_ref().map(|l| l.width(self.info.hidden_size)).unwrap_or(self.info.hidden_size);
        let combine = |rows: Rows| match &layers {
            Some(l) => l.combine(&rows, mask, last, self.info.hidden_size),
            None => rows,
        };
        if let (Some(stride), Some(pooling)) = (options.windows, options.pooling.features()) {
            let windowed = self.encode_windows(texts, stride, deadline, mask).await?;
            let vectors = windowed
                .windows
                .into_iter()
                .map(|w| {
                    let w: Vec<Rows> = w.into_iter().map(combine).collect();
                    let mut v = pool_windows(&w, pooling);
                    if options.normalize {
                        normalize(&mut v);
                    }
                    v
                })
                .collect();
            return Ok(Embedded {
                tokens: Vec::new(),
                token_counts: windowed.token_counts,
                hidden,
                vectors: Vectors::Pooled(vectors),
                timing: windowed.timing,
            });
        }
        let encoded = self.encode_layers(texts, truncate, deadline, mask).await?;
        let token_counts = encoded.token_counts();
        let mut rows: Vec<Rows> = encoded.rows.into_iter().map(combine).collect();
        let vectors = match options.pooling {
            Pooling::None => {
                if options.normalize {
                    for r in rows.iter_mut() {
                        r.data.chunks_exact_mut(hidden).for_each(normalize);
                    }
                }
                Vectors::PerToken(rows)
            }
            pooling => Vectors::Pooled(
                rows.iter()
                    .map(|r| {
                        let mut v = pool(r, pooling).expect("pooled");
                        if options.normalize {
                            normalize(&mut v);
                        }
                        v
                    })
                    .collect(),
            ),
        };
        Ok(Embedded { tokens: encoded.tokens, token_counts, hidden, vectors, timing: encoded.timing })
    }

    /// Runs a few model calls of typical shapes (1, 4 and 16 texts of about 8,
    /// 32 and 128 tokens, within the model's maximum) through the queue, so
    /// that the first requests do not pay for first-call allocations and
    /// kernel selection. Use from a blocking thread; returns how many calls ran.
    pub fn warm_up(&self) -> Result<usize, BatchError> {
        let mut calls = 0;
        for tokens in [8usize, 32, 128] {
            let tokens = tokens.min(self.info.max_tokens);
            // Each "warm" is one word piece; [CLS] and [SEP] make up the rest.
            let text = "warm ".repeat(tokens.saturating_sub(2).max(1));
            let Ok(seq) = self.tokenizer.encode(0, &text, true) else { continue };
            for texts in [1usize, 4, 16] {
                self.batcher.run_blocking(vec![seq.clone(); texts])?;
                calls += 1;
            }
        }
        Ok(calls)
    }

    /// An [`Encoder`] that feeds batch jobs (training at startup) through this
    /// queue, so that they share the model sessions with live requests. Use
    /// from a blocking thread.
    pub fn queued_encoder(&self) -> QueuedEncoder<'_> {
        QueuedEncoder { inference: self }
    }
}

/// See [`Inference::queued_encoder`].
pub struct QueuedEncoder<'a> {
    inference: &'a Inference,
}

impl Encoder for QueuedEncoder<'_> {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        let seqs = batch.iter().map(|&t| t.clone()).collect();
        Ok(self.inference.batcher.run_blocking(seqs)?.rows)
    }
}
