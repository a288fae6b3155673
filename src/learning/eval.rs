//! `pointsman eval`: the router's quality-cost frontier on full-matrix logs the head never saw,
//! next to every single model, the per-prompt oracle, and a 25-nearest-neighbour router on the
//! same embeddings (see `frontier` for the figures).
//!
//! Each log file is evaluated on its own (scores from different benchmarks are not on one scale).
//! Evaluation prompts are the head's held-out prompts (`validation.prompt_ids` in its manifest)
//! found in the file; the file's other prompts are the kNN router's memory. Models are the
//! catalog models the head covers that were observed on at least 95% of those prompts, and
//! prompts missing any of them are dropped, so every policy is scored on the same full matrix.
//! Costs are real: the prompt's input tokens and the chosen model's actual output tokens at the
//! catalog's list prices.
use std::{collections::HashMap, path::PathBuf};

use ndarray::{Array2, ArrayView2, Axis};
use serde::Serialize;

use super::{
    frontier::{aiq, calibration_error, cost_to_reach, envelope, Point},
    job::{embed_prompts, embed_prompts_cached},
    read_logs, LearningError, RoutingLogs,
};
mod plot;
mod select;

pub use plot::svg;
pub use select::{eval_prompts, trained_on};

use crate::{
    catalog::Catalog,
    encoder::{text::TOKENS_PER_MESSAGE, Encoder, EncoderError},
    policy::utility,
    predictor::{Head, HeadError},
};

/// Share of the prompts a model must have answered to join a full matrix.
pub const MIN_COVERAGE: f64 = 0.95;

/// Fewest prompts of a log file an evaluation scores (fewer make the figures noise).
pub const MIN_EVAL_PROMPTS: usize = 20;

/// Picks a full matrix out of sparse outcomes: of `candidates`, the models that answered at least
/// [`MIN_COVERAGE`] of `prompts`, then the prompts that all of those answered.
pub fn full_matrix<M: Copy>(
    prompts: &[usize],
    candidates: impl IntoIterator<Item = M>,
    answered: impl Fn(usize, M) -> bool,
) -> (Vec<M>, Vec<usize>) {
    let models: Vec<M> = candidates
        .into_iter()
        .filter(|&m| prompts.iter().filter(|&&p| answered(p, m)).count() as f64 >= MIN_COVERAGE * prompts.len() as f64)
        .collect();
    let rows = prompts.iter().copied().filter(|&p| models.iter().all(|&m| answered(p, m))).collect();
    (models, rows)
}

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
    /// AIQ of the envelope of these points (with random mixing).
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

/// The evaluation of one log file.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// The log file.
    pub file: String,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Prompts in the kNN router's memory.
    pub knn_memory: usize,
    /// Every single model.
    pub single_models: Vec<SingleModel>,
    /// The best single model by quality.
    pub best_single: String,
    /// AIQ of the single-model envelope.
    pub single_aiq: f64,
    /// The head's router.
    pub router: Sweep,
    /// 25-nearest-neighbour router on the same embeddings.
    pub knn: Sweep,
    /// The per-prompt oracle.
    pub oracle: Sweep,
    /// Share of the single-to-oracle AIQ gap the router closes.
    pub router_gap_closed: f64,
    /// Same for kNN.
    pub knn_gap_closed: f64,
    /// Router quality at the best single model's cost (envelope).
    pub router_quality_at_best_single_cost: f64,
    /// Cheapest router cost reaching the best single model's quality, as a share of its cost.
    pub router_cost_share_to_match_best_single: Option<f64>,
    /// Where the router's frontier is below the single models' (the "never below").
    pub router_below_single_frontier: Shortfall,
    /// Mean calibration error over models.
    pub mean_calibration_error: f64,
    /// AIQ cost range (cheapest and most expensive single model).
    pub cost_range: (f64, f64),
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
    pub fn gap_closed(&self, pred_q: &Array2<f64>, pred_c: &Array2<f64>, allowed: Option<&Array2<bool>>, cost_scale: f64) -> f64 {
        let (singles, lo, hi) = self.singles();
        let single = aiq(&envelope(&singles), lo, hi);
        let oracle = sweep(&self.score, &self.cost, None, self, lo, hi, cost_scale).aiq;
        let router = sweep(pred_q, pred_c, allowed, self, lo, hi, cost_scale).aiq;
        (router - single) / (oracle - single).max(1e-12)
    }
}

fn sweep(
    pred_q: &Array2<f64>,
    pred_c: &Array2<f64>,
    allowed: Option<&Array2<bool>>,
    m: &Outcomes,
    lo: f64,
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
    let mut pts: Vec<Point> = cost.iter().zip(&quality).map(|(&c, &q)| Point { cost: c, quality: q }).collect();
    // The cheapest single model is always reachable: every policy can fall back to it.
    let (singles, _, _) = m.singles();
    if let Some(c) = singles.iter().min_by(|a, b| a.cost.total_cmp(&b.cost)) {
        pts.push(*c);
    }
    Sweep { aiq: aiq(&envelope(&pts), lo, hi), weights, cost, quality, top_share }
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
    /// Neighbours of the kNN baseline.
    pub knn_k: usize,
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
    /// The kNN router's predicted quality and cost.
    pub knn: Outcomes,
    /// Prompts in the kNN router's memory.
    pub knn_memory: usize,
}

/// The matrices [`report`] needs for one log file on the prompts in `heldout` (the file's other
/// prompts are the kNN router's memory). With `embedding_cache`, embeddings come from (and go to)
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
    collect_logs(file, &logs, encoder, head, catalog, heldout, settings, embedding_cache)
}

/// [`collect_file`] on the file's logs, already read.
#[allow(clippy::too_many_arguments)]
pub fn collect_logs(
    file: &std::path::Path,
    logs: &RoutingLogs,
    encoder: &Encoder,
    head: &Head,
    catalog: &Catalog,
    heldout: &[String],
    settings: EvalSettings,
    embedding_cache: Option<&std::path::Path>,
) -> Result<FileOutcomes, EvalError> {
    let EvalSettings { out_of_domain_p, knn_k, quiet, .. } = settings;
    let name = file.display().to_string();
    let data_err = |message: String| EvalError::Data { file: name.clone(), message };
    let held: std::collections::HashSet<&str> = heldout.iter().map(String::as_str).collect();
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
    // (log model, head output, catalog index) of every catalog model the head covers.
    let candidates = logs
        .models
        .iter()
        .enumerate()
        .filter_map(|(lm, id)| Some((lm, *head_idx.get(id.as_str())?, catalog.models().iter().position(|m| &m.id == id)?)));
    let (models, eval_p) = full_matrix(&eval_p, candidates, |p, (lm, _, _)| obs.contains_key(&(p, lm)));
    if models.len() < 2 {
        return Err(data_err(format!("{} catalog models cover the held-out prompts; need >= 2", models.len())));
    }
    let (n, k) = (eval_p.len(), models.len());

    // The evaluated prompts, then the kNN memory, in one pass (one progress count).
    let all_texts: Vec<&str> = eval_p.iter().chain(&mem_p).map(|&p| logs.prompts[p].text.as_str()).collect();
    let all_x = match embedding_cache {
        Some(dir) => embed_prompts_cached(encoder, &all_texts, Some(dir), quiet).map(|(x, _)| x),
        None => embed_prompts(encoder, &all_texts, quiet),
    }?;
    let (x, mem_x) = all_x.view().split_at(Axis(0), n);
    let texts = &all_texts[..n];
    let input_tokens: Vec<u32> = texts.iter().map(|t| encoder.count_tokens(t).map(|c| c + TOKENS_PER_MESSAGE)).collect::<Result<_, _>>()?;

    let cat = catalog.models();
    let mut m = Outcomes { score: Array2::zeros((n, k)), cost: Array2::zeros((n, k)) };
    for (r, &p) in eval_p.iter().enumerate() {
        for (j, &(lm, _, c)) in models.iter().enumerate() {
            let (s, t) = obs[&(p, lm)];
            m.score[[r, j]] = s;
            m.cost[[r, j]] = cat[c].cost_usd(input_tokens[r], f64::from(t));
        }
    }

    // The head's predictions and domain rule.
    let out = head.predict(x.view())?;
    let hm = head.models().len();
    let mut rq = Array2::zeros((n, k));
    let mut rc = Array2::zeros((n, k));
    let mut allowed = Array2::from_elem((n, k), true);
    for r in 0..n {
        let chance = head.domain_chance(out.support.as_ref().map(|s| &s[r * hm..(r + 1) * hm]));
        for (j, &(_, h, c)) in models.iter().enumerate() {
            rq[[r, j]] = f64::from(out.quality[r * hm + h]).clamp(0.0, 1.0);
            rc[[r, j]] = cat[c].cost_usd(input_tokens[r], f64::from(out.output_tokens[r * hm + h]).max(1.0));
            allowed[[r, j]] = chance[h] >= out_of_domain_p;
        }
        if !allowed.row(r).iter().any(|&a| a) {
            allowed.row_mut(r).fill(true);
        }
    }

    // kNN router: mean observed score and tokens of the k nearest memory prompts, per model.
    let (kq, kc) = knn_predictions(x.view(), mem_x.view(), &mem_p, &models, &obs, knn_k, &input_tokens, catalog);
    Ok(FileOutcomes {
        // The file with its folder: the shared data's files are all called train.jsonl.gz.
        file: file.iter().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<PathBuf>().display().to_string(),
        models: models.iter().map(|&(_, _, c)| cat[c].id.clone()).collect(),
        actual: m,
        head: Outcomes { score: rq, cost: rc },
        allowed,
        knn: Outcomes { score: kq, cost: kc },
        knn_memory: mem_p.len(),
    })
}

/// Stacks the folds of one file (each evaluated by the head that did not see it) into one set of
/// matrices over the models every fold has; `knn_memory` becomes the folds' mean.
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
    Some(FileOutcomes {
        file: first.file.clone(),
        actual: Outcomes { score: stack(&|p| &p.actual.score), cost: stack(&|p| &p.actual.cost) },
        head: Outcomes { score: stack(&|p| &p.head.score), cost: stack(&|p| &p.head.cost) },
        knn: Outcomes { score: stack(&|p| &p.knn.score), cost: stack(&|p| &p.knn.cost) },
        allowed,
        knn_memory: parts.iter().map(|p| p.knn_memory).sum::<usize>() / parts.len(),
        models,
    })
}

/// The figures of one file's matrices.
pub fn report(o: &FileOutcomes, cost_scale: f64) -> DatasetReport {
    let (m, rq) = (&o.actual, &o.head.score);
    let (n, k) = m.score.dim();
    let singles: Vec<SingleModel> = o
        .models
        .iter()
        .enumerate()
        .map(|(j, id)| {
            let pred: Vec<f64> = rq.column(j).to_vec();
            let act: Vec<f64> = m.score.column(j).to_vec();
            SingleModel {
                model: id.clone(),
                quality: m.score.column(j).mean().unwrap_or(0.0),
                cost: m.cost.column(j).mean().unwrap_or(0.0),
                calibration_error: calibration_error(&pred, &act, 10),
                predicted_quality: rq.column(j).mean().unwrap_or(0.0),
            }
        })
        .collect();
    let single_pts: Vec<Point> = singles.iter().map(|s| Point { cost: s.cost, quality: s.quality }).collect();
    let lo = single_pts.iter().map(|p| p.cost).fold(f64::INFINITY, f64::min);
    let hi = single_pts.iter().map(|p| p.cost).fold(0.0, f64::max);
    let single_env = envelope(&single_pts);
    let single_aiq = aiq(&single_env, lo, hi);
    let router = sweep(rq, &o.head.cost, Some(&o.allowed), m, lo, hi, cost_scale);
    let knn = sweep(&o.knn.score, &o.knn.cost, None, m, lo, hi, cost_scale);
    let oracle = sweep(&m.score, &m.cost, None, m, lo, hi, cost_scale);
    let best = singles.iter().max_by(|a, b| a.quality.total_cmp(&b.quality)).expect("at least two models. This is a bug.");
    let router_env = envelope(&points(&router));
    let gap = |a: f64| (a - single_aiq) / (oracle.aiq - single_aiq).max(1e-12);
    DatasetReport {
        file: o.file.clone(),
        prompts: n,
        knn_memory: o.knn_memory,
        best_single: best.model.clone(),
        router_quality_at_best_single_cost: super::frontier::quality_at(&router_env, best.cost),
        router_cost_share_to_match_best_single: cost_to_reach(&router_env, best.quality).map(|c| c / best.cost),
        router_below_single_frontier: below(&router_env, &single_env, lo, hi),
        mean_calibration_error: singles.iter().map(|s| s.calibration_error).sum::<f64>() / k as f64,
        single_models: singles.clone(),
        single_aiq,
        router_gap_closed: gap(router.aiq),
        knn_gap_closed: gap(knn.aiq),
        router,
        knn,
        oracle,
        cost_range: (lo, hi),
    }
}

/// Where a router's frontier falls below the single models' over the AIQ cost range.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Shortfall {
    /// Share of the log-cost range where the router's frontier is below the single models'.
    pub share_of_cost_range: f64,
    /// The largest quality shortfall there.
    pub max_quality: f64,
    /// The cost at which that largest shortfall is (USD per request).
    pub at_cost: f64,
}

/// The router frontier's shortfall below the single-model frontier, sampled as AIQ samples it.
fn below(router: &[Point], single: &[Point], lo: f64, hi: f64) -> Shortfall {
    const N: usize = 512;
    let (a, b) = (lo.max(1e-12).ln(), hi.max(1e-12).ln());
    let mut out = Shortfall { share_of_cost_range: 0.0, max_quality: 0.0, at_cost: lo };
    let mut n_below = 0usize;
    for i in 0..N {
        let c = (a + (b - a) * (i as f64 + 0.5) / N as f64).exp();
        let d = super::frontier::quality_at(single, c) - super::frontier::quality_at(router, c);
        // A thousandth of quality is below what any of these logs can tell apart.
        if d > 1e-3 {
            n_below += 1;
            if d > out.max_quality {
                out.max_quality = d;
                out.at_cost = c;
            }
        }
    }
    out.share_of_cost_range = n_below as f64 / N as f64;
    out
}

#[allow(clippy::too_many_arguments)]
fn knn_predictions(
    x: ArrayView2<f32>,
    mem: ArrayView2<f32>,
    mem_p: &[usize],
    models: &[(usize, usize, usize)],
    obs: &HashMap<(usize, usize), (f64, u32)>,
    k: usize,
    input_tokens: &[u32],
    catalog: &Catalog,
) -> (Array2<f64>, Array2<f64>) {
    let (n, m) = (x.nrows(), models.len());
    let sims = x.dot(&mem.t());
    // Global means as the fallback when no neighbour observed a model.
    let global: Vec<(f64, f64)> = models
        .iter()
        .map(|&(lm, _, _)| {
            let v: Vec<(f64, u32)> = mem_p.iter().filter_map(|&p| obs.get(&(p, lm)).copied()).collect();
            let c = v.len().max(1) as f64;
            (v.iter().map(|o| o.0).sum::<f64>() / c, v.iter().map(|o| f64::from(o.1)).sum::<f64>() / c)
        })
        .collect();
    let mut q = Array2::zeros((n, m));
    let mut c = Array2::zeros((n, m));
    for r in 0..n {
        let row = sims.index_axis(Axis(0), r);
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top = &order[..k.min(order.len())];
        for (j, &(lm, _, ci)) in models.iter().enumerate() {
            let v: Vec<(f64, u32)> = top.iter().filter_map(|&i| obs.get(&(mem_p[i], lm)).copied()).collect();
            let (mq, mt) = if v.is_empty() {
                global[j]
            } else {
                (v.iter().map(|o| o.0).sum::<f64>() / v.len() as f64, v.iter().map(|o| f64::from(o.1)).sum::<f64>() / v.len() as f64)
            };
            q[[r, j]] = mq;
            c[[r, j]] = catalog.models()[ci].cost_usd(input_tokens[r], mt);
        }
    }
    (q, c)
}
