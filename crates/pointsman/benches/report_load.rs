//! How long the report takes on a large decision log: the time behind `/report.json`, `/report`
//! and `pointsman report`.
//!
//! `cargo bench --bench report_load`. Fills a SQLite log (in a temp folder, written as the server's
//! writer thread writes it) with BENCH_DECISIONS (default 1,000,000) synthetic decisions over one
//! day, each with four candidates from 12 models, three profiles, a baseline, and a feedback
//! report (one in ten a timeout then a fallback's answer; labels on half), then times, over
//! BENCH_RUNS runs (default 3) each, the report built and serialised as JSON, the page rendered,
//! and the page with its prompt clusters (BENCH_CLUSTER_SAMPLE sampled decisions, default 200,
//! embedded by the shipped encoder). Prints each run and the medians, in ms of wall time and of
//! this process's CPU time (user + system: on a shared machine, wall time also counts the waits for
//! a core), and the sizes. `BENCH_DB=<file>` fills the log there when the file does not exist yet and keeps it; a later
//! run reuses it.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use pointsman::{
    logs::{store, DecisionRecord, FeedbackRecord, LoggedCandidate},
    outcome::Outcome,
    report::{self, Options, Window},
    savings::{Estimate, Realised},
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const MODELS: [&str; 12] = [
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "claude-3-5-sonnet-20241022",
    "claude-3-haiku-20240307",
    "gemini-1.5-flash-002",
    "gemini-1.5-pro-002",
    "Meta-Llama-3.1-8B-Instruct",
    "Meta-Llama-3.1-70B-Instruct",
    "Qwen2.5-72B-Instruct",
    "Mistral-Large-2",
    "deepseek-v2.5-0908",
    "gemma-2-27b-it",
];

/// A small deterministic generator (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fill(path: &std::path::Path, n: usize, since_ms: i64) {
    let mut conn = store::open_for_writing(path, false).unwrap();
    let topics = [
        "sorting in Rust",
        "a rainy weekend",
        "the French revolution",
        "integrals",
        "a cover letter",
        "SQL joins",
        "tax on savings",
        "a haiku",
    ];
    let batch = 10_000;
    let mut i = 0;
    while i < n {
        let (mut ds, mut fs) = (Vec::with_capacity(batch), Vec::with_capacity(batch * 2));
        for j in i..(i + batch).min(n) {
            let r = mix(j as u64);
            let ts = since_ms + (j as i64 * 86_400_000 / n as i64);
            let first = (r % 12) as usize;
            let candidates: Vec<LoggedCandidate> = (0..4)
                .map(|k| {
                    let m = (first + k * 5) % 12;
                    LoggedCandidate {
                        model: MODELS[m].into(),
                        quality: 0.4 + 0.05 * (m % 10) as f64,
                        output_tokens: 150.0 + (r >> 8) as f64 % 300.0,
                        cost_usd: 0.0002 * (1 + m) as f64,
                        utility: 0.3,
                        health: "healthy",
                    }
                })
                .collect();
            let primary = candidates[0].clone();
            let request_id = format!("req-{j:08}");
            ds.push(DecisionRecord {
                request_id: request_id.clone(),
                ts_ms: ts,
                routing_text: Some(format!("Tell me about {} (question {})", topics[(r >> 16) as usize % topics.len()], j % 977)),
                embedding: None,
                encoder: "all-MiniLM-L6-v2/int8".into(),
                router_version: "bench".into(),
                cost_weight: 0.5,
                profile: Some(["balanced", "economy", "quality"][(r >> 20) as usize % 3].into()),
                constraints: pointsman::policy::Constraints::default(),
                tradeoff: "default".into(),
                input_tokens: 120,
                candidates: candidates.clone(),
                policy: Default::default(),
                session: None,
                baseline: Some(Estimate {
                    baseline_model: MODELS[1].into(),
                    baseline_cost_usd: 0.0030,
                    baseline_quality: Some(0.8),
                    predicted_cost_usd: primary.cost_usd,
                    saving_usd: 0.0030 - primary.cost_usd,
                }),
            });
            let report = |model: &str, outcome: Outcome, at: i64, quality: Option<f64>| FeedbackRecord {
                request_id: request_id.clone(),
                ts_ms: at,
                model: model.into(),
                outcome,
                latency_ms: Some(200.0 + (r >> 24) as f64 % 3000.0),
                input_tokens: Some(120),
                output_tokens: Some(200),
                cost_usd: None,
                quality,
                verified: true,
                offered: true,
                provider: None,
                ttft_ms: None,
                generation_ms: None,
                baseline: Some(Realised {
                    baseline_model: MODELS[1].into(),
                    baseline_cost_usd: Some(0.0031),
                    cost_usd: Some(primary.cost_usd),
                }),
            };
            let label = (r >> 32).is_multiple_of(2);
            if j % 10 == 9 {
                fs.push(report(&primary.model, Outcome::Timeout, ts + 30_000, None));
                fs.push(report(&candidates[1].model, Outcome::Success, ts + 31_000, label.then_some(0.7)));
            } else {
                fs.push(report(&primary.model, Outcome::Success, ts + 2_000, label.then_some(0.6)));
            }
        }
        store::write_batch(&mut conn, &ds, &fs).unwrap();
        i += batch;
    }
}

/// CPU time of this process so far (user + system), ms.
fn cpu_ms() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Runs `f` `runs` times; prints each run's wall and CPU ms and returns the medians.
fn timed(name: &str, runs: usize, mut f: impl FnMut() -> String) -> (f64, f64) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (t, c) = (Instant::now(), cpu_ms());
        let what = f();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.push(cpu_ms() - c);
        println!("  {name} run {}: {:.0} ms wall, {:.0} ms CPU ({what})", i + 1, wall[i], cpu[i]);
    }
    let (w, c) = (median(wall), median(cpu));
    println!("{name}: median {w:.0} ms wall, {c:.0} ms CPU over {runs} runs");
    (w, c)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env("BENCH_DECISIONS", 1_000_000);
    let runs = env("BENCH_RUNS", 3);
    let sample = env("BENCH_CLUSTER_SAMPLE", 200);
    let dir = tempfile::tempdir().unwrap();
    let path = match std::env::var_os("BENCH_DB") {
        Some(p) if std::path::Path::new(&p).is_file() => std::path::PathBuf::from(p),
        given => {
            // A BENCH_DB that does not exist yet is filled there and kept for the next run.
            let path = given.map_or_else(|| dir.path().join("decisions.db"), std::path::PathBuf::from);
            let t = Instant::now();
            fill(&path, n, report::now_ms() - 86_400_000);
            println!("filled {n} decisions and their reports in {:.1} s", t.elapsed().as_secs_f64());
            path
        }
    };
    let size = std::fs::metadata(&path).unwrap().len() + std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    let (counts_d, counts_f) = pointsman::logs::read_counts(&path).unwrap();
    println!("log {}: {counts_d} decisions, {counts_f} feedback reports, {:.0} MB", path.display(), size as f64 / 1e6);
    let n = counts_d as usize;

    let config = common::shipped_config();
    let catalog = config.catalog().unwrap();
    // The whole log, whenever it was filled.
    let window = Window { since_ms: report::now_ms() - 3 * 86_400_000, until_ms: report::now_ms() + 86_400_000 };
    let opts = Options { catalog: Some(&catalog), health: config.health.clone(), cluster_sample: 0, ..Options::default() };
    timed("report.json (build + serialise)", runs, || {
        let r = report::build(&path, window, &opts).unwrap();
        assert_eq!(r.totals.decisions as usize, n);
        format!("{} KB", serde_json::to_string(&r).unwrap().len() / 1024)
    });
    timed("report page (build + render)", runs, || {
        format!("{} KB", report::html::page(&report::build(&path, window, &opts).unwrap()).len() / 1024)
    });

    if sample > 0 {
        let env = pointsman::runtime::environment(config.runtime.onnxruntime.as_deref()).unwrap();
        let encoder = pointsman::encoder::Encoder::load(env, &config.encoder).unwrap();
        let embed = |texts: &[String]| -> Result<Vec<Vec<f32>>, String> {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            encoder.embed_many(&refs, &|_| {}).map_err(|e| e.to_string())
        };
        let opts = Options {
            embed: Some(&embed as report::Embedder<'_>),
            encoder_id: Some(encoder.id().to_string()),
            cluster_sample: sample,
            ..opts
        };
        timed("report page with prompt clusters", runs, || {
            let r = report::build(&path, window, &opts).unwrap();
            let _page = report::html::page(&r);
            r.clusters.note
        });
    }
}
