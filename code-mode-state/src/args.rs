//! The command-line flags of a front that keeps state (feature `cli`): one definition of
//! `--state-dir`, `--state-url` and the flags that bound and tune the store, for every
//! front (`code-mode serve --jsonl`, `code-mode mcp --http`, the Codex front).

use crate::{StoreLocation, StoreOptions};

/// Where and how a serving process keeps its sessions across its restarts.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Keep the sessions, their stored values and their running cells' journals in this
    /// directory, so that a server started again with it goes on with them (docs/MCP.md,
    /// docs/jsonl.md, docs/CODEX.md: "Restarts").
    #[arg(long, value_name = "DIR", group = "store")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Keep them in this Postgres database instead (`postgres://user:pass@host/db`, or
    /// `key=value` pairs), which replicas share: a session whose server died is taken
    /// over by the replica its client reaches next. TLS by `sslmode` (`disable`,
    /// `prefer`, `require`, `verify-ca`, `verify-full`); off loopback the default is
    /// `verify-full` and nothing but `disable` is ever plaintext.
    #[arg(
        long,
        value_name = "URL",
        env = "CODE_MODE_STATE_URL",
        group = "store",
        hide_env_values = true
    )]
    pub state_url: Option<String>,
    /// With --state-url: the CA certificates (PEM) the database server's certificate is
    /// checked against (else the URL's `sslrootcert`, else the system's roots).
    #[arg(
        long,
        value_name = "FILE",
        env = "CODE_MODE_STATE_CA",
        requires = "state_url"
    )]
    pub state_ca: Option<std::path::PathBuf>,
    /// With --state-url: the deployment these servers are (lower-case letters, digits and
    /// `_`): two deployments on one database keep their sessions apart (a schema each).
    #[arg(
        long,
        value_name = "NAME",
        env = "CODE_MODE_STATE_DEPLOYMENT",
        requires = "state_url"
    )]
    pub state_deployment: Option<String>,
    /// With --state-url: the name this server leases sessions under (a pod's name). A
    /// server started again under the same name takes its sessions back at once.
    #[arg(
        long,
        value_name = "NAME",
        env = "CODE_MODE_STATE_REPLICA",
        requires = "state_url"
    )]
    pub state_replica: Option<String>,
    /// With --state-url: how long a lease lasts unless renewed; a session whose server
    /// died is taken over after at most this long (e.g. 15s).
    #[arg(long, value_name = "TIME", default_value = "15s", value_parser = crate::parse_ttl)]
    pub state_lease: crate::Ttl,
    /// The most the store may hold, in bytes, counting every session (on Postgres, the
    /// rows', measured every third of a lease). Past seven eighths of it a new session is
    /// refused, with the figures; a write past it fails as on a full disk, and what
    /// depends on it is held back or refused.
    #[arg(long, value_name = "BYTES", requires = "store")]
    pub state_max_bytes: Option<u64>,
    /// A kept session that nothing wrote for this long is deleted (90m, 24h, 7d, or
    /// never). On Postgres that holds for a session a live replica holds too; leases are
    /// renewed whatever this is.
    #[arg(long, value_name = "TIME", default_value = "24h", value_parser = crate::parse_ttl)]
    pub state_ttl: crate::Ttl,
    /// What a write survives before what depends on it goes out: `disk` (synced: a
    /// machine crash too) or `process` (a crash of this process, not of the machine that
    /// holds the store; each write costs less; on Postgres, `synchronous_commit` off).
    #[arg(long, value_name = "disk|process", default_value = "disk")]
    pub state_durability: crate::Durability,
}

impl StateArgs {
    /// Where the store is and how it is bounded, if one was given.
    pub fn store(&self) -> Option<(StoreLocation, StoreOptions)> {
        let location = match (&self.state_dir, &self.state_url) {
            (Some(dir), _) => StoreLocation::Dir(dir.clone()),
            (None, Some(url)) => StoreLocation::Url(url.clone()),
            (None, None) => return None,
        };
        Some((
            location,
            StoreOptions {
                max_bytes: self.state_max_bytes,
                ttl: self.state_ttl.0,
                durability: self.state_durability,
                replica: self.state_replica.clone(),
                lease: self.state_lease.0.unwrap_or(crate::LEASE),
                ca: self.state_ca.clone(),
                deployment: self.state_deployment.clone(),
                ..StoreOptions::default()
            },
        ))
    }
}
