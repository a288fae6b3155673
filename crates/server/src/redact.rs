//! Secrets out of URLs before they reach a message or a log line: the decision log's PostgreSQL
//! URL and the shared health's Redis URL both go through here (a leaf, so neither `logs` nor
//! `health` reaches into the other for it).

/// The URL with its password replaced by `***`, for messages and logs: the user-info password
/// and a libpq `?password=` parameter both (parsed by the `url` crate, which also takes an
/// unencoded `@` in the password). A URL it cannot parse keeps only its scheme, user and host.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            if pairs.iter().any(|(k, _)| k == "password") {
                let mut q = u.query_pairs_mut();
                q.clear();
                for (k, v) in &pairs {
                    q.append_pair(k, if k == "password" { "***" } else { v });
                }
            }
            u.to_string()
        }
        Err(_) => {
            let Some((scheme, rest)) = url.split_once("://") else { return "(not a URL)".into() };
            let rest = rest.split(['?', '#']).next().unwrap_or_default();
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}")
                }
                None => format!("{scheme}://{rest}"),
            }
        }
    }
}
