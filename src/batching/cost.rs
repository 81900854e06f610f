//! What a model call costs: a per-call and a per-token cost fitted on the
//! workers' own calls (and two calibration calls at start), which queue-time
//! admission prices waiting work with.

use super::*;

/// A worker's model time per call, fitted as `per_call + per_token x padded
/// tokens` by least squares over its calls, recent ones weighing most. Fitted
/// on one shape alone (a quiet spell of single sentences), the two parts
/// cannot be told apart, and their sum per token overstated what full batches
/// cost per token about twice (a burst after a quiet spell was half refused):
/// so calls of a new shape carry their full weight, and the calibration calls
/// at start (two shapes) stay in the fit with a small fixed weight.
#[derive(Debug, Default)]
pub(super) struct CallCost {
    calls: u64,
    /// Decayed sums over calls: weight, padded tokens (x), seconds (y), x², xy,
    /// and real tokens (for the padding ratio).
    sums: [f64; 6],
    /// The calibration calls' sums, never decayed.
    prior: [f64; 6],
}

/// What [`CallCost`] has learned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CostModel {
    pub(super) per_call: f64,
    pub(super) per_token: f64,
    /// Padded tokens per real token in a call.
    pub(super) padding: f64,
}

impl CallCost {
    const DECAY: f64 = 0.95;
    /// Weight of the calibration calls against the decayed sums (at most 20).
    const PRIOR_WEIGHT: f64 = 2.0;

    fn point(padded: usize, real: usize, took: Duration) -> [f64; 6] {
        let (x, y) = (padded as f64, took.as_secs_f64());
        [1.0, x, y, x * x, x * y, real as f64]
    }

    /// Counts one call of `padded` tokens (`real` without padding) that took `took`.
    pub(super) fn record(&mut self, padded: usize, real: usize, took: Duration) {
        self.calls += 1;
        if self.calls == 1 && self.prior[0] == 0.0 {
            return; // a worker's first call pays one-time costs
        }
        let p = Self::point(padded, real, took);
        for (s, v) in self.sums.iter_mut().zip(p) {
            *s = *s * Self::DECAY + v;
        }
    }

    /// Records a calibration call: kept in every later fit.
    pub(super) fn calibrated(&mut self, padded: usize, took: Duration) {
        let p = Self::point(padded, padded, took);
        for (s, v) in self.prior.iter_mut().zip(p) {
            *s += Self::PRIOR_WEIGHT * v;
        }
    }

    pub(super) fn model(&self) -> Option<CostModel> {
        let [w, x, y, xx, xy, real]: [f64; 6] = std::array::from_fn(|i| self.sums[i] + self.prior[i]);
        if w <= 0.0 || x <= 0.0 || y <= 0.0 {
            return None;
        }
        let padding = if real > 0.0 { (x / real).max(1.0) } else { 1.0 };
        let variance = xx / w - (x / w).powi(2);
        let (mean_x, mean_y) = (x / w, y / w);
        // One shape only (or nearly): all of it per token, as a rate.
        if variance <= (0.05 * mean_x).powi(2) {
            return Some(CostModel { per_call: 0.0, per_token: y / x, padding });
        }
        let slope = (xy / w - mean_x * mean_y) / variance;
        let intercept = mean_y - slope * mean_x;
        let model = match (intercept >= 0.0, slope >= 0.0) {
            (true, true) => CostModel { per_call: intercept, per_token: slope, padding },
            (false, _) => CostModel { per_call: 0.0, per_token: y / x, padding },
            (true, false) => CostModel { per_call: mean_y, per_token: 0.0, padding },
        };
        Some(model)
    }
}

/// What queued live work costs the workers, from their fits (averaged: the
/// queue is shared out over them).
#[derive(Debug, Clone, Copy)]
pub(super) struct QueuedWork {
    per_call: f64,
    per_token: f64,
    padding: f64,
    workers: f64,
    max_batch_size: usize,
    max_batch_tokens: usize,
}

impl QueuedWork {
    /// None without a fit.
    pub(super) fn of(fits: &[CostModel], config: &BatcherConfig) -> Option<QueuedWork> {
        if fits.is_empty() {
            return None;
        }
        let workers = fits.len() as f64;
        let mean = |f: fn(&CostModel) -> f64| fits.iter().map(f).sum::<f64>() / workers;
        Some(QueuedWork {
            per_call: mean(|c| c.per_call),
            per_token: mean(|c| c.per_token),
            padding: mean(|c| c.padding),
            workers,
            max_batch_size: config.max_batch_size.max(1),
            max_batch_tokens: config.max_batch_tokens,
        })
    }

    /// Model time of `items` sequences of `tokens` real tokens, in calls of
    /// `call_size` sequences or the token budget.
    pub(super) fn time(&self, items: usize, tokens: usize, call_size: f64) -> Duration {
        let padded = tokens as f64 * self.padding;
        let calls = (items as f64 / call_size.clamp(1.0, self.max_batch_size as f64))
            .ceil()
            .max((padded / self.max_batch_tokens as f64).ceil())
            .max(1.0);
        // A wait too long for a Duration is a wait past any bound.
        Duration::try_from_secs_f64((calls * self.per_call + padded * self.per_token) / self.workers)
            .unwrap_or(Duration::MAX)
    }
}

/// How many live sequences a model call takes while more are queued behind
/// it: what the queue's work is divided into calls by. The planner groups by
/// length among the sequences that arrived within the overtaking bound of the
/// oldest, so under load a call takes far fewer than `max_batch_size`
/// (all-mpnet-base-v2 at 256 clients: 7 of 64), and pricing the queue at 64
/// per call left out most of its calls' fixed cost. Learned only from calls
/// made with a backlog: a quiet spell's single sentences say nothing about it.
#[derive(Debug, Default)]
pub(super) struct BacklogCallSize(AtomicU64);

impl BacklogCallSize {
    const WEIGHT: f64 = 0.1;

    /// The moving average (None until a call was made with a backlog).
    pub(super) fn get(&self) -> Option<f64> {
        let bits = self.0.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// Counts a call of `sequences` live sequences that left some queued.
    pub(super) fn record(&self, sequences: usize) {
        let size = sequences.max(1) as f64;
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let average =
                if bits == 0 { size } else { f64::from_bits(bits) + Self::WEIGHT * (size - f64::from_bits(bits)) };
            Some(average.to_bits())
        });
    }
}

/// Two calls of different shapes through a new worker's encoder (after one
/// that pays first-call costs): a small fixed weight in its cost fit. No call
/// holds more than `max_batch_size` sequences, as in serving.
pub(super) fn calibrate<E: ForwardPass>(encoder: &mut E, cost: &mut CallCost, max_batch_size: usize) {
    // Any id the vocabulary has (a tiny test vocabulary's too: 1000 was past
    // one and the call failed); a call's time does not depend on which.
    let seq = |len: usize| Tokenized {
        ids: vec![5; len],
        type_ids: vec![0; len],
        tokens: Vec::new(),
        offsets: Vec::new(),
        special: vec![false; len],
        layers: crate::layers::LayerMask::LAST,
    };
    let shapes = [(1usize, 16usize), (1, 16), (16.min(max_batch_size), 64)];
    for (i, (size, len)) in shapes.into_iter().enumerate() {
        let batch: Vec<Tokenized> = (0..size).map(|_| seq(len)).collect();
        let refs: Vec<&Tokenized> = batch.iter().collect();
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoder.encode(&refs)));
        let problem = match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(panic) => Some(crate::telemetry::panic_message(&*panic)),
        };
        if let Some(error) = problem {
            tracing::warn!(%error, "calibration call failed; the queue-time estimate learns from traffic alone");
            return;
        }
        if i > 0 {
            cost.calibrated(size * len, started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_call_size_is_the_moving_average_of_calls_made_with_a_backlog() {
        let size = BacklogCallSize::default();
        assert_eq!(size.get(), None);
        size.record(7);
        assert_eq!(size.get(), Some(7.0));
        for _ in 0..100 {
            size.record(3);
        }
        assert!((size.get().unwrap() - 3.0).abs() < 1e-3);
    }

    #[test]
    fn call_cost_separates_the_fixed_cost_from_the_cost_per_token() {
        // Calls of 5 ms + 0.1 ms per padded token.
        let took = |padded: usize| Duration::from_secs_f64(0.005 + 0.0001 * padded as f64);
        let mut cost = CallCost::default();
        cost.record(10, 10, Duration::from_secs(1));
        assert_eq!(cost.model(), None, "the first call pays one-time costs");
        // One shape alone: all of it per token (a rate), as before.
        for _ in 0..20 {
            cost.record(10, 10, took(10));
        }
        let one = cost.model().unwrap();
        assert!(one.per_call == 0.0 && (one.per_token - 0.0006).abs() < 1e-9, "{one:?}");
        // With calibration calls of two shapes, single sentences no longer
        // overstate what a full batch costs per token.
        let mut calibrated = CallCost::default();
        calibrated.calibrated(16, took(16));
        calibrated.calibrated(1024, took(1024));
        for _ in 0..20 {
            calibrated.record(10, 10, took(10));
        }
        let fit = calibrated.model().unwrap();
        assert!((fit.per_call - 0.005).abs() < 1e-6 && (fit.per_token - 0.0001).abs() < 1e-8, "{fit:?}");
        // 40 requests of 8 sentences of 12 tokens: 5 calls of 64 sequences.
        let estimate = 5.0 * fit.per_call + 40.0 * 8.0 * 12.0 * fit.per_token;
        assert!((estimate - (5.0 * 0.005 + 3840.0 * 0.0001)).abs() < 1e-6);
        // Padding is learned per call.
        calibrated.record(200, 100, took(200));
        assert!(calibrated.model().unwrap().padding > 1.0);
    }

    /// An encoder that refuses ids past the smallest test vocabulary (174).
    struct SmallVocabulary(usize);

    impl ForwardPass for SmallVocabulary {
        fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<crate::pooling::Rows>> {
            self.0 += 1;
            anyhow::ensure!(batch.iter().all(|t| t.ids.iter().all(|&id| id < 174)), "id past the vocabulary");
            Ok(batch
                .iter()
                .map(|t| crate::pooling::Rows { rows: t.len(), cols: 1, data: vec![0.0; t.len()] })
                .collect())
        }
    }

    #[test]
    fn calibration_runs_on_any_vocabulary() {
        let (mut encoder, mut cost) = (SmallVocabulary(0), CallCost::default());
        calibrate(&mut encoder, &mut cost, 32);
        assert_eq!(encoder.0, 3, "every calibration call made");
        assert!(cost.prior[0] > 0.0, "the calibration calls are in the fit");
    }
}
