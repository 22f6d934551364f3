//! Finding a program to run (a command tool's, an MCP server's), the way a shell would.
//! Its own module, below both the tools and the MCP client that start programs.

use std::path::{Path, PathBuf};

/// Finds a program the way a shell would: a path with a slash relative to `cwd`, else
/// `PATH`.
pub(crate) fn resolve_program(program: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    // Absolute, because the child starts in `cwd`, where a relative path would be
    // looked up again.
    if program.contains('/') {
        let path = std::path::absolute(cwd.join(program)).ok()?;
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| executable(path))
        .and_then(|path| std::path::absolute(path).ok())
}
