//! Which training prompts a head remembers: a capped, seeded sample of them.
//!
//! The head's support index and local quality prior keep one key per remembered prompt
//! (its embedding, [D]) and one row per key of per-model tables ([M] each), and every request
//! scans all the keys (`MatMul -> TopK`). Remembering every training prompt makes the graph and
//! the Route latency grow with the logs: 2.3k prompts are 6.7 MB; a million would be about
//! 2.9 GB and a full scan of it per request. So the head remembers at most a cap of them.
//!
//! [`memory_rows`] is the plain cap: a seeded uniform sample without replacement. A uniform
//! sample leaves every model's observation rate and the neighbourhood means unbiased, which is
//! what the support rule (`support[m] = observed among the k nearest / (k * rate[m])`) and the
//! local prior (mean quality among the k nearest) assume.
//!
//! [`memory_rows_stratified`] adds a floor per model: before the uniform fill, every model keeps
//! `min(its observed prompts, floor)` of them (a seeded sample, rarest model first, counting rows
//! already kept for a rarer one). Production logs hold one model per prompt, so a model routed to
//! rarely would otherwise fall out of a small sample of a large log, and with it its local prior
//! and its support (a model with rate 0 is never found out of its domain). The floor defaults to
//! the support index's neighbours ([`DEFAULT_MODEL_FLOOR`]): enough rows to fill one whole
//! neighbourhood. A floored model's rate in the memory is higher than in the logs, but the
//! support rule divides by the memory's own rate, so its support stays about 1 where it was
//! observed.
//!
//! [`DEFAULT_MEMORY_CAP`] comes from `cargo bench --bench memory` (2 shared vCPUs, 112 models):
//! the graph grows by 2.9 KB per key (6.7 MB at 2.3k, 23.6 MB at 8k, 288 MB at 100k), and the
//! head's share of a Route, run right after the encoder as Route runs it, grows from 0.3-0.5 ms
//! (2.3k keys) to 0.7-1.4 ms (8k) and 1.7 ms (10k), then faster once the keys no longer stay in
//! cache next to the encoder: 2-6 ms at 16k, 9-10 ms at 32k, 30 ms at 100k (three runs). Capping the shipped 2.3k-prompt head's
//! memory after training (a uniform sample, 5 seeds, scored with `pointsman eval`) left its gap
//! closed within seed noise down to 512 keys and lost about 10 points at 256.

use ndarray::ArrayView2;

use super::rng::SplitMix64;

/// Training prompts a head remembers by default, over all its model families (keys of its support
/// index and kNN prior; `pointsman train --memory-cap`).
///
/// At 8192 keys and 112 models the graph is 23.6 MB and the head takes 0.7-1.4 ms of a Route
/// after the encoder (13-17% of a short prompt's encoder + head), 1.7 ms at 10k; 16k is at the
/// knee where the keys fall out of cache (2-6 ms). 12,288 sits below the knee and keeps the
/// shipped head's ~10k training prompts (three shared files) whole.
pub const DEFAULT_MEMORY_CAP: usize = 12_288;

/// Rows every model keeps in a stratified memory by default: one full neighbourhood of the
/// support index ([`super::DEFAULT_NEIGHBOURS`]).
pub const DEFAULT_MODEL_FLOOR: usize = super::support::DEFAULT_NEIGHBOURS;

/// The rows (of `n` training prompts) a head capped at `cap` remembers: all of them when
/// `n <= cap`, else a uniform sample of `cap` without replacement drawn from `seed`. Sorted, so
/// the memory keeps the training order.
pub fn memory_rows(n: usize, cap: usize, seed: u64) -> Vec<usize> {
    if n <= cap {
        return (0..n).collect();
    }
    let mut rows = sample(&mut (0..n).collect::<Vec<_>>(), cap, &mut SplitMix64::new(seed));
    rows.sort_unstable();
    rows
}

/// Like [`memory_rows`] over the rows of `mask` ([n, M], observed where > 0), but first every
/// model keeps `min(observed rows, floor)` of its rows, then the rest of `cap` is filled
/// uniformly from the rows not yet kept. Sorted.
///
/// The floors win over the cap: the result has `max(cap, rows the floors need)` rows when
/// `n > cap` (the floors need at most `M * floor`, fewer when a row serves several models),
/// and all `n` rows otherwise.
pub fn memory_rows_stratified(mask: ArrayView2<f32>, cap: usize, floor: usize, seed: u64) -> Vec<usize> {
    let n = mask.nrows();
    if n <= cap {
        return (0..n).collect();
    }
    let mut rng = SplitMix64::new(seed);
    let mut kept = vec![false; n];
    let observed: Vec<Vec<usize>> =
        mask.columns().into_iter().map(|c| c.iter().enumerate().filter(|(_, &v)| v > 0.0).map(|(i, _)| i).collect()).collect();
    // Rarest model first: its rows are the scarcest, and rows kept for it count for the others.
    let mut order: Vec<usize> = (0..observed.len()).collect();
    order.sort_by_key(|&j| (observed[j].len(), j));
    for j in order {
        let have = observed[j].iter().filter(|&&i| kept[i]).count();
        let need = floor.min(observed[j].len()).saturating_sub(have);
        let mut free: Vec<usize> = observed[j].iter().copied().filter(|&i| !kept[i]).collect();
        for i in sample(&mut free, need, &mut rng) {
            kept[i] = true;
        }
    }
    let floored = kept.iter().filter(|&&k| k).count();
    let mut rest: Vec<usize> = (0..n).filter(|&i| !kept[i]).collect();
    for i in sample(&mut rest, cap.saturating_sub(floored), &mut rng) {
        kept[i] = true;
    }
    (0..n).filter(|&i| kept[i]).collect()
}

/// The first `k` items of a partial Fisher-Yates shuffle of `items` (all of them if fewer).
fn sample(items: &mut [usize], k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let k = k.min(items.len());
    for i in 0..k {
        let j = i + rng.next_below(items.len() - i);
        items.swap(i, j);
    }
    items[..k].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn strictly_increasing(rows: &[usize]) -> bool {
        rows.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn a_capped_memory_is_a_sorted_seeded_sample_of_cap_rows() {
        assert_eq!(memory_rows(5, 10, 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(memory_rows(10, 10, 1), (0..10).collect::<Vec<_>>());
        assert!(memory_rows(0, 10, 1).is_empty());
        let a = memory_rows(100_000, 2_000, 7);
        assert_eq!(a.len(), 2_000);
        assert!(strictly_increasing(&a) && *a.last().unwrap() < 100_000);
        assert_eq!(a, memory_rows(100_000, 2_000, 7), "same seed, same memory");
        let b = memory_rows(100_000, 2_000, 8);
        assert_ne!(a, b, "another seed, another memory");
        assert!(memory_rows(100, 0, 1).is_empty());
    }

    #[test]
    fn the_sample_is_uniform_over_the_rows() {
        // Each tenth of 10k rows should get about a tenth of a 1k sample, over 50 seeds.
        let mut per_tenth = [0usize; 10];
        for seed in 0..50 {
            for i in memory_rows(10_000, 1_000, seed) {
                per_tenth[i / 1_000] += 1;
            }
        }
        // Expected 5000 each; the binomial sd is about 67.
        assert!(per_tenth.iter().all(|&c| (4_700..=5_300).contains(&c)), "{per_tenth:?}");
    }

    /// Production-like logs: one model per prompt, model 0 on 90% of them, a rare model 2 on 0.2%.
    fn one_model_per_prompt(n: usize) -> Array2<f32> {
        Array2::from_shape_fn((n, 3), |(i, j)| {
            let model = if i % 500 == 3 {
                2
            } else if i % 10 == 0 {
                1
            } else {
                0
            };
            f32::from(u8::from(model == j))
        })
    }

    #[test]
    fn a_stratified_memory_keeps_every_model_up_to_its_floor() {
        let mask = one_model_per_prompt(100_000);
        let count = |rows: &[usize], j: usize| rows.iter().filter(|&&i| mask[[i, j]] > 0.0).count();
        let plain = memory_rows(100_000, 500, 3);
        assert!(count(&plain, 2) < 8, "a uniform 0.5% sample keeps about 1 of model 2's 200 prompts");
        let rows = memory_rows_stratified(mask.view(), 500, 32, 3);
        assert_eq!(rows.len(), 500);
        assert!(strictly_increasing(&rows));
        assert!(count(&rows, 2) >= 32, "model 2 keeps its floor: {}", count(&rows, 2));
        assert!(count(&rows, 1) >= 32 && count(&rows, 0) >= 32);
        assert_eq!(rows, memory_rows_stratified(mask.view(), 500, 32, 3), "same seed, same memory");
        assert_ne!(rows, memory_rows_stratified(mask.view(), 500, 32, 4));
        // A model with fewer rows than the floor keeps all of them.
        let mut sparse = mask.clone();
        sparse.column_mut(2).fill(0.0);
        for i in [10, 20_000, 99_999] {
            sparse[[i, 2]] = 1.0;
        }
        let rows = memory_rows_stratified(sparse.view(), 500, 32, 3);
        assert!([10, 20_000, 99_999].iter().all(|i| rows.binary_search(i).is_ok()));
        // Under the cap nothing is dropped; floors that need more than the cap win over it.
        assert_eq!(memory_rows_stratified(mask.view(), 200_000, 32, 3), (0..100_000).collect::<Vec<_>>());
        let rows = memory_rows_stratified(mask.view(), 10, 32, 3);
        assert_eq!(rows.len(), 96, "three models, 32 rows each, no row shared");
        assert!((0..3).all(|j| count(&rows, j) == 32));
    }
}
