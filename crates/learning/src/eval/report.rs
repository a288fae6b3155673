//! The figures `pointsman eval` reports for one log file's matrices ([`report`]): every single
//! model, the router, the kNN baselines and the oracle, the verdict line (does the head beat the
//! tuned kNN), and where the router falls below the single-model frontier.
use serde::Serialize;

use super::{baseline, cheapest, frontier, points, sweep, Coverage, FileOutcomes, Outcomes, SingleModel, Sweep, TunedChoice};
use crate::frontier::{aiq, calibration_error, cost_to_reach, envelope, quality_at, Point};

/// The kNN with shrinkage whose `(k, b)` cross-validation on its memory chose (see `baseline`).
#[derive(Debug, Clone, Serialize)]
pub struct TunedKnnReport {
    /// Chosen neighbours (with several folds: the most frequent choice; `choices` has each).
    pub k: usize,
    /// Chosen pseudo-count of each model's global mean.
    pub b: f32,
    /// Its gap closed by cross-validation on the memory prompts (mean over `choices`).
    pub cv_gap_closed: f64,
    /// Folds of that cross-validation.
    pub cv_folds: usize,
    /// Full-matrix memory prompts it was chosen on and predicts from (mean over `choices`).
    pub memory_prompts: usize,
    /// Share of the single-to-oracle AIQ gap it closes on the evaluated prompts.
    pub gap_closed: f64,
    /// Its sweep on the evaluated prompts.
    pub sweep: Sweep,
    /// The choice on each memory (one for `eval`; one per fold for `train --cv`), with every grid point's figure.
    pub choices: Vec<TunedChoice>,
}

/// The plain kNN-k baseline.
#[derive(Debug, Clone, Serialize)]
pub struct FixedKnnReport {
    /// Neighbours averaged (`--knn-k`).
    pub k: usize,
    /// Memory prompts it predicts from.
    pub memory_prompts: usize,
    /// Share of the single-to-oracle AIQ gap it closes.
    pub gap_closed: f64,
    /// Its sweep.
    pub sweep: Sweep,
}

/// The evaluation of one log file.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// The log file.
    pub file: String,
    /// Prompts evaluated.
    pub prompts: usize,
    /// What the full-matrix rule dropped to get there.
    pub coverage: Coverage,
    /// Every single model.
    pub single_models: Vec<SingleModel>,
    /// The best single model by quality.
    pub best_single: String,
    /// AIQ of the single-model envelope.
    pub single_aiq: f64,
    /// The head's router.
    pub router: Sweep,
    /// The per-prompt oracle.
    pub oracle: Sweep,
    /// Share of the single-to-oracle AIQ gap the router closes.
    pub router_gap_closed: f64,
    /// The honest baseline: kNN with shrinkage, `(k, b)` chosen by cross-validation on its memory;
    /// `null` when it has too little memory (`tuned_knn_absent` says why).
    pub tuned_knn: Option<TunedKnnReport>,
    /// Why there is no tuned kNN.
    pub tuned_knn_absent: Option<String>,
    /// Plain kNN-k (`--knn-k`, default 25); `null` when absent (`knn_absent` says why).
    pub knn: Option<FixedKnnReport>,
    /// Why there is no kNN-k.
    pub knn_absent: Option<String>,
    /// One line: does the head beat the tuned kNN, and by how many points of gap closed.
    pub verdict: String,
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
    /// At each weight of the router's sweep, the share of prompts live routing (over every
    /// catalog model the head predicts) sends to a model this file does not score: the sweep's
    /// figures do not cover those (`tune` refuses a weight where it is above 1%).
    pub outside_share: Vec<f64>,
    /// The models live routing chose at some weight that this file does not score.
    pub outside_models: Vec<String>,
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
    let floor = cheapest(&single_pts);
    let (lo, hi) = (floor.cost, single_pts.iter().map(|p| p.cost).fold(0.0, f64::max));
    let single_env = envelope(&single_pts);
    let single_aiq = aiq(&single_env, lo, hi);
    let router = sweep(rq, &o.head.cost, Some(&o.allowed), m, floor, hi, cost_scale);
    let oracle = sweep(&m.score, &m.cost, None, m, floor, hi, cost_scale);
    let best = singles.iter().max_by(|a, b| a.quality.total_cmp(&b.quality)).expect("at least two models. This is a bug.");
    let router_env = frontier(&points(&router), floor);
    let gap = |a: f64| (a - single_aiq) / (oracle.aiq - single_aiq).max(1e-12);
    let knn_sweep = |p: &Outcomes| sweep(&p.score, &p.cost, None, m, floor, hi, cost_scale);
    let tuned_knn = o.tuned_knn.as_ref().ok().map(|t| {
        let sweep = knn_sweep(&t.pred);
        let c = &t.choices;
        // The most frequent choice over folds; among equally frequent ones the smoothest.
        let (k, b) = c
            .iter()
            .map(|x| (x.k, x.b))
            .max_by(|a, b| {
                let freq = |p: &(usize, f32)| c.iter().filter(|x| (x.k, x.b) == *p).count();
                freq(a).cmp(&freq(b)).then(a.0.cmp(&b.0)).then(a.1.total_cmp(&b.1))
            })
            .unwrap_or((0, 0.0));
        TunedKnnReport {
            k,
            b,
            cv_gap_closed: c.iter().map(|x| x.cv_gap_closed).sum::<f64>() / c.len().max(1) as f64,
            cv_folds: baseline::CV_FOLDS,
            memory_prompts: t.memory,
            gap_closed: gap(sweep.aiq),
            sweep,
            choices: c.clone(),
        }
    });
    let knn = o.knn.as_ref().ok().map(|t| {
        let sweep = knn_sweep(&t.pred);
        FixedKnnReport { k: o.knn_k, memory_prompts: t.memory, gap_closed: gap(sweep.aiq), sweep }
    });
    let router_gap_closed = gap(router.aiq);
    DatasetReport {
        file: o.file.clone(),
        prompts: n,
        coverage: o.coverage.clone(),
        best_single: best.model.clone(),
        router_quality_at_best_single_cost: quality_at(&router_env, best.cost),
        router_cost_share_to_match_best_single: cost_to_reach(&router_env, best.quality).map(|c| c / best.cost),
        router_below_single_frontier: below(&router_env, &single_env, lo, hi),
        mean_calibration_error: singles.iter().map(|s| s.calibration_error).sum::<f64>() / k as f64,
        single_models: singles.clone(),
        single_aiq,
        verdict: verdict(router_gap_closed, tuned_knn.as_ref(), o.tuned_knn.as_ref().err()),
        router_gap_closed,
        tuned_knn,
        tuned_knn_absent: o.tuned_knn.as_ref().err().cloned(),
        knn,
        knn_absent: o.knn.as_ref().err().cloned(),
        router,
        oracle,
        cost_range: (lo, hi),
        outside_share: o.outside.iter().map(|&c| c as f64 / o.prompts_routed.max(1) as f64).collect(),
        outside_models: o.outside_models.clone(),
    }
}

/// "router 7.1% vs tuned kNN 9.6% (k 200, b 100): the head is behind by 2.5 points".
fn verdict(router: f64, tuned: Option<&TunedKnnReport>, absent: Option<&String>) -> String {
    let Some(t) = tuned else {
        return format!("router {:.1}%; no tuned kNN to compare with: {}", router * 100.0, absent.map_or("absent", String::as_str));
    };
    let params: Vec<(usize, f32)> = t.choices.iter().map(|c| (c.k, c.b)).collect();
    let chosen = if params.iter().all(|p| *p == (t.k, t.b)) {
        format!("k {}, b {}", t.k, t.b)
    } else {
        format!("k, b per fold: {}", params.iter().map(|(k, b)| format!("{k}/{b}")).collect::<Vec<_>>().join(" "))
    };
    // Points of gap closed, as printed (one decimal).
    let d = (router * 1000.0).round() / 10.0 - (t.gap_closed * 1000.0).round() / 10.0;
    let how = if d.abs() < 0.05 {
        "the head is level with it".to_string()
    } else if d > 0.0 {
        format!("the head is ahead by {d:.1} points")
    } else {
        format!("the head is behind by {:.1} points", -d)
    };
    format!("router {:.1}% vs tuned kNN {:.1}% ({chosen}): {how}", router * 100.0, t.gap_closed * 100.0)
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
        let d = quality_at(single, c) - quality_at(router, c);
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
