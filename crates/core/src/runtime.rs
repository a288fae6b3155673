//! Loading the ONNX Runtime shared library.
//!
//! Pointsman builds `ort` with `load-dynamic`, so nothing is downloaded at build time and any
//! compatible ONNX Runtime (1.24 to 1.31) can be used. The library is found, in order, at the
//! path given explicitly (`--onnxruntime` / config), at `ORT_DYLIB_PATH`, then at the copy that
//! `scripts/bootstrap.sh` installs under `.runtime/` (searched from the working directory and
//! from the executable's ancestors, so `target/release/pointsman` finds the repo's copy).
//! The library is loaded once per process; later calls reuse the same environment.
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ort::{
    environment::Environment,
    session::{builder::GraphOptimizationLevel, Session},
};

/// Version of ONNX Runtime that `scripts/bootstrap.sh` installs.
pub const BUNDLED_ORT_VERSION: &str = "1.31.1";

/// Errors while locating or loading ONNX Runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No library at any of the searched places.
    #[error("ONNX Runtime library not found; searched: {searched}. Run `scripts/bootstrap.sh` or set ORT_DYLIB_PATH")]
    NotFound {
        /// The places that were searched, comma separated.
        searched: String,
    },
    /// The library exists but could not be loaded or initialised.
    #[error("failed to load ONNX Runtime from {path}: {message}")]
    Load {
        /// The library that failed.
        path: PathBuf,
        /// What ONNX Runtime or the loader said.
        message: String,
    },
    /// A different library was already loaded by this process.
    #[error("ONNX Runtime is already loaded from {loaded}; cannot switch to {requested} in the same process")]
    AlreadyLoaded {
        /// The library in use.
        loaded: PathBuf,
        /// The library that was asked for.
        requested: PathBuf,
    },
}

impl RuntimeError {
    /// Stable snake_case label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RuntimeError::NotFound { .. } => "runtime_not_found",
            RuntimeError::Load { .. } => "runtime_load",
            RuntimeError::AlreadyLoaded { .. } => "runtime_already_loaded",
        }
    }
}

static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn library_file_name() -> String {
    if cfg!(target_os = "macos") {
        format!("libonnxruntime.{BUNDLED_ORT_VERSION}.dylib")
    } else if cfg!(target_os = "windows") {
        "onnxruntime.dll".to_string()
    } else {
        format!("libonnxruntime.so.{BUNDLED_ORT_VERSION}")
    }
}

/// The places searched for the library when no explicit path is given, in order.
pub fn candidate_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    let rel = Path::new(".runtime").join(format!("onnxruntime-{BUNDLED_ORT_VERSION}")).join(library_file_name());
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(&rel));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            out.push(dir.join(&rel));
        }
    }
    out.push(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(&rel));
    out.dedup();
    out
}

/// Finds the ONNX Runtime library: `explicit` if given, else the first existing candidate.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(RuntimeError::NotFound { searched: p.display().to_string() }) };
    }
    let candidates = candidate_paths();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| RuntimeError::NotFound {
        searched: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// Loads ONNX Runtime once and returns the process-wide environment.
pub fn environment(explicit: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    if let Some((loaded, env)) = ENVIRONMENT.get() {
        if let Some(requested) = explicit {
            if requested != loaded {
                return Err(RuntimeError::AlreadyLoaded { loaded: loaded.clone(), requested: requested.to_path_buf() });
            }
        }
        return Ok(env);
    }
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, env)) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = locate(explicit)?;
    let load_err = |message: String| RuntimeError::Load { path: path.clone(), message };
    let env =
        ort::init_from(&path).map_err(|e| load_err(e.to_string()))?.with_name("pointsman").build().map_err(|e| load_err(e.to_string()))?;
    tracing::info!(path = %path.display(), "loaded ONNX Runtime");
    let _ = ENVIRONMENT.set((path, env));
    Ok(&ENVIRONMENT.get().expect("environment was just set. This is a bug.").1)
}

/// Allocations at least this large are served by `mmap` and given back to the system when freed.
pub const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Makes glibc's `malloc` give large freed blocks back to the system, so that a reload, which
/// builds the new encoder sessions and head beside the old ones and then drops the old, does
/// not leave the process holding both.
///
/// glibc starts with a 128 KiB mmap threshold but raises it (up to 32 MiB) each time a mapped
/// block is freed; after the first reload frees an engine, the next engine's buffers come from
/// the heap and stay there. Measured with SIGHUP reloads of the shipped config on a 2-vCPU
/// machine (`cargo bench --bench reload`; figures in docs/measurements.md, "Memory across reloads"): RSS after
/// each reload kept growing with glibc's defaults and stays flat with the thresholds fixed;
/// Route latency is the same either way. Fixing the threshold with `mallopt` turns that adjustment off; the trim
/// threshold is fixed with it, so freed heap tops are returned too.
///
/// Does nothing when the operator set `MALLOC_MMAP_THRESHOLD_` (glibc has applied theirs) or
/// `POINTSMAN_MALLOC_DEFAULTS=1` (glibc's own behaviour, for comparison: `cargo bench --bench
/// reload`), or on a C library other than glibc. Returns whether it changed the settings.
pub fn release_freed_memory() -> bool {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() || std::env::var("POINTSMAN_MALLOC_DEFAULTS").is_ok_and(|v| v == "1") {
        return false;
    }
    set_malloc_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_malloc_thresholds() -> bool {
    // SAFETY: `mallopt` only sets allocator parameters; glibc takes its own lock, and both
    // values are in range (positive, below the 32 MiB maximum).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_malloc_thresholds() -> bool {
    false
}

/// Builds an ONNX session from a file with the given threads (the encoder's and the head's).
pub fn build_session(env: &Environment, path: &Path, intra_threads: usize) -> Result<Session, ort::Error> {
    let bytes = std::fs::read(path).map_err(|e| ort::Error::new(format!("{}: {e}", path.display())))?;
    session_from_bytes(env, &bytes, intra_threads)
}

/// Builds an ONNX session from graph bytes.
pub fn session_from_bytes(env: &Environment, bytes: &[u8], intra_threads: usize) -> Result<Session, ort::Error> {
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(intra_threads)?
        .with_inter_threads(1)?;
    if intra_threads > 1 {
        // NOTE: spinning threads burn the cores tokio and the other sessions need.
        b = b.with_intra_op_spinning(false)?;
    }
    b.commit_from_memory(bytes)
}

/// Sessions of one graph, each run by one caller at a time: a caller takes the first free one, or
/// waits on one when all are busy. The encoder keeps `encoder.sessions` of them; the static tier's
/// head one per worker thread, since its head is most of that tier's work.
pub struct SessionPool {
    sessions: Vec<std::sync::Mutex<ort::session::Session>>,
    next: std::sync::atomic::AtomicUsize,
}

impl SessionPool {
    /// `n` (at least 1) sessions of `bytes`, each with `intra_threads` threads.
    pub fn new(env: &Environment, bytes: &[u8], n: usize, intra_threads: usize) -> Result<Self, ort::Error> {
        let sessions = (0..n.max(1))
            .map(|_| session_from_bytes(env, bytes, intra_threads).map(std::sync::Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { sessions, next: std::sync::atomic::AtomicUsize::new(0) })
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Always false: a pool holds at least one session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The first session.
    pub fn first(&self) -> std::sync::MutexGuard<'_, ort::session::Session> {
        self.sessions[0].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session for one run. A session poisoned by a panic on its thread (caught by the engine's
    /// worker pool) is as good as before: a run keeps no state.
    pub fn take(&self) -> std::sync::MutexGuard<'_, ort::session::Session> {
        use std::sync::{atomic::Ordering, TryLockError};
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let k = self.sessions.len();
        (0..k)
            .find_map(|j| match self.sessions[(start + j) % k].try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            })
            .unwrap_or_else(|| self.sessions[start % k].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds() {
        // `mallopt` returns 0 for a value out of range: 128 KiB is in range for both.
        assert!(super::set_malloc_thresholds());
        let big = vec![1u8; 8 << 20];
        assert_eq!(big.iter().map(|&b| usize::from(b)).sum::<usize>(), 8 << 20);
    }
}
