//! What a new user meets first in `pointsman eval` and `train`: clear errors (no backtrace) that
//! say what to do instead, refusals of what cannot be scored honestly, the embedding cache and
//! progress lines, and no default `--out` that would overwrite the shipped head.
use std::process::Command;

use super::{common, first_alpaca_prompts, write_log};
use common::{repo, shared_data};

#[test]
fn eval_explains_what_it_cannot_score_honestly_and_reuses_cached_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_pointsman");
    // A log the head never saw: 40 alpaca prompts under new ids.
    let lines: Vec<String> = first_alpaca_prompts(40)
        .iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["prompt_id"] = format!("new-{}", v["prompt_id"].as_str().unwrap()).into();
            v.to_string()
        })
        .collect();
    let fresh = dir.path().join("never-seen.jsonl");
    write_log(&fresh, &lines);
    // A file the shipped head was trained on, under another name: recognised by its hash.
    let trained = dir.path().join("renamed.jsonl.gz");
    std::fs::copy(shared_data().join("alpaca_eval2/train.jsonl.gz"), &trained).unwrap();
    let run = |cache_home: &str, args: &[&str]| {
        let o = Command::new(bin)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "warn")
            .env_remove("POINTSMAN_EMBEDDING_CACHE")
            .env("XDG_CACHE_HOME", dir.path().join(cache_home))
            .args(args)
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let eval = |cache_home: &str, data: &std::path::Path, out: &str, args: &[&str]| {
        let (data, out) = (data.to_str().unwrap(), dir.path().join(out));
        run(cache_home, &[&["eval", "--data", data, "--out", out.to_str().unwrap()], args].concat())
    };

    // 1. Held-out prompts of a log the head never saw: a clear error naming the file, the count
    // and --all-prompts, with no backtrace even under RUST_BACKTRACE=1.
    let (ok, err) = eval("cache", &fresh, "out0", &[]);
    assert!(!ok);
    assert!(err.contains("never-seen.jsonl: the head holds out 0 of its 40 prompts"), "{err}");
    assert!(err.contains("pass --all-prompts"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace") && !err.contains("panicked"), "{err}");

    // 2. Every prompt of a file the head was trained on: refused, naming the file and why.
    let (ok, err) = eval("cache", &trained, "out0", &["--all-prompts"]);
    assert!(!ok);
    assert!(err.contains("renamed.jsonl.gz: refusing --all-prompts"), "{err}");
    assert!(err.contains("the head's training data") && err.contains("Drop --all-prompts"), "{err}");
    assert!(err.contains("--allow-training-prompts") && !err.to_lowercase().contains("backtrace"), "{err}");
    assert!(!dir.path().join("out0").exists(), "nothing is written for a refused run");
    let (ok, err) =
        run("cache", &["tune", "--name", "x", "--min-quality-share", "0.9", "--all-prompts", "--data", trained.to_str().unwrap()]);
    assert!(!ok && err.contains("renamed.jsonl.gz: refusing --all-prompts"), "tune refuses it too: {err}");
    // The override scores such a file: a head copy whose manifest lists the small log as trained on.
    let head = common::copy_head(&dir.path().join("head"));
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(head.join("manifest.json")).unwrap()).unwrap();
    let digest = pointsman::predictor::sha256_hex(&std::fs::read(&fresh).unwrap());
    m["trained_on"]["files"].as_array_mut().unwrap().push(serde_json::json!({ "path": "small.jsonl", "sha256": digest }));
    std::fs::write(head.join("manifest.json"), m.to_string()).unwrap();
    let cfg = common::write_config(&dir.path().join("cfg.toml"), &head, &dir.path().join("db.sqlite"), &[]);
    let cfg = cfg.to_str().unwrap();
    let (ok, err) = eval("cache", &fresh, "out0", &["--config", cfg, "--all-prompts"]);
    assert!(!ok && err.contains("never-seen.jsonl: refusing --all-prompts") && err.contains("`small.jsonl`"), "{err}");
    let (ok, err) = eval("cache", &fresh, "out0", &["--config", cfg, "--all-prompts", "--allow-training-prompts", "--quiet"]);
    assert!(ok, "{err}");
    assert!(!err.contains("embedding"), "--quiet prints no progress: {err}");

    // 4. Progress on stderr, and the second run over the same file reads its embeddings back
    // from the training cache: a cold cache grows on the first run and not on the second.
    let record = (32 + 4 * 384) as u64;
    let cache = dir.path().join("cold/pointsman/embeddings/all-MiniLM-L6-v2_int8.emb");
    let (ok, err) = eval("cold", &fresh, "out1", &["--all-prompts"]);
    assert!(ok, "{err}");
    assert!(err.contains("never-seen.jsonl: 40 prompts") && err.contains("embedding cache: 0 of 40 prompts cached, 40 to embed"), "{err}");
    assert!(err.contains("embedding prompts: 40/40"), "{err}");
    assert_eq!(std::fs::metadata(&cache).expect("eval writes the embedding cache").len(), 40 * record);
    // Every prompt is evaluated, so nothing is left for the kNN baselines to remember: they are
    // reported absent with the reason, never as a figure from an empty memory.
    let json = |out: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("report.json")).unwrap()).unwrap()
    };
    let r = &json("out1")[0];
    assert!(r["tuned_knn"].is_null() && r["knn"].is_null(), "{r}");
    let why = r["tuned_knn_absent"].as_str().unwrap();
    assert!(why.contains("no memory") && why.contains("--knn-memory"), "{why}");
    assert!(r["verdict"].as_str().unwrap().contains("no tuned kNN to compare with"), "{}", r["verdict"]);
    let (ok, err) = eval("cold", &fresh, "out2", &["--all-prompts"]);
    assert!(ok, "{err}");
    assert!(err.contains("embedding cache: 40 of 40 prompts cached, 0 to embed") && !err.contains("embedding prompts:"), "{err}");
    assert_eq!(std::fs::metadata(&cache).unwrap().len(), 40 * record, "nothing new to cache on the second run");
    let report = |out: &str| std::fs::read_to_string(dir.path().join(out).join("report.json")).unwrap();
    assert_eq!(report("out1"), report("out2"), "cached embeddings give the same figures");
    // With the head's training logs as memory (--knn-memory), less this file's prompts (the same
    // texts under new ids), the baselines are scored.
    let alpaca = shared_data().join("alpaca_eval2/train.jsonl.gz");
    let (ok, err) = eval("cold", &fresh, "out4", &["--all-prompts", "--knn-memory", alpaca.to_str().unwrap()]);
    assert!(ok, "{err}");
    let r = &json("out4")[0];
    let t = &r["tuned_knn"];
    let alpaca_prompts = pointsman::learning::read_logs(&[alpaca], true).unwrap().prompts.len();
    let memory = t["memory_prompts"].as_u64().unwrap() as usize;
    assert!(memory >= 100 && memory <= alpaca_prompts - 40, "the evaluated texts are not in memory: {memory} of {alpaca_prompts}");
    assert!(t["gap_closed"].as_f64().unwrap().is_finite() && r["knn"]["gap_closed"].as_f64().unwrap().is_finite(), "{r}");
    assert!(r["verdict"].as_str().unwrap().contains("vs tuned kNN"));
    let (ok, err) = run("cold", &["eval", "--data", fresh.to_str().unwrap(), "--knn-memory", "x.jsonl"]);
    assert!(!ok && err.contains("--all-prompts"), "--knn-memory is for --all-prompts: {err}");
    // --no-embedding-cache neither reads nor writes it.
    let (ok, err) = eval("off", &fresh, "out3", &["--all-prompts", "--no-embedding-cache"]);
    assert!(ok && !err.contains("embedding cache:"), "{err}");
    assert!(!dir.path().join("off/pointsman").exists());
}

#[test]
fn train_requires_out_so_a_first_try_never_overwrites_the_shipped_head() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    write_log(&log, &first_alpaca_prompts(30));
    let shipped = std::fs::read(repo().join("models/router/head.onnx")).unwrap();
    for cv in [&[][..], &["--cv", "2"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_pointsman"))
            .env("XDG_CACHE_HOME", dir.path())
            .env_remove("POINTSMAN_TRAIN_OUT")
            .args(["train", "--quiet", "--data"])
            .arg(&log)
            .args(cv)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("required arguments were not provided") && err.contains("--out <OUT>"), "{err}");
    }
    assert_eq!(shipped, std::fs::read(repo().join("models/router/head.onnx")).unwrap());
    let help = Command::new(env!("CARGO_BIN_EXE_pointsman")).args(["train", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Required, with no default"));
}
