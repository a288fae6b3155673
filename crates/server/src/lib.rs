//! # pointsman-server
//!
//! Pointsman served: the gRPC `Router` and `Admin` services, Envoy's external processor, live
//! model health from feedback, and the decision log, over [`pointsman_core`]'s engine.
//!
//! Modules, bottom up: [`config_error`], [`outcome`], [`redact`] and the generated [`pb`] are leaves;
//! [`auth`] and [`tls`] read their config sections; [`config`] is the whole file; [`health`]
//! (breakers, shared through Redis), [`sessions`] (where each session's last turn went, shared
//! through the same Redis) and [`logs`] (SQLite or PostgreSQL, with spill and retention) are fed
//! by [`service`], the core every transport calls, which measures each decision against a
//! baseline ([`savings`]); [`report`] reads the log back into figures (the `report` command and
//! the admin page); [`telemetry`] is its
//! recorder; [`transport`] holds the listeners (gRPC data plane, admin with `/metrics`,
//! ext_proc). Only `transport` (and `auth`, for service names) knows protobuf.
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod config_error;
pub mod health;
pub mod logs;
pub mod outcome;
pub mod redact;
pub mod report;
pub mod savings;
pub mod service;
pub mod sessions;
pub mod telemetry;
pub mod tls;
pub mod transport;

// The engine parts the server is built on, by their names in the core.
use pointsman_core::{catalog, encoder, engine, exploration, policy, session};

/// Generated protobuf and gRPC types of `pointsman.v1`.
#[allow(missing_docs)]
pub mod pb {
    tonic::include_proto!("pointsman.v1");
}
