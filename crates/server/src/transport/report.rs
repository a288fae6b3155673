//! The report on the admin listener: `GET /report` (an HTML page with inline SVG plots) and
//! `GET /report.json` (the same figures), built from the decision log by `crate::report`.
//!
//! Query parameters: `since` and `until` (RFC 3339, a duration before now such as `24h`, or ms
//! since the Unix epoch; default: the last day) and `clusters` (decisions sampled for the prompt
//! clusters, 0 to skip them; default 200, at most 2000). Bad values get 400 with a message that
//! names the parameter. Behind the `admin` role when `[auth]` is on.
use std::sync::Arc;

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{
    report::{self, ReportError, Window},
    service::Service,
};

/// Default decisions sampled for the page's prompt clusters.
pub const DEFAULT_CLUSTER_SAMPLE: usize = 200;
/// Most decisions the page may sample for them.
pub const MAX_CLUSTER_SAMPLE: usize = 2000;

/// The figures as JSON or HTML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `/report.json`.
    Json,
    /// `/report`.
    Html,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}

/// Reads the query: the window and the cluster sample; the error names the parameter.
pub fn parse_query(query: Option<&str>, now_ms: i64) -> Result<(Window, usize), String> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !matches!(k.as_str(), "since" | "until" | "clusters")) {
        return Err(format!("unknown query parameter `{k}`: the report takes since, until and clusters"));
    }
    let window = Window::parse(get("since"), get("until"), now_ms)?;
    let clusters = match get("clusters") {
        None | Some("") => DEFAULT_CLUSTER_SAMPLE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_CLUSTER_SAMPLE => n,
            _ => return Err(format!("clusters must be a whole number in 0..={MAX_CLUSTER_SAMPLE}. Given: {v:?}")),
        },
    };
    Ok((window, clusters))
}

/// Answers `GET /report` or `GET /report.json`.
pub async fn handle(service: Arc<Service>, format: Format, query: Option<String>) -> Response {
    let (window, clusters) = match parse_query(query.as_deref(), report::now_ms()) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    match report::for_service(&service, window, clusters).await {
        Ok(r) => match format {
            Format::Json => match serde_json::to_string(&r) {
                Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("report: {e}\n")).into_response(),
            },
            Format::Html => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], report::html::page(&r)).into_response(),
        },
        Err(e @ ReportError::NoLog) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "report failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("report: {e}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read_and_bad_values_name_the_parameter() {
        let now = 1_800_000_000_000;
        let (w, c) = parse_query(Some("since=2h&clusters=0"), now).unwrap();
        assert_eq!((w.since_ms, w.until_ms, c), (now - 7_200_000, now, 0));
        assert_eq!(parse_query(None, now).unwrap().1, DEFAULT_CLUSTER_SAMPLE);
        let e = parse_query(Some("clusters=99999"), now).unwrap_err();
        assert!(e.contains("clusters") && e.contains("99999") && e.contains("2000"), "{e}");
        let e = parse_query(Some("sinse=1h"), now).unwrap_err();
        assert!(e.contains("sinse"), "{e}");
        let e = parse_query(Some("until=soon"), now).unwrap_err();
        assert!(e.starts_with("until must be") && e.contains("soon"), "{e}");
    }
}
