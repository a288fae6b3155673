//! The gRPC transport: `switchyard.v1.Router`, the standard health service and reflection.
//!
//! Handlers only validate, call the engine and convert (`convert`). The server starts listening
//! at once and answers health checks with NOT_SERVING while the models load; `Route` answers
//! UNAVAILABLE until then. Shutdown is a future passed in by the caller (signals in the binary,
//! a oneshot in tests), and in-flight requests finish before `serve` returns.
pub mod convert;

use std::{
    future::Future,
    sync::{Arc, RwLock},
};

use prost::Message as _;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::{
    config::Config,
    engine::{Engine, RouteError},
    pb::{
        self,
        router_server::{Router, RouterServer},
    },
};

/// The encoded descriptor set of `switchyard.v1`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");

/// Name of the routing service in health checks.
pub const SERVICE_NAME: &str = "switchyard.v1.Router";

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
}

/// The engine slot shared by the handlers: empty until the models are loaded.
#[derive(Clone, Default)]
pub struct EngineSlot(Arc<RwLock<Option<Arc<Engine>>>>);

impl EngineSlot {
    /// The current engine, if loaded.
    pub fn get(&self) -> Option<Arc<Engine>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs an engine; in-flight requests keep the one they hold.
    pub fn set(&self, engine: Arc<Engine>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(engine);
    }
}

/// The `Router` service implementation.
pub struct RouterService {
    engine: EngineSlot,
    server: crate::config::ServerConfig,
}

impl RouterService {
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.engine.get().ok_or_else(|| Status::unavailable("models are loading; retry shortly (see the health service)"))
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(&self, request: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        let req = request.into_inner();
        let size = req.encoded_len();
        if size > self.server.max_request_bytes {
            return Err(Status::invalid_argument(format!(
                "request is {size} bytes, over the limit of {} bytes (server.max_request_bytes)",
                self.server.max_request_bytes
            )));
        }
        let engine = self.engine()?;
        let explain = req.explain;
        let query = convert::route_query(req, &self.server)?;
        let span = tracing::info_span!("route", request_id = %query.request_id);
        let _ = span.enter();
        match engine.route(query).await {
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
        Ok(Response::new(convert::list_models(&*self.engine()?)))
    }
}

/// Serves on `listener` until `shutdown` resolves. Loads the models in the background and flips
/// health to SERVING when they are ready; a load failure ends `serve` with the error.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
    health.set_service_status("", ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let slot = EngineSlot::default();
    // NOTE: tonic's own decoding limit sits above ours so that an oversized request gets our
    // INVALID_ARGUMENT naming the limit; only absurd sizes hit tonic's RESOURCE_EXHAUSTED.
    let decode_limit = config.server.max_request_bytes.saturating_mul(4).max(4 << 20);
    let service = RouterService { engine: slot.clone(), server: config.server.clone() };
    let router = RouterServer::new(service).max_decoding_message_size(decode_limit);

    let (load_failed_tx, load_failed_rx) = tokio::sync::oneshot::channel::<RouteError>();
    let loader = {
        let slot = slot.clone();
        let health = health.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || Engine::load(config)).await {
                Ok(Ok(engine)) => {
                    slot.set(Arc::new(engine));
                    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
                    health.set_service_status("", ServingStatus::Serving).await;
                    tracing::info!("models loaded; serving");
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
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(router)
        // NOTE: without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small
        // unary replies on loopback.
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), stop)
        .await?;
    loader.abort();
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
