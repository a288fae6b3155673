//! The core as a library: the shipped encoder and head through the real ONNX Runtime, a catalog
//! built in code, and `Engine::route` called in-process (no server, no config file).
use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
};

use pointsman_core::{
    catalog::CatalogModel,
    encoder::{text::ChatMessage, EncoderConfig, EncoderVariant},
    engine::{Engine, EngineConfig, RouteError, RouteQuery, Tradeoff},
};

const MODELS: [(&str, &str, f64, f64); 3] = [
    ("claude-3-5-sonnet-20241022", "anthropic", 3.0, 15.0),
    ("claude-3-5-haiku-20241022", "anthropic", 0.8, 4.0),
    ("gpt-4o-mini-2024-07-18", "openai", 0.15, 0.6),
];

fn repo(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(path)
}

fn engine() -> Arc<Engine> {
    let models = MODELS.iter().map(|&(id, provider, input, output)| CatalogModel::single(id, provider, input, output, 128_000)).collect();
    let config = EngineConfig {
        encoder: EncoderConfig { dir: repo("models/encoder"), ..EncoderConfig::default() },
        head_dir: repo("models/router"),
        models,
        ..EngineConfig::default()
    };
    Arc::new(Engine::load(config).expect("the shipped models load"))
}

fn query(prompt: &str, tradeoff: Tradeoff) -> RouteQuery {
    RouteQuery { tradeoff, ..RouteQuery::new("in-process", vec![ChatMessage::user(prompt)], 2) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_in_process_with_the_shipped_models() {
    let engine = engine();
    let prompt = "Write a Python function that merges two sorted lists in linear time.";

    let first = engine.route(query(prompt, Tradeoff::Default)).await.unwrap();
    assert_eq!(first.ranking.chosen.len(), 3, "a primary and two fallbacks");
    assert!(!first.timings.cache_hit);
    for &i in &first.ranking.chosen {
        let s = &first.ranking.scored[i];
        let p = s.prediction.expect("every catalog model is covered by the shipped head");
        assert!((0.0..=1.0).contains(&p.quality) && p.output_tokens >= 1.0 && s.cost_usd > 0.0, "{s:?}");
    }

    // The same text again: the cache answers, with the same ranking.
    let again = engine.route(query(prompt, Tradeoff::Default)).await.unwrap();
    assert!(again.timings.cache_hit);
    assert_eq!(again.ranking.chosen, first.ranking.chosen);

    // Cost only: the primary is the cheapest of the three for this prompt.
    let cheap = engine.route(query(prompt, Tradeoff::Weight(1.0))).await.unwrap();
    let cost = |i: usize| cheap.ranking.scored[i].cost_usd;
    let primary = cheap.ranking.chosen[0];
    assert!(cheap.ranking.chosen.iter().all(|&i| cost(primary) <= cost(i)), "{:?}", cheap.ranking.chosen);

    // A hard constraint is kept: a denied model is never offered.
    let mut q = query(prompt, Tradeoff::Default);
    q.constraints.denied_models = vec![MODELS[2].0.into()];
    let denied = engine.route(q).await.unwrap();
    assert!(denied.ranking.chosen.iter().all(|&i| engine.catalog().models()[denied.ranking.scored[i].model].id != MODELS[2].0));

    // Unknown names are refused, naming the field.
    let mut q = query(prompt, Tradeoff::Default);
    q.constraints.allowed_models = vec!["no-such-model".into()];
    match engine.route(q).await {
        Err(RouteError::InvalidArgument { field, .. }) => assert_eq!(field, "allowed_models"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn tier_engine(variant: EncoderVariant, cascade_margin: f64) -> Arc<Engine> {
    let models = MODELS.iter().map(|&(id, provider, input, output)| CatalogModel::single(id, provider, input, output, 128_000)).collect();
    let config = EngineConfig {
        encoder: EncoderConfig {
            dir: repo("models/encoder"),
            static_dir: repo("models/static"),
            variant,
            cascade_margin,
            ..EncoderConfig::default()
        },
        head_dir: repo("models/router"),
        static_head_dir: repo("models/router-static"),
        models,
        ..EngineConfig::default()
    };
    Arc::new(Engine::load(config).expect("the shipped models load"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_tier_routes_with_its_own_head_on_every_token() {
    let engine = tier_engine(EncoderVariant::Static, 0.05);
    assert_eq!((engine.encoder().id(), engine.encoder().dimension()), ("all-MiniLM-L6-v2-static256", 256));
    assert_eq!(engine.head().manifest().encoder.id, "all-MiniLM-L6-v2-static256");
    assert!(engine.cascade_stats().is_none());
    let d = engine.route(query("Prove that there are infinitely many primes.", Tradeoff::Default)).await.unwrap();
    assert_eq!(&*d.encoder, "all-MiniLM-L6-v2-static256");
    assert!(!d.escalated && d.ranking.chosen.len() == 3);
    // Past MiniLM's 256 tokens the static tier still reads the text: a different tail changes
    // the prediction (its tokens are counted too).
    let head = "Summarise the following notes for a manager. ".repeat(60);
    let a = engine.route(query(&format!("{head} The budget is fine."), Tradeoff::Weight(0.0))).await.unwrap();
    let b = engine
        .route(query(&format!("{head} Write a formal proof in Lean of the fundamental theorem of calculus."), Tradeoff::Weight(0.0)))
        .await
        .unwrap();
    assert!(a.input_tokens > 300, "{}", a.input_tokens);
    let q = |d: &pointsman_core::engine::Decision| d.ranking.scored.iter().map(|s| s.prediction.unwrap().quality).collect::<Vec<_>>();
    assert_ne!(q(&a), q(&b), "the text past 256 tokens changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cascade_asks_minilm_only_when_the_static_margin_is_narrow() {
    // A margin no ranking reaches: every request goes to MiniLM and is decided by it.
    let always = tier_engine(EncoderVariant::Cascade, 1e9);
    let d = always.route(query("Translate 'good morning' into French.", Tradeoff::Default)).await.unwrap();
    assert!(d.escalated);
    assert_eq!(&*d.encoder, "all-MiniLM-L6-v2/int8");
    let s = always.cascade_stats().unwrap();
    assert_eq!((s.static_decided.load(Ordering::Relaxed), s.escalated.load(Ordering::Relaxed)), (0, 1));
    // Margin 0: the static tier always decides.
    let never = tier_engine(EncoderVariant::Cascade, 0.0);
    for p in ["Translate 'good morning' into French.", "Prove that there are infinitely many primes."] {
        let d = never.route(query(p, Tradeoff::Default)).await.unwrap();
        assert!(!d.escalated);
        assert_eq!(&*d.encoder, "all-MiniLM-L6-v2-static256");
    }
    let s = never.cascade_stats().unwrap();
    assert_eq!((s.static_decided.load(Ordering::Relaxed), s.escalated.load(Ordering::Relaxed)), (2, 0));
}
