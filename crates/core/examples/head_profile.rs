use std::time::Instant;
fn main() {
    let dir = std::env::args().nth(1).expect("head dir");
    let env = pointsman_core::runtime::environment(None).unwrap();
    let head = pointsman_core::predictor::Head::load(env, std::path::Path::new(&dir)).unwrap();
    let d = head.manifest().encoder.dimension;
    let mut rng = 1u64;
    let mut xs = Vec::new();
    for _ in 0..64 {
        let mut v: Vec<f32> = (0..d).map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 33) as f32 / (1u64<<31) as f32) - 0.5 }).collect();
        let n = v.iter().map(|a| a*a).sum::<f32>().sqrt(); v.iter_mut().for_each(|a| *a /= n);
        xs.push(v);
    }
    let mut times = Vec::new();
    for i in 0..2000 {
        let x = &xs[i % 64];
        let t = Instant::now();
        let _ = head.predict(ndarray::ArrayView2::from_shape((1, d), x).unwrap()).unwrap();
        times.push(t.elapsed().as_micros());
    }
    times.sort();
    println!("predict p50 {} us p90 {} us", times[1000], times[1800]);
}
