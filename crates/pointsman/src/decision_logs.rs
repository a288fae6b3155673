//! The server's decision logs as a source of training lines for the trainer: the trainer knows
//! nothing of SQLite or PostgreSQL, so the binary registers this reader with it.
use std::path::Path;

use pointsman_learning::DecisionLogs;
use pointsman_server::logs::{self, store::FeedbackScope};

use crate::record::LogRecord;

/// Reads a decision log (a SQLite file or a `postgres://` URL) for `train`, `eval` and `extend`.
pub struct ServerDecisionLogs;

impl ServerDecisionLogs {
    /// Registers this reader with the trainer (once per process).
    pub fn register() {
        pointsman_learning::register_decision_logs(Box::new(ServerDecisionLogs));
    }
}

impl DecisionLogs for ServerDecisionLogs {
    fn recognises(&self, path: &Path) -> bool {
        logs::is_decision_log(path)
    }

    fn name(&self, path: &Path) -> String {
        logs::postgres::source_name(path)
    }

    /// Verified reports on offered models only (`logs export --unverified-feedback` writes the
    /// others to a file to train on).
    fn training_lines(&self, path: &Path) -> Result<(Vec<LogRecord>, String), Box<dyn std::error::Error + Send + Sync>> {
        let (lines, s) = logs::read_training_lines(path, FeedbackScope::Verified)?;
        let skips = format!(
            "no decision {}, not offered {}, unverified {}, no quality {}, no output tokens {}",
            s.no_decision, s.not_offered, s.unverified, s.no_quality, s.no_output_tokens
        );
        Ok((lines, skips))
    }
}
