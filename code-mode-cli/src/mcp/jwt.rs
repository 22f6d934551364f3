//! OAuth 2.1 access tokens for `code-mode mcp --http`: JWTs signed by an authorization
//! server, checked against its public keys (a JWKS, from a file or an `https` URL). It owns
//! the JWKS (read, cached, read again when it is old or a token names a key it does not
//! hold), the checks a token must pass (signature by an accepted asymmetric algorithm with a
//! key of the right type, `iss`, `aud`, `exp`, `nbf`, `sub`) and the principal a token
//! names: its subject, qualified by its issuer. Verification is `jsonwebtoken`'s (ring).

use super::principal::{Principal, Refusal};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Clock skew allowed between the authorization server and this one when `exp` and `nbf`
/// are checked, in seconds: a minute, what `jsonwebtoken` and most resource servers allow,
/// small beside the lifetime of an access token (minutes to an hour).
pub const LEEWAY_SECS: u64 = 60;

/// How long a JWKS is used before it is read again: ten minutes, so that a key the
/// authorization server adds or withdraws counts here within minutes, while the server
/// is asked a few times an hour at most.
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);

/// The least time between two reads of the JWKS for a token whose key it does not hold:
/// tokens with made-up key ids cannot make this server hammer the authorization server.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

/// How long fetching a JWKS may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JWKS accepted, in bytes: real ones hold a few keys in a few KiB.
const JWKS_MAX_BYTES: usize = 1024 * 1024;

/// The algorithms accepted when `--auth-jwt-algorithm` is not given.
pub const DEFAULT_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// Where the authorization server's public keys are.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    /// `https`, or `http` to a loopback address.
    Url(String),
}

impl JwksSource {
    /// A URL (`https://`, or `http://` to this machine) or else a file.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.contains("://") {
            return Ok(Self::File(PathBuf::from(text)));
        }
        check_url(text, "the JWKS URL").map(|()| Self::Url(text.to_owned()))
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(formatter, "{}", path.display()),
            Self::Url(url) => formatter.write_str(url),
        }
    }
}

/// Whether `url` is absolute, without a fragment, and `https` (or `http` to this machine,
/// for an authorization server on it and for tests).
pub fn check_url(url: &str, what: &str) -> Result<(), String> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|error| format!("{what} {url} is not a URL: {error}"))?;
    let host = parsed.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme_str() {
        _ if host.is_empty() || url.contains('#') => Err(format!(
            "{what} {url} must be an absolute URL without a fragment"
        )),
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err(format!(
            "{what} {url} must be https (http only to this machine)"
        )),
    }
}

/// An accepted algorithm: asymmetric only (a JWKS holds public keys; a shared secret would
/// let anyone holding the JWKS sign tokens).
pub fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    let algorithm: Algorithm = text
        .parse()
        .map_err(|_| format!("{text} is not a JWS algorithm (e.g. RS256, ES256, EdDSA)"))?;
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Err(format!(
            "{text} signs with a shared secret, not a public key; accepted: RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA"
        )),
        _ => Ok(algorithm),
    }
}

/// Why the JWKS could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the JWKS {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot fetch the JWKS {url}: {error}")]
    Fetch { url: String, error: reqwest::Error },
    #[error("the JWKS {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("the JWKS {origin} is larger than {JWKS_MAX_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("the JWKS {origin} is not a JSON Web Key Set: {error}")]
    Parse {
        origin: String,
        error: serde_json::Error,
    },
    #[error("the JWKS {origin} holds no public signing key this server can use")]
    NoKeys { origin: String },
}

/// What `--auth-jwt-*` configured.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The authorization server: tokens must carry it as `iss`.
    pub issuer: String,
    /// What tokens must carry in `aud`: this server.
    pub audience: String,
    pub jwks: JwksSource,
    pub algorithms: Vec<Algorithm>,
}

/// One public key of the JWKS.
struct Key {
    id: Option<String>,
    /// The algorithm the JWKS ties it to, if any.
    algorithm: Option<Algorithm>,
    parameters: AlgorithmParameters,
    decoding: DecodingKey,
}

impl Key {
    /// Whether a token signed with `algorithm`, naming key `id`, may be checked with it.
    fn fits(&self, algorithm: Algorithm, id: Option<&str>) -> bool {
        let kind = match (&self.parameters, algorithm) {
            (AlgorithmParameters::RSA(_), alg) => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
                ec.curve == EllipticCurve::P256
            }
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
                ec.curve == EllipticCurve::P384
            }
            (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA) => true,
            _ => false,
        };
        kind && self.algorithm.is_none_or(|own| own == algorithm)
            && id.is_none_or(|id| self.id.as_deref() == Some(id))
    }
}

/// The JWKS as last read.
struct Keys {
    keys: Vec<Key>,
    /// When they were read.
    read: Instant,
    /// When the JWKS was last read or tried.
    tried: Instant,
}

/// The public keys of a JWKS document that can check signatures; the others (encryption
/// keys, shared secrets, curves `ring` lacks, kinds not known) are left out.
fn parse_keys(text: &[u8], source: &str) -> Result<Vec<Key>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(text).map_err(|error| JwksError::Parse {
        origin: source.to_owned(),
        error,
    })?;
    let mut keys = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            tracing::debug!(source, "a JWKS key of a kind not known is left out");
            continue;
        };
        let signing = !matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        );
        let asymmetric = !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_));
        let algorithm = match jwk.common.key_algorithm {
            None => Ok(None),
            Some(own) => own.to_string().parse::<Algorithm>().map(Some),
        };
        let (Ok(algorithm), true, true) = (algorithm, signing, asymmetric) else {
            continue;
        };
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            id: jwk.common.key_id,
            algorithm,
            parameters: jwk.algorithm,
            decoding,
        });
    }
    if keys.is_empty() {
        return Err(JwksError::NoKeys {
            origin: source.to_owned(),
        });
    }
    Ok(keys)
}

/// The claims read from a token (the others are checked by `jsonwebtoken`).
#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
}

/// Checks access tokens against the configured issuer, audience and JWKS.
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: RwLock<Keys>,
    /// Held while the JWKS is read again, so that one read serves every waiting request.
    reading: tokio::sync::Mutex<()>,
    client: reqwest::Client,
}

impl JwtVerifier {
    /// Reads the JWKS once: a server that cannot have its keys does not start.
    pub async fn start(settings: JwtSettings) -> Result<Self, JwksError> {
        // reqwest's rustls has no provider of its own: ring, the workspace's.
        code_mode_tls::use_ring();
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .build()
            .map_err(|error| JwksError::Fetch {
                url: settings.jwks.to_string(),
                error,
            })?;
        let keys = read_jwks(&client, &settings.jwks).await?;
        tracing::info!(
            issuer = settings.issuer,
            jwks = %settings.jwks,
            keys = keys.len(),
            "JWT access tokens accepted"
        );
        Ok(Self {
            settings,
            keys: RwLock::new(Keys {
                keys,
                read: Instant::now(),
                tried: Instant::now(),
            }),
            reading: tokio::sync::Mutex::new(()),
            client,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// The principal of an access token, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        const INVALID: Refusal = Refusal::Invalid("the bearer token is not valid");
        let header = jsonwebtoken::decode_header(token).map_err(|_| INVALID)?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(Refusal::Invalid(
                "the token's signing algorithm is not accepted",
            ));
        }
        if lock_read(&self.keys).read.elapsed() > JWKS_MAX_AGE {
            self.read_again().await;
        }
        let mut outcome = self.check(token, header.alg, header.kid.as_deref());
        if outcome.is_none() {
            // A key the JWKS did not hold when it was read: the server may have added it.
            self.read_again().await;
            outcome = self.check(token, header.alg, header.kid.as_deref());
        }
        let claims = outcome.ok_or(INVALID)?.map_err(refusal)?;
        Ok(Principal::Jwt {
            issuer: claims.iss,
            subject: claims.sub,
        })
    }

    /// The token checked with each key that fits it until one verifies its signature;
    /// `None` when no key fits or none verifies it.
    fn check(
        &self,
        token: &str,
        algorithm: Algorithm,
        id: Option<&str>,
    ) -> Option<Result<Claims, jsonwebtoken::errors::Error>> {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let keys = lock_read(&self.keys);
        keys.keys
            .iter()
            .filter(|key| key.fits(algorithm, id))
            .map(|key| jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation))
            .find(|outcome| {
                !matches!(outcome, Err(error) if *error.kind() == ErrorKind::InvalidSignature)
            })
            .map(|outcome| outcome.map(|data| data.claims))
    }

    /// Reads the JWKS again unless it was read or tried less than [`JWKS_MIN_REFRESH`] ago
    /// (by another request meanwhile, say); a failure keeps the keys it had, and is logged.
    async fn read_again(&self) {
        let _reading = self.reading.lock().await;
        if lock_read(&self.keys).tried.elapsed() < JWKS_MIN_REFRESH {
            return;
        }
        match read_jwks(&self.client, &self.settings.jwks).await {
            Ok(keys) => {
                tracing::debug!(jwks = %self.settings.jwks, keys = keys.len(), "JWKS read again");
                *lock_write(&self.keys) = Keys {
                    keys,
                    read: Instant::now(),
                    tried: Instant::now(),
                };
            }
            Err(error) => {
                tracing::warn!(%error, "the JWKS could not be read again; its keys as last read are used");
                lock_write(&self.keys).tried = Instant::now();
            }
        }
    }
}

fn lock_read(keys: &RwLock<Keys>) -> std::sync::RwLockReadGuard<'_, Keys> {
    keys.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_write(keys: &RwLock<Keys>) -> std::sync::RwLockWriteGuard<'_, Keys> {
    keys.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a client is told of a token `jsonwebtoken` refused.
fn refusal(error: jsonwebtoken::errors::Error) -> Refusal {
    Refusal::Invalid(match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
            "the token was not issued for this server"
        }
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
        _ => "the bearer token is not valid",
    })
}

/// The JWKS's keys, from its file or URL.
async fn read_jwks(client: &reqwest::Client, source: &JwksSource) -> Result<Vec<Key>, JwksError> {
    let text = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|error| JwksError::Read {
                path: path.display().to_string(),
                error,
            })?,
        JwksSource::Url(url) => fetch(client, url).await?,
    };
    if text.len() > JWKS_MAX_BYTES {
        return Err(JwksError::TooLarge {
            origin: source.to_string(),
        });
    }
    parse_keys(&text, &source.to_string())
}

/// The body of a `GET url`, at most [`JWKS_MAX_BYTES`] (one byte more says it is larger).
async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let failed = |error| JwksError::Fetch {
        url: url.to_owned(),
        error,
    };
    let mut response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(failed)?;
    if !response.status().is_success() {
        return Err(JwksError::Status {
            url: url.to_owned(),
            status: response.status(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        body.extend_from_slice(&chunk);
        if body.len() > JWKS_MAX_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_algorithms_are_refused() {
        for secret in ["HS256", "HS384", "HS512"] {
            let refused = parse_algorithm(secret).unwrap_err();
            assert!(refused.contains("shared secret"), "{refused}");
        }
        assert!(parse_algorithm("none").is_err());
        assert_eq!(parse_algorithm("ES256"), Ok(Algorithm::ES256));
    }

    #[test]
    fn urls_must_be_https_unless_local() {
        assert!(check_url("https://idp.example/jwks", "x").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks", "x").is_ok());
        assert!(check_url("http://[::1]:8080/jwks", "x").is_ok());
        assert!(check_url("http://localhost/jwks", "x").is_ok());
        let plain = check_url("http://idp.example/jwks", "the JWKS URL").unwrap_err();
        assert!(plain.contains("must be https"), "{plain}");
        assert!(check_url("https://idp.example/x#frag", "x").is_err());
        assert!(matches!(
            JwksSource::parse("keys.json"),
            Ok(JwksSource::File(_))
        ));
    }

    #[test]
    fn only_public_signing_keys_are_kept() {
        let jwks = br#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "secret"},
            {"kty": "RSA", "use": "enc", "n": "sXch", "e": "AQAB", "kid": "enc"},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "unknown"}
        ]}"#;
        let keys = parse_keys(jwks, "test").unwrap();
        let ids: Vec<_> = keys.iter().map(|key| key.id.as_deref()).collect();
        assert_eq!(ids, [Some("ec")]);
        assert!(keys[0].fits(Algorithm::ES256, Some("ec")));
        assert!(keys[0].fits(Algorithm::ES256, None));
        assert!(!keys[0].fits(Algorithm::ES384, Some("ec")));
        assert!(!keys[0].fits(Algorithm::RS256, Some("ec")));
        assert!(!keys[0].fits(Algorithm::ES256, Some("other")));
        let Err(none) = parse_keys(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#, "F") else {
            panic!("a shared secret is not a key here");
        };
        assert!(none.to_string().contains("no public signing key"), "{none}");
    }
}
