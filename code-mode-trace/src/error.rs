//! Why tracing could not start: the one error every part of the export reports.

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}")]
    Settings(String),
    #[error("cannot build the OTLP trace exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("cannot listen for trace streams on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the thread that exports the cells' spans: {0}")]
    Thread(std::io::Error),
}
