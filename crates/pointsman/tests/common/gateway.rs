//! The gateway side of the end-to-end tests (tests/gateway.rs, tests/replay.rs): fake
//! OpenAI-compatible model servers on loopback, one per provider, that record what reaches them
//! and can be told to fail; the real Envoy running the shipped `deploy/envoy/envoy.yaml` with
//! its ports changed; a raw HTTP/1.1 client that posts through it.
#![allow(dead_code)]
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::common::repo;

/// What a fake model server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub model: String,
    pub headers: HashMap<String, String>,
}

/// A fake OpenAI-compatible model server.
#[derive(Clone)]
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Every upstream's arrivals in order, by upstream name (shared).
    pub all: Arc<Mutex<Vec<(&'static str, Seen)>>>,
    pub failing: Arc<AtomicBool>,
    /// Holds every request without answering.
    pub stalling: Arc<AtomicBool>,
    /// With `holding` on, streams wait for this before their last event, so the test can see
    /// the first ones first.
    pub release: Arc<tokio::sync::Notify>,
    pub holding: Arc<AtomicBool>,
    /// Milliseconds every answer waits before its first byte (a provider's speed).
    pub delay_ms: Arc<AtomicU64>,
    /// When not 0, every request is answered with this status (e.g. 503: an outage).
    pub fail_status: Arc<AtomicU16>,
}

impl Upstream {
    pub async fn start(name: &'static str, all: &Arc<Mutex<Vec<(&'static str, Seen)>>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let u = Upstream {
            name,
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            all: Arc::clone(all),
            failing: Arc::default(),
            stalling: Arc::default(),
            release: Arc::new(tokio::sync::Notify::new()),
            holding: Arc::default(),
            delay_ms: Arc::default(),
            fail_status: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(u.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        u
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub async fn completions(
    axum::extract::State(u): axum::extract::State<Upstream>,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // A body that is not JSON is recorded too (model ""): clients may send anything.
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or_default().to_string();
    let h = headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let seen = Seen { model: model.clone(), headers: h };
    u.all.lock().unwrap().push((u.name, seen.clone()));
    u.seen.lock().unwrap().push(seen);
    if u.stalling.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let delay = u.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = u.fail_status.load(Ordering::SeqCst);
    if status != 0 {
        let err = serde_json::json!({"error": {"message": format!("{} answers {status}", u.name), "type": "server_error"}});
        return (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(err)).into_response();
    }
    if u.failing.load(Ordering::SeqCst) {
        let err = serde_json::json!({"error": {"message": format!("{} is down", u.name), "type": "server_error"}});
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(err)).into_response();
    }
    let content = format!("hello from {}", u.name);
    if req["stream"].as_bool() == Some(true) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
        let release = u.holding.load(Ordering::SeqCst).then(|| Arc::clone(&u.release));
        tokio::spawn(async move {
            let event = |v: serde_json::Value| Ok(bytes::Bytes::from(format!("data: {v}\n\n")));
            for word in content.split(' ') {
                let _ = tx.send(event(serde_json::json!({"model": model, "choices": [{"index": 0, "delta": {"content": word}}]}))).await;
            }
            if let Some(release) = release {
                release.notified().await;
            }
            let usage = serde_json::json!({"model": model, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}});
            let _ = tx.send(event(usage)).await;
            let _ = tx.send(Ok(bytes::Bytes::from_static(b"data: [DONE]\n\n"))).await;
        });
        let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    axum::Json(serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 57, "total_tokens": 78}
    }))
    .into_response()
}

pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("POINTSMAN_ENVOY").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let p = repo().join(".runtime/envoy-1.40.0/envoy");
    assert!(p.is_file(), "Envoy is not installed at {}: run scripts/bootstrap.sh --envoy (scripts/test.sh does)", p.display());
    p
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Runs the shipped config with its ports replaced (`ports`: shipped port -> ours); without
    /// `ext_proc`, the ext_proc filter is cut out (the gateway without Pointsman); `edit` changes
    /// the text further.
    pub async fn start(ports: &[(u16, u16)], ext_proc: bool, edit: &[(&str, &str)]) -> Self {
        let mut text = std::fs::read_to_string(repo().join("deploy/envoy/envoy.yaml")).unwrap();
        for (from, to) in edit {
            assert!(text.contains(from), "the shipped config has {from}");
            text = text.replace(from, to);
        }
        for (from, to) in ports {
            let (a, b) = (format!("port_value: {from} "), format!("port_value: {to} "));
            assert!(text.contains(&a), "the shipped config has port {from}");
            text = text.replace(&a, &b);
        }
        if !ext_proc {
            let (start, end) = (
                text.find("          - name: envoy.filters.http.ext_proc").unwrap(),
                text.find("          - name: envoy.filters.http.router").unwrap(),
            );
            text.replace_range(start..end, "");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, &text).unwrap();
        let listen = ports.iter().find(|(f, _)| *f == 10000).unwrap().1;
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(["--log-level", "error", "--disable-hot-restart"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "Envoy did not listen within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Envoy { child, addr, _dir: dir }
    }
}

/// A parsed HTTP/1.1 response.
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

pub fn chat(model: &str, prompt: &str, stream: bool) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}).to_string()
}

/// POSTs a chat request through the gateway and reads the whole response (chunked or not).
pub async fn post(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> Reply {
    try_post(addr, body, headers).await.unwrap_or_else(|e| panic!("POST through {addr}: {e}"))
}

/// [`post`], with a connection error (reset, closed without a reply) as `Err`.
pub async fn try_post(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    try_post_paused(addr, body, headers, None).await
}

/// [`post`], sending the body only `pause` after the head (so Envoy has handed the headers to
/// Pointsman before any of the body arrives).
pub async fn post_paused(addr: SocketAddr, body: &str, pause: Duration) -> Reply {
    try_post_paused(addr, body, &[], Some(pause)).await.unwrap_or_else(|e| panic!("POST through {addr}: {e}"))
}

pub async fn try_post_paused(addr: SocketAddr, body: &str, headers: &[(&str, &str)], pause: Option<Duration>) -> std::io::Result<Reply> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if let Some(p) = pause {
        tokio::time::sleep(p).await;
    }
    s.write_all(body.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await.expect("a reply within 30 s")?;
    if !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without a complete reply"));
    }
    Ok(parse(&buf))
}

pub fn parse(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a complete response head");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: HashMap<String, String> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) { dechunk(rest) } else { rest.to_string() };
    Reply { status, headers, body }
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// The shipped config's ports mapped to ours: Envoy's listener on `listen`, the ext_proc cluster
/// on `ext_port`, each upstream's cluster (by its name: `default` for default_upstream) on its
/// port, and the admin listener on a free port.
pub fn gateway_ports(listen: u16, ext_port: u16, upstreams: &[&Upstream]) -> Vec<(u16, u16)> {
    let shipped = [("default", 18000), ("openai", 18001), ("together", 18002), ("anthropic", 18003), ("deepseek", 18004)];
    let mut ports = vec![(10000, listen), (50052, ext_port), (9901, free_loopback_port())];
    for u in upstreams {
        let (_, port) = shipped.iter().find(|(n, _)| *n == u.name).unwrap_or_else(|| panic!("no cluster for {}", u.name));
        ports.push((*port, u.addr.port()));
    }
    ports
}

/// A free loopback port (bound and released: Envoy binds it next).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
