//! PostgreSQL URLs: libpq's TLS parameters (`sslmode`, `sslrootcert`), the rustls client
//! settings they ask for, the password-free form shown in messages, and the database a URL
//! names (what a spill file records its batches were meant for).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// True for a `postgres://` or `postgresql://` URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

pub use crate::redact::redact;

/// The database a URL names, as `user@host:port/dbname` (libpq's defaults filled in), without
/// password or parameters: what a spill file records its batches were meant for.
pub fn target(url: &str) -> String {
    let parsed = transport(url).ok().and_then(|(u, _)| u.parse::<tokio_postgres::Config>().ok());
    let Some(c) = parsed else { return redact(url) };
    let user = c.get_user().unwrap_or("");
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = c.get_ports().get(i).or(c.get_ports().first()).copied().unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            }
        })
        .collect();
    let db = c.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

/// How a URL asks to reach its server: libpq's `sslmode` and `sslrootcert` parameters, so that
/// a URL written for `psql` works unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// No `sslmode`, or `disable`, `allow` or `prefer`: plaintext (an unverified TLS session
    /// would protect against nothing an attacker on the path cannot undo).
    Plain,
    /// `require`, `verify-ca` or `verify-full`: TLS, the server's certificate verified against
    /// `sslrootcert` (a PEM file of CA certificates) or else the system's roots, and its host
    /// name checked, whichever of the three is given (stricter than libpq's `require`).
    Tls {
        /// `sslrootcert`.
        root_cert: Option<PathBuf>,
    },
}

/// Splits `sslmode` and `sslrootcert` off `url`: the URL tokio-postgres is given (with
/// `sslmode=require` or `sslmode=disable`) and the transport.
pub fn transport(url: &str) -> Result<(String, Transport), String> {
    let Some((base, query)) = url.split_once('?') else { return Ok((format!("{url}?sslmode=disable"), Transport::Plain)) };
    let (mut mode, mut root_cert, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root_cert = Some(PathBuf::from(percent_decode(v).map_err(|m| format!("sslrootcert: {m}"))?)),
            _ => rest.push(pair),
        }
    }
    let transport = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if root_cert.is_some() {
                return Err(format!(
                    "sslrootcert is given but sslmode is {}: add sslmode=verify-full to use TLS",
                    mode.as_deref().unwrap_or("unset")
                ));
            }
            Transport::Plain
        }
        Some("require" | "verify-ca" | "verify-full") => Transport::Tls { root_cert },
        Some(other) => {
            return Err(format!("sslmode must be disable, allow, prefer, require, verify-ca or verify-full. Given: `{other}`"));
        }
    };
    rest.push(if matches!(transport, Transport::Plain) { "sslmode=disable" } else { "sslmode=require" });
    Ok((format!("{base}?{}", rest.join("&")), transport))
}

/// `%XX` escapes of a URL parameter.
fn percent_decode(v: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(v).decode_utf8().map(|s| s.into_owned()).map_err(|_| format!("`{v}` is not UTF-8"))
}

/// The rustls client settings of [`Transport::Tls`]: the CA certificates of `root_cert`, or the
/// system's. The crypto provider is named (ring), so another crate enabling a second provider
/// cannot make the builder panic.
pub fn client_tls(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("sslrootcert {}: no PEM certificate in it", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("sslmode asks for TLS and the system has no root certificates: set sslrootcert to the server's CA".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://me:secret@db:5432/log"), "postgres://me:***@db:5432/log");
        assert_eq!(redact("postgres://me@db/log"), "postgres://me@db/log");
        assert_eq!(redact("postgresql://db/log"), "postgresql://db/log");
        // libpq's password parameter, and an unencoded `@` in the password.
        let r = redact("postgres://me@db/log?sslmode=require&password=secret");
        assert!(!r.contains("secret") && r.contains("password=***") && r.contains("sslmode=require"), "{r}");
        let r = redact("postgres://me:p@ss@db:5432/log");
        assert!(!r.contains("ss@") && r.ends_with("@db:5432/log"), "{r}");
        // Unparseable: the password still does not show.
        let r = redact("postgres://me:secret@db:notaport/log?password=x");
        assert!(!r.contains("secret") && !r.contains("password"), "{r}");
        assert!(is_url("postgresql://x") && is_url("postgres://x") && !is_url("decisions.db"));
    }

    #[test]
    fn a_target_names_the_database_without_secrets() {
        assert_eq!(target("postgres://me:secret@db:6000/log?sslmode=require"), "me@db:6000/log");
        assert_eq!(target("postgres://me@db"), "me@db:5432/me");
        assert_ne!(target("postgres://me@db/a"), target("postgres://me@db/b"));
    }

    #[test]
    fn libpq_tls_parameters_choose_the_transport() {
        let base = "postgres://me:secret@db:5432/log";
        assert_eq!(transport(base).unwrap(), (format!("{base}?sslmode=disable"), Transport::Plain));
        assert_eq!(transport(&format!("{base}?sslmode=prefer")).unwrap(), (format!("{base}?sslmode=disable"), Transport::Plain));
        let (url, t) = transport(&format!("{base}?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem")).unwrap();
        assert_eq!(url, format!("{base}?connect_timeout=3&sslmode=require"));
        assert_eq!(t, Transport::Tls { root_cert: Some(PathBuf::from("/etc/ca x.pem")) });
        assert!(url.parse::<tokio_postgres::Config>().is_ok());
        assert_eq!(transport(&format!("{base}?sslmode=require")).unwrap().1, Transport::Tls { root_cert: None });
        let err = transport(&format!("{base}?sslmode=verify_full")).unwrap_err();
        assert!(err.contains("verify-full") && err.contains("`verify_full`"), "{err}");
        let err = transport(&format!("{base}?sslrootcert=/ca.pem")).unwrap_err();
        assert!(err.contains("sslmode is unset"), "{err}");
        assert!(transport(&format!("{base}?sslmode=require&sslrootcert=%ff")).is_err());
    }

    #[test]
    fn a_root_certificate_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_tls(Some(&empty)).unwrap_err();
        assert!(err.contains("no PEM certificate") && err.contains("empty.pem"), "{err}");
        let err = client_tls(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
