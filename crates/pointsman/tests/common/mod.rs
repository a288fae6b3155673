//! Starts the real server (real ONNX Runtime, real models, shipped config) on 127.0.0.1:0 and
//! returns generated clients. Each test gets its own server; dropping `TestServer` shuts it down.
#![allow(dead_code)]
use std::{net::SocketAddr, path::Path, time::Duration};

use pointsman::{config::Config, pb::router_client::RouterClient, transport::Listeners};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

/// The shipped config, as the binary would load it, except that the decision log goes to a
/// fresh temporary file (tests never share or leave a database behind in the repo).
pub fn shipped_config() -> Config {
    let mut cfg = Config::load(&Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/pointsman.toml"))
        .expect("shipped config loads");
    cfg.decision_log.path = temp_db_path();
    cfg
}

/// A unique path for a test database under the system temp folder.
pub fn temp_db_path() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("pointsman-test-{}-{n}", std::process::id())).join("decisions.db")
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Writes a copy of the shipped config to `path` with absolute model paths, the head in
/// `head_dir`, the decision log at `db`, and each `(key, value)` of `set` replacing the line
/// `key = ...` (keys are unique in the shipped file). Returns the path.
pub fn write_config(path: &Path, head_dir: &Path, db: &Path, set: &[(&str, &str)]) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("config/pointsman.toml")).unwrap();
    let encoder = repo().join("models/encoder");
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let key = t.split(" = ").next().unwrap_or("");
        let replaced = if line.starts_with("dir = \"../models/encoder\"") {
            format!("dir = {:?}", encoder.display().to_string())
        } else if line.starts_with("dir = \"../models/router\"") {
            format!("dir = {:?}", head_dir.display().to_string())
        } else if let Some(rest) = line.strip_prefix("static_dir = \"../") {
            format!("static_dir = {:?}", repo().join(rest.trim_end_matches('"')).display().to_string())
        } else if line.starts_with("path = \"../var/decisions.db\"") {
            format!("path = {:?}", db.display().to_string())
        } else if let Some((_, v)) = set.iter().find(|(k, _)| !t.starts_with('#') && *k == key) {
            format!("{key} = {v}")
        } else {
            line.to_string()
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
    path.to_path_buf()
}

/// Copies the shipped head into `dir` (created) and returns it.
pub fn copy_head(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["head.onnx", "manifest.json"] {
        std::fs::copy(repo().join("models/router").join(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

/// GETs `path` over plaintext HTTP/1.1 with extra `headers` and returns the status code and body.
pub async fn http_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// GETs `path` over HTTP/1.1 and returns the body, asserting a 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http_request(addr, path, &[]).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A plaintext channel to `addr`, or a TLS one with `tls` (the server's name is `localhost`).
pub async fn connect(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Channel, tonic::transport::Error> {
    let endpoint = match tls {
        Some(t) => Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(t)?,
        None => Channel::from_shared(format!("http://{addr}")).unwrap(),
    };
    endpoint.tcp_nodelay(true).connect().await
}

/// The value of a metric line (`name{labels} value`) in a Prometheus page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Polls `f` every 20 ms for up to 10 s until it returns Some.
pub async fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running server and its clients.
pub struct TestServer {
    /// Address of the data plane (Router, health, reflection).
    pub addr: SocketAddr,
    /// Router client.
    pub client: RouterClient<Channel>,
    /// Health client.
    pub health: HealthClient<Channel>,
    /// Channel for other clients (reflection).
    pub channel: Channel,
    /// Address of the operator surface (`Admin`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// Channel to the operator surface, for `AdminClient`.
    pub admin_channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), pointsman::transport::TransportError>>>,
    /// A folder made by `temp_db_path`, removed when the server goes.
    scratch: Option<std::path::PathBuf>,
}

impl TestServer {
    /// Starts with the shipped config.
    pub async fn start() -> Self {
        Self::start_with(shipped_config()).await
    }

    /// Starts with `config` and waits until health says SERVING.
    pub async fn start_with(config: Config) -> Self {
        Self::start_tls(config, None).await
    }

    /// Starts with `config`, whose `[tls]` is set, and connects with `tls` (to the admin
    /// listener too when `tls.admin` is on).
    pub async fn start_tls(config: Config, tls: Option<ClientTlsConfig>) -> Self {
        let scratch = config
            .decision_log
            .path
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pointsman-test-")))
            .map(Path::to_path_buf);
        let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (data.local_addr().unwrap(), admin.local_addr().unwrap());
        let admin_tls = tls.clone().filter(|_| config.tls.admin);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(pointsman::transport::serve(config, Listeners { data, admin, ext_proc: None }, async {
            let _ = stopped.await;
        }));
        let channel = connect(addr, tls).await.unwrap();
        let mut health = HealthClient::new(channel.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let status = health
                .check(HealthCheckRequest { service: "pointsman.v1.Router".into() })
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
        let admin_channel = connect(admin_addr, admin_tls).await.unwrap();
        Self {
            addr,
            client: RouterClient::new(channel.clone()),
            health,
            channel,
            admin_addr,
            admin_channel,
            stop: Some(stop),
            handle: Some(handle),
            scratch,
        }
    }

    /// The Prometheus page from the operator surface.
    pub async fn metrics(&self) -> String {
        http_get(self.admin_addr, "/metrics").await
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
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Hard competition math.
pub const MATH_PROMPT: &str = "Let $S$ be the set of positive integers $n$ such that $n^2 + 12n - 2007$ is a perfect square. Find the remainder when the sum of all elements of $S$ is divided by 1000.";
/// Chit-chat.
pub const CHAT_PROMPT: &str = "hey! what's a fun thing to do with friends on a rainy saturday afternoon?";

/// The routing data: `POINTSMAN_DATA`, else the repo's own `data/`.
pub fn shared_data() -> std::path::PathBuf {
    std::env::var_os("POINTSMAN_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("data"))
}

/// The serving encoder of the shipped config.
pub fn shipped_encoder() -> pointsman::encoder::Encoder {
    let cfg = shipped_config();
    let env = pointsman::runtime::environment(None).expect("ONNX Runtime (run scripts/bootstrap.sh)");
    pointsman::encoder::Encoder::load(env, &cfg.encoder).expect("encoder loads")
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, all PEM.
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    pub client: (String, String),
}

pub fn make_pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.extended_key_usages = vec![usage];
        (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    };
    Pki {
        ca: ca_pem,
        server: leaf(vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf(vec!["gateway.test".into()], ExtendedKeyUsagePurpose::ClientAuth),
    }
}

/// [`make_pki`]'s CA and server certificate and key as PEM files, in a folder of their own (for
/// servers started from files: PostgreSQL, Redis).
pub struct TestTls {
    dir: tempfile::TempDir,
}

impl TestTls {
    pub fn new(name: &str) -> Self {
        let pki = make_pki(name);
        let dir = tempfile::tempdir().unwrap();
        for (file, pem) in [("ca.pem", &pki.ca), ("server.pem", &pki.server.0), ("server.key", &pki.server.1)] {
            std::fs::write(dir.path().join(file), pem).unwrap();
        }
        TestTls { dir }
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("server.key")
    }
}

/// A process's `/proc/<pid>/status` size field (`VmRSS:`, `VmHWM:`), in MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb / 1024.0
}
