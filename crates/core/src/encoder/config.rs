//! The encoder's settings (`[encoder]` in the server's config file).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncoderVariant {
    /// MiniLM, dynamic int8, per-channel weights: about twice as fast, cosine ~0.99 to fp32.
    #[default]
    Int8,
    /// MiniLM, the exact fp32 graph.
    Fp32,
    /// The static tier: token vectors distilled from MiniLM (`static_dir`), averaged in Rust over
    /// every token up to `static_max_tokens`; no ONNX session. Needs a head trained on it
    /// (`head.static_dir`).
    Static,
    /// The static tier first; MiniLM (int8) only when the static head's best two utilities are
    /// closer than `cascade_margin`.
    Cascade,
}

impl EncoderVariant {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Fp32 => "fp32",
            Self::Static => "static",
            Self::Cascade => "cascade",
        }
    }
}

impl std::str::FromStr for EncoderVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "int8" => Ok(Self::Int8),
            "fp32" => Ok(Self::Fp32),
            "static" => Ok(Self::Static),
            "cascade" => Ok(Self::Cascade),
            other => Err(format!("encoder variant must be `int8`, `fp32`, `static` or `cascade`. Given: `{other}`")),
        }
    }
}

/// `[encoder]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// Folder with `manifest.json`, the ONNX graphs and `tokenizer.json` (MiniLM).
    pub dir: PathBuf,
    /// `int8`, `fp32`, `static` or `cascade`.
    pub variant: EncoderVariant,
    /// ONNX sessions run in parallel (each serves one prompt at a time); with `static`, the
    /// threads that encode in parallel.
    pub sessions: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Token cap of MiniLM's input (its own limit is 256).
    pub max_tokens: usize,
    /// Folder of the static encoder (model2vec format: `model.safetensors`, `tokenizer.json`,
    /// `config.json`, and Pointsman's `manifest.json`).
    pub static_dir: PathBuf,
    /// Token cap of the static encoder: the first this many tokens of the routing text are averaged.
    pub static_max_tokens: usize,
    /// `cascade`: the static tier decides alone when its best candidate's utility leads the
    /// second's by at least this much; otherwise MiniLM decides.
    pub cascade_margin: f64,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            dir: "models/encoder".into(),
            variant: EncoderVariant::Int8,
            sessions: 2,
            intra_threads: 1,
            max_tokens: 256,
            static_dir: "models/static".into(),
            static_max_tokens: 8192,
            cascade_margin: 0.05,
        }
    }
}
