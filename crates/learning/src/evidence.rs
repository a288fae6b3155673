//! How much each model's outcomes can be trusted, and what a model with little evidence is
//! predicted at (the review's findings 2 and 5: a raw per-model mean is the winner's curse on
//! sparse and exploration logs, and a model with one lucky report becomes the top pick everywhere).
//!
//! Two levels, per model family:
//! - **propensities**: a line's `propensity` (the probability the logging policy chose that model
//!   for that prompt) gives it the inverse-propensity weight `min(1/p, IPS_CLIP)`; a model's
//!   global mean is then the self-normalised (Hájek) mean `Σ w·y / Σ w`, the mean the model
//!   would have over the whole traffic rather than over the prompts the old router sent it. The
//!   local (neighbourhood) means are left unweighted: the logging policy depends on the prompt
//!   only, so among a prompt's neighbours the outcomes are already close to missing at random,
//!   and weighting them would only add variance.
//! - **empirical Bayes**: each model's mean is shrunk towards the family's pooled mean `μ0` by
//!   its effective number of observations `n`: `μ0 + n / (n + a) · (ȳ − μ0)`, with `a` (the
//!   ratio of the within-model to the between-model variance) fitted across the family's models
//!   by the method of moments.
//!
//! Every model's prior is then a **lower confidence bound**, `shrunk − z·sqrt(σ² / (n + a))` with
//! `z = sqrt(2 ln M)` for the family's `M` models (about the expected maximum of `M` standard
//! normal errors): routing takes an argmax over the models, so the one whose outcomes were
//! luckiest would otherwise win on its luck (the winner's curse), and the less evidence a model
//! has, the further below its mean it is served. On well-observed models the shift is small and
//! about equal (0.013 at 6,560 outcomes each), so the order among them does not move.
//!
//! And a **minimum-evidence guard**: a model with fewer than [`MIN_EVIDENCE`] effective
//! observations gets no local estimate and no head (it serves its prior alone), and that prior is
//! also never above `μ0`, so a few lucky outcomes cannot make it the top pick anywhere; a model
//! with no observation at all is predicted at the family's lowest well-observed prior (`floor`): it
//! stays in the head (routable where it is cheap enough), but is never preferred on no evidence.
use ndarray::{Array2, ArrayView2};

use crate::RoutingLogs;

/// Largest inverse-propensity weight (a propensity of 5% or less counts as 5%).
pub const IPS_CLIP: f32 = 20.0;
/// Effective observations a model needs in a family for a local estimate or a head of its own.
pub const MIN_EVIDENCE: f32 = 30.0;

/// Inverse propensities of the observed pairs ([prompts, models]): `min(1/p, IPS_CLIP)` where the
/// line carried a propensity, 1 where it did not, 0 where unobserved; and how many observations
/// carried one.
pub fn inverse_propensities(logs: &RoutingLogs) -> (Array2<f32>, usize) {
    let mut w = Array2::zeros((logs.prompts.len(), logs.models.len()));
    let mut with = 0;
    for o in &logs.observations {
        w[[o.prompt, o.model]] = match o.propensity {
            Some(p) => {
                with += 1;
                (1.0 / p.max(1e-9)).min(IPS_CLIP)
            }
            None => 1.0,
        };
    }
    (w, with)
}

/// What the trainer knew of one model in its family and what it did with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEvidence {
    /// Observed pairs.
    pub observations: usize,
    /// Effective observations under the inverse-propensity weights (`(Σw)² / Σw²`).
    pub effective: f32,
    /// Weighted mean quality over its observations (0 when unobserved).
    pub mean: f32,
    /// The prior it is served at where it has no neighbours (and always, without `local`).
    pub prior: f32,
    /// Whether it gets a local estimate and a head (at least [`MIN_EVIDENCE`]).
    pub local: bool,
}

impl ModelEvidence {
    /// One line for `train`'s report.
    pub fn describe(&self) -> String {
        if self.observations == 0 {
            format!("no observation: predicted at the family's lowest well-observed prior {:.3}", self.prior)
        } else if !self.local {
            format!(
                "{} observations ({:.1} effective, mean {:.3}): below {MIN_EVIDENCE}, served its prior {:.3} alone (a lower bound, at most the pooled mean)",
                self.observations, self.effective, self.mean, self.prior
            )
        } else {
            format!(
                "{} observations ({:.1} effective, mean {:.3}): prior {:.3} (its lower bound), local estimate and head",
                self.observations, self.effective, self.mean, self.prior
            )
        }
    }
}

/// A family's empirical-Bayes priors.
#[derive(Debug, Clone, PartialEq)]
pub struct Priors {
    /// The family's pooled mean (over its models, each counted by at most [`MIN_EVIDENCE`]).
    pub pooled: f32,
    /// Pseudo-observations of `pooled` in each model's prior.
    pub strength: f32,
    /// The lowest prior of a well-observed model: what an unobserved model is predicted at.
    pub floor: f32,
    /// Per model (the columns given).
    pub models: Vec<ModelEvidence>,
}

impl Priors {
    /// Each model's prior.
    pub fn prior(&self) -> ndarray::Array1<f32> {
        self.models.iter().map(|m| m.prior).collect()
    }

    /// Whether each model gets a local estimate.
    pub fn local(&self) -> Vec<bool> {
        self.models.iter().map(|m| m.local).collect()
    }
}

/// Priors of the columns of `values` ([rows, models]) from the observed pairs (`mask`) weighted
/// by `weights` (inverse propensities; pass the mask for none).
pub fn priors(values: ArrayView2<f32>, mask: ArrayView2<f32>, weights: ArrayView2<f32>) -> Priors {
    let m = values.ncols();
    let mut stats = Vec::with_capacity(m);
    for j in 0..m {
        let (mut n, mut sw, mut sw2, mut swy, mut swy2) = (0usize, 0f64, 0f64, 0f64, 0f64);
        for ((&y, &o), &w) in values.column(j).iter().zip(mask.column(j)).zip(weights.column(j)) {
            if o > 0.0 {
                let w = f64::from(w.max(1e-6));
                let y = f64::from(y);
                n += 1;
                sw += w;
                sw2 += w * w;
                swy += w * y;
                swy2 += w * y * y;
            }
        }
        let mean = if sw > 0.0 { swy / sw } else { 0.0 };
        let var = if sw > 0.0 { (swy2 / sw - mean * mean).max(0.0) } else { 0.0 };
        let eff = if sw2 > 0.0 { sw * sw / sw2 } else { 0.0 };
        stats.push((n, eff, mean, var));
    }
    let cap = f64::from(MIN_EVIDENCE);
    let c: Vec<f64> = stats.iter().map(|s| s.1.min(cap)).collect();
    let csum: f64 = c.iter().sum();
    let pooled = if csum > 0.0 { stats.iter().zip(&c).map(|(s, c)| c * s.2).sum::<f64>() / csum } else { 0.0 };
    // Method of moments: between-model variance of the means net of their sampling variance.
    let informative: Vec<&(usize, f64, f64, f64)> = stats.iter().filter(|s| s.1 >= 2.0).collect();
    let within = if informative.is_empty() {
        pooled * (1.0 - pooled)
    } else {
        informative.iter().map(|s| s.3).sum::<f64>() / informative.len() as f64
    }
    .max(1e-4);
    let spread = if csum > 0.0 { stats.iter().zip(&c).map(|(s, c)| c * (s.2 - pooled).powi(2)).sum::<f64>() / csum } else { 0.0 };
    let noise =
        if informative.is_empty() { 0.0 } else { informative.iter().map(|s| s.3 / s.1.max(1.0)).sum::<f64>() / informative.len() as f64 };
    let between = (spread - noise).max(1e-4);
    let strength = (within / between).clamp(1.0, 1000.0);
    // How many standard errors below its shrunk mean each prior sits: the expected maximum of
    // `m` standard normal errors is about `sqrt(2 ln m)`, so the model with the luckiest
    // outcomes among `m` competing for the argmax is not preferred for its luck.
    let z = (2.0 * (m.max(2) as f64).ln()).sqrt();
    let mut models: Vec<ModelEvidence> = stats
        .iter()
        .map(|&(n, eff, mean, _)| {
            let shrunk = pooled + eff / (eff + strength) * (mean - pooled);
            let local = eff >= cap;
            let lower = (shrunk - z * (within / (eff + strength)).sqrt()).max(0.0);
            ModelEvidence {
                observations: n,
                effective: eff as f32,
                mean: mean as f32,
                prior: if local { lower as f32 } else { lower.min(pooled) as f32 },
                local,
            }
        })
        .collect();
    let floor = models.iter().filter(|e| e.local).map(|e| e.prior).fold(f32::INFINITY, f32::min);
    let floor = if floor.is_finite() { floor } else { pooled as f32 };
    for e in models.iter_mut().filter(|e| e.observations == 0) {
        e.prior = floor;
    }
    Priors { pooled: pooled as f32, strength: strength as f32, floor, models }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn a_lucky_rare_model_is_shrunk_below_the_pooled_mean_and_an_unobserved_one_sits_at_the_floor() {
        // Three well-observed models (means 0.3, 0.5, 0.7 over 200 prompts), one with 3 perfect
        // outcomes, one never observed.
        let n = 200;
        let mut y = Array2::<f32>::zeros((n, 5));
        let mut mask = Array2::<f32>::zeros((n, 5));
        for r in 0..n {
            for (j, share) in [0.3f32, 0.5, 0.7].iter().enumerate() {
                mask[[r, j]] = 1.0;
                y[[r, j]] = if (r as f32 + 0.5) / (n as f32) < *share { 1.0 } else { 0.0 };
            }
        }
        for r in 0..3 {
            mask[[r, 3]] = 1.0;
            y[[r, 3]] = 1.0;
        }
        let p = priors(y.view(), mask.view(), mask.view());
        // A well-observed model sits about sqrt(2 ln 5) standard errors below its mean (its
        // standard error over 200 outcomes is about 0.03).
        let below = p.models[2].mean - p.models[2].prior;
        assert!(below > 0.03 && below < 0.09, "a well-observed model sits a little below its mean: {:?}", p.models[2]);
        assert!(p.models[0].prior < p.models[1].prior && p.models[1].prior < p.models[2].prior, "equal evidence keeps the order");
        assert!(p.models[3].prior <= p.pooled + 1e-6 && !p.models[3].local, "a lucky rare model: {:?} pooled {}", p.models[3], p.pooled);
        assert!(p.models[3].prior < p.models[2].prior);
        assert_eq!(p.models[4].prior, p.floor);
        assert!((p.floor - p.models[0].prior).abs() < 1e-6, "the floor is the lowest well-observed prior");
    }

    #[test]
    fn the_fewer_outcomes_the_further_below_its_mean_a_model_is_served() {
        // Two models with the same mean 0.6: one over 400 prompts, one over 40.
        let n = 400;
        let mut y = Array2::<f32>::zeros((n, 3));
        let mut mask = Array2::<f32>::zeros((n, 3));
        for r in 0..n {
            for j in 0..3 {
                let observed = j != 1 || r % 10 == 0;
                if observed {
                    mask[[r, j]] = 1.0;
                    y[[r, j]] = if (r / 10) % 5 < [3, 3, 2][j] { 1.0 } else { 0.0 };
                }
            }
        }
        let p = priors(y.view(), mask.view(), mask.view());
        let (many, few) = (&p.models[0], &p.models[1]);
        assert!((many.mean - 0.6).abs() < 1e-6 && (few.mean - 0.6).abs() < 1e-6, "{many:?} {few:?}");
        assert!(few.local && many.local);
        assert!(few.prior + 0.03 < many.prior, "40 outcomes are served further below their mean than 400: {few:?} {many:?}");
    }

    #[test]
    fn propensity_weights_undo_a_policy_that_sends_a_model_its_easy_prompts() {
        // The model scores 1 on easy prompts (90% of its log, logged with p = 0.9) and 0 on hard
        // ones (10%, explored with p = 0.1); over the traffic (half easy, half hard) its mean is 0.5.
        let n = 1000;
        let mut y = Array2::<f32>::zeros((n, 1));
        let mask = Array2::<f32>::ones((n, 1));
        let mut w = Array2::<f32>::ones((n, 1));
        for r in 0..n {
            if r < 900 {
                y[[r, 0]] = 1.0;
                w[[r, 0]] = 1.0 / 0.9;
            } else {
                w[[r, 0]] = 1.0 / 0.1;
            }
        }
        let plain = priors(y.view(), mask.view(), mask.view());
        let weighted = priors(y.view(), mask.view(), w.view());
        assert!((plain.models[0].mean - 0.9).abs() < 1e-4);
        assert!((weighted.models[0].mean - 0.5).abs() < 1e-3, "{:?}", weighted.models[0]);
        assert!(weighted.models[0].effective < plain.models[0].effective);
    }
}
