//! `code-mode mcp --http` with two principals, each with a credential of another kind: a
//! named static token (`--auth-tokens-file`) and an OAuth access token, a JWT signed in the
//! test by a key made in the test (rcgen, ECDSA P-256) and checked against its JWKS in a
//! file. Neither reaches the other's session, before or after a restart with
//! `--state-dir`; tokens of another issuer or audience, or expired, are refused with the
//! challenge of RFC 6750 and RFC 9728; the Protected Resource Metadata answers. Driven by
//! the official Python SDK and raw HTTP (`http_service.py`) against the real binary.

use super::Scratch;
use super::mcp::assert_result;
use super::mcp_http::{HttpServer, service};
use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// The static token of the principal `alice`.
const ALICE: &str = "alice-token-0123456789abcdef";
/// The authorization server the JWTs come from, and this server as they name it.
const ISSUER: &str = "https://idp.test";
const RESOURCE: &str = "https://mcp.test/mcp";
/// Where RFC 9728 puts the metadata of [`RESOURCE`].
const METADATA_URL: &str = "https://mcp.test/.well-known/oauth-protected-resource/mcp";

/// A signing key and its JWKS.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    jwks: Value,
}

impl Signer {
    fn new() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // The public key is the uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key_raw();
        assert_eq!((point.len(), point[0]), (65, 4));
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self {
            key: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks: json!({"keys": [{
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1",
                "x": b64(&point[1..33]), "y": b64(&point[33..]),
            }]}),
        }
    }

    /// A token with these claims over the defaults (bob, of ISSUER, for RESOURCE, valid
    /// for an hour).
    fn token(&self, overrides: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = json!({
            "iss": ISSUER, "aud": RESOURCE, "sub": "bob",
            "iat": now, "nbf": now, "exp": now + 3600,
        });
        for (name, value) in overrides.as_object().unwrap() {
            claims[name] = value.clone();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// The files of a server with both kinds of credentials, and its arguments.
fn setup(scratch: &Scratch, signer: &Signer) -> Vec<String> {
    let tokens = scratch.write("tokens", &format!("# name token\nalice {ALICE}\n"));
    let jwks = scratch.write("jwks.json", &signer.jwks.to_string());
    [
        "mcp",
        "--http",
        "127.0.0.1:0",
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--auth-jwt-issuer",
        ISSUER,
        "--auth-jwt-jwks",
        jwks.to_str().unwrap(),
        "--auth-resource",
        RESOURCE,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn start(args: &[String]) -> HttpServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    HttpServer::start(&args, &[]).expect("starts")
}

/// A session opened by the holder of `token`, its cell having stored `value`.
fn open(url: &str, token: &str, value: &str) -> String {
    let opened = service("open", url, &[value, "--token", token]);
    assert_result(&opened["exec"], "Script completed", &[]);
    let id = opened["session"].as_str().expect("a session id").to_owned();
    // 128 random bits, in hex (rmcp's own ids are UUIDs: 122).
    assert!(
        id.len() == 33 && id.starts_with('m') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    id
}

/// One `exec` in `session` as the holder of `token`.
fn again(url: &str, token: &str, session: &str) -> Value {
    service("again", url, &["--session", session, "--token", token])["after"].clone()
}

/// What an unknown session gets: rmcp's own answer.
fn not_found() -> Value {
    json!({"status": 404, "body": "Not Found: Session not found"})
}

/// `GET path` over plain HTTP/1.1: the status and the body.
fn get(url: &str, path: &str) -> (u16, String) {
    let address = url.trim_start_matches("http://").trim_end_matches("/mcp");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[test]
fn a_session_is_reachable_only_by_the_principal_that_opened_it() {
    let scratch = Scratch::new();
    let signer = Signer::new();
    let server = start(&setup(&scratch, &signer));
    let url = server.url.clone();
    let bob = signer.token(json!({}));

    // The official SDK works with either credential.
    for token in [ALICE, bob.as_str()] {
        let seen = service("sdk", &url, &["--token", token]);
        assert_result(&seen["exec"], "Script completed", &["42"]);
    }
    let alices = open(&url, ALICE, "alice's");
    let bobs = open(&url, &bob, "bob's");
    assert_result(
        &again(&url, ALICE, &alices),
        "Script completed",
        &["alice's"],
    );
    assert_result(&again(&url, &bob, &bobs), "Script completed", &["bob's"]);
    // Another principal's session answers as one that does not exist, to a POST, a GET
    // stream and a DELETE alike.
    assert_eq!(again(&url, &bob, "no-such-session"), not_found());
    assert_eq!(again(&url, &bob, &alices), not_found());
    assert_eq!(again(&url, ALICE, &bobs), not_found());
    // Whatever rmcp answers for an id nobody has (a GET stream's 404, a DELETE's
    // acknowledgement), another principal's session gets the same.
    for (method, session, token) in [("GET", &bobs, ALICE), ("DELETE", &alices, bob.as_str())] {
        let unknown = service(
            "request",
            &url,
            &[method, "--session", "no-such-session", "--token", token],
        );
        let others = service(
            "request",
            &url,
            &[method, "--session", session, "--token", token],
        );
        assert_eq!(others, unknown, "{method} of another principal's session");
    }
    let stream = service(
        "request",
        &url,
        &["GET", "--session", &bobs, "--token", ALICE],
    );
    assert_eq!(stream, not_found());
    // Both sessions are whole.
    assert_result(
        &again(&url, ALICE, &alices),
        "Script completed",
        &["alice's"],
    );
    assert_result(&again(&url, &bob, &bobs), "Script completed", &["bob's"]);
    // Another subject of the same issuer is another principal.
    let carol = signer.token(json!({"sub": "carol"}));
    assert_eq!(again(&url, &carol, &bobs), not_found());
    // A request's stream kept after its connection broke resumes only for its principal:
    // to another, with the session's and the event's ids, it is a stream nobody has.
    let broken = service("broken", &url, &["--token", ALICE, &bob]);
    assert_eq!(broken["other"]["status"], 404, "{broken}");
    assert!(
        !broken["other"]["body"].to_string().contains("late"),
        "{broken}"
    );
    assert_eq!(broken["status"], 200, "{broken}");
    assert_eq!(broken["texts"][1], "late", "{broken}");
}

#[test]
fn tokens_of_another_issuer_or_audience_or_expired_are_refused_with_the_challenge() {
    let scratch = Scratch::new();
    let signer = Signer::new();
    let server = start(&setup(&scratch, &signer));
    let url = server.url.clone();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let refused = [
        (
            json!({"iss": "https://other-idp.test"}),
            "was not issued for this server",
        ),
        (
            json!({"aud": "https://other.test/mcp"}),
            "was not issued for this server",
        ),
        // Beyond the minute of leeway.
        (json!({"exp": now - 120, "nbf": now - 3600}), "has expired"),
        (json!({"nbf": now + 600}), "is not valid yet"),
    ];
    for (claims, why) in refused {
        let token = signer.token(claims.clone());
        let seen = service("probe", &url, &["--token", &token]);
        assert_eq!(seen["status"], 401, "{claims}: {seen}");
        assert_eq!(
            seen["www_authenticate"],
            format!(
                r#"Bearer realm="code-mode", resource_metadata="{METADATA_URL}", error="invalid_token", error_description="the token {why}""#
            ),
            "{claims}"
        );
    }
    // A token signed by another key, even naming the right key id.
    let forged = Signer::new().token(json!({}));
    let seen = service("probe", &url, &["--token", &forged]);
    assert_eq!(seen["status"], 401, "{seen}");
    // No credentials: the challenge points to the metadata, without an error.
    let missing = service("probe", &url, &[]);
    assert_eq!(missing["status"], 401, "{missing}");
    assert_eq!(
        missing["www_authenticate"],
        format!(r#"Bearer realm="code-mode", resource_metadata="{METADATA_URL}""#)
    );
    // The token that is right gets in.
    let right = service(
        "probe",
        &url,
        &["--token", &signer.token(json!({})), "--close"],
    );
    assert_eq!(right["status"], 200, "{right}");
}

#[test]
fn the_protected_resource_metadata_answers_without_credentials() {
    let scratch = Scratch::new();
    let signer = Signer::new();
    let server = start(&setup(&scratch, &signer));
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let (status, body) = get(&server.url, path);
        assert_eq!(status, 200, "{path}: {body}");
        let metadata: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            metadata,
            json!({
                "resource": RESOURCE,
                "authorization_servers": [ISSUER],
                "bearer_methods_supported": ["header"],
            }),
            "{path}"
        );
    }
    // Anything else still needs credentials.
    assert_eq!(get(&server.url, "/.well-known/other").0, 401);
}

/// `--state-dir`: each session is kept with its owner. After the server is killed and
/// started again, the other principal's request for it gets `404` (and does not take it
/// back), and its owner finds it whole.
#[test]
fn a_kept_session_still_belongs_to_its_principal_after_a_restart() {
    let scratch = Scratch::new();
    let signer = Signer::new();
    let mut args = setup(&scratch, &signer);
    let state = scratch.0.join("state");
    args.extend(["--state-dir".to_owned(), state.display().to_string()]);
    let bob = signer.token(json!({}));
    let mut server = start(&args);
    let alices = open(&server.url, ALICE, "alice's");
    let bobs = open(&server.url, &bob, "bob's");
    server.kill();

    let server = start(&args);
    let url = server.url.clone();
    assert_eq!(again(&url, &bob, &alices), not_found());
    assert_eq!(again(&url, ALICE, &bobs), not_found());
    assert_result(
        &again(&url, ALICE, &alices),
        "Script completed",
        &["alice's"],
    );
    assert_result(&again(&url, &bob, &bobs), "Script completed", &["bob's"]);
    assert_eq!(again(&url, &bob, &alices), not_found());
}

/// Replicas on one Postgres: a dead replica's session named by another principal is taken
/// over only to be let go at once (no lease left on it), so that its owner, on any other
/// replica, takes it back; without that the replica that refused it would hold it, and
/// the owner would get `404` everywhere else.
#[test]
fn a_session_another_principal_names_on_a_replica_is_let_go_for_its_owner() {
    let scratch = Scratch::new();
    let signer = Signer::new();
    let cluster = code_mode_conformance::PgCluster::start();
    let mut args = setup(&scratch, &signer);
    args.extend(["--state-url", &cluster.url, "--state-lease", "1s"].map(str::to_owned));
    let bob = signer.token(json!({}));
    let mut first = start(&args);
    let alices = open(&first.url, ALICE, "alice's");
    first.kill();
    // The dead replica's lease runs out.
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let second = start(&args);
    assert_eq!(again(&second.url, &bob, &alices), not_found());
    let lease = cluster.query(&format!(
        "SELECT lease_until FROM code_mode_mcp.sessions WHERE id = '{alices}'"
    ));
    assert_eq!(lease.as_deref(), Some("0"), "let go at once");
    let third = start(&args);
    assert_result(
        &again(&third.url, ALICE, &alices),
        "Script completed",
        &["alice's"],
    );
    drop(second);
}
