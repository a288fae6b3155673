//! Throwaway PostgreSQL and Redis servers on loopback, from Debian's packages
//! (`scripts/bootstrap.sh --fleet`), for the fleet test and the fleet benchmark.
#![allow(dead_code)]
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Runs synchronous PostgreSQL client code off the test's runtime threads (its client runs a
/// runtime of its own).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

pub fn connects(url: &str) -> bool {
    off_runtime(|| pointsman::logs::postgres::Db::connect(url, Duration::from_secs(2)).is_ok())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A program of Debian's PostgreSQL package: the newest version's bin folder, else PATH.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin").join(name)).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// PostgreSQL refuses to run as root: as root, run it as the `postgres` user the package made.
fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).expect("as root, the fleet test needs the postgres user");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

fn as_pg_user(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = pg_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A throwaway PostgreSQL on loopback.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// Extra `-c` settings.
    settings: Vec<String>,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With TLS on (`ssl = on`, this certificate and key, PEM files); plaintext connections are
    /// accepted too.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if let Some((uid, gid)) = pg_user() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        }
        let out =
            as_pg_user(Command::new(pg_bin("initdb")).args(["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync"]))
                .output()
                .expect("initdb from Debian's postgresql package (scripts/bootstrap.sh --fleet)");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut settings = Vec::new();
        if let Some((cert_pem, key_pem)) = tls {
            // The server reads its key as its own user, and refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
            std::fs::copy(cert_pem, &cert).unwrap();
            std::fs::copy(key_pem, &key).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = pg_user() {
                std::os::unix::fs::chown(&cert, Some(uid), Some(gid)).unwrap();
                std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
            }
            settings = vec!["ssl=on".into(), format!("ssl_cert_file={}", cert.display()), format!("ssl_key_file={}", key.display())];
        }
        let mut pg = Postgres { dir, port: free_port(), child: None, settings };
        pg.run();
        pg
    }

    pub fn run(&mut self) {
        self.run_once();
        self.wait_until_it_answers("PostgreSQL did not start");
    }

    fn wait_until_it_answers(&self, failure: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !connects(&self.url()) {
            assert!(Instant::now() < deadline, "{failure}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL over TLS, verifying the server's certificate against `ca` (libpq's parameters).
    pub fn tls_url(&self, ca: &std::path::Path) -> String {
        format!("{}?sslmode=verify-full&sslrootcert={}", self.url(), ca.display())
    }

    /// SIGKILL to the postmaster: no shutdown, no checkpoint. Its backends notice and exit; the
    /// next start recovers from the WAL.
    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        // The orphaned backends hold the shared memory until they exit; retry the start until then.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.run_once();
            std::thread::sleep(Duration::from_millis(300));
            if self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none()) {
                break;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not restart");
        }
        self.wait_until_it_answers("PostgreSQL did not come back");
    }

    /// Stops (`STOP`) or resumes (`CONT`) every process of the server, the postmaster and its
    /// children (each backend is a session of its own, so not one process group): a stalled
    /// database that holds its connections open and never answers.
    pub fn signal_all(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let children = Command::new("pkill").args(["--signal", signal, "-P", &pid]).status().unwrap();
        let postmaster = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(children.success() && postmaster.success(), "signal {signal} to PostgreSQL {pid}");
    }

    fn run_once(&mut self) {
        let data = self.dir.path().join("data");
        self.child = Some(
            as_pg_user(
                Command::new(pg_bin("postgres"))
                    .args([
                        "-D",
                        data.to_str().unwrap(),
                        "-p",
                        &self.port.to_string(),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        &format!("unix_socket_directories={}", self.dir.path().display()),
                        "-c",
                        "fsync=off",
                    ])
                    .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()])),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
    }

    pub fn query_i64(&self, sql: &str) -> i64 {
        off_runtime(|| pointsman::logs::postgres::Db::connect(&self.url(), Duration::from_secs(5)).unwrap().query_i64(sql).unwrap())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A throwaway Redis on loopback, without persistence (a restart starts it empty).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// TLS port, certificate, key and CA files.
    tls: Option<(u16, PathBuf, PathBuf, PathBuf)>,
}

impl Redis {
    pub fn start() -> Self {
        let mut r = Redis { port: free_port(), child: None, tls: None };
        r.run();
        r
    }

    /// Also TLS (`rediss://`, [`Redis::tls_url`]) on a second port, with this certificate, key
    /// and CA (PEM files); clients need no certificate of their own.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Self {
        let mut r = Redis { port: free_port(), child: None, tls: Some((free_port(), cert.into(), key.into(), ca.into())) };
        r.run();
        r
    }

    pub fn run(&mut self) {
        let mut args: Vec<String> =
            ["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from).to_vec();
        if let Some((port, cert, key, ca)) = &self.tls {
            args.extend(["--tls-port".into(), port.to_string(), "--tls-auth-clients".into(), "no".into()]);
            for (k, f) in [("--tls-cert-file", cert), ("--tls-key-file", key), ("--tls-ca-cert-file", ca)] {
                args.extend([k.to_string(), f.display().to_string()]);
            }
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server from Debian's redis-server package (scripts/bootstrap.sh --fleet)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "Redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The TLS port's URL.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls.as_ref().expect("started with start_tls").0)
    }

    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill_9();
    }
}
