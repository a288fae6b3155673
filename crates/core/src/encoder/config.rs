//! The encoder's settings (`[encoder]` in the server's config file).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which encoder graph to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncoderVariant {
    /// Dynamic int8, per-channel weights: about twice as fast, cosine ~0.99 to fp32.
    #[default]
    Int8,
    /// The exact fp32 graph.
    Fp32,
}

impl std::str::FromStr for EncoderVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "int8" => Ok(Self::Int8),
            "fp32" => Ok(Self::Fp32),
            other => Err(format!("encoder variant must be `int8` or `fp32`. Given: `{other}`")),
        }
    }
}

/// `[encoder]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// Folder with `manifest.json`, the ONNX graphs and `tokenizer.json`.
    pub dir: PathBuf,
    /// `int8` or `fp32`.
    pub variant: EncoderVariant,
    /// ONNX sessions run in parallel (each serves one prompt at a time).
    pub sessions: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Token cap of the routing text (the encoder's own limit is 256).
    pub max_tokens: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self { dir: "models/encoder".into(), variant: EncoderVariant::Int8, sessions: 2, intra_threads: 1, max_tokens: 256 }
    }
}
