//! Starts the real server (real ONNX Runtime, real models, shipped config) on 127.0.0.1:0 and
//! returns generated clients. Each test gets its own server; dropping `TestServer` shuts it down.
#![allow(dead_code)]
use std::{net::SocketAddr, path::Path, time::Duration};

use switchyard::{config::Config, pb::router_client::RouterClient};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

/// The shipped config, as the binary would load it.
pub fn shipped_config() -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml")).expect("shipped config loads")
}

/// A running server and its clients.
pub struct TestServer {
    /// Bound address.
    pub addr: SocketAddr,
    /// Router client.
    pub client: RouterClient<Channel>,
    /// Health client.
    pub health: HealthClient<Channel>,
    /// Channel for other clients (reflection).
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), switchyard::transport::TransportError>>>,
}

impl TestServer {
    /// Starts with the shipped config.
    pub async fn start() -> Self {
        Self::start_with(shipped_config()).await
    }

    /// Starts with `config` and waits until health says SERVING.
    pub async fn start_with(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(switchyard::transport::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().tcp_nodelay(true).connect().await.unwrap();
        let mut health = HealthClient::new(channel.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let status = health
                .check(HealthCheckRequest { service: "switchyard.v1.Router".into() })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or_default();
            if status == ServingStatus::Serving as i32 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "server did not become SERVING");
            assert!(!handle.is_finished(), "server exited while loading");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { addr, client: RouterClient::new(channel.clone()), health, channel, stop: Some(stop), handle: Some(handle) }
    }

    /// Stops the server and waits for it to finish in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Hard competition math.
pub const MATH_PROMPT: &str = "Let $S$ be the set of positive integers $n$ such that $n^2 + 12n - 2007$ is a perfect square. Find the remainder when the sum of all elements of $S$ is divided by 1000.";
/// Chit-chat.
pub const CHAT_PROMPT: &str = "hey! what's a fun thing to do with friends on a rainy saturday afternoon?";

/// The shared routing data: `SWITCHYARD_DATA`, else `../shared/data` beside the repo.
pub fn shared_data() -> std::path::PathBuf {
    std::env::var_os("SWITCHYARD_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// The serving encoder of the shipped config.
pub fn shipped_encoder() -> switchyard::encoder::Encoder {
    let cfg = shipped_config();
    let env = switchyard::runtime::environment(None).expect("ONNX Runtime (run scripts/bootstrap.sh)");
    switchyard::encoder::Encoder::load(env, &cfg.encoder).expect("encoder loads")
}
