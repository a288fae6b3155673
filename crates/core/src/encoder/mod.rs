//! The sentence encoder: tokenize, run the ONNX graph, return an L2-normalised embedding.
//!
//! Shape of the design:
//! - One prompt per ONNX call, never a padded batch. Dynamic int8 quantises activations per
//!   tensor, so a batched prompt's embedding would depend on its batch-mates; batch-of-one makes
//!   the same text give the same embedding whatever else the server is doing (and on 2 cores,
//!   batching buys little anyway).
//! - A small pool of sessions (`encoder.sessions`), each run by one caller at a time; callers
//!   hold a semaphore permit (see `engine`) so a free session always exists.
//! - The graph pools and normalises inside ONNX, so Rust only tokenizes and copies.
//! - The tokenizer's baked-in truncation and padding are replaced: one untruncated encoding
//!   gives both the token count and, cut to `max_tokens`, the model input.
//! - The static tier ([`EncoderVariant::Static`], [`static_table`]) has the same surface: its
//!   `tokenize` counts the tokens and keeps the text, its `embed` averages the rows of the
//!   text's first `static_max_tokens` tokens, in Rust, with no session.
mod config;
pub mod static_table;
pub mod text;

pub use config::{EncoderConfig, EncoderVariant};
pub use static_table::{StaticEncoder, StaticManifest};

use crate::runtime::SessionPool;
pub use crate::runtime::{build_session, session_from_bytes};

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use ndarray::Array2;
use ort::{environment::Environment, value::TensorRef};
use serde::Deserialize;
use tokenizers::Tokenizer;

/// Errors of the encoder layer.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A model file is missing or unreadable.
    #[error("encoder file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The manifest does not describe the graph.
    #[error("encoder manifest {path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// ONNX Runtime failed.
    #[error("encoder inference: {0}")]
    Inference(#[from] ort::Error),
    /// The graph returned an unexpected shape.
    #[error("encoder output has shape {got:?}, expected [1, {dimension}]")]
    OutputShape {
        /// Shape returned.
        got: Vec<usize>,
        /// Expected dimension.
        dimension: usize,
    },
}

impl EncoderError {
    /// Stable snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            EncoderError::File { .. } => "encoder_file",
            EncoderError::Manifest { .. } => "encoder_manifest",
            EncoderError::Tokenize(_) => "encoder_tokenize",
            EncoderError::Inference(_) => "encoder_inference",
            EncoderError::OutputShape { .. } => "encoder_output_shape",
        }
    }
}

/// A file named by the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the manifest's folder.
    pub path: String,
    /// Hex SHA-256 of the file.
    pub sha256: Option<String>,
}

/// `models/encoder/manifest.json` (the fields Pointsman reads).
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderManifest {
    /// Model id, e.g. "all-MiniLM-L6-v2".
    pub id: String,
    /// Embedding dimension.
    pub dimension: usize,
    /// Longest input the model was trained for, in tokens.
    pub max_tokens: usize,
    /// Output name of the sentence embedding.
    pub output: String,
    /// Graph files by variant ("fp32", "int8").
    pub files: std::collections::BTreeMap<String, ManifestFile>,
    /// The tokenizer file.
    pub tokenizer: ManifestFile,
}

/// A tokenized text: the model input (cut to `max_tokens`) and the untruncated count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// MiniLM's input ids with [CLS] and [SEP], at most `max_tokens` long (empty for the
    /// static encoder, which tokenizes with its own WordPiece as it averages).
    pub ids: Vec<i64>,
    /// Tokens in the whole text, special tokens excluded.
    pub full_count: u32,
    /// The text itself, for the static encoder.
    pub text: Option<String>,
}

/// The loaded encoder: a tokenizer and what turns its ids into an embedding.
pub struct Encoder {
    id: String,
    dimension: usize,
    max_tokens: usize,
    kind: Kind,
}

/// What embeds the ids.
enum Kind {
    /// MiniLM: a pool of ONNX sessions (batch of one each).
    Onnx { tokenizer: Tokenizer, output: String, sep_id: i64, sessions: SessionPool },
    /// The static table, averaged in Rust; `threads` is the useful parallelism.
    Static { table: StaticEncoder, threads: usize },
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> EncoderError {
    EncoderError::File { path: path.to_path_buf(), message: e.to_string() }
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer, EncoderError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| file_err(path, e))?;
    tokenizer.with_truncation(None).map_err(|e| EncoderError::Tokenize(e.to_string()))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

impl Encoder {
    /// Loads the encoder `cfg.variant` names: MiniLM's manifest, tokenizer and `cfg.sessions`
    /// sessions, or the static table. `cascade` runs two encoders: load each with
    /// [`Encoder::load_variant`].
    pub fn load(env: &Environment, cfg: &EncoderConfig) -> Result<Self, EncoderError> {
        Self::load_variant(env, cfg, cfg.variant)
    }

    /// Loads one encoder (`int8`, `fp32` or `static`) with the settings of `cfg`.
    pub fn load_variant(env: &Environment, cfg: &EncoderConfig, variant: EncoderVariant) -> Result<Self, EncoderError> {
        match variant {
            EncoderVariant::Static => Self::load_static(cfg),
            EncoderVariant::Int8 | EncoderVariant::Fp32 => Self::load_onnx(env, cfg, variant),
            EncoderVariant::Cascade => Err(EncoderError::Manifest {
                path: cfg.dir.clone(),
                message: "`encoder.variant = \"cascade\"` runs two encoders; this command needs one: `int8`, `fp32` or `static`".into(),
            }),
        }
    }

    /// The static encoder of `cfg.static_dir`, capped at `cfg.static_max_tokens` tokens.
    fn load_static(cfg: &EncoderConfig) -> Result<Self, EncoderError> {
        let (table, manifest) = StaticEncoder::load(&cfg.static_dir)?;
        let enc = Self {
            id: manifest.id,
            dimension: manifest.dimension,
            max_tokens: cfg.static_max_tokens,
            kind: Kind::Static { table, threads: cfg.sessions.max(1) },
        };
        enc.embed_text("pointsman self-check")?;
        Ok(enc)
    }

    fn load_onnx(env: &Environment, cfg: &EncoderConfig, variant: EncoderVariant) -> Result<Self, EncoderError> {
        let manifest_path = cfg.dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| file_err(&manifest_path, e))?;
        let manifest: EncoderManifest =
            serde_json::from_str(&text).map_err(|e| EncoderError::Manifest { path: manifest_path.clone(), message: e.to_string() })?;
        let variant = variant.as_str();
        let file = manifest
            .files
            .get(variant)
            .ok_or_else(|| EncoderError::Manifest { path: manifest_path.clone(), message: format!("no `files.{variant}` entry") })?;
        let max_tokens = cfg.max_tokens.min(manifest.max_tokens);

        let tok_path = cfg.dir.join(&manifest.tokenizer.path);
        let tokenizer = load_tokenizer(&tok_path)?;
        let sep_id = tokenizer
            .token_to_id("[SEP]")
            .ok_or_else(|| EncoderError::Manifest { path: tok_path.clone(), message: "tokenizer has no [SEP] token".into() })?
            as i64;

        let graph = cfg.dir.join(&file.path);
        let bytes = std::fs::read(&graph).map_err(|e| file_err(&graph, e))?;
        let sessions = SessionPool::new(env, &bytes, cfg.sessions, cfg.intra_threads)?;
        let enc = Self {
            id: format!("{}/{variant}", manifest.id),
            dimension: manifest.dimension,
            max_tokens,
            kind: Kind::Onnx { tokenizer, output: manifest.output, sep_id, sessions },
        };
        // Fail at load, not on the first request, if the graph and manifest disagree.
        enc.embed_text("pointsman self-check")?;
        Ok(enc)
    }

    /// "<model id>/<variant>", e.g. "all-MiniLM-L6-v2/int8", or the static model's id
    /// ("all-MiniLM-L6-v2-static256").
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Embedding dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Token cap of the model input.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Number of sessions (the useful parallelism).
    pub fn parallelism(&self) -> usize {
        match &self.kind {
            Kind::Onnx { sessions, .. } => sessions.len(),
            Kind::Static { threads, .. } => *threads,
        }
    }

    /// True for the static tier (no ONNX session).
    pub fn is_static(&self) -> bool {
        matches!(self.kind, Kind::Static { .. })
    }

    /// Tokenizes `text` once: the capped model input and the full count.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, EncoderError> {
        let (tokenizer, sep_id) = match &self.kind {
            Kind::Onnx { tokenizer, sep_id, .. } => (tokenizer, *sep_id),
            Kind::Static { table, .. } => {
                return Ok(Tokens { ids: Vec::new(), full_count: table.count(text)?, text: Some(text.to_string()) });
            }
        };
        let enc = tokenizer.encode_fast(text, true).map_err(|e| EncoderError::Tokenize(e.to_string()))?;
        let all = enc.get_ids();
        let full_count = all.len().saturating_sub(2) as u32;
        let mut ids: Vec<i64> = all.iter().take(self.max_tokens).map(|&i| i64::from(i)).collect();
        if all.len() > self.max_tokens {
            *ids.last_mut().expect("max_tokens >= 8. This is a bug.") = sep_id;
        }
        Ok(Tokens { ids, full_count, text: None })
    }

    /// Counts the tokens of `text` (special tokens excluded).
    pub fn count_tokens(&self, text: &str) -> Result<u32, EncoderError> {
        let tokenizer = match &self.kind {
            Kind::Onnx { tokenizer, .. } => tokenizer,
            Kind::Static { table, .. } => return table.count(text),
        };
        let enc = tokenizer.encode_fast(text, false).map_err(|e| EncoderError::Tokenize(e.to_string()))?;
        Ok(enc.len() as u32)
    }

    /// Embeds tokenized input (batch of one). Blocks: call from a blocking thread.
    pub fn embed(&self, tokens: &Tokens) -> Result<Vec<f32>, EncoderError> {
        let (output, sessions) = match &self.kind {
            Kind::Onnx { output, sessions, .. } => (output, sessions),
            Kind::Static { table, .. } => {
                let text = tokens
                    .text
                    .as_deref()
                    .ok_or_else(|| EncoderError::Tokenize("the static encoder needs the text; tokenize it with this encoder".into()))?;
                return Ok(table.embed(text, self.max_tokens));
            }
        };
        let n = tokens.ids.len();
        let ids = Array2::from_shape_vec((1, n), tokens.ids.clone()).expect("shape matches length. This is a bug.");
        let mask = Array2::<i64>::ones((1, n));
        let mut guard = sessions.take();
        let outputs = guard.run(ort::inputs![
            "input_ids" => TensorRef::from_array_view(&ids)?,
            "attention_mask" => TensorRef::from_array_view(&mask)?,
        ])?;
        let out = outputs[output.as_str()].try_extract_array::<f32>()?;
        if out.shape() != [1, self.dimension] {
            return Err(EncoderError::OutputShape { got: out.shape().to_vec(), dimension: self.dimension });
        }
        Ok(out.iter().copied().collect())
    }

    /// Tokenizes and embeds. Blocks.
    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>, EncoderError> {
        self.embed(&self.tokenize(text)?)
    }

    /// Embeds many texts on `parallelism()` threads, in order, with `progress(done)` calls.
    /// Each text is embedded alone, exactly as at serving time.
    pub fn embed_many(&self, texts: &[&str], progress: &(dyn Fn(usize) + Sync)) -> Result<Vec<Vec<f32>>, EncoderError> {
        let done = AtomicUsize::new(0);
        let next = AtomicUsize::new(0);
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        let slots: Vec<Mutex<&mut Option<Vec<f32>>>> = out.iter_mut().map(Mutex::new).collect();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..self.parallelism())
                .map(|_| {
                    s.spawn(|| -> Result<(), EncoderError> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= texts.len() {
                                return Ok(());
                            }
                            let e = self.embed_text(texts[i])?;
                            **slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                        }
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("encoder worker panicked. This is a bug."))
        })?;
        drop(slots);
        Ok(out.into_iter().map(|e| e.expect("every slot was filled. This is a bug.")).collect())
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}
