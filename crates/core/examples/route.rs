//! Routes a prompt in-process with `pointsman-core` alone: no server, no gRPC, no database.
//!
//! ```text
//! cargo run --release -p pointsman-core --example route -- "Prove that there are infinitely many primes."
//! ```
//!
//! Run from the repository root (the shipped encoder and head are under `models/`, ONNX Runtime
//! where `scripts/bootstrap.sh` put it). Prints the primary model and its fallbacks, each with
//! predicted quality, output tokens, cost and latency.
use std::sync::Arc;

use pointsman_core::{
    catalog::CatalogModel,
    encoder::text::ChatMessage,
    engine::{Engine, EngineConfig, RouteQuery},
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let prompt = if prompt.is_empty() { "Prove that there are infinitely many primes.".to_string() } else { prompt };
    let config = EngineConfig {
        models: vec![
            CatalogModel::single("claude-3-5-sonnet-20241022", "anthropic", 3.0, 15.0, 200_000),
            CatalogModel::single("claude-3-5-haiku-20241022", "anthropic", 0.8, 4.0, 200_000),
            CatalogModel::single("gpt-4o-mini-2024-07-18", "openai", 0.15, 0.6, 128_000),
        ],
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::load(config)?);
    let decision = engine.route(RouteQuery::new("example", vec![ChatMessage::user(prompt)], 2)).await?;
    for (place, &i) in decision.ranking.chosen.iter().enumerate() {
        let s = &decision.ranking.scored[i];
        let p = s.prediction.expect("a chosen model has a prediction");
        println!(
            "{:<9} {:<28} quality {:.3}  output {:>5.0} tokens  ${:.6}  {:>5.0} ms",
            if place == 0 { "primary" } else { "fallback" },
            engine.catalog().models()[s.model].id,
            p.quality,
            p.output_tokens,
            s.cost_usd,
            s.latency_ms
        );
    }
    println!("cost weight {:.2}, {} input tokens, {:?}", decision.cost_weight, decision.input_tokens, decision.timings.total);
    Ok(())
}
