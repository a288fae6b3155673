//! Command implementations behind the `pointsman` binary (argument parsing lives in `main.rs`).
use std::sync::Arc;

use serde_json::json;

use crate::{
    config::Config,
    encoder::Encoder,
    engine::Engine,
    learning::job::{self, TrainJob},
    pb, runtime,
    transport::convert,
};

/// What `eval` (and `tune`) score and how.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Neighbours of the kNN-k baseline router.
    pub knn_k: usize,
    /// Score the kNN baselines (`tune` needs only the router).
    pub baselines: bool,
    /// The head's training logs, as the kNN baselines' memory for logs the head never saw
    /// (`--all-prompts`); prompts of the evaluated file are left out of it.
    pub knn_memory: Vec<std::path::PathBuf>,
    /// Every prompt of each file (logs the head never saw) instead of the head's held-out prompts.
    pub all_prompts: bool,
    /// With `all_prompts`, score files the head was trained on too (their prompts were its training data).
    pub allow_training_prompts: bool,
    /// Folder of the prompt-embedding cache `train` uses; `None` embeds everything.
    pub embedding_cache: Option<std::path::PathBuf>,
    /// No progress lines on standard error.
    pub quiet: bool,
}

/// Evaluates the configured head on each log file: on the head's held-out prompts, or on every
/// prompt with `all_prompts` (for logs the head never saw; a file the manifest lists as trained
/// on is refused unless `allow_training_prompts`).
pub fn evaluate_all(
    config: &Config,
    data: &[std::path::PathBuf],
    options: &EvalOptions,
) -> anyhow::Result<Vec<crate::learning::eval::DatasetReport>> {
    use crate::learning::eval::{collect_logs, eval_prompts, report, EvalSettings};
    let settings = EvalSettings {
        out_of_domain_p: config.routing.out_of_domain_p,
        cost_scale: config.routing.cost_scale_usd,
        knn_k: options.knn_k,
        baselines: options.baselines,
        quiet: options.quiet,
    };
    let env = runtime::environment(config.runtime.onnxruntime.as_deref())?;
    let encoder = Encoder::load(env, &config.encoder)?;
    // The static encoder's embeddings go to the head trained on them.
    let head_dir = if encoder.is_static() { &config.head.static_dir } else { &config.head.dir };
    let head = crate::predictor::Head::load(env, head_dir)?;
    let catalog = config.catalog()?;
    let memory = if options.knn_memory.is_empty() || !options.baselines {
        None
    } else {
        let m = crate::learning::read_logs(&options.knn_memory, false)?;
        if !options.quiet {
            eprintln!("kNN memory: {} prompts, {} models from {} file(s)", m.prompts.len(), m.models.len(), options.knn_memory.len());
        }
        Some(m)
    };
    let mut reports = Vec::new();
    for f in data {
        let logs = crate::learning::read_logs(std::slice::from_ref(f), false)?;
        let prompts = eval_prompts(head.manifest(), f, &logs, options.all_prompts, options.allow_training_prompts)?;
        if !options.quiet {
            let scored = if options.all_prompts {
                "all of them".to_string()
            } else {
                let held: std::collections::HashSet<&str> = prompts.iter().map(String::as_str).collect();
                format!("the {} the head held out", logs.prompts.iter().filter(|p| held.contains(p.id.as_str())).count())
            };
            eprintln!("{}: {} prompts, {} models; evaluating on {scored}", f.display(), logs.prompts.len(), logs.models.len());
        }
        let outcomes =
            collect_logs(f, &logs, memory.as_ref(), &encoder, &head, &catalog, &prompts, settings, options.embedding_cache.as_deref())?;
        reports.push(report(&outcomes, settings.cost_scale));
    }
    Ok(reports)
}

/// Evaluates, prints, and with `out` writes `report.json` and one SVG plot per file there.
pub fn eval(config: &Config, data: &[std::path::PathBuf], out: Option<&std::path::Path>, options: &EvalOptions) -> anyhow::Result<()> {
    write_reports(&evaluate_all(config, data, options)?, out)
}

/// `eval --log`: estimates the configured head (and each of `candidates`) on each logged file,
/// off-policy, prints the estimates, and with `out` writes them to `report.json` there.
pub fn eval_log(
    config: &Config,
    logs: &[std::path::PathBuf],
    candidates: &[std::path::PathBuf],
    cost_weight: Option<f64>,
    out: Option<&std::path::Path>,
    options: &EvalOptions,
) -> anyhow::Result<Vec<crate::learning::eval::log_value::LogReport>> {
    let env = runtime::environment(config.runtime.onnxruntime.as_deref())?;
    let encoder = Encoder::load(env, &config.encoder)?;
    let catalog = config.catalog()?;
    let mut heads = vec![crate::predictor::Head::load(env, &config.head.dir)?];
    for c in candidates {
        heads.push(crate::predictor::Head::load(env, c)?);
    }
    let refs: Vec<&crate::predictor::Head> = heads.iter().collect();
    let w =
        match cost_weight {
            Some(w) => w,
            None => *config.routing.profiles.get(&config.routing.default_profile).ok_or_else(|| {
                anyhow::anyhow!("routing.default_profile `{}` is not in routing.profiles", config.routing.default_profile)
            })?,
        };
    let mut reports = Vec::new();
    for f in logs {
        let read = crate::learning::read_logs(std::slice::from_ref(f), false)?;
        let r = crate::learning::eval::log_value::evaluate_log(
            f,
            &read,
            &refs,
            &encoder,
            &catalog,
            w,
            config.routing.out_of_domain_p,
            config.routing.cost_scale_usd,
            options.embedding_cache.as_deref(),
            options.quiet,
        )?;
        println!(
            "{}: {} prompts, {} outcomes ({:.0}% with a logged propensity{}); cost weight {w}",
            r.file,
            r.prompts,
            r.observations,
            r.logged_propensity_share * 100.0,
            if r.logged_propensity_share < 1.0 { "; the others weighted by their model's share of the log" } else { "" }
        );
        println!(
            "  {:<28} {:>24} {:>24} {:>24} {:>26} {:>8} {:>8} {:>9}",
            "policy", "quality IPS [95%]", "SNIPS [95%]", "DR [95%]", "cost $/req DR [95%]", "ESS", "matched", "unlogged"
        );
        let fig = |f: crate::learning::offpolicy::Figure, d: usize| {
            let (lo, hi) = f.interval();
            format!("{:.d$} [{:.d$}, {:.d$}]", f.value, lo, hi)
        };
        for v in std::iter::once(&r.logged).chain(&r.heads) {
            println!(
                "  {:<28} {:>24} {:>24} {:>24} {:>26} {:>8.0} {:>8} {:>8.1}%",
                v.policy,
                fig(v.quality.ips, 3),
                fig(v.quality.snips, 3),
                fig(v.quality.dr, 3),
                fig(v.cost.dr, 6),
                v.quality.effective_sample_size,
                v.quality.matched,
                v.unlogged_share * 100.0
            );
        }
        reports.push(r);
    }
    if let Some(out) = out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&reports)?)?;
        println!("wrote {}", out.join("report.json").display());
    }
    Ok(reports)
}

/// Prints each report's figures and, with `out`, writes `report.json` and one SVG plot per file there.
fn write_reports(reports: &[crate::learning::eval::DatasetReport], out: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(out) = out {
        std::fs::create_dir_all(out)?;
    }
    for r in reports {
        let plot =
            out.map(|o| o.join(format!("{}.svg", r.file.trim_end_matches(".gz").trim_end_matches(".jsonl").replace(['/', '.'], "_"))));
        if let Some(plot) = &plot {
            std::fs::write(plot, crate::learning::eval::svg(r))?;
        }
        print_table(r);
        let best = r.single_models.iter().find(|s| s.model == r.best_single).expect("best is a single model. This is a bug.");
        let below = r.router_below_single_frontier;
        println!(
            "  best single {} (quality {:.3}, ${:.6}/request); router at that cost: {:.3}; router reaches its quality {}; below the single-model frontier on {:.0}% of the cost range{}; mean calibration error {:.3}; plot {}",
            best.model, best.quality, best.cost, r.router_quality_at_best_single_cost,
            r.router_cost_share_to_match_best_single.map_or("at no cost it sweeps".to_string(), |s| format!("at {:.0}% of its cost", s * 100.0)),
            below.share_of_cost_range * 100.0,
            if below.share_of_cost_range > 0.0 { format!(" (at most {:.3} quality, at ${:.6})", below.max_quality, below.at_cost) } else { String::new() },
            r.mean_calibration_error, plot.as_ref().map_or("not written (no --out)".to_string(), |p| p.display().to_string())
        );
        println!("  coverage: {}", r.coverage.describe());
    }
    if let Some(out) = out {
        std::fs::write(out.join("report.json"), serde_json::to_string_pretty(reports)?)?;
        println!("wrote {}", out.join("report.json").display());
    }
    Ok(())
}

/// One report's policies as a table: AIQ and gap closed of the single models, the router, the
/// kNN baselines (or why they are absent) and the oracle, then the verdict.
fn print_table(r: &crate::learning::eval::DatasetReport) {
    println!("{}: {} prompts x {} models", r.file, r.prompts, r.single_models.len());
    println!("  {:<40} {:>7} {:>11}", "policy", "AIQ", "gap closed");
    let row = |name: &str, aiq: f64, gap: f64, note: &str| println!("  {name:<40} {aiq:>7.4} {:>10.1}%{note}", gap * 100.0);
    row("single models", r.single_aiq, 0.0, "");
    row("router (the head)", r.router.aiq, r.router_gap_closed, "");
    match (&r.tuned_knn, &r.tuned_knn_absent) {
        (Some(t), _) => row(
            &format!("tuned kNN (k {}, b {})", t.k, t.b),
            t.sweep.aiq,
            t.gap_closed,
            &format!("   {:.1}% by {}-fold CV on its {} memory prompts", t.cv_gap_closed * 100.0, t.cv_folds, t.memory_prompts),
        ),
        (None, why) => println!("  {:<40} {:>7} {:>11}   {}", "tuned kNN", "-", "-", why.as_deref().unwrap_or("absent")),
    }
    match (&r.knn, &r.knn_absent) {
        (Some(k), _) => row(&format!("kNN-{} (no shrinkage)", k.k), k.sweep.aiq, k.gap_closed, ""),
        (None, why) => println!("  {:<40} {:>7} {:>11}   {}", "kNN-k", "-", "-", why.as_deref().unwrap_or("absent")),
    }
    row("oracle", r.oracle.aiq, 1.0, "");
    println!("  verdict: {}", r.verdict);
}

/// K-fold cross-validation of a training job: every prompt is held out exactly once. Trains one
/// head per fold (written to `<out>/fold-<i>/`), evaluates each on its fold as `eval` does, and
/// pools the folds per log file, so the figures cover every prompt of the logs instead of one
/// validation split (`<out>/report.json` and plots). Log files without a full matrix are trained
/// on but not evaluated.
pub fn cross_validate(config: &Config, job: &TrainJob, folds: usize, knn_k: usize, quiet: bool) -> anyhow::Result<()> {
    use crate::learning::eval::{collect_file, pool, report, EvalSettings};
    anyhow::ensure!((2..=20).contains(&folds), "--cv must be in 2..=20 folds. Given: {folds}");
    let env = runtime::environment(config.runtime.onnxruntime.as_deref())?;
    let encoder = Encoder::load(env, &config.encoder)?;
    let catalog = config.catalog()?;
    let settings = EvalSettings {
        out_of_domain_p: config.routing.out_of_domain_p,
        cost_scale: config.routing.cost_scale_usd,
        knn_k,
        baselines: true,
        quiet: true,
    };
    let logs = crate::learning::read_logs(&job.data, job.strict)?;
    let fold_of = crate::learning::folds(logs.prompts.len(), folds, job.train.seed);
    let mut parts: Vec<Vec<crate::learning::eval::FileOutcomes>> = (0..job.data.len()).map(|_| Vec::new()).collect();
    let mut skipped: Vec<String> = Vec::new();
    for f in 0..folds {
        let ids: std::collections::HashSet<String> =
            logs.prompts.iter().zip(&fold_of).filter(|(_, &k)| k == f).map(|(p, _)| p.id.clone()).collect();
        let fold_job = TrainJob {
            out_dir: job.out_dir.join(format!("fold-{f}")),
            holdout: Some(ids.clone()),
            catalog: Some(catalog.clone()),
            cost_scale_usd: config.routing.cost_scale_usd,
            ..job.clone()
        };
        let s = job::run(&fold_job, &encoder, true)?;
        let head = crate::predictor::Head::load(env, &fold_job.out_dir)?;
        let ids: Vec<String> = ids.into_iter().collect();
        for (i, file) in job.data.iter().enumerate() {
            match collect_file(file, &encoder, &head, &catalog, &ids, settings, job.embedding_cache.as_deref()) {
                Ok(o) => parts[i].push(o),
                Err(crate::learning::eval::EvalError::Data { file, message }) => skipped.push(format!("fold {f}, {file}: {message}")),
                Err(e) => return Err(e.into()),
            }
        }
        if !quiet {
            eprintln!(
                "fold {}/{folds}: {} held-out prompts; quality MAE {:.4} (per-model mean {:.4}); head in {}",
                f + 1,
                s.manifest.validation.prompts,
                s.validation.quality_mae,
                s.baseline.quality_mae,
                fold_job.out_dir.display()
            );
        }
    }
    for m in &skipped {
        println!("not evaluated: {m}");
    }
    // A file is reported only when every fold could be evaluated: a partial pool is not a cross-validation.
    let reports: Vec<_> =
        parts.into_iter().filter(|p| p.len() == folds).filter_map(pool).map(|o| report(&o, settings.cost_scale)).collect();
    anyhow::ensure!(
        !reports.is_empty(),
        "no log file could be evaluated in every fold (a file needs a full matrix of >= 2 catalog models on >= 20 prompts per fold)"
    );
    write_reports(&reports, Some(&job.out_dir))
}

/// Chooses a cost weight for `target`, prints what it delivers, and with `write` sets it as
/// profile `name` in the config file at `config_path`. `options` says which prompts to score, as for `eval`.
pub fn tune(
    config: &Config,
    config_path: &std::path::Path,
    data: &[std::path::PathBuf],
    target: crate::learning::tune::Target,
    name: &str,
    write: bool,
    options: &EvalOptions,
) -> anyhow::Result<crate::learning::tune::Choice> {
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "--name must be letters, digits, '_' or '-'. Given: {name:?}"
    );
    anyhow::ensure!(
        target.max_avg_cost.is_some() || target.min_quality_share.is_some() || target.max_top_share.is_some(),
        "give at least one target: --max-avg-cost, --min-quality-share or --max-top-share"
    );
    let reports = evaluate_all(config, data, options)?;
    let c = crate::learning::tune::choose(&reports, target)?;
    println!(
        "profile {name}: cost_weight = {:.6}\n  expected on {} validation prompts: mean quality {:.4} ({:.1}% of the best single model's {:.4}), mean cost ${:.6}/request ({:.0}% of its ${:.6}), {:.1}% of requests to the most expensive model",
        c.cost_weight, c.prompts, c.quality, c.quality / c.best_single_quality.max(1e-12) * 100.0, c.best_single_quality,
        c.cost, c.cost / c.best_single_cost.max(1e-12) * 100.0, c.best_single_cost, c.top_share * 100.0
    );
    println!(
        "  scored over the set Route uses: {:.1}% of these prompts would go to catalog models the data does not score (at most {:.0}% allowed); margin {:.0}% kept",
        c.outside_share * 100.0,
        target.max_outside_share * 100.0,
        target.margin * 100.0
    );
    if write {
        let text = std::fs::read_to_string(config_path)?;
        let updated = crate::learning::tune::set_profile(&text, name, c.cost_weight);
        let tmp = config_path.with_extension("toml.partial");
        std::fs::write(&tmp, &updated)?;
        // Refuse to leave a config that no longer loads.
        Config::load(&tmp).map_err(|e| anyhow::anyhow!("the updated config would not load ({e}); left unchanged"))?;
        std::fs::rename(&tmp, config_path)?;
        println!(
            "wrote profile `{name}` to {}; a running server applies it on reload (SIGHUP, Admin.Reload, or the file watcher when `[reload] watch_interval_seconds` > 0)",
            config_path.display()
        );
    } else {
        println!("not written (pass --write to set it in {}; a running server then applies it on reload)", config_path.display());
    }
    Ok(c)
}

/// Adds models to the head and prints each one's held-out accuracy.
pub fn extend(config: &Config, job: &crate::learning::extend::ExtendJob) -> anyhow::Result<()> {
    let env = runtime::environment(config.runtime.onnxruntime.as_deref())?;
    let encoder = Encoder::load(env, &config.encoder)?;
    let (manifest, added) = crate::learning::extend::run(job, &encoder, true)?;
    for a in &added {
        println!(
            "added {}: {} labelled prompts; held-out ({} prompts) Brier {:.4} vs {:.4} for its mean, log-token MAE {:.3} vs {:.3}",
            a.model, a.labels, a.validation_prompts, a.brier, a.baseline_brier, a.log_tokens_mae, a.baseline_log_tokens_mae
        );
    }
    println!(
        "wrote {}/head.onnx and manifest.json: head {} for {} models; add the new models to the catalog to route to them",
        job.out_dir.display(),
        manifest.head_id,
        manifest.models.len()
    );
    Ok(())
}

/// Trains a head with the configured encoder and prints a summary.
pub fn train(config: &Config, job: &TrainJob, quiet: bool) -> anyhow::Result<()> {
    let env = runtime::environment(config.runtime.onnxruntime.as_deref())?;
    let encoder = Encoder::load(env, &config.encoder)?;
    let job = TrainJob { catalog: Some(config.catalog()?), cost_scale_usd: config.routing.cost_scale_usd, ..job.clone() };
    let job = &job;
    let s = job::run(job, &encoder, quiet)?;
    let m = &s.manifest;
    let missing: Vec<&str> =
        m.models.iter().filter(|id| config.catalog().map(|c| c.get(id).is_none()).unwrap_or(true)).map(String::as_str).collect();
    if !missing.is_empty() {
        println!(
            "{} of the {} models in the logs are not in the catalog (the head predicts them, but they are never routed to until the catalog lists them): {}",
            missing.len(),
            m.models.len(),
            missing.join(", ")
        );
    }
    println!(
        "wrote {}/head.onnx and manifest.json: head {} for {} models on {}",
        job.out_dir.display(),
        m.head_id,
        m.models.len(),
        m.encoder.id
    );
    println!("embedding {:.1}s, training {:.1}s; {} malformed lines skipped", s.embed_seconds, s.train_seconds, s.skipped_lines);
    for p in s.problems.iter().take(5) {
        println!("  log problem: {p}");
    }
    for line in job::evidence_report(&s.evidence, s.unobserved_prior, s.observations, s.with_propensity, s.skipped_lines) {
        println!("{line}");
    }
    let figures = if m.validation.prompts == 0 {
        format!("fitted on all {} prompts; inner cross-validated (out of fold)", m.trained_on.training_prompts)
    } else {
        format!("held-out ({} prompts)", m.validation.prompts)
    };
    println!(
        "{figures}: quality MAE {:.4} vs {:.4} per-model mean; Brier {:.4} vs {:.4}; median token error {:.0} vs {:.0}",
        s.validation.quality_mae,
        s.baseline.quality_mae,
        s.validation.quality_brier,
        s.baseline.quality_brier,
        s.validation.tokens_median_abs_error,
        s.baseline.tokens_median_abs_error
    );
    Ok(())
}

/// How `report` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportOptions {
    /// JSON instead of text.
    pub json: bool,
    /// Decisions sampled for the prompt clusters (0 skips them).
    pub cluster_sample: usize,
}

/// Prints the report of `window` from the decision log at `db` (a SQLite file or a
/// `postgres://` URL), with the config's catalog, encoder and `[health]` settings. Blocking (the
/// PostgreSQL reader drives a runtime of its own: call it off the async runtime).
pub fn report(config: &Config, db: &std::path::Path, window: crate::report::Window, options: &ReportOptions) -> anyhow::Result<()> {
    let catalog = config.catalog()?;
    // The encoder only for the clusters; without it they are skipped with a note.
    let encoder = (options.cluster_sample > 0)
        .then(|| runtime::environment(config.runtime.onnxruntime.as_deref()).map_err(|e| e.to_string()))
        .map(|env| env.and_then(|env| Encoder::load(env, &config.encoder).map_err(|e| e.to_string())));
    let encoder = match encoder {
        Some(Ok(e)) => Some(e),
        Some(Err(e)) => {
            eprintln!("report: no encoder for the prompt clusters ({e}); they are skipped");
            None
        }
        None => None,
    };
    let embed = |texts: &[String]| -> Result<Vec<Vec<f32>>, String> {
        let e = encoder.as_ref().ok_or("no encoder")?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        e.embed_many(&refs, &|_| {}).map_err(|e| e.to_string())
    };
    let opts = crate::report::Options {
        catalog: Some(&catalog),
        health: config.health.clone(),
        embed: encoder.as_ref().map(|_| &embed as crate::report::Embedder<'_>),
        encoder_id: encoder.as_ref().map(|e| e.id().to_string()),
        cluster_sample: options.cluster_sample,
        baseline_choice: Some(config.savings.describe()),
        ..crate::report::Options::default()
    };
    let r = crate::report::build(db, window, &opts)?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", crate::report::text(&r));
    }
    Ok(())
}

/// Writes the decision log's labelled feedback in `scope` (verified reports only, unless
/// `--unverified-feedback`) as routing-log lines (`-` = standard output; gzip when `out` ends in
/// `.gz`) and prints a summary on standard error.
pub fn export_logs(db: &std::path::Path, out: &std::path::Path, scope: crate::logs::store::FeedbackScope) -> anyhow::Result<()> {
    use std::io::Write;
    let (lines, skips) = crate::logs::read_training_lines(db, scope)?;
    let (decisions, feedback) = crate::logs::read_counts(db)?;
    let mut w: Box<dyn Write> = if out.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::io::BufWriter::new(std::fs::File::create(out).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?);
        if out.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::write::GzEncoder::new(f, flate2::Compression::default()))
        } else {
            Box::new(f)
        }
    };
    for l in &lines {
        serde_json::to_writer(&mut w, l)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    drop(w);
    eprintln!(
        "{}: {decisions} decisions, {feedback} feedback reports -> {} training lines; skipped: {} without a decision in this log, {} on a model not offered for the request and {} not verified (repeats, or unknown to the replica that logged them; --unverified-feedback takes both), {} without a quality label (availability outcomes, unrated successes), {} without output_tokens",
        crate::logs::postgres::source_name(db),
        lines.len(),
        skips.no_decision,
        skips.not_offered,
        skips.unverified,
        skips.no_quality,
        skips.no_output_tokens
    );
    Ok(())
}

/// Routes one request in-process and prints the ranking as a table or JSON.
pub async fn route(config: Config, request: pb::RouteRequest, as_json: bool) -> anyhow::Result<()> {
    let server = config.server.clone();
    let engine = Arc::new(tokio::task::spawn_blocking(move || Engine::load(config.engine_config())).await??);
    let explain = request.explain;
    let query = convert::route_query(request, &server).map_err(|e| anyhow::anyhow!("invalid request: {e}"))?;
    let decision = engine.route(query).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let resp = convert::route_response(&engine, decision, explain, None);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&response_json(&resp))?);
    } else {
        print!("{}", response_table(&resp));
    }
    Ok(())
}

fn candidate_json(c: &pb::Candidate) -> serde_json::Value {
    json!({
        "model": c.model,
        "provider": c.provider,
        "predicted_quality": c.predicted_quality,
        "predicted_output_tokens": c.predicted_output_tokens,
        "predicted_cost_usd": c.predicted_cost_usd,
        "predicted_latency_ms": c.predicted_latency_ms,
        "utility": c.utility,
        "endpoints": c.endpoints.iter().map(|e| json!({
            "provider": e.provider,
            "input_usd_per_mtok": e.input_usd_per_mtok,
            "output_usd_per_mtok": e.output_usd_per_mtok,
            "quantization": e.quantization,
            "predicted_cost_usd": e.predicted_cost_usd,
            "predicted_latency_ms": e.predicted_latency_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The response as JSON (the same field names as the proto).
pub fn response_json(r: &pb::RouteResponse) -> serde_json::Value {
    let t = r.timings.unwrap_or_default();
    json!({
        "request_id": r.request_id,
        "router_version": r.router_version,
        "profile": r.profile,
        "cost_weight": r.cost_weight,
        "input_tokens": r.input_tokens,
        "candidates": r.candidates.iter().map(candidate_json).collect::<Vec<_>>(),
        "attempts": r.attempts.iter().map(|a| json!({"model": a.model, "provider": a.provider})).collect::<Vec<_>>(),
        "timings": {
            "prepare_us": t.prepare_us, "encode_us": t.encode_us, "predict_us": t.predict_us,
            "rank_us": t.rank_us, "total_us": t.total_us, "cache_hit": t.cache_hit,
        },
        "explanations": r.explanations.iter().map(|e| json!({
            "candidate": e.candidate.as_ref().map(candidate_json),
            "rank": e.rank,
            "reason": pb::ExclusionReason::try_from(e.reason).map(|r| r.as_str_name()).unwrap_or("UNKNOWN"),
            "kept_despite": pb::ExclusionReason::try_from(e.kept_despite).map(|r| r.as_str_name()).unwrap_or("UNKNOWN"),
            "detail": e.detail,
            "endpoints": e.endpoints.iter().map(|x| json!({
                "provider": x.endpoint.as_ref().map(|e| e.provider.clone()).unwrap_or_default(),
                "rank": x.rank,
                "reason": pb::ExclusionReason::try_from(x.reason).map(|r| r.as_str_name()).unwrap_or("UNKNOWN"),
                "detail": x.detail,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The response as a table for people.
pub fn response_table(r: &pb::RouteResponse) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let weight = if r.profile.is_empty() {
        format!("cost_weight {}", r.cost_weight)
    } else {
        format!("profile {} (cost_weight {})", r.profile, r.cost_weight)
    };
    let _ = writeln!(s, "request {}  router {}  {weight}  input tokens {}", r.request_id, r.router_version, r.input_tokens);
    let _ = writeln!(
        s,
        "{:<4} {:<44} {:<12} {:>8} {:>8} {:>11} {:>9} {:>8}",
        "rank", "model", "provider", "quality", "tokens", "cost_usd", "latency", "utility"
    );
    for (i, c) in r.candidates.iter().enumerate() {
        let label = if i == 0 { "1*".to_string() } else { (i + 1).to_string() };
        let _ = writeln!(
            s,
            "{label:<4} {:<44} {:<12} {:>8.3} {:>8} {:>11.6} {:>7.0}ms {:>8.3}",
            c.model, c.provider, c.predicted_quality, c.predicted_output_tokens, c.predicted_cost_usd, c.predicted_latency_ms, c.utility
        );
    }
    if r.attempts.len() > r.candidates.len() {
        let order: Vec<String> = r.attempts.iter().map(|a| format!("{}@{}", a.model, a.provider)).collect();
        let _ = writeln!(s, "attempts: {}", order.join(", "));
    }
    if !r.explanations.is_empty() {
        let _ = writeln!(s, "\nall catalog models:");
        for e in &r.explanations {
            let c = e.candidate.clone().unwrap_or_default();
            let rank = if e.rank == 0 { "-".to_string() } else { e.rank.to_string() };
            let _ = writeln!(s, "{rank:>4} {:<44} q={:.3} cost=${:.6}  {}", c.model, c.predicted_quality, c.predicted_cost_usd, e.detail);
            if e.endpoints.len() > 1 {
                for x in &e.endpoints {
                    let provider = x.endpoint.as_ref().map_or("", |e| e.provider.as_str());
                    let _ = writeln!(s, "       @{provider:<12} {}", x.detail);
                }
            }
        }
    }
    if let Some(t) = r.timings {
        let _ = writeln!(
            s,
            "timings: total {} us (encode {} us, predict {} us, rank {} us, cache hit {})",
            t.total_us, t.encode_us, t.predict_us, t.rank_us, t.cache_hit
        );
    }
    s
}
