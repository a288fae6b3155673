//! The real encoder through the real ONNX Runtime: known similarities, token handling, and
//! determinism of batch-of-one embeddings under concurrent use.
use std::path::Path;

use pointsman::{
    config::{EncoderConfig, EncoderVariant},
    encoder::{cosine, Encoder},
    runtime,
};

fn encoder(variant: EncoderVariant, sessions: usize) -> Encoder {
    let env = runtime::environment(None).expect("ONNX Runtime (run scripts/bootstrap.sh)");
    let cfg = EncoderConfig {
        dir: Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models/encoder"),
        variant,
        sessions,
        intra_threads: 1,
        max_tokens: 256,
        ..EncoderConfig::default()
    };
    Encoder::load(env, &cfg).expect("encoder loads")
}

#[test]
fn known_sentence_similarity_fp32_and_int8() {
    // sentence-transformers' published value for all-MiniLM-L6-v2.
    let (a, b) = ("A man is eating food.", "A man is eating a piece of bread.");
    let fp32 = encoder(EncoderVariant::Fp32, 1);
    let s = cosine(&fp32.embed_text(a).unwrap(), &fp32.embed_text(b).unwrap());
    assert!((s - 0.7553).abs() < 2e-3, "fp32 cosine {s}");
    let int8 = encoder(EncoderVariant::Int8, 1);
    let s8 = cosine(&int8.embed_text(a).unwrap(), &int8.embed_text(b).unwrap());
    assert!((s8 - 0.7553).abs() < 3e-2, "int8 cosine {s8}");
    let unrelated = cosine(&fp32.embed_text(a).unwrap(), &fp32.embed_text("The stock market fell sharply today.").unwrap());
    assert!(unrelated < 0.3, "unrelated cosine {unrelated}");
    let e = fp32.embed_text(a).unwrap();
    assert_eq!(e.len(), 384);
    let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    // int8 stays close to fp32.
    let c = cosine(&e, &int8.embed_text(a).unwrap());
    assert!(c > 0.97, "int8 vs fp32 cosine {c}");
}

#[test]
fn long_text_is_capped_but_counted_in_full() {
    let enc = encoder(EncoderVariant::Int8, 1);
    let long = "word ".repeat(1000);
    let t = enc.tokenize(&long).unwrap();
    assert_eq!(t.ids.len(), 256);
    assert_eq!(t.full_count, 1000);
    assert_eq!(*t.ids.last().unwrap(), 102, "ends with [SEP]");
    assert_eq!(enc.count_tokens(&long).unwrap(), 1000);
    // The capped text embeds like its first 254 words.
    let head = "word ".repeat(254);
    let c = cosine(&enc.embed_text(&long).unwrap(), &enc.embed_text(&head).unwrap());
    assert!(c > 0.9999, "capped vs prefix cosine {c}");
}

#[test]
fn embeddings_are_identical_under_concurrent_load() {
    let enc = encoder(EncoderVariant::Int8, 2);
    let probe = "Solve for x: 3x + 7 = 22, and explain each step.";
    let reference = enc.embed_text(probe).unwrap();
    let others: Vec<String> =
        (0..40).map(|i| format!("Unrelated text number {i} about cooking pasta {}", "and sauce ".repeat(i))).collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let enc = &enc;
                let others = &others;
                let reference = &reference;
                s.spawn(move || {
                    for (i, o) in others.iter().enumerate() {
                        if (i + t) % 3 == 0 {
                            assert_eq!(&enc.embed_text(probe).unwrap(), reference, "embedding changed under load");
                        } else {
                            enc.embed_text(o).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
}
