//! What a batcher is told: its limits, from the settings.

use std::time::Duration;

use crate::config::{BatchingSettings, LimitSettings};

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    /// Most batch size x longest² per call (attention memory grows with the square).
    pub max_batch_attention_cells: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
    pub queue_capacity_tokens: usize,
    /// Most tokens one request may queue (413 beyond).
    pub max_request_tokens: usize,
    /// Estimated cost of one more model call, in tokens; 0 turns length grouping off.
    pub call_overhead_tokens: usize,
    /// Most queue time a live request is to wait (zero: only its own deadline
    /// bounds it): admission takes work up to [`BatcherConfig::admission_bound`],
    /// the rest is the batcher's [`BatcherConfig::reorder_room`].
    pub max_queue_wait: Duration,
    /// Time two model calls of different shapes when a worker starts, so that
    /// the queue-time estimate knows a call's fixed cost apart from its cost
    /// per token before traffic teaches it (real models; fakes in tests skip it).
    pub calibrate: bool,
}

impl BatcherConfig {
    /// Sequences the batcher's reordering pool is to hold: two full calls'
    /// worth. On all-mpnet-base-v2 (in-process, the service's planner) 24 in
    /// flight made calls of 6.7 sequences at padding 1.13, 128 calls of 17.6
    /// at 1.05, 1.15x the sentences/s (BENCHMARKS.md).
    pub fn reorder_pool(&self) -> usize {
        2 * self.max_batch_size
    }

    /// The part of `max_queue_wait` admission leaves free: by this much newer
    /// sequences may overtake the oldest into fuller calls of like lengths
    /// (`worker::join_by`), and the oldest is still computed within the bound.
    /// It is the model time of a [`BatcherConfig::reorder_pool`] of sequences
    /// like those queued (`pool_time`; None: not known yet), at least a tenth
    /// of the bound and at most a quarter; zero without a bound. Admitting to
    /// the whole bound, a queue held there by overload left room for a tenth:
    /// on all-mpnet-base-v2 calls of 7 sequences at padding 1.13 against 12-13
    /// at 1.08 at capacity, 15% more model time a sequence, answers in
    /// 5.5-6.1 s at p99 behind a 5 s bound. A quarter for every model had
    /// MiniLM refuse 50-200 a second of 1,024 closed-loop clients (3.2 s of
    /// work) and answer up to 18% less; its two calls take under a tenth
    /// (issue 40; BENCHMARKS.md "Overload: room to reorder").
    pub fn reorder_room(&self, pool_time: Option<Duration>) -> Duration {
        let (least, most) = (self.max_queue_wait / 10, self.max_queue_wait / 4);
        pool_time.unwrap_or(least).clamp(least, most)
    }

    /// Most estimated queue time a live request is admitted behind:
    /// `max_queue_wait` less the [`BatcherConfig::reorder_room`] (None: no
    /// bound; the request's deadline alone).
    pub fn admission_bound(&self, pool_time: Option<Duration>) -> Option<Duration> {
        (!self.max_queue_wait.is_zero()).then(|| self.max_queue_wait - self.reorder_room(pool_time))
    }

    pub fn new(batching: &BatchingSettings, limits: &LimitSettings) -> Self {
        BatcherConfig {
            max_batch_size: batching.max_batch_size,
            max_batch_tokens: batching.max_batch_tokens,
            max_batch_attention_cells: batching.max_batch_attention_cells,
            max_wait: Duration::from_millis(batching.max_wait_ms),
            queue_capacity: batching.queue_capacity,
            queue_capacity_tokens: batching.queue_capacity_tokens,
            max_request_tokens: limits.max_request_tokens,
            call_overhead_tokens: batching.call_overhead_tokens,
            max_queue_wait: Duration::from_millis(batching.max_queue_wait_ms),
            calibrate: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped settings (`max_batch_size` 64) with a bound of `ms`.
    fn with_bound(ms: u64) -> BatcherConfig {
        let mut settings = crate::config::Settings::defaults();
        settings.batching.max_queue_wait_ms = ms;
        BatcherConfig::new(&settings.batching, &settings.limits)
    }

    #[test]
    fn admission_leaves_the_time_of_two_calls_free_within_a_tenth_to_a_quarter_of_the_bound() {
        let config = with_bound(5000);
        let ms = Duration::from_millis;
        assert_eq!(config.reorder_pool(), 128, "two calls of max_batch_size 64");
        // A slow model: 128 sequences take 2.7 s, more than a quarter.
        assert_eq!(config.reorder_room(Some(ms(2700))), ms(1250));
        assert_eq!(config.admission_bound(Some(ms(2700))), Some(ms(3750)));
        // A fast one: 0.4 s, less than a tenth; and before any fit.
        assert_eq!(config.admission_bound(Some(ms(400))), Some(ms(4500)));
        assert_eq!(config.admission_bound(None), Some(ms(4500)));
        // Between the two, the pool's time.
        assert_eq!(config.admission_bound(Some(ms(800))), Some(ms(4200)));
        // Without a bound only the deadline admits, and nothing is reserved.
        let unbounded = with_bound(0);
        assert_eq!(unbounded.admission_bound(Some(ms(800))), None);
        assert_eq!(unbounded.reorder_room(Some(ms(800))), Duration::ZERO);
    }
}
