//! What makes a Feedback report trustworthy: the models offered for each recent request id (by
//! this replica, or with `health.shared` by any replica of the fleet), and, per offered model,
//! whether a report on it already moved health and whether a verified report on it was logged.
//!
//! - A report **counts** for health (moves the model's breaker) when the model was offered for
//!   that request id (or `health.count_unknown_requests` is on) and no report on the same
//!   (request id, model) counted before, here or, as far as this replica has heard through the
//!   stream, on another replica. So a client repeating a report, or retrying one that was
//!   answered RESOURCE_EXHAUSTED after health had seen it, moves health once.
//! - A report is **verified** (a training label by default) when the model was offered for that
//!   request id and it is the first report on that (request id, model) to be logged as verified.
//!
//! Request ids and model ids are kept as keyed hashes (SipHash with this process's random key,
//! 64 bits), so a client can neither make two ids collide nor learn anything from the table.
//! The table is bounded (`health.recent_requests` ids, one hour each); an id that has left it is
//! unknown again.
use std::{
    hash::BuildHasher as _,
    sync::{Arc, Mutex},
    time::Duration,
};

/// How long an offered set is remembered.
const TTL: Duration = Duration::from_secs(3600);

/// One model reported on for a request id.
#[derive(Debug, Clone, Copy)]
struct Mark {
    model: u64,
    /// A report on it moved health (here, or on another replica as read from the stream).
    counted: bool,
    /// A verified report on it is logged (or being logged).
    logged: bool,
}

#[derive(Debug, Default)]
struct Slots {
    /// Keyed hashes of the models offered, primary first; empty for an id only reported on.
    offered: Vec<u64>,
    /// The models reported on.
    reported: Vec<Mark>,
}

impl Slots {
    fn mark(&mut self, model: u64) -> &mut Mark {
        let i = match self.reported.iter().position(|m| m.model == model) {
            Some(i) => i,
            None => {
                self.reported.push(Mark { model, counted: false, logged: false });
                self.reported.len() - 1
            }
        };
        &mut self.reported[i]
    }
}

#[derive(Debug, Default)]
struct Entry(Mutex<Slots>);

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one report may do, from [`Offers::claim`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claim {
    /// A replica of the fleet routed this request id recently (its offered set is known here).
    pub known_request: bool,
    /// The model was among those offered for it (primary or fallback).
    pub offered: bool,
    /// The report moves health: the first on this (request id, model) that may.
    pub counts: bool,
    /// It would have moved health, but a report on the same (request id, model) already did.
    pub duplicate: bool,
    /// The model was offered and this is the first report on it logged as verified.
    pub verified: bool,
}

/// The offered sets of recent request ids and the reports already taken on them. Cheap to share.
pub struct Offers {
    cache: moka::sync::Cache<u64, Arc<Entry>>,
    hasher: std::hash::RandomState,
}

impl Offers {
    /// Remembers up to `capacity` request ids, each for an hour.
    pub fn new(capacity: u64) -> Self {
        Self { cache: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(TTL).build(), hasher: std::hash::RandomState::new() }
    }

    fn key(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    fn entry(&self, request_id: &str) -> Arc<Entry> {
        self.cache.get_with(self.key(request_id), Arc::default)
    }

    /// Records the models offered for `request_id` (this replica's decision, or another
    /// replica's read from the stream). A set already known is extended, and the reports already
    /// taken on it are kept.
    pub fn offer<'a>(&self, request_id: &str, models: impl IntoIterator<Item = &'a str>) {
        let entry = self.entry(request_id);
        let mut slots = entry.lock();
        for m in models {
            let h = self.key(m);
            if !slots.offered.contains(&h) {
                slots.offered.push(h);
            }
        }
    }

    /// Decides what a report on (`request_id`, `model`) may do, and takes its place: a second
    /// report on the same pair neither counts nor is verified. `in_catalog`: the model is one of
    /// the catalog's (only those have health). `count_unknown`: `health.count_unknown_requests`.
    pub fn claim(&self, request_id: &str, model: &str, in_catalog: bool, count_unknown: bool) -> Claim {
        let key = self.key(request_id);
        let entry = match self.cache.get(&key) {
            Some(e) => e,
            // Reports on ids nobody offered count only with `count_unknown_requests`, and then
            // once per (id, model) too.
            None if count_unknown && in_catalog => self.cache.get_with(key, Arc::default),
            None => return Claim::default(),
        };
        let model = self.key(model);
        let mut slots = entry.lock();
        let known_request = !slots.offered.is_empty();
        let offered = slots.offered.contains(&model);
        let eligible = in_catalog && (offered || count_unknown);
        if !eligible && !offered {
            return Claim { known_request, ..Claim::default() };
        }
        let mark = slots.mark(model);
        let counts = eligible && !mark.counted;
        let verified = offered && !mark.logged;
        mark.counted |= counts;
        mark.logged |= verified;
        Claim { known_request, offered, counts, duplicate: eligible && !counts, verified }
    }

    /// Gives back the verified place a report took in [`Offers::claim`] when the log refused
    /// it, so that its retry is logged as verified (it does not count for health again).
    pub fn unlog(&self, request_id: &str, model: &str) {
        if let Some(entry) = self.cache.get(&self.key(request_id)) {
            let model = self.key(model);
            if let Some(m) = entry.lock().reported.iter_mut().find(|m| m.model == model) {
                m.logged = false;
            }
        }
    }

    /// Records that another replica counted (and logged) a report on (`request_id`, `model`).
    /// Returns false when one already counted here: the fleet has applied it once already.
    pub fn take_remote(&self, request_id: &str, model: &str) -> bool {
        let entry = self.entry(request_id);
        let mut slots = entry.lock();
        let mark = slots.mark(self.key(model));
        let fresh = !mark.counted;
        mark.counted = true;
        mark.logged = true;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_offered_model_counts_and_is_verified() {
        let o = Offers::new(100);
        o.offer("r1", ["a", "b"]);
        let first = o.claim("r1", "a", true, false);
        assert_eq!(first, Claim { known_request: true, offered: true, counts: true, duplicate: false, verified: true });
        for _ in 0..4 {
            let again = o.claim("r1", "a", true, false);
            assert_eq!(again, Claim { known_request: true, offered: true, counts: false, duplicate: true, verified: false });
        }
        // The fallback is a model of its own.
        assert!(o.claim("r1", "b", true, false).counts);
        // Not offered: neither counts nor is verified, and takes no place.
        let c = o.claim("r1", "c", true, false);
        assert_eq!(c, Claim { known_request: true, ..Claim::default() });
        // Unknown id: nothing, unless count_unknown_requests, and then once.
        assert_eq!(o.claim("forged", "a", true, false), Claim::default());
        let c = o.claim("forged", "a", true, true);
        assert!(c.counts && !c.verified && !c.known_request && !c.offered);
        assert!(o.claim("forged", "a", true, true).duplicate);
        // A model outside the catalog never counts, but its offered report is verified once.
        o.offer("r2", ["outside"]);
        let c = o.claim("r2", "outside", false, false);
        assert!(!c.counts && !c.duplicate && c.verified);
        assert!(!o.claim("r2", "outside", false, false).verified);
    }

    #[test]
    fn a_refused_report_is_verified_on_retry_but_counts_once() {
        let o = Offers::new(100);
        o.offer("r", ["a"]);
        assert!(o.claim("r", "a", true, false).counts);
        o.unlog("r", "a");
        let retry = o.claim("r", "a", true, false);
        assert!(retry.verified && !retry.counts && retry.duplicate);
    }

    #[test]
    fn another_replicas_report_takes_the_place() {
        let o = Offers::new(100);
        // The report arrives through the stream before (or without) the offered set.
        assert!(o.take_remote("r", "a"));
        assert!(!o.take_remote("r", "a"), "a re-sent report is applied once");
        o.offer("r", ["a", "b"]);
        let c = o.claim("r", "a", true, false);
        assert!(c.known_request && c.offered && !c.counts && !c.verified, "{c:?}");
        // A local report first, then the same one from another replica: applied once.
        assert!(o.claim("r", "b", true, false).counts);
        assert!(!o.take_remote("r", "b"));
    }
}
