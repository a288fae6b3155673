//! # pointsman
//!
//! The `pointsman` binary's library: the commands (`cli`) over the three crates of the
//! workspace, and one place that names them all, so that the integration tests, benches and
//! examples reach every layer as `pointsman::<module>`:
//! - [`pointsman_core`]: the decision engine ([`catalog`], [`encoder`], [`predictor`],
//!   [`policy`], [`session`], [`engine`], [`runtime`], [`record`]);
//! - [`pointsman_learning`] as [`learning`]: train, eval, tune, extend;
//! - [`pointsman_server`]: [`config`], [`service`], [`health`], [`sessions`], [`logs`], [`report`],
//!   [`transport`] and the rest of the server.
#![warn(missing_docs)]

pub mod cli;
mod decision_logs;

pub use decision_logs::ServerDecisionLogs;
pub use pointsman_core::{catalog, encoder, engine, exploration, policy, predictor, record, runtime, session};
pub use pointsman_learning as learning;
pub use pointsman_server::{
    auth, config, config_error, health, logs, outcome, pb, report, savings, service, sessions, telemetry, tls, transport,
};
