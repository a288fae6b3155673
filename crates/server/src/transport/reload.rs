//! What triggers a reload besides `Admin.Reload`: SIGHUP, and changed files when
//! `reload.watch_interval_seconds` is set.
//!
//! The watcher fingerprints the config file and the files directly in the encoder and head
//! folders (name, size, modification time). A new fingerprint is reloaded once it has stayed the
//! same for one interval, so a trainer still writing its files is not caught halfway; a rejected
//! fingerprint is not retried until the files change again.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{config::Config, service::Service};

/// Name, size and modification time of each watched file, sorted.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn add_file(out: &mut Fingerprint, p: &Path) {
    if let Ok(m) = std::fs::metadata(p) {
        if m.is_file() {
            out.push((p.to_path_buf(), m.len(), m.modified().ok()));
        }
    }
}

/// The fingerprint of the files a reload would read for `config`.
pub fn fingerprint(config: &Config) -> Fingerprint {
    let mut out = Fingerprint::new();
    if let Some(src) = &config.source {
        add_file(&mut out, src);
    }
    for dir in [&config.encoder.dir, &config.head.dir, &config.encoder.static_dir, &config.head.static_dir] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                add_file(&mut out, &e.path());
            }
        }
    }
    out.sort();
    out
}

/// Runs the SIGHUP listener and the file watcher until the task is aborted.
pub async fn run_triggers(service: Arc<Service>) {
    let watch = {
        let service = Arc::clone(&service);
        async move {
            let interval = service.config().reload.watch_interval_seconds;
            if interval <= 0.0 {
                return std::future::pending::<()>().await;
            }
            let interval = Duration::from_secs_f64(interval);
            let mut loaded = fingerprint(&service.config());
            let mut seen = loaded.clone();
            loop {
                tokio::time::sleep(interval).await;
                let now = fingerprint(&service.config());
                if now != loaded && now == seen {
                    tracing::info!("model or config files changed; reloading");
                    // Success or failure, the files are settled: after a success the config may
                    // name other folders, whose files are now the loaded ones; after a failure
                    // the config is unchanged and the rejected files wait for the next change
                    // (`reload` logs the error).
                    let _ = service.reload().await;
                    loaded = fingerprint(&service.config());
                    seen = loaded.clone();
                    continue;
                }
                seen = now;
            }
        }
    };
    let hup = {
        let service = Arc::clone(&service);
        async move {
            #[cfg(unix)]
            {
                let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                    return std::future::pending::<()>().await;
                };
                while s.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading");
                    let _ = service.reload().await;
                }
            }
            std::future::pending::<()>().await
        }
    };
    tokio::join!(watch, hup);
}
