//! Prometheus text exposition at `GET /metrics`, rendered from the service's counters.
use std::{fmt::Write as _, sync::atomic::Ordering};

use crate::{health::Outcome, service::Service};

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics page.
pub fn render(service: &Service) -> String {
    let mut out = String::new();
    let st = service.stats();
    family(&mut out, "pointsman_route_received_total", "counter", "Route calls received; each ends in one result below.");
    let _ = writeln!(out, "pointsman_route_received_total {}", st.routes_received.load(Ordering::Relaxed));
    family(&mut out, "pointsman_route_requests_total", "counter", "Route calls by result (ok, the error label, or cancelled).");
    let _ = writeln!(out, "pointsman_route_requests_total{{result=\"ok\"}} {}", st.routes_ok.load(Ordering::Relaxed));
    for (label, n) in st.route_errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(out, "pointsman_route_requests_total{{result=\"{label}\"}} {n}");
    }
    let _ = writeln!(out, "pointsman_route_requests_total{{result=\"cancelled\"}} {}", st.routes_cancelled.load(Ordering::Relaxed));
    family(&mut out, "pointsman_route_cache_hits_total", "counter", "Route calls answered from the prediction cache.");
    let _ = writeln!(out, "pointsman_route_cache_hits_total {}", st.cache_hits.load(Ordering::Relaxed));
    family(&mut out, "pointsman_feedback_total", "counter", "Feedback reports accepted, by outcome.");
    for (o, n) in Outcome::ALL.iter().zip(&st.feedback) {
        let _ = writeln!(out, "pointsman_feedback_total{{outcome=\"{}\"}} {}", o.as_str(), n.load(Ordering::Relaxed));
    }
    family(&mut out, "pointsman_reloads_total", "counter", "Model reloads by result.");
    let _ = writeln!(out, "pointsman_reloads_total{{result=\"ok\"}} {}", st.reloads_ok.load(Ordering::Relaxed));
    let _ = writeln!(out, "pointsman_reloads_total{{result=\"rejected\"}} {}", st.reloads_failed.load(Ordering::Relaxed));
    if let Some(log) = service.log() {
        let s = log.stats();
        let rows = [
            ("pointsman_decision_log_decisions_written_total", "counter", "Decisions committed to the decision log.", &s.decisions_written),
            (
                "pointsman_decision_log_feedback_written_total",
                "counter",
                "Feedback reports committed to the decision log.",
                &s.feedback_written,
            ),
            (
                "pointsman_decision_log_dropped_total",
                "counter",
                "Decisions dropped because the log's queue was full (routing went on).",
                &s.decisions_dropped,
            ),
            (
                "pointsman_decision_log_feedback_refused_total",
                "counter",
                "Feedback reports refused with RESOURCE_EXHAUSTED because the queue stayed full.",
                &s.feedback_refused,
            ),
            ("pointsman_decision_log_write_failures_total", "counter", "Records lost to failed writes.", &s.write_failures),
            ("pointsman_decision_log_batches_total", "counter", "Committed write batches.", &s.batches),
            ("pointsman_decision_log_pruned_rows_total", "counter", "Rows removed by retention.", &s.pruned_rows),
            ("pointsman_decision_log_queued", "gauge", "Records waiting for the writer.", &s.queued),
        ];
        for (name, kind, help, v) in rows {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }
    if let Some(engine) = service.engine() {
        family(&mut out, "pointsman_info", "gauge", "The version serving and its encoder.");
        let _ = writeln!(out, "pointsman_info{{version=\"{}\",encoder=\"{}\"}} 1", escape(engine.version()), escape(engine.encoder().id()));
        let p = engine.pool_stats();
        family(&mut out, "pointsman_encoder_queue_depth", "gauge", "Route calls waiting for an encoder thread.");
        let _ = writeln!(out, "pointsman_encoder_queue_depth {}", p.queue_depth());
        family(
            &mut out,
            "pointsman_encoder_jobs_total",
            "counter",
            "Queued encoder jobs: run, or skipped unrun because the caller went away or its deadline passed.",
        );
        for (result, n) in
            [("run", p.jobs_run()), ("skipped_caller_gone", p.skipped_caller_gone()), ("skipped_deadline", p.skipped_deadline())]
        {
            let _ = writeln!(out, "pointsman_encoder_jobs_total{{result=\"{result}\"}} {n}");
        }
        family(
            &mut out,
            "pointsman_encoder_worker_panics_total",
            "counter",
            "Encoder jobs that panicked (answered INTERNAL; the thread went on).",
        );
        let _ = writeln!(out, "pointsman_encoder_worker_panics_total {}", p.panics());
        let health = service.catalog_health(&engine);
        family(&mut out, "pointsman_model_health_state", "gauge", "1 for each model's current circuit state.");
        for (m, h) in engine.catalog().models().iter().zip(&health) {
            let _ = writeln!(out, "pointsman_model_health_state{{model=\"{}\",state=\"{}\"}} 1", escape(&m.id), h.state.as_str());
        }
        family(&mut out, "pointsman_model_error_rate", "gauge", "Failed share of each model's attempts in the health window.");
        for (m, h) in engine.catalog().models().iter().zip(&health) {
            let _ = writeln!(out, "pointsman_model_error_rate{{model=\"{}\"}} {}", escape(&m.id), h.error_rate);
        }
    }
    out
}
