//! Dynamic batching. Requests put their tokenized sequences on one bounded queue;
//! worker threads (one per [`ForwardPass`], i.e. per model session) take as many as
//! fit a token budget and a batch size, run them in one call and hand each
//! caller its rows. A full queue refuses work at once; expired or abandoned
//! work is not computed. Generic over the encoder, so its behaviour is tested
//! with fakes (tests/suite/queue.rs) without ONNX Runtime.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::forward::ForwardPass;
use crate::metrics::RuntimeMetrics;
use crate::pooling::Rows;
use crate::tokenize::Tokenized;

mod config;
mod cost;
mod planner;
mod worker;

pub use config::BatcherConfig;
use cost::{BacklogCallSize, CallCost, CostModel, QueuedWork};
pub use planner::plan_batch;
use planner::tokens_of;
use worker::worker_loop;
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("the inference queue is full ({capacity} sequences waiting); retry shortly")]
    QueueFull { capacity: usize },
    #[error("the inference queue is full ({capacity} tokens waiting); retry shortly")]
    QueueFullTokens { capacity: usize },
    #[error(
        "the inference queue holds about {waiting_ms} ms of work, more than this request can wait \
         ({limit_ms} ms); retry shortly or elsewhere"
    )]
    QueueWait { waiting_ms: u64, limit_ms: u64 },
    #[error(
        "the request has {tokens} tokens after tokenization, more than the limit of {limit} per request; \
         send fewer or shorter texts"
    )]
    TooManyTokens { tokens: usize, limit: usize },
    #[error("inference failed: the worker panicked; the batch was dropped and the worker restarted")]
    WorkerPanicked,
    #[error("the request's deadline passed before its inference finished")]
    DeadlineExceeded,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("inference failed: {0}")]
    Inference(String),
}

impl BatchError {
    /// When a refused request may find room: the estimated time to compute
    /// the live work queued now (at least a second), where the refusal knows it.
    pub fn retry_after_seconds(&self) -> Option<u32> {
        match self {
            BatchError::QueueWait { waiting_ms, .. } => Some(waiting_ms.div_ceil(1000).clamp(1, 3600) as u32),
            _ => None,
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
    /// The queue time estimated when it was admitted (None: no estimate yet).
    pub queue_estimate: Option<Duration>,
}

impl Batched {
    /// The answer to no sequences.
    fn empty() -> Batched {
        Batched { rows: Vec::new(), queue_time: Duration::ZERO, inference_time: Duration::ZERO, queue_estimate: None }
    }
}

/// Work admitted to the queue, its rows not yet computed.
pub struct Submitted {
    rx: Option<oneshot::Receiver<Result<Batched, BatchError>>>,
    deadline: Instant,
}

impl Submitted {
    /// The rows, or the deadline's error. Dropped unawaited (or timed out), the
    /// job is marked unwanted and the workers skip what is left of it.
    pub async fn wait(self) -> Result<Batched, BatchError> {
        let Some(rx) = self.rx else {
            return Ok(Batched::empty());
        };
        let timeout = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_closed)) => Err(BatchError::ShuttingDown),
            Err(_elapsed) => Err(BatchError::DeadlineExceeded),
        }
    }
}

type Reply = oneshot::Sender<Result<Batched, BatchError>>;

/// Reduces one sequence's rows on the worker as soon as they are computed
/// (for `/classify`: a head's layers combined and pooled), so that a request
/// holds its reduced rows, not every layer's, until its last sequence is done.
pub type Reduce = Arc<dyn Fn(Rows) -> Rows + Send + Sync>;

/// One request's sequences and where their results go.
struct Job {
    /// Arrival order among jobs: fair planning round-robins between jobs.
    number: u64,
    /// Batch work (head training): computed after every queued live request.
    background: bool,
    seqs: Vec<Tokenized>,
    deadline: Instant,
    queued_at: Instant,
    /// What admission estimated its queue time to be.
    queue_estimate: Option<Duration>,
    /// Applied to each sequence's rows before they are kept.
    reduce: Option<Reduce>,
    state: Mutex<JobState>,
}

struct JobState {
    rows: Vec<Option<Rows>>,
    remaining: usize,
    reply: Option<Reply>,
    first_start: Option<Instant>,
}

impl Job {
    fn state(&self) -> MutexGuard<'_, JobState> {
        // A panic while holding a job's lock leaves nothing half-written that
        // matters more than answering the caller: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// False once the caller has gone (disconnect, timeout) or the job failed.
    fn is_wanted(&self, now: Instant) -> bool {
        match &self.state().reply {
            Some(reply) => !reply.is_closed() && now < self.deadline,
            None => false,
        }
    }

    fn complete(&self, index: usize, rows: Rows, batch_start: Instant) {
        let rows = match &self.reduce {
            None => rows,
            Some(reduce) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reduce(rows))) {
                Ok(rows) => rows,
                Err(panic) => {
                    let message = crate::telemetry::panic_message(&*panic);
                    tracing::error!(panic = %message, "reducing a sequence's rows panicked; request failed");
                    return self.fail(BatchError::WorkerPanicked);
                }
            },
        };
        let mut state = self.state();
        if state.reply.is_none() {
            return;
        }
        state.rows[index] = Some(rows);
        state.remaining -= 1;
        let first = *state.first_start.get_or_insert(batch_start);
        if state.remaining == 0 {
            let rows = state.rows.iter_mut().map(|r| r.take().expect("every row done")).collect();
            let batched = Batched {
                queue_estimate: self.queue_estimate,
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
        if let Some(reply) = self.state().reply.take() {
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
    /// Tokens of the queued sequences.
    tokens: usize,
    /// Tokens of the queued live sequences (what a new live request waits behind:
    /// batch work comes after it).
    live_tokens: usize,
    /// Queued live sequences.
    live_items: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Workers wait here for work.
    wake: Condvar,
    config: BatcherConfig,
    metrics: RuntimeMetrics,
    started: Instant,
    /// Seconds since start of the last "queue full" warning (0: none yet).
    last_refusal_warning: AtomicU64,
    jobs: AtomicU64,
    /// Per worker: when its current model call started (ms since `started`, + 1), 0 when idle.
    busy_since_ms: Vec<AtomicU64>,
    /// Per worker: when its current model call is expected to end by its cost
    /// fit (ms since `started`), 0 when idle or without a fit.
    busy_until_ms: Vec<AtomicU64>,
    /// Per worker: its fitted cost of a model call (see [`CallCost`]), for the
    /// queue-time estimate; None until it has one.
    call_cost: Vec<Mutex<Option<CostModel>>>,
    /// Live sequences per model call while more were queued.
    backlog_call_size: BacklogCallSize,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing runs user code under this lock, but a poisoned lock must not
        // turn every later request into a 500.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What queued live work costs by the workers' fits (None: no worker has
    /// measured its calls yet).
    fn queued_work(&self) -> Option<QueuedWork> {
        let fits: Vec<CostModel> =
            self.call_cost.iter().filter_map(|c| *c.lock().unwrap_or_else(|p| p.into_inner())).collect();
        QueuedWork::of(&fits, &self.config)
    }

    /// The model time of a [`BatcherConfig::reorder_pool`] of sequences as
    /// long on average as the live ones queued, by `work` in calls of
    /// `call_size` (None: nothing live queued, or no fit yet): what the room
    /// admission leaves for reordering is made of
    /// ([`BatcherConfig::reorder_room`]).
    fn reorder_pool_time(&self, queue: &Queue, work: Option<&QueuedWork>, call_size: f64) -> Option<Duration> {
        if queue.live_items == 0 {
            return None;
        }
        let pool = self.config.reorder_pool();
        let tokens = queue.live_tokens * pool / queue.live_items;
        Some(work?.time(pool, tokens, call_size))
    }

    /// Estimated model time of `items` live sequences of `tokens` real tokens
    /// queued now, in calls of `call_size` sequences (see [`QueuedWork::time`]).
    fn queued_work_time(&self, items: usize, tokens: usize, call_size: f64) -> Option<Duration> {
        if tokens == 0 {
            return Some(Duration::ZERO);
        }
        Some(self.queued_work()?.time(items, tokens, call_size))
    }
}

/// Totals since start, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatcherStats {
    /// Model calls made.
    pub batches: u64,
    /// Sequences computed.
    pub sequences: u64,
    /// Real tokens computed (padding excluded).
    pub tokens: u64,
    /// Tokens fed to the model, padding included.
    pub padded_tokens: u64,
    /// Sequences dropped without computing: caller gone or deadline passed.
    pub skipped: u64,
    /// Requests refused because the queue was full.
    pub refused: u64,
}

/// See [`Batcher::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerHealth {
    pub dead: usize,
    pub longest_call: Duration,
}

/// Handle to the queue and its workers. Dropping it stops the workers once the
/// queue is empty.
pub struct Batcher {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts one worker thread per encoder (one per model session).
    pub fn start<E: ForwardPass + 'static>(
        encoders: Vec<E>,
        config: BatcherConfig,
        metrics: RuntimeMetrics,
        name: &str,
    ) -> Batcher {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                tokens: 0,
                live_tokens: 0,
                live_items: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            config,
            metrics,
            started: Instant::now(),
            last_refusal_warning: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            busy_since_ms: (0..encoders.len()).map(|_| AtomicU64::new(0)).collect(),
            busy_until_ms: (0..encoders.len()).map(|_| AtomicU64::new(0)).collect(),
            call_cost: (0..encoders.len()).map(|_| Mutex::new(None)).collect(),
            backlog_call_size: BacklogCallSize::default(),
        });
        let workers = encoders
            .into_iter()
            .enumerate()
            .map(|(i, encoder)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        // Started from an HTTP thread (a head loaded at run time) it would yield.
                        let _scheduled = crate::threads::AsModelThread::new();
                        worker_loop(&shared, i, encoder)
                    })
                    .expect("spawn inference worker")
            })
            .collect();
        Batcher { shared, workers: Mutex::new(workers) }
    }

    /// Whether the workers are alive: how many threads have ended while the
    /// queue is open, and how long the longest model call in progress has run.
    pub fn health(&self) -> WorkerHealth {
        let closed = self.shared.queue().closed;
        let dead = if closed {
            0
        } else {
            self.workers.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|w| w.is_finished()).count()
        };
        let now = self.shared.started.elapsed().as_millis() as u64 + 1;
        let longest_call_ms = self
            .shared
            .busy_since_ms
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|&since| since > 0)
            .map(|since| now.saturating_sub(since))
            .max()
            .unwrap_or(0);
        WorkerHealth { dead, longest_call: Duration::from_millis(longest_call_ms) }
    }

    /// Sequences waiting to be computed.
    pub fn queue_depth(&self) -> usize {
        self.shared.queue().items.len()
    }

    pub fn stats(&self) -> BatcherStats {
        let m = &self.shared.metrics;
        BatcherStats {
            batches: m.batches.get(),
            sequences: m.sequences.get(),
            tokens: m.tokens.get(),
            padded_tokens: m.padded_tokens.get(),
            skipped: m.skipped.get(),
            refused: m.refused.get(),
        }
    }

    fn new_job(
        &self,
        seqs: Vec<Tokenized>,
        deadline: Instant,
        background: bool,
        queue_estimate: Option<Duration>,
        reduce: Option<Reduce>,
    ) -> (Arc<Job>, oneshot::Receiver<Result<Batched, BatchError>>) {
        let (tx, rx) = oneshot::channel();
        let n = seqs.len();
        let job = Arc::new(Job {
            number: self.shared.jobs.fetch_add(1, Ordering::Relaxed),
            background,
            seqs,
            deadline,
            queued_at: Instant::now(),
            queue_estimate,
            reduce,
            state: Mutex::new(JobState { rows: vec![None; n], remaining: n, reply: Some(tx), first_start: None }),
        });
        (job, rx)
    }

    fn enqueue(&self, queue: &mut Queue, job: &Arc<Job>) {
        let n = job.seqs.len();
        queue.items.extend((0..n).map(|index| Item { job: job.clone(), index }));
        let tokens = tokens_of(&job.seqs);
        queue.tokens += tokens;
        if !job.background {
            queue.live_tokens += tokens;
            queue.live_items += n;
        }
        self.shared.metrics.queue_depth.set(queue.items.len() as i64);
        self.shared.wake.notify_all();
    }

    /// Queues `seqs` and waits for their rows, in the same order. Refuses at once
    /// when the queue cannot take them all; gives up at `deadline`.
    pub async fn run(&self, seqs: Vec<Tokenized>, deadline: Instant) -> Result<Batched, BatchError> {
        self.submit(seqs, deadline)?.wait().await
    }

    /// As [`Batcher::run`], each sequence's rows reduced by `reduce` on the
    /// worker as soon as they are computed.
    pub async fn run_reduced(
        &self,
        seqs: Vec<Tokenized>,
        deadline: Instant,
        reduce: Option<Reduce>,
    ) -> Result<Batched, BatchError> {
        self.submit_reduced(seqs, deadline, reduce)?.wait().await
    }

    /// Admits and queues `seqs` at once (the refusals of [`Batcher::run`]);
    /// their rows are awaited with [`Submitted::wait`]. Lets a caller keep
    /// several parts of one request queued (`Inference::embed_corpus`).
    pub fn submit(&self, seqs: Vec<Tokenized>, deadline: Instant) -> Result<Submitted, BatchError> {
        self.submit_reduced(seqs, deadline, None)
    }

    fn submit_reduced(
        &self,
        seqs: Vec<Tokenized>,
        deadline: Instant,
        reduce: Option<Reduce>,
    ) -> Result<Submitted, BatchError> {
        if seqs.is_empty() {
            return Ok(Submitted { rx: None, deadline });
        }
        self.check_request_tokens(&seqs)?;
        let mut queue = self.shared.queue();
        self.admit(&queue, seqs.len())?;
        self.admit_tokens(&queue, tokens_of(&seqs))?;
        let estimate = self.admit_wait(&queue, deadline)?;
        let (job, rx) = self.new_job(seqs, deadline, false, estimate, reduce);
        self.enqueue(&mut queue, &job);
        crate::threads::HTTP_THREADS.admitted();
        Ok(Submitted { rx: Some(rx), deadline })
    }

    /// Estimated model time of `items` sequences of `tokens` tokens on an
    /// empty queue (None: no fit yet).
    pub fn estimate(&self, items: usize, tokens: usize) -> Option<Duration> {
        // One request on its own: its sequences arrived together, and the
        // planner may put up to the batch size in a call.
        self.shared.queued_work_time(items, tokens, self.shared.config.max_batch_size as f64)
    }

    /// For batch jobs on a plain thread (head training): their own lane past
    /// the live-request capacity, so that clients keeping the queue full cannot
    /// refuse them (one call's sequences at a time: bounded), at a lower
    /// priority: a model call takes queued live sequences first, so that
    /// single sentences keep their latency while a head trains. No deadline.
    pub fn run_blocking(&self, seqs: Vec<Tokenized>) -> Result<Batched, BatchError> {
        if seqs.is_empty() {
            return Ok(Batched::empty());
        }
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let (job, rx) = self.new_job(seqs, far, true, None, None);
        {
            let mut queue = self.shared.queue();
            if queue.closed {
                return Err(BatchError::ShuttingDown);
            }
            self.enqueue(&mut queue, &job);
        }
        rx.blocking_recv().unwrap_or(Err(BatchError::ShuttingDown))
    }

    /// The refusal any request would get now, whatever its size: the queue
    /// full, or holding more live work than a request due at `deadline` may
    /// wait behind. Asked before a request's body is read or parsed, so that a
    /// refusal under overload costs no parsing, tokenizing or pricing
    /// (`http::overload`); a request that passes is admitted or refused by its
    /// own price at [`Batcher::run`]. Counted as a refusal. A closed queue
    /// passes: the handler answers `shutting_down`.
    pub fn refusal_for_any(&self, deadline: Instant) -> Result<(), BatchError> {
        let queue = self.shared.queue();
        if queue.closed {
            return Ok(());
        }
        self.admit(&queue, 1)?;
        self.admit_tokens(&queue, 1)?;
        self.admit_wait(&queue, deadline).map(|_| ())
    }

    /// Fails the way [`Batcher::run`] would if `n` sequences were queued now;
    /// lets callers refuse before doing any work for a request.
    pub fn check_capacity(&self, n: usize) -> Result<(), BatchError> {
        self.admit(&self.shared.queue(), n)
    }

    /// Refuses a request over the per-request token budget (before it queues).
    pub fn check_request_tokens(&self, seqs: &[Tokenized]) -> Result<(), BatchError> {
        let (tokens, limit) = (tokens_of(seqs), self.shared.config.max_request_tokens);
        if tokens > limit {
            return Err(BatchError::TooManyTokens { tokens, limit });
        }
        Ok(())
    }

    /// Whether `queue` can take `tokens` more tokens; a refusal is counted.
    fn admit_tokens(&self, queue: &Queue, tokens: usize) -> Result<(), BatchError> {
        let capacity = self.shared.config.queue_capacity_tokens;
        if queue.tokens + tokens > capacity {
            self.refuse(capacity);
            return Err(BatchError::QueueFullTokens { capacity });
        }
        Ok(())
    }

    /// Whether a live request due at `deadline` can wait behind the queued live
    /// work: refused at once when that work would take longer than the
    /// admission bound ([`BatcherConfig::admission_bound`]: `max_queue_wait`
    /// less the room left to reorder) or than the request has left. Waiting longer only makes
    /// its answer late (a 504 at the deadline, or an answer its client gave up
    /// on) while the queue holds it; refused, a load balancer can send it to
    /// another replica now. The estimate is what the queued work costs at the
    /// batch sizes it will run at: the calls it needs (in calls of the size
    /// calls have had with a backlog, [`BacklogCallSize`], or by the token
    /// budget) times a call's fixed cost, plus its padded tokens times the cost
    /// per token, both fitted on the workers' calls ([`CallCost`]), shared out
    /// over the workers. A refusal is counted. Until a worker has a fit, only
    /// the other bounds hold.
    /// Returns the estimate (None: none yet).
    fn admit_wait(&self, queue: &Queue, deadline: Instant) -> Result<Option<Duration>, BatchError> {
        let s = &self.shared;
        // Queued requests run in calls of the size calls have had with a backlog.
        let call_size = s.backlog_call_size.get().unwrap_or(s.config.max_batch_size as f64);
        // The workers' fits, read once for the estimate and the room.
        let work = s.queued_work();
        let queued = match &work {
            _ if queue.live_tokens == 0 => Duration::ZERO,
            Some(work) => work.time(queue.live_items, queue.live_tokens, call_size),
            None => return Ok(None),
        };
        // The calls in progress finish first: a request arriving at the start
        // of one (all-mpnet-base-v2: 0.8 s for a full batch) waits for it too.
        let waiting = queued + self.calls_in_progress_left();
        let left = deadline.saturating_duration_since(Instant::now());
        let pool_time = s.reorder_pool_time(queue, work.as_ref(), call_size);
        let limit = s.config.admission_bound(pool_time).map_or(left, |bound| bound.min(left));
        if waiting <= limit {
            return Ok(Some(waiting));
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (waiting_ms, limit_ms) = (ms(waiting), ms(limit));
        self.warn_refusing(|refused| {
            tracing::warn!(
                waiting_ms,
                limit_ms,
                refused_total = refused,
                "inference queue too long: refusing requests with 503"
            )
        });
        Err(BatchError::QueueWait { waiting_ms, limit_ms })
    }

    /// What the model calls in progress have left by their workers' cost fits,
    /// shared out over the workers.
    fn calls_in_progress_left(&self) -> Duration {
        let s = &self.shared;
        let now = s.started.elapsed().as_millis() as u64;
        let left_ms: u64 = s.busy_until_ms.iter().map(|until| until.load(Ordering::Relaxed).saturating_sub(now)).sum();
        Duration::from_millis(left_ms / s.busy_until_ms.len().max(1) as u64)
    }

    /// Whether `queue` can take `n` more sequences; a refusal is counted.
    fn admit(&self, queue: &Queue, n: usize) -> Result<(), BatchError> {
        if queue.closed {
            return Err(BatchError::ShuttingDown);
        }
        let capacity = self.shared.config.queue_capacity;
        if queue.items.len() + n > capacity {
            return Err(self.refuse(capacity));
        }
        Ok(())
    }

    /// Counts a refusal and warns at most once per interval, with the count:
    /// under overload a line per refusal would flood the log and cost CPU.
    fn refuse(&self, capacity: usize) -> BatchError {
        self.warn_refusing(|refused| {
            tracing::warn!(capacity, refused_total = refused, "inference queue full: refusing requests with 503")
        });
        BatchError::QueueFull { capacity }
    }

    /// Counts a refusal; calls `warn` with the count at most once per interval.
    fn warn_refusing(&self, warn: impl FnOnce(u64)) {
        let s = &self.shared;
        s.metrics.refused.inc();
        crate::threads::HTTP_THREADS.refused();
        let now = s.started.elapsed().as_secs();
        let last = s.last_refusal_warning.load(Ordering::Relaxed);
        if (last == 0 || now >= last + REFUSAL_WARNING_INTERVAL_S)
            && s.last_refusal_warning.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            warn(s.metrics.refused.get());
        }
    }

    /// Stops taking new work; queued work is still computed.
    pub fn close(&self) {
        self.shared.queue().closed = true;
        self.shared.wake.notify_all();
    }

    /// Closes the queue and waits for the workers to finish what was queued.
    pub fn join(&self) {
        self.close();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
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

/// Least seconds between two "queue full" warnings.
const REFUSAL_WARNING_INTERVAL_S: u64 = 10;
