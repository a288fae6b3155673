//! TLS (rustls with ring) on the gRPC data port, and optionally on the admin listener:
//! `[tls] cert` and `key` turn it on; `client_ca` also requires every client to present a
//! certificate signed by that CA (mutual TLS).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config_error::{invalid, ConfigError};

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `[tls]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server (leaf first). With `key`, turns TLS on.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM bundle of the CA(s) that sign client certificates; when set, a client without such a
    /// certificate is refused during the handshake (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Serve the admin listener with the same TLS settings too (default: plaintext, since it
    /// listens on loopback by default).
    pub admin: bool,
}

fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| invalid(key, "a readable PEM file", format!("{} ({e})", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(invalid(key, "a PEM file (with a -----BEGIN ...----- block)", path.display()));
    }
    Ok(bytes)
}

impl TlsConfig {
    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Makes relative paths absolute against `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key, &mut self.client_ca].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks that the settings go together and the files are readable PEM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server_config().map(|_| ())
    }

    /// The server TLS settings, or `None` when TLS is off.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, ConfigError> {
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if let Some(ca) = &self.client_ca {
                    return Err(invalid("tls.client_ca", "set only together with tls.cert and tls.key", ca.display()));
                }
                if self.admin {
                    return Err(invalid("tls.admin", "true only together with tls.cert and tls.key", true));
                }
                return Ok(None);
            }
            (Some(_), None) => return Err(invalid("tls.key", "set when tls.cert is set", "unset")),
            (None, Some(_)) => return Err(invalid("tls.cert", "set when tls.key is set", "unset")),
        };
        // NOTE: tonic sets no handshake timeout by default; a client that never finishes its
        // handshake would hold the connection open.
        let mut tls = ServerTlsConfig::new()
            .timeout(HANDSHAKE_TIMEOUT)
            .identity(Identity::from_pem(read_pem("tls.cert", cert)?, read_pem("tls.key", key)?));
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read_pem("tls.client_ca", ca)?));
        }
        Ok(Some(tls))
    }
}
