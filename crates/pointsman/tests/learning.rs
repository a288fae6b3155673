//! Training on the real shared data with the real encoder: the exported ONNX head reproduces the
//! trainer's predictions, sparse logs train, and `pointsman train` works end to end.
mod cli_ux;
mod common;

use std::{io::Write, process::Command};

use common::{repo, shared_data, shipped_config, shipped_encoder};
use ndarray::{s, Array2, ArrayView2, Axis};
use pointsman::{
    learning::{
        baseline_metrics, evaluate, export_with_support,
        job::{embed_prompts, HeadMethod, TrainJob},
        read_logs, split_by_prompt, train, Dataset, LocalPrior, MemoryBlock, Mlp, RoutingLogs, Shrink, SplitMix64, Support, TrainConfig,
        DEFAULT_NEIGHBOURS,
    },
    predictor::{
        manifest::{Architecture, FamilyKind, FamilySpec, QualityPrior, Shrinkage},
        Head, HeadManifest,
    },
    runtime,
};

fn embed(logs: &RoutingLogs) -> Array2<f32> {
    let enc = shipped_encoder();
    let texts: Vec<&str> = logs.prompts.iter().map(|p| p.text.as_str()).collect();
    embed_prompts(&enc, &texts, true).unwrap()
}

fn max_diffs(mlp: &Mlp, head: &Head, x: ArrayView2<f32>) -> (f32, f32) {
    let (q_ref, t_ref) = mlp.predict(x);
    let out = head.predict(x).unwrap();
    let dq = q_ref.iter().zip(&out.quality).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let dt = t_ref.iter().zip(&out.output_tokens).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0.0, f32::max);
    (dq, dt)
}

/// Exports `mlp` (with the support index over `fit`) into `dir` with the shipped manifest
/// rewritten to describe it, and loads it through the serving path.
fn load_exported(mlp: &Mlp, head: FamilyKind, models: &[String], fit: &Dataset, dir: &std::path::Path) -> Head {
    let support = Support::new(fit.x.view(), fit.mask.view(), DEFAULT_NEIGHBOURS);
    let bytes = export_with_support(mlp, Some(&support), None, &[]);
    std::fs::write(dir.join("head.onnx"), &bytes).unwrap();
    let mut m = HeadManifest::parse(&std::fs::read_to_string(repo().join("models/router/manifest.json")).unwrap()).unwrap();
    let (n, units) = (models.len(), mlp.hidden_dim());
    m.graph_sha256 = pointsman::predictor::sha256_hex(&bytes);
    m.models = models.to_vec();
    let family = FamilySpec {
        files: vec![],
        models: models.to_vec(),
        first_unit: 0,
        units,
        head,
        quality_prior: QualityPrior::GlobalMean,
        predictor: "test".into(),
        tokens: "test".into(),
    };
    m.architecture = Architecture { hidden_units: units, families: vec![family], added: vec![] };
    m.shrinkage = Shrinkage { quality_weight: vec![1.0; n], token_weight: vec![1.0; n], local_prior: None };
    m.support = support.index();
    std::fs::write(dir.join("manifest.json"), m.to_json()).unwrap();
    Head::load(runtime::environment(None).unwrap(), dir).unwrap()
}

#[test]
fn exported_onnx_head_reproduces_trainer_predictions() {
    let logs = read_logs(&[shared_data().join("alpaca_eval2/train.jsonl.gz")], true).unwrap();
    let x = embed(&logs);
    let data = Dataset::from_logs(&logs, x.view()).unwrap();
    let (tr, va) = split_by_prompt(logs.prompts.len(), 0.2, 3);
    let cfg = TrainConfig { hidden: 64, epochs: 30, ..TrainConfig::default() };
    let (mlp, _) = train(&data.select(&tr), &data.select(&va), &cfg).unwrap();

    // Write it the way `pointsman train` does and load it through the serving path.
    let dir = tempfile::tempdir().unwrap();
    let mlp_kind = FamilyKind::MlpEnsemble { hidden: 64, members: 1, epochs_run: 30, best_epoch: 30 };
    let head = load_exported(&mlp, mlp_kind, &logs.models, &data.select(&tr), dir.path());

    for x in [x.view(), x.select(Axis(0), &va).view(), x.slice(s![5..6, ..])] {
        let (dq, dt) = max_diffs(&mlp, &head, x.view());
        assert!(dq <= 1e-5, "quality differs by {dq}");
        assert!(dt <= 1e-5, "tokens differ by {dt} (relative)");
    }

    // The factor head is exported through the same graph: it must reproduce its own predictions
    // too, and beat the per-model means on held-out prompts.
    let lowrank = pointsman::learning::lowrank::fit(&data.select(&tr), &Default::default()).unwrap().expect("alpaca_eval2 is dense");
    let lr_kind = FamilyKind::FactorHead {
        rank_quality: 2,
        rank_tokens: 4,
        ridge_quality: 3.0,
        ridge_tokens: 3.0,
        folds: 5,
        link_l2: 0.01,
        min_coverage: 0.95,
    };
    let lr_head = load_exported(&lowrank, lr_kind, &logs.models, &data.select(&tr), dir.path());
    let (dq, dt) = max_diffs(&lowrank, &lr_head, x.select(Axis(0), &va).view());
    assert!(dq <= 1e-5 && dt <= 1e-5, "factor head export differs: quality {dq}, tokens {dt}");
    let held = data.select(&va);
    let (m_lr, m_base) = (evaluate(&lowrank, &held, 0.1), baseline_metrics(&data.select(&tr), &held, 0.1));
    assert!(m_lr.quality_brier < m_base.quality_brier, "factor head Brier {} vs means {}", m_lr.quality_brier, m_base.quality_brier);
    assert!(
        m_lr.log_tokens_mae < m_base.log_tokens_mae,
        "factor head length error {} vs means {}",
        m_lr.log_tokens_mae,
        m_base.log_tokens_mae
    );

    // The full served graph: shrinkage and support outputs match their Rust definitions too.
    let fit = data.select(&tr);
    let mut shrink = Shrink::priors(&fit.quality, &fit.log_tokens, &fit.mask, 0.4);
    shrink.weight[0] = 0.9;
    // Half of the models get a local quality prior (their mean on the nearest training prompts,
    // a kNN with shrinkage), each with its own k and pseudo-count, from two memory blocks (as two
    // families' are exported); tokens get their own weight.
    let half: Vec<usize> = (0..logs.models.len()).step_by(2).collect();
    let rows = fit.n_rows();
    let blocks = vec![
        MemoryBlock { start: 0, end: rows / 2, models: half.iter().copied().step_by(2).collect() },
        MemoryBlock { start: rows / 2, end: rows, models: half.iter().copied().skip(1).step_by(2).collect() },
    ];
    let k: Vec<usize> = (0..logs.models.len()).map(|j| if j % 2 == 0 { 5 + 3 * j } else { 0 }).collect();
    let kappa: Vec<f32> = (0..logs.models.len()).map(|j| (j % 3) as f32 * 10.0).collect();
    // Some of them (models 0, 4, 8, ...) also take their output tokens from the neighbours: the
    // mean tokens, shrunk the same way.
    let tokens = fit.log_tokens.mapv(|z| (z.exp() - 1.0).max(0.0));
    let mean_tokens = pointsman::learning::knn::column_means(tokens.view(), fit.mask.view());
    let token_models: Vec<usize> = (0..logs.models.len()).step_by(4).collect();
    shrink.local =
        Some(LocalPrior::new(&fit.quality, &fit.mask, blocks.clone(), &k, &kappa).with_tokens(&tokens, &token_models, &mean_tokens));
    assert_eq!(shrink.local.as_ref().unwrap().token_models, token_models, "every one of them has neighbours");
    shrink.token_weight.fill(0.7);
    let support = Support::new(fit.x.view(), fit.mask.view(), DEFAULT_NEIGHBOURS);
    let bytes = export_with_support(&mlp, Some(&support), Some(&shrink), &[]);
    // It reads back as written (what `extend` starts from).
    let (_, _, back) = pointsman::learning::import(&bytes).unwrap();
    let mut back = back.unwrap();
    let (l, b) = (shrink.local.as_ref().unwrap(), back.local.as_mut().unwrap());
    assert!(l.mean_tokens.iter().zip(&b.mean_tokens).all(|(x, y)| (x - y).abs() <= 1e-4 * x.max(1.0)), "mean tokens read back");
    b.mean_tokens = l.mean_tokens.clone();
    assert_eq!((&back.local, &back.weight, &back.token_weight), (&shrink.local, &shrink.weight, &shrink.token_weight));
    assert!(back.prior_quality.iter().zip(&shrink.prior_quality).all(|(a, b)| (a - b).abs() < 1e-6));
    let mut session = pointsman::encoder::session_from_bytes(runtime::environment(None).unwrap(), &bytes, 1).unwrap();
    let xv = x.select(Axis(0), &va);
    let outputs = session.run(ort::inputs!["embeddings" => ort::value::TensorRef::from_array_view(&xv).unwrap()]).unwrap();
    let get = |name: &str| outputs[name].try_extract_array::<f32>().unwrap().to_owned();
    let (q_raw, t_raw) = mlp.predict(xv.view());
    let (q_ref, t_ref) = shrink.apply(Some(&support), xv.view(), &q_raw, &t_raw);
    // The local prior moves the models it covers (else this test would not test it).
    let (q_global, _) = Shrink { local: None, ..shrink.clone() }.apply(Some(&support), xv.view(), &q_raw, &t_raw);
    assert!(half.iter().any(|&j| q_ref.column(j).iter().zip(q_global.column(j)).any(|(a, b)| (a - b).abs() > 1e-3)));
    assert_eq!(q_ref.column(1), q_global.column(1));
    // ... and the kNN tokens move the tokens of theirs, and only theirs.
    let (_, t_head) = Shrink { local: Some(LocalPrior { token_models: vec![], ..shrink.local.clone().unwrap() }), ..shrink.clone() }.apply(
        Some(&support),
        xv.view(),
        &q_raw,
        &t_raw,
    );
    assert!(token_models.iter().all(|&j| t_ref.column(j).iter().zip(t_head.column(j)).any(|(a, b)| (a - b).abs() > 1.0)));
    assert_eq!(t_ref.column(1), t_head.column(1));
    let s_ref = support.compute(xv.view());
    let max_abs = |a: &ndarray::ArrayD<f32>, b: &Array2<f32>, rel: bool| {
        a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs() / if rel { y.abs().max(1.0) } else { 1.0 }).fold(0.0f32, f32::max)
    };
    assert!(max_abs(&get("quality"), &q_ref, false) <= 1e-5);
    assert!(max_abs(&get("output_tokens"), &t_ref, true) <= 1e-5);
    assert!(max_abs(&get("support"), &s_ref, true) <= 1e-4);
    assert!(outputs.get("family_support").is_none(), "one family: no family test");
    // Two families (each block holds its models): the support counts each model in its own
    // block, `family_support` is the prompt's nearness to the block, both as in Rust; the blocks
    // read back.
    let owned: Vec<MemoryBlock> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| MemoryBlock { models: (0..logs.models.len()).filter(|j| j % 2 == i).collect(), ..b.clone() })
        .collect();
    let blocked = Support::blocked(fit.x.view(), fit.mask.view(), DEFAULT_NEIGHBOURS, owned.clone());
    let bytes = export_with_support(&mlp, Some(&blocked), Some(&shrink), &[]);
    let (_, back, _) = pointsman::learning::import(&bytes).unwrap();
    assert_eq!(back.as_ref().unwrap().blocks, owned);
    assert_eq!(back.unwrap().index_with(Vec::new()), blocked.index_with(Vec::new()));
    let mut session = pointsman::encoder::session_from_bytes(runtime::environment(None).unwrap(), &bytes, 1).unwrap();
    let outputs = session.run(ort::inputs!["embeddings" => ort::value::TensorRef::from_array_view(&xv).unwrap()]).unwrap();
    let get = |name: &str| outputs[name].try_extract_array::<f32>().unwrap().to_owned();
    let (b_ref, f_ref) = (blocked.compute(xv.view()), blocked.compute_family(xv.view()));
    assert_ne!(b_ref, s_ref, "counting within blocks changes the support");
    assert!(max_abs(&get("support"), &b_ref, true) <= 1e-4);
    assert!(max_abs(&get("family_support"), &f_ref, false) <= 1e-5);
    // Held-out prompts of the same log are as near each block as its own prompts usually are.
    let q = blocked.family_quantiles();
    let median_chance = |j: usize, fam: &[f32]| {
        let d = pointsman::predictor::manifest::FamilyDomain { models: vec![j], similarity_quantiles: fam.to_vec() };
        let mut c: Vec<f64> = f_ref.column(j).iter().map(|&v| d.chance(v)).collect();
        c.sort_by(f64::total_cmp);
        c[c.len() / 2]
    };
    assert!(median_chance(0, &q[0]) > 0.1 && median_chance(1, &q[1]) > 0.1);
    assert!(
        (q_ref.column(1).mean().unwrap()
            - fit.quality.column(1).iter().zip(fit.mask.column(1)).filter(|(_, m)| **m > 0.0).map(|(q, _)| *q).sum::<f32>()
                / fit.mask.column(1).sum())
        .abs()
            < 0.2
    );
}

#[test]
fn sparse_logs_train_and_beat_the_per_model_mean() {
    let full = read_logs(&[shared_data().join("zeroeval/train.jsonl.gz")], true).unwrap();
    let x = embed(&full);
    let (tr, va) = split_by_prompt(full.prompts.len(), 0.2, 1);
    // Training prompts keep one random model each, as a gateway's logs would.
    let mut rng = SplitMix64::new(7);
    let train_set: std::collections::HashSet<usize> = tr.iter().copied().collect();
    let mut by_prompt: Vec<Vec<usize>> = vec![Vec::new(); full.prompts.len()];
    for (k, o) in full.observations.iter().enumerate() {
        by_prompt[o.prompt].push(k);
    }
    let mut kept = Vec::new();
    for (p, obs) in by_prompt.iter().enumerate() {
        if train_set.contains(&p) {
            kept.push(full.observations[obs[rng.next_below(obs.len())]]);
        } else {
            kept.extend(obs.iter().map(|&k| full.observations[k]));
        }
    }
    let logs = RoutingLogs { observations: kept, ..full.clone() };
    let data = Dataset::from_logs(&logs, x.view()).unwrap();
    let (train_data, val_data) = (data.select(&tr), data.select(&va));
    assert_eq!(train_data.n_observed(), tr.len(), "one observation per training prompt");
    let (mlp, report) = train(&train_data, &val_data, &TrainConfig::default()).unwrap();
    let (v, b) = (report.validation, report.baseline);
    assert!(v.quality_brier < b.quality_brier - 0.005, "Brier {} vs baseline {}", v.quality_brier, b.quality_brier);
    assert!(v.log_tokens_mae < b.log_tokens_mae, "log-token MAE {} vs baseline {}", v.log_tokens_mae, b.log_tokens_mae);
    let (q, t) = mlp.predict(x.view());
    assert!(q.iter().all(|v| (0.0..=1.0).contains(v)) && t.iter().all(|v| v.is_finite() && *v >= 0.0));
}

fn write_log(path: &std::path::Path, lines: &[String]) {
    let mut f = std::fs::File::create(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// The lines of the first `n` prompts of the shared alpaca_eval2 log (all their models).
fn first_alpaca_prompts(n: usize) -> Vec<String> {
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(shared_data().join("alpaca_eval2/train.jsonl.gz")).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let mut lines: Vec<String> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        ids.insert(v["prompt_id"].as_str().unwrap().to_string());
        if ids.len() > n {
            break;
        }
        lines.push(l.to_string());
    }
    lines
}

#[test]
fn train_command_writes_a_servable_head_and_reports_bad_lines() {
    // A small real log: the first 120 alpaca prompts, all their models.
    let lines = first_alpaca_prompts(120);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    write_log(&good, &lines);
    let mut bad_lines = lines.clone();
    bad_lines.insert(3, "{\"prompt_id\": \"x\", \"prompt\": \"p\", \"model\": \"m\", \"score\": 7.0, \"output_tokens\": 3}".into());
    bad_lines.insert(10, "not json".into());
    let bad = dir.path().join("bad.jsonl");
    write_log(&bad, &bad_lines);

    let bin = env!("CARGO_BIN_EXE_pointsman");
    let out = dir.path().join("head");
    let run = |data: &std::path::Path, strict: bool| {
        let mut c = Command::new(bin);
        c.env("XDG_CACHE_HOME", dir.path());
        c.args(["train", "--quiet", "--epochs", "20", "--name", "cli-test", "--data"]).arg(data).arg("--out").arg(&out);
        if strict {
            c.arg("--strict");
        }
        c.output().unwrap()
    };
    let strict = run(&bad, true);
    assert!(!strict.status.success());
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains("bad.jsonl:4"), "strict mode names file and line: {err}");

    let lenient = run(&bad, false);
    assert!(lenient.status.success(), "{}", String::from_utf8_lossy(&lenient.stderr));
    let stdout = String::from_utf8_lossy(&lenient.stdout);
    assert!(stdout.contains("2 malformed lines skipped"), "{stdout}");

    let ok = run(&good, false);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The manifest reads back through the one typed contract and says what the graph is.
    let manifest = HeadManifest::parse(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest.head_id.starts_with("cli-test-"));
    let family = &manifest.architecture.families[0];
    assert!(matches!(family.head, FamilyKind::FactorHead { .. }), "dense benchmark logs get the factor head: {:?}", family.head);
    // The factor head's units are its chosen ranks' (2 * (quality rank + token rank)), and the
    // selection lists every candidate with the winner among them.
    let FamilyKind::FactorHead { rank_quality, rank_tokens, .. } = family.head else { unreachable!() };
    assert_eq!((family.units, manifest.architecture.hidden_units), (2 * (rank_quality + rank_tokens), family.units));
    let chosen = &manifest.training.selection.families[0];
    assert!(chosen.candidates.iter().any(|c| c.name == chosen.winner) && chosen.winner == family.predictor, "{chosen:?}");
    assert_eq!((manifest.trained_on.prompts, manifest.encoder.dimension), (120, 384));
    // After choosing its predictor, `train` fits on every prompt it was given; the validation
    // figures are the winner's out-of-fold ones from the inner cross-validation.
    assert_eq!((manifest.trained_on.training_prompts, manifest.validation.prompts), (120, 0));
    assert_eq!(manifest.support.prompts, 120, "the support index holds every prompt");
    assert!(manifest.validation.head.quality_brier > 0.0 && manifest.validation.head.observed_pairs > 1000);
    assert!(manifest.validation.split.contains("out-of-fold"), "{}", manifest.validation.split);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("usable: ") && stdout.contains("fitted on all 120 prompts"), "{stdout}");
    let head = Head::load(runtime::environment(None).unwrap(), &out).unwrap();
    assert_eq!(head.models(), &manifest.models[..]);

    // Same seed, same data: the same head, byte for byte (the second run reads its embeddings
    // back from the on-disk cache, so this also checks the cache is exact).
    let cache = dir.path().join("pointsman/embeddings/all-MiniLM-L6-v2_int8.emb");
    let cached_bytes = std::fs::metadata(&cache).expect("embedding cache written").len();
    assert_eq!(cached_bytes % (32 + 4 * 384), 0);
    assert!(cached_bytes / (32 + 4 * 384) >= 120);
    let first = std::fs::read(out.join("head.onnx")).unwrap();
    assert!(run(&good, false).status.success());
    assert_eq!(first, std::fs::read(out.join("head.onnx")).unwrap(), "training is not reproducible");
    assert_eq!(std::fs::metadata(&cache).unwrap().len(), cached_bytes, "nothing new to cache on the second run");
}

#[test]
fn eval_command_reports_frontiers_on_held_out_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let data = shared_data().join("alpaca_eval2/train.jsonl.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_pointsman"))
        .env("XDG_CACHE_HOME", dir.path())
        .args(["eval", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let r = &reports[0];
    assert_eq!(r["file"], "alpaca_eval2/train.jsonl.gz");
    let prompts = r["prompts"].as_u64().unwrap();
    assert!(prompts >= 100, "held-out alpaca prompts: {prompts}");
    let (single, router, oracle) =
        (r["single_aiq"].as_f64().unwrap(), r["router"]["aiq"].as_f64().unwrap(), r["oracle"]["aiq"].as_f64().unwrap());
    assert!(oracle > single && oracle > router, "the oracle bounds everything: {single} {router} {oracle}");
    let gap = r["router_gap_closed"].as_f64().unwrap();
    assert!((gap - (router - single) / (oracle - single)).abs() < 1e-9);
    // The best single model's figures are its real mean score over the evaluated prompts.
    let best = r["best_single"].as_str().unwrap();
    let singles = r["single_models"].as_array().unwrap();
    let top = singles.iter().map(|s| s["quality"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(singles.iter().find(|s| s["model"] == best).unwrap()["quality"].as_f64().unwrap(), top);
    // Weight 0 of the oracle is the per-prompt best: at least the best single model.
    assert!(r["oracle"]["quality"][0].as_f64().unwrap() >= top);
    let svg = std::fs::read_to_string(dir.path().join("alpaca_eval2_train.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Pointsman") && svg.matches("<circle").count() == singles.len());
    // The honest baseline: a kNN with shrinkage whose (k, b) from the grid were chosen by
    // cross-validation on the head's training prompts of the file, scored like the router.
    let t = &r["tuned_knn"];
    let (k, b) = (t["k"].as_u64().unwrap() as usize, t["b"].as_f64().unwrap() as f32);
    assert!(pointsman::learning::knn::K_GRID.contains(&k) && pointsman::learning::knn::B_GRID.contains(&b), "{t}");
    let (gap, cv) = (t["gap_closed"].as_f64().unwrap(), t["cv_gap_closed"].as_f64().unwrap());
    assert!(gap.is_finite() && cv.is_finite() && gap < 1.0 && cv < 1.0, "{gap} {cv}");
    assert!((gap - (t["sweep"]["aiq"].as_f64().unwrap() - single) / (oracle - single)).abs() < 1e-9);
    let logs = read_logs(&[data], true).unwrap();
    let memory = t["memory_prompts"].as_u64().unwrap() as usize;
    assert!(memory >= 100 && memory + prompts as usize <= logs.prompts.len(), "memory {memory}: the file's prompts the head trained on");
    assert_eq!(t["choices"].as_array().unwrap().len(), 1);
    assert_eq!(t["choices"][0]["grid"].as_array().unwrap().len(), 36);
    assert!(r["tuned_knn_absent"].is_null() && r["knn"]["k"] == 25 && r["knn"]["gap_closed"].as_f64().unwrap().is_finite());
    // One verdict line per file, in the report and printed.
    let verdict = r["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("router ") && verdict.contains(&format!("vs tuned kNN {:.1}% (k {k}, b {b})", gap * 100.0)), "{verdict}");
    assert!(verdict.contains("the head is ahead by") || verdict.contains("the head is behind by") || verdict.contains("level"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("verdict: {verdict}")) && stdout.contains("tuned kNN (k "), "{stdout}");
    // What the full-matrix rule dropped: alpaca_eval2 has models without a catalog price.
    let c = &r["coverage"];
    assert_eq!(c["models_scored"].as_u64().unwrap() as usize, singles.len());
    assert_eq!(c["prompts_considered"].as_u64().unwrap() - c["prompts_dropped"].as_u64().unwrap(), prompts);
    assert!(!c["dropped_no_price"].as_array().unwrap().is_empty() && c["min_coverage"] == 0.95, "{c}");
    assert!(stdout.contains("coverage: scored ") && stdout.contains("no catalog price: "), "{stdout}");
    // Every policy can fall back to the cheapest single model: nothing below it counts as 0.
    let floor = singles.iter().map(|s| s["cost"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    assert_eq!(r["cost_range"][0].as_f64().unwrap(), floor);
}

#[test]
fn cross_validation_holds_out_every_prompt_once_and_pools_the_folds() {
    let dir = tempfile::tempdir().unwrap();
    let data = shared_data().join("alpaca_eval2/train.jsonl.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_pointsman"))
        .env("XDG_CACHE_HOME", dir.path())
        .args(["train", "--quiet", "--cv", "3", "--name", "cv", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("cv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logs = read_logs(&[data], true).unwrap();
    // The folds' held-out prompts partition the log: each prompt is held out by exactly one head.
    let mut held: Vec<String> = Vec::new();
    for f in 0..3 {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(format!("cv/fold-{f}/manifest.json"))).unwrap()).unwrap();
        held.extend(m["validation"]["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    }
    held.sort();
    let mut all: Vec<String> = logs.prompts.iter().map(|p| p.id.clone()).collect();
    all.sort();
    assert_eq!(held, all);
    // One pooled report over (nearly) all of them: the full matrix drops only prompts some
    // catalog model did not answer.
    let reports: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cv/report.json")).unwrap()).unwrap();
    let r = &reports[0];
    let prompts = r["prompts"].as_u64().unwrap() as usize;
    assert!(prompts > all.len() * 9 / 10 && prompts <= all.len(), "{prompts} of {} prompts evaluated", all.len());
    let (single, router, oracle) =
        (r["single_aiq"].as_f64().unwrap(), r["router"]["aiq"].as_f64().unwrap(), r["oracle"]["aiq"].as_f64().unwrap());
    assert!(oracle > single && oracle > router, "{single} {router} {oracle}");
    let below = &r["router_below_single_frontier"];
    assert!((0.0..=1.0).contains(&below["share_of_cost_range"].as_f64().unwrap()));
    // The tuned kNN is chosen per fold on that fold's training prompts of the file.
    let t = &r["tuned_knn"];
    let choices = t["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{t}");
    for c in choices {
        let (k, cv) = (c["k"].as_u64().unwrap() as usize, c["cv_gap_closed"].as_f64().unwrap());
        assert!(pointsman::learning::knn::K_GRID.contains(&k) && cv.is_finite(), "{c}");
        assert!(c["cv_prompts"].as_u64().unwrap() as usize <= all.len() * 2 / 3 + 1, "a fold's memory is its training prompts: {c}");
    }
    assert!(t["gap_closed"].as_f64().unwrap().is_finite() && r["verdict"].as_str().unwrap().contains("vs tuned kNN"));
    assert!(std::fs::read_to_string(dir.path().join("cv/alpaca_eval2_train.svg")).unwrap().starts_with("<svg"));
}

#[test]
fn tune_writes_a_profile_that_meets_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let models = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models");
    let text = std::fs::read_to_string(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/pointsman.toml"))
        .unwrap()
        .replace("\"../models/", &format!("\"{}/", models.display()));
    let cfg = dir.path().join("pointsman.toml");
    std::fs::write(&cfg, &text).unwrap();
    let data = shared_data().join("alpaca_eval2/train.jsonl.gz");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pointsman"))
            .arg("--config")
            .arg(&cfg)
            .arg("tune")
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    // The shipped head routes some alpaca prompts, live, to catalog models of its other families
    // that this file does not score: tune refuses, naming them, and writes nothing.
    let before = std::fs::read_to_string(&cfg).unwrap();
    let out = run(&["--name", "frugal", "--min-quality-share", "0.97", "--write"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the data does not score (") && err.contains("--max-outside-share"), "{err}");
    assert_eq!(before, std::fs::read_to_string(&cfg).unwrap());
    // Accepting that share knowingly, it writes the profile, says how much was unscored, and that
    // a reload applies it.
    let out = run(&["--name", "frugal", "--min-quality-share", "0.97", "--write", "--max-outside-share", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scored over the set Route uses: ") && text.contains("applies it on reload"), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "mean quality Q (S% of the best single model's B)": the share meets the target.
    let share: f64 = stdout.split("mean quality ").nth(1).unwrap().split('(').nth(1).unwrap().split('%').next().unwrap().parse().unwrap();
    assert!(share >= 97.0, "{stdout}");
    let written = pointsman::config::Config::load(&cfg).unwrap();
    let w = written.routing.profiles["frugal"];
    assert!((0.0..=1.0).contains(&w));
    assert_eq!(written.routing.profiles["balanced"], 0.5, "other profiles are kept");
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("# Cost weight in [0,1]"), "comments are kept");

    // An unreachable target is refused and the config is untouched.
    let before = std::fs::read_to_string(&cfg).unwrap();
    let out = run(&["--name", "impossible", "--min-quality-share", "1.4", "--write"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cost weight meets the target"));
    assert_eq!(before, std::fs::read_to_string(&cfg).unwrap());
}

#[test]
fn extend_adds_a_model_without_moving_the_others() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(shared_data().join("zeroeval/train.jsonl.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let new_model = "gpt-4o-mini-2024-07-18";
    let (mut base, mut new): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for l in text.lines() {
        if l.contains(&format!("\"model\": \"{new_model}\"")) {
            new.push(l.to_string())
        } else {
            base.push(l.to_string())
        }
    }
    assert!(new.len() > 1000);
    let (base_log, new_log) = (dir.path().join("base.jsonl"), dir.path().join("new.jsonl"));
    write_log(&base_log, &base);
    write_log(&new_log, &new[..1000]);
    let bin = env!("CARGO_BIN_EXE_pointsman");
    let (head, extended) = (dir.path().join("head"), dir.path().join("extended"));
    let ok = |c: &mut Command| {
        let o = c.env("XDG_CACHE_HOME", dir.path()).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    ok(Command::new(bin).args(["train", "--quiet", "--name", "base", "--data"]).arg(&base_log).arg("--out").arg(&head));
    // A config whose head is the base head.
    let models = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models");
    let cfg_text =
        std::fs::read_to_string(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/pointsman.toml"))
            .unwrap()
            .replace("\"../models/encoder\"", &format!("\"{}/encoder\"", models.display()))
            .replace("\"../models/router\"", &format!("\"{}\"", head.display()));
    let cfg = dir.path().join("cfg.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = ok(Command::new(bin).arg("--config").arg(&cfg).args(["extend", "--data"]).arg(&new_log).arg("--out").arg(&extended));
    // "held-out (N prompts) Brier B vs M for its mean, log-token MAE T vs U"
    let nums: Vec<f64> = out.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|t| t.parse().ok()).collect();
    let at = |after: &str| -> Vec<f64> {
        out.split(after).nth(1).unwrap().split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|t| t.parse().ok()).take(2).collect()
    };
    let (brier, tokens) = (at("Brier "), at("MAE "));
    assert!(brier[0] < brier[1], "new column Brier {} vs mean {} ({out})", brier[0], brier[1]);
    assert!(tokens[0] < tokens[1], "new column log-token MAE {} vs mean {}", tokens[0], tokens[1]);
    assert!(!nums.is_empty());

    let env = runtime::environment(None).unwrap();
    let (old, grown) = (Head::load(env, &head).unwrap(), Head::load(env, &extended).unwrap());
    assert_eq!(grown.models().len(), old.models().len() + 1);
    assert_eq!(grown.models().last().unwrap(), new_model);
    // The models the head already had predict as before, to float rounding: the grown graph's
    // wider matrix products may sum in another order (a few units in the last place seen).
    let enc = shipped_encoder();
    let probe = enc.embed_text("What is 17 * 23? Show your work.").unwrap();
    let x = ndarray::ArrayView2::from_shape((1, probe.len()), &probe).unwrap();
    let (a, b) = (old.predict(x).unwrap(), grown.predict(x).unwrap());
    let m = old.models().len();
    let same = |u: &[f32], v: &[f32]| u.len() == v.len() && u.iter().zip(v).all(|(p, q)| (p - q).abs() <= 1e-5 * p.abs().max(1.0));
    assert!(same(&a.quality[..], &b.quality[..m]), "{:?} vs {:?}", a.quality, &b.quality[..m]);
    assert!(same(&a.output_tokens[..], &b.output_tokens[..m]), "{:?} vs {:?}", a.output_tokens, &b.output_tokens[..m]);
    // The new model's prompts are a family of their own: near math prompts like the ones it was
    // labelled on it is in the head's domain, near chit-chat it is not.
    let families = &grown.manifest().support.families;
    assert_eq!(families.len(), 2, "the base head's family and the new model's");
    assert_eq!(families[1].models, vec![m]);
    let chance = |text: &str| {
        let e = enc.embed_text(text).unwrap();
        let out = grown.predict(ndarray::ArrayView2::from_shape((1, e.len()), &e).unwrap()).unwrap();
        grown.domain_chance(out.support.as_deref(), out.family_support.as_deref())[m]
    };
    // Prompts of its log it was not labelled on (the log's other models' lines): most are in.
    let text_of = |l: &String| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].as_str().unwrap().to_string();
    let mut seen: std::collections::HashSet<String> = new[..1000].iter().map(text_of).collect();
    let unlabelled: Vec<String> = base.iter().map(text_of).filter(|p| seen.insert(p.clone())).take(40).collect();
    assert_eq!(unlabelled.len(), 40);
    let inside = unlabelled.iter().filter(|p| chance(p) > 0.01).count();
    assert!(inside * 10 >= unlabelled.len() * 9, "{inside} of {} unlabelled prompts of its log in domain", unlabelled.len());
    assert!(chance("hey! what's a fun thing to do with friends on a rainy saturday afternoon?") < 0.01);
}

/// Copies the shipped head into a temporary folder, edits its manifest's JSON and returns the
/// error loading it through the serving path gives.
fn load_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let head = common::copy_head(dir.path());
    let path = head.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, m.to_string()).unwrap();
    match Head::load(runtime::environment(None).unwrap(), &head) {
        Ok(_) => panic!("the edited manifest loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_server_refuses_a_manifest_that_lacks_misnames_or_misdescribes_what_it_needs() {
    // The shipped head loads, and its manifest says what its graph is.
    let head = Head::load(runtime::environment(None).unwrap(), &repo().join("models/router")).unwrap();
    let m = head.manifest();
    assert_eq!(m.format, "pointsman-head/3");
    assert_eq!(m.architecture.hidden_units, m.architecture.families.iter().map(|f| f.units).sum::<usize>());
    // Each family has the head its selection needs: a factor head where a head predicts its
    // quality or tokens, none where the kNN serves both.
    for f in &m.architecture.families {
        let needs_head = !(f.predictor.starts_with("knn") && f.tokens.starts_with("knn"));
        assert_eq!(matches!(f.head, FamilyKind::FactorHead { .. }), needs_head, "{f:?}");
        assert_eq!(matches!(f.head, FamilyKind::None), !needs_head, "{f:?}");
    }
    assert!(m.architecture.families.iter().any(|f| matches!(f.head, FamilyKind::None)), "mmlu_pro's family is served by its kNN alone");
    // The support key renamed: before the typed manifest this silently switched the domain rule off.
    let e = load_error(|v| {
        let s = v.as_object_mut().unwrap().remove("support").unwrap();
        v["domain_support"] = s;
    });
    assert!(e.contains("unknown field `domain_support`") && e.contains("`support`"), "{e}");
    let e = load_error(|v| {
        v.as_object_mut().unwrap().remove("support");
    });
    assert!(e.contains("missing field `support`"), "{e}");
    let e = load_error(|v| {
        let k = v["support"].as_object_mut().unwrap().remove("neighbours").unwrap();
        v["support"]["k"] = k;
    });
    assert!(e.contains("unknown field `k`"), "{e}");
    // Keys that parse but do not describe the graph.
    let e = load_error(|v| v["support"]["neighbours"] = 16.into());
    assert!(e.contains("`support` says 16 neighbours") && e.contains("the graph has 32"), "{e}");
    let e = load_error(|v| v["architecture"]["hidden_units"] = 128.into());
    assert!(e.contains("`architecture.hidden_units` is 128"), "{e}");
    let e = load_error(|v| v["shrinkage"]["quality_weight"][0] = 0.5.into());
    assert!(e.contains("`shrinkage.quality_weight` differs from the graph's"), "{e}");
    // Another format is refused before anything else, with what to do about it.
    let e = load_error(|v| v["format"] = "pointsman-head/1".into());
    assert!(e.contains("`format` must be `pointsman-head/3`. Given: `pointsman-head/1`") && e.contains("retrain"), "{e}");
}

/// Writes `lines` (routing-log JSON) to `path` gzipped, with the score and output tokens of every
/// line whose prompt is in `changed` replaced.
fn write_with_changed_outcomes(path: &std::path::Path, lines: &[&str], changed: &std::collections::HashSet<String>) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    for l in lines {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        if changed.contains(v["prompt_id"].as_str().unwrap()) {
            let score = v["score"].as_f64().unwrap();
            v["score"] = (1.0 - score).into();
            v["output_tokens"] = (v["output_tokens"].as_u64().unwrap() * 7 + 3).into();
        }
        writeln!(w, "{v}").unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn held_out_prompts_never_touch_the_head() {
    use std::io::Read;
    // alpaca_eval2 as it is, and a copy whose held-out prompts have every outcome changed
    // (scores flipped, output tokens multiplied): the same training rows, other held-out rows.
    let data = shared_data().join("alpaca_eval2/train.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&data).unwrap()).read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let logs = read_logs(std::slice::from_ref(&data), true).unwrap();
    let (_, held) = split_by_prompt(logs.prompts.len(), 0.2, 11);
    let holdout: std::collections::HashSet<String> = held.iter().map(|&i| logs.prompts[i].id.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    // One path for both versions (the manifest names the file trained on).
    let log = dir.path().join("train.jsonl.gz");

    let config = shipped_config();
    let encoder = shipped_encoder();
    // Every training-time choice runs: the selection among kNN, factor heads and blends by an
    // inner cross-validation (auto), and the MLP alone with its early stopping.
    for method in [HeadMethod::Auto, HeadMethod::Mlp] {
        let run = |changed: &std::collections::HashSet<String>, out: &str| {
            write_with_changed_outcomes(&log, &lines, changed);
            let job = TrainJob {
                data: vec![log.clone()],
                out_dir: dir.path().join(format!("{method:?}-{out}")),
                val_fraction: 0.2,
                early_stop_fraction: 0.15,
                strict: true,
                name: "held-out".into(),
                train: TrainConfig { hidden: 16, epochs: 15, ..TrainConfig::default() },
                catalog: Some(config.catalog().unwrap()),
                cost_scale_usd: config.routing.cost_scale_usd,
                embedding_cache: Some(dir.path().join("cache")),
                ensemble: 2,
                method,
                mlp_candidate: false,
                memory_cap: pointsman::learning::job::DEFAULT_MEMORY_CAP,
                own_neighbours: false,
                holdout: Some(holdout.clone()),
            };
            let s = pointsman::learning::job::run(&job, &encoder, true).unwrap();
            (std::fs::read(job.out_dir.join("head.onnx")).unwrap(), s)
        };
        let ((graph_a, sa), (graph_b, sb)) = (run(&Default::default(), "a"), run(&holdout, "b"));
        let (ma, mb) = (&sa.manifest, &sb.manifest);
        // The held-out outcomes did change what the head is measured against...
        assert_ne!(ma.validation.baseline_per_model_mean, mb.validation.baseline_per_model_mean);
        assert_eq!(ma.validation.prompt_ids, mb.validation.prompt_ids);
        // ...and nothing the head is: every choice, and the graph byte for byte.
        assert_eq!(ma.training.selection, mb.training.selection, "{method:?}: the selection saw held-out prompts");
        assert_eq!((&ma.architecture, &ma.shrinkage, &ma.support), (&mb.architecture, &mb.shrinkage, &mb.support), "{method:?}");
        assert_eq!(ma.trained_on.training_observations_per_model, mb.trained_on.training_observations_per_model);
        assert!(graph_a == graph_b, "{method:?}: the graphs differ, so held-out prompts influenced the head");
        assert_eq!(ma.head_id, mb.head_id);
        let family = &ma.training.selection.families[0];
        assert_eq!(family.metric, "gap_closed", "{method:?}: alpaca_eval2 has a priced full matrix: {family:?}");
        let tried = |prefix: &str| family.candidates.iter().filter(|c| c.name.starts_with(prefix)).count();
        if method == HeadMethod::Mlp {
            assert_eq!((tried("mlp"), family.candidates.len()), (1, 1), "{family:?}");
        } else {
            // Every kNN of the grid, every factor rank, and three blends, each with a finite score.
            assert_eq!(tried("knn"), 36, "{family:?}");
            assert_eq!(tried("factor"), 4, "{family:?}");
            assert_eq!(tried("blend"), 3, "{family:?}");
            assert!(family.candidates.iter().all(|c| c.score.is_finite()), "{family:?}");
            assert!(family.candidates.iter().any(|c| c.name == family.winner), "{family:?}");
        }
    }
}

/// The shared alpaca_eval2 log's lines on the prompts every catalog-priced model of it answered,
/// and those models (sorted).
fn alpaca_priced_matrix() -> (Vec<serde_json::Value>, Vec<String>) {
    use std::io::Read;
    let catalog = shipped_config().catalog().unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(shared_data().join("alpaca_eval2/train.jsonl.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| catalog.get(v["model"].as_str().unwrap()).is_some())
        .collect();
    let mut models: Vec<String> = lines.iter().map(|v| v["model"].as_str().unwrap().to_string()).collect();
    models.sort();
    models.dedup();
    let mut per_prompt: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for v in &lines {
        *per_prompt.entry(v["prompt_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let lines = lines.into_iter().filter(|v| per_prompt[v["prompt_id"].as_str().unwrap()] == models.len()).collect();
    (lines, models)
}

/// One line per prompt: the model `pick` chooses (with its propensity) for each prompt, in order.
fn one_per_prompt(lines: &[serde_json::Value], mut pick: impl FnMut(&str) -> (String, f64)) -> Vec<String> {
    let mut out = Vec::new();
    let mut chosen: std::collections::HashMap<String, (String, f64)> = std::collections::HashMap::new();
    for v in lines {
        let id = v["prompt_id"].as_str().unwrap().to_string();
        let (m, p) = chosen.entry(id.clone()).or_insert_with(|| pick(&id)).clone();
        if v["model"] == m.as_str() {
            let mut v = v.clone();
            v["propensity"] = serde_json::json!(p);
            out.push(v.to_string());
        }
    }
    out
}

#[test]
fn an_exploration_log_keeps_every_model_routable_and_a_lucky_report_off_the_top() {
    // A deployed router's log: one model (the first priced one) on 90% of the prompts, a
    // uniformly random one on 10% (propensities logged), and one more model with a single
    // perfect report and nothing else.
    let (lines, models) = alpaca_priced_matrix();
    assert!(models.len() >= 4, "{models:?}");
    // The greedy model: the best on average (as a deployed router's favourite would be).
    let mean = |m: &str| {
        let s: Vec<f64> = lines.iter().filter(|v| v["model"] == m).map(|v| v["score"].as_f64().unwrap()).collect();
        s.iter().sum::<f64>() / s.len() as f64
    };
    let lucky = models[models.len() - 1].clone();
    let explored: Vec<String> = models[..models.len() - 1].to_vec();
    let greedy = explored.iter().max_by(|a, b| mean(a).total_cmp(&mean(b))).unwrap().clone();
    let m = explored.len() as f64;
    let mut rng = SplitMix64::new(23);
    let mut log = one_per_prompt(&lines, |_| {
        if rng.next_f64() < 0.1 {
            let e = explored[rng.next_below(explored.len())].clone();
            let p = 0.1 / m + if e == greedy { 0.9 } else { 0.0 };
            (e, p)
        } else {
            (greedy.clone(), 0.9 + 0.1 / m)
        }
    });
    let first_id = lines[0]["prompt_id"].as_str().unwrap();
    log.push(
        serde_json::json!({"prompt_id": first_id, "prompt": lines[0]["prompt"], "model": lucky, "score": 1.0, "output_tokens": 40, "task": "feedback"})
            .to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("explore.jsonl");
    write_log(&path, &log);
    let out_dir = dir.path().join("head");
    let out = Command::new(env!("CARGO_BIN_EXE_pointsman"))
        .env("XDG_CACHE_HOME", dir.path())
        .args(["train", "--quiet", "--ensemble", "1", "--epochs", "30", "--name", "explore", "--data"])
        .arg(&path)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The report says what each model's evidence was and what it got.
    assert!(stdout.contains(&format!("  {lucky}: 1 observations")) && stdout.contains("served its prior"), "{stdout}");
    assert!(stdout.contains(&format!("{} observations carried a propensity", log.len() - 1)), "{stdout}");
    let manifest = HeadManifest::parse(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap()).unwrap();
    let mut logged: Vec<String> =
        log.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["model"].as_str().unwrap().to_string()).collect();
    logged.sort();
    logged.dedup();
    assert_eq!(manifest.models, logged, "every logged model stays in the head");
    let selection = &manifest.training.selection.families[0];
    assert_eq!(selection.metric, "off_policy_aiq_over_single_models", "{selection:?}");
    // Served predictions: the lucky model is nobody's top pick at cost weight 0, and every model
    // is predicted (none collapses to 0).
    let head = Head::load(runtime::environment(None).unwrap(), &out_dir).unwrap();
    let logs = read_logs(&[path], true).unwrap();
    let x = embed(&logs);
    let pred = head.predict(x.view()).unwrap();
    let k = head.models().len();
    let lucky_col = head.models().iter().position(|id| *id == lucky).unwrap();
    let mut lucky_top = 0;
    let mut sums = vec![0f64; k];
    for r in 0..pred.rows {
        let row = &pred.quality[r * k..(r + 1) * k];
        assert!(row.iter().all(|q| q.is_finite() && (0.0..=1.0).contains(q)), "row {r}: {row:?}");
        for (s, &q) in sums.iter_mut().zip(row) {
            *s += f64::from(q);
        }
        let top = (0..k).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        lucky_top += usize::from(top == lucky_col);
    }
    assert!(lucky_top * 50 <= pred.rows, "a single report made {lucky} the top pick on {lucky_top} of {} prompts", pred.rows);
    // Below the evidence guard, the lucky model serves its prior alone: the same on every prompt.
    let first = pred.quality[lucky_col];
    assert!((0..pred.rows).all(|r| (pred.quality[r * k + lucky_col] - first).abs() < 1e-6), "{lucky}: no local estimate or head");
    assert!(sums[lucky_col] / (pred.rows as f64) < 0.9, "{lucky} is not served its one 1.0: {}", sums[lucky_col] / pred.rows as f64);
}

#[test]
fn eval_log_estimates_a_head_on_a_one_model_per_prompt_log_as_the_full_matrix_measures_it() {
    // The same prompts twice: the full matrix of priced models (every propensity 1: the
    // estimators are then exact), and one uniformly random model per prompt (propensity 1/M).
    let (lines, models) = alpaca_priced_matrix();
    let dir = tempfile::tempdir().unwrap();
    let full: Vec<String> = lines
        .iter()
        .map(|v| {
            let mut v = v.clone();
            v["propensity"] = serde_json::json!(1.0);
            v.to_string()
        })
        .collect();
    let mut rng = SplitMix64::new(5);
    let uniform = one_per_prompt(&lines, |_| (models[rng.next_below(models.len())].clone(), 1.0 / models.len() as f64));
    let (full_path, uniform_path) = (dir.path().join("full.jsonl"), dir.path().join("uniform.jsonl"));
    write_log(&full_path, &full);
    write_log(&uniform_path, &uniform);
    let run = |log: &std::path::Path, out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_pointsman"))
            .env("XDG_CACHE_HOME", dir.path())
            .args(["eval", "--quiet", "--cost-weight", "0.5", "--log"])
            .arg(log)
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("report.json")).unwrap()).unwrap();
        (r[0].clone(), String::from_utf8_lossy(&o.stdout).to_string())
    };
    let (truth, _) = run(&full_path, "full");
    let (est, stdout) = run(&uniform_path, "uniform");
    assert!(stdout.contains("DR [95%]") && stdout.contains("ESS"), "{stdout}");
    let head = &truth["heads"][0];
    let fig = |v: &serde_json::Value, what: &str, which: &str| {
        (v[what][which]["value"].as_f64().unwrap(), v[what][which]["standard_error"].as_f64().unwrap())
    };
    // On the full matrix the three estimators agree exactly (nothing is unobserved).
    let (q_true, c_true) = (fig(head, "quality", "dr").0, fig(head, "cost", "dr").0);
    let unlogged = head["unlogged_share"].as_f64().unwrap();
    if unlogged == 0.0 {
        assert!((fig(head, "quality", "ips").0 - q_true).abs() < 1e-9 && (fig(head, "quality", "snips").0 - q_true).abs() < 1e-9);
    }
    let e = &est["heads"][0];
    assert_eq!(e["policy"], head["policy"]);
    for which in ["snips", "dr"] {
        let (q, se) = fig(e, "quality", which);
        assert!(
            se > 0.0 && (q - q_true).abs() <= 2.58 * se + 0.02 + unlogged,
            "{which}: quality {q} ± {se} vs {q_true} (unlogged {unlogged})"
        );
        let (c, se) = fig(e, "cost", which);
        assert!((c - c_true).abs() <= 2.58 * se + 0.1 * c_true, "{which}: cost {c} ± {se} vs {c_true}");
    }
    let ess = e["quality"]["effective_sample_size"].as_f64().unwrap();
    assert!(ess > 10.0 && ess <= est["prompts"].as_f64().unwrap(), "{ess}");
    assert_eq!(est["logged_propensity_share"].as_f64().unwrap(), 1.0);
}
