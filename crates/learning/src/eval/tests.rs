//! Unit tests of the frontier convention (every policy can fall back to the cheapest single
//! model) and of the tuned kNN baseline's cross-validated choice.
use ndarray::Array2;

use super::{
    baseline::{self, Memory},
    report, Coverage, FileOutcomes, Outcomes,
};
use crate::{knn, SplitMix64};

/// Two models on `n` prompts: `cheap` ($1, right on even prompts) and `dear` ($10, right on 80%
/// of prompts, including every odd one), so the oracle beats both.
fn two_models(n: usize) -> Outcomes {
    let score = Array2::from_shape_fn((n, 2), |(p, j)| if j == 0 { f64::from(p % 2 == 0) } else { f64::from(p % 10 < 8 || p % 2 == 1) });
    let cost = Array2::from_shape_fn((n, 2), |(_, j)| if j == 0 { 1.0 } else { 10.0 });
    Outcomes { score, cost }
}

#[test]
fn a_router_is_never_counted_below_the_cheapest_single_model() {
    let n = 100;
    let actual = two_models(n);
    // A router that sends everything to the dear model at every cost weight: its only sweep point
    // is the dear model's, above the cheap model's cost. It can still fall back to the cheap model,
    // so its frontier is the single models' and it closes exactly none of the gap (not less).
    // (It believes the dear model better and cheaper, so it picks it at every weight.)
    let pq = Array2::from_shape_fn((n, 2), |(_, j)| if j == 0 { 0.1 } else { 0.9 });
    let pc = Array2::from_shape_fn((n, 2), |(_, j)| if j == 0 { 1.0 } else { 0.5 });
    let gap = actual.gap_closed(&pq, &pc, None, 1.0);
    assert!(gap.abs() < 1e-9, "always-dear router: gap closed {gap}, not penalised below the dear model's cost");
    // The oracle's routing closes all of it, a router that knows the cheap model's right answers
    // part of it.
    assert!((actual.gap_closed(&actual.score, &actual.cost, None, 1.0) - 1.0).abs() < 1e-9);

    // The same through `report`: no shortfall below the single-model frontier, and the policies'
    // AIQ ranges start at the cheapest single model's cost.
    let o = FileOutcomes {
        file: "t".into(),
        models: vec!["cheap".into(), "dear".into()],
        actual: two_models(n),
        head: Outcomes { score: pq, cost: pc },
        allowed: Array2::from_elem((n, 2), true),
        tuned_knn: Err("none".into()),
        knn: Err("none".into()),
        knn_k: 25,
        coverage: Coverage::default(),
        outside: vec![0; super::weight_grid().len()],
        prompts_routed: n,
        outside_models: Vec::new(),
    };
    let r = report(&o, 1.0);
    assert_eq!(r.router.cost.iter().copied().fold(f64::INFINITY, f64::min), 10.0, "every sweep point is the dear model's");
    assert_eq!(r.router_below_single_frontier.share_of_cost_range, 0.0, "{:?}", r.router_below_single_frontier);
    assert!((r.router.aiq - r.single_aiq).abs() < 1e-9 && r.router_gap_closed.abs() < 1e-9);
    assert_eq!(r.cost_range, (1.0, 10.0));
    assert!(r.tuned_knn.is_none() && r.tuned_knn_absent.as_deref() == Some("none") && r.verdict.contains("no tuned kNN"));
}

#[test]
fn the_tuned_knn_picks_a_large_k_when_outcomes_are_noise_around_broad_clusters() {
    // 2,000 prompts in two broad clusters of the embedding space; four models whose mean quality
    // differs by cluster by 0.05 to 0.2, each outcome that mean plus uniform noise of +-0.4. A
    // prompt's few nearest neighbours rank the models by noise; hundreds of same-cluster
    // neighbours rank them right, so a large k is clearly best.
    let (n, dim) = (2000, 8);
    let rates = [[0.5, 0.6, 0.55, 0.7], [0.6, 0.5, 0.7, 0.55]];
    let mut rng = SplitMix64::new(7);
    let mut x = Array2::zeros((n, dim));
    let mut score = Array2::zeros((n, 4));
    for p in 0..n {
        let c = p % 2;
        x[[p, 0]] = if c == 0 { 1.0 } else { -1.0 };
        for d in 1..dim {
            x[[p, d]] = (rng.next_f64() as f32 - 0.5) * 0.6;
        }
        for j in 0..4 {
            score[[p, j]] = (rates[c][j] + (rng.next_f64() - 0.5) * 0.8).clamp(0.0, 1.0) as f32;
        }
    }
    let mem = Memory { x: knn::normalised(x.view()), score, tokens: Array2::from_elem((n, 4), 100.0), mask: Array2::ones((n, 4)) };
    // $1 to $4 per request (100 tokens at $0.01 to $0.04 a token).
    let price = |_: usize, j: usize, t: f64| t * 0.01 * (j + 1) as f64;
    let c = baseline::choose(&mem, &price, 1.0);
    assert!(knn::K_GRID.contains(&c.k) && knn::B_GRID.contains(&c.b), "{c:?}");
    assert!(c.k >= 200, "chose k {} (b {}); grid: {:?}", c.k, c.b, c.grid);
    // The choice is within the near-tie band of the best grid point, and the smallest k is well below.
    let best = c.grid.iter().map(|g| g.cv_gap_closed).fold(f64::NEG_INFINITY, f64::max);
    assert!(c.cv_gap_closed >= best - baseline::NEAR_TIE && c.cv_gap_closed.is_finite());
    let k10 = c.grid.iter().filter(|g| g.k == 10 && g.b == 0.0).map(|g| g.cv_gap_closed).next().unwrap();
    assert!(k10 < c.cv_gap_closed - 0.02, "k 10 {k10} vs chosen {}", c.cv_gap_closed);
    assert_eq!(c.cv_prompts, n);
    assert_eq!(c.grid.len(), knn::K_GRID.len() * knn::B_GRID.len());
}

#[test]
fn the_tuned_knn_is_absent_with_too_little_memory() {
    let mem =
        Memory { x: Array2::ones((50, 2)), score: Array2::zeros((50, 2)), tokens: Array2::zeros((50, 2)), mask: Array2::ones((50, 2)) };
    let full = mem.full_rows();
    let price = |_: usize, _: usize, t: f64| t;
    let why = baseline::tuned(Array2::ones((3, 2)).view(), &mem, &full, &price, &price, 1.0).err().unwrap();
    assert!(why.contains("50 prompts answered by all 2 evaluated models") && why.contains(">= 100"), "{why}");
}
