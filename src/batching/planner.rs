//! How queued sequences become batches: within a token budget and a batch
//! size, similar lengths together.

use super::*;

pub(super) fn tokens_of(seqs: &[Tokenized]) -> usize {
    seqs.iter().map(Tokenized::len).sum()
}

/// Picks the next model call from queued sequence lengths (oldest first) and
/// returns their queue positions. It always includes the oldest sequence, so
/// nothing starves. With `call_overhead_tokens` 0 it takes the oldest
/// sequences in order while they fit. Otherwise it sorts the lengths and splits
/// them into consecutive runs, each within the batch size and token budget,
/// minimising the estimated cost: for each call `call_overhead_tokens` plus its
/// padded tokens (size x longest), which is what the model time follows on the
/// CPU; the run holding the oldest sequence is the batch.
pub fn plan_batch(lengths: &[usize], config: &BatcherConfig) -> Vec<usize> {
    let n = lengths.len();
    let fits = |size: usize, longest: usize| {
        size == 1
            || (size <= config.max_batch_size
                && size * longest <= config.max_batch_tokens
                && size * longest * longest <= config.max_batch_attention_cells)
    };
    if config.call_overhead_tokens == 0 {
        let mut longest = 0;
        return (0..n)
            .take_while(|&i| {
                longest = longest.max(lengths[i]);
                fits(i + 1, longest)
            })
            .collect();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    // best[i]: least cost of computing order[..i]; cut[i]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0; n + 1];
    best[0] = 0;
    for end in 1..=n {
        let longest = lengths[order[end - 1]];
        for start in (0..end).rev() {
            if !fits(end - start, longest) {
                break;
            }
            let cost = best[start] + config.call_overhead_tokens + (end - start) * longest;
            if cost < best[end] {
                best[end] = cost;
                cut[end] = start;
            }
        }
    }
    let oldest_rank = order.iter().position(|&i| i == 0).expect("the oldest is queued");
    let mut end = n;
    loop {
        let start = cut[end];
        if start <= oldest_rank {
            return order[start..end].to_vec();
        }
        end = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(call_overhead_tokens: usize) -> BatcherConfig {
        BatcherConfig {
            max_batch_size: 4,
            max_batch_tokens: 400,
            max_batch_attention_cells: usize::MAX,
            max_wait: Duration::ZERO,
            queue_capacity: 100,
            queue_capacity_tokens: usize::MAX,
            max_request_tokens: usize::MAX,
            call_overhead_tokens,
            max_queue_wait: Duration::ZERO,
            calibrate: false,
        }
    }

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    #[test]
    fn without_grouping_takes_the_oldest_in_order_while_they_fit() {
        assert_eq!(plan_batch(&[10, 10, 10, 10, 10], &config(0)), vec![0, 1, 2, 3]);
        // 3 x 150 tokens would pass the budget of 400.
        assert_eq!(plan_batch(&[10, 150, 10, 10], &config(0)), vec![0, 1]);
        // A sequence alone always fits.
        assert_eq!(plan_batch(&[500, 10], &config(0)), vec![0]);
    }

    #[test]
    fn groups_by_length_around_the_oldest() {
        // Padding the short ones to 100 would cost far more than a second call.
        let lengths = [10, 100, 11, 98, 12, 99];
        assert_eq!(sorted(plan_batch(&lengths, &config(32))), vec![0, 2, 4]);
        let lengths = [100, 10, 11, 98, 12, 99];
        assert_eq!(sorted(plan_batch(&lengths, &config(32))), vec![0, 3, 5]);
    }

    #[test]
    fn a_large_call_cost_keeps_batches_whole() {
        let lengths = [10, 100, 11, 98];
        assert_eq!(sorted(plan_batch(&lengths, &config(10_000))), vec![0, 1, 2, 3]);
    }

    #[test]
    fn respects_batch_size_and_token_budget() {
        let lengths = [10; 9];
        let batch = plan_batch(&lengths, &config(32));
        assert!(batch.contains(&0) && batch.len() <= 4, "{batch:?}");
        let lengths = [150, 150, 150, 150];
        let batch = plan_batch(&lengths, &config(1_000));
        assert!(batch.contains(&0) && batch.len() == 2, "{batch:?}");
        assert_eq!(plan_batch(&[900, 10], &config(32)), vec![0]);
    }

    #[test]
    fn always_serves_the_oldest_and_never_loses_a_sequence() {
        // Pseudo-random lengths; drain the queue plan by plan.
        let mut seed = 7u64;
        let mut queue: Vec<(usize, usize)> = (0..200)
            .map(|id| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (id, 3 + (seed >> 33) as usize % 120)
            })
            .collect();
        let mut served = Vec::new();
        while !queue.is_empty() {
            let lengths: Vec<usize> = queue.iter().map(|&(_, len)| len).collect();
            let mut picked = plan_batch(&lengths, &config(32));
            assert!(picked.contains(&0));
            picked.sort_unstable_by(|a, b| b.cmp(a));
            for pos in picked {
                served.push(queue.remove(pos).0);
            }
        }
        assert_eq!(sorted(served), (0..200).collect::<Vec<_>>());
    }
}
