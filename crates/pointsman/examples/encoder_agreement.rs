//! How often the primary model changes when the int8 encoder is swapped for the exact fp32 one:
//! a bound on how far replicas on different CPU types can disagree (int8 numerics follow the
//! CPU's instruction set; fp32 is the reference both approximate).
//!
//! Routes every prompt of the given routing logs through two engines of the shipped config, one
//! per encoder variant, once per routing profile, and prints, per log file and profile, how many
//! primaries differ (and how many of those differences change the provider).
//!
//!     cargo run --release --example encoder_agreement -- data/zeroeval/train.jsonl.gz \
//!         data/alpaca_eval2/train.jsonl.gz data/mmlu_pro/train.jsonl.gz
use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use pointsman::{
    config::{Config, EncoderVariant},
    engine::Engine,
    pb,
    transport::convert,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let files: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    anyhow::ensure!(!files.is_empty(), "give routing log files (JSON Lines, gzip or plain)");
    let mut config = Config::load(&pointsman::config::locate_default())?;
    // Each prompt is encoded once per engine; the profiles then hit the cache.
    config.cache.capacity = 1 << 20;
    let load = |variant: EncoderVariant| {
        let mut c = config.clone();
        c.encoder.variant = variant;
        async move { anyhow::Ok(Arc::new(tokio::task::spawn_blocking(move || Engine::load(c.engine_config())).await??)) }
    };
    let (int8, fp32) = (load(EncoderVariant::Int8).await?, load(EncoderVariant::Fp32).await?);
    let profiles: Vec<String> = config.routing.profiles.keys().cloned().collect();
    println!("file | profile | prompts | primary differs | of which another provider");
    let mut total: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for file in &files {
        let logs = pointsman::learning::read_logs(std::slice::from_ref(file), false)?;
        let mut counts: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for p in &logs.prompts {
            for profile in &profiles {
                let primary = |engine: Arc<Engine>| {
                    let req = pb::RouteRequest { prompt: p.text.clone(), profile: profile.clone(), ..Default::default() };
                    let server = config.server.clone();
                    async move {
                        let q = convert::route_query(req, &server).map_err(|e| anyhow::anyhow!("{e}"))?;
                        let r = convert::route_response(&engine, engine.route(q).await.map_err(|e| anyhow::anyhow!("{e}"))?, false, None);
                        let c = r.candidates.into_iter().next().ok_or_else(|| anyhow::anyhow!("no candidate"))?;
                        anyhow::Ok((c.model, c.provider))
                    }
                };
                let (a, b) = (primary(Arc::clone(&int8)).await, primary(Arc::clone(&fp32)).await);
                let (Ok(a), Ok(b)) = (a, b) else { continue };
                let e = counts.entry(profile.clone()).or_default();
                e.0 += 1;
                e.1 += usize::from(a.0 != b.0);
                e.2 += usize::from(a.1 != b.1);
            }
        }
        for (profile, (n, d, dp)) in &counts {
            println!("{} | {profile} | {n} | {d} ({:.2}%) | {dp}", file.display(), 100.0 * *d as f64 / (*n).max(1) as f64);
            let t = total.entry(profile.clone()).or_default();
            t.0 += n;
            t.1 += d;
            t.2 += dp;
        }
    }
    for (profile, (n, d, dp)) in &total {
        println!("all | {profile} | {n} | {d} ({:.2}%) | {dp}", 100.0 * *d as f64 / (*n).max(1) as f64);
    }
    Ok(())
}
