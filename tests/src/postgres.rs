//! A throwaway PostgreSQL cluster for tests: `initdb` in a fresh directory, the server on
//! a Unix socket in it (no TCP port), stopped and removed on drop. Debian's server package
//! (`scripts/test-deps.sh` installs it). As root, the cluster runs as `nobody`, since the
//! server refuses to run as root.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running cluster; `url` connects to its `postgres` database as its superuser.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    /// A connection string for `--state-url` and `postgres::Config`.
    pub url: String,
    /// With [`PgCluster::start_tcp`]: the loopback port it listens on too.
    pub port: Option<u16>,
}

/// A TCP port free on 127.0.0.1 now (the kernel's pick, released for the server).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The directory of the server's programs: Debian's, or the PATH's.
fn server_bin() -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .max();
    debian
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path).find(|dir| dir.join("initdb").exists())
            })
        })
        .expect("PostgreSQL's server is not installed: run scripts/test-deps.sh")
}

/// Runs `program` (as `nobody` when this process is root), panicking with its output if it
/// fails.
fn run(bin: &Path, program: &str, args: &[&str]) {
    let path = bin.join(program);
    let mut command = if nix_is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&path);
        command
    } else {
        Command::new(&path)
    };
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", path.display()));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether this process runs as root (its effective uid, from `/proc/self/status`).
fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

impl PgCluster {
    /// Makes and starts a cluster on a Unix socket only.
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// Makes and starts a cluster that listens on a loopback TCP port too, with TLS when
    /// `tls` names its certificate and key (PEM); else TLS is off and the server declines
    /// it.
    pub fn start_tcp(tls: Option<&crate::remote::Identity>) -> Self {
        Self::start_with(tls, true)
    }

    /// A `key=value` connection string over TCP to 127.0.0.1 (or `host`), with
    /// `extra` parameters (e.g. `sslmode=verify-full`).
    pub fn tcp_url(&self, host: &str, extra: &str) -> String {
        let port = self.port.expect("a cluster started with start_tcp");
        format!("host={host} port={port} user=postgres dbname=postgres {extra}")
    }

    fn start_with(tls: Option<&crate::remote::Identity>, tcp: bool) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bin = server_bin();
        let dir = std::env::temp_dir().join(format!(
            "code-mode-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|error| panic!("creating {}: {error}", dir.display()));
        let data = dir.join("data");
        let data_text = data.to_str().expect("a UTF-8 path");
        let dir_text = dir.to_str().expect("a UTF-8 path");
        let mut options = format!("-k {dir_text} -c max_connections=40");
        let port = tcp.then(free_port);
        match port {
            Some(port) => options.push_str(&format!(" -c listen_addresses=127.0.0.1 -p {port}")),
            None => options.push_str(" -c listen_addresses=''"),
        }
        if let Some(identity) = tls {
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert, &identity.cert_pem).expect("the server certificate");
            std::fs::write(&key, &identity.key_pem).expect("the server key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod the key");
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        if nix_is_root() {
            // The server runs as nobody: the directory and what is in it are its own.
            let nobody = 65534;
            for path in std::iter::once(dir.clone()).chain(
                std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path()),
            ) {
                std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).expect("chown");
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        run(
            &bin,
            "initdb",
            &[
                "-D",
                data_text,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let cluster = Self {
            url: format!(
                "host={dir_text}{} user=postgres dbname=postgres sslmode=disable",
                port.map(|port| format!(" port={port}")).unwrap_or_default()
            ),
            dir,
            bin,
            port,
        };
        cluster.pg_ctl_start(&options);
        std::fs::write(cluster.dir.join("options"), &options).expect("the server's options");
        cluster
    }

    fn pg_ctl_start(&self, options: &str) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("a UTF-8 path"),
                "-l",
                log.to_str().expect("a UTF-8 path"),
                "-o",
                options,
                "-w",
                "start",
            ],
        );
    }

    /// Runs `statement` with the cluster's own `psql`: the first row's columns, joined by
    /// `|`, or `None` when it gives no row. A statement that fails fails the test.
    pub fn query(&self, statement: &str) -> Option<String> {
        let output = std::process::Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&self.url)
            .args(["-c", statement])
            .output()
            .unwrap_or_else(|error| panic!("running psql: {error}"));
        assert!(
            output.status.success(),
            "psql {statement}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .map(str::to_owned)
    }

    /// Stops the server at once (every connection cut, as in a crash of the database).
    pub fn stop(&self) {
        let data = self.dir.join("data");
        run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("a UTF-8 path"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the server again after [`Self::stop`], with the options it had.
    pub fn start_again(&self) {
        let options =
            std::fs::read_to_string(self.dir.join("options")).expect("the server's options");
        self.pg_ctl_start(&options);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if let Some(data) = data.to_str() {
            let _ = std::panic::catch_unwind(|| {
                run(
                    &self.bin,
                    "pg_ctl",
                    &["-D", data, "-m", "immediate", "stop"],
                );
            });
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
