//! Exploration: on a bounded, opt-in share of traffic the primary is sampled among the near-best
//! eligible models instead of taken as the argmax, and the probability of the choice (its
//! propensity) is recorded, so that a head retrained on the decision log can weight what it sees
//! and an off-policy estimate can score another head on the same log.
//!
//! The policy for one request, given the ranked models:
//! - the candidates are the eligible models (every hard rule passed, breaker not open) whose
//!   utility is within `margin` of the best;
//! - with probability `share` (1 for a request that opts in, 0 for one that opts out or once the
//!   day's extra-cost cap is spent) the request explores: it draws its primary from a softmax over
//!   the candidates' utilities at `temperature`, mixed with a uniform `floor`;
//! - otherwise the best model is the primary, as without exploration.
//!
//! The propensity of the primary is its probability under that mixture. Both draws are a hash of
//! the request id and the configured seed, so every replica makes the same choice for a request.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{
    health::State,
    policy::{Exclusion, Ranking},
};

/// `[exploration]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplorationConfig {
    /// Share of requests in [0, 1] that explore; 0 (the default) turns exploration off except for
    /// requests that opt in.
    pub share: f64,
    /// Only models whose utility is within this of the best are sampled (utility units: quality
    /// at cost weight 0).
    pub margin: f64,
    /// Softmax temperature over the candidates' utilities (> 0): small keeps the draw near the best.
    pub temperature: f64,
    /// Share of an exploring draw spread uniformly over the candidates, in [0, 1]: every
    /// candidate's probability is at least `floor / candidates`, which bounds the inverse
    /// propensity weights the trainer uses.
    pub floor: f64,
    /// Most extra predicted cost per UTC day that exploration may add on this replica, USD (the
    /// chosen model's predicted cost minus the best's, summed over explored requests); 0 means no
    /// cap. Once spent, requests stop exploring until the next day.
    pub max_extra_cost_usd_per_day: f64,
    /// Seed of the per-request draws (replicas with the same seed agree).
    pub seed: u64,
    /// Requests may opt in (`explore = true`) even when `share` is 0.
    pub allow_opt_in: bool,
}

impl Default for ExplorationConfig {
    fn default() -> Self {
        Self { share: 0.0, margin: 0.05, temperature: 0.02, floor: 0.2, max_extra_cost_usd_per_day: 0.0, seed: 0, allow_opt_in: true }
    }
}

impl ExplorationConfig {
    /// Checks every value: on error, the key (under `exploration.`), its rule and the value given.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str, f64)> {
        let checks: [(&str, &str, f64, bool); 5] = [
            ("exploration.share", "in [0, 1]", self.share, (0.0..=1.0).contains(&self.share)),
            ("exploration.floor", "in [0, 1]", self.floor, (0.0..=1.0).contains(&self.floor)),
            ("exploration.margin", "a finite number >= 0", self.margin, self.margin.is_finite() && self.margin >= 0.0),
            ("exploration.temperature", "a finite number > 0", self.temperature, self.temperature.is_finite() && self.temperature > 0.0),
            (
                "exploration.max_extra_cost_usd_per_day",
                "a finite number >= 0",
                self.max_extra_cost_usd_per_day,
                self.max_extra_cost_usd_per_day.is_finite() && self.max_extra_cost_usd_per_day >= 0.0,
            ),
        ];
        match checks.into_iter().find(|c| !c.3) {
            Some((key, limit, value, _)) => Err((key, limit, value)),
            None => Ok(()),
        }
    }

    /// A short description of the setting, for the decision log's `policy`.
    pub fn describe(&self) -> String {
        format!("share={} margin={} temperature={} floor={} seed={}", self.share, self.margin, self.temperature, self.floor, self.seed)
    }
}

/// A request's own say on exploration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Opt {
    /// The server's `share`.
    #[default]
    Default,
    /// Always explore (if the server allows opting in).
    In,
    /// Never explore.
    Out,
}

/// How the primary of one decision was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Probability with which the primary was chosen, in (0, 1]; 1 for a deterministic choice.
    pub propensity: f64,
    /// The primary is a draw (it may still be the best model).
    pub explored: bool,
    /// The share of exploration that applied to this request (0 when it could not explore).
    pub share: f64,
    /// Candidates the draw was among (1 when there was nothing to explore).
    pub candidates: usize,
    /// The primary's predicted cost minus the best model's, USD (0 when the best was kept).
    pub extra_cost_usd: f64,
}

impl Choice {
    /// The choice of a request that did not explore and could not have.
    pub const DETERMINISTIC: Choice = Choice { propensity: 1.0, explored: false, share: 0.0, candidates: 1, extra_cost_usd: 0.0 };
}

/// Counters of the explorer, for metrics.
#[derive(Debug, Default)]
pub struct ExplorationStats {
    /// Requests whose primary was drawn.
    pub explored: AtomicU64,
    /// Of those, the ones whose draw was not the best model.
    pub switched: AtomicU64,
    /// Requests that would have explored but the day's cap was spent.
    pub capped: AtomicU64,
    /// Extra predicted cost of today's explored requests, in micro-USD.
    pub extra_cost_micro_usd_today: AtomicU64,
}

/// The exploration policy and its daily budget (per replica).
#[derive(Debug)]
pub struct Explorer {
    config: ExplorationConfig,
    /// (UTC day number, extra cost spent that day in USD).
    spent: Mutex<(i64, f64)>,
    stats: ExplorationStats,
}

/// A uniform number in [0, 1) from the request id, the seed and a stream number.
fn draw(request_id: &str, seed: u64, stream: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(request_id.as_bytes(), seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // The top 53 bits as a double in [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn utc_day() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs / 86_400) as i64
}

impl Explorer {
    /// An explorer with `config` (validated by the caller).
    pub fn new(config: ExplorationConfig) -> Self {
        Self { config, spent: Mutex::new((utc_day(), 0.0)), stats: ExplorationStats::default() }
    }

    /// The setting.
    pub fn config(&self) -> &ExplorationConfig {
        &self.config
    }

    /// Its counters.
    pub fn stats(&self) -> &ExplorationStats {
        &self.stats
    }

    /// The share that applies to a request with `opt`.
    fn share(&self, opt: Opt) -> f64 {
        match opt {
            Opt::Out => 0.0,
            Opt::In if self.config.allow_opt_in => 1.0,
            _ => self.config.share,
        }
    }

    /// Chooses the primary of `ranking` for `request_id` and reorders the ranking so that it is
    /// first. Leaves the ranking as it is when the request does not explore.
    pub fn choose(&self, request_id: &str, opt: Opt, ranking: &mut Ranking) -> Choice {
        let share = self.share(opt);
        if share <= 0.0 || ranking.chosen.is_empty() {
            return Choice::DETERMINISTIC;
        }
        let best = ranking.chosen[0];
        let best_utility = ranking.scored[best].utility;
        // The near-best eligible models with a closed breaker, best first (by rank).
        let mut candidates: Vec<usize> = (0..ranking.scored.len())
            .filter(|&i| {
                let s = &ranking.scored[i];
                s.rank > 0
                    && matches!(s.exclusion, None | Some(Exclusion::BelowCutoff))
                    && !matches!(s.health.state, State::CoolingDown { .. })
                    && s.health_tier() <= ranking.scored[best].health_tier()
                    && s.utility >= best_utility - self.config.margin
            })
            .collect();
        candidates.sort_by_key(|&i| ranking.scored[i].rank);
        if !candidates.contains(&best) {
            // The best is cooling down (nothing else was eligible): nothing to explore.
            return Choice { share, ..Choice::DETERMINISTIC };
        }
        let n = candidates.len();
        if n < 2 {
            return Choice { share, propensity: 1.0, explored: false, candidates: 1, extra_cost_usd: 0.0 };
        }
        // Softmax over utilities (shifted by the best for stability), mixed with the floor.
        let weights: Vec<f64> =
            candidates.iter().map(|&i| ((ranking.scored[i].utility - best_utility) / self.config.temperature).exp()).collect();
        let total: f64 = weights.iter().sum();
        let floor = self.config.floor;
        let probs: Vec<f64> = weights.iter().map(|w| floor / n as f64 + (1.0 - floor) * w / total).collect();
        let best_pos = candidates.iter().position(|&i| i == best).expect("checked above");
        let explores = draw(request_id, self.config.seed, 0) < share;
        let pick = if explores {
            let u = draw(request_id, self.config.seed, 1);
            let mut acc = 0.0;
            let mut pick = n - 1;
            for (k, p) in probs.iter().enumerate() {
                acc += p;
                if u < acc {
                    pick = k;
                    break;
                }
            }
            pick
        } else {
            best_pos
        };
        let chosen = candidates[pick];
        let extra = (ranking.scored[chosen].cost_usd - ranking.scored[best].cost_usd).max(0.0);
        if explores && !self.within_budget(extra) {
            self.stats.capped.fetch_add(1, Ordering::Relaxed);
            return Choice { share: 0.0, ..Choice::DETERMINISTIC };
        }
        // P(primary = chosen) = P(no exploration) * [chosen is the best] + share * P(draw = chosen).
        let propensity = (1.0 - share) * f64::from(u8::from(chosen == best)) + share * probs[pick];
        if explores {
            self.stats.explored.fetch_add(1, Ordering::Relaxed);
            if chosen != best {
                self.stats.switched.fetch_add(1, Ordering::Relaxed);
                ranking.promote(chosen);
            }
        }
        Choice { propensity, explored: explores, share, candidates: n, extra_cost_usd: if chosen == best { 0.0 } else { extra } }
    }

    /// Spends `extra` USD of today's budget if it fits (always when there is no cap).
    fn within_budget(&self, extra: f64) -> bool {
        let cap = self.config.max_extra_cost_usd_per_day;
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let today = utc_day();
        if spent.0 != today {
            *spent = (today, 0.0);
        }
        if cap > 0.0 && spent.1 + extra > cap {
            return false;
        }
        spent.1 += extra;
        self.stats.extra_cost_micro_usd_today.store((spent.1 * 1e6) as u64, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_and_deterministic() {
        let xs: Vec<f64> = (0..20_000).map(|i| draw(&format!("req-{i}"), 7, 0)).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert_eq!(draw("req-1", 7, 0), draw("req-1", 7, 0));
        assert_ne!(draw("req-1", 7, 0), draw("req-1", 8, 0));
        assert_ne!(draw("req-1", 7, 0), draw("req-1", 7, 1));
    }

    use crate::{
        catalog::{Catalog, CatalogModel},
        health::Snapshot,
        policy::{rank, Constraints, Prediction, Scoring, DEFAULT_COST_SCALE_USD},
    };

    const SCORING: Scoring = Scoring { ttft_ms: 400.0, output_tokens_per_second: 50.0, cost_scale_usd: DEFAULT_COST_SCALE_USD };

    /// Four models of equal price and qualities 0.80, 0.79, 0.78 and 0.50, ranked at weight 0.
    fn ranked(health: &[Snapshot], c: &Constraints) -> (Catalog, Ranking) {
        let cat = Catalog::new(["a", "b", "c", "d"].iter().map(|id| CatalogModel::single(id, "p", 1.0, 1.0, 100_000)).collect()).unwrap();
        let preds: Vec<_> =
            [0.80, 0.79, 0.78, 0.50].iter().map(|&q| Some(Prediction { quality: q, output_tokens: 100.0, domain_chance: 1.0 })).collect();
        let r = rank(&cat, &preds, health, 10, 0.0, c, SCORING).unwrap();
        (cat, r)
    }

    fn primary(cat: &Catalog, r: &Ranking) -> String {
        cat.models()[r.scored[r.chosen[0]].model].id.clone()
    }

    fn explorer(share: f64) -> Explorer {
        Explorer::new(ExplorationConfig { share, margin: 0.05, temperature: 0.02, floor: 0.2, ..ExplorationConfig::default() })
    }

    #[test]
    fn draws_follow_their_propensities_within_the_margin() {
        let x = explorer(0.5);
        let c = Constraints { max_fallbacks: 1, ..Constraints::default() };
        let mut seen = std::collections::BTreeMap::<String, (u32, f64)>::new();
        let n = 4000;
        for i in 0..n {
            let (cat, mut r) = ranked(&[], &c);
            let choice = x.choose(&format!("req-{i}"), Opt::Default, &mut r);
            let id = primary(&cat, &r);
            // Never the model outside the margin; the order stays a valid failover order.
            assert_ne!(id, "d");
            assert_eq!(r.chosen.len(), 2);
            assert!(r.attempts.first().is_some_and(|a| a.scored == r.chosen[0]));
            assert!(choice.propensity > 0.0 && choice.propensity <= 1.0);
            let e = seen.entry(id).or_default();
            e.0 += 1;
            // Each model's propensity is the same on every request.
            assert!(e.1 == 0.0 || (e.1 - choice.propensity).abs() < 1e-12);
            e.1 = choice.propensity;
        }
        // The empirical share of each model is its propensity (4 standard errors), and the
        // propensities of the three candidates sum to 1.
        let total: f64 = seen.values().map(|v| v.1).sum();
        assert!((total - 1.0).abs() < 1e-9, "{seen:?}");
        for (id, (count, p)) in &seen {
            let share = f64::from(*count) / f64::from(n);
            let se = (p * (1.0 - p) / f64::from(n)).sqrt();
            assert!((share - p).abs() < 4.0 * se + 1e-9, "{id}: share {share} vs propensity {p}");
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen["a"].1 > seen["b"].1 && seen["b"].1 > seen["c"].1);
        assert!(x.stats().explored.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn opting_out_keeps_the_best_and_the_same_request_draws_the_same() {
        let x = explorer(1.0);
        let c = Constraints { max_fallbacks: 1, ..Constraints::default() };
        let (cat, mut r) = ranked(&[], &c);
        assert_eq!(x.choose("r1", Opt::Out, &mut r), Choice::DETERMINISTIC);
        assert_eq!(primary(&cat, &r), "a");
        let picks: Vec<(String, f64)> = (0..2)
            .map(|_| {
                let (cat, mut r) = ranked(&[], &c);
                let ch = x.choose("same-id", Opt::Default, &mut r);
                (primary(&cat, &r), ch.propensity)
            })
            .collect();
        assert_eq!(picks[0], picks[1]);
    }

    #[test]
    fn an_open_breaker_or_a_denied_model_is_never_drawn() {
        let x = explorer(1.0);
        let cooling = Snapshot { state: State::CoolingDown { remaining: std::time::Duration::from_secs(5) }, ..Snapshot::HEALTHY };
        let health = [Snapshot::HEALTHY, cooling, Snapshot::HEALTHY, Snapshot::HEALTHY];
        let c = Constraints { max_fallbacks: 2, denied_models: vec!["c".into()], ..Constraints::default() };
        for i in 0..500 {
            let (cat, mut r) = ranked(&health, &c);
            x.choose(&format!("q{i}"), Opt::Default, &mut r);
            let id = primary(&cat, &r);
            assert_eq!(id, "a", "only `a` is eligible and near the best: b cools down, c is denied, d is outside the margin");
        }
    }

    #[test]
    fn the_daily_cap_stops_exploration_that_costs_more() {
        let cat = Catalog::new(vec![
            CatalogModel::single("cheap", "p", 0.1, 0.1, 100_000),
            CatalogModel::single("dear", "p", 50.0, 50.0, 100_000),
        ])
        .unwrap();
        let preds: Vec<_> =
            [0.80, 0.80].iter().map(|&q| Some(Prediction { quality: q, output_tokens: 1000.0, domain_chance: 1.0 })).collect();
        let c = Constraints { max_fallbacks: 1, ..Constraints::default() };
        let x = Explorer::new(ExplorationConfig {
            share: 1.0,
            margin: 1e3,
            temperature: 10.0,
            floor: 1.0,
            max_extra_cost_usd_per_day: 0.2,
            ..ExplorationConfig::default()
        });
        let mut dear = 0;
        for i in 0..200 {
            let mut r = rank(&cat, &preds, &[], 1000, 0.5, &c, SCORING).unwrap();
            let ch = x.choose(&format!("c{i}"), Opt::Default, &mut r);
            if cat.models()[r.scored[r.chosen[0]].model].id == "dear" {
                dear += 1;
                assert!(ch.extra_cost_usd > 0.0);
            }
        }
        // Each switch to `dear` costs about 0.1 USD more (1,000 tokens in and out at 50 USD per
        // million against 0.1): at most 2 fit in 0.2 USD.
        assert!((1..=2).contains(&dear), "{dear}");
        assert!(x.stats().capped.load(Ordering::Relaxed) > 0);
        assert!(x.stats().extra_cost_micro_usd_today.load(Ordering::Relaxed) <= 200_000);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = ExplorationConfig { share: 1.5, ..ExplorationConfig::default() };
        assert_eq!(bad.validate().unwrap_err(), ("exploration.share", "in [0, 1]", 1.5));
        let bad = ExplorationConfig { temperature: 0.0, ..ExplorationConfig::default() };
        assert_eq!(bad.validate().unwrap_err().0, "exploration.temperature");
        assert!(ExplorationConfig::default().validate().is_ok());
    }
}
