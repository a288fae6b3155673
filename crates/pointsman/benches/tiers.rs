//! The encoder tiers side by side: Route latency and throughput for MiniLM (int8), the static
//! encoder and the cascade, in one run, against the real server on loopback.
//!
//! `cargo bench --bench tiers`. For each tier a child process (this binary again, with
//! `BENCH_TIER` set) starts the server with `encoder.variant` set to it and the prediction cache
//! off (every Route runs the encoder and the head), sends short prompts (real ones of 8 to 32
//! tokens), 256-token prompts and 4,096-token prompts (real prompts joined) at concurrency 1, 4
//! and 16, and reports p50/p99 latency, routes/s, the cascade's share of requests that reached
//! MiniLM (from `/metrics`) and its peak RSS (VmHWM, load generator included). The parent prints
//! one table. Each cell runs BENCH_REQUESTS requests (default 1000) or BENCH_SECONDS seconds
//! (default 3), whichever ends first, and at least 30. BENCH_TIERS picks tiers (default
//! `int8,static,cascade`), BENCH_SETS prompt sets (default `short,256-token,4096-token`); BENCH_DECISION_LOG=on adds the decision log (off by default here: the
//! cells measure routing). The load generator shares the server's process and cores.
#[path = "../tests/common/prompts.rs"]
mod prompts;
mod support;

use std::{path::Path, time::Duration};

use pointsman::config::{Config, EncoderVariant};

fn repo() -> std::path::PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

fn real_prompts() -> Vec<String> {
    prompts::shared_prompts(&["alpaca_eval2", "zeroeval"])
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Real prompts joined until each has `min..max` tokens (by `count`).
fn joined(all: &[String], min: usize, max: usize, n: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut acc = String::new();
    for p in all.iter().cycle().take(all.len() * 4) {
        let candidate = if acc.is_empty() { p.clone() } else { format!("{acc}\n{p}") };
        let c = count(&candidate);
        if c > max {
            if count(&acc) >= min {
                out.push(std::mem::take(&mut acc));
            } else {
                acc.clear();
            }
            if out.len() >= n {
                break;
            }
            continue;
        }
        acc = candidate;
        if c >= min {
            out.push(std::mem::take(&mut acc));
            if out.len() >= n {
                break;
            }
        }
    }
    out
}

async fn metric(addr: std::net::SocketAddr, prefix: &str) -> Vec<(String, f64)> {
    support::metrics(addr, prefix)
        .await
        .iter()
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

/// One tier in this process: prints `ROW\t...` lines for the parent.
async fn child(tier: EncoderVariant) {
    let mut config = Config::load(&repo().join("config/pointsman.toml")).unwrap();
    config.encoder.variant = tier;
    config.cache.capacity = 0;
    let log_dir = std::env::temp_dir().join(format!("pointsman-bench-tiers-{}", std::process::id()));
    config.decision_log.path = log_dir.join("decisions.db");
    config.decision_log.enabled = std::env::var("BENCH_DECISION_LOG").is_ok_and(|v| v == "on");

    // Prompt sets, counted with MiniLM's tokenizer (the same WordPiece as the static one).
    let env = pointsman::runtime::environment(None).unwrap();
    let mut ecfg = config.encoder.clone();
    ecfg.variant = EncoderVariant::Int8;
    ecfg.sessions = 1;
    let counter = pointsman::encoder::Encoder::load(env, &ecfg).unwrap();
    let count = |p: &str| counter.count_tokens(p).unwrap() as usize;
    let all = real_prompts();
    let short: Vec<String> = all.iter().filter(|p| (8..=32).contains(&count(p))).take(400).cloned().collect();
    let t256 = joined(&all, 240, 270, 100, &count);
    let t4096 = joined(&all, 4000, 4300, 30, &count);
    let mean = |set: &[String]| set.iter().map(|p| count(p)).sum::<usize>() as f64 / set.len() as f64;
    let sets = [("short", mean(&short), short), ("256-token", mean(&t256), t256), ("4096-token", mean(&t4096), t4096)];
    drop(counter);

    let (client, tx, admin_addr) = support::start(config).await;
    let client = client.max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    let only = std::env::var("BENCH_SETS").unwrap_or_default();
    for (name, mean, set) in sets.iter().filter(|s| only.is_empty() || only.split(',').any(|o| o == s.0)) {
        for c in [1, 4, 16] {
            let before = metric(admin_addr, "pointsman_cascade_decisions_total").await;
            let budget = Duration::from_secs(env_usize("BENCH_SECONDS", 3) as u64);
            let support::Load { latencies: lat, wall, stages } =
                support::run_load(&client, set, c, env_usize("BENCH_REQUESTS", 1000), Some(budget)).await;
            let after = metric(admin_addr, "pointsman_cascade_decisions_total").await;
            let delta = |tier: &str| {
                let get = |v: &[(String, f64)]| v.iter().find(|(k, _)| k.contains(&format!("tier=\"{tier}\""))).map_or(0.0, |x| x.1);
                get(&after) - get(&before)
            };
            let (s, m) = (delta("static"), delta("minilm"));
            let share = if s + m > 0.0 { format!("{:.0}%", m / (s + m) * 100.0) } else { "-".into() };
            println!(
                "ROW\t{}\t{name} ({mean:.0} tokens)\t{c}\t{:.3}\t{:.3}\t{:.0}\t{share}\t{:.0} / {:.0} / {:.0} / {:.0} / {:.0}\t{}",
                tier.as_str(),
                percentile(&lat, 0.5).as_secs_f64() * 1e3,
                percentile(&lat, 0.99).as_secs_f64() * 1e3,
                lat.len() as f64 / wall.as_secs_f64(),
                stages[0],
                stages[1],
                stages[2],
                stages[3],
                stages[4],
                lat.len()
            );
        }
    }
    let _ = tx.send(());
    println!("RSS\t{}\t{:.0}", tier.as_str(), peak_rss_mb());
}

#[tokio::main]
async fn main() {
    if let Ok(t) = std::env::var("BENCH_TIER") {
        child(t.parse().expect("BENCH_TIER is a variant")).await;
        return;
    }
    let tiers = std::env::var("BENCH_TIERS").unwrap_or_else(|_| "int8,static,cascade".into());
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    for tier in tiers.split(',') {
        eprintln!("tier {tier} ...");
        let out = std::process::Command::new(&exe).env("BENCH_TIER", tier).arg("--bench").output().expect("the bench runs itself");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "tier {tier} failed: {}\n{}", text, String::from_utf8_lossy(&out.stderr));
        for l in text.lines() {
            let f: Vec<&str> = l.split('\t').collect();
            match f[0] {
                "ROW" => rows.push(f[1..].iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                "RSS" => rss.push((f[1].to_string(), f[2].to_string())),
                _ => {}
            }
        }
    }
    println!(
        "# Encoder tiers: Route with the prediction cache off\n{} CPUs; every Route runs the encoder and the head\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "| tier | prompts | concurrency | p50 ms | p99 ms | routes/s | reached MiniLM | server µs: prepare / encode / predict / rank / total (mean) | requests |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        println!("| {} |", r.join(" | "));
    }
    println!("\n| tier | peak RSS MB |\n|---|---|");
    for (t, m) in &rss {
        println!("| {t} | {m} |");
    }
    let p50 = |tier: &str, prompts: &str| {
        rows.iter().find(|r| r[0] == tier && r[1].starts_with(prompts) && r[2] == "1").and_then(|r| r[3].parse::<f64>().ok())
    };
    for prompts in ["short", "256-token", "4096-token"] {
        if let (Some(m), Some(s)) = (p50("int8", prompts), p50("static", prompts)) {
            println!("{prompts}: static p50 is 1/{:.1} of MiniLM's at concurrency 1 ({s:.3} ms against {m:.3} ms)", m / s);
        }
    }
}
