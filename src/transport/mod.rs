//! The gRPC transport: `pointsman.v1.Router` and `Admin`, the standard health service,
//! reflection and `/metrics`.
//!
//! Handlers only validate, call the engine and convert (`convert`). The server starts listening
//! at once and answers health checks with NOT_SERVING while the models load; `Route` answers
//! UNAVAILABLE until then. Shutdown is a future passed in by the caller (signals in the binary,
//! a oneshot in tests), and in-flight requests finish before `serve` returns.
pub mod convert;
pub mod metrics;
pub mod reload;

use std::{future::Future, sync::Arc};

use prost::Message as _;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::{
    config::Config,
    engine::{Engine, RouteError, RouteQuery},
    logs::LogError,
    pb::{
        self,
        admin_server::{Admin, AdminServer},
        router_server::{Router, RouterServer},
    },
    service::Service,
};

/// The encoded descriptor set of `pointsman.v1`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pointsman_descriptor");

/// Name of the routing service in health checks.
pub const SERVICE_NAME: &str = "pointsman.v1.Router";

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding or serving failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The engine could not be loaded.
    #[error("loading models: {0}")]
    Load(#[from] RouteError),
    /// The decision log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
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
        let call = self.service.stats().route_call();
        let deadline = convert::deadline(request.metadata(), std::time::Instant::now());
        let req = request.into_inner();
        let engine = match loaded(&self.service) {
            Ok(e) => e,
            Err(status) => {
                call.error("loading");
                return Err(status);
            }
        };
        let server = &engine.config().server;
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
                return Err(e.into());
            }
        };
        let span = tracing::info_span!("route", request_id = %query.request_id);
        let _ = span.enter();
        match self.service.route(call, &engine, query).await {
            Ok(d) => {
                tracing::debug!(
                    primary = %engine.catalog().models()[d.ranking.scored[d.ranking.chosen[0]].model].id,
                    total_us = d.timings.total.as_micros() as u64,
                    cache_hit = d.timings.cache_hit,
                    "routed"
                );
                Ok(Response::new(convert::route_response(&engine, d, explain)))
            }
            Err(e) => {
                tracing::debug!(error = %e, label = e.label(), "route rejected");
                Err(e.into())
            }
        }
    }

    async fn list_models(&self, _: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsResponse>, Status> {
        let engine = loaded(&self.service)?;
        let health = self.service.catalog_health(&engine);
        Ok(Response::new(convert::list_models(&engine, &health)))
    }

    async fn feedback(&self, request: Request<pb::FeedbackRequest>) -> Result<Response<pb::FeedbackResponse>, Status> {
        let record = convert::feedback_record(request.into_inner())?;
        match self.service.feedback(record).await {
            Ok(ack) => Ok(Response::new(pb::FeedbackResponse {
                known_request: ack.known_request,
                health: ack.health.map(|h| convert::model_health(&h)),
            })),
            Err(e) => Err(Status::resource_exhausted(e.to_string())),
        }
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

/// Serves on `listener` until `shutdown` resolves. Loads the models in the background and flips
/// health to SERVING when they are ready; a load failure ends `serve` with the error. On the same
/// port: `pointsman.v1.Router`, `pointsman.v1.Admin`, `grpc.health.v1.Health`, reflection, and
/// Prometheus metrics over HTTP/1.1 at `GET /metrics`. SIGHUP, `Admin.Reload` and (when
/// `reload.watch_interval_seconds` is set) file changes reload the models. Shutdown finishes
/// in-flight requests and drains the decision log.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    let service = {
        let config = config.clone();
        Arc::new(tokio::task::spawn_blocking(move || Service::new(config)).await.map_err(|e| RouteError::Worker(e.to_string()))??)
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
    health.set_service_status("", ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // NOTE: tonic's own decoding limit sits above ours so that an oversized request gets our
    // INVALID_ARGUMENT naming the limit; only absurd sizes hit tonic's RESOURCE_EXHAUSTED.
    let decode_limit = config.server.max_request_bytes.saturating_mul(4).max(4 << 20);
    let router = RouterServer::new(RouterService { service: Arc::clone(&service) }).max_decoding_message_size(decode_limit);
    let admin = AdminServer::new(AdminService { service: Arc::clone(&service) });

    let (load_failed_tx, load_failed_rx) = tokio::sync::oneshot::channel::<RouteError>();
    let loader = {
        let service = Arc::clone(&service);
        let health = health.clone();
        let config = config.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || Engine::load(config)).await {
                Ok(Ok(engine)) => {
                    service.install(Arc::new(engine));
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

    let failed = Arc::new(tokio::sync::Mutex::new(None));
    let stop = {
        let failed = Arc::clone(&failed);
        async move {
            tokio::select! {
                _ = shutdown => {}
                Ok(e) = load_failed_rx => { *failed.lock().await = Some(e); }
            }
        }
    };
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(health_service).add_service(reflection).add_service(router).add_service(admin);
    let routes = tonic::service::Routes::from(routes.routes().into_axum_router().route(
        "/metrics",
        axum::routing::get({
            let service = Arc::clone(&service);
            move || {
                let service = Arc::clone(&service);
                async move { ([("content-type", "text/plain; version=0.0.4")], metrics::render(&service)) }
            }
        }),
    ));
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        // NOTE: without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small
        // unary replies on loopback.
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), stop)
        .await;
    loader.abort();
    {
        let service = Arc::clone(&service);
        let _ = tokio::task::spawn_blocking(move || service.close()).await;
    }
    served?;
    let failure = failed.lock().await.take();
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
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
