use std::time::Instant;
fn main() {
    let text: String = std::fs::read_to_string("README.md").unwrap().chars().filter(char::is_ascii).take(16000).collect();
    let (enc, _) = pointsman_core::encoder::StaticEncoder::load(std::path::Path::new("models/static")).unwrap();
    for bytes in [80usize, 1000, 16000] {
        let t = pointsman_core::encoder::text::cut_end(&text, bytes);
        let mut a = Vec::new(); let mut b = Vec::new();
        for _ in 0..300 {
            let s = Instant::now(); let n = enc.count(t).unwrap(); a.push(s.elapsed().as_micros()); std::hint::black_box(n);
            let s = Instant::now(); let v = enc.embed(t, 8192); b.push(s.elapsed().as_micros()); std::hint::black_box(v);
        }
        a.sort(); b.sort();
        println!("{bytes} bytes: count p50 {} us, embed p50 {} us", a[150], b[150]);
    }
}
