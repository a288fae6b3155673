//! On-disk cache of prompt embeddings for training and evaluation, so a second run over the same
//! logs skips the encoder.
//!
//! One append-only file per encoder (`<dir>/<encoder id>.emb`), records of
//! `[32-byte SHA-256 of "encoder id \0 text"][dimension x f32 little-endian]`. Appending never
//! rewrites what is there, so a run killed mid-write leaves at most one partial record at the
//! end, which the next load ignores (and the next append overwrites).
use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// A loaded cache for one encoder.
pub struct EmbeddingCache {
    path: PathBuf,
    encoder: String,
    dimension: usize,
    entries: HashMap<[u8; 32], Vec<f32>>,
    valid_bytes: u64,
}

impl EmbeddingCache {
    /// The default folder: `$XDG_CACHE_HOME/pointsman/embeddings`, else `~/.cache/...`, else `.cache/...`.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("pointsman").join("embeddings")
    }

    /// Opens (or starts) the cache of `encoder` in `dir`.
    pub fn open(dir: &Path, encoder: &str, dimension: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let name: String = encoder.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        let path = dir.join(format!("{name}.emb"));
        let mut entries = HashMap::new();
        let record = 32 + 4 * dimension;
        let mut valid_bytes = 0u64;
        if let Ok(mut f) = std::fs::File::open(&path) {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            for chunk in bytes.chunks_exact(record) {
                let key: [u8; 32] = chunk[..32].try_into().expect("32-byte key. This is a bug.");
                let v = chunk[32..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes. This is a bug."))).collect();
                entries.insert(key, v);
                valid_bytes += record as u64;
            }
        }
        Ok(Self { path, encoder: encoder.to_string(), dimension, entries, valid_bytes })
    }

    fn key(&self, text: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.encoder.as_bytes());
        h.update([0u8]);
        h.update(text.as_bytes());
        h.finalize().into()
    }

    /// The cached embedding of `text`, if any.
    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.entries.get(&self.key(text)).map(Vec::as_slice)
    }

    /// Entries loaded or added.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends new embeddings (texts already cached are skipped) and flushes them to disk.
    pub fn insert_many<'a>(&mut self, items: impl IntoIterator<Item = (&'a str, &'a [f32])>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for (text, v) in items {
            assert_eq!(v.len(), self.dimension, "embedding dimension differs from the cache's. This is a bug.");
            let key = self.key(text);
            if self.entries.contains_key(&key) {
                continue;
            }
            buf.extend_from_slice(&key);
            buf.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            self.entries.insert(key, v.to_vec());
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut f = OpenOptions::new().create(true).write(true).truncate(false).open(&self.path)?;
        // Drop a partial record left by an interrupted run, then append.
        f.set_len(self.valid_bytes)?;
        f.seek(SeekFrom::End(0))?;
        f.write_all(&buf)?;
        f.sync_data()?;
        self.valid_bytes += buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EmbeddingCache::open(dir.path(), "enc/int8", 3).unwrap();
        c.insert_many([("a", &[1.0f32, 2.0, 3.0][..]), ("b", &[4.0, 5.0, 6.0][..])]).unwrap();
        let path = dir.path().join("enc_int8.emb");
        // A torn write: half a record at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7u8; 20]).unwrap();
        drop(f);
        let mut c = EmbeddingCache::open(dir.path(), "enc/int8", 3).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b"), Some(&[4.0f32, 5.0, 6.0][..]));
        assert_eq!(c.get("c"), None);
        c.insert_many([("c", &[7.0f32, 8.0, 9.0][..])]).unwrap();
        let c = EmbeddingCache::open(dir.path(), "enc/int8", 3).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("c"), Some(&[7.0f32, 8.0, 9.0][..]));
        // Another encoder does not see these.
        assert!(EmbeddingCache::open(dir.path(), "enc/fp32", 3).unwrap().is_empty());
    }
}
