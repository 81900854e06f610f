//! Text in, vectors out: tokenization off the async threads, the batching
//! queue, then pooling and normalisation. Every route that runs a model goes
//! through an [`Inference`]; handlers only parse requests and format answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use crate::batching::{BatchError, Batched, Batcher, BatcherConfig, BatcherStats, Reduce, Submitted};
use crate::cost::{json_strings_bytes, AnswerFormat, Cost, CostError, CostLimits, EmbedShape};
use crate::forward::ForwardPass;
use crate::layers::{LayerMask, LayerSelection};
use crate::metrics::RuntimeMetrics;
use crate::model::{Model, ModelInfo};
use crate::pooling::{normalize, pool, pool_windows, Pooling, Rows};
use crate::tokenize::{TextTokenizer, TokenizeError, Tokenized, Truncation};

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
    /// Per input its model rows (reduced, when the request asked for it:
    /// [`Prepared::reduced`]).
    pub rows: Vec<Rows>,
    /// Real tokens per input.
    pub lengths: Vec<usize>,
    pub timing: Timing,
}

/// How a request's texts become model sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// One sequence per text: truncated to the model's maximum, or refused over it when false.
    Truncate(bool),
    /// A text over the maximum cut into overlapping windows, this many word pieces apart.
    Windows(usize),
}

/// A request's texts tokenized and within the token bounds, not yet queued:
/// what the cost model prices.
pub struct Prepared {
    seqs: Vec<Tokenized>,
    /// Sequences per text (1 each unless cut into windows).
    per_text: Vec<usize>,
    /// Per sequence: word pieces and character offsets.
    tokens: Vec<Vec<String>>,
    offsets: Vec<Vec<(usize, usize)>>,
    tokenize: Duration,
    reduce: Option<Reduce>,
}

impl Prepared {
    /// Each sequence's rows reduced by `reduce` on the worker as soon as they
    /// are computed (what `Computed` then holds), instead of kept whole.
    pub fn reduced(mut self, reduce: Reduce) -> Prepared {
        self.reduce = Some(reduce);
        self
    }

    /// Real tokens per text, all of a text's windows together.
    pub fn token_counts(&self) -> Vec<usize> {
        let mut lengths = self.seqs.iter().map(Tokenized::len);
        self.per_text.iter().map(|&n| lengths.by_ref().take(n).sum()).collect()
    }

    /// Tokens of the longest sequence (a zero-padded `.npy` row).
    pub fn longest(&self) -> usize {
        self.seqs.iter().map(Tokenized::len).max().unwrap_or(0)
    }

    /// Most bytes the word pieces take in JSON, once.
    pub fn token_text_bytes(&self) -> u64 {
        self.tokens.iter().map(|t| json_strings_bytes(t) + 3).sum()
    }
}

/// A prepared request's rows, per sequence.
pub struct Computed {
    tokens: Vec<Vec<String>>,
    offsets: Vec<Vec<(usize, usize)>>,
    rows: Vec<Rows>,
    /// Real tokens per sequence.
    lengths: Vec<usize>,
    per_text: Vec<usize>,
    pub timing: Timing,
}

impl Computed {
    /// One sequence per text (prepared with [`Cut::Truncate`]).
    pub fn into_encoded(self) -> Encoded {
        debug_assert!(self.per_text.iter().all(|&n| n == 1));
        Encoded {
            tokens: self.tokens,
            offsets: self.offsets,
            rows: self.rows,
            lengths: self.lengths,
            timing: self.timing,
        }
    }

    /// Each text's windows (prepared with [`Cut::Windows`]).
    pub fn into_windowed(self) -> Windowed {
        let mut rows = self.rows.into_iter();
        let windows: Vec<Vec<Rows>> = self.per_text.iter().map(|&n| rows.by_ref().take(n).collect()).collect();
        let mut lengths = self.lengths.into_iter();
        let window_lengths = self.per_text.iter().map(|&n| lengths.by_ref().take(n).collect()).collect();
        Windowed { windows, window_lengths, timing: self.timing }
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
    /// How the answer will be written, and whether it lists the word pieces: what it costs.
    pub format: AnswerFormat,
    pub return_tokens: bool,
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
    /// Real tokens of each text's windows.
    pub window_lengths: Vec<Vec<usize>>,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub tokenize: Duration,
    pub queue: Duration,
    pub inference: Duration,
    /// What admission estimated the queue time to be (`x-queue-estimate-ms`).
    pub queue_estimate: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Cost(#[from] CostError),
    #[error(
        "the request holds about {work_ms} ms of model time on this replica, more than its deadline leaves \
         ({left_ms} ms of server.request_timeout_ms): send fewer or shorter texts per request"
    )]
    TooMuchWork { work_ms: u64, left_ms: u64 },
}

/// One input of a corpus request: a text, or a sequence of the model's own token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum CorpusItem {
    Text(String),
    Ids(Vec<u32>),
}

/// Bounds of a corpus request: the whole (`limits.max_pooled_inputs`,
/// `limits.max_pooled_tokens`) and each part it is queued in (the
/// per-request `limits.max_inputs`, `limits.max_request_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct CorpusBounds {
    pub max_tokens: usize,
    pub part_inputs: usize,
    pub part_tokens: usize,
    pub limits: CostLimits,
}

/// One pooled vector per input, not normalised (callers cut `dimensions` first).
pub struct Pooled {
    pub vectors: Vec<Vec<f32>>,
    pub token_counts: Vec<usize>,
    pub timing: Timing,
}

/// Parts of one corpus request queued at once: the next part waits in the
/// queue while the workers compute the one before, so batches stay full.
const PARTS_IN_FLIGHT: usize = 2;
/// How long a refused later part waits before it is offered again.
const PART_RETRY: Duration = Duration::from_millis(20);

/// Consecutive runs of `seqs`, each at most `inputs` sequences and `tokens` tokens.
fn split_parts(seqs: Vec<Tokenized>, inputs: usize, tokens: usize) -> Vec<Vec<Tokenized>> {
    let mut parts: Vec<Vec<Tokenized>> = Vec::new();
    let mut held = 0;
    for seq in seqs {
        match parts.last_mut() {
            Some(part) if part.len() < inputs && held + seq.len() <= tokens => {
                held += seq.len();
                part.push(seq);
            }
            _ => {
                held = seq.len();
                parts.push(vec![seq]);
            }
        }
    }
    parts
}

impl Inference {
    /// Starts the model's workers (one per session) behind one queue;
    /// `metrics` labels what `/metrics` shows of it.
    pub fn start(model: Model, config: BatcherConfig, metrics: RuntimeMetrics) -> Inference {
        // A real model's workers time two call shapes first (batching/cost.rs, `calibrate`).
        let config = BatcherConfig { calibrate: true, ..config };
        Self::with_forward_passes(model.info, model.tokenizer, model.sessions, config, metrics)
    }

    /// A runtime over any encoders that `info` describes: what tests and the
    /// fuzz targets use to drive the whole HTTP stack without ONNX Runtime.
    pub fn with_forward_passes<E: ForwardPass + 'static>(
        info: Arc<ModelInfo>,
        tokenizer: Arc<TextTokenizer>,
        encoders: Vec<E>,
        config: BatcherConfig,
        metrics: RuntimeMetrics,
    ) -> Inference {
        let name = if info.task == "feature-extraction" { "encoder" } else { "classifier" };
        let config = BatcherConfig { max_batch_size: info.sequences_per_call(config.max_batch_size), ..config };
        let batcher = Batcher::start(encoders, config, metrics.clone(), name);
        Inference { info, tokenizer, batcher, metrics }
    }

    /// See [`Batcher::refusal_for_any`].
    pub fn refusal_for_any(&self, deadline: std::time::Instant) -> Result<(), BatchError> {
        self.batcher.refusal_for_any(deadline)
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
        let prepared = self.prepare(texts, Cut::Truncate(truncate), LayerMask::LAST).await?;
        Ok(self.run(prepared, deadline).await?.into_encoded())
    }

    /// Tokenizes a request's texts (short ones in place, longer ones on the
    /// blocking pool), cut as asked, each sequence asking the model for the
    /// hidden states of `layers`; refuses over the queue's capacity (before
    /// tokenizing: under overload refusals must cost next to nothing) and over
    /// the per-request token budget. Nothing is queued yet: callers price the
    /// request first (`cost.rs`).
    pub async fn prepare(&self, texts: Vec<String>, cut: Cut, layers: LayerMask) -> Result<Prepared, InferenceError> {
        self.batcher.check_capacity(texts.len())?;
        let started = Instant::now();
        let (mut seqs, per_text) = match cut {
            Cut::Truncate(truncate) => {
                let seqs = self.tokenize(texts, truncate).await?;
                let n = seqs.len();
                (seqs, vec![1; n])
            }
            Cut::Windows(stride) => {
                let tokenizer = self.tokenizer.clone();
                let windows = tokio::task::spawn_blocking(move || {
                    texts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| tokenizer.encode_windows(i, t, stride))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .unwrap_or_else(|join_error| {
                    Err(TokenizeError::Failed { index: 0, message: format!("tokenizer task failed: {join_error}") })
                })?;
                let per_text = windows.iter().map(Vec::len).collect();
                (windows.into_iter().flatten().collect(), per_text)
            }
        };
        let tokenize = started.elapsed();
        self.metrics.tokenize.observe(tokenize.as_secs_f64());
        seqs.iter_mut().for_each(|s| s.layers = layers);
        self.batcher.check_request_tokens(&seqs)?;
        let tokens = seqs.iter_mut().map(|s| std::mem::take(&mut s.tokens)).collect();
        let offsets = seqs.iter_mut().map(|s| std::mem::take(&mut s.offsets)).collect();
        Ok(Prepared { seqs, per_text, tokens, offsets, tokenize, reduce: None })
    }

    /// Queues a prepared request and waits for every sequence's rows.
    pub async fn run(&self, prepared: Prepared, deadline: Instant) -> Result<Computed, InferenceError> {
        let Prepared { seqs, per_text, tokens, offsets, tokenize, reduce } = prepared;
        let lengths = seqs.iter().map(Tokenized::len).collect();
        let batched = self.batcher.run_reduced(seqs, deadline, reduce).await?;
        let timing = Timing {
            tokenize,
            queue: batched.queue_time,
            inference: batched.inference_time,
            queue_estimate: batched.queue_estimate,
        };
        Ok(Computed { tokens, offsets, rows: batched.rows, lengths, per_text, timing })
    }

    /// Hidden states of `texts`, pooled and normalised as asked, priced
    /// (`cost.rs`) once tokenized and refused over `limits` before anything is queued.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        truncate: bool,
        deadline: Instant,
        options: EmbedOptions,
        limits: CostLimits,
    ) -> Result<Embedded, InferenceError> {
        let last = self.info.last_layer();
        let layers = options.layers.clone().filter(|l| !l.is_default(last));
        let mask = layers.as_ref().map(|l| l.mask(last)).unwrap_or(LayerMask::LAST);
        let hidden = layers.as_ref().map(|l| l.width(self.info.hidden_size)).unwrap_or(self.info.hidden_size);
        let combine = |rows: Rows| match &layers {
            Some(l) => l.combine(&rows, mask, last, self.info.hidden_size),
            None => rows,
        };
        let windows = options.windows.filter(|_| options.pooling.features().is_some());
        let cut = windows.map_or(Cut::Truncate(truncate), Cut::Windows);
        let prepared = self.prepare(texts, cut, mask).await?;
        let shape = EmbedShape {
            hidden: self.info.hidden_size,
            layers_held: mask.indices(last).len(),
            width: hidden,
            per_token: options.pooling == Pooling::None,
            format: options.format,
        };
        let token_text_bytes = if options.return_tokens && windows.is_none() { prepared.token_text_bytes() } else { 0 };
        Cost::embed(&prepared.token_counts(), prepared.longest(), token_text_bytes, shape).check(limits)?;
        let computed = self.run(prepared, deadline).await?;
        if let (Some(_), Some(pooling)) = (windows, options.pooling.features()) {
            let windowed = computed.into_windowed();
            // Tokens computed per text, all its windows together.
            let token_counts = windowed.window_lengths.iter().map(|w| w.iter().sum()).collect();
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
                token_counts,
                hidden,
                vectors: Vectors::Pooled(vectors),
                timing: windowed.timing,
            });
        }
        let encoded = computed.into_encoded();
        let token_counts = encoded.lengths;
        // Each text's rows are combined as the one before is dropped: never
        // every layer of every text and their combination at once.
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

    /// A corpus-sized pooled request (OpenAI's 2,048 inputs, LangChain's
    /// 1,000-text chunks): tokenized whole and bounded (`bounds.max_tokens`,
    /// its answer and memory priced, its model time against its deadline),
    /// then queued in parts within the per-request bounds, a few at once, so
    /// that each part is admitted as a request of its own and live requests
    /// interleave with it. Once the first part is in, a busy queue delays the
    /// later ones (they wait for an earlier part, then retry) instead of
    /// losing accepted work; the deadline bounds the whole.
    pub async fn embed_corpus(
        &self,
        input: Vec<CorpusItem>,
        truncation: Truncation,
        deadline: Instant,
        pooling: Pooling,
        bounds: CorpusBounds,
    ) -> Result<Pooled, InferenceError> {
        let n = input.len();
        self.batcher.check_capacity(n.min(bounds.part_inputs))?;
        let bytes: usize = input
            .iter()
            .map(|item| match item {
                CorpusItem::Text(t) => t.len(),
                CorpusItem::Ids(ids) => 4 * ids.len(),
            })
            .sum();
        let started = Instant::now();
        let tokenizer = self.tokenizer.clone();
        let encode = move || -> Result<Vec<Tokenized>, TokenizeError> {
            input
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    CorpusItem::Text(text) => tokenizer.encode_with(i, text, truncation),
                    CorpusItem::Ids(ids) => tokenizer.from_ids(i, ids, truncation),
                })
                .collect()
        };
        let mut seqs = if bytes <= INLINE_TOKENIZE_BYTES {
            encode()?
        } else {
            tokio::task::spawn_blocking(encode).await.unwrap_or_else(|join_error| {
                Err(TokenizeError::Failed { index: 0, message: format!("tokenizer task failed: {join_error}") })
            })?
        };
        let tokenize = started.elapsed();
        self.metrics.tokenize.observe(tokenize.as_secs_f64());
        // Pooled answers need no word pieces: parts are cheap to offer again.
        for s in seqs.iter_mut() {
            s.tokens = Vec::new();
            s.offsets = Vec::new();
        }
        let token_counts: Vec<usize> = seqs.iter().map(Tokenized::len).collect();
        let tokens: usize = token_counts.iter().sum();
        if tokens > bounds.max_tokens {
            return Err(BatchError::TooManyTokens { tokens, limit: bounds.max_tokens }.into());
        }
        let parts = split_parts(seqs, bounds.part_inputs.max(1), bounds.part_tokens.max(1));
        let mut held: Vec<usize> = parts.iter().map(|p| p.iter().map(Tokenized::len).sum()).collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let shape = EmbedShape {
            hidden: self.info.hidden_size,
            layers_held: 1,
            width: self.info.hidden_size,
            per_token: false,
            format: AnswerFormat::Json,
        };
        Cost::corpus(n, held.iter().take(PARTS_IN_FLIGHT).sum(), shape).check(bounds.limits)?;
        if let Some(work) = self.batcher.estimate(n, tokens) {
            let left = deadline.saturating_duration_since(Instant::now());
            if work > left {
                let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                return Err(InferenceError::TooMuchWork { work_ms: ms(work), left_ms: ms(left) });
            }
        }

        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(n);
        // The first part's queue time and estimate stand for the request's.
        let mut first_queue: Option<(Duration, Option<Duration>)> = None;
        let mut collect = |batched: Batched| {
            vectors.extend(batched.rows.iter().map(|r| pool(r, pooling).expect("cls or mean pools")));
            first_queue.get_or_insert((batched.queue_time, batched.queue_estimate));
        };
        let mut in_flight: VecDeque<Submitted> = VecDeque::new();
        for (number, part) in parts.into_iter().enumerate() {
            loop {
                match self.batcher.submit(part.clone(), deadline) {
                    Ok(submitted) => {
                        in_flight.push_back(submitted);
                        break;
                    }
                    Err(
                        BatchError::QueueFull { .. }
                        | BatchError::QueueFullTokens { .. }
                        | BatchError::QueueWait { .. },
                    ) if number > 0 => {
                        if Instant::now() >= deadline {
                            return Err(BatchError::DeadlineExceeded.into());
                        }
                        match in_flight.pop_front() {
                            Some(earlier) => collect(earlier.wait().await?),
                            None => tokio::time::sleep(PART_RETRY).await,
                        }
                    }
                    Err(refused) => return Err(refused.into()),
                }
            }
            while in_flight.len() >= PARTS_IN_FLIGHT {
                collect(in_flight.pop_front().expect("non-empty").wait().await?);
            }
        }
        while let Some(submitted) = in_flight.pop_front() {
            collect(submitted.wait().await?);
        }
        let (queue, queue_estimate) = first_queue.unwrap_or_default();
        let timing =
            Timing { tokenize, queue, inference: started.elapsed().saturating_sub(tokenize + queue), queue_estimate };
        Ok(Pooled { vectors, token_counts, timing })
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

    /// An [`ForwardPass`] that feeds batch jobs (training at startup) through this
    /// queue, so that they share the model sessions with live requests. Use
    /// from a blocking thread.
    pub fn queued_forward_pass(&self) -> QueuedForwardPass<'_> {
        QueuedForwardPass { inference: self }
    }
}

/// See [`Inference::queued_forward_pass`].
pub struct QueuedForwardPass<'a> {
    inference: &'a Inference,
}

impl ForwardPass for QueuedForwardPass<'_> {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        let seqs = batch.iter().map(|&t| t.clone()).collect();
        Ok(self.inference.batcher.run_blocking(seqs)?.rows)
    }
}
