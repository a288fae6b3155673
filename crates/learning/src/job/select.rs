//! The selection step of a training run: which predictor each model family gets, chosen by an
//! inner cross-validation of the training prompts (the held-out prompts never take part).
//!
//! Candidates, each scored on the same out-of-fold predictions of every training prompt:
//! - **kNN with shrinkage** over the grid `knn::K_GRID` x `knn::B_GRID` (`learning::knn`);
//! - **factor heads** (`learning::lowrank`) of quality rank 1, 2, 4 and 8, where the logs are
//!   dense enough for one;
//! - **the MLP ensemble** (`learning::train`), with `--method mlp`, or with `auto` when
//!   `--mlp-candidate` asks for it (it trains an ensemble per inner fold: minutes on a few
//!   thousand sparse prompts, where its per-model biases are also the raw means the evidence
//!   guard exists to avoid);
//! - **blends** of the best head and the best kNN: `w * head + (1 - w) * knn`, `w` in
//!   [`BLEND_WEIGHTS`].
//!
//! The score is what `eval` reports: the share of the single-model-to-oracle gap that routing
//! on the predictions closes, on each of the family's log files that has a full matrix of priced
//! catalog models (pooled over files by prompts), with costs from the catalog and the predicted
//! output tokens. Logs with no full matrix (production logs, exploration logs, one model per
//! prompt) score by the routing value of each candidate's choices estimated off-policy
//! (`routing_value`: doubly robust AIQ over single models); without a catalog, by the Brier
//! score of the predicted quality on the observed pairs.
//!
//! Every kNN candidate shrinks each model towards its empirical-Bayes prior and leaves a model
//! with too little evidence at its prior alone (`learning::evidence`), as the graph serves them.
//!
//! The choice must not be made on noise: a few hundred prompts move a score by points from fold
//! to fold, and retraining on another machine moves the int8 encoder's embeddings a little and
//! with them every score by a few tenths of a point. So the winner is the *first* candidate, in
//! the order tried (kNN from the smoothest, then factor heads from the lowest rank, then blends
//! from the most kNN, then the MLP), that the best-scoring candidate does not beat by more than
//! a margin: on a full matrix the tolerance ([`GAP_TOLERANCE`]); on logs without one, where the
//! score is itself an estimate, also the standard error of their paired per-fold difference
//! (the one-standard-error rule).
//!
//! Why not the one-standard-error rule on a full matrix: there the inner score is the reported
//! metric on every training prompt, and the spread of a difference over 5 folds mostly measures
//! how the folds differ. With it, mmlu_pro's fold seed 1, fold 3 chose a kNN about 1 point of gap
//! below a blend it had scored higher, and `full` ended 0.55 points under the tuned kNN over two
//! fold seeds (the learning review's finding 11).
//!
//! Predicted output tokens (which price each candidate) come from the source with the lowest
//! out-of-fold error of log tokens: the factor head, the MLP, or each model's mean. Once the
//! quality winner is chosen, it is priced once more with the kNN's tokens (the neighbours'
//! arithmetic mean tokens, shrunk with the same `k` and `b`): when that routes clearly better by
//! the same rule, the kNN's tokens win. A log-space prediction is the typical answer's length; cost
//! is linear in tokens, so a long tail makes the arithmetic mean the better price even where its
//! log error is larger (measured on the 14-domain suite).
use ndarray::{Array2, Axis};

use super::{families::columns, Family, HeadMethod, JobError, LogFile, TrainJob};
use crate::{
    encoder::Encoder,
    predictor::manifest::{CandidateScore, FamilySelection},
    {
        eval::Outcomes,
        knn::{self, KnnParams},
        Dataset,
    },
};

/// Quality ranks of the factor heads tried.
pub const FACTOR_RANKS: [usize; 4] = [1, 2, 4, 8];
/// Weights of the head in the blends tried (the rest is the kNN's).
pub const BLEND_WEIGHTS: [f32; 3] = [0.25, 0.5, 0.75];
/// Folds of the inner cross-validation.
pub const INNER_FOLDS: usize = 5;
/// How much better (share of the gap) a later candidate must score to be chosen over an earlier,
/// simpler one. Measured: retraining the same logs with fp32 instead of int8 embeddings moves
/// candidates' inner scores by up to about 0.2 points.
pub const GAP_TOLERANCE: f64 = 0.003;
/// The same for the Brier score (logs without a full matrix).
pub const BRIER_TOLERANCE: f64 = 2e-4;

/// A learned head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadKind {
    /// Factor head of this quality rank.
    Factor {
        /// Quality factors.
        rank: usize,
    },
    /// The MLP ensemble.
    Mlp,
}

impl HeadKind {
    fn name(&self, ensemble: usize) -> String {
        match self {
            HeadKind::Factor { rank } => format!("factor rank={rank}"),
            HeadKind::Mlp => format!("mlp x{ensemble}"),
        }
    }
}

/// Where a family's predicted quality comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QualitySource {
    /// The kNN with shrinkage alone.
    Knn(KnnParams),
    /// A head alone.
    Head(HeadKind),
    /// `weight * head + (1 - weight) * knn`.
    Blend {
        /// The head.
        head: HeadKind,
        /// The kNN.
        knn: KnnParams,
        /// The head's weight.
        weight: f32,
    },
}

/// Where a family's predicted output tokens come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenSource {
    /// A head's prediction.
    Head(HeadKind),
    /// Each model's mean log tokens.
    Mean,
    /// The neighbours' mean tokens, shrunk towards each model's mean tokens.
    Knn(KnnParams),
}

impl TokenSource {
    fn name(&self, ensemble: usize) -> String {
        match self {
            TokenSource::Head(h) => h.name(ensemble),
            TokenSource::Mean => "mean".into(),
            TokenSource::Knn(p) => knn_name(*p),
        }
    }
}

fn knn_name(p: KnnParams) -> String {
    format!("knn k={} b={}", p.k, p.b)
}

impl QualitySource {
    /// The name the manifest and the summary use.
    pub fn name(&self, ensemble: usize) -> String {
        match self {
            QualitySource::Knn(p) => knn_name(*p),
            QualitySource::Head(h) => h.name(ensemble),
            QualitySource::Blend { head, knn, weight } => format!("blend {weight} {} + {}", head.name(ensemble), knn_name(*knn)),
        }
    }

    /// The head it needs, if any.
    pub fn head(&self) -> Option<HeadKind> {
        match self {
            QualitySource::Knn(_) => None,
            QualitySource::Head(h) | QualitySource::Blend { head: h, .. } => Some(*h),
        }
    }

    /// The kNN it needs, if any.
    pub fn knn(&self) -> Option<KnnParams> {
        match self {
            QualitySource::Knn(p) | QualitySource::Blend { knn: p, .. } => Some(*p),
            QualitySource::Head(_) => None,
        }
    }
}

/// A family's choice.
#[derive(Debug, Clone)]
pub struct Choice {
    /// Quality.
    pub quality: QualitySource,
    /// Output tokens.
    pub tokens: TokenSource,
    /// Every candidate's figure, for the manifest.
    pub report: FamilySelection,
    /// The winner's out-of-fold (quality, tokens) over the family's training rows and models:
    /// the validation figures of a head refitted on every prompt.
    pub oof: Predictions,
    /// Those rows (indices into the job's prompts).
    pub rows: Vec<usize>,
}

/// One log file's full matrix within some training rows, priced by the catalog: what candidates
/// are scored on.
pub(super) struct Priced<'a> {
    /// Positions of its rows in the `rows` given to [`priced_outcomes`].
    pub positions: Vec<usize>,
    /// (model index, catalog entry) of the columns.
    pub models: Vec<(usize, &'a pointsman_core::catalog::CatalogModel)>,
    /// Input tokens per row.
    pub input_tokens: Vec<u32>,
    /// Actual quality and cost.
    pub outcomes: Outcomes,
}

impl<'a> Priced<'a> {
    /// The rows at `keep` (indices into `positions`).
    fn subset(&self, keep: &[usize]) -> Priced<'a> {
        Priced {
            positions: keep.iter().map(|&i| self.positions[i]).collect(),
            models: self.models.clone(),
            input_tokens: keep.iter().map(|&i| self.input_tokens[i]).collect(),
            outcomes: Outcomes { score: self.outcomes.score.select(Axis(0), keep), cost: self.outcomes.cost.select(Axis(0), keep) },
        }
    }

    /// Gap closed by routing on predicted quality and tokens ([rows, models], columns as `models`).
    pub fn gap(&self, quality: &Array2<f32>, tokens: &Array2<f32>, cost_scale: f64) -> f64 {
        let (n, k) = (self.positions.len(), self.models.len());
        let pc = Array2::from_shape_fn((n, k), |(i, c)| self.models[c].1.cost_usd(self.input_tokens[i], f64::from(tokens[[i, c]])));
        self.outcomes.gap_closed(&quality.mapv(f64::from), &pc, None, cost_scale)
    }
}

/// The full matrix of `file`'s catalog models among `candidates` over `rows`; `None` with fewer
/// than 20 prompts or 2 models.
pub(super) fn priced_outcomes<'a>(
    file: &LogFile,
    logs: &crate::RoutingLogs,
    all: &Dataset,
    rows: &[usize],
    candidates: impl Iterator<Item = usize>,
    catalog: &'a pointsman_core::catalog::Catalog,
    encoder: &Encoder,
) -> Result<Option<Priced<'a>>, JobError> {
    let file_models: Vec<usize> = candidates.filter(|j| file.models.contains(j)).collect();
    let group: Vec<usize> = (0..rows.len()).filter(|&p| file.prompt_ids.contains(&logs.prompts[rows[p]].id)).collect();
    let priced = file_models.iter().filter_map(|&j| catalog.get(&logs.models[j]).map(|m| (j, m)));
    let (models, positions) = crate::eval::full_matrix(&group, priced, |p, (j, _)| all.mask[[rows[p], j]] > 0.0);
    if positions.len() < 20 || models.len() < 2 {
        return Ok(None);
    }
    let input_tokens: Vec<u32> = positions
        .iter()
        .map(|&p| encoder.count_tokens(&logs.prompts[rows[p]].text).map(|c| c + pointsman_core::encoder::text::TOKENS_PER_MESSAGE))
        .collect::<Result<_, _>>()?;
    let (n, k) = (positions.len(), models.len());
    let mut outcomes = Outcomes { score: Array2::zeros((n, k)), cost: Array2::zeros((n, k)) };
    for (i, &p) in positions.iter().enumerate() {
        let r = rows[p];
        for (c, &(j, m)) in models.iter().enumerate() {
            outcomes.score[[i, c]] = f64::from(all.quality[[r, j]]);
            outcomes.cost[[i, c]] = m.cost_usd(input_tokens[i], f64::from(all.log_tokens[[r, j]].exp() - 1.0));
        }
    }
    Ok(Some(Priced { positions, models, input_tokens, outcomes }))
}

/// Scores out-of-fold predictions of one family ([rows, family models]): pooled over every
/// training prompt, and per inner fold (for the standard error of a difference).
struct Scorer<'a> {
    /// Each priced file, with its columns in the family's model order.
    files: Vec<(Priced<'a>, Vec<usize>)>,
    /// The same files restricted to each inner fold's prompts.
    fold_files: Vec<Vec<(Priced<'a>, Vec<usize>)>>,
    /// Observed quality and mask of the family's rows, for the Brier fallback.
    data: &'a Dataset,
    /// Inner fold of each row.
    fold: &'a [usize],
    cost_scale: f64,
    /// The off-policy routing value, on logs with no full matrix and a catalog.
    value: Option<super::routing_value::RoutingValue>,
    /// Rows of each inner fold.
    fold_rows: Vec<Vec<usize>>,
}

/// A candidate's pooled score and its score on each inner fold.
#[derive(Debug, Clone)]
struct Score {
    pooled: f64,
    folds: Vec<f64>,
}

impl Scorer<'_> {
    fn metric(&self) -> &'static str {
        match (self.files.is_empty(), &self.value) {
            (false, _) => "gap_closed",
            (true, Some(_)) => "off_policy_aiq_over_single_models",
            (true, None) => "negative_brier",
        }
    }

    fn tolerance(&self) -> f64 {
        match (self.files.is_empty(), &self.value) {
            (false, _) => GAP_TOLERANCE,
            (true, Some(_)) => super::routing_value::VALUE_TOLERANCE,
            (true, None) => BRIER_TOLERANCE,
        }
    }

    /// How far below `best` a simpler candidate scoring `s` may be and still be chosen. On a
    /// full matrix (priced files) the score is the metric itself on every prompt: the margin is
    /// the tolerance alone. On estimates (the off-policy routing value, the Brier score of a
    /// sparse log) it is also the standard error of their paired per-fold difference, the
    /// one-standard-error rule.
    fn margin(&self, best: &Score, s: &Score) -> f64 {
        margin(!self.files.is_empty(), self.tolerance(), best, s)
    }

    fn score(&self, quality: &Array2<f32>, tokens: &Array2<f32>) -> Score {
        let folds = (0..self.fold_files.len()).map(|k| self.score_on(quality, tokens, &self.fold_files[k], Some(k))).collect();
        Score { pooled: self.score_on(quality, tokens, &self.files, None), folds }
    }

    fn score_on(&self, quality: &Array2<f32>, tokens: &Array2<f32>, files: &[(Priced, Vec<usize>)], fold: Option<usize>) -> f64 {
        if let (true, Some(v)) = (self.files.is_empty(), &self.value) {
            let all: Vec<usize>;
            let rows = match fold {
                Some(k) => &self.fold_rows[k],
                None => {
                    all = (0..self.fold.len()).collect();
                    &all
                }
            };
            return v.score(quality, tokens, rows);
        }
        if self.files.is_empty() {
            let (mut sum, mut n) = (0f64, 0f64);
            for (r, ((q, y), m)) in quality.rows().into_iter().zip(self.data.quality.rows()).zip(self.data.mask.rows()).enumerate() {
                if fold.is_some_and(|k| self.fold[r] != k) {
                    continue;
                }
                for ((&q, &y), &m) in q.iter().zip(y).zip(m) {
                    if m > 0.0 {
                        sum += f64::from(q - y).powi(2);
                        n += 1.0;
                    }
                }
            }
            return -sum / n.max(1.0);
        }
        let (mut sum, mut n) = (0f64, 0f64);
        for (p, cols) in files {
            let pick = |a: &Array2<f32>| a.select(Axis(0), &p.positions).select(Axis(1), cols);
            let w = p.positions.len() as f64;
            sum += w * p.gap(&pick(quality), &pick(tokens), self.cost_scale);
            n += w;
        }
        sum / n.max(1.0)
    }
}

/// [`Scorer::margin`]: `full_matrix` says whether the scores are the metric itself.
fn margin(full_matrix: bool, tolerance: f64, best: &Score, s: &Score) -> f64 {
    if full_matrix {
        tolerance
    } else {
        tolerance.max(paired_standard_error(&best.folds, &s.folds))
    }
}

/// The best of `scores` and the first of them (simplest first) that it does not beat by more than
/// `margin`, as indices; none when there is no score.
fn first_within(scores: &[&Score], margin: impl Fn(&Score, &Score) -> f64) -> Option<(usize, usize)> {
    let (b, best) = scores.iter().enumerate().max_by(|a, b| a.1.pooled.total_cmp(&b.1.pooled))?;
    let winner =
        scores.iter().position(|s| best.pooled - s.pooled <= margin(best, s)).expect("the best is within its own margin. This is a bug.");
    Some((b, winner))
}

/// Standard error of the mean of `a - b` over folds.
fn paired_standard_error(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean = d.iter().sum::<f64>() / n;
    (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
}

/// Predicted quality and output tokens, [rows, models] each.
type Predictions = (Array2<f32>, Array2<f32>);

/// Out-of-fold (quality, tokens) of a head over the family's rows; `None` when the head cannot
/// be fitted on some fold (a factor head on sparse logs).
fn head_oof(kind: HeadKind, fd: &Dataset, fold: &[usize], job: &TrainJob) -> Result<Option<Predictions>, JobError> {
    let (n, m) = (fd.n_rows(), fd.n_models());
    let (mut q, mut t) = (Array2::zeros((n, m)), Array2::zeros((n, m)));
    for k in 0..INNER_FOLDS {
        let (fit, held): (Vec<usize>, Vec<usize>) = (0..n).partition(|&r| fold[r] != k);
        if held.is_empty() {
            continue;
        }
        let Some(head) = super::fit::fit_head(kind, &fd.select(&fit), job)? else {
            return Ok(None);
        };
        let (hq, ht) = head.predict(fd.x.select(Axis(0), &held).view());
        for (i, &r) in held.iter().enumerate() {
            q.row_mut(r).assign(&hq.row(i));
            t.row_mut(r).assign(&ht.row(i));
        }
    }
    Ok(Some((q, t)))
}

/// Mean absolute error of `ln(1 + tokens)` over observed pairs.
fn log_token_error(tokens: &Array2<f32>, d: &Dataset) -> f64 {
    let (mut sum, mut n) = (0f64, 0f64);
    for ((&t, &y), &m) in tokens.iter().zip(&d.log_tokens).zip(&d.mask) {
        if m > 0.0 {
            sum += f64::from((t.max(0.0).ln_1p() - y).abs());
            n += 1.0;
        }
    }
    sum / n.max(1.0)
}

/// Everything [`choose`] needs besides the family.
pub(super) struct Context<'a> {
    /// The job.
    pub job: &'a TrainJob,
    /// The merged logs.
    pub logs: &'a crate::RoutingLogs,
    /// The job's files.
    pub files: &'a [LogFile],
    /// Every prompt.
    pub all: &'a Dataset,
    /// The training rows of `all`.
    pub train_idx: &'a [usize],
    /// Inverse propensities of `all`'s observed pairs ([prompts, models]; 1 where unknown).
    pub ipw: &'a Array2<f32>,
    /// Whether the logs carried propensities.
    pub propensities: bool,
    /// The encoder (token counts for pricing).
    pub encoder: &'a Encoder,
}

/// The training rows of `family`: its files' training prompts.
pub(super) fn family_rows(cx: &Context, family: &Family) -> Vec<usize> {
    let files: Vec<&LogFile> = cx.files.iter().filter(|lf| family.files.contains(&lf.path)).collect();
    cx.train_idx.iter().copied().filter(|&i| files.iter().any(|f| f.prompt_ids.contains(&cx.logs.prompts[i].id))).collect()
}

/// Whether a family's rows are sparse: fewer than half of its (prompt, model) pairs observed
/// (production and exploration logs), so each model's kNN searches its own observations.
pub(super) fn is_sparse(fd: &Dataset) -> bool {
    fd.mask.mean().unwrap_or(0.0) < 0.5
}

/// Chooses `family`'s predictor by inner cross-validation of its training prompts.
pub(super) fn choose(cx: &Context, family: &Family) -> Result<Choice, JobError> {
    let job = cx.job;
    let rows = family_rows(cx, family);
    let fd = columns(cx.all, &rows, &family.models);
    let fold = crate::folds(rows.len(), INNER_FOLDS, job.train.seed.wrapping_add(2));
    let mut priced = Vec::new();
    if let Some(catalog) = &job.catalog {
        for file in cx.files.iter().filter(|lf| family.files.contains(&lf.path)) {
            if let Some(p) = priced_outcomes(file, cx.logs, cx.all, &rows, family.models.iter().copied(), catalog, cx.encoder)? {
                let cols = p
                    .models
                    .iter()
                    .map(|&(j, _)| family.models.iter().position(|&x| x == j).expect("a family model. This is a bug."))
                    .collect();
                priced.push((p, cols));
            }
        }
    }
    let fold_files = (0..INNER_FOLDS)
        .map(|k| {
            priced
                .iter()
                .map(|(p, cols): &(Priced, Vec<usize>)| {
                    let keep: Vec<usize> = (0..p.positions.len()).filter(|&i| fold[p.positions[i]] == k).collect();
                    (p.subset(&keep), cols.clone())
                })
                .filter(|(p, _)| !p.positions.is_empty())
                .collect()
        })
        .collect();
    let fw = cx.ipw.select(Axis(0), &rows).select(Axis(1), &family.models);
    let x = knn::normalised(fd.x.view());
    // On sparse logs (under half of the family's pairs observed) each model averages its own
    // nearest observations, as the graph's per-model memory blocks serve it (`fit`).
    let sparse = job.own_neighbours && is_sparse(&fd);
    let cv = knn::CrossValidation { x: x.view(), values: fd.quality.view(), mask: fd.mask.view(), fold: &fold, n_folds: INNER_FOLDS };
    let guarded = |ks: &[usize], bs: &[f32]| {
        if sparse {
            cv.grid_per_model(fw.view(), ks, bs)
        } else {
            cv.grid_guarded(fw.view(), ks, bs)
        }
    };
    // Each model's out-of-fold mean tokens.
    let mut mean_t = Array2::zeros(fd.quality.dim());
    for k in 0..INNER_FOLDS {
        let (fit, held): (Vec<usize>, Vec<usize>) = (0..rows.len()).partition(|&r| fold[r] != k);
        let means = knn::column_means(fd.log_tokens.select(Axis(0), &fit).view(), fd.mask.select(Axis(0), &fit).view());
        for &r in &held {
            mean_t.row_mut(r).assign(&means.mapv(crate::decode_tokens));
        }
    }
    let value = match (&job.catalog, priced.is_empty()) {
        (Some(catalog), true) => {
            let prices: Vec<_> = family.models.iter().map(|&j| catalog.get(&cx.logs.models[j]).cloned()).collect();
            if prices.iter().filter(|p| p.is_some()).count() >= 2 {
                let input_tokens: Vec<u32> = rows
                    .iter()
                    .map(|&r| {
                        cx.encoder.count_tokens(&cx.logs.prompts[r].text).map(|c| c + pointsman_core::encoder::text::TOKENS_PER_MESSAGE)
                    })
                    .collect::<Result<_, _>>()?;
                let reference = guarded(&[100], &[50.0]).remove(0).1;
                super::routing_value::RoutingValue::new(
                    fd.quality.view(),
                    fd.tokens().view(),
                    fd.mask.view(),
                    cx.propensities.then_some(fw.view()),
                    reference.view(),
                    mean_t.view(),
                    &prices,
                    input_tokens,
                    job.cost_scale_usd,
                )
            } else {
                None
            }
        }
        _ => None,
    };
    let fold_rows = (0..INNER_FOLDS).map(|k| (0..rows.len()).filter(|&r| fold[r] == k).collect()).collect();
    let scorer = Scorer { files: priced, fold_files, data: &fd, fold: &fold, cost_scale: job.cost_scale_usd, value, fold_rows };

    // Heads: factor heads where the logs allow one; the MLP where asked, or on dense logs too
    // narrow for a factor head (two models rated on every prompt: its tokens are then the only
    // per-prompt length prediction). Not on sparse logs, where its per-model biases are the raw
    // means the evidence guard exists to avoid.
    let mut heads: Vec<(HeadKind, Array2<f32>, Array2<f32>)> = Vec::new();
    let want_factor = matches!(job.method, HeadMethod::Auto | HeadMethod::LowRank | HeadMethod::Knn);
    if want_factor {
        let ranks: &[usize] = if job.method == HeadMethod::Knn { &[2] } else { &FACTOR_RANKS };
        for &rank in ranks {
            let kind = HeadKind::Factor { rank };
            match head_oof(kind, &fd, &fold, job)? {
                Some((q, t)) => heads.push((kind, q, t)),
                None => break,
            }
        }
    }
    let factor_ok = !heads.is_empty();
    if job.method == HeadMethod::LowRank && !factor_ok {
        return Err(JobError::Invalid {
            field: "method",
            limit: "`lowrank` only for logs with at least 3 models observed on 95% of a family's prompts (use `auto` or `mlp`)",
            value: format!("lowrank for {}", family.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
        });
    }
    if job.method == HeadMethod::Mlp
        || (job.method == HeadMethod::Auto && (job.mlp_candidate || (!factor_ok && !is_sparse(&fd))))
        || (job.method == HeadMethod::Knn && !factor_ok)
    {
        if let Some((q, t)) = head_oof(HeadKind::Mlp, &fd, &fold, job)? {
            heads.push((HeadKind::Mlp, q, t));
        }
    }

    // Tokens: the source with the lowest out-of-fold error.
    let mut token_scores = vec![CandidateScore { name: "mean".into(), score: log_token_error(&mean_t, &fd), standard_error: 0.0 }];
    let mut tokens = (TokenSource::Mean, &mean_t, token_scores[0].score);
    for (kind, _, t) in &heads {
        let e = log_token_error(t, &fd);
        token_scores.push(CandidateScore { name: kind.name(job.ensemble), score: e, standard_error: 0.0 });
        if e < tokens.2 {
            tokens = (TokenSource::Head(*kind), t, e);
        }
    }
    let tok = tokens.1.clone();

    // Quality candidates, simplest first.
    let mut tried: Vec<(QualitySource, Score)> = Vec::new();
    let mut knn_preds: Vec<(KnnParams, Array2<f32>)> = Vec::new();
    if job.method != HeadMethod::Mlp && job.method != HeadMethod::LowRank {
        let mut ks = knn::K_GRID.to_vec();
        ks.sort_unstable_by(|a, b| b.cmp(a));
        let mut bs = knn::B_GRID.to_vec();
        bs.sort_by(|a, b| b.total_cmp(a));
        for (p, q) in guarded(&ks, &bs) {
            tried.push((QualitySource::Knn(p), scorer.score(&q, &tok)));
            knn_preds.push((p, q));
        }
    }
    let knn_oof = |p: KnnParams| -> Array2<f32> {
        match knn_preds.iter().find(|(k, _)| *k == p) {
            Some((_, q)) => q.clone(),
            None => guarded(&[p.k], &[p.b]).remove(0).1,
        }
    };
    let best_knn =
        tried.iter().filter(|(c, _)| matches!(c, QualitySource::Knn(_))).max_by(|a, b| a.1.pooled.total_cmp(&b.1.pooled)).map(|(c, _)| *c);
    let mut head_scores = Vec::new();
    if job.method != HeadMethod::Knn {
        for (kind, q, _) in heads.iter().filter(|(k, _, _)| *k != HeadKind::Mlp) {
            let s = scorer.score(q, &tok);
            head_scores.push((*kind, s.pooled));
            tried.push((QualitySource::Head(*kind), s));
        }
    }
    let mlp_score =
        heads.iter().find(|(k, _, _)| *k == HeadKind::Mlp).filter(|_| job.method != HeadMethod::Knn).map(|(_, q, _)| scorer.score(q, &tok));
    if let Some(s) = &mlp_score {
        head_scores.push((HeadKind::Mlp, s.pooled));
    }
    // Blends of the best head and the best kNN.
    let best_head = head_scores.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(k, _)| *k);
    // A scored head's out-of-fold (quality, tokens).
    let head_preds = |h: HeadKind| {
        let (_, q, t) = heads.iter().find(|(k, _, _)| *k == h).expect("a scored head. This is a bug.");
        (q, t)
    };
    if let (Some(QualitySource::Knn(p)), Some(h)) = (best_knn, best_head) {
        let kq = knn_oof(p);
        let hq = head_preds(h).0;
        for &w in &BLEND_WEIGHTS {
            let q = hq * w + &(&kq * (1.0 - w));
            tried.push((QualitySource::Blend { head: h, knn: p, weight: w }, scorer.score(&q, &tok)));
        }
    }
    if let Some(s) = mlp_score {
        tried.push((QualitySource::Head(HeadKind::Mlp), s));
    }
    // The first candidate, simplest first, that the best does not beat by more than the margin
    // (`Scorer::margin`).
    let scores: Vec<&Score> = tried.iter().map(|(_, s)| s).collect();
    let (best, winner) = first_within(&scores, |best, s| scorer.margin(best, s)).ok_or_else(|| JobError::Invalid {
        field: "method",
        limit: "a method with a candidate for these logs",
        value: format!("{:?}", job.method),
    })?;
    let best = tried[best].1.clone();
    let quality = tried[winner].0;
    // Tokens must come from a head the graph has: the quality head's, or the mean.
    let mut tokens = match (tokens.0, quality.head()) {
        (TokenSource::Head(h), Some(q)) if h != q => {
            let own = token_scores.iter().find(|c| c.name == q.name(job.ensemble)).map_or(f64::INFINITY, |c| c.score);
            if own <= token_scores[0].score {
                TokenSource::Head(q)
            } else {
                TokenSource::Mean
            }
        }
        // A kNN family still needs a head for the graph's token output when one predicts
        // tokens at all: the best head's, if it beats the mean (else the mean).
        (t, _) => t,
    };
    // The kNN's tokens (the winner's kNN, else the best one) against those, on the winner's
    // out-of-fold quality: chosen only when they route clearly better.
    let mut token_routing = Vec::new();
    let winner_q = match quality {
        QualitySource::Knn(p) => knn_oof(p),
        QualitySource::Head(h) => head_preds(h).0.clone(),
        QualitySource::Blend { head, knn, weight } => head_preds(head).0 * weight + &(knn_oof(knn) * (1.0 - weight)),
    };
    let mut knn_tokens = None;
    if let (Some(p), false) = (quality.knn().or(best_knn.and_then(|c| c.knn())), scorer.files.is_empty() && scorer.value.is_none()) {
        let q = &winner_q;
        let own_t = match tokens {
            TokenSource::Head(h) => head_preds(h).1,
            _ => &mean_t,
        };
        let observed_tokens = fd.tokens();
        let knn_t = knn::CrossValidation { values: observed_tokens.view(), ..cv }.grid(&[p.k], &[p.b]).remove(0).1;
        let (own, near) = (scorer.score(q, own_t), scorer.score(q, &knn_t));
        let se = paired_standard_error(&near.folds, &own.folds);
        token_scores.push(CandidateScore { name: knn_name(p), score: log_token_error(&knn_t, &fd), standard_error: 0.0 });
        token_routing = vec![
            CandidateScore { name: tokens.name(job.ensemble), score: own.pooled, standard_error: se },
            CandidateScore { name: knn_name(p), score: near.pooled, standard_error: se },
        ];
        if near.pooled - own.pooled > scorer.margin(&near, &own) {
            tokens = TokenSource::Knn(p);
        }
        knn_tokens = Some(knn_t);
    }
    let winner_t = match tokens {
        TokenSource::Head(h) => head_preds(h).1.clone(),
        TokenSource::Mean => mean_t.clone(),
        TokenSource::Knn(_) => knn_tokens.clone().unwrap_or_else(|| mean_t.clone()),
    };
    let report = FamilySelection {
        files: family.files.iter().map(|p| p.display().to_string()).collect(),
        prompts: rows.len(),
        metric: scorer.metric().into(),
        candidates: tried
            .iter()
            .map(|(c, s)| CandidateScore {
                name: c.name(job.ensemble),
                score: s.pooled,
                standard_error: paired_standard_error(&best.folds, &s.folds),
            })
            .collect(),
        winner: quality.name(job.ensemble),
        tokens: tokens.name(job.ensemble),
        token_candidates: token_scores,
        token_routing,
    };
    Ok(Choice { quality, tokens, report, oof: (winner_q, winner_t), rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(pooled: f64, folds: &[f64]) -> Score {
        Score { pooled, folds: folds.to_vec() }
    }

    #[test]
    fn on_a_full_matrix_a_clearly_better_candidate_wins_however_the_folds_spread() {
        // The simpler candidate scores 8%, the other 9%; their per-fold difference swings from
        // -4 to +6 points, a standard error of about 1.8 points.
        let simple = score(0.08, &[0.10, 0.05, 0.12, 0.04, 0.09]);
        let complex = score(0.09, &[0.06, 0.11, 0.08, 0.10, 0.10]);
        let se = paired_standard_error(&complex.folds, &simple.folds);
        assert!(se > 0.01, "{se}");
        let pick = |full_matrix: bool| first_within(&[&simple, &complex], |b, s| margin(full_matrix, GAP_TOLERANCE, b, s));
        assert_eq!(pick(true), Some((1, 1)), "full matrix: 1 point is beyond the 0.3-point tolerance");
        assert_eq!(pick(false), Some((1, 0)), "an estimate: within one standard error, the simpler one");
        // Within the tolerance, the simpler one either way.
        let close = score(0.082, &[0.08; 5]);
        assert_eq!(first_within(&[&close, &complex], |b, s| margin(true, 0.01, b, s)), Some((1, 0)));
        assert_eq!(first_within(&[], |b, s| margin(true, 0.01, b, s)), None);
    }
}
