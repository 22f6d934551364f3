//! Opening sessions for a CLI command: over the runtime process (the default), in process
//! (`--in-process`), or on runtimes listening elsewhere (`--runtime HOST:PORT`, with mutual
//! TLS through `--runtime-ca`, `--runtime-cert` and `--runtime-key`).

use code_mode::{InProcessConfig, InProcessProvider};
use code_mode_host::{CodeModeProvider, DurableSession};
use code_mode_host::{ProcessConfig, ProcessProvider, RemoteConfig, RemoteProvider, Runtimes};
use code_mode_protocol::{CodeModeSession, CodeModeSessionDelegate, SessionOptions, StoredValues};
use std::path::PathBuf;
use std::sync::Arc;

/// Where a command's cells run, as given on its command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuntimeArgs {
    /// Run V8 in this process instead of the runtime process.
    #[arg(long, conflicts_with = "runtime")]
    pub in_process: bool,
    /// Run cells on runtimes listening elsewhere (`code-mode-bin --listen`): HOST:PORT,
    /// repeated or comma-separated, or one name that resolves to many.
    #[arg(long = "runtime", value_name = "HOST:PORT", value_delimiter = ',')]
    pub runtime: Vec<String>,
    /// With --runtime: the CA of the runtimes' certificates (PEM). With --runtime-cert and
    /// --runtime-key; without the three, plaintext to loopback runtimes only.
    #[arg(long, value_name = "PEM", requires = "runtime")]
    pub runtime_ca: Option<PathBuf>,
    /// With --runtime: this host's client certificate (PEM).
    #[arg(long, value_name = "PEM", requires = "runtime")]
    pub runtime_cert: Option<PathBuf>,
    /// With --runtime: this host's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "runtime")]
    pub runtime_key: Option<PathBuf>,
}

impl RuntimeArgs {
    /// Checks what clap cannot: the TLS files go together.
    pub fn check(&self) -> Result<(), String> {
        let given = [&self.runtime_ca, &self.runtime_cert, &self.runtime_key]
            .iter()
            .filter(|file| file.is_some())
            .count();
        if given == 1 || given == 2 {
            return Err(
                "--runtime-ca, --runtime-cert and --runtime-key go together (mutual TLS)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// Where a command's sessions run; one runtime process (or one pool of remote runtimes)
/// serves all of a command's sessions.
pub enum Sessions {
    InProcess(InProcessProvider),
    Hosted(Runtimes),
}

impl Sessions {
    /// The provider the arguments ask for; the error is one line for the user.
    pub fn new(args: &RuntimeArgs, runtime_log: &str) -> Result<Self, String> {
        Self::after(args, runtime_log, 0)
    }

    /// [`Self::new`] for a process that goes on with the sessions of an earlier one, whose
    /// runtimes reached generation `generations_before` (new cell ids never repeat its).
    pub fn after(
        args: &RuntimeArgs,
        runtime_log: &str,
        generations_before: u64,
    ) -> Result<Self, String> {
        if args.in_process {
            return Ok(Self::InProcess(InProcessProvider::new(
                InProcessConfig::default(),
            )));
        }
        let runtimes = if args.runtime.is_empty() {
            ProcessProvider::new(ProcessConfig {
                log_filter: runtime_log.to_owned(),
                generations_before,
                ..ProcessConfig::default()
            })
            .map(Runtimes::Local)
            .map_err(|error| error.to_string())?
        } else {
            Runtimes::Remote(remote(args, generations_before)?)
        };
        Ok(Self::Hosted(runtimes))
    }

    /// The runtime generation the provider reached (0 in process).
    pub fn generations_used(&self) -> u64 {
        match self {
            Self::InProcess(_) => 0,
            Self::Hosted(runtimes) => runtimes.generations_used(),
        }
    }

    /// Opens a session whose state can outlive this process; `None` in process (there
    /// is no host side to keep a cell's journal on).
    pub fn open_durable(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Option<Arc<dyn DurableSession>> {
        match self {
            Self::InProcess(_) => None,
            Self::Hosted(runtimes) => Some(Arc::new(runtimes.open_session_with_values(
                delegate,
                options,
                stored_values,
            ))),
        }
    }

    /// Opens a session.
    pub fn open(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
    ) -> Box<dyn CodeModeSession> {
        self.open_with_values(delegate, options, StoredValues::new())
    }

    /// Opens a session whose committed stored values are `stored_values`.
    pub fn open_with_values(
        &self,
        delegate: Arc<dyn CodeModeSessionDelegate>,
        options: SessionOptions,
        stored_values: StoredValues,
    ) -> Box<dyn CodeModeSession> {
        match self {
            Self::InProcess(provider) => {
                Box::new(provider.open_session_with_values(delegate, options, stored_values))
            }
            Self::Hosted(runtimes) => {
                Box::new(runtimes.open_session_with_values(delegate, options, stored_values))
            }
        }
    }
}

/// The remote provider of `--runtime`: mutual TLS with all three files, plaintext (to
/// loopback only) with none ([`RuntimeArgs::check`] refused one or two).
fn remote(args: &RuntimeArgs, generations_before: u64) -> Result<RemoteProvider, String> {
    let mut config = RemoteConfig::from_pem_files(
        args.runtime.clone(),
        args.runtime_ca.as_deref(),
        args.runtime_cert.as_deref(),
        args.runtime_key.as_deref(),
    )
    .map_err(|error| error.to_string())?;
    config.generations_before = generations_before;
    RemoteProvider::new(config).map_err(|error| error.to_string())
}

/// Opens one session; the error is one line for the user.
pub fn open(
    args: &RuntimeArgs,
    delegate: Arc<dyn CodeModeSessionDelegate>,
    options: SessionOptions,
    runtime_log: &str,
) -> Result<Box<dyn CodeModeSession>, String> {
    Ok(Sessions::new(args, runtime_log)?.open(delegate, options))
}
