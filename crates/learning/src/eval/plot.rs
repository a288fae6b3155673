//! The SVG plot `pointsman eval` writes per log file.
use super::DatasetReport;

/// An SVG plot of one report: log-cost on x, quality on y; single models as dots, the router,
/// kNN baselines (those present) and oracle sweeps as lines.
pub fn svg(r: &DatasetReport) -> String {
    let mut lines = vec![(&r.oracle, "#2a9d8f", "oracle".to_string())];
    if let Some(k) = &r.knn {
        lines.push((&k.sweep, "#e9c46a", format!("kNN-{}", k.k)));
    }
    if let Some(t) = &r.tuned_knn {
        lines.push((&t.sweep, "#457b9d", format!("tuned kNN (k {}, b {})", t.k, t.b)));
    }
    lines.push((&r.router, "#e63946", "Pointsman".to_string()));
    let (w, h, pad) = (900.0, 560.0, 60.0);
    let all_cost: Vec<f64> = r
        .single_models
        .iter()
        .map(|s| s.cost)
        .chain(r.router.cost.iter().copied())
        .chain(lines.iter().flat_map(|l| l.0.cost.iter().copied()))
        .collect();
    let (cmin, cmax) = (all_cost.iter().copied().fold(f64::INFINITY, f64::min).max(1e-9), all_cost.iter().copied().fold(0.0, f64::max));
    let (lx0, lx1) = (cmin.log10().floor(), cmax.log10().ceil().max(cmin.log10().floor() + 1.0));
    let x = |c: f64| pad + (c.max(1e-12).log10() - lx0) / (lx1 - lx0) * (w - 2.0 * pad);
    let y = |q: f64| h - pad - q * (h - 2.0 * pad);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    s += &format!(
        r#"<text x="{pad}" y="22" font-size="15">{}: {} prompts; gap closed from the single models to the oracle:</text><text x="{pad}" y="42" font-size="13">{}</text>"#,
        r.file,
        r.prompts,
        escape(&r.verdict)
    );
    for d in (lx0 as i32)..=(lx1 as i32) {
        let xx = x(10f64.powi(d));
        s += &format!(
            r##"<line x1="{xx}" y1="{}" x2="{xx}" y2="{}" stroke="#ddd"/><text x="{xx}" y="{}" text-anchor="middle">$1e{d}</text>"##,
            pad,
            h - pad,
            h - pad + 18.0
        );
    }
    for i in 0..=10 {
        let q = f64::from(i) / 10.0;
        s += &format!(
            r##"<line x1="{pad}" y1="{yy}" x2="{}" y2="{yy}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{q:.1}</text>"##,
            w - pad,
            pad - 6.0,
            y(q) + 4.0,
            yy = y(q)
        );
    }
    s += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">mean cost per request (USD, log scale)</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">mean quality</text>"#,
        w / 2.0,
        h - 16.0,
        h / 2.0,
        h / 2.0
    );
    for (sw, color, label) in &lines {
        let pts: Vec<String> = sw.cost.iter().zip(&sw.quality).map(|(&c, &q)| format!("{:.1},{:.1}", x(c), y(q))).collect();
        s += &format!(r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"/>"#, pts.join(" "));
        let (lc, lq) = (sw.cost[0], sw.quality[0]);
        s += &format!(r#"<text x="{:.1}" y="{:.1}" fill="{color}" font-weight="bold">{label}</text>"#, x(lc) + 6.0, y(lq) - 6.0);
    }
    for m in &r.single_models {
        s += &format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#264653"/><text x="{:.1}" y="{:.1}" font-size="9" fill="#555">{}</text>"##,
            x(m.cost),
            y(m.quality),
            x(m.cost) + 5.0,
            y(m.quality) + 3.0,
            m.model
        );
    }
    s + "</svg>\n"
}

/// Text safe inside an SVG element.
fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
