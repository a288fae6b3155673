//! Pointsman: a learned LLM router served over gRPC.
//!
//! Layers, bottom up: `runtime` (loading ONNX Runtime), `encoder` (tokenize, embed, routing
//! text), `predictor` (the ONNX head), `catalog` and `policy` (constraints, utility, fallbacks),
//! `engine` (the core that ties them with a cache), `learning` (train and export heads),
//! `health` (live circuit breakers from feedback), `logs` (the SQLite decision log), `transport`
//! (gRPC), and `config`. Only `transport` knows protobuf.
#![warn(missing_docs)]

pub mod catalog;
pub mod cli;
pub mod config;
pub mod encoder;
pub mod engine;
pub mod health;
pub mod learning;
pub mod logs;
pub mod policy;
pub mod predictor;
pub mod runtime;
pub mod service;
pub mod telemetry;
pub mod transport;

/// Generated protobuf and gRPC types of `pointsman.v1`.
#[allow(missing_docs)]
pub mod pb {
    tonic::include_proto!("pointsman.v1");
}
