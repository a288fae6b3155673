//! Quality-cost frontiers and the figures `pointsman eval` reports.
//!
//! A policy (one model, a router at one cost weight, the oracle...) is a point (mean cost per
//! request, mean quality). A set of points defines what is achievable: any two policies can be
//! mixed at random, so the achievable quality at cost `c` is the upper concave envelope of the
//! points in *linear* cost (the mixing line), never more than the best point, and nothing below
//! the cheapest point. Figures:
//!
//! - `aiq`: the mean of that envelope over log-cost between `c_lo` and `c_hi` (the cheapest and
//!   the most expensive single model), sampled at 512 log-spaced costs: the area under the
//!   frontier over log-cost, normalised by the range (in the spirit of RouterBench's AIQ).
//! - `gap_closed`: `(aiq(router) - aiq(single models)) / (aiq(oracle) - aiq(single models))`.
//! - quality at the best single model's cost, and the cheapest cost at which the envelope
//!   reaches the best single model's quality.

/// A policy's mean cost (USD per request) and mean quality.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Mean cost per request, USD.
    pub cost: f64,
    /// Mean quality.
    pub quality: f64,
}

/// The upper concave envelope of `points` in linear cost, non-decreasing, cheapest first.
pub fn envelope(points: &[Point]) -> Vec<Point> {
    let mut pts: Vec<Point> = points.iter().copied().filter(|p| p.cost.is_finite() && p.quality.is_finite()).collect();
    pts.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)));
    // Keep only points that improve quality as cost grows.
    let mut mono: Vec<Point> = Vec::new();
    for p in pts {
        if mono.last().is_none_or(|l| p.quality > l.quality) {
            mono.push(p);
        }
    }
    // Upper hull (monotone chain).
    let mut hull: Vec<Point> = Vec::new();
    for p in mono {
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            let cross = (b.cost - a.cost) * (p.quality - a.quality) - (b.quality - a.quality) * (p.cost - a.cost);
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// Achievable quality at cost `c` on an envelope (0 below its cheapest point).
pub fn quality_at(env: &[Point], c: f64) -> f64 {
    let Some(first) = env.first() else { return 0.0 };
    if c < first.cost {
        return 0.0;
    }
    for w in env.windows(2) {
        if c <= w[1].cost {
            let t = if w[1].cost > w[0].cost { (c - w[0].cost) / (w[1].cost - w[0].cost) } else { 1.0 };
            return w[0].quality + t * (w[1].quality - w[0].quality);
        }
    }
    env.last().map_or(0.0, |p| p.quality)
}

/// Cheapest cost at which the envelope reaches `q`, if it does.
pub fn cost_to_reach(env: &[Point], q: f64) -> Option<f64> {
    let first = env.first()?;
    if first.quality >= q {
        return Some(first.cost);
    }
    env.windows(2).find(|w| w[1].quality >= q).map(|w| {
        let t = (q - w[0].quality) / (w[1].quality - w[0].quality);
        w[0].cost + t * (w[1].cost - w[0].cost)
    })
}

/// Mean envelope quality over log-cost in `[lo, hi]`.
pub fn aiq(env: &[Point], lo: f64, hi: f64) -> f64 {
    const N: usize = 512;
    let (a, b) = (lo.max(1e-12).ln(), hi.max(1e-12).ln());
    if b <= a {
        return quality_at(env, hi);
    }
    (0..N).map(|i| quality_at(env, (a + (b - a) * (i as f64 + 0.5) / N as f64).exp())).sum::<f64>() / N as f64
}

/// Expected calibration error of predictions against outcomes in [0,1], over `bins` equal bins.
pub fn calibration_error(pred: &[f64], actual: &[f64], bins: usize) -> f64 {
    let mut sum_p = vec![0.0; bins];
    let mut sum_a = vec![0.0; bins];
    let mut n = vec![0usize; bins];
    for (&p, &a) in pred.iter().zip(actual) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sum_p[b] += p;
        sum_a[b] += a;
        n[b] += 1;
    }
    let total = pred.len().max(1) as f64;
    (0..bins).filter(|&b| n[b] > 0).map(|b| (sum_p[b] - sum_a[b]).abs() / total).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cost: f64, quality: f64) -> Point {
        Point { cost, quality }
    }

    #[test]
    fn envelope_drops_dominated_and_concave_points() {
        let env = envelope(&[p(1.0, 0.5), p(2.0, 0.4), p(3.0, 0.55), p(10.0, 0.9), p(20.0, 0.9)]);
        // (2, 0.4) is dominated; (3, 0.55) lies under the mix of (1, 0.5) and (10, 0.9).
        assert_eq!(env, vec![p(1.0, 0.5), p(10.0, 0.9)]);
        assert!((quality_at(&env, 5.5) - 0.7).abs() < 1e-12);
        assert_eq!(quality_at(&env, 0.5), 0.0);
        assert_eq!(quality_at(&env, 50.0), 0.9);
        assert!((cost_to_reach(&env, 0.7).unwrap() - 5.5).abs() < 1e-12);
        assert_eq!(cost_to_reach(&env, 0.95), None);
    }

    #[test]
    fn aiq_orders_frontiers_and_gap_closed_is_a_share() {
        let single = envelope(&[p(1.0, 0.5), p(100.0, 0.9)]);
        let oracle = envelope(&[p(0.5, 0.95)]);
        let router = envelope(&[p(1.0, 0.6), p(10.0, 0.85), p(100.0, 0.92)]);
        let (s, o, r) = (aiq(&single, 1.0, 100.0), aiq(&oracle, 1.0, 100.0), aiq(&router, 1.0, 100.0));
        assert!(s < r && r < o, "{s} {r} {o}");
        let gap = (r - s) / (o - s);
        assert!(gap > 0.0 && gap < 1.0);
    }

    #[test]
    fn calibration_error_is_zero_when_calibrated() {
        let pred = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let good = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        assert!(calibration_error(&pred, &good, 10) < 1e-12);
        let bad = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        assert!((calibration_error(&pred, &bad, 10) - 0.75).abs() < 1e-12);
    }
}
