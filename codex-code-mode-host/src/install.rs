//! Putting this host where a codex install finds it, putting the original back, and saying
//! which host an install runs.
//!
//! Codex looks for its host only next to itself (CODEX-HOST.md §1), first match wins:
//! `<pkg>/codex-resources/codex-code-mode-host` and then `<pkg>/bin/codex-code-mode-host`
//! when codex is `<pkg>/bin/codex` beside `<pkg>/codex-package.json` (npm's and the
//! standalone layout), else `dirname(codex)/codex-code-mode-host`.
//!
//! In the package layout, `install` adds ours as `codex-resources/codex-code-mode-host`
//! (one file when the host carries the runtime, its default build; else with
//! `code-mode-bin` beside it), which codex prefers, and touches
//! nothing of codex's. In another layout it renames codex's host to
//! `codex-code-mode-host.codex-original` first. A manifest in the same directory lists
//! what was written, and `uninstall` removes exactly that and restores the original.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The host's file name, as codex looks it up.
pub const HOST_NAME: &str = "codex-code-mode-host";

/// Where an original host is kept while ours replaces it (non-package layouts).
pub const ORIGINAL_SUFFIX: &str = ".codex-original";

/// What `install` wrote, one path per line, beside the host it installed.
pub const MANIFEST_NAME: &str = ".code-mode-host-install";

/// What `--version` of our host says, and codex's own host does not.
pub const VERSION_MARK: &str = "(code-mode)";

/// Why an install, uninstall or check could not be done.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no `codex` on PATH; give the codex executable with --codex PATH")]
    NoCodexOnPath,
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error(
        "{0} is npm's codex launcher, but its platform package (@openai/codex-linux-x64 or -arm64) was not found beside it"
    )]
    NoPlatformPackage(PathBuf),
    #[error("nothing of ours is installed for {0} (no {MANIFEST_NAME} there)")]
    NotInstalled(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Removes `path`; whether it was there.
fn remove_if_there(path: &Path) -> Result<bool, InstallError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io("remove", path)(error)),
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// A codex install, found from its executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodexInstall {
    /// The real codex executable (a native binary, not npm's launcher).
    pub codex: PathBuf,
    /// `<pkg>` when codex is in the package layout.
    pub package: Option<PathBuf>,
}

/// Which host a codex install runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChoice {
    /// The host codex will start, `None` when none is there (code mode is then off).
    pub path: Option<PathBuf>,
    /// Whether that host is this one.
    pub ours: bool,
    /// Every place codex looks, in order.
    pub searched: Vec<PathBuf>,
}

impl CodexInstall {
    /// Finds the install of `codex` (an executable, npm's launcher, or `None` for the one
    /// on PATH).
    pub fn locate(codex: Option<&Path>) -> Result<Self, InstallError> {
        let given = match codex {
            Some(path) => path.to_path_buf(),
            None => find_on_path("codex").ok_or(InstallError::NoCodexOnPath)?,
        };
        let path = given
            .canonicalize()
            .map_err(|_| InstallError::Missing(given.clone()))?;
        let codex = if is_node_launcher(&path) {
            platform_binary(&path).ok_or(InstallError::NoPlatformPackage(path.clone()))?
        } else {
            path
        };
        let package = codex
            .parent()
            .filter(|bin| bin.file_name().is_some_and(|name| name == "bin"))
            .and_then(Path::parent)
            .filter(|root| root.join("codex-package.json").is_file())
            .map(Path::to_path_buf);
        Ok(Self { codex, package })
    }

    /// Every place codex looks for its host, in its order.
    pub fn lookup(&self) -> Vec<PathBuf> {
        match &self.package {
            Some(root) => vec![
                root.join("codex-resources").join(HOST_NAME),
                root.join("bin").join(HOST_NAME),
            ],
            None => vec![self.codex.with_file_name(HOST_NAME)],
        }
    }

    /// Where `install` puts ours.
    pub fn target(&self) -> PathBuf {
        self.lookup().remove(0)
    }

    /// The host this install runs now.
    pub fn check(&self) -> HostChoice {
        let searched = self.lookup();
        let path = searched.iter().find(|path| path.is_file()).cloned();
        let ours = path.as_deref().is_some_and(is_ours);
        HostChoice {
            path,
            ours,
            searched,
        }
    }

    /// Installs `host` (this executable), and its `runtime` beside it unless the host
    /// carries the runtime (`None`), where codex runs them; returns the paths written.
    pub fn install(
        &self,
        host: &Path,
        runtime: Option<&Path>,
    ) -> Result<Vec<PathBuf>, InstallError> {
        for source in std::iter::once(host).chain(runtime) {
            if !source.is_file() {
                return Err(InstallError::Missing(source.to_path_buf()));
            }
        }
        let target = self.target();
        let dir = target.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut written = Vec::new();
        if target.is_file() && !is_ours(&target) {
            let original = original_of(&target);
            std::fs::rename(&target, &original)
                .map_err(io("keep the original host as", &original))?;
        }
        copy_executable(host, &target)?;
        written.push(target.clone());
        let runtime_target = dir.join(code_mode_host::BINARY_NAME);
        match runtime {
            Some(runtime) => {
                copy_executable(runtime, &runtime_target)?;
                written.push(runtime_target);
            }
            // One file: a runtime an earlier install of ours put beside the host (its
            // manifest lists it) goes, so that uninstall leaves nothing behind.
            None => {
                let earlier = std::fs::read_to_string(dir.join(MANIFEST_NAME)).unwrap_or_default();
                if earlier
                    .lines()
                    .any(|line| Path::new(line) == runtime_target)
                {
                    remove_if_there(&runtime_target)?;
                }
            }
        }
        let manifest = dir.join(MANIFEST_NAME);
        let listing: String = written
            .iter()
            .map(|path| format!("{}\n", path.display()))
            .collect();
        std::fs::write(&manifest, listing).map_err(io("write", &manifest))?;
        Ok(written)
    }

    /// Removes what `install` wrote and puts back the host it replaced; returns the paths
    /// removed.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, InstallError> {
        let target = self.target();
        let dir = target.parent().unwrap_or(Path::new("."));
        let manifest = dir.join(MANIFEST_NAME);
        let listing = std::fs::read_to_string(&manifest)
            .map_err(|_| InstallError::NotInstalled(self.codex.clone()))?;
        let mut removed = Vec::new();
        for line in listing.lines().filter(|line| !line.is_empty()) {
            let path = PathBuf::from(line);
            // Only what this install wrote, in this directory.
            if path.parent() != Some(dir) {
                continue;
            }
            if remove_if_there(&path)? {
                removed.push(path);
            }
        }
        let original = original_of(&target);
        if original.is_file() {
            std::fs::rename(&original, &target).map_err(io("restore", &target))?;
        }
        std::fs::remove_file(&manifest).map_err(io("remove", &manifest))?;
        Ok(removed)
    }
}

fn original_of(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(ORIGINAL_SUFFIX);
    PathBuf::from(name)
}

/// Copies an executable through a temporary file and a rename, so that a codex starting
/// meanwhile never runs half a file.
fn copy_executable(from: &Path, to: &Path) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let mut temporary = to.as_os_str().to_owned();
    temporary.push(".installing");
    let temporary = PathBuf::from(temporary);
    std::fs::copy(from, &temporary).map_err(io("copy to", &temporary))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))
        .map_err(io("make executable", &temporary))?;
    std::fs::rename(&temporary, to).map_err(io("move into place", to))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// npm's `codex` is a Node script (`bin/codex.js`) that starts the platform binary.
fn is_node_launcher(path: &Path) -> bool {
    if path.extension().is_some_and(|extension| extension == "js") {
        return true;
    }
    let mut head = [0u8; 64];
    let read = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut head))
        .unwrap_or(0);
    head[..read].starts_with(b"#!") && String::from_utf8_lossy(&head[..read]).contains("node")
}

/// The native codex that npm's launcher at `launcher` starts: its platform package, found
/// as Node would resolve it from `@openai/codex`.
fn platform_binary(launcher: &Path) -> Option<PathBuf> {
    let package = launcher.parent()?.parent()?; // .../@openai/codex
    let (name, triple) = match std::env::consts::ARCH {
        "aarch64" => ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
        _ => ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    };
    let candidates = [
        package.join("node_modules/@openai").join(name),
        package.parent()?.join(name),
    ];
    candidates
        .iter()
        .map(|platform| platform.join("vendor").join(triple).join("bin/codex"))
        .find(|binary| binary.is_file())
}

/// Whether the host at `path` is this one: ours answers `--version` with
/// [`VERSION_MARK`]; codex's own refuses the flag.
pub fn is_ours(path: &Path) -> bool {
    let Ok(mut child) = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut output);
    }
    output.contains(VERSION_MARK)
}
