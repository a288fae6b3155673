//! Fitting what the selection chose: each family's head on all of its training prompts, merged
//! into one block-structured graph (a family's hidden units feed only its models), the memory of
//! training prompts (capped), and the per-model weights that blend head and kNN.
use ndarray::{s, Array1, Array2};

use super::{
    families::columns,
    select::{Choice, Context, HeadKind, QualitySource, TokenSource},
    Family, JobError, TrainJob,
};
use crate::{
    predictor::manifest::{FamilyKind, MemorySpec},
    {lowrank, split_by_prompt, train, Dataset, LocalPrior, MemoryBlock, Mlp, Shrink, Support, TrainReport, DEFAULT_NEIGHBOURS},
};

/// Fits `kind` on `d` (one family's rows and columns); `None` when the logs are too sparse for a
/// factor head. The MLP ensemble stops early on a split of `d` and averages its members' logits.
pub(super) fn fit_head(kind: HeadKind, d: &Dataset, job: &TrainJob) -> Result<Option<Mlp>, JobError> {
    Ok(fit_head_described(kind, d, job, false)?.map(|(mlp, _, _)| mlp))
}

/// [`fit_head`], with what the manifest says of the head and the first MLP member's report.
/// With `refit`, each MLP member is trained again on every row of `d` (its early-stopping rows
/// included) for the epochs its early stopping chose.
pub(super) fn fit_head_described(
    kind: HeadKind,
    d: &Dataset,
    job: &TrainJob,
    refit: bool,
) -> Result<Option<(Mlp, FamilyKind, Option<TrainReport>)>, JobError> {
    match kind {
        HeadKind::Factor { rank } => {
            let cfg = lowrank::LowRankConfig { rank_quality: rank, seed: job.train.seed, ..Default::default() };
            let Some(head) = lowrank::fit(d, &cfg)? else { return Ok(None) };
            // The ranks the fit used: capped by the models dense enough to shape the factors.
            let dense = lowrank::dense_models(d, cfg.min_coverage).len();
            let described = FamilyKind::FactorHead {
                rank_quality: cfg.rank_quality.min(dense).max(1),
                rank_tokens: cfg.rank_tokens.min(dense).max(1),
                ridge_quality: cfg.ridge_quality,
                ridge_tokens: cfg.ridge_tokens,
                folds: cfg.folds,
                link_l2: cfg.link_l2,
                min_coverage: cfg.min_coverage,
            };
            Ok(Some((head, described, None)))
        }
        HeadKind::Mlp => {
            let (fit, stop) = split_by_prompt(d.n_rows(), job.early_stop_fraction, job.train.seed.wrapping_add(1));
            let (fd, sd) = (d.select(&fit), d.select(&stop));
            let n = job.ensemble.max(1);
            let mut members = Vec::with_capacity(n);
            let mut first = None;
            for member in 0..n {
                let cfg = crate::TrainConfig { seed: job.train.seed.wrapping_add(member as u64), ..job.train.clone() };
                let (mlp, report) = train(&fd, &sd, &cfg)?;
                let mlp = if refit {
                    let cfg = crate::TrainConfig { epochs: report.best_epoch.max(1), ..cfg };
                    train(d, &d.select(&[]), &cfg)?.0
                } else {
                    mlp
                };
                members.push(mlp);
                first.get_or_insert(report);
            }
            let cols: Vec<usize> = (0..d.n_models()).collect();
            let parts: Vec<(&[usize], &Mlp, f32)> = members.iter().map(|m| (cols.as_slice(), m, 1.0 / n as f32)).collect();
            let merged = stack(&parts, d.x.ncols(), d.n_models())?;
            let report = first.expect("at least one member. This is a bug.");
            let described = FamilyKind::MlpEnsemble {
                hidden: job.train.hidden,
                members: n,
                epochs_run: report.epochs_run,
                best_epoch: report.best_epoch,
            };
            Ok(Some((merged, described, Some(report))))
        }
    }
}

/// Stacks heads side by side into one MLP over `m` outputs: each part's hidden units feed only
/// its columns `cols`, its output weights and biases scaled by `share` (members of an ensemble
/// share `1/n` each: the merged logits are their mean).
pub(super) fn stack(parts: &[(&[usize], &Mlp, f32)], dim: usize, m: usize) -> Result<Mlp, JobError> {
    let h: usize = parts.iter().map(|(_, p, _)| p.hidden_dim()).sum();
    let (mut w1, mut b1) = (Array2::zeros((dim, h)), Array1::zeros(h));
    let (mut wq, mut wt) = (Array2::zeros((h, m)), Array2::zeros((h, m)));
    let (mut bq, mut bt) = (Array1::zeros(m), Array1::zeros(m));
    let mut off = 0;
    for (cols, p, share) in parts {
        let (hp, share) = (p.hidden_dim(), *share);
        w1.slice_mut(s![.., off..off + hp]).assign(&p.w1());
        b1.slice_mut(s![off..off + hp]).assign(&p.b1());
        for (k, &c) in cols.iter().enumerate() {
            wq.slice_mut(s![off..off + hp, c]).assign(&p.wq().column(k).mapv(|v| v * share));
            wt.slice_mut(s![off..off + hp, c]).assign(&p.wt().column(k).mapv(|v| v * share));
            bq[c] += p.bq()[k] * share;
            bt[c] += p.bt()[k] * share;
        }
        off += hp;
    }
    Ok(Mlp::from_parts(w1, b1, wq, bq, wt, bt)?)
}

/// What a family got, for the manifest.
pub(super) struct FittedFamily {
    /// Its head, as the manifest describes it (`None` when the kNN and means serve it alone).
    pub kind: FamilyKind,
}

/// The fitted graph's parts.
pub(super) struct Fitted {
    /// All families' heads, stacked.
    pub mlp: Mlp,
    /// The support index over the memory.
    pub support: Support,
    /// Weights and priors, with the kNN prior.
    pub shrink: Shrink,
    /// Per family, in order.
    pub families: Vec<FittedFamily>,
    /// The memory.
    pub memory: MemorySpec,
    /// Rows of the MLP heads' early stopping (0 without one); refitted on afterwards.
    pub early_stop_prompts: usize,
    /// What each model's evidence was and what it got (`None` for a model in no family).
    pub evidence: Vec<Option<crate::evidence::ModelEvidence>>,
    /// The prior of a model observed on no training prompt.
    pub unobserved_prior: f32,
}

/// Fits every family's chosen head on all of its training prompts and builds the graph's parts.
pub(super) fn fit(cx: &Context, families: &[Family], choices: &[Choice], memory_cap: usize) -> Result<Fitted, JobError> {
    let (job, all) = (cx.job, cx.all);
    let n_models = all.n_models();
    let dim = all.x.ncols();
    let mut heads: Vec<(Mlp, &[usize])> = Vec::new();
    let mut fitted = Vec::new();
    let mut early_stop_prompts = 0;
    let mut quality_weight = Array1::<f32>::ones(n_models);
    let mut token_weight = Array1::<f32>::ones(n_models);
    let (mut k, mut kappa) = (vec![0usize; n_models], vec![1f32; n_models]);
    let mut memory: Vec<usize> = Vec::new();
    let mut blocks = Vec::new();
    let mut support_blocks: Vec<MemoryBlock> = Vec::new();
    let mut token_models: Vec<usize> = Vec::new();
    // The cap is over all families; above it each keeps its share, in proportion to its prompts.
    let family_rows: Vec<Vec<usize>> = families.iter().map(|f| super::select::family_rows(cx, f)).collect();
    let of: usize = family_rows.iter().map(Vec::len).sum();
    let share = |n: usize| if of <= memory_cap { n } else { ((n as f64 * memory_cap as f64 / of as f64).floor() as usize).max(1) };
    for ((f, c), rows) in families.iter().zip(choices).zip(&family_rows) {
        let fd = columns(all, rows, &f.models);
        let head = c.quality.head().or(match c.tokens {
            TokenSource::Head(h) => Some(h),
            TokenSource::Mean | TokenSource::Knn(_) => None,
        });
        // A family served by its kNN and means alone still gets the graph units of a rank-2
        // factor head where its logs allow one, at weight 0 (its predictions do not move): they
        // are the prompt features `pointsman extend` fits a new model's column on.
        let (h, features_only) = match head {
            Some(h) => (h, false),
            None => (HeadKind::Factor { rank: 2 }, true),
        };
        let mut kind = FamilyKind::None;
        let fitted_head = match fit_head_described(h, &fd, job, true)? {
            Some(f) => Some(f),
            None if features_only => None,
            None => {
                return Err(JobError::Invalid {
                    field: "method",
                    limit: "a head that fits all the training prompts when it fitted every inner fold (a bug if not)",
                    value: format!("{h:?}"),
                })
            }
        };
        if let Some((mlp, described, _)) = fitted_head {
            if h == HeadKind::Mlp {
                early_stop_prompts += (fd.n_rows() as f64 * job.early_stop_fraction).round() as usize;
            }
            heads.push((mlp, &f.models));
            kind = described;
        }
        let (w, knn) = match c.quality {
            QualitySource::Knn(p) => (0.0, Some(p)),
            QualitySource::Head(_) => (1.0, None),
            QualitySource::Blend { knn, weight, .. } => (weight, Some(knn)),
        };
        let tw = if matches!(c.tokens, TokenSource::Head(_)) { 1.0 } else { 0.0 };
        // kNN tokens share the quality kNN's neighbours (the selection makes them the same), or
        // bring their own beside a head's quality.
        let knn = match c.tokens {
            TokenSource::Knn(p) => {
                token_models.extend(&f.models);
                Some(knn.unwrap_or(p))
            }
            _ => knn,
        };
        for &j in &f.models {
            quality_weight[j] = w;
            token_weight[j] = tw;
            if let Some(p) = knn {
                k[j] = p.k;
                kappa[j] = p.b;
            }
        }
        // The family's memory block: its training prompts, capped. On sparse logs, one block per
        // model of the prompts it was observed on (each model's kNN averages its own nearest
        // observations), with the family's whole span as the support index's block.
        {
            let kept: Vec<usize> =
                crate::memory_rows(rows.len(), share(rows.len()), job.train.seed.wrapping_add(3)).into_iter().map(|i| rows[i]).collect();
            if job.own_neighbours && super::select::is_sparse(&fd) {
                let start = memory.len();
                for &j in &f.models {
                    let own: Vec<usize> = kept.iter().copied().filter(|&r| all.mask[[r, j]] > 0.0).collect();
                    if own.is_empty() {
                        continue;
                    }
                    blocks.push(MemoryBlock { start: memory.len(), end: memory.len() + own.len(), models: vec![j] });
                    memory.extend(own);
                }
                support_blocks.push(MemoryBlock { start, end: memory.len(), models: f.models.clone() });
            } else {
                let b = MemoryBlock { start: memory.len(), end: memory.len() + kept.len(), models: f.models.clone() };
                blocks.push(b.clone());
                support_blocks.push(b);
                memory.extend(kept);
            }
        }
        fitted.push(FittedFamily { kind });
    }
    // Empirical-Bayes priors and the evidence guard, per family: a model with too little
    // evidence serves its prior alone (no head, no neighbours), never above the pooled mean.
    let mut evidence = vec![None; n_models];
    let mut eb_prior = vec![None; n_models];
    let mut floors = Vec::new();
    for (f, rows) in families.iter().zip(&family_rows) {
        let fd = columns(all, rows, &f.models);
        let fw = cx.ipw.select(ndarray::Axis(0), rows).select(ndarray::Axis(1), &f.models);
        let p = crate::evidence::priors(fd.quality.view(), fd.mask.view(), fw.view());
        for (c, &j) in f.models.iter().enumerate() {
            let e = &p.models[c];
            eb_prior[j] = Some(e.prior);
            if !e.local {
                quality_weight[j] = 0.0;
                k[j] = 0;
            }
            evidence[j] = Some(e.clone());
        }
        floors.push(p.floor);
    }
    for j in (0..n_models).filter(|&j| evidence[j].is_none()) {
        quality_weight[j] = 0.0;
        k[j] = 0;
    }
    let unobserved_prior = floors.iter().copied().fold(f32::INFINITY, f32::min);
    let unobserved_prior = if unobserved_prior.is_finite() { unobserved_prior } else { 0.0 };
    let parts: Vec<(&[usize], &Mlp, f32)> = heads.iter().map(|(m, cols)| (*cols, m, 1.0)).collect();
    let mlp = stack(&parts, dim, n_models)?;
    let mut mem = all.select(&memory);
    // A key of a model's own block counts for that model only (a prompt observed by two models
    // is a key in each of their blocks).
    for b in blocks.iter().filter(|b| b.models.len() == 1) {
        let j = b.models[0];
        for i in b.start..b.end {
            for (c, v) in mem.mask.row_mut(i).iter_mut().enumerate() {
                if c != j {
                    *v = 0.0;
                }
            }
        }
    }
    // Each model's evidence is counted in its own family's block of keys, and each family's
    // nearness in the whole memory (`Support::blocked`).
    let support = Support::blocked(mem.x.view(), mem.mask.view(), DEFAULT_NEIGHBOURS, support_blocks);
    let train = all.select(cx.train_idx);
    let mut priors = Shrink::priors(&train.quality, &train.log_tokens, &train.mask, 1.0);
    for (j, p) in eb_prior.iter().enumerate() {
        priors.prior_quality[j] = p.unwrap_or(unobserved_prior);
    }
    let mean_tokens = crate::knn::column_means(train.tokens().view(), train.mask.view());
    let local = k
        .iter()
        .any(|&kj| kj > 0)
        .then(|| LocalPrior::new(&mem.quality, &mem.mask, blocks, &k, &kappa).with_tokens(&mem.tokens(), &token_models, &mean_tokens));
    let shrink = Shrink { weight: quality_weight, token_weight, local, ..priors };
    let memory_spec = MemorySpec {
        prompts: memory.len(),
        of,
        cap: memory_cap,
        rule: format!(
            "every training prompt of every family up to {memory_cap} in all; above that each family keeps a seeded uniform sample (seed + 3) of its share, in proportion to its prompts"
        ),
    };
    Ok(Fitted { mlp, support, shrink, families: fitted, memory: memory_spec, early_stop_prompts, evidence, unobserved_prior })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{train, TrainConfig};

    fn dataset(n: usize, seed: u64) -> Dataset {
        let mut rng = crate::SplitMix64::new(seed);
        let x = Array2::from_shape_fn((n, 8), |_| rng.next_f64() as f32 - 0.5);
        let quality = Array2::from_shape_fn((n, 3), |(r, c)| if (x[[r, c]] > 0.0) ^ (c == 2) { 1.0 } else { 0.0 });
        let log_tokens = Array2::from_shape_fn((n, 3), |(r, _)| 3.0 + x[[r, 0]]);
        let mask = Array2::ones((n, 3));
        Dataset { x, quality, log_tokens, mask }
    }

    #[test]
    fn stacked_heads_average_member_logits_and_feed_only_their_columns() {
        let (fit, stop) = (dataset(120, 1), dataset(40, 2));
        let cfg = TrainConfig { hidden: 6, epochs: 5, ..Default::default() };
        let members: Vec<Mlp> = (0..2u64).map(|s| train(&fit, &stop, &TrainConfig { seed: s, ..cfg.clone() }).unwrap().0).collect();
        // Members over columns 0..3 at half share each, and a third head feeding column 1 only
        // of a 4-column output (column 3 has no head: a constant).
        let (all, one) = ([0usize, 1, 2], [1usize]);
        let single = train(&fit.select(&(0..120).collect::<Vec<_>>()), &stop, &cfg).unwrap().0;
        let single = Mlp::from_parts(
            single.w1().to_owned(),
            single.b1().to_owned(),
            single.wq().slice(s![.., 0..1]).to_owned(),
            single.bq().slice(s![0..1]).to_owned(),
            single.wt().slice(s![.., 0..1]).to_owned(),
            single.bt().slice(s![0..1]).to_owned(),
        )
        .unwrap();
        let parts: Vec<(&[usize], &Mlp, f32)> = vec![(&all, &members[0], 0.5), (&all, &members[1], 0.5), (&one, &single, 1.0)];
        let merged = stack(&parts, 8, 4).unwrap();
        assert_eq!(merged.hidden_dim(), 3 * 6);
        let (q, t) = merged.predict(fit.x.view());
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let (q0, t0) = members[0].predict(fit.x.view());
        let (q1, t1) = members[1].predict(fit.x.view());
        let (qs, _) = single.predict(fit.x.view());
        for r in 0..fit.n_rows() {
            for c in [0, 2] {
                let want = (logit(q0[[r, c]]) + logit(q1[[r, c]])) / 2.0;
                assert!((logit(q[[r, c]]) - want).abs() < 1e-3, "quality logit at ({r},{c})");
                let want_t = (t0[[r, c]].ln_1p() + t1[[r, c]].ln_1p()) / 2.0;
                assert!((t[[r, c]].ln_1p() - want_t).abs() < 1e-3, "log tokens at ({r},{c})");
            }
            // Column 1: the members' mean logit plus the third head's.
            let want = (logit(q0[[r, 1]]) + logit(q1[[r, 1]])) / 2.0 + logit(qs[[r, 0]]);
            assert!((logit(q[[r, 1]]) - want).abs() < 1e-3, "column 1 sums its heads at row {r}");
            assert_eq!(q[[r, 3]], 0.5, "a column without a head is the sigmoid of 0");
        }
    }
}
