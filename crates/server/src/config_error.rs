//! The config's error: what every section's validation returns, naming the key, its limit
//! and the value given. A leaf module, so each section (health, logs, auth, tls) validates
//! itself without depending on the whole config.
use std::path::PathBuf;

use pointsman_core::catalog::CatalogError;

/// Errors while reading or validating the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("config `{key}` must be {limit}. Given: {value}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// What it must be.
        limit: String,
        /// The value given.
        value: String,
    },
    /// The catalog is invalid.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// A value-out-of-range error naming the key, the limit and the value.
pub(crate) fn invalid(key: &str, limit: &str, value: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { key: key.into(), limit: limit.into(), value: value.to_string() }
}
