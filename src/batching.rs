//! Dynamic batching. Requests put their tokenized sequences on one bounded queue;
//! worker threads (one per model session) take as many as fit a token budget
//! and a batch size, run them in one model call and hand each caller its rows.
//! A full queue refuses work at once; expired or abandoned work is not computed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ort::session::Session;
use tokio::sync::oneshot;

use crate::config::BatchingSettings;
use crate::metrics::{header, Histogram, BATCH_SIZES, SECONDS, TOKENS};
use crate::model::{forward, ModelInfo, Rows};
use crate::tokenize::Tokenized;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("the inference queue is full ({capacity} sequences waiting); retry shortly")]
    QueueFull { capacity: usize },
    #[error("the request's deadline passed before its inference finished")]
    DeadlineExceeded,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("inference failed: {0}")]
    Inference(String),
}

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
}

impl From<&BatchingSettings> for BatcherConfig {
    fn from(s: &BatchingSettings) -> Self {
        BatcherConfig {
            max_batch_size: s.max_batch_size,
            max_batch_tokens: s.max_batch_tokens,
            max_wait: Duration::from_millis(s.max_wait_ms),
            queue_capacity: s.queue_capacity,
        }
    }
}

/// A request's rows, with where its time went.
#[derive(Debug)]
pub struct Batched {
    pub rows: Vec<Rows>,
    /// From queueing to the start of its first model call.
    pub queue_time: Duration,
    /// From the start of its first model call to the end of its last.
    pub inference_time: Duration,
}

type Reply = oneshot::Sender<Result<Batched, BatchError>>;

/// One request's sequences and where their results go.
struct Job {
    seqs: Vec<Tokenized>,
    deadline: Instant,
    queued_at: Instant,
    state: Mutex<JobState>,
}

struct JobState {
    rows: Vec<Option<Rows>>,
    remaining: usize,
    reply: Option<Reply>,
    first_start: Option<Instant>,
}

impl Job {
    /// False once the caller has gone (disconnect, timeout) or the job failed.
    fn is_wanted(&self, now: Instant) -> bool {
        let state = self.state.lock().expect("job lock");
        match &state.reply {
            Some(reply) => !reply.is_closed() && now < self.deadline,
            None => false,
        }
    }

    fn complete(&self, index: usize, rows: Rows, batch_start: Instant) {
        let mut state = self.state.lock().expect("job lock");
        if state.reply.is_none() {
            return;
        }
        state.rows[index] = Some(rows);
        state.remaining -= 1;
        let first = *state.first_start.get_or_insert(batch_start);
        if state.remaining == 0 {
            let rows = state.rows.iter_mut().map(|r| r.take().expect("every row done")).collect();
            let batched = Batched {
                rows,
                queue_time: first.saturating_duration_since(self.queued_at),
                inference_time: first.elapsed(),
            };
            if let Some(reply) = state.reply.take() {
                let _ = reply.send(Ok(batched));
            }
        }
    }

    fn fail(&self, error: BatchError) {
        if let Some(reply) = self.state.lock().expect("job lock").reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// One sequence waiting in the queue.
struct Item {
    job: Arc<Job>,
    index: usize,
}

impl Item {
    fn len(&self) -> usize {
        self.job.seqs[self.index].len()
    }
}

struct Queue {
    items: VecDeque<Item>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    config: BatcherConfig,
    info: Arc<ModelInfo>,
    stats: Counters,
}

struct Counters {
    batches: AtomicU64,
    sequences: AtomicU64,
    padded_tokens: AtomicU64,
    skipped: AtomicU64,
    queue_wait: Histogram,
    inference: Histogram,
    batch_size: Histogram,
    batch_tokens: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            batches: AtomicU64::new(0),
            sequences: AtomicU64::new(0),
            padded_tokens: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            queue_wait: Histogram::new(SECONDS),
            inference: Histogram::new(SECONDS),
            batch_size: Histogram::new(BATCH_SIZES),
            batch_tokens: Histogram::new(TOKENS),
        }
    }
}

/// Totals since start, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatcherStats {
    /// Model calls made.
    pub batches: u64,
    /// Sequences computed.
    pub sequences: u64,
    /// Tokens fed to the model, padding included.
    pub padded_tokens: u64,
    /// Sequences dropped without computing: caller gone or deadline passed.
    pub skipped: u64,
}

/// Handle to the queue and its workers. Dropping it stops the workers once the
/// queue is empty.
pub struct Batcher {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts one worker thread per session.
    pub fn start(sessions: Vec<Session>, info: Arc<ModelInfo>, config: BatcherConfig) -> Batcher {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { items: VecDeque::new(), closed: false }),
            wake: Condvar::new(),
            config,
            info,
            stats: Counters::default(),
        });
        let workers = sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || worker_loop(&shared, session))
                    .expect("spawn inference worker")
            })
            .collect();
        Batcher { shared, workers: Mutex::new(workers) }
    }

    /// Sequences waiting to be computed.
    pub fn queue_depth(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").items.len()
    }

    pub fn stats(&self) -> BatcherStats {
        let c = &self.shared.stats;
        BatcherStats {
            batches: c.batches.load(Ordering::Relaxed),
            sequences: c.sequences.load(Ordering::Relaxed),
            padded_tokens: c.padded_tokens.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
        }
    }

    /// Appends this queue's metrics (Prometheus text format); `labels` is `k="v",` or empty.
    pub fn render_metrics(&self, out: &mut String, labels: &str) {
        let c = &self.shared.stats;
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            header(out, name, "counter", help);
            let braces =
                if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.trim_end_matches(',')) };
            out.push_str(&format!("{name}{braces} {}\n", v.load(Ordering::Relaxed)));
        };
        counter(out, "distilserve_batches_total", "Model calls made.", &c.batches);
        counter(out, "distilserve_sequences_total", "Sequences computed.", &c.sequences);
        counter(out, "distilserve_padded_tokens_total", "Tokens fed to the model, padding included.", &c.padded_tokens);
        counter(
            out,
            "distilserve_skipped_sequences_total",
            "Sequences dropped uncomputed: caller gone or deadline passed.",
            &c.skipped,
        );
        header(out, "distilserve_queue_depth", "gauge", "Sequences waiting in the inference queue.");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.trim_end_matches(',')) };
        out.push_str(&format!("distilserve_queue_depth{braces} {}\n", self.queue_depth()));
        header(out, "distilserve_queue_wait_seconds", "histogram", "Time a sequence waited in the queue.");
        c.queue_wait.render(out, "distilserve_queue_wait_seconds", labels);
        header(out, "distilserve_inference_seconds", "histogram", "Duration of one model call.");
        c.inference.render(out, "distilserve_inference_seconds", labels);
        header(out, "distilserve_batch_size", "histogram", "Sequences per model call.");
        c.batch_size.render(out, "distilserve_batch_size", labels);
        header(out, "distilserve_batch_tokens", "histogram", "Padded tokens per model call.");
        c.batch_tokens.render(out, "distilserve_batch_tokens", labels);
    }

    /// Queues `seqs` and waits for their rows, in the same order. Refuses at once
    /// when the queue cannot take them all; gives up at `deadline`.
    pub async fn run(&self, seqs: Vec<Tokenized>, deadline: Instant) -> Result<Batched, BatchError> {
        if seqs.is_empty() {
            return Ok(Batched { rows: Vec::new(), queue_time: Duration::ZERO, inference_time: Duration::ZERO });
        }
        let (tx, rx) = oneshot::channel();
        let n = seqs.len();
        let job = Arc::new(Job {
            seqs,
            deadline,
            queued_at: Instant::now(),
            state: Mutex::new(JobState { rows: vec![None; n], remaining: n, reply: Some(tx), first_start: None }),
        });
        {
            let mut queue = self.shared.queue.lock().expect("queue lock");
            if queue.closed {
                return Err(BatchError::ShuttingDown);
            }
            let capacity = self.shared.config.queue_capacity;
            if queue.items.len() + n > capacity {
                return Err(BatchError::QueueFull { capacity });
            }
            queue.items.extend((0..n).map(|index| Item { job: job.clone(), index }));
        }
        self.shared.wake.notify_all();
        let timeout = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_closed)) => Err(BatchError::ShuttingDown),
            // Dropping `rx` here marks the job unwanted: workers skip what is left of it.
            Err(_elapsed) => Err(BatchError::DeadlineExceeded),
        }
    }

    /// Stops taking new work; queued work is still computed.
    pub fn close(&self) {
        self.shared.queue.lock().expect("queue lock").closed = true;
        self.shared.wake.notify_all();
    }

    /// Closes the queue and waits for the workers to finish what was queued.
    pub fn join(&self) {
        self.close();
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

fn worker_loop(shared: &Shared, mut session: Session) {
    while let Some(batch) = next_batch(shared) {
        let now = Instant::now();
        let (live, dead): (Vec<Item>, Vec<Item>) = batch.into_iter().partition(|item| item.job.is_wanted(now));
        shared.stats.skipped.fetch_add(dead.len() as u64, Ordering::Relaxed);
        for item in dead {
            // The caller is gone or its deadline passed: answer (if anyone listens) without computing.
            item.job.fail(BatchError::DeadlineExceeded);
        }
        if live.is_empty() {
            continue;
        }
        let seqs: Vec<&Tokenized> = live.iter().map(|item| &item.job.seqs[item.index]).collect();
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        shared.stats.sequences.fetch_add(seqs.len() as u64, Ordering::Relaxed);
        shared.stats.padded_tokens.fetch_add((longest * seqs.len()) as u64, Ordering::Relaxed);
        shared.stats.batch_size.observe(seqs.len() as f64);
        shared.stats.batch_tokens.observe((longest * seqs.len()) as f64);
        let batch_start = Instant::now();
        for item in &live {
            shared.stats.queue_wait.observe_duration(batch_start.saturating_duration_since(item.job.queued_at));
        }
        let result = forward(&mut session, &shared.info, &seqs);
        shared.stats.inference.observe_duration(batch_start.elapsed());
        match result {
            Ok(rows) => {
                for (item, rows) in live.iter().zip(rows) {
                    item.job.complete(item.index, rows, batch_start);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = live.len(), "inference failed");
                for item in &live {
                    item.job.fail(BatchError::Inference(e.to_string()));
                }
            }
        }
    }
}

/// Blocks until there is work (or the queue is closed and empty), then takes
/// the oldest sequences that fit the batch size and token budget, sorted by
/// length so that padding stays small.
fn next_batch(shared: &Shared) -> Option<Vec<Item>> {
    let config = &shared.config;
    let mut queue = shared.queue.lock().expect("queue lock");
    while queue.items.is_empty() {
        if queue.closed {
            return None;
        }
        queue = shared.wake.wait(queue).expect("queue lock");
    }
    if !config.max_wait.is_zero() {
        // Give concurrent requests a moment to join a batch that is not full yet.
        let until = Instant::now() + config.max_wait;
        while queue.items.len() < config.max_batch_size && !queue.closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = shared.wake.wait_timeout(queue, left).expect("queue lock").0;
        }
    }
    let mut batch: Vec<Item> = Vec::new();
    let mut longest = 0;
    while let Some(next) = queue.items.front() {
        let len = next.len().max(longest);
        let fits = batch.len() < config.max_batch_size && len * (batch.len() + 1) <= config.max_batch_tokens;
        if !fits && !batch.is_empty() {
            break;
        }
        longest = len;
        batch.push(queue.items.pop_front().expect("front exists"));
    }
    drop(queue);
    batch.sort_by_key(Item::len);
    Some(batch)
}
