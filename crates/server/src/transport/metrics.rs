//! Prometheus text exposition at `GET /metrics`, through `metrics-exporter-prometheus`.
//!
//! Two sources make the page: the service's [`crate::telemetry::Telemetry`] recorder (what is
//! measured as it happens: the Route latency histogram) and a recorder built for each scrape
//! into which the counters kept as atomics (service, decision log) and the current state
//! (health, version, encoder queue) are copied. The scrape recorder starts empty every time, so a
//! model that left the catalog or a version that was reloaded away leaves no stale series.
//!
//! A new counter: keep it as an atomic next to the others (`ServiceStats`, the engine, the
//! log's stats) and add one `page.counter(name, help, labels, value)` line to [`render`]. Route
//! results are read from `ServiceStats::route_errors`, so a new `RouteError` label appears under
//! `pointsman_route_requests_total{result=...}` with no change here.
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Key, KeyName, Label, Recorder as _};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::{health::Outcome, service::Service, telemetry::METADATA};

/// One scrape's page under construction.
struct Page {
    recorder: PrometheusRecorder,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect::<Vec<_>>())
}

impl Page {
    fn new() -> Self {
        Self { recorder: PrometheusBuilder::new().build_recorder() }
    }

    /// Sets counter `name{labels}` to `value` (a running total kept elsewhere).
    fn counter(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: u64) {
        self.recorder.describe_counter(KeyName::from(name), None, help.into());
        self.recorder.register_counter(&key(name, labels), &METADATA).absolute(value);
    }

    /// Sets gauge `name{labels}` to `value`.
    fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.recorder.describe_gauge(KeyName::from(name), None, help.into());
        self.recorder.register_gauge(&key(name, labels), &METADATA).set(value);
    }

    fn render(self) -> String {
        self.recorder.handle().render()
    }
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

/// The metrics page.
pub fn render(service: &Service) -> String {
    let page = Page::new();
    let st = service.stats();
    page.counter("pointsman_route_received_total", "Route calls received; each ends in one result below.", &[], load(&st.routes_received));
    const ROUTES: &str = "Route calls by result (ok, the error label, or cancelled).";
    page.counter("pointsman_route_requests_total", ROUTES, &[("result", "ok")], load(&st.routes_ok));
    for (label, n) in st.route_errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        page.counter("pointsman_route_requests_total", ROUTES, &[("result", label)], *n);
    }
    page.counter("pointsman_route_requests_total", ROUTES, &[("result", "cancelled")], load(&st.routes_cancelled));
    page.counter("pointsman_route_cache_hits_total", "Route calls answered from the prediction cache.", &[], load(&st.cache_hits));
    if let Some(engine) = service.engine() {
        let x = engine.explorer().stats();
        const EXPLORE: &str = "Route decisions by exploration result: explored (the primary was drawn), switched (the draw was not the best model), capped (the day's max_extra_cost_usd_per_day was spent).";
        page.counter("pointsman_exploration_decisions_total", EXPLORE, &[("result", "explored")], load(&x.explored));
        page.counter("pointsman_exploration_decisions_total", EXPLORE, &[("result", "switched")], load(&x.switched));
        page.counter("pointsman_exploration_decisions_total", EXPLORE, &[("result", "capped")], load(&x.capped));
        page.gauge(
            "pointsman_exploration_extra_cost_usd_today",
            "Extra predicted cost of today's explored decisions on this replica, USD (UTC day).",
            &[],
            load(&x.extra_cost_micro_usd_today) as f64 / 1e6,
        );
        if let Some(head) = engine.shadow_head_id() {
            const SHADOW: &str =
                "Route decisions scored by the shadow head, by whether its primary agreed with the serving head's best model.";
            page.counter("pointsman_shadow_decisions_total", SHADOW, &[("head", head), ("agrees", "true")], load(&st.shadow_agreed));
            page.counter("pointsman_shadow_decisions_total", SHADOW, &[("head", head), ("agrees", "false")], load(&st.shadow_disagreed));
        }
    }
    for (o, n) in Outcome::ALL.iter().zip(&st.feedback) {
        page.counter("pointsman_feedback_total", "Feedback reports accepted, by outcome.", &[("outcome", o.as_str())], load(n));
    }
    page.counter(
        "pointsman_feedback_unverified_total",
        "Feedback reports on catalog models not applied to health: no replica offered the model for that request id, as far as this one knows.",
        &[],
        load(&st.feedback_unverified),
    );
    page.counter(
        "pointsman_feedback_duplicates_total",
        "Feedback reports on catalog models not applied to health: a report on the same request id and model already was.",
        &[],
        load(&st.feedback_duplicates),
    );
    const EXT_PROC: &str =
        "Requests Envoy's external processor handled, by action: routed, passed (explicit model or not a chat request), refused (the request's fault: 400, 422), failed (Pointsman's: left to Envoy's failure_mode_allow).";
    page.counter("pointsman_ext_proc_requests_total", EXT_PROC, &[("action", "routed")], load(&st.ext_proc_routed));
    page.counter("pointsman_ext_proc_requests_total", EXT_PROC, &[("action", "passed")], load(&st.ext_proc_passed));
    page.counter("pointsman_ext_proc_requests_total", EXT_PROC, &[("action", "refused")], load(&st.ext_proc_refused));
    page.counter("pointsman_ext_proc_requests_total", EXT_PROC, &[("action", "failed")], load(&st.ext_proc_failed));
    for (reason, n) in st.ext_proc_passed_by_reason.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        page.counter(
            "pointsman_ext_proc_passed_total",
            "Requests Envoy's external processor passed through unrouted, by reason: explicit_model, not_json, no_messages, no_text (only images or tool calls), too_large (over ext_proc.max_body_bytes).",
            &[("reason", reason)],
            *n,
        );
    }
    const RELOADS: &str = "Model reloads by result.";
    page.counter("pointsman_reloads_total", RELOADS, &[("result", "ok")], load(&st.reloads_ok));
    page.counter("pointsman_reloads_total", RELOADS, &[("result", "rejected")], load(&st.reloads_failed));
    if let Some(log) = service.log() {
        let s = log.stats();
        let counters = [
            ("pointsman_decision_log_decisions_written_total", "Decisions committed to the decision log.", &s.decisions_written),
            ("pointsman_decision_log_feedback_written_total", "Feedback reports committed to the decision log.", &s.feedback_written),
            (
                "pointsman_decision_log_dropped_total",
                "Decisions dropped because the log's queue was full (routing went on).",
                &s.decisions_dropped,
            ),
            (
                "pointsman_decision_log_feedback_refused_total",
                "Feedback reports refused with RESOURCE_EXHAUSTED because the queue stayed full.",
                &s.feedback_refused,
            ),
            ("pointsman_decision_log_write_failures_total", "Records lost to failed writes.", &s.write_failures),
            ("pointsman_decision_log_batches_total", "Committed write batches.", &s.batches),
            ("pointsman_decision_log_pruned_rows_total", "Rows removed by retention.", &s.pruned_rows),
            (
                "pointsman_decision_log_writer_restarts_total",
                "Times the decision log's writer thread panicked and was started again.",
                &s.writer_restarts,
            ),
        ];
        for (name, help, v) in counters {
            page.counter(name, help, &[], load(v));
        }
        page.gauge("pointsman_decision_log_queued", "Records waiting for the writer.", &[], load(&s.queued) as f64);
        page.gauge(
            "pointsman_decision_log_queued_bytes",
            "Bytes of the records waiting for the writer.",
            &[],
            load(&s.queued_bytes) as f64,
        );
        if log.config().url.is_some() {
            page.gauge(
                "pointsman_decision_log_backend_up",
                "1 while the writer is connected to PostgreSQL; 0 while records go to the spill file.",
                &[],
                f64::from(u8::from(s.backend_up.load(Ordering::Relaxed))),
            );
            page.gauge(
                "pointsman_decision_log_spilled",
                "Records waiting in the local spill file for PostgreSQL.",
                &[],
                load(&s.spilled) as f64,
            );
            page.counter(
                "pointsman_decision_log_spilled_total",
                "Records written to the spill file while PostgreSQL failed.",
                &[],
                load(&s.spilled_total),
            );
            page.counter("pointsman_decision_log_replayed_total", "Spilled records since written to PostgreSQL.", &[], load(&s.replayed));
            page.gauge(
                "pointsman_decision_log_spill_bytes",
                "Bytes of the batches waiting in the local spill file (capped by decision_log.spill_max_bytes).",
                &[],
                load(&s.spill_bytes) as f64,
            );
            page.counter(
                "pointsman_decision_log_spill_dropped_total",
                "Records dropped because the spill file was at decision_log.spill_max_bytes.",
                &[],
                load(&s.spill_dropped),
            );
            page.counter(
                "pointsman_decision_log_spill_set_aside_total",
                "Spilled records meant for another database, kept aside in the spill file instead of replayed.",
                &[],
                load(&s.spill_set_aside),
            );
            page.counter(
                "pointsman_decision_log_dead_letters_total",
                "Records PostgreSQL refused for good (a value it cannot store), kept in a dead-letter table; the rest of their batch landed.",
                &[],
                load(&s.dead_letters),
            );
            page.counter(
                "pointsman_decision_log_retention_deletes_total",
                "DELETE statements retention ran on PostgreSQL (each at most a few thousand rows).",
                &[],
                load(&s.retention_deletes),
            );
            page.counter(
                "pointsman_decision_log_retention_skipped_total",
                "Retention passes skipped on PostgreSQL because another replica was pruning (held the advisory lock).",
                &[],
                load(&s.retention_skipped),
            );
        }
    }
    {
        let sessions = service.sessions();
        let s = sessions.stats();
        const DECISIONS: &str = "Decisions of requests that named a session, by what the session did: new (first turn, or after the idle TTL), kept (the last turn's model and endpoint), moved.";
        for (verdict, v) in [("new", &s.new), ("kept", &s.kept), ("moved", &s.moved)] {
            page.counter("pointsman_session_decisions_total", DECISIONS, &[("verdict", verdict)], load(v));
        }
        page.gauge("pointsman_sessions", "Sessions this replica keeps (approximate).", &[], sessions.len() as f64);
        if let Some(up) = sessions.shared_connected() {
            page.gauge("pointsman_sessions_shared_connected", "1 while sessions are shared through Redis.", &[], f64::from(u8::from(up)));
            const SHARED: &str = "Session turns shared through Redis: published (this replica's), applied (the others'), unshared (queue or backlog full, or older than the TTL).";
            page.counter("pointsman_sessions_shared_total", SHARED, &[("result", "published")], load(&s.published));
            page.counter("pointsman_sessions_shared_total", SHARED, &[("result", "applied")], load(&s.applied));
            page.counter("pointsman_sessions_shared_total", SHARED, &[("result", "unshared")], load(&s.unshared));
        }
    }
    if let Some(shared) = service.shared_health() {
        let s = shared.stats();
        page.gauge(
            "pointsman_health_shared_connected",
            "1 while breakers are shared through Redis; 0 while this replica uses its own.",
            &[],
            f64::from(u8::from(s.connected.load(Ordering::Relaxed))),
        );
        page.counter("pointsman_health_shared_published_total", "Local health reports shared through Redis.", &[], load(&s.published));
        page.counter("pointsman_health_shared_applied_total", "Other replicas' health reports applied here.", &[], load(&s.applied));
        page.counter(
            "pointsman_health_shared_duplicates_total",
            "Other replicas' health reports read and not applied: sent twice, or on a request id and model already counted here.",
            &[],
            load(&s.duplicates),
        );
        const OFFERS: &str = "Decisions' offered sets (request id and models) shared through Redis to verify reports on any replica: published (this replica's), applied (the others'), unshared (this replica's, queue or backlog full).";
        page.counter("pointsman_health_shared_offers_total", OFFERS, &[("result", "published")], load(&s.offers_published));
        page.counter("pointsman_health_shared_offers_total", OFFERS, &[("result", "applied")], load(&s.offers_applied));
        page.counter("pointsman_health_shared_offers_total", OFFERS, &[("result", "unshared")], load(&s.offers_unshared));
        page.counter(
            "pointsman_health_shared_unshared_total",
            "Local health reports never shared (queue full, or older than the window when Redis returned).",
            &[],
            load(&s.unshared),
        );
        page.counter("pointsman_health_shared_disconnects_total", "Times the connection to Redis was lost.", &[], load(&s.disconnects));
    }
    if let Some(engine) = service.engine() {
        page.gauge(
            "pointsman_info",
            "The version serving and its encoder.",
            &[("version", engine.version()), ("encoder", engine.encoder().id())],
            1.0,
        );
        if let Some(c) = engine.cascade_stats() {
            const CASCADE: &str = "Route decisions of the cascade (encoder.variant = \"cascade\") by the tier that decided: `static` (its best two utilities were at least encoder.cascade_margin apart) or `minilm` (asked because they were not); the share reaching MiniLM is minilm / (static + minilm). Counted since the engine was loaded.";
            let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            page.counter("pointsman_cascade_decisions_total", CASCADE, &[("tier", "static")], load(&c.static_decided));
            page.counter("pointsman_cascade_decisions_total", CASCADE, &[("tier", "minilm")], load(&c.escalated));
        }
        page.gauge("pointsman_cache_entries", "Routing texts in the prediction cache.", &[], engine.cache_entries() as f64);
        page.gauge(
            "pointsman_cache_bytes",
            "Bytes the prediction cache holds, by its own weighing (bounded by cache.max_bytes).",
            &[],
            engine.cache_bytes() as f64,
        );
        let p = engine.pool_stats();
        page.gauge("pointsman_encoder_queue_depth", "Route calls waiting for an encoder thread.", &[], p.queue_depth() as f64);
        const JOBS: &str =
            "Encoder jobs: run, skipped unrun because the caller went away or its deadline passed, crashed with their thread, or refused before queueing because at the recent pace they could not be done by their deadline.";
        for (result, n) in [
            ("run", p.jobs_run()),
            ("skipped_caller_gone", p.skipped_caller_gone()),
            ("skipped_deadline", p.skipped_deadline()),
            ("refused_deadline", p.refused_deadline()),
            ("crashed", p.jobs_crashed()),
        ] {
            page.counter("pointsman_encoder_jobs_total", JOBS, &[("result", result)], n);
        }
        page.counter(
            "pointsman_encoder_worker_panics_total",
            "Encoder jobs that panicked (answered INTERNAL; the thread went on).",
            &[],
            p.panics(),
        );
        let health = service.catalog_health(&engine);
        for (m, h) in engine.catalog().models().iter().zip(&health) {
            let model = m.id.as_str();
            page.gauge(
                "pointsman_model_health_state",
                "1 for each model's current circuit state.",
                &[("model", model), ("state", h.state.as_str())],
                1.0,
            );
            page.gauge(
                "pointsman_model_error_rate",
                "Failed share of each model's attempts in the health window.",
                &[("model", model)],
                h.error_rate,
            );
            if h.p50_latency_ms > 0.0 {
                page.gauge(
                    "pointsman_model_p50_latency_seconds",
                    "Median latency of each model's successful attempts in the health window, as reported by Feedback (models with one).",
                    &[("model", model)],
                    h.p50_latency_ms / 1e3,
                );
            }
        }
        endpoint_metrics(&page, service, &engine);
    }
    let mut out = page.render();
    out.push_str(&service.telemetry().render());
    out
}

/// Per endpoint (model, provider) with a report: its breaker and what its traffic measured over
/// the health window (quantiles only once measured, see `health.min_measured_requests`).
fn endpoint_metrics(page: &Page, service: &Service, engine: &crate::engine::Engine) {
    let live = service.endpoint_live(engine);
    for (m, row) in engine.catalog().models().iter().zip(&live) {
        for (e, l) in m.endpoints.iter().zip(row) {
            if l.health.window_requests == 0 && l.measured_requests == 0 && l.health.state.as_str() == "healthy" {
                continue;
            }
            let labels = [("model", m.id.as_str()), ("provider", e.provider.as_str())];
            page.gauge(
                "pointsman_endpoint_health_state",
                "1 for each endpoint's current circuit state (endpoints with a report that named the provider).",
                &[labels[0], labels[1], ("state", l.health.state.as_str())],
                1.0,
            );
            page.gauge(
                "pointsman_endpoint_window_requests",
                "Attempts reported for each endpoint in the health window.",
                &labels,
                f64::from(l.health.window_requests),
            );
            page.gauge(
                "pointsman_endpoint_error_rate",
                "Failed share of each endpoint's attempts in the health window.",
                &labels,
                l.health.error_rate,
            );
            page.gauge(
                "pointsman_endpoint_rate_limited_rate",
                "Share of each endpoint's attempts in the health window refused for rate or quota (HTTP 429).",
                &labels,
                l.rate_limited_rate,
            );
            let figures: [(&'static str, &'static str, Option<crate::health::Quantiles>, f64); 3] = [
                (
                    "pointsman_endpoint_latency_seconds",
                    "Measured end-to-end latency of each endpoint's successful attempts in the health window, by quantile.",
                    l.latency_ms,
                    1e-3,
                ),
                (
                    "pointsman_endpoint_ttft_seconds",
                    "Measured time to first token of each endpoint's streamed answers in the health window, by quantile.",
                    l.ttft_ms,
                    1e-3,
                ),
                (
                    "pointsman_endpoint_throughput_tokens_per_second",
                    "Measured output tokens per second of generation of each endpoint in the health window, by quantile.",
                    l.tokens_per_second,
                    1.0,
                ),
            ];
            for (name, help, q, scale) in figures {
                let Some(q) = q else { continue };
                for p in crate::health::Percentile::ALL {
                    let quantile = p.quantile().to_string();
                    page.gauge(name, help, &[labels[0], labels[1], ("quantile", quantile.as_str())], q.at(p) * scale);
                }
            }
        }
    }
}
