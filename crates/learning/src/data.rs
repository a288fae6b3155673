//! Reading routing logs: JSON Lines of `(prompt, model) -> (score, output_tokens)` outcomes.
//!
//! Logs come from two places: benchmark dumps (every model on every prompt) and the gateway in
//! production (one routed model per prompt). Both are the same line format, so one reader
//! serves both, and it returns the data sparse, as a list of observed pairs over dense prompt
//! and model indices; densifying with a mask is the dataset's job.
//!
//! Shaped for operators feeding it real files:
//! - gzip is recognised by its magic bytes, not the file name (logs get renamed and rotated);
//! - in lenient mode a bad line is skipped and counted, and the first [`MAX_PROBLEMS`] messages
//!   are kept for a summary, so one truncated line does not kill a nightly retrain; strict mode
//!   turns the first one into an error naming the file and line;
//! - repeated `(prompt_id, model)` pairs (retries, overlapping dumps) are averaged;
//! - output order is deterministic: prompts in first-seen order across the files in the order
//!   given, models sorted by name, observations sorted by (prompt, model).
use pointsman_core::record::LogRecord;
use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use flate2::bufread::MultiGzDecoder;

use super::LearningError;

/// How many problem messages [`RoutingLogs::problems`] keeps (the count is always complete).
pub const MAX_PROBLEMS: usize = 20;

/// One distinct prompt of the logs.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEntry {
    /// The log's `prompt_id`.
    pub id: String,
    /// The prompt text as the model saw it (the first text seen for this id).
    pub text: String,
    /// Sub-benchmark or traffic tag, if any line for this prompt carried one.
    pub task: Option<String>,
    /// A stored embedding and the encoder that made it, for decision logs kept without prompt
    /// text (`decision_log.store_prompts = false`); the text is then empty.
    pub embedding: Option<(String, Vec<f32>)>,
}

/// One observed outcome: a model's answer to a prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Index into [`RoutingLogs::prompts`].
    pub prompt: usize,
    /// Index into [`RoutingLogs::models`].
    pub model: usize,
    /// Quality in `[0, 1]` (mean over duplicate lines).
    pub score: f32,
    /// Tokens in the visible answer (mean over duplicate lines, rounded).
    pub output_tokens: u32,
    /// Probability the logging policy chose this model for this prompt, when every line of the
    /// pair carried one (the harmonic mean over duplicate lines, so that its inverse is the mean
    /// inverse propensity); `None` when unknown.
    pub propensity: Option<f32>,
}

/// Everything read from a set of routing log files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingLogs {
    /// Distinct prompts, in first-seen order.
    pub prompts: Vec<PromptEntry>,
    /// Distinct model ids, sorted.
    pub models: Vec<String>,
    /// Observed pairs, sorted by (prompt, model), at most one per pair.
    pub observations: Vec<Observation>,
    /// Lines skipped as malformed or inconsistent (lenient mode; always 0 in strict mode).
    pub skipped_lines: usize,
    /// Lines folded into an earlier line for the same (prompt_id, model).
    pub merged_duplicates: usize,
    /// The first [`MAX_PROBLEMS`] skip reasons, as `path:line: reason`.
    pub problems: Vec<String>,
}

impl RoutingLogs {
    /// Map from `prompt_id` to its index in [`RoutingLogs::prompts`].
    pub fn prompt_index(&self) -> HashMap<&str, usize> {
        self.prompts.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect()
    }

    /// Map from model id to its index in [`RoutingLogs::models`].
    pub fn model_index(&self) -> HashMap<&str, usize> {
        self.models.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect()
    }

    /// Number of observations per model, aligned with [`RoutingLogs::models`].
    pub fn model_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.models.len()];
        for o in &self.observations {
            counts[o.model] += 1;
        }
        counts
    }

    /// Mean score per model, aligned with [`RoutingLogs::models`]; `None` for a model with no
    /// observation (possible after filtering `observations`).
    pub fn model_mean_scores(&self) -> Vec<Option<f32>> {
        let mut sums = vec![(0.0f64, 0usize); self.models.len()];
        for o in &self.observations {
            sums[o.model].0 += f64::from(o.score);
            sums[o.model].1 += 1;
        }
        sums.into_iter().map(|(s, n)| (n > 0).then(|| (s / n as f64) as f32)).collect()
    }

    /// Observed pairs divided by all `prompts x models` pairs (1.0 for a full benchmark matrix).
    pub fn density(&self) -> f64 {
        let cells = self.prompts.len() * self.models.len();
        if cells == 0 {
            0.0
        } else {
            self.observations.len() as f64 / cells as f64
        }
    }
}

/// A reader of decision logs (a SQLite file, a `postgres://` URL): the server's, registered by
/// the `pointsman` binary with [`register_decision_logs`], so that every command that reads
/// routing logs also reads a decision log's labelled feedback. Without one, every path is read
/// as JSON Lines.
pub trait DecisionLogs: Send + Sync {
    /// True when `path` names a decision log this reader opens.
    fn recognises(&self, path: &Path) -> bool;
    /// The source as reports and errors may name it (a URL without its password).
    fn name(&self, path: &Path) -> String;
    /// The log's training lines: verified reports on offered models only (see the server's
    /// `logs export`). The string says what was left out and why, for the log.
    fn training_lines(&self, path: &Path) -> Result<(Vec<LogRecord>, String), Box<dyn std::error::Error + Send + Sync>>;
}

static DECISION_LOGS: std::sync::OnceLock<Box<dyn DecisionLogs>> = std::sync::OnceLock::new();

/// Registers the reader of decision logs (once per process; later calls are ignored).
pub fn register_decision_logs(reader: Box<dyn DecisionLogs>) {
    let _ = DECISION_LOGS.set(reader);
}

/// The registered reader, if `path` is one of its logs.
fn decision_log(path: &Path) -> Option<&'static dyn DecisionLogs> {
    DECISION_LOGS.get().map(|r| r.as_ref()).filter(|r| r.recognises(path))
}

/// `path` as reports name it (a decision log's URL without its password).
fn source_name(path: &Path) -> String {
    DECISION_LOGS.get().map_or_else(|| path.display().to_string(), |r| r.name(path))
}

/// Reads and merges routing logs from `paths` (each gzip or plain JSON Lines).
///
/// `strict`: the first malformed line is an error naming its file and line; otherwise such
/// lines are skipped and counted in [`RoutingLogs::skipped_lines`].
///
/// # Errors
/// [`LearningError::Io`] (unreadable file, corrupt gzip) and [`LearningError::NoObservations`]
/// always; [`LearningError::MalformedLine`] and [`LearningError::InconsistentPrompt`] in strict
/// mode.
pub fn read_logs(paths: &[PathBuf], strict: bool) -> Result<RoutingLogs, LearningError> {
    let mut builder = Builder::default();
    for path in paths {
        builder.read_file(path, strict)?;
    }
    let logs = builder.finish();
    if logs.observations.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| source_name(p)).collect();
        return Err(LearningError::NoObservations { what: format!("[{}]", names.join(", ")) });
    }
    if logs.skipped_lines > 0 {
        tracing::warn!(
            skipped = logs.skipped_lines,
            first = logs.problems.first().map(String::as_str).unwrap_or(""),
            "skipped malformed routing log lines"
        );
    }
    tracing::info!(
        prompts = logs.prompts.len(),
        models = logs.models.len(),
        observations = logs.observations.len(),
        merged_duplicates = logs.merged_duplicates,
        "read routing logs"
    );
    Ok(logs)
}

/// Running sums for one (prompt, model) pair.
struct Cell {
    score_sum: f64,
    tokens_sum: u64,
    count: u32,
    /// Sum of `1 / propensity` over the lines that carried one, and how many did.
    inverse_propensity_sum: f64,
    with_propensity: u32,
}

/// A reason a line was rejected.
enum LineFault {
    Malformed(String),
    Inconsistent(String),
}

#[derive(Default)]
struct Builder {
    prompts: Vec<PromptEntry>,
    prompt_ids: HashMap<String, usize>,
    model_names: Vec<String>,
    model_ids: HashMap<String, usize>,
    cells: HashMap<(usize, usize), Cell>,
    skipped_lines: usize,
    merged_duplicates: usize,
    problems: Vec<String>,
}

impl Builder {
    fn read_file(&mut self, path: &Path, strict: bool) -> Result<(), LearningError> {
        let io_err = |source| LearningError::Io { path: path.to_path_buf(), source };
        if let Some(reader) = decision_log(path) {
            return self.read_decision_log(reader, path);
        }
        let mut raw = BufReader::new(File::open(path).map_err(io_err)?);
        let is_gzip = raw.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
        // NOTE: MultiGzDecoder, not GzDecoder: rotated logs are often `cat`ed gzip members.
        let mut reader: Box<dyn BufRead> = if is_gzip { Box::new(BufReader::new(MultiGzDecoder::new(raw))) } else { Box::new(raw) };

        let mut buf = Vec::new();
        let mut line_no = 0usize;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
                return Ok(());
            }
            line_no += 1;
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Err(fault) = self.add_line(&buf) else {
                continue;
            };
            if strict {
                let path = path.to_path_buf();
                return Err(match fault {
                    LineFault::Malformed(reason) => LearningError::MalformedLine { path, line: line_no, reason },
                    LineFault::Inconsistent(prompt_id) => LearningError::InconsistentPrompt { path, line: line_no, prompt_id },
                });
            }
            self.skipped_lines += 1;
            if self.problems.len() < MAX_PROBLEMS {
                let reason = match fault {
                    LineFault::Malformed(reason) => reason,
                    LineFault::Inconsistent(id) => {
                        format!("prompt_id {id:?} was seen before with a different prompt text")
                    }
                };
                self.problems.push(format!("{}:{line_no}: {reason}", path.display()));
            }
        }
    }

    /// Reads a decision log's labelled feedback (see `logs::store::training_lines`): verified
    /// reports only (`logs export --unverified-feedback` writes the others to a file to train on).
    fn read_decision_log(&mut self, reader: &dyn DecisionLogs, path: &Path) -> Result<(), LearningError> {
        let name = reader.name(path);
        let (lines, skips) = reader
            .training_lines(path)
            .map_err(|e| LearningError::Io { path: name.clone().into(), source: std::io::Error::other(e.to_string()) })?;
        tracing::info!(source = %name, lines = lines.len(), left_out = %skips, "read the decision log's labelled feedback");
        for line in lines {
            if let Err(LineFault::Malformed(reason) | LineFault::Inconsistent(reason)) = self.add_record(line) {
                self.skipped_lines += 1;
                if self.problems.len() < MAX_PROBLEMS {
                    self.problems.push(format!("{name}: {reason}"));
                }
            }
        }
        Ok(())
    }

    fn add_line(&mut self, bytes: &[u8]) -> Result<(), LineFault> {
        let line: LogRecord = serde_json::from_slice(bytes).map_err(|e| LineFault::Malformed(format!("invalid record: {e}")))?;
        self.add_record(line)
    }

    fn add_record(&mut self, line: LogRecord) -> Result<(), LineFault> {
        let embedding = match (line.embedding, line.encoder) {
            (Some(v), Some(enc)) => Some((enc, v)),
            (Some(_), None) => return Err(LineFault::Malformed("`embedding` needs `encoder`".into())),
            (None, _) => None,
        };
        if line.prompt.is_empty() && embedding.is_none() {
            return Err(LineFault::Malformed("empty `prompt` and no `embedding`".into()));
        }
        if line.prompt_id.is_empty() {
            return Err(LineFault::Malformed("empty `prompt_id`".into()));
        }
        if line.model.is_empty() {
            return Err(LineFault::Malformed("empty `model`".into()));
        }
        if !(0.0..=1.0).contains(&line.score) {
            return Err(LineFault::Malformed(format!("`score` must be in [0, 1]. Given: {}", line.score)));
        }
        if let Some(p) = line.propensity {
            if !(p > 0.0 && p <= 1.0) {
                return Err(LineFault::Malformed(format!("`propensity` must be in (0, 1]. Given: {p}")));
            }
        }
        let tokens = u32::try_from(line.output_tokens)
            .map_err(|_| LineFault::Malformed(format!("`output_tokens` must be in [0, {}]. Given: {}", u32::MAX, line.output_tokens)))?;

        let prompt = match self.prompt_ids.get(&line.prompt_id) {
            Some(&i) => {
                let entry = &mut self.prompts[i];
                if entry.text != line.prompt {
                    return Err(LineFault::Inconsistent(line.prompt_id));
                }
                if entry.task.is_none() {
                    entry.task = line.task;
                }
                i
            }
            None => {
                let i = self.prompts.len();
                self.prompt_ids.insert(line.prompt_id.clone(), i);
                self.prompts.push(PromptEntry { id: line.prompt_id, text: line.prompt, task: line.task, embedding });
                i
            }
        };
        let model = match self.model_ids.get(&line.model) {
            Some(&i) => i,
            None => {
                let i = self.model_names.len();
                self.model_ids.insert(line.model.clone(), i);
                self.model_names.push(line.model);
                i
            }
        };
        let cell = self.cells.entry((prompt, model)).or_insert(Cell {
            score_sum: 0.0,
            tokens_sum: 0,
            count: 0,
            inverse_propensity_sum: 0.0,
            with_propensity: 0,
        });
        if cell.count > 0 {
            self.merged_duplicates += 1;
        }
        cell.score_sum += line.score;
        cell.tokens_sum += u64::from(tokens);
        cell.count += 1;
        if let Some(p) = line.propensity {
            cell.inverse_propensity_sum += 1.0 / p;
            cell.with_propensity += 1;
        }
        Ok(())
    }

    fn finish(self) -> RoutingLogs {
        // Models were numbered in first-seen order; renumber them in sorted order.
        let mut order: Vec<usize> = (0..self.model_names.len()).collect();
        order.sort_by(|&a, &b| self.model_names[a].cmp(&self.model_names[b]));
        let mut new_index = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let models = order.iter().map(|&old| self.model_names[old].clone()).collect();

        let mut observations: Vec<Observation> = self
            .cells
            .into_iter()
            .map(|((prompt, model), c)| {
                let n = f64::from(c.count);
                Observation {
                    prompt,
                    model: new_index[model],
                    score: (c.score_sum / n) as f32,
                    output_tokens: (c.tokens_sum as f64 / n).round() as u32,
                    propensity: (c.with_propensity == c.count).then(|| (n / c.inverse_propensity_sum) as f32),
                }
            })
            .collect();
        observations.sort_unstable_by_key(|o| (o.prompt, o.model));

        RoutingLogs {
            prompts: self.prompts,
            models,
            observations,
            skipped_lines: self.skipped_lines,
            merged_duplicates: self.merged_duplicates,
            problems: self.problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pointsman-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir.join(name)
    }

    const GOOD: &str = concat!(
        r#"{"prompt_id":"p1","prompt":"hi","model":"b","score":0.5,"output_tokens":10,"task":"t"}"#,
        "\n",
        r#"{"prompt_id":"p2","prompt":"yo","model":"a","score":1,"output_tokens":0}"#,
        "\n\n",
        r#"{"prompt_id":"p1","prompt":"hi","model":"b","score":1.0,"output_tokens":21}"#,
        "\n",
        r#"{"prompt_id":"p1","prompt":"hi","model":"a","score":0.0,"output_tokens":3,"extra":1}"#,
        "\n",
    );

    const BAD: &str = concat!(
        r#"{"prompt_id":"p3","prompt":"x","model":"a","score":1.5,"output_tokens":1}"#,
        "\n",
        r#"{"prompt_id":"p3","prompt":"x","model":"a","score":0.5,"output_tokens":-1}"#,
        "\n",
        r#"{"prompt_id":"p3","prompt":"x","model":"a","output_tokens":1}"#,
        "\n",
        "not json\n",
        r#"{"prompt_id":"p1","prompt":"other text","model":"c","score":0.5,"output_tokens":1}"#,
        "\n",
        r#"{"prompt_id":"p3","prompt":"x","model":"c","score":0.25,"output_tokens":4}"#,
    );

    #[test]
    fn reads_plain_and_gzip_merges_duplicates_and_orders_deterministically() {
        let plain = temp_path("good.log");
        std::fs::write(&plain, GOOD).expect("write");
        // A gzip file with a misleading name: detection is by magic bytes.
        let gz = temp_path("more.jsonl");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(BAD.as_bytes()).expect("gzip");
        std::fs::write(&gz, enc.finish().expect("gzip")).expect("write");

        let logs = read_logs(&[plain.clone(), gz.clone()], false).expect("lenient read");
        assert_eq!(logs.prompts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p1", "p2", "p3"]);
        assert_eq!(logs.prompts[0].task.as_deref(), Some("t"));
        assert_eq!(logs.models, ["a", "b", "c"]);
        assert_eq!(logs.merged_duplicates, 1);
        assert_eq!(logs.skipped_lines, 5);
        assert_eq!(logs.problems.len(), 5);
        assert!(logs.problems[0].contains("more.jsonl:1:"), "{}", logs.problems[0]);
        assert!(logs.problems[2].contains("score"), "{}", logs.problems[2]);
        let obs: Vec<_> = logs.observations.iter().map(|o| (o.prompt, o.model, o.score, o.output_tokens)).collect();
        assert_eq!(obs, [(0, 0, 0.0, 3), (0, 1, 0.75, 16), (1, 0, 1.0, 0), (2, 2, 0.25, 4)]);
        assert_eq!(logs.model_counts(), [2, 1, 1]);
        assert_eq!(logs.model_mean_scores(), [Some(0.5), Some(0.75), Some(0.25)]);
        assert_eq!(logs.prompt_index()["p2"], 1);

        match read_logs(&[plain.clone(), gz], true) {
            Err(e @ LearningError::MalformedLine { line: 1, .. }) => {
                assert!(e.to_string().contains("more.jsonl:1"), "{e}");
                assert_eq!(e.label(), "learning_malformed_line");
            }
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
        assert!(matches!(read_logs(&[temp_path("missing")], false), Err(LearningError::Io { .. })));
        let _ = std::fs::remove_dir_all(plain.parent().expect("temp dir"));
    }
}
