//! What routing earned over a window, read back from the decision log (SQLite or PostgreSQL):
//! the figures behind `pointsman report` (text or JSON) and the admin listener's `/report` page
//! and `/report.json`, built here once for both.
//!
//! - **Spend and savings** per model (the primary a decision chose; the model a report is on),
//!   per provider (the model's first catalog endpoint) and per profile: predicted from the
//!   decisions (`baseline_*` columns, see `savings`), realised from the reports with usage.
//! - **Calibration**: predicted against realised quality (labelled reports) and cost (reports
//!   with a cost), per model, and predicted quality in bins against what was realised.
//! - **Fallbacks**: requests with a report on a model other than their primary, and why (the
//!   primary's failure reported on the same request, if any).
//! - **Breaker openings**: the log keeps no health transitions, so they are *replayed*: the
//!   verified reports, in time order, through the same circuit breaker (`health`) with the
//!   `[health]` settings. Shared health (Redis) and reports another replica counted are the same
//!   reports in a fleet's PostgreSQL log.
//! - **Latency** percentiles of the reported attempts, overall and per model.
//! - **Prompt clusters**: k-means over the embeddings of a sample of the window's decisions
//!   (recomputed through the encoder from the kept text, or the embeddings kept instead), with
//!   each cluster's volume, winning models and mean predicted cost and quality.
//! - A timeline of spend and savings in `buckets` slices of the window.
pub mod html;
mod kmeans;
pub mod read;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use foldhash::{HashMap, HashMapExt};
use serde::Serialize;

use crate::{catalog::Catalog, health::HealthConfig, logs::LogError, outcome::Outcome};
use read::{Dec, Fb, Source};

/// The time window of a report: `[since_ms, until_ms)`, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Start (inclusive).
    pub since_ms: i64,
    /// End (exclusive).
    pub until_ms: i64,
}

/// The window when neither end is given: the last day.
pub const DEFAULT_SPAN: Duration = Duration::from_secs(86_400);

impl Window {
    /// Reads `--since` and `--until` (or the page's `since` and `until`): an RFC 3339 time
    /// (`2026-12-07T09:00:00Z`), a duration before `now_ms` (`24h`, `7d`, `90m`), `now`, or ms
    /// since the Unix epoch. Defaults: `until` now, `since` one day before `until`. The error
    /// names the parameter, what it accepts and the value given.
    pub fn parse(since: Option<&str>, until: Option<&str>, now_ms: i64) -> Result<Window, String> {
        let until_ms = match until.filter(|s| !s.trim().is_empty()) {
            Some(s) => parse_time("until", s, now_ms)?,
            None => now_ms,
        };
        let since_ms = match since.filter(|s| !s.trim().is_empty()) {
            Some(s) => parse_time("since", s, now_ms)?,
            None => until_ms - DEFAULT_SPAN.as_millis() as i64,
        };
        if since_ms >= until_ms {
            return Err(format!("since must be before until. Given: since {} and until {}", rfc3339(since_ms), rfc3339(until_ms)));
        }
        Ok(Window { since_ms, until_ms })
    }
}

fn parse_time(name: &str, s: &str, now_ms: i64) -> Result<i64, String> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_ms);
    }
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        return Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64));
    }
    if let Ok(ago) = humantime::parse_duration(t) {
        return Ok(now_ms - ago.as_millis() as i64);
    }
    Err(format!(
        "{name} must be an RFC 3339 time (2026-12-07T09:00:00Z), a duration before now (24h, 7d, 90m), `now`, or ms since the Unix epoch. Given: {s:?}"
    ))
}

/// `ms` since the Unix epoch as an RFC 3339 time (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Computes embeddings of texts (the engine's encoder), for the prompt clusters.
pub type Embedder<'a> = &'a (dyn Fn(&[String]) -> Result<Vec<Vec<f32>>, String> + Sync);

/// What a report needs besides the log.
pub struct Options<'a> {
    /// The catalog, for each model's provider (its first endpoint).
    pub catalog: Option<&'a Catalog>,
    /// The breaker settings the openings are replayed with.
    pub health: HealthConfig,
    /// The encoder, to embed sampled routing texts for the clusters (none: only kept embeddings).
    pub embed: Option<Embedder<'a>>,
    /// The id of that encoder (kept embeddings of another encoder are not mixed in).
    pub encoder_id: Option<String>,
    /// Decisions sampled for the clusters (0 skips them).
    pub cluster_sample: usize,
    /// Most clusters.
    pub clusters: usize,
    /// Slices of the timeline.
    pub buckets: usize,
    /// Which baseline the savings are measured against and why (the header says it).
    pub baseline_choice: Option<String>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            catalog: None,
            health: HealthConfig::default(),
            embed: None,
            encoder_id: None,
            cluster_sample: 400,
            clusters: 6,
            buckets: 48,
            baseline_choice: None,
        }
    }
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Attempts with a latency.
    pub n: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(mut v: Vec<f32>) -> Self {
        if v.is_empty() {
            return Percentiles::default();
        }
        // Nearest rank, each found by selection (linear) rather than a full sort; the ranks rise,
        // so each search runs above the last one's place.
        let n = v.len();
        let mut from = 0;
        let mut at = |q: f64| {
            let k = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
            let (_, x, _) = v[from..].select_nth_unstable_by(k - from, f32::total_cmp);
            let x = f64::from(*x);
            from = k;
            Some(x)
        };
        let (p50, p90, p99) = (at(0.5), at(0.9), at(0.99));
        Percentiles { n: n as u64, p50, p90, p99 }
    }
}

/// Spend and savings of one model, provider or profile (or all of them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    /// The model, provider or profile (`(none)` for decisions without a profile).
    pub key: String,
    /// Decisions (as primary, for a model).
    pub decisions: u64,
    /// Share of the window's decisions.
    pub share: f64,
    /// Predicted cost of those decisions (their primary), USD.
    pub predicted_cost_usd: f64,
    /// Decisions with a baseline.
    pub with_baseline: u64,
    /// The baseline's cost at the same predicted tokens, over the decisions with a baseline, USD.
    pub baseline_cost_usd: f64,
    /// Baseline cost minus predicted cost, over the decisions with a baseline, USD.
    pub predicted_saving_usd: f64,
    /// Mean predicted quality of the primary.
    pub predicted_quality: Option<f64>,
    /// Mean predicted quality of the baseline on the same prompts.
    pub baseline_quality: Option<f64>,
    /// Feedback reports (on the model, for a model; on the decisions' requests otherwise).
    pub reports: u64,
    /// Reports that were availability failures (timeouts, rate limits, server errors).
    pub failures: u64,
    /// Realised cost of the reports with one, USD.
    pub realised_cost_usd: f64,
    /// Reports with both a realised cost and the baseline's.
    pub realised_with_baseline: u64,
    /// The baseline's cost at the same reported tokens, over those, USD.
    pub realised_baseline_cost_usd: f64,
    /// Baseline minus realised cost, over those, USD.
    pub realised_saving_usd: f64,
    /// Mean reported quality (labelled reports).
    pub realised_quality: Option<f64>,
    /// Labelled reports.
    pub labelled: u64,
}

#[derive(Default)]
struct Acc {
    g: Group,
    pq_sum: f64,
    pq_n: u64,
    bq_sum: f64,
    bq_n: u64,
    q_sum: f64,
}

impl Acc {
    fn decision(&mut self, d: &Dec) {
        let g = &mut self.g;
        g.decisions += 1;
        if let Some(p) = d.primary {
            g.predicted_cost_usd += p.cost_usd;
            self.pq_sum += p.quality;
            self.pq_n += 1;
            if let Some(b) = d.baseline_cost_usd {
                g.with_baseline += 1;
                g.baseline_cost_usd += b;
                g.predicted_saving_usd += b - p.cost_usd;
            }
        }
        if let Some(q) = d.baseline_quality {
            self.bq_sum += q;
            self.bq_n += 1;
        }
    }

    fn report(&mut self, f: &Fb, failed: bool) {
        let g = &mut self.g;
        g.reports += 1;
        g.failures += u64::from(failed);
        if let Some(c) = f.realised_cost_usd {
            g.realised_cost_usd += c;
            if let Some(b) = f.baseline_cost_usd {
                g.realised_with_baseline += 1;
                g.realised_baseline_cost_usd += b;
                g.realised_saving_usd += b - c;
            }
        }
        if let Some(q) = f.quality {
            self.q_sum += q;
            g.labelled += 1;
        }
    }

    /// Adds `o`'s sums and counts (a provider from its models).
    fn merge(&mut self, o: &Acc) {
        let (g, h) = (&mut self.g, &o.g);
        g.decisions += h.decisions;
        g.predicted_cost_usd += h.predicted_cost_usd;
        g.with_baseline += h.with_baseline;
        g.baseline_cost_usd += h.baseline_cost_usd;
        g.predicted_saving_usd += h.predicted_saving_usd;
        g.reports += h.reports;
        g.failures += h.failures;
        g.realised_cost_usd += h.realised_cost_usd;
        g.realised_with_baseline += h.realised_with_baseline;
        g.realised_baseline_cost_usd += h.realised_baseline_cost_usd;
        g.realised_saving_usd += h.realised_saving_usd;
        g.labelled += h.labelled;
        self.pq_sum += o.pq_sum;
        self.pq_n += o.pq_n;
        self.bq_sum += o.bq_sum;
        self.bq_n += o.bq_n;
        self.q_sum += o.q_sum;
    }

    fn finish(mut self, key: String, total: u64) -> Group {
        let mean = |s: f64, n: u64| (n > 0).then(|| s / n as f64);
        self.g.key = key;
        self.g.share = if total > 0 { self.g.decisions as f64 / total as f64 } else { 0.0 };
        self.g.predicted_quality = mean(self.pq_sum, self.pq_n);
        self.g.baseline_quality = mean(self.bq_sum, self.bq_n);
        self.g.realised_quality = mean(self.q_sum, self.g.labelled);
        self.g
    }
}

/// Accumulators by key (model ids, providers, profiles), found by the key's text without a
/// copy, in the order first met.
#[derive(Default)]
struct Keyed {
    index: HashMap<String, usize>,
    accs: Vec<(String, Acc)>,
    /// The last key asked for and its place (most rows repeat a handful of keys).
    last: Option<usize>,
}

impl Keyed {
    fn slot(&mut self, key: &str) -> usize {
        if let Some(i) = self.last.filter(|&i| self.accs[i].0 == key) {
            return i;
        }
        let i = match self.index.get(key) {
            Some(&i) => i,
            None => {
                self.accs.push((key.to_string(), Acc::default()));
                self.index.insert(key.to_string(), self.accs.len() - 1);
                self.accs.len() - 1
            }
        };
        self.last = Some(i);
        i
    }

    fn get(&mut self, key: &str) -> &mut Acc {
        let i = self.slot(key);
        &mut self.accs[i].1
    }

    fn groups(self, total: u64) -> Vec<Group> {
        let mut v: Vec<Group> = self.accs.into_iter().map(|(k, a)| a.finish(k, total)).collect();
        v.sort_by(|a, b| b.decisions.cmp(&a.decisions).then(b.reports.cmp(&a.reports)).then(a.key.cmp(&b.key)));
        v
    }
}

/// Predicted against realised, for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationRow {
    /// Model id.
    pub model: String,
    /// Labelled reports whose decision predicted this model's quality.
    pub labelled: u64,
    /// Mean predicted quality over them.
    pub predicted_quality: Option<f64>,
    /// Mean reported quality over them.
    pub realised_quality: Option<f64>,
    /// Reports with a realised cost whose decision predicted this model's cost.
    pub costed: u64,
    /// Their predicted cost, USD.
    pub predicted_cost_usd: f64,
    /// Their realised cost, USD.
    pub realised_cost_usd: f64,
    /// Realised over predicted cost (none without predicted cost).
    pub cost_ratio: Option<f64>,
}

/// Labelled reports in one bin of predicted quality.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    /// Lower edge of predicted quality.
    pub from: f64,
    /// Upper edge.
    pub to: f64,
    /// Reports.
    pub n: u64,
    /// Mean predicted quality.
    pub predicted: Option<f64>,
    /// Mean reported quality.
    pub realised: Option<f64>,
}

/// Calibration of predicted quality and cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Calibration {
    /// Per model, by labelled reports.
    pub models: Vec<CalibrationRow>,
    /// Five bins of predicted quality.
    pub bins: Vec<Bin>,
}

/// Fallbacks used and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Fallbacks {
    /// Requests with at least one report.
    pub requests_reported: u64,
    /// Requests with a report on a model other than their primary (a fallback was tried).
    pub used: u64,
    /// `used / requests_reported`.
    pub share: f64,
    /// Those whose fallback report was a success.
    pub succeeded: u64,
    /// Why: the primary's failure reported on the same request (`not reported` when none was).
    pub by_reason: BTreeMap<String, u64>,
    /// Which model served as the fallback.
    pub by_model: BTreeMap<String, u64>,
}

/// One circuit opening.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Opening {
    /// Model id.
    pub model: String,
    /// When, ms since the Unix epoch.
    pub ts_ms: i64,
    /// When, RFC 3339.
    pub at: String,
    /// Its cool-down, seconds.
    pub cool_down_s: f64,
    /// Failures in a row then.
    pub consecutive_failures: u32,
    /// Error rate of the window then.
    pub error_rate: f64,
}

/// Circuit-breaker openings, replayed from the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Breakers {
    /// How they are known.
    pub method: String,
    /// Verified reports replayed.
    pub replayed_reports: u64,
    /// Openings per model.
    pub by_model: BTreeMap<String, u64>,
    /// The openings, oldest first (the last 500).
    pub openings: Vec<Opening>,
}

/// Latency of the reported attempts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Every attempt with a latency.
    pub overall: Percentiles,
    /// Successful attempts only.
    pub successes: Percentiles,
    /// Per model (all attempts).
    pub by_model: BTreeMap<String, Percentiles>,
}

/// One slice of the timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Start, ms since the Unix epoch.
    pub start_ms: i64,
    /// Decisions.
    pub decisions: u64,
    /// Their predicted cost, USD.
    pub predicted_cost_usd: f64,
    /// The baseline's cost for the decisions with a baseline, USD.
    pub baseline_cost_usd: f64,
    /// Predicted saving, USD.
    pub predicted_saving_usd: f64,
    /// Reports.
    pub reports: u64,
    /// Realised cost, USD.
    pub realised_cost_usd: f64,
    /// Realised saving, USD.
    pub realised_saving_usd: f64,
}

/// One prompt cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    /// Index.
    pub id: usize,
    /// Sampled decisions in it.
    pub size: u64,
    /// Share of the sample.
    pub share: f64,
    /// The start of one of its prompts (empty when only embeddings are kept).
    pub example: String,
    /// The models it routed to most (as primary), with their share of the cluster.
    pub top_models: Vec<(String, f64)>,
    /// Mean predicted cost, USD.
    pub predicted_cost_usd: f64,
    /// Mean predicted quality.
    pub predicted_quality: f64,
}

/// A model within a cluster, for the cost-quality scatter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Cluster index.
    pub cluster: usize,
    /// Model id.
    pub model: String,
    /// Sampled decisions.
    pub n: u64,
    /// Mean predicted cost, USD.
    pub predicted_cost_usd: f64,
    /// Mean predicted quality.
    pub predicted_quality: f64,
}

/// The prompt clusters of a sample of the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Clusters {
    /// `computed` or `skipped`.
    pub status: String,
    /// Why skipped, or how computed.
    pub note: String,
    /// Sampled decisions clustered.
    pub sample: u64,
    /// The clusters, largest first.
    pub clusters: Vec<Cluster>,
    /// Per (cluster, model).
    pub points: Vec<Point>,
}

/// Everything in one report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The log read (a PostgreSQL URL without its password).
    pub source: String,
    /// The window.
    pub window: Window,
    /// Its start, RFC 3339.
    pub since: String,
    /// Its end, RFC 3339.
    pub until: String,
    /// How long the report took to build, ms.
    pub build_ms: f64,
    /// Every decision and report of the window.
    pub totals: Group,
    /// The baselines the window's decisions were measured against, with their decision counts.
    pub baselines: BTreeMap<String, u64>,
    /// Which baseline the server measures against and why.
    pub baseline_choice: String,
    /// Per primary model (decisions) and reported model (reports), most decisions first.
    pub by_model: Vec<Group>,
    /// Per provider (a model's first catalog endpoint).
    pub by_provider: Vec<Group>,
    /// Per profile.
    pub by_profile: Vec<Group>,
    /// Predicted against realised.
    pub calibration: Calibration,
    /// Fallbacks used and why.
    pub fallbacks: Fallbacks,
    /// Circuit-breaker openings.
    pub breakers: Breakers,
    /// Latency percentiles.
    pub latency: Latency,
    /// Spend and savings over time.
    pub timeline: Vec<Bucket>,
    /// Prompt clusters.
    pub clusters: Clusters,
    /// What the figures mean and what the log does not hold.
    pub notes: Vec<String>,
}

/// Builds the report of `window` from the log at `source` (a SQLite file or a `postgres://`
/// URL). Blocking: run it off the async runtime.
///
/// One pass over the window's decisions and one over its reports (see `read`), each row
/// folded into its groups as it is read; what depends on order (the breaker replay, the first
/// fallback of a request) is taken in (time, row id) order, so both stores give the same.
pub fn build(source: &Path, window: Window, opts: &Options) -> Result<Report, LogError> {
    let started = Instant::now();
    let mut src = Source::open(source)?;
    let span = (window.until_ms - window.since_ms).max(1);
    let buckets = opts.buckets.max(1);
    let bucket_of = |ts: i64| (((ts - window.since_ms).max(0) as i128 * buckets as i128 / span as i128) as usize).min(buckets - 1);
    let mut timeline: Vec<Bucket> = (0..buckets)
        .map(|i| Bucket { start_ms: window.since_ms + (span as i128 * i as i128 / buckets as i128) as i64, ..Bucket::default() })
        .collect();

    let (mut total, mut models, mut profiles) = (Acc::default(), Keyed::default(), Keyed::default());
    let mut baselines = BTreeMap::<String, u64>::new();
    let mut cal: BTreeMap<String, (u64, f64, f64, u64, f64, f64)> = BTreeMap::new();
    let mut bins = [(0u64, 0f64, 0f64); 5];
    // Latencies by the model's place in `models`.
    let mut latencies: Vec<Vec<f32>> = Vec::new();
    let (mut all_lat, mut ok_lat) = (Vec::new(), Vec::new());
    let mut requests_reported = 0u64;
    // Per request (by hashed id): the primary's first failure, and the first report on another
    // model (its model, success), each with its (time, row id).
    let mut primary_failed: HashMap<u64, ((i64, i64), String)> = HashMap::new();
    let mut fallback_reports: HashMap<u64, ((i64, i64), String, bool)> = HashMap::new();
    // Verified reports for the breaker replay: (time, row id, model's place, outcome).
    let mut events: Vec<(i64, i64, u32, Outcome)> = Vec::new();
    src.read(window, &mut |row| match row {
        read::Row::Decision(d) => {
            let key = d.primary.map_or("(no candidate)", |c| c.model);
            total.decision(d);
            models.get(key).decision(d);
            profiles.get(d.profile.unwrap_or("(none)")).decision(d);
            if let Some(b) = d.baseline_model {
                match baselines.get_mut(b) {
                    Some(n) => *n += 1,
                    None => {
                        baselines.insert(b.to_string(), 1);
                    }
                }
            }
            let b = &mut timeline[bucket_of(d.ts_ms)];
            b.decisions += 1;
            if let Some(p) = d.primary {
                b.predicted_cost_usd += p.cost_usd;
                if let Some(bc) = d.baseline_cost_usd {
                    b.baseline_cost_usd += bc;
                    b.predicted_saving_usd += bc - p.cost_usd;
                }
            }
        }
        read::Row::Feedback(f) => {
            let outcome = Outcome::parse(f.outcome);
            let failed = outcome.is_some_and(Outcome::is_failure);
            total.report(f, failed);
            let m = models.slot(f.model);
            models.accs[m].1.report(f, failed);
            if let Some(d) = &f.decision {
                profiles.get(d.profile.unwrap_or("(none)")).report(f, failed);
            }
            let b = &mut timeline[bucket_of(f.ts_ms)];
            b.reports += 1;
            if let Some(c) = f.realised_cost_usd {
                b.realised_cost_usd += c;
                if let Some(bc) = f.baseline_cost_usd {
                    b.realised_saving_usd += bc - c;
                }
            }
            if let Some(l) = f.latency_ms {
                all_lat.push(l as f32);
                if outcome == Some(Outcome::Success) {
                    ok_lat.push(l as f32);
                }
                if latencies.len() <= m {
                    latencies.resize_with(m + 1, Vec::new);
                }
                latencies[m].push(l as f32);
            }
            if let Some((pq, pc)) = f.decision.and_then(|d| d.reported) {
                let e = match cal.get_mut(f.model) {
                    Some(e) => e,
                    None => cal.entry(f.model.to_string()).or_default(),
                };
                if let Some(q) = f.quality {
                    e.0 += 1;
                    e.1 += pq;
                    e.2 += q;
                    let bin = &mut bins[((pq * 5.0) as usize).min(4)];
                    bin.0 += 1;
                    bin.1 += pq;
                    bin.2 += q;
                }
                if let Some(rc) = f.realised_cost_usd {
                    e.3 += 1;
                    e.4 += pc;
                    e.5 += rc;
                }
            }
            let request = f.request;
            requests_reported += u64::from(f.first_of_request);
            let at = (f.ts_ms, f.id);
            if let Some(d) = &f.decision {
                if d.primary == f.model {
                    if failed {
                        let e = primary_failed.entry(request).or_insert_with(|| (at, f.outcome.to_string()));
                        if at < e.0 {
                            *e = (at, f.outcome.to_string());
                        }
                    }
                } else {
                    let ok = outcome == Some(Outcome::Success);
                    let e = fallback_reports.entry(request).or_insert_with(|| (at, f.model.to_string(), ok));
                    if at < e.0 {
                        *e = (at, f.model.to_string(), ok);
                    }
                }
            }
            if f.verified {
                if let Some(o) = outcome {
                    events.push((f.ts_ms, f.id, m as u32, o));
                }
            }
        }
    })?;

    let n = total.g.decisions;
    let model_names: Vec<String> = models.accs.iter().map(|(k, _)| k.clone()).collect();
    // Providers: each model's first catalog endpoint, summed over the models' groups.
    let mut providers = Keyed::default();
    for (model, acc) in &models.accs {
        let provider = opts.catalog.and_then(|c| c.get(model)).map_or_else(|| "(not in catalog)".to_string(), |m| m.provider().to_string());
        providers.get(&provider).merge(acc);
    }
    let by_model = models.groups(n);
    let by_provider = providers.groups(n);
    let by_profile = profiles.groups(n);
    let mean = |s: f64, n: u64| (n > 0).then(|| s / n as f64);
    let calibration = Calibration {
        models: cal
            .into_iter()
            .map(|(model, (l, pq, q, c, pc, rc))| CalibrationRow {
                model,
                labelled: l,
                predicted_quality: mean(pq, l),
                realised_quality: mean(q, l),
                costed: c,
                predicted_cost_usd: pc,
                realised_cost_usd: rc,
                cost_ratio: (pc > 0.0).then(|| rc / pc),
            })
            .collect(),
        bins: bins
            .iter()
            .enumerate()
            .map(|(i, (n, p, q))| Bin {
                from: i as f64 / 5.0,
                to: (i + 1) as f64 / 5.0,
                n: *n,
                predicted: mean(*p, *n),
                realised: mean(*q, *n),
            })
            .collect(),
    };
    let mut fallbacks = Fallbacks { requests_reported, used: fallback_reports.len() as u64, ..Fallbacks::default() };
    fallbacks.share = if fallbacks.requests_reported > 0 { fallbacks.used as f64 / fallbacks.requests_reported as f64 } else { 0.0 };
    for (request, (_, model, ok)) in &fallback_reports {
        fallbacks.succeeded += u64::from(*ok);
        *fallbacks.by_model.entry(model.clone()).or_default() += 1;
        let why = primary_failed.get(request).map_or("not reported", |(_, o)| o.as_str());
        *fallbacks.by_reason.entry(why.to_string()).or_default() += 1;
    }
    let breakers = replay_breakers(events, &model_names, &opts.health);
    let latency = Latency {
        overall: Percentiles::of(all_lat),
        successes: Percentiles::of(ok_lat),
        by_model: latencies
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (model_names[i].clone(), Percentiles::of(v)))
            .collect(),
    };
    let clusters = prompt_clusters(&mut src, window, opts);
    let notes = vec![
        format!("Savings are measured against the baseline model of each decision (`[savings] baseline_model`, else {}), priced at the same tokens: the primary's predicted tokens for a decision, the reported tokens for a report.", crate::savings::BEST_SINGLE_MODEL_RULE),
        "Predicted figures count decisions; realised figures count feedback reports with usage (the reported cost, else the model's list price at the reported tokens). Decisions logged before the savings columns have no baseline.".into(),
        "Providers are each model's first catalog endpoint; the endpoint a request actually used is not in this log yet.".into(),
        format!("Breaker openings are replayed from the verified reports with the [health] settings (the log keeps no health transitions): {} reports replayed.", breakers.replayed_reports),
        "Exploration and shadow routing are not in this log: no figures for them.".into(),
    ];
    let source_name = crate::logs::postgres::source_name(source);
    let totals = total.finish("all".into(), n);
    Ok(Report {
        source: source_name,
        window,
        since: rfc3339(window.since_ms),
        until: rfc3339(window.until_ms),
        build_ms: started.elapsed().as_secs_f64() * 1e3,
        totals,
        baselines,
        baseline_choice: opts.baseline_choice.clone().unwrap_or_else(|| crate::savings::SavingsConfig::default().describe()),
        by_model,
        by_provider,
        by_profile,
        calibration,
        fallbacks,
        breakers,
        latency,
        timeline,
        clusters,
        notes,
    })
}

/// Replays verified reports `(time, row id, model's place in names, outcome)`, in (time, row
/// id) order, through a circuit breaker per model with `cfg` (the serving breaker's
/// transitions, `health::Replay`), and notes each opening.
fn replay_breakers(mut events: Vec<(i64, i64, u32, Outcome)>, names: &[String], cfg: &HealthConfig) -> Breakers {
    events.sort_unstable_by_key(|e| (e.0, e.1));
    let mut replay = crate::health::Replay::new(HealthConfig { shared: None, ..cfg.clone() });
    let t0 = Instant::now();
    let first = events.first().map_or(0, |e| e.0);
    let mut out = Breakers {
        method: "replayed: the verified feedback reports, in time order, through the circuit breaker with this server's [health] settings"
            .into(),
        replayed_reports: events.len() as u64,
        ..Breakers::default()
    };
    for &(ts, _, model, outcome) in &events {
        let now = t0 + Duration::from_millis((ts - first).max(0) as u64);
        if let Some(o) = replay.record(model as usize, outcome, now) {
            let name = &names[model as usize];
            *out.by_model.entry(name.clone()).or_default() += 1;
            out.openings.push(Opening {
                model: name.clone(),
                ts_ms: ts,
                at: rfc3339(ts),
                cool_down_s: o.cool_down.as_secs_f64(),
                consecutive_failures: o.consecutive_failures,
                error_rate: o.error_rate,
            });
        }
    }
    let keep = out.openings.len().saturating_sub(500);
    out.openings.drain(..keep);
    out
}

/// k-means over the embeddings of a sample of the window's decisions.
fn prompt_clusters(src: &mut Source, window: Window, opts: &Options) -> Clusters {
    let skipped = |note: String| Clusters { status: "skipped".into(), note, ..Clusters::default() };
    if opts.cluster_sample == 0 {
        return skipped("clusters off (no sample asked for)".into());
    }
    let sample = match src.sample(window, opts.cluster_sample) {
        Ok(s) => s,
        Err(e) => return skipped(format!("the sample could not be read: {e}")),
    };
    let texts: Vec<String> = sample.iter().filter_map(|s| s.text.clone()).collect();
    let embedded = match (opts.embed, texts.is_empty()) {
        (Some(embed), false) => match embed(&texts) {
            Ok(v) => Some(v),
            Err(e) => return skipped(format!("the encoder failed on the sample: {e}")),
        },
        _ => None,
    };
    let mut embedded = embedded.map(Vec::into_iter);
    let mut rows = Vec::new();
    for s in &sample {
        let v = match (&s.text, &s.embedding) {
            (Some(_), _) => embedded.as_mut().and_then(Iterator::next),
            (None, Some(e)) if opts.encoder_id.as_deref().is_none_or(|id| id == s.encoder) => Some(e.clone()),
            _ => None,
        };
        if let (Some(v), Some(primary)) = (v, s.candidates.first()) {
            rows.push((v, s, primary));
        }
    }
    if rows.len() < 16 {
        let why = if opts.embed.is_none() && !texts.is_empty() {
            "no encoder to embed the sampled texts".to_string()
        } else {
            format!("{} sampled decisions with an embedding (16 needed)", rows.len())
        };
        return skipped(format!("clusters skipped: {why}"));
    }
    let k = opts.clusters.clamp(1, (rows.len() / 8).max(1));
    let points: Vec<Vec<f32>> = rows.iter().map(|r| r.0.clone()).collect();
    let assign = kmeans::cluster(&points, k, 30, 0x5EED);
    let mut clusters: Vec<Cluster> = (0..k)
        .map(|id| Cluster {
            id,
            size: 0,
            share: 0.0,
            example: String::new(),
            top_models: Vec::new(),
            predicted_cost_usd: 0.0,
            predicted_quality: 0.0,
        })
        .collect();
    let mut per: BTreeMap<(usize, String), (u64, f64, f64)> = BTreeMap::new();
    for ((_, s, primary), &c) in rows.iter().zip(&assign) {
        let cl = &mut clusters[c];
        cl.size += 1;
        cl.predicted_cost_usd += primary.cost_usd;
        cl.predicted_quality += primary.quality;
        if cl.example.is_empty() {
            if let Some(t) = &s.text {
                cl.example = t.chars().take(80).collect();
            }
        }
        let e = per.entry((c, primary.model.clone())).or_default();
        e.0 += 1;
        e.1 += primary.cost_usd;
        e.2 += primary.quality;
    }
    let n = rows.len() as f64;
    for cl in &mut clusters {
        if cl.size > 0 {
            cl.predicted_cost_usd /= cl.size as f64;
            cl.predicted_quality /= cl.size as f64;
        }
        cl.share = cl.size as f64 / n;
        let mut top: Vec<(String, u64)> = per.iter().filter(|((c, _), _)| *c == cl.id).map(|((_, m), v)| (m.clone(), v.0)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        cl.top_models = top.into_iter().take(3).map(|(m, c)| (m, c as f64 / cl.size.max(1) as f64)).collect();
    }
    clusters.retain(|c| c.size > 0);
    clusters.sort_by(|a, b| b.size.cmp(&a.size).then(a.id.cmp(&b.id)));
    let points = per
        .into_iter()
        .map(|((cluster, model), (n, c, q))| Point { cluster, model, n, predicted_cost_usd: c / n as f64, predicted_quality: q / n as f64 })
        .collect();
    Clusters {
        status: "computed".into(),
        note: format!(
            "k-means (cosine, k = {k}) over {} sampled decisions, embedded {}",
            rows.len(),
            if opts.embed.is_some() { "by the encoder from their routing text" } else { "as kept in the log" }
        ),
        sample: rows.len() as u64,
        clusters,
        points,
    }
}

/// `x` USD with six decimals (the text report and the page write money the same way).
pub fn usd(x: f64) -> String {
    let s = format!("{x:.6}");
    // A tiny negative sum reads as zero, not as "-0.000000".
    if s == "-0.000000" {
        "0.000000".into()
    } else {
        s
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The report as text for a terminal.
pub fn text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let t = &r.totals;
    let _ = writeln!(o, "Pointsman report: {} to {} ({})", r.since, r.until, r.source);
    let baselines: Vec<String> = r.baselines.iter().map(|(m, n)| format!("{m} ({n})")).collect();
    let _ = writeln!(o, "baseline: {}", if baselines.is_empty() { "none logged".into() } else { baselines.join(", ") });
    let _ = writeln!(o, "  (decisions logged; the server's baseline: {})", r.baseline_choice);
    let _ = writeln!(o, "\nrequests {}  reports {}  labelled {}", t.decisions, t.reports, t.labelled);
    let _ = writeln!(
        o,
        "predicted spend ${}  baseline ${}  saving ${} ({} decisions with a baseline)",
        usd(t.predicted_cost_usd),
        usd(t.baseline_cost_usd),
        usd(t.predicted_saving_usd),
        t.with_baseline
    );
    let _ = writeln!(
        o,
        "realised spend  ${}  baseline ${}  saving ${} ({} reports with usage)",
        usd(t.realised_cost_usd),
        usd(t.realised_baseline_cost_usd),
        usd(t.realised_saving_usd),
        t.realised_with_baseline
    );
    let _ = writeln!(
        o,
        "quality: predicted {}  baseline predicted {}  realised {}",
        opt(t.predicted_quality, 3),
        opt(t.baseline_quality, 3),
        opt(t.realised_quality, 3)
    );
    for (title, groups) in [("model", &r.by_model), ("provider", &r.by_provider), ("profile", &r.by_profile)] {
        let _ = writeln!(o, "\nby {title}");
        let _ = writeln!(
            o,
            "  {:<34} {:>8} {:>6} {:>12} {:>12} {:>8} {:>12} {:>12} {:>7} {:>7}",
            title, "requests", "share", "pred $", "pred saved $", "reports", "real $", "real saved $", "pred q", "real q"
        );
        for g in groups.iter() {
            let _ = writeln!(
                o,
                "  {:<34} {:>8} {:>5.1}% {:>12} {:>12} {:>8} {:>12} {:>12} {:>7} {:>7}",
                truncate(&g.key, 34),
                g.decisions,
                g.share * 100.0,
                usd(g.predicted_cost_usd),
                usd(g.predicted_saving_usd),
                g.reports,
                usd(g.realised_cost_usd),
                usd(g.realised_saving_usd),
                opt(g.predicted_quality, 3),
                opt(g.realised_quality, 3)
            );
        }
    }
    let _ = writeln!(o, "\ncalibration (labelled reports)");
    let _ = writeln!(o, "  {:<34} {:>8} {:>7} {:>7} {:>8} {:>10}", "model", "labelled", "pred q", "real q", "costed", "real/pred $");
    for c in &r.calibration.models {
        let _ = writeln!(
            o,
            "  {:<34} {:>8} {:>7} {:>7} {:>8} {:>10}",
            truncate(&c.model, 34),
            c.labelled,
            opt(c.predicted_quality, 3),
            opt(c.realised_quality, 3),
            c.costed,
            opt(c.cost_ratio, 2)
        );
    }
    for b in r.calibration.bins.iter().filter(|b| b.n > 0) {
        let _ = writeln!(o, "  predicted {:.1}-{:.1}: {} reports, realised {}", b.from, b.to, b.n, opt(b.realised, 3));
    }
    let f = &r.fallbacks;
    let _ = writeln!(
        o,
        "\nfallbacks: {} of {} reported requests ({:.1}%), {} succeeded",
        f.used,
        f.requests_reported,
        f.share * 100.0,
        f.succeeded
    );
    for (why, n) in &f.by_reason {
        let _ = writeln!(o, "  because the primary: {why}: {n}");
    }
    for (m, n) in &f.by_model {
        let _ = writeln!(o, "  served by {m}: {n}");
    }
    let b = &r.breakers;
    let _ = writeln!(o, "\nbreaker openings: {} ({})", b.openings.len(), b.method);
    for op in b.openings.iter().rev().take(20) {
        let _ = writeln!(o, "  {} {} cool-down {:.0}s, {} failures in a row", op.at, op.model, op.cool_down_s, op.consecutive_failures);
    }
    let l = &r.latency;
    let p = |x: &Percentiles| format!("p50 {} p90 {} p99 {} ms (n {})", opt(x.p50, 0), opt(x.p90, 0), opt(x.p99, 0), x.n);
    let _ = writeln!(o, "\nlatency: {}; successes {}", p(&l.overall), p(&l.successes));
    for (m, x) in &l.by_model {
        let _ = writeln!(o, "  {:<34} {}", truncate(m, 34), p(x));
    }
    let c = &r.clusters;
    let _ = writeln!(o, "\nprompt clusters: {}", c.note);
    for cl in &c.clusters {
        let top: Vec<String> = cl.top_models.iter().map(|(m, s)| format!("{m} {:.0}%", s * 100.0)).collect();
        let _ = writeln!(
            o,
            "  #{} {:>5.1}% pred ${} q {:.3}: {}  e.g. {:?}",
            cl.id,
            cl.share * 100.0,
            usd(cl.predicted_cost_usd),
            cl.predicted_quality,
            top.join(", "),
            cl.example
        );
    }
    let _ = writeln!(o, "\nnotes:");
    for n in &r.notes {
        let _ = writeln!(o, "  - {n}");
    }
    let _ = writeln!(o, "built in {:.0} ms", r.build_ms);
    o
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}

/// Why the running service could not build a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The decision log is off.
    #[error("the decision log is off (decision_log.enabled = false): there is nothing to report")]
    NoLog,
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The worker thread failed.
    #[error("report worker: {0}")]
    Worker(String),
}

/// The report of `window` for the running `service`: its decision log (the SQLite file or the
/// fleet's PostgreSQL), its catalog and encoder (for providers and the prompt clusters, over
/// `cluster_sample` sampled decisions; 0 skips them) and its `[health]` settings. Built on a
/// thread of its own (the PostgreSQL reader drives a runtime of its own).
pub async fn for_service(
    service: &std::sync::Arc<crate::service::Service>,
    window: Window,
    cluster_sample: usize,
) -> Result<Report, ReportError> {
    let config = service.config();
    if !config.decision_log.enabled {
        return Err(ReportError::NoLog);
    }
    let source = config.decision_log.url.clone().map_or_else(|| config.decision_log.path.clone(), std::path::PathBuf::from);
    let engine = service.engine();
    let baseline_choice = match engine.as_ref().and_then(|e| service.baseline(e)) {
        Some(b) => b.describe(),
        None => config.savings.describe(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pointsman-report".into())
        .spawn(move || {
            let embed = |texts: &[String]| -> Result<Vec<Vec<f32>>, String> {
                let e = engine.as_ref().ok_or("models are loading")?;
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                e.encoder().embed_many(&refs, &|_| {}).map_err(|e| e.to_string())
            };
            let opts = Options {
                baseline_choice: Some(baseline_choice),
                catalog: engine.as_ref().map(|e| e.catalog()),
                health: config.health.clone(),
                embed: engine.as_ref().map(|_| &embed as Embedder<'_>),
                encoder_id: engine.as_ref().map(|e| e.encoder().id().to_string()),
                cluster_sample,
                ..Options::default()
            };
            let _ = tx.send(build(&source, window, &opts));
        })
        .map_err(|e| ReportError::Worker(e.to_string()))?;
    rx.await.map_err(|_| ReportError::Worker("the report thread ended without an answer".into()))?.map_err(ReportError::from)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_times_durations_and_name_the_bad_parameter() {
        let now = 1_800_000_000_000;
        let w = Window::parse(Some("24h"), None, now).unwrap();
        assert_eq!((w.since_ms, w.until_ms), (now - 86_400_000, now));
        let w = Window::parse(Some("2026-12-07T09:00:00Z"), Some("2026-12-07T10:00:00Z"), now).unwrap();
        assert_eq!(w.until_ms - w.since_ms, 3_600_000);
        assert_eq!(rfc3339(w.since_ms), "2026-12-07T09:00:00Z");
        let e = Window::parse(Some("yesterday-ish"), None, now).unwrap_err();
        assert!(e.starts_with("since must be") && e.contains("yesterday-ish"), "{e}");
        let e = Window::parse(Some("1h"), Some("2h"), now).unwrap_err();
        assert!(e.contains("since must be before until"), "{e}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(|x| x as f32).collect());
        assert_eq!((p.n, p.p50, p.p90, p.p99), (100, Some(50.0), Some(90.0), Some(99.0)));
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
    }
}
