//! Off-policy estimates of what a new routing policy would get on logged traffic: IPS, SNIPS and
//! doubly robust (DR), with standard errors and the effective sample size.
//!
//! The log holds, per prompt `i`, the outcomes of the models it was sent to (`observed`), each
//! with the inverse of the probability the logging policy chose it (`1/p`; 1 for every model of
//! a full benchmark matrix). For a policy that picks model `c_i` on prompt `i`:
//! - IPS: `mean_i Σ_j [c_i = j] · o_ij · w_ij · r_ij` (unbiased when the propensities are right
//!   and every chosen model had a chance to be logged);
//! - SNIPS: the same sum divided by `Σ_i Σ_j [c_i = j] · o_ij · w_ij` instead of `n` (biased
//!   slightly, far less variable);
//! - DR: `mean_i Q(i, c_i) + Σ_j [c_i = j] · o_ij · w_ij · (r_ij − Q(i, j))`, with `Q` a reference
//!   prediction of the reward fitted without prompt `i` (cross-fitted): unbiased if either the
//!   propensities or `Q` are right, and where the logging policy never chose `c_i` it falls back
//!   to `Q` rather than to nothing.
//!
//! On a full matrix (`w = 1` everywhere) all three equal the policy's true mean reward.
use ndarray::ArrayView2;
use serde::Serialize;

/// One estimator's figure.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Figure {
    /// The estimate.
    pub value: f64,
    /// Its standard error (over prompts; the delta method for SNIPS).
    pub standard_error: f64,
}

impl Figure {
    /// The 95% normal interval.
    pub fn interval(&self) -> (f64, f64) {
        (self.value - 1.96 * self.standard_error, self.value + 1.96 * self.standard_error)
    }
}

/// The three estimates of one policy's mean reward.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Estimate {
    /// Inverse propensity scoring.
    pub ips: Figure,
    /// Self-normalised IPS.
    pub snips: Figure,
    /// Doubly robust.
    pub dr: Figure,
    /// Effective sample size of the matched weights, `(Σ m_i)² / Σ m_i²`.
    pub effective_sample_size: f64,
    /// Prompts on which the policy's choice was logged.
    pub matched: usize,
    /// Prompts scored.
    pub prompts: usize,
}

/// A log as the estimators read it, [prompts, models] each.
#[derive(Debug, Clone, Copy)]
pub struct Logged<'a> {
    /// The observed reward (anything where unobserved).
    pub reward: ArrayView2<'a, f64>,
    /// 1 where observed.
    pub observed: ArrayView2<'a, f32>,
    /// `1 / propensity` where observed.
    pub inverse_propensity: ArrayView2<'a, f64>,
    /// Reference prediction of the reward (for DR).
    pub reference: ArrayView2<'a, f64>,
}

fn mean_se(v: &[f64]) -> Figure {
    let n = v.len() as f64;
    if v.is_empty() {
        return Figure { value: f64::NAN, standard_error: f64::NAN };
    }
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Figure { value: mean, standard_error: (var / n).sqrt() }
}

/// The estimates for the policy choosing `choice[i]` on the prompt at `rows[i]`.
pub fn estimate(log: &Logged, rows: &[usize], choice: &[usize]) -> Estimate {
    let (mut ips, mut dr, mut matched_w) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    let mut matched = 0;
    for (&r, &c) in rows.iter().zip(choice) {
        let q = log.reference[[r, c]];
        if log.observed[[r, c]] > 0.0 {
            let w = log.inverse_propensity[[r, c]];
            let y = log.reward[[r, c]];
            ips.push(w * y);
            dr.push(q + w * (y - q));
            matched_w.push(w);
            matched += 1;
        } else {
            ips.push(0.0);
            dr.push(q);
            matched_w.push(0.0);
        }
    }
    let ips_fig = mean_se(&ips);
    let sum_w: f64 = matched_w.iter().sum();
    let sum_w2: f64 = matched_w.iter().map(|w| w * w).sum();
    let snips_value = if sum_w > 0.0 { ips.iter().sum::<f64>() / sum_w } else { f64::NAN };
    // Delta method: the ratio's influence terms are (w·y − V·w) / mean(w).
    let mean_w = sum_w / rows.len().max(1) as f64;
    let infl: Vec<f64> = ips.iter().zip(&matched_w).map(|(a, w)| (a - snips_value * w) / mean_w.max(1e-12)).collect();
    let snips_se = if sum_w > 0.0 { mean_se(&infl).standard_error } else { f64::NAN };
    Estimate {
        ips: ips_fig,
        snips: Figure { value: snips_value, standard_error: snips_se },
        dr: mean_se(&dr),
        effective_sample_size: if sum_w2 > 0.0 { sum_w * sum_w / sum_w2 } else { 0.0 },
        matched,
        prompts: rows.len(),
    }
}

/// The DR mean alone (the selection's inner loop).
pub fn dr_mean(log: &Logged, rows: &[usize], choice: &[usize]) -> f64 {
    let mut s = 0.0;
    for (&r, &c) in rows.iter().zip(choice) {
        let q = log.reference[[r, c]];
        s += if log.observed[[r, c]] > 0.0 { q + log.inverse_propensity[[r, c]] * (log.reward[[r, c]] - q) } else { q };
    }
    s / rows.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn on_a_full_matrix_every_estimator_is_the_true_mean_and_on_a_uniform_log_they_are_close() {
        let (n, m) = (4000, 3);
        let mut rng = crate::SplitMix64::new(7);
        let reward = Array2::from_shape_fn((n, m), |(i, j)| f64::from(u8::from(rng.next_f64() < 0.2 + 0.3 * j as f64 * ((i % 2) as f64))));
        let choice: Vec<usize> = (0..n).map(|i| if i % 2 == 0 { 0 } else { 2 }).collect();
        let truth = (0..n).map(|i| reward[[i, choice[i]]]).sum::<f64>() / n as f64;
        let rows: Vec<usize> = (0..n).collect();
        let ones = Array2::<f32>::ones((n, m));
        let w1 = Array2::<f64>::ones((n, m));
        let zero = Array2::<f64>::zeros((n, m));
        let full = Logged { reward: reward.view(), observed: ones.view(), inverse_propensity: w1.view(), reference: zero.view() };
        let e = estimate(&full, &rows, &choice);
        for f in [e.ips, e.snips, e.dr] {
            assert!((f.value - truth).abs() < 1e-9, "{f:?} vs {truth}");
        }
        // One uniformly random model per prompt, propensity 1/3.
        let mut observed = Array2::<f32>::zeros((n, m));
        for i in 0..n {
            observed[[i, (rng.next_f64() * m as f64) as usize % m]] = 1.0;
        }
        let w3 = Array2::<f64>::from_elem((n, m), 3.0);
        let reference = Array2::<f64>::from_elem((n, m), 0.3);
        let log = Logged { reward: reward.view(), observed: observed.view(), inverse_propensity: w3.view(), reference: reference.view() };
        let e = estimate(&log, &rows, &choice);
        for f in [e.ips, e.snips, e.dr] {
            let (lo, hi) = f.interval();
            assert!(lo - 0.02 <= truth && truth <= hi + 0.02, "{f:?} vs {truth}");
        }
        assert!((e.effective_sample_size - e.matched as f64).abs() < 1e-6, "equal weights: ESS is the matched count");
        assert!((dr_mean(&log, &rows, &choice) - e.dr.value).abs() < 1e-12);
    }
}
