//! `pointsman eval --log <decision log or routing log>`: what a head would get on logged traffic,
//! estimated off-policy (`learning::offpolicy`: IPS, SNIPS and doubly robust, with 95% intervals
//! and the effective sample size), so heads can be compared on an operator's own sparse logs
//! without sending traffic (a full matrix is not needed).
//!
//! Each head routes every logged prompt as Route would at `cost_weight`: the argmax of utility
//! over the catalog models it predicts, under its domain rule. Its choices are scored against the
//! logged outcomes, weighted by the inverse of the logged propensity (`propensity` on a line) or,
//! where a line has none, of the model's share of the logged prompts (right for uniform logging,
//! wrong for a deterministic router: the report says which). The DR reference is a cross-fitted
//! kNN over the log (k 100, b 50, evidence-guarded priors) for quality, and each model's
//! out-of-fold mean output tokens for cost. A choice of a model the log never holds is scored by
//! the reference alone; its share is reported (`unlogged_share`).
use std::{collections::HashMap, path::Path};

use ndarray::{Array2, Axis};
use serde::Serialize;

use super::EvalError;
use crate::{
    catalog::Catalog,
    embed::{embed_prompts, embed_prompts_cached},
    encoder::{text::TOKENS_PER_MESSAGE, Encoder},
    offpolicy::{estimate, Estimate, Logged},
    policy::utility,
    predictor::Head,
    RoutingLogs,
};

/// Largest inverse propensity the estimates use.
pub const MAX_INVERSE_PROPENSITY: f64 = 1000.0;

/// One policy's estimated quality and cost per request on the log.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyValue {
    /// The head id (or `logged` for the logging policy itself).
    pub policy: String,
    /// Mean quality.
    pub quality: Estimate,
    /// Mean cost per request, USD.
    pub cost: Estimate,
    /// Share of prompts routed to a model the log holds no outcome of (scored by the reference).
    pub unlogged_share: f64,
    /// Models it routed to at least once.
    pub models_routed: usize,
}

/// `eval --log`'s report on one log.
#[derive(Debug, Clone, Serialize)]
pub struct LogReport {
    /// The log.
    pub file: String,
    /// Prompts with an outcome of a priced model.
    pub prompts: usize,
    /// Their outcomes.
    pub observations: usize,
    /// Share of those outcomes that carried a logged propensity.
    pub logged_propensity_share: f64,
    /// The cost weight routed at.
    pub cost_weight: f64,
    /// The log's own outcomes (the logging policy), on-policy means of the first outcome per prompt.
    pub logged: PolicyValue,
    /// Each head.
    pub heads: Vec<PolicyValue>,
}

/// Estimates each of `heads` on `logs` (read from `file`) at `cost_weight`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_log(
    file: &Path,
    logs: &RoutingLogs,
    heads: &[&Head],
    encoder: &Encoder,
    catalog: &Catalog,
    cost_weight: f64,
    out_of_domain_p: f64,
    cost_scale: f64,
    embedding_cache: Option<&Path>,
    quiet: bool,
) -> Result<LogReport, EvalError> {
    let name = file.display().to_string();
    let data_err = |message: String| EvalError::Data { file: name.clone(), message };
    // Columns: the log's priced models, then any priced model a head predicts that the log lacks.
    let mut cols: Vec<String> = logs.models.iter().filter(|m| catalog.get(m).is_some()).cloned().collect();
    let logged_cols = cols.len();
    for h in heads {
        for m in h.models() {
            if catalog.get(m).is_some() && !cols.contains(m) {
                cols.push(m.clone());
            }
        }
    }
    let col_of: HashMap<&str, usize> = cols.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let log_col: Vec<Option<usize>> = logs.models.iter().map(|m| col_of.get(m.as_str()).copied().filter(|&c| c < logged_cols)).collect();
    let mut has = vec![false; logs.prompts.len()];
    for o in logs.observations.iter().filter(|o| log_col[o.model].is_some()) {
        has[o.prompt] = true;
    }
    let rows: Vec<usize> = (0..logs.prompts.len()).filter(|&p| has[p]).collect();
    if rows.len() < super::MIN_EVAL_PROMPTS || logged_cols == 0 {
        return Err(data_err(format!(
            "{} prompts have an outcome of a catalog model ({} priced models in the log); eval --log needs >= {}",
            rows.len(),
            logged_cols,
            super::MIN_EVAL_PROMPTS
        )));
    }
    let row_of: HashMap<usize, usize> = rows.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    let (n, k) = (rows.len(), cols.len());
    let texts: Vec<&str> = rows.iter().map(|&p| logs.prompts[p].text.as_str()).collect();
    let x = match embedding_cache {
        Some(dir) => embed_prompts_cached(encoder, &texts, Some(dir), quiet).map(|(x, _)| x),
        None => embed_prompts(encoder, &texts, quiet),
    }?;
    let input_tokens: Vec<u32> = texts.iter().map(|t| encoder.count_tokens(t).map(|c| c + TOKENS_PER_MESSAGE)).collect::<Result<_, _>>()?;
    let price = |c: usize, r: usize, t: f64| catalog.get(&cols[c]).map_or(0.0, |m| m.cost_usd(input_tokens[r], t));

    let (mut quality, mut tokens, mut mask) = (Array2::<f32>::zeros((n, k)), Array2::<f32>::zeros((n, k)), Array2::<f32>::zeros((n, k)));
    let mut inv = Array2::<f64>::zeros((n, k));
    let (mut observations, mut with_propensity) = (0usize, 0usize);
    let mut first: Vec<Option<(usize, f64, f64)>> = vec![None; n];
    for o in &logs.observations {
        let (Some(&r), Some(c)) = (row_of.get(&o.prompt), log_col[o.model]) else { continue };
        quality[[r, c]] = o.score;
        tokens[[r, c]] = o.output_tokens as f32;
        mask[[r, c]] = 1.0;
        observations += 1;
        if let Some(p) = o.propensity {
            inv[[r, c]] = (1.0 / f64::from(p)).min(MAX_INVERSE_PROPENSITY);
            with_propensity += 1;
        }
        first[r].get_or_insert((c, f64::from(o.score), price(c, r, f64::from(o.output_tokens))));
    }
    for c in 0..logged_cols {
        let share = mask.column(c).sum() as f64 / n as f64;
        for r in 0..n {
            if mask[[r, c]] > 0.0 && inv[[r, c]] == 0.0 {
                inv[[r, c]] = (1.0 / share.max(1e-9)).min(MAX_INVERSE_PROPENSITY);
            }
        }
    }
    // References, cross-fitted over 5 folds of the prompts.
    let fold = crate::folds(n, 5, 0x0FF);
    let xn = crate::knn::normalised(x.view());
    let ones = mask.clone();
    let cv = crate::knn::CrossValidation { x: xn.view(), values: quality.view(), mask: mask.view(), fold: &fold, n_folds: 5 };
    let ref_q = cv.grid_guarded(ones.view(), &[100], &[50.0]).remove(0).1;
    let mut ref_t = Array2::<f32>::zeros((n, k));
    for f in 0..5 {
        let fit: Vec<usize> = (0..n).filter(|&r| fold[r] != f).collect();
        let mt = crate::knn::column_means(tokens.select(Axis(0), &fit).view(), mask.select(Axis(0), &fit).view());
        let pooled = mt.iter().take(logged_cols).copied().filter(|&v| v > 0.0).sum::<f32>() / logged_cols.max(1) as f32;
        for r in (0..n).filter(|&r| fold[r] == f) {
            for c in 0..k {
                ref_t[[r, c]] = if mt[c] > 0.0 { mt[c] } else { pooled };
            }
        }
    }
    let pooled_q = quality.sum() / mask.sum().max(1.0);
    let reference_quality = Array2::from_shape_fn((n, k), |(r, c)| f64::from(if c < logged_cols { ref_q[[r, c]] } else { pooled_q }));
    let reference_cost = Array2::from_shape_fn((n, k), |(r, c)| price(c, r, f64::from(ref_t[[r, c]])));
    let cost = Array2::from_shape_fn((n, k), |(r, c)| price(c, r, f64::from(tokens[[r, c]])));
    let quality64 = quality.mapv(f64::from);
    let lq =
        Logged { reward: quality64.view(), observed: mask.view(), inverse_propensity: inv.view(), reference: reference_quality.view() };
    let lc = Logged { reward: cost.view(), observed: mask.view(), inverse_propensity: inv.view(), reference: reference_cost.view() };
    let all: Vec<usize> = (0..n).collect();

    let mut values = Vec::new();
    for head in heads {
        let out = head.predict(x.view())?;
        let hm = head.models().len();
        let mut choice = vec![0usize; n];
        for r in 0..n {
            let chance = head.domain_chance(
                out.support.as_deref().map(|s| &s[r * hm..(r + 1) * hm]),
                out.family_support.as_deref().map(|s| &s[r * hm..(r + 1) * hm]),
            );
            let candidates: Vec<(usize, usize)> =
                head.models().iter().enumerate().filter_map(|(h, m)| col_of.get(m.as_str()).map(|&c| (h, c))).collect();
            let allowed: Vec<&(usize, usize)> = candidates.iter().filter(|(h, _)| chance[*h] >= out_of_domain_p).collect();
            let pool: Vec<&(usize, usize)> = if allowed.is_empty() { candidates.iter().collect() } else { allowed };
            let mut best = (f64::NEG_INFINITY, 0);
            for &&(h, c) in &pool {
                let u = utility(
                    f64::from(out.quality[r * hm + h]).clamp(0.0, 1.0),
                    price(c, r, f64::from(out.output_tokens[r * hm + h]).max(1.0)),
                    cost_weight,
                    cost_scale,
                );
                if u > best.0 {
                    best = (u, c);
                }
            }
            choice[r] = best.1;
        }
        let mut routed: Vec<usize> = choice.clone();
        routed.sort_unstable();
        routed.dedup();
        values.push(PolicyValue {
            policy: head.manifest().head_id.clone(),
            quality: estimate(&lq, &all, &choice),
            cost: estimate(&lc, &all, &choice),
            unlogged_share: choice.iter().filter(|&&c| c >= logged_cols).count() as f64 / n as f64,
            models_routed: routed.len(),
        });
    }
    // The logging policy: its own (first) outcome per prompt, on-policy.
    let on = |v: Vec<f64>| {
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let se = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64 / v.len().max(1) as f64).sqrt();
        let f = crate::offpolicy::Figure { value: m, standard_error: se };
        Estimate { ips: f, snips: f, dr: f, effective_sample_size: v.len() as f64, matched: v.len(), prompts: v.len() }
    };
    let logged_models = first.iter().flatten().map(|f| f.0).collect::<std::collections::BTreeSet<_>>().len();
    let logged = PolicyValue {
        policy: "logged".into(),
        quality: on(first.iter().flatten().map(|f| f.1).collect()),
        cost: on(first.iter().flatten().map(|f| f.2).collect()),
        unlogged_share: 0.0,
        models_routed: logged_models,
    };
    Ok(LogReport {
        file: name,
        prompts: n,
        observations,
        logged_propensity_share: with_propensity as f64 / observations.max(1) as f64,
        cost_weight,
        logged,
        heads: values,
    })
}
