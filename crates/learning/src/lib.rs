//! Learning: from routing logs to an ONNX router head.
//!
//! The offline half of Pointsman. One training run is a straight pipeline:
//!
//! 1. [`read_logs`] turns JSON Lines routing logs (gzip or plain) into a dense index of prompts
//!    and models plus a sparse list of observed outcomes.
//! 2. The caller embeds `logs.prompts` with the encoder (not this module's business) and builds a
//!    [`Dataset`]: dense `[prompts, models]` targets with a mask, because production logs hold
//!    one model per prompt and every loss and metric must ignore the unobserved pairs.
//! 3. [`split_by_prompt`] + [`train()`] fit a small multi-task [`Mlp`] (quality and output tokens
//!    per model) with hand-written backprop on `ndarray`: the head is tiny, so a training
//!    framework would cost more in build time and dependencies than it saves.
//! 4. [`export`] writes the head as a self-contained ONNX model that the serving path runs with
//!    the same `ort` session machinery as the encoder. [`Mlp::predict`] computes exactly what
//!    the graph computes, so tests can compare the two.
//!
//! The pieces above depend on nothing else in the crate (errors are in `error`, embedding in
//! `embed`); [`job`] ties them to the serving
//! encoder and the head manifest for `pointsman train`.

mod data;
mod dataset;
mod embed;
pub mod embed_cache;
mod error;
pub mod eval;
pub mod evidence;
pub mod extend;
pub mod frontier;
pub mod job;
pub mod knn;
pub mod lowrank;
mod memory;
mod mlp;
pub mod offpolicy;
mod onnx;
mod rng;
mod shrink;
mod support;
mod train;
pub mod tune;

pub use data::{read_logs, register_decision_logs, DecisionLogs, Observation, PromptEntry, RoutingLogs, MAX_PROBLEMS};
pub use pointsman_core::record::LogRecord;
// The engine parts the trainer builds on, by their names in the core.
pub use dataset::{folds, split_by_prompt, Dataset};
pub use memory::{memory_rows, memory_rows_stratified, DEFAULT_MEMORY_CAP, DEFAULT_MODEL_FLOOR};
pub use mlp::{decode_tokens, encode_tokens, Mlp};
pub use onnx::{export, export_with_support, import, INPUT_NAME, IR_VERSION, OPSET_VERSION, QUALITY_OUTPUT, TOKENS_OUTPUT};
use pointsman_core::{catalog, encoder, policy, predictor};
pub use rng::SplitMix64;
pub use shrink::{LocalPrior, MemoryBlock, Shrink, MIN_KAPPA};
pub use support::{Support, DEFAULT_NEIGHBOURS, SUPPORT_OUTPUT};
pub use train::{baseline_metrics, evaluate, train, Metrics, TrainConfig, TrainReport};

pub(crate) use embed::write_atomically;
pub use embed::{embed_logged_prompts, embed_prompts, embed_prompts_cached, now_rfc3339};
pub(crate) use error::check_shapes;
pub use error::{JobError, LearningError};
