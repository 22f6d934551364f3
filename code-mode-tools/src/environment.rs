//! The environment a tool's process starts with: never the whole of ours. The serving
//! process keeps secrets in its environment (`CODE_MODE_STATE_URL` with a database
//! password, `CODE_MODE_MCP_TOKEN`, `OTEL_EXPORTER_OTLP_HEADERS` with a collector's
//! credentials), and a command tool, an MCP stdio server or the `shell` built-in runs
//! whatever it was given, for whoever can run a cell. So each starts with only the
//! variables of [`INHERITED`] (and [`INHERITED_PREFIXES`]) that ours has, then what the
//! tools file names for it ([`ToolEnv`]). Every spawner here goes through
//! `ToolEnv::apply`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

/// The variables a tool's process takes from ours when ours has them; nothing else of
/// ours reaches it unless the tools file names it. The set is the official MCP SDKs'
/// default for a stdio server, with the locale, time zone and temporary directory Codex
/// adds to its own default:
///
/// - `PATH`: where programs are found; a tool that starts another program needs it.
/// - `HOME`: where per-user configuration and caches live (`~`, `~/.cache`, `~/.npm`).
/// - `USER`, `LOGNAME`: who runs it, for programs that name the user (BSD and System V
///   spellings of the same thing).
/// - `SHELL`: the user's shell, for programs that start one.
/// - `TERM`: what the terminal understands, for programs that decide whether to colour.
/// - `LANG`: the locale, and with it the encoding of text in and out (the `LC_*` parts
///   are in [`INHERITED_PREFIXES`]).
/// - `TZ`: the time zone, so that a tool reads the clock as we do.
/// - `TMPDIR`: where temporary files go (a private one, under a sandbox or on macOS).
pub const INHERITED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "TZ", "TMPDIR",
];

/// Prefixes of the variables a tool's process takes from ours: `LC_` for the locale's
/// parts (`LC_ALL`, `LC_CTYPE`, `LC_MESSAGES`, ...), inherited as `LANG` is (the set
/// OpenSSH's `AcceptEnv LANG LC_*` passes too).
pub const INHERITED_PREFIXES: &[&str] = &["LC_"];

/// Whether a variable of ours reaches a tool's process without the tools file naming it.
pub fn inherited(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    INHERITED.contains(&name)
        || INHERITED_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// What a tools file gives one process beyond [`INHERITED`]: a `[[tool]]`'s, an
/// `[[mcp_server]]`'s or `[builtin.shell]`'s `env` and `env_vars`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolEnv {
    /// Set to these values (`env = { KEY = "value" }`), over anything inherited.
    pub set: BTreeMap<String, String>,
    /// Taken from ours when ours has them (`env_vars = ["KEY"]`): a secret the tool needs
    /// without writing it in the file.
    pub pass: Vec<String>,
}

impl ToolEnv {
    /// The whole environment of a process, from `parent` (ours, as it is when the process
    /// starts): the inherited variables, then those of `pass`, then `set` over them.
    pub fn build(
        &self,
        parent: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> BTreeMap<OsString, OsString> {
        let mut built: BTreeMap<OsString, OsString> = parent
            .into_iter()
            .filter(|(name, _)| {
                inherited(name)
                    || name
                        .to_str()
                        .is_some_and(|name| self.pass.iter().any(|pass| pass == name))
            })
            .collect();
        built.extend(
            self.set
                .iter()
                .map(|(name, value)| (OsString::from(name), OsString::from(value))),
        );
        built
    }

    /// Gives `command` exactly [`Self::build`] of our environment now, nothing else of
    /// ours.
    pub(crate) fn apply(&self, command: &mut tokio::process::Command) {
        let built = self.build(std::env::vars_os());
        let missing: Vec<&str> = self
            .pass
            .iter()
            .filter(|name| !built.contains_key(OsStr::new(name.as_str())))
            .map(String::as_str)
            .collect();
        tracing::debug!(
            variables = ?built.keys().collect::<Vec<_>>(),
            ?missing,
            "a tool's process environment (names only)"
        );
        command.env_clear().envs(built);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect()
    }

    #[test]
    fn only_the_allow_list_and_what_the_file_names_are_built() {
        let mut parent = pairs(&[
            ("PATH", "/usr/bin"),
            ("LC_TIME", "C"),
            ("LANG", "C.UTF-8"),
            ("CODE_MODE_STATE_URL", "postgres://secret"),
            ("CODE_MODE_MCP_TOKEN", "secret"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=secret"),
            ("XLC_TIME", "not a locale"),
            ("GITHUB_TOKEN", "named"),
        ]);
        parent.push((OsString::from_vec(b"LC_\xff".to_vec()), "x".into()));
        let env = ToolEnv {
            set: BTreeMap::from([
                ("LANG".to_owned(), "en_US.UTF-8".to_owned()),
                ("LOG".to_owned(), "info".to_owned()),
            ]),
            pass: vec!["GITHUB_TOKEN".to_owned(), "ABSENT".to_owned()],
        };
        let built = env.build(parent);
        let expected = pairs(&[
            ("GITHUB_TOKEN", "named"),
            ("LANG", "en_US.UTF-8"),
            ("LC_TIME", "C"),
            ("LOG", "info"),
            ("PATH", "/usr/bin"),
        ]);
        assert_eq!(built.into_iter().collect::<Vec<_>>(), expected);
    }
}
