//! What routing saves against a baseline: one model every request could have gone to instead.
//!
//! **The baseline** is `[savings] baseline_model` when the operator names one; otherwise the
//! *best single model*: the catalog model the head covers with the highest mean predicted
//! quality over [`PROBE_PROMPTS`], a fixed set of varied prompts routed through the engine once
//! per (re)load, among the models inside the head's domain on at least half of them (outside
//! it the head's predictions are not trusted, as in routing). It is the model a team would send
//! everything to without a router.
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
    engine::{Decision, Engine, RouteError, RouteQuery},
    policy::Exclusion,
};

/// `[savings]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SavingsConfig {
    /// The model savings are measured against (a catalog id). Unset: the best single model, the
    /// covered catalog model with the highest mean predicted quality over the probe prompts.
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
/// default baseline's mean predicted quality is taken over.
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
    /// Its mean predicted quality over the probe prompts inside the head's domain (none when the
    /// head does not cover it or it is outside the domain on most of them).
    pub mean_quality: Option<f64>,
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

/// Chooses the baseline of `engine`: the configured model, else the covered model with the
/// highest mean predicted quality over [`PROBE_PROMPTS`] (ties: the first in catalog order).
pub async fn resolve(engine: &Arc<Engine>, cfg: &SavingsConfig) -> Result<Baseline, RouteError> {
    let catalog = engine.catalog();
    let (mut sums, mut counts) = (vec![0.0f64; catalog.models().len()], vec![0usize; catalog.models().len()]);
    for (i, prompt) in PROBE_PROMPTS.iter().enumerate() {
        let d = engine.route(RouteQuery::internal(format!("savings-probe-{i}"), prompt)).await?;
        for s in &d.ranking.scored {
            let out_of_domain = matches!(s.exclusion.as_ref().or(s.kept_despite.as_ref()), Some(Exclusion::OutOfDomain { .. }));
            if let (Some(p), false) = (s.prediction, out_of_domain) {
                sums[s.model] += p.quality;
                counts[s.model] += 1;
            }
        }
    }
    let mean = |i: usize| (2 * counts[i] >= PROBE_PROMPTS.len()).then(|| sums[i] / counts[i] as f64);
    let router_version = engine.version().to_string();
    if let Some(id) = &cfg.baseline_model {
        let model = catalog
            .models()
            .iter()
            .position(|m| &m.id == id)
            .ok_or_else(|| RouteError::Catalog(format!("savings.baseline_model {id:?} is not in the catalog ([[models]])")))?;
        return Ok(Baseline { model, id: id.clone(), chosen_by: "configured", mean_quality: mean(model), router_version });
    }
    let best = (0..catalog.models().len())
        .filter_map(|i| mean(i).map(|q| (i, q)))
        .fold(None::<(usize, f64)>, |best, (i, q)| match best {
            Some((_, bq)) if bq >= q => best,
            _ => Some((i, q)),
        })
        .ok_or_else(|| {
            RouteError::Catalog(
                "savings: no catalog model is inside the head's domain on half the probe prompts; set savings.baseline_model".into(),
            )
        })?;
    Ok(Baseline {
        model: best.0,
        id: catalog.models()[best.0].id.clone(),
        chosen_by: "best_single_model",
        mean_quality: Some(best.1),
        router_version,
    })
}

impl Baseline {
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

    #[test]
    fn realised_costs_price_the_reported_tokens_at_both_models() {
        let b = Baseline { model: 1, id: "dear".into(), chosen_by: "configured", mean_quality: None, router_version: "v".into() };
        let r = b.realised(&catalog(), "cheap", Some(1_000_000), Some(500_000), None);
        assert_eq!(r.baseline_cost_usd, Some(10.0 + 15.0));
        assert_eq!(r.cost_usd, Some(1.0 + 1.0), "the list price when no cost is reported");
        let r = b.realised(&catalog(), "cheap", Some(1_000_000), Some(500_000), Some(0.5));
        assert_eq!(r.cost_usd, Some(0.5), "the reported cost wins");
        let r = b.realised(&catalog(), "unknown", None, Some(10), None);
        assert_eq!((r.baseline_cost_usd, r.cost_usd), (None, None), "no tokens, no price");
    }
}
