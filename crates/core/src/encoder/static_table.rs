//! The static tier's encoder: a table of token vectors distilled from MiniLM
//! (`scripts/build_static_encoder.py`, model2vec's format), averaged over the text's tokens by
//! the official `model2vec-rs` crate (`local-only`: it never looks for the hub).
//!
//! Why the crate and not a few lines over `tokenizers` + `ndarray` (both were written and
//! measured on the committed model, docs/measurements.md "Static encoder"): the vectors agree
//! (both within 3e-6 of the script's), but `model2vec-rs` tokenizes with its own WordPiece, about
//! 20 times faster than `tokenizers` 0.23 (a 3,900-token text: 0.21 ms against 4.6 ms; 16
//! tokens: 1.5 us against 25 us), and tokenizing is nearly all of the work. Its costs: it pulls
//! `tokenizers` 0.21 beside the workspace's 0.23, and it returns the vector only, not the ids,
//! so the token count the policy prices the request with comes from `tokenizers`
//! ([`StaticEncoder::count`]: exact up to [`EXACT_COUNT_BYTES`], extrapolated past it).
//!
//! What a vector is (the script's reference, to 1e-5; the `static_encoder` test reads its
//! fixture): the first `max_tokens` tokens of the text without special tokens (model2vec first
//! cuts the text to `max_tokens` times the vocabulary's median token length in characters, far
//! past 8,192 tokens of the routing text's 32 KB), `[UNK]` dropped, their rows averaged and
//! L2-normalised (all zeros for a text with no known token).
use std::path::Path;

use serde::Deserialize;
use tokenizers::Tokenizer;

use super::EncoderError;

/// `models/static/manifest.json` (the fields Pointsman reads).
#[derive(Debug, Clone, Deserialize)]
pub struct StaticManifest {
    /// Format tag, [`STATIC_FORMAT`].
    pub format: String,
    /// Model id, e.g. "all-MiniLM-L6-v2-static256".
    pub id: String,
    /// Embedding dimension (columns of the table).
    pub dimension: usize,
    /// The files, with their sha256.
    pub files: std::collections::BTreeMap<String, super::ManifestFile>,
}

/// The format this version reads.
pub const STATIC_FORMAT: &str = "pointsman-static/1";

/// Texts up to this many bytes have their tokens counted exactly; a longer one is counted on
/// this prefix and extrapolated by its length in bytes (within a few percent on prose and code;
/// the count prices the request's input, and an LLM's own tokenizer differs from BERT's by more).
pub const EXACT_COUNT_BYTES: usize = 2048;

/// The loaded static encoder.
pub struct StaticEncoder {
    model: model2vec_rs::model::StaticModel,
    /// The same vocabulary, for counting tokens.
    counter: Tokenizer,
}

fn manifest_err(path: &Path, message: impl Into<String>) -> EncoderError {
    EncoderError::Manifest { path: path.to_path_buf(), message: message.into() }
}

impl StaticEncoder {
    /// Reads `dir/manifest.json` and the files it names (checking their sha256).
    pub fn load(dir: &Path) -> Result<(Self, StaticManifest), EncoderError> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(|e| super::file_err(&mpath, e))?;
        let m: StaticManifest = serde_json::from_str(&text).map_err(|e| manifest_err(&mpath, e.to_string()))?;
        if m.format != STATIC_FORMAT {
            return Err(manifest_err(&mpath, format!("`format` must be `{STATIC_FORMAT}`. Given: `{}`", m.format)));
        }
        let read = |name: &str| -> Result<Vec<u8>, EncoderError> {
            let file = m.files.get(name).ok_or_else(|| manifest_err(&mpath, format!("no `files.{name}` entry")))?;
            let path = dir.join(&file.path);
            let bytes = std::fs::read(&path).map_err(|e| super::file_err(&path, e))?;
            if let Some(want) = &file.sha256 {
                let got: String = {
                    use sha2::Digest;
                    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
                };
                if &got != want {
                    return Err(manifest_err(&mpath, format!("{} has sha256 {got}, the manifest says {want}", path.display())));
                }
            }
            Ok(bytes)
        };
        let (table, tokenizer, config) = (read("model.safetensors")?, read("tokenizer.json")?, read("config.json")?);
        let model = model2vec_rs::model::StaticModel::from_bytes(&tokenizer, &table, &config, Some(true))
            .map_err(|e| super::file_err(&dir.join("model.safetensors"), format!("{e:#}")))?;
        if model.dim() != m.dimension {
            return Err(manifest_err(
                &mpath,
                format!("the table has {} columns, the manifest says `dimension` {}", model.dim(), m.dimension),
            ));
        }
        let mut counter = Tokenizer::from_bytes(&tokenizer).map_err(|e| super::file_err(&dir.join("tokenizer.json"), e))?;
        counter.with_truncation(None).map_err(|e| EncoderError::Tokenize(e.to_string()))?;
        counter.with_padding(None);
        Ok((Self { model, counter }, m))
    }

    /// The normalised mean of the rows of the first `max_tokens` tokens of `text`.
    pub fn embed(&self, text: &str, max_tokens: usize) -> Vec<f32> {
        let mut v = self.model.encode_with_args(&[text.to_string()], Some(max_tokens), 1);
        v.pop().expect("one text in, one vector out. This is a bug.")
    }

    /// Tokens of `text` (no special tokens): exact up to [`EXACT_COUNT_BYTES`], else counted on
    /// that prefix and scaled by the text's length.
    pub fn count(&self, text: &str) -> Result<u32, EncoderError> {
        let prefix = super::text::cut_end(text, EXACT_COUNT_BYTES);
        let n = self.counter.encode_fast(prefix, false).map_err(|e| EncoderError::Tokenize(e.to_string()))?.len();
        if prefix.len() == text.len() || prefix.is_empty() {
            return Ok(n as u32);
        }
        Ok((n as f64 * text.len() as f64 / prefix.len() as f64).round() as u32)
    }
}
