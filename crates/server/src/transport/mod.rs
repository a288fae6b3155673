//! The gRPC transport: `pointsman.v1.Router`, the standard health service and reflection on the
//! data plane; `Admin` and `/metrics` on a separate admin listener (`auth`: bearer tokens,
//! `tls`: rustls).
//!
//! Handlers only validate, call the engine and convert (`convert`). The server starts listening
//! at once and answers health checks with NOT_SERVING while the models load; `Route` answers
//! UNAVAILABLE until then. Shutdown is a future passed in by the caller (signals in the binary,
//! a oneshot in tests), and in-flight requests finish before `serve` returns.
pub use crate::auth;
pub mod convert;
pub mod ext_proc;
pub mod metrics;
pub mod openai;
pub mod reload;
pub mod report;
pub use crate::tls;

use std::{future::Future, sync::Arc, time::Duration};

use prost::Message as _;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tracing::Instrument as _;

use crate::{
    config::Config,
    engine::{Engine, RouteError, RouteQuery},
    pb::{
        self,
        admin_server::{Admin, AdminServer},
        router_server::{Router, RouterServer},
    },
    service::{FeedbackError, Service},
};

/// The encoded descriptor set of `pointsman.v1`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pointsman_descriptor");

/// Name of the routing service in health checks.
pub const SERVICE_NAME: &str = "pointsman.v1.Router";

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Serving failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The flag and config key that set it.
        setting: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate, key or client CA was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The `[auth]` or `[tls]` settings are invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The engine could not be loaded.
    #[error("loading models: {0}")]
    Load(#[from] RouteError),
    /// The decision log or the shared health could not be set up.
    #[error(transparent)]
    Start(#[from] crate::service::StartError),
}

/// The `Router` service implementation.
pub struct RouterService {
    service: Arc<Service>,
}

fn loaded(service: &Service) -> Result<Arc<Engine>, Status> {
    service.engine().ok_or_else(|| Status::unavailable("models are loading; retry shortly (see the health service)"))
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(&self, request: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        // Counted from here to its one result. If tonic drops this future (the client cancelled,
        // or its `grpc-timeout` layer gave up), the guard counts the call as cancelled, and every
        // queue slot and permit the engine took is released by its own guard.
        let call = self.service.route_call();
        let deadline = convert::deadline(request.metadata(), std::time::Instant::now());
        let req = request.into_inner();
        let engine = match loaded(&self.service) {
            Ok(e) => e,
            Err(status) => {
                call.error("loading");
                return Err(status);
            }
        };
        let config = self.service.config();
        let server = &config.server;
        let size = req.encoded_len();
        if size > server.max_request_bytes {
            call.error("invalid_argument");
            return Err(Status::invalid_argument(format!(
                "request is {size} bytes, over the limit of {} bytes (server.max_request_bytes)",
                server.max_request_bytes
            )));
        }
        let explain = req.explain;
        let query = match convert::route_query(req, server) {
            Ok(q) => RouteQuery { deadline, ..q },
            Err(e) => {
                call.error(e.label());
                return Err(convert::status(e));
            }
        };
        let span = tracing::info_span!("route", request_id = %query.request_id);
        // NOTE: `instrument`, not `span.enter()`: a guard held across `.await` would tag whatever
        // else runs on this thread meanwhile; the core carries the span into encoder jobs.
        async move {
            match self.service.route(call, &engine, query).await {
                Ok(d) => {
                    tracing::debug!(
                        primary = %engine.catalog().models()[d.ranking.scored[d.ranking.chosen[0]].model].id,
                        total_us = d.timings.total.as_micros() as u64,
                        cache_hit = d.timings.cache_hit,
                        "routed"
                    );
                    let savings = self.service.savings(&engine, &d);
                    let live = if explain { self.service.endpoint_live(&engine) } else { Vec::new() };
                    Ok(Response::new(convert::route_response_live(&engine, d, explain, &live, savings)))
                }
                Err(e) => {
                    tracing::debug!(error = %e, label = e.label(), "route rejected");
                    Err(convert::status(e))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn list_models(&self, _: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsResponse>, Status> {
        let engine = loaded(&self.service)?;
        let health = self.service.catalog_health(&engine);
        let endpoints = self.service.endpoint_live(&engine);
        Ok(Response::new(convert::list_models(&engine, &health, &endpoints)))
    }

    async fn feedback(&self, request: Request<pb::FeedbackRequest>) -> Result<Response<pb::FeedbackResponse>, Status> {
        let record = convert::feedback_record(request.into_inner()).map_err(convert::status)?;
        let span = tracing::info_span!("feedback", request_id = %record.request_id, model = %record.model);
        async move {
            match self.service.feedback(record).await {
                Ok(ack) => Ok(Response::new(pb::FeedbackResponse {
                    known_request: ack.known_request,
                    health: ack.health.map(|h| convert::model_health(&h)),
                    counted: ack.counted,
                    verified: ack.verified,
                    endpoint: ack.endpoint.as_ref().map(convert::endpoint_measurements),
                })),
                Err(e @ FeedbackError::QueueFull(_)) => Err(Status::resource_exhausted(e.to_string())),
                Err(e @ FeedbackError::LogClosed) => Err(Status::unavailable(e.to_string())),
            }
        }
        .instrument(span)
        .await
    }
}

/// The `Admin` service implementation.
pub struct AdminService {
    service: Arc<Service>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload(&self, _: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        match self.service.reload().await {
            Ok(r) => Ok(Response::new(pb::ReloadResponse {
                router_version: r.version,
                previous_version: r.previous,
                models: r.models as u32,
                load_ms: r.elapsed.as_secs_f64() * 1e3,
            })),
            Err(e) => Err(Status::failed_precondition(format!("reload rejected, the current models keep serving: {e}"))),
        }
    }
}

/// The sockets [`serve`] listens on.
#[derive(Debug)]
pub struct Listeners {
    /// The data plane: `pointsman.v1.Router`, health, reflection (`server.listen`).
    pub data: TcpListener,
    /// The operator surface: `pointsman.v1.Admin` and `GET /metrics` (`admin.listen`).
    pub admin: TcpListener,
    /// Envoy's external processor and health (`ext_proc.listen`), when on.
    pub ext_proc: Option<TcpListener>,
}

impl Listeners {
    /// Binds `server.listen`, `admin.listen` and (when set) `ext_proc.listen`; the error names
    /// the setting.
    pub async fn bind(config: &Config) -> Result<Self, TransportError> {
        let bind = |addr: String, setting: &'static str| async move {
            TcpListener::bind(&addr).await.map_err(|source| TransportError::Bind { addr, setting, source })
        };
        let ext_proc = match config.ext_proc.listen.as_str() {
            "" => None,
            addr => Some(bind(addr.to_string(), "--ext-proc-listen / ext_proc.listen").await?),
        };
        Ok(Self {
            data: bind(config.server.listen.clone(), "--listen / server.listen").await?,
            admin: bind(config.admin.listen.clone(), "--admin-listen / admin.listen").await?,
            ext_proc,
        })
    }
}

/// Adds reflection (`v1` and the older `v1alpha` that grpcio-reflection and tools built on it
/// speak) advertising `services`.
fn add_reflection(routes: &mut tonic::service::RoutesBuilder, services: &[&str]) -> Result<(), TransportError> {
    let builder = || {
        services.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, s| b.with_service_name(*s),
        )
    };
    routes.add_service(builder().build_v1()?).add_service(builder().build_v1alpha()?);
    Ok(())
}

/// What a listener answers for a path it does not serve: UNIMPLEMENTED to gRPC (saying where
/// the service is when it is on the other listener), 404 to plain HTTP.
fn not_served(here: auth::Plane) -> impl Fn(axum::extract::Request) -> std::future::Ready<axum::response::Response> + Clone {
    move |req| {
        let path = req.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let elsewhere = match (here, service) {
            (auth::Plane::Data, pb::admin_server::SERVICE_NAME) | (auth::Plane::Data, "metrics" | "report" | "report.json") => {
                " (it is served on the admin listener, admin.listen)"
            }
            (auth::Plane::Admin, pb::router_server::SERVICE_NAME) => " (it is served on the data port, server.listen)",
            _ => "",
        };
        std::future::ready(if auth::is_grpc(req.headers()) {
            Status::unimplemented(format!("{service} is not served on this port{elsewhere}")).into_http::<axum::body::Body>()
        } else {
            use axum::response::IntoResponse as _;
            (axum::http::StatusCode::NOT_FOUND, format!("{path} is not served on this port{elsewhere}\n")).into_response()
        })
    }
}

/// HTTP/2 and TCP settings for every listener (tonic's defaults leave concurrent streams
/// unlimited and never probe an idle peer): a bounded number of streams per connection, keepalive
/// pings that find dead peers, TCP keepalive.
fn hardened(builder: tonic::transport::Server) -> tonic::transport::Server {
    builder
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
}

/// Streams one HTTP/2 connection may have open at once (hyper's default before tonic's `None`).
pub const MAX_CONCURRENT_STREAMS: u32 = 200;

/// Finishes a listener's routes: the fallback, then the token check when auth is on.
fn finish(routes: tonic::service::Routes, here: auth::Plane, auth: &Option<Arc<auth::Authenticator>>) -> tonic::service::Routes {
    let mut router = routes.into_axum_router().fallback(not_served(here));
    if let Some(a) = auth {
        router = router.layer(axum::middleware::from_fn_with_state((Arc::clone(a), here), auth::require));
    }
    tonic::service::Routes::from(router)
}

/// Serves until `shutdown` resolves. Loads the models in the background and flips health to
/// SERVING when they are ready; a load failure ends `serve` with the error.
///
/// On `listeners.data`: `pointsman.v1.Router`, `grpc.health.v1.Health` and reflection (`v1` and
/// `v1alpha`). On `listeners.admin`: `pointsman.v1.Admin`, Prometheus metrics over HTTP/1.1 at
/// `GET /metrics`, and reflection. Each answers UNIMPLEMENTED (gRPC) or 404 (HTTP) for what the
/// other serves. With `[auth]` on, Router, Admin and `/metrics` need a bearer token with the
/// right role; with `[tls]` the data port (and the admin listener with `tls.admin`) speak TLS.
/// SIGHUP, `Admin.Reload` and (when `reload.watch_interval_seconds` is set) file changes reload
/// the models. Shutdown finishes in-flight requests and drains the decision log.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    // SIGHUP's default action ends the process: take it over before anything else (tokio keeps
    // a handler once registered), so a reload signal that comes while the models load is ignored
    // instead of killing the server. The reload triggers listen for it once the models are in.
    #[cfg(unix)]
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let auth = config.auth.authenticator()?.map(Arc::new);
    let tls = config.tls.server_config()?;
    let server = |tls: Option<tonic::transport::ServerTlsConfig>| -> Result<tonic::transport::Server, TransportError> {
        let builder = hardened(tonic::transport::Server::builder()).accept_http1(true);
        match tls {
            Some(t) => builder.tls_config(t).map_err(|e| TransportError::Tls(format!("tls.cert / tls.key / tls.client_ca: {e}"))),
            None => Ok(builder),
        }
    };
    let (with_tls, admin_tls, ext_tls) = (tls.is_some(), config.tls.admin, config.ext_proc.tls);
    let (mut data_server, mut admin_server) = (server(tls.clone())?, server(tls.clone().filter(|_| admin_tls))?);
    let mut ext_server = server(tls.filter(|_| ext_tls))?;
    let service = {
        let config = config.clone();
        Arc::new(tokio::task::spawn_blocking(move || Service::new(config)).await.map_err(|e| RouteError::Worker(e.to_string()))??)
    };
    // The latency histogram keeps each sample until it is folded into its buckets: fold them on
    // a timer, so memory stays flat whether or not anyone scrapes /metrics.
    let upkeep = {
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(crate::telemetry::UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                service.telemetry().run_upkeep();
            }
        })
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
    health.set_service_status("", ServingStatus::NotServing).await;

    // NOTE: tonic's own decoding limit sits above ours so that an oversized request gets our
    // INVALID_ARGUMENT naming the limit; only absurd sizes hit tonic's own OUT_OF_RANGE (which names the size and the limit too).
    let decode_limit = config.server.max_request_bytes.saturating_mul(4).max(4 << 20);
    let router = RouterServer::new(RouterService { service: Arc::clone(&service) }).max_decoding_message_size(decode_limit);
    let admin = AdminServer::new(AdminService { service: Arc::clone(&service) });

    let (load_failed_tx, load_failed_rx) = tokio::sync::oneshot::channel::<RouteError>();
    let loader = {
        let service = Arc::clone(&service);
        let health = health.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let engine_config = config.engine_config();
            match tokio::task::spawn_blocking(move || Engine::load(engine_config)).await {
                Ok(Ok(engine)) => {
                    let engine = Arc::new(engine);
                    service.set_baseline_for(&engine, &config.savings).await;
                    service.install(engine);
                    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
                    health.set_service_status("", ServingStatus::Serving).await;
                    tracing::info!("models loaded; serving");
                    reload::run_triggers(service).await;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "failed to load models");
                    let _ = load_failed_tx.send(e);
                }
                Err(e) => {
                    let _ = load_failed_tx.send(RouteError::Worker(e.to_string()));
                }
            }
        })
    };

    // One stop signal for both listeners: the caller's shutdown, a failed load, or either
    // listener ending on its own.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let failed = Arc::new(tokio::sync::Mutex::new(None));
    let stopper = {
        let failed = Arc::clone(&failed);
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => {}
                Ok(e) = load_failed_rx => { *failed.lock().await = Some(e); }
            }
            let _ = stop_tx.send(true);
        })
    };
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let ext_proc_health = health_service.clone();
    let mut data_routes = tonic::service::Routes::builder();
    data_routes.add_service(health_service).add_service(router);
    add_reflection(&mut data_routes, &[SERVICE_NAME, "grpc.health.v1.Health"])?;
    let data_routes = finish(data_routes.routes(), auth::Plane::Data, &auth);

    let mut admin_routes = tonic::service::Routes::builder();
    admin_routes.add_service(admin);
    add_reflection(&mut admin_routes, &[pb::admin_server::SERVICE_NAME])?;
    let admin_routes = admin_routes.routes().into_axum_router().route(
        "/metrics",
        axum::routing::get({
            let service = Arc::clone(&service);
            move || {
                let service = Arc::clone(&service);
                async move { ([("content-type", "text/plain; version=0.0.4")], metrics::render(&service)) }
            }
        }),
    );
    let admin_routes = report_routes(admin_routes, &service);
    let admin_routes = finish(admin_routes.into(), auth::Plane::Admin, &auth);

    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let ext_addr = listeners.ext_proc.as_ref().map(addr).unwrap_or_else(|| "off".into());
    tracing::info!(addr = %addr(&listeners.data), admin = %addr(&listeners.admin), ext_proc = %ext_addr, tls = with_tls, admin_tls, auth = auth.is_some(), "listening");
    // NOTE: without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small
    // unary replies on loopback.
    let incoming = |l: TcpListener| tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
    let data = async {
        let r = data_server.add_routes(data_routes).serve_with_incoming_shutdown(incoming(listeners.data), stopped(stop_rx.clone())).await;
        let _ = stop_tx.send(true);
        r
    };
    let admin = async {
        let r =
            admin_server.add_routes(admin_routes).serve_with_incoming_shutdown(incoming(listeners.admin), stopped(stop_rx.clone())).await;
        let _ = stop_tx.send(true);
        r
    };
    // Envoy's external processor, with health for Envoy's gRPC health checks. With `[tls]` it
    // speaks TLS (mutual with `tls.client_ca`) unless `ext_proc.tls = false`; with `[auth]` Envoy
    // presents a token with the `gateway` role (the filter's `grpc_service.initial_metadata`).
    let ext = async {
        let Some(l) = listeners.ext_proc else { return Ok(()) };
        let mut routes = tonic::service::Routes::builder();
        let body_limit = config.ext_proc.max_body_bytes.saturating_add(64 << 10);
        routes.add_service(ext_proc_health).add_service(
            envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer::new(
                ext_proc::ExtProcService::new(Arc::clone(&service)),
            )
            .max_decoding_message_size(body_limit),
        );
        let r = ext_server
            .add_routes(finish(routes.routes(), auth::Plane::ExtProc, &auth))
            .serve_with_incoming_shutdown(incoming(l), stopped(stop_rx.clone()))
            .await;
        let _ = stop_tx.send(true);
        r
    };
    let (data_served, admin_served, ext_served) = tokio::join!(data, admin, ext);
    stopper.abort();
    loader.abort();
    upkeep.abort();
    {
        let service = Arc::clone(&service);
        let _ = tokio::task::spawn_blocking(move || service.close()).await;
    }
    data_served?;
    admin_served?;
    ext_served?;
    let failure = failed.lock().await.take();
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Adds `GET /report` and `GET /report.json` (`report`) to the admin listener's routes.
fn report_routes(routes: axum::Router, service: &Arc<Service>) -> axum::Router {
    let route = |format: report::Format| {
        let service = Arc::clone(service);
        axum::routing::get(move |uri: axum::http::Uri| {
            let service = Arc::clone(&service);
            async move { report::handle(service, format, uri.query().map(str::to_string)).await }
        })
    };
    routes.route("/report", route(report::Format::Html)).route("/report.json", route(report::Format::Json))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
