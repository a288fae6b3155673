//! Real prompts from the shared routing files (`data/`, or `POINTSMAN_DATA`), each once, for the
//! tests and benches that need real text.
use std::io::Read;

/// The distinct prompts of `families` (`data/<family>/train.jsonl.gz`), in file order.
pub fn shared_prompts(families: &[&str]) -> Vec<String> {
    let root = std::env::var_os("POINTSMAN_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("data"));
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in families {
        let file = std::fs::File::open(root.join(f).join("train.jsonl.gz")).expect("routing data present (data/ or POINTSMAN_DATA)");
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if seen.insert(v["prompt_id"].as_str().unwrap().to_string()) {
                out.push(v["prompt"].as_str().unwrap().to_string());
            }
        }
    }
    out
}
