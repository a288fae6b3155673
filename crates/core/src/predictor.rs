//! The prediction head: an ONNX graph from embeddings [N, D] to predicted quality [N, M] and
//! predicted output tokens [N, M], for the M models listed, in output order, by its manifest.
//!
//! The head is produced by `pointsman train` (see `learning`); this module only loads and runs
//! it, after checking that the manifest, the graph and the encoder agree.
use std::path::Path;

use ndarray::ArrayView2;
use ort::{environment::Environment, value::TensorRef};

pub mod graph;
pub mod manifest;

pub use manifest::{EncoderRef, HeadManifest, HEAD_FORMAT};

/// Name of the graph's input.
pub const INPUT: &str = "embeddings";
/// Name of the quality output.
pub const QUALITY: &str = "quality";
/// Name of the output-tokens output.
pub const OUTPUT_TOKENS: &str = "output_tokens";
/// Name of the support output (training evidence per model near the prompt; required).
pub const SUPPORT: &str = "support";
/// Name of the family-support output (heads of several model families; optional).
pub const FAMILY_SUPPORT: &str = "family_support";

/// Errors of the head layer.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// A file is missing or unreadable.
    #[error("head file {path}: {message}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The manifest is invalid or does not match the graph or encoder.
    #[error("head manifest: {0}")]
    Manifest(String),
    /// ONNX Runtime failed.
    #[error("head inference: {0}")]
    Inference(#[from] ort::Error),
}

impl HeadError {
    /// Stable snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            HeadError::File { .. } => "head_file",
            HeadError::Manifest(_) => "head_manifest",
            HeadError::Inference(_) => "head_inference",
        }
    }
}

/// A loaded head.
pub struct Head {
    manifest: HeadManifest,
    sessions: crate::runtime::SessionPool,
    /// Per model, its family in `manifest.support.families` (none for a head of one family),
    /// derived once at load for the domain rule on every request.
    family_of: Vec<Option<usize>>,
}

/// Predictions for a batch: row-major [N, M].
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOutput {
    /// Rows.
    pub rows: usize,
    /// Predicted quality, [rows * models].
    pub quality: Vec<f32>,
    /// Predicted output tokens, [rows * models].
    pub output_tokens: Vec<f32>,
    /// Training evidence per model near each row, [rows * models] (every loaded head has it).
    pub support: Option<Vec<f32>>,
    /// How near each model's family's prompts are to each row, [rows * models], for a head of
    /// several families (`support.families` in its manifest).
    pub family_support: Option<Vec<f32>>,
}

/// `P(X <= c)` for `X ~ Binomial(n, p)`.
pub fn binomial_cdf(c: usize, n: usize, p: f64) -> f64 {
    let p = p.clamp(0.0, 1.0);
    if c >= n || p <= 0.0 {
        return 1.0;
    }
    // A model observed on every prompt of its scope: fewer than all n is impossible by chance
    // (and the recurrence below would divide by 1 - p = 0 and turn the sum into NaN).
    if p >= 1.0 {
        return 0.0;
    }
    let (mut term, mut sum) = ((1.0 - p).powi(n as i32), 0.0);
    for i in 0..=c {
        sum += term;
        // C(n, i+1) p^(i+1) (1-p)^(n-i-1) from the i-th term.
        term *= (n - i) as f64 / (i + 1) as f64 * p / (1.0 - p).max(f64::MIN_POSITIVE);
    }
    sum.min(1.0)
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Head {
    /// Loads `dir/manifest.json` and its graph, checks the manifest (format, every key, see
    /// [`HeadManifest::parse`]), the graph's hash, that the manifest describes the graph (hidden
    /// units, support index, shrinkage: [`HeadManifest::check_graph`]), and runs one row.
    pub fn load(env: &Environment, dir: &Path) -> Result<Self, HeadError> {
        Self::load_with_sessions(env, dir, 1)
    }

    /// As [`Head::load`], with `sessions` sessions of the graph, so that many threads can run it
    /// at once (each session holds its own copy of the graph's tensors).
    pub fn load_with_sessions(env: &Environment, dir: &Path, sessions: usize) -> Result<Self, HeadError> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(|e| HeadError::File { path: mpath.clone(), message: e.to_string() })?;
        let manifest = HeadManifest::parse(&text).map_err(|e| HeadError::Manifest(format!("{}: {e}", mpath.display())))?;
        let gpath = dir.join(&manifest.graph);
        let bytes = std::fs::read(&gpath).map_err(|e| HeadError::File { path: gpath.clone(), message: e.to_string() })?;
        let digest = sha256_hex(&bytes);
        if digest != manifest.graph_sha256 {
            return Err(HeadError::Manifest(format!(
                "{} has sha256 {digest}, the manifest says {} (half-written or replaced file?)",
                gpath.display(),
                manifest.graph_sha256
            )));
        }
        let facts = graph::facts(&bytes).map_err(|e| HeadError::Manifest(format!("{}: {e}", gpath.display())))?;
        manifest
            .check_graph(&facts)
            .map_err(|e| HeadError::Manifest(format!("{} does not describe {}: {e}", mpath.display(), gpath.display())))?;
        let sessions = crate::runtime::SessionPool::new(env, &bytes, sessions, 1)?;
        let session = sessions.first();
        if !session.outputs().iter().any(|o| o.name() == SUPPORT) {
            return Err(HeadError::Manifest(format!("{} has no `{SUPPORT}` output, which the domain rule needs", gpath.display())));
        }
        if !manifest.support.families.is_empty() && !session.outputs().iter().any(|o| o.name() == FAMILY_SUPPORT) {
            return Err(HeadError::Manifest(format!(
                "{} has no `{FAMILY_SUPPORT}` output, which `support.families` in the manifest needs",
                gpath.display()
            )));
        }
        let mut family_of = vec![None; manifest.models.len()];
        for (fi, f) in manifest.support.families.iter().enumerate() {
            for &j in &f.models {
                family_of[j] = Some(fi);
            }
        }
        drop(session);
        let head = Self { manifest, sessions, family_of };
        let probe = vec![0.0f32; head.manifest.encoder.dimension];
        let out = head.predict(ndarray::ArrayView2::from_shape((1, probe.len()), &probe).expect("1xD. This is a bug."))?;
        if out.quality.len() != head.manifest.models.len() || out.output_tokens.len() != head.manifest.models.len() {
            return Err(HeadError::Manifest(format!(
                "the graph predicts {} models, the manifest lists {}",
                out.quality.len(),
                head.manifest.models.len()
            )));
        }
        Ok(head)
    }

    /// The manifest.
    pub fn manifest(&self) -> &HeadManifest {
        &self.manifest
    }

    /// For each model, the probability that as few of the `k` training prompts of its family
    /// nearest this one as were answered by it would be, by chance, if it had been tried on
    /// prompts like this as often as on any (a binomial tail at its rate over its family's
    /// prompts); and for a head of several families, the share of the family's own prompts that
    /// are as far from their nearest others as this one is from the family's (its family
    /// nearness against the manifest's quantiles): the smaller of the two. 1 when the head does
    /// not measure support. A small value means the head has little evidence about this model on
    /// prompts like this one, however often it was observed elsewhere. `k`, the rates and the
    /// families are the manifest's `support`, checked against the graph at load.
    pub fn domain_chance(&self, support: Option<&[f32]>, family: Option<&[f32]>) -> Vec<f64> {
        let m = self.manifest.models.len();
        let s = &self.manifest.support;
        let k = s.neighbours;
        // support = count / (k * rate), so the neighbours behind it are support * k * rate.
        let chance = |value: f32, rate: f32| {
            let rate = f64::from(rate);
            binomial_cdf((f64::from(value) * k as f64 * rate).round() as usize, k, rate)
        };
        (0..m)
            .map(|j| {
                let own = support.map_or(1.0, |v| chance(v[j], s.rates[j]));
                let fam = match (family, self.family_of[j]) {
                    (Some(v), Some(fi)) => s.families[fi].chance(v[j]),
                    _ => 1.0,
                };
                own.min(fam)
            })
            .collect()
    }

    /// Model ids in output order.
    pub fn models(&self) -> &[String] {
        &self.manifest.models
    }

    /// Runs the head on embeddings [N, D]. Blocks.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Result<HeadOutput, HeadError> {
        if x.ncols() != self.manifest.encoder.dimension {
            return Err(HeadError::Manifest(format!(
                "embedding dimension {} does not match the head's {}",
                x.ncols(),
                self.manifest.encoder.dimension
            )));
        }
        let x = x.as_standard_layout();
        let mut session = self.sessions.take();
        let outputs = session.run(ort::inputs![INPUT => TensorRef::from_array_view(&x)?])?;
        let q = outputs[QUALITY].try_extract_array::<f32>()?;
        let t = outputs[OUTPUT_TOKENS].try_extract_array::<f32>()?;
        let support = Some(outputs[SUPPORT].try_extract_array::<f32>()?.iter().copied().collect());
        let family_support = match self.manifest.support.families.is_empty() {
            true => None,
            false => Some(outputs[FAMILY_SUPPORT].try_extract_array::<f32>()?.iter().copied().collect()),
        };
        Ok(HeadOutput {
            rows: x.nrows(),
            quality: q.iter().copied().collect(),
            output_tokens: t.iter().copied().collect(),
            support,
            family_support,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn binomial_cdf_matches_known_values() {
        // Rate 1: anything short of every neighbour is impossible by chance, all of them certain.
        assert_eq!(binomial_cdf(31, 32, 1.0), 0.0);
        assert_eq!(binomial_cdf(32, 32, 1.0), 1.0);
        use super::binomial_cdf;
        assert!((binomial_cdf(0, 32, 0.05) - 0.95f64.powi(32)).abs() < 1e-12);
        assert!((binomial_cdf(1, 4, 0.5) - 5.0 / 16.0).abs() < 1e-12);
        assert_eq!(binomial_cdf(4, 4, 0.5), 1.0);
        assert_eq!(binomial_cdf(0, 4, 0.0), 1.0);
    }
}
