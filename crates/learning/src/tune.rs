//! `pointsman tune`: choose the cost weight that meets an operator's target on validation logs,
//! from the router sweeps `pointsman eval` measures.
//!
//! Targets (any combination; all must hold):
//! - `max_avg_cost`: mean cost per request at most this many USD;
//! - `min_quality_share`: mean quality at least this share of the best single model's;
//! - `max_top_share`: at most this share of requests to the most expensive model.
//!
//! With a quality floor the cheapest weight that meets everything wins (lowest cost with quality
//! at least Y); otherwise the highest-quality one (highest quality within the budget). Several
//! log files are pooled, weighted by their prompt counts, as the traffic they stand for.
//!
//! Two guards against a weight that misses its target live (review finding 9):
//! - **the set Route uses**: live routing takes the argmax over every catalog model the head
//!   predicts, not only the models a file scores; a weight at which live routing would send more
//!   than [`MAX_OUTSIDE_SHARE`] (`--max-outside-share`) of the file's prompts to a model the file
//!   does not score is not a candidate (its cost and quality are unknown here), and when that rules out every weight
//!   that would meet the target the error names those models;
//! - **a margin**: the budget must hold with `margin` to spare (cost at most `(1 - margin)` of
//!   the budget, quality at least the floor plus `margin` of the gap to 100% of the best single
//!   model's), since the chosen point is the best of many noisy ones on a few hundred prompts.
use serde::Serialize;

use super::eval::DatasetReport;

/// What the operator asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Target {
    /// Mean cost per request at most this (USD).
    pub max_avg_cost: Option<f64>,
    /// Mean quality at least this share (0..=1.5) of the best single model's.
    pub min_quality_share: Option<f64>,
    /// At most this share of requests to the most expensive model.
    pub max_top_share: Option<f64>,
    /// Share of the budget (and of the quality floor's distance to the best single model) kept
    /// in reserve; 0 for none.
    pub margin: f64,
    /// Largest share of prompts live routing may send to models the data does not score at a
    /// chosen weight ([`MAX_OUTSIDE_SHARE`] by default; 1 accepts any, knowingly).
    pub max_outside_share: f64,
}

/// The default largest share of prompts live routing may send outside the scored models at a
/// chosen weight.
pub const MAX_OUTSIDE_SHARE: f64 = 0.01;
/// The default margin.
pub const DEFAULT_MARGIN: f64 = 0.1;

/// The chosen weight and what it is expected to deliver on the validation prompts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Choice {
    /// Cost weight for the profile.
    pub cost_weight: f64,
    /// Expected mean quality.
    pub quality: f64,
    /// Expected mean cost per request, USD.
    pub cost: f64,
    /// Expected share of requests to the most expensive model.
    pub top_share: f64,
    /// The best single model's pooled quality, for comparison.
    pub best_single_quality: f64,
    /// The best single model's pooled cost.
    pub best_single_cost: f64,
    /// Prompts the figures are measured on.
    pub prompts: usize,
    /// Share of those prompts live routing sends to models the files do not score at this weight.
    pub outside_share: f64,
}

/// No weight meets the target.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no cost weight meets the target: {0}")]
pub struct Unreachable(pub String);

/// Pools the reports' router sweeps and picks the weight for `target`.
pub fn choose(reports: &[DatasetReport], target: Target) -> Result<Choice, Unreachable> {
    let total: usize = reports.iter().map(|r| r.prompts).sum();
    if reports.is_empty() || total == 0 {
        return Err(Unreachable("no evaluated prompts".into()));
    }
    let share = |r: &DatasetReport| r.prompts as f64 / total as f64;
    let k = reports[0].router.weights.len();
    let pooled = |f: &dyn Fn(&DatasetReport, usize) -> f64, i: usize| reports.iter().map(|r| share(r) * f(r, i)).sum::<f64>();
    let best = |r: &DatasetReport| r.single_models.iter().find(|s| s.model == r.best_single).map_or((0.0, 0.0), |s| (s.quality, s.cost));
    let best_q: f64 = reports.iter().map(|r| share(r) * best(r).0).sum();
    let best_c: f64 = reports.iter().map(|r| share(r) * best(r).1).sum();
    let candidates: Vec<Choice> = (0..k)
        .map(|i| Choice {
            cost_weight: reports[0].router.weights[i],
            quality: pooled(&|r, i| r.router.quality[i], i),
            cost: pooled(&|r, i| r.router.cost[i], i),
            top_share: pooled(&|r, i| r.router.top_share[i], i),
            best_single_quality: best_q,
            best_single_cost: best_c,
            prompts: total,
            outside_share: pooled(&|r, i| r.outside_share.get(i).copied().unwrap_or(0.0), i),
        })
        .collect();
    let m = target.margin.clamp(0.0, 0.9);
    let meets = |c: &&Choice| {
        target.max_avg_cost.is_none_or(|x| c.cost <= x * (1.0 - m))
            && target.min_quality_share.is_none_or(|y| c.quality >= (y + m * (1.0 - y).max(0.0)) * best_q)
            && target.max_top_share.is_none_or(|z| c.top_share <= z)
    };
    let limit = if target.max_outside_share > 0.0 { target.max_outside_share } else { MAX_OUTSIDE_SHARE };
    let covered = |c: &&Choice| c.outside_share <= limit;
    let feasible: Vec<&Choice> = candidates.iter().filter(meets).filter(covered).collect();
    if feasible.is_empty() && candidates.iter().any(|c| meets(&c)) {
        let mut outside: Vec<&str> = reports.iter().flat_map(|r| r.outside_models.iter().map(String::as_str)).collect();
        outside.sort_unstable();
        outside.dedup();
        return Err(Unreachable(format!(
            "every weight that meets it would send more than {:.0}% of the prompts to catalog models the head predicts but the data does not score ({}); Route uses every catalog model the head covers, so tune on data that covers them, remove them from the catalog, or accept a larger unscored share with --max-outside-share",
            limit * 100.0,
            outside.join(", ")
        )));
    }
    let pick = if target.min_quality_share.is_some() {
        feasible.into_iter().min_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)))
    } else {
        feasible.into_iter().max_by(|a, b| a.quality.total_cmp(&b.quality).then(b.cost.total_cmp(&a.cost)))
    };
    pick.cloned().ok_or_else(|| {
        let cheapest = candidates.iter().map(|c| c.cost).fold(f64::INFINITY, f64::min);
        let best = candidates.iter().map(|c| c.quality).fold(0.0, f64::max);
        Unreachable(format!(
            "the router's sweep spans mean cost ${cheapest:.6} and up, quality up to {best:.3} ({:.1}% of the best single model's {best_q:.3})",
            best / best_q.max(1e-12) * 100.0
        ))
    })
}

/// Sets `name = weight` in the `[routing.profiles]` table of a TOML config text, keeping every
/// other line (and comment) as it is; adds the table if it is missing.
pub fn set_profile(config_text: &str, name: &str, weight: f64) -> String {
    let line = format!("{name} = {weight}");
    let mut out: Vec<String> = Vec::new();
    let (mut in_profiles, mut done) = (false, false);
    for l in config_text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            if in_profiles && !done {
                out.push(line.clone());
                done = true;
            }
            in_profiles = t == "[routing.profiles]";
        } else if in_profiles && !done && t.split('=').next().map(str::trim) == Some(name) {
            out.push(line.clone());
            done = true;
            continue;
        }
        out.push(l.to_string());
    }
    if in_profiles && !done {
        out.push(line.clone());
        done = true;
    }
    if !done {
        out.push(String::new());
        out.push("[routing.profiles]".into());
        out.push(line);
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_profile_replaces_inserts_and_keeps_comments() {
        let text = "[routing]\n# keep me\n[routing.profiles]\nquality = 0.0\nbalanced = 0.5\n\n[[models]]\nid = \"a\"\n";
        let t = set_profile(text, "balanced", 0.25);
        assert!(t.contains("balanced = 0.25") && !t.contains("balanced = 0.5") && t.contains("# keep me"));
        let t = set_profile(text, "budget", 0.9);
        let at = t.find("budget = 0.9").unwrap();
        assert!(at < t.find("[[models]]").unwrap() && at > t.find("[routing.profiles]").unwrap());
        let t = set_profile("[server]\n", "x", 0.1);
        assert!(t.ends_with("[routing.profiles]\nx = 0.1\n"));
    }
}
