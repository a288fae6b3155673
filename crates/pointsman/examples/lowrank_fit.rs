//! Times [`lowrank::fit`] on a synthetic benchmark-shaped dataset, to measure its linear algebra.
//!
//! `cargo run --release --example lowrank_fit -- [--rows 3000] [--dim 384] [--models 29] [--repeat 3]
//! [--out DIR] [--compare DIR]`
//!
//! The data: unit-norm Gaussian embeddings; quality per model is a coin with probability
//! `sigmoid(skill + taste·kind - 1.5·difficulty)`, where `difficulty` and `kind` are linear in the
//! embedding, and log tokens are linear in it plus noise; 20 models are observed on 98% of the
//! prompts (they shape the factors), the rest on 10%. Prints the wall time of each fit. `--out`
//! writes the fitted head's predictions on the training prompts (`predictions.f32`, little-endian
//! quality then tokens) and its ONNX export (`head.onnx`); `--compare` reads another run's
//! predictions and prints the largest differences, to check that a change of solver keeps the fit,
//! and says whether this build re-exports that run's `head.onnx` byte for byte (`import` then
//! `export`), to check that a change of the ONNX writer keeps the file.
use std::{path::PathBuf, time::Instant};

use clap::Parser;
use ndarray::Array2;
use pointsman::learning::{
    export, import,
    lowrank::{fit, LowRankConfig},
    Dataset, SplitMix64,
};

#[derive(Parser)]
struct Args {
    /// Prompts.
    #[arg(long, default_value_t = 3000)]
    rows: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Models (the first 20, or all if fewer, are dense).
    #[arg(long, default_value_t = 29)]
    models: usize,
    /// Fits to time.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where to write the predictions and the ONNX head.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A folder written by an earlier `--out` run to compare the predictions with.
    #[arg(long)]
    compare: Option<PathBuf>,
}

fn synthetic(rows: usize, dim: usize, models: usize) -> Dataset {
    let mut rng = SplitMix64::new(42);
    let mut x = Array2::from_shape_fn((rows, dim), |_| rng.next_normal() as f32);
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt().max(f32::MIN_POSITIVE);
        row /= norm;
    }
    let direction = |rng: &mut SplitMix64| -> Vec<f64> { (0..dim).map(|_| rng.next_normal() * 2.0).collect() };
    let (a, b, c) = (direction(&mut rng), direction(&mut rng), direction(&mut rng));
    let along = |r: usize, v: &[f64]| -> f64 { x.row(r).iter().zip(v).map(|(&x, v)| f64::from(x) * v).sum() };
    let mut d = Dataset {
        x: x.clone(),
        quality: Array2::zeros((rows, models)),
        log_tokens: Array2::zeros((rows, models)),
        mask: Array2::zeros((rows, models)),
    };
    let skill: Vec<f64> = (0..models).map(|_| rng.next_normal()).collect();
    let taste: Vec<f64> = (0..models).map(|_| rng.next_normal() * 0.5).collect();
    for r in 0..rows {
        let (difficulty, kind, length) = (along(r, &a), along(r, &b), along(r, &c));
        for j in 0..models {
            let coverage = if j < 20 { 0.98 } else { 0.1 };
            if rng.next_f64() >= coverage {
                continue;
            }
            let p = 1.0 / (1.0 + (1.5 * difficulty - skill[j] - taste[j] * kind).exp());
            d.mask[[r, j]] = 1.0;
            d.quality[[r, j]] = if rng.next_f64() < p { 1.0 } else { 0.0 };
            d.log_tokens[[r, j]] = (5.0 + 0.5 * length + 0.1 * j as f64 + 0.3 * rng.next_normal()) as f32;
        }
    }
    d
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let d = synthetic(args.rows, args.dim, args.models);
    let cfg = LowRankConfig::default();
    let mut times = Vec::new();
    let mut head = None;
    for i in 0..args.repeat.max(1) {
        let start = Instant::now();
        head = fit(&d, &cfg)?;
        let secs = start.elapsed().as_secs_f64();
        println!("fit {}: {secs:.3} s", i + 1);
        times.push(secs);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "lowrank::fit on {} x {} embeddings, {} models: min {:.3} s, median {:.3} s over {} fits",
        args.rows,
        args.dim,
        args.models,
        times[0],
        times[times.len() / 2],
        times.len()
    );
    let head = head.ok_or_else(|| anyhow::anyhow!("fit found fewer than 3 dense models"))?;
    let (q, t) = head.predict(d.x.view());
    let predictions: Vec<f32> = q.iter().chain(t.iter()).copied().collect();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("predictions.f32"), predictions.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        std::fs::write(dir.join("head.onnx"), export(&head, &[]))?;
        println!("wrote {}", dir.display());
    }
    if let Some(dir) = &args.compare {
        let bytes = std::fs::read(dir.join("predictions.f32"))?;
        let other: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        anyhow::ensure!(
            other.len() == predictions.len(),
            "{} holds {} predictions, this run {}",
            dir.display(),
            other.len(),
            predictions.len()
        );
        let half = q.len();
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let max_rel = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0.0f32, f32::max);
        println!(
            "vs {}: quality max |diff| {:.2e}; output tokens max |diff| {:.2e} (relative {:.2e})",
            dir.display(),
            max_diff(&predictions[..half], &other[..half]),
            max_diff(&predictions[half..], &other[half..]),
            max_rel(&predictions[half..], &other[half..]),
        );
        let onnx = std::fs::read(dir.join("head.onnx"))?;
        let (mlp, _, _) = import(&onnx)?;
        let same = export(&mlp, &[]) == onnx;
        println!("re-exporting {}/head.onnx gives {}", dir.display(), if same { "the same bytes" } else { "DIFFERENT bytes" });
    }
    Ok(())
}
