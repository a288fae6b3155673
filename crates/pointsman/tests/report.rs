//! The report end to end: a real server replays a day of traffic, compressed into 72 s, from the
//! shipped routing data (2,400 routes of AlpacaEval and MMLU-Pro prompts arriving on a diurnal
//! curve, feedback with the data's own quality labels and output tokens, rate limits, fallbacks
//! after timeouts, and a 15:00 outage that opens a circuit), then the figures are held to what
//! the test sent and the server counted, and read back three ways that must agree:
//! `/report.json` on the admin listener, the `/report` page rendered by a real headless Chromium
//! from Debian's packages (`scripts/bootstrap.sh --browser`), and `pointsman report --json`.
//! The page's screenshot is decoded and checked not to be blank; with
//! `POINTSMAN_UPDATE_SCREENSHOT=1` it also replaces `docs/img/report.png` (the README's).
//!
//! A second test writes the same records to SQLite and to a real PostgreSQL and checks that the
//! two reports agree (the page works on a fleet's log).
mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use pointsman::pb::{self, Outcome};
use serde_json::Value;

#[path = "common/servers.rs"]
mod servers;

/// The tests of this file start heavy servers: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The day, compressed: 96 quarter-hours, each `QUARTER` of wall time (a day in 72 s). The
/// log's timestamps are the real times of the requests: the report's window is those 72 s, and
/// its 48 slices are half-hours of the replayed day.
const QUARTERS: usize = 96;
const QUARTER: Duration = Duration::from_millis(750);
/// Requests over the day, spread by a diurnal curve ([`diurnal`]).
const DAY_REQUESTS: usize = 2400;
/// Requests in flight at once within a quarter-hour.
const CONCURRENCY: usize = 4;
/// The quarter-hour (15:00) of the provider outage that opens a circuit.
const OUTAGE_AT: usize = 60;

/// One prompt of the routing data with each model's score and output tokens.
struct Prompt {
    text: String,
    labels: BTreeMap<String, (f64, u32)>,
}

/// The prompts of a shipped routing log with at least 20 models labelled, by prompt id.
fn prompts_of(file: &str) -> BTreeMap<String, Prompt> {
    let path = shared_data().join(file);
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
    let mut by_id: BTreeMap<String, Prompt> = BTreeMap::new();
    for line in text.lines() {
        let r: pointsman::record::LogRecord = serde_json::from_str(line).unwrap();
        let p = by_id.entry(r.prompt_id.clone()).or_insert_with(|| Prompt { text: r.prompt.clone(), labels: BTreeMap::new() });
        p.labels.insert(r.model, (r.score, r.output_tokens.max(0) as u32));
    }
    by_id.retain(|_, p| p.labels.len() >= 20);
    by_id
}

/// `n` prompts: every AlpacaEval prompt (open questions), then MMLU-Pro's (multiple choice),
/// mixed by prompt id (a hash), so the day sees both kinds throughout.
fn prompts(n: usize) -> Vec<Prompt> {
    let mut all: Vec<(String, Prompt)> = prompts_of("alpaca_eval2/train.jsonl.gz").into_iter().collect();
    let more = n.saturating_sub(all.len());
    all.extend(prompts_of("mmlu_pro/train.jsonl.gz").into_iter().take(more));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(all.len() >= n, "{} prompts in the shipped data, {n} wanted", all.len());
    all.into_iter().take(n).map(|(_, p)| p).collect()
}

/// Requests in each quarter-hour of the day: quiet at night, a morning rise to a late-morning
/// peak, a higher afternoon peak, an evening tail; about `total` in all.
fn diurnal(total: usize) -> Vec<usize> {
    let weight = |q: usize| {
        let h = q as f64 / 4.0;
        0.12 + 0.8 * (-((h - 10.5) / 2.0).powi(2)).exp() + (-((h - 15.0) / 2.5).powi(2)).exp() + 0.3 * (-((h - 20.0) / 1.5).powi(2)).exp()
    };
    let sum: f64 = (0..QUARTERS).map(weight).sum();
    (0..QUARTERS).map(|q| ((weight(q) / sum * total as f64).round() as usize).max(1)).collect()
}

/// A profile as the report names it.
fn profile_key(applied: &str) -> String {
    if applied.is_empty() {
        "(none)".into()
    } else {
        applied.into()
    }
}

/// What the test sent, to hold the report to.
#[derive(Default)]
struct Sent {
    decisions: usize,
    reports: usize,
    predicted: f64,
    saving: f64,
    realised: f64,
    realised_baseline: f64,
    fallbacks: usize,
    rate_limited: usize,
    latencies: usize,
    by_profile: BTreeMap<String, u64>,
    by_primary: BTreeMap<String, u64>,
    baselines: BTreeMap<String, u64>,
    /// Failures reported in a row per model (the day's traffic keeps each under 3, so that only
    /// the outage opens a circuit).
    failing: BTreeMap<String, u32>,
}

/// One request of the day: routed under `profile`, then reported. Every 16th request's primary
/// times out and its first fallback answers; every 48th (offset) is rate limited with no
/// fallback; the rest succeed with the data's own label and output tokens.
async fn one(
    mut client: pb::router_client::RouterClient<tonic::transport::Channel>,
    p: &Prompt,
    i: usize,
    profile: &str,
    catalog: &pointsman::catalog::Catalog,
    sent: &std::sync::Mutex<Sent>,
) {
    let r = client
        .route(pb::RouteRequest { prompt: p.text.clone(), profile: profile.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let s = r.savings.clone().expect("Route carries the predicted saving");
    assert!(close(s.saving_usd, s.baseline_cost_usd - s.predicted_cost_usd));
    assert!(close(s.predicted_cost_usd, r.candidates[0].predicted_cost_usd));
    let primary = r.candidates[0].model.clone();
    let list_price = |model: &str, i: u32, o: u32| catalog.get(model).unwrap().cost_usd(i, f64::from(o));
    let mut reports = Vec::new();
    {
        let mut t = sent.lock().unwrap();
        t.decisions += 1;
        t.predicted += s.predicted_cost_usd;
        t.saving += s.saving_usd;
        *t.by_profile.entry(profile_key(&r.profile)).or_default() += 1;
        *t.by_primary.entry(primary.clone()).or_default() += 1;
        *t.baselines.entry(s.baseline_model.clone()).or_default() += 1;
        let streak = t.failing.get(&primary).copied().unwrap_or(0);
        let fail = streak < 2 && (i % 16 == 7 && r.candidates.len() > 1 || i % 48 == 31);
        let mut report = |t: &mut Sent, model: &str, outcome: Outcome, latency: f64| {
            let (q, out) = p.labels.get(model).copied().map_or((None, 200), |(q, o)| (Some(q), o));
            let ok = outcome == Outcome::Success;
            if ok {
                t.realised += list_price(model, r.input_tokens, out);
                t.realised_baseline += list_price(&s.baseline_model, r.input_tokens, out);
            }
            *t.failing.entry(model.to_string()).or_default() = if ok { 0 } else { streak + 1 };
            t.reports += 1;
            t.latencies += 1;
            reports.push(pb::FeedbackRequest {
                request_id: r.request_id.clone(),
                model: model.into(),
                outcome: outcome as i32,
                latency_ms: Some(latency),
                input_tokens: ok.then_some(r.input_tokens),
                output_tokens: ok.then_some(out),
                quality: q.filter(|_| ok),
                ..Default::default()
            });
        };
        let latency = 300.0 + (i * 37 % 900) as f64;
        match (fail, i % 16 == 7) {
            (true, true) => {
                t.fallbacks += 1;
                report(&mut t, &primary, Outcome::Timeout, 30_000.0);
                report(&mut t, &r.candidates[1].model, Outcome::Success, latency + 600.0);
            }
            (true, false) => {
                t.rate_limited += 1;
                report(&mut t, &primary, Outcome::RateLimited, 40.0);
            }
            _ => report(&mut t, &primary, Outcome::Success, latency),
        }
    }
    for f in reports {
        client.feedback(f).await.unwrap();
    }
}

fn chromium_available() -> bool {
    Command::new("chromium").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs headless Chromium (flags that keep it off the network) with `args`; returns stdout.
fn chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            user_data.as_str(),
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium from Debian's packages (scripts/bootstrap.sh --browser)");
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            out.push_str(&reader.join().unwrap());
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            assert!(status.success(), "chromium {args:?} failed: {status}\n{err}");
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The text of the element with `id` in a DOM dump.
fn by_id(dom: &str, id: &str) -> String {
    let key = format!("id=\"{id}\">");
    let start = dom.find(&key).unwrap_or_else(|| panic!("no element #{id} on the page")) + key.len();
    dom[start..].split('<').next().unwrap().to_string()
}

/// Luminance spread and distinct colours of a PNG: a blank or one-colour image has neither.
fn png_variety(bytes: &[u8]) -> (f64, usize, (u32, u32)) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let lum: Vec<f64> =
        px.iter().map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1 % channels]) + 0.114 * f64::from(p[2 % channels])).collect();
    let mean = lum.iter().sum::<f64>() / lum.len() as f64;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
    let colours: std::collections::HashSet<&[u8]> = px.iter().copied().collect();
    (var, colours.len(), (info.width, info.height))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// Equal JSON, numbers to 1e-9 relative.
fn approx_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => close(x.as_f64().unwrap(), y.as_f64().unwrap()),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| approx_eq(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| approx_eq(v, w))),
        _ => a == b,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

/// The baseline the server should pick by default, worked out from its own explanations of the
/// probe prompts at cost weight 0: on each probe the eligible (left out by nothing, not even the
/// head's domain) priced model of highest predicted quality wins (ties: the cheaper, then the
/// first listed); the baseline wins the most probes (ties: the higher mean predicted quality
/// over the probes it was routable on, the head's domain aside). Returns it and its wins.
async fn expected_baseline(client: &mut pb::router_client::RouterClient<tonic::transport::Channel>) -> (String, usize) {
    use pb::ExclusionReason as R;
    // model -> (wins, summed quality where routable, probes routable); listing order as seen.
    let mut per: BTreeMap<String, (usize, f64, usize)> = BTreeMap::new();
    let mut order = Vec::new();
    for prompt in pointsman::savings::PROBE_PROMPTS {
        let request = pb::RouteRequest { prompt: (*prompt).into(), explain: true, cost_weight: Some(0.0), ..Default::default() };
        let r = client.route(request).await.unwrap().into_inner();
        let mut winner: Option<(String, f64, f64)> = None;
        for e in &r.explanations {
            let c = e.candidate.as_ref().unwrap();
            if !order.contains(&c.model) {
                order.push(c.model.clone());
            }
            if [R::Unspecified as i32, R::OutOfDomain as i32].contains(&e.reason) {
                let v = per.entry(c.model.clone()).or_default();
                (v.1, v.2) = (v.1 + c.predicted_quality, v.2 + 1);
            }
            let eligible = e.reason == R::Unspecified as i32 && e.kept_despite == R::Unspecified as i32;
            let (q, cost) = (c.predicted_quality, c.predicted_cost_usd);
            if eligible && cost > 0.0 && winner.as_ref().is_none_or(|w| q > w.1 || (q == w.1 && cost < w.2)) {
                winner = Some((c.model.clone(), q, cost));
            }
        }
        if let Some((m, ..)) = winner {
            per.entry(m).or_default().0 += 1;
        }
    }
    let mut best: Option<(String, usize, f64)> = None;
    for m in order {
        let Some(&(wins, q, k)) = per.get(&m) else { continue };
        let q = q / k.max(1) as f64;
        if wins > 0 && best.as_ref().is_none_or(|b| wins > b.1 || (wins == b.1 && q > b.2)) {
            best = Some((m, wins, q));
        }
    }
    let best = best.expect("a probe with an eligible priced model");
    (best.0, best.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_day_reads_the_same_in_json_in_the_browser_and_in_the_terminal() {
    let _one = SERIAL.lock().await;
    let config = shipped_config();
    let db = config.decision_log.path.clone();
    let catalog = config.catalog().unwrap();
    let server = TestServer::start_with(config).await;
    let mut client = server.client.clone();

    // The default baseline is the model a team would call for everything: the one the router
    // chooses most often for quality alone on the probe prompts, as its explanations show.
    let (expected, expected_wins) = expected_baseline(&mut client).await;
    let probes = pointsman::savings::PROBE_PROMPTS.len();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started_ms = pointsman::report::now_ms();
    let metrics_before = server.metrics().await;

    // The day: each quarter-hour's requests (by the diurnal curve) start at its beat and run
    // CONCURRENCY at a time, under a rotating profile, each reported with the data's own label
    // and output tokens (and some failures, fallbacks after timeouts).
    let day = prompts(DAY_REQUESTS);
    let counts = diurnal(DAY_REQUESTS);
    let profiles = ["balanced", "economy", "quality"];
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Sent::default()));
    let day = std::sync::Arc::new(day);
    let catalog = std::sync::Arc::new(catalog);
    let t0 = tokio::time::Instant::now();
    let mut next = 0usize;
    let mut down = String::new();
    for (q, &n) in counts.iter().enumerate() {
        tokio::time::sleep_until(t0 + QUARTER * q as u32).await;
        let mut tasks = tokio::task::JoinSet::new();
        let ids: Vec<usize> = (next..next + n).collect();
        next += n;
        for chunk in ids.chunks(n.div_ceil(CONCURRENCY).max(1)) {
            let (client, chunk, day, catalog, sent) = (client.clone(), chunk.to_vec(), day.clone(), catalog.clone(), sent.clone());
            tasks.spawn(async move {
                for i in chunk {
                    let p = &day[i % day.len()];
                    one(client.clone(), p, i, profiles[i % 3], &catalog, &sent).await;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        if q == OUTAGE_AT {
            // A provider outage at 15:00: five requests pinned to one model, each reported as a
            // server error, open its circuit on the server.
            let baseline = sent.lock().unwrap().baselines.keys().next().cloned().unwrap();
            let other = catalog.models().iter().filter(|m| m.id != baseline);
            down = other.clone().find(|m| m.id.starts_with("gpt-4o-mini")).or(other.clone().next()).map(|m| m.id.clone()).unwrap();
            for k in 0..5 {
                let r = client
                    .route(pb::RouteRequest {
                        prompt: format!("Summarise incident report number {k} in two sentences."),
                        allowed_models: vec![down.clone()],
                        max_fallbacks: Some(0),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let s = r.savings.unwrap();
                {
                    let mut t = sent.lock().unwrap();
                    (t.decisions, t.reports, t.latencies) = (t.decisions + 1, t.reports + 1, t.latencies + 1);
                    (t.predicted, t.saving) = (t.predicted + s.predicted_cost_usd, t.saving + s.saving_usd);
                    *t.by_profile.entry(profile_key(&r.profile)).or_default() += 1;
                    *t.by_primary.entry(down.clone()).or_default() += 1;
                    *t.baselines.entry(s.baseline_model.clone()).or_default() += 1;
                }
                client
                    .feedback(pb::FeedbackRequest {
                        request_id: r.request_id,
                        model: down.clone(),
                        outcome: Outcome::ServerError as i32,
                        latency_ms: Some(50.0),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            let listed = client.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
            let live = listed.models.iter().find(|m| m.model == down).unwrap().health.unwrap();
            assert_eq!(live.state, pb::HealthState::CoolingDown as i32, "the server opened {down}'s circuit");
        }
    }
    let day_seconds = t0.elapsed().as_secs_f64();
    let sent = std::sync::Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    let (decisions, reports) = (sent.decisions, sent.reports);
    assert_eq!(sent.baselines.len(), 1, "one baseline all day: {:?}", sent.baselines);
    let baseline = sent.baselines.keys().next().unwrap().clone();
    assert_eq!(baseline, expected, "the default baseline is the router's choice for quality on the most probes ({expected_wins})");
    eventually(|| (pointsman::logs::read_counts(&db).ok()? == ((probes + decisions) as i64, reports as i64)).then_some(())).await;

    // What the server counted over the day.
    let metrics = server.metrics().await;
    let delta = |series: &str| metric(&metrics, series).unwrap_or(0.0) - metric(&metrics_before, series).unwrap_or(0.0);
    assert_eq!(delta("pointsman_route_requests_total{result=\"ok\"}") as usize, decisions);
    let feedback: f64 = ["success", "timeout", "rate_limited", "server_error"]
        .iter()
        .map(|o| delta(&format!("pointsman_feedback_total{{outcome=\"{o}\"}}")))
        .sum();
    assert_eq!(feedback as usize, reports);

    // The JSON.
    let until_ms = pointsman::report::now_ms() + 1;
    let window = format!("since={started_ms}&until={until_ms}");
    let json: Value = serde_json::from_str(&http_get(server.admin_addr, &format!("/report.json?{window}")).await).unwrap();
    assert_eq!(f(&json, "/totals/decisions") as usize, decisions);
    assert_eq!(f(&json, "/totals/reports") as usize, reports);
    assert_eq!(f(&json, "/totals/with_baseline") as usize, decisions, "every decision carries its baseline");
    assert!(
        close(f(&json, "/totals/predicted_cost_usd"), sent.predicted),
        "{} vs {}",
        f(&json, "/totals/predicted_cost_usd"),
        sent.predicted
    );
    assert!(
        close(f(&json, "/totals/predicted_saving_usd"), sent.saving),
        "{} vs {}",
        f(&json, "/totals/predicted_saving_usd"),
        sent.saving
    );
    assert!(close(f(&json, "/totals/realised_cost_usd"), sent.realised), "{} vs {}", f(&json, "/totals/realised_cost_usd"), sent.realised);
    assert!(close(f(&json, "/totals/realised_baseline_cost_usd"), sent.realised_baseline));
    assert_eq!(json["baselines"][&baseline].as_u64(), Some(decisions as u64));
    assert!(json["baseline_choice"].as_str().unwrap().starts_with(&baseline), "{}", json["baseline_choice"]);
    assert_eq!(f(&json, "/fallbacks/used") as usize, sent.fallbacks);
    assert_eq!(f(&json, "/fallbacks/by_reason/timeout") as usize, sent.fallbacks);
    assert_eq!(f(&json, "/fallbacks/succeeded") as usize, sent.fallbacks);
    assert_eq!(f(&json, "/totals/failures") as usize, sent.fallbacks + sent.rate_limited + 5);
    assert_eq!(json["breakers"]["by_model"][&down].as_u64(), Some(1), "the replayed breaker opens once, as the server's did");
    assert_eq!(json["breakers"]["openings"].as_array().unwrap().len(), 1, "and nothing else opened");
    assert_eq!(f(&json, "/latency/overall/n") as usize, sent.latencies);
    assert_eq!(json["clusters"]["status"], "computed", "{}", json["clusters"]["note"]);
    let groups = |key: &str| -> BTreeMap<String, u64> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["decisions"].as_u64() > Some(0))
            .map(|g| (g["key"].as_str().unwrap().to_string(), g["decisions"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(groups("by_model"), sent.by_primary, "decisions per primary model");
    assert_eq!(groups("by_profile"), sent.by_profile, "decisions per profile");
    let timeline: u64 = json["timeline"].as_array().unwrap().iter().map(|b| b["decisions"].as_u64().unwrap()).sum();
    assert_eq!(timeline as usize, decisions);
    // The auth rule is tested in security terms elsewhere; here: the page is on the admin
    // listener only.
    let (status, _) = http_request(server.addr, "/report.json", &[]).await;
    assert_ne!(status, 200, "the data port does not serve the report");

    // The exports carry the savings.
    let (lines, _) = pointsman::logs::read_training_lines(&db, pointsman::logs::store::FeedbackScope::Verified).unwrap();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l.baseline_model.as_deref() == Some(baseline.as_str()) && l.cost_usd.is_some() && l.baseline_cost_usd.is_some()));

    // The terminal: the same figures from the binary.
    let out = Command::new(env!("CARGO_BIN_EXE_pointsman"))
        .args(["report", "--json", "--clusters", "0", "--since", &started_ms.to_string(), "--until", &until_ms.to_string()])
        .arg("--db")
        .arg(&db)
        .arg("--config")
        .arg(repo().join("config/pointsman.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in
        ["totals", "baselines", "by_model", "by_provider", "by_profile", "calibration", "fallbacks", "breakers", "latency", "timeline"]
    {
        assert!(approx_eq(&cli[key], &json[key]), "{key}:\n{:#}\n{:#}", cli[key], json[key]);
    }
    let text = Command::new(env!("CARGO_BIN_EXE_pointsman"))
        .args(["report", "--since", &started_ms.to_string(), "--until", &until_ms.to_string()])
        .arg("--db")
        .arg(&db)
        .arg("--config")
        .arg(repo().join("config/pointsman.toml"))
        .output()
        .unwrap();
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&format!("requests {decisions}")), "{text}");
    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-replayed-day.txt");
    std::fs::write(&kept, &text).unwrap();
    println!(
        "The replayed day ({decisions} requests over {QUARTERS} quarter-hours of {} ms each, {day_seconds:.0} s of wall time), as `pointsman report` prints it (also in {}):\n{text}",
        QUARTER.as_millis(),
        kept.display()
    );

    // The browser.
    if !chromium_available() {
        assert!(
            std::env::var_os("POINTSMAN_SKIP_BROWSER").is_some(),
            "Chromium is missing: scripts/bootstrap.sh --browser (or set POINTSMAN_SKIP_BROWSER=1)"
        );
        return;
    }
    let url = format!("http://{}/report?{window}", server.admin_addr);
    let dom = chromium(&["--dump-dom", &url]);
    assert_eq!(by_id(&dom, "decisions"), decisions.to_string());
    assert_eq!(by_id(&dom, "reports"), reports.to_string());
    let usd = pointsman::report::usd;
    for (id, path) in [
        ("predicted-spend", "/totals/predicted_cost_usd"),
        ("baseline-spend", "/totals/baseline_cost_usd"),
        ("predicted-saving", "/totals/predicted_saving_usd"),
        ("realised-spend", "/totals/realised_cost_usd"),
        ("realised-saving", "/totals/realised_saving_usd"),
    ] {
        assert_eq!(by_id(&dom, id), usd(f(&json, path)), "#{id} against {path}");
    }
    assert!(by_id(&dom, "baseline-choice").starts_with(&baseline), "the header says which baseline and why");
    assert_eq!(by_id(&dom, "fallbacks-used"), sent.fallbacks.to_string());
    assert_eq!(by_id(&dom, "breaker-openings"), "1");
    assert_eq!(by_id(&dom, "latency-p50"), format!("{:.0}", f(&json, "/latency/overall/p50")));
    assert!(dom.matches("<svg").count() >= 6, "the plots are on the page");
    assert!(!dom.contains("<script"), "no script on the page");

    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("report.png");
    chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1280,2200", &url]);
    let bytes = std::fs::read(&shot).unwrap();
    let (variance, colours, size) = png_variety(&bytes);
    assert_eq!(size, (1280, 2200));
    assert!(variance > 100.0 && colours > 50, "the screenshot is blank: luminance variance {variance:.1}, {colours} colours");
    let committed: PathBuf = repo().join("docs/img/report.png");
    if std::env::var_os("POINTSMAN_UPDATE_SCREENSHOT").is_some() {
        std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
        std::fs::copy(&shot, &committed).unwrap();
    }
    // The README's screenshot is not blank either.
    let (variance, colours, _) = png_variety(&std::fs::read(&committed).expect("docs/img/report.png is committed"));
    assert!(variance > 100.0 && colours > 50, "docs/img/report.png is blank: variance {variance:.1}, {colours} colours");
    server.shutdown().await;
}

/// The same records in SQLite and in PostgreSQL give the same report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgresql_log_reads_the_same_as_sqlite() {
    use pointsman::{
        logs::{DecisionLog, DecisionRecord, FeedbackRecord, LogConfig, LoggedCandidate},
        outcome::Outcome as O,
        savings::{Estimate, Realised},
    };
    let _one = SERIAL.lock().await;
    let pg = servers::off_runtime(servers::Postgres::start);
    let dir = tempfile::tempdir().unwrap();
    let now = pointsman::logs::now_ms();
    let decisions: Vec<DecisionRecord> = (0..40)
        .map(|i| DecisionRecord {
            request_id: format!("r{i}"),
            ts_ms: now - 3_600_000 + i as i64 * 1000,
            routing_text: Some(format!("prompt {i}")),
            embedding: None,
            encoder: "e".into(),
            router_version: "v".into(),
            cost_weight: 0.5,
            profile: Some(["balanced", "economy"][i % 2].into()),
            constraints: pointsman::policy::Constraints::default(),
            tradeoff: "default".into(),
            input_tokens: 100,
            candidates: ["cheap", "dear"]
                .iter()
                .enumerate()
                .map(|(k, m)| LoggedCandidate {
                    model: (*m).into(),
                    quality: 0.5 + 0.1 * k as f64,
                    output_tokens: 200.0,
                    cost_usd: 0.001 * (k as f64 + 1.0) * (1.0 + (i % 3) as f64),
                    utility: 0.0,
                    health: "healthy",
                })
                .collect(),
            policy: Default::default(),
            session: None,
            baseline: Some(Estimate {
                baseline_model: "dear".into(),
                baseline_cost_usd: 0.004,
                baseline_quality: Some(0.6),
                predicted_cost_usd: 0.001,
                saving_usd: 0.003,
            }),
        })
        .collect();
    let feedback: Vec<FeedbackRecord> = (0..40)
        .map(|i| FeedbackRecord {
            request_id: format!("r{i}"),
            ts_ms: now - 3_600_000 + i as i64 * 1000 + 500,
            model: if i % 5 == 0 { "dear".into() } else { "cheap".into() },
            outcome: if i >= 30 { O::ServerError } else { O::Success },
            latency_ms: Some(100.0 + i as f64),
            input_tokens: Some(100),
            output_tokens: Some(150),
            cost_usd: None,
            quality: (i % 2 == 0).then_some(0.75),
            verified: true,
            offered: true,
            provider: None,
            ttft_ms: None,
            generation_ms: None,
            baseline: Some(Realised { baseline_model: "dear".into(), baseline_cost_usd: Some(0.003), cost_usd: Some(0.001) }),
        })
        .collect();
    let sqlite = dir.path().join("log.db");
    let url = pg.url();
    for cfg in [
        LogConfig { path: sqlite.clone(), ..LogConfig::default() },
        LogConfig { url: Some(url.clone()), spill_path: dir.path().join("spill.db"), ..LogConfig::default() },
    ] {
        let log = servers::off_runtime(|| DecisionLog::open(cfg).unwrap());
        decisions.iter().cloned().for_each(|d| log.log_decision(d));
        for f in feedback.iter().cloned() {
            log.log_feedback(f).await.unwrap();
        }
        log.flush().await;
        servers::off_runtime(|| log.close());
    }
    let window = pointsman::report::Window { since_ms: now - 7_200_000, until_ms: now };
    let build = |source: &Path| {
        let opts = pointsman::report::Options { cluster_sample: 0, ..Default::default() };
        servers::off_runtime(|| pointsman::report::build(source, window, &opts).unwrap())
    };
    let (a, b) = (build(&sqlite), build(Path::new(&url)));
    assert_eq!(a.totals.decisions, 40);
    assert_eq!(a.totals.reports, 40);
    assert!(close(a.totals.predicted_saving_usd, 40.0 * 0.004 - decisions.iter().map(|d| d.candidates[0].cost_usd).sum::<f64>()));
    assert_eq!(a.fallbacks.used, 8, "reports on `dear` where `cheap` was the primary");
    assert_eq!(a.breakers.by_model.get("cheap"), Some(&1), "the failures in a row at the end open `cheap`");
    // Same figures from PostgreSQL (the source and build time aside; sums to rounding).
    let same = |r: &pointsman::report::Report| {
        let mut v = serde_json::to_value(r).unwrap();
        v["source"] = Value::Null;
        v["build_ms"] = Value::Null;
        v
    };
    let (a, b) = (same(&a), same(&b));
    assert!(approx_eq(&a, &b), "SQLite:\n{a:#}\nPostgreSQL:\n{b:#}");
}
