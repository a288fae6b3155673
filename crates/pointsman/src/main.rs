//! The `pointsman` binary: parse arguments, start logging, call the library.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pointsman::{
    config::{self, Config, EncoderVariant},
    learning::{job::TrainJob, TrainConfig},
    logs::store::FeedbackScope,
    pb,
};

/// Pointsman: a learned LLM router. Picks the model for each prompt by predicted quality and cost.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Config file (TOML). Default: the shipped `config/pointsman.toml`, found from the working
    /// directory or the executable's location.
    #[arg(long, env = "POINTSMAN_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// ONNX Runtime shared library (1.24 to 1.31). Default: config `runtime.onnxruntime`, then
    /// `ORT_DYLIB_PATH`, then the copy `scripts/bootstrap.sh` installs under `.runtime/`.
    #[arg(long, env = "POINTSMAN_ONNXRUNTIME", global = true)]
    onnxruntime: Option<PathBuf>,
    /// Encoder: `int8` (MiniLM, default, about 2x faster, cosine ~0.99 to fp32), `fp32` (MiniLM,
    /// exact), `static` (the static tier, with `head.static_dir`; `train` and `eval` embed with
    /// it) or `cascade` (static, then MiniLM on narrow margins; `serve` and `route` only).
    #[arg(long, env = "POINTSMAN_ENCODER_VARIANT", global = true)]
    encoder_variant: Option<EncoderVariant>,
    /// Decision log on PostgreSQL (`postgres://user:password@host:5432/db`; TLS with
    /// `?sslmode=verify-full&sslrootcert=<ca.pem>`), for a fleet of replicas. Default: config
    /// `decision_log.url` (unset: the SQLite file `decision_log.path`).
    #[arg(long, env = "POINTSMAN_DECISION_LOG_URL", global = true, hide_env_values = true)]
    decision_log_url: Option<String>,
    /// Log format: `text` or `json`. Verbosity via RUST_LOG (default `info`).
    #[arg(long, env = "POINTSMAN_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gRPC service (Router, grpc.health.v1.Health, reflection; Admin and /metrics on the
    /// admin listener) until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Route one prompt in-process and print the ranking (table, or JSON with --json).
    Route(RouteArgs),
    /// Train a routing head from routing logs and export it as ONNX plus a manifest.
    Train(TrainArgs),
    /// Measure the head on full-matrix logs it never saw: quality-cost frontier against every
    /// single model, the per-prompt oracle and a kNN router; writes JSON and an SVG plot.
    Eval(EvalArgs),
    /// Choose the cost weight that meets a target on validation logs and write it as a profile.
    Tune(TuneArgs),
    /// Add models to the head from a few hundred labelled prompts each, without retraining the others.
    Extend(ExtendArgs),
    /// Work with the decision log (the SQLite file or PostgreSQL database of decisions and feedback).
    #[command(subcommand)]
    Logs(LogsCommand),
    /// What routing earned over a window, from the decision log: spend and savings against the
    /// baseline per model, provider and profile, calibration, fallbacks, breaker openings,
    /// latency percentiles and prompt clusters (text, or JSON with --json).
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Start of the window: an RFC 3339 time (2026-12-07T09:00:00Z), a duration before now
    /// (24h, 7d), `now`, or ms since the Unix epoch. Default: one day before --until.
    #[arg(long)]
    since: Option<String>,
    /// End of the window (same forms). Default: now.
    #[arg(long)]
    until: Option<String>,
    /// Print JSON (the admin listener's /report.json) instead of text.
    #[arg(long)]
    json: bool,
    /// The decision log: a SQLite file or a `postgres://` URL. Default: config
    /// `decision_log.url`, else `decision_log.path`.
    #[arg(long, env = "POINTSMAN_LOG_DB")]
    db: Option<PathBuf>,
    /// Decisions sampled and embedded by the encoder for the prompt clusters (0 skips them).
    #[arg(long, default_value_t = 400)]
    clusters: usize,
}

#[derive(Subcommand, Debug)]
enum LogsCommand {
    /// Write the feedback reports that carry a quality label, joined to their decisions, as
    /// routing-log lines for `pointsman train` (which can also read the database directly).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// The decision log: a SQLite file or a `postgres://` URL. Default: config
    /// `decision_log.url`, else `decision_log.path`.
    #[arg(long, env = "POINTSMAN_LOG_DB")]
    db: Option<PathBuf>,
    /// Output file (JSON Lines; gzip when it ends in .gz); `-` for standard output.
    #[arg(long, default_value = "-")]
    out: PathBuf,
    /// Also export reports that were not verified: repeats of a report on the same request id
    /// and model, reports on models not offered for the request, reports a replica logged
    /// without knowing the decision. Anyone allowed to call Feedback can write those.
    #[arg(long, env = "POINTSMAN_EXPORT_UNVERIFIED_FEEDBACK")]
    unverified_feedback: bool,
}

#[derive(Args, Debug)]
struct ExtendArgs {
    /// Routing logs with the new models' outcomes (lines of models the head has are ignored).
    #[arg(long = "data", env = "POINTSMAN_EXTEND_DATA", value_delimiter = ',', required = true)]
    data: Vec<PathBuf>,
    /// Where to write the extended head. Default: over the configured head (`head.dir`).
    #[arg(long, env = "POINTSMAN_EXTEND_OUT")]
    out: Option<PathBuf>,
    /// Share of each new model's prompts held out to report its accuracy.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Ridge penalty of the new columns; larger pulls them towards the model's mean. Default: 3
    /// on a factor head (at most 32 hidden units), 100 on a wider MLP head (docs/extend.md).
    #[arg(long)]
    l2: Option<f64>,
    /// Seed of the held-out split (decimal or 0x-prefixed hex).
    #[arg(long, default_value_t = 0x5EED, value_parser = parse_seed)]
    seed: u64,
    /// Folder of the on-disk prompt-embedding cache (as for `train`).
    #[arg(long, env = "POINTSMAN_EMBEDDING_CACHE")]
    embedding_cache: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Full-matrix routing log files; each is evaluated on its own, on the head's held-out prompts.
    #[arg(long = "data", env = "POINTSMAN_EVAL_DATA", value_delimiter = ',', required_unless_present = "log")]
    data: Vec<PathBuf>,
    /// Folder for report.json and one <file>.svg plot per log file (none by default: the figures
    /// are printed, nothing is written).
    #[arg(long, env = "POINTSMAN_EVAL_OUT")]
    out: Option<PathBuf>,
    /// The head to evaluate (a folder with head.onnx and manifest.json) instead of the config's
    /// `head.dir`: compare candidate heads without a config file each.
    #[arg(long, env = "POINTSMAN_HEAD")]
    head: Option<PathBuf>,
    /// Logged traffic (a decision log, or routing-log lines with or without `propensity`) to
    /// estimate the head on off-policy: quality and cost by IPS, SNIPS and doubly robust, with
    /// 95% intervals and the effective sample size. No full matrix needed.
    #[arg(long = "log", value_delimiter = ',', conflicts_with = "data")]
    log: Vec<PathBuf>,
    /// Another head to estimate beside it on --log (repeatable).
    #[arg(long = "candidate", requires = "log")]
    candidates: Vec<PathBuf>,
    /// The cost weight heads route at on --log (default: the config's default profile).
    #[arg(long, requires = "log")]
    cost_weight: Option<f64>,
    /// Neighbours of the plain kNN-k baseline router (the tuned kNN chooses its own k and b).
    #[arg(long, env = "POINTSMAN_EVAL_KNN_K", default_value_t = 25)]
    knn_k: usize,
    /// With --all-prompts: the head's training logs, as the kNN baselines' memory (prompts of the
    /// evaluated file are left out of it). Without it the kNN baselines are reported absent:
    /// every prompt of the file is evaluated, so none is left for them to remember.
    #[arg(long, env = "POINTSMAN_EVAL_KNN_MEMORY", value_delimiter = ',', value_name = "FILE", num_args = 1.., requires = "all_prompts")]
    knn_memory: Vec<PathBuf>,
    /// Evaluate on every prompt of the files (logs the head never saw) instead of the head's
    /// held-out prompts. A file the head was trained on (its SHA-256 is in the manifest) is
    /// refused: its prompts were the head's training data.
    #[arg(long, env = "POINTSMAN_EVAL_ALL_PROMPTS")]
    all_prompts: bool,
    /// With --all-prompts, score files the head was trained on anyway (the figures then measure
    /// the head on its own training prompts, not on new ones).
    #[arg(long, requires = "all_prompts")]
    allow_training_prompts: bool,
    #[command(flatten)]
    embed: EmbedArgs,
}

/// The embedding-cache and progress flags `eval` and `tune` share.
#[derive(Args, Debug)]
struct EmbedArgs {
    /// Folder of the on-disk prompt-embedding cache (shared with `train`), so a second run over
    /// the same logs skips the encoder. Default: $XDG_CACHE_HOME or ~/.cache, `pointsman/embeddings`.
    #[arg(long, env = "POINTSMAN_EMBEDDING_CACHE")]
    embedding_cache: Option<PathBuf>,
    /// Embed every prompt, without reading or writing the cache.
    #[arg(long)]
    no_embedding_cache: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct TuneArgs {
    /// The head to tune for instead of the config's `head.dir`.
    #[arg(long, env = "POINTSMAN_HEAD")]
    head: Option<PathBuf>,
    /// Full-matrix validation logs (pooled by prompt count); by default only the head's held-out prompts.
    #[arg(long = "data", env = "POINTSMAN_TUNE_DATA", value_delimiter = ',', required = true)]
    data: Vec<PathBuf>,
    /// Profile name to write (letters, digits, '_' or '-').
    #[arg(long, env = "POINTSMAN_TUNE_NAME")]
    name: String,
    /// Target: mean cost per request at most this many USD (then: highest quality).
    #[arg(long, env = "POINTSMAN_TUNE_MAX_AVG_COST")]
    max_avg_cost: Option<f64>,
    /// Target: mean quality at least this share of the best single model's, e.g. 0.95 (then: lowest cost).
    #[arg(long, env = "POINTSMAN_TUNE_MIN_QUALITY_SHARE")]
    min_quality_share: Option<f64>,
    /// Target: at most this share of requests to the most expensive model, e.g. 0.1.
    #[arg(long, env = "POINTSMAN_TUNE_MAX_TOP_SHARE")]
    max_top_share: Option<f64>,
    /// Write the profile into the config file (comments and other keys are kept).
    #[arg(long)]
    write: bool,
    /// Share of the budget (and of the quality floor's distance to the best single model) kept
    /// in reserve against the noise of the chosen point.
    #[arg(long, default_value_t = pointsman::learning::tune::DEFAULT_MARGIN)]
    margin: f64,
    /// Largest share of the prompts live routing may send, at the chosen weight, to catalog
    /// models the data does not score (their cost and quality are then unknown to the choice).
    #[arg(long, default_value_t = pointsman::learning::tune::MAX_OUTSIDE_SHARE)]
    max_outside_share: f64,
    /// Use every prompt of the files instead of the head's held-out prompts (logs the head never
    /// saw; a file it was trained on is refused, as in `eval`).
    #[arg(long)]
    all_prompts: bool,
    /// With --all-prompts, use files the head was trained on anyway.
    #[arg(long, requires = "all_prompts")]
    allow_training_prompts: bool,
    #[command(flatten)]
    embed: EmbedArgs,
}

/// A seed in decimal or 0x-prefixed hex, as the `--seed` help writes the default one.
fn parse_seed(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("a seed is a whole number from 0 to {}, in decimal or 0x hex. Given: `{s}`", u64::MAX))
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Routing log files (JSON Lines, gzip or plain; see data/README.md for the format).
    /// Repeat the flag for several files. Sparse logs (one model per prompt) are fine.
    #[arg(long = "data", env = "POINTSMAN_TRAIN_DATA", value_delimiter = ',', required = true)]
    data: Vec<PathBuf>,
    /// Output folder for head.onnx and manifest.json (with --cv: the fold heads and report).
    /// Required, with no default, so a first try never overwrites the served head; pass
    /// `--out models/router` (the config's `head.dir`) to replace it.
    #[arg(long, env = "POINTSMAN_TRAIN_OUT", required = true)]
    out: PathBuf,
    /// Share of prompts held out (by prompt) from the head, for the validation metrics in the
    /// manifest and as `eval`'s default prompts. 0 (the default): the head is fitted on every
    /// prompt after its predictor is chosen, and the validation figures are the inner
    /// cross-validation's.
    #[arg(long, env = "POINTSMAN_TRAIN_VAL_FRACTION", default_value_t = 0.0)]
    val_fraction: f64,
    /// Share of the remaining prompts used to pick the stopping epoch.
    #[arg(long, env = "POINTSMAN_TRAIN_EARLY_STOP_FRACTION", default_value_t = 0.15)]
    early_stop_fraction: f64,
    /// Fail on the first malformed log line (default: skip it and count it).
    #[arg(long, env = "POINTSMAN_TRAIN_STRICT")]
    strict: bool,
    /// Seed of the splits, initialisation and batch order: the same seed and data give the same
    /// head. Decimal or 0x-prefixed hex (the default is 0x5EED = 24301).
    #[arg(long, env = "POINTSMAN_TRAIN_SEED", default_value_t = 0x5EED, value_parser = parse_seed)]
    seed: u64,
    /// Hidden units of the head. More fits more but overfits small logs.
    #[arg(long, env = "POINTSMAN_TRAIN_HIDDEN", default_value_t = 128)]
    hidden: usize,
    /// Most passes over the data (early stopping usually ends sooner).
    #[arg(long, env = "POINTSMAN_TRAIN_EPOCHS", default_value_t = 200)]
    epochs: usize,
    /// Epochs without improvement before stopping.
    #[arg(long, env = "POINTSMAN_TRAIN_PATIENCE", default_value_t = 15)]
    patience: usize,
    /// L2 penalty on weights; larger pulls predictions towards each model's average.
    #[arg(long, env = "POINTSMAN_TRAIN_WEIGHT_DECAY", default_value_t = 1e-4)]
    weight_decay: f32,
    /// Adam step size.
    #[arg(long, env = "POINTSMAN_TRAIN_LEARNING_RATE", default_value_t = 1e-3)]
    learning_rate: f32,
    /// Folder of the on-disk prompt-embedding cache (keyed by encoder and text), so a second run
    /// over the same logs skips the encoder. Default: $XDG_CACHE_HOME or ~/.cache, `pointsman/embeddings`.
    #[arg(long, env = "POINTSMAN_EMBEDDING_CACHE")]
    embedding_cache: Option<PathBuf>,
    /// Embed every prompt, without reading or writing the cache.
    #[arg(long)]
    no_embedding_cache: bool,
    /// MLPs averaged per model family, each from its own seed (less variance, more compute).
    #[arg(long, env = "POINTSMAN_TRAIN_ENSEMBLE", default_value_t = 5)]
    ensemble: usize,
    /// Which predictors to choose among, per model family, by an inner 5-fold cross-validation
    /// of the training prompts scored as `eval` scores routing: `auto` (kNN with shrinkage,
    /// factor heads of rank 1 to 8, blends of the best two; the MLP ensemble on logs too sparse
    /// for a factor head), `knn`, `lowrank` (factor heads; dense logs only) or `mlp`.
    #[arg(long, env = "POINTSMAN_TRAIN_METHOD", default_value = "auto")]
    method: pointsman::learning::job::HeadMethod,
    /// With `auto`, also try the MLP ensemble on logs dense enough for factor heads (one ensemble
    /// per inner fold: several times slower).
    #[arg(long, env = "POINTSMAN_TRAIN_MLP_CANDIDATE")]
    mlp_candidate: bool,
    /// Training prompts the head stores, over all model families, as its kNN memory and domain
    /// index; above it, each family keeps a seeded uniform sample of its share, in proportion to
    /// its prompts (docs/training.md, "Memory").
    #[arg(long, env = "POINTSMAN_TRAIN_MEMORY_CAP", default_value_t = pointsman::learning::job::DEFAULT_MEMORY_CAP)]
    memory_cap: usize,
    /// On sparse logs (under half of a family's (prompt, model) pairs observed), each model's
    /// kNN averages its own nearest observations instead of the nearest prompts.
    #[arg(long)]
    knn_own_neighbours: bool,
    /// Name prefix of the head id (the id ends with the graph's hash).
    #[arg(long, env = "POINTSMAN_TRAIN_NAME", default_value = "head")]
    name: String,
    /// Cross-validate instead of training one head: K folds by prompt, one head per fold in
    /// `<out>/fold-<i>/`, each evaluated on its fold as `pointsman eval` does; the pooled figures
    /// (every prompt held out once) go to `<out>/report.json` and one SVG plot per log file.
    #[arg(long, env = "POINTSMAN_TRAIN_CV", value_name = "K")]
    cv: Option<usize>,
    /// Neighbours of the kNN baseline router in `--cv` reports.
    #[arg(long, env = "POINTSMAN_EVAL_KNN_K", default_value_t = 25)]
    knn_k: usize,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on. Default: config `server.listen` (127.0.0.1:50051 in the shipped config).
    #[arg(long, env = "POINTSMAN_LISTEN")]
    listen: Option<String>,
    /// Address of the admin listener (Admin.Reload, /metrics). Default: config `admin.listen`
    /// (127.0.0.1:9464: loopback only).
    #[arg(long, env = "POINTSMAN_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Address of Envoy's external processor (ext_proc) listener. Default: config
    /// `ext_proc.listen` (empty: off).
    #[arg(long, env = "POINTSMAN_EXT_PROC_LISTEN")]
    ext_proc_listen: Option<String>,
    /// Share model health (circuit breakers) with the other replicas through this Redis
    /// (`redis://host:6379/0`; `rediss://` for TLS). Default: config `health.shared` (unset: this
    /// replica's own).
    #[arg(long, env = "POINTSMAN_HEALTH_SHARED", hide_env_values = true)]
    health_shared: Option<String>,
}

#[derive(Args, Debug)]
struct RouteArgs {
    /// The head to route with instead of the config's `head.dir`.
    #[arg(long, env = "POINTSMAN_HEAD")]
    head: Option<PathBuf>,
    /// The prompt to route (one user message).
    prompt: String,
    /// Named profile from the config (e.g. quality, balanced, economy). Exclusive with --cost-weight.
    #[arg(long)]
    profile: Option<String>,
    /// Cost weight in [0,1]: 0 = best predicted quality at any cost, 1 = cheapest model meeting --min-quality.
    #[arg(long)]
    cost_weight: Option<f64>,
    /// Leave out models predicted to cost more than this many USD.
    #[arg(long)]
    max_cost_usd: Option<f64>,
    /// Leave out models predicted below this quality in [0,1].
    #[arg(long)]
    min_quality: Option<f64>,
    /// Only these models (repeat the flag).
    #[arg(long = "allow-model")]
    allowed_models: Vec<String>,
    /// Never these models (repeat the flag).
    #[arg(long = "deny-model")]
    denied_models: Vec<String>,
    /// Only these providers (repeat the flag).
    #[arg(long = "allow-provider")]
    allowed_providers: Vec<String>,
    /// Never these providers (repeat the flag).
    #[arg(long = "deny-provider")]
    denied_providers: Vec<String>,
    /// Fallbacks after the primary (default from the config: 3).
    #[arg(long)]
    fallbacks: Option<u32>,
    /// OpenRouter's provider preferences as JSON, e.g. '{"sort": "throughput", "ignore": ["azure"]}'.
    #[arg(long)]
    provider: Option<String>,
    /// The request needs tool calling (an endpoint that says it has none is never chosen).
    #[arg(long)]
    tools: bool,
    /// Also list every catalog model with its predictions and why it was left out.
    #[arg(long)]
    explain: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn cli_config_path(given: &Option<PathBuf>) -> PathBuf {
    given.clone().unwrap_or_else(config::locate_default)
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = cli_config_path(&cli.config);
    let mut cfg = Config::load(&path)?;
    let (listen, admin_listen, ext_proc_listen, health_shared) = match &cli.command {
        Command::Serve(a) => (a.listen.clone(), a.admin_listen.clone(), a.ext_proc_listen.clone(), a.health_shared.clone()),
        _ => (None, None, None, None),
    };
    cfg.apply(config::Overrides {
        onnxruntime: cli.onnxruntime.clone(),
        encoder_variant: cli.encoder_variant,
        listen,
        admin_listen,
        ext_proc_listen,
        decision_log_url: cli.decision_log_url.clone(),
        health_shared,
    })?;
    Ok(cfg)
}

/// Default for the embedding-cache flags `train` and `eval` share: the given folder, the default
/// folder, or none with `--no-embedding-cache`.
fn embedding_cache(dir: Option<PathBuf>, off: bool) -> Option<PathBuf> {
    (!off).then(|| dir.unwrap_or_else(pointsman::learning::embed_cache::EmbeddingCache::default_dir))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes, without the backtrace anyhow's Debug adds under
            // RUST_BACKTRACE: these are user errors, not crashes.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    pointsman::runtime::release_freed_memory();
    pointsman::ServerDecisionLogs::register();
    let cli = Cli::parse();
    if !matches!(cli.log_format.as_str(), "text" | "json") {
        anyhow::bail!("--log-format must be `text` or `json`. Given: `{}`", cli.log_format);
    }
    init_logging(&cli.log_format);
    let mut cfg = load_config(&cli)?;
    let head = match &cli.command {
        Command::Eval(a) => a.head.clone(),
        Command::Tune(a) => a.head.clone(),
        Command::Route(a) => a.head.clone(),
        _ => None,
    };
    if let Some(dir) = head {
        cfg.head.dir = dir;
    }
    let cli_config = cli.config.clone();
    match cli.command {
        Command::Logs(LogsCommand::Export(a)) => {
            let db = a.db.unwrap_or_else(|| cfg.decision_log.url.clone().map_or_else(|| cfg.decision_log.path.clone(), PathBuf::from));
            let scope = if a.unverified_feedback { FeedbackScope::All } else { FeedbackScope::Verified };
            tokio::task::spawn_blocking(move || pointsman::cli::export_logs(&db, &a.out, scope)).await??;
        }
        Command::Report(a) => {
            let db = a.db.unwrap_or_else(|| cfg.decision_log.url.clone().map_or_else(|| cfg.decision_log.path.clone(), PathBuf::from));
            let window = pointsman::report::Window::parse(a.since.as_deref(), a.until.as_deref(), pointsman::report::now_ms())
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            let options = pointsman::cli::ReportOptions { json: a.json, cluster_sample: a.clusters };
            std::thread::scope(|s| s.spawn(|| pointsman::cli::report(&cfg, &db, window, &options)).join())
                .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        }
        Command::Serve(_) => {
            let listeners = pointsman::transport::Listeners::bind(&cfg).await?;
            pointsman::transport::serve(cfg, listeners, pointsman::transport::shutdown_signal()).await?;
        }
        Command::Route(a) => {
            let provider = match &a.provider {
                None => None,
                Some(text) => {
                    let v: serde_json::Value =
                        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--provider must be a JSON object: {e}. Given: {text}"))?;
                    pointsman::transport::openai::provider(&serde_json::json!({ "provider": v }))
                        .map_err(|e| anyhow::anyhow!("--provider: {e}"))?
                }
            };
            let request = pb::RouteRequest {
                prompt: a.prompt,
                profile: a.profile.unwrap_or_default(),
                cost_weight: a.cost_weight,
                max_cost_usd: a.max_cost_usd,
                min_quality: a.min_quality,
                allowed_models: a.allowed_models,
                denied_models: a.denied_models,
                allowed_providers: a.allowed_providers,
                denied_providers: a.denied_providers,
                max_fallbacks: a.fallbacks,
                explain: a.explain,
                provider,
                requirements: a.tools.then(|| pb::Requirements { tools: true, ..Default::default() }),
                ..Default::default()
            };
            pointsman::cli::route(cfg, request, a.json).await?;
        }
        Command::Eval(a) => {
            let options = pointsman::cli::EvalOptions {
                knn_k: a.knn_k,
                baselines: true,
                knn_memory: a.knn_memory.clone(),
                all_prompts: a.all_prompts,
                allow_training_prompts: a.allow_training_prompts,
                embedding_cache: embedding_cache(a.embed.embedding_cache, a.embed.no_embedding_cache),
                quiet: a.embed.quiet,
            };
            if a.log.is_empty() {
                tokio::task::spawn_blocking(move || pointsman::cli::eval(&cfg, &a.data, a.out.as_deref(), &options)).await??;
            } else {
                if let Some(w) = a.cost_weight {
                    anyhow::ensure!((0.0..=1.0).contains(&w), "--cost-weight must be in [0, 1]. Given: {w}");
                }
                tokio::task::spawn_blocking(move || {
                    pointsman::cli::eval_log(&cfg, &a.log, &a.candidates, a.cost_weight, a.out.as_deref(), &options)
                })
                .await??;
            }
        }
        Command::Extend(a) => {
            anyhow::ensure!(a.val_fraction > 0.0 && a.val_fraction < 0.9, "--val-fraction must be in (0, 0.9). Given: {}", a.val_fraction);
            if let Some(l2) = a.l2 {
                anyhow::ensure!(l2.is_finite() && l2 >= 0.0, "--l2 must be a finite number >= 0. Given: {l2}");
            }
            let job = pointsman::learning::extend::ExtendJob {
                head_dir: cfg.head.dir.clone(),
                out_dir: a.out.unwrap_or_else(|| cfg.head.dir.clone()),
                data: a.data,
                val_fraction: a.val_fraction,
                l2: a.l2,
                seed: a.seed,
                embedding_cache: Some(a.embedding_cache.unwrap_or_else(pointsman::learning::embed_cache::EmbeddingCache::default_dir)),
            };
            tokio::task::spawn_blocking(move || pointsman::cli::extend(&cfg, &job)).await??;
        }
        Command::Tune(a) => {
            for (flag, v, lo, hi) in [
                ("--max-avg-cost", a.max_avg_cost, 0.0, f64::INFINITY),
                ("--min-quality-share", a.min_quality_share, 0.0, 1.5),
                ("--max-top-share", a.max_top_share, 0.0, 1.0),
            ] {
                if let Some(v) = v {
                    anyhow::ensure!(v.is_finite() && v > lo && v <= hi, "{flag} must be in ({lo}, {hi}]. Given: {v}");
                }
            }
            anyhow::ensure!((0.0..0.9).contains(&a.margin), "--margin must be in [0, 0.9). Given: {}", a.margin);
            anyhow::ensure!(
                a.max_outside_share > 0.0 && a.max_outside_share <= 1.0,
                "--max-outside-share must be in (0, 1]. Given: {}",
                a.max_outside_share
            );
            let path = cli_config_path(&cli_config);
            let target = pointsman::learning::tune::Target {
                max_avg_cost: a.max_avg_cost,
                min_quality_share: a.min_quality_share,
                max_top_share: a.max_top_share,
                margin: a.margin,
                max_outside_share: a.max_outside_share,
            };
            let options = pointsman::cli::EvalOptions {
                knn_k: 25,
                baselines: false,
                knn_memory: Vec::new(),
                all_prompts: a.all_prompts,
                allow_training_prompts: a.allow_training_prompts,
                embedding_cache: embedding_cache(a.embed.embedding_cache, a.embed.no_embedding_cache),
                quiet: a.embed.quiet,
            };
            tokio::task::spawn_blocking(move || pointsman::cli::tune(&cfg, &path, &a.data, target, &a.name, a.write, &options)).await??;
        }
        Command::Train(a) => {
            let job = TrainJob {
                data: a.data,
                out_dir: a.out,
                val_fraction: a.val_fraction,
                early_stop_fraction: a.early_stop_fraction,
                strict: a.strict,
                name: a.name,
                catalog: None,
                cost_scale_usd: cfg.routing.cost_scale_usd,
                mlp_candidate: a.mlp_candidate,
                memory_cap: a.memory_cap,
                own_neighbours: a.knn_own_neighbours,
                ensemble: a.ensemble,
                method: a.method,
                holdout: None,
                embedding_cache: embedding_cache(a.embedding_cache, a.no_embedding_cache),
                train: TrainConfig {
                    hidden: a.hidden,
                    epochs: a.epochs,
                    patience: a.patience,
                    weight_decay: a.weight_decay,
                    learning_rate: a.learning_rate,
                    seed: a.seed,
                    ..TrainConfig::default()
                },
            };
            let quiet = a.quiet;
            match a.cv {
                Some(k) => tokio::task::spawn_blocking(move || pointsman::cli::cross_validate(&cfg, &job, k, a.knn_k, quiet)).await??,
                None => tokio::task::spawn_blocking(move || pointsman::cli::train(&cfg, &job, quiet)).await??,
            }
        }
    }
    Ok(())
}
