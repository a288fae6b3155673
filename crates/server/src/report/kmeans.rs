//! k-means on unit vectors (cosine), for the report's prompt clusters.
//!
//! NOTE: hand-written rather than `linfa-clustering`: twenty lines over a few hundred sampled
//! embeddings, where linfa would bring ndarray-linalg and its tree for one call. Seeded
//! k-means++ then Lloyd's iterations; the same input gives the same clusters.

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// Assigns each of `points` to one of `k` clusters; returns the assignment of each point.
pub fn cluster(points: &[Vec<f32>], k: usize, iterations: usize, seed: u64) -> Vec<usize> {
    let pts: Vec<Vec<f32>> = points.iter().map(|p| normalised(p)).collect();
    let k = k.min(pts.len()).max(1);
    if pts.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng(seed | 1);
    // k-means++: each next centre drawn in proportion to its distance from the nearest chosen one.
    let mut centres = vec![pts[(rng.next() * pts.len() as f64) as usize % pts.len()].clone()];
    while centres.len() < k {
        let d: Vec<f64> =
            pts.iter().map(|p| centres.iter().map(|c| f64::from(1.0 - dot(p, c)).max(0.0)).fold(f64::INFINITY, f64::min)).collect();
        let total: f64 = d.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut pick = rng.next() * total;
        let i = d.iter().position(|&x| {
            pick -= x;
            pick <= 0.0
        });
        centres.push(pts[i.unwrap_or(pts.len() - 1)].clone());
    }
    let mut assign = vec![0usize; pts.len()];
    for _ in 0..iterations {
        let mut changed = false;
        for (a, p) in assign.iter_mut().zip(&pts) {
            let best = (0..centres.len()).max_by(|&i, &j| dot(p, &centres[i]).total_cmp(&dot(p, &centres[j])).then(j.cmp(&i))).unwrap_or(0);
            changed |= *a != best;
            *a = best;
        }
        for (c, centre) in centres.iter_mut().enumerate() {
            let mut sum = vec![0f32; centre.len()];
            let mut n = 0;
            for p in pts.iter().zip(&assign).filter(|(_, a)| **a == c).map(|(p, _)| p) {
                sum.iter_mut().zip(p).for_each(|(s, x)| *s += x);
                n += 1;
            }
            if n > 0 {
                *centre = normalised(&sum);
            }
        }
        if !changed {
            break;
        }
    }
    assign
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_separate_groups_are_found() {
        let mut pts = Vec::new();
        for i in 0..20 {
            let e = i as f32 * 0.01;
            pts.push(vec![1.0, e, 0.0]);
            pts.push(vec![0.0, e, 1.0]);
        }
        let a = super::cluster(&pts, 2, 20, 7);
        for i in 0..20 {
            assert_eq!(a[2 * i], a[0]);
            assert_eq!(a[2 * i + 1], a[1]);
        }
        assert_ne!(a[0], a[1]);
    }
}
