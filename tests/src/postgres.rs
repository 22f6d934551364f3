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
    /// Makes and starts a cluster.
    pub fn start() -> Self {
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
        if nix_is_root() {
            // The server runs as nobody: the directory is its own.
            let nobody = 65534;
            std::os::unix::fs::chown(&dir, Some(nobody), Some(nobody)).expect("chown");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        let data = dir.join("data");
        let data_text = data.to_str().expect("a UTF-8 path");
        let dir_text = dir.to_str().expect("a UTF-8 path");
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
        let options = format!("-k {dir_text} -c listen_addresses='' -c max_connections=40");
        let log = dir.join("server.log");
        run(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data_text,
                "-l",
                log.to_str().expect("a UTF-8 path"),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        Self {
            url: format!("host={dir_text} user=postgres dbname=postgres sslmode=disable"),
            dir,
            bin,
        }
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
