//! The head manifest (`models/router/manifest.json`): the one contract between the trainer
//! (`learning::job` and `learning::extend` write it) and the server (`predictor::Head` reads it).
//!
//! Every part is typed and every struct denies unknown fields, so a key the writer renamed or the
//! reader does not know fails the load with serde's message naming it, instead of silently
//! reading as absent. [`HeadManifest::parse`] checks the format first (so an older manifest gets
//! "retrain" rather than a missing-key message), then the shape, then that the parts agree with
//! each other ([`HeadManifest::validate`]); [`HeadManifest::check_graph`] then checks that the
//! manifest says what the graph really is (hidden units per family, the support index's
//! neighbours and rates, the shrinkage weights), because the domain rule reads the manifest's
//! support settings and must read the graph's.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Manifest format written and read by this version.
pub const HEAD_FORMAT: &str = "pointsman-head/3";

/// Which encoder produced the embeddings the head was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderRef {
    /// Encoder id, e.g. "all-MiniLM-L6-v2/int8".
    pub id: String,
    /// Embedding dimension.
    pub dimension: usize,
}

/// `models/router/manifest.json`, format [`HEAD_FORMAT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadManifest {
    /// Always [`HEAD_FORMAT`].
    pub format: String,
    /// Short id of this head (name plus content hash); part of the router version.
    pub head_id: String,
    /// The graph file, relative to the manifest.
    pub graph: String,
    /// Hex SHA-256 of the graph file.
    pub graph_sha256: String,
    /// The encoder it was trained on.
    pub encoder: EncoderRef,
    /// Model ids in output order.
    pub models: Vec<String>,
    /// What the graph computes: its hidden units, per model family.
    pub architecture: Architecture,
    /// How far each model's predictions are pulled towards a prior, as the graph applies it.
    pub shrinkage: Shrinkage,
    /// The support index the domain rule needs (the graph's `support` output).
    pub support: SupportIndex,
    /// What it was trained on.
    pub trained_on: TrainedOn,
    /// Held-out prompts and metrics.
    pub validation: Validation,
    /// Training settings and the choices made on the training prompts.
    pub training: Training,
    /// When it was written, RFC 3339.
    pub created_at: String,
}

/// The graph: `embeddings -> hidden units (ReLU) -> quality (sigmoid), log tokens`, the hidden
/// units split into contiguous blocks, one per family (a family's units feed only its models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Hidden units of the exported graph, all families together.
    pub hidden_units: usize,
    /// The model families, in unit order.
    pub families: Vec<FamilySpec>,
    /// Models added later by `pointsman extend` (an output column on every hidden unit).
    pub added: Vec<AddedModel>,
}

/// One model family: log files sharing models, trained as one head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilySpec {
    /// The log files (as given to `train`).
    pub files: Vec<String>,
    /// Its models (ids, in output order).
    pub models: Vec<String>,
    /// First hidden unit of the family.
    pub first_unit: usize,
    /// Hidden units of the family.
    pub units: usize,
    /// What kind of head it is (`kind`: `factor_head` or `mlp_ensemble`, and its settings).
    pub head: FamilyKind,
    /// The prior its quality predictions are weighed against.
    pub quality_prior: QualityPrior,
    /// The predictor the selection chose for its quality (e.g. `knn k=200 b=100`,
    /// `blend 0.5 factor rank=2 + knn k=100 b=25`); `shrinkage` holds its weights.
    pub predictor: String,
    /// Where its predicted output tokens come from (`factor rank=..`, `mlp x..` or `mean`).
    pub tokens: String,
}

/// The kind of head a family got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FamilyKind {
    /// Ridge-predicted factors of the score matrix and a link per model (`learning::lowrank`),
    /// exported as `2 * (rank_quality + rank_tokens)` units (`z = relu(z) - relu(-z)`).
    FactorHead {
        /// Quality factors.
        rank_quality: usize,
        /// Log-token factors.
        rank_tokens: usize,
        /// Ridge penalty from embeddings to quality factors.
        ridge_quality: f64,
        /// Ridge penalty from embeddings to token factors.
        ridge_tokens: f64,
        /// Folds of the out-of-fold factors the links are fitted on.
        folds: usize,
        /// L2 penalty of each model's link slopes.
        link_l2: f64,
        /// Share of the prompts a model must be observed on to shape the factors.
        min_coverage: f64,
    },
    /// `members` MLPs of `hidden` ReLU units each, averaged (`hidden * members` units).
    MlpEnsemble {
        /// Hidden units per member.
        hidden: usize,
        /// Members (seeds `seed`, `seed + 1`, ...).
        members: usize,
        /// Epochs the first member ran.
        epochs_run: usize,
        /// Epoch whose weights the first member kept.
        best_epoch: usize,
    },
    /// Models observed on no training prompt (only on held-out ones): no units, a constant column.
    Unobserved,
    /// No head: the selection served the family's quality and tokens from its kNN (and means)
    /// alone; no units.
    None,
}

impl FamilyKind {
    /// Hidden units this kind exports.
    pub fn units(&self) -> usize {
        match self {
            FamilyKind::FactorHead { rank_quality, rank_tokens, .. } => 2 * (rank_quality + rank_tokens),
            FamilyKind::MlpEnsemble { hidden, members, .. } => hidden * members,
            FamilyKind::Unobserved | FamilyKind::None => 0,
        }
    }
}

/// The prior a family's quality predictions are pulled towards (weights in [`Shrinkage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityPrior {
    /// Each model's mean over the training prompts (a family whose predictor is a head alone).
    GlobalMean,
    /// Each model's mean on the prompt's nearest training prompts ([`LocalPriorSpec`]): a
    /// family whose predictor is the kNN or a blend with it.
    LocalMean,
}

/// A model added by `pointsman extend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedModel {
    /// Model id.
    pub model: String,
    /// The log files its labels came from.
    pub files: Vec<String>,
    /// Labelled prompts fitted on.
    pub labels: usize,
    /// Ridge penalty of its column.
    pub l2: f64,
    /// Held-out prompts of its own labels.
    pub validation_prompts: usize,
    /// Held-out Brier score of its column.
    pub brier: f64,
    /// Held-out Brier score of its mean.
    pub baseline_brier: f64,
    /// Held-out mean absolute error of log tokens.
    pub log_tokens_mae: f64,
    /// Same for its mean.
    pub baseline_log_tokens_mae: f64,
}

/// `a * predicted + (1 - a) * prior`, per model, as the graph applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shrinkage {
    /// `a` for quality, per model in output order (1 = the head's own prediction).
    pub quality_weight: Vec<f32>,
    /// `a` for log output tokens, per model in output order.
    pub token_weight: Vec<f32>,
    /// The local quality prior, when some model has one.
    pub local_prior: Option<LocalPriorSpec>,
}

/// The local quality prior: a model's mean on the query's nearest training prompts (a kNN
/// router with shrinkage; `learning::knn`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPriorSpec {
    /// Neighbours averaged over, per model in output order (0: none, the model's global mean).
    pub neighbours: Vec<usize>,
    /// Pseudo-count of the model's global mean, per model in output order.
    pub kappa: Vec<f32>,
    /// Support-index keys (from the first) that are its memory.
    pub memory_prompts: usize,
    /// Models (output columns) whose predicted output tokens are the same neighbours' mean
    /// tokens, shrunk with the same pseudo-count (the rest come from the head or the mean).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_models: Vec<usize>,
    /// The memory's blocks, one per model family: which keys each model's neighbours come from.
    pub blocks: Vec<MemoryBlockSpec>,
}

/// Keys `first_key..first_key + keys` of the memory, searched for `models`' neighbours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBlockSpec {
    /// First key.
    pub first_key: usize,
    /// Keys.
    pub keys: usize,
    /// Output columns (indices into `models`) whose neighbours come from this block.
    pub models: Vec<usize>,
}

/// The support index: training prompts and which models were observed on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportIndex {
    /// Neighbours the support output averages over (the domain rule's `k`).
    pub neighbours: usize,
    /// Prompts in the index (training prompts only, plus those `extend` added).
    pub prompts: usize,
    /// Each model's observation rate over its family's indexed prompts, in output order.
    pub rates: Vec<f32>,
    /// For a head whose memory holds several model families (one block of keys each), in the
    /// graph's block order: which models each holds, and how near its own prompts are to each
    /// other, which the graph's `family_support` output is measured against. Empty for a head
    /// of one family.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<FamilyDomain>,
}

/// One model family's block of the support index, for the domain rule's family test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyDomain {
    /// Output columns (indices into `models`) of the family.
    pub models: Vec<usize>,
    /// The 0%, 1%, .., 100% quantiles over the family's indexed prompts of each one's mean
    /// cosine similarity to its `neighbours` nearest others in the family (101 ascending values).
    pub similarity_quantiles: Vec<f32>,
}

impl FamilyDomain {
    /// The share of the family's own prompts at most `nearness` from their neighbours (the
    /// quantiles' empirical distribution, linear between them): how unusual a prompt at that
    /// nearness would be among the family's own.
    pub fn chance(&self, nearness: f32) -> f64 {
        let q = &self.similarity_quantiles;
        let Some(i) = q.iter().rposition(|&v| v <= nearness) else {
            return 0.0;
        };
        if i + 1 >= q.len() {
            return 1.0;
        }
        let (lo, hi) = (q[i], q[i + 1]);
        let frac = if hi > lo { f64::from((nearness - lo) / (hi - lo)) } else { 0.0 };
        (i as f64 + frac) / (q.len() - 1) as f64
    }
}

/// A log file trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// File name.
    pub path: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// What the head was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedOn {
    /// The log files.
    pub files: Vec<FileRef>,
    /// Prompts in the logs (training and held out).
    pub prompts: usize,
    /// Prompts used for training (the rest are held out).
    pub training_prompts: usize,
    /// Observations in the logs.
    pub observations: usize,
    /// Observed share of (prompt, model) pairs.
    pub density: f64,
    /// Malformed lines skipped.
    pub skipped_lines: usize,
    /// Observations per model on the training prompts.
    pub training_observations_per_model: BTreeMap<String, usize>,
}

/// Held-out metrics over observed pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOutMetrics {
    /// Observed (prompt, model) pairs averaged over.
    pub observed_pairs: usize,
    /// Training objective.
    pub loss: f32,
    /// Mean absolute quality error.
    pub quality_mae: f32,
    /// Brier score.
    pub quality_brier: f32,
    /// Mean absolute error of `ln(1 + tokens)`.
    pub log_tokens_mae: f32,
    /// Median absolute output-token error.
    pub tokens_median_abs_error: f32,
}

/// The held-out split and the head's metrics on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// How the split was made.
    pub split: String,
    /// Share of prompts held out.
    pub fraction: f64,
    /// Prompts held out.
    pub prompts: usize,
    /// Their ids (what `pointsman eval` evaluates on).
    pub prompt_ids: Vec<String>,
    /// The head as exported.
    pub head: HeldOutMetrics,
    /// The head before shrinkage.
    pub head_before_shrinkage: HeldOutMetrics,
    /// Each model's training mean.
    pub baseline_per_model_mean: HeldOutMetrics,
}

/// Training settings and the choices made on the training prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// `auto`, `knn`, `lowrank` or `mlp`.
    pub method: String,
    /// Seed of the splits and of the fits.
    pub seed: u64,
    /// Training prompts fitted on.
    pub fit_prompts: usize,
    /// Training prompts MLP early stopping is measured on (of the MLP fitted for export).
    pub early_stop_prompts: usize,
    /// Optimiser settings of MLP families.
    pub mlp: MlpSettings,
    /// Seconds spent training (selection included).
    pub seconds: f64,
    /// How each family's predictor was chosen: every candidate's cross-validated figure and the winner.
    pub selection: Selection,
    /// Training prompts the head stores as its memory (keys of the support index and the kNN
    /// prior), and the cap that bounded them.
    pub memory: MemorySpec,
}

/// Optimiser settings of MLP families.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSettings {
    /// Hidden units per member.
    pub hidden: usize,
    /// Members per family.
    pub ensemble: usize,
    /// Maximum epochs.
    pub epochs_max: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam step size.
    pub learning_rate: f32,
    /// L2 penalty on weights.
    pub weight_decay: f32,
    /// Weight of the log-token loss.
    pub token_loss_weight: f32,
    /// Early-stopping patience in epochs.
    pub patience: usize,
}

/// How the predictors were chosen (`pointsman train --method auto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// The rule, in words.
    pub rule: String,
    /// Folds of the inner cross-validation of the training prompts.
    pub folds: usize,
    /// Per model family.
    pub families: Vec<FamilySelection>,
}

/// One family's candidates and the winner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilySelection {
    /// The family's log files.
    pub files: Vec<String>,
    /// Its training prompts, each scored once out of fold.
    pub prompts: usize,
    /// What a candidate's score is: `gap_closed` (share of the single-to-oracle gap, on the full
    /// matrices of the family's priced models, pooled over its files by prompts) or, for logs
    /// with no full matrix, `negative_brier` (of predicted quality on observed pairs).
    pub metric: String,
    /// Every candidate with its cross-validated score, in the order tried.
    pub candidates: Vec<CandidateScore>,
    /// The candidate chosen for quality.
    pub winner: String,
    /// Where predicted output tokens come from (`factor`, `mlp`, `mean` or the quality kNN's
    /// neighbours, `knn k=.. b=..`): the head or mean with the lowest out-of-fold error of log
    /// tokens, unless the neighbours' mean tokens route the winner clearly better
    /// (`token_routing`).
    pub tokens: String,
    /// Out-of-fold mean absolute error of log tokens per token source.
    pub token_candidates: Vec<CandidateScore>,
    /// The winner's cross-validated score priced with each of the two token sources compared
    /// (the one chosen by log-token error, then the kNN's); empty when there was no kNN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_routing: Vec<CandidateScore>,
}

/// A candidate's cross-validated figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateScore {
    /// e.g. `knn k=200 b=100`, `factor rank=2`, `mlp x5`, `blend 0.5 factor rank=2 + knn k=200 b=100`.
    pub name: String,
    /// Its score (see `FamilySelection::metric`; for tokens, the error).
    pub score: f64,
    /// Standard error of its paired per-fold difference to the best candidate (0 for the best
    /// itself and for token sources).
    pub standard_error: f64,
}

/// The head's memory of training prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// Training prompts stored.
    pub prompts: usize,
    /// Training prompts there were.
    pub of: usize,
    /// The cap (`pointsman train --memory-cap`).
    pub cap: usize,
    /// How the stored prompts were picked.
    pub rule: String,
}

/// Just the format, read before the rest so an older manifest gets a clear message.
#[derive(Deserialize)]
struct FormatOnly {
    format: Option<String>,
}

/// What [`HeadManifest::check_graph`] compares: the parts of a head graph the manifest describes.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphFacts {
    /// Hidden units.
    pub hidden_units: usize,
    /// Output columns.
    pub models: usize,
    /// The support index, if the graph has one.
    pub support: Option<SupportIndex>,
    /// The shrinkage, if the graph applies one.
    pub shrinkage: Option<Shrinkage>,
}

/// A manifest that does not parse, or whose parts disagree with each other or with its graph;
/// the message names the key and the values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

impl HeadManifest {
    /// Parses a manifest: the format first, then every key (unknown or missing ones are refused
    /// by name), then [`HeadManifest::validate`].
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        Self::parse_text(text).map_err(ManifestError)
    }

    fn parse_text(text: &str) -> Result<Self, String> {
        let format = serde_json::from_str::<FormatOnly>(text).map_err(|e| e.to_string())?.format;
        match format.as_deref() {
            Some(HEAD_FORMAT) => {}
            Some(other) => {
                return Err(format!(
                    "`format` must be `{HEAD_FORMAT}`. Given: `{other}` (a head from another version: retrain it with `pointsman train`)"
                ))
            }
            None => return Err(format!("missing field `format` (must be `{HEAD_FORMAT}`)")),
        }
        let manifest: HeadManifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        manifest.validate_text()?;
        Ok(manifest)
    }

    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serialises. This is a bug.")
    }

    /// Checks that the parts agree: per-model lists as long as `models`, every model in exactly
    /// one family or added once, the families' units contiguous and summing to `hidden_units`,
    /// each family's units what its kind exports, and a local prior where a family uses one.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.validate_text().map_err(ManifestError)
    }

    fn validate_text(&self) -> Result<(), String> {
        let m = self.models.len();
        if m == 0 {
            return Err("`models` is empty".into());
        }
        for (key, len) in [
            ("support.rates", self.support.rates.len()),
            ("shrinkage.quality_weight", self.shrinkage.quality_weight.len()),
            ("shrinkage.token_weight", self.shrinkage.token_weight.len()),
        ] {
            if len != m {
                return Err(format!("`{key}` has {len} entries, `models` has {m}"));
            }
        }
        for (fi, f) in self.support.families.iter().enumerate() {
            if let Some(&j) = f.models.iter().find(|&&j| j >= m) {
                return Err(format!("`support.families[{fi}].models` names column {j}; `models` has {m}"));
            }
            let q = &f.similarity_quantiles;
            if q.len() != 101 || q.windows(2).any(|w| w[0] > w[1]) || q.iter().any(|v| !v.is_finite()) {
                return Err(format!(
                    "`support.families[{fi}].similarity_quantiles` must be 101 finite ascending values. Given: {} values",
                    q.len()
                ));
            }
        }
        if self.support.neighbours == 0 || self.support.neighbours > self.support.prompts {
            return Err(format!(
                "`support.neighbours` must be in 1..={} (`support.prompts`). Given: {}",
                self.support.prompts, self.support.neighbours
            ));
        }
        let mut owner: BTreeMap<&str, usize> = self.models.iter().map(|id| (id.as_str(), 0)).collect();
        if owner.len() != m {
            return Err("`models` lists a model twice".into());
        }
        let listed = self.architecture.families.iter().flat_map(|f| &f.models).chain(self.architecture.added.iter().map(|a| &a.model));
        for id in listed {
            match owner.get_mut(id.as_str()) {
                Some(n) => *n += 1,
                None => return Err(format!("`architecture` names `{id}`, which is not in `models`")),
            }
        }
        if let Some((id, n)) = owner.iter().find(|(_, &n)| n != 1) {
            return Err(format!("model `{id}` is in {n} of `architecture.families` / `architecture.added` (must be exactly one)"));
        }
        let mut next = 0;
        for (i, f) in self.architecture.families.iter().enumerate() {
            if f.first_unit != next || f.units != f.head.units() {
                return Err(format!(
                    "`architecture.families[{i}]` has units {}..{} ({:?} exports {}); the next unit is {next}",
                    f.first_unit,
                    f.first_unit + f.units,
                    f.head,
                    f.head.units()
                ));
            }
            if f.quality_prior == QualityPrior::LocalMean && self.shrinkage.local_prior.is_none() {
                return Err(format!("`architecture.families[{i}].quality_prior` is `local_mean` but `shrinkage.local_prior` is null"));
            }
            next += f.units;
        }
        if next != self.architecture.hidden_units {
            return Err(format!("`architecture.hidden_units` is {}, the families have {next}", self.architecture.hidden_units));
        }
        if let Some(l) = &self.shrinkage.local_prior {
            if l.neighbours.len() != m || l.kappa.len() != m {
                return Err(format!(
                    "`shrinkage.local_prior` has {} neighbour counts and {} pseudo-counts, `models` has {m}",
                    l.neighbours.len(),
                    l.kappa.len()
                ));
            }
            if let Some(&k) = l.neighbours.iter().find(|&&k| k > l.memory_prompts) {
                return Err(format!("`shrinkage.local_prior` averages {k} of {} memory prompts (must be at most that)", l.memory_prompts));
            }
            if l.memory_prompts > self.support.prompts {
                return Err(format!(
                    "`shrinkage.local_prior` has {} memory prompts; the support index has {}",
                    l.memory_prompts, self.support.prompts
                ));
            }
            if let Some(&j) = l.token_models.iter().find(|&&j| l.neighbours.get(j).is_none_or(|&k| k == 0)) {
                return Err(format!(
                    "`shrinkage.local_prior.token_models` has model {j}, which has no neighbours (`neighbours[{j}]` must be > 0)"
                ));
            }
        }
        Ok(())
    }

    /// Checks that the manifest describes `graph`: its hidden units and output columns, its
    /// support index (neighbours, prompts, per-model rates) and its shrinkage weights.
    pub fn check_graph(&self, graph: &GraphFacts) -> Result<(), ManifestError> {
        self.check_graph_text(graph).map_err(ManifestError)
    }

    fn check_graph_text(&self, graph: &GraphFacts) -> Result<(), String> {
        if graph.hidden_units != self.architecture.hidden_units {
            return Err(format!("`architecture.hidden_units` is {}, the graph has {}", self.architecture.hidden_units, graph.hidden_units));
        }
        if graph.models != self.models.len() {
            return Err(format!("the graph predicts {} models, `models` lists {}", graph.models, self.models.len()));
        }
        let Some(SupportIndex { neighbours: k, prompts, rates, families }) = &graph.support else {
            return Err("the graph has no support index, which the domain rule needs (`support`)".into());
        };
        if (*k, *prompts) != (self.support.neighbours, self.support.prompts) {
            return Err(format!(
                "`support` says {} neighbours over {} prompts, the graph has {k} over {prompts}",
                self.support.neighbours, self.support.prompts
            ));
        }
        let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1.0));
        if !close(rates, &self.support.rates) {
            return Err("`support.rates` differ from the graph's support index".into());
        }
        // The graph holds the families' blocks, not their quantiles (those are the manifest's).
        let members = |f: &[FamilyDomain]| f.iter().map(|f| f.models.clone()).collect::<Vec<_>>();
        if members(families) != members(&self.support.families) {
            return Err(format!(
                "`support.families` lists {} families, the graph's support index {} (or their models differ)",
                self.support.families.len(),
                families.len()
            ));
        }
        let s = &self.shrinkage;
        match &graph.shrinkage {
            Some(g) => {
                if !close(&g.quality_weight, &s.quality_weight) {
                    return Err("`shrinkage.quality_weight` differs from the graph's".into());
                }
                if !close(&g.token_weight, &s.token_weight) {
                    return Err("`shrinkage.token_weight` differs from the graph's".into());
                }
                if g.local_prior != s.local_prior {
                    return Err(format!("`shrinkage.local_prior` is {:?}, the graph's {:?}", s.local_prior, g.local_prior));
                }
            }
            None if s.quality_weight.iter().chain(&s.token_weight).all(|&w| w == 1.0) && s.local_prior.is_none() => {}
            None => return Err("`shrinkage` has weights below 1 but the graph applies none".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn family_chance_is_the_share_of_the_familys_own_prompts_as_far() {
        let d = super::FamilyDomain { models: vec![0], similarity_quantiles: (0..=100).map(|i| 0.2 + 0.005 * i as f32).collect() };
        assert_eq!(d.chance(0.1), 0.0, "farther than every prompt of the family");
        assert_eq!(d.chance(0.9), 1.0);
        assert!((d.chance(0.2) - 0.0).abs() < 1e-9 && (d.chance(0.45) - 0.5).abs() < 1e-4 && (d.chance(0.2075) - 0.015).abs() < 1e-4);
    }

    use super::*;

    fn manifest() -> HeadManifest {
        let metrics = HeldOutMetrics {
            observed_pairs: 1,
            loss: 0.5,
            quality_mae: 0.3,
            quality_brier: 0.1,
            log_tokens_mae: 0.4,
            tokens_median_abs_error: 9.0,
        };
        HeadManifest {
            format: HEAD_FORMAT.into(),
            head_id: "t-00000000".into(),
            graph: "head.onnx".into(),
            graph_sha256: String::new(),
            encoder: EncoderRef { id: "e".into(), dimension: 4 },
            models: vec!["a".into(), "b".into(), "c".into()],
            architecture: Architecture {
                hidden_units: 12,
                families: vec![FamilySpec {
                    files: vec!["f.jsonl".into()],
                    models: vec!["a".into(), "b".into()],
                    first_unit: 0,
                    units: 12,
                    head: FamilyKind::FactorHead {
                        rank_quality: 2,
                        rank_tokens: 4,
                        ridge_quality: 3.0,
                        ridge_tokens: 3.0,
                        folds: 5,
                        link_l2: 0.01,
                        min_coverage: 0.95,
                    },
                    quality_prior: QualityPrior::LocalMean,
                    predictor: "blend 0.25 factor rank=2 + knn k=2 b=1".into(),
                    tokens: "factor rank=2".into(),
                }],
                added: vec![AddedModel {
                    model: "c".into(),
                    files: vec![],
                    labels: 10,
                    l2: 3.0,
                    validation_prompts: 2,
                    brier: 0.1,
                    baseline_brier: 0.2,
                    log_tokens_mae: 0.3,
                    baseline_log_tokens_mae: 0.4,
                }],
            },
            shrinkage: Shrinkage {
                quality_weight: vec![0.25, 0.25, 0.5],
                token_weight: vec![1.0; 3],
                local_prior: Some(LocalPriorSpec {
                    neighbours: vec![2, 2, 0],
                    kappa: vec![1.0, 5.0, 1.0],
                    memory_prompts: 4,
                    token_models: vec![],
                    blocks: vec![MemoryBlockSpec { first_key: 0, keys: 4, models: vec![0, 1] }],
                }),
            },
            support: SupportIndex { neighbours: 2, prompts: 5, rates: vec![0.8, 0.8, 0.2], families: vec![] },
            trained_on: TrainedOn {
                files: vec![],
                prompts: 6,
                training_prompts: 4,
                observations: 12,
                density: 0.66,
                skipped_lines: 0,
                training_observations_per_model: BTreeMap::new(),
            },
            validation: Validation {
                split: "by prompt".into(),
                fraction: 0.33,
                prompts: 2,
                prompt_ids: vec!["p".into(), "q".into()],
                head: metrics,
                head_before_shrinkage: metrics,
                baseline_per_model_mean: metrics,
            },
            training: Training {
                method: "auto".into(),
                seed: 1,
                fit_prompts: 3,
                early_stop_prompts: 1,
                mlp: MlpSettings {
                    hidden: 128,
                    ensemble: 5,
                    epochs_max: 200,
                    batch_size: 64,
                    learning_rate: 1e-3,
                    weight_decay: 1e-4,
                    token_loss_weight: 0.5,
                    patience: 15,
                },
                seconds: 1.0,
                selection: Selection {
                    rule: "best inner cross-validated score".into(),
                    folds: 5,
                    families: vec![FamilySelection {
                        files: vec!["f.jsonl".into()],
                        prompts: 4,
                        metric: "gap_closed".into(),
                        candidates: vec![CandidateScore { name: "knn k=2 b=1".into(), score: 0.1, standard_error: 0.0 }],
                        winner: "knn k=2 b=1".into(),
                        tokens: "factor".into(),
                        token_candidates: vec![CandidateScore { name: "factor".into(), score: 0.4, standard_error: 0.0 }],
                        token_routing: vec![],
                    }],
                },
                memory: MemorySpec { prompts: 4, of: 4, cap: 8192, rule: "all".into() },
            },
            created_at: "now".into(),
        }
    }

    fn facts() -> GraphFacts {
        GraphFacts {
            hidden_units: 12,
            models: 3,
            support: Some(SupportIndex { neighbours: 2, prompts: 5, rates: vec![0.8, 0.8, 0.2], families: vec![] }),
            shrinkage: Some(manifest().shrinkage),
        }
    }

    #[test]
    fn a_written_manifest_reads_back_and_matches_its_graph() {
        let m = manifest();
        let back = HeadManifest::parse(&m.to_json()).unwrap();
        assert_eq!(back, m);
        back.check_graph(&facts()).unwrap();
    }

    /// Edits the manifest's JSON and returns the parse error.
    fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v = serde_json::to_value(manifest()).unwrap();
        edit(&mut v);
        HeadManifest::parse(&v.to_string()).unwrap_err().to_string()
    }

    #[test]
    fn renamed_missing_or_inconsistent_keys_are_refused_by_name() {
        let e = refused(|v| {
            let s = v.as_object_mut().unwrap().remove("support").unwrap();
            v["domain_support"] = s;
        });
        assert!(e.contains("unknown field `domain_support`") && e.contains("`support`"), "{e}");
        let e = refused(|v| {
            v.as_object_mut().unwrap().remove("support");
        });
        assert!(e.contains("missing field `support`"), "{e}");
        let e = refused(|v| {
            let k = v["support"].as_object_mut().unwrap().remove("neighbours").unwrap();
            v["support"]["k"] = k;
        });
        assert!(e.contains("unknown field `k`") && e.contains("`neighbours`"), "{e}");
        let e = refused(|v| v["architecture"]["families"][0]["head"]["kind"] = "factor".into());
        assert!(e.contains("unknown variant `factor`"), "{e}");
        let e = refused(|v| v["format"] = "pointsman-head/1".into());
        assert!(e.contains("`format` must be `pointsman-head/3`. Given: `pointsman-head/1`"), "{e}");
        let e = refused(|v| v["support"]["rates"].as_array_mut().unwrap().pop().map(drop).unwrap());
        assert!(e.contains("`support.rates` has 2 entries, `models` has 3"), "{e}");
        let e = refused(|v| v["architecture"]["hidden_units"] = 24.into());
        assert!(e.contains("`architecture.hidden_units` is 24, the families have 12"), "{e}");
        let e = refused(|v| v["architecture"]["families"][0]["models"].as_array_mut().unwrap().push("c".into()));
        assert!(e.contains("model `c` is in 2"), "{e}");
    }

    #[test]
    fn a_manifest_that_misdescribes_its_graph_is_refused() {
        let m = manifest();
        let support = |neighbours, rates: &[f32]| Some(SupportIndex { neighbours, prompts: 5, rates: rates.to_vec(), families: vec![] });
        let e = m.check_graph(&GraphFacts { support: support(16, &[0.8, 0.8, 0.2]), ..facts() }).unwrap_err().0;
        assert!(e.contains("`support` says 2 neighbours over 5 prompts, the graph has 16 over 5"), "{e}");
        let e = m.check_graph(&GraphFacts { support: None, ..facts() }).unwrap_err().0;
        assert!(e.contains("no support index"), "{e}");
        let e = m.check_graph(&GraphFacts { hidden_units: 128, ..facts() }).unwrap_err().0;
        assert!(e.contains("`architecture.hidden_units` is 12, the graph has 128"), "{e}");
        let e = m.check_graph(&GraphFacts { support: support(2, &[0.8, 0.7, 0.2]), ..facts() }).unwrap_err().0;
        assert!(e.contains("`support.rates`"), "{e}");
        let e = m
            .check_graph(&GraphFacts { shrinkage: Some(Shrinkage { quality_weight: vec![1.0; 3], ..m.shrinkage.clone() }), ..facts() })
            .unwrap_err()
            .0;
        assert!(e.contains("`shrinkage.quality_weight`"), "{e}");
    }
}
