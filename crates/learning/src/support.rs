//! Domain of competence: how much training evidence a head has for each model near a prompt.
//!
//! A head trained on logs where some models were only ever tried on some kinds of prompt (the
//! shared data: math models on math, chat models on chat) extrapolates freely elsewhere, and an
//! MLP's extrapolation is not evidence. `Support` measures, per model, how often that model was
//! observed among the `k` training prompts nearest the query (cosine), relative to how often it
//! was observed overall:
//!
//! `support[m](x) = mean over the k nearest training prompts of observed[k, m] / rate[m]`,
//! `rate[m]` = m's share of the training prompts,
//!
//! so about 1 means "observed here as often as anywhere", 0 means "never observed near here".
//! The serving side (`Head::domain_chance`) turns it back into a count of neighbours and asks
//! how likely so few would be by chance if the model had been tried here as often as anywhere
//! (a binomial tail at its overall rate); below `routing.out_of_domain_p` (0.01) the model is
//! left out of that request. The test is what makes the rule safe on production logs, where
//! each prompt was answered by one model: a model routed to 5% of the time is expected on 1.6
//! of 32 neighbours, sees none 19% of the time, and is never excluded for it, while a model
//! tried on 78% of all prompts but on 3 of these 32 is.
//!
//! A head trained on several logs (families) holds each one's prompts in its own block of keys.
//! Then a model's support is counted among the `k` keys of its own block nearest the prompt, at
//! its rate over that block, and a second output, `family_support`, is the prompt's mean
//! similarity to those `k` keys; the manifest keeps, per block, the quantiles of the same figure
//! for each of the block's own prompts (leave one out), and a prompt farther from a family than
//! all but `out_of_domain_p` of its own prompts leaves that family out. Counting a model's
//! neighbours in the whole memory instead breaks both ways: at its rate over all keys (18% for a
//! zeroeval model among the three shared files) a chit-chat prompt with a few zeroeval neighbours
//! passes; at its rate over its block (about 1), any prompt with another family's prompts among
//! its 32 nearest loses the family (the shipped head's zeroeval eval fell to −37%). A test of the
//! family's count among the whole memory's neighbours against its share of keys lets a generic
//! chat prompt keep the zeroeval family (5 of 32 at an 18% share is expected).
//!
//! On the shared data (k = 32, p < 0.01): a chit-chat prompt leaves out 68 of the 94 catalog
//! models (the zeroeval and mmlu_pro families), a competition-math prompt 26 (the mmlu_pro family
//! and the math models evaluated only on other subsets). Earlier forms measured worse: a softmax
//! kernel (temperature 0.02) with a relative threshold separated the two families but excluded
//! partially observed models near prompts they happened not to be tried on; the top-k mean
//! with a relative threshold let the chat family answer competition math.
//!
//! It is exported as a third ONNX output next to quality and tokens (and `family_support` as a
//! fourth for several families).
use ndarray::{Array2, ArrayView2};

use pointsman_core::predictor::graph::MemoryBlock;

/// Name of the support output.
pub const SUPPORT_OUTPUT: &str = "support";
/// Name of the family-support output (heads whose memory holds several families).
pub const FAMILY_SUPPORT_OUTPUT: &str = "family_support";
/// Default number of neighbours.
pub const DEFAULT_NEIGHBOURS: usize = 32;

/// The training prompts and which models were observed on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    /// Training prompt embeddings, L2-normalised, [K, D].
    pub keys: Array2<f32>,
    /// `mask[k, m] / rate[m]` ([K, M]) with `rate[m]` = m's share of its block's keys; 0 outside
    /// m's block.
    pub weights: Array2<f32>,
    /// Neighbours averaged over.
    pub k: usize,
    /// The families' blocks of keys, in key order, covering every key. One block over every key
    /// and model for a head trained on one family (and for heads written before blocks).
    pub blocks: Vec<MemoryBlock>,
}

impl Support {
    /// Builds the index from embeddings [K, D] and the observation mask [K, M], one family.
    pub fn new(keys: ArrayView2<f32>, mask: ArrayView2<f32>, k: usize) -> Self {
        let all = MemoryBlock { start: 0, end: mask.nrows(), models: (0..mask.ncols()).collect() };
        Self::blocked(keys, mask, k, vec![all])
    }

    /// Like [`Support::new`] for a memory of several families, each in its own block of keys:
    /// a model's evidence is counted among the `k` keys of its own block nearest the prompt, at
    /// its rate over that block; and whether the prompt is like its family's prompts at all is
    /// its mean similarity to those `k` keys ([`Support::compute_family`]), measured against the
    /// block's own ([`Support::family_quantiles`]). `k` is capped by the smallest block. Observations in a block of a model that block does
    /// not hold are ignored.
    pub fn blocked(keys: ArrayView2<f32>, mask: ArrayView2<f32>, k: usize, blocks: Vec<MemoryBlock>) -> Self {
        let mut weights = Array2::<f32>::zeros(mask.raw_dim());
        for b in &blocks {
            let len = (b.end - b.start) as f32;
            for &j in &b.models {
                let col = mask.slice(ndarray::s![b.start..b.end, j]);
                let count = col.sum();
                if count > 0.0 {
                    weights.slice_mut(ndarray::s![b.start..b.end, j]).assign(&col.mapv(|v| v * len / count));
                }
            }
        }
        let mut keys = keys.to_owned();
        for mut row in keys.rows_mut() {
            let n = row.dot(&row).sqrt().max(f32::MIN_POSITIVE);
            row.mapv_inplace(|v| v / n);
        }
        let smallest = blocks.iter().map(|b| b.end - b.start).min().unwrap_or(mask.nrows());
        Support { keys, weights, k: k.clamp(1, smallest.max(1)), blocks }
    }

    /// Whether the memory holds more than one family (the graph then has a family-support output).
    pub fn is_blocked(&self) -> bool {
        self.blocks.len() > 1
    }

    /// Each model's observation rate over its block's keys (the `rate` above; 0 for a model never
    /// observed).
    pub fn rates(&self) -> Vec<f32> {
        self.weights.columns().into_iter().map(|c| c.fold(0.0f32, |a, &b| a.max(b))).map(|w| if w > 0.0 { 1.0 / w } else { 0.0 }).collect()
    }

    /// What the manifest says of this index (`support`), with each family's similarity
    /// quantiles ([`Support::family_quantiles`], computed here: seconds on 10k keys).
    pub fn index(&self) -> pointsman_core::predictor::manifest::SupportIndex {
        self.index_with(if self.is_blocked() { self.family_quantiles() } else { Vec::new() })
    }

    /// [`Support::index`] with the families' quantiles given (empty: none, as the graph alone says).
    pub fn index_with(&self, quantiles: Vec<Vec<f32>>) -> pointsman_core::predictor::manifest::SupportIndex {
        let families = match self.is_blocked() {
            true => self
                .blocks
                .iter()
                .enumerate()
                .map(|(bi, b)| pointsman_core::predictor::manifest::FamilyDomain {
                    models: b.models.clone(),
                    similarity_quantiles: quantiles.get(bi).cloned().unwrap_or_default(),
                })
                .collect(),
            false => Vec::new(),
        };
        pointsman_core::predictor::manifest::SupportIndex { neighbours: self.k, prompts: self.keys.nrows(), rates: self.rates(), families }
    }

    /// The `k` the graph searches block `b` with.
    fn block_k(&self, b: &MemoryBlock) -> usize {
        self.k.min(b.end - b.start).max(1)
    }

    /// Support of every model at each row of `x` ([N, D], L2-normalised), as the graph computes
    /// it: the mean of `weights[., m]` over the `k` keys of m's block nearest the row.
    pub fn compute(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = Array2::zeros((x.nrows(), self.weights.ncols()));
        for b in &self.blocks {
            let kb = self.block_k(b);
            for (r, near) in self.nearest_in(x, kb, b.start..b.end).into_iter().enumerate() {
                for i in near {
                    out.row_mut(r).scaled_add(1.0 / kb as f32, &self.weights.row(i));
                }
            }
        }
        out
    }

    /// Family nearness of every model at each row of `x` ([N, D], L2-normalised), as the graph
    /// computes it (`family_support`): the mean cosine similarity of the row to the `k` keys of
    /// m's block nearest it.
    pub fn compute_family(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = Array2::zeros((x.nrows(), self.weights.ncols()));
        for b in &self.blocks {
            let keys = self.keys.slice(ndarray::s![b.start..b.end, ..]);
            let sim = x.dot(&keys.t());
            for (r, row) in sim.rows().into_iter().enumerate() {
                let v = mean_top(row.to_vec(), self.block_k(b));
                for &j in &b.models {
                    out[[r, j]] = v;
                }
            }
        }
        out
    }

    /// Per block, how near its own prompts are to the rest of it: the 101 quantiles (0%, 1%, ..,
    /// 100%) over the block's keys of each key's mean similarity to the `k` other keys of the
    /// block nearest it (leave one out). A prompt whose family nearness is below the block's 1%
    /// quantile is farther from that family's prompts than 99% of them are from each other.
    pub fn family_quantiles(&self) -> Vec<Vec<f32>> {
        self.blocks
            .iter()
            .map(|b| {
                let keys = self.keys.slice(ndarray::s![b.start..b.end, ..]);
                let k = self.block_k(b).min((b.end - b.start).saturating_sub(1)).max(1);
                let mut values = Vec::with_capacity(keys.nrows());
                for start in (0..keys.nrows()).step_by(512) {
                    let end = (start + 512).min(keys.nrows());
                    let sim = keys.slice(ndarray::s![start..end, ..]).dot(&keys.t());
                    for (r, row) in sim.rows().into_iter().enumerate() {
                        let mut row = row.to_vec();
                        row[start + r] = f32::NEG_INFINITY;
                        values.push(mean_top(row, k));
                    }
                }
                values.sort_by(f32::total_cmp);
                let n = values.len();
                (0..=100).map(|i| if n == 0 { 0.0 } else { values[(i * (n - 1) + 50) / 100] }).collect()
            })
            .collect()
    }

    /// The block membership the graph stores: [blocks, M], 1 where the block holds the model.
    pub fn family_table(&self) -> Array2<f32> {
        let mut t = Array2::zeros((self.blocks.len(), self.weights.ncols()));
        for (bi, b) in self.blocks.iter().enumerate() {
            for &j in &b.models {
                t[[bi, j]] = 1.0;
            }
        }
        t
    }

    /// The `k` most similar of the first `limit` keys to each row of `x`, most similar first
    /// (ties by index, as ONNX TopK breaks them).
    pub fn nearest(&self, x: ArrayView2<f32>, k: usize, limit: usize) -> Vec<Vec<usize>> {
        self.nearest_in(x, k, 0..limit.min(self.keys.nrows()))
    }

    /// The `k` most similar keys of `range` to each row of `x` (key indices), most similar first
    /// (ties by index, as ONNX TopK breaks them).
    pub fn nearest_in(&self, x: ArrayView2<f32>, k: usize, range: std::ops::Range<usize>) -> Vec<Vec<usize>> {
        let range = range.start.min(self.keys.nrows())..range.end.min(self.keys.nrows());
        let near = crate::knn::neighbours(x, self.keys.slice(ndarray::s![range.clone(), ..]), k);
        near.into_iter().map(|v| v.into_iter().map(|i| i + range.start).collect()).collect()
    }
}

/// The mean of the `k` largest of `values` (the `k` nearest keys' similarities).
fn mean_top(mut values: Vec<f32>, k: usize) -> f32 {
    let k = k.clamp(1, values.len().max(1));
    if values.is_empty() {
        return 0.0;
    }
    if k < values.len() {
        values.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    }
    values[..k].iter().sum::<f32>() / k as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn support_is_high_where_a_model_was_observed_and_low_elsewhere() {
        let keys = array![[1.0f32, 0.0], [0.0, 1.0]];
        // Model 0 observed on prompt 0 only, model 1 on both.
        let mask = array![[1.0f32, 1.0], [0.0, 1.0]];
        let s = Support::new(keys.view(), mask.view(), 1);
        let out = s.compute(array![[1.0f32, 0.0], [0.0, 1.0]].view());
        // Model 0 has rate 1/2: observed on the nearest prompt, so support ~2 there.
        assert!((out[[0, 0]] - 2.0).abs() < 1e-4, "{out}");
        assert!(out[[1, 0]] < 1e-6, "model 0 never saw anything like prompt 1");
        assert!((out[[1, 1]] - 1.0).abs() < 1e-6, "model 1 is observed everywhere: support 1");
        // Family nearness is the mean similarity to the k nearest keys: 1 at a key, with k = 1.
        assert!(s.compute_family(array![[0.0f32, 1.0]].view()).iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn blocked_support_counts_each_model_in_its_own_block_and_measures_each_familys_nearness() {
        // Block 0 (keys 0..4, models 0 and 1) near (1, 0); block 1 (keys 4..6, model 2) near (0, 1).
        let keys = array![[1.0f32, 0.0], [0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.0, 1.0], [0.2, 0.8]];
        // Model 0 observed on keys 0 and 1 only, model 1 on all of block 0 (and, wrongly, key 4,
        // which block 1 holds: ignored); model 2 on all of block 1.
        let mask = array![[1.0f32, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]];
        let blocks = vec![MemoryBlock { start: 0, end: 4, models: vec![0, 1] }, MemoryBlock { start: 4, end: 6, models: vec![2] }];
        let s = Support::blocked(keys.view(), mask.view(), 2, blocks);
        assert_eq!(s.k, 2);
        assert_eq!(s.rates(), vec![0.5, 1.0, 1.0]);
        let x = array![[1.0f32, 0.0]];
        let sup = s.compute(x.view());
        // Near (1, 0): block 0's two nearest are keys 0 and 3; model 0 (rate 1/2) saw key 0: 1.
        assert!((sup[[0, 0]] - 1.0).abs() < 1e-5 && (sup[[0, 1]] - 1.0).abs() < 1e-5, "{sup}");
        // Model 2 is counted among block 1's own nearest keys, however far: 1.
        assert!((sup[[0, 2]] - 1.0).abs() < 1e-5, "{sup}");
        // But block 1's prompts are far from (1, 0): its family nearness is low, block 0's high.
        let fam = s.compute_family(x.view());
        assert!(fam[[0, 0]] > 0.99 && fam[[0, 0]] == fam[[0, 1]] && fam[[0, 2]] < 0.5, "{fam}");
        // And below anything block 1's own keys see of each other (their quantiles).
        let q = s.family_quantiles();
        assert_eq!((q.len(), q[1].len()), (2, 101));
        assert!(q[1].windows(2).all(|w| w[0] <= w[1]) && fam[[0, 2]] < q[1][0], "{:?}", q[1]);
        let index = s.index();
        assert_eq!(index.families.len(), 2);
        assert_eq!(index.families[1].models, vec![2]);
        // One family: no family test.
        assert!(Support::new(keys.view(), mask.view(), 2).index().families.is_empty());
    }
}
