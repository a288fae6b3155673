//! Resident memory of the real server across reloads, with glibc's allocator defaults and with
//! the thresholds `runtime::release_freed_memory` fixes, side by side in one run.
//!
//! `cargo bench --bench reload`. Starts the release binary twice on the shipped config (the
//! decision log in a temp folder, listeners on 127.0.0.1:0), first with `POINTSMAN_MALLOC_DEFAULTS=1`
//! then without, and sends each BENCH_RELOADS (default 20) SIGHUPs one after another, each once
//! the previous reload has logged `reloaded models` and a second has passed (the old engine is
//! dropped by then: nothing else holds it on an idle server). Prints RSS (VmRSS) at start and
//! after every fifth reload, and the peak (VmHWM), in MB.
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Waits until the server's log (a file) holds `count` lines containing `needle`.
fn wait_for(log: &std::path::Path, needle: &str, count: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut text = String::new();
        std::fs::File::open(log).unwrap().read_to_string(&mut text).unwrap();
        if text.lines().filter(|l| l.contains(needle)).count() >= count {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the server exited:\n{text}");
        assert!(Instant::now() < deadline, "no `{needle}` x{count} in the server's log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RSS at start and after each reload, and the peak, in MB.
fn run(defaults: bool, reloads: usize) -> (Vec<f64>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        &dir.path().join("pointsman.toml"),
        &common::repo().join("models/router"),
        &dir.path().join("decisions.db"),
        &[],
    );
    let log = dir.path().join("server.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pointsman"));
    cmd.args(["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if defaults {
        cmd.env("POINTSMAN_MALLOC_DEFAULTS", "1");
    } else {
        cmd.env_remove("POINTSMAN_MALLOC_DEFAULTS");
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    wait_for(&log, "models loaded; serving", 1, &mut child);
    std::thread::sleep(Duration::from_secs(1));
    let mut rss = vec![common::status_mb(pid, "VmRSS:")];
    for i in 1..=reloads {
        // SAFETY: a signal to our own child, which is alive (checked by `wait_for`).
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
        wait_for(&log, "reloaded models", i, &mut child);
        std::thread::sleep(Duration::from_secs(1));
        rss.push(common::status_mb(pid, "VmRSS:"));
    }
    let peak = common::status_mb(pid, "VmHWM:");
    child.kill().unwrap();
    child.wait().unwrap();
    (rss, peak)
}

fn main() {
    let reloads: usize = std::env::var("BENCH_RELOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let shown: Vec<usize> = (0..=reloads).filter(|i| i % 5 == 0 || *i == reloads).collect();
    println!("| allocator | {} | peak |", shown.iter().map(|i| format!("after {i}")).collect::<Vec<_>>().join(" | "));
    println!("|---|{}---|", "---|".repeat(shown.len()));
    for (name, defaults) in [("glibc defaults (POINTSMAN_MALLOC_DEFAULTS=1)", true), ("thresholds fixed (the default)", false)] {
        let (rss, peak) = run(defaults, reloads);
        let cells: Vec<String> = shown.iter().map(|&i| format!("{:.0}", rss[i])).collect();
        println!("| {name} | {} | {peak:.0} |", cells.join(" | "));
    }
    println!("\nRSS in MB (VmRSS) at start (`after 0`) and after that many SIGHUP reloads; peak: VmHWM.");
}
