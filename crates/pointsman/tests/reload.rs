//! Hot reload against the real server: `Admin.Reload` under load with no failed request, bad or
//! half-written files rejected while the old models keep serving, and the file watcher.
mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use pointsman::{
    config::Config,
    pb::{self, admin_client::AdminClient},
};
use tonic::Code;

/// Rewrites the manifest's head id in place, atomically (write a temp file, then rename).
fn set_head_id(head: &Path, id: &str) {
    let path = head.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["head_id"] = id.into();
    let tmp = head.join("manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

async fn version(server: &TestServer) -> String {
    server.client.clone().list_models(pb::ListModelsRequest {}).await.unwrap().into_inner().router_version
}

const PROMPTS: [&str; 4] = [
    MATH_PROMPT,
    CHAT_PROMPT,
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Summarise the causes of the First World War in three sentences.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_swaps_atomically_and_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let head_a = copy_head(&dir.path().join("head-a"));
    let head_b = copy_head(&dir.path().join("head-b"));
    set_head_id(&head_b, "reloaded-b");
    let db = dir.path().join("decisions.db");
    let cfg_path = dir.path().join("pointsman.toml");
    write_config(&cfg_path, &head_a, &db, &[]);
    let server = TestServer::start_with(Config::load(&cfg_path).unwrap()).await;
    let v_a = version(&server).await;
    let mut admin = AdminClient::new(server.admin_channel.clone());

    // Load: 3 clients routing distinct texts (so the encoder runs), recording every version seen.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..3 {
        let (mut c, stop) = (server.client.clone(), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let (mut ok, mut failures, mut versions) = (0usize, Vec::new(), BTreeSet::new());
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let prompt = format!("{} (variant {w}-{i})", PROMPTS[i % PROMPTS.len()]);
                match c.route(pb::RouteRequest { prompt, ..Default::default() }).await {
                    Ok(r) => {
                        ok += 1;
                        versions.insert(r.into_inner().router_version);
                    }
                    Err(e) => failures.push(format!("{:?}: {}", e.code(), e.message())),
                }
                i += 1;
            }
            (ok, failures, versions)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. A new head: swapped in.
    write_config(&cfg_path, &head_b, &db, &[]);
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.router_version.ends_with("+reloaded-b"), "{r:?}");
    assert_eq!(r.previous_version, v_a);
    assert_eq!(r.models, 94, "the shipped catalog's models");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2. A half-written graph: rejected by its hash, and the head B keeps serving.
    let head_c = copy_head(&dir.path().join("head-c"));
    let onnx = std::fs::read(head_c.join("head.onnx")).unwrap();
    std::fs::write(head_c.join("head.onnx"), &onnx[..onnx.len() / 2]).unwrap();
    write_config(&cfg_path, &head_c, &db, &[]);
    let e = admin.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("sha256") && e.message().contains("keep serving"), "{}", e.message());
    assert!(version(&server).await.ends_with("+reloaded-b"));

    // 3. A half-written manifest.
    let head_d = copy_head(&dir.path().join("head-d"));
    let text = std::fs::read_to_string(head_d.join("manifest.json")).unwrap();
    std::fs::write(head_d.join("manifest.json"), &text[..text.len() / 3]).unwrap();
    write_config(&cfg_path, &head_d, &db, &[]);
    let e = admin.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert!(e.message().contains("manifest"), "{}", e.message());

    // 4. A catalog the head does not cover at all, and a config that is not TOML.
    write_config(&cfg_path, &head_a, &db, &[]);
    let mut text = std::fs::read_to_string(&cfg_path).unwrap();
    text = text.replace("id = \"", "id = \"unknown-");
    std::fs::write(&cfg_path, &text).unwrap();
    let e = admin.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert!(e.message().contains("covers none of the catalog"), "{}", e.message());
    std::fs::write(&cfg_path, "[server\nlisten = ").unwrap();
    let e = admin.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert!(e.message().contains("invalid config"), "{}", e.message());
    assert!(version(&server).await.ends_with("+reloaded-b"), "every rejected reload left head B serving");

    // 5. Back to head A.
    write_config(&cfg_path, &head_a, &db, &[]);
    assert_eq!(admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner().router_version, v_a);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut versions) = (0, BTreeSet::new());
    for t in load {
        let (n, failures, v) = t.await.unwrap();
        assert!(failures.is_empty(), "requests failed during reloads: {failures:?}");
        ok += n;
        versions.extend(v);
    }
    assert!(ok > 20, "the load ran ({ok} requests)");
    assert!(versions.contains(&v_a) && versions.iter().any(|v| v.ends_with("+reloaded-b")), "{versions:?}");
    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_reloads_total{result=\"ok\"}"), Some(2.0));
    assert_eq!(metric(&page, "pointsman_reloads_total{result=\"rejected\"}"), Some(4.0));
    server.shutdown().await;
}

#[tokio::test]
async fn the_watcher_reloads_changed_files_and_skips_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let head = copy_head(&dir.path().join("head"));
    let cfg_path = dir.path().join("pointsman.toml");
    write_config(&cfg_path, &head, &dir.path().join("d.db"), &[("watch_interval_seconds", "0.2")]);
    let server = TestServer::start_with(Config::load(&cfg_path).unwrap()).await;
    let v0 = version(&server).await;

    set_head_id(&head, "watched-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !version(&server).await.ends_with("+watched-1") {
        assert!(tokio::time::Instant::now() < deadline, "the watcher did not pick up the new manifest");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(version(&server).await, v0);

    // A broken graph is rejected; the watched-1 head keeps serving and answering.
    std::fs::write(head.join("head.onnx"), b"not an onnx graph").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(version(&server).await.ends_with("+watched-1"));
    let r = server.client.clone().route(pb::RouteRequest { prompt: CHAT_PROMPT.into(), ..Default::default() }).await.unwrap();
    assert!(r.into_inner().router_version.ends_with("+watched-1"));
    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_reloads_total{result=\"rejected\"}"), Some(1.0), "a rejected fingerprint is not retried");
    server.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_keeps_encoder_and_head_keeps_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let head = copy_head(&dir.path().join("head"));
    let cfg_path = dir.path().join("pointsman.toml");
    write_config(&cfg_path, &head, &dir.path().join("decisions.db"), &[]);
    let mut server = TestServer::start_with(Config::load(&cfg_path).unwrap()).await;
    let mut admin = AdminClient::new(server.admin_channel.clone());
    let hit = |r: pb::RouteResponse| r.timings.unwrap().cache_hit;
    let ask = || pb::RouteRequest { prompt: PROMPTS[2].into(), ..Default::default() };
    assert!(!hit(server.client.route(ask()).await.unwrap().into_inner()));
    // Same files (as after a price-only ConfigMap edit): the new engine starts warm.
    admin.reload(pb::ReloadRequest {}).await.unwrap();
    assert!(hit(server.client.route(ask()).await.unwrap().into_inner()), "the cache was dropped by a reload of the same models");
    // Another head: its predictions differ, so the cache starts empty.
    set_head_id(&head, "another-head");
    let r = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.router_version.ends_with("another-head"), "{}", r.router_version);
    assert!(!hit(server.client.route(ask()).await.unwrap().into_inner()), "a new head answered from the old head's cache");
    server.shutdown().await;
}
