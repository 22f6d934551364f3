//! How the Postgres store reaches its server: the connection string read (its `sslmode`
//! and `sslrootcert`, which the client library does not take, read here first), the TLS
//! that follows from them, TCP keepalives and timeouts, and what a failure says.
//!
//! TLS, as libpq's `sslmode` says, with one rule stricter than libpq's: off loopback, a
//! connection never goes plaintext unless the URL says `sslmode=disable`.
//!
//! | `sslmode`      | loopback TCP                     | any other host                          |
//! |----------------|----------------------------------|-----------------------------------------|
//! | (not given)    | TLS if the server offers it      | `verify-full`                           |
//! | `disable`      | plaintext                        | plaintext                               |
//! | `prefer`       | TLS if the server offers it      | TLS required, certificate not checked   |
//! | `require`      | TLS required, certificate not checked (checked as `verify-ca` when a CA is named) | |
//! | `verify-ca`    | TLS, the chain checked against the CA (`--state-ca`, `sslrootcert`, else the system's roots) | |
//! | `verify-full`  | `verify-ca`, and the host name checked against the certificate | |
//!
//! A Unix socket is a local channel TLS does not apply to (libpq does not use it there
//! either): it is always plaintext.

use crate::StateError;
use postgres::config::{Host, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long one attempt to reach the server may take: a store that does not answer is
/// an error the keeper's patience tries again, not a hang of its thread.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP keepalives: a connection whose server vanished (a crashed machine, a dropped
/// route) is noticed within about a minute (idle 30 s, then three probes 10 s apart)
/// instead of the system's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Data the server leaves unacknowledged this long closes the connection (the keeper then
/// connects again), rather than blocking a write for the kernel's fifteen minutes.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The `sslmode` a connection string asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => Self::Disable,
            "prefer" | "allow" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is none of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// What the store connects with: the client's configuration and the TLS it uses.
pub(crate) struct Target {
    config: postgres::Config,
    tls: Option<rustls::ClientConfig>,
    /// What `tls` checks of the server's certificate (`None`: plaintext).
    verify: Option<Verify>,
    /// Where the store is, without its password, for messages.
    pub(crate) describe: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("describe", &self.describe)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Reads `url` (a `postgres://` URL or `key=value` pairs) with `ca`, a file of PEM
    /// certificates to check the server's chain against (`--state-ca`; the URL's
    /// `sslrootcert` when not given).
    pub(crate) fn new(url: &str, ca: Option<&Path>) -> Result<Self, StateError> {
        let fail = |detail: String| StateError::Connect {
            store: "a postgres database".to_owned(),
            detail,
        };
        let (rest, taken) = take_tls_params(url).map_err(fail)?;
        let mut config: postgres::Config = rest
            .parse()
            .map_err(|error| fail(format!("the URL does not read: {error}")))?;
        let describe = format!(
            "postgres database {} on {}",
            config.get_dbname().unwrap_or("(default)"),
            hosts_text(config.get_hosts())
        );
        let fail = |detail: String| StateError::Connect {
            store: describe.clone(),
            detail,
        };
        let mode = taken
            .sslmode
            .as_deref()
            .map(TlsMode::parse)
            .transpose()
            .map_err(fail)?;
        let ca: Option<PathBuf> = ca
            .map(Path::to_owned)
            .or(taken.sslrootcert.map(PathBuf::from));
        // `hostaddr` is where the client connects when given (the host names are then
        // only for the certificate): it decides, as much as the names do.
        let hosts = config.get_hosts();
        let addresses = config.get_hostaddrs();
        let unix_only = addresses.is_empty()
            && !hosts.is_empty()
            && hosts.iter().all(|host| matches!(host, Host::Unix(_)));
        let loopback = hosts.iter().all(is_loopback)
            && addresses.iter().all(std::net::IpAddr::is_loopback)
            && !(hosts.is_empty() && addresses.is_empty());
        let verify = match (mode, unix_only, loopback) {
            (_, true, _) | (Some(TlsMode::Disable), ..) => None,
            (None | Some(TlsMode::Prefer), _, true) => {
                config.ssl_mode(SslMode::Prefer);
                Some(Verify::Nothing)
            }
            (Some(TlsMode::Prefer), _, false) => {
                tracing::warn!(
                    store = %describe,
                    "sslmode=prefer off loopback requires TLS (it never falls back to plaintext here; sslmode=disable allows plaintext)"
                );
                config.ssl_mode(SslMode::Require);
                Some(Verify::Nothing)
            }
            (Some(TlsMode::Require), ..) => {
                config.ssl_mode(SslMode::Require);
                Some(if ca.is_some() {
                    Verify::Chain
                } else {
                    Verify::Nothing
                })
            }
            (Some(TlsMode::VerifyCa), ..) => {
                config.ssl_mode(SslMode::Require);
                Some(Verify::Chain)
            }
            (None | Some(TlsMode::VerifyFull), ..) => {
                config.ssl_mode(SslMode::Require);
                Some(Verify::Full)
            }
        };
        if verify.is_none() {
            config.ssl_mode(SslMode::Disable);
        }
        let tls = verify
            .map(|verify| client_config(verify, ca.as_deref()))
            .transpose()
            .map_err(fail)?;
        tune(&mut config);
        Ok(Self {
            config,
            tls,
            verify,
            describe,
        })
    }

    /// Connects once; the error says what failed (the server's own message when it
    /// refused).
    pub(crate) fn connect(&self) -> Result<postgres::Client, StateError> {
        let connected = match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone())),
        };
        connected.map_err(|error| StateError::Connect {
            store: self.describe.clone(),
            detail: explain(&error),
        })
    }
}

/// What a Postgres error says, whole: the server's message, detail and code when it
/// answered with one (the client's own display is only "db error"), else the client's
/// error and its causes.
pub(crate) fn explain(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(": {detail}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    text
}

/// Keepalives and timeouts, where the connection string left them at the client's
/// defaults.
fn tune(config: &mut postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_keepalives() && config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(KEEPALIVE_IDLE);
        config.keepalives_interval(KEEPALIVE_INTERVAL);
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

fn hosts_text(hosts: &[Host]) -> String {
    let names: Vec<String> = hosts
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if names.is_empty() {
        "the default host".to_owned()
    } else {
        names.join(", ")
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Nothing (the handshake's signatures only): encryption against a passive listener.
    Nothing,
    /// The chain, against the roots; not the name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// A rustls client configuration (ring, as everything here) that checks what `verify`
/// says against `ca`'s certificates, else the system's roots.
fn client_config(verify: Verify, ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    if verify == Verify::Nothing {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth());
    }
    let roots = Arc::new(roots(ca)?);
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|error| format!("the CA certificates do not make a verifier: {error}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if verify == Verify::Chain {
        Arc::new(ChainOnly(webpki))
    } else {
        webpki
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The roots a server's chain is checked against: `ca`'s certificates, else the system's.
fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|error| {
                format!("the CA file {} does not read: {error}", path.display())
            })?;
            let mut found = 0;
            for certificate in rustls_pemfile_certs(&pem) {
                let certificate = certificate.map_err(|error| {
                    format!(
                        "the CA file {} holds a bad certificate: {error}",
                        path.display()
                    )
                })?;
                roots.add(certificate).map_err(|error| {
                    format!(
                        "the CA file {} holds a bad certificate: {error}",
                        path.display()
                    )
                })?;
                found += 1;
            }
            if found == 0 {
                return Err(format!(
                    "the CA file {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            for certificate in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(certificate);
            }
            if roots.is_empty() {
                return Err(
                    "the system has no CA certificates to check the server's against: name the server's CA with --state-ca or sslrootcert"
                        .to_owned(),
                );
            }
        }
    }
    Ok(roots)
}

/// The certificates of a PEM text.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> impl Iterator<Item = Result<CertificateDer<'static>, rustls::pki_types::pem::Error>> + '_ {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` (and `prefer`) without a CA: any certificate, its handshake signatures
/// checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS parameters the client library does not read, taken out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// `url` without its `sslmode` and `sslrootcert`, and their values.
fn take_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut taken = TlsParams::default();
    let mut keep = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => taken.sslmode = Some(value),
            "sslrootcert" => taken.sslrootcert = Some(value),
            _ => return true,
        }
        false
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), taken));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if keep(&percent_decode(key)?, percent_decode(value)?) {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in key_values(url)? {
            if keep(&key, value.clone()) {
                kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        kept.join(" ")
    };
    Ok((rest, taken))
}

/// A URL component's `%XX` escapes decoded.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text
                .get(at + 1..at + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("the URL has a bad escape at `{}`", &text[at..]))?;
            out.push(hex);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's escapes are not UTF-8".to_owned())
}

/// The pairs of a `key=value` connection string (values optionally in single quotes, with
/// `\'` and `\\` escapes, as libpq reads them).
fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("the connection string has `{key}` without `=`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let (rest, taken) = take_tls_params(
            "postgres://u:p@db.example/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("reads");
        assert_eq!(rest, "postgres://u:p@db.example/app?application_name=x");
        assert_eq!(taken.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(taken.sslrootcert.as_deref(), Some("/etc/ca.pem"));

        let (rest, taken) =
            take_tls_params("host=db user='a b' sslmode = require password='it\\'s'")
                .expect("reads");
        assert_eq!(rest, "host='db' user='a b' password='it\\'s'");
        assert_eq!(taken.sslmode.as_deref(), Some("require"));
        let config: postgres::Config = rest.parse().expect("the rest parses");
        assert_eq!(config.get_user(), Some("a b"));
        assert_eq!(config.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn off_loopback_the_default_verifies_and_only_disable_is_plaintext() {
        let target = Target::new("postgres://u@db.example/app", None).expect("reads");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        assert!(target.tls.is_some());
        assert_eq!(target.verify, Some(Verify::Full));
        // `hostaddr` is where the client goes: a loopback or socket name beside a remote
        // address is off loopback.
        for url in [
            "host=/run/postgresql hostaddr=203.0.113.5 user=u sslmode=verify-full",
            "host=localhost hostaddr=203.0.113.5 user=u",
            "hostaddr=203.0.113.5 user=u",
        ] {
            let target = Target::new(url, None).expect("reads");
            assert_eq!(target.config.get_ssl_mode(), SslMode::Require, "{url}");
            assert_eq!(target.verify, Some(Verify::Full), "{url}");
        }
        let target = Target::new("host=localhost hostaddr=127.0.0.1 user=u", None).expect("reads");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Prefer);
        let target = Target::new("postgres://u@127.0.0.1/app", None).expect("reads");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Prefer);
        let target =
            Target::new("postgres://u@db.example/app?sslmode=prefer", None).expect("reads");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        let target =
            Target::new("postgres://u@db.example/app?sslmode=disable", None).expect("reads");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Disable);
        assert!(target.tls.is_none());
        let error = Target::new("postgres://u@db.example/app?sslmode=sometimes", None)
            .expect_err("refused");
        assert!(error.to_string().contains("sslmode `sometimes`"), "{error}");
    }
}
