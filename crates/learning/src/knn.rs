//! Nearest-neighbour routing with shrinkage, and its cross-validated grid.
//!
//! The per-prompt estimate of a model's quality is its mean observed score on the query's `k`
//! most similar memory prompts (cosine on the encoder's embeddings), pulled towards the model's
//! global mean by `b` pseudo-observations:
//!
//! `q(x, m) = (sum of m's scores on the k neighbours + b * mean(m)) / (count of m's scores there + b)`
//!
//! On dense benchmark logs this simple estimator is a strong baseline (issue 11 measured it ahead
//! of the learned heads on four suites), so the trainer treats it as one more candidate and
//! `eval` reports it beside the head; both choose `(k, b)` by cross-validation of the training
//! prompts only. The serving graph computes the same thing (`LocalPrior` in `shrink.rs`).
//!
//! Everything here works on a grid at once: the neighbours of a query are sorted once, running
//! sums are read off at every `k` of the grid, and every `b` is a cheap division, so a 6 x 6 grid
//! costs about as much as one `k`.
use ndarray::{Array2, ArrayView1, ArrayView2};

/// Neighbour counts tried by the trainer and by `eval`'s baseline. 200 won at the edge of a 10..200
/// grid on three of four suites (issue 11), so the grid goes one step further.
pub const K_GRID: [usize; 6] = [10, 25, 50, 100, 200, 400];
/// Pseudo-counts of the global mean tried with each `k`.
pub const B_GRID: [f32; 6] = [0.0, 10.0, 25.0, 50.0, 100.0, 200.0];

/// One point of the grid.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnnParams {
    /// Neighbours averaged over.
    pub k: usize,
    /// Pseudo-count of the model's global mean.
    pub b: f32,
}

/// The `k` most similar rows of `memory` to each row of `x` (both L2-normalised, so the dot
/// product is the cosine), most similar first; ties go to the lower index, as ONNX `TopK` breaks
/// them.
pub fn neighbours(x: ArrayView2<f32>, memory: ArrayView2<f32>, k: usize) -> Vec<Vec<usize>> {
    let k = k.min(memory.nrows());
    // In blocks of queries, so the similarity matrix stays small on large logs.
    let mut out = Vec::with_capacity(x.nrows());
    for start in (0..x.nrows()).step_by(512) {
        let end = (start + 512).min(x.nrows());
        let sim = x.slice(ndarray::s![start..end, ..]).dot(&memory.t());
        for row in sim.rows() {
            let cmp = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            let mut order: Vec<usize> = (0..row.len()).collect();
            if k < order.len() && k > 0 {
                order.select_nth_unstable_by(k - 1, cmp);
                order.truncate(k);
            }
            order.sort_by(cmp);
            order.truncate(k);
            out.push(order);
        }
    }
    out
}

/// Predictions at every `(k, b)` of `ks` x `bs` for queries whose neighbour lists (most similar
/// first, at least `max(ks)` long where memory allows) index into `values` / `mask` ([memory, M]);
/// `prior` [M] is each model's global mean. Returned in the order `ks` outer, `bs` inner.
pub fn predict_grid(
    near: &[Vec<usize>],
    values: ArrayView2<f32>,
    mask: ArrayView2<f32>,
    prior: ArrayView1<f32>,
    ks: &[usize],
    bs: &[f32],
) -> Vec<(KnnParams, Array2<f32>)> {
    let (n, m) = (near.len(), values.ncols());
    let mut out: Vec<(KnnParams, Array2<f32>)> =
        ks.iter().flat_map(|&k| bs.iter().map(move |&b| (KnnParams { k, b }, Array2::zeros((n, m))))).collect();
    let mut order: Vec<usize> = (0..ks.len()).collect();
    order.sort_by_key(|&i| ks[i]);
    let (mut sum, mut count) = (vec![0f32; m], vec![0f32; m]);
    for (r, list) in near.iter().enumerate() {
        sum.fill(0.0);
        count.fill(0.0);
        let mut taken = 0;
        for &ki in &order {
            let k = ks[ki];
            while taken < k.min(list.len()) {
                let i = list[taken];
                for j in 0..m {
                    let w = mask[[i, j]];
                    sum[j] += w * values[[i, j]];
                    count[j] += w;
                }
                taken += 1;
            }
            for (bi, &b) in bs.iter().enumerate() {
                let mut row = out[ki * bs.len() + bi].1.row_mut(r);
                for j in 0..m {
                    let den = count[j] + b;
                    row[j] = if den > 0.0 { (sum[j] + b * prior[j]) / den } else { prior[j] };
                }
            }
        }
    }
    out
}

/// Each model's mean of `values` over the rows where `mask` is set (0 for a model never observed).
pub fn column_means(values: ArrayView2<f32>, mask: ArrayView2<f32>) -> ndarray::Array1<f32> {
    let n = mask.sum_axis(ndarray::Axis(0));
    let s = (&values * &mask).sum_axis(ndarray::Axis(0));
    ndarray::Zip::from(&s).and(&n).map_collect(|&s, &n| if n > 0.0 { s / n } else { 0.0 })
}

/// A training set to cross-validate the kNN on: L2-normalised rows `x`, their `values` [rows,
/// models] and which are observed (`mask`), and each row's fold (`fold[r]` in `0..n_folds`).
/// Each grid gives out-of-fold predictions for every row and every (k, b): a row's neighbours,
/// and the priors it is shrunk towards, come from the other folds only.
#[derive(Debug, Clone, Copy)]
pub struct CrossValidation<'a> {
    /// L2-normalised rows.
    pub x: ArrayView2<'a, f32>,
    /// Values [rows, models].
    pub values: ArrayView2<'a, f32>,
    /// 1 where a value is observed.
    pub mask: ArrayView2<'a, f32>,
    /// Fold of each row.
    pub fold: &'a [usize],
    /// Number of folds.
    pub n_folds: usize,
}

/// Out-of-fold predictions of each (k, b) of a grid, [rows, models] each.
pub type Grid = Vec<(KnnParams, Array2<f32>)>;

fn pick(a: ArrayView2<f32>, rows: &[usize]) -> Array2<f32> {
    a.select(ndarray::Axis(0), rows)
}

impl CrossValidation<'_> {
    /// The grid, each fold shrunk towards the raw per-model means of its fit rows.
    pub fn grid(&self, ks: &[usize], bs: &[f32]) -> Grid {
        self.grid_with_priors(ks, bs, |rows| {
            (column_means(pick(self.values, rows).view(), pick(self.mask, rows).view()), vec![true; self.values.ncols()])
        })
    }

    /// The grid with each fold's priors from `crate::evidence::priors` over its fit rows
    /// (inverse-propensity `weights` [rows, M], or the mask): models shrunk towards the pooled
    /// mean by their evidence, and a model below the evidence guard at its prior alone (no local
    /// estimate), as the trained graph serves them.
    pub fn grid_guarded(&self, weights: ArrayView2<f32>, ks: &[usize], bs: &[f32]) -> Grid {
        self.grid_with_priors(ks, bs, |rows| {
            let p = crate::evidence::priors(pick(self.values, rows).view(), pick(self.mask, rows).view(), pick(weights, rows).view());
            (p.prior(), p.local())
        })
    }

    /// [`CrossValidation::grid_guarded`] for sparse logs: each model averages its own `k` nearest
    /// *observations* (its own block of the memory), not the `k` nearest prompts, of which on a
    /// one-model-per-prompt log it would see about `k` times its share (review finding 6).
    pub fn grid_per_model(&self, weights: ArrayView2<f32>, ks: &[usize], bs: &[f32]) -> Grid {
        let (x, values, mask) = (self.x, self.values, self.mask);
        let mut out = self.empty(ks, bs);
        let kmax = ks.iter().copied().max().unwrap_or(1);
        for (held, fit) in self.splits() {
            let p = crate::evidence::priors(pick(values, &fit).view(), pick(mask, &fit).view(), pick(weights, &fit).view());
            let held_x = pick(x, &held);
            for j in 0..values.ncols() {
                let own: Vec<usize> = fit.iter().copied().filter(|&r| mask[[r, j]] > 0.0).collect();
                let prior = p.models[j].prior;
                if !p.models[j].local || own.is_empty() {
                    for (_, pred) in out.iter_mut() {
                        for &r in &held {
                            pred[[r, j]] = prior;
                        }
                    }
                    continue;
                }
                let near = neighbours(held_x.view(), pick(x, &own).view(), kmax);
                let vals = values.select(ndarray::Axis(0), &own).slice(ndarray::s![.., j..j + 1]).to_owned();
                let ones = Array2::<f32>::ones((own.len(), 1));
                let pr = ndarray::Array1::from_elem(1, prior);
                for (i, (_, pred)) in predict_grid(&near, vals.view(), ones.view(), pr.view(), ks, bs).into_iter().enumerate() {
                    for (q, &r) in held.iter().enumerate() {
                        out[i].1[[r, j]] = pred[[q, 0]];
                    }
                }
            }
        }
        out
    }

    /// The grid with each fold's priors and local-estimate flags from `priors(fit rows)`.
    fn grid_with_priors(&self, ks: &[usize], bs: &[f32], priors: impl Fn(&[usize]) -> (ndarray::Array1<f32>, Vec<bool>)) -> Grid {
        let mut out = self.empty(ks, bs);
        let kmax = ks.iter().copied().max().unwrap_or(1);
        for (held, fit) in self.splits() {
            let (mv, mut mm) = (pick(self.values, &fit), pick(self.mask, &fit));
            let (prior, local) = priors(&fit);
            for (j, l) in local.iter().enumerate() {
                if !l {
                    mm.column_mut(j).fill(0.0);
                }
            }
            let near = neighbours(pick(self.x, &held).view(), pick(self.x, &fit).view(), kmax);
            for (i, (_, pred)) in predict_grid(&near, mv.view(), mm.view(), prior.view(), ks, bs).into_iter().enumerate() {
                for (p, &r) in held.iter().enumerate() {
                    out[i].1.row_mut(r).assign(&pred.row(p));
                }
            }
        }
        out
    }

    /// Zero predictions for every (k, b).
    fn empty(&self, ks: &[usize], bs: &[f32]) -> Grid {
        let (n, m) = (self.x.nrows(), self.values.ncols());
        ks.iter().flat_map(|&k| bs.iter().map(move |&b| (KnnParams { k, b }, Array2::zeros((n, m))))).collect()
    }

    /// (held-out rows, fit rows) of each fold with both.
    fn splits(&self) -> Vec<(Vec<usize>, Vec<usize>)> {
        (0..self.n_folds)
            .filter_map(|f| {
                let (held, fit): (Vec<usize>, Vec<usize>) = (0..self.x.nrows()).partition(|&r| self.fold[r] == f);
                (!held.is_empty() && !fit.is_empty()).then_some((held, fit))
            })
            .collect()
    }
}

/// Rows of `x` scaled to unit length (zero rows stay zero).
pub fn normalised(x: ArrayView2<f32>) -> Array2<f32> {
    let mut x = x.to_owned();
    for mut row in x.rows_mut() {
        let n = row.dot(&row).sqrt();
        if n > 0.0 {
            row.mapv_inplace(|v| v / n);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn grid_matches_the_formula_and_neighbours_break_ties_by_index() {
        let memory = normalised(array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]].view());
        let near = neighbours(array![[1.0f32, 0.0]].view(), memory.view(), 3);
        assert_eq!(near, vec![vec![0, 1, 3]]);
        // Model 0 observed everywhere, model 1 only on row 2 (not a neighbour at k = 2).
        let values = array![[1.0f32, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]];
        let mask = array![[1.0f32, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]];
        let prior = column_means(values.view(), mask.view());
        assert_eq!(prior.to_vec(), vec![0.5, 1.0]);
        let grid = predict_grid(&near, values.view(), mask.view(), prior.view(), &[2, 1], &[0.0, 2.0]);
        let at = |k: usize, b: f32| grid.iter().find(|(p, _)| p.k == k && p.b == b).unwrap().1.clone();
        // k = 2: rows 0 and 1 -> model 0 mean 0.5; with b = 2: (1 + 2 * 0.5) / 4 = 0.5.
        assert_eq!(at(2, 0.0)[[0, 0]], 0.5);
        assert_eq!(at(1, 0.0)[[0, 0]], 1.0);
        assert!((at(1, 2.0)[[0, 0]] - (1.0 + 2.0 * 0.5) / 3.0).abs() < 1e-6);
        // No neighbour observed model 1: its global mean, whatever b.
        assert_eq!(at(2, 0.0)[[0, 1]], 1.0);
    }

    #[test]
    fn cross_validated_predictions_never_see_their_own_row() {
        // Each row's value is unique to it and its twin in another fold: k = 1 must find the twin.
        let x = normalised(array![[1.0f32, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]].view());
        let values = array![[1.0f32], [0.8], [0.0], [0.2]];
        let mask = Array2::ones((4, 1));
        let cv = CrossValidation { x: x.view(), values: values.view(), mask: mask.view(), fold: &[0, 1, 0, 1], n_folds: 2 };
        let grid = cv.grid(&[1], &[0.0]);
        assert_eq!(grid[0].1.column(0).to_vec(), vec![0.8, 1.0, 0.2, 0.0]);
    }
}
