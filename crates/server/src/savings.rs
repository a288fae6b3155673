//! What routing saves against a baseline: one model every request could have gone to instead.
//!
//! **The baseline** is `[savings] baseline_model` when the operator names one; otherwise the
//! *best single model*: the model the router itself would choose most often for quality alone.
//! [`PROBE_PROMPTS`], a fixed set of varied prompts, are routed through the engine once per
//! (re)load at cost weight 0; on each, the eligible priced model with the highest predicted
//! quality wins the probe (eligible: left out by no rule, the head's domain included). The
//! baseline is the model that wins the most probes; ties go to the higher mean predicted
//! quality over the probes, then to catalog order ([`Probes::best`]). It is the model a team
//! would send everything to without a router: the one it would pick for quality. (Choosing it
//! by utility instead would pick a cheap model the router already sends most requests to, and
//! show next to no savings.)
//!
//! Why wins and not the mean predicted quality over every probe: a head's predictions for a
//! model far from its training prompts (out of its domain) are an extrapolation, and a head
//! trained on several benchmarks scores their models on different scales. A model the router
//! never serves on a prompt (because the head has no evidence for it there) cannot be the model
//! a team would have called instead. A probe on which no model is in the head's domain casts
//! no vote.
//!
//! **Per decision** (the Route response and the decision log's `baseline_*` columns): the
//! baseline's cost at *the same tokens* as the primary's prediction (the request's input tokens
//! and the primary's predicted output tokens) at the baseline's list price (its first
//! endpoint), its predicted quality on the prompt, and the predicted saving: that cost minus the
//! primary's predicted cost. Pricing the same tokens keeps the saving about price, not about a
//! model's verbosity.
//!
//! **Per outcome** (a Feedback report with usage): the realised cost (the reported `cost_usd`,
//! else the reported model's list price at the reported tokens) and the baseline's list price at
//! the same reported tokens; their difference is the realised saving.
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    catalog::Catalog,
    engine::{Decision, Engine, RouteError, RouteQuery, Tradeoff},
    policy::Exclusion,
};

/// `[savings]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SavingsConfig {
    /// The model savings are measured against (a catalog id). Unset: the best single model, the
    /// priced catalog model the router chooses most often for quality alone over the probe
    /// prompts (ties: the higher mean predicted quality).
    pub baseline_model: Option<String>,
}

impl SavingsConfig {
    /// Checks that a named baseline is a catalog model; the error names the key and the value.
    pub fn validate(&self, catalog: &Catalog) -> Result<(), crate::config_error::ConfigError> {
        match &self.baseline_model {
            Some(id) if catalog.get(id).is_none() => Err(crate::config_error::invalid(
                "savings.baseline_model",
                "the id of a model in the catalog ([[models]])",
                format!("{id:?}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Varied prompts (code, maths, writing, facts, advice, chit-chat, reasoning, translation) the
/// default baseline is chosen over.
pub const PROBE_PROMPTS: &[&str] = &[
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Explain the difference between a process and a thread in an operating system.",
    "Solve for x: 3x^2 - 12x + 9 = 0. Show your steps.",
    "Prove that the square root of 2 is irrational.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Summarise the causes of the First World War in one paragraph.",
    "What is the capital of Australia, and why was it chosen?",
    "Give me three tips for a first job interview.",
    "hi there! any ideas for a cosy evening at home with a couple of friends?",
    "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How much does the ball cost?",
    "Translate into French: 'The meeting has been moved to Thursday afternoon.'",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "What are the main side effects of ibuprofen?",
    "Draft a polite email declining a meeting invitation.",
    "Explain how public-key cryptography works to a twelve-year-old.",
    "Find the derivative of f(x) = x^3 * ln(x).",
];

/// The baseline of one engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// Catalog index.
    pub model: usize,
    /// Catalog id.
    pub id: String,
    /// How it was chosen: `configured` or `best_single_model`.
    pub chosen_by: &'static str,
    /// Its mean predicted quality over the probe prompts it was routable on (none when the head
    /// does not cover it).
    pub mean_quality: Option<f64>,
    /// On how many probe prompts it was the router's choice for quality alone, of how many
    /// probes cast a vote.
    pub probe_wins: (usize, usize),
    /// The router version it was chosen for.
    pub router_version: String,
}

/// The predicted saving of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The baseline's catalog id.
    pub baseline_model: String,
    /// The baseline's list price for the primary's predicted tokens, USD.
    pub baseline_cost_usd: f64,
    /// The baseline's predicted quality on the prompt (none when the head does not cover it).
    pub baseline_quality: Option<f64>,
    /// The primary's predicted cost, USD.
    pub predicted_cost_usd: f64,
    /// `baseline_cost_usd - predicted_cost_usd`.
    pub saving_usd: f64,
}

/// The realised cost of one reported attempt and the baseline's at the same tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Realised {
    /// The baseline's catalog id.
    pub baseline_model: String,
    /// The baseline's list price at the reported tokens (none without input and output tokens).
    pub baseline_cost_usd: Option<f64>,
    /// The reported `cost_usd`, else the reported model's list price at the reported tokens.
    pub cost_usd: Option<f64>,
}

/// Chooses the baseline of `engine`: the configured model, else the best single model
/// ([`Probes::best`]) over [`PROBE_PROMPTS`], each routed through the engine once at cost
/// weight 0.
pub async fn resolve(engine: &Arc<Engine>, cfg: &SavingsConfig) -> Result<Baseline, RouteError> {
    let catalog = engine.catalog();
    let mut probes = Probes::new(catalog.models().len());
    for (i, prompt) in PROBE_PROMPTS.iter().enumerate() {
        let query = RouteQuery { tradeoff: Tradeoff::Weight(0.0), ..RouteQuery::internal(format!("savings-probe-{i}"), prompt) };
        let d = engine.route(query).await?;
        probes.add(&d.ranking.scored);
    }
    let wins = |i: usize| (probes.wins.get(i).copied().unwrap_or(0), probes.votes);
    let router_version = engine.version().to_string();
    if let Some(id) = &cfg.baseline_model {
        let model = catalog
            .models()
            .iter()
            .position(|m| &m.id == id)
            .ok_or_else(|| RouteError::Catalog(format!("savings.baseline_model {id:?} is not in the catalog ([[models]])")))?;
        return Ok(Baseline {
            model,
            id: id.clone(),
            chosen_by: "configured",
            mean_quality: probes.mean_quality(model),
            probe_wins: wins(model),
            router_version,
        });
    }
    let best = probes.best().ok_or_else(|| {
        RouteError::Catalog(
            "savings: no priced catalog model is in the head's domain on any probe prompt; set savings.baseline_model".into(),
        )
    })?;
    Ok(Baseline {
        model: best,
        id: catalog.models()[best].id.clone(),
        chosen_by: "best_single_model",
        mean_quality: probes.mean_quality(best),
        probe_wins: wins(best),
        router_version,
    })
}

/// What the probe prompts' rankings say of each catalog model.
#[derive(Debug, Clone)]
pub struct Probes {
    /// Summed predicted quality over the probes the model was routable on.
    quality: Vec<f64>,
    /// Probes on which the model was routable with a prediction.
    routable: Vec<usize>,
    /// Probes on which the model was the eligible priced model of highest predicted quality.
    wins: Vec<usize>,
    /// Probes with a winner (some priced model in the head's domain and left out by no rule).
    votes: usize,
}

impl Probes {
    /// No probe yet, for a catalog of `models`.
    pub fn new(models: usize) -> Self {
        Self { quality: vec![0.0; models], routable: vec![0; models], wins: vec![0; models], votes: 0 }
    }

    /// Adds one probe's ranking. A model counts on it when the head covers it and no rule left
    /// it out other than the head's domain (a baseline is a model a team would call for
    /// everything, whatever the router thinks of its evidence there).
    ///
    /// The probe's vote goes to the model of highest predicted quality among those left out by
    /// no rule, in the head's domain and priced above zero (ties: the cheaper, then catalog
    /// order); none when no model is.
    pub fn add(&mut self, scored: &[crate::policy::Scored]) {
        let winner = scored
            .iter()
            .filter(|s| s.exclusion.is_none() && s.kept_despite.is_none() && s.cost_usd > 0.0)
            .filter_map(|s| Some((s.model, s.prediction?.quality, s.cost_usd)))
            .fold(None::<(usize, f64, f64)>, |best, (i, q, c)| match best {
                Some((bi, bq, bc)) if bq > q || (bq == q && (bc < c || (bc == c && bi < i))) => best,
                _ => Some((i, q, c)),
            });
        if let Some(w) = winner.and_then(|(i, ..)| self.wins.get_mut(i)) {
            *w += 1;
            self.votes += 1;
        }
        for s in scored {
            let routable = matches!(s.exclusion, None | Some(Exclusion::OutOfDomain { .. }));
            if let (Some(p), true, Some(q)) = (s.prediction, routable, self.quality.get_mut(s.model)) {
                *q += p.quality;
                self.routable[s.model] += 1;
            }
        }
    }

    /// Mean predicted quality of model `i` over the probes it was routable on.
    pub fn mean_quality(&self, i: usize) -> Option<f64> {
        let n = *self.routable.get(i)?;
        (n > 0).then(|| self.quality[i] / n as f64)
    }

    /// The best single model: the model that won the most probes; ties go to the higher mean
    /// predicted quality over the probes it was routable on, then to the first in catalog
    /// order. None when no probe had a winner. It is the model a team would send everything to
    /// without a router, so savings measure what routing saves against calling it for every
    /// request.
    pub fn best(&self) -> Option<usize> {
        (0..self.wins.len())
            .filter(|&i| self.wins[i] > 0)
            .map(|i| (i, self.wins[i], self.mean_quality(i).unwrap_or(f64::NEG_INFINITY)))
            .fold(None::<(usize, usize, f64)>, |best, (i, w, q)| match best {
                Some((_, bw, bq)) if bw > w || (bw == w && bq >= q) => best,
                _ => Some((i, w, q)),
            })
            .map(|b| b.0)
    }
}

/// How the default baseline is chosen, in words (the report's header says it).
pub const BEST_SINGLE_MODEL_RULE: &str = "the best single model: the priced model the router chooses most often for quality alone (cost weight 0, the head's domain respected) over the 16 probe prompts (ties: the higher mean predicted quality), the model a team would send everything to without a router";

impl SavingsConfig {
    /// Which baseline this config asks for and why, for a report read without the serving engine.
    pub fn describe(&self) -> String {
        match &self.baseline_model {
            Some(id) => format!("{id}, named by [savings] baseline_model"),
            None => format!("unset [savings] baseline_model, so {BEST_SINGLE_MODEL_RULE}"),
        }
    }
}

impl Baseline {
    /// Which model and why, for the report's header.
    pub fn describe(&self) -> String {
        let (won, votes) = self.probe_wins;
        let q = self.mean_quality.map_or_else(String::new, |q| format!(", mean predicted quality {q:.3} on the probes"));
        let q = format!(", first for quality on {won} of {votes} probes{q}");
        match self.chosen_by {
            "configured" => format!("{}, named by [savings] baseline_model{q}", self.id),
            _ => format!("{}{q}: {BEST_SINGLE_MODEL_RULE}", self.id),
        }
    }

    /// The predicted saving of `d` (a decision of the engine this baseline was chosen for).
    pub fn estimate(&self, catalog: &Catalog, d: &Decision) -> Option<Estimate> {
        let r = &d.ranking;
        let primary = &r.scored[*r.chosen.first()?];
        let tokens = primary.prediction?.output_tokens;
        let baseline = catalog.models().get(self.model)?;
        let baseline_cost_usd = baseline.cost_usd(d.input_tokens, tokens);
        let baseline_quality = r.scored.iter().find(|s| s.model == self.model).and_then(|s| s.prediction).map(|p| p.quality);
        Some(Estimate {
            baseline_model: self.id.clone(),
            baseline_cost_usd,
            baseline_quality,
            predicted_cost_usd: primary.cost_usd,
            saving_usd: baseline_cost_usd - primary.cost_usd,
        })
    }

    /// The realised cost of a reported attempt on `model` and the baseline's at the same tokens.
    pub fn realised(
        &self,
        catalog: &Catalog,
        model: &str,
        input_tokens: Option<u32>,
        output_tokens: Option<u32>,
        reported_cost_usd: Option<f64>,
    ) -> Realised {
        let tokens = input_tokens.zip(output_tokens);
        let list_price = |id: &str| catalog.get(id).zip(tokens).map(|(m, (i, o))| m.cost_usd(i, f64::from(o)));
        Realised {
            baseline_model: self.id.clone(),
            baseline_cost_usd: catalog.models().get(self.model).and_then(|m| list_price(&m.id)),
            cost_usd: reported_cost_usd.or_else(|| list_price(model)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogModel;

    fn catalog() -> Catalog {
        Catalog::new(vec![CatalogModel::single("cheap", "p", 1.0, 2.0, 8192), CatalogModel::single("dear", "q", 10.0, 30.0, 8192)]).unwrap()
    }

    #[test]
    fn a_named_baseline_must_be_in_the_catalog_and_the_error_names_the_key() {
        let ok = SavingsConfig { baseline_model: Some("dear".into()) };
        assert!(ok.validate(&catalog()).is_ok());
        let e = SavingsConfig { baseline_model: Some("nope".into()) }.validate(&catalog()).unwrap_err().to_string();
        assert!(e.contains("savings.baseline_model") && e.contains("nope") && e.contains("catalog"), "{e}");
    }

    fn scored(model: usize, quality: f64, cost_usd: f64, exclusion: Option<Exclusion>) -> crate::policy::Scored {
        crate::policy::Scored {
            model,
            prediction: Some(crate::policy::Prediction { quality, output_tokens: 100.0, domain_chance: 1.0 }),
            cost_usd,
            latency_ms: 100.0,
            utility: quality,
            rank: 0,
            exclusion,
            kept_despite: None,
            health: crate::health::Snapshot::HEALTHY,
            endpoints: Vec::new(),
            order: Vec::new(),
            priced_endpoint: 0,
        }
    }

    #[test]
    fn the_best_single_model_wins_the_most_probes_for_quality_out_of_domain_models_never_win() {
        let ood = || Some(Exclusion::OutOfDomain { chance: 0.001, threshold: 0.01 });
        let mut p = Probes::new(4);
        // Model 3 is predicted best everywhere but out of the head's domain: it never wins,
        // though its mean predicted quality counts (a named baseline reports it).
        // Model 0 is free: never a baseline.
        p.add(&[scored(0, 0.99, 0.0, None), scored(1, 0.8, 0.02, None), scored(2, 0.7, 0.01, None), scored(3, 0.95, 0.01, ood())]);
        p.add(&[scored(1, 0.6, 0.02, None), scored(2, 0.7, 0.01, None), scored(3, 0.95, 0.01, ood())]);
        p.add(&[scored(1, 0.9, 0.02, None), scored(2, 0.5, 0.01, None), scored(3, 0.95, 0.01, ood())]);
        assert_eq!((p.wins.clone(), p.votes), (vec![0, 2, 1, 0], 3));
        assert_eq!(p.best(), Some(1));
        assert!((p.mean_quality(3).unwrap() - 0.95).abs() < 1e-12);

        // A probe where every model is only kept despite the domain casts no vote.
        let mut kept = scored(2, 0.99, 0.01, None);
        kept.kept_despite = ood();
        p.add(&[kept]);
        assert_eq!(p.votes, 3);

        // A tie on wins goes to the higher mean predicted quality (model 2 wins twice more, then
        // has the same wins as model 1 and a lower mean).
        p.add(&[scored(2, 0.9, 0.01, None)]);
        assert_eq!(p.best(), Some(1), "two wins each: model 1's mean quality is higher");
        p.add(&[scored(2, 0.9, 0.01, None)]);
        assert_eq!(p.best(), Some(2));

        // A quality tie on a probe goes to the cheaper model.
        let mut q = Probes::new(2);
        q.add(&[scored(0, 0.8, 0.02, None), scored(1, 0.8, 0.01, None)]);
        assert_eq!(q.best(), Some(1));
        assert_eq!(Probes::new(2).best(), None);
    }

    #[test]
    fn realised_costs_price_the_reported_tokens_at_both_models() {
        let b = Baseline {
            model: 1,
            id: "dear".into(),
            chosen_by: "configured",
            mean_quality: None,
            probe_wins: (0, 0),
            router_version: "v".into(),
        };
        let r = b.realised(&catalog(), "cheap", Some(1_000_000), Some(500_000), None);
        assert_eq!(r.baseline_cost_usd, Some(10.0 + 15.0));
        assert_eq!(r.cost_usd, Some(1.0 + 1.0), "the list price when no cost is reported");
        let r = b.realised(&catalog(), "cheap", Some(1_000_000), Some(500_000), Some(0.5));
        assert_eq!(r.cost_usd, Some(0.5), "the reported cost wins");
        let r = b.realised(&catalog(), "unknown", None, Some(10), None);
        assert_eq!((r.baseline_cost_usd, r.cost_usd), (None, None), "no tokens, no price");
    }
}
