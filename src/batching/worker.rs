//! The workers: each takes the next batch off the queue (fair order, within
//! the planner's window), runs it on its encoder and hands each caller its rows.

use super::cost::calibrate;
use super::*;

/// How many batches' worth of the oldest queued sequences the planner looks at.
const PLAN_WINDOW_BATCHES: usize = 4;

/// The latest arrival that may join the oldest live sequence's batch.
///
/// Reordering delays only the sequences it passes over, all of them in the
/// pool of the oldest queued work (by arrival) that the batch is chosen from.
/// While the whole pool would be computed before the oldest is due
/// (`max_queue_wait` after it was queued, or its deadline), every sequence in
/// it still finishes in time whatever the order, so the pool is as much work
/// as that allows: longer runs of one length, fuller calls (all-mpnet-base-v2,
/// in-process: 128 sequences in flight ran 1.15x the sentences/s of 24,
/// BENCHMARKS.md). Past that (a queue held full by admission), the pool is the
/// work within the room admission leaves free ([`BatcherConfig::reorder_room`])
/// of the oldest, by arrival and by the workers' fits, with the sequence whose
/// work crosses it: newer work overtakes by at most that. By arrival time
/// alone, a burst (or open-loop arrivals at ten times the capacity) put many
/// bounds of work within it, and a sequence admitted on an empty queue's
/// estimate waited seconds past it. None when nothing live is queued, or
/// without a bound (`max_queue_wait` 0).
fn join_by(shared: &Shared, queue: &Queue, now: Instant) -> Option<Instant> {
    if shared.config.max_queue_wait.is_zero() {
        return None;
    }
    let mut arrivals: Vec<(Instant, usize)> = Vec::with_capacity(queue.live_items);
    // When the oldest is due: its bound, or an earlier deadline of any (a
    // request timeout shorter than the bound).
    let mut due: Option<Instant> = None;
    for item in queue.items.iter().filter(|item| !item.job.background) {
        arrivals.push((item.job.queued_at, item.len()));
        due = Some(due.map_or(item.job.deadline, |d| d.min(item.job.deadline)));
    }
    arrivals.sort_unstable_by_key(|&(at, _)| at);
    let due = due?.min(arrivals[0].0 + shared.config.max_queue_wait);
    let work = shared.queued_work();
    let call_size = shared.backlog_call_size.get().unwrap_or(shared.config.max_batch_size as f64);
    let floor = shared.config.reorder_room(shared.reorder_pool_time(queue, work.as_ref(), call_size));
    let price = work.as_ref().map(|work| move |items, tokens| work.time(items, tokens, call_size));
    latest_joiner(&arrivals, now, due, floor, price)
}

/// [`join_by`] over the queued live sequences' (arrival, tokens), oldest
/// first, the oldest `due` then, with `price` the model time of the first `n`
/// holding `tokens` (None: no fit yet; then by arrival time alone).
fn latest_joiner(
    arrivals: &[(Instant, usize)],
    now: Instant,
    due: Instant,
    floor: Duration,
    price: Option<impl Fn(usize, usize) -> Duration>,
) -> Option<Instant> {
    let oldest = arrivals.first()?.0;
    let allowance = floor.max(due.saturating_duration_since(now));
    let by = oldest + allowance;
    let Some(price) = price else { return Some(by) };
    let mut tokens = 0;
    for (n, &(at, len)) in arrivals.iter().enumerate().take_while(|(_, (at, _))| *at <= by) {
        tokens += len;
        if price(n + 1, tokens) > allowance {
            return Some(at);
        }
    }
    Some(by)
}

/// Sequences of one job per round of the fair order.
const FAIR_QUANTUM: usize = 4;

pub(super) fn worker_loop<E: ForwardPass>(shared: &Shared, worker: usize, mut encoder: E) {
    let m = &shared.metrics;
    let mut cost = CallCost::default();
    if shared.config.calibrate {
        calibrate(&mut encoder, &mut cost, shared.config.max_batch_size);
        *shared.call_cost[worker].lock().unwrap_or_else(|p| p.into_inner()) = cost.model();
    }
    while let Some(batch) = next_batch(shared) {
        let now = Instant::now();
        let (live, dead): (Vec<Item>, Vec<Item>) = batch.into_iter().partition(|item| item.job.is_wanted(now));
        m.skipped.inc_by(dead.len() as u64);
        for item in dead {
            // The caller is gone or its deadline passed: answer (if anyone listens) without computing.
            item.job.fail(BatchError::DeadlineExceeded);
        }
        if live.is_empty() {
            continue;
        }
        let seqs: Vec<&Tokenized> = live.iter().map(|item| &item.job.seqs[item.index]).collect();
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let tokens: usize = seqs.iter().map(|s| s.len()).sum();
        m.batches.inc();
        m.sequences.inc_by(seqs.len() as u64);
        m.tokens.inc_by(tokens as u64);
        m.padded_tokens.inc_by((longest * seqs.len()) as u64);
        m.batch_size.observe(seqs.len() as f64);
        m.batch_tokens.observe((longest * seqs.len()) as f64);
        let batch_start = Instant::now();
        for item in &live {
            m.queue_wait.observe(batch_start.saturating_duration_since(item.job.queued_at).as_secs_f64());
        }
        let started_ms = shared.started.elapsed().as_millis() as u64;
        shared.busy_since_ms[worker].store(started_ms + 1, Ordering::Relaxed);
        if let Some(fit) = cost.model() {
            let expected = fit.per_call + (longest * seqs.len()) as f64 * fit.per_token;
            shared.busy_until_ms[worker].store(started_ms + (expected * 1000.0) as u64, Ordering::Relaxed);
        }
        // A panic in the encoder fails this batch only: its callers get 500
        // `worker_panicked`, the panic is counted, and the loop goes on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoder.encode(&seqs)));
        shared.busy_since_ms[worker].store(0, Ordering::Relaxed);
        shared.busy_until_ms[worker].store(0, Ordering::Relaxed);
        let took = batch_start.elapsed();
        m.inference.observe(took.as_secs_f64());
        let result = match result {
            Ok(result) => result,
            Err(panic) => {
                m.worker_panics.inc();
                let message = crate::telemetry::panic_message(&*panic);
                tracing::error!(panic = %message, batch = live.len(), "inference worker panicked; batch dropped");
                live.iter().for_each(|item| item.job.fail(BatchError::WorkerPanicked));
                continue;
            }
        };
        match result {
            Ok(rows) if rows.len() == live.len() => {
                cost.record(longest * seqs.len(), tokens, took);
                *shared.call_cost[worker].lock().unwrap_or_else(|p| p.into_inner()) = cost.model();
                for (item, rows) in live.iter().zip(rows) {
                    item.job.complete(item.index, rows, batch_start);
                }
            }
            Ok(rows) => {
                let message = format!("the encoder returned {} results for {} sequences", rows.len(), live.len());
                tracing::error!(error = %message, "inference failed");
                live.iter().for_each(|item| item.job.fail(BatchError::Inference(message.clone())));
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
/// the sequences [`plan_batch`] picks, sorted by length.
pub(super) fn next_batch(shared: &Shared) -> Option<Vec<Item>> {
    let config = &shared.config;
    let mut queue = shared.queue();
    while queue.items.is_empty() {
        if queue.closed {
            return None;
        }
        queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
    }
    if !config.max_wait.is_zero() {
        // Give concurrent requests a moment to join a batch that is not full yet.
        let until = Instant::now() + config.max_wait;
        while queue.items.len() < config.max_batch_size && !queue.closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = shared.wake.wait_timeout(queue, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
    // Fair order: each job's sequences in rounds of FAIR_QUANTUM, round by round,
    // jobs by arrival within a round. A single sentence that arrives while a
    // large request is being computed goes into the next call instead of
    // waiting for the whole request (measured in RELIABILITY.md). Batch work
    // (head training) comes after every live sequence.
    let key = |item: &Item| (item.job.background, item.index / FAIR_QUANTUM, item.job.number, item.index);
    let window = queue.items.len().min(config.max_batch_size.saturating_mul(PLAN_WINDOW_BATCHES));
    // Grouping by length lets newer sequences overtake older ones of other
    // lengths: only as far as keeps the pool within the bound (`join_by`).
    let join_by = join_by(shared, &queue, Instant::now());
    let may_join = |item: &Item| item.job.background || join_by.is_none_or(|by| item.job.queued_at <= by);
    let mut order: Vec<usize> = (0..queue.items.len()).filter(|&i| may_join(&queue.items[i])).collect();
    if order.len() > window {
        order.select_nth_unstable_by_key(window - 1, |&i| key(&queue.items[i]));
        order.truncate(window);
    }
    order.sort_unstable_by_key(|&i| key(&queue.items[i]));
    let lengths: Vec<usize> = order.iter().map(|&i| queue.items[i].len()).collect();
    let mut picked: Vec<usize> = plan_batch(&lengths, config).into_iter().map(|p| order[p]).collect();
    // Remove from the back so that earlier positions stay valid.
    picked.sort_unstable_by(|a, b| b.cmp(a));
    let mut batch: Vec<Item> =
        picked.into_iter().map(|pos| queue.items.remove(pos).expect("planned position")).collect();
    queue.tokens -= batch.iter().map(Item::len).sum::<usize>();
    queue.live_tokens -= batch.iter().filter(|item| !item.job.background).map(Item::len).sum::<usize>();
    let live = batch.iter().filter(|item| !item.job.background).count();
    queue.live_items -= live;
    if live > 0 && queue.live_items > 0 {
        shared.backlog_call_size.record(live);
    }
    shared.metrics.queue_depth.set(queue.items.len() as i64);
    drop(queue);
    batch.sort_by_key(Item::len);
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(5);
    const FLOOR: Duration = Duration::from_millis(500);

    /// 10 ms a token.
    fn price() -> Option<impl Fn(usize, usize) -> Duration> {
        Some(|_items, tokens: usize| Duration::from_millis(10 * tokens as u64))
    }

    /// Sequences of 10 tokens (100 ms) arriving every `gap_ms` from `start`.
    fn arrivals(start: Instant, n: usize, gap_ms: u64) -> Vec<(Instant, usize)> {
        (0..n).map(|i| (start + Duration::from_millis(gap_ms * i as u64), 10)).collect()
    }

    #[test]
    fn with_room_before_the_oldest_is_due_the_whole_pool_may_be_reordered() {
        let start = Instant::now();
        // 30 x 100 ms queued, the oldest waited 1 s: 3 s of work fits in the 4 s it has left.
        let queued = arrivals(start, 30, 10);
        let by = latest_joiner(&queued, start + Duration::from_secs(1), start + BOUND, FLOOR, price());
        assert!(by.unwrap() >= queued[29].0, "{:?}", by.map(|b| b - start));
    }

    #[test]
    fn without_room_newer_work_joins_within_the_floor_only() {
        let start = Instant::now();
        let queued = arrivals(start, 30, 10);
        // The oldest waited 4.8 s: 200 ms left, under the floor of 500 ms of work:
        // the sixth sequence's work crosses it, and is the latest that may join.
        let by = latest_joiner(&queued, start + Duration::from_millis(4800), start + BOUND, FLOOR, price());
        assert_eq!(by, Some(queued[5].0));
        // 1.2 s left: twelve sequences.
        let by = latest_joiner(&queued, start + Duration::from_millis(3800), start + BOUND, FLOOR, price());
        assert_eq!(by, Some(queued[12].0));
    }

    #[test]
    fn newer_arrivals_join_within_the_allowance_by_time_too() {
        let start = Instant::now();
        // One sequence a second: the oldest waited 4.8 s, so only what arrived
        // within the floor after it may join, whatever its work.
        let queued = arrivals(start, 5, 1000);
        let by = latest_joiner(&queued, start + Duration::from_millis(4800), start + BOUND, FLOOR, price());
        assert_eq!(by, Some(start + FLOOR));
        // Without a fit, by time alone.
        let none: Option<fn(usize, usize) -> Duration> = None;
        assert_eq!(latest_joiner(&queued, start, start + BOUND, FLOOR, none), Some(start + BOUND));
        assert_eq!(latest_joiner(&[], start, start + BOUND, FLOOR, price()), None);
    }
}
