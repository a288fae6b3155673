//! The report as one self-contained HTML page: tables and inline SVG plots, no script and no
//! asset fetched from anywhere (the admin listener serves it at `/report`).
//!
//! Figures a test or a script may read carry an `id` (`decisions`, `predicted-saving`, ...)
//! and are written as the text report writes them ([`super::usd`] for money).
use std::fmt::Write as _;

use super::{opt, usd, Group, Percentiles, Report};

const PALETTE: &[&str] = &["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const W: f64 = 640.0;
const H: f64 = 240.0;
const PAD: f64 = 44.0;

fn svg_open(o: &mut String, label: &str, h: f64) {
    let _ = write!(
        o,
        r#"<svg role="img" aria-label="{}" viewBox="0 0 {W} {h}" width="{W}" height="{h}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(label)
    );
    let _ = write!(o, r##"<rect x="0" y="0" width="{W}" height="{h}" fill="#ffffff" stroke="#d1d5db"/>"##);
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|x| *x >= v).unwrap_or(10.0 * p)
}

fn axes(o: &mut String, y_max: f64, y_fmt: &dyn Fn(f64) -> String, h: f64) {
    for i in 0..=4 {
        let y = h - PAD + (PAD * 2.0 - h) * i as f64 / 4.0;
        let _ = write!(o, r##"<line x1="{PAD}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e7eb"/>"##, W - 10.0);
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#374151">{}</text>"##,
            PAD - 4.0,
            y + 3.0,
            y_fmt(y_max * i as f64 / 4.0)
        );
    }
}

/// Lines over the timeline's buckets.
fn line_chart(o: &mut String, label: &str, series: &[(&str, Vec<f64>)], x_labels: (&str, &str)) {
    svg_open(o, label, H);
    let n = series.first().map_or(0, |s| s.1.len()).max(2);
    // The axis spans [-m, m] when a series goes below zero (a negative saving), else [0, m].
    let y_max = nice_max(series.iter().flat_map(|s| s.1.iter().map(|v| v.abs())).fold(0.0, f64::max));
    let y_min = if series.iter().any(|s| s.1.iter().any(|v| *v < 0.0)) { -y_max } else { 0.0 };
    for i in 0..=4 {
        let v = y_min + (y_max - y_min) * i as f64 / 4.0;
        let y = H - PAD - (H - 2.0 * PAD) * i as f64 / 4.0;
        let _ = write!(o, r##"<line x1="{PAD}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e7eb"/>"##, W - 10.0);
        let _ =
            write!(o, r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#374151">${v:.4}</text>"##, PAD - 4.0, y + 3.0);
    }
    let x = |i: usize| PAD + (W - PAD - 10.0) * i as f64 / (n - 1) as f64;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * ((v - y_min) / (y_max - y_min));
    for (k, (name, values)) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let pts: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        let _ = write!(o, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        let _ = write!(
            o,
            r#"<rect x="{:.1}" y="8" width="10" height="10" fill="{c}"/><text x="{:.1}" y="17" font-size="11">{}</text>"#,
            PAD + 150.0 * k as f64,
            PAD + 14.0 + 150.0 * k as f64,
            esc(name)
        );
    }
    let _ = write!(o, r##"<text x="{PAD}" y="{:.1}" font-size="10" fill="#374151">{}</text>"##, H - PAD + 16.0, esc(x_labels.0));
    let _ = write!(
        o,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#374151">{}</text></svg>"##,
        W - 10.0,
        H - PAD + 16.0,
        esc(x_labels.1)
    );
}

/// Horizontal bars of each group's share.
fn share_bars(o: &mut String, label: &str, groups: &[Group]) {
    let rows: Vec<&Group> = groups.iter().filter(|g| g.decisions > 0).take(12).collect();
    let h = 30.0 + 20.0 * rows.len().max(1) as f64;
    svg_open(o, label, h);
    for (i, g) in rows.iter().enumerate() {
        let y = 14.0 + 20.0 * i as f64;
        let w = (W - 280.0) * g.share;
        let _ = write!(o, r#"<text x="196" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#, y + 11.0, esc(&shorten(&g.key, 30)));
        let _ = write!(o, r#"<rect x="200" y="{y:.1}" width="{w:.1}" height="14" fill="{}"/>"#, PALETTE[i % PALETTE.len()]);
        let _ =
            write!(o, r#"<text x="{:.1}" y="{:.1}" font-size="11">{:.1}% ({})</text>"#, 204.0 + w, y + 11.0, g.share * 100.0, g.decisions);
    }
    o.push_str("</svg>");
}

/// Points of (predicted cost, predicted quality), coloured by series.
fn scatter(o: &mut String, label: &str, points: &[(usize, String, f64, f64, u64)], series_names: &[String]) {
    svg_open(o, label, H + 20.0);
    let h = H + 20.0;
    let x_max = nice_max(points.iter().map(|p| p.2).fold(0.0, f64::max));
    axes(o, 1.0, &|v| format!("{v:.2}"), h);
    let x = |v: f64| PAD + (W - PAD - 10.0) * (v / x_max);
    let y = |v: f64| h - PAD - (h - 2.0 * PAD) * v.clamp(0.0, 1.0);
    for p in points {
        let c = PALETTE[p.0 % PALETTE.len()];
        let r = 3.0 + (p.4 as f64).sqrt().min(8.0);
        let _ = write!(
            o,
            r#"<circle cx="{:.1}" cy="{:.1}" r="{r:.1}" fill="{c}" fill-opacity="0.6"><title>{} (n {}): ${} q {:.3}</title></circle>"#,
            x(p.2),
            y(p.3),
            esc(&p.1),
            p.4,
            usd(p.2),
            p.3
        );
    }
    for (k, name) in series_names.iter().enumerate().take(8) {
        let c = PALETTE[k % PALETTE.len()];
        let _ = write!(
            o,
            r#"<rect x="{:.1}" y="8" width="10" height="10" fill="{c}"/><text x="{:.1}" y="17" font-size="11">{}</text>"#,
            PAD + 72.0 * k as f64,
            PAD + 14.0 + 72.0 * k as f64,
            esc(name)
        );
    }
    let _ = write!(
        o,
        r##"<text x="{PAD}" y="{:.1}" font-size="10" fill="#374151">predicted cost per request, USD (0 to {})</text>"##,
        h - PAD + 16.0,
        usd(x_max)
    );
    let _ = write!(
        o,
        r##"<text x="8" y="{:.1}" font-size="10" fill="#374151" transform="rotate(-90 8 {:.1})">predicted quality</text></svg>"##,
        h / 2.0,
        h / 2.0
    );
}

/// One row per model with a mark at each opening.
fn breaker_timeline(o: &mut String, r: &Report) {
    let models: Vec<&String> = r.breakers.by_model.keys().take(12).collect();
    let h = 40.0 + 20.0 * models.len().max(1) as f64;
    svg_open(o, "circuit-breaker openings over the window", h);
    let span = (r.window.until_ms - r.window.since_ms).max(1) as f64;
    let x = |ts: i64| 200.0 + (W - 210.0) * ((ts - r.window.since_ms) as f64 / span).clamp(0.0, 1.0);
    if models.is_empty() {
        let _ = write!(o, r#"<text x="20" y="30" font-size="12">no circuit opened in this window</text>"#);
    }
    for (i, m) in models.iter().enumerate() {
        let y = 14.0 + 20.0 * i as f64;
        let _ = write!(
            o,
            r##"<text x="196" y="{:.1}" font-size="11" text-anchor="end">{}</text><line x1="200" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#e5e7eb"/>"##,
            y + 11.0,
            esc(&shorten(m, 30)),
            y + 7.0,
            W - 10.0,
            y + 7.0
        );
        for op in r.breakers.openings.iter().filter(|op| &&op.model == m) {
            let w = ((op.cool_down_s * 1000.0 / span) * (W - 210.0)).max(3.0);
            let _ = write!(
                o,
                r##"<rect x="{:.1}" y="{y:.1}" width="{w:.1}" height="14" fill="#dc2626"><title>{} opened at {}, cool-down {:.0} s</title></rect>"##,
                x(op.ts_ms),
                esc(&op.model),
                esc(&op.at),
                op.cool_down_s
            );
        }
    }
    let _ = write!(
        o,
        r##"<text x="200" y="{:.1}" font-size="10" fill="#374151">{}</text><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#374151">{}</text></svg>"##,
        h - 8.0,
        esc(&r.since),
        W - 10.0,
        h - 8.0,
        esc(&r.until)
    );
}

/// p50, p90 and p99 bars, overall and for the busiest models.
fn latency_bars(o: &mut String, r: &Report) {
    let mut rows: Vec<(String, &Percentiles)> = vec![("all attempts".into(), &r.latency.overall)];
    let mut models: Vec<(&String, &Percentiles)> = r.latency.by_model.iter().collect();
    models.sort_by(|a, b| b.1.n.cmp(&a.1.n).then(a.0.cmp(b.0)));
    rows.extend(models.into_iter().take(8).map(|(m, p)| (m.clone(), p)));
    let h = 40.0 + 26.0 * rows.len() as f64;
    svg_open(o, "latency percentiles", h);
    let max = nice_max(rows.iter().filter_map(|r| r.1.p99).fold(0.0, f64::max));
    let names = ["p50", "p90", "p99"];
    for (k, name) in names.iter().enumerate() {
        let _ = write!(
            o,
            r#"<rect x="{:.1}" y="6" width="10" height="10" fill="{}"/><text x="{:.1}" y="15" font-size="11">{name}</text>"#,
            200.0 + 60.0 * k as f64,
            PALETTE[k],
            214.0 + 60.0 * k as f64
        );
    }
    for (i, (m, p)) in rows.iter().enumerate() {
        let y = 24.0 + 26.0 * i as f64;
        let _ = write!(o, r#"<text x="196" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#, y + 14.0, esc(&shorten(m, 30)));
        for (k, v) in [p.p50, p.p90, p.p99].iter().enumerate() {
            let w = (W - 280.0) * v.unwrap_or(0.0) / max;
            let _ = write!(
                o,
                r#"<rect x="200" y="{:.1}" width="{w:.1}" height="7" fill="{}"><title>{} {}: {} ms</title></rect>"#,
                y + 7.0 * k as f64,
                PALETTE[k],
                esc(m),
                names[k],
                opt(*v, 0)
            );
        }
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-size="10">{} ms</text>"#,
            204.0 + (W - 280.0) * p.p99.unwrap_or(0.0) / max,
            y + 18.0,
            opt(p.p99, 0)
        );
    }
    o.push_str("</svg>");
}

fn shorten(s: &str, n: usize) -> String {
    super::truncate(s, n)
}

fn group_table(o: &mut String, title: &str, id: &str, groups: &[Group]) {
    let _ = write!(
        o,
        "<h3>{title}</h3><table id=\"{id}\"><tr><th>{title}</th><th>requests</th><th>share</th><th>predicted $</th><th>baseline $</th><th>predicted saving $</th><th>reports</th><th>failures</th><th>realised $</th><th>realised saving $</th><th>predicted q</th><th>realised q</th></tr>"
    );
    for g in groups {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.key),
            g.decisions,
            g.share * 100.0,
            usd(g.predicted_cost_usd),
            usd(g.baseline_cost_usd),
            usd(g.predicted_saving_usd),
            g.reports,
            g.failures,
            usd(g.realised_cost_usd),
            usd(g.realised_saving_usd),
            opt(g.predicted_quality, 3),
            opt(g.realised_quality, 3)
        );
    }
    o.push_str("</table>");
}

/// The whole page.
pub fn page(r: &Report) -> String {
    let mut o = String::with_capacity(64 << 10);
    let t = &r.totals;
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Pointsman report</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#111827;background:#f9fafb}}
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:17px;margin:28px 0 8px}} h3{{font-size:14px;margin:18px 0 6px}}
.meta{{color:#4b5563;font-size:13px}} .cards{{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}}
.card{{background:#fff;border:1px solid #d1d5db;border-radius:6px;padding:10px 14px;min-width:150px}}
.card .v{{font-size:20px;font-weight:600}} .card .l{{font-size:12px;color:#4b5563}}
.save .v{{color:#15803d}} .loss .v{{color:#b91c1c}} .plots{{display:flex;flex-wrap:wrap;gap:16px}} .plot{{background:#fff;padding:8px;border:1px solid #e5e7eb;border-radius:6px}}
table{{border-collapse:collapse;font-size:12px;background:#fff}} td,th{{border:1px solid #e5e7eb;padding:3px 6px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} form{{margin:10px 0;font-size:13px}} li{{font-size:13px;color:#374151}}
</style></head><body><h1>What routing earned</h1>"#
    );
    let baselines: Vec<String> = r.baselines.iter().map(|(m, n)| format!("{} ({n} decisions)", esc(m))).collect();
    let _ = write!(
        o,
        r#"<div class="meta">Window <span id="since">{}</span> to <span id="until">{}</span> · log {} · baseline <span id="baseline">{}</span> · built in {:.0} ms</div>"#,
        esc(&r.since),
        esc(&r.until),
        esc(&r.source),
        if baselines.is_empty() { "none logged".into() } else { baselines.join(", ") },
        r.build_ms
    );
    let _ = write!(o, r#"<div class="meta">Savings are against <span id="baseline-choice">{}</span>.</div>"#, esc(&r.baseline_choice));
    let _ = write!(
        o,
        r#"<form method="get" action="report">since <input name="since" value="{}" size="22"> until <input name="until" value="{}" size="22"> <button>show</button> (RFC 3339, or a duration before now such as 24h) · <a href="report.json?since={}&amp;until={}">JSON</a></form>"#,
        esc(&r.since),
        esc(&r.until),
        r.window.since_ms,
        r.window.until_ms
    );
    let card = |o: &mut String, id: &str, label: &str, value: String, class: &str| {
        let _ = write!(o, r#"<div class="card {class}"><div class="v" id="{id}">{}</div><div class="l">{label}</div></div>"#, esc(&value));
    };
    o.push_str(r#"<div class="cards">"#);
    card(&mut o, "decisions", "requests routed", t.decisions.to_string(), "");
    card(&mut o, "predicted-spend", "predicted spend, USD", usd(t.predicted_cost_usd), "");
    card(&mut o, "baseline-spend", "baseline at the same tokens, USD", usd(t.baseline_cost_usd), "");
    // A negative saving (routing costs more than the baseline) reads in red, not in green.
    let tone = |x: f64| if x < 0.0 { "loss" } else { "save" };
    card(&mut o, "predicted-saving", "predicted saving, USD", usd(t.predicted_saving_usd), tone(t.predicted_saving_usd));
    card(&mut o, "reports", "feedback reports", t.reports.to_string(), "");
    card(&mut o, "realised-spend", "realised spend, USD", usd(t.realised_cost_usd), "");
    card(&mut o, "realised-saving", "realised saving, USD", usd(t.realised_saving_usd), tone(t.realised_saving_usd));
    card(&mut o, "realised-quality", "realised quality (labelled)", opt(t.realised_quality, 3), "");
    card(&mut o, "fallbacks-used", "fallbacks used", r.fallbacks.used.to_string(), "");
    card(&mut o, "breaker-openings", "breaker openings", r.breakers.openings.len().to_string(), "");
    card(&mut o, "latency-p50", "latency p50, ms", opt(r.latency.overall.p50, 0), "");
    card(&mut o, "latency-p99", "latency p99, ms", opt(r.latency.overall.p99, 0), "");
    o.push_str("</div>");

    o.push_str(r#"<h2>Spend and savings over time</h2><div class="plots"><div class="plot">"#);
    let series = |f: &dyn Fn(&super::Bucket) -> f64| r.timeline.iter().map(f).collect::<Vec<f64>>();
    line_chart(
        &mut o,
        "predicted spend, baseline and realised spend per slice of the window",
        &[
            ("predicted spend", series(&|b| b.predicted_cost_usd)),
            ("baseline, same tokens", series(&|b| b.baseline_cost_usd)),
            ("realised spend", series(&|b| b.realised_cost_usd)),
        ],
        (r.since.as_str(), r.until.as_str()),
    );
    o.push_str(r#"</div><div class="plot">"#);
    line_chart(
        &mut o,
        "predicted and realised saving per slice of the window",
        &[("predicted saving", series(&|b| b.predicted_saving_usd)), ("realised saving", series(&|b| b.realised_saving_usd))],
        (r.since.as_str(), r.until.as_str()),
    );
    o.push_str("</div></div>");

    o.push_str(r#"<h2>Model share and cost against quality</h2><div class="plots"><div class="plot">"#);
    share_bars(&mut o, "share of requests per primary model", &r.by_model);
    o.push_str(r#"</div><div class="plot">"#);
    if r.clusters.status == "computed" {
        let pts: Vec<_> =
            r.clusters.points.iter().map(|p| (p.cluster, p.model.clone(), p.predicted_cost_usd, p.predicted_quality, p.n)).collect();
        let names: Vec<String> =
            (0..r.clusters.clusters.iter().map(|c| c.id + 1).max().unwrap_or(0)).map(|i| format!("cluster {i}")).collect();
        scatter(&mut o, "predicted cost against predicted quality, per model within each prompt cluster", &pts, &names);
    } else {
        let pts: Vec<_> = r
            .by_model
            .iter()
            .filter(|g| g.decisions > 0)
            .enumerate()
            .map(|(i, g)| (i, g.key.clone(), g.predicted_cost_usd / g.decisions as f64, g.predicted_quality.unwrap_or(0.0), g.decisions))
            .collect();
        let names: Vec<String> = pts.iter().map(|p| shorten(&p.1, 10)).collect();
        scatter(&mut o, "predicted cost against predicted quality per model", &pts, &names);
    }
    o.push_str("</div></div>");

    o.push_str(r#"<h2>Reliability</h2><div class="plots"><div class="plot">"#);
    breaker_timeline(&mut o, r);
    o.push_str(r#"</div><div class="plot">"#);
    latency_bars(&mut o, r);
    o.push_str("</div></div>");

    o.push_str("<h2>Spend and savings</h2>");
    group_table(&mut o, "model", "by-model", &r.by_model);
    group_table(&mut o, "provider", "by-provider", &r.by_provider);
    group_table(&mut o, "profile", "by-profile", &r.by_profile);

    o.push_str(r#"<h2>Calibration</h2><table id="calibration"><tr><th>model</th><th>labelled</th><th>predicted q</th><th>realised q</th><th>costed</th><th>predicted $</th><th>realised $</th><th>realised / predicted</th></tr>"#);
    for c in &r.calibration.models {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.model),
            c.labelled,
            opt(c.predicted_quality, 3),
            opt(c.realised_quality, 3),
            c.costed,
            usd(c.predicted_cost_usd),
            usd(c.realised_cost_usd),
            opt(c.cost_ratio, 2)
        );
    }
    o.push_str("</table>");

    let f = &r.fallbacks;
    let _ = write!(
        o,
        r#"<h2>Fallbacks</h2><p class="meta">{} of {} reported requests tried a fallback ({:.1}%); {} of those succeeded.</p><table id="fallbacks"><tr><th>why (the primary's report)</th><th>requests</th></tr>"#,
        f.used,
        f.requests_reported,
        f.share * 100.0,
        f.succeeded
    );
    for (why, n) in &f.by_reason {
        let _ = write!(o, "<tr><td>{}</td><td>{n}</td></tr>", esc(why));
    }
    o.push_str("</table>");

    let _ = write!(
        o,
        r#"<h2>Breaker openings</h2><p class="meta">{}</p><table id="openings"><tr><th>model</th><th>opened</th><th>cool-down s</th><th>failures in a row</th></tr>"#,
        esc(&r.breakers.method)
    );
    for op in r.breakers.openings.iter().rev().take(50) {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
            esc(&op.model),
            esc(&op.at),
            op.cool_down_s,
            op.consecutive_failures
        );
    }
    o.push_str("</table>");

    let _ = write!(
        o,
        r#"<h2>Prompt clusters</h2><p class="meta">{}</p><table id="clusters"><tr><th>cluster</th><th>share</th><th>winning models</th><th>predicted $</th><th>predicted q</th><th>example</th></tr>"#,
        esc(&r.clusters.note)
    );
    for c in &r.clusters.clusters {
        let top: Vec<String> = c.top_models.iter().map(|(m, s)| format!("{} {:.0}%", esc(m), s * 100.0)).collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            c.id,
            c.share * 100.0,
            top.join(", "),
            usd(c.predicted_cost_usd),
            c.predicted_quality,
            esc(&c.example)
        );
    }
    o.push_str("</table><h2>Notes</h2><ul>");
    for n in &r.notes {
        let _ = write!(o, "<li>{}</li>", esc(n));
    }
    o.push_str("</ul></body></html>");
    o
}
