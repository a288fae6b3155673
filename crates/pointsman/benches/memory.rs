//! What the head's memory costs: graph size, load time and `Head::predict` latency against the
//! number of stored keys (remembered training prompts), uncapped and capped at
//! `learning::DEFAULT_MEMORY_CAP`, next to the encoder's time for one prompt.
//!
//! `cargo bench --bench memory`. For each K it builds a synthetic head as `pointsman train`
//! exports one: K random unit keys (D = 384), one model observed per prompt, a support index
//! (k = 32) and a local quality prior (k = 32) over all K keys, and the shipped head's models
//! (`models/router/manifest.json`, 112) and first family's kind and hidden units. It writes
//! `head.onnx` and `manifest.json` to a temp dir, loads them with the real
//! `pointsman::predictor::Head::load` (one intra-op thread, as served) and times
//! BENCH_CALLS (default 200) predictions of one random unit embedding each, back to back after
//! 20 warm-up calls, then BENCH_CALLS times tokenize + embed + predict of a real short prompt
//! (8..=32 tokens, from `data/` or `POINTSMAN_DATA`) with the configured encoder, timing the
//! head as Route runs it: right after the encoder (slower than back to back: the encoder evicts
//! the keys from cache).
//! The capped rows (10k and 100k prompts) keep `memory_rows(K, DEFAULT_MEMORY_CAP, seed)` of
//! the same keys. BENCH_KEYS (comma-separated) tries other sizes. Prints a markdown table and
//! the encoder's time on prompts past the 256-token cap, for scale.
use std::{
    io::Read,
    path::Path,
    time::{Duration, Instant},
};

use ndarray::{Array1, Array2, ArrayView2, Axis};
use ort::environment::Environment;
use pointsman::{
    config::Config,
    encoder::Encoder,
    learning::{
        export_with_support, memory_rows, LocalPrior, MemoryBlock, Mlp, Shrink, SplitMix64, Support, DEFAULT_MEMORY_CAP, DEFAULT_NEIGHBOURS,
    },
    predictor::{sha256_hex, Head, HeadManifest},
    runtime,
};

const D: usize = 384;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// `n` random unit vectors of dimension D, [n, D].
fn unit_rows(n: usize, rng: &mut SplitMix64) -> Array2<f32> {
    let mut x = Array2::from_shape_simple_fn((n, D), || rng.next_normal() as f32);
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    x
}

/// The synthetic logs' outcomes: one model per prompt (model j with probability about 1/(j+1),
/// normalised, as a router's logs concentrate on few models), quality 0/1 at random.
fn outcomes(n: usize, m: usize, rng: &mut SplitMix64) -> (Array2<f32>, Array2<f32>) {
    let weights: Vec<f64> = (0..m).map(|j| 1.0 / (j + 1) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut mask = Array2::zeros((n, m));
    let mut quality = Array2::zeros((n, m));
    for i in 0..n {
        let mut u = rng.next_f64() * total;
        let j = weights.iter().position(|w| {
            u -= w;
            u < 0.0
        });
        let j = j.unwrap_or(m - 1);
        mask[[i, j]] = 1.0;
        quality[[i, j]] = f32::from(u8::from(rng.next_f64() < 0.6));
    }
    (mask, quality)
}

/// The shipped head's manifest (`models/router`): the template of the synthetic heads' manifests,
/// so they list its models and its first family's kind and units.
fn template() -> serde_json::Value {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models/router/manifest.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the shipped head's manifest")).unwrap()
}

/// A head graph and manifest over `keys` [K, D] with these outcomes (one column per model of
/// `template`), written to `dir`; returns the graph's size in bytes. The manifest's support and
/// shrinkage are what `predictor::graph::facts` reads back from the graph, the rest is the template's with
/// one family holding every model.
fn write_head(
    dir: &Path,
    template: &serde_json::Value,
    keys: ArrayView2<f32>,
    mask: &Array2<f32>,
    quality: &Array2<f32>,
    rng: &mut SplitMix64,
) -> u64 {
    let m = mask.ncols();
    let mut v = template.clone();
    let mut family = v["architecture"]["families"][0].clone();
    let h = family["units"].as_u64().expect("units") as usize;
    let mut w = |r: usize, c: usize| Array2::from_shape_simple_fn((r, c), || (rng.next_normal() * 0.1) as f32);
    let mlp = Mlp::from_parts(w(D, h), Array1::zeros(h), w(h, m), Array1::zeros(m), w(h, m), Array1::from_elem(m, 5.0)).unwrap();
    let support = Support::new(keys, mask.view(), DEFAULT_NEIGHBOURS);
    let all: Vec<usize> = (0..m).collect();
    let keys_n = mask.nrows();
    let local = LocalPrior::new(
        quality,
        mask,
        vec![MemoryBlock { start: 0, end: keys_n, models: all.clone() }],
        &vec![DEFAULT_NEIGHBOURS; m],
        &vec![1.0; m],
    );
    let shrink = Shrink {
        weight: Array1::from_elem(m, 0.5),
        token_weight: Array1::ones(m),
        local: Some(local),
        prior_quality: Array1::from_elem(m, 0.6),
        prior_log_tokens: Array1::from_elem(m, 5.0),
    };
    let bytes = export_with_support(&mlp, Some(&support), Some(&shrink), &[]);
    let facts = pointsman::predictor::graph::facts(&bytes).unwrap();
    v["head_id"] = format!("memory-bench-{}", keys.nrows()).into();
    v["graph_sha256"] = sha256_hex(&bytes).into();
    v["support"] = serde_json::to_value(facts.support.unwrap()).unwrap();
    v["shrinkage"] = serde_json::to_value(facts.shrinkage.unwrap()).unwrap();
    family["models"] = v["models"].clone();
    family["first_unit"] = 0.into();
    v["architecture"]["families"] = serde_json::json!([family]);
    v["architecture"]["hidden_units"] = h.into();
    v["architecture"]["added"] = serde_json::json!([]);
    if let Some(memory) = v["training"].get_mut("memory") {
        memory["prompts"] = keys.nrows().into();
    }
    let manifest = HeadManifest::parse(&v.to_string()).expect("the synthetic manifest is valid");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("head.onnx"), &bytes).unwrap();
    std::fs::write(dir.join("manifest.json"), manifest.to_json()).unwrap();
    bytes.len() as u64
}

struct Row {
    label: String,
    keys: usize,
    mb: f64,
    load: Duration,
    /// Back-to-back predictions: p50, p90.
    warm: (Duration, Duration),
    /// Predictions right after the encoder, as Route runs them: p50, p90 of the head, p50 of
    /// encoder + head.
    route: Option<(Duration, Duration, Duration)>,
}

/// The encoder and real short prompts (8..=32 tokens), to time the head as Route runs it.
struct Prompts {
    encoder: Encoder,
    short: Vec<String>,
    long: Vec<String>,
}

/// Loads the head in `dir`; times `calls` back-to-back single-row predictions on `queries` after
/// a warm-up, then (with `prompts`) `calls` times tokenize + embed + predict of a real prompt.
fn measure(env: &Environment, dir: &Path, label: String, queries: &Array2<f32>, calls: usize, prompts: Option<&Prompts>) -> Row {
    let t = Instant::now();
    let head = Head::load(env, dir).unwrap();
    let load = t.elapsed();
    let one = |i: usize| queries.slice(ndarray::s![i % queries.nrows()..i % queries.nrows() + 1, ..]);
    for i in 0..20 {
        head.predict(one(i)).unwrap();
    }
    let mut warm: Vec<Duration> = (0..calls)
        .map(|i| {
            let t = Instant::now();
            let out = head.predict(one(i)).unwrap();
            let took = t.elapsed();
            assert!(out.quality.iter().all(|q| q.is_finite()));
            took
        })
        .collect();
    warm.sort();
    let route = prompts.map(|p| {
        let (mut alone, mut total): (Vec<Duration>, Vec<Duration>) = p
            .short
            .iter()
            .cycle()
            .take(calls)
            .map(|text| {
                let t = Instant::now();
                let e = p.encoder.embed(&p.encoder.tokenize(text).unwrap()).unwrap();
                let h = Instant::now();
                head.predict(ArrayView2::from_shape((1, e.len()), &e).unwrap()).unwrap();
                (h.elapsed(), t.elapsed())
            })
            .unzip();
        alone.sort();
        total.sort();
        (percentile(&alone, 0.5), percentile(&alone, 0.9), percentile(&total, 0.5))
    });
    Row { label, keys: head.manifest().support.prompts, mb: 0.0, load, warm: (percentile(&warm, 0.5), percentile(&warm, 0.9)), route }
}

/// Real prompts from the routing data, as `benches/route.rs` reads them.
fn real_prompts() -> Option<Vec<String>> {
    let root = std::env::var_os("POINTSMAN_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("data"));
    let mut out = Vec::new();
    for f in ["alpaca_eval2/train.jsonl.gz", "zeroeval/train.jsonl.gz"] {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(root.join(f)).ok()?).read_to_string(&mut text).ok()?;
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            if seen.insert(v["prompt_id"].as_str()?.to_string()) {
                out.push(v["prompt"].as_str()?.to_string());
            }
        }
    }
    Some(out)
}

/// The configured encoder and real prompts: short ones (8..=32 tokens) and ones past the
/// 256-token cap; `None` (and a line saying why) when either is missing.
fn prompts(env: &Environment, config: &Config, calls: usize) -> Option<Prompts> {
    let encoder = Encoder::load(env, &config.encoder).map_err(|e| println!("no encoder rows: {e}")).ok()?;
    let Some(all) = real_prompts() else {
        println!("no encoder rows: routing data not found (data/ or POINTSMAN_DATA)");
        return None;
    };
    let count = |p: &str| encoder.count_tokens(p).unwrap();
    let short = all.iter().filter(|p| (8..=32).contains(&count(p))).take(calls).cloned().collect();
    let long = all.iter().filter(|p| count(p) > 300).take(50).cloned().collect();
    Some(Prompts { encoder, short, long })
}

fn main() {
    let calls = env_usize("BENCH_CALLS", 200);
    let sizes: Vec<usize> = std::env::var("BENCH_KEYS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2_307, 4_096, 8_192, 10_000, 16_384, 32_768, 100_000]);
    let template = template();
    let m = template["models"].as_array().expect("models").len();
    let config = Config::load(&Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/pointsman.toml")).unwrap();
    let env = runtime::environment(config.runtime.onnxruntime.as_deref()).unwrap();
    let prompts = prompts(env, &config, calls);
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SplitMix64::new(11);
    let pool = *sizes.iter().max().unwrap();
    let all_keys = unit_rows(pool, &mut rng);
    let (all_mask, all_quality) = outcomes(pool, m, &mut rng);
    let queries = unit_rows(64, &mut rng);
    println!(
        "# Head memory benchmark\n{m} models, D = {D}, k = {DEFAULT_NEIGHBOURS}, {calls} calls per head and mode after 20 warm-up, \
         head session with 1 intra-op thread; DEFAULT_MEMORY_CAP = {DEFAULT_MEMORY_CAP}; {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    let mut rows = Vec::new();
    let mut run = |label: String, idx: &[usize], rng: &mut SplitMix64| {
        let keys = all_keys.select(Axis(0), idx);
        let (mask, quality) = (all_mask.select(Axis(0), idx), all_quality.select(Axis(0), idx));
        let dir = tmp.path().join(label.replace([' ', ','], "_"));
        let size = write_head(&dir, &template, keys.view(), &mask, &quality, rng);
        let row = Row { mb: size as f64 / 1e6, ..measure(env, &dir, label, &queries, calls, prompts.as_ref()) };
        std::fs::remove_dir_all(&dir).unwrap();
        eprintln!("{}: {} keys, {:.1} MB, load {} ms, p50 {} ms", row.label, row.keys, row.mb, ms(row.load), ms(row.warm.0));
        rows.push(row);
    };
    for &k in &sizes {
        run(format!("{k} prompts, uncapped"), &(0..k).collect::<Vec<_>>(), &mut rng);
    }
    // The sizes the issue names, capped.
    for &k in sizes.iter().filter(|&&k| k > DEFAULT_MEMORY_CAP && [10_000, 100_000].contains(&k)) {
        run(format!("{k} prompts, capped at {DEFAULT_MEMORY_CAP}"), &memory_rows(k, DEFAULT_MEMORY_CAP, 7), &mut rng);
    }
    println!(
        "\n| head | stored keys | head.onnx MB | load ms | predict p50 / p90 ms, back to back | \
         predict p50 / p90 ms, after the encoder | encoder + head p50 ms, short prompt | head share |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (after, total, share) = match r.route {
            Some((p50, p90, total)) => {
                (format!("{} / {}", ms(p50), ms(p90)), ms(total), format!("{:.0}%", 100.0 * p50.as_secs_f64() / total.as_secs_f64()))
            }
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        println!(
            "| {} | {} | {:.1} | {:.0} | {} / {} | {after} | {total} | {share} |",
            r.label,
            r.keys,
            r.mb,
            r.load.as_secs_f64() * 1e3,
            ms(r.warm.0),
            ms(r.warm.1)
        );
    }
    if let Some(p) = &prompts {
        let mut lat: Vec<Duration> = p
            .long
            .iter()
            .map(|text| {
                let t = Instant::now();
                p.encoder.embed(&p.encoder.tokenize(text).unwrap()).unwrap();
                t.elapsed()
            })
            .collect();
        lat.sort();
        println!(
            "\nencoder {} ({} sessions x {} intra-op threads), tokenize + embed p50 of {} prompts past the 256-token cap: {} ms",
            p.encoder.id(),
            config.encoder.sessions,
            config.encoder.intra_threads,
            lat.len(),
            ms(percentile(&lat, 0.5))
        );
    }
}
