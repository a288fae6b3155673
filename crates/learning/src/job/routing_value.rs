//! The selection's score on logs with no full matrix (production logs, exploration logs, one
//! model per prompt): the routing value of each candidate's argmax, estimated off-policy (review
//! finding 3: the Brier score over logged pairs is weighted by the old policy and cannot see the
//! new router landing on rarely observed models).
//!
//! At every cost weight of `eval`'s sweep, each candidate routes every training prompt on its
//! out-of-fold predictions (the catalog's prices, its predicted tokens). The doubly robust
//! estimate (`learning::offpolicy`) of the mean quality and mean cost of those choices makes one
//! point per weight; the score is the area under the quality-cost frontier of those points (AIQ,
//! as `eval` computes it) minus that of the single models, estimated the same way. The DR
//! reference is a smooth cross-fitted kNN (k 100, b 50, guarded priors) for quality and each
//! model's out-of-fold mean for tokens; the propensities are the logged ones where every line
//! carried one, else each model's share of the family's prompts (exact for uniform logging).
use ndarray::{Array2, ArrayView2};

use crate::{
    eval::weight_grid,
    frontier::{aiq, envelope, Point},
    offpolicy::{dr_mean, Logged},
    policy::utility,
};

/// How much higher (AIQ, quality units) a later candidate must score to be chosen over an
/// earlier one (about a third of a point of gap closed on mmlu_pro).
pub const VALUE_TOLERANCE: f64 = 0.001;

/// A family's log as the routing value reads it, over the priced columns.
pub(super) struct RoutingValue {
    /// Columns (positions in the family's models) with a catalog price.
    pub cols: Vec<usize>,
    /// Their catalog entries.
    prices: Vec<pointsman_core::catalog::CatalogModel>,
    /// Input tokens per row.
    input_tokens: Vec<u32>,
    /// Observed quality, cost, 1/p, mask; reference quality and cost: [rows, cols].
    quality: Array2<f64>,
    cost: Array2<f64>,
    inverse_propensity: Array2<f64>,
    observed: Array2<f32>,
    reference_quality: Array2<f64>,
    reference_cost: Array2<f64>,
    cost_scale: f64,
}

impl RoutingValue {
    /// The family's rows: observed quality, tokens and mask ([rows, family models]); inverse
    /// propensities (0 where unknown); the reference predictions; prices per column (`None` for
    /// an unpriced model). `None` with fewer than 2 priced models.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        quality: ArrayView2<f32>,
        tokens: ArrayView2<f32>,
        mask: ArrayView2<f32>,
        inverse_propensity: Option<ArrayView2<f32>>,
        reference_quality: ArrayView2<f32>,
        reference_tokens: ArrayView2<f32>,
        prices: &[Option<pointsman_core::catalog::CatalogModel>],
        input_tokens: Vec<u32>,
        cost_scale: f64,
    ) -> Option<Self> {
        let cols: Vec<usize> = (0..prices.len()).filter(|&j| prices[j].is_some()).collect();
        if cols.len() < 2 {
            return None;
        }
        let entries: Vec<_> = cols.iter().map(|&j| prices[j].clone().expect("priced. This is a bug.")).collect();
        let n = quality.nrows();
        let shape = (n, cols.len());
        let share: Vec<f64> = cols.iter().map(|&j| mask.column(j).iter().filter(|&&v| v > 0.0).count() as f64 / n.max(1) as f64).collect();
        let pick = |a: ArrayView2<f32>| Array2::from_shape_fn(shape, |(r, c)| f64::from(a[[r, cols[c]]]));
        let observed = Array2::from_shape_fn(shape, |(r, c)| mask[[r, cols[c]]]);
        let inverse_propensity = Array2::from_shape_fn(shape, |(r, c)| {
            let known = inverse_propensity.map_or(0.0, |w| f64::from(w[[r, cols[c]]]));
            if known > 0.0 {
                known
            } else {
                (1.0 / share[c].max(1e-9)).min(f64::from(crate::evidence::IPS_CLIP) * 2.5)
            }
        });
        let cost = Array2::from_shape_fn(shape, |(r, c)| entries[c].cost_usd(input_tokens[r], f64::from(tokens[[r, cols[c]]])));
        let reference_cost =
            Array2::from_shape_fn(shape, |(r, c)| entries[c].cost_usd(input_tokens[r], f64::from(reference_tokens[[r, cols[c]]].max(0.0))));
        Some(RoutingValue {
            prices: entries,
            input_tokens,
            quality: pick(quality),
            cost,
            inverse_propensity,
            observed,
            reference_quality: pick(reference_quality),
            reference_cost,
            cols,
            cost_scale,
        })
    }

    fn logs(&self) -> (Logged<'_>, Logged<'_>) {
        (
            Logged {
                reward: self.quality.view(),
                observed: self.observed.view(),
                inverse_propensity: self.inverse_propensity.view(),
                reference: self.reference_quality.view(),
            },
            Logged {
                reward: self.cost.view(),
                observed: self.observed.view(),
                inverse_propensity: self.inverse_propensity.view(),
                reference: self.reference_cost.view(),
            },
        )
    }

    /// AIQ of routing on `quality` / `tokens` ([rows, family models]) minus the single models',
    /// over `rows`, estimated off-policy.
    pub fn score(&self, quality: &Array2<f32>, tokens: &Array2<f32>, rows: &[usize]) -> f64 {
        if rows.is_empty() {
            return 0.0;
        }
        let (lq, lc) = self.logs();
        let singles: Vec<Point> = (0..self.cols.len())
            .map(|c| {
                let choice = vec![c; rows.len()];
                Point { cost: dr_mean(&lc, rows, &choice), quality: dr_mean(&lq, rows, &choice) }
            })
            .collect();
        let lo = singles.iter().map(|p| p.cost).fold(f64::INFINITY, f64::min).max(1e-12);
        let hi = singles.iter().map(|p| p.cost).fold(0.0, f64::max).max(lo);
        let floor = singles
            .iter()
            .copied()
            .min_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)))
            .expect("at least two columns. This is a bug.");
        // Predicted cost per row and column, once.
        let pc: Vec<Vec<f64>> = rows
            .iter()
            .map(|&r| {
                self.cols
                    .iter()
                    .enumerate()
                    .map(|(c, &j)| self.prices[c].cost_usd(self.input_tokens[r], f64::from(tokens[[r, j]].max(0.0))))
                    .collect()
            })
            .collect();
        let mut points = vec![floor];
        let mut choice = vec![0usize; rows.len()];
        for w in weight_grid() {
            for (i, &r) in rows.iter().enumerate() {
                let mut best = (f64::NEG_INFINITY, 0);
                for (c, &j) in self.cols.iter().enumerate() {
                    let u = utility(f64::from(quality[[r, j]]), pc[i][c], w, self.cost_scale);
                    if u > best.0 {
                        best = (u, c);
                    }
                }
                choice[i] = best.1;
            }
            points.push(Point { cost: dr_mean(&lc, rows, &choice), quality: dr_mean(&lq, rows, &choice) });
        }
        aiq(&envelope(&points), floor.cost.max(1e-12), hi) - aiq(&envelope(&singles), floor.cost.max(1e-12), hi)
    }
}
