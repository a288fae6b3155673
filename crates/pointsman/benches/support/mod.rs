//! What the benches that drive a real server share: starting it on loopback and reading its
//! `/metrics` page, and a closed-loop load.
#![allow(dead_code)] // Each bench uses part of it.
use std::time::{Duration, Instant};

use pointsman::{
    config::Config,
    pb::{router_client::RouterClient, RouteRequest},
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Starts the server with `config` on `127.0.0.1:0` and waits until it routes: a client, the
/// sender that stops it, and its admin address.
pub async fn start(config: Config) -> (RouterClient<Channel>, tokio::sync::oneshot::Sender<()>, std::net::SocketAddr) {
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (data.local_addr().unwrap(), admin.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pointsman::transport::serve(config, pointsman::transport::Listeners { data, admin, ext_proc: None }, async {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().tcp_nodelay(true).connect().await.unwrap();
    let mut client = RouterClient::new(channel);
    // Wait for the models.
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.route(RouteRequest { prompt: "warm up".into(), ..Default::default() }).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (client, tx, admin_addr)
}

/// The lines of the server's `/metrics` page (admin address `addr`) that start with `prefix`.
pub async fn metrics(addr: std::net::SocketAddr, prefix: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).await.unwrap();
    page.lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
}

/// What a closed-loop load run measured.
pub struct Load {
    /// Client-side latencies, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time of the run.
    pub wall: Duration,
    /// The server's mean stage times in microseconds (`RouteResponse.timings`): prepare, encode,
    /// predict, rank, total.
    pub stages: [f64; 5],
}

/// `concurrency` clients routing `prompts` in turn, one request at a time each, until `requests`
/// have been sent or (with `budget`) the budget is spent and at least 30 were.
pub async fn run_load(
    client: &RouterClient<Channel>,
    prompts: &[String],
    concurrency: usize,
    requests: usize,
    budget: Option<Duration>,
) -> Load {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let prompts = Arc::new(prompts.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (mut c, prompts, next) = (client.clone(), Arc::clone(&prompts), Arc::clone(&next));
        tasks.spawn(async move {
            let (mut lat, mut stages) = (Vec::new(), [0.0; 5]);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || budget.is_some_and(|b| i >= 30 && start.elapsed() > b) {
                    return (lat, stages);
                }
                let req = RouteRequest { prompt: prompts[i % prompts.len()].clone(), ..Default::default() };
                let t = Instant::now();
                let r = c.route(req).await.expect("route succeeds").into_inner();
                lat.push(t.elapsed());
                if let Some(s) = r.timings {
                    for (acc, v) in stages.iter_mut().zip([s.prepare_us, s.encode_us, s.predict_us, s.rank_us, s.total_us]) {
                        *acc += v as f64;
                    }
                }
            }
        });
    }
    let (mut latencies, mut stages) = (Vec::new(), [0.0; 5]);
    while let Some(l) = tasks.join_next().await {
        let (l, s) = l.unwrap();
        latencies.extend(l);
        stages.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
    let wall = start.elapsed();
    latencies.sort();
    stages.iter_mut().for_each(|s| *s /= latencies.len().max(1) as f64);
    Load { latencies, wall, stages }
}
