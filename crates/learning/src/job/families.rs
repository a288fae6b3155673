//! The job's log files and the model families they form: which files are trained together.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use ndarray::Array2;

use super::JobError;
use crate::{read_logs, Dataset, RoutingLogs};

/// Log files whose models overlap, and those models: one head is trained per family.
#[derive(Debug, Clone)]
pub struct Family {
    /// The files.
    pub files: Vec<PathBuf>,
    /// Indices into `logs.models`.
    pub models: Vec<usize>,
}

/// One of the job's log files, read once: which prompts and models it holds.
pub struct LogFile {
    /// The file.
    pub path: PathBuf,
    /// Its prompts' ids.
    pub prompt_ids: std::collections::HashSet<String>,
    /// Its models, as indices into the merged logs' `models`.
    pub models: std::collections::BTreeSet<usize>,
    /// Training prompts each of those models answered in this file.
    pub counts: std::collections::HashMap<usize, usize>,
}

/// Reads each of the job's files once for what the families, the shrinkage and the local prior
/// need to know of it: its prompts, and the models observed on its *training* prompts
/// (`training` holds their ids), so a model seen only on held-out prompts shapes no family.
pub fn log_files(paths: &[PathBuf], logs: &RoutingLogs, training: &HashSet<&str>) -> Result<Vec<LogFile>, JobError> {
    let index: HashMap<&str, usize> = logs.models.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    paths
        .iter()
        .map(|path| {
            let file = read_logs(std::slice::from_ref(path), false)?;
            let mut counts = HashMap::new();
            for o in file.observations.iter().filter(|o| training.contains(file.prompts[o.prompt].id.as_str())) {
                if let Some(&j) = index.get(file.models[o.model].as_str()) {
                    *counts.entry(j).or_insert(0) += 1;
                }
            }
            Ok(LogFile {
                path: path.clone(),
                models: counts.keys().copied().collect(),
                counts,
                prompt_ids: file.prompts.into_iter().map(|p| p.id).collect(),
            })
        })
        .collect()
}

/// Groups the job's files into families: files that share at least half of the smaller file's
/// models belong together (daily logs of one gateway form one family); files with few or no
/// models in common (two benchmarks, two products) are trained apart, since their scores need not
/// share a scale and a shared head lets the larger one crowd out the smaller (measured on the
/// shared data: -17% of the gap on alpaca_eval2 jointly, +3% alone). A model id that two such
/// families share (mmlu_pro and alpaca_eval2 share two, on different scales) gets its head column
/// from the family that observed it on more training prompts; the other family's observations
/// of it still inform its nearest-neighbour estimate, which is local to the prompt and so to the
/// file's scale.
pub fn model_families(files: &[LogFile]) -> Vec<Family> {
    let mut sets: Vec<(Vec<usize>, std::collections::BTreeSet<usize>)> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let (mut members, mut merged) = (vec![i], file.models.clone());
        sets.retain(|(f, m)| {
            let shared = m.intersection(&merged).count();
            if shared == 0 || 2 * shared < m.len().min(merged.len()) {
                true
            } else {
                members.extend(f.iter().copied());
                merged.extend(m.iter().copied());
                false
            }
        });
        sets.push((members, merged));
    }
    // A model in several families: the one with the most training prompts of it keeps it.
    let seen = |set: &[usize], j: usize| -> usize { set.iter().map(|&i| files[i].counts.get(&j).copied().unwrap_or(0)).sum() };
    let mut out: Vec<Family> = Vec::new();
    for (a, (members, models)) in sets.iter().enumerate() {
        let kept = models
            .iter()
            .copied()
            .filter(|&j| {
                sets.iter().enumerate().all(|(b, (other, om))| {
                    b == a || !om.contains(&j) || (seen(members, j), std::cmp::Reverse(a)) > (seen(other, j), std::cmp::Reverse(b))
                })
            })
            .collect();
        let mut members = members.clone();
        members.sort_unstable();
        out.push(Family { files: members.iter().map(|&i| files[i].path.clone()).collect(), models: kept });
    }
    out.retain(|f| !f.models.is_empty());
    out
}

/// The rows `rows` and columns `cols` of a dataset.
pub(super) fn columns(d: &Dataset, rows: &[usize], cols: &[usize]) -> Dataset {
    let pick = |a: &Array2<f32>| a.select(ndarray::Axis(0), rows).select(ndarray::Axis(1), cols);
    Dataset { x: d.x.select(ndarray::Axis(0), rows), quality: pick(&d.quality), log_tokens: pick(&d.log_tokens), mask: pick(&d.mask) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_seen_only_on_held_out_prompts_shapes_no_family() {
        let dir = tempfile::tempdir().unwrap();
        let line = |p: &str, m: &str| format!(r#"{{"prompt_id":"{p}","prompt":"text {p}","model":"{m}","score":1,"output_tokens":5}}"#);
        // File a: models a1, a2 on p1; on the held-out p2, also `shared`, which file b has too.
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        std::fs::write(&a, [line("p1", "a1"), line("p1", "a2"), line("p2", "a1"), line("p2", "shared")].join("\n")).unwrap();
        std::fs::write(&b, [line("q1", "b1"), line("q1", "shared")].join("\n")).unwrap();
        let paths = vec![a, b];
        let logs = read_logs(&paths, true).unwrap();
        let id = |m: &str| logs.models.iter().position(|x| x == m).unwrap();
        let families = |training: &[&str]| {
            let files = log_files(&paths, &logs, &training.iter().copied().collect()).unwrap();
            let mut f: Vec<Vec<usize>> = model_families(&files).into_iter().map(|f| f.models).collect();
            f.sort();
            f
        };
        // With p2 held out, `shared` belongs to file b only: two families.
        let mut expected = vec![vec![id("a1"), id("a2")], vec![id("b1"), id("shared")]];
        expected.iter_mut().for_each(|f| f.sort());
        expected.sort();
        assert_eq!(families(&["p1", "q1"]), expected);
        // Trained on, p2 joins the two files into one family.
        assert_eq!(families(&["p1", "p2", "q1"]).len(), 1);
    }

    #[test]
    fn benchmarks_sharing_a_few_model_ids_train_apart_and_the_larger_keeps_the_column() {
        let file = |name: &str, models: &[(usize, usize)]| LogFile {
            path: PathBuf::from(name),
            prompt_ids: HashSet::new(),
            models: models.iter().map(|&(j, _)| j).collect(),
            counts: models.iter().copied().collect(),
        };
        // Two benchmarks sharing model 9 (1 of 4 and 1 of 3 models): apart; 9 goes to the one
        // that observed it more. A day of the second gateway shares all its models: together.
        let a = file("a", &[(0, 100), (1, 100), (2, 100), (9, 900)]);
        let b = file("b", &[(5, 50), (6, 50), (9, 50)]);
        let b2 = file("b2", &[(5, 10), (6, 10)]);
        let mut f = model_families(&[a, b, b2]);
        f.sort_by_key(|f| f.files.len());
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].files, vec![PathBuf::from("a")]);
        assert_eq!(f[0].models, vec![0, 1, 2, 9]);
        assert_eq!(f[1].files, vec![PathBuf::from("b"), PathBuf::from("b2")]);
        assert_eq!(f[1].models, vec![5, 6]);
    }
}
