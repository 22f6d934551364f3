//! TLS settings read from PEM files, for every server this workspace runs over TCP: the
//! runtime's `--listen` (mutual TLS: a host without a certificate issued by the client CA
//! is refused during the handshake) and `code-mode mcp --http` (server authentication
//! only; its clients present a bearer token instead). Everything is read when the server
//! starts, before a sandbox forbids file access. The cryptography is rustls with the
//! `ring` provider.

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
