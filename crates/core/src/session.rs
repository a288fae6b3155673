//! Sessions: a conversation that names a session keeps the model and endpoint of its last turn,
//! so the provider's prompt cache stays warm, unless switching is worth more than the cached
//! input it would lose.
//!
//! Pure and synchronous like `policy`: the server keeps the sessions (per replica, shared in a
//! fleet) and calls [`apply`] on each decision with the session's last turn ([`Sticky`]).
//!
//! The rule, on a ranking the policy already made under the request's hard constraints:
//! 1. No last turn (first turn, or the idle TTL passed): the ranking stands (`New`).
//! 2. The request gives `provider.order`: its order wins, as OpenRouter does (no stickiness).
//! 3. The last turn's model must still be eligible (not left out by any rule, health included:
//!    an open breaker moves the session), no less healthy than the ranking's first, and its
//!    endpoint must still be usable for this request; else the session moves to the ranking's best.
//! 4. Staying is worth the cached-input saving: the prefix the endpoint has seen (the last
//!    turn's input plus its predicted answer, at most this request's input) at the endpoint's
//!    input price minus its cached-input price. In the policy's utility units (quality minus
//!    weighted cost, see `policy`) the saving is `w * saving / cost_scale_usd`. The best
//!    alternative's utility gain over staying (both at list price) is compared with it: the
//!    session stays while `gain <= saving`, and moves when the gain is larger. An endpoint without
//!    a cached-input price saves nothing, so the session then stays only where it ranks first
//!    anyway (OpenRouter sticks only where cache reads are cheaper, too).
//! 5. `escalate_only`: a move that is not forced (rule 3) goes only to a model of higher
//!    predicted quality than the session's on this prompt, the best-ranked such one; with none
//!    worth the saving, the session stays.
//!
//! When the session stays, its model goes first (its endpoint first in the model's order and in
//! the attempt order); the other candidates follow as ranked.
use crate::{
    catalog::{Catalog, Endpoint},
    policy::{utility, Attempt, Constraints, Exclusion, Partition, Ranking},
};

/// Longest session id, user or conversation key accepted, characters (OpenRouter's `session_id` limit).
pub const MAX_SESSION_KEY_CHARS: usize = 256;

/// A session's identity: 128 bits of SHA-256 over what the request named, so that neither the
/// decision log nor Redis holds a client's id (or its `user`) as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey(pub u128);

impl SessionKey {
    /// The key of an explicit session id.
    pub fn of_id(id: &str) -> Self {
        Self::digest(&[b"id", id.as_bytes()])
    }

    /// The key of an OpenAI `user` and a conversation key.
    pub fn of_user(user: &str, conversation: &str) -> Self {
        Self::digest(&[b"user", user.as_bytes(), b"conversation", conversation.as_bytes()])
    }

    fn digest(parts: &[&[u8]]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for p in parts {
            // Length-prefixed, so no two different tuples hash the same text.
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        Self(u128::from_be_bytes(b))
    }

    /// 32 hex digits, as logged and shared.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses [`SessionKey::hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok().map(Self)).flatten()
    }
}

/// What a request says about its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRequest {
    /// The session.
    pub key: SessionKey,
    /// Switch only to a model of higher predicted quality (unless forced).
    pub escalate_only: bool,
}

/// Where a session's last turn went.
#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    /// Catalog model id.
    pub model: String,
    /// The endpoint's provider.
    pub provider: String,
    /// Tokens that endpoint has seen: the last turn's input plus its predicted answer.
    pub prefix_tokens: u32,
    /// When, ms since the Unix epoch.
    pub ts_ms: i64,
    /// Turns routed in the session so far.
    pub turns: u32,
}

/// What the session did to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No last turn (the first, or the session idled past its TTL): routed as usual.
    New,
    /// The last turn's model and endpoint go first.
    Kept,
    /// The session moved to another model or endpoint.
    Moved,
}

impl Verdict {
    /// Stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::New => "new",
            Verdict::Kept => "kept",
            Verdict::Moved => "moved",
        }
    }
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No last turn.
    FirstTurn,
    /// The session's model and endpoint rank first anyway.
    Best,
    /// Another model ranks first, but by less than the cached-input saving.
    CacheSaving,
    /// `escalate_only`, and no model of higher predicted quality is worth the saving.
    EscalateOnly,
    /// Another model ranks first by more than the cached-input saving.
    Gain,
    /// A rule of this request (or the head) leaves the session's model out.
    ModelIneligible,
    /// The session's model is cooling down (breaker open), or less healthy than the best.
    Unhealthy,
    /// The session's endpoint is not usable for this request.
    EndpointIneligible,
    /// The request gives `provider.order`, which sessions do not override.
    ProviderOrder,
    /// The session's model is no longer in the catalog.
    NotInCatalog,
}

impl Reason {
    /// Stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::FirstTurn => "first_turn",
            Reason::Best => "best",
            Reason::CacheSaving => "cache_saving",
            Reason::EscalateOnly => "escalate_only",
            Reason::Gain => "gain",
            Reason::ModelIneligible => "model_ineligible",
            Reason::Unhealthy => "unhealthy",
            Reason::EndpointIneligible => "endpoint_ineligible",
            Reason::ProviderOrder => "provider_order",
            Reason::NotInCatalog => "not_in_catalog",
        }
    }
}

/// The session's part in one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOutcome {
    /// The session.
    pub key: SessionKey,
    /// Kept, moved or new.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The same in words, with the numbers.
    pub detail: String,
    /// The last turn, if there was one.
    pub previous: Option<Sticky>,
    /// The cached-input saving of staying on the last turn's endpoint, USD (0 when none).
    pub saving_usd: f64,
    /// The saving in utility units (`w * saving / cost_scale_usd`).
    pub saving_utility: f64,
    /// The utility gain of the move's target over staying (0 when not compared).
    pub gain: f64,
    /// This turn's number in the session, from 1.
    pub turn: u32,
}

/// The cached-input saving of sending `prefix_tokens` again to `e`, USD.
pub fn cached_saving_usd(e: &Endpoint, prefix_tokens: u32) -> f64 {
    let cached = e.cached_input_usd_per_mtok.unwrap_or(e.input_usd_per_mtok);
    f64::from(prefix_tokens) * (e.input_usd_per_mtok - cached).max(0.0) / 1e6
}

/// Applies the session's last turn `previous` to `ranking` (see the module docs), reordering it
/// when the session stays or escalates. `cost_weight` and `cost_scale_usd` are the ranking's.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    catalog: &Catalog,
    ranking: &mut Ranking,
    request: SessionRequest,
    previous: Option<Sticky>,
    input_tokens: u32,
    cost_weight: f64,
    cost_scale_usd: f64,
    constraints: &Constraints,
) -> SessionOutcome {
    let turn = previous.as_ref().map_or(1, |p| p.turns.saturating_add(1));
    let mut out = SessionOutcome {
        key: request.key,
        verdict: Verdict::New,
        reason: Reason::FirstTurn,
        detail: "the first turn of the session (or the first after its idle TTL)".into(),
        previous: None,
        saving_usd: 0.0,
        saving_utility: 0.0,
        gain: 0.0,
        turn,
    };
    let Some(prev) = previous else { return out };
    let models = catalog.models();
    let best = ranking.chosen[0];
    let same_as_before = first_of(catalog, ranking, best) == (prev.model.as_str(), prev.provider.as_str());
    let finish = |out: &mut SessionOutcome, verdict: Verdict, reason: Reason, detail: String| {
        out.verdict = verdict;
        out.reason = reason;
        out.detail = detail;
    };
    let at = format!("{}@{}", prev.model, prev.provider);
    if !constraints.provider.order.is_empty() {
        let v = if same_as_before { Verdict::Kept } else { Verdict::Moved };
        finish(&mut out, v, Reason::ProviderOrder, "the request gives provider.order, which sessions do not override".into());
        out.previous = Some(prev);
        return out;
    }
    let Some(i) = ranking.scored.iter().position(|s| models[s.model].id == prev.model) else {
        finish(&mut out, Verdict::Moved, Reason::NotInCatalog, format!("{} is no longer in the catalog", prev.model));
        out.previous = Some(prev);
        return out;
    };
    let s = &ranking.scored[i];
    match &s.exclusion {
        None | Some(Exclusion::BelowCutoff) => {}
        Some(e @ Exclusion::Unhealthy(_)) => {
            finish(&mut out, Verdict::Moved, Reason::Unhealthy, format!("{at}: {}", e.detail()));
            out.previous = Some(prev);
            return out;
        }
        Some(e) => {
            finish(&mut out, Verdict::Moved, Reason::ModelIneligible, format!("{at} is left out by `{}`: {}", e.constraint(), e.detail()));
            out.previous = Some(prev);
            return out;
        }
    }
    if s.health_tier() > ranking.scored[best].health_tier() {
        finish(&mut out, Verdict::Moved, Reason::Unhealthy, format!("{at}: {} (a healthier model ranks first)", s.health.detail()));
        out.previous = Some(prev);
        return out;
    }
    let m = &models[s.model];
    let Some(j) = m.endpoints.iter().position(|e| e.provider == prev.provider) else {
        finish(
            &mut out,
            Verdict::Moved,
            Reason::EndpointIneligible,
            format!("{} has no endpoint on {} any more", prev.model, prev.provider),
        );
        out.previous = Some(prev);
        return out;
    };
    if !s.order.contains(&j) {
        let why =
            s.endpoints[j].exclusion.as_ref().map_or_else(|| "not usable".to_string(), |e| format!("`{}`: {}", e.constraint(), e.detail()));
        finish(&mut out, Verdict::Moved, Reason::EndpointIneligible, format!("{at} is left out for this request by {why}"));
        out.previous = Some(prev);
        return out;
    }
    let q = s.prediction.map_or(0.0, |p| p.quality);
    let keep_utility = utility(q, s.endpoints[j].cost_usd, cost_weight, cost_scale_usd);
    let prefix = prev.prefix_tokens.min(input_tokens);
    out.saving_usd = cached_saving_usd(&m.endpoints[j], prefix);
    out.saving_utility = cost_weight * out.saving_usd / cost_scale_usd;
    out.previous = Some(prev);
    if same_as_before {
        finish(&mut out, Verdict::Kept, Reason::Best, format!("{at} ranks first"));
        return out;
    }
    // The move's target: the ranking's best, or with escalate_only the best-ranked eligible model
    // of higher predicted quality (the session's own model on another endpoint is no escalation).
    let target = if request.escalate_only {
        let mut eligible: Vec<usize> = (0..ranking.scored.len()).filter(|&k| ranking.scored[k].rank > 0 && k != i).collect();
        eligible.sort_by_key(|&k| ranking.scored[k].rank);
        eligible.into_iter().find(|&k| ranking.scored[k].prediction.is_some_and(|p| p.quality > q))
    } else {
        Some(best)
    };
    let Some(t) = target else {
        finish(
            &mut out,
            Verdict::Kept,
            Reason::EscalateOnly,
            format!("escalate_only: no eligible model has a higher predicted quality than {at} ({q:.3})"),
        );
        promote(ranking, i, j, keep_utility, constraints);
        return out;
    };
    out.gain = ranking.scored[t].utility - keep_utility;
    let (tm, tp) = first_of(catalog, ranking, t);
    let numbers = format!(
        "{tm}@{tp} gains {:.6} in utility over {at}; staying saves ${:.6} of cached input on {prefix} prefix tokens ({:.6} in utility)",
        out.gain, out.saving_usd, out.saving_utility
    );
    if out.gain <= out.saving_utility {
        let reason = if request.escalate_only { Reason::EscalateOnly } else { Reason::CacheSaving };
        finish(&mut out, Verdict::Kept, reason, numbers);
        promote(ranking, i, j, keep_utility, constraints);
    } else {
        finish(&mut out, Verdict::Moved, Reason::Gain, numbers);
        if t != best {
            let (first, u) = (ranking.scored[t].first_endpoint(), ranking.scored[t].utility);
            promote(ranking, t, first, u, constraints);
        }
    }
    out
}

/// Scored model `i`'s id and the provider of its first endpoint.
fn first_of<'c>(catalog: &'c Catalog, r: &Ranking, i: usize) -> (&'c str, &'c str) {
    let s = &r.scored[i];
    let m = &catalog.models()[s.model];
    (m.id.as_str(), m.endpoints[s.first_endpoint()].provider.as_str())
}

/// Where a decision sends the session next: its first candidate on its first endpoint, with the
/// conversation's input and the predicted answer as the prefix that endpoint will have seen.
pub fn next_sticky(catalog: &Catalog, ranking: &Ranking, input_tokens: u32, ts_ms: i64, turns: u32) -> Sticky {
    let s = &ranking.scored[ranking.chosen[0]];
    let m = &catalog.models()[s.model];
    let out = s.prediction.map_or(0.0, |p| p.output_tokens).round().clamp(0.0, f64::from(u32::MAX)) as u32;
    Sticky {
        model: m.id.clone(),
        provider: m.endpoints[s.first_endpoint()].provider.clone(),
        prefix_tokens: input_tokens.saturating_add(out),
        ts_ms,
        turns,
    }
}

/// Puts scored model `i` first, on endpoint `j` (which must be in its order): first in the chosen
/// list, its endpoint first in its order and in the attempts; a chosen model that no longer fits
/// `max_fallbacks` drops below the cutoff. `utility` is the model's at that endpoint.
fn promote(r: &mut Ranking, i: usize, j: usize, utility: f64, c: &Constraints) {
    let was_chosen = r.chosen.contains(&i);
    // The model's endpoints: j first, the others in their order.
    let s = &mut r.scored[i];
    s.order.retain(|&k| k != j);
    s.order.insert(0, j);
    for (n, &k) in s.order.iter().enumerate() {
        s.endpoints[k].rank = n + 1;
    }
    s.exclusion = None;
    s.cost_usd = s.endpoints[j].cost_usd;
    s.latency_ms = s.endpoints[j].latency_ms;
    s.priced_endpoint = j;
    s.utility = utility;
    r.chosen.retain(|&k| k != i);
    r.chosen.insert(0, i);
    if r.chosen.len() > c.max_fallbacks + 1 {
        if let Some(dropped) = r.chosen.pop() {
            r.scored[dropped].exclusion = Some(Exclusion::BelowCutoff);
        }
    }
    // Ranks among eligible models: i first, the others in their order.
    let mut eligible: Vec<usize> = (0..r.scored.len()).filter(|&k| r.scored[k].rank > 0 || k == i).collect();
    eligible.sort_by_key(|&k| if k == i { 0 } else { r.scored[k].rank });
    for (n, &k) in eligible.iter().enumerate() {
        r.scored[k].rank = n + 1;
    }
    let chosen = r.chosen.clone();
    let head = Attempt { scored: i, endpoint: j };
    let mut attempts = vec![head];
    if c.provider.partition == Partition::Model {
        attempts.extend(r.scored[i].order[1..].iter().map(|&k| Attempt { scored: i, endpoint: k }));
        attempts.extend(r.attempts.iter().copied().filter(|a| a.scored != i && chosen.contains(&a.scored)));
    } else {
        attempts.extend(r.attempts.iter().copied().filter(|a| *a != head && chosen.contains(&a.scored)));
        if !was_chosen {
            attempts.extend(r.scored[i].order[1..].iter().map(|&k| Attempt { scored: i, endpoint: k }));
        }
    }
    r.attempts = attempts;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::CatalogModel,
        health::{Snapshot, State},
        policy::{rank, Prediction, Scoring, DEFAULT_COST_SCALE_USD},
    };

    const SCORING: Scoring = Scoring { ttft_ms: 400.0, output_tokens_per_second: 50.0, cost_scale_usd: DEFAULT_COST_SCALE_USD };

    /// "a" on p1 (cached input at a tenth) and p2 (cheaper, cached at half), "b" on p3 (cached at
    /// a tenth), "c" on p4 (no cached-input price). At 10,000 tokens in, 100 out and w = 0.5 the
    /// utilities are 0.5 q - 0.46 for a@p2 and 0.5 q - 0.51 for the others.
    fn catalog() -> Catalog {
        let endpoint = |provider: &str, input: f64, cached: Option<f64>| {
            let mut e = CatalogModel::single("x", provider, input, 2.0, 128_000).endpoints.remove(0);
            e.cached_input_usd_per_mtok = cached;
            e
        };
        let a = CatalogModel { id: "a".into(), endpoints: vec![endpoint("p1", 1.0, Some(0.1)), endpoint("p2", 0.9, Some(0.45))] };
        let b = CatalogModel { id: "b".into(), endpoints: vec![endpoint("p3", 1.0, Some(0.1))] };
        let c = CatalogModel { id: "c".into(), endpoints: vec![endpoint("p4", 1.0, None)] };
        Catalog::new(vec![a, b, c]).unwrap()
    }

    fn preds(q: [f64; 3]) -> Vec<Option<Prediction>> {
        q.iter().map(|&q| Some(Prediction { quality: q, output_tokens: 100.0, domain_chance: 1.0 })).collect()
    }

    fn request(escalate_only: bool) -> SessionRequest {
        SessionRequest { key: SessionKey::of_id("s"), escalate_only }
    }

    fn sticky(model: &str, provider: &str, prefix: u32) -> Sticky {
        Sticky { model: model.into(), provider: provider.into(), prefix_tokens: prefix, ts_ms: 0, turns: 1 }
    }

    fn run(q: [f64; 3], health: &[Snapshot], prev: Option<Sticky>, escalate: bool, c: &Constraints) -> (Ranking, SessionOutcome) {
        let cat = catalog();
        let mut r = rank(&cat, &preds(q), health, 10_000, 0.5, c, SCORING).unwrap();
        let o = apply(&cat, &mut r, request(escalate), prev, 10_000, 0.5, DEFAULT_COST_SCALE_USD, c);
        (r, o)
    }

    fn first(r: &Ranking) -> String {
        let cat = catalog();
        let s = &r.scored[r.chosen[0]];
        let m = &cat.models()[s.model];
        format!("{}@{}", m.id, m.endpoints[s.first_endpoint()].provider)
    }

    fn c() -> Constraints {
        Constraints { max_fallbacks: 2, ..Default::default() }
    }

    #[test]
    fn the_first_turn_is_new_and_routed_as_usual() {
        let (r, o) = run([0.8, 0.7, 0.7], &[], None, false, &c());
        assert_eq!((o.verdict, o.reason, o.turn), (Verdict::New, Reason::FirstTurn, 1));
        assert_eq!(first(&r), "a@p2");
    }

    #[test]
    fn a_session_stays_when_another_model_wins_by_less_than_the_saving() {
        // a@p2 ranks first by 0.045 utility; staying on b@p3 saves 10,000 x $0.9/M = $0.009
        // (0.45 utility at w = 0.5).
        let (r, o) = run([0.80, 0.81, 0.5], &[], Some(sticky("b", "p3", 10_000)), false, &c());
        assert_eq!((o.verdict, o.reason, o.turn), (Verdict::Kept, Reason::CacheSaving, 2));
        assert!((o.saving_usd - 0.009).abs() < 1e-12, "{}", o.saving_usd);
        assert!((o.gain - 0.045).abs() < 1e-9, "{o:?}");
        assert_eq!(first(&r), "b@p3");
        assert_eq!(r.chosen, [1, 0, 2]);
        assert_eq!(
            r.attempts[..3],
            [Attempt { scored: 1, endpoint: 0 }, Attempt { scored: 0, endpoint: 1 }, Attempt { scored: 0, endpoint: 0 }]
        );
        assert_eq!((r.scored[1].rank, r.scored[0].rank, r.scored[2].rank), (1, 2, 3));
        // On an endpoint that is not its model's first: a@p1 stays before the cheaper a@p2.
        let (r, o) = run([0.8, 0.5, 0.5], &[], Some(sticky("a", "p1", 10_000)), false, &c());
        assert_eq!((o.verdict, o.reason), (Verdict::Kept, Reason::CacheSaving));
        assert_eq!(first(&r), "a@p1");
        assert_eq!(r.attempts[..2], [Attempt { scored: 0, endpoint: 0 }, Attempt { scored: 0, endpoint: 1 }]);
        assert_eq!(r.scored[0].cost_usd, r.scored[0].endpoints[0].cost_usd);
    }

    #[test]
    fn a_large_gain_moves_the_session() {
        // 2,000 prefix tokens save $0.0018 (0.09 utility); a@p2 gains 0.30.
        let (r, o) = run([0.8, 0.3, 0.3], &[], Some(sticky("b", "p3", 2_000)), false, &c());
        assert_eq!((o.verdict, o.reason), (Verdict::Moved, Reason::Gain));
        assert!(o.gain > o.saving_utility);
        assert_eq!(first(&r), "a@p2");
        assert!(o.detail.contains("a@p2") && o.detail.contains("b@p3"), "{}", o.detail);
    }

    #[test]
    fn without_a_cached_price_the_session_follows_the_ranking() {
        let (r, o) = run([0.8, 0.5, 0.79], &[], Some(sticky("c", "p4", 10_000)), false, &c());
        assert_eq!((o.verdict, o.reason, o.saving_usd), (Verdict::Moved, Reason::Gain, 0.0));
        assert_eq!(first(&r), "a@p2");
        // Kept where it ranks first anyway.
        let (_, o) = run([0.5, 0.5, 0.99], &[], Some(sticky("c", "p4", 10_000)), false, &c());
        assert_eq!((o.verdict, o.reason), (Verdict::Kept, Reason::Best));
    }

    #[test]
    fn an_open_breaker_or_a_hard_rule_moves_it() {
        let mut health = vec![Snapshot::HEALTHY; 3];
        health[1].state = State::CoolingDown { remaining: std::time::Duration::from_secs(5) };
        let (r, o) = run([0.80, 0.81, 0.5], &health, Some(sticky("b", "p3", 10_000)), false, &c());
        assert_eq!((o.verdict, o.reason), (Verdict::Moved, Reason::Unhealthy));
        assert_eq!(first(&r), "a@p2");
        let deny = Constraints { denied_models: vec!["b".into()], ..c() };
        let (_, o) = run([0.80, 0.81, 0.5], &[], Some(sticky("b", "p3", 10_000)), false, &deny);
        assert_eq!((o.verdict, o.reason), (Verdict::Moved, Reason::ModelIneligible));
        assert!(o.detail.contains("allowed_models/denied_models"), "{}", o.detail);
        // The endpoint alone: the model stays eligible on p2.
        let ignore =
            Constraints { provider: crate::policy::ProviderPreferences { ignore: vec!["p1".into()], ..Default::default() }, ..c() };
        let (r, o) = run([0.8, 0.5, 0.5], &[], Some(sticky("a", "p1", 10_000)), false, &ignore);
        assert_eq!((o.verdict, o.reason), (Verdict::Moved, Reason::EndpointIneligible));
        assert!(o.detail.contains("provider.ignore"), "{}", o.detail);
        assert_eq!(first(&r), "a@p2");
        let (_, o) = run([0.80, 0.81, 0.5], &[], Some(sticky("gone", "p1", 10_000)), false, &c());
        assert_eq!((o.verdict, o.reason), (Verdict::Moved, Reason::NotInCatalog));
    }

    #[test]
    fn provider_order_wins_over_the_session() {
        let order = Constraints { provider: crate::policy::ProviderPreferences { order: vec!["p3".into()], ..Default::default() }, ..c() };
        let (r, o) = run([0.80, 0.81, 0.5], &[], Some(sticky("a", "p1", 10_000)), false, &order);
        assert_eq!((o.verdict, o.reason), (Verdict::Moved, Reason::ProviderOrder));
        assert_eq!(first(&r), "a@p2");
    }

    #[test]
    fn escalate_only_moves_only_to_a_better_model() {
        // No saving at all (prefix 0): without escalate_only the session on b moves to a@p2.
        let (_, o) = run([0.80, 0.81, 0.5], &[], Some(sticky("b", "p3", 0)), false, &c());
        assert_eq!(o.verdict, Verdict::Moved);
        // a is no better than b: with escalate_only, b stays.
        let (r, o) = run([0.80, 0.81, 0.5], &[], Some(sticky("b", "p3", 0)), true, &c());
        assert_eq!((o.verdict, o.reason), (Verdict::Kept, Reason::EscalateOnly));
        assert_eq!(first(&r), "b@p3");
        // A much better model: the session escalates.
        let (r, o) = run([0.8, 0.3, 0.3], &[], Some(sticky("b", "p3", 2_000)), true, &c());
        assert_eq!((o.verdict, o.reason), (Verdict::Moved, Reason::Gain));
        assert_eq!(first(&r), "a@p2");
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(SessionKey::of_id("x"), SessionKey::of_id("x"));
        assert_ne!(SessionKey::of_id("x"), SessionKey::of_user("x", ""));
        assert_ne!(SessionKey::of_user("ab", "c"), SessionKey::of_user("a", "bc"));
        let k = SessionKey::of_id("x");
        assert_eq!(SessionKey::from_hex(&k.hex()), Some(k));
        assert_eq!(k.hex().len(), 32);
    }

    #[test]
    fn the_next_turn_remembers_the_first_candidate_and_its_prefix() {
        let (r, _) = run([0.80, 0.81, 0.5], &[], Some(sticky("b", "p3", 10_000)), false, &c());
        let s = next_sticky(&catalog(), &r, 10_000, 5, 2);
        assert_eq!((s.model.as_str(), s.provider.as_str(), s.prefix_tokens, s.turns), ("b", "p3", 10_100, 2));
    }
}
