//! A Pointsman replica for the tests that run the release binary against PostgreSQL and Redis
//! (tests/fleet.rs, tests/replay.rs).
#![allow(dead_code)]
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pointsman::pb::{self, router_client::RouterClient, HealthState, Outcome};
use tonic::transport::Channel;

use crate::{common::*, servers::*};

pub const BIN: &str = env!("CARGO_BIN_EXE_pointsman");

/// One replica: the release binary with its own config folder (and so its own spill file).
pub struct Replica {
    pub name: &'static str,
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub client: RouterClient<Channel>,
}

impl Replica {
    /// With `tls`, the replica reaches both servers over TLS, verified against its CA.
    pub async fn start(name: &'static str, root: &Path, pg: &Postgres, redis: &Redis, tls: Option<&TestTls>) -> Self {
        let (pg_url, redis_url) = match tls {
            Some(t) => (pg.tls_url(&t.ca()), redis.tls_url()),
            None => (pg.url(), redis.url()),
        };
        // `shared_ca_file` is not in the shipped config: it goes in after `shared_key`.
        let shared_key = match tls {
            Some(t) => format!("\"pointsman\"\nshared_ca_file = {:?}", t.ca().display().to_string()),
            None => "\"pointsman\"".to_string(),
        };
        Self::start_with(name, root, &pg_url, Some(&redis_url), &[("shared_key", &shared_key)]).await
    }

    /// A replica on `pg_url` (and Redis, if given) with `settings` over the test's defaults.
    pub async fn start_with(name: &'static str, root: &Path, pg_url: &str, redis_url: Option<&str>, settings: &[(&str, &str)]) -> Self {
        Self::start_args(name, root, pg_url, redis_url, settings, &[]).await
    }

    /// [`Replica::start_with`], with `args` added to `serve`'s.
    pub async fn start_args(
        name: &'static str,
        root: &Path,
        pg_url: &str,
        redis_url: Option<&str>,
        settings: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let spill = format!("{:?}", dir.join("spill.db").display().to_string());
        // Feedback reaches any replica through the balancer: every catalog report counts.
        let defaults = [
            ("count_unknown_requests", "true"),
            ("batch_max", "64"),
            ("cool_down_seconds", "120.0"),
            ("write_timeout_ms", "500"),
            ("spill_path", spill.as_str()),
        ];
        // The first setting of a key wins.
        let all: Vec<(&str, &str)> = settings.iter().copied().chain(defaults).collect();
        let cfg = write_config(&dir.join("pointsman.toml"), &repo().join("models/router"), &dir.join("unused.db"), &all);
        let mut all_args = vec!["--decision-log-url", pg_url];
        if let Some(redis_url) = redis_url {
            all_args.extend(["--health-shared", redis_url]);
        }
        all_args.extend(args);
        Self::spawn(name, &cfg, &all_args).await
    }

    /// Runs `serve` with the config at `cfg` and `args` on free ports, and waits until it answers.
    pub async fn spawn(name: &'static str, cfg: &Path, args: &[&str]) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let child = Command::new(BIN)
            .args(["--config", cfg.to_str().unwrap(), "serve"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(args)
            .env("RUST_LOG", std::env::var("FLEET_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        let client = loop {
            if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
                let mut c = RouterClient::new(ch);
                if c.list_models(pb::ListModelsRequest {}).await.is_ok() {
                    break c;
                }
            }
            assert!(Instant::now() < deadline, "replica {name} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Replica { name, child, port, admin_port, client }
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let addr = format!("127.0.0.1:{}", self.admin_port).parse().unwrap();
        metric(&http_get(addr, "/metrics").await, series).unwrap_or(f64::NAN)
    }

    pub async fn state(&self, model: &str) -> HealthState {
        let models = self.client.clone().list_models(pb::ListModelsRequest {}).await.unwrap().into_inner().models;
        let m = models.iter().find(|m| m.model == model).unwrap();
        m.health.as_ref().map_or(HealthState::Healthy, |h| h.state())
    }

    pub async fn route(&self, prompt: &str, id: &str) -> Result<String, tonic::Status> {
        let r = self.client.clone().route(pb::RouteRequest { prompt: prompt.into(), request_id: id.into(), ..Default::default() }).await?;
        Ok(r.into_inner().candidates[0].model.clone())
    }

    pub async fn report(&self, id: &str, model: &str, outcome: Outcome, quality: Option<f64>) -> Result<(), tonic::Status> {
        let fb = pb::FeedbackRequest {
            request_id: id.into(),
            model: model.into(),
            outcome: outcome as i32,
            quality,
            output_tokens: Some(42),
            latency_ms: Some(120.0),
            ..Default::default()
        };
        self.client.clone().feedback(fb).await.map(|_| ())
    }

    pub fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "replica {} stopped with {status}", self.name);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
