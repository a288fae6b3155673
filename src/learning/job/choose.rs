//! The choices a training run makes on its training prompts (never the held-out ones): the
//! shrinkage of MLP families, measured on the early-stopping prompts, and the local-prior weight
//! of factor families, measured by an inner cross-validation of the training prompts. Both
//! price routing on a log file's full matrix of catalog models ([`priced_outcomes`]).
use ndarray::Array2;

use super::{columns, Family, JobError, LogFile, TrainJob};
use crate::{
    encoder::Encoder,
    learning::{eval::Outcomes, Dataset, Mlp, Shrink, Support, DEFAULT_NEIGHBOURS},
    predictor::manifest::{FileChoice, LocalChoice, ShrinkChoice},
};

/// Shrinkage weight used when it cannot be chosen on the data.
pub const DEFAULT_SHRINK: f32 = 0.5;
/// Candidate shrinkage weights.
const SHRINK_GRID: [f32; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Chooses the shrinkage weight of the MLP families' models (`candidates`) on the early-stopping
/// prompts `rows` (see `learning::Shrink`), towards `priors` (the per-model means the graph will
/// use: training prompts only).
#[allow(clippy::too_many_arguments)]
pub(super) fn choose_shrink(
    job: &TrainJob,
    logs: &crate::learning::RoutingLogs,
    files: &[LogFile],
    all: &Dataset,
    rows: &[usize],
    candidates: &[usize],
    mlp: &Mlp,
    priors: &Shrink,
    encoder: &Encoder,
) -> Result<(ndarray::Array1<f32>, ShrinkChoice), JobError> {
    let n_models = logs.models.len();
    if job.ensemble == 0 || job.ensemble > 32 {
        return Err(JobError::Invalid { field: "ensemble", limit: "in 1..=32", value: job.ensemble.to_string() });
    }
    let fixed = |weight: f32, chosen: &str| {
        (
            ndarray::Array1::from_elem(n_models, weight),
            ShrinkChoice { chosen: chosen.into(), grid: Vec::new(), files: Vec::new(), other_models: weight },
        )
    };
    if let Some(a) = job.shrink {
        return Ok(fixed(a, "fixed by --shrink"));
    }
    if candidates.is_empty() {
        return Ok(fixed(1.0, "none: no MLP family"));
    }
    let Some(catalog) = &job.catalog else {
        return Ok(fixed(DEFAULT_SHRINK, "default: no catalog to price outcomes"));
    };
    let mut per_file = Vec::new();
    let mut chosen: Vec<Option<f32>> = vec![None; n_models];
    for file in files {
        let Some(p) = priced_outcomes(file, logs, all, rows, candidates.iter().copied(), catalog, encoder)? else {
            continue;
        };
        let x = all.x.select(ndarray::Axis(0), &p.rows);
        let (q, t) = mlp.predict(x.view());
        let cols: Vec<usize> = p.models.iter().map(|&(j, _)| j).collect();
        let mut file_gaps: Vec<f64> = Vec::new();
        for &a in &SHRINK_GRID {
            let s = Shrink {
                weight: ndarray::Array1::from_elem(n_models, a),
                token_weight: ndarray::Array1::from_elem(n_models, a),
                ..priors.clone()
            };
            let (qs, ts) = s.apply(None, x.view(), &q, &t);
            file_gaps.push(p.gap(&qs.select(ndarray::Axis(1), &cols), &ts.select(ndarray::Axis(1), &cols), job.cost_scale_usd));
        }
        let best =
            (0..SHRINK_GRID.len()).max_by(|&a, &b| file_gaps[a].total_cmp(&file_gaps[b])).expect("grid is not empty. This is a bug.");
        for &j in &p.file_models {
            chosen[j] = Some(SHRINK_GRID[best]);
        }
        per_file.push(FileChoice {
            file: file.path.display().to_string(),
            prompts: p.rows.len(),
            models: cols.len(),
            weight: SHRINK_GRID[best],
            gap_closed_by_weight: file_gaps,
        });
    }
    if per_file.is_empty() {
        return Ok(fixed(DEFAULT_SHRINK, "default: no log file has >= 20 early-stopping prompts answered by >= 2 catalog models"));
    }
    let picked: Vec<f32> = chosen.iter().flatten().copied().collect();
    let fallback = picked.iter().sum::<f32>() / picked.len().max(1) as f32;
    let weights = ndarray::Array1::from_iter(chosen.iter().map(|c| c.unwrap_or(fallback)));
    Ok((
        weights,
        ShrinkChoice {
            chosen: "per log file: best gap closed on its early-stopping prompts".into(),
            grid: SHRINK_GRID.to_vec(),
            files: per_file,
            other_models: fallback,
        },
    ))
}

/// One log file's full matrix within some training rows, priced by the catalog: what the
/// shrinkage and the local prior are chosen on.
struct Priced<'a> {
    /// Rows of `all` (prompts of the file answered by every model below).
    rows: Vec<usize>,
    /// Positions of those rows in the `rows` given to [`priced_outcomes`].
    positions: Vec<usize>,
    /// (model index, catalog entry) of the columns.
    models: Vec<(usize, &'a crate::catalog::CatalogModel)>,
    /// Every model of the file that is among the candidates (the ones a choice applies to).
    file_models: Vec<usize>,
    /// Input tokens per row.
    input_tokens: Vec<u32>,
    /// Actual quality and cost.
    outcomes: Outcomes,
}

impl Priced<'_> {
    /// Gap closed by routing on predicted quality and tokens ([rows, models], columns as `models`).
    fn gap(&self, quality: &Array2<f32>, tokens: &Array2<f32>, cost_scale: f64) -> f64 {
        let (n, k) = (self.rows.len(), self.models.len());
        let pc = Array2::from_shape_fn((n, k), |(i, c)| self.models[c].1.cost_usd(self.input_tokens[i], f64::from(tokens[[i, c]])));
        self.outcomes.gap_closed(&quality.mapv(f64::from), &pc, None, cost_scale)
    }
}

/// The full matrix of `file`'s catalog models among `candidates` over `rows`; `None` with fewer
/// than 20 prompts or 2 models.
fn priced_outcomes<'a>(
    file: &LogFile,
    logs: &crate::learning::RoutingLogs,
    all: &Dataset,
    rows: &[usize],
    candidates: impl Iterator<Item = usize>,
    catalog: &'a crate::catalog::Catalog,
    encoder: &Encoder,
) -> Result<Option<Priced<'a>>, JobError> {
    let file_models: Vec<usize> = candidates.filter(|j| file.models.contains(j)).collect();
    let group: Vec<usize> = (0..rows.len()).filter(|&p| file.prompt_ids.contains(&logs.prompts[rows[p]].id)).collect();
    let priced = file_models.iter().filter_map(|&j| catalog.get(&logs.models[j]).map(|m| (j, m)));
    let (models, positions) = crate::learning::eval::full_matrix(&group, priced, |p, (j, _)| all.mask[[rows[p], j]] > 0.0);
    if positions.len() < 20 || models.len() < 2 {
        return Ok(None);
    }
    let rows: Vec<usize> = positions.iter().map(|&p| rows[p]).collect();
    let input_tokens: Vec<u32> = rows
        .iter()
        .map(|&r| encoder.count_tokens(&logs.prompts[r].text).map(|c| c + crate::encoder::text::TOKENS_PER_MESSAGE))
        .collect::<Result<_, _>>()?;
    let (n, k) = (rows.len(), models.len());
    let mut outcomes = Outcomes { score: Array2::zeros((n, k)), cost: Array2::zeros((n, k)) };
    for (i, &r) in rows.iter().enumerate() {
        for (c, &(j, m)) in models.iter().enumerate() {
            outcomes.score[[i, c]] = f64::from(all.quality[[r, j]]);
            outcomes.cost[[i, c]] = m.cost_usd(input_tokens[i], f64::from(all.log_tokens[[r, j]].exp() - 1.0));
        }
    }
    Ok(Some(Priced { rows, positions, models, file_models, input_tokens, outcomes }))
}

/// Neighbours of the local quality prior (the support index's count).
pub(super) const LOCAL_NEIGHBOURS: usize = DEFAULT_NEIGHBOURS;
/// Pseudo-count of each model's global mean in the local prior.
pub(super) const LOCAL_KAPPA: f32 = 1.0;
/// Candidate weights of a factor head against its local prior (1 = the factor head alone).
const LOCAL_GRID: [f32; 5] = [1.0, 0.75, 0.5, 0.25, 0.0];
/// Gap closed (a share) by which a blend must beat the factor head alone in that inner
/// cross-validation to be chosen: the choice is noisy (on the shared data, over 8 outer
/// cross-validations, zeroeval lost 0.7 points when any gain counted).
const LOCAL_MARGIN: f64 = 0.01;
/// Folds of the inner cross-validation that chooses it.
const LOCAL_FOLDS: usize = 5;

/// Chooses, per log file of each factor family, how much of the factor head's quality to keep
/// against the local prior ([`crate::learning::LocalPrior`]): an inner 5-fold cross-validation over the
/// training prompts (factor head refitted without each fold, neighbours from the other folds),
/// pooled, then the weight whose routing closes the most of the single-to-oracle gap. Every
/// training prompt is scored once, out of fold, so the choice rests on all of them rather than on
/// the early-stopping prompts alone. Returns the weight per model (`None`: no choice made).
pub(super) fn choose_local(
    job: &TrainJob,
    logs: &crate::learning::RoutingLogs,
    files: &[LogFile],
    all: &Dataset,
    train_idx: &[usize],
    factor_families: &[&Family],
    encoder: &Encoder,
) -> Result<(Vec<Option<f32>>, LocalChoice), JobError> {
    let mut weights = vec![None; logs.models.len()];
    let Some(catalog) = &job.catalog else {
        return Ok((weights, LocalChoice { chosen: "none: no catalog to price outcomes".into(), grid: Vec::new(), files: Vec::new() }));
    };
    let mut per_file = Vec::new();
    for f in factor_families {
        let rows: Vec<usize> = train_idx.iter().copied().filter(|&i| f.models.iter().any(|&j| all.mask[[i, j]] > 0.0)).collect();
        let fold = crate::learning::folds(rows.len(), LOCAL_FOLDS, job.train.seed.wrapping_add(2));
        let mf = f.models.len();
        let (mut head_q, mut head_t, mut local_q) =
            (Array2::<f32>::zeros((rows.len(), mf)), Array2::<f32>::zeros((rows.len(), mf)), Array2::<f32>::zeros((rows.len(), mf)));
        let mut complete = true;
        for k in 0..LOCAL_FOLDS {
            let (fit_pos, held_pos): (Vec<usize>, Vec<usize>) = (0..rows.len()).partition(|&p| fold[p] != k);
            let fit_rows: Vec<usize> = fit_pos.iter().map(|&p| rows[p]).collect();
            let fd = columns(all, &fit_rows, &f.models);
            let Some(head) = crate::learning::lowrank::fit(
                &fd,
                &crate::learning::lowrank::LowRankConfig { seed: job.train.seed, ..Default::default() },
            )?
            else {
                complete = false;
                break;
            };
            let xh = all.x.select(ndarray::Axis(0), &held_pos.iter().map(|&p| rows[p]).collect::<Vec<_>>());
            let (q, t) = head.predict(xh.view());
            let support = Support::new(fd.x.view(), fd.mask.view(), LOCAL_NEIGHBOURS);
            let prior = Shrink::priors(&fd.quality, &fd.log_tokens, &fd.mask, 1.0).prior_quality;
            let local =
                crate::learning::LocalPrior::new(&fd.quality, &fd.mask, &(0..mf).collect::<Vec<_>>(), LOCAL_NEIGHBOURS, LOCAL_KAPPA);
            let lq = local.at(&support, xh.view(), &prior);
            for (i, &p) in held_pos.iter().enumerate() {
                head_q.row_mut(p).assign(&q.row(i));
                head_t.row_mut(p).assign(&t.row(i));
                local_q.row_mut(p).assign(&lq.row(i));
            }
        }
        if !complete {
            continue;
        }
        for file in files.iter().filter(|lf| f.files.contains(&lf.path)) {
            let Some(p) = priced_outcomes(file, logs, all, &rows, f.models.iter().copied(), catalog, encoder)? else {
                continue;
            };
            // Columns of the family's matrices, for the file's priced models.
            let cols: Vec<usize> =
                p.models.iter().map(|&(j, _)| f.models.iter().position(|&x| x == j).expect("a family model. This is a bug.")).collect();
            let pick = |a: &Array2<f32>| a.select(ndarray::Axis(0), &p.positions).select(ndarray::Axis(1), &cols);
            let (hq, ht, lq) = (pick(&head_q), pick(&head_t), pick(&local_q));
            let gaps: Vec<f64> = LOCAL_GRID.iter().map(|&a| p.gap(&(&hq * a + &(&lq * (1.0 - a))), &ht, job.cost_scale_usd)).collect();
            // The best, if it beats the factor head alone by LOCAL_MARGIN (else the factor head:
            // the simpler model unless the evidence is clear); ties keep more of the factor head.
            let best = (0..LOCAL_GRID.len()).fold(0, |b, i| if gaps[i] > gaps[b] { i } else { b });
            let best = if gaps[best] >= gaps[0] + LOCAL_MARGIN { best } else { 0 };
            for &j in &p.file_models {
                weights[j] = Some(LOCAL_GRID[best]);
            }
            per_file.push(FileChoice {
                file: file.path.display().to_string(),
                prompts: p.rows.len(),
                models: cols.len(),
                weight: LOCAL_GRID[best],
                gap_closed_by_weight: gaps,
            });
        }
    }
    Ok((
        weights,
        LocalChoice {
            chosen: "per log file of a factor family: best gap closed, inner 5-fold cross-validation of the training prompts".into(),
            grid: LOCAL_GRID.to_vec(),
            files: per_file,
        },
    ))
}
