//! Optional bearer-token authentication (`[auth]`): each configured token carries roles, and
//! every call to `pointsman.v1.Router`, `pointsman.v1.Admin` and `GET /metrics` must present a
//! token with the role it needs in `authorization: Bearer <token>`. Health checks and
//! reflection stay open (Kubernetes probes, tooling).
//!
//! Tokens come from the config file or, better, from an environment variable the config names,
//! so that secrets stay out of files. Only their SHA-256 digests are kept in memory, and a
//! presented token is compared with every one of them in constant time, so neither the timing
//! nor the length of a guess reveals anything. Denials never echo the token.
use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    config_error::{invalid, ConfigError},
    pb::{admin_server, router_server},
};

/// Shortest accepted token: a guessable token is no lock.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `Route` and `ListModels`.
    Route,
    /// `Feedback`.
    Feedback,
    /// `Admin.Reload`, `GET /metrics` and the report (`/report`, `/report.json`) on the admin listener.
    Admin,
    /// Envoy's external processor on the ext_proc listener (it routes and reports feedback).
    Gateway,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Route, Role::Feedback, Role::Admin, Role::Gateway];

    /// The name used in the config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Route => "route",
            Role::Feedback => "feedback",
            Role::Admin => "admin",
            Role::Gateway => "gateway",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// `[auth]`: optional bearer tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a token on `Router`, `Admin` and `/metrics`. Off by default.
    pub enabled: bool,
    /// The accepted tokens (`[[auth.tokens]]`).
    pub tokens: Vec<TokenConfig>,
}

/// `[[auth.tokens]]`: one accepted token and its roles.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Who holds the token (for logs and messages; not secret).
    pub name: String,
    /// The token itself. Prefer `token_env`.
    pub token: Option<String>,
    /// Name of the environment variable holding the token.
    pub token_env: Option<String>,
    /// Any of `route`, `feedback`, `admin`.
    pub roles: Vec<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("token_env", &self.token_env)
            .field("roles", &self.roles)
            .finish()
    }
}

/// How a token appears in a config error: never its value.
fn hidden(secret: &str) -> String {
    format!("<hidden, {} characters>", secret.chars().count())
}

impl AuthConfig {
    /// Checks every token entry (reading the environment variables they name); the error names
    /// the key and never shows a token.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.authenticator().map(|_| ())
    }

    /// The checker of presented tokens, or `None` when auth is off.
    pub fn authenticator(&self) -> Result<Option<Authenticator>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        if self.tokens.is_empty() {
            return Err(invalid("auth.tokens", "at least one [[auth.tokens]] entry when auth.enabled = true", "none"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            let key = |field: &str| format!("auth.tokens[{i}].{field}");
            let name = t.name.trim();
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(invalid(&key("name"), "a non-empty name without control characters", format!("{:?}", t.name)));
            }
            if let Some(j) = entries.iter().position(|e| e.name == name) {
                return Err(invalid(&key("name"), &format!("a name unique among auth.tokens (auth.tokens[{j}] has it)"), name));
            }
            if t.roles.is_empty() {
                return Err(invalid(&key("roles"), "a non-empty list of route, feedback, admin, gateway", "[]"));
            }
            let mut roles = 0u8;
            for r in &t.roles {
                let role =
                    Role::parse(r).ok_or_else(|| invalid(&key("roles"), "a list of route, feedback, admin, gateway", format!("{r:?}")))?;
                roles |= role.bit();
            }
            let (source, secret) = match (&t.token, &t.token_env) {
                (Some(token), None) => (key("token"), token.clone()),
                (None, Some(var)) => {
                    let value = std::env::var(var).map_err(|_| {
                        invalid(&key("token_env"), "the name of a set environment variable holding the token", format!("{var} (not set)"))
                    })?;
                    (key("token_env"), value)
                }
                (Some(_), Some(var)) => {
                    return Err(invalid(
                        &key("token"),
                        "unset when token_env is set (give exactly one)",
                        format!("set, and token_env = {var}"),
                    ))
                }
                (None, None) => return Err(invalid(&key("token_env"), "set (or `token`): where the token comes from", "neither")),
            };
            if secret.chars().count() < MIN_TOKEN_CHARS || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    &source,
                    &format!("a token of at least {MIN_TOKEN_CHARS} visible ASCII characters without spaces (e.g. `openssl rand -hex 32`)"),
                    hidden(&secret),
                ));
            }
            let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            if let Some(j) = entries.iter().position(|e| bool::from(e.digest.ct_eq(&digest))) {
                return Err(invalid(
                    &source,
                    "a token different from every other auth.tokens entry",
                    format!("the same token as auth.tokens[{j}]"),
                ));
            }
            entries.push(Entry { name: name.to_string(), digest, roles });
        }
        Ok(Some(Authenticator { entries }))
    }
}

struct Entry {
    name: String,
    digest: [u8; 32],
    roles: u8,
}

/// Checks presented tokens against the configured ones.
pub struct Authenticator {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("tokens", &self.entries.iter().map(|e| &e.name).collect::<Vec<_>>()).finish()
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `authorization: Bearer` header.
    #[error("missing credentials: this server requires `authorization: Bearer <token>` metadata with the `{0}` role")]
    Missing(&'static str),
    /// A token that matches none configured.
    #[error("unknown token: the bearer token in `authorization` matches none of the server's auth.tokens")]
    Unknown,
    /// A valid token without the role.
    #[error("permission denied: token `{name}` lacks the `{role}` role this call needs (it has: {has})")]
    Forbidden {
        /// The token's configured name.
        name: String,
        /// The role needed.
        role: &'static str,
        /// The roles it has.
        has: String,
    },
}

impl Denied {
    /// Stable snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            Denied::Missing(_) => "missing_token",
            Denied::Unknown => "unknown_token",
            Denied::Forbidden { .. } => "missing_role",
        }
    }
}

impl From<Denied> for tonic::Status {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Missing(_) | Denied::Unknown => tonic::Status::unauthenticated(d.to_string()),
            Denied::Forbidden { .. } => tonic::Status::permission_denied(d.to_string()),
        }
    }
}

impl Authenticator {
    /// The name of the token in `authorization` if it has `role`.
    pub fn check(&self, authorization: Option<&HeaderValue>, role: Role) -> Result<&str, Denied> {
        let Some(value) = authorization else { return Err(Denied::Missing(role.as_str())) };
        let presented = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let Some(presented) = presented else { return Err(Denied::Unknown) };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared, without an early exit, so the time taken says nothing about
        // which (if any) matched.
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        let e = found.ok_or(Denied::Unknown)?;
        if e.roles & role.bit() == 0 {
            let has: Vec<_> = Role::ALL.into_iter().filter(|r| e.roles & r.bit() != 0).map(Role::as_str).collect();
            return Err(Denied::Forbidden { name: e.name.clone(), role: role.as_str(), has: has.join(", ") });
        }
        Ok(&e.name)
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// `server.listen`: Router, health, reflection.
    Data,
    /// `admin.listen`: Admin, `/metrics`, reflection.
    Admin,
    /// `ext_proc.listen`: Envoy's external processor, health.
    ExtProc,
}

/// Envoy's external processor service, as named in its request paths.
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// The role a request path needs on `plane`, or `None` for open paths (health, reflection) and
/// for paths the listener does not serve (they get UNIMPLEMENTED or 404 whatever the token).
pub fn role_for_path(plane: Plane, path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path.trim_start_matches('/'), ""));
    match (plane, service, method) {
        (Plane::Data, router_server::SERVICE_NAME, "Feedback") => Some(Role::Feedback),
        (Plane::Data, router_server::SERVICE_NAME, _) => Some(Role::Route),
        (Plane::Admin, admin_server::SERVICE_NAME, _) | (Plane::Admin, "metrics" | "report" | "report.json", "") => Some(Role::Admin),
        (Plane::ExtProc, EXT_PROC_SERVICE, _) => Some(Role::Gateway),
        _ => None,
    }
}

/// True for gRPC requests (answered with a gRPC status rather than an HTTP code).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// Middleware: lets a request through when its path is open or its token has the role; else
/// UNAUTHENTICATED / PERMISSION_DENIED for gRPC, 401 / 403 for HTTP (`/metrics`).
pub async fn require(State((auth, plane)): State<(Arc<Authenticator>, Plane)>, req: Request, next: Next) -> Response {
    let Some(role) = role_for_path(plane, req.uri().path()) else { return next.run(req).await };
    match auth.check(req.headers().get(header::AUTHORIZATION), role) {
        Ok(name) => {
            tracing::trace!(token = name, path = req.uri().path(), "authorised");
            next.run(req).await
        }
        Err(denied) => {
            tracing::debug!(path = req.uri().path(), reason = denied.label(), "call refused");
            if is_grpc(req.headers()) {
                return tonic::Status::from(denied).into_http::<axum::body::Body>();
            }
            let status = if matches!(denied, Denied::Forbidden { .. }) { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
            let mut resp = (status, format!("{denied}\n")).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tokens: Vec<TokenConfig>) -> AuthConfig {
        AuthConfig { enabled: true, tokens }
    }

    fn token(name: &str, secret: &str, roles: &[&str]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            token: Some(secret.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn bearer(t: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    #[test]
    fn roles_are_checked_per_token() {
        let a = cfg(vec![token("gw", "0123456789abcdef-gw", &["route", "feedback"]), token("ops", "0123456789abcdef-ops", &["admin"])])
            .authenticator()
            .unwrap()
            .unwrap();
        assert_eq!(a.check(Some(&bearer("0123456789abcdef-gw")), Role::Route), Ok("gw"));
        assert_eq!(a.check(Some(&HeaderValue::from_static("bearer 0123456789abcdef-ops")), Role::Admin), Ok("ops"));
        assert_eq!(a.check(None, Role::Route), Err(Denied::Missing("route")));
        assert_eq!(a.check(Some(&bearer("0123456789abcdef-g")), Role::Route), Err(Denied::Unknown));
        assert_eq!(a.check(Some(&HeaderValue::from_static("Basic 0123456789abcdef-gw")), Role::Route), Err(Denied::Unknown));
        let e = a.check(Some(&bearer("0123456789abcdef-gw")), Role::Admin).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`admin`") && msg.contains("route, feedback") && !msg.contains("0123456789abcdef"), "{msg}");
    }

    #[test]
    fn paths_map_to_roles() {
        use Plane::{Admin, Data, ExtProc};
        assert_eq!(role_for_path(Data, "/pointsman.v1.Router/Route"), Some(Role::Route));
        assert_eq!(role_for_path(Data, "/pointsman.v1.Router/ListModels"), Some(Role::Route));
        assert_eq!(role_for_path(Data, "/pointsman.v1.Router/Feedback"), Some(Role::Feedback));
        assert_eq!(role_for_path(Admin, "/pointsman.v1.Admin/Reload"), Some(Role::Admin));
        assert_eq!(role_for_path(Admin, "/metrics"), Some(Role::Admin));
        assert_eq!(role_for_path(Admin, "/report"), Some(Role::Admin));
        assert_eq!(role_for_path(Admin, "/report.json"), Some(Role::Admin));
        assert_eq!(role_for_path(Data, "/report"), None);
        // Not served there: answered UNIMPLEMENTED / 404 without asking for a token.
        assert_eq!(role_for_path(Data, "/pointsman.v1.Admin/Reload"), None);
        assert_eq!(role_for_path(Data, "/metrics"), None);
        assert_eq!(role_for_path(Admin, "/pointsman.v1.Router/Route"), None);
        assert_eq!(role_for_path(Data, "/grpc.health.v1.Health/Check"), None);
        assert_eq!(role_for_path(ExtProc, "/envoy.service.ext_proc.v3.ExternalProcessor/Process"), Some(Role::Gateway));
        assert_eq!(role_for_path(ExtProc, "/grpc.health.v1.Health/Check"), None);
        assert_eq!(role_for_path(ExtProc, "/pointsman.v1.Router/Route"), None);
        assert_eq!(role_for_path(Data, "/envoy.service.ext_proc.v3.ExternalProcessor/Process"), None);
        assert_eq!(role_for_path(Data, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), None);
    }

    #[test]
    fn bad_entries_name_the_key_and_hide_the_token() {
        let err = |c: AuthConfig| c.validate().unwrap_err().to_string();
        assert!(err(cfg(vec![])).contains("auth.tokens"));
        let e = err(cfg(vec![token("gw", "short-secret", &["route"])]));
        assert!(e.contains("auth.tokens[0].token") && e.contains("<hidden, 12 characters>") && !e.contains("short-secret"), "{e}");
        let e = err(cfg(vec![token("gw", "", &["route"])]));
        assert!(e.contains("auth.tokens[0].token") && e.contains("<hidden, 0 characters>"), "{e}");
        let e = err(cfg(vec![token("gw", "0123456789abcdef", &["route", "superuser"])]));
        assert!(e.contains("auth.tokens[0].roles") && e.contains("superuser"), "{e}");
        let e = err(cfg(vec![token("gw", "0123456789abcdef", &[])]));
        assert!(e.contains("auth.tokens[0].roles"), "{e}");
        let missing =
            TokenConfig { token: None, token_env: Some("POINTSMAN_TEST_SURELY_UNSET_TOKEN".into()), ..token("gw", "", &["route"]) };
        let e = err(cfg(vec![missing]));
        assert!(e.contains("auth.tokens[0].token_env") && e.contains("POINTSMAN_TEST_SURELY_UNSET_TOKEN (not set)"), "{e}");
        let e = err(cfg(vec![token("a", "0123456789abcdef", &["route"]), token("b", "0123456789abcdef", &["admin"])]));
        assert!(e.contains("auth.tokens[1].token") && e.contains("auth.tokens[0]") && !e.contains("0123456789abcdef"), "{e}");
        let e = err(cfg(vec![token("a", "0123456789abcdef", &["route"]), token("a", "0123456789abcdefX", &["admin"])]));
        assert!(e.contains("auth.tokens[1].name"), "{e}");
        assert!(AuthConfig { enabled: false, tokens: vec![token("x", "", &[])] }.validate().is_ok(), "auth off ignores the entries");
        assert!(!format!("{:?}", token("gw", "0123456789abcdef", &["route"])).contains("0123456789abcdef"));
    }
}
