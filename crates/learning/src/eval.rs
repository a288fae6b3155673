//! `pointsman eval`: the router's quality-cost frontier on full-matrix logs the head never saw,
//! next to every single model, the per-prompt oracle, and two nearest-neighbour routers on the
//! same embeddings: a kNN with shrinkage whose `(k, b)` is chosen by cross-validation on the
//! head's training prompts (the honest baseline), and plain kNN-25 (see `baseline`; `frontier`
//! for the figures).
//!
//! Every policy can always fall back to the cheapest single model (send everything there), so
//! each policy's achievable set includes that model's point: below its own cheapest sweep point a
//! router is never counted as reaching quality 0. The trainer's [`Outcomes::gap_closed`] uses the
//! same convention.
//!
//! Each log file is evaluated on its own (scores from different benchmarks are not on one scale).
//! Evaluation prompts are the head's held-out prompts (`validation.prompt_ids` in its manifest)
//! found in the file (or every prompt, `--all-prompts`); the file's other prompts, and with
//! `--knn-memory` other logs' prompts, are the kNN routers' memory. Models are the catalog models
//! the head covers that were observed on at least 95% of those prompts, and prompts missing any
//! of them are dropped, so every policy is scored on the same full matrix; the report says what
//! that rule dropped (`coverage`).
//! Costs are real: the prompt's input tokens and the chosen model's actual output tokens at the
//! catalog's list prices.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use ndarray::{Array2, Axis};
use serde::Serialize;

use super::{
    embed::{embed_prompts, embed_prompts_cached},
    frontier::{aiq, envelope, Point},
    read_logs, LearningError, RoutingLogs,
};
pub mod baseline;
pub mod log_value;
mod plot;
mod report;
mod select;
#[cfg(test)]
mod tests;

use baseline::{KnnOutcomes, Memory, TunedChoice};
pub use plot::svg;
pub use report::{report, DatasetReport, FixedKnnReport, Shortfall, TunedKnnReport};
pub use select::{eval_prompts, full_matrix, trained_on, Coverage, ModelShare, MIN_COVERAGE};

use crate::{
    catalog::Catalog,
    encoder::{text::TOKENS_PER_MESSAGE, Encoder, EncoderError},
    policy::utility,
    predictor::{Head, HeadError},
};

/// Fewest prompts of a log file an evaluation scores (fewer make the figures noise).
pub const MIN_EVAL_PROMPTS: usize = 20;

/// Cost weights swept for every router: 0, then `w / (1 - w)` log-spaced over six decades
/// around the cost scale, then 1, so the sweep covers every price of quality.
pub fn weight_grid() -> Vec<f64> {
    let mut w = vec![0.0];
    w.extend((0..=48).map(|i| {
        let r = 10f64.powf(-3.0 + 6.0 * f64::from(i) / 48.0);
        r / (1.0 + r)
    }));
    w.push(1.0);
    w
}

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading logs failed.
    #[error(transparent)]
    Learning(#[from] LearningError),
    /// Embedding failed.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// The head failed.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// Too few of the file's prompts are held out by the head to evaluate it on them.
    #[error(
        "{file}: the head holds out {held_out} of its {prompts} prompts (the manifest's validation.prompt_ids); eval needs >= {min}. {hint}",
        min = MIN_EVAL_PROMPTS
    )]
    NotHeldOut {
        /// The log file.
        file: String,
        /// Its prompts the head held out from training.
        held_out: usize,
        /// Its prompts.
        prompts: usize,
        /// What to do instead.
        hint: String,
    },
    /// `--all-prompts` on a file the head was trained on, without `--allow-training-prompts`.
    #[error(
        "{file}: refusing --all-prompts: the head was trained on this file (its SHA-256 matches `{trained_as}` in the manifest's trained_on.files), so its prompts were the head's training data and scoring them measures memory, not routing. Drop --all-prompts to evaluate on the {held_out} of its prompts the head held out, or pass --allow-training-prompts to score every prompt anyway"
    )]
    TrainingData {
        /// The log file.
        file: String,
        /// Its name in the manifest.
        trained_as: String,
        /// Its prompts the head held out from training.
        held_out: usize,
    },
    /// The log file could not be read for its hash.
    #[error("{file}: cannot read it: {source}")]
    Read {
        /// The log file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not enough data to evaluate.
    #[error("{file}: {message}")]
    Data {
        /// The log file.
        file: String,
        /// What is missing.
        message: String,
    },
}

/// One policy's sweep: a point per cost weight.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    /// Cost weights.
    pub weights: Vec<f64>,
    /// Mean cost per request (USD) at each weight.
    pub cost: Vec<f64>,
    /// Mean quality at each weight.
    pub quality: Vec<f64>,
    /// Share of requests sent to the most expensive model (by mean cost) at each weight.
    pub top_share: Vec<f64>,
    /// AIQ of the envelope of these points and the cheapest single model's (always reachable by
    /// sending everything there), with random mixing.
    pub aiq: f64,
}

/// One single model's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SingleModel {
    /// Model id.
    pub model: String,
    /// Mean actual quality.
    pub quality: f64,
    /// Mean actual cost per request, USD.
    pub cost: f64,
    /// Expected calibration error of the head's predicted quality for this model (10 bins).
    pub calibration_error: f64,
    /// Mean predicted quality.
    pub predicted_quality: f64,
}

/// Actual outcomes on a full matrix: [prompts, models].
pub struct Outcomes {
    /// Actual quality.
    pub score: Array2<f64>,
    /// Actual cost, USD.
    pub cost: Array2<f64>,
}

impl Outcomes {
    /// (mean cost, mean quality) of each single model, and the AIQ cost range.
    pub fn singles(&self) -> (Vec<Point>, f64, f64) {
        let pts: Vec<Point> = (0..self.score.ncols())
            .map(|j| Point { cost: self.cost.column(j).mean().unwrap_or(0.0), quality: self.score.column(j).mean().unwrap_or(0.0) })
            .collect();
        let lo = pts.iter().map(|p| p.cost).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.cost).fold(0.0, f64::max);
        (pts, lo, hi)
    }

    /// Share of the single-model-to-oracle AIQ gap that routing on these predictions closes.
    /// Every policy's frontier includes the cheapest single model's point (see the module docs).
    pub fn gap_closed(&self, pred_q: &Array2<f64>, pred_c: &Array2<f64>, allowed: Option<&Array2<bool>>, cost_scale: f64) -> f64 {
        let (singles, lo, hi) = self.singles();
        let floor = cheapest(&singles);
        let single = aiq(&envelope(&singles), lo, hi);
        let oracle = sweep(&self.score, &self.cost, None, self, floor, hi, cost_scale).aiq;
        let router = sweep(pred_q, pred_c, allowed, self, floor, hi, cost_scale).aiq;
        (router - single) / (oracle - single).max(1e-12)
    }
}

/// The cheapest single model's point (the better one of equally cheap models): every policy can
/// fall back to it.
fn cheapest(singles: &[Point]) -> Point {
    singles
        .iter()
        .copied()
        .min_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)))
        .expect("at least one model. This is a bug.")
}

/// A policy's envelope: its points and the fallback `floor`.
fn frontier(points: &[Point], floor: Point) -> Vec<Point> {
    envelope(&[points, &[floor]].concat())
}

/// Routes every prompt at every weight of [`weight_grid`] on the predictions; AIQ over
/// `[floor.cost, hi]` of the resulting points with `floor`.
fn sweep(
    pred_q: &Array2<f64>,
    pred_c: &Array2<f64>,
    allowed: Option<&Array2<bool>>,
    m: &Outcomes,
    floor: Point,
    hi: f64,
    cost_scale: f64,
) -> Sweep {
    let weights = weight_grid();
    let (mut cost, mut quality, mut top_share) = (Vec::new(), Vec::new(), Vec::new());
    let n = m.score.nrows();
    let means = m.cost.mean_axis(Axis(0)).expect("at least one prompt. This is a bug.");
    let top = (0..means.len()).max_by(|&a, &b| means[a].total_cmp(&means[b])).unwrap_or(0);
    for &w in &weights {
        let (mut c_sum, mut q_sum, mut top_n) = (0.0, 0.0, 0usize);
        for p in 0..n {
            let mut best: Option<(f64, usize)> = None;
            for j in 0..m.score.ncols() {
                if allowed.is_some_and(|a| !a[[p, j]]) {
                    continue;
                }
                let u = utility(pred_q[[p, j]], pred_c[[p, j]], w, cost_scale);
                if best.is_none_or(|(bu, _)| u > bu) {
                    best = Some((u, j));
                }
            }
            let j = best.map_or(0, |(_, j)| j);
            c_sum += m.cost[[p, j]];
            q_sum += m.score[[p, j]];
            top_n += usize::from(j == top);
        }
        cost.push(c_sum / n as f64);
        quality.push(q_sum / n as f64);
        top_share.push(top_n as f64 / n as f64);
    }
    let pts: Vec<Point> = cost.iter().zip(&quality).map(|(&c, &q)| Point { cost: c, quality: q }).collect();
    Sweep { aiq: aiq(&frontier(&pts, floor), floor.cost, hi), weights, cost, quality, top_share }
}

fn points(s: &Sweep) -> Vec<Point> {
    s.cost.iter().zip(&s.quality).map(|(&cost, &quality)| Point { cost, quality }).collect()
}

/// Routing settings an evaluation applies, as the server would.
#[derive(Debug, Clone, Copy)]
pub struct EvalSettings {
    /// `routing.out_of_domain_p`.
    pub out_of_domain_p: f64,
    /// `routing.cost_scale_usd`.
    pub cost_scale: f64,
    /// Neighbours of the kNN-k baseline.
    pub knn_k: usize,
    /// Compute the kNN baselines (`tune` needs only the router).
    pub baselines: bool,
    /// No progress lines on standard error.
    pub quiet: bool,
}

/// One log file's evaluation matrices, [prompts, models]: what happened, and what each router
/// predicted. Folds of a cross-validation are collected one by one and [`pool`]ed.
pub struct FileOutcomes {
    /// The log file, with its folder.
    pub file: String,
    /// Catalog ids of the columns.
    pub models: Vec<String>,
    /// Actual quality and cost.
    pub actual: Outcomes,
    /// The head's predicted quality and cost.
    pub head: Outcomes,
    /// Models the head's domain rule allows per prompt.
    pub allowed: Array2<bool>,
    /// The tuned kNN's predictions, or why there are none.
    pub tuned_knn: Result<KnnOutcomes, String>,
    /// The kNN-k router's predictions, or why there are none.
    pub knn: Result<KnnOutcomes, String>,
    /// `k` of the kNN-k router.
    pub knn_k: usize,
    /// What the full-matrix rule dropped.
    pub coverage: Coverage,
    /// At each weight of [`weight_grid`], how many evaluated prompts live routing (the argmax
    /// over every catalog model the head predicts, under its domain rule, as Route takes it)
    /// sends to a model outside `models` (not scored here), of `prompts_routed`.
    pub outside: Vec<usize>,
    /// Prompts behind `outside`.
    pub prompts_routed: usize,
    /// The models outside `models` that live routing chose at some weight.
    pub outside_models: Vec<String>,
}

/// The matrices [`report`] needs for one log file on the prompts in `heldout` (the file's other
/// prompts are the kNN routers' memory). With `embedding_cache`, embeddings come from (and go to)
/// the training cache.
pub fn collect_file(
    file: &PathBuf,
    encoder: &Encoder,
    head: &Head,
    catalog: &Catalog,
    heldout: &[String],
    settings: EvalSettings,
    embedding_cache: Option<&std::path::Path>,
) -> Result<FileOutcomes, EvalError> {
    let logs = read_logs(std::slice::from_ref(file), false)?;
    collect_logs(file, &logs, None, encoder, head, catalog, heldout, settings, embedding_cache)
}

/// [`collect_file`] on the file's logs, already read. `memory_logs` (the head's training logs, for
/// a file it never saw) join the kNN memory, less any prompt of this file (by id or text).
#[allow(clippy::too_many_arguments)]
pub fn collect_logs(
    file: &std::path::Path,
    logs: &RoutingLogs,
    memory_logs: Option<&RoutingLogs>,
    encoder: &Encoder,
    head: &Head,
    catalog: &Catalog,
    heldout: &[String],
    settings: EvalSettings,
    embedding_cache: Option<&std::path::Path>,
) -> Result<FileOutcomes, EvalError> {
    let EvalSettings { out_of_domain_p, knn_k, quiet, cost_scale, baselines } = settings;
    let name = file.display().to_string();
    let data_err = |message: String| EvalError::Data { file: name.clone(), message };
    let held: HashSet<&str> = heldout.iter().map(String::as_str).collect();
    let (eval_p, mem_p): (Vec<usize>, Vec<usize>) = (0..logs.prompts.len()).partition(|&i| held.contains(logs.prompts[i].id.as_str()));
    if eval_p.len() < MIN_EVAL_PROMPTS {
        return Err(data_err(format!("only {} of its prompts are held out by the head; need >= {MIN_EVAL_PROMPTS}", eval_p.len())));
    }
    // Observations by (prompt, model).
    let mut obs: HashMap<(usize, usize), (f64, u32)> = HashMap::new();
    for o in &logs.observations {
        obs.insert((o.prompt, o.model), (f64::from(o.score), o.output_tokens));
    }
    let head_idx: HashMap<&str, usize> = head.models().iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let cat = catalog.models();
    let mut coverage = Coverage { min_coverage: MIN_COVERAGE, models_in_log: logs.models.len(), ..Coverage::default() };
    // (log model, head output, catalog index) of every catalog model the head covers.
    let mut candidates = Vec::new();
    for (lm, id) in logs.models.iter().enumerate() {
        match (cat.iter().position(|m| &m.id == id), head_idx.get(id.as_str())) {
            (None, _) => coverage.dropped_no_price.push(id.clone()),
            (Some(_), None) => coverage.dropped_not_in_head.push(id.clone()),
            (Some(c), Some(&h)) => candidates.push((lm, h, c)),
        }
    }
    let answered = |p: usize, (lm, _, _): (usize, usize, usize)| obs.contains_key(&(p, lm));
    let (models, scored_p) = full_matrix(&eval_p, candidates.iter().copied(), answered);
    for &(lm, _, _) in candidates.iter().filter(|c| !models.contains(c)) {
        let share = eval_p.iter().filter(|&&p| obs.contains_key(&(p, lm))).count() as f64 / eval_p.len() as f64;
        coverage.dropped_low_coverage.push(ModelShare { model: logs.models[lm].clone(), answered: share });
    }
    (coverage.models_scored, coverage.prompts_considered, coverage.prompts_dropped) =
        (models.len(), eval_p.len(), eval_p.len() - scored_p.len());
    let eval_p = scored_p;
    if models.len() < 2 {
        return Err(data_err(format!("{} catalog models cover the held-out prompts; need >= 2", models.len())));
    }
    let (n, k) = (eval_p.len(), models.len());
    let ids: Vec<String> = models.iter().map(|&(_, _, c)| cat[c].id.clone()).collect();

    // The kNN memory: the file's prompts not evaluated, then the memory logs' prompts that are not this file's.
    let memory = if baselines { memory_rows(logs, &mem_p, memory_logs, &ids) } else { MemoryRows::default() };

    // The evaluated prompts, then the kNN memory, in one pass (one progress count).
    let all_texts: Vec<&str> = eval_p.iter().map(|&p| logs.prompts[p].text.as_str()).chain(memory.texts.iter().copied()).collect();
    let all_x = match embedding_cache {
        Some(dir) => embed_prompts_cached(encoder, &all_texts, Some(dir), quiet).map(|(x, _)| x),
        None => embed_prompts(encoder, &all_texts, quiet),
    }?;
    let (x, mem_x) = all_x.view().split_at(Axis(0), n);
    let count = |t: &str| encoder.count_tokens(t).map(|c| c + TOKENS_PER_MESSAGE);
    let input_tokens: Vec<u32> = all_texts[..n].iter().map(|t| count(t)).collect::<Result<_, _>>()?;

    let mut m = Outcomes { score: Array2::zeros((n, k)), cost: Array2::zeros((n, k)) };
    for (r, &p) in eval_p.iter().enumerate() {
        for (j, &(lm, _, c)) in models.iter().enumerate() {
            let (s, t) = obs[&(p, lm)];
            m.score[[r, j]] = s;
            m.cost[[r, j]] = cat[c].cost_usd(input_tokens[r], f64::from(t));
        }
    }

    // The head's predictions and domain rule.
    let out = head.predict(x)?;
    let hm = head.models().len();
    let mut rq = Array2::zeros((n, k));
    let mut rc = Array2::zeros((n, k));
    let mut allowed = Array2::from_elem((n, k), true);
    for r in 0..n {
        let (support, family) = (out.support.as_deref(), out.family_support.as_deref());
        let chance = head.domain_chance(support.map(|s| &s[r * hm..(r + 1) * hm]), family.map(|s| &s[r * hm..(r + 1) * hm]));
        for (j, &(_, h, c)) in models.iter().enumerate() {
            rq[[r, j]] = f64::from(out.quality[r * hm + h]).clamp(0.0, 1.0);
            rc[[r, j]] = cat[c].cost_usd(input_tokens[r], f64::from(out.output_tokens[r * hm + h]).max(1.0));
            allowed[[r, j]] = chance[h] >= out_of_domain_p;
        }
        if !allowed.row(r).iter().any(|&a| a) {
            allowed.row_mut(r).fill(true);
        }
    }
    // Live routing's candidates: every catalog model the head predicts.
    let live: Vec<(usize, usize)> =
        head.models().iter().enumerate().filter_map(|(h, id)| cat.iter().position(|m| &m.id == id).map(|c| (h, c))).collect();
    let scored: HashSet<usize> = models.iter().map(|&(_, h, _)| h).collect();
    let weights = weight_grid();
    let mut outside = vec![0usize; weights.len()];
    let mut outside_models: Vec<String> = Vec::new();
    for r in 0..n {
        let chance = head.domain_chance(
            out.support.as_deref().map(|s| &s[r * hm..(r + 1) * hm]),
            out.family_support.as_deref().map(|s| &s[r * hm..(r + 1) * hm]),
        );
        let ok: Vec<&(usize, usize)> = live.iter().filter(|(h, _)| chance[*h] >= out_of_domain_p).collect();
        let pool: Vec<&(usize, usize)> = if ok.is_empty() { live.iter().collect() } else { ok };
        for (i, &w) in weights.iter().enumerate() {
            let mut best = (f64::NEG_INFINITY, 0usize);
            for &&(h, c) in &pool {
                let q = f64::from(out.quality[r * hm + h]).clamp(0.0, 1.0);
                let u = utility(q, cat[c].cost_usd(input_tokens[r], f64::from(out.output_tokens[r * hm + h]).max(1.0)), w, cost_scale);
                if u > best.0 {
                    best = (u, h);
                }
            }
            if !scored.contains(&best.1) && best.0.is_finite() {
                outside[i] += 1;
                let id = &head.models()[best.1];
                if !outside_models.contains(id) {
                    outside_models.push(id.clone());
                }
            }
        }
    }

    // The kNN baselines on the memory.
    let price = |r: usize, j: usize, t: f64| cat[models[j].2].cost_usd(input_tokens[r], t);
    let (tuned_knn, knn) = if !baselines {
        let why = "not computed".to_string();
        (Err(why.clone()), Err(why))
    } else if memory.texts.is_empty() {
        let why = match memory_logs {
            None if mem_p.is_empty() => "no memory: every prompt of the file is evaluated (--all-prompts), so none is left for a kNN to remember; pass --knn-memory with the head's training logs".to_string(),
            _ => "no memory: no prompt of the memory has an outcome of an evaluated model".to_string(),
        };
        (Err(why.clone()), Err(why))
    } else {
        let mem = Memory { x: super::knn::normalised(mem_x), score: memory.score, tokens: memory.tokens, mask: memory.mask };
        let full = mem.full_rows();
        let mem_tokens: Vec<u32> = full.iter().map(|&r| count(memory.texts[r])).collect::<Result<_, _>>()?;
        let mem_price = |r: usize, j: usize, t: f64| cat[models[j].2].cost_usd(mem_tokens[r], t);
        (baseline::tuned(x, &mem, &full, &mem_price, &price, cost_scale), baseline::fixed(x, &mem, &ids, knn_k, &price))
    };
    Ok(FileOutcomes {
        // The file with its folder: the shared data's files are all called train.jsonl.gz.
        file: file.iter().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<PathBuf>().display().to_string(),
        models: ids,
        actual: m,
        head: Outcomes { score: rq, cost: rc },
        allowed,
        tuned_knn,
        knn,
        knn_k,
        coverage,
        outside,
        prompts_routed: n,
        outside_models,
    })
}

/// The kNN memory's prompts (their texts) and outcomes over the evaluated models.
#[derive(Default)]
struct MemoryRows<'a> {
    texts: Vec<&'a str>,
    score: Array2<f32>,
    tokens: Array2<f32>,
    mask: Array2<f32>,
}

/// The memory over `models`: `logs`' prompts `mem_p`, then `extra`'s prompts that are not in
/// `logs` (by id or text); prompts with no outcome of these models are left out.
fn memory_rows<'a>(logs: &'a RoutingLogs, mem_p: &[usize], extra: Option<&'a RoutingLogs>, models: &[String]) -> MemoryRows<'a> {
    let ids: HashSet<&str> = logs.prompts.iter().map(|p| p.id.as_str()).collect();
    let texts: HashSet<&str> = logs.prompts.iter().map(|p| p.text.as_str()).collect();
    let mut sources = vec![(logs, mem_p.to_vec())];
    if let Some(e) = extra {
        let keep = (0..e.prompts.len()).filter(|&p| !ids.contains(e.prompts[p].id.as_str()) && !texts.contains(e.prompts[p].text.as_str()));
        sources.push((e, keep.collect()));
    }
    // (text, [(model column, score, tokens)]) per memory prompt.
    type Row<'t> = (&'t str, Vec<(usize, f32, f32)>);
    let mut rows: Vec<Row> = Vec::new();
    for (src, prompts) in sources {
        let col: Vec<Option<usize>> = src.models.iter().map(|m| models.iter().position(|x| x == m)).collect();
        let mut row_of = vec![None; src.prompts.len()];
        for &p in &prompts {
            row_of[p] = Some(rows.len());
            rows.push((src.prompts[p].text.as_str(), Vec::new()));
        }
        for o in &src.observations {
            if let (Some(r), Some(j)) = (row_of[o.prompt], col[o.model]) {
                rows[r].1.push((j, o.score, o.output_tokens as f32));
            }
        }
    }
    rows.retain(|(_, o)| !o.is_empty());
    let (n, m) = (rows.len(), models.len());
    let mut out = MemoryRows {
        texts: Vec::with_capacity(n),
        score: Array2::zeros((n, m)),
        tokens: Array2::zeros((n, m)),
        mask: Array2::zeros((n, m)),
    };
    for (r, (text, o)) in rows.into_iter().enumerate() {
        out.texts.push(text);
        for (j, s, t) in o {
            (out.score[[r, j]], out.tokens[[r, j]], out.mask[[r, j]]) = (s, t, 1.0);
        }
    }
    out
}

/// Stacks the folds of one file (each evaluated by the head that did not see it) into one set of
/// matrices over the models every fold has.
pub fn pool(parts: Vec<FileOutcomes>) -> Option<FileOutcomes> {
    let first = parts.first()?;
    let models: Vec<String> = first.models.iter().filter(|m| parts.iter().all(|p| p.models.contains(m))).cloned().collect();
    let cols = |p: &FileOutcomes| -> Vec<usize> {
        models.iter().map(|m| p.models.iter().position(|x| x == m).expect("model is in every fold. This is a bug.")).collect()
    };
    let stack = |get: &dyn Fn(&FileOutcomes) -> &Array2<f64>| -> Array2<f64> {
        let views: Vec<Array2<f64>> = parts.iter().map(|p| get(p).select(Axis(1), &cols(p))).collect();
        ndarray::concatenate(Axis(0), &views.iter().map(|a| a.view()).collect::<Vec<_>>()).expect("same columns. This is a bug.")
    };
    let allowed_parts: Vec<Array2<bool>> = parts.iter().map(|p| p.allowed.select(Axis(1), &cols(p))).collect();
    let allowed =
        ndarray::concatenate(Axis(0), &allowed_parts.iter().map(|a| a.view()).collect::<Vec<_>>()).expect("same columns. This is a bug.");
    let coverage = Coverage::merge(&parts.iter().map(|p| &p.coverage).collect::<Vec<_>>(), models.len());
    let (file, knn_k) = (first.file.clone(), first.knn_k);
    let actual = Outcomes { score: stack(&|p| &p.actual.score), cost: stack(&|p| &p.actual.cost) };
    let head = Outcomes { score: stack(&|p| &p.head.score), cost: stack(&|p| &p.head.cost) };
    let col_lists: Vec<Vec<usize>> = parts.iter().map(&cols).collect();
    let outside = (0..first.outside.len()).map(|i| parts.iter().map(|p| p.outside[i]).sum()).collect();
    let prompts_routed = parts.iter().map(|p| p.prompts_routed).sum();
    let mut outside_models: Vec<String> = parts.iter().flat_map(|p| p.outside_models.iter().cloned()).collect();
    outside_models.sort();
    outside_models.dedup();
    let (mut tuned, mut knn) = (Vec::new(), Vec::new());
    for (p, c) in parts.into_iter().zip(col_lists) {
        tuned.push((p.tuned_knn, c.clone()));
        knn.push((p.knn, c));
    }
    Some(FileOutcomes {
        file,
        actual,
        head,
        allowed,
        tuned_knn: baseline::pool(tuned),
        knn: baseline::pool(knn),
        knn_k,
        coverage,
        models,
        outside,
        prompts_routed,
        outside_models,
    })
}
