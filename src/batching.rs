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

type Reply = oneshot::Sender<Result<Vec<Rows>, BatchError>>;

/// One request's sequences and where their results go.
struct Job {
    seqs: Vec<Tokenized>,
    deadline: Instant,
    state: Mutex<JobState>,
}

struct JobState {
    rows: Vec<Option<Rows>>,
    remaining: usize,
    reply: Option<Reply>,
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

    fn complete(&self, index: usize, rows: Rows) {
        let mut state = self.state.lock().expect("job lock");
        if state.reply.is_none() {
            return;
        }
        state.rows[index] = Some(rows);
        state.remaining -= 1;
        if state.remaining == 0 {
            let rows = state.rows.iter_mut().map(|r| r.take().expect("every row done")).collect();
            if let Some(reply) = state.reply.take() {
                let _ = reply.send(Ok(rows));
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

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    sequences: AtomicU64,
    padded_tokens: AtomicU64,
    skipped: AtomicU64,
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

    /// Queues `seqs` and waits for their rows, in the same order. Refuses at once
    /// when the queue cannot take them all; gives up at `deadline`.
    pub async fn run(&self, seqs: Vec<Tokenized>, deadline: Instant) -> Result<Vec<Rows>, BatchError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        let n = seqs.len();
        let job = Arc::new(Job {
            seqs,
            deadline,
            state: Mutex::new(JobState { rows: vec![None; n], remaining: n, reply: Some(tx) }),
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
        match forward(&mut session, &shared.info, &seqs) {
            Ok(rows) => {
                for (item, rows) in live.iter().zip(rows) {
                    item.job.complete(item.index, rows);
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
