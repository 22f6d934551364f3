//! Finding the `code-mode-bin` executable: an explicit path, then the `CODE_MODE_BIN`
//! environment variable, then next to the current executable, then `PATH`. A missing
//! binary is an error that lists every place that was searched.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The runtime binary's file name.
pub const BINARY_NAME: &str = "code-mode-bin";

/// The environment variable that overrides discovery.
pub const BINARY_ENV: &str = "CODE_MODE_BIN";

/// The runtime binary was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the code-mode runtime binary `{BINARY_NAME}` was not found; searched: {}", searched.join(", "))]
pub struct BinaryNotFound {
    /// Every candidate that was checked, in order, with where it came from.
    pub searched: Vec<String>,
}

/// Resolves the runtime binary. `explicit` wins and is not second-guessed: if it is given
/// and missing, that is the error (a typo must not silently run another binary).
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, BinaryNotFound> {
    find_binary_in(
        explicit,
        std::env::var_os(BINARY_ENV),
        std::env::current_exe().ok(),
        std::env::var_os("PATH"),
    )
}

/// [`find_binary`] with its inputs given, for tests.
pub fn find_binary_in(
    explicit: Option<&Path>,
    env_override: Option<OsString>,
    current_exe: Option<PathBuf>,
    path_var: Option<OsString>,
) -> Result<PathBuf, BinaryNotFound> {
    let mut searched = Vec::new();
    let mut check = |candidate: PathBuf, origin: &str| {
        let found = is_executable(&candidate);
        searched.push(format!("{} ({origin})", candidate.display()));
        found.then_some(candidate)
    };
    if let Some(explicit) = explicit {
        return check(explicit.to_path_buf(), "explicit path").ok_or(BinaryNotFound { searched });
    }
    if let Some(path) = env_override.filter(|value| !value.is_empty()) {
        return check(PathBuf::from(path), BINARY_ENV).ok_or(BinaryNotFound { searched });
    }
    if let Some(dir) = current_exe.as_deref().and_then(Path::parent) {
        if let Some(found) = check(dir.join(BINARY_NAME), "next to the current executable") {
            return Ok(found);
        }
        // Cargo puts test executables in `target/<profile>/deps/`, the binary one level up.
        if dir.file_name().is_some_and(|name| name == "deps")
            && let Some(found) = dir
                .parent()
                .and_then(|profile| check(profile.join(BINARY_NAME), "the cargo profile directory"))
        {
            return Ok(found);
        }
    }
    for dir in path_var.iter().flat_map(std::env::split_paths) {
        if let Some(found) = check(dir.join(BINARY_NAME), "PATH") {
            return Ok(found);
        }
    }
    Err(BinaryNotFound { searched })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
