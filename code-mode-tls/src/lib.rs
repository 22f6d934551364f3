//! TLS settings read from PEM, for every TLS end this workspace runs over TCP. Servers: the
//! runtime's `--listen` (mutual TLS: a host without a certificate issued by the client CA
//! is refused during the handshake), `code-mode mcp --http` (server authentication only;
//! its clients present a bearer token instead) and the Codex front's `grpc://` listener.
//! The client: a host dialling its remote runtimes ([`client_config`]), which presents its
//! own certificate. Everything is read when the process starts, before a sandbox forbids
//! file access. The cryptography is rustls with the `ring` provider.

pub mod gate;

/// Makes `ring` the process's default rustls crypto provider, for the TLS ends this
/// workspace does not configure itself (reqwest's, in the MCP client and the trace
/// exporter): one crypto library in every binary. Harmless if a default is already set.
pub fn use_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS settings could not be loaded; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {detail}")]
    Read {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the client CA {path} is not usable: {detail}")]
    ClientCa { path: PathBuf, detail: String },
    #[error("the server certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    /// PEM text given in memory (not a file) that is not usable.
    #[error("{what}: {detail}")]
    Pem { what: &'static str, detail: String },
}

/// The files of a TLS server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates must chain to; `None` asks for no client
    /// certificate.
    pub client_ca: Option<PathBuf>,
}

/// Every certificate in a PEM file; none is an error.
pub fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |detail: String| TlsError::Read {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| read_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Loads the files into a server configuration; with a client CA, a client must present
/// a certificate it issued. `alpn` lists the application protocols offered (empty: none).
pub fn server_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates("the server certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| TlsError::Read {
        what: "the server key",
        path: files.key.clone(),
        detail: error.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = match &files.client_ca {
        Some(client_ca) => {
            let ca_error = |detail: String| TlsError::ClientCa {
                path: client_ca.clone(),
                detail,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("the client CA", client_ca)? {
                roots
                    .add(cert)
                    .map_err(|error| ca_error(error.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|error| ca_error(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration from PEM text: the CA that servers' certificates must chain to,
/// the client's own certificate chain (leaf first) and its private key, which it presents
/// to servers that ask for one.
pub fn client_config(
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let pem = |what: &'static str, detail: String| TlsError::Pem { what, detail };
    let certificates_in = |what: &'static str, text: &[u8]| {
        let certs = CertificateDer::pem_slice_iter(text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| pem(what, error.to_string()))?;
        if certs.is_empty() {
            return Err(pem(what, "no certificate in it".to_owned()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates_in("the CA", ca)? {
        roots
            .add(ca)
            .map_err(|error| pem("the CA", error.to_string()))?;
    }
    let chain = certificates_in("the client certificate", cert)?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|error| pem("the client key", error.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| pem("the protocol versions", error.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| pem("the client certificate and key", error.to_string()))?;
    Ok(Arc::new(config))
}
