//! The routing policy: from per-model predictions to a ranked, constrained list.
//!
//! Pure and synchronous (no I/O, no protobuf), so every rule here is unit-tested directly.
//!
//! Utility. For a model with predicted quality `q` in [0,1] and predicted cost `c` in USD,
//! `utility = (1 - w) * q - w * c / cost_scale_usd`, where `w` is the cost weight and
//! `cost_scale_usd` a fixed price of one unit of quality (config `routing.cost_scale_usd`,
//! $0.01 by default): at `w = 0.5`, 0.1 more quality is worth $0.001 more per request. With
//! `w = 0` the ranking is by quality alone; with `w = 1` by cost alone (the cheapest model that
//! passes the constraints, `min_quality` included). Cost enters linearly because that is what a
//! budget is: maximising `quality - lambda * cost` prompt by prompt maximises mean quality for
//! the mean cost it spends (the Lagrangian of "best quality under an average budget"), so a sweep
//! of `w` traces the router's whole quality-cost frontier. (A log-cost utility was tried first:
//! its sweep cannot reach the points between models that a budget-optimal policy uses, and on
//! the held-out shared data it lost 5-19 points of the single-model-to-oracle gap.) The scale
//! does not depend on which other models a request allows, so adding a candidate never reorders
//! the others.
//!
//! Two kinds of rule. The **hard** rules are coverage by the head (a model without a prediction
//! cannot be ranked) and the request's own constraints: model allow/deny lists, provider
//! allow/deny lists, context window, `min_quality`, `max_cost_usd`. They are applied in that
//! order, a model's exclusion reason is the first one it fails, and when one leaves no model the
//! request is refused with an error naming that rule: only the caller's constraints (or a head
//! that covers nothing) can refuse a request.
//!
//! The **soft** rules are the router's own judgement, applied after the hard ones: the head's
//! domain (training evidence near the prompt, see `learning::Support`), then live health (see
//! `health`). A soft rule never empties the list: when it would leave no model, the models it
//! would have left out stay, ranked by utility, each carrying the rule in `Scored::kept_despite`
//! so `explain` says why it was doubted and kept. A model whose circuit is open (cooling down
//! after repeated failures) is left out with reason UNHEALTHY unless only cooling-down models
//! remain; routing to a model that may be failing, or whose prediction is an extrapolation,
//! beats refusing to route. Degraded models stay eligible but rank behind every healthy (or
//! probing) one; within each tier the order is by utility.
//!
//! Fallbacks are the next best by utility, except that when none of them is from a provider
//! other than the primary's and such a model is eligible, the best of those takes the last slot:
//! one provider's outage must not take out the whole list.
use crate::{
    catalog::{Catalog, CatalogModel},
    health::{Snapshot, State},
};

/// Default price of one unit of quality, USD per request (see the module docs).
pub const DEFAULT_COST_SCALE_USD: f64 = 0.01;

/// What the head predicts for one model on one prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Predicted quality in [0,1].
    pub quality: f64,
    /// Predicted output tokens (>= 1).
    pub output_tokens: f64,
    /// Chance that the head's lack of evidence for this model near the prompt is a fluke (see
    /// `Head::domain_chance`); 1 when it has evidence or does not measure it.
    pub domain_chance: f64,
}

/// The hard constraints of one request, already validated against the catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    /// Upper bound on predicted cost in USD.
    pub max_cost_usd: Option<f64>,
    /// Lower bound on predicted quality.
    pub min_quality: Option<f64>,
    /// When non-empty, the only models allowed.
    pub allowed_models: Vec<String>,
    /// Models never chosen.
    pub denied_models: Vec<String>,
    /// When non-empty, the only providers allowed.
    pub allowed_providers: Vec<String>,
    /// Providers never chosen.
    pub denied_providers: Vec<String>,
    /// Fallbacks after the primary.
    pub max_fallbacks: usize,
    /// Models whose `domain_chance` is below this are out of the head's domain (0 disables).
    pub out_of_domain_p: f64,
    /// What the request needs beyond text (tools, images, audio, files). Recorded with the
    /// decision; no rule filters on it yet (the catalog does not list capabilities).
    pub requirements: crate::encoder::text::Requirements,
}

/// Server-wide scoring settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    /// Time to first token for models without their own figure, ms.
    pub ttft_ms: f64,
    /// Output tokens per second for models without their own figure.
    pub output_tokens_per_second: f64,
    /// Price of one unit of quality in the utility, USD per request.
    pub cost_scale_usd: f64,
}

/// Why a model was left out.
#[derive(Debug, Clone, PartialEq)]
pub enum Exclusion {
    /// The head has no output for this model.
    NotCovered,
    /// The head has output for this model but no training evidence near this prompt.
    OutOfDomain {
        /// The model's domain chance.
        chance: f64,
        /// The threshold.
        threshold: f64,
    },
    /// Denied by `denied_models` or absent from `allowed_models`.
    ModelNotAllowed,
    /// Denied by `denied_providers` or absent from `allowed_providers`.
    ProviderNotAllowed,
    /// The conversation does not fit the context window.
    ContextWindow {
        /// Input tokens of the conversation.
        input_tokens: u32,
        /// The model's window.
        context_tokens: u32,
    },
    /// Predicted quality under `min_quality`.
    MinQuality {
        /// Predicted quality.
        predicted: f64,
        /// The floor.
        floor: f64,
    },
    /// Predicted cost over `max_cost_usd`.
    Budget {
        /// Predicted cost.
        predicted: f64,
        /// The limit.
        limit: f64,
    },
    /// Cooling down after repeated failures reported by `Feedback` (circuit open).
    Unhealthy(Snapshot),
    /// Eligible but ranked after the last fallback.
    BelowCutoff,
}

impl Exclusion {
    /// The request field or rule that caused this exclusion.
    pub fn constraint(&self) -> &'static str {
        match self {
            Exclusion::NotCovered => "head coverage",
            Exclusion::OutOfDomain { .. } => "head domain",
            Exclusion::ModelNotAllowed => "allowed_models/denied_models",
            Exclusion::ProviderNotAllowed => "allowed_providers/denied_providers",
            Exclusion::ContextWindow { .. } => "context window",
            Exclusion::MinQuality { .. } => "min_quality",
            Exclusion::Budget { .. } => "max_cost_usd",
            Exclusion::Unhealthy(_) => "model health",
            Exclusion::BelowCutoff => "max_fallbacks",
        }
    }

    /// The reason in words, with its numbers.
    pub fn detail(&self) -> String {
        match self {
            Exclusion::NotCovered => "the routing head has no prediction for this model".into(),
            Exclusion::OutOfDomain { chance, threshold } => format!(
                "the head has too little evidence about this model on prompts like this one to trust its prediction: too few of its outcomes among the nearest training prompts of its log, or this prompt farther from that log's prompts than they are from each other (p = {chance:.2e} < {threshold})"
            ),
            Exclusion::ModelNotAllowed => "excluded by allowed_models/denied_models".into(),
            Exclusion::ProviderNotAllowed => "excluded by allowed_providers/denied_providers".into(),
            Exclusion::ContextWindow { input_tokens, context_tokens } => {
                format!("{input_tokens} input tokens do not fit a {context_tokens}-token context window")
            }
            Exclusion::MinQuality { predicted, floor } => {
                format!("predicted quality {predicted:.3} is below min_quality {floor}")
            }
            Exclusion::Budget { predicted, limit } => {
                format!("predicted cost ${predicted:.6} is above max_cost_usd ${limit}")
            }
            Exclusion::Unhealthy(h) => h.detail(),
            Exclusion::BelowCutoff => "eligible, but ranked after the last fallback".into(),
        }
    }
}

/// One catalog model as scored for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Index into the catalog.
    pub model: usize,
    /// The head's prediction, if it covers the model.
    pub prediction: Option<Prediction>,
    /// Predicted cost in USD (0 when not covered).
    pub cost_usd: f64,
    /// Predicted latency in ms (0 when not covered).
    pub latency_ms: f64,
    /// Utility (negative infinity when not covered).
    pub utility: f64,
    /// 1-based rank among eligible models, 0 when excluded.
    pub rank: usize,
    /// Why it is not in the answer, if it is not.
    pub exclusion: Option<Exclusion>,
    /// A soft rule (the head's domain) that this model fails but was not excluded by, because it
    /// would have left no model under the request's constraints.
    pub kept_despite: Option<Exclusion>,
    /// Its live health when ranked.
    pub health: Snapshot,
}

impl Scored {
    /// Health tier for ranking: 0 healthy or probing, 1 degraded, 2 cooling down (kept only
    /// when nothing else was eligible).
    pub fn health_tier(&self) -> u8 {
        match self.health.state {
            State::Healthy | State::Probing => 0,
            State::Degraded => 1,
            State::CoolingDown { .. } => 2,
        }
    }
}

/// No model survived the constraints.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no model satisfies the constraints: `{constraint}` left no candidate ({detail})")]
pub struct NoEligibleModel {
    /// The rule that emptied the list.
    pub constraint: &'static str,
    /// What the closest models missed by.
    pub detail: String,
}

/// The outcome: the chosen models in order, and every catalog model's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Indices into `scored`: primary first, then fallbacks.
    pub chosen: Vec<usize>,
    /// One entry per catalog model, in catalog order.
    pub scored: Vec<Scored>,
}

/// Utility of a model with quality `q` and cost `cost_usd` at cost weight `w`.
pub fn utility(q: f64, cost_usd: f64, w: f64, cost_scale_usd: f64) -> f64 {
    (1.0 - w) * q - w * cost_usd / cost_scale_usd
}

fn latency_ms(m: &CatalogModel, output_tokens: f64, d: Scoring) -> f64 {
    let ttft = m.ttft_ms.unwrap_or(d.ttft_ms);
    let tps = m.output_tokens_per_second.unwrap_or(d.output_tokens_per_second);
    ttft + output_tokens / tps * 1000.0
}

fn listed(list: &[String], id: &str) -> bool {
    list.iter().any(|x| x == id)
}

/// Ranks `catalog` for one request. `predictions[i]` and `health[i]` belong to
/// `catalog.models()[i]`; an empty `health` means every model is healthy.
#[allow(clippy::too_many_arguments)]
pub fn rank(
    catalog: &Catalog,
    predictions: &[Option<Prediction>],
    health: &[Snapshot],
    input_tokens: u32,
    cost_weight: f64,
    c: &Constraints,
    scoring: Scoring,
) -> Result<Ranking, NoEligibleModel> {
    let models = catalog.models();
    debug_assert_eq!(models.len(), predictions.len());
    let mut scored: Vec<Scored> = models
        .iter()
        .zip(predictions)
        .enumerate()
        .map(|(i, (m, p))| {
            let (cost_usd, latency_ms, utility) = match p {
                Some(p) => {
                    let cost = m.cost_usd(input_tokens, p.output_tokens);
                    (cost, latency_ms(m, p.output_tokens, scoring), utility(p.quality, cost, cost_weight, scoring.cost_scale_usd))
                }
                None => (0.0, 0.0, f64::NEG_INFINITY),
            };
            let health = health.get(i).copied().unwrap_or(Snapshot::HEALTHY);
            Scored { model: i, prediction: *p, cost_usd, latency_ms, utility, rank: 0, exclusion: None, kept_despite: None, health }
        })
        .collect();

    // The hard rules, in the order their reasons are reported.
    type Rule<'a> = Box<dyn Fn(&CatalogModel, &Scored) -> Option<Exclusion> + 'a>;
    let rules: Vec<Rule> = vec![
        Box::new(|_, s| s.prediction.is_none().then_some(Exclusion::NotCovered)),
        Box::new(|m, _| {
            let denied = listed(&c.denied_models, &m.id) || (!c.allowed_models.is_empty() && !listed(&c.allowed_models, &m.id));
            denied.then_some(Exclusion::ModelNotAllowed)
        }),
        Box::new(|m, _| {
            let denied =
                listed(&c.denied_providers, &m.provider) || (!c.allowed_providers.is_empty() && !listed(&c.allowed_providers, &m.provider));
            denied.then_some(Exclusion::ProviderNotAllowed)
        }),
        Box::new(|m, _| {
            (input_tokens >= m.context_tokens).then_some(Exclusion::ContextWindow { input_tokens, context_tokens: m.context_tokens })
        }),
        Box::new(|_, s| {
            let (floor, q) = (c.min_quality?, s.prediction?.quality);
            (q < floor).then_some(Exclusion::MinQuality { predicted: q, floor })
        }),
        Box::new(|_, s| {
            let limit = c.max_cost_usd?;
            (s.cost_usd > limit).then_some(Exclusion::Budget { predicted: s.cost_usd, limit })
        }),
    ];
    for rule in &rules {
        let before = scored.iter().filter(|s| s.exclusion.is_none()).count();
        let mut closest: Option<Exclusion> = None;
        for s in scored.iter_mut().filter(|s| s.exclusion.is_none()) {
            if let Some(e) = rule(&models[s.model], s) {
                closest = Some(match (closest.take(), &e) {
                    (Some(Exclusion::Budget { predicted: a, limit }), Exclusion::Budget { predicted: b, .. }) => {
                        Exclusion::Budget { predicted: a.min(*b), limit }
                    }
                    (Some(Exclusion::MinQuality { predicted: a, floor }), Exclusion::MinQuality { predicted: b, .. }) => {
                        Exclusion::MinQuality { predicted: a.max(*b), floor }
                    }
                    (
                        Some(Exclusion::ContextWindow { input_tokens, context_tokens: a }),
                        Exclusion::ContextWindow { context_tokens: b, .. },
                    ) => Exclusion::ContextWindow { input_tokens, context_tokens: a.max(*b) },
                    (Some(prev), _) => prev,
                    (None, e) => e.clone(),
                });
                s.exclusion = Some(e);
            }
        }
        if before > 0 && scored.iter().all(|s| s.exclusion.is_some()) {
            let closest = closest.expect("a rule emptied a non-empty list, so it excluded something. This is a bug.");
            let detail = match &closest {
                Exclusion::Budget { .. } => format!("the cheapest remaining model: {}", closest.detail()),
                Exclusion::MinQuality { .. } => format!("the best remaining model: {}", closest.detail()),
                Exclusion::ContextWindow { .. } => format!("the largest remaining window: {}", closest.detail()),
                other => format!("{before} remaining model(s) {}", other.detail().trim_start_matches("the ")),
            };
            return Err(NoEligibleModel { constraint: closest.constraint(), detail });
        }
    }

    // Soft rule: the head's domain. It demotes instead of excluding when it would empty the list.
    let out_of_domain = |s: &Scored| {
        let p = s.prediction?.domain_chance;
        (p < c.out_of_domain_p).then_some(Exclusion::OutOfDomain { chance: p, threshold: c.out_of_domain_p })
    };
    let in_domain = scored.iter().any(|s| s.exclusion.is_none() && out_of_domain(s).is_none());
    for s in scored.iter_mut().filter(|s| s.exclusion.is_none()) {
        match (out_of_domain(s), in_domain) {
            (Some(e), true) => s.exclusion = Some(e),
            (Some(e), false) => s.kept_despite = Some(e),
            (None, _) => {}
        }
    }

    // Soft rule: live health. Cooling-down models stay only when nothing else is left.
    let cooling = |s: &Scored| matches!(s.health.state, State::CoolingDown { .. });
    if scored.iter().any(|s| s.exclusion.is_none() && !cooling(s)) {
        for s in scored.iter_mut().filter(|s| s.exclusion.is_none() && cooling(s)) {
            s.exclusion = Some(Exclusion::Unhealthy(s.health));
        }
    }
    let mut eligible: Vec<usize> = (0..scored.len()).filter(|&i| scored[i].exclusion.is_none()).collect();
    eligible.sort_by(|&a, &b| {
        scored[a]
            .health_tier()
            .cmp(&scored[b].health_tier())
            .then_with(|| scored[b].utility.total_cmp(&scored[a].utility))
            .then_with(|| models[scored[a].model].id.cmp(&models[scored[b].model].id))
    });
    for (r, &i) in eligible.iter().enumerate() {
        scored[i].rank = r + 1;
    }
    let mut chosen: Vec<usize> = eligible.iter().copied().take(1 + c.max_fallbacks).collect();
    let primary_provider = &models[scored[chosen[0]].model].provider;
    let diverse = |i: &usize| &models[scored[*i].model].provider != primary_provider;
    if chosen.len() > 1 && !chosen[1..].iter().any(diverse) {
        if let Some(&other) = eligible.iter().find(|i| diverse(i)) {
            *chosen.last_mut().expect("chosen has at least two entries. This is a bug.") = other;
        }
    }
    for &i in &eligible {
        if !chosen.contains(&i) {
            scored[i].exclusion = Some(Exclusion::BelowCutoff);
        }
    }
    Ok(Ranking { chosen, scored })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, provider: &str, price: f64, ctx: u32) -> CatalogModel {
        CatalogModel {
            id: id.into(),
            provider: provider.into(),
            input_usd_per_mtok: price,
            output_usd_per_mtok: price * 4.0,
            context_tokens: ctx,
            ttft_ms: None,
            output_tokens_per_second: None,
        }
    }

    fn catalog() -> Catalog {
        Catalog::new(vec![
            model("big", "a", 10.0, 128_000),
            model("mid", "a", 1.0, 128_000),
            model("small", "a", 0.1, 8_000),
            model("other", "b", 0.5, 32_000),
            model("uncovered", "c", 0.01, 128_000),
        ])
        .unwrap()
    }

    fn preds() -> Vec<Option<Prediction>> {
        [0.9, 0.8, 0.5, 0.6]
            .iter()
            .map(|&q| Some(Prediction { quality: q, output_tokens: 200.0, domain_chance: 1.0 }))
            .chain([None])
            .collect()
    }

    const LAT: Scoring = Scoring { ttft_ms: 400.0, output_tokens_per_second: 50.0, cost_scale_usd: DEFAULT_COST_SCALE_USD };

    fn ids(cat: &Catalog, r: &Ranking) -> Vec<String> {
        r.chosen.iter().map(|&i| cat.models()[r.scored[i].model].id.clone()).collect()
    }

    #[test]
    fn weight_zero_ranks_by_quality_and_one_by_cost() {
        let cat = catalog();
        let c = Constraints { max_fallbacks: 3, ..Default::default() };
        let r0 = rank(&cat, &preds(), &[], 100, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r0)[0], "big");
        let r1 = rank(&cat, &preds(), &[], 100, 1.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r1)[0], "small");
        let r1q = rank(&cat, &preds(), &[], 100, 1.0, &Constraints { min_quality: Some(0.55), ..c.clone() }, LAT).unwrap();
        assert_eq!(ids(&cat, &r1q)[0], "other");
    }

    #[test]
    fn fallbacks_span_providers() {
        let cat = catalog();
        let c = Constraints { max_fallbacks: 2, ..Default::default() };
        let r = rank(&cat, &preds(), &[], 100, 0.0, &c, LAT).unwrap();
        // By quality: big, mid, other(0.6), small(0.5): "other" is already third.
        assert_eq!(ids(&cat, &r), ["big", "mid", "other"]);
        let c = Constraints { max_fallbacks: 1, ..Default::default() };
        let r = rank(&cat, &preds(), &[], 100, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["big", "other"]);
        let none = Constraints { max_fallbacks: 0, ..Default::default() };
        assert_eq!(ids(&cat, &rank(&cat, &preds(), &[], 100, 0.0, &none, LAT).unwrap()), ["big"]);
    }

    #[test]
    fn constraints_exclude_with_reasons() {
        let cat = catalog();
        let c =
            Constraints { denied_models: vec!["big".into()], denied_providers: vec!["b".into()], max_fallbacks: 3, ..Default::default() };
        let r = rank(&cat, &preds(), &[], 10_000, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["mid"]);
        assert_eq!(r.scored[0].exclusion, Some(Exclusion::ModelNotAllowed));
        assert_eq!(r.scored[3].exclusion, Some(Exclusion::ProviderNotAllowed));
        assert_eq!(r.scored[4].exclusion, Some(Exclusion::NotCovered));
        assert!(matches!(r.scored[2].exclusion, Some(Exclusion::ContextWindow { .. })));
    }

    #[test]
    fn emptying_constraint_is_named() {
        let cat = catalog();
        let c = Constraints { max_cost_usd: Some(1e-9), max_fallbacks: 3, ..Default::default() };
        let err = rank(&cat, &preds(), &[], 100, 0.5, &c, LAT).unwrap_err();
        assert_eq!(err.constraint, "max_cost_usd");
        assert!(err.detail.contains("cheapest"), "{}", err.detail);
        let c = Constraints { allowed_models: vec!["uncovered".into()], max_fallbacks: 3, ..Default::default() };
        assert_eq!(rank(&cat, &preds(), &[], 100, 0.5, &c, LAT).unwrap_err().constraint, "allowed_models/denied_models");
        let c = Constraints { max_fallbacks: 3, ..Default::default() };
        assert_eq!(rank(&cat, &preds(), &[], 500_000, 0.5, &c, LAT).unwrap_err().constraint, "context window");
    }

    #[test]
    fn the_domain_rule_demotes_instead_of_refusing() {
        let cat = catalog();
        let mut p = preds();
        // "big" and "mid" have no evidence near this prompt.
        for j in [0, 1] {
            p[j].as_mut().unwrap().domain_chance = 1e-6;
        }
        let c = Constraints { out_of_domain_p: 0.01, max_fallbacks: 3, ..Default::default() };
        let r = rank(&cat, &p, &[], 100, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["other", "small"]);
        assert!(matches!(r.scored[0].exclusion, Some(Exclusion::OutOfDomain { .. })));
        // Only out-of-domain models allowed: routed anyway, best first, each marked.
        let only = Constraints { allowed_models: vec!["big".into(), "mid".into()], ..c.clone() };
        let r = rank(&cat, &p, &[], 100, 0.0, &only, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["big", "mid"]);
        assert!(matches!(r.scored[0].kept_despite, Some(Exclusion::OutOfDomain { .. })));
        assert_eq!(r.scored[0].exclusion, None);
        // A hard rule that empties the list is named, even when the domain rule would have too.
        let cheap = Constraints { max_cost_usd: Some(1e-9), ..only.clone() };
        assert_eq!(rank(&cat, &p, &[], 100, 0.0, &cheap, LAT).unwrap_err().constraint, "max_cost_usd");
        // A model both out of domain and denied reports the caller's rule.
        let deny = Constraints { denied_models: vec!["big".into()], ..c.clone() };
        assert_eq!(rank(&cat, &p, &[], 100, 0.0, &deny, LAT).unwrap().scored[0].exclusion, Some(Exclusion::ModelNotAllowed));
        // Out of domain and cooling down: health is judged among the kept models as usual.
        let mut health = vec![Snapshot::HEALTHY; 5];
        health[0].state = State::CoolingDown { remaining: std::time::Duration::from_secs(5) };
        let r = rank(&cat, &p, &health, 100, 0.0, &only, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["mid"]);
        assert!(matches!(r.scored[0].exclusion, Some(Exclusion::Unhealthy(_))));
    }

    #[test]
    fn utility_is_monotone() {
        let s = DEFAULT_COST_SCALE_USD;
        assert!(utility(0.9, 0.01, 0.5, s) > utility(0.8, 0.01, 0.5, s));
        assert!(utility(0.8, 0.001, 0.5, s) > utility(0.8, 0.01, 0.5, s));
        // At w = 0.5, 0.1 quality is worth $0.001 at the default scale.
        assert!((utility(0.9, 0.002, 0.5, s) - utility(0.8, 0.001, 0.5, s)).abs() < 1e-12);
        assert!(utility(0.0, 0.0, 1.0, s).is_finite());
    }

    #[test]
    fn unhealthy_models_are_left_out_and_degraded_ones_ranked_behind() {
        use std::time::Duration;
        let cat = catalog();
        let c = Constraints { max_fallbacks: 3, ..Default::default() };
        let mut health = vec![Snapshot::HEALTHY; 5];
        health[0].state = State::CoolingDown { remaining: Duration::from_secs(5) };
        health[1].state = State::Degraded;
        let r = rank(&cat, &preds(), &health, 100, 0.0, &c, LAT).unwrap();
        // big is cooling down; mid (degraded) drops behind the healthy other and small.
        assert_eq!(ids(&cat, &r), ["other", "small", "mid"]);
        assert!(matches!(r.scored[0].exclusion, Some(Exclusion::Unhealthy(_))));
        assert_eq!(r.scored[0].exclusion.as_ref().unwrap().constraint(), "model health");
        // Probing models rank normally.
        health[0].state = State::Probing;
        assert_eq!(ids(&cat, &rank(&cat, &preds(), &health, 100, 0.0, &c, LAT).unwrap())[0], "big");
        // When only cooling-down models pass the request's constraints, they stay (fail open).
        health[0].state = State::CoolingDown { remaining: Duration::from_secs(5) };
        let only_big = Constraints { allowed_models: vec!["big".into()], ..c.clone() };
        let r = rank(&cat, &preds(), &health, 100, 0.0, &only_big, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["big"]);
        assert_eq!(r.scored[0].health_tier(), 2);
    }
}
