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

/// Up to this many bytes of a text's chunks that are not ASCII are counted exactly; more are
/// counted on this prefix and extrapolated by their length in bytes (within a few percent on prose and code;
/// the count prices the request's input, and an LLM's own tokenizer differs from BERT's by more).
pub const EXACT_COUNT_BYTES: usize = 2048;

/// The loaded static encoder.
pub struct StaticEncoder {
    model: model2vec_rs::model::StaticModel,
    /// The same vocabulary, for counting the tokens of text that is not ASCII.
    counter: Tokenizer,
    /// The same vocabulary, for counting the tokens of ASCII text.
    ascii: AsciiCount,
}

/// Counts the tokens BERT's uncased WordPiece pipeline (`BertNormalizer` with lowercasing,
/// `BertPreTokenizer`, `WordPiece`) makes of the ASCII parts of a text, without making them: on ASCII the
/// normaliser only drops control characters, turns tab, CR and LF into spaces and lowercases,
/// and the pre-tokeniser splits on whitespace and isolates punctuation. Each word then takes the
/// longest vocabulary entry at its start, then the longest `##` entry at each next position; a
/// word with a position no entry covers, or of more than `max_chars`, is one `[UNK]`. The
/// `static_encoder` test checks it against `tokenizers` on every prompt of the shared files.
#[derive(Debug)]
pub struct AsciiCount {
    /// Entries that start a word.
    starts: std::collections::HashSet<Box<str>>,
    /// Entries that continue one, without their `##`.
    continues: std::collections::HashSet<Box<str>>,
    /// The added tokens (`[CLS]`, `[MASK]`, ...), matched whole in the raw text by `tokenizers`:
    /// a text holding one is counted there.
    added: Vec<String>,
    /// Longest word WordPiece splits (longer: one `[UNK]`).
    max_chars: usize,
    /// Longest vocabulary entry, in bytes.
    longest: usize,
}

/// Characters outside ASCII that are Unicode punctuation (which the pre-tokeniser isolates, as
/// it does ASCII's) and common in English text: quotes, dashes, the ellipsis, bullets.
const PUNCTUATION: &[char] = &[
    '\u{2018}', '\u{2019}', '\u{201a}', '\u{201b}', '\u{201c}', '\u{201d}', '\u{201e}', '\u{201f}', '\u{2010}', '\u{2011}', '\u{2012}',
    '\u{2013}', '\u{2014}', '\u{2015}', '\u{2026}', '\u{2022}', '\u{00ab}', '\u{00bb}', '\u{00bf}', '\u{00a1}', '\u{00b7}', '\u{00a7}',
    '\u{00b6}', '\u{2020}', '\u{2021}', '\u{2032}', '\u{2033}',
];

impl AsciiCount {
    /// From a BERT uncased tokenizer; `None` when its pipeline is not that one.
    pub fn new(tokenizer: &Tokenizer) -> Option<Self> {
        use tokenizers::{models::ModelWrapper, normalizers::NormalizerWrapper, pre_tokenizers::PreTokenizerWrapper};
        let ModelWrapper::WordPiece(wp) = tokenizer.get_model() else { return None };
        match tokenizer.get_normalizer() {
            Some(NormalizerWrapper::BertNormalizer(n)) if n.lowercase && n.clean_text => {}
            _ => return None,
        }
        if !matches!(tokenizer.get_pre_tokenizer(), Some(PreTokenizerWrapper::BertPreTokenizer(_))) {
            return None;
        }
        let (mut starts, mut continues) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        let mut longest = 0;
        for token in tokenizer.get_vocab(false).into_keys() {
            longest = longest.max(token.len());
            match token.strip_prefix(wp.continuing_subword_prefix.as_str()) {
                Some(rest) => continues.insert(Box::from(rest)),
                None => starts.insert(token.into_boxed_str()),
            };
        }
        let added = tokenizer.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        Some(Self { starts, continues, added, max_chars: wp.max_input_chars_per_word, longest })
    }

    /// The tokens of `text` (no special tokens), or `None` when some of it is left to
    /// `tokenizers` (see [`AsciiCount::count_ascii`]).
    pub fn count(&self, text: &str) -> Option<u32> {
        let (n, rest) = self.count_ascii(text);
        rest.is_empty().then_some(n)
    }

    /// The tokens of the chunks of `text` between ASCII whitespace that are ASCII and hold no
    /// added token, and the other chunks joined by spaces. The pipeline splits at whitespace and
    /// its normaliser works character by character, so a text's tokens are the sum of its
    /// chunks': the second part's, counted by `tokenizers`, complete the count.
    pub fn count_ascii(&self, text: &str) -> (u32, String) {
        let (mut n, mut rest) = (0u32, String::new());
        let mut word = Vec::with_capacity(64);
        for chunk in text.split([' ', '\t', '\n', '\r']) {
            if chunk.contains('[') && self.added.iter().any(|a| chunk.contains(a.as_str())) {
                rest.push_str(chunk);
                rest.push(' ');
            } else if chunk.is_ascii() || chunk.chars().all(|c| c.is_ascii() || PUNCTUATION.contains(&c)) {
                for c in chunk.chars() {
                    match c {
                        // Control characters are dropped before the split (they join what is beside them).
                        '\0'..='\x1f' | '\x7f' => {}
                        // Punctuation is split off; typographic punctuation alone is one token (its
                        // own entry or `[UNK]`).
                        c if c.is_ascii_punctuation() || !c.is_ascii() => n += self.word(&mut word) + 1,
                        c => word.push(c.to_ascii_lowercase() as u8),
                    }
                }
                n += self.word(&mut word);
            } else {
                rest.push_str(chunk);
                rest.push(' ');
            }
        }
        (n, rest)
    }

    /// The WordPiece tokens of the lowercased word in `word`, which it empties.
    fn word(&self, word: &mut Vec<u8>) -> u32 {
        if word.is_empty() {
            return 0;
        }
        let w = std::str::from_utf8(word).expect("ASCII. This is a bug.");
        let n = if w.len() > self.max_chars { 1 } else { self.pieces(w) };
        word.clear();
        n
    }

    fn pieces(&self, w: &str) -> u32 {
        let (mut start, mut n) = (0, 0);
        while start < w.len() {
            let set = if start == 0 { &self.starts } else { &self.continues };
            let mut end = w.len().min(start + self.longest);
            while end > start && !set.contains(&w[start..end]) {
                end -= 1;
            }
            if end == start {
                return 1;
            }
            n += 1;
            start = end;
        }
        n
    }
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
        let ascii = AsciiCount::new(&counter).ok_or_else(|| {
            manifest_err(&mpath, "tokenizer.json is not BERT's uncased WordPiece pipeline, which the static tier counts with")
        })?;
        Ok((Self { model, counter, ascii }, m))
    }

    /// The normalised mean of the rows of the first `max_tokens` tokens of `text`.
    pub fn embed(&self, text: &str, max_tokens: usize) -> Vec<f32> {
        let mut v = self.model.encode_with_args(&[text.to_string()], Some(max_tokens), 1);
        v.pop().expect("one text in, one vector out. This is a bug.")
    }

    /// Tokens of `text` (no special tokens): its ASCII chunks counted by [`AsciiCount`], the
    /// others by `tokenizers`, exactly up to [`EXACT_COUNT_BYTES`] of them, past it on that prefix
    /// scaled by their length.
    pub fn count(&self, text: &str) -> Result<u32, EncoderError> {
        let (ascii, rest) = self.ascii.count_ascii(text);
        if rest.is_empty() {
            return Ok(ascii);
        }
        let prefix = super::text::cut_end(&rest, EXACT_COUNT_BYTES);
        let n = self.counter.encode_fast(prefix, false).map_err(|e| EncoderError::Tokenize(e.to_string()))?.len() as f64;
        let n = if prefix.len() == rest.len() || prefix.is_empty() { n } else { n * rest.len() as f64 / prefix.len() as f64 };
        Ok(ascii + n.round() as u32)
    }
}
