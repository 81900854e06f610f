//! Text in, model rows out: tokenization off the async threads, then the
//! batching queue. Shared by every route that runs the encoder.

use std::sync::Arc;
use std::time::Instant;

use crate::batching::{BatchError, Batched, Batcher, BatcherConfig, BatcherStats};
use crate::features::RowSource;
use crate::metrics::{header, Histogram, SECONDS};
use crate::model::{Model, ModelInfo, Rows};
use crate::tokenize::{TextTokenizer, TokenizeError, Tokenized};

/// Requests with at most this much text are tokenized on the async thread.
const INLINE_TOKENIZE_BYTES: usize = 2048;

pub struct Inference {
    pub info: Arc<ModelInfo>,
    pub tokenizer: Arc<TextTokenizer>,
    batcher: Batcher,
    tokenize_seconds: Histogram,
}

/// One request's results: per input, its word pieces, character offsets and
/// model rows, and where the time went.
pub struct Encoded {
    pub tokens: Vec<Vec<String>>,
    pub offsets: Vec<Vec<(usize, usize)>>,
    pub rows: Vec<Rows>,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub tokenize: std::time::Duration,
    pub queue: std::time::Duration,
    pub inference: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl Inference {
    pub fn start(model: Model, config: BatcherConfig) -> Inference {
        let batcher = Batcher::start(model.sessions, model.info.clone(), config);
        Inference { info: model.info, tokenizer: model.tokenizer, batcher, tokenize_seconds: Histogram::new(SECONDS) }
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

    /// Runs already tokenized sequences through the queue.
    pub async fn run(&self, seqs: Vec<Tokenized>, deadline: Instant) -> Result<Batched, BatchError> {
        self.batcher.run(seqs, deadline).await
    }

    /// Appends the queue's metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String, labels: &str) {
        self.batcher.render_metrics(out, labels);
        header(out, "distilserve_tokenize_seconds", "histogram", "Time to tokenize one request's texts.");
        self.tokenize_seconds.render(out, "distilserve_tokenize_seconds", labels);
    }

    pub async fn encode(
        &self,
        texts: Vec<String>,
        truncate: bool,
        deadline: Instant,
    ) -> Result<Encoded, InferenceError> {
        // Refuse before tokenizing: under overload refusals must cost next to nothing.
        self.batcher.check_capacity(texts.len())?;
        let started = Instant::now();
        let mut seqs = self.tokenize(texts, truncate).await?;
        let tokenize = started.elapsed();
        self.tokenize_seconds.observe_duration(tokenize);
        let tokens = seqs.iter_mut().map(|s| std::mem::take(&mut s.tokens)).collect();
        let offsets = seqs.iter_mut().map(|s| std::mem::take(&mut s.offsets)).collect();
        let batched = self.batcher.run(seqs, deadline).await?;
        let timing = Timing { tokenize, queue: batched.queue_time, inference: batched.inference_time };
        Ok(Encoded { tokens, offsets, rows: batched.rows, timing })
    }
}

/// Feeds batch jobs (training at startup) through the service's queue, so that
/// they share the model sessions with live requests. Call from a blocking thread.
pub struct QueueSource<'a> {
    pub inference: &'a Inference,
    pub runtime: tokio::runtime::Handle,
}

impl RowSource for QueueSource<'_> {
    fn rows(&mut self, batch: &[Tokenized]) -> anyhow::Result<Vec<Rows>> {
        // A generous deadline: batch work waits behind live requests, it is not one.
        let deadline = Instant::now() + std::time::Duration::from_secs(600);
        let mut attempt = 0;
        loop {
            match self.runtime.block_on(self.inference.run(batch.to_vec(), deadline)) {
                Ok(batched) => return Ok(batched.rows),
                Err(BatchError::QueueFull { .. }) if attempt < 600 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
