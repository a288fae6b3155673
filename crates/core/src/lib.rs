//! # pointsman-core
//!
//! Pointsman's decision engine, as a library: given a conversation and its constraints, which
//! model should answer it, with predicted quality, output length, cost and latency for every
//! candidate. No gRPC, no database: a gateway, an Envoy dynamic module or a batch job can route
//! in-process with this crate alone.
//!
//! Layers, bottom up:
//! - [`runtime`]: loads ONNX Runtime (a shared library, found or named).
//! - [`encoder`]: the routing text of a conversation ([`encoder::text`]), tokenizing and
//!   embedding it with the ONNX sentence encoder.
//! - [`predictor`]: the ONNX head (quality and output tokens per model), its manifest and graph.
//! - [`catalog`] and [`policy`]: the candidates, hard constraints, the quality-cost utility and
//!   the fallback order; [`health`] is the live circuit state the policy reads.
//! - [`engine`]: ties them together with a worker pool (bounded queue, deadlines) and a cache;
//!   [`exploration`] samples the primary on an opt-in share of traffic and records its propensity.
//! - [`record`]: the training-line format the decision log writes and the trainer reads.
//! - [`session`]: keeping a conversation on the model and endpoint of its last turn while that
//!   is worth the cached-input saving (the server keeps the sessions).
//!
//! ```no_run
//! use std::sync::Arc;
//! use pointsman_core::{
//!     catalog::CatalogModel,
//!     encoder::text::ChatMessage,
//!     engine::{Engine, EngineConfig, RouteQuery},
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Models at list price (USD per million tokens in and out) and their context window;
//! // `CatalogModel::endpoints` lists several providers of one model.
//! let model = |id: &str, provider: &str, input: f64, output: f64| CatalogModel::single(id, provider, input, output, 200_000);
//! // The shipped encoder and head under `models/`, two of the models the head predicts.
//! let config = EngineConfig {
//!     models: vec![model("claude-3-5-sonnet-20241022", "anthropic", 3.0, 15.0), model("claude-3-5-haiku-20241022", "anthropic", 0.8, 4.0)],
//!     ..EngineConfig::default()
//! };
//! let engine = Arc::new(Engine::load(config)?);
//! let query = RouteQuery::new("req-1", vec![ChatMessage::user("Prove that there are infinitely many primes.")], 1);
//! let decision = engine.route(query).await?;
//! let primary = &decision.ranking.scored[decision.ranking.chosen[0]];
//! println!("{} (predicted quality {:?})", engine.catalog().models()[primary.model].id, primary.prediction);
//! # Ok(()) }
//! ```
//!
//! `examples/route.rs` runs this over the shipped catalog (`cargo run -p pointsman-core --example
//! route -- "your prompt"`), and `tests/in_process.rs` checks it against the real models.
#![warn(missing_docs)]

pub mod catalog;
pub mod encoder;
pub mod engine;
pub mod exploration;
pub mod health;
pub mod policy;
pub mod predictor;
pub mod record;
pub mod runtime;
pub mod session;
