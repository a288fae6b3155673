//! The service configuration: one TOML file with the server settings, the model files, the cache,
//! the named trade-off profiles and the catalog. Relative paths in it are resolved against the
//! file's own folder, so the shipped `config/pointsman.toml` works from any working directory.
//! Everything is validated before anything starts, with messages that name the key.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use pointsman_core::{
    encoder::{EncoderConfig, EncoderVariant},
    engine::{CacheConfig, EngineConfig, RoutingConfig},
};

use crate::catalog::{Catalog, CatalogModel};

/// Path of the shipped default config, relative to the repository root.
pub const DEFAULT_CONFIG: &str = "config/pointsman.toml";

pub(crate) use crate::config_error::invalid;
pub use crate::config_error::ConfigError;

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest accepted request, bytes (gRPC message size).
    pub max_request_bytes: usize,
    /// Most messages in one conversation.
    pub max_messages: usize,
    /// Fallbacks when a request does not say.
    pub default_fallbacks: u32,
    /// Most fallbacks a request may ask for.
    pub max_fallbacks: u32,
    /// Most entries in each allow/deny list.
    pub max_list_entries: usize,
    /// Requests that may wait for a free encoder session; beyond this `Route` answers
    /// RESOURCE_EXHAUSTED at once instead of queueing (backpressure).
    pub max_queued_requests: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            max_request_bytes: 1 << 20,
            max_messages: 1024,
            default_fallbacks: 3,
            max_fallbacks: 8,
            max_list_entries: 256,
            max_queued_requests: 256,
        }
    }
}

/// `[admin]`: the operator surface, `pointsman.v1.Admin` and `GET /metrics`, on a listener of
/// its own, apart from the data plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (loopback by default).
    pub listen: String,
}

/// Default address of the admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: DEFAULT_ADMIN_LISTEN.into() }
    }
}

/// `[ext_proc]`: Envoy's external processor (`transport::ext_proc`) on a listener of its own,
/// so a gateway routes through Pointsman without glue code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtProcConfig {
    /// Address of the listener; empty (the default) serves none.
    pub listen: String,
    /// Incoming `model` values that mean "route me"; any other model passes through untouched.
    pub route_models: Vec<String>,
    /// How long one exchange may take, ms: keep it equal to the Envoy filter's `message_timeout`.
    /// Routing work still waiting when it passes is dropped (Envoy has gone on without it).
    pub message_timeout_ms: u64,
    /// Largest request body buffered, bytes; a larger one passes through unrouted (counted), as
    /// Envoy's buffer limit would let it. Also the listener's gRPC message limit.
    pub max_body_bytes: usize,
    /// Serve this listener with the `[tls]` certificate (and client CAs) when `[tls]` is set.
    pub tls: bool,
}

impl Default for ExtProcConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            route_models: vec!["pointsman/auto".into()],
            message_timeout_ms: 1000,
            max_body_bytes: 8 << 20,
            tls: true,
        }
    }
}

/// `[head]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Folder with `head.onnx` and `manifest.json` (the head trained on MiniLM).
    pub dir: PathBuf,
    /// The head trained on the static encoder (`encoder.variant` `static` or `cascade`).
    pub static_dir: PathBuf,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { dir: "models/router".into(), static_dir: "models/router-static".into() }
    }
}

/// `[shadow]`: a second head scored beside the serving one on every request, never served
/// (its choice is logged and counted; promoting it is a config change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// Folder of the shadow head (`manifest.json` and its graph); unset (the default) runs none.
    pub head_dir: Option<PathBuf>,
}

/// `[runtime]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of the ONNX Runtime library; empty to search (see `runtime::candidate_paths`).
    pub onnxruntime: Option<PathBuf>,
}

/// `[reload]`: when the server picks up new models without a restart (an `Admin.Reload` call
/// and SIGHUP always work).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Seconds between checks of the config file and the encoder and head folders for changes;
    /// a change that stays put for one interval is reloaded. 0 turns watching off.
    pub watch_interval_seconds: f64,
}

/// Settings given on the command line, kept so that a reload re-applies them to the re-read file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--onnxruntime`.
    pub onnxruntime: Option<PathBuf>,
    /// `--encoder-variant`.
    pub encoder_variant: Option<EncoderVariant>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
    /// `--ext-proc-listen`.
    pub ext_proc_listen: Option<String>,
    /// `--decision-log-url`.
    pub decision_log_url: Option<String>,
    /// `--health-shared`.
    pub health_shared: Option<String>,
}

/// The whole config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Server settings.
    pub server: ServerConfig,
    /// The operator surface (Admin, metrics).
    pub admin: AdminConfig,
    /// Envoy's external processor.
    pub ext_proc: ExtProcConfig,
    /// Bearer tokens and their roles.
    pub auth: crate::auth::AuthConfig,
    /// TLS of the listeners.
    pub tls: crate::tls::TlsConfig,
    /// ONNX Runtime location.
    pub runtime: RuntimeConfig,
    /// The sentence encoder.
    pub encoder: EncoderConfig,
    /// The prediction head.
    pub head: HeadConfig,
    /// A shadow head.
    pub shadow: ShadowConfig,
    /// Exploration.
    pub exploration: pointsman_core::exploration::ExplorationConfig,
    /// The prediction cache.
    pub cache: CacheConfig,
    /// Profiles and latency defaults.
    pub routing: RoutingConfig,
    /// The decision log.
    pub decision_log: crate::logs::LogConfig,
    /// Live model health (circuit breakers).
    pub health: crate::health::HealthConfig,
    /// Sessions: a conversation kept on its endpoint while that is worth its cached input.
    pub sessions: crate::sessions::SessionsConfig,
    /// Hot reload.
    pub reload: ReloadConfig,
    /// The baseline savings are measured against.
    pub savings: crate::savings::SavingsConfig,
    /// The catalog.
    pub models: Vec<CatalogModel>,
    /// The file this config was read from, for reloads.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Command-line settings re-applied on reload.
    #[serde(skip)]
    pub overrides: Overrides,
}

/// Whether two listen addresses are the same fixed socket (port 0 asks for any free port, so two
/// of those never clash).
fn same_listener(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::SocketAddr>(), b.parse::<std::net::SocketAddr>()) {
        (Ok(a), Ok(b)) => a.port() != 0 && a == b,
        _ => false,
    }
}

/// Finds the shipped config when none is given: `config/pointsman.toml` under the working
/// directory, the executable's ancestors (so `target/release/pointsman` finds the repo's), or
/// the source tree.
pub fn locate_default() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join(DEFAULT_CONFIG));
    }
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(DEFAULT_CONFIG)));
    }
    let source = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(DEFAULT_CONFIG);
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or(source)
}

impl Config {
    /// Reads, resolves relative paths against the file's folder, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.source = Some(path.to_path_buf());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies command-line settings (and keeps them for [`Config::reread`]).
    pub fn apply(&mut self, o: Overrides) -> Result<(), ConfigError> {
        if let Some(p) = &o.onnxruntime {
            self.runtime.onnxruntime = Some(p.clone());
        }
        if let Some(v) = o.encoder_variant {
            self.encoder.variant = v;
        }
        if let Some(l) = &o.listen {
            self.server.listen = l.clone();
        }
        if let Some(l) = &o.admin_listen {
            self.admin.listen = l.clone();
        }
        if let Some(l) = &o.ext_proc_listen {
            self.ext_proc.listen = l.clone();
        }
        if let Some(u) = o.decision_log_url.as_ref().filter(|u| !u.is_empty()) {
            self.decision_log.url = Some(u.clone());
        }
        if let Some(u) = o.health_shared.as_ref().filter(|u| !u.is_empty()) {
            self.health.shared = Some(u.clone());
        }
        self.overrides = o;
        self.validate()
    }

    /// Reads the file this config came from again and re-applies the command-line settings.
    /// A config built in code (no file) is returned as it is.
    pub fn reread(&self) -> Result<Config, ConfigError> {
        match &self.source {
            Some(path) => {
                let mut cfg = Config::load(path)?;
                cfg.apply(self.overrides.clone())?;
                Ok(cfg)
            }
            None => Ok(self.clone()),
        }
    }

    /// Makes relative paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.encoder.dir);
        fix(&mut self.encoder.static_dir);
        fix(&mut self.head.dir);
        fix(&mut self.head.static_dir);
        if let Some(p) = self.shadow.head_dir.as_mut() {
            fix(p);
        }
        if let Some(p) = self.runtime.onnxruntime.as_mut() {
            fix(p);
        }
        fix(&mut self.decision_log.path);
        fix(&mut self.decision_log.spill_path);
        if let Some(p) = self.health.shared_ca_file.as_mut() {
            fix(p);
        }
        self.tls.resolve_paths(base);
    }

    /// Checks every cross-field rule; the message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("server.listen", "an address like 127.0.0.1:50051", &s.listen));
        }
        if self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("admin.listen", "an address like 127.0.0.1:9464", &self.admin.listen));
        }
        if same_listener(&self.admin.listen, &s.listen) {
            return Err(invalid("admin.listen", &format!("an address other than server.listen ({})", s.listen), &self.admin.listen));
        }
        let ext = &self.ext_proc.listen;
        if !ext.is_empty() {
            if ext.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid("ext_proc.listen", "empty (off) or an address like 127.0.0.1:50052", ext));
            }
            if same_listener(ext, &s.listen) || same_listener(ext, &self.admin.listen) {
                return Err(invalid("ext_proc.listen", "an address other than server.listen and admin.listen", ext));
            }
        }
        if let Some(m) = self.ext_proc.route_models.iter().find(|m| m.trim().is_empty() || m.len() > 256) {
            return Err(invalid("ext_proc.route_models", "model names of 1 to 256 characters", format!("{m:?}")));
        }
        let e = &self.ext_proc;
        if !(1..=600_000).contains(&e.message_timeout_ms) {
            return Err(invalid("ext_proc.message_timeout_ms", "in [1, 600000] (Envoy's message_timeout, in ms)", e.message_timeout_ms));
        }
        if !(1024..=(64 << 20)).contains(&e.max_body_bytes) {
            return Err(invalid("ext_proc.max_body_bytes", "in [1024, 67108864]", e.max_body_bytes));
        }
        if s.max_request_bytes < 1024 {
            return Err(invalid("server.max_request_bytes", ">= 1024", s.max_request_bytes));
        }
        if s.max_messages == 0 {
            return Err(invalid("server.max_messages", ">= 1", 0));
        }
        if s.default_fallbacks > s.max_fallbacks {
            return Err(invalid(
                "server.default_fallbacks",
                &format!("<= server.max_fallbacks ({})", s.max_fallbacks),
                s.default_fallbacks,
            ));
        }
        if s.max_queued_requests == 0 {
            return Err(invalid("server.max_queued_requests", ">= 1", 0));
        }
        let e = &self.encoder;
        if e.sessions == 0 || e.sessions > 64 {
            return Err(invalid("encoder.sessions", "in 1..=64", e.sessions));
        }
        if e.intra_threads == 0 || e.intra_threads > 64 {
            return Err(invalid("encoder.intra_threads", "in 1..=64", e.intra_threads));
        }
        if e.max_tokens < 8 || e.max_tokens > 512 {
            return Err(invalid("encoder.max_tokens", "in 8..=512", e.max_tokens));
        }
        if e.static_max_tokens == 0 || e.static_max_tokens > 65_536 {
            return Err(invalid("encoder.static_max_tokens", "in 1..=65536", e.static_max_tokens));
        }
        if !(e.cascade_margin.is_finite() && e.cascade_margin >= 0.0) {
            return Err(invalid("encoder.cascade_margin", "a finite number >= 0", e.cascade_margin));
        }
        let r = &self.routing;
        for (name, w) in &r.profiles {
            if !(0.0..=1.0).contains(w) {
                return Err(invalid(&format!("routing.profiles.{name}"), "in [0,1]", w));
            }
        }
        if !r.profiles.contains_key(&r.default_profile) {
            let known: Vec<_> = r.profiles.keys().cloned().collect();
            return Err(invalid("routing.default_profile", &format!("one of routing.profiles ({})", known.join(", ")), &r.default_profile));
        }
        if !(r.cost_scale_usd.is_finite() && r.cost_scale_usd > 0.0) {
            return Err(invalid("routing.cost_scale_usd", "a finite number > 0", r.cost_scale_usd));
        }
        if !(0.0..=1.0).contains(&r.out_of_domain_p) {
            return Err(invalid("routing.out_of_domain_p", "in [0,1]", r.out_of_domain_p));
        }
        if !(r.default_ttft_ms.is_finite() && r.default_ttft_ms >= 0.0) {
            return Err(invalid("routing.default_ttft_ms", ">= 0", r.default_ttft_ms));
        }
        if !(r.default_output_tokens_per_second.is_finite() && r.default_output_tokens_per_second > 0.0) {
            return Err(invalid("routing.default_output_tokens_per_second", "> 0", r.default_output_tokens_per_second));
        }
        if let Err((key, limit, value)) = self.exploration.validate() {
            return Err(invalid(key, limit, value));
        }
        self.decision_log.validate()?;
        self.health.validate()?;
        self.sessions.validate()?;
        self.auth.validate()?;
        self.tls.validate()?;
        let w = self.reload.watch_interval_seconds;
        if !(w.is_finite() && (0.0..=86_400.0).contains(&w)) {
            return Err(invalid("reload.watch_interval_seconds", "in [0, 86400]", w));
        }
        let catalog = Catalog::new(self.models.clone())?;
        self.savings.validate(&catalog)?;
        Ok(())
    }

    /// What the engine takes of this file: models, encoder, head, cache, routing, the queue
    /// and fallback limits, and what decisions carry for the decision log.
    pub fn engine_config(&self) -> EngineConfig {
        let log = &self.decision_log;
        EngineConfig {
            onnxruntime: self.runtime.onnxruntime.clone(),
            encoder: self.encoder.clone(),
            head_dir: self.head.dir.clone(),
            static_head_dir: self.head.static_dir.clone(),
            cache: self.cache.clone(),
            routing: self.routing.clone(),
            models: self.models.clone(),
            max_queued_requests: self.server.max_queued_requests,
            max_fallbacks: self.server.max_fallbacks,
            keep_routing_text: log.enabled && log.store_prompts,
            keep_embeddings: log.enabled && !log.store_prompts,
            exploration: self.exploration.clone(),
            shadow_head_dir: self.shadow.head_dir.clone(),
        }
    }

    /// The validated catalog.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        Ok(Catalog::new(self.models.clone())?)
    }
}
