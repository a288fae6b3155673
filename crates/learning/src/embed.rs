//! Embedding a run's prompts with the serving encoder (batch of one, exactly as at serving
//! time), through the on-disk cache; and writing the head's files atomically.
use std::{io::Write, path::Path, time::Instant};

use ndarray::Array2;

use crate::JobError;
use pointsman_core::encoder::{Encoder, EncoderError};

/// Current UTC time as RFC 3339 (no external date crate needed for one timestamp).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's published algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), JobError> {
    let err = |source| JobError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Embeds prompts with progress on stderr every ~10%.
pub fn embed_prompts(encoder: &Encoder, texts: &[&str], quiet: bool) -> Result<Array2<f32>, EncoderError> {
    let n = texts.len();
    let step = (n / 10).max(1);
    let start = Instant::now();
    let rows = encoder.embed_many(texts, &|done| {
        if !quiet && (done % step == 0 || done == n) {
            eprintln!("embedding prompts: {done}/{n} ({:.1}s)", start.elapsed().as_secs_f64());
        }
    })?;
    let d = encoder.dimension();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Ok(Array2::from_shape_vec((n, d), flat).expect("every embedding has the encoder's dimension. This is a bug."))
}

/// Embeds with an on-disk cache: cached texts are read back, the rest embedded and appended.
/// A cache that cannot be opened or written is reported and skipped, never fatal.
pub fn embed_prompts_cached(
    encoder: &Encoder,
    texts: &[&str],
    cache_dir: Option<&Path>,
    quiet: bool,
) -> Result<(Array2<f32>, usize), EncoderError> {
    let cache = cache_dir.and_then(|dir| match crate::embed_cache::EmbeddingCache::open(dir, encoder.id(), encoder.dimension()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "embedding cache unavailable; embedding everything");
            None
        }
    });
    let Some(mut cache) = cache else {
        return Ok((embed_prompts(encoder, texts, quiet)?, 0));
    };
    let misses: Vec<&str> = texts.iter().copied().filter(|t| cache.get(t).is_none()).collect();
    let hits = texts.len() - misses.len();
    if !quiet {
        eprintln!("embedding cache: {hits} of {} prompts cached, {} to embed", texts.len(), misses.len());
    }
    if !misses.is_empty() {
        let fresh = embed_prompts(encoder, &misses, quiet)?;
        if let Err(e) = cache.insert_many(
            misses.iter().copied().zip(fresh.rows().into_iter().map(|r| r.to_slice().expect("standard layout. This is a bug."))),
        ) {
            tracing::warn!(error = %e, "could not write the embedding cache");
        }
    }
    let d = encoder.dimension();
    let mut x = Array2::zeros((texts.len(), d));
    for (i, t) in texts.iter().enumerate() {
        let v = cache.get(t).expect("every text is cached now. This is a bug.");
        x.row_mut(i).assign(&ndarray::ArrayView1::from(v));
    }
    Ok((x, hits))
}

/// Embeds the prompts of a log: stored embeddings (decision logs kept without prompt text) are
/// used as they are when they come from this encoder; the rest go through the cached encoder.
pub fn embed_logged_prompts(
    encoder: &Encoder,
    prompts: &[crate::PromptEntry],
    cache_dir: Option<&Path>,
    quiet: bool,
) -> Result<Array2<f32>, JobError> {
    let d = encoder.dimension();
    for p in prompts {
        if let Some((enc, v)) = &p.embedding {
            if enc != encoder.id() || v.len() != d {
                return Err(JobError::Invalid {
                    field: "data",
                    limit: "stored embeddings from the training encoder",
                    value: format!(
                        "prompt {} has a {}-dimensional embedding from `{enc}`, the encoder is `{}` ({d})",
                        p.id,
                        v.len(),
                        encoder.id()
                    ),
                });
            }
        }
    }
    let texts: Vec<&str> = prompts.iter().filter(|p| p.embedding.is_none()).map(|p| p.text.as_str()).collect();
    let (embedded, _cached) = embed_prompts_cached(encoder, &texts, cache_dir, quiet)?;
    let mut x = Array2::<f32>::zeros((prompts.len(), d));
    let mut next = 0;
    for (i, p) in prompts.iter().enumerate() {
        match &p.embedding {
            Some((_, v)) => x.row_mut(i).assign(&ndarray::ArrayView1::from(v.as_slice())),
            None => {
                x.row_mut(i).assign(&embedded.row(next));
                next += 1;
            }
        }
    }
    Ok(x)
}
