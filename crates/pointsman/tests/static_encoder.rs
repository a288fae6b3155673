//! The static tier's encoder (the table `scripts/build_static_encoder.py` distils from MiniLM,
//! averaged in Rust): it reproduces the script's reference vectors, honours its token cap, and
//! refuses a table its manifest does not describe.
#[path = "common/prompts.rs"]
mod prompts;

use std::path::{Path, PathBuf};

use pointsman::{
    config::{EncoderConfig, EncoderVariant},
    encoder::{static_table::EXACT_COUNT_BYTES, Encoder},
    runtime,
};

fn repo(p: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(p)
}

fn load(static_dir: PathBuf, static_max_tokens: usize) -> Result<Encoder, pointsman::encoder::EncoderError> {
    let env = runtime::environment(None).expect("ONNX Runtime (run scripts/bootstrap.sh)");
    let cfg = EncoderConfig { variant: EncoderVariant::Static, static_dir, static_max_tokens, ..EncoderConfig::default() };
    Encoder::load(env, &cfg)
}

#[test]
fn the_rust_static_encoder_reproduces_the_scripts_vectors() {
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo("models/static/fixture.json")).unwrap()).unwrap();
    let cap = fixture["max_tokens"].as_u64().unwrap() as usize;
    let enc = load(repo("models/static"), cap).expect("static encoder loads");
    assert_eq!((enc.id(), enc.dimension(), enc.max_tokens()), ("all-MiniLM-L6-v2-static256", 256, 8192));
    assert!(enc.is_static());
    let items = fixture["items"].as_array().unwrap();
    assert!(items.len() >= 8);
    let mut capped = 0;
    for item in items {
        let prompt = item["prompt"].as_str().unwrap();
        let want: Vec<f64> = item["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let tokens = enc.tokenize(prompt).unwrap();
        let want_count = item["tokens"].as_u64().unwrap() as f64;
        if prompt.len() <= EXACT_COUNT_BYTES {
            assert_eq!(f64::from(tokens.full_count), want_count, "token count of {:.40}", prompt);
        } else {
            // Counted on a prefix and extrapolated.
            let off = (f64::from(tokens.full_count) / want_count - 1.0).abs();
            assert!(off < 0.05, "{:.40}: {} tokens counted, {want_count} in fact", prompt, tokens.full_count);
        }
        if want_count as usize > cap {
            capped += 1;
        }
        let got = enc.embed(&tokens).unwrap();
        assert_eq!(got.len(), want.len());
        let worst = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-5, "{:.40}: max abs difference {worst:e}", prompt);
        // Unit length, or all zeros for a text without a known token (the empty prompt).
        let norm: f64 = got.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5 || (prompt.is_empty() && norm == 0.0), "{:.40}: norm {norm}", prompt);
    }
    assert_eq!(capped, 1, "the fixture's long prompt passes the cap");
}

#[test]
fn the_ascii_count_is_the_tokenizers_pipelines() {
    use pointsman::encoder::static_table::AsciiCount;
    let mut tok = tokenizers::Tokenizer::from_file(repo("models/static/tokenizer.json")).unwrap();
    tok.with_truncation(None).unwrap();
    tok.with_padding(None);
    let fast = AsciiCount::new(&tok).expect("BERT's uncased pipeline");
    let slow = |t: &str| tok.encode_fast(t, false).unwrap().len() as u32;
    let long_word = "a".repeat(101);
    let edge = [
        "",
        "   ",
        "Hello, World!!",
        "snake_case and kebab-case, C++ and x86-64; 3.14159 -- e^(i*pi)",
        "tab\tnew\nline\r\nreturn",
        // Control characters are dropped and join their neighbours.
        "bell\x07ed and\x0bvertical\x0cfeed\x7fdel",
        // Beyond max_input_chars_per_word: one [UNK].
        long_word.as_str(),
        "zzzzqqqqxxxx unknownish qqq",
        "MiXeD CaSe UPPER lower",
        "[not an added token] and [ ] brackets",
        "don\u{2019}t \u{2014} \u{201c}quoted\u{201d}\u{2026} \u{00bf}qu\u{00e9}? \u{2022} item",
    ];
    for t in edge {
        let (n, rest) = fast.count_ascii(t);
        assert_eq!(n + slow(&rest), slow(t), "{t:?}");
        assert_eq!(rest.is_empty(), !t.contains('\u{e9}'), "{t:?}");
    }
    // Text the fast count leaves to `tokenizers`.
    assert_eq!(fast.count("caf\u{e9}"), None);
    let mixed = "a caf\u{e9} [MASK] here, [PAD]";
    assert_eq!(fast.count_ascii(mixed), (3, "caf\u{e9} [MASK] [PAD] ".to_string()));
    assert_eq!(3 + slow("caf\u{e9} [MASK] [PAD] "), slow(mixed));
    let (mut checked, mut left) = (0, 0);
    for p in prompts::shared_prompts(&["zeroeval", "alpaca_eval2", "mmlu_pro"]) {
        let (n, rest) = fast.count_ascii(&p);
        // The chunks left to tokenizers complete the count exactly.
        assert_eq!(n + slow(&rest), slow(&p), "{:.60}", p);
        assert!(rest.is_empty() || !p.is_ascii() || p.contains("[MASK]") || p.contains("[CLS]"), "{:.60}", p);
        checked += 1;
        left += usize::from(!rest.is_empty());
    }
    assert!(checked > 10_000 && left < checked / 4, "{checked} prompts checked, {left} in part left to tokenizers");
}

#[test]
fn a_lower_cap_averages_fewer_tokens() {
    let enc = load(repo("models/static"), 16).unwrap();
    let long =
        "Explain the difference between a mutex and a semaphore, with examples in Rust and in C, and when each is the better choice.";
    let t = enc.tokenize(long).unwrap();
    assert!(t.full_count > 16, "{} tokens", t.full_count);
    let full = load(repo("models/static"), 8192).unwrap();
    let (a, b) = (enc.embed_text(long).unwrap(), full.embed_text(long).unwrap());
    assert!(pointsman::encoder::cosine(&a, &b) < 0.9999, "the cap changed nothing");
}

#[test]
fn a_table_the_manifest_does_not_describe_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::copy(repo("models/static").join(f), dir.path().join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(repo("models/static/manifest.json")).unwrap();
    let write = |text: String| std::fs::write(dir.path().join("manifest.json"), text).unwrap();

    write(manifest.replace("\"dimension\": 256", "\"dimension\": 384"));
    let e = load(dir.path().to_path_buf(), 8192).err().expect("refused").to_string();
    assert!(e.contains("the table has 256 columns, the manifest says `dimension` 384"), "{e}");

    write(manifest.replace("pointsman-static/1", "pointsman-static/9"));
    let e = load(dir.path().to_path_buf(), 8192).err().expect("refused").to_string();
    assert!(e.contains("`format` must be `pointsman-static/1`") && e.contains("pointsman-static/9"), "{e}");

    let mut bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    write(manifest);
    let e = load(dir.path().to_path_buf(), 8192).err().expect("refused").to_string();
    assert!(e.contains("has sha256") && e.contains("the manifest says"), "{e}");
}
